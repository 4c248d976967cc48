r"""Discrete distributions built from noise: :math:`p_i = P[\arg\max(\mu + \varepsilon) = i]`.

Article: 从重参数的角度看离散概率分布的构建, https://kexue.fm/archives/9085 (2022-05-25).
Background: the Gumbel-max trick (E. J. Gumbel 1954; Jang, Gu, Poole arXiv:1611.01144;
Maddison, Mnih, Teh arXiv:1611.00712) and J. I. Yellott, J. Math. Psych. 15 (1977) 109-144
(Gumbel is the only i.i.d. noise family whose argmax law is softmax for every n >= 3).

Add i.i.d. noise :math:`\varepsilon_j` with CDF :math:`\Phi` and density :math:`\Phi'` to scores
:math:`\mu`. Conditioning on :math:`\varepsilon_i` and substituting :math:`t = \Phi(\varepsilon_i)`,

.. math::

    p_i = \int \Phi'(\varepsilon) \prod_{j \ne i} \Phi(\mu_i - \mu_j + \varepsilon)\, d\varepsilon
        = \int_0^1 \prod_{j \ne i} \Phi\big(\mu_i - \mu_j + \Phi^{-1}(t)\big)\, dt .

It depends on differences only (shift invariance). Gumbel noise, :math:`\Phi(x) = e^{-e^{-x}}`,
gives softmax exactly. For other families :func:`argmax_probs` evaluates the :math:`t`-integral
by quadrature, in log space: :math:`\log p_i = \operatorname{logsumexp}_k [\log w_k +
\sum_{j \ne i} \log\Phi(\mu_i - \mu_j + \Phi^{-1}(t_k))]`. Two rules: ``"gauss-legendre"``
(default) and ``"article"``, the article's :math:`t_k = k/(K+1)`, :math:`w_k = 1/K`.
:func:`argmax_probs_mc` estimates the same probabilities by sampling (with standard errors).
:class:`NoiseArgmaxNormalizer` is the ``nn.Module`` drop-in for a softmax.

Device and dtype follow ``mu``; nodes and weights are computed in float64 and cast. Cost
:math:`O(K n^2)` per row: meant for a few dozen classes.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.special import roots_legendre
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._validate import check_int, check_tensor

__all__ = ["NOISES", "Noise", "quadrature_nodes", "argmax_probs", "argmax_probs_mc", "NoiseArgmaxNormalizer"]

_LOG2 = math.log(2.0)


@dataclass(frozen=True)
class Noise:
    """One i.i.d. noise family: CDF, log-CDF, quantile function and a sampler (all torch)."""

    name: str
    cdf: Callable[[Tensor], Tensor]
    logcdf: Callable[[Tensor], Tensor]
    icdf: Callable[[Tensor], Tensor]
    full_support: bool  # density > 0 on all of R (strict order preservation needs less: support unbounded on one side)
    std: float  # standard deviation of one draw (to compare families at equal noise scale)

    def sample(self, shape, *, generator=None, dtype=torch.float64, device=None) -> Tensor:
        """Draws by inversion of a uniform in the open interval (0, 1)."""
        u = torch.rand(shape, generator=generator, dtype=dtype, device=device)
        tiny = torch.finfo(dtype).tiny
        return self.icdf(u.clamp_(min=tiny, max=1 - torch.finfo(dtype).eps / 2))


def _laplace_logcdf(x):
    neg = x - _LOG2
    pos = torch.log1p(-0.5 * torch.exp(-x.clamp(min=0)))
    return torch.where(x < 0, neg, pos)


def _exp_logcdf(x):
    # log(1 - e^{-x}) for x > 0, -inf for x <= 0
    safe = x.clamp(min=torch.finfo(x.dtype).tiny)
    return torch.where(x > 0, torch.log(-torch.expm1(-safe)), torch.full_like(x, -math.inf))


NOISES: dict[str, Noise] = {
    "gumbel": Noise("gumbel", lambda x: torch.exp(-torch.exp(-x)), lambda x: -torch.exp(-x),
                    lambda t: -torch.log(-torch.log(t)), True, math.pi / math.sqrt(6)),
    "normal": Noise("normal", torch.special.ndtr, torch.special.log_ndtr, torch.special.ndtri, True, 1.0),
    "logistic": Noise("logistic", torch.sigmoid, F.logsigmoid, torch.logit, True, math.pi / math.sqrt(3)),
    "laplace": Noise("laplace", lambda x: torch.where(x < 0, 0.5 * torch.exp(x.clamp(max=0)),
                                                      1 - 0.5 * torch.exp(-x.clamp(min=0))),
                     _laplace_logcdf,
                     lambda t: torch.where(t < 0.5, torch.log(2 * t), -torch.log(2 - 2 * t)), True, math.sqrt(2)),
    "exponential": Noise("exponential", lambda x: -torch.expm1(-x.clamp(min=0)), _exp_logcdf,
                         lambda t: -torch.log1p(-t), False, 1.0),
    "uniform": Noise("uniform", lambda x: x.clamp(0, 1), lambda x: torch.log(x.clamp(0, 1)), lambda t: t.clone(), False,
                       1 / math.sqrt(12)),
}


def _noise(noise) -> Noise:
    if isinstance(noise, Noise):
        return noise
    if noise not in NOISES:
        raise ValueError(f"noise must be one of {sorted(NOISES)}, got {noise!r}")
    return NOISES[noise]


def quadrature_nodes(K: int, rule: str = "gauss-legendre") -> tuple[np.ndarray, np.ndarray]:
    K = check_int("K", K, min_value=1, max_value=100_000)
    t, w = _nodes(K, rule)
    return t.copy(), w.copy()


@functools.lru_cache(maxsize=32)
def _nodes(K: int, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``t_k`` in (0, 1) and weights ``w_k`` (summing to 1), float64.

    ``"gauss-legendre"``: the K-point Gauss-Legendre rule mapped to [0, 1];
    ``"article"``: ``t_k = k / (K + 1)``, ``w_k = 1 / K`` (the article's rule);
    ``"midpoint"``: ``t_k = (k - 1/2) / K``, ``w_k = 1 / K``.
    """
    if rule == "gauss-legendre":
        x, w = roots_legendre(K)  # O(K) for large K (asymptotic + Newton), unlike a dense eigensolve
        return (x + 1) / 2, w / 2
    if rule == "article":
        return np.arange(1, K + 1) / (K + 1), np.full(K, 1.0 / K)
    if rule == "midpoint":
        return (np.arange(1, K + 1) - 0.5) / K, np.full(K, 1.0 / K)
    raise ValueError(f"rule must be 'gauss-legendre', 'article' or 'midpoint', got {rule!r}")


def _check_mu(mu) -> Tensor:
    mu = check_tensor("mu", mu, floating=True)
    if mu.ndim < 1 or mu.shape[-1] < 1:
        raise ValueError(f"mu must have shape (..., n) with n >= 1, got {tuple(mu.shape)}")
    if not torch.isfinite(mu).all():
        raise ValueError("mu must be finite")
    return mu


def _log_probs(mu: Tensor, nz: Noise, x: Tensor, logw: Tensor) -> Tensor:
    """log p for mu (..., n) given noise quantiles x (K,) and log-weights (K,)."""
    n = mu.shape[-1]
    diff = mu.unsqueeze(-1) - mu.unsqueeze(-2)                      # (..., i, j): mu_i - mu_j
    logphi = nz.logcdf(diff.unsqueeze(-1) + x)                       # (..., i, j, K)
    eye = torch.eye(n, dtype=torch.bool, device=mu.device).unsqueeze(-1)
    logphi = torch.where(eye, torch.zeros((), dtype=mu.dtype, device=mu.device), logphi)
    return torch.logsumexp(logphi.sum(-2) + logw, dim=-1)            # (..., i)


def argmax_probs(mu: Tensor, noise="normal", *, K: int = 128, rule: str = "gauss-legendre",
                 log: bool = False) -> Tensor:
    r"""``p_i = P[argmax(mu + eps) = i]`` over the last axis of ``mu``, by quadrature in ``t``.

    ``noise`` is a name in :data:`NOISES` (``"gumbel"`` reproduces softmax, up to quadrature
    error). With ``log=True`` returns ``log p`` (stable, differentiable: use it in a loss).
    The result is not renormalized: ``sum(p) - 1`` is the quadrature error.

    >>> p = argmax_probs(torch.tensor([0.0, 1.0], dtype=torch.float64), "normal", K=64)
    >>> print(f"{float(p[1]):.6f}")  # Phi(1 / sqrt 2)
    0.760250
    """
    mu = _check_mu(mu)
    nz = _noise(noise)
    t, w = quadrature_nodes(K, rule)
    t64 = torch.as_tensor(t, dtype=torch.float64)
    x = nz.icdf(t64).to(device=mu.device, dtype=mu.dtype)
    logw = torch.as_tensor(np.log(w), dtype=mu.dtype, device=mu.device)
    lp = _log_probs(mu, nz, x, logw)
    return lp if log else lp.exp()


def argmax_probs_mc(mu: Tensor, noise="normal", *, samples: int = 100_000, generator: torch.Generator | None = None,
                    chunk: int = 1 << 20) -> tuple[Tensor, Tensor]:
    """Monte Carlo frequencies of ``argmax(mu + eps)`` and their standard errors.

    ``mu`` has shape ``(..., n)``; noise is drawn on ``mu``'s device in its dtype, ``samples``
    draws per row, in chunks of about ``chunk`` numbers. Returns ``(p_hat, se)``, both
    ``(..., n)``, with ``se = sqrt(p_hat (1 - p_hat) / samples)``.
    """
    mu = _check_mu(mu)
    nz = _noise(noise)
    samples = check_int("samples", samples, min_value=1)
    chunk = check_int("chunk", chunk, min_value=1)
    n = mu.shape[-1]
    rows = mu.reshape(-1, n)                                         # (R, n)
    counts = torch.zeros_like(rows, dtype=torch.int64)
    step = max(1, chunk // (rows.shape[0] * n))
    for start in range(0, samples, step):
        m = min(step, samples - start)
        eps = nz.sample((m, *rows.shape), generator=generator, dtype=mu.dtype, device=mu.device)  # (m, R, n)
        win = (rows + eps).argmax(-1)                                # (m, R)
        counts += F.one_hot(win, n).sum(0)
    p = counts.to(mu.dtype) / samples
    se = (p * (1 - p) / samples).sqrt()
    return p.reshape(mu.shape), se.reshape(mu.shape)


class NoiseArgmaxNormalizer(nn.Module):
    """A softmax replacement: ``forward(logits)`` returns ``P[argmax(logits + eps) = i]``.

    Quadrature quantiles are a non-persistent buffer (moved with ``.to``). ``log_probs``
    gives ``log p`` for a negative log-likelihood loss.
    """

    def __init__(self, *, noise: str = "normal", K: int = 64, rule: str = "gauss-legendre", dim: int = -1):
        super().__init__()
        self.noise = _noise(noise)
        self.dim = dim
        t, w = quadrature_nodes(K, rule)
        self.register_buffer("x", self.noise.icdf(torch.as_tensor(t, dtype=torch.float64)), persistent=False)
        self.register_buffer("logw", torch.as_tensor(np.log(w)), persistent=False)

    def log_probs(self, logits: Tensor) -> Tensor:
        mu = _check_mu(logits).movedim(self.dim, -1)
        lp = _log_probs(mu, self.noise, self.x.to(mu.device, mu.dtype), self.logw.to(mu.device, mu.dtype))
        return lp.movedim(-1, self.dim)

    def forward(self, logits: Tensor) -> Tensor:
        return self.log_probs(logits).exp()

    def extra_repr(self) -> str:
        return f"noise={self.noise.name!r}, K={self.x.numel()}, dim={self.dim}"
