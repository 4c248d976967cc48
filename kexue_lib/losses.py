"""Training objectives the book's chapters check.

* :func:`info_nce_loss`: the symmetric InfoNCE (contrastive) loss of van den Oord et al., arXiv:1807.03748,
  in the form used by SimCLR/CLIP-style training: for a batch of ``n`` pairs ``(a_i, b_i)`` of unit vectors,

      L = 1/2 [ CE(a B^T / tau, identity) + CE(b A^T / tau, identity) ],

  the cross-entropy of each row of cosine logits ``cos(a_i, b_j) / tau`` against its own pair. The article
  "注意力和Softmax的两点有趣发现:鲁棒性和信息量" (kexue.fm/archives/9593) reads ``tau`` through entropy: with
  cosine logits in ``[-1/tau, 1/tau]`` the row entropy cannot fall more than about 0.47 nat below ``log n`` at
  ``tau = 1``, so a contrastive model trained at ``tau = 1`` extracts little information.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._validate import check_real, check_tensor

__all__ = ["info_nce_loss", "info_nce_logits"]


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
