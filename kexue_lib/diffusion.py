r"""DDPM: the noise schedule, forward noising, the epsilon-prediction loss and the ancestral sampler.

Article: 生成扩散模型漫谈(一):DDPM = 拆楼 + 建楼, https://kexue.fm/archives/9119 (2022-06-13).
Papers: J. Ho, A. Jain, P. Abbeel, *Denoising Diffusion Probabilistic Models*, arXiv:2006.11239;
J. Sohl-Dickstein et al., *Deep Unsupervised Learning using Nonequilibrium Thermodynamics*,
arXiv:1503.03585; A. Nichol, P. Dhariwal, *Improved DDPM*, arXiv:2102.09672 (cosine schedule).

Notation is the paper's (the blog's :math:`\alpha_t, \beta_t` are square roots of these):

.. math::

    q(x_t \mid x_{t-1}) = \mathcal N(\sqrt{\alpha_t}\,x_{t-1}, \beta_t I),\quad \alpha_t = 1 - \beta_t,\quad
    \bar\alpha_t = \prod_{s \le t} \alpha_s,\quad
    x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1 - \bar\alpha_t}\,\varepsilon,

    q(x_{t-1} \mid x_t, x_0) = \mathcal N\Big(\tfrac{\sqrt{\bar\alpha_{t-1}}\beta_t}{1-\bar\alpha_t} x_0
        + \tfrac{\sqrt{\alpha_t}(1-\bar\alpha_{t-1})}{1-\bar\alpha_t} x_t,\;
        \tilde\beta_t = \tfrac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\beta_t\Big),

    \text{loss} = \|\varepsilon - \epsilon_\theta(\sqrt{\bar\alpha_t}x_0 + \sqrt{1-\bar\alpha_t}\varepsilon, t)\|^2,\qquad
    x_{t-1} = \tfrac{1}{\sqrt{\alpha_t}}\Big(x_t - \tfrac{\beta_t}{\sqrt{1-\bar\alpha_t}}\epsilon_\theta(x_t, t)\Big)
        + \sigma_t z.

Timesteps are 0-based like ``diffusers``: index ``t = 0 .. T-1`` is the paper's step ``t + 1``.
The schedule is kept in float64 on the CPU; every function casts the coefficients to the
device and dtype of its input. The sampler takes its coefficients from a table built once
(Python floats, no per-step scheduler work) and adds no noise at the last step (``t = 0``).
"""
from __future__ import annotations

import math

import torch

from ._validate import check_int, check_real, check_tensor

__all__ = ["DDPMSchedule", "ddpm_loss", "ddpm_loss_two_noise", "ddpm_step", "ddpm_sample", "mmd2", "train_ddpm"]

SCHEDULES = ("linear", "cosine", "blog")
VARIANCES = ("small", "large", "zero")


def _randn(shape, generator, device, dtype) -> torch.Tensor:
    """Standard normal draws made on the generator's device (CPU generators work for CUDA data)."""
    where = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=where, dtype=dtype).to(device)


class DDPMSchedule:
    r"""The fixed variance schedule :math:`\beta_1..\beta_T` and every coefficient derived from it.

    ``schedule="linear"`` (the paper's): ``beta_start .. beta_end`` evenly spaced;
    ``"cosine"``: :math:`\bar\alpha(t) \propto \cos^2(\frac{t/T + s}{1 + s}\frac\pi2)` with
    :math:`\beta_t` capped at ``max_beta`` (arXiv:2102.09672); ``"blog"``: the article's
    :math:`\beta_t = \text{beta\_end}\cdot t/T`, i.e. :math:`\alpha_t = \sqrt{1 - 0.02t/T}` in its notation.
    ``beta_start`` and ``beta_end`` are used by ``"linear"``; ``"blog"`` uses ``beta_end`` only and
    ``"cosine"`` neither.

    >>> s = DDPMSchedule()
    >>> round(float(s.alphas_cumprod[-1]), 7)
    4.04e-05
    """

    def __init__(self, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, *,
                 schedule: str = "linear", cosine_s: float = 0.008, max_beta: float = 0.999):
        self.T = check_int("T", T, min_value=1)
        beta_start = check_real("beta_start", beta_start, low=0.0, high=1.0, low_open=True, high_open=True)
        beta_end = check_real("beta_end", beta_end, low=0.0, high=1.0, low_open=True, high_open=True)
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        self.schedule = schedule
        steps = torch.arange(1, self.T + 1, dtype=torch.float64)
        if schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, self.T, dtype=torch.float64)
        elif schedule == "blog":
            betas = beta_end * steps / self.T
        else:
            s = check_real("cosine_s", cosine_s, low=0.0)
            cap = check_real("max_beta", max_beta, low=0.0, high=1.0, low_open=True, high_open=True)
            f = lambda u: torch.cos((u / self.T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
            betas = (1 - f(steps) / f(steps - 1)).clamp(max=cap)
        self.betas = betas                                           # (T,) beta_t
        self.alphas = 1 - betas                                      # (T,) alpha_t
        self.alphas_cumprod = torch.cumprod(self.alphas, 0)          # (T,) alpha-bar_t
        self.alphas_cumprod_prev = torch.cat([betas.new_ones(1), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1 - self.alphas_cumprod).sqrt()
        # posterior q(x_{t-1} | x_t, x_0): variance beta~_t and the two mean coefficients
        self.posterior_variance = (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod) * betas
        self.posterior_mean_coef1 = self.alphas_cumprod_prev.sqrt() * betas / (1 - self.alphas_cumprod)
        self.posterior_mean_coef2 = self.alphas.sqrt() * (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)

    def __repr__(self) -> str:
        return f"DDPMSchedule(T={self.T}, schedule={self.schedule!r}, beta_1={self.betas[0]:.3g}, beta_T={self.betas[-1]:.3g})"

    # ---- helpers -------------------------------------------------------------------------
    def _t(self, t, x: torch.Tensor) -> torch.Tensor:
        """Timesteps as a (batch,) long tensor on x's device, checked to lie in [0, T)."""
        if isinstance(t, int) and not isinstance(t, bool):
            t = torch.full((x.shape[0],), t, dtype=torch.long)
        t = check_tensor("t", t, ndim=1)
        if t.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"t must hold integer timesteps, got {t.dtype}")
        if t.shape[0] != x.shape[0]:
            raise ValueError(f"t must have one timestep per sample ({x.shape[0]}), got {t.shape[0]}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.T):
            raise ValueError(f"timesteps must lie in [0, {self.T - 1}], got range [{int(t.min())}, {int(t.max())}]")
        return t.to(x.device)

    def gather(self, name: str, t, x: torch.Tensor) -> torch.Tensor:
        """Coefficient ``name`` at timesteps ``t``, shaped (batch, 1, ..., 1) to broadcast against ``x``."""
        t = self._t(t, x)
        coef = getattr(self, name).to(device=x.device, dtype=x.dtype)[t]
        return coef.view(-1, *([1] * (x.ndim - 1)))

    @staticmethod
    def _data(name: str, x) -> torch.Tensor:
        x = check_tensor(name, x, floating=True)
        if x.ndim < 2:
            raise ValueError(f"{name} must be batched, shape (batch, ...), got shape {tuple(x.shape)}")
        return x

    @staticmethod
    def _noise_like(x: torch.Tensor, noise, generator) -> torch.Tensor:
        if noise is None:
            return _randn(x.shape, generator, x.device, x.dtype)
        noise = check_tensor("noise", noise, floating=True)
        if noise.shape != x.shape:
            raise ValueError(f"noise must have the data's shape {tuple(x.shape)}, got {tuple(noise.shape)}")
        return noise

    # ---- the forward process ---------------------------------------------------------------
    def q_step(self, x_prev: torch.Tensor, t, noise: torch.Tensor | None = None, *, generator=None) -> torch.Tensor:
        """One demolition step: x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) eps_t."""
        x_prev = self._data("x_prev", x_prev)
        noise = self._noise_like(x_prev, noise, generator)
        return self.gather("alphas", t, x_prev).sqrt() * x_prev + self.gather("betas", t, x_prev).sqrt() * noise

    def q_sample(self, x0: torch.Tensor, t, noise: torch.Tensor | None = None, *, generator=None) -> torch.Tensor:
        """All steps at once: x_t = sqrt(alpha-bar_t) x_0 + sqrt(1 - alpha-bar_t) eps."""
        x0 = self._data("x0", x0)
        noise = self._noise_like(x0, noise, generator)
        return self.gather("sqrt_alphas_cumprod", t, x0) * x0 + self.gather("sqrt_one_minus_alphas_cumprod", t, x0) * noise

    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance (broadcastable) of q(x_{t-1} | x_t, x_0)."""
        x0, xt = self._data("x0", x0), self._data("xt", xt)
        if x0.shape != xt.shape:
            raise ValueError(f"x0 and xt must have the same shape, got {tuple(x0.shape)} and {tuple(xt.shape)}")
        mean = self.gather("posterior_mean_coef1", t, xt) * x0 + self.gather("posterior_mean_coef2", t, xt) * xt
        return mean, self.gather("posterior_variance", t, xt)

    def predict_x0(self, xt: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
        """Invert q_sample given the noise: x_0 = (x_t - sqrt(1 - alpha-bar_t) eps) / sqrt(alpha-bar_t)."""
        xt = self._data("xt", xt)
        return (xt - self.gather("sqrt_one_minus_alphas_cumprod", t, xt) * eps) / self.gather("sqrt_alphas_cumprod", t, xt)

    def sampler_coefficients(self, variance: str = "small") -> torch.Tensor:
        r"""(T, 3) float64 table of (1/sqrt(alpha_t), beta_t/sqrt(1-alpha-bar_t), sigma_t).

        ``variance``: ``"small"`` sigma^2 = posterior variance beta~_t, ``"large"`` sigma^2 = beta_t
        (the blog's sigma_t = beta_t in its notation), ``"zero"`` the blog's greedy sampler.
        sigma is 0 at t = 0 for every choice: the last step returns the mean.
        """
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
        sigma = {"small": self.posterior_variance, "large": self.betas, "zero": torch.zeros_like(self.betas)}[variance]
        sigma = sigma.sqrt().clone()
        sigma[0] = 0.0
        return torch.stack([self.alphas.rsqrt(), self.betas / self.sqrt_one_minus_alphas_cumprod, sigma], 1)


def _per_sample(err: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    per = err.flatten(1).mean(1)  # (batch,) mean over the data dimensions
    return per.mean() if reduction == "mean" else per


def _draw_t(schedule: DDPMSchedule, x0: torch.Tensor, t, generator) -> torch.Tensor:
    if t is None:
        where = generator.device if generator is not None else x0.device
        t = torch.randint(0, schedule.T, (x0.shape[0],), generator=generator, device=where)
    return schedule._t(t, x0)


def ddpm_loss(model, x0: torch.Tensor, schedule: DDPMSchedule, *, t=None, noise=None, generator=None,
              reduction: str = "mean") -> torch.Tensor:
    """The paper's simple loss ||eps - eps_theta(x_t, t)||^2 (mean over data dimensions), t uniform."""
    x0 = schedule._data("x0", x0)
    t = _draw_t(schedule, x0, t, generator)
    noise = schedule._noise_like(x0, noise, generator)
    xt = schedule.q_sample(x0, t, noise)
    return _per_sample((noise - model(xt, t)).square(), reduction)


def ddpm_loss_two_noise(model, x0: torch.Tensor, schedule: DDPMSchedule, *, t=None, noise_prev=None, noise_t=None,
                        generator=None, reduction: str = "mean") -> torch.Tensor:
    r"""The blog's loss before variance reduction, rescaled to estimate the same quantity as :func:`ddpm_loss`.

    x_{t-1} = sqrt(abar_{t-1}) x_0 + sqrt(1 - abar_{t-1}) eps', x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) eps_t;
    loss = ||sqrt((1 - abar_t)/beta_t) eps_t - eps_theta(x_t, t)||^2 - alpha_t (1 - abar_{t-1}) / beta_t
    (per dimension). Its expectation over eps' given eps = (x_t - sqrt(abar_t) x_0)/sqrt(1 - abar_t) is the
    simple loss, so both have one mean and this one has the larger variance (Rao-Blackwell).
    """
    x0 = schedule._data("x0", x0)
    t = _draw_t(schedule, x0, t, generator)
    noise_prev = schedule._noise_like(x0, noise_prev, generator)
    noise_t = schedule._noise_like(x0, noise_t, generator)
    g = lambda name: schedule.gather(name, t, x0)  # noqa: E731
    x_prev = g("alphas_cumprod_prev").sqrt() * x0 + (1 - g("alphas_cumprod_prev")).sqrt() * noise_prev
    xt = g("alphas").sqrt() * x_prev + g("betas").sqrt() * noise_t
    scale = (1 - g("alphas_cumprod")).div(g("betas")).sqrt()
    const = g("alphas") * (1 - g("alphas_cumprod_prev")) / g("betas")
    return _per_sample((scale * noise_t - model(xt, t)).square() - const, reduction)


def ddpm_step(schedule: DDPMSchedule, eps: torch.Tensor, t: int, xt: torch.Tensor, noise: torch.Tensor | None = None,
              *, variance: str = "small", generator=None) -> torch.Tensor:
    """One ancestral step x_t -> x_{t-1} given the model's noise prediction ``eps`` (no noise at t = 0)."""
    xt = schedule._data("xt", xt)
    t = check_int("t", t, min_value=0, max_value=schedule.T - 1)
    if eps.shape != xt.shape:
        raise ValueError(f"eps must have the shape of xt {tuple(xt.shape)}, got {tuple(eps.shape)}")
    c_x, c_eps, sigma = schedule.sampler_coefficients(variance)[t].tolist()
    mean = c_x * (xt - c_eps * eps)
    if sigma == 0.0:
        return mean
    return mean + sigma * schedule._noise_like(xt, noise, generator)


@torch.no_grad()
def ddpm_sample(model, shape, schedule: DDPMSchedule, *, variance: str = "small", x_T: torch.Tensor | None = None,
                generator=None, device=None, dtype: torch.dtype = torch.float32, keep: tuple[int, ...] = ()):
    """Ancestral sampling from x_T ~ N(0, I) through T steps; returns x_0 (and {t: x_t} for t in ``keep``).

    The coefficient table is built once as Python floats; the loop only calls the model and
    does three fused tensor operations per step. ``keep`` lists timesteps whose x_t to return
    (``T`` means the starting noise).
    """
    table = schedule.sampler_coefficients(variance).tolist()
    if x_T is None:
        if shape is None:
            raise ValueError("give the sample shape, or a starting point x_T")
        shape = tuple(check_int("shape entry", s, min_value=1) for s in shape)
        x = _randn(shape, generator, torch.device(device or "cpu"), dtype)
    else:
        x = schedule._data("x_T", x_T).clone()
    snapshots = {schedule.T: x.clone()} if schedule.T in keep else {}
    ts = torch.arange(schedule.T, device=x.device).view(-1, 1).expand(-1, x.shape[0])  # (T, batch)
    for t in reversed(range(schedule.T)):
        c_x, c_eps, sigma = table[t]
        eps = model(x, ts[t])
        x = (x - c_eps * eps).mul_(c_x)
        if sigma:
            x.add_(_randn(x.shape, generator, x.device, x.dtype), alpha=sigma)
        if t in keep:
            snapshots[t] = x.clone()
    return (x, snapshots) if keep else x


def mmd2(x: torch.Tensor, y: torch.Tensor, bandwidths=(0.1, 0.2, 0.5, 1.0, 2.0)) -> torch.Tensor:
    """Unbiased squared maximum mean discrepancy with a sum of Gaussian kernels exp(-|a-b|^2 / 2h^2)."""
    x, y = check_tensor("x", x, ndim=2, floating=True), check_tensor("y", y, ndim=2, floating=True)
    if x.shape[1] != y.shape[1] or x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(f"x and y must be (n, d) and (m, d) with n, m >= 2, got {tuple(x.shape)}, {tuple(y.shape)}")
    if not bandwidths or any(h <= 0 for h in bandwidths):
        raise ValueError(f"bandwidths must be positive, got {bandwidths}")

    def k(a, b):
        d2 = torch.cdist(a, b).square()
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)

    n, m = x.shape[0], y.shape[0]
    kxx, kyy = k(x, x), k(y, y)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return sxx + syy - 2 * k(x, y).mean()


def train_ddpm(model, data: torch.Tensor, schedule: DDPMSchedule, *, steps: int, batch_size: int = 256,
               lr: float = 2e-3, generator=None, progress=lambda it: it) -> list[float]:
    """Adam on :func:`ddpm_loss` over minibatches drawn from ``data`` with a cosine-decayed rate; returns the losses."""
    steps = check_int("steps", steps, min_value=1)
    batch_size = check_int("batch_size", batch_size, min_value=1)
    data = schedule._data("data", data)
    opt = torch.optim.Adam(model.parameters(), lr=check_real("lr", lr, low=0.0, low_open=True))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    for _ in progress(range(steps)):
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=generator).to(data.device)
        loss = ddpm_loss(model, data[idx], schedule, generator=generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses
