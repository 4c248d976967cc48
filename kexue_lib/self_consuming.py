r"""The self-consuming Gaussian loop: fit a Gaussian, sample from it, refit, repeat.

Article: 当生成模型肆虐:互联网将有“疯牛病”之忧?, https://kexue.fm/archives/9687 (2023-07-14).
Paper: S. Alemohammad, J. Casco-Rodriguez, L. Luzi, A. I. Humayun, H. Babaei, D. LeJeune,
A. Siahkoohi, R. G. Baraniuk, *Self-Consuming Generative Models Go MAD*, arXiv:2307.01850.

Generation 0 is the truth :math:`\mathcal N(\mu_0, \Sigma_0)`. Generation :math:`t \ge 1` fits the
sample mean :math:`\mu_t` and the unbiased covariance :math:`\Sigma_t` (divisor :math:`n - 1`) to
:math:`n` points: :math:`m` real ones from the truth (drawn afresh each generation, or one fixed set)
and :math:`n - m` synthetic ones from generation :math:`t - 1`, which samples
:math:`\mathcal N(\mu_{t-1}, S_{t-1})` with :math:`S_0 = \Sigma_0` and :math:`S_t = \lambda \Sigma_t`
(:math:`\lambda < 1` is the truncation trick). With fresh real data (:math:`\beta = (n - m)/n`) the
first two moments obey an exact linear recursion (:func:`self_consuming_moments`):

.. math::

    \operatorname{Cov}\mu_t = \tfrac{m}{n^2}\Sigma_0 + \beta^2 \operatorname{Cov}\mu_{t-1}
        + \tfrac{\beta}{n}\mathbb E S_{t-1}, \qquad
    \mathbb E\Sigma_t = \tfrac{m\Sigma_0 + (n - m)\mathbb E S_{t-1}}{n}
        + \tfrac{m(n - m)}{n(n - 1)} \operatorname{Cov}\mu_{t-1}.

For :math:`m = 0`: :math:`\operatorname{Cov}\mu_t = \tfrac{1}{n}\tfrac{1 - \lambda^t}{1 - \lambda}\Sigma_0`
(:math:`t\Sigma_0/n` at :math:`\lambda = 1`) and :math:`\mathbb E\Sigma_t = \lambda^{t-1}\Sigma_0`, while
:math:`\mathbb E \log\det\Sigma_t` falls by :func:`log_det_drift` per generation, so the fitted
covariance collapses almost surely even when its mean does not move.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ._validate import check_int, check_real

__all__ = ["self_consuming_gaussian", "self_consuming_moments", "log_det_drift"]


def _check_loop(n, generations, lam, fresh, dim):
    n = check_int("n", n, min_value=2)
    generations = check_int("generations", generations, min_value=1)
    lam = check_real("lam", lam, low=0.0, high=1.0, low_open=True)
    fresh = check_int("fresh", fresh, min_value=0, max_value=n)
    dim = check_int("dim", dim, min_value=1)
    if n <= dim:
        raise ValueError(f"n must exceed dim for a non-singular covariance fit, got n={n}, dim={dim}")
    return n, generations, lam, fresh, dim


def _truth(mu0, cov0, dim, dtype, device):
    mu0 = torch.zeros(dim, dtype=dtype, device=device) if mu0 is None else torch.as_tensor(mu0, dtype=dtype, device=device)
    cov0 = torch.eye(dim, dtype=dtype, device=device) if cov0 is None else torch.as_tensor(cov0, dtype=dtype, device=device)
    if mu0.shape != (dim,):
        raise ValueError(f"mu0 must have shape ({dim},), got {tuple(mu0.shape)}")
    if cov0.shape != (dim, dim):
        raise ValueError(f"cov0 must have shape ({dim}, {dim}), got {tuple(cov0.shape)}")
    if not torch.allclose(cov0, cov0.T) or torch.linalg.eigvalsh(cov0).min() <= 0:
        raise ValueError("cov0 must be symmetric positive definite")
    return mu0, cov0


def self_consuming_gaussian(n: int, generations: int, *, chains: int = 10_000, lam: float = 1.0, fresh: int = 0,
                            real: str = "fresh", dim: int = 1, mu0=None, cov0=None,
                            generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64,
                            device=None) -> dict[str, Tensor]:
    """Run ``chains`` independent self-consuming loops at once.

    Each generation fits ``n`` points, ``fresh`` of them real (``real="fresh"``: new draws from
    the truth every generation; ``real="fixed"``: one set per chain, reused) and the rest sampled
    from the previous generation with covariance scaled by ``lam``. Returns ``{"mu": (G+1,
    chains, dim), "cov": (G+1, chains, dim, dim)}``, index 0 being the truth. Runs on ``device``
    (default: the generator's) in ``dtype``; draws come from ``generator``.

    >>> r = self_consuming_gaussian(10, 3, chains=4, generator=torch.Generator().manual_seed(0))
    >>> tuple(r["mu"].shape), tuple(r["cov"].shape)
    ((4, 4, 1), (4, 4, 1, 1))
    """
    n, generations, lam, fresh, dim = _check_loop(n, generations, lam, fresh, dim)
    chains = check_int("chains", chains, min_value=1)
    if real not in ("fresh", "fixed"):
        raise ValueError(f"real must be 'fresh' or 'fixed', got {real!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    mu0, cov0 = _truth(mu0, cov0, dim, dtype, device)
    chol0 = torch.linalg.cholesky(cov0)

    def draw(k, mean, chol):  # k points from N(mean, chol chol^T) per chain: (chains, k, dim)
        z = torch.randn(chains, k, dim, generator=generator, dtype=dtype, device=device)
        if dim == 1:
            return mean.unsqueeze(-2) + z * chol                     # chol is (chains, 1, 1): a scale
        return mean.unsqueeze(-2) + z @ chol.transpose(-1, -2)

    fixed = draw(fresh, mu0.expand(chains, dim), chol0.expand(chains, dim, dim)) if real == "fixed" else None
    mus = [mu0.expand(chains, dim)]
    covs = [cov0.expand(chains, dim, dim)]
    mean, chol = mus[0], chol0.expand(chains, dim, dim)           # generation 0 samples the truth
    for _ in range(generations):
        synth = draw(n - fresh, mean, chol)                          # (chains, n - m, dim)
        if fresh:
            realpts = fixed if fixed is not None else draw(fresh, mu0.expand(chains, dim), chol0.expand(chains, dim, dim))
            x = torch.cat([realpts, synth], dim=1)                   # (chains, n, dim)
        else:
            x = synth
        mu = x.mean(1)                                               # (chains, dim)
        if dim == 1:                                                 # fast path: no matrix factorization
            cov = x.var(1, correction=1).unsqueeze(-1)               # (chains, 1, 1)
            chol, info = (lam * cov).sqrt(), (cov <= 0).view(-1)
        else:
            xc = x - mu.unsqueeze(1)
            cov = torch.einsum("cni,cnj->cij", xc, xc) / (n - 1)     # unbiased, (chains, dim, dim)
            chol, info = torch.linalg.cholesky_ex(lam * cov)
        mus.append(mu)
        covs.append(cov)
        mean = mu
        if bool((info != 0).any()):
            raise ValueError("a fitted covariance lost positive definiteness (collapse below the dtype's "
                             "resolution): use float64 or fewer generations")
    return {"mu": torch.stack(mus), "cov": torch.stack(covs)}


def self_consuming_moments(n: int, generations: int, *, lam: float = 1.0, fresh: int = 0,
                           cov0: float | Tensor = 1.0) -> dict[str, Tensor]:
    """Exact moments of the fresh-data loop, generation 0 to ``generations`` (float64).

    Returns ``var_mu`` (:math:`\\operatorname{Cov}\\mu_t`) and ``mean_cov`` (:math:`\\mathbb E\\Sigma_t`),
    each ``(G+1,)`` for a scalar ``cov0`` or ``(G+1, d, d)`` for a matrix; with ``fresh == 0`` and
    a scalar ``cov0`` also ``m4_mu`` (:math:`\\mathbb E(\\mu_t - \\mu_0)^4`, which exceeds the Gaussian
    :math:`3\\operatorname{Var}^2` once :math:`t \\ge 2`).

    >>> m = self_consuming_moments(10, 20)
    >>> print(f"{m['var_mu'][20].item():.4f} {m['mean_cov'][20].item():.4f}")  # t/n and sigma_0^2
    2.0000 1.0000
    """
    dim = 1 if not isinstance(cov0, Tensor) or cov0.ndim == 0 else cov0.shape[-1]
    n, generations, lam, fresh, _ = _check_loop(n, generations, lam, fresh, 1)
    if isinstance(cov0, Tensor) and cov0.ndim not in (0, 2):
        raise ValueError(f"cov0 must be a scalar or a (d, d) matrix, got shape {tuple(cov0.shape)}")
    s = torch.as_tensor(cov0, dtype=torch.float64)
    if s.ndim == 0:
        check_real("cov0", float(s), low=0.0, low_open=True)
    else:
        _truth(None, s, dim, torch.float64, s.device)
    m, beta = fresh, (n - fresh) / n
    var_mu, mean_cov, samp = [torch.zeros_like(s)], [s], s          # samp = E S_{t-1}
    for _ in range(generations):
        v_prev = var_mu[-1]
        var_mu.append(m * s / n**2 + beta**2 * v_prev + beta * samp / n)
        mean_cov.append((m * s + (n - m) * samp) / n + m * (n - m) / (n * (n - 1)) * v_prev)
        samp = lam * mean_cov[-1]
    out = {"var_mu": torch.stack(var_mu), "mean_cov": torch.stack(mean_cov)}
    if fresh == 0 and s.ndim == 0:
        m4, d2s, s2 = [0.0], 0.0, float(s) ** 2                      # E D^4, E[D^2 S], E[S^2]
        for _ in range(generations):
            m4.append(m4[-1] + 6 * d2s / n + 3 * s2 / n**2)
            d2s = lam * (d2s + s2 / n)
            s2 = lam**2 * s2 * (1 + 2 / (n - 1))
        out["m4_mu"] = torch.tensor(m4, dtype=torch.float64)
    return out


def log_det_drift(n: int, dim: int = 1) -> float:
    """:math:`\\mathbb E\\log\\det(W/(n-1))` for :math:`W \\sim \\mathrm{Wishart}_d(n-1, I)`: negative.

    Per generation (pure synthetic loop), :math:`\\mathbb E\\log\\det\\Sigma_t` changes by this plus
    :math:`d\\log\\lambda`; for :math:`d = 1` it is :math:`\\psi(\\frac{n-1}{2}) + \\log\\frac{2}{n-1}`.
    """
    n = check_int("n", n, min_value=2)
    dim = check_int("dim", dim, min_value=1)
    if n <= dim:
        raise ValueError(f"n must exceed dim, got n={n}, dim={dim}")
    k = n - 1
    return float(sum(torch.special.digamma(torch.tensor((k - i) / 2, dtype=torch.float64)) for i in range(dim))
                 + dim * (math.log(2) - math.log(k)))
