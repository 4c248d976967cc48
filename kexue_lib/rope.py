r"""Rotary positions (RoPE) and the length-extrapolation tools of Part IV.

Articles: 相对位置编码Transformer的一个理论缺陷与对策 (https://kexue.fm/archives/9105),
Bias项的神奇作用:RoPE + Bias = 更好的长度外推性 (https://kexue.fm/archives/9577),
RoFormerV2:自然语言理解的极限探索 (https://kexue.fm/archives/8998),
Transformer升级之路:14、当HWFA遇见ReRoPE (https://kexue.fm/archives/9731),
Transformer升级之路:15、Key归一化助力长度外推 (https://kexue.fm/archives/9859).
Paper: J. Su et al., *RoFormer: Enhanced Transformer with Rotary Position Embedding*, arXiv:2104.09864.

RoPE rotates the feature pairs of a query or key at position :math:`m` by the angles
:math:`m\theta_i`, :math:`\theta_i = b^{-2i/d}`, so that :math:`(R_m q)^\top (R_n k) = q^\top R_{n-m} k`
depends on the positions only through :math:`n - m`. Two pairings are in use: ``"interleaved"`` (features
``(2i, 2i+1)``, the RoFormer paper's and Su's) and ``"half"`` (features ``(i, i + d/2)``, GPT-NeoX/LLaMA).

* :func:`apply_rope`: the rotation, with float64 tables cached per (dim, base, device) and the arithmetic done
  in at least float32 whatever the input dtype; positions default to ``0..n-1`` and may be an offset or a
  tensor (decoding, interpolation, ReRoPE's fractional positions).
* :func:`rerope_scores`: causal scores with ReRoPE (relative positions clipped at ``window``) or Leaky ReRoPE
  (beyond the window, :math:`w + (r - w)/k`), built as a merge of two RoPE score matrices or from the clipped
  relative positions directly.
* :func:`window_mask`, :func:`hwfa_receptive_field`: sliding-window attention and the receptive field of a
  hybrid window/full stack (HWFA).
* :func:`hwfa_full_layers`, :func:`hwfa_layers`, :func:`switch_to_rerope`: HWFA + ReRoPE (article 9731), the
  full layers placed at ``kL/(f+1)``, trained on RoPE and switched to ReRoPE for inference;
  :func:`causal_logit_count`, :func:`model_logit_count`: the query-key logits such a stack computes.
* :func:`key_normalize`, :func:`logn_scale`, :func:`rms_norm`, :class:`RMSNorm`: key-normalized attention, the
  :math:`\log n` query scale, and RMSNorm with or without its gain (RoFormerV2).
* :class:`PositionAttention`, :class:`PositionLM`: one small multi-head attention layer with all of these as
  options, and a stack of them as a causal LM or a bidirectional encoder, per-layer options allowed.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._validate import check_int, check_real, check_tensor

__all__ = ["LAYOUTS", "POSITIONS", "NORMS", "NORMALIZATIONS", "attention_weights", "rope_frequencies", "rope_tables", "apply_rope", "rope_scores",
           "rerope_positions", "rerope_scores", "window_mask", "hwfa_receptive_field", "hwfa_full_layers", "hwfa_layers",
           "causal_logit_count", "model_logit_count", "switch_to_rerope", "key_normalize",
           "logn_scale", "ntk_base", "rms_norm", "RMSNorm", "PositionAttention", "PositionLM",
           "RESIDUALS", "alpha_ramp", "qk_bias_terms", "mean_by_distance"]

LAYOUTS = ("interleaved", "half")
POSITIONS = ("rope", "rerope", "nope", "learned")
NORMS = ("layernorm", "rmsnorm", "rmsnorm_nogain")
NORMALIZATIONS = ("softmax", "exp", "l2", "swish_l2")

_TABLES: dict = {}


def _check_layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return layout


def _check_base(base) -> float:
    return check_real("base", base, low=1.0, low_open=True)


def rope_frequencies(dim: int, base: float = 10000.0, *, device=None) -> torch.Tensor:
    r"""The ``dim/2`` frequencies :math:`\theta_i = b^{-2i/d}` in float64."""
    dim = check_int("dim", dim, min_value=2)
    if dim % 2:
        raise ValueError(f"RoPE needs an even feature dimension, got {dim}")
    base = _check_base(base)
    return base ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def rope_tables(n: int, dim: int, base: float = 10000.0, *, device=None, dtype=torch.float32):
    """``(cos, sin)`` of shape ``(n, dim/2)`` for positions ``0..n-1``, built in float64, cached, cast to ``dtype``.

    The cache holds one table per (dim, base, device, dtype), grown to the next power of two on demand; the
    returned tensors are views of it and must not be written to.
    """
    n = check_int("n", n, min_value=0)
    freq = rope_frequencies(dim, base)  # validates dim and base
    device = torch.device("cpu") if device is None else torch.device(device)
    key = (dim, float(base), device, dtype)
    cached = _TABLES.get(key)
    if cached is None or cached[0].shape[0] < n:
        size = max(64, 1 << max(n - 1, 1).bit_length())
        ang = torch.arange(size, dtype=torch.float64)[:, None] * freq  # exact integer positions, float64 angles
        cached = (ang.cos().to(device=device, dtype=dtype), ang.sin().to(device=device, dtype=dtype))
        _TABLES[key] = cached
    return cached[0][:n], cached[1][:n]


def _cached_complex(n: int, dim: int, base: float, device, dtype) -> torch.Tensor:
    """``cos + i sin`` for positions ``0..n-1`` (complex64 for float32, complex128 for float64), cached."""
    cos, sin = rope_tables(n, dim, base, device=device, dtype=dtype)
    key = ("complex", dim, float(base), torch.device(device), dtype)
    cached = _TABLES.get(key)
    if cached is None or cached.shape[0] < n:
        full_cos, full_sin = _TABLES[(dim, float(base), torch.device(device), dtype)]
        cached = _complex_table(full_cos, full_sin)
        _TABLES[key] = cached
    return cached[:n]


def _angles_for(positions: torch.Tensor, dim: int, base: float, device, dtype):
    """cos/sin of ``positions[..., None] * theta`` (float64 angles), cast to ``dtype``."""
    pos = positions.to(device=device, dtype=torch.float64)
    ang = pos[..., None] * rope_frequencies(dim, base, device=device)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def _split(x: torch.Tensor, layout: str):
    if layout == "interleaved":
        return x[..., 0::2], x[..., 1::2]
    h = x.shape[-1] // 2
    return x[..., :h], x[..., h:]


def _merge(o1: torch.Tensor, o2: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "interleaved":
        return torch.stack([o1, o2], dim=-1).flatten(-2)
    return torch.cat([o1, o2], dim=-1)


def _complex_table(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return torch.complex(cos, sin)


def _rotate(xc: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str, table=None) -> torch.Tensor:
    """Rotate the pairs of ``xc`` (already in the compute dtype) by the given angles' cos and sin.

    Interleaved pairs are one complex multiplication ``(x1 + i x2)(cos + i sin)``, whose kernels round
    ``x1 cos - x2 sin`` and ``x1 sin + x2 cos`` exactly as the real formula does (tests check the two agree
    bitwise); split halves use the real formula.
    """
    if layout == "interleaved":
        table = _complex_table(cos, sin) if table is None else table
        z = torch.view_as_complex(xc.contiguous().unflatten(-1, (-1, 2)))
        return torch.view_as_real(z * table).flatten(-2)
    x1, x2 = _split(xc, layout)
    return _merge(x1 * cos - x2 * sin, x1 * sin + x2 * cos, layout)


_SLAB_ELEMENTS = 1 << 18  # 1 MiB of float32 per working buffer: stays in a core's L2 cache


def _rotate_slabs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str, table=None) -> torch.Tensor:
    """The same arithmetic as :func:`_rotate`, a block of rows at a time through cache-sized buffers.

    Every element goes through the same float operations, so the result is bitwise that of :func:`_rotate`;
    working block by block keeps the float32 intermediates in cache instead of memory (no autograd).
    """
    n, d = x.shape[-2], x.shape[-1]
    cdt = cos.dtype
    xs = x.reshape(-1, n, d)
    out = torch.empty(xs.shape, dtype=x.dtype, device=x.device)
    rows = max(1, min(n, _SLAB_ELEMENTS // d))
    buf = torch.empty(rows, d, dtype=cdt, device=x.device)
    if layout == "interleaved":
        table = _complex_table(cos, sin) if table is None else table
        zbuf = torch.view_as_complex(buf.view(rows, d // 2, 2))
        for i in range(xs.shape[0]):
            for s in range(0, n, rows):
                r = min(rows, n - s)
                buf[:r].copy_(xs[i, s:s + r])
                torch.mul(zbuf[:r], table[s:s + r], out=zbuf[:r])
                out[i, s:s + r].copy_(buf[:r])
        return out.reshape(x.shape)
    res = torch.empty_like(buf)
    a = torch.empty(rows, d // 2, dtype=cdt, device=x.device)
    b = torch.empty_like(a)
    for i in range(xs.shape[0]):
        for s in range(0, n, rows):
            r = min(rows, n - s)
            c, sn = cos[s:s + r], sin[s:s + r]
            buf[:r].copy_(xs[i, s:s + r])
            x1, x2 = _split(buf[:r], layout)
            r1, r2 = _split(res[:r], layout)
            torch.mul(x1, c, out=a[:r])
            torch.mul(x2, sn, out=b[:r])
            torch.sub(a[:r], b[:r], out=r1)
            torch.mul(x1, sn, out=a[:r])
            torch.mul(x2, c, out=b[:r])
            torch.add(a[:r], b[:r], out=r2)
            out[i, s:s + r].copy_(res[:r])
    return out.reshape(x.shape)


def apply_rope(x: torch.Tensor, positions=None, *, base: float = 10000.0, layout: str = "interleaved") -> torch.Tensor:
    """Rotary position embedding of ``x`` of shape ``(..., n, d)`` (``d`` even); returns ``x``'s dtype and shape.

    ``positions``: ``None`` for ``0..n-1``; an int offset (decoding: the new tokens' first position); or a
    tensor broadcastable to ``x.shape[:-1]`` (e.g. ``(n,)``, ``(batch, 1, n)``, or ``(n, n)`` for per-pair
    positions), integer or fractional. Angles come from float64; the rotation is computed in float32 for
    float32 and lower-precision inputs (bf16, fp16) and in float64 for float64, then cast back to ``x.dtype``.
    """
    check_tensor("x", x, floating=True)
    _check_layout(layout)
    base = _check_base(base)
    if x.ndim < 2:
        raise ValueError(f"apply_rope needs x of shape (..., n, d), got shape {tuple(x.shape)}")
    n, d = x.shape[-2], x.shape[-1]
    if d % 2 or d == 0:
        raise ValueError(f"apply_rope needs an even feature dimension d, got shape {tuple(x.shape)}")
    cdt = _compute_dtype(x.dtype)
    if positions is None or (isinstance(positions, int) and not isinstance(positions, bool)):
        offset = 0 if positions is None else positions
        if offset < 0:
            raise ValueError(f"a position offset must be >= 0, got {offset}")
        cos, sin = rope_tables(offset + n, d, base, device=x.device, dtype=cdt)
        table = _cached_complex(offset + n, d, base, x.device, cdt)[offset:] if layout == "interleaved" else None
        cos, sin = cos[offset:], sin[offset:]
        if x.device.type == "cpu" and not (x.requires_grad and torch.is_grad_enabled()) and x.numel() >= (1 << 16):
            return _rotate_slabs(x, cos, sin, layout, table)
        return _rotate(x.to(cdt), cos, sin, layout, table).to(x.dtype)
    else:
        if not isinstance(positions, torch.Tensor):
            raise ValueError(f"positions must be None, an int offset or a tensor, got {type(positions).__name__}")
        if positions.is_complex() or positions.dtype == torch.bool:
            raise ValueError(f"positions must be real numbers, got {positions.dtype}")
        if positions.is_floating_point() and not bool(torch.isfinite(positions).all()):
            raise ValueError("positions must be finite")
        try:
            torch.broadcast_shapes(positions.shape, x.shape[:-1])
        except RuntimeError:
            raise ValueError(f"positions of shape {tuple(positions.shape)} do not broadcast to x's "
                             f"{tuple(x.shape[:-1])}") from None
        cos, sin = _angles_for(positions, d, base, x.device, cdt)
    return _rotate(x.to(cdt), cos, sin, layout).to(x.dtype)


def rope_scores(q: torch.Tensor, k: torch.Tensor, *, q_positions=None, k_positions=None, base: float = 10000.0,
                layout: str = "interleaved") -> torch.Tensor:
    """``(R q)(R k)^T`` of shape ``(..., n_q, n_k)``: RoPE attention logits before any scale or mask."""
    check_tensor("q", q, floating=True)
    check_tensor("k", k, floating=True)
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k need the same feature dimension, got {tuple(q.shape)} and {tuple(k.shape)}")
    rq = apply_rope(q, q_positions, base=base, layout=layout)
    rk = apply_rope(k, k_positions, base=base, layout=layout)
    return rq @ rk.transpose(-1, -2)


def _check_window_leak(window, leak):
    window = check_int("window", window, min_value=1)
    if leak is not None:
        leak = check_real("leak", leak, low=1.0)
    return window, leak


def rerope_positions(n: int, window: int, *, leak: float | None = None, device=None) -> torch.Tensor:
    r"""The ``(n, n)`` float64 relative positions of ReRoPE: :math:`r = i - j` below ``window``, then ``window``
    (ReRoPE) or :math:`w + (r - w)/\mathrm{leak}` (Leaky ReRoPE). Entries with ``j > i`` (the future) are 0."""
    n = check_int("n", n, min_value=1)
    window, leak = _check_window_leak(window, leak)
    i = torch.arange(n, dtype=torch.float64, device=device)
    r = (i[:, None] - i[None, :]).clamp(min=0)
    beyond = window if leak is None else window + (r - window) / leak
    return torch.where(r < window, r, beyond)


def rerope_scores(q: torch.Tensor, k: torch.Tensor, window: int, *, leak: float | None = None,
                  base: float = 10000.0, layout: str = "interleaved", method: str = "merge") -> torch.Tensor:
    r"""Causal ReRoPE (``leak=None``) or Leaky ReRoPE logits ``(..., n, n)``, ``-inf`` above the diagonal.

    ``q`` and ``k`` are ``(..., n, d)`` with the same ``n`` (a causal self-attention block). The logit of
    query ``i`` and key ``j <= i`` is :math:`q_i^\top R_{-\rho(i-j)} k_j` with :math:`\rho(r) = r` for
    :math:`r < w` and ``w`` (ReRoPE) or :math:`w + (r - w)/\mathrm{leak}` (Leaky ReRoPE) beyond.

    ``method="merge"`` (the article's, two matmuls): ordinary RoPE logits inside the window, and outside it
    logits with query positions :math:`i/\mathrm{leak} + w(1 - 1/\mathrm{leak})` and key positions
    :math:`j/\mathrm{leak}` (for ReRoPE, the query at position ``w`` and keys unrotated), which reproduce
    :math:`\rho`. ``method="direct"``: each pair rotated by its clipped relative position (memory
    :math:`O(n^2 d)`; a reference).
    """
    check_tensor("q", q, floating=True)
    check_tensor("k", k, floating=True)
    window, leak = _check_window_leak(window, leak)
    if q.ndim < 2 or q.shape[-2:] != k.shape[-2:]:
        raise ValueError(f"q and k must be (..., n, d) with the same n and d, got {tuple(q.shape)} and {tuple(k.shape)}")
    if method not in ("merge", "direct"):
        raise ValueError(f"method must be 'merge' or 'direct', got {method!r}")
    n = q.shape[-2]
    rel = rerope_positions(n, window, leak=leak, device=q.device)
    future = torch.ones(n, n, dtype=torch.bool, device=q.device).triu(1)
    if method == "direct":
        rq = apply_rope(q.unsqueeze(-2).expand(*q.shape[:-1], n, q.shape[-1]), rel, base=base, layout=layout)
        scores = (rq * k.unsqueeze(-3)).sum(-1)
    else:
        inside = rope_scores(q, k, base=base, layout=layout)
        pos = torch.arange(n, dtype=torch.float64, device=q.device)
        if leak is None:
            qpos, kpos = torch.full((n,), float(window), dtype=torch.float64, device=q.device), None
        else:
            qpos, kpos = pos / leak + window * (1 - 1 / leak), pos / leak
        outside = apply_rope(q, qpos, base=base, layout=layout) @ (
            k if kpos is None else apply_rope(k, kpos, base=base, layout=layout)).transpose(-1, -2)
        i = torch.arange(n, device=q.device)
        within = (i[:, None] - i[None, :]) < window
        scores = torch.where(within, inside, outside)
    return scores.masked_fill(future, float("-inf"))


def window_mask(n: int, window: int | None, *, causal: bool = True, device=None) -> torch.Tensor:
    """Boolean ``(n, n)`` mask, True where query ``i`` may see key ``j``: ``i - window < j <= i`` (causal) or
    ``|i - j| < window`` (bidirectional); ``window=None`` is full (causal or not) attention."""
    n = check_int("n", n, min_value=1)
    i = torch.arange(n, device=device)
    diff = i[:, None] - i[None, :]
    allowed = diff >= 0 if causal else torch.ones(n, n, dtype=torch.bool, device=device)
    if window is not None:
        window = check_int("window", window, min_value=1)
        allowed = allowed & (diff.abs() < window)
    return allowed


def hwfa_receptive_field(window: int, layers: int) -> int:
    """How many positions (itself included) the input of the last layer of an HWFA stack has seen.

    HWFA (article 9731) stacks ``layers - 1`` causal sliding-window layers of width ``window`` under one
    full-attention layer; each windowed layer extends the view ``window - 1`` positions back, so the last
    layer's queries carry :math:`(w - 1)(L - 1) + 1` positions of context each.
    """
    window = check_int("window", window, min_value=1)
    layers = check_int("layers", layers, min_value=1)
    return (window - 1) * (layers - 1) + 1


HWFA_PLACEMENTS = ("middle", "last")


def hwfa_full_layers(n_layers: int, n_full: int = 1, *, placement: str = "middle") -> list[int]:
    r"""Indices of the full-attention layers of a hybrid window/full stack (article 9731).

    ``"middle"`` (HWFA + ReRoPE): ``n_full`` layers spread evenly, :math:`\lfloor kL/(f+1) \rfloor` for
    :math:`k = 1..f` (``L/2`` for one layer, ``L/3`` and ``2L/3`` for two, and so on); ``"last"`` (the
    original HWFA): the last ``n_full`` layers.
    """
    n_layers = check_int("n_layers", n_layers, min_value=1)
    n_full = check_int("n_full", n_full, min_value=1, max_value=n_layers)
    if placement not in HWFA_PLACEMENTS:
        raise ValueError(f"placement must be one of {HWFA_PLACEMENTS}, got {placement!r}")
    if placement == "last":
        return list(range(n_layers - n_full, n_layers))
    return [k * n_layers // (n_full + 1) for k in range(1, n_full + 1)]  # distinct whenever n_full <= n_layers


def hwfa_layers(n_layers: int, window: int, *, n_full: int = 1, placement: str = "middle", full: dict | None = None,
                windowed: dict | None = None) -> list[dict]:
    """Per-layer options for :class:`PositionLM`: sliding-window layers of width ``window`` (options ``windowed``)
    and ``n_full`` full-attention layers (options ``full``) placed by :func:`hwfa_full_layers`.

    The original HWFA is ``placement="last"``, ``full={"position": "nope", "logn_train_len": N}``; HWFA + ReRoPE
    trains full RoPE layers in the middle and switches them with :func:`switch_to_rerope` for inference.
    """
    window = check_int("window", window, min_value=1)
    at = set(hwfa_full_layers(n_layers, n_full, placement=placement))
    full, windowed = dict(full or {}), dict(windowed or {})
    if "window" in full or "window" in windowed:
        raise ValueError("hwfa_layers sets the windows itself; leave 'window' out of full and windowed")
    return [{**full, "window": None} if i in at else {**windowed, "window": window} for i in range(n_layers)]


def causal_logit_count(n: int, window: int | None = None, *, matrices: int = 1) -> int:
    r"""How many query-key logits one causal layer computes at length ``n``: :math:`\sum_i \min(i + 1, w)` per
    score matrix (``window=None``: :math:`n(n+1)/2`), times ``matrices`` (2 for ReRoPE's merge of two matrices).

    This is the cost of an implementation that computes only the visible pairs (block-sparse windows); the dense
    reference :class:`PositionAttention` computes all :math:`n^2` and masks.
    """
    n = check_int("n", n, min_value=1)
    matrices = check_int("matrices", matrices, min_value=1)
    if window is None or check_int("window", window, min_value=1) >= n:
        return matrices * n * (n + 1) // 2
    return matrices * (window * (window + 1) // 2 + (n - window) * window)


def key_normalize(k: torch.Tensor, *, eps: float = 0.0) -> torch.Tensor:
    """Keys scaled to unit L2 norm over the last dimension (article 9859); a zero key raises ``ValueError``
    unless ``eps > 0`` is given."""
    check_tensor("k", k, floating=True)
    eps = check_real("eps", eps, low=0.0)
    norm = k.norm(dim=-1, keepdim=True)
    if eps == 0.0 and bool((norm == 0).any()):
        raise ValueError("key_normalize: a key is exactly zero; pass eps > 0 to allow it")
    return k / (norm + eps) if eps else k / norm


def logn_scale(n_positions, train_len: int, *, per_position: bool = True) -> torch.Tensor:
    r"""The :math:`\log n` query scale :math:`\max(1, \log n / \log L_{\rm train})`.

    ``per_position=True`` gives the causal variant, one factor per query position ``i`` with
    :math:`n = i + 1` visible keys (shape ``(n_positions, 1)``, to multiply ``(..., n, d)`` queries);
    ``False`` gives one factor for the whole length.
    """
    n_positions = check_int("n_positions", n_positions, min_value=1)
    train_len = check_int("train_len", train_len, min_value=2)
    if per_position:
        n = torch.arange(1, n_positions + 1, dtype=torch.float64)
        return (n.log() / math.log(train_len)).clamp(min=1.0)[:, None]
    return torch.tensor(max(1.0, math.log(n_positions) / math.log(train_len)), dtype=torch.float64)


def ntk_base(base: float, scale: float, dim: int) -> float:
    r"""NTK-aware RoPE base for a context ``scale`` times the training length: :math:`b\,s^{d/(d-2)}`.

    The lowest frequency :math:`b^{-(d-2)/d}` becomes exactly :math:`1/s` of itself (its angles at the new length
    stay inside the trained range: interpolation) while the highest, :math:`1`, is unchanged (extrapolation).
    Article 9859 tests it on top of key normalization; the rule is from kexue.fm/archives/9675.
    """
    base = _check_base(base)
    scale = check_real("scale", scale, low=1.0)
    dim = check_int("dim", dim, min_value=4)
    if dim % 2:
        raise ValueError(f"RoPE needs an even feature dimension, got {dim}")
    return base * scale ** (dim / (dim - 2))


def rms_norm(x: torch.Tensor, *, eps: float = 1e-6, weight: torch.Tensor | None = None) -> torch.Tensor:
    r""":math:`x / \sqrt{\mathrm{mean}(x^2) + \epsilon}` over the last dimension, times ``weight`` if given.

    Without a gain (RoFormerV2) the output RMS is 1 up to ``eps`` whatever the input scale.
    """
    check_tensor("x", x, floating=True)
    eps = check_real("eps", eps, low=0.0)
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y if weight is None else y * weight


class RMSNorm(nn.Module):
    """RMSNorm over the last dimension; ``gain=False`` is RoFormerV2's parameter-free variant."""

    def __init__(self, dim: int, *, gain: bool = True, eps: float = 1e-6):
        super().__init__()
        self.dim = check_int("dim", dim, min_value=1)
        self.eps = check_real("eps", eps, low=0.0)
        self.weight = nn.Parameter(torch.ones(dim)) if gain else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"RMSNorm({self.dim}) got input with last dimension {x.shape[-1]}")
        return rms_norm(x, eps=self.eps, weight=self.weight)


def _norm(kind: str, dim: int, bias: bool) -> nn.Module:
    if kind not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")
    if kind == "layernorm":
        return nn.LayerNorm(dim, bias=bias)
    return RMSNorm(dim, gain=kind == "rmsnorm")


def attention_weights(logits: torch.Tensor, normalize: str = "softmax") -> torch.Tensor:
    r"""Attention weights from logits ``(..., n_k)`` with masked entries at ``-inf`` (weight 0).

    ``"softmax"``: rows sum to 1. ``"exp"``: :math:`e^{s}` with no denominator. ``"l2"``:
    :math:`e^{s}/\|e^{s}\|_2` per row (computed stably). ``"swish_l2"``: :math:`\mathrm{swish}(s)/\|\mathrm{swish}(s)\|_2`
    per row (signed weights, masked keys 0; article 9105's last variant). A row with every key masked raises
    ``ValueError``.
    """
    check_tensor("logits", logits, floating=True)
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    m = logits.amax(-1, keepdim=True)
    if bool(torch.isneginf(m).any()):
        raise ValueError("attention_weights: a query has every key masked")
    if normalize == "softmax":
        return torch.softmax(logits, dim=-1)
    if normalize == "exp":
        return torch.exp(logits)
    if normalize == "swish_l2":
        w = F.silu(logits.masked_fill(torch.isneginf(logits), 0.0)).masked_fill(torch.isneginf(logits), 0.0)
        return w / w.pow(2).sum(-1, keepdim=True).sqrt().clamp_min(torch.finfo(w.dtype).tiny)
    e = torch.exp(logits - m)
    return e / e.pow(2).sum(-1, keepdim=True).sqrt()


class PositionAttention(nn.Module):
    r"""Multi-head self-attention with the position and normalization options of Part IV.

    ``position``: ``"rope"``, ``"rerope"`` (with ``rerope_window`` and optional ``leak``; causal only),
    ``"nope"`` (no positions in the layer) or ``"learned"`` (same as ``"nope"`` here: the model adds learned
    absolute positions at its input). ``window``: sliding-window width (``None`` = full). ``qk_bias``: biases on
    the query and key projections (article 9577); ``bias``: on the value and output projections. ``key_norm``:
    L2-normalized keys times ``key_scale`` (a number, or ``"learned"`` for a learned scalar starting at
    ``sqrt(head_dim)``), replacing the ``1/sqrt(head_dim)`` scale (article 9859). ``logn_train_len``: multiply
    the logits of query ``i`` by :func:`logn_scale` (causal) for that training length. ``normalize`` (article
    9105's counter-measures to row-stochastic attention): ``"softmax"``; ``"exp"`` (the weights
    :math:`e^{s_{ij}}` with no denominator); ``"l2"`` (:math:`e^{s_{ij}} / \|e^{s_{i\cdot}}\|_2`); ``"swish_l2"``
    (:math:`\mathrm{swish}(s_{ij}) / \|\mathrm{swish}(s_{i\cdot})\|_2`, signed weights). ``urpe``: an
    int ``R`` multiplies the weights by a learned Toeplitz matrix :math:`c_{h,\mathrm{clip}(i-j,-R,R)}` per head
    (URPE, arXiv:2205.13401), initialized to ones. ``query_norm``: L2-normalized queries with no
    ``1/sqrt(head_dim)`` scale (article 9859's QNA); with ``key_norm`` too, the logits are ``key_scale`` times
    :math:`\cos(q_i, k_j)` (CosA, arXiv:2010.04245) before any :math:`\log n` factor. All options are attributes and can be changed after training (e.g. RoPE to ReRoPE).
    """

    def __init__(self, d_model: int, n_heads: int = 4, *, causal: bool = True, position: str = "rope",
                 window: int | None = None, rerope_window: int | None = None, leak: float | None = None,
                 qk_bias: bool = True, bias: bool = True, key_norm: bool = False, key_scale="learned",
                 logn_train_len: int | None = None, normalize: str = "softmax", urpe: int | None = None,
                 base: float = 10000.0, layout: str = "interleaved", query_norm: bool = False):
        super().__init__()
        d_model = check_int("d_model", d_model, min_value=2)
        n_heads = check_int("n_heads", n_heads, min_value=1)
        if d_model % n_heads or (d_model // n_heads) % 2:
            raise ValueError(f"d_model {d_model} must split into {n_heads} heads of even size")
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.q = nn.Linear(d_model, d_model, bias=qk_bias)
        self.k = nn.Linear(d_model, d_model, bias=qk_bias)
        self.v = nn.Linear(d_model, d_model, bias=bias)
        self.o = nn.Linear(d_model, d_model, bias=bias)
        self.causal, self.position, self.window = causal, position, window
        self.rerope_window, self.leak, self.key_norm = rerope_window, leak, key_norm
        self.query_norm = query_norm
        self.logn_train_len, self.normalize, self.base, self.layout = logn_train_len, normalize, base, layout
        if key_scale == "learned":
            self.key_scale = nn.Parameter(torch.tensor(math.sqrt(self.head_dim)))
        else:
            self.key_scale = check_real("key_scale", key_scale, low=0.0, low_open=True)
        self.urpe = None if urpe is None else nn.Parameter(torch.ones(n_heads, 2 * check_int("urpe", urpe, min_value=0) + 1))
        self.check_options()

    def check_options(self) -> None:
        """Raise ``ValueError`` for an inconsistent set of options (called again at every forward)."""
        if self.position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {self.position!r}")
        if self.position == "rerope":
            if not self.causal:
                raise ValueError("position='rerope' is defined for causal attention only")
            _check_window_leak(self.rerope_window, self.leak)
        if self.window is not None:
            check_int("window", self.window, min_value=1)
        if self.logn_train_len is not None:
            check_int("logn_train_len", self.logn_train_len, min_value=2)
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {self.normalize!r}")
        _check_layout(self.layout)
        _check_base(self.base)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.n_heads, self.head_dim).transpose(1, 2)  # (b, h, n, dh)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Attention logits ``(b, h, n, n)`` with masked entries at ``-inf``."""
        self.check_options()
        check_tensor("x", x, ndim=3, floating=True)
        if x.shape[-1] != self.d_model:
            raise ValueError(f"x must be (batch, n, {self.d_model}), got {tuple(x.shape)}")
        n = x.shape[1]
        q, k = self._heads(self.q(x)), self._heads(self.k(x))
        if self.key_norm:
            k = key_normalize(k, eps=1e-12) * self.key_scale
            scale = 1.0
        else:
            scale = 1.0 / math.sqrt(self.head_dim)
        if self.query_norm:  # QNA (unit queries, no 1/sqrt(d)); with key_norm, cosine attention times key_scale
            q = key_normalize(q, eps=1e-12)
            scale = 1.0
        if self.logn_train_len is not None:
            q = q * logn_scale(n, self.logn_train_len).to(q)
        if self.position == "rope":
            s = rope_scores(q, k, base=self.base, layout=self.layout)
        elif self.position == "rerope":
            s = rerope_scores(q, k, self.rerope_window, leak=self.leak, base=self.base, layout=self.layout)
        else:
            s = q @ k.transpose(-1, -2)
        s = s * scale
        allowed = window_mask(n, self.window, causal=self.causal, device=x.device)
        return s.masked_fill(~allowed, float("-inf"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.logits(x)
        v = self._heads(self.v(x))
        a = attention_weights(s, self.normalize)
        if self.urpe is not None:
            n, r = s.shape[-1], (self.urpe.shape[1] - 1) // 2
            i = torch.arange(n, device=s.device)
            rel = (i[:, None] - i[None, :]).clamp(-r, r) + r
            a = a * self.urpe[:, rel]  # (h, n, n) broadcast over the batch
        out = (a @ v).transpose(1, 2).reshape(x.shape)
        return self.o(out)


RESIDUALS = ("pre", "post", "rezero")


def alpha_ramp(step: int, ramp_steps: int) -> float:
    r"""RoFormerV2's residual scale :math:`\alpha = \min(1, s / S)`: 0 at step 0, linear up to 1 at ``ramp_steps``."""
    step = check_int("step", step, min_value=0)
    ramp_steps = check_int("ramp_steps", ramp_steps, min_value=1)
    return min(1.0, step / ramp_steps)


class _Block(nn.Module):
    def __init__(self, d_model, n_heads, norm, bias, ffn_mult, attn_kwargs, residual="pre"):
        super().__init__()
        self.residual = residual
        self.norm1, self.norm2 = _norm(norm, d_model, bias), _norm(norm, d_model, bias)
        self.attn = PositionAttention(d_model, n_heads, bias=bias, **attn_kwargs)
        self.ffn = nn.Sequential(nn.Linear(d_model, ffn_mult * d_model, bias=bias), nn.GELU(),
                                 nn.Linear(ffn_mult * d_model, d_model, bias=bias))
        if residual == "rezero":  # ReZero: x + a F(x), a trainable from 0, no norm (arXiv:2003.04887)
            del self.norm1, self.norm2
            self.alpha1, self.alpha2 = nn.Parameter(torch.zeros(())), nn.Parameter(torch.zeros(()))
        self.alpha = 1.0  # post-norm residual scale, set from outside (RoFormerV2's ramp)

    def forward(self, x):
        if self.residual == "post":  # Norm(x + alpha F(x))
            x = self.norm1(x + self.alpha * self.attn(x))
            return self.norm2(x + self.alpha * self.ffn(x))
        if self.residual == "rezero":
            x = x + self.alpha1 * self.attn(x)
            return x + self.alpha2 * self.ffn(x)
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class PositionLM(nn.Module):
    r"""A small pre-norm Transformer whose attention layers are :class:`PositionAttention`.

    ``vocab`` tokens in; ``n_out`` outputs per position (``vocab`` by default: a language model; 1 for a
    regression probe). ``causal=True`` is a decoder, ``False`` an encoder. ``attention`` holds the keyword
    options shared by every layer; ``layers`` (a list of ``n_layers`` dicts) overrides them per layer, e.g.
    HWFA's windowed layers under one full layer. ``absolute="learned"`` adds learned absolute position
    embeddings for up to ``max_len`` positions (then ``position="nope"`` is the usual choice).
    ``norm`` is one of :data:`NORMS`; ``bias=False`` removes every bias (RoFormerV2).
    ``residual`` (:data:`RESIDUALS`): ``"pre"`` (default) :math:`x + F(\mathrm{Norm}(x))`; ``"post"``
    :math:`\mathrm{Norm}(x + \alpha F(x))` with :math:`\alpha` set by :meth:`set_alpha` (1 by default; RoFormerV2
    ramps it from 0, see :func:`alpha_ramp`), the final norm then skipped; ``"rezero"`` :math:`x + \alpha F(x)`
    with a trainable :math:`\alpha` per sublayer starting at 0 and no norm at all (ReZero).
    """

    def __init__(self, vocab: int, *, d_model: int = 64, n_heads: int = 4, n_layers: int = 2, causal: bool = True,
                 n_out: int | None = None, norm: str = "layernorm", bias: bool = True, ffn_mult: int = 4,
                 absolute: str | None = None, max_len: int | None = None, attention: dict | None = None,
                 layers: list[dict] | None = None, residual: str = "pre"):
        super().__init__()
        if residual not in RESIDUALS:
            raise ValueError(f"residual must be one of {RESIDUALS}, got {residual!r}")
        self.residual = residual
        vocab = check_int("vocab", vocab, min_value=1)
        n_layers = check_int("n_layers", n_layers, min_value=1)
        ffn_mult = check_int("ffn_mult", ffn_mult, min_value=1)
        n_out = vocab if n_out is None else check_int("n_out", n_out, min_value=1)
        attention = dict(attention or {})
        if "causal" in attention or "bias" in attention:
            raise ValueError("causal and bias are model options, not attention options")
        if layers is None:
            layers = [{}] * n_layers
        if len(layers) != n_layers:
            raise ValueError(f"layers must hold one dict per layer ({n_layers}), got {len(layers)}")
        if absolute not in (None, "learned"):
            raise ValueError(f"absolute must be None or 'learned', got {absolute!r}")
        if absolute is not None:
            max_len = check_int("max_len", max_len, min_value=1)
        self.causal, self.max_len = causal, max_len
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(max_len, d_model) if absolute else None
        self.blocks = nn.ModuleList(
            _Block(d_model, n_heads, norm, bias, ffn_mult, {"causal": causal, **attention, **extra}, residual)
            for extra in layers)
        self.norm = _norm(norm, d_model, bias) if residual == "pre" else nn.Identity()
        self.head = nn.Linear(d_model, n_out, bias=bias)

    def attentions(self) -> list[PositionAttention]:
        """The attention layers, in order (to change their options after training)."""
        return [b.attn for b in self.blocks]

    def set_alpha(self, alpha: float) -> None:
        r"""Set the residual scale :math:`\alpha` of every block of a ``residual="post"`` model."""
        if self.residual != "post":
            raise ValueError(f"set_alpha needs residual='post', this model has residual={self.residual!r}")
        alpha = check_real("alpha", alpha, low=0.0)
        for b in self.blocks:
            b.alpha = alpha

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        check_tensor("tokens", tokens, ndim=2)
        if tokens.is_floating_point() or tokens.dtype == torch.bool:
            raise ValueError(f"tokens must be integer ids, got {tokens.dtype}")
        x = self.embed(tokens)
        if self.pos is not None:
            if tokens.shape[1] > self.max_len:
                raise ValueError(f"learned absolute positions cover {self.max_len} positions, got {tokens.shape[1]}")
            x = x + self.pos.weight[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def _attention_layers(model) -> list:
    layers = model.attentions() if isinstance(model, PositionLM) else list(model)
    if not all(isinstance(a, PositionAttention) for a in layers):
        raise ValueError("expected a PositionLM or a sequence of PositionAttention layers")
    return layers


def switch_to_rerope(model, window: int, *, leak: float | None = None) -> list[int]:
    """Switch every full-attention RoPE layer of ``model`` (a :class:`PositionLM` or a list of
    :class:`PositionAttention`) to ReRoPE (``leak=None``) or Leaky ReRoPE with ``window``, in place; windowed and
    non-RoPE layers are left alone (HWFA + ReRoPE, article 9731). Returns the indices of the switched layers."""
    window, leak = _check_window_leak(window, leak)
    layers = _attention_layers(model)
    switched = [i for i, a in enumerate(layers) if a.position == "rope" and a.window is None]
    for i in switched:
        if not layers[i].causal:
            raise ValueError(f"layer {i} is bidirectional; ReRoPE is defined for causal attention only")
        layers[i].position, layers[i].rerope_window, layers[i].leak = "rerope", window, leak
    return switched


def model_logit_count(model, n: int) -> int:
    """:func:`causal_logit_count` summed over the layers of ``model`` at length ``n``, ReRoPE layers counting two
    score matrices each (the cost of inference at length ``n`` in query-key logits)."""
    n = check_int("n", n, min_value=1)
    layers = _attention_layers(model)
    if not all(a.causal for a in layers):
        raise ValueError("model_logit_count counts causal layers only")
    return sum(causal_logit_count(n, a.window, matrices=2 if a.position == "rerope" else 1) for a in layers)


def qk_bias_terms(attn: PositionAttention, x: torch.Tensor) -> torch.Tensor:
    r"""The four terms of a RoPE layer's logits with query and key biases (article 9577), ``(4, b, h, n, n)``.

    With the projections split into bias-free parts :math:`q_i = W_q x_i`, :math:`k_j = W_k x_j` and the biases
    :math:`a`, :math:`b` (one per head), the logit of query ``i`` and key ``j`` is
    :math:`(q_i + a)^\top R_{j-i} (k_j + b)/\sqrt{d_h} = [q_i^\top R k_j + a^\top R k_j + q_i^\top R b + a^\top R b]/\sqrt{d_h}`;
    the four are returned in that order, each scaled by :math:`1/\sqrt{d_h}`. Their sum is ``attn.logits(x)`` on the
    visible entries; no mask is applied here (the causal future is included: mask it with :func:`window_mask`).
    The fourth term depends on ``i - j`` only. Needs ``position="rope"``, ``qk_bias=True`` and no query or key
    normalization or :math:`\log n` scale (which would mix the terms).
    """
    if not isinstance(attn, PositionAttention):
        raise ValueError(f"qk_bias_terms needs a PositionAttention layer, got {type(attn).__name__}")
    attn.check_options()
    if attn.position != "rope" or attn.q.bias is None or attn.k.bias is None:
        raise ValueError("qk_bias_terms needs a layer with position='rope' and qk_bias=True")
    if attn.key_norm or attn.query_norm or attn.logn_train_len is not None:
        raise ValueError("qk_bias_terms needs a layer without key_norm, query_norm or logn_train_len")
    check_tensor("x", x, ndim=3, floating=True)
    if x.shape[-1] != attn.d_model:
        raise ValueError(f"x must be (batch, n, {attn.d_model}), got {tuple(x.shape)}")
    b_, n = x.shape[0], x.shape[1]
    q = attn._heads(F.linear(x, attn.q.weight))  # (b, h, n, dh) without the bias
    k = attn._heads(F.linear(x, attn.k.weight))
    a = attn.q.bias.view(1, attn.n_heads, 1, attn.head_dim).expand(b_, -1, n, -1)  # (b, h, n, dh), the same row per position
    bb = attn.k.bias.view(1, attn.n_heads, 1, attn.head_dim).expand(b_, -1, n, -1)
    opts = dict(base=attn.base, layout=attn.layout)
    terms = [rope_scores(u, w, **opts) for u, w in ((q, k), (a, k), (q, bb), (a, bb))]
    return torch.stack(terms) / math.sqrt(attn.head_dim)


def mean_by_distance(t: torch.Tensor, *, max_distance: int | None = None) -> torch.Tensor:
    """Means of the causal sub-diagonals of ``t`` ``(..., n, n)``: ``out[..., r]`` is the mean over queries
    ``i >= r`` of ``t[..., i, i - r]``, for ``r = 0 .. max_distance`` (default ``n - 1``); shape ``(..., R + 1)``.

    For attention weights it is the average weight a query gives the key ``r`` positions back; for a logit term
    it is the term's trend in the relative position. Entries above the diagonal are never read.
    """
    check_tensor("t", t, floating=True)
    if t.ndim < 2 or t.shape[-1] != t.shape[-2]:
        raise ValueError(f"mean_by_distance needs a (..., n, n) tensor, got shape {tuple(t.shape)}")
    n = t.shape[-1]
    top = n - 1 if max_distance is None else check_int("max_distance", max_distance, min_value=0, max_value=n - 1)
    return torch.stack([torch.diagonal(t, offset=-r, dim1=-2, dim2=-1).mean(-1) for r in range(top + 1)], dim=-1)
