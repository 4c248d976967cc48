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
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ._validate import check_int, check_tensor

__all__ = ["sinusoidal_embedding", "SinusoidalTimeEmbedding", "MLPDenoiser", "UNetDenoiser", "eight_gaussians"]


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
    input projection, then ``depth`` residual blocks h + W silu(h) and a linear read-out."""

    def __init__(self, data_dim: int = 2, *, hidden: int = 128, depth: int = 3, time_dim: int = 32):
        super().__init__()
        self.data_dim = check_int("data_dim", data_dim, min_value=1)
        hidden = check_int("hidden", hidden, min_value=1)
        depth = check_int("depth", depth, min_value=0)
        self.time_dim = check_int("time_dim", time_dim, min_value=2)
        self.inp, self.temb = nn.Linear(data_dim, hidden), nn.Linear(time_dim, hidden)
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, data_dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        _check_inputs(x, t, 2, f"(batch, {self.data_dim})")
        if x.shape[1] != self.data_dim:
            raise ValueError(f"x must have {self.data_dim} features, got shape {tuple(x.shape)}")
        emb = sinusoidal_embedding(t, self.time_dim).to(x.dtype)      # (batch, time_dim)
        h = self.inp(x) + self.temb(emb)                              # (batch, hidden)
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
