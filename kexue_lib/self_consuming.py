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

A non-Gaussian loop (:func:`self_consuming_mixture`) replaces the single Gaussian by a mixture of
:math:`K` spherical Gaussians, refitted each generation by EM (warm-started from the previous
generation, as one would fine-tune a model) on :math:`n` points of which :math:`m` are real
(fresh or one fixed set). Truncation samples component :math:`k` from
:math:`\mathcal N(\mu_k, \lambda v_k I)`. Its diversity is read off samples by
:func:`mixture_diversity` (modes kept, spread within a mode, mean pairwise distance).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ._validate import check_int, check_real

__all__ = ["self_consuming_gaussian", "self_consuming_moments", "log_det_drift", "mixture_sample",
           "self_consuming_mixture", "mixture_diversity"]


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


def _check_mixture(weights, means, variances):
    for name, x, nd in (("weights", weights, 2), ("means", means, 3), ("variances", variances, 2)):
        if not isinstance(x, Tensor) or x.ndim != nd or not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor with {nd} dimensions, got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if weights.shape != variances.shape or means.shape[:2] != weights.shape:
        raise ValueError(f"weights (chains, K), means (chains, K, d) and variances (chains, K) disagree: "
                         f"{tuple(weights.shape)}, {tuple(means.shape)}, {tuple(variances.shape)}")
    if (weights < 0).any() or (variances <= 0).any():
        raise ValueError("weights must be non-negative and variances positive")


def mixture_sample(weights: Tensor, means: Tensor, variances: Tensor, k: int, *, lam: float = 1.0,
                   generator: torch.Generator | None = None) -> Tensor:
    """``k`` points per chain from spherical Gaussian mixtures, component variances scaled by ``lam``.

    ``weights`` (chains, K), ``means`` (chains, K, d), ``variances`` (chains, K); returns
    (chains, k, d) on the device and in the dtype of ``means``.

    >>> w, m, v = torch.ones(3, 2) / 2, torch.zeros(3, 2, 4), torch.ones(3, 2)
    >>> tuple(mixture_sample(w, m, v, 5, generator=torch.Generator().manual_seed(0)).shape)
    (3, 5, 4)
    """
    _check_mixture(weights, means, variances)
    k = check_int("k", k, min_value=1)
    lam = check_real("lam", lam, low=0.0, high=1.0, low_open=True)
    chains, _, dim = means.shape
    comp = torch.multinomial(weights, k, replacement=True, generator=generator)          # (chains, k)
    mu = means.gather(1, comp.unsqueeze(-1).expand(chains, k, dim))                      # (chains, k, d)
    sd = (lam * variances).sqrt().gather(1, comp)                                        # (chains, k)
    z = torch.randn(chains, k, dim, generator=generator, dtype=means.dtype, device=means.device)
    return mu + sd.unsqueeze(-1) * z


def _em_step(x, w, mu, v, unbiased, var_floor):
    """One EM step for spherical mixtures, batched over chains; components with no mass keep their parameters."""
    n, dim = x.shape[1], x.shape[2]
    x2 = x.square().sum(-1, keepdim=True)                                                # (chains, n, 1)
    d2 = (x2 - 2 * x @ mu.transpose(1, 2) + mu.square().sum(-1).unsqueeze(1)).clamp_min(0)  # (chains, n, K)
    logp = w.log().unsqueeze(1) - d2 / (2 * v.unsqueeze(1)) - 0.5 * dim * v.log().unsqueeze(1)
    r = torch.softmax(logp, -1)                                                          # responsibilities
    nk = r.sum(1)                                                                        # (chains, K)
    alive = nk > 1e-9
    safe = nk.clamp_min(1e-300)
    mu_new = torch.where(alive.unsqueeze(-1), (r.transpose(1, 2) @ x) / safe.unsqueeze(-1), mu)
    # sum_i r_ik |x_i - mu_k|^2 = sum_i r_ik |x_i|^2 - nk |mu_k|^2 at the new mean
    ss = ((r * x2).sum(1) - nk * mu_new.square().sum(-1)).clamp_min(0)                 # (chains, K)
    denom = nk - r.square().sum(1) / safe if unbiased else nk                           # effective count - 1
    ok = alive & (denom > 1e-9)
    v_new = torch.where(ok, ss / (dim * denom.clamp_min(1e-300)), torch.where(alive, torch.zeros_like(v), v))
    return nk / n, mu_new, v_new.clamp_min(var_floor)


def self_consuming_mixture(n: int, generations: int, *, centres: Tensor, std: float, chains: int = 100,
                           lam: float = 1.0, fresh: int = 0, real: str = "fresh", em_steps: int = 20,
                           unbiased: bool = True, var_floor: float = 1e-12,
                           generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64,
                           device=None) -> dict[str, Tensor]:
    """Run ``chains`` self-consuming Gaussian-mixture loops at once (the non-Gaussian loop).

    The truth is the equal-weight mixture of spherical Gaussians at ``centres`` (K, d) with standard
    deviation ``std``; the model has the same K components. Generation 0 is the truth. Generation
    t >= 1 runs ``em_steps`` EM steps, warm-started at generation t - 1's parameters, on ``n``
    points: ``fresh`` real ones (``real="fresh"``: new draws each generation; ``"fixed"``: one set
    per chain, reused) and ``n - fresh`` drawn from generation t - 1 with component variances scaled
    by ``lam`` (generation 0, the real data, is not truncated). Variances are the weighted
    ``unbiased`` estimate (divisor: the effective count minus one) or the maximum-likelihood one,
    floored at ``var_floor``; a component that receives no mass keeps its parameters with weight 0
    (a lost mode: it can come back only if real data revive it). Returns ``{"weights": (G+1,
    chains, K), "means": (G+1, chains, K, d), "variances": (G+1, chains, K)}``.

    >>> c = torch.tensor([[-2.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    >>> r = self_consuming_mixture(20, 3, centres=c, std=0.3, chains=4, generator=torch.Generator().manual_seed(0))
    >>> tuple(r["weights"].shape), tuple(r["means"].shape)
    ((4, 4, 2), (4, 4, 2, 2))
    """
    n = check_int("n", n, min_value=2)
    generations = check_int("generations", generations, min_value=1)
    chains = check_int("chains", chains, min_value=1)
    lam = check_real("lam", lam, low=0.0, high=1.0, low_open=True)
    fresh = check_int("fresh", fresh, min_value=0, max_value=n)
    em_steps = check_int("em_steps", em_steps, min_value=1)
    std = check_real("std", std, low=0.0, low_open=True)
    var_floor = check_real("var_floor", var_floor, low=0.0, low_open=True)
    if real not in ("fresh", "fixed"):
        raise ValueError(f"real must be 'fresh' or 'fixed', got {real!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if not isinstance(centres, Tensor) or centres.ndim != 2 or centres.shape[0] < 1:
        raise ValueError(f"centres must be a (K, d) tensor, got {getattr(centres, 'shape', type(centres).__name__)}")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    K, dim = centres.shape
    mu0 = centres.to(device=device, dtype=dtype).expand(chains, K, dim)
    w0 = torch.full((chains, K), 1.0 / K, dtype=dtype, device=device)
    v0 = torch.full((chains, K), std**2, dtype=dtype, device=device)
    truth = lambda k: mixture_sample(w0, mu0, v0, k, generator=generator)  # noqa: E731
    fixed = truth(fresh) if (real == "fixed" and fresh) else None
    ws, mus, vs = [w0], [mu0], [v0]
    w, mu, v = w0, mu0, v0
    for t in range(generations):
        parts = [fixed if fixed is not None else truth(fresh)] if fresh else []
        if n > fresh:
            parts.append(mixture_sample(w, mu, v, n - fresh, lam=1.0 if t == 0 else lam, generator=generator))
        x = torch.cat(parts, 1)                                                          # (chains, n, d)
        for _ in range(em_steps):
            w, mu, v = _em_step(x, w, mu, v, unbiased, var_floor)
        ws.append(w)
        mus.append(mu)
        vs.append(v)
    return {"weights": torch.stack(ws), "means": torch.stack(mus), "variances": torch.stack(vs)}


def mixture_diversity(samples: Tensor, centres: Tensor, *, radius: float, min_share: float | None = None) -> dict[str, Tensor]:
    """Diversity of (chains, k, d) samples against the true mode ``centres`` (K, d), one value per chain.

    ``modes``: how many centres hold at least ``min_share`` (default 1/(4K)) of the samples within
    ``radius`` of them; ``spread``: root mean square distance to the nearest centre among the samples
    within ``radius`` (per coordinate); ``pairwise``: mean distance between two distinct samples.
    """
    if not isinstance(samples, Tensor) or samples.ndim != 3 or samples.shape[1] < 2:
        raise ValueError(f"samples must be (chains, k >= 2, d), got {getattr(samples, 'shape', type(samples).__name__)}")
    if not isinstance(centres, Tensor) or centres.ndim != 2 or centres.shape[1] != samples.shape[2]:
        raise ValueError(f"centres must be (K, {samples.shape[2]}), got {getattr(centres, 'shape', None)}")
    radius = check_real("radius", radius, low=0.0, low_open=True)
    K, k = centres.shape[0], samples.shape[1]
    min_share = check_real("min_share", 1 / (4 * K) if min_share is None else min_share, low=0.0, high=1.0)
    c = centres.to(samples)
    dist = torch.cdist(samples, c.expand(samples.shape[0], K, -1))                      # (chains, k, K)
    dmin, nearest = dist.min(-1)
    near = dmin < radius
    counts = torch.zeros(samples.shape[0], K, dtype=samples.dtype, device=samples.device)
    counts.scatter_add_(1, nearest, near.to(samples.dtype))
    modes = (counts >= min_share * k).sum(1)
    spread = ((dmin.square() * near).sum(1) / (samples.shape[2] * near.sum(1).clamp_min(1))).sqrt()
    pair = torch.cdist(samples, samples).sum((1, 2)) / (k * (k - 1))
    return {"modes": modes, "spread": spread, "pairwise": pair}
