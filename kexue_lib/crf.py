r"""Token tagging for NER: BIO tags and a linear-chain CRF, the baselines GlobalPointer is measured against.

Article: GlobalPointer:用统一的方式处理嵌套和非嵌套NER (https://kexue.fm/archives/8373), which compares its span
head with BERT+CRF and contrasts a per-token softmax (:math:`n` independent :math:`k`-way problems) with a CRF (one
:math:`k^n`-way problem). CRF: J. Lafferty, A. McCallum, F. Pereira, ICML 2001.

**BIO tags.** With :math:`K` entity types a token gets one of :math:`k = 1 + 2K` tags: 0 = O, :math:`1 + 2t` = B-t,
:math:`2 + 2t` = I-t. Only non-overlapping spans can be written this way (:func:`bio_encode` raises on overlap;
:func:`outermost_spans` keeps a non-overlapping subset, the outer span of each nest).

**Linear-chain CRF.** For emissions :math:`e_{\tau,y}` (``(B, n, k)``), transitions :math:`A_{ab}` and start/end
scores :math:`\pi_a, \omega_a` a tag path :math:`y_1..y_n` scores

.. math::

    S(y) = \pi_{y_1} + \sum_{\tau=1}^{n} e_{\tau, y_\tau} + \sum_{\tau=2}^{n} A_{y_{\tau-1} y_\tau} + \omega_{y_n},
    \qquad p(y) = e^{S(y)} / Z,\quad Z = \sum_{y' \in [k]^n} e^{S(y')},

one softmax over all :math:`k^n` paths. :func:`crf_log_partition` computes :math:`\log Z` with the forward
recursion :math:`\alpha_\tau = \operatorname{logsumexp}_a(\alpha_{\tau-1,a} + A_{a\cdot}) + e_\tau`, which is
sequential in :math:`n`; :func:`crf_viterbi` decodes :math:`\arg\max_y S(y)` by dynamic programming, also sequential.
``mask`` (``(B, n)``, a valid prefix per sentence) ends each path at the sentence's last valid token.
Dtype policy: everything is computed in the emissions' dtype; the module casts its parameters to it.

**Sequential cost.** :func:`autograd_depth` (the longest chain of backward nodes behind a loss) and
:func:`torch_call_count` (torch calls made by a function) measure how much of a computation must run one step after
another: for the CRF they grow with :math:`n`, for a GlobalPointer table they do not. :func:`interleaved_times`
times several functions in interleaved rounds, the fair way to compare them on a shared machine.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from ._validate import check_int, check_tensor

__all__ = ["bio_encode", "bio_decode", "outermost_spans", "crf_path_score", "crf_log_partition", "crf_nll",
           "crf_viterbi", "LinearChainCRF", "CRFTagger", "autograd_depth", "torch_call_count", "interleaved_times"]


def outermost_spans(spans) -> set[tuple[int, int, int]]:
    """A non-overlapping subset of ``{(type, i, j)}``: longest spans first (ties: earlier start), each kept if it
    overlaps none kept so far. On nests of one outer span around inner ones this keeps the outer span."""
    kept: list[tuple[int, int, int]] = []
    for t, i, j in sorted(spans, key=lambda s: (s[1] - s[2], s[1])):
        if all(j < a or i > b for _, a, b in kept):
            kept.append((t, i, j))
    return set(kept)


def bio_encode(spans, *, n: int, types: int) -> torch.Tensor:
    """Non-overlapping gold ``[{(type, i, j)}, ...]`` -> BIO tags ``(B, n)`` (0 O, 1+2t B-t, 2+2t I-t)."""
    n, types = check_int("n", n, min_value=1), check_int("types", types, min_value=1)
    y = torch.zeros(len(spans), n, dtype=torch.long)
    for b, sset in enumerate(spans):
        taken = torch.zeros(n, dtype=torch.bool)
        for t, i, j in sorted(sset, key=lambda s: s[1]):
            if not (0 <= t < types and 0 <= i <= j < n):
                raise ValueError(f"span {(t, i, j)} is outside types={types}, 0 <= i <= j < n={n}")
            if bool(taken[i:j + 1].any()):
                raise ValueError(f"span {(t, i, j)} overlaps another span of sentence {b}; BIO holds only flat spans "
                                 "(use outermost_spans first)")
            taken[i:j + 1] = True
            y[b, i], y[b, i + 1:j + 1] = 1 + 2 * t, 2 + 2 * t
    return y


def bio_decode(tags: torch.Tensor) -> list[set[tuple[int, int, int]]]:
    """BIO tags ``(B, n)`` -> one set of ``(type, i, j)`` per sentence.

    A span opens at B-t and runs over the following I-t; any other tag closes it. An I-t that does not continue
    a span of type t opens nothing (it is dropped), as in the usual "strict" entity-level NER evaluation.
    """
    check_tensor("tags", tags, ndim=2)
    out = []
    for row in tags.tolist():
        sset, cur = set(), None
        for p, c in enumerate(row + [0]):
            if cur is not None and c != 2 + 2 * cur[0]:
                sset.add((cur[0], cur[1], p - 1))
                cur = None
            if c % 2 == 1:
                cur = ((c - 1) // 2, p)
        out.append(sset)
    return out


def _check_crf(emissions, transitions, start, end, mask):
    check_tensor("emissions", emissions, ndim=3, floating=True)
    B, n, k = emissions.shape
    check_tensor("transitions", transitions, ndim=2, floating=True)
    check_tensor("start", start, ndim=1, floating=True)
    check_tensor("end", end, ndim=1, floating=True)
    if tuple(transitions.shape) != (k, k) or start.shape[0] != k or end.shape[0] != k:
        raise ValueError(f"with {k} tags need transitions {(k, k)}, start and end ({k},); got "
                         f"{tuple(transitions.shape)}, {tuple(start.shape)}, {tuple(end.shape)}")
    if mask is None:
        return torch.ones(B, n, dtype=torch.bool, device=emissions.device)
    check_tensor("mask", mask, ndim=2)
    if tuple(mask.shape) != (B, n):
        raise ValueError(f"mask must have shape {(B, n)}, got {tuple(mask.shape)}")
    mask = mask.bool()
    if not bool(mask[:, 0].all()) or bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        raise ValueError("mask must mark a non-empty valid prefix of each sentence (1...1 0...0)")
    return mask


def crf_path_score(emissions, tags, transitions, start, end, mask=None) -> torch.Tensor:
    """:math:`S(y)` of the tag paths ``tags`` ``(B, n)`` (long) -> ``(B,)``; padded positions are left out."""
    mask = _check_crf(emissions, transitions, start, end, mask)
    check_tensor("tags", tags, ndim=2)
    if tags.shape != emissions.shape[:2]:
        raise ValueError(f"tags must have shape {tuple(emissions.shape[:2])}, got {tuple(tags.shape)}")
    m = mask.to(emissions.dtype)  # (B, n)
    emit = emissions.gather(-1, tags[..., None])[..., 0]  # (B, n): e_{tau, y_tau}
    trans = transitions[tags[:, :-1], tags[:, 1:]]  # (B, n-1): A_{y_{tau-1} y_tau}
    last = tags.gather(1, (mask.sum(1, keepdim=True) - 1))[:, 0]  # (B,): tag at the last valid token
    return start[tags[:, 0]] + (emit * m).sum(1) + (trans * m[:, 1:]).sum(1) + end[last]


def crf_log_partition(emissions, transitions, start, end, mask=None) -> torch.Tensor:
    r""":math:`\log Z` by the forward recursion, ``(B, n, k)`` -> ``(B,)`` (``n - 1`` sequential steps)."""
    mask = _check_crf(emissions, transitions, start, end, mask)
    alpha = start + emissions[:, 0]  # (B, k)
    for tau in range(1, emissions.shape[1]):
        nxt = torch.logsumexp(alpha[:, :, None] + transitions, dim=1) + emissions[:, tau]  # (B, k)
        alpha = torch.where(mask[:, tau, None], nxt, alpha)
    return torch.logsumexp(alpha + end, dim=-1)


def crf_nll(emissions, tags, transitions, start, end, mask=None) -> torch.Tensor:
    r"""Negative log-likelihood :math:`\log Z - S(y)` per sentence, ``(B,)``."""
    return crf_log_partition(emissions, transitions, start, end, mask) - crf_path_score(
        emissions, tags, transitions, start, end, mask)


def crf_viterbi(emissions, transitions, start, end, mask=None) -> torch.Tensor:
    r""":math:`\arg\max_y S(y)` by dynamic programming, ``(B, n, k)`` -> tags ``(B, n)`` (0 at padded positions)."""
    mask = _check_crf(emissions, transitions, start, end, mask)
    B, n, k = emissions.shape
    delta = start + emissions[:, 0]  # (B, k): best score of a path ending in each tag
    stay = torch.arange(k, device=emissions.device).expand(B, k)  # backpointer of a padded step: keep the tag
    back = []
    for tau in range(1, n):
        best, arg = (delta[:, :, None] + transitions).max(dim=1)  # (B, k) each: best predecessor of each tag
        delta = torch.where(mask[:, tau, None], best + emissions[:, tau], delta)
        back.append(torch.where(mask[:, tau, None], arg, stay))
    cur = (delta + end).argmax(-1)  # (B,): the best last tag
    path = [cur]
    for bp in reversed(back):
        cur = bp.gather(1, cur[:, None])[:, 0]
        path.append(cur)
    tags = torch.stack(path[::-1], dim=1)  # (B, n)
    return tags.masked_fill(~mask, 0)


class LinearChainCRF(nn.Module):
    """Learned transitions ``(k, k)`` and start/end scores (zeros at init); ``forward`` is the mean NLL."""

    def __init__(self, num_tags: int):
        super().__init__()
        self.num_tags = check_int("num_tags", num_tags, min_value=1)
        self.transitions = nn.Parameter(torch.zeros(self.num_tags, self.num_tags))
        self.start = nn.Parameter(torch.zeros(self.num_tags))
        self.end = nn.Parameter(torch.zeros(self.num_tags))

    def _params(self, emissions):
        return (self.transitions.to(emissions.dtype), self.start.to(emissions.dtype), self.end.to(emissions.dtype))

    def forward(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return crf_nll(emissions, tags, *self._params(emissions), mask).mean()

    def decode(self, emissions: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return crf_viterbi(emissions, *self._params(emissions), mask)



class CRFTagger(nn.Module):
    """The BERT+CRF head of the article's baseline: a linear emission layer on the features and a CRF.

    ``nll(h (B, n, D), tags (B, n), mask)`` is the mean negative log-likelihood; ``decode(h, mask)`` the
    Viterbi tags ``(B, n)``.
    """

    def __init__(self, hidden_size: int, num_tags: int):
        super().__init__()
        self.emit = nn.Linear(check_int("hidden_size", hidden_size, min_value=1), check_int("num_tags", num_tags, min_value=1))
        self.crf = LinearChainCRF(num_tags)

    def nll(self, h: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        check_tensor("h", h, ndim=3, floating=True)
        return self.crf(self.emit(h), tags, mask)

    def decode(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        check_tensor("h", h, ndim=3, floating=True)
        return self.crf.decode(self.emit(h), mask)

def autograd_depth(t: torch.Tensor) -> int:
    """Length of the longest chain of autograd nodes from ``t`` back to the leaves: the number of backward steps
    that must run one after another, whatever the hardware (0 for a tensor without ``grad_fn``)."""
    check_tensor("t", t)
    root = t.grad_fn
    if root is None:
        return 0
    depth: dict = {}
    stack = [(root, False)]
    while stack:  # iterative post-order: graphs of long recursions are deep
        node, done = stack.pop()
        if node in depth:
            continue
        children = [c for c, _ in node.next_functions if c is not None]
        if done:
            depth[node] = 1 + max((depth[c] for c in children), default=0)
            continue
        stack.append((node, True))
        stack.extend((c, False) for c in children if c not in depth)
    return depth[root]


def torch_call_count(fn, *args, **kwargs) -> int:
    """How many torch functions and tensor methods ``fn(*args, **kwargs)`` calls (counted at the Python level
    with :class:`torch.overrides.TorchFunctionMode`; nested calls inside torch count once)."""
    from torch.overrides import TorchFunctionMode

    class _Count(TorchFunctionMode):
        calls = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            _Count.calls += 1
            return func(*args, **(kwargs or {}))

    with _Count():
        fn(*args, **kwargs)
    return _Count.calls


def interleaved_times(fns: dict, *, repeat: int = 7, number: int = 1) -> dict:
    """Seconds per call of each ``fns[name]()``: ``repeat`` rounds, each timing ``number`` calls of every function
    in turn, so that load on a shared machine falls on all of them alike; entry ``r`` of every list is round
    ``r`` (pair them). One untimed warm-up call each; CUDA is synchronised around each timing; grad stays on,
    so training steps can be timed."""
    repeat = check_int("repeat", repeat, min_value=1)
    number = check_int("number", number, min_value=1)
    if not fns or not all(callable(f) for f in fns.values()):
        raise ValueError("fns must be a non-empty dict of callables")
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for f in fns.values():
        f()
    out = {name: [] for name in fns}
    for _ in range(repeat):
        for name, f in fns.items():
            sync()
            start = time.perf_counter()
            for _ in range(number):
                f()
            sync()
            out[name].append((time.perf_counter() - start) / number)
    return out
