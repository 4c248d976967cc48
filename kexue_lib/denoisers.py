r"""Noise-prediction networks :math:`\epsilon_\theta(x_t, t)` for DDPM: an MLP for points, a small UNet for images.

Article: 生成扩散模型漫谈(一):DDPM = 拆楼 + 建楼, https://kexue.fm/archives/9119 (2022-06-13).
Paper: J. Ho, A. Jain, P. Abbeel, *Denoising Diffusion Probabilistic Models*, arXiv:2006.11239
(its appendix B: the timestep enters through a sinusoidal embedding, as in the Transformer's
position encoding, added inside every residual block; the network is a UNet with GroupNorm).

One network serves all T timesteps: its parameters are shared and t is a conditioning input,

.. math::

    \mathrm{emb}(t)_{2i} = \sin(t\,\omega_i),\quad \mathrm{emb}(t)_{2i+1} = \cos(t\,\omega_i),\quad
    \omega_i = 10000^{-2i/d}.

Both networks take ``x`` of shape (batch, ...) and integer ``t`` of shape (batch,), run on
any device (they follow their parameters) and return a tensor of ``x``'s shape.

For a Gaussian mixture the minimiser of DDPM's loss is known in closed form
(:class:`ExactMixtureDenoiser`): with components :math:`\mathcal N(m_k, s^2 I)` of weights
:math:`\pi_k`, :math:`x_t \mid k \sim \mathcal N(\sqrt{\bar\alpha_t}m_k, v_t I)` with
:math:`v_t = \bar\alpha_t s^2 + 1 - \bar\alpha_t`, and

.. math::

    \mathbb E[\varepsilon \mid x_t] = \frac{\sqrt{1-\bar\alpha_t}}{v_t}\sum_k w_k(x_t)\,(x_t - \sqrt{\bar\alpha_t}\,m_k),
    \qquad w_k(x_t) \propto \pi_k \exp\Big(-\frac{\|x_t - \sqrt{\bar\alpha_t}m_k\|^2}{2v_t}\Big).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ._validate import check_int, check_tensor

__all__ = ["sinusoidal_embedding", "SinusoidalTimeEmbedding", "MLPDenoiser", "UNetDenoiser", "eight_gaussians",
           "eight_gaussian_centres", "mixture_eps", "ExactMixtureDenoiser"]


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(batch,) timesteps -> (batch, dim) features [sin(t w_0), cos(t w_0), sin(t w_1), ...], computed in float32."""
    t = check_tensor("t", t, ndim=1)
    dim = check_int("dim", dim, min_value=2)
    if dim % 2:
        raise ValueError(f"dim must be even, got {dim}")
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, dim, 2, device=t.device, dtype=torch.float32) / dim)
    angles = t.float()[:, None] * freqs[None, :]                         # (batch, dim/2)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)  # (batch, dim) interleaved


class SinusoidalTimeEmbedding(nn.Module):
    """Sinusoidal features of t followed by a two-layer MLP (the paper's timestep embedding)."""

    def __init__(self, dim: int, *, hidden: int | None = None):
        super().__init__()
        self.dim = check_int("dim", dim, min_value=2)
        hidden = check_int("hidden", hidden if hidden is not None else 4 * dim, min_value=1)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.out_dim = hidden

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = sinusoidal_embedding(t, self.dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


def _check_inputs(x: torch.Tensor, t: torch.Tensor, ndim: int, what: str) -> None:
    check_tensor("x", x, ndim=ndim, floating=True)
    check_tensor("t", t, ndim=1)
    if t.shape[0] != x.shape[0]:
        raise ValueError(f"t must hold one timestep per sample ({x.shape[0]}), got {t.shape[0]}; x is {what}")


class MLPDenoiser(nn.Module):
    """eps_theta for points in R^d: the sinusoidal features of t are projected and added to the
    input projection, then ``depth`` residual blocks h + W silu(h) and a linear read-out.

    ``time_input=False`` builds the same network without the time projection: it ignores ``t``
    (the ablation of the article's "t is an input of the shared network")."""

    def __init__(self, data_dim: int = 2, *, hidden: int = 128, depth: int = 3, time_dim: int = 32,
                 time_input: bool = True):
        super().__init__()
        self.data_dim = check_int("data_dim", data_dim, min_value=1)
        hidden = check_int("hidden", hidden, min_value=1)
        depth = check_int("depth", depth, min_value=0)
        self.time_dim = check_int("time_dim", time_dim, min_value=2)
        if not isinstance(time_input, bool):
            raise ValueError(f"time_input must be a bool, got {time_input!r}")
        self.time_input = time_input
        self.inp = nn.Linear(data_dim, hidden)
        self.temb = nn.Linear(time_dim, hidden) if time_input else None
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, data_dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        _check_inputs(x, t, 2, f"(batch, {self.data_dim})")
        if x.shape[1] != self.data_dim:
            raise ValueError(f"x must have {self.data_dim} features, got shape {tuple(x.shape)}")
        h = self.inp(x)                                               # (batch, hidden)
        if self.temb is not None:
            h = h + self.temb(sinusoidal_embedding(t, self.time_dim).to(x.dtype))  # time features (batch, time_dim)
        for blk in self.blocks:
            h = h + blk(h)
        return self.out(h)                                            # (batch, data_dim)


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, t_dim: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.temb = nn.Linear(t_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(groups, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + self.temb(emb)[:, :, None, None]            # time enters every block
        h = self.conv2(nn.functional.silu(self.norm2(h)))
        return self.skip(x) + h


class UNetDenoiser(nn.Module):
    """A small UNet eps_theta for (batch, C, H, W) images, H and W divisible by 2**(len(channels) - 1).

    Each level has one residual block; downsampling by stride-2 convolution, upsampling by
    nearest-neighbour interpolation; skip connections concatenate encoder features.
    """

    def __init__(self, in_channels: int = 1, *, channels: tuple[int, ...] = (32, 64), time_dim: int = 32, groups: int = 8):
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels, min_value=1)
        if not channels or any(check_int("channels entry", c, min_value=1) % groups for c in channels):
            raise ValueError(f"channels must be a non-empty tuple of multiples of groups={groups}, got {channels}")
        self.channels = tuple(channels)
        self.time = SinusoidalTimeEmbedding(time_dim)
        td = self.time.out_dim
        self.inp = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.down = nn.ModuleList(_ResBlock(channels[max(i - 1, 0)], c, td, groups) for i, c in enumerate(channels))
        self.pool = nn.ModuleList(nn.Conv2d(c, c, 3, stride=2, padding=1) for c in channels[:-1])
        self.mid = _ResBlock(channels[-1], channels[-1], td, groups)
        self.up = nn.ModuleList(_ResBlock(2 * c, channels[max(i - 1, 0)], td, groups) for i, c in enumerate(channels))
        self.out = nn.Sequential(nn.GroupNorm(groups, channels[0]), nn.SiLU(), nn.Conv2d(channels[0], in_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        _check_inputs(x, t, 4, "(batch, C, H, W)")
        factor = 2 ** (len(self.channels) - 1)
        if x.shape[1] != self.in_channels or x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"x must be (batch, {self.in_channels}, H, W) with H, W divisible by {factor}, "
                             f"got {tuple(x.shape)}")
        emb = self.time(t)
        h, skips = self.inp(x), []
        for i, blk in enumerate(self.down):
            h = blk(h, emb)
            skips.append(h)
            if i < len(self.pool):
                h = self.pool[i](h)                          # (batch, c, H/2^(i+1), W/2^(i+1))
        h = self.mid(h, emb)
        for i in reversed(range(len(self.up))):
            if h.shape[-1] != skips[i].shape[-1]:
                h = nn.functional.interpolate(h, scale_factor=2, mode="nearest")
            h = self.up[i](torch.cat([h, skips[i]], 1), emb)
        return self.out(h)                                   # (batch, C, H, W)


def eight_gaussians(n: int, *, radius: float = 2.0, std: float = 0.1, generator=None,
                    dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """n points from a mixture of 8 equal Gaussians centred on a circle; returns (points (n, 2), mode index (n,))."""
    n = check_int("n", n, min_value=1)
    if not (radius > 0 and std > 0):
        raise ValueError(f"radius and std must be positive, got {radius}, {std}")
    k = torch.randint(0, 8, (n,), generator=generator)
    angle = k.to(torch.float64) * (math.pi / 4)
    centres = radius * torch.stack([angle.cos(), angle.sin()], 1)
    return (centres + std * torch.randn(n, 2, generator=generator, dtype=torch.float64)).to(dtype), k


def eight_gaussian_centres(radius: float = 2.0, *, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """The (8, 2) centres of :func:`eight_gaussians`: ``radius * (cos, sin)(k pi / 4)``, k = 0..7."""
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius}")
    angle = torch.arange(8, dtype=torch.float64) * (math.pi / 4)
    return (radius * torch.stack([angle.cos(), angle.sin()], 1)).to(dtype=dtype, device=device)


def mixture_eps(x: torch.Tensor, abar, centres: torch.Tensor, std: float, weights: torch.Tensor | None = None) -> torch.Tensor:
    r"""Exact :math:`\mathbb E[\varepsilon \mid x_t]` for the mixture of :math:`\mathcal N(m_k, s^2 I)` (module docstring).

    ``x`` (batch, d); ``abar`` the :math:`\bar\alpha_t` of each sample, a float or a (batch,) tensor;
    ``centres`` (K, d); ``weights`` (K,) (default equal). Computed in ``x``'s dtype and device.
    """
    check_tensor("x", x, ndim=2, floating=True)
    check_tensor("centres", centres, ndim=2)
    if centres.shape[1] != x.shape[1]:
        raise ValueError(f"centres must be (K, {x.shape[1]}), got {tuple(centres.shape)}")
    if not std > 0:
        raise ValueError(f"std must be positive, got {std}")
    ab = torch.as_tensor(abar, dtype=x.dtype, device=x.device).reshape(-1, 1)          # (batch or 1, 1)
    if ab.shape[0] not in (1, x.shape[0]) or ((ab <= 0) | (ab > 1)).any():
        raise ValueError("abar must be one value in (0, 1] or one per sample")
    m = centres.to(dtype=x.dtype, device=x.device)
    logw = torch.zeros(m.shape[0], dtype=x.dtype, device=x.device)
    if weights is not None:
        weights = check_tensor("weights", weights, ndim=1)
        if weights.shape[0] != m.shape[0] or (weights < 0).any() or not weights.sum() > 0:
            raise ValueError(f"weights must be {m.shape[0]} non-negative numbers with a positive sum")
        logw = weights.to(dtype=x.dtype, device=x.device).log()
    v = ab * std**2 + 1 - ab                                                             # (batch, 1)
    d = x[:, None, :] - ab.sqrt()[:, :, None] * m                                       # (batch, K, d)
    w = torch.softmax(logw - d.square().sum(-1) / (2 * v), 1)                           # (batch, K)
    return (w[..., None] * d).sum(1) * ((1 - ab).sqrt() / v)                             # (batch, d)


class ExactMixtureDenoiser(nn.Module):
    """The exact noise predictor of a Gaussian mixture under a DDPM schedule: a drop-in ``model(x, t)``.

    ``schedule`` is anything with ``alphas_cumprod`` (T,), e.g. ``kexue_lib.diffusion.DDPMSchedule``;
    ``t`` holds 0-based timesteps, one per sample. What a perfectly trained network would output.
    """

    def __init__(self, schedule, centres: torch.Tensor, std: float, *, weights: torch.Tensor | None = None):
        super().__init__()
        abar = getattr(schedule, "alphas_cumprod", None)
        if not isinstance(abar, torch.Tensor) or abar.ndim != 1:
            raise ValueError("schedule must have a 1-D alphas_cumprod tensor")
        check_tensor("centres", centres, ndim=2)
        if not std > 0:
            raise ValueError(f"std must be positive, got {std}")
        self.register_buffer("abar", abar.to(torch.float64), persistent=False)
        self.register_buffer("centres", centres.to(torch.float64), persistent=False)
        self.register_buffer("weights", None if weights is None else weights.to(torch.float64), persistent=False)
        self.std = float(std)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        _check_inputs(x, t, 2, f"(batch, {self.centres.shape[1]})")
        if t.dtype.is_floating_point or (t < 0).any() or (t >= self.abar.shape[0]).any():
            raise ValueError(f"t must be integer timesteps in [0, {self.abar.shape[0]})")
        return mixture_eps(x, self.abar.to(x.device)[t.to(self.abar.device)], self.centres, self.std, self.weights)
