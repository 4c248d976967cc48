r"""FLASH: a GAU whose attention is mixed chunk attention (quadratic inside chunks, linear across them).

Article: FLASH:可能是近来最有意思的高效Transformer设计 (https://kexue.fm/archives/8934). Paper: W. Hua,
Z. Dai, H. Liu, Q. V. Le, *Transformer Quality in Linear Time*, arXiv:2202.10447. The gated unit, its
scale-offset maps and rotary positions come from :mod:`kexue_lib.gau`; the relu² kernel from
:mod:`kexue_lib.attention`.

Split the ``n`` positions into ``G = ceil(n / c)`` chunks of ``c``. From ``Z = silu(X W_z)`` four
scale-offset maps give :math:`Q^{quad}, K^{quad}, Q^{lin}, K^{lin}` (``(b, n, s)``); with
:math:`U, V` (``(b, n, e)``) as in GAU, chunk :math:`g` (1-based) outputs

.. math::

    \hat V^{quad}_g = \frac{1}{L_g}\,\mathrm{relu}^2\!\Big(\frac{Q^{quad}_g {K^{quad}_g}^\top}{\sqrt s}\Big) V_g,\qquad
    \hat V^{lin}_g = \frac{1}{N_g}\, Q^{lin}_g \sum_{h\in H_g} {K^{lin}_h}^\top V_h,

    O_g = \big[U_g \odot (\hat V^{quad}_g + \hat V^{lin}_g)\big] W_o,

with :math:`H_g` all chunks (bidirectional) or the chunks before :math:`g` (causal, an exclusive
prefix sum of the per-chunk states :math:`{K^{lin}_h}^\top V_h` of shape ``(s, e)``, so memory is
``b G s e``, never ``b n s e``). The causal quadratic block is masked lower-triangular. The
normalizers (``normalizer=``):

* ``"count"`` (default): every sum is divided by its number of visible real tokens: :math:`L_g` =
  visible keys in the chunk, :math:`N_g = n` (bidirectional) or :math:`(g-1)c` (causal; the first chunk
  has an empty sum and gives 0). This is the rule the article states in words ("the first t terms are
  divided by t, not n").
* ``"article"``: the article's formulas as printed: :math:`L_g = c` (1/(cs) with the 1/sqrt(s)),
  :math:`N_g = n` bidirectional and :math:`(g-1)n/c` causal.
* ``"peer"``: FLASH-pytorch's conventions: the quadratic kernel :math:`\mathrm{relu}^2(QK^\top/c)` (no
  1/sqrt(s)), :math:`N_g = n` bidirectional and :math:`c` causal.
* ``"sum"``: no normalization at all (raw sums; for checking the chunk algebra).

``parts`` selects the terms for the paper's local/global ablation: ``"both"`` (FLASH), ``"local"``
(:math:`\hat V^{quad}` only: chunked local attention) or ``"global"`` (:math:`\hat V^{lin}` only: chunked
linear attention; causal, a token then sees no key of its own chunk).

``mask`` (``(b, n)`` bool, True = real token) removes padded keys from both parts; under ``"count"``
the counts are those of real tokens, so a padded batch gives the unpadded outputs on real tokens.
Tensors: q, k ``(..., n, s)``, v ``(..., n, e)``; device and dtype follow the inputs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._validate import check_int, check_tensor
from .attention import causal_mask, relu2_weights
from .gau import GAU, ScaleOffset, rotary

__all__ = ["NORMALIZERS", "PARTS", "chunk_linear_attention", "full_linear_attention", "mixed_chunk_attention", "FLASH"]

NORMALIZERS = ("count", "article", "peer", "sum")
PARTS = ("both", "local", "global")


def _check(q, k, v, mask, normalizer, chunk_size):
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, ndim=(3, 4), floating=True)
    if q.shape != k.shape or q.shape[:-1] != v.shape[:-1] or q.dtype != v.dtype or k.dtype != v.dtype:
        raise ValueError(f"q, k must be (..., n, s) and v (..., n, e) of one dtype, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if normalizer not in NORMALIZERS:
        raise ValueError(f"normalizer must be one of {NORMALIZERS}, got {normalizer!r}")
    c = check_int("chunk_size", chunk_size, min_value=1)
    if mask is not None:
        check_tensor("mask", mask)
        if mask.dtype != torch.bool or mask.shape != q.shape[:1] + q.shape[-2:-1]:
            raise ValueError(f"mask must be a bool (batch, n) tensor, got {mask.dtype} {tuple(mask.shape)}")
        mask = mask.view(mask.shape[0], *([1] * (q.ndim - 3)), mask.shape[1])  # (b, [1,] n)
    else:
        mask = torch.ones(q.shape[:-1], dtype=torch.bool, device=q.device)
    return c, mask.expand(q.shape[:-1])


def _chunks(t, c):
    """``(..., n, d) -> (..., G, c, d)``, zero-padding the last chunk."""
    pad = (-t.shape[-2]) % c
    t = F.pad(t, (0, 0, 0, pad)) if pad else t
    return t.reshape(*t.shape[:-2], t.shape[-2] // c, c, t.shape[-1])


def chunk_linear_attention(q, k, v, *, chunk_size: int, causal: bool = False, normalizer: str = "count",
                           mask=None) -> torch.Tensor:
    r"""FLASH's global part :math:`\hat V^{lin}`: ``(..., n, e)``, from per-chunk states ``(..., G, s, e)``.

    Causal: chunk g sees chunks ``< g`` only (an exclusive prefix sum, no subtraction). See the module
    docstring for ``normalizer`` and ``mask``.
    """
    c, real = _check(q, k, v, mask, normalizer, chunk_size)
    n = q.shape[-2]
    kc = _chunks(k * real.unsqueeze(-1).to(k.dtype), c)  # (..., G, c, s), padded keys zero
    vc, qc = _chunks(v, c), _chunks(q, c)  # (..., G, c, e), (..., G, c, s)
    state = kc.transpose(-1, -2) @ vc  # (..., G, s, e): K_h^T V_h
    counts = _chunks(real.unsqueeze(-1).to(q.dtype), c).sum((-1, -2))  # (..., G) real tokens per chunk
    if causal:
        state = torch.cat([torch.zeros_like(state[..., :1, :, :]), state[..., :-1, :, :].cumsum(-3)], dim=-3)
        seen = torch.cat([torch.zeros_like(counts[..., :1]), counts[..., :-1].cumsum(-1)], dim=-1)  # (..., G)
        g = torch.arange(state.shape[-3], device=q.device, dtype=q.dtype)  # g - 1 for 1-based chunks
        norm = {"count": seen, "article": g * n / c, "peer": torch.full_like(g, c), "sum": torch.ones_like(g)}[normalizer]
        norm = torch.where(norm > 0, norm, torch.ones_like(norm))  # empty sums stay 0
        out = qc @ (state / norm.expand_as(seen)[..., None, None])  # (..., G, c, e)
    else:
        total = state.sum(-3, keepdim=True)  # (..., 1, s, e)
        norm = {"count": counts.sum(-1).clamp_min(1), "sum": torch.ones_like(counts[..., 0])}.get(
            normalizer, torch.full_like(counts[..., 0], n))  # (...,)
        out = qc @ (total / norm[..., None, None, None])
    return out.flatten(-3, -2)[..., :n, :]


def full_linear_attention(q, k, v, *, causal: bool = False, normalizer: str = "count", mask=None) -> torch.Tensor:
    r"""Unchunked reference :math:`(QK^\top\odot M)V / N`: O(n²), for checking the chunked forms.

    ``M`` is all ones or lower-triangular; ``N`` the visible real-token count per row (``"count"``), ``n``
    (``"article"`` and ``"peer"``, bidirectional only) or 1 (``"sum"``).
    """
    _, real = _check(q, k, v, mask, normalizer, 1)
    if causal and normalizer not in ("count", "sum"):
        raise ValueError("the causal reference has only the 'count' and 'sum' normalizers")
    vis = real.unsqueeze(-2)  # (..., 1, n)
    if causal:
        vis = vis & causal_mask(q.shape[-2], device=q.device)  # (..., n, n)
    w = (q @ k.transpose(-1, -2)) * vis.to(q.dtype)  # (..., n, n)
    if normalizer == "sum":
        return w @ v
    if normalizer == "count":
        return (w @ v) / vis.sum(-1, keepdim=True).clamp_min(1).to(q.dtype)
    return (w @ v) / q.shape[-2]


def mixed_chunk_attention(q_quad, k_quad, q_lin, k_lin, v, *, chunk_size: int, causal: bool = False,
                          normalizer: str = "count", mask=None, bias=None, parts: str = "both") -> torch.Tensor:
    r""":math:`\hat V^{quad} + \hat V^{lin}` of FLASH, ``(..., n, e)``; see the module docstring.

    ``bias`` (optional, ``(c, c)``) is added to the scaled scores inside each chunk before relu²
    (a relative-position bias); ``None`` adds nothing. ``parts``: ``"both"``, ``"local"`` (quadratic
    term only) or ``"global"`` (linear term only).
    """
    if parts not in PARTS:
        raise ValueError(f"parts must be one of {PARTS}, got {parts!r}")
    c, real = _check(q_quad, k_quad, v, mask, normalizer, chunk_size)
    lin = lambda: chunk_linear_attention(q_lin, k_lin, v, chunk_size=c, causal=causal, normalizer=normalizer, mask=mask)
    if parts == "global":
        return lin()
    n = v.shape[-2]
    qc, kc, vc = _chunks(q_quad, c), _chunks(k_quad, c), _chunks(v, c)  # (..., G, c, s|e)
    keys = _chunks(real.unsqueeze(-1), c).squeeze(-1)  # (..., G, c) real keys
    vis = keys.unsqueeze(-2) | torch.eye(c, dtype=torch.bool, device=v.device)  # pads see themselves only
    if causal:
        vis = vis & causal_mask(c, device=v.device)  # (..., G, c, c)
    length, scale = {"count": ("actual", None), "article": (c, None), "peer": (1, 1.0 / c), "sum": (1, None)}[normalizer]
    if bias is None:
        a = relu2_weights(qc.flatten(0, -3), kc.flatten(0, -3), length=length, scale=scale,
                          mask=vis.flatten(0, -3))  # (B*G, c, c)
        a = a.view(*qc.shape[:-1], c)
    else:
        check_tensor("bias", bias, ndim=2)
        if bias.shape != (c, c):
            raise ValueError(f"bias must be ({c}, {c}), got {tuple(bias.shape)}")
        lam = 1.0 / c if normalizer == "peer" else q_quad.shape[-1] ** -0.5
        a = F.relu((qc @ kc.transpose(-1, -2)) * lam + bias).square() * vis.to(v.dtype)  # (..., G, c, c)
        a = a / (vis.sum(-1, keepdim=True).to(v.dtype) if length == "actual" else length)
    a = a * keys.unsqueeze(-2).to(v.dtype)  # a pad's self-visibility never reaches a real token
    quad = (a @ vc).flatten(-3, -2)[..., :n, :]  # (..., n, e)
    return quad if parts == "local" else quad + lin()


class FLASH(GAU):
    """A FLASH layer (linear-time GAU), ``(batch, n, d_model) -> (batch, n, d_model)``.

    Keyword options as :class:`kexue_lib.gau.GAU` (``expansion``, ``key_dim``, ``causal``, ``rope``,
    ``bias``, ``init_std``), plus ``chunk_size`` (the paper's c = 256), ``normalizer`` (see the module)
    ``rel_pos_bias`` (False: none; True: a learned scalar per in-chunk offset ``j - i``, zero at
    init) and ``parts`` (``"both"``; ``"local"`` or ``"global"`` for the ablation).
    ``forward(x, mask=None)`` with ``mask`` a ``(batch, n)`` bool key-padding mask.
    """

    def __init__(self, d_model: int, *, chunk_size: int = 256, normalizer: str = "count",
                 rel_pos_bias: bool = False, parts: str = "both", **gau_kwargs):
        if "attention" in gau_kwargs or "length" in gau_kwargs:
            raise ValueError("FLASH sets its own attention; use normalizer= instead of attention/length")
        super().__init__(d_model, **gau_kwargs)
        self.chunk_size = check_int("chunk_size", chunk_size, min_value=1)
        if normalizer not in NORMALIZERS:
            raise ValueError(f"normalizer must be one of {NORMALIZERS}, got {normalizer!r}")
        if not isinstance(rel_pos_bias, bool):
            raise ValueError(f"rel_pos_bias must be a bool, got {rel_pos_bias!r}")
        if parts not in PARTS:
            raise ValueError(f"parts must be one of {PARTS}, got {parts!r}")
        self.normalizer, self.parts = normalizer, parts
        self.q_lin, self.k_lin = ScaleOffset(self.s), ScaleOffset(self.s)
        self.rel_bias = nn.Parameter(torch.zeros(2 * self.chunk_size - 1)) if rel_pos_bias else None

    def _bias(self):
        if self.rel_bias is None:
            return None
        i = torch.arange(self.chunk_size, device=self.rel_bias.device)
        return self.rel_bias[i[None, :] - i[:, None] + self.chunk_size - 1]  # (c, c)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        check_tensor("x", x, ndim=3, floating=True)
        if x.shape[-1] != self.d_model:
            raise ValueError(f"x must be (batch, n, {self.d_model}), got {tuple(x.shape)}")
        u, v = F.silu(self.to_uv(x)).chunk(2, dim=-1)  # (b, n, e) each
        z = F.silu(self.to_z(x))  # (b, n, s)
        qk = [m(z) for m in (self.q_affine, self.k_affine, self.q_lin, self.k_lin)]
        if self.rope:
            qk = [rotary(t) for t in qk]
        av = mixed_chunk_attention(*qk, v, chunk_size=self.chunk_size, causal=self.causal,
                                   normalizer=self.normalizer, mask=mask, bias=self._bias(),
                                   parts=self.parts)
        return self.out(u * av)  # (b, n, d)
