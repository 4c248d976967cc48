r"""Attention kernels: softmax (on SDPA) with named scales, relu²/n, linear, Performer features.

Articles: 熵不变性Softmax的一个快速推导 (https://kexue.fm/archives/9034), 听说Attention与Softmax更配哦~
(https://kexue.fm/archives/9019), Transformer升级之路:3、从Performer到线性Attention
(https://kexue.fm/archives/8338), and the other Part II chapters that import this module.
Papers: Vaswani et al. arXiv:1706.03762 (softmax attention); Hua, Dai, Liu, Le arXiv:2202.10447
(GAU, relu² attention); Katharopoulos et al. arXiv:2006.16236 (linear attention, elu+1);
Choromanski et al. arXiv:2009.14794 (Performer, positive orthogonal random features).

Tensors are ``(batch, heads, seq, dim)`` (or ``(batch, seq, dim)``); device and dtype follow ``q``.

* Softmax attention :math:`\mathrm{softmax}(\lambda_i QK^\top)V` with the scale :math:`\lambda_i` a
  number or a name: ``"standard"`` :math:`1/\sqrt d`; ``"log_n"`` :math:`\kappa\log n/d`;
  ``"log512"`` :math:`\log_{512} n/\sqrt d` (equal to standard at ``n = 512``; ``base=`` changes 512).
  Here ``n`` is the number of keys query ``i`` may see (causal mask and ``mask`` included).
* relu² attention (GAU): :math:`A_{ij} = \mathrm{relu}(\lambda\, q_i\cdot k_j)^2 / L_i` with
  :math:`L_i` the actual number of visible keys or a fixed training length.
* Linear attention :math:`o_i = \sum_j \phi(q_i)^\top\phi(k_j)v_j / \sum_j \phi(q_i)^\top\phi(k_j)`,
  O(n) in time and memory; the causal case by chunks (an exclusive prefix sum of per-chunk
  states :math:`\sum_j \phi(k_j)v_j^\top` plus a masked chunk-by-chunk block), never an n×n matrix.
* Performer features :math:`\phi(x) = e^{\Omega x - \|x\|^2/2}/\sqrt m`, unbiased for
  :math:`e^{q\cdot k}` when the rows of :math:`\Omega` are :math:`\mathcal N(0, I)` (or orthogonal
  rows with chi-distributed norms). With :math:`a^2 = \|q+k\|^2`, one i.i.d. feature has variance
  :math:`e^{2q\cdot k}(e^{a^2}-1)`; two orthogonal ones have covariance :math:`e^{2q\cdot k}(e^{-a^2}S-1)`,
  :math:`S = \sum_{p,r\ge0}\frac{(a^2/2)^{p+r}}{p!\,r!}\frac{\Gamma(d/2+p)\Gamma(d/2+r)}{\Gamma(d/2)\Gamma(d/2+p+r)}`
  (:func:`performer_variance`, derived from the moments of chi norms and of a uniform direction).

Masks are boolean, ``True`` where a query may attend; every query must see at least one key.
Scales are computed in float64 and applied in the input dtype.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._validate import check_int, check_real, check_tensor

__all__ = [
    "SCALES", "causal_mask", "attention_scale", "softmax_attention", "attention_weights",
    "relu2_weights", "relu2_attention", "attention_entropy", "FEATURE_MAPS", "linear_attention",
    "performer_omega", "performer_features", "performer_variance",
]

SCALES = ("standard", "log_n", "log512")
FEATURE_MAPS = {
    "elu1": lambda x: F.elu(x) + 1,
    "relu": F.relu,
    "exp": lambda x: torch.exp(x - x.amax(-1, keepdim=True)),  # row shift: exact for queries
}


def causal_mask(n_q: int, n_k: int | None = None, *, device=None) -> torch.Tensor:
    """``(n_q, n_k)`` bool mask, ``True`` where query ``i`` may see key ``j``: ``j <= i + n_k - n_q``.

    Aligned bottom-right (the last query sees every key), as for queries that continue a cache.
    """
    n_q = check_int("n_q", n_q, min_value=1)
    n_k = n_q if n_k is None else check_int("n_k", n_k, min_value=n_q)
    return torch.ones(n_q, n_k, dtype=torch.bool, device=device).tril(n_k - n_q)


def _check_qkv(q, k, v):
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, ndim=(3, 4), floating=True)
    if not (q.ndim == k.ndim == v.ndim):
        raise ValueError(f"q, k, v must have the same number of dims, got {q.ndim}, {k.ndim}, {v.ndim}")
    if q.shape[:-2] != k.shape[:-2] or k.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"shapes must be (..., n_q, d), (..., n_k, d), (..., n_k, d_v); got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k need the same feature dim, got {q.shape[-1]} and {k.shape[-1]}")
    if not (q.dtype == k.dtype == v.dtype) or not (q.device == k.device == v.device):
        raise ValueError("q, k, v must share dtype and device")


def _visible(q, k, causal: bool, mask) -> torch.Tensor | None:
    """The combined bool mask (broadcastable to (..., n_q, n_k)), or None when every key is visible."""
    n_q, n_k = q.shape[-2], k.shape[-2]
    full = None
    if causal:
        if n_q > n_k:
            raise ValueError(f"causal attention needs n_q <= n_k, got {n_q} > {n_k}")
        full = causal_mask(n_q, n_k, device=q.device)
    if mask is not None:
        check_tensor("mask", mask)
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor (True = attend), got {mask.dtype}")
        if mask.shape[-2:] != (n_q, n_k) or mask.ndim > q.ndim:
            raise ValueError(f"mask shape {tuple(mask.shape)} must end in ({n_q}, {n_k}) and broadcast to q")
        full = mask if full is None else mask & full
    if full is not None and not bool(full.any(-1).all()):
        raise ValueError("every query must see at least one key (a mask row is all False)")
    return full


def attention_scale(scale, n, d: int, *, kappa: float = 1.0, base: float = 512):
    """The softmax temperature: a number, or ``"standard"``, ``"log_n"``, ``"log512"``.

    ``n`` (the number of visible keys) may be an int or a tensor of per-row counts; the result
    is then a float or a float64 tensor. ``None`` means ``"standard"``.
    """
    d = check_int("d", d, min_value=1)
    if scale is None or isinstance(scale, str):
        name = "standard" if scale is None else scale
        if name not in SCALES:
            raise ValueError(f"scale must be a number or one of {SCALES}, got {scale!r}")
        if name == "standard":
            return 1.0 / math.sqrt(d)
        log = torch.log if isinstance(n, torch.Tensor) else math.log
        n = n.double() if isinstance(n, torch.Tensor) else check_int("n", n, min_value=1)
        if name == "log_n":
            return check_real("kappa", kappa, low=0.0, low_open=True) * log(n) / d
        base = check_real("base", base, low=1.0, low_open=True)
        return log(n) / math.log(base) / math.sqrt(d)
    return check_real("scale", scale, low=0.0, low_open=True)


def _row_scale(q, k, scale, vis, kappa, base):
    """A float (same for every row) or a (..., n_q, 1) tensor of per-row scales."""
    if vis is None or scale is None or not isinstance(scale, str) or scale == "standard":
        return attention_scale(scale, k.shape[-2], q.shape[-1], kappa=kappa, base=base)
    counts = vis.sum(-1, keepdim=True)
    return attention_scale(scale, counts, q.shape[-1], kappa=kappa, base=base).to(q.dtype)


def softmax_attention(q, k, v, *, scale=None, causal: bool = False, mask=None, kappa: float = 1.0,
                      base: float = 512) -> torch.Tensor:
    """``softmax(scale * q k^T) v`` by ``F.scaled_dot_product_attention``; returns ``(..., n_q, d_v)``."""
    _check_qkv(q, k, v)
    fixed = scale == "standard" or not isinstance(scale, str)  # one scale for every row
    if causal and mask is None and q.shape[-2] == k.shape[-2] and fixed:  # SDPA's own causal kernel
        s = attention_scale(scale, k.shape[-2], q.shape[-1])
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=s)
    vis = _visible(q, k, causal, mask)
    s = _row_scale(q, k, scale, vis, kappa, base)
    if isinstance(s, torch.Tensor):  # per-row scale: fold it into the queries
        q, s = q * s, 1.0
    return F.scaled_dot_product_attention(q, k, v, attn_mask=vis, scale=s)


def attention_weights(q, k, *, scale=None, causal: bool = False, mask=None, kappa: float = 1.0,
                      base: float = 512) -> torch.Tensor:
    """The softmax attention matrix ``(..., n_q, n_k)`` that :func:`softmax_attention` applies."""
    _check_qkv(q, k, k)
    vis = _visible(q, k, causal, mask)
    scores = (q @ k.transpose(-1, -2)) * _row_scale(q, k, scale, vis, kappa, base)
    if vis is not None:
        scores = scores.masked_fill(~vis, float("-inf"))
    return scores.softmax(-1)


def relu2_weights(q, k, *, length="actual", scale=None, causal: bool = False, mask=None) -> torch.Tensor:
    """GAU's ``relu(scale * q k^T)^2 / L``: ``L`` the visible-key count (``"actual"``) or a fixed int."""
    _check_qkv(q, k, k)
    vis = _visible(q, k, causal, mask)
    if isinstance(scale, str) and scale != "standard":
        raise ValueError(f"relu2 attention takes a number or 'standard' as scale, got {scale!r}")
    a = F.relu((q @ k.transpose(-1, -2)) * attention_scale(scale, 1, q.shape[-1])).square()
    if vis is not None:
        a = a.masked_fill(~vis, 0.0)
    if isinstance(length, str):
        if length != "actual":
            raise ValueError(f"length must be 'actual' or a positive int, got {length!r}")
        return a / (k.shape[-2] if vis is None else vis.sum(-1, keepdim=True).to(a.dtype))
    return a / check_int("length", length, min_value=1)


def relu2_attention(q, k, v, *, length="actual", scale=None, causal: bool = False, mask=None) -> torch.Tensor:
    """``relu2_weights(q, k) @ v`` (GAU attention, arXiv:2202.10447); see :func:`relu2_weights`."""
    _check_qkv(q, k, v)
    return relu2_weights(q, k, length=length, scale=scale, causal=causal, mask=mask) @ v


def attention_entropy(x: torch.Tensor, *, logits: bool = False) -> torch.Tensor:
    """Entropy (nats) of each row of attention weights (``0 log 0 = 0``), or of ``softmax(x)`` if ``logits``."""
    check_tensor("x", x, floating=True)
    if x.ndim < 1 or x.shape[-1] < 1:
        raise ValueError(f"x needs a non-empty last dimension, got shape {tuple(x.shape)}")
    if logits:
        logp = x.log_softmax(-1)
        return -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1)
    if bool((x < 0).any()):
        raise ValueError("attention weights must be non-negative")
    return -torch.special.xlogy(x, x).sum(-1)


def _causal_linear(fq, fk, v, chunk: int, eps: float):
    """Chunked causal linear attention: O(n (c + m d_v)) time, O(n m d_v / c + n c) memory."""
    *lead, n, m = fq.shape
    c = min(chunk, n)
    pad = (-n) % c
    if pad:  # zero features on padded keys contribute nothing; padded query rows are dropped
        fq, fk, v = (F.pad(t, (0, 0, 0, pad)) for t in (fq, fk, v))
    g = (n + pad) // c
    fq, fk = fq.reshape(*lead, g, c, m), fk.reshape(*lead, g, c, m)
    v = v.reshape(*lead, g, c, v.shape[-1])
    kv = fk.transpose(-1, -2) @ v  # (..., g, m, d_v): each chunk's state
    z = fk.sum(-2)  # (..., g, m)
    # exclusive prefix sums: chunk g sees chunks < g only (no subtraction, so no rounding leak)
    kv_prev = torch.cat([torch.zeros_like(kv[..., :1, :, :]), kv[..., :-1, :, :].cumsum(-3)], dim=-3)
    z_prev = torch.cat([torch.zeros_like(z[..., :1, :]), z[..., :-1, :].cumsum(-2)], dim=-2)
    local = (fq @ fk.transpose(-1, -2)).masked_fill(~causal_mask(c, device=fq.device), 0.0)  # (..., g, c, c)
    num = local @ v + fq @ kv_prev
    den = local.sum(-1) + (fq * z_prev.unsqueeze(-2)).sum(-1)
    out = num / (den + eps).unsqueeze(-1)
    return out.reshape(*lead, g * c, -1)[..., :n, :]


def _features(q, k, feature_map):
    """``(phi(q), phi(k))`` for the feature maps of :func:`linear_attention` (``"exp"`` leaves keys unshifted)."""
    if feature_map is None:
        fq, fk = q, k
    elif callable(feature_map):
        fq, fk = feature_map(q), feature_map(k)
    elif feature_map in FEATURE_MAPS:
        fq = FEATURE_MAPS[feature_map](q)
        fk = torch.exp(k) if feature_map == "exp" else FEATURE_MAPS[feature_map](k)
    else:
        raise ValueError(f"feature_map must be None, a callable or one of {tuple(FEATURE_MAPS)}, got {feature_map!r}")
    if fq.shape[:-1] != q.shape[:-1] or fk.shape[:-1] != k.shape[:-1] or fq.shape[-1] != fk.shape[-1]:
        raise ValueError("the feature map must keep the leading dims and give q and k the same feature dim")
    return fq, fk


def linear_attention(q, k, v, *, causal: bool = False, feature_map="elu1", eps: float = 1e-6,
                     chunk_size: int = 64) -> torch.Tensor:
    """Kernelized attention in O(n): ``phi(q) [sum_j phi(k_j) v_j^T] / (phi(q) . sum_j phi(k_j))``.

    ``feature_map``: ``"elu1"`` (default), ``"relu"``, ``"exp"``, a callable applied to q and k,
    or ``None`` when q and k already are non-negative features (e.g. :func:`performer_features`).
    ``"exp"`` shifts each query row by its max (exact) and the keys not at all (exact causality).
    """
    _check_qkv(q, k, v)
    eps = check_real("eps", eps, low=0.0)
    chunk_size = check_int("chunk_size", chunk_size, min_value=1)
    if causal and q.shape[-2] != k.shape[-2]:
        raise ValueError(f"causal linear attention needs n_q == n_k, got {q.shape[-2]} and {k.shape[-2]}")
    fq, fk = _features(q, k, feature_map)
    if causal:
        return _causal_linear(fq, fk, v, chunk_size, eps)
    kv = fk.transpose(-1, -2) @ v  # (..., m, d_v)
    den = fq @ fk.sum(-2).unsqueeze(-1)  # (..., n_q, 1)
    return (fq @ kv) / (den + eps)


def performer_omega(m: int, d: int, *, orthogonal: bool = False, generator=None, dtype=torch.float32,
                    device=None) -> torch.Tensor:
    """``(m, d)`` projection: i.i.d. N(0, 1) rows, or blocks of d orthogonal rows with chi(d) norms.

    Orthogonal rows keep each row's N(0, I) law (so the estimator stays unbiased) while making
    rows in one block exactly orthogonal (Choromanski et al. 2020, arXiv:2009.14794, sec. 2.4).
    """
    m, d = check_int("m", m, min_value=1), check_int("d", d, min_value=1)
    g = torch.randn(m, d, generator=generator, dtype=torch.float64)
    if not orthogonal:
        return g.to(dtype=dtype, device=device)
    nb = -(-m // d)  # number of d-row blocks, the last one cut to size
    qmat, r = torch.linalg.qr(torch.randn(nb, d, d, generator=generator, dtype=torch.float64))
    qmat = qmat * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)  # Haar-distributed
    rows = qmat.transpose(-1, -2).reshape(nb * d, d)[:m]
    norms = torch.randn(m, d, generator=generator, dtype=torch.float64).norm(dim=1, keepdim=True)
    return (rows * norms).to(dtype=dtype, device=device)


def performer_features(x: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """Positive random features ``exp(x omega^T - |x|^2 / 2) / sqrt(m)``, shape ``(..., n, m)``.

    ``E[phi(q) . phi(k)] = exp(q . k)`` over ``omega``'s N(0, I) rows. For ``softmax(q k^T / sqrt(d))``
    pass ``q / d**0.25`` and ``k / d**0.25``. Computed in at least float32, returned in x's dtype.
    """
    check_tensor("x", x, floating=True)
    check_tensor("omega", omega, ndim=2, floating=True)
    if x.ndim < 1 or x.shape[-1] != omega.shape[-1]:
        raise ValueError(f"x's last dim must equal omega's ({omega.shape[-1]}), got shape {tuple(x.shape)}")
    work = torch.promote_types(x.dtype, torch.float32)
    xw = x.to(work)
    proj = xw @ omega.to(device=x.device, dtype=work).T  # (..., n, m)
    log_phi = proj - xw.square().sum(-1, keepdim=True) / 2
    return (log_phi.exp() / math.sqrt(omega.shape[0])).to(x.dtype)


def _orthogonal_pair_moment(a2: float, d: int) -> float:
    """S(a^2, d) = E[exp((w_1 + w_2) . s)] for two orthogonal rows with chi(d) norms, |s|^2 = a2."""
    if a2 == 0:
        return 1.0
    h, total, t = d / 2, 0.0, 0
    while True:  # sum the double series by diagonals p + r = t
        diag = sum(math.exp(t * math.log(a2 / 2) - math.lgamma(t - r + 1) - math.lgamma(r + 1) + math.lgamma(h + t - r)
                            + math.lgamma(h + r) - math.lgamma(h) - math.lgamma(h + t)) for r in range(t + 1))
        total += diag
        if t > 4 * a2 + 10 and diag < 1e-17 * total:
            return total
        t += 1


def performer_variance(q: torch.Tensor, k: torch.Tensor, m: int, *, orthogonal: bool = False) -> float:
    """Exact variance of ``performer_features(q) . performer_features(k)`` over ``performer_omega(m, d)``.

    I.i.d. rows: ``e^{2 q.k} (e^{a^2} - 1) / m``, ``a^2 = |q + k|^2``. Orthogonal rows add, for each
    ordered pair in one block of d rows, the (negative) covariance ``e^{2 q.k} (e^{-a^2} S - 1)``.
    """
    check_tensor("q", q, ndim=1, floating=True)
    check_tensor("k", k, ndim=1, floating=True)
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    m, d = check_int("m", m, min_value=1), q.shape[0]
    qk, a2 = float(q.double() @ k.double()), float((q.double() + k.double()).square().sum())
    var = math.exp(2 * qk) * math.expm1(a2) * m
    if orthogonal:
        pairs = sum(b * (b - 1) for b in [d] * (m // d) + [m % d])
        var += pairs * math.exp(2 * qk) * (math.exp(-a2) * _orthogonal_pair_moment(a2, d) - 1)
    return var / m**2


def softmax_entropy_expansion(lam: float, *, moments=None) -> tuple[float, float]:
    r"""``(h, c)`` with :math:`\mathbb E H = \log n + h + c/n + O(n^{-2})` for ``softmax(lam * s)`` over n i.i.d. scores.

    With :math:`S_0=\sum_i e^{\lambda s_i}`, :math:`S_1=\sum_i s_ie^{\lambda s_i}` the entropy is exactly
    :math:`H=\log S_0-\lambda S_1/S_0`; expanding both terms to second order about their means gives, with
    :math:`m_0=\mathbb E e^{\lambda s}`, :math:`m_1=\mathbb E[se^{\lambda s}]`,
    :math:`V_0=\mathbb E e^{2\lambda s}-m_0^2`, :math:`C_{01}=\mathbb E[se^{2\lambda s}]-m_0m_1`,

    .. math:: h=\log m_0-\lambda\frac{m_1}{m_0},\qquad
              c=-\frac{V_0}{2m_0^2}-\lambda\Big(\frac{m_1V_0}{m_0^3}-\frac{C_{01}}{m_0^2}\Big).

    ``moments``: a callable ``t -> (E e^{t s}, E[s e^{t s}])`` for the law of the scores (it is called at
    ``t = lam`` and ``2 lam``); ``None`` means standard Gaussian scores, where
    :math:`h=-\lambda^2/2` and :math:`c=\lambda^2e^{\lambda^2}-\frac12(e^{\lambda^2}-1)`
    (for :math:`\mathcal N(0,\sigma^2)` scores pass ``lam * sigma``). The expansion is useful only while
    ``|c|/n`` is small, i.e. ``n`` well above :math:`e^{\lambda^2}` for Gaussian scores.
    """
    lam = check_real("lam", lam, low=0.0)
    try:
        if moments is None:
            e = math.exp(lam * lam)
            h, c = -lam * lam / 2, lam * lam * e - (e - 1) / 2
        else:
            if not callable(moments):
                raise ValueError(f"moments must be None or a callable t -> (E e^(ts), E s e^(ts)), got {moments!r}")
            (m0, m1), (w2, sw2) = (tuple(map(float, moments(t))) for t in (lam, 2 * lam))
            if not (m0 > 0 and w2 > 0 and all(map(math.isfinite, (m0, m1, w2, sw2)))):
                raise ValueError(f"moments must return finite values with E e^(ts) > 0, got {(m0, m1)} and {(w2, sw2)}")
            v0, c01 = w2 - m0 * m0, sw2 - m0 * m1
            h = math.log(m0) - lam * m1 / m0
            c = -v0 / (2 * m0 * m0) - lam * (m1 * v0 / m0**3 - c01 / (m0 * m0))
    except OverflowError as err:
        raise ValueError(f"lam = {lam} is too large: the moments overflow a float") from err
    if not (math.isfinite(h) and math.isfinite(c)):
        raise ValueError(f"lam = {lam} is too large: the expansion is not finite")
    return h, c


__all__ += ["softmax_entropy_expansion"]


def local_linear_attention(q, k, v, *, window: int, causal: bool = False, anticausal: bool = False,
                           feature_map="elu1", eps: float = 1e-6) -> torch.Tensor:
    r"""Linear attention truncated to a local window (article 8338, its "locally truncated" variant).

    :math:`o_i = \sum_{j\in W_i}\phi(q_i)^\top\phi(k_j)v_j / \sum_{j\in W_i}\phi(q_i)^\top\phi(k_j)` with
    :math:`W_i=\{j: |i-j|\le w\}`, cut further to :math:`j\le i` (``causal``) or :math:`j\ge i` (``anticausal``).
    The feature maps are those of :func:`linear_attention`. This reference builds the ``(n, n)`` banded
    kernel matrix (fine for the toy lengths it serves); a window of at least ``n - 1`` equals
    :func:`linear_attention` with the same direction.
    """
    _check_qkv(q, k, v)
    window = check_int("window", window, min_value=0)
    eps = check_real("eps", eps, low=0.0)
    n = q.shape[-2]
    if k.shape[-2] != n:
        raise ValueError(f"local linear attention needs n_q == n_k, got {n} and {k.shape[-2]}")
    if causal and anticausal:
        raise ValueError("choose at most one of causal and anticausal")
    fq, fk = _features(q, k, feature_map)
    idx = torch.arange(n, device=q.device)
    rel = idx[None, :] - idx[:, None]  # j - i
    band = rel.abs() <= window
    if causal:
        band &= rel <= 0
    if anticausal:
        band &= rel >= 0
    w = (fq @ fk.transpose(-1, -2)).masked_fill(~band, 0.0)  # (..., n, n)
    return (w @ v) / (w.sum(-1, keepdim=True) + eps)


__all__ += ["local_linear_attention"]
