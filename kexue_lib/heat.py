r"""A linear feature field: the predictor behind QB-Heat.

Article: 用热传导方程来指导自监督学习, https://kexue.fm/archives/9359 (Su Jianlin, 2022-11-30).
Paper: Y. Chen, X. Dai, D. Chen, M. Liu, L. Yuan, Z. Liu, Y. Lin, *Self-Supervised Learning
based on Heat Equation*, arXiv:2211.13228.

A feature map is a field :math:`z(x, y) \in \mathbb{R}^d` on an ``h x w`` grid. The steady heat
equation is Laplace's equation; made anisotropic, :math:`z_{xx} + S z_{yy} = 0`. QB-Heat replaces
it by the first-order split

.. math::

    z_x = A z, \qquad z_y = B z, \qquad S = -A^2 (B^2)^{-1},

whose solutions solve the anisotropic equation (and exist for every initial value only when
:math:`AB = BA`). One explicit Euler step per grid cell gives the linear predictor

.. math::

    z(x + \Delta x, y) \approx (I + \Delta x A)\, z(x, y), \qquad
    z(x, y + \Delta y) \approx (I + \Delta y B)\, z(x, y).

QB-Heat keeps the top-left quarter of the grid visible and extrapolates the other three quarters
from it: the right quarter from the visible block's last column, then everything below from the
last visible-or-predicted row (``order="xy"``; ``order="yx"`` goes down first). With commuting
``A, B`` both orders agree; otherwise the bottom-right quarter depends on the path.

Layout: grids are channels-last ``(batch, h, w, d)`` (``x`` is the column index, ``y`` the row
index), so that each cell is one feature vector. Device and dtype follow the input grid; the
generators are cast to them. :func:`fit_generators` solves the least-squares problem in float64
and returns the input dtype.

The toy pipeline (the article's QB-Heat against MAE): :class:`QuarterCNNEncoder` encodes only
the visible quarter of an image (a CNN suffices, since that block is contiguous);
:class:`QuarterPredictor` extrapolates its features to the whole grid with one linear map per
direction (right, left, down, up; the visible quarter may sit in any corner, which is reduced to the
top-left case by flipping); :func:`token_fill` is MAE's alternative, one shared [MASK] vector in every
masked cell; :class:`GridDecoder` turns the completed grid back into pixels.
"""
from __future__ import annotations

import torch
from torch import nn

from ._validate import check_int, check_real, check_tensor

__all__ = [
    "euler_matrix",
    "matrix_powers",
    "split_field",
    "quarter_mask",
    "qb_heat_extrapolate",
    "mean_fill",
    "fit_generators",
    "LinearFieldPredictor",
    "CORNERS",
    "quarter_block",
    "token_fill",
    "QuarterPredictor",
    "QuarterCNNEncoder",
    "GridDecoder",
]

_ORDERS = ("xy", "yx")


def _check_square(name: str, m, dim: int | None = None) -> torch.Tensor:
    check_tensor(name, m, ndim=2, floating=True)
    if m.shape[0] != m.shape[1]:
        raise ValueError(f"{name} must be a square (d, d) matrix, got shape {tuple(m.shape)}")
    if dim is not None and m.shape[0] != dim:
        raise ValueError(f"{name} must be ({dim}, {dim}) to match the feature dimension, got {tuple(m.shape)}")
    return m


def _check_grid(name: str, z) -> torch.Tensor:
    check_tensor(name, z, ndim=4, floating=True)
    if min(z.shape) == 0:
        raise ValueError(f"{name} must be a non-empty (batch, h, w, d) grid, got shape {tuple(z.shape)}")
    return z


def euler_matrix(gen: torch.Tensor, step: float = 1.0) -> torch.Tensor:
    """``I + step * gen``: one explicit Euler step of ``z' = gen z``."""
    _check_square("gen", gen)
    step = check_real("step", step, low=0.0, low_open=True)
    return torch.eye(gen.shape[0], dtype=gen.dtype, device=gen.device) + step * gen


def matrix_powers(m: torch.Tensor, k: int) -> torch.Tensor:
    """``(k, d, d)`` stack of ``m^1, ..., m^k`` (``k`` products, no eigendecomposition)."""
    _check_square("m", m)
    k = check_int("k", k, min_value=1)
    out = [m]
    for _ in range(k - 1):
        out.append(m @ out[-1])
    return torch.stack(out)


def split_field(z0: torch.Tensor, a: torch.Tensor, b: torch.Tensor, h: int, w: int,
                *, dx: float = 1.0, dy: float = 1.0, method: str = "exact") -> torch.Tensor:
    r"""The field ``z(i, j) = exp(i dy B) exp(j dx A) z0`` (``method="exact"``) or its Euler version
    ``(I + dy B)^i (I + dx A)^j z0``, for ``z0`` of shape ``(batch, d)``; returns ``(batch, h, w, d)``.

    The x-step is applied first; when ``A`` and ``B`` commute the order does not matter.
    """
    check_tensor("z0", z0, ndim=2, floating=True)
    d = z0.shape[1]
    a = _check_square("a", a, d).to(z0)
    b = _check_square("b", b, d).to(z0)
    h, w = check_int("h", h, min_value=1), check_int("w", w, min_value=1)
    dx, dy = check_real("dx", dx, low=0.0, low_open=True), check_real("dy", dy, low=0.0, low_open=True)
    if method == "exact":
        mx, my = torch.linalg.matrix_exp(dx * a), torch.linalg.matrix_exp(dy * b)
    elif method == "euler":
        mx, my = euler_matrix(a, dx), euler_matrix(b, dy)
    else:
        raise ValueError(f"method must be 'exact' or 'euler', got {method!r}")
    eye = torch.eye(d, dtype=z0.dtype, device=z0.device)[None]
    px = torch.cat([eye, matrix_powers(mx, w - 1)]) if w > 1 else eye  # (w, d, d): mx^j
    py = torch.cat([eye, matrix_powers(my, h - 1)]) if h > 1 else eye  # (h, d, d): my^i
    row0 = torch.einsum("jde,be->bjd", px, z0)  # (batch, w, d): first row
    return torch.einsum("ide,bje->bijd", py, row0)  # (batch, h, w, d)


def quarter_mask(h: int, w: int, *, device=None) -> torch.Tensor:
    """``(h, w)`` bool mask, True on the visible top-left quarter (``h`` and ``w`` even)."""
    h, w = check_int("h", h, min_value=2), check_int("w", w, min_value=2)
    if h % 2 or w % 2:
        raise ValueError(f"h and w must be even to split the grid into quarters, got ({h}, {w})")
    mask = torch.zeros(h, w, dtype=torch.bool, device=device)
    mask[: h // 2, : w // 2] = True
    return mask


def _check_full_hw(visible: torch.Tensor, full_hw) -> tuple[int, int]:
    if not (isinstance(full_hw, (tuple, list)) and len(full_hw) == 2):
        raise ValueError(f"full_hw must be a pair (h, w), got {full_hw!r}")
    h, w = (check_int(n, v, min_value=1) for n, v in zip(("h", "w"), full_hw))
    if h < visible.shape[1] or w < visible.shape[2]:
        raise ValueError(f"full_hw {(h, w)} is smaller than the visible block {tuple(visible.shape[1:3])}")
    return h, w


def _extend(z: torch.Tensor, m: torch.Tensor, k: int, axis: int) -> torch.Tensor:
    """Append k Euler-predicted columns (axis=2) or rows (axis=1) to grid z, stepping from its edge."""
    if k == 0:
        return z
    edge = z[:, :, -1] if axis == 2 else z[:, -1]  # (batch, s, d), s = h or w
    n, s, d = edge.shape
    powers = matrix_powers(m, k)  # (k, d, d): m^1 .. m^k
    # one matmul: new[b, s, t, :] = m^t edge[b, s, :]
    new = (edge.reshape(n * s, d) @ powers.permute(2, 0, 1).reshape(d, k * d)).view(n, s, k, d)
    if axis == 1:
        new = new.transpose(1, 2)  # (batch, k, s, d): k new rows
    return torch.cat([z, new], dim=axis)


def qb_heat_extrapolate(visible: torch.Tensor, a: torch.Tensor, b: torch.Tensor, full_hw,
                        *, dx: float = 1.0, dy: float = 1.0, order: str = "xy") -> torch.Tensor:
    """Predict the full ``(batch, h, w, d)`` grid from its visible top-left block ``(batch, h0, w0, d)``.

    The visible block is kept; each further column is ``(I + dx A)`` times the one to its left,
    each further row ``(I + dy B)`` times the one above. ``order="xy"`` fills the right part of
    the visible rows first, then every row below; ``order="yx"`` goes down first.
    """
    _check_grid("visible", visible)
    d = visible.shape[-1]
    a = _check_square("a", a, d).to(visible)
    b = _check_square("b", b, d).to(visible)
    h, w = _check_full_hw(visible, full_hw)
    if order not in _ORDERS:
        raise ValueError(f"order must be one of {_ORDERS}, got {order!r}")
    mx, my = euler_matrix(a, dx), euler_matrix(b, dy)
    kx, ky = w - visible.shape[2], h - visible.shape[1]
    if order == "xy":
        return _extend(_extend(visible, mx, kx, axis=2), my, ky, axis=1)
    return _extend(_extend(visible, my, ky, axis=1), mx, kx, axis=2)


def mean_fill(visible: torch.Tensor, full_hw) -> torch.Tensor:
    """The MAE-style baseline: every masked cell gets the mean feature of the visible block."""
    _check_grid("visible", visible)
    h, w = _check_full_hw(visible, full_hw)
    out = visible.mean(dim=(1, 2), keepdim=True).expand(-1, h, w, -1).clone()
    out[:, : visible.shape[1], : visible.shape[2]] = visible
    return out


def _lstsq_step(src: torch.Tensor, dst: torch.Tensor, ridge: float) -> torch.Tensor:
    """argmin_M sum ||dst - M src||^2 + ridge ||M||_F^2 over rows of (n, d) src, dst (float64)."""
    gram = src.T @ src + ridge * torch.eye(src.shape[1], dtype=src.dtype, device=src.device)
    cross = dst.T @ src
    return torch.linalg.solve(gram, cross.T).T  # M = cross gram^{-1}; gram is symmetric


def fit_generators(fields: torch.Tensor, *, dx: float = 1.0, dy: float = 1.0, ridge: float = 0.0):
    r"""Least-squares ``A, B`` of the Euler predictor from neighbouring cells of ``(batch, h, w, d)`` grids.

    ``M_x = argmin sum ||z(i, j+1) - M z(i, j)||^2`` over all horizontal neighbours (and ``M_y``
    over vertical ones), then ``A = (M_x - I) / dx`` and ``B = (M_y - I) / dy``. Pass only what is
    visible (e.g. the top-left quarter): the fit is self-supervised. ``ridge`` adds
    ``ridge * ||M||_F^2``. Needs ``h, w >= 2`` and at least ``d`` neighbour pairs per direction.
    """
    _check_grid("fields", fields)
    n, h, w, d = fields.shape
    if h < 2 or w < 2:
        raise ValueError(f"fields need h, w >= 2 to have neighbours in both directions, got ({h}, {w})")
    dx, dy = check_real("dx", dx, low=0.0, low_open=True), check_real("dy", dy, low=0.0, low_open=True)
    ridge = check_real("ridge", ridge, low=0.0)
    if ridge == 0 and min(n * h * (w - 1), n * (h - 1) * w) < d:
        raise ValueError(f"need at least d={d} neighbour pairs per direction (or ridge > 0)")
    z = fields.detach().to(torch.float64)
    mx = _lstsq_step(z[:, :, :-1].reshape(-1, d), z[:, :, 1:].reshape(-1, d), ridge)
    my = _lstsq_step(z[:, :-1].reshape(-1, d), z[:, 1:].reshape(-1, d), ridge)
    eye = torch.eye(d, dtype=torch.float64, device=z.device)
    return ((mx - eye) / dx).to(fields.dtype), ((my - eye) / dy).to(fields.dtype)


class LinearFieldPredictor(nn.Module):
    """Learnable generators ``A, B`` (``(dim, dim)``, zero at start: the copy-the-edge predictor).

    ``forward(visible, full_hw)`` returns the extrapolated ``(batch, h, w, dim)`` grid
    (:func:`qb_heat_extrapolate`); in QB-Heat it feeds a small decoder, here it can also be fitted
    directly with :meth:`fit_` (least squares) or by gradient descent on the masked cells.
    """

    def __init__(self, dim: int, *, dx: float = 1.0, dy: float = 1.0, order: str = "xy"):
        super().__init__()
        self.dim = check_int("dim", dim, min_value=1)
        self.dx = check_real("dx", dx, low=0.0, low_open=True)
        self.dy = check_real("dy", dy, low=0.0, low_open=True)
        if order not in _ORDERS:
            raise ValueError(f"order must be one of {_ORDERS}, got {order!r}")
        self.order = order
        self.A = nn.Parameter(torch.zeros(self.dim, self.dim))
        self.B = nn.Parameter(torch.zeros(self.dim, self.dim))

    @torch.no_grad()
    def fit_(self, fields: torch.Tensor, *, ridge: float = 0.0) -> "LinearFieldPredictor":
        """Set ``A, B`` to the least-squares fit on ``fields`` (:func:`fit_generators`)."""
        a, b = fit_generators(fields, dx=self.dx, dy=self.dy, ridge=ridge)
        self.A.copy_(a)
        self.B.copy_(b)
        return self

    def forward(self, visible: torch.Tensor, full_hw) -> torch.Tensor:
        _check_grid("visible", visible)
        if visible.shape[-1] != self.dim:
            raise ValueError(f"visible must have {self.dim} features in its last dimension, got {visible.shape[-1]}")
        return qb_heat_extrapolate(visible, self.A, self.B, full_hw, dx=self.dx, dy=self.dy, order=self.order)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, dx={self.dx}, dy={self.dy}, order={self.order!r}"


# ---------------------------------------------------------------- the toy QB-Heat / MAE pipeline

CORNERS = ("tl", "tr", "bl", "br")  # where the visible quarter sits: top-left, top-right, ...


def _check_corner(corner: str) -> tuple[bool, bool]:
    """(flip rows, flip columns) that move ``corner`` to the top-left."""
    if corner not in CORNERS:
        raise ValueError(f"corner must be one of {CORNERS}, got {corner!r}")
    return corner[0] == "b", corner[1] == "r"


def _flip(z: torch.Tensor, rows: bool, cols: bool, row_dim: int, col_dim: int) -> torch.Tensor:
    dims = [d for d, f in ((row_dim, rows), (col_dim, cols)) if f]
    return z.flip(dims) if dims else z


def quarter_block(x: torch.Tensor, *, corner: str = "tl", channels_last: bool = False) -> torch.Tensor:
    """The visible quarter of ``(batch, c, h, w)`` images (or ``(batch, h, w, d)`` grids with
    ``channels_last=True``): rows and columns ``[0, h/2)`` or ``[h/2, h)`` as ``corner`` says."""
    check_tensor("x", x, ndim=4)
    rows, cols = _check_corner(corner)
    rd, cd = (1, 2) if channels_last else (2, 3)
    h, w = x.shape[rd], x.shape[cd]
    if h % 2 or w % 2 or h == 0 or w == 0:
        raise ValueError(f"height and width must be even and positive to cut a quarter, got ({h}, {w})")
    r0, c0 = (h // 2 if rows else 0), (w // 2 if cols else 0)
    return x.narrow(rd, r0, h // 2).narrow(cd, c0, w // 2)


def token_fill(visible: torch.Tensor, token: torch.Tensor, full_hw, *, corner: str = "tl") -> torch.Tensor:
    """MAE's decoder input: the visible ``(batch, h0, w0, d)`` block in its corner of the
    ``(batch, h, w, d)`` grid, one shared ``(d,)`` [MASK] vector in every other cell (gradients reach it)."""
    _check_grid("visible", visible)
    rows, cols = _check_corner(corner)
    check_tensor("token", token, ndim=1, floating=True)
    if token.shape[0] != visible.shape[-1]:
        raise ValueError(f"token must have {visible.shape[-1]} entries, got {token.shape[0]}")
    h, w = _check_full_hw(visible, full_hw)
    n, h0, w0, d = visible.shape
    out = token.to(visible).expand(n, h, w, d)
    pad = visible.new_zeros(n, h, w, d)
    keep = torch.zeros(h, w, 1, dtype=torch.bool, device=visible.device)
    r0, c0 = (h - h0 if rows else 0), (w - w0 if cols else 0)
    keep[r0:r0 + h0, c0:c0 + w0] = True
    pad[:, r0:r0 + h0, c0:c0 + w0] = visible
    return torch.where(keep, pad, out)


class QuarterPredictor(nn.Module):
    """QB-Heat's predictor for a visible quarter in any corner: generators ``A[0]`` (step right),
    ``A[1]`` (left), ``B[0]`` (down), ``B[1]`` (up), each ``(dim, dim)``, zero at start (copy the edge).

    ``forward(visible, full_hw, corner=...)`` flips the block to the top-left, extrapolates with the
    generators of the directions it has to go (:func:`qb_heat_extrapolate`) and flips back.
    """

    def __init__(self, dim: int, *, order: str = "xy"):
        super().__init__()
        self.dim = check_int("dim", dim, min_value=1)
        if order not in _ORDERS:
            raise ValueError(f"order must be one of {_ORDERS}, got {order!r}")
        self.order = order
        self.A = nn.Parameter(torch.zeros(2, self.dim, self.dim))
        self.B = nn.Parameter(torch.zeros(2, self.dim, self.dim))

    def forward(self, visible: torch.Tensor, full_hw, *, corner: str = "tl") -> torch.Tensor:
        _check_grid("visible", visible)
        if visible.shape[-1] != self.dim:
            raise ValueError(f"visible must have {self.dim} features in its last dimension, got {visible.shape[-1]}")
        rows, cols = _check_corner(corner)
        v = _flip(visible, rows, cols, 1, 2)
        out = qb_heat_extrapolate(v, self.A[int(cols)], self.B[int(rows)], full_hw, order=self.order)
        return _flip(out, rows, cols, 1, 2)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, order={self.order!r}"


class QuarterCNNEncoder(nn.Module):
    """A small fully convolutional encoder: ``depth`` 3x3 convolutions (zero padding, ReLU between),
    ``(batch, in_channels, h, w)`` images to ``(batch, h, w, dim)`` feature grids, one vector per pixel.

    Being convolutional, the same weights run on the visible quarter (pretraining) and on the whole
    image (the linear probe): the point of QB-Heat's contiguous visible block.
    """

    def __init__(self, *, in_channels: int = 1, dim: int = 16, width: int = 32, depth: int = 3):
        super().__init__()
        in_channels = check_int("in_channels", in_channels, min_value=1)
        self.dim = check_int("dim", dim, min_value=1)
        width = check_int("width", width, min_value=1)
        depth = check_int("depth", depth, min_value=1)
        chans = [in_channels] + [width] * (depth - 1) + [self.dim]
        layers = []
        for i, (ci, co) in enumerate(zip(chans[:-1], chans[1:])):
            layers.append(nn.Conv2d(ci, co, 3, padding=1))
            if i < depth - 1:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)
        self.in_channels = in_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_tensor("images", images, ndim=4, floating=True)
        if images.shape[1] != self.in_channels:
            raise ValueError(f"images must have {self.in_channels} channels (batch, c, h, w), got {tuple(images.shape)}")
        return self.net(images).permute(0, 2, 3, 1)  # (batch, h, w, dim)


class GridDecoder(nn.Module):
    """The small decoder of both arms: a learned positional embedding ``(h, w, dim)`` added to the
    completed feature grid, then ``depth`` 3x3 convolutions to ``(batch, out_channels, h, w)`` pixels."""

    def __init__(self, *, dim: int, hw, out_channels: int = 1, width: int = 32, depth: int = 3):
        super().__init__()
        self.dim = check_int("dim", dim, min_value=1)
        if not (isinstance(hw, (tuple, list)) and len(hw) == 2):
            raise ValueError(f"hw must be a pair (h, w), got {hw!r}")
        self.hw = tuple(check_int(n, v, min_value=1) for n, v in zip(("h", "w"), hw))
        out_channels = check_int("out_channels", out_channels, min_value=1)
        width = check_int("width", width, min_value=1)
        depth = check_int("depth", depth, min_value=1)
        self.pos = nn.Parameter(torch.zeros(*self.hw, self.dim))
        chans = [self.dim] + [width] * (depth - 1) + [out_channels]
        layers = []
        for i, (ci, co) in enumerate(zip(chans[:-1], chans[1:])):
            layers.append(nn.Conv2d(ci, co, 3, padding=1))
            if i < depth - 1:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        _check_grid("grid", grid)
        if tuple(grid.shape[1:]) != (*self.hw, self.dim):
            raise ValueError(f"grid must be (batch, {self.hw[0]}, {self.hw[1]}, {self.dim}), got {tuple(grid.shape)}")
        return self.net((grid + self.pos).permute(0, 3, 1, 2))
