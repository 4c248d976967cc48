"""Training objectives the book's chapters check.

* :func:`info_nce_loss`: the symmetric InfoNCE (contrastive) loss of van den Oord et al., arXiv:1807.03748,
  in the form used by SimCLR/CLIP-style training: for a batch of ``n`` pairs ``(a_i, b_i)`` of unit vectors,

      L = 1/2 [ CE(a B^T / tau, identity) + CE(b A^T / tau, identity) ],

  the cross-entropy of each row of cosine logits ``cos(a_i, b_j) / tau`` against its own pair. The article
  "注意力和Softmax的两点有趣发现:鲁棒性和信息量" (kexue.fm/archives/9593) reads ``tau`` through entropy: with
  cosine logits in ``[-1/tau, 1/tau]`` the row entropy cannot fall more than about 0.47 nat below ``log n`` at
  ``tau = 1``, so a contrastive model trained at ``tau = 1`` extracts little information.
* :func:`multilabel_categorical_crossentropy` (and its sparse form): ZLPR, the multi-label "softmax +
  cross-entropy" of kexue.fm/archives/7359, with the soft-label version of "多标签“Softmax+交叉熵”的软标签版本"
  (kexue.fm/archives/9064); paper: Su et al., "ZLPR: A Novel Loss for Multi-label Classification",
  arXiv:2208.02955. For scores ``s`` and targets ``t`` in ``[0, 1]``

      l(s, t) = log(1 + sum_i t_i e^{-s_i}) + log(1 + sum_i (1 - t_i) e^{s_i}),

  which is the hard loss ``log(1 + sum_neg e^{s_i}) + log(1 + sum_pos e^{-s_j})`` at ``t`` in ``{0, 1}``, and
  whose gradient vanishes where ``t_i e^{-s_i} = (1 - t_i) e^{s_i}``: the calibrated probability is
  ``sigma(2 s)`` (:func:`zlpr_probs`), measured by :func:`expected_calibration_error`. The soft targets the
  article has in mind come from :func:`smooth_labels` (per-class label smoothing, ``t = (1 - eps) y + eps (1 - y)``)
  and :func:`mixup` (Zhang et al., arXiv:1710.09412: ``x = lam x_a + (1 - lam) x_b``, the same mixture of targets).

The other objectives of Part VI live in their own modules and are re-exported here, so that
``kexue_lib.losses`` is the one place to import a loss from: :func:`~kexue_lib.cosent.cosent_loss` (CoSENT,
kexue.fm/archives/8847, 8860) and :func:`~kexue_lib.emo.emo_loss` with :func:`~kexue_lib.emo.emo_ce_mix`
(EMO, kexue.fm/archives/9797).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._validate import check_int, check_real, check_tensor
from .cosent import cosent_loss
from .emo import emo_ce_mix, emo_loss

__all__ = [
    "info_nce_loss", "info_nce_logits", "multilabel_categorical_crossentropy",
    "sparse_multilabel_categorical_crossentropy", "zlpr_probs", "expected_calibration_error", "smooth_labels", "mixup",
    "cosent_loss", "emo_loss", "emo_ce_mix",
]


def info_nce_logits(a: torch.Tensor, b: torch.Tensor, *, tau: float) -> torch.Tensor:
    """Cosine logits ``cos(a_i, b_j) / tau`` of shape ``(..., n, n)`` for ``a``, ``b`` of shape ``(..., n, d)``.

    The rows are L2-normalized here (any nonzero vectors are accepted); ``tau`` must be positive and finite.
    """
    tau = check_real("tau", tau, low=0.0, low_open=True)
    a = check_tensor("a", a, floating=True)
    b = check_tensor("b", b, floating=True)
    if a.ndim < 2 or a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape (..., n, d), got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[-2] < 2:
        raise ValueError(f"a contrastive batch needs at least 2 pairs, got n = {a.shape[-2]}")
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    if bool((na == 0).any()) or bool((nb == 0).any()):
        raise ValueError("a and b must not contain zero vectors (their cosine is undefined)")
    return (a / na.unsqueeze(-1)) @ (b / nb.unsqueeze(-1)).transpose(-1, -2) / tau  # (..., n, n)


def info_nce_loss(a: torch.Tensor, b: torch.Tensor, *, tau: float) -> torch.Tensor:
    """Symmetric InfoNCE loss of the pairs ``(a_i, b_i)``, averaged over the batch (and any leading axes)."""
    logits = info_nce_logits(a, b, tau=tau)  # (..., n, n)
    n = logits.shape[-1]
    target = torch.arange(n, device=logits.device).expand(logits.shape[:-1])  # (..., n)
    row = F.cross_entropy(logits.reshape(-1, n), target.reshape(-1))
    col = F.cross_entropy(logits.transpose(-1, -2).reshape(-1, n), target.reshape(-1))
    return 0.5 * (row + col)


def _zlpr_core(s: torch.Tensor, t: torch.Tensor, excluded: torch.Tensor, eps: float) -> torch.Tensor:
    """The soft ZLPR loss of scores ``s`` and targets ``t`` (same shape), ``excluded`` classes left out.

    Written as two log-sum-exps over ``[-s_i + log t_i, 0]`` and ``[s_i + log(1 - t_i), 0]``. Targets below
    ``eps`` count exactly as 0 and above ``1 - eps`` exactly as 1: a clipped ``log t`` alone (about -16 for
    ``eps = 1e-7``) would let a class masked by a score of -1e7 leak back into the positive side.
    """
    dtype = s.dtype
    work = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype  # half inputs: accumulate in fp32
    s = torch.where(excluded, torch.zeros((), dtype=dtype, device=s.device), s).to(work)  # (..., C), finite
    t = t.to(work)  # (..., C)
    as_zero, as_one = (t < eps) | excluded, (t > 1 - eps) | excluded  # (..., C) each
    tc = t.clamp(eps, 1 - eps)  # (..., C): only read where both logs are finite
    zero = torch.zeros((), dtype=work, device=s.device)
    ninf = torch.full((), -math.inf, dtype=work, device=s.device)
    pos = torch.where(as_zero, ninf, -s + torch.where(as_one, zero, torch.log(tc)))  # (..., C): -s_i + log t_i
    neg = torch.where(as_one, ninf, s + torch.where(as_zero, zero, torch.log1p(-tc)))  # (..., C): s_i + log(1-t_i)
    pad = torch.zeros(s.shape[:-1] + (1,), dtype=work, device=s.device)  # (..., 1): the "1 +" of each log
    loss = torch.logsumexp(torch.cat([pos, pad], -1), -1) + torch.logsumexp(torch.cat([neg, pad], -1), -1)  # (...,)
    return loss.to(dtype)


def _excluded(y_pred: torch.Tensor, mask_value: float | None) -> torch.Tensor:
    excluded = y_pred == -math.inf  # (..., C)
    if mask_value is not None:
        excluded = excluded | (y_pred <= mask_value)
    return excluded


def multilabel_categorical_crossentropy(
    y_pred: torch.Tensor, y_true: torch.Tensor, *, eps: float = 1e-7, mask_value: float | None = None
) -> torch.Tensor:
    """ZLPR loss, one value per sample: ``y_pred`` scores ``(..., C)``, ``y_true`` targets in ``[0, 1]``, same shape.

    Hard (0/1, bool or integer) and soft targets alike (kexue.fm/archives/9064). A class is left out of the
    loss, whatever its target, when its score is ``-inf`` or, with ``mask_value`` given, ``<= mask_value``
    (e.g. ``mask_value=-1e6`` for scores masked with ``-1e7``). Targets below ``eps`` count as exactly 0, above
    ``1 - eps`` as exactly 1. Scores must not be ``nan`` or ``+inf``. The result has shape ``y_pred.shape[:-1]``
    and ``y_pred``'s dtype and device (float16/bfloat16 are computed in float32). Predict the classes with
    ``y_pred > 0``; their probabilities are :func:`zlpr_probs`.
    """
    eps = check_real("eps", eps, low=0.0, high=0.5, low_open=True, high_open=True)
    if mask_value is not None:
        mask_value = check_real("mask_value", mask_value)
    y_pred = check_tensor("y_pred", y_pred, floating=True)
    y_true = check_tensor("y_true", y_true)
    if y_pred.ndim < 1 or y_true.shape != y_pred.shape:
        raise ValueError(f"y_true must have y_pred's shape (..., C), got {tuple(y_true.shape)} and {tuple(y_pred.shape)}")
    if y_true.dtype.is_complex or y_pred.dtype.is_complex:
        raise ValueError("complex inputs are not supported")
    t = y_true.to(y_pred.dtype) if not y_true.is_floating_point() else y_true  # (..., C)
    if bool(torch.isnan(t).any()) or bool(((t < 0) | (t > 1)).any()):
        raise ValueError("y_true must lie in [0, 1] (and not be nan)")
    if bool(torch.isnan(y_pred).any()) or bool((y_pred == math.inf).any()):
        raise ValueError("y_pred must not contain nan or +inf (mask a class with -inf or a very negative score)")
    return _zlpr_core(y_pred, t, _excluded(y_pred, mask_value), eps)


def sparse_multilabel_categorical_crossentropy(
    y_pred: torch.Tensor, pos_idx: torch.Tensor, *, mask_value: float | None = None
) -> torch.Tensor:
    """Hard-label ZLPR with the positives given as class indices: ``pos_idx`` of shape ``(..., k)``, ``-1`` pads.

    Equal to :func:`multilabel_categorical_crossentropy` with the 0/1 target that has ones at ``pos_idx``
    (useful when the targets are far sparser than ``C``, as in GlobalPointer's span matrices). Duplicate
    indices are rejected; masking and dtypes as in the dense loss.
    """
    y_pred = check_tensor("y_pred", y_pred, floating=True)
    pos_idx = check_tensor("pos_idx", pos_idx)
    if pos_idx.is_floating_point() or pos_idx.dtype == torch.bool or pos_idx.dtype.is_complex:
        raise ValueError(f"pos_idx must be an integer tensor, got {pos_idx.dtype}")
    if y_pred.ndim < 1 or pos_idx.ndim != y_pred.ndim or pos_idx.shape[:-1] != y_pred.shape[:-1]:
        raise ValueError(f"pos_idx must have shape (..., k) matching y_pred (..., C), got {tuple(pos_idx.shape)} "
                         f"and {tuple(y_pred.shape)}")
    n_cls = y_pred.shape[-1]
    if bool(((pos_idx < -1) | (pos_idx >= n_cls)).any()):
        raise ValueError(f"pos_idx entries must be class indices in [0, {n_cls}) or -1 (padding)")
    srt = pos_idx.sort(-1).values  # (..., k)
    if bool(((srt[..., 1:] == srt[..., :-1]) & (srt[..., 1:] >= 0)).any()):
        raise ValueError("pos_idx must not repeat a class")
    valid = pos_idx >= 0  # (..., k)
    target = torch.zeros(y_pred.shape[:-1] + (n_cls + 1,), dtype=y_pred.dtype, device=y_pred.device)  # (..., C+1)
    target.scatter_(-1, torch.where(valid, pos_idx, n_cls).to(torch.long), 1.0)  # padding lands in the extra slot
    return multilabel_categorical_crossentropy(y_pred, target[..., :n_cls], mask_value=mask_value)


def zlpr_probs(y_pred: torch.Tensor) -> torch.Tensor:
    """Calibrated class probabilities of ZLPR scores, ``sigmoid(2 * y_pred)`` (the loss's zero-gradient point)."""
    y_pred = check_tensor("y_pred", y_pred, floating=True)
    return torch.sigmoid(2 * y_pred)


def smooth_labels(y: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-class (binary) label smoothing for multi-label targets: ``(1 - eps) y + eps (1 - y)``.

    A positive becomes ``1 - eps`` and a negative ``eps``, independently per class (not the softmax form
    ``eps / C``); soft targets in ``[0, 1]`` are smoothed the same way. ``eps`` in ``[0, 0.5)``. Floating ``y``
    keeps its dtype and device; bool or integer 0/1 labels become the default float dtype.
    """
    eps = check_real("eps", eps, low=0.0, high=0.5, high_open=True)
    y = check_tensor("y", y)
    if y.dtype.is_complex:
        raise ValueError("complex targets are not supported")
    t = y if y.is_floating_point() else y.to(torch.get_default_dtype())
    if bool(torch.isnan(t).any()) or bool(((t < 0) | (t > 1)).any()):
        raise ValueError("y must lie in [0, 1] (and not be nan)")
    return t * (1 - 2 * eps) + eps


def mixup(x: torch.Tensor, y: torch.Tensor, *, lam, perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup of a batch with a permutation of itself: ``lam * x + (1 - lam) * x[perm]``, the same for ``y``.

    ``x`` has shape ``(B, ...)`` and ``y`` ``(B, C)`` (0/1 or soft targets); ``lam`` is one number in ``[0, 1]``
    (the original recipe: one ``lam ~ Beta(alpha, alpha)`` per batch) or a tensor ``(B,)``, one per sample;
    ``perm`` is a permutation of ``range(B)``. The mixed targets are soft, which is what the soft ZLPR loss
    accepts. Drawing ``lam`` and ``perm`` is left to the caller, so that runs are reproducible. Returns the
    mixed ``(x, y)`` in ``x``'s and ``y``'s floating dtypes (0/1 labels become ``x``'s dtype).
    """
    x = check_tensor("x", x, floating=True)
    y = check_tensor("y", y, ndim=2)
    perm = check_tensor("perm", perm, ndim=1)
    B = x.shape[0] if x.ndim else 0
    if x.ndim < 1 or y.shape[0] != B:
        raise ValueError(f"x (B, ...) and y (B, C) must share the batch size, got {tuple(x.shape)} and {tuple(y.shape)}")
    if perm.is_floating_point() or perm.dtype in (torch.bool,) or perm.dtype.is_complex or perm.numel() != B:
        raise ValueError(f"perm must be an integer permutation of range({B}), got {perm.dtype} of shape {tuple(perm.shape)}")
    if not torch.equal(perm.sort().values.cpu(), torch.arange(B)):
        raise ValueError(f"perm must be a permutation of range({B})")
    t = y if y.is_floating_point() else y.to(x.dtype)  # (B, C)
    if bool(torch.isnan(t).any()) or bool(((t < 0) | (t > 1)).any()):
        raise ValueError("y must lie in [0, 1] (and not be nan)")
    if isinstance(lam, torch.Tensor):
        if lam.shape != (B,) or not lam.is_floating_point():
            raise ValueError(f"a tensor lam must be floating with shape ({B},), got {lam.dtype} {tuple(lam.shape)}")
        if bool(torch.isnan(lam).any()) or bool(((lam < 0) | (lam > 1)).any()):
            raise ValueError("lam must lie in [0, 1]")
        lx = lam.to(x.dtype).reshape((B,) + (1,) * (x.ndim - 1))  # (B, 1, ...)
        ly = lam.to(t.dtype)[:, None]  # (B, 1)
    else:
        lx = ly = check_real("lam", lam, low=0.0, high=1.0)
    perm = perm.to(device=x.device, dtype=torch.long)
    return lx * x + (1 - lx) * x[perm], ly * t + (1 - ly) * t[perm.to(t.device)]


def expected_calibration_error(probs: torch.Tensor, outcomes: torch.Tensor, *, bins: int = 10) -> torch.Tensor:
    """Expected calibration error of predicted probabilities: ``sum_b (n_b / n) |mean(p in b) - mean(y in b)|``.

    ``probs`` and ``outcomes`` (0/1 labels, or the probabilities the outcomes are drawn with, for a noise-free
    estimate) have the same shape and are pooled; ``bins`` equal-width bins on ``[0, 1]``. A scalar in
    ``probs``'s dtype.
    """
    bins = check_int("bins", bins, min_value=1)
    probs = check_tensor("probs", probs, floating=True)
    outcomes = check_tensor("outcomes", outcomes)
    if outcomes.shape != probs.shape or probs.numel() == 0:
        raise ValueError(f"probs and outcomes must have one common non-empty shape, got {tuple(probs.shape)} "
                         f"and {tuple(outcomes.shape)}")
    p, y = probs.reshape(-1), outcomes.reshape(-1).to(probs.dtype)  # (n,), (n,)
    if bool(((p < 0) | (p > 1) | torch.isnan(p)).any()) or bool(((y < 0) | (y > 1) | torch.isnan(y)).any()):
        raise ValueError("probs and outcomes must lie in [0, 1]")
    b = (p * bins).long().clamp(max=bins - 1)  # (n,) bin of each prediction
    cnt = torch.zeros(bins, dtype=p.dtype, device=p.device).index_add_(0, b, torch.ones_like(p))  # (bins,)
    gap = torch.zeros(bins, dtype=p.dtype, device=p.device).index_add_(0, b, p - y)  # (bins,) sum of p - y
    return gap.abs().sum() / cnt.sum()
