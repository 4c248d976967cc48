r"""Johnson-Lindenstrauss random projections and the distortion of pairwise distances.

Article: 从JL引理看熵不变性Attention, https://kexue.fm/archives/9588 (2023-04-10), which links the
:math:`\log n` of entropy-invariant attention to the :math:`\mathcal O(\log n)` dimension of the lemma.
Lemma: W. B. Johnson and J. Lindenstrauss, *Extensions of Lipschitz mappings into a Hilbert space*,
Contemp. Math. 26 (1984) 189-206; the constant used here is from S. Dasgupta and A. Gupta, *An
elementary proof of a theorem of Johnson and Lindenstrauss*, Random Struct. Alg. 22 (2003) 60-65.

A Gaussian projection :math:`R \in \mathbb R^{D\times k}` with i.i.d. :math:`\mathcal N(0, 1/k)` entries
maps a fixed vector :math:`x` to :math:`y = xR` with

.. math::

    \frac{\|y\|^2}{\|x\|^2} \sim \frac{\chi^2_k}{k}, \qquad
    \mathbb E = 1, \qquad \operatorname{Var} = \frac{2}{k},

exactly, for every :math:`x \ne 0` (rotation invariance of the Gaussian). Applied to the differences of
``n`` points, each squared distance is distorted by a factor :math:`\chi^2_k/k`; the Chernoff bound

.. math::

    P\Big(\Big|\frac{\chi^2_k}{k} - 1\Big| > \varepsilon\Big)
    \le 2\exp\!\Big(-\frac k2\Big(\frac{\varepsilon^2}{2} - \frac{\varepsilon^3}{3}\Big)\Big)

and a union bound over the :math:`\binom n2` pairs give the Dasgupta-Gupta dimension
:math:`k \ge 4\ln n / (\varepsilon^2/2 - \varepsilon^3/3)`, above which all pairs stay within
:math:`1 \pm \varepsilon` with probability at least :math:`1/n`.

Functional core: :func:`jl_min_dim`, :func:`pair_failure_bound`, :func:`pair_failure_prob`,
:func:`gaussian_projection`, :func:`pairwise_sq_dists`, :func:`distance_ratios`,
:func:`max_distortion`; :class:`RandomProjection` is the thin ``nn.Module`` wrapper (the matrix is a
non-persistent buffer). Device and dtype follow the inputs; distances are computed in the input dtype
from the Gram matrix, so use float64 when relative errors below ~1e-5 matter.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ._validate import check_int, check_real, check_tensor

__all__ = [
    "jl_min_dim",
    "pair_failure_bound",
    "pair_failure_prob",
    "gaussian_projection",
    "random_project",
    "pairwise_sq_dists",
    "distance_ratios",
    "max_distortion",
    "RandomProjection",
]


def _check_eps(eps) -> float:
    return check_real("eps", eps, low=0.0, high=1.0, low_open=True, high_open=True)


def jl_min_dim(n: int, eps: float) -> int:
    r"""Dasgupta-Gupta target dimension :math:`\lceil 4\ln n / (\varepsilon^2/2 - \varepsilon^3/3)\rceil`.

    >>> jl_min_dim(256, 0.5)
    267
    """
    n = check_int("n", n, min_value=2)
    eps = _check_eps(eps)
    return math.ceil(4 * math.log(n) / (eps**2 / 2 - eps**3 / 3))


def pair_failure_bound(k: int, eps: float) -> float:
    r"""Chernoff bound on :math:`P(|\chi^2_k/k - 1| > \varepsilon)` for one pair (Dasgupta-Gupta)."""
    k = check_int("k", k, min_value=1)
    eps = _check_eps(eps)
    return min(1.0, 2 * math.exp(-k / 2 * (eps**2 / 2 - eps**3 / 3)))


def pair_failure_prob(k: int, eps: float) -> float:
    r"""Exact :math:`P(|\chi^2_k/k - 1| > \varepsilon)`: one pair distorted by more than ``eps > 0``."""
    from scipy.stats import chi2

    k = check_int("k", k, min_value=1)
    eps = check_real("eps", eps, low=0.0, low_open=True)  # eps >= 1 leaves the upper tail only
    return float(chi2.cdf(k * max(1 - eps, 0.0), k) + chi2.sf(k * (1 + eps), k))


def gaussian_projection(
    d_in: int,
    k: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    r"""A ``(d_in, k)`` matrix with i.i.d. :math:`\mathcal N(0, 1/k)` entries."""
    d_in = check_int("d_in", d_in, min_value=1)
    k = check_int("k", k, min_value=1)
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
    gen_device = generator.device if generator is not None else device
    r = torch.randn(d_in, k, generator=generator, device=gen_device, dtype=dtype)
    return r.div_(math.sqrt(k)).to(device if device is not None else r.device)


def random_project(x: torch.Tensor, k: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Project the rows of ``x`` (``(..., n, D)``) to ``k`` dimensions with one Gaussian matrix.

    The same matrix serves the whole batch; device and dtype follow ``x``.
    """
    check_tensor("x", x, floating=True)
    if x.ndim < 2:
        raise ValueError(f"x must have shape (..., n, D), got {tuple(x.shape)}")
    r = gaussian_projection(x.shape[-1], k, generator=generator, dtype=x.dtype)
    return x @ r.to(x.device)  # (..., n, k)


def pairwise_sq_dists(x: torch.Tensor) -> torch.Tensor:
    r"""``(..., n, D) -> (..., n, n)`` squared Euclidean distances :math:`\|x_i - x_j\|^2`.

    Computed from the Gram matrix, :math:`\|x_i\|^2 + \|x_j\|^2 - 2x_i\cdot x_j`, clamped at zero with an
    exact zero diagonal.
    """
    check_tensor("x", x, floating=True)
    if x.ndim < 2:
        raise ValueError(f"x must have shape (..., n, D), got {tuple(x.shape)}")
    sq = x.square().sum(-1)  # (..., n)
    gram = x @ x.transpose(-1, -2)  # (..., n, n)
    d = (sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2 * gram).clamp_min_(0)
    d.diagonal(dim1=-2, dim2=-1).zero_()
    return d


def distance_ratios(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Ratios :math:`\|y_i - y_j\|^2 / \|x_i - x_j\|^2` over the pairs :math:`i < j`: ``(..., n(n-1)/2)``.

    ``x`` is ``(..., n, D)`` and ``y`` its image ``(..., n, k)``: same leading shape and ``n``. Coincident
    points of ``x`` (a zero distance) are rejected.
    """
    check_tensor("x", x, floating=True)
    check_tensor("y", y, floating=True)
    if x.ndim < 2 or x.shape[:-1] != y.shape[:-1]:
        raise ValueError(f"x (..., n, D) and y (..., n, k) must share (..., n): got {tuple(x.shape)}, {tuple(y.shape)}")
    n = x.shape[-2]
    if n < 2:
        raise ValueError(f"need at least 2 points, got n={n}")
    iu = torch.triu_indices(n, n, offset=1, device=x.device)
    dx = pairwise_sq_dists(x)[..., iu[0], iu[1]]
    dy = pairwise_sq_dists(y)[..., iu[0], iu[1]]
    if bool((dx == 0).any()):
        raise ValueError("x has coincident points: a distance ratio is undefined")
    return dy / dx


def max_distortion(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r""":math:`\max_{i<j} |\|y_i-y_j\|^2/\|x_i-x_j\|^2 - 1|` per batch element: shape ``x.shape[:-2]``."""
    return (distance_ratios(x, y) - 1).abs().amax(-1)


class RandomProjection(nn.Module):
    """A fixed Gaussian JL map ``R^D -> R^k`` (not trained; the matrix is a non-persistent buffer)."""

    def __init__(self, d_in: int, k: int, *, seed: int = 0):
        super().__init__()
        self.d_in = check_int("d_in", d_in, min_value=1)
        self.k = check_int("k", k, min_value=1)
        gen = torch.Generator().manual_seed(check_int("seed", seed, min_value=0))
        self.register_buffer("matrix", gaussian_projection(d_in, k, generator=gen), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor("x", x, floating=True)
        if x.shape[-1] != self.d_in:
            raise ValueError(f"x must have last dimension {self.d_in}, got shape {tuple(x.shape)}")
        return x @ self.matrix.to(dtype=x.dtype)  # (..., k)

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, k={self.k}"
