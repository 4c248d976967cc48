r"""GlobalPointer and Efficient GlobalPointer: span scoring heads for flat and nested NER.

Articles: GlobalPointer:用统一的方式处理嵌套和非嵌套NER (https://kexue.fm/archives/8373) and
Efficient GlobalPointer:少点参数,多点效果 (https://kexue.fm/archives/8877). Paper: J. Su et al., *Global
Pointer: Novel Efficient Span-based Approach for Named Entity Recognition*, arXiv:2208.03054. Rotary
positions: RoFormer, arXiv:2104.09864 (applied with :func:`kexue_lib.gau.rotary`).

For token features :math:`h_1..h_n` every span :math:`[i, j]` (:math:`i\le j`, inclusive) gets one score per
entity type :math:`\alpha`; a span is predicted as type :math:`\alpha` iff its score is positive:

.. math::

    \text{GlobalPointer:}\quad s_\alpha(i,j) = (\mathcal R_i q_{i,\alpha})^\top(\mathcal R_j k_{j,\alpha})/\sqrt d
        = q_{i,\alpha}^\top \mathcal R_{j-i} k_{j,\alpha}/\sqrt d,\qquad
        q_{i,\alpha}=W_{q,\alpha}h_i+b_{q,\alpha},\ k_{j,\alpha}=W_{k,\alpha}h_j+b_{k,\alpha}

    \text{Efficient:}\quad s_\alpha(i,j) = (\mathcal R_i q_i)^\top(\mathcal R_j k_j)/\sqrt d
        + \tfrac12 w_{\alpha}^\top [q_i;k_i] + \tfrac12 u_{\alpha}^\top [q_j;k_j]

(the Efficient head shares one :math:`q, k` across types and lets the type enter only through a cheap
additive term on the start and end features, as in bert4keras). Parameters with hidden size :math:`D`,
head size :math:`d`, :math:`K` types and biases: GlobalPointer :math:`2KdD + 2Kd`; Efficient
:math:`2dD + 2d + 4dK + 2K`. The :math:`n\times n` score table is masked to the upper triangle
(:math:`i\le j`) and to valid tokens with :data:`MASK_VALUE`; it holds :math:`n(n+1)/2` candidates.
:class:`AdditiveSpanScorer` is TPLinker's additive rival (arXiv:2010.13415), which holds a ``(B, n, n, H)`` tensor.

Training uses the multi-label categorical cross-entropy (ZLPR, https://kexue.fm/archives/7359) per type,
flattened over spans (:func:`global_pointer_bce_loss` is the naive alternative the article argues against: one
binary cross-entropy per candidate span); evaluation is the micro span F1 :math:`2\sum y\hat y/\sum(y+\hat y)`.
For answer extraction the article's F1 loss is :func:`expected_f1_loss`, with one softmax over the spans
(:func:`span_log_softmax`) and the token-overlap F1 table :func:`span_token_f1`. The token-tagging baselines (BIO
tags, a linear-chain CRF) are in :mod:`kexue_lib.crf`.
Dtype policy: scores follow the features' dtype; masking uses :data:`MASK_VALUE` = -1e12, so use
float32/bfloat16/float64 (float16 cannot hold it).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ._validate import check_int, check_real, check_tensor
from .gau import rotary
from .losses import multilabel_categorical_crossentropy

__all__ = ["MASK_VALUE", "span_mask", "span_scores", "GlobalPointer", "EfficientGlobalPointer", "AdditiveSpanScorer",
           "spans_to_labels", "decode_spans", "span_f1_counts", "span_f1", "global_pointer_f1",
           "global_pointer_loss", "global_pointer_bce_loss", "span_token_f1", "span_log_softmax",
           "expected_f1_loss"]

MASK_VALUE = -1e12


def span_mask(n: int, *, lengths: torch.Tensor | None = None, device=None) -> torch.Tensor:
    """Boolean ``(n, n)`` (or ``(B, n, n)`` with ``lengths``) mask of candidate spans ``i <= j < length``."""
    n = check_int("n", n, min_value=1)
    if lengths is not None:
        check_tensor("lengths", lengths, ndim=1)
        device = lengths.device
    idx = torch.arange(n, device=device)
    tri = idx[:, None] <= idx[None, :]  # (n, n): i <= j
    if lengths is None:
        return tri
    valid = idx[None, :] < lengths[:, None]  # (B, n)
    return tri[None] & valid[:, :, None] & valid[:, None, :]  # (B, n, n)


def span_scores(q: torch.Tensor, k: torch.Tensor, *, rope: bool = True, theta: float = 10000.0,
                mask: torch.Tensor | None = None, scale: bool = True) -> torch.Tensor:
    """Scores ``q_i . k_j`` of ``q, k: (B, heads, n, d)`` -> ``(B, heads, n, n)``, RoPE on q and k first.

    ``mask``: boolean ``(B, n)`` of valid tokens (None: all valid); spans with ``i > j`` or a padded end
    get :data:`MASK_VALUE`. ``scale`` divides by ``sqrt(d)`` (the reference code does, the formula not).
    """
    check_tensor("q", q, ndim=4, floating=True)
    check_tensor("k", k, ndim=4, floating=True)
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    B, _, n, d = q.shape
    if rope:
        q, k = rotary(q, theta=theta), rotary(k, theta=theta)  # (B, h, n, d) each
    s = q @ k.transpose(-1, -2)  # (B, h, n, n)
    if scale:
        s = s / math.sqrt(d)
    if mask is None:
        allowed = span_mask(n, device=q.device)[None, None]  # (1, 1, n, n)
    else:
        check_tensor("mask", mask, ndim=2)
        if tuple(mask.shape) != (B, n):
            raise ValueError(f"mask must have shape {(B, n)}, got {tuple(mask.shape)}")
        allowed = span_mask(n, lengths=None, device=q.device)[None] & mask.bool()[:, :, None] & mask.bool()[:, None, :]
        allowed = allowed[:, None]  # (B, 1, n, n)
    return s.masked_fill(~allowed, MASK_VALUE)


def _set_head_options(head, hidden_size, types, head_size, rope, theta):
    """Validate and store the options both span heads share."""
    head.hidden_size = check_int("hidden_size", hidden_size, min_value=1)
    head.types = check_int("types", types, min_value=1)
    head.head_size = check_int("head_size", head_size, min_value=2)
    if rope and head.head_size % 2:
        raise ValueError(f"head_size must be even with rope=True, got {head_size}")
    head.rope, head.theta = bool(rope), check_real("theta", theta, low=1.0)


class GlobalPointer(nn.Module):
    """One ``(q, k)`` projection per entity type; ``forward(h (B, n, D), mask (B, n)) -> (B, types, n, n)``."""

    def __init__(self, hidden_size: int, types: int, *, head_size: int = 64, rope: bool = True,
                 theta: float = 10000.0, bias: bool = True):
        super().__init__()
        _set_head_options(self, hidden_size, types, head_size, rope, theta)
        self.proj = nn.Linear(self.hidden_size, self.types * self.head_size * 2, bias=bias)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        check_tensor("h", h, ndim=3, floating=True)
        B, n, _ = h.shape
        qk = self.proj(h).view(B, n, self.types, 2, self.head_size)  # (B, n, K, 2, d)
        q, k = qk.unbind(3)  # (B, n, K, d) each
        return span_scores(q.transpose(1, 2), k.transpose(1, 2), rope=self.rope, theta=self.theta, mask=mask)


class EfficientGlobalPointer(nn.Module):
    """Shared ``(q, k)`` plus a per-type start/end bias (article 8877); same interface as :class:`GlobalPointer`."""

    def __init__(self, hidden_size: int, types: int, *, head_size: int = 64, rope: bool = True,
                 theta: float = 10000.0, bias: bool = True):
        super().__init__()
        _set_head_options(self, hidden_size, types, head_size, rope, theta)
        self.proj = nn.Linear(self.hidden_size, self.head_size * 2, bias=bias)
        self.type_bias = nn.Linear(self.head_size * 2, self.types * 2, bias=bias)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        check_tensor("h", h, ndim=3, floating=True)
        B, n, _ = h.shape
        u = self.proj(h)  # (B, n, 2d)
        q, k = u.view(B, n, 2, self.head_size).unbind(2)  # (B, n, d) each
        s = span_scores(q[:, None], k[:, None], rope=self.rope, theta=self.theta, mask=mask)  # (B, 1, n, n)
        b = self.type_bias(u).view(B, n, self.types, 2).permute(0, 2, 3, 1) / 2  # (B, K, 2, n)
        s = s + b[:, :, 0, :, None] + b[:, :, 1, None, :]  # start term on i, end term on j: (B, K, n, n)
        allowed = s[:, :1] > MASK_VALUE / 2  # the mask survives the finite bias
        return s.masked_fill(~allowed, MASK_VALUE)


class AdditiveSpanScorer(nn.Module):
    r"""TPLinker-style additive scores :math:`s_\alpha(i,j)=w_{o,\alpha}^\top\tanh(W_h[h_i;h_j]+b_h)+b_{o,\alpha}`.

    The rival of article 8373's multiplicative form: it materialises a ``(B, n, n, hidden)`` tensor where
    GlobalPointer only ever holds ``(B, types, n, n)``. Same interface as :class:`GlobalPointer`.
    """

    def __init__(self, hidden_size: int, types: int, *, inner_size: int = 64):
        super().__init__()
        self.hidden_size = check_int("hidden_size", hidden_size, min_value=1)
        self.types = check_int("types", types, min_value=1)
        inner_size = check_int("inner_size", inner_size, min_value=1)
        self.start, self.end = nn.Linear(hidden_size, inner_size), nn.Linear(hidden_size, inner_size, bias=False)
        self.out = nn.Linear(inner_size, self.types)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        check_tensor("h", h, ndim=3, floating=True)
        B, n, _ = h.shape
        z = torch.tanh(self.start(h)[:, :, None] + self.end(h)[:, None, :])  # (B, n, n, inner): W_h[h_i; h_j] + b
        s = self.out(z).permute(0, 3, 1, 2)  # (B, K, n, n)
        allowed = span_mask(n, device=h.device)[None, None]  # (1, 1, n, n)
        if mask is not None:
            allowed = allowed & (mask.bool()[:, :, None] & mask.bool()[:, None, :])[:, None]  # (B, 1, n, n)
        return s.masked_fill(~allowed, MASK_VALUE)


def spans_to_labels(spans, *, n: int, types: int, dtype=torch.float32) -> torch.Tensor:
    """Gold ``[{(type, i, j), ...}, ...]`` (one set per sentence) -> 0/1 tensor ``(B, types, n, n)``."""
    n, types = check_int("n", n, min_value=1), check_int("types", types, min_value=1)
    y = torch.zeros(len(spans), types, n, n, dtype=dtype)
    idx = []
    for b, sset in enumerate(spans):
        for t, i, j in sset:
            if not (0 <= t < types and 0 <= i <= j < n):
                raise ValueError(f"span {(t, i, j)} is outside types={types}, 0 <= i <= j < n={n}")
            idx.append((b, t, i, j))
    if idx:
        y[tuple(torch.tensor(idx).T)] = 1  # one scatter instead of one write per span
    return y


def decode_spans(scores: torch.Tensor, *, threshold: float = 0.0) -> list[set[tuple[int, int, int]]]:
    """Every span with score above ``threshold``: ``(B, types, n, n)`` -> one set of ``(type, i, j)`` each."""
    check_tensor("scores", scores, ndim=4)
    threshold = check_real("threshold", threshold)
    out = [set() for _ in range(scores.shape[0])]
    for b, t, i, j in (scores > threshold).nonzero().tolist():
        if i <= j:
            out[b].add((t, i, j))
    return out


def span_f1_counts(pred, gold) -> tuple[int, int, int]:
    """Set-based micro counts ``(true positives, predicted, gold)`` over sentences."""
    if len(pred) != len(gold):
        raise ValueError(f"{len(pred)} predicted sentences against {len(gold)} gold ones")
    tp = sum(len(set(p) & set(g)) for p, g in zip(pred, gold))
    return tp, sum(len(p) for p in pred), sum(len(g) for g in gold)


def span_f1(pred, gold) -> float:
    """Micro span F1 ``2 TP / (|pred| + |gold|)`` over all sentences (1.0 when both are empty)."""
    tp, np_, ng = span_f1_counts(pred, gold)
    return 1.0 if np_ + ng == 0 else 2 * tp / (np_ + ng)


def global_pointer_f1(y_true: torch.Tensor, scores: torch.Tensor, *, threshold: float = 0.0) -> torch.Tensor:
    """The article's tensor form ``2 sum(y * yhat) / sum(y + yhat)`` with ``yhat = [scores > threshold]``."""
    check_tensor("y_true", y_true)
    check_tensor("scores", scores)
    if y_true.shape != scores.shape:
        raise ValueError(f"y_true {tuple(y_true.shape)} and scores {tuple(scores.shape)} differ in shape")
    y_hat = (scores > check_real("threshold", threshold)).to(scores.dtype)
    y = y_true.to(scores.dtype)
    return 2 * (y * y_hat).sum() / (y + y_hat).sum()


def global_pointer_loss(scores: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
    """ZLPR per (sentence, type) over the flattened ``n*n`` spans, averaged: ``(B, K, n, n)`` -> scalar."""
    check_tensor("scores", scores, ndim=4, floating=True)
    B, K = scores.shape[:2]
    return multilabel_categorical_crossentropy(
        scores.reshape(B * K, -1), y_true.reshape(B * K, -1), mask_value=MASK_VALUE / 2).mean()  # masked spans left out


def global_pointer_bce_loss(scores: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
    """The naive alternative the article argues against: one binary cross-entropy per candidate span.

    ``(B, K, n, n)`` -> scalar, the mean of ``BCE(sigmoid(s), y)`` over the valid cells (score above
    ``MASK_VALUE / 2``); the decision rule ``s > 0`` is the same as for :func:`global_pointer_loss`.
    """
    check_tensor("scores", scores, ndim=4, floating=True)
    check_tensor("y_true", y_true)
    if y_true.shape != scores.shape:
        raise ValueError(f"y_true {tuple(y_true.shape)} and scores {tuple(scores.shape)} differ in shape")
    valid = scores > MASK_VALUE / 2  # (B, K, n, n)
    return torch.nn.functional.binary_cross_entropy_with_logits(scores[valid], y_true.to(scores.dtype)[valid])


def span_token_f1(gold: torch.Tensor, n: int, *, dtype=torch.float32) -> torch.Tensor:
    r"""Token-overlap F1 of every span :math:`[i, j]` with the gold span :math:`[a, b]` (reading-comprehension F1).

    ``gold``: long ``(B, 2)`` of inclusive ``(a, b)``; returns ``(B, n, n)`` with
    :math:`f_1(i,j) = 2\,|[i,j]\cap[a,b]| / ((j-i+1)+(b-a+1))` for :math:`i\le j`, and 0 below the diagonal.
    """
    n = check_int("n", n, min_value=1)
    check_tensor("gold", gold, ndim=2)
    if gold.shape[1] != 2 or gold.is_floating_point():
        raise ValueError(f"gold must be integer (B, 2) spans (a, b), got {tuple(gold.shape)} {gold.dtype}")
    a, b = gold[:, 0, None, None], gold[:, 1, None, None]  # (B, 1, 1) each
    if bool(((a < 0) | (a > b) | (b >= n)).any()):
        raise ValueError(f"gold spans must satisfy 0 <= a <= b < n={n}")
    i = torch.arange(n, device=gold.device)[:, None]  # (n, 1)
    j = torch.arange(n, device=gold.device)[None, :]  # (1, n)
    overlap = (torch.minimum(j, b) - torch.maximum(i, a) + 1).clamp_min(0)  # (B, n, n)
    f1 = (2 * overlap).to(dtype) / ((j - i + 1) + (b - a + 1)).to(dtype)  # (B, n, n)
    return torch.where(i <= j, f1, torch.zeros((), dtype=f1.dtype, device=f1.device))


def span_log_softmax(scores: torch.Tensor) -> torch.Tensor:
    r""":math:`\log p(i,j)` with :math:`p(i,j)=e^{s(i,j)}/\sum_{i'\le j'}e^{s(i',j')}`: one softmax over the valid spans.

    ``scores``: ``(..., n, n)``, cells at or below ``MASK_VALUE / 2`` are not candidates (their log-probability is
    ``-inf``). Every table must hold at least one candidate.
    """
    check_tensor("scores", scores, floating=True)
    if scores.ndim < 2 or scores.shape[-1] != scores.shape[-2]:
        raise ValueError(f"scores must be (..., n, n), got {tuple(scores.shape)}")
    valid = scores > MASK_VALUE / 2
    if not bool(valid.flatten(-2).any(-1).all()):
        raise ValueError("every score table needs at least one valid span")
    flat = scores.masked_fill(~valid, -math.inf).flatten(-2)  # (..., n*n)
    return torch.log_softmax(flat, dim=-1).view_as(scores)


def expected_f1_loss(scores: torch.Tensor, f1: torch.Tensor, *, lam: float = 0.0) -> torch.Tensor:
    r"""Article 8373's loss for answer extraction: :math:`-\sum_{i\le j}p(i,j)f_1(i,j)+\lambda\sum_{i\le j}p\log p`.

    ``scores`` ``(B, n, n)`` (masked as for :func:`span_log_softmax`), ``f1`` the same shape (e.g.
    :func:`span_token_f1`); ``lam >= 0`` weighs the negative entropy. Mean over the batch. Its minimiser over
    distributions is :math:`p\propto e^{f_1/\lambda}` (the Gibbs distribution), the F1-best span as
    :math:`\lambda	o0`.
    """
    lam = check_real("lam", lam, low=0.0)
    check_tensor("f1", f1)
    if f1.shape != scores.shape or scores.ndim != 3:
        raise ValueError(f"scores and f1 must both be (B, n, n), got {tuple(scores.shape)} and {tuple(f1.shape)}")
    logp = span_log_softmax(scores)  # (B, n, n), -inf off the candidates
    p = logp.exp()
    plogp = p * logp.masked_fill(torch.isinf(logp), 0)  # 0 log 0 = 0, with a finite gradient
    return (-(p * f1.to(p.dtype)).flatten(1).sum(-1) + lam * plogp.flatten(1).sum(-1)).mean()
