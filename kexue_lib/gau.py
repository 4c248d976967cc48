r"""The gated attention unit (GAU): single-head attention gated like a GLU, normalization as a parameter.

Articles: FLASH:可能是近来最有意思的高效Transformer设计 (https://kexue.fm/archives/8934),
听说Attention与Softmax更配哦~ (https://kexue.fm/archives/9019), 门控注意力单元(GAU)还需要Warmup吗?
(https://kexue.fm/archives/8990). Paper: W. Hua, Z. Dai, H. Liu, Q. V. Le, *Transformer Quality in
Linear Time*, arXiv:2202.10447. Rotary positions: J. Su et al., RoFormer, arXiv:2104.09864.

For ``X`` of shape ``(batch, n, d)``, with :math:`\phi` = swish (SiLU):

.. math::

    U = \phi(XW_u),\quad V = \phi(XW_v),\quad Z = \phi(XW_z),\quad
    Q = \gamma_q\odot Z + \beta_q,\quad K = \gamma_k\odot Z + \beta_k,

    O = (U \odot A V)\,W_o,

with :math:`W_{u,v}\in\mathbb R^{d\times e}`, :math:`W_z\in\mathbb R^{d\times s}`,
:math:`W_o\in\mathbb R^{e\times d}` and the attention matrix :math:`A` chosen by ``attention``:

* ``"relu2"``: :math:`A = \mathrm{relu}^2(QK^\top/\sqrt s)/L` (the paper's), with ``length`` =
  ``"actual"`` (L = number of visible keys), a fixed training length, or ``"rowsum"``
  (L = the row's own sum :math:`\sum_j \mathrm{relu}^2(q_i\cdot k_j/\sqrt s)`, the third fix of article
  9019, see :func:`relu2_rowsum_weights`);
* ``"softmax"``: :math:`A = \mathrm{softmax}(\lambda QK^\top)` with ``scale`` a number,
  ``"standard"``, ``"log_n"`` or ``"log512"`` (``base`` = the training length for the latter).

``A = I`` turns the unit into a GLU feed-forward layer and ``U = 1`` into plain single-head
attention. Rotary position embedding (optional, on by default) rotates Q and K. The
normalization (``attention``, ``length``, ``scale``, ``base``) is a plain attribute, so a model
trained one way can be evaluated another way. Parameters: :math:`2de + ds + ed + 4s` (+ biases).

Scale at initialization (article 8990): for :math:`X_{ij}\sim\mathcal N(0,1)`, LeCun weights and
:math:`\mathcal Q=\mathcal K=\mathrm{id}`, the article keeps only the diagonal of :math:`A`,
:math:`A\approx (s\nu^4/n) I` with :math:`\nu^2=\mathbb E[\phi(\varepsilon)^2]`, and finds
:math:`\|O\|_{\rm rms}\approx s\nu^6/n`; :func:`init_output_stats` measures the full output next to
that diagonal-only one. :class:`PostNormGAULM` is the Post-LN stack :math:`x_{l+1}=\mathrm{LN}(x_l+\mathrm{GAU}(x_l))`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._validate import check_int, check_real, check_tensor
from .attention import SCALES, relu2_attention, relu2_weights, softmax_attention
from .rope import apply_rope

__all__ = ["rotary", "relu2_rowsum_weights", "ScaleOffset", "GAU", "GAUEncoder", "ATTENTIONS",
           "init_output_stats", "PostNormGAULM"]

ATTENTIONS = ("relu2", "softmax")


def rotary(x: torch.Tensor, *, theta: float = 10000.0) -> torch.Tensor:
    """Interleaved rotary positions ``0..n-1`` on ``(..., n, s)``: :func:`kexue_lib.rope.apply_rope` with ``base=theta``.

    Kept as a name for the modules that imported it from here; new code calls ``apply_rope``.
    """
    return apply_rope(x, base=theta)


def relu2_rowsum_weights(q: torch.Tensor, k: torch.Tensor, *, causal: bool = False, mask=None) -> torch.Tensor:
    r"""relu² attention normalized by its own row sum: :math:`a_{ij}=\mathrm{relu}^2(s_{ij})/\sum_{j'}\mathrm{relu}^2(s_{ij'})`.

    The third fix of 听说Attention与Softmax更配哦~ (https://kexue.fm/archives/9019): a normalizer that
    adapts to the row instead of dividing by the length. Any positive scale of the scores cancels (the
    map is homogeneous), so none is taken. A row with no positive visible score is all zeros (as plain
    relu² gives there), not NaN. ``q, k``: ``(..., n, s)``; ``mask`` as for :func:`relu2_weights`.
    """
    a = relu2_weights(q, k, length=1, scale=1.0, causal=causal, mask=mask)  # relu^2(q k^T), masked keys 0
    return a / a.sum(-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)


class ScaleOffset(nn.Module):
    """Per-dimension affine map ``gamma * z + beta`` (the paper's cheap Q and K from a shared Z)."""

    def __init__(self, dim: int):
        super().__init__()
        dim = check_int("dim", dim, min_value=1)
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.gamma + self.beta


class GAU(nn.Module):
    """Single-head gated attention unit, ``(batch, n, d_model) -> (batch, n, d_model)``.

    ``mask`` (optional) is a ``(batch, n)`` bool key-padding mask, ``True`` for real tokens.
    ``init_std=None`` gives LeCun-normal weights (std ``1/sqrt(fan_in)``).
    """

    def __init__(self, d_model: int, *, expansion: int = 2, key_dim: int = 128, attention: str = "relu2",
                 length="actual", scale=None, base: float = 512, causal: bool = False, rope: bool = True,
                 bias: bool = False, init_std: float | None = None):
        super().__init__()
        self.d_model = check_int("d_model", d_model, min_value=1)
        self.e = self.d_model * check_int("expansion", expansion, min_value=1)
        self.s = check_int("key_dim", key_dim, min_value=2)
        if rope and self.s % 2:
            raise ValueError(f"rotary positions need an even key_dim, got {self.s}")
        self.causal, self.rope = bool(causal), bool(rope)
        self.attention, self.length, self.scale, self.base = attention, length, scale, base
        self._check_normalization()
        self.to_uv = nn.Linear(self.d_model, 2 * self.e, bias=bias)
        self.to_z = nn.Linear(self.d_model, self.s, bias=bias)
        self.q_affine, self.k_affine = ScaleOffset(self.s), ScaleOffset(self.s)
        self.out = nn.Linear(self.e, self.d_model, bias=bias)
        for lin in (self.to_uv, self.to_z, self.out):
            std = 1 / math.sqrt(lin.in_features) if init_std is None else check_real("init_std", init_std, low=0.0)
            nn.init.normal_(lin.weight, std=std)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    def _check_normalization(self) -> None:
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.attention == "relu2":
            if not (self.length in ("actual", "rowsum") or (isinstance(self.length, int)
                                                            and not isinstance(self.length, bool) and self.length >= 1)):
                raise ValueError(f"length must be 'actual', 'rowsum' or a positive int, got {self.length!r}")
            if isinstance(self.scale, str) and self.scale != "standard":
                raise ValueError(f"relu2 is homogeneous: a named scale {self.scale!r} makes no sense for it")
        elif isinstance(self.scale, str) and self.scale not in SCALES:
            raise ValueError(f"scale must be a number or one of {SCALES}, got {self.scale!r}")

    def set_normalization(self, attention: str | None = None, *, length=None, scale=None, base=None) -> "GAU":
        """Change how A is normalized (e.g. evaluate at a fixed vs the actual length); returns self."""
        old = (self.attention, self.length, self.scale, self.base)
        self.attention = attention or self.attention
        self.length = self.length if length is None else length
        self.scale = self.scale if scale is None else scale
        self.base = self.base if base is None else base
        try:
            self._check_normalization()
        except ValueError:
            self.attention, self.length, self.scale, self.base = old
            raise
        return self

    def attention_matrix_input(self, x: torch.Tensor):
        """``(u, v, q, k)`` of the unit for input ``x`` (rotary positions applied to q and k)."""
        check_tensor("x", x, ndim=3, floating=True)
        if x.shape[-1] != self.d_model:
            raise ValueError(f"x must be (batch, n, {self.d_model}), got {tuple(x.shape)}")
        u, v = F.silu(self.to_uv(x)).chunk(2, dim=-1)  # (b, n, e) each
        z = F.silu(self.to_z(x))  # (b, n, s)
        q, k = self.q_affine(z), self.k_affine(z)
        if self.rope:
            q, k = rotary(q), rotary(k)
        return u, v, q, k

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        u, v, q, k = self.attention_matrix_input(x)
        n = x.shape[1]
        if mask is not None:
            check_tensor("mask", mask, ndim=2)
            if mask.dtype != torch.bool or mask.shape != x.shape[:2]:
                raise ValueError(f"mask must be a bool (batch, n) = {tuple(x.shape[:2])} tensor, got "
                                 f"{mask.dtype} {tuple(mask.shape)}")
            mask = mask[:, None, :].expand(-1, n, -1)  # (b, n_q, n_k)
        if self.attention == "relu2" and self.length == "rowsum":
            av = relu2_rowsum_weights(q, k, causal=self.causal, mask=mask) @ v
        elif self.attention == "relu2":
            av = relu2_attention(q, k, v, length=self.length, scale=self.scale, causal=self.causal, mask=mask)
        else:
            av = softmax_attention(q, k, v, scale=self.scale, causal=self.causal, mask=mask, base=self.base)
        return self.out(u * av)  # (b, n, d)


class GAUEncoder(nn.Module):
    """Token classifier: embedding, ``depth`` pre-norm residual GAU layers, a final norm and a linear head.

    ``(batch, n)`` token ids -> ``(batch, n, n_classes)`` logits. Keyword arguments go to every
    :class:`GAU`; :meth:`set_normalization` changes all layers at once (e.g. for length tests).
    """

    def __init__(self, vocab: int, n_classes: int, *, d_model: int = 64, depth: int = 2, **gau_kwargs):
        super().__init__()
        vocab, n_classes = check_int("vocab", vocab, min_value=1), check_int("n_classes", n_classes, min_value=1)
        depth = check_int("depth", depth, min_value=1)
        self.embed = nn.Embedding(vocab, d_model)
        self.layers = nn.ModuleList(GAU(d_model, **gau_kwargs) for _ in range(depth))
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(depth + 1))
        self.head = nn.Linear(d_model, n_classes)

    def set_normalization(self, attention: str | None = None, **kwargs) -> "GAUEncoder":
        for layer in self.layers:
            layer.set_normalization(attention, **kwargs)
        return self

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        check_tensor("tokens", tokens, ndim=2)
        if tokens.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"tokens must be an integer tensor, got {tokens.dtype}")
        h = self.embed(tokens)  # (b, n, d)
        for norm, layer in zip(self.norms, self.layers):
            h = h + layer(norm(h), mask=mask)
        return self.head(self.norms[-1](h))  # (b, n, n_classes)


def init_output_stats(unit: GAU, x: torch.Tensor, *, activation=None) -> dict:
    r"""Scale of a relu² :class:`GAU`'s output on ``x`` next to the article's diagonal approximation.

    门控注意力单元(GAU)还需要Warmup吗? (https://kexue.fm/archives/8990) replaces ``A`` by its diagonal,
    :math:`O\approx(U\odot\mathrm{diag}(A)V)W_o`. Returns floats (means over batch and positions):
    ``rms_out`` (the full :math:`\|O\|_{\rm rms}`, equal to ``unit(x)``'s), ``rms_out_diag`` (the same with
    only the diagonal of ``A`` kept), ``a_diag`` (mean :math:`A_{ii}`), ``a_off`` (mean :math:`A_{ij}`,
    :math:`i\ne j`), ``off_rowsum`` (mean :math:`\sum_{j\ne i}A_{ij}`), ``a_diag_sq`` (mean :math:`A_{ii}^2`),
    ``rowsum_sq`` (mean :math:`(\sum_j A_{ij})^2`) and ``a_sq_rowsum`` (mean :math:`\sum_j A_{ij}^2`): with V
    independent of A, :math:`\mathbb E[(AV)_i^2]=\mu^2\,\mathbb E[(\sum_j A_{ij})^2]+(\nu^2-\mu^2)\,\mathbb E[\sum_j A_{ij}^2]`.
    ``activation`` (a callable,
    default swish = the unit's own) replaces :math:`\phi` in U, V and Z, e.g. ``torch.relu`` to test the
    :math:`\lambda^7` homogeneity. Needs ``attention="relu2"`` with a non-causal unit and ``n >= 2``;
    ``x``: ``(batch, n, d_model)``. No gradients are kept.
    """
    if not isinstance(unit, GAU):
        raise ValueError(f"unit must be a GAU, got {type(unit).__name__}")
    if unit.attention != "relu2" or unit.length == "rowsum" or unit.causal:
        raise ValueError("init_output_stats needs a non-causal GAU with attention='relu2' and a length "
                         f"normalizer, got attention={unit.attention!r}, length={unit.length!r}, causal={unit.causal}")
    if activation is not None and not callable(activation):
        raise ValueError(f"activation must be a callable or None, got {activation!r}")
    check_tensor("x", x, ndim=3, floating=True)
    if x.shape[-1] != unit.d_model or x.shape[1] < 2:
        raise ValueError(f"x must be (batch, n >= 2, {unit.d_model}), got {tuple(x.shape)}")
    act = F.silu if activation is None else activation
    with torch.no_grad():
        u, v = act(unit.to_uv(x)).chunk(2, dim=-1)  # (b, n, e) each
        z = act(unit.to_z(x))  # (b, n, s)
        q, k = unit.q_affine(z), unit.k_affine(z)
        if unit.rope:
            q, k = rotary(q), rotary(k)
        a = relu2_weights(q, k, length=unit.length, scale=unit.scale)  # (b, n, n)
        diag = torch.diagonal(a, dim1=-2, dim2=-1)  # (b, n)
        o = unit.out(u * (a @ v))  # (b, n, d)
        o_diag = unit.out(u * (diag[..., None] * v))  # (b, n, d)
        n = a.shape[-1]
        off = a.sum(-1) - diag  # (b, n)
        return {"rms_out": float(o.square().mean().sqrt()), "rms_out_diag": float(o_diag.square().mean().sqrt()),
                "a_diag": float(diag.mean()), "a_off": float(off.mean() / (n - 1)), "off_rowsum": float(off.mean()),
                "a_diag_sq": float(diag.square().mean()), "rowsum_sq": float(a.sum(-1).square().mean()),
                "a_sq_rowsum": float(a.square().sum(-1).mean())}


class PostNormGAULM(nn.Module):
    r"""Post-LN stack of GAUs: :math:`x_{l+1}=\mathrm{LN}(x_l+\mathrm{GAU}(x_l))`, then a linear head.

    The setting of 门控注意力单元(GAU)还需要Warmup吗? (https://kexue.fm/archives/8990): with standard
    (LeCun) initialization each GAU branch is small next to :math:`x_l`, so the stack starts close to the
    identity and the article expects it to train without warmup. ``(batch, n)`` token ids ->
    ``(batch, n, vocab)`` logits; token embeddings are standard normal (``nn.Embedding``'s default), the
    unit-scale input the article assumes; positions come from the GAUs' rotary embedding. Keyword
    arguments go to every :class:`GAU` (``causal=True`` for a language model).
    """

    def __init__(self, vocab: int, *, d_model: int = 64, depth: int = 4, **gau_kwargs):
        super().__init__()
        vocab = check_int("vocab", vocab, min_value=1)
        d_model, depth = check_int("d_model", d_model, min_value=1), check_int("depth", depth, min_value=1)
        self.embed = nn.Embedding(vocab, d_model)
        self.layers = nn.ModuleList(GAU(d_model, **gau_kwargs) for _ in range(depth))
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(depth))
        self.head = nn.Linear(d_model, vocab)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        check_tensor("tokens", tokens, ndim=2)
        if tokens.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"tokens must be an integer tensor, got {tokens.dtype}")
        h = self.embed(tokens)  # (b, n, d)
        for layer, norm in zip(self.layers, self.norms):
            h = norm(h + layer(h, mask=mask))  # Post-LN: normalize after the residual sum
        return self.head(h)  # (b, n, vocab)
