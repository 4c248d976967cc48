r"""EMO: an optimal-transport classification loss against the cosine cost of a frozen embedding.

Article: EMO：基于最优传输思想设计的分类损失函数 (https://kexue.fm/archives/9797, 2023-10-13).
Paper: S. Ren, Z. Wu, K. Q. Zhu, *EMO: Earth Mover Distance Optimization for Auto-Regressive Language
Modeling*, arXiv:2310.04691.

The earth mover's distance between the predicted distribution :math:`p` and the target :math:`\tau` is
:math:`\mathcal C[p,\tau]=\min_{\gamma\in\Pi[p,\tau]}\sum_{ij}\gamma_{ij}c_{ij}`. For a one-hot target
:math:`t` the only coupling is :math:`\gamma_{ij}=p_i\delta_{jt}`, so :math:`\mathcal C=\sum_i p_i c_{it}`.
With the cosine cost :math:`c_{ij}=1-\langle\hat e_i,\hat e_j\rangle` of a frozen embedding
:math:`e\in\mathbb R^{V\times d}` (:math:`\hat e_i=e_i/\lVert e_i\rVert`),

.. math:: \mathrm{EMO}(z,t)=1-\Big\langle\sum_i p_i\hat e_i,\ \hat e_t\Big\rangle,\qquad p=\mathrm{softmax}(z),

computed here in :math:`O(B\cdot V + V\cdot d)` memory: the :math:`V\times V` cost matrix is never formed.
Its gradient is :math:`\partial\,\mathrm{EMO}/\partial z_j=p_j(c_{jt}-\mathrm{EMO})`, so
:math:`\partial\,\mathrm{EMO}/\partial z_t=-p_t\,\mathrm{EMO}`.

For a soft target the product coupling :math:`p\tau^\top` gives the article's upper bound
:math:`\mathcal C\le\sum_{ij}p_i\tau_jc_{ij}=1-\langle m_p,m_\tau\rangle` (:math:`m_p=\sum_ip_i\hat e_i`);
since :math:`c_{ij}=\tfrac12\lVert\hat e_i-\hat e_j\rVert^2`, Jensen's inequality gives the lower bound
:math:`\mathcal C\ge\tfrac12\lVert m_p-m_\tau\rVert^2` (:func:`emo_soft_bounds`). :func:`emd_linprog` is a
float64 linear-programming oracle for small vocabularies (POT's ``ot.emd2`` is the installed peer).

:func:`emo_ce_mix` is the mix of the paper's code, :math:`\tfrac12(\mathrm{CE}+\mathrm{sg}[\mathrm{CE}/
\mathrm{EMO}]\cdot\mathrm{EMO})`: EMO rescaled to the magnitude of CE (``sg`` = stop-gradient).

Dtype policy: the softmax and the inner products run in the logits' dtype, upcast to float32 for half
precision; the result is returned in the logits' dtype, on the logits' device.

The article's practical claims are about fine-tuning language models. A small faithful version needs a language
whose near-synonyms are known, so the rest of the module is an experiment harness:

* :func:`synonym_language`: a first-order chain over ``V`` tokens in ``K`` hidden classes; the class follows a
  Markov chain and emits one of its members with Zipf weights, so members of a class are interchangeable given
  the context. Its next-token law :math:`q(\cdot\mid x)` is known exactly, and :func:`chain_cross_entropy`
  gives a model's true cross-entropy :math:`-\sum_x\pi_x\sum_yq(y\mid x)\log\hat q(y\mid x)` without sampling
  (:func:`chain_emo` its expected EMO).
* :class:`BigramLMs`: ``S`` independent bigram MLPs (embedding, one GELU layer, linear head) held as batched
  tensors, each initialised from its own seed, and :func:`train_lms`, which trains them together with Adam
  (per-model losses summed, so each model sees only its own gradient). A bigram model's logits depend on the
  current token only, so a batch enters the loss through its ``V x V`` pair counts; the count-form losses
  :func:`cross_entropy_counts`, :func:`emo_loss_counts` and :func:`emo_ce_mix_counts` equal the token means
  exactly and return one value per model, each with its own frozen cost embedding.
* :func:`ppmi_embedding`: a count-based Word2Vec stand-in (truncated SVD of the positive PMI matrix of a corpus),
  :func:`neighbour_purity` (how often a token's nearest neighbour is a synonym) and :func:`distinct_bigrams`.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ._validate import check_int, check_real, check_tensor

__all__ = ["normalized_embedding", "cosine_cost_matrix", "emo_loss", "emo_ce_mix", "emo_soft_bounds",
           "emd_linprog", "emo_loss_counts", "emo_ce_mix_counts", "cross_entropy_counts", "synonym_language",
           "sample_chain", "chain_cross_entropy", "chain_emo", "BigramLMs", "train_lms", "ppmi_embedding",
           "neighbour_purity", "distinct_bigrams"]

_REDUCTIONS = ("mean", "sum", "none")


def normalized_embedding(cost_embedding: torch.Tensor) -> torch.Tensor:
    """Row-normalised, detached copy of the frozen cost embedding ``(V, d)``."""
    check_tensor("cost_embedding", cost_embedding, ndim=2, floating=True)
    norms = cost_embedding.detach().norm(dim=-1, keepdim=True)  # (V, 1)
    if not bool(torch.all(norms > 0)):
        raise ValueError("cost_embedding has a zero row: the cosine cost is undefined for it")
    return cost_embedding.detach() / norms  # (V, d)


def cosine_cost_matrix(cost_embedding: torch.Tensor) -> torch.Tensor:
    r"""The full ``(V, V)`` cost :math:`c_{ij}=1-\cos(e_i,e_j)` (for tests and small vocabularies only)."""
    e = normalized_embedding(cost_embedding)  # (V, d)
    return 1 - e @ e.T  # (V, V)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _check_inputs(logits, labels, cost_embedding, ignore_index):
    check_tensor("logits", logits, floating=True)
    check_tensor("labels", labels)
    check_int("ignore_index", ignore_index)
    if logits.ndim < 1:
        raise ValueError("logits must have a vocabulary dimension, got a scalar")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels must have shape {tuple(logits.shape[:-1])}, got {tuple(labels.shape)}")
    check_tensor("cost_embedding", cost_embedding, ndim=2, floating=True)
    vocab = logits.shape[-1]
    if cost_embedding.shape[0] != vocab:
        raise ValueError(f"cost_embedding must have {vocab} rows (the vocabulary), got {cost_embedding.shape[0]}")
    if cost_embedding.device != logits.device:
        raise ValueError(f"cost_embedding is on {cost_embedding.device}, logits on {logits.device}")
    valid = labels != ignore_index
    bad = valid & ((labels < 0) | (labels >= vocab))
    if bool(bad.any()):
        raise ValueError(f"labels must lie in [0, {vocab}) or equal ignore_index={ignore_index}")
    return valid


def _reduce(values: torch.Tensor, valid: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return values
    total = values.sum()
    if reduction == "sum":
        return total
    return total / valid.sum().clamp(min=1)


def emo_loss(logits: torch.Tensor, labels: torch.Tensor, cost_embedding: torch.Tensor, *,
             ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    r"""EMO of ``softmax(logits)`` against one-hot ``labels`` under the cosine cost of ``cost_embedding``.

    ``logits`` ``(..., V)``, ``labels`` ``(...)`` integer, ``cost_embedding`` ``(V, d)`` (detached: the cost
    is fixed, as optimal transport requires). Equals :math:`\sum_ip_ic_{it}` exactly, without a ``V x V``
    matrix. Positions whose label is ``ignore_index`` give 0 and are left out of the mean.
    ``reduction``: ``"mean"`` (over valid positions), ``"sum"`` or ``"none"`` (shape of ``labels``).
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    valid = _check_inputs(logits, labels, cost_embedding, ignore_index)
    work = _work_dtype(logits.dtype)
    e = normalized_embedding(cost_embedding).to(work)  # (V, d)
    p = torch.softmax(logits.to(work), dim=-1)  # (..., V)
    mean_e = p @ e  # (..., d): sum_i p_i e_i
    target = e[torch.where(valid, labels, 0).long()]  # (..., d)
    emo = 1 - (mean_e * target).sum(-1)  # (..., )
    emo = torch.where(valid, emo, torch.zeros_like(emo))
    return _reduce(emo, valid, reduction).to(logits.dtype)


def emo_ce_mix(logits: torch.Tensor, labels: torch.Tensor, cost_embedding: torch.Tensor, *,
               ignore_index: int = -100, eps: float = 1e-12) -> torch.Tensor:
    r"""The paper code's mix :math:`\tfrac12(\mathrm{CE}+\mathrm{sg}[\mathrm{CE}/\mathrm{EMO}]\,\mathrm{EMO})`.

    Both terms are means over valid positions; the value equals CE, the gradient is the average of the CE
    gradient and the EMO gradient rescaled by :math:`\mathrm{CE}/\mathrm{EMO}`.
    """
    valid = _check_inputs(logits, labels, cost_embedding, ignore_index)
    if not bool(valid.any()):
        raise ValueError("emo_ce_mix needs at least one label different from ignore_index")
    vocab = logits.shape[-1]
    ce = F.cross_entropy(logits.reshape(-1, vocab).to(_work_dtype(logits.dtype)), labels.reshape(-1).long(),
                         ignore_index=ignore_index)  # scalar
    emo = emo_loss(logits, labels, cost_embedding, ignore_index=ignore_index).to(ce.dtype)  # scalar
    return (0.5 * (ce + (ce / emo.clamp(min=eps)).detach() * emo)).to(logits.dtype)


def emo_soft_bounds(p: torch.Tensor, tau: torch.Tensor, cost_embedding: torch.Tensor):
    r"""Bounds on the exact OT cost for soft targets, in :math:`O(Vd)`: returns ``(lower, upper)``.

    ``upper`` :math:`=\sum_{ij}p_i\tau_jc_{ij}=1-\langle m_p,m_\tau\rangle` (the article's product coupling),
    ``lower`` :math:`=\tfrac12\lVert m_p-m_\tau\rVert^2` (Jensen, since :math:`c_{ij}=\tfrac12\lVert\hat
    e_i-\hat e_j\rVert^2`). ``p`` and ``tau`` ``(..., V)`` are probability vectors.
    """
    check_tensor("p", p, floating=True)
    check_tensor("tau", tau, floating=True)
    if p.shape != tau.shape or p.ndim < 1:
        raise ValueError(f"p and tau must have the same shape (..., V), got {tuple(p.shape)}, {tuple(tau.shape)}")
    for name, x in (("p", p), ("tau", tau)):
        if bool((x < 0).any()) or not torch.allclose(x.sum(-1), torch.ones((), dtype=x.dtype, device=x.device),
                                                     atol=1e-6):
            raise ValueError(f"{name} must be non-negative and sum to 1 along the last dimension")
    e = normalized_embedding(cost_embedding).to(p.dtype)  # (V, d)
    if e.shape[0] != p.shape[-1]:
        raise ValueError(f"cost_embedding must have {p.shape[-1]} rows, got {e.shape[0]}")
    mp, mt = p @ e, tau @ e  # (..., d)
    upper = 1 - (mp * mt).sum(-1)  # (...)
    lower = 0.5 * ((mp - mt) ** 2).sum(-1)  # (...)
    return lower, upper


def emd_linprog(p, tau, cost) -> float:
    r"""Exact :math:`\min_{\gamma\in\Pi[p,\tau]}\sum\gamma_{ij}c_{ij}` by ``scipy.optimize.linprog`` (float64).

    A test oracle for small vocabularies: ``p`` ``(n,)``, ``tau`` ``(m,)``, ``cost`` ``(n, m)``.
    """
    from scipy.optimize import linprog

    p, tau, cost = (np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
                    for x in (p, tau, cost))
    n, m = p.size, tau.size
    if p.ndim != 1 or tau.ndim != 1 or cost.shape != (n, m):
        raise ValueError(f"need p (n,), tau (m,), cost (n, m); got {p.shape}, {tau.shape}, {cost.shape}")
    if (p < 0).any() or (tau < 0).any() or abs(p.sum() - tau.sum()) > 1e-9:
        raise ValueError("p and tau must be non-negative with equal total mass")
    rows = np.kron(np.eye(n), np.ones((1, m)))  # (n, n*m): sum_j gamma_ij = p_i
    cols = np.kron(np.ones((1, n)), np.eye(m))  # (m, n*m): sum_i gamma_ij = tau_j
    res = linprog(cost.ravel(), A_eq=np.vstack([rows, cols]), b_eq=np.concatenate([p, tau]),
                  bounds=(0, None), method="highs")
    if not res.success:
        raise ValueError(f"linprog failed: {res.message}")
    return float(res.fun)


# ---------------------------------------------------------------------------------------------------------------
# Count-form losses for bigram models: one value per model, each with its own frozen cost embedding.
#
# A bigram model's logits depend on the current token only, so a batch of (current, next) pairs enters every
# loss through its count matrix n_ab, and the batch mean over tokens is a sum over the V x V table:
# CE = -sum_ab n_ab log p(b|a) / N and EMO = 1 - sum_a <sum_i p(i|a) e_i, sum_b n_ab e_b> / N (exactly).


def _check_counts(logits, counts, cost_embedding):
    check_tensor("logits", logits, ndim=3, floating=True)
    check_tensor("counts", counts, ndim=3, floating=True)
    g, v, vocab = logits.shape
    if counts.shape != logits.shape:
        raise ValueError(f"counts must have the logits' shape {tuple(logits.shape)}, got {tuple(counts.shape)}")
    if bool((counts < 0).any()) or not bool((counts.sum((1, 2)) > 0).all()):
        raise ValueError("counts must be non-negative with a positive total for every model")
    if cost_embedding is not None:
        check_tensor("cost_embedding", cost_embedding, ndim=3, floating=True)
        if cost_embedding.shape[:2] != (g, vocab):
            raise ValueError(f"cost_embedding must have shape ({g}, {vocab}, d), got {tuple(cost_embedding.shape)}")
        if cost_embedding.device != logits.device:
            raise ValueError(f"cost_embedding is on {cost_embedding.device}, logits on {logits.device}")


def cross_entropy_counts(logits: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    r"""Mean cross-entropy per model over the pairs counted in ``counts``: ``logits`` ``(G, V, V)`` (row ``a``:
    the logits of the next token after ``a``), ``counts`` ``(G, V, V)`` (:math:`n_{ab}`) -> ``(G,)``."""
    _check_counts(logits, counts, None)
    counts = counts.to(logits.dtype)
    return -(counts * torch.log_softmax(logits, -1)).sum((1, 2)) / counts.sum((1, 2))


def emo_loss_counts(logits: torch.Tensor, counts: torch.Tensor, cost_embedding: torch.Tensor) -> torch.Tensor:
    r"""Mean EMO per model over the counted pairs, model ``g`` under the cosine cost of ``cost_embedding[g]``
    ``(G, V, d)`` -> ``(G,)``; equals :func:`emo_loss` on the same pairs listed token by token."""
    _check_counts(logits, counts, cost_embedding)
    e = cost_embedding.detach()
    norms = e.norm(dim=-1, keepdim=True)  # (G, V, 1)
    if not bool(torch.all(norms > 0)):
        raise ValueError("cost_embedding has a zero row: the cosine cost is undefined for it")
    e = (e / norms).to(logits.dtype)  # (G, V, d)
    counts = counts.to(logits.dtype)
    mean_e = torch.bmm(torch.softmax(logits, -1), e)  # (G, V, d): sum_i p(i|a) e_i
    target = torch.bmm(counts, e)  # (G, V, d): sum_b n_ab e_b
    return 1 - (mean_e * target).sum((1, 2)) / counts.sum((1, 2))


def emo_ce_mix_counts(logits: torch.Tensor, counts: torch.Tensor, cost_embedding: torch.Tensor, *,
                      eps: float = 1e-12) -> torch.Tensor:
    """:func:`emo_ce_mix` per model in count form: ``(G,)`` values ``(CE + sg[CE/EMO] EMO) / 2`` (each = CE)."""
    ce = cross_entropy_counts(logits, counts)  # (G,)
    emo = emo_loss_counts(logits, counts, cost_embedding)  # (G,)
    return 0.5 * (ce + (ce / emo.clamp(min=eps)).detach() * emo)


# ---------------------------------------------------------------------------------------------------------------
# A language with known synonyms, and a batch of bigram language models.


def synonym_language(members: torch.Tensor, *, generator=None, sharpness: float = 2.5):
    r"""``(law, pi)``: next-token law ``(V, V)`` and its stationary distribution ``(V,)`` (float32).

    ``members`` ``(K, m)`` lists the ``m`` tokens of each of ``K`` classes (a partition of ``range(K * m)``).
    The class of the next token follows ``softmax(sharpness * z)`` from the current token's class (``z``
    standard normal, ``K x K``); within the class a member is drawn with Zipf weights :math:`1/r` in a random
    order. ``pi`` is found by 200 steps of power iteration from the uniform law.
    """
    check_tensor("members", members, ndim=2)
    k, m = members.shape
    vocab = k * m
    if members.dtype != torch.int64 or not torch.equal(members.flatten().sort().values, torch.arange(vocab)):
        raise ValueError(f"members must be an int64 (K, m) partition of range({vocab})")
    sharpness = check_real("sharpness", sharpness, low=0.0)
    token_class = torch.empty(vocab, dtype=torch.long)
    token_class[members] = torch.arange(k)[:, None]
    trans = torch.softmax(sharpness * torch.randn(k, k, generator=generator), -1)  # (K, K)
    zipf = 1.0 / torch.arange(1, m + 1, dtype=torch.float32)  # (m,)
    emit = torch.zeros(k, vocab)  # (K, V)
    for c in range(k):
        w = zipf[torch.randperm(m, generator=generator)]
        emit[c, members[c]] = w / w.sum()
    law = trans[token_class] @ emit  # (V, V)
    pi = torch.full((vocab,), 1.0 / vocab)
    for _ in range(200):
        pi = pi @ law
    return law, pi


def sample_chain(law: torch.Tensor, n: int, length: int, *, generator=None) -> torch.Tensor:
    """``(n, length)`` token sequences of the chain ``law`` ``(V, V)``, the first token uniform."""
    check_tensor("law", law, ndim=2, floating=True)
    if law.shape[0] != law.shape[1]:
        raise ValueError(f"law must be square (V, V), got {tuple(law.shape)}")
    n, length = check_int("n", n, min_value=1), check_int("length", length, min_value=1)
    vocab = law.shape[0]
    x = torch.empty(n, length, dtype=torch.long)
    x[:, 0] = torch.randint(0, vocab, (n,), generator=generator)
    for t in range(1, length):
        x[:, t] = torch.multinomial(law[x[:, t - 1]], 1, generator=generator).squeeze(1)
    return x


def chain_cross_entropy(qhat: torch.Tensor, law: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
    r"""True cross-entropy of the model law ``qhat`` on the chain: :math:`-\sum_x\pi_x\sum_y q(y|x)\log\hat q(y|x)`.

    ``qhat`` and ``law`` ``(..., V, V)``, ``pi`` ``(..., V)`` (broadcast); nats per token, shape ``(...)``.
    With ``qhat = law`` it is the chain's entropy rate.
    """
    for name, x in (("qhat", qhat), ("law", law)):
        check_tensor(name, x, floating=True)
        if x.ndim < 2 or x.shape[-1] != x.shape[-2]:
            raise ValueError(f"{name} must have shape (..., V, V), got {tuple(x.shape)}")
    check_tensor("pi", pi, floating=True)
    if pi.shape[-1] != law.shape[-1] or qhat.shape[-1] != law.shape[-1]:
        raise ValueError("qhat, law and pi must share the vocabulary size")
    return -(pi[..., :, None] * law * qhat.clamp_min(1e-30).log()).sum((-2, -1))


def chain_emo(qhat: torch.Tensor, law: torch.Tensor, pi: torch.Tensor, cost_embedding: torch.Tensor) -> torch.Tensor:
    r"""Expected EMO of the model law ``qhat`` on the chain, :math:`\sum_x\pi_x\sum_yq(y|x)\sum_i\hat q(i|x)c_{iy}`,
    under the cosine cost of ``cost_embedding`` ``(..., V, d)``: computed as
    :math:`1-\sum_x\pi_x\langle\sum_i\hat q(i|x)\hat e_i,\sum_yq(y|x)\hat e_y\rangle` (no ``V x V`` cost).
    Shape ``(...)``."""
    check_tensor("cost_embedding", cost_embedding, floating=True)
    if cost_embedding.ndim < 2 or cost_embedding.shape[-2] != law.shape[-1]:
        raise ValueError(f"cost_embedding must have shape (..., {law.shape[-1]}, d), got {tuple(cost_embedding.shape)}")
    chain_cross_entropy(qhat, law, pi)  # validates the shapes
    norms = cost_embedding.detach().norm(dim=-1, keepdim=True)
    if not bool(torch.all(norms > 0)):
        raise ValueError("cost_embedding has a zero row: the cosine cost is undefined for it")
    e = (cost_embedding.detach() / norms).to(qhat.dtype)  # (..., V, d)
    mass = pi * qhat.sum(-1) * law.sum(-1)  # (..., V): pi_x, exactly as the matrix sum weighs it
    return (mass - pi * ((qhat @ e) * (law @ e)).sum(-1)).sum(-1)


class BigramLMs(nn.Module):
    """``len(seeds)`` independent bigram MLPs ``token -> Embedding -> Linear -> GELU -> Linear head``.

    Model ``s`` is initialised from ``seeds[s]`` alone, as ``nn.Embedding`` (standard normal) and ``nn.Linear``
    (uniform within :math:`\\pm1/\\sqrt{\\text{fan-in}}`) would be, so a model does not depend on the others in the
    batch. ``forward(tokens (S, B, L)) -> logits (S, B, L, V)``; :meth:`table` gives the ``(S, V, V)`` logits of every
    current token at once (all a bigram model can output); :attr:`head` is ``(S, V, D)`` (the LM head,
    ``nn.Linear``'s weight layout); :meth:`next_token_law` is ``(S, V, V)``.
    """

    def __init__(self, *, vocab: int, dim: int, seeds):
        super().__init__()
        vocab, dim = check_int("vocab", vocab, min_value=2), check_int("dim", dim, min_value=1)
        seeds = [check_int("seed", s, min_value=0) for s in seeds]
        if not seeds:
            raise ValueError("need at least one seed")
        self.vocab, self.dim = vocab, dim
        parts = {k: [] for k in ("emb", "w1", "b1", "w2", "b2")}
        bound = 1.0 / math.sqrt(dim)
        for s in seeds:
            g = torch.Generator().manual_seed(s)
            parts["emb"].append(torch.randn(vocab, dim, generator=g))
            for name, shape in (("w1", (dim, dim)), ("b1", (dim,)), ("w2", (vocab, dim)), ("b2", (vocab,))):
                parts[name].append((torch.rand(shape, generator=g) * 2 - 1) * bound)
        for name, tensors in parts.items():
            setattr(self, name, nn.Parameter(torch.stack(tensors)))  # (S, ...)

    @property
    def head(self) -> torch.Tensor:
        """The LM heads, detached: ``(S, V, D)``."""
        return self.w2.detach()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        s = self.emb.shape[0]
        if tokens.ndim != 3 or tokens.shape[0] != s:
            raise ValueError(f"tokens must be ({s}, batch, length), got {tuple(tokens.shape)}")
        b, n = tokens.shape[1:]
        idx = torch.arange(s, device=tokens.device)[:, None]
        h = self.emb[idx, tokens.reshape(s, b * n)]  # (S, B*L, D)
        h = F.gelu(torch.baddbmm(self.b1[:, None], h, self.w1.transpose(1, 2)))  # (S, B*L, D)
        return torch.baddbmm(self.b2[:, None], h, self.w2.transpose(1, 2)).view(s, b, n, self.vocab)

    def table(self) -> torch.Tensor:
        """``(S, V, V)`` logits, row ``a`` for the current token ``a`` (with gradients)."""
        tokens = torch.arange(self.vocab, device=self.emb.device).expand(self.emb.shape[0], 1, -1)
        return self(tokens)[:, 0]

    def next_token_law(self) -> torch.Tensor:
        """``(S, V, V)``: each model's predicted law of the next token given the current one."""
        with torch.no_grad():
            return torch.softmax(self.table(), -1)


def train_lms(model: BigramLMs, data: torch.Tensor, steps: int, loss_fn, *, seeds, batch: int = 64,
              lr: float = 3e-3, record=()) -> dict:
    """Train ``model`` with Adam for ``steps`` steps on ``data`` ``(S, N, L)`` (model ``s`` on ``data[s]``).

    Each step draws ``batch`` sequences per model (model ``s`` from its own generator seeded by ``seeds[s]``),
    counts their (current, next) pairs and minimises ``loss_fn(model.table(), counts).sum()``, where
    ``loss_fn`` returns one loss per model (:func:`cross_entropy_counts`, :func:`emo_loss_counts`,
    :func:`emo_ce_mix_counts`): the same loss as the mean over the batch's tokens, at the cost of one ``V x V``
    table. Returns ``{step: next_token_law}`` for the steps in ``record``.
    """
    s, vocab = model.emb.shape[0], model.vocab
    check_tensor("data", data, ndim=3)
    if data.shape[0] != s or data.shape[2] < 2 or data.dtype != torch.int64:
        raise ValueError(f"data must be int64 ({s}, N, L >= 2), got {data.dtype} {tuple(data.shape)}")
    steps, batch = check_int("steps", steps, min_value=1), check_int("batch", batch, min_value=1)
    seeds = [check_int("seed", x, min_value=0) for x in seeds]
    if len(seeds) != s:
        raise ValueError(f"need one data seed per model ({s}), got {len(seeds)}")
    gens = [torch.Generator().manual_seed(x) for x in seeds]
    opt = torch.optim.Adam(model.parameters(), lr=check_real("lr", lr, low=0.0, low_open=True))
    rows = torch.arange(s)[:, None]
    offset = (torch.arange(s) * vocab * vocab)[:, None]  # (S, 1)
    snaps = {}
    for step in range(1, steps + 1):
        pick = torch.stack([torch.randint(0, data.shape[1], (batch,), generator=g) for g in gens])  # (S, batch)
        x = data[rows, pick].to(model.emb.device)  # (S, batch, L)
        pair = (x[..., :-1] * vocab + x[..., 1:]).reshape(s, -1) + offset.to(x.device)  # (S, batch*(L-1))
        counts = torch.bincount(pair.reshape(-1), minlength=s * vocab * vocab).view(s, vocab, vocab)
        loss = loss_fn(model.table(), counts.to(model.emb.dtype))
        if loss.shape != (s,):
            raise ValueError(f"loss_fn must return one loss per model, shape ({s},), got {tuple(loss.shape)}")
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
        if step in record:
            snaps[step] = model.next_token_law()
    return snaps


# ---------------------------------------------------------------------------------------------------------------
# Cost embeddings without a trained LM head, and sample statistics.


def ppmi_embedding(tokens: torch.Tensor, vocab: int, dim: int, *, window: int = 1) -> torch.Tensor:
    r"""A count-based Word2Vec stand-in: ``(vocab, dim)`` rows :math:`U_{:,:k}\sqrt{\Sigma_k}` of the truncated SVD of
    the positive PMI matrix :math:`\max(0,\log\frac{N_{ab}N}{N_aN_b})` of co-occurrence counts within ``window``
    tokens (either side; rows of ``tokens`` ``(n, L)`` are separate sentences). Float32, on ``tokens``' device.
    A token with no positive PMI (it never occurs, or all its contexts are at or below chance) gets a row of
    zeros up to round-off: check :func:`neighbour_purity` or the row norms before using it as a cost.
    """
    check_tensor("tokens", tokens, ndim=2)
    vocab = check_int("vocab", vocab, min_value=2)
    dim = check_int("dim", dim, min_value=1, max_value=vocab)
    window = check_int("window", window, min_value=1)
    if tokens.dtype != torch.int64 or bool(((tokens < 0) | (tokens >= vocab)).any()):
        raise ValueError(f"tokens must be int64 in [0, {vocab})")
    counts = torch.zeros(vocab, vocab, dtype=torch.float64, device=tokens.device)
    for k in range(1, min(window, tokens.shape[1] - 1) + 1):
        a, b = tokens[:, :-k].reshape(-1), tokens[:, k:].reshape(-1)
        one = torch.ones(a.numel(), dtype=torch.float64, device=tokens.device)
        counts.index_put_((a, b), one, accumulate=True)
    counts = counts + counts.T  # (V, V): symmetric window
    row = counts.sum(1, keepdim=True)  # (V, 1)
    ratio = counts * counts.sum() / (row * row.T).clamp_min(1e-300)
    ppmi = torch.where(counts > 0, ratio.clamp_min(1e-300).log(), torch.zeros_like(counts)).clamp_min(0)
    u, sv, _ = torch.linalg.svd(ppmi)
    return (u[:, :dim] * sv[:dim].sqrt()).float()


def neighbour_purity(embedding: torch.Tensor, token_class: torch.Tensor) -> float:
    """Fraction of tokens whose most cosine-similar other token belongs to the same class."""
    e = normalized_embedding(embedding)  # (V, d)
    check_tensor("token_class", token_class, ndim=1)
    if token_class.shape[0] != e.shape[0]:
        raise ValueError(f"token_class must have {e.shape[0]} entries, got {token_class.shape[0]}")
    cos = e @ e.T
    cos.fill_diagonal_(-math.inf)
    nearest = cos.argmax(1)  # (V,)
    return float((token_class[nearest] == token_class.to(nearest.device)).double().mean())


def distinct_bigrams(samples: torch.Tensor) -> float:
    """Distinct bigrams over all bigrams in ``samples`` ``(n, L)`` (bigrams do not cross rows)."""
    check_tensor("samples", samples, ndim=2)
    if samples.shape[1] < 2:
        raise ValueError("samples need at least two tokens per row")
    pairs = torch.stack([samples[:, :-1].reshape(-1), samples[:, 1:].reshape(-1)], 1)  # (n*(L-1), 2)
    return torch.unique(pairs, dim=0).shape[0] / pairs.shape[0]
