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
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ._validate import check_int, check_tensor

__all__ = ["normalized_embedding", "cosine_cost_matrix", "emo_loss", "emo_ce_mix", "emo_soft_bounds",
           "emd_linprog"]

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
