"""Parallel evaluation of linear and non-linear RNNs over the sequence length.

Article: Su Jianlin, "脑洞大开：非线性RNN居然也可以并行计算？" (https://kexue.fm/archives/9783, 2023-09-26).
Paper: Y. H. Lim, Q. Zhu, J. Selfridge, M. F. Kasim, "Parallelizing non-linear sequential models over the
sequence length" (DEER), arXiv:2309.12252.

Key equations
-------------
* Linear recurrence ``x_t = a_t * x_{t-1} + b_t`` (``a_t`` diagonal, or a dense ``D x D`` matrix), solved by
  a work-efficient odd/even scan with the associative combine ``(a2, b2) o (a1, b1) = (a2 a1, a2 b1 + b2)``:
  pair neighbours, solve the half-length problem, fill in the even positions. O(T) work, O(log T) depth.
* A non-linear RNN ``h_t = f(h_{t-1}, u_t)`` solved over the whole sequence by iterating linear recurrences
  ``h^(n)_t - M_t h^(n)_{t-1} = f(h^(n-1)_{t-1}, u_t) - M_t h^(n-1)_{t-1}``:
  ``M_t = M`` fixed is the article's perturbation/Picard sweep (``M = 0`` is plain Jacobi), and
  ``M_t = df/dh (h^(n-1)_{t-1}, u_t)`` is Newton's method (DEER), which converges quadratically.
* Diagonalised, ``A = V Lambda V^-1`` and ``y = V^-1 x``, a fixed-matrix sweep is element-wise; the article then frees
  the matrices: ``y^(n)_t - lam y^(n)_{t-1} = P tanh(Q y^(n-1)_{t-1} + u_t) - lam y^(n-1)_{t-1}`` with ``PQ = Lambda``
  at initialisation (:func:`iterated_linear_rnn`; a fixed number of its sweeps is a model of its own, see
  :mod:`kexue_lib.rnn_models`).
* Gradients at the converged solution by the implicit function theorem: the adjoint solves the reversed
  linear recurrence ``lam_t = g_t + J_{t+1}^T lam_{t+1}``, then one vector-Jacobian product of ``f`` gives
  the gradients of the inputs, the initial state and the parameters (no backprop through the iterations).

Dtype policy: everything runs in the inputs' dtype and device (complex allowed in ``linear_recurrence``, for
diagonalised recurrences); use float64 for exactness checks.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from ._validate import check_int, check_real, check_tensor

__all__ = ["linear_recurrence", "tanh_rnn_cell", "tanh_rnn_jacobian", "gru_cell", "rnn_sequential", "deer_rnn",
           "iterated_linear_rnn"]

METHODS = ("sequential", "picard", "newton")


def _scan(a: Tensor, b: Tensor, dense: bool) -> Tensor:
    """States of x_t = a_t x_{t-1} + b_t with x_0 = 0; a (..., T, D) or (..., T, D, D), b (..., T, D)."""
    T = b.shape[-2]
    if T == 1:
        return b
    if T % 2:  # pad with the identity element (a = 1, b = 0) to an even length, drop it afterwards
        pad_b = torch.zeros_like(b[..., :1, :])  # (..., 1, D)
        if dense:
            eye = torch.eye(b.shape[-1], dtype=a.dtype, device=a.device).expand_as(a[..., :1, :, :])
            a = torch.cat([a, eye], dim=-3)  # (..., T+1, D, D)
        else:
            a = torch.cat([a, torch.ones_like(a[..., :1, :])], dim=-2)  # (..., T+1, D)
        b = torch.cat([b, pad_b], dim=-2)  # (..., T+1, D)
    if dense:
        a_ev, a_od = a[..., 0::2, :, :], a[..., 1::2, :, :]  # (..., T/2, D, D)
        a_pair = a_od @ a_ev  # (..., T/2, D, D)
        b_pair = (a_od @ b[..., 0::2, :, None]).squeeze(-1) + b[..., 1::2, :]  # (..., T/2, D)
    else:
        a_ev, a_od = a[..., 0::2, :], a[..., 1::2, :]  # (..., T/2, D)
        a_pair = a_od * a_ev
        b_pair = a_od * b[..., 0::2, :] + b[..., 1::2, :]  # (..., T/2, D)
    x_od = _scan(a_pair, b_pair, dense)  # states at positions 1, 3, 5, ... (0-based)
    prev = x_od[..., :-1, :]  # (..., T/2-1, D): the state before each even position >= 2
    a_rest = a_ev[..., 1:, :, :] if dense else a_ev[..., 1:, :]
    if dense:
        x_ev_rest = (a_rest @ prev[..., None]).squeeze(-1) + b[..., 2::2, :]
    else:
        x_ev_rest = a_rest * prev + b[..., 2::2, :]
    x_ev = torch.cat([b[..., :1, :], x_ev_rest], dim=-2)  # (..., T/2, D)
    x = torch.stack([x_ev, x_od], dim=-2).flatten(-3, -2)  # (..., T, D) interleaved
    return x[..., :T, :] if x.shape[-2] > T else x


def linear_recurrence(a: Tensor, b: Tensor, x0: Tensor | None = None, *, dense: bool | None = None,
                      method: str = "scan") -> Tensor:
    """All states of ``x_t = a_t * x_{t-1} + b_t`` for t = 1..T (``x_0 = 0`` unless given).

    ``b`` has shape ``(..., T, D)``; ``a`` the same shape (diagonal transition) or ``(..., T, D, D)`` (dense
    matrices, ``x_t = a_t @ x_{t-1} + b_t``), broadcastable in the leading dims; ``dense=None`` reads the
    kind from ``a.ndim == b.ndim + 1``, pass ``dense=True`` when a dense ``a`` has fewer leading dims. ``method="scan"`` is the
    parallel odd/even scan, ``"loop"`` the plain sequential reference. Returns ``(..., T, D)``.

    >>> a = torch.full((5, 1), 0.5); b = torch.ones(5, 1)
    >>> linear_recurrence(a, b).flatten().tolist()
    [1.0, 1.5, 1.75, 1.875, 1.9375]
    """
    for name, t in (("a", a), ("b", b)):
        check_tensor(name, t)
        if not (t.is_floating_point() or t.is_complex()):
            raise ValueError(f"{name} must be a floating-point or complex tensor, got {t.dtype}")
    if b.ndim < 2:
        raise ValueError(f"b must have shape (..., T, D), got {tuple(b.shape)}")
    if method not in ("scan", "loop"):
        raise ValueError(f"method must be 'scan' or 'loop', got {method!r}")
    T, D = b.shape[-2:]
    dense = a.ndim == b.ndim + 1 if dense is None else bool(dense)
    if (dense and a.shape[-3:] != (T, D, D)) or (not dense and a.shape[-2:] != (T, D)):
        raise ValueError(f"a must end in (T, D) = {(T, D)} or (T, D, D), got {tuple(a.shape)}")
    lead = torch.broadcast_shapes(a.shape[:-3] if dense else a.shape[:-2], b.shape[:-2])
    a = a.expand(*lead, *a.shape[-3 if dense else -2:])
    b = b.expand(*lead, T, D)
    if x0 is not None:
        check_tensor("x0", x0)
        x0 = x0.expand(*lead, D)  # fold the initial state into the first input: b_1 <- b_1 + a_1 x_0
        first = (a[..., 0, :, :] @ x0[..., None]).squeeze(-1) if dense else a[..., 0, :] * x0
        b = torch.cat([(b[..., 0, :] + first)[..., None, :], b[..., 1:, :]], dim=-2)
    if method == "scan":
        return _scan(a, b, dense)
    x = torch.zeros_like(b[..., 0, :])  # (..., D)
    out = []
    for t in range(T):
        x = ((a[..., t, :, :] @ x[..., None]).squeeze(-1) if dense else a[..., t, :] * x) + b[..., t, :]
        out.append(x)
    return torch.stack(out, dim=-2)  # (..., T, D)


def tanh_rnn_cell(h: Tensor, u: Tensor, A: Tensor) -> Tensor:
    """The article's RNN ``x_t = tanh(A x_{t-1} + u_t)``; h (..., D), u (..., D), A (D, D)."""
    return torch.tanh(h @ A.T + u)


def tanh_rnn_jacobian(h: Tensor, u: Tensor, A: Tensor) -> Tensor:
    """d tanh(A h + u) / dh = diag(sech^2(A h + u)) A, the article's A_t^(n); (..., D, D)."""
    y = torch.tanh(h @ A.T + u)  # (..., D)
    return (1 - y * y)[..., :, None] * A  # (..., D, D)


def gru_cell(h: Tensor, x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> Tensor:
    """One GRU step in ``torch.nn.GRUCell``'s layout (gates r, z, n stacked in ``w_ih`` (3H, I), ``w_hh`` (3H, H)).

    The weights may carry leading dims (an ensemble of GRUs: ``w_ih`` (S, 3H, I) with ``x`` (S, B, I) and the
    biases (S, 1, 3H)); they broadcast like ``torch.matmul``.
    """
    gi = x @ w_ih.mT + b_ih  # (..., 3H)
    gh = h @ w_hh.mT + b_hh  # (..., 3H)
    i_r, i_z, i_n = gi.chunk(3, dim=-1)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1 - z) * n + z * h  # (..., H)


def rnn_sequential(cell: Callable, u: Tensor, h0: Tensor, params: Sequence[Tensor]) -> Tensor:
    """The plain loop ``h_t = cell(h_{t-1}, u_t, *params)``; u (..., T, I), h0 (..., H) -> (..., T, H)."""
    h, out = h0, []
    for t in range(u.shape[-2]):
        h = cell(h, u[..., t, :], *params)
        out.append(h)
    return torch.stack(out, dim=-2)


def _jacobians(cell, h_prev: Tensor, u: Tensor, params, jac=None) -> Tensor:
    """d cell / d h at every (h_prev_t, u_t): (..., T, H, H); torch.func unless ``jac`` is given."""
    if jac is not None:
        return jac(h_prev, u, *params)
    lead = h_prev.shape[:-1]
    jac = torch.func.vmap(torch.func.jacrev(lambda h, x: cell(h, x, *params)))
    J = jac(h_prev.reshape(-1, h_prev.shape[-1]), u.reshape(-1, u.shape[-1]))  # (N, H, H)
    return J.reshape(*lead, h_prev.shape[-1], h_prev.shape[-1])


def _shift(h: Tensor, h0: Tensor) -> Tensor:
    """(h0, h_1, ..., h_{T-1}): the previous state of every position; (..., T, H)."""
    return torch.cat([h0.expand(*h.shape[:-2], h.shape[-1])[..., None, :], h[..., :-1, :]], dim=-2)


def _solve(cell, u, h0, params, method, picard_matrix, tol, max_iter, history, jac):
    lead = torch.broadcast_shapes(u.shape[:-2], h0.shape[:-1])
    h = torch.zeros(*lead, u.shape[-2], h0.shape[-1], dtype=u.dtype, device=u.device)  # h^(0) = 0
    for n in range(max_iter):
        prev = _shift(h, h0)  # (..., T, H)
        f = cell(prev, u, *params)  # (..., T, H): f(h^(n-1)_{t-1}, u_t)
        if method == "newton":
            M = _jacobians(cell, prev, u.expand(*lead, *u.shape[-2:]), params, jac)  # (..., T, H, H)
        elif picard_matrix is not None:
            M = picard_matrix.expand(*f.shape[:-1], *picard_matrix.shape[-2:])  # (..., T, H, H)
        else:
            M = None
        if M is None:  # plain Jacobi: h_t <- f(h_{t-1}); no recurrence to solve
            new = f
        else:
            rhs = f - (M @ prev[..., None]).squeeze(-1)  # (..., T, H)
            new = linear_recurrence(M, rhs, h0.expand(*lead, h0.shape[-1]))
        delta = (new - h).abs().max().item()
        h = new
        if history is not None:
            history.append(h.clone())
        if delta <= tol:
            return h, n + 1
    return h, max_iter


class _DEER(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cell, jac, method, picard_matrix, tol, max_iter, history, u, h0, *params):
        with torch.no_grad():
            h, iters = _solve(cell, u, h0, params, method, picard_matrix, tol, max_iter, history, jac)
        ctx.cell, ctx.jac, ctx.iters = cell, jac, iters
        ctx.save_for_backward(u, h0, h, *params)
        return h

    @staticmethod
    def backward(ctx, g):
        u, h0, h, *params = ctx.saved_tensors
        cell = ctx.cell
        prev = _shift(h, h0).detach()  # (..., T, H)
        J = _jacobians(cell, prev, u.expand(*prev.shape[:-1], u.shape[-1]), params, ctx.jac)  # (..., T, H, H)
        # adjoint: lam_t = g_t + J_{t+1}^T lam_{t+1}, a linear recurrence run backwards in time
        Jt_next = torch.cat([J[..., 1:, :, :], torch.zeros_like(J[..., :1, :, :])], dim=-3).transpose(-1, -2)
        lam = linear_recurrence(Jt_next.flip(-3), g.flip(-2)).flip(-2)  # (..., T, H)
        with torch.enable_grad():
            prev_ = prev.clone().requires_grad_(True)
            u_ = u.detach().requires_grad_(True)
            ps = [p.detach().requires_grad_(True) for p in params]
            out = cell(prev_, u_, *ps)  # (..., T, H)
            grads = torch.autograd.grad(out, [prev_, u_, *ps], lam, allow_unused=True)
        g_prev, g_u, g_ps = grads[0], grads[1], grads[2:]
        g_h0 = g_prev[..., 0, :]
        g_h0 = g_h0.sum_to_size(h0.shape) if g_h0.shape != h0.shape else g_h0
        g_u = g_u.sum_to_size(u.shape) if g_u.shape != u.shape else g_u
        return (None,) * 7 + (g_u, g_h0, *g_ps)


def deer_rnn(cell: Callable, u: Tensor, h0: Tensor, params: Sequence[Tensor], *, method: str = "newton",
             picard_matrix: Tensor | None = None, jacobian: Callable | None = None, tol: float = 1e-10, max_iter: int | None = None,
             return_info: bool = False):
    """All states of ``h_t = cell(h_{t-1}, u_t, *params)`` for u (..., T, I), h0 (..., H).

    ``method``: ``"sequential"`` (the loop, autograd through it), ``"picard"`` (sweeps of the linear RNN with
    the fixed matrix ``picard_matrix`` ((H, H), or (..., T, H, H) for a time-dependent M_t), or plain Jacobi ``h_t <- f(h_{t-1})`` when it is None) or ``"newton"``
    (DEER). Iterations start from h = 0 and stop when the largest change is ``<= tol`` or after ``max_iter``
    (default T, enough for exactness: sweep k is exact on the first k positions). ``jacobian(h, u, *params)``
    gives d cell/dh as (..., H, H) (default: ``torch.func.jacrev``, vmapped). Iterative methods return
    gradients at the solution by the implicit function theorem. With ``return_info`` also returns a dict with
    ``iterations`` and ``history`` (the iterate after each sweep).
    """
    check_tensor("u", u, floating=True)
    check_tensor("h0", h0, floating=True)
    if u.ndim < 2:
        raise ValueError(f"u must have shape (..., T, I), got {tuple(u.shape)}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    tol = check_real("tol", tol, low=0.0)
    max_iter = u.shape[-2] if max_iter is None else check_int("max_iter", max_iter, min_value=1)
    H = h0.shape[-1]
    if picard_matrix is not None and (picard_matrix.ndim < 2 or picard_matrix.shape[-2:] != (H, H)):
        raise ValueError(f"picard_matrix must be ({H}, {H}) or (..., T, {H}, {H}), got {tuple(picard_matrix.shape)}")
    if method == "sequential":
        h = rnn_sequential(cell, u, h0, params)
        return (h, {"iterations": u.shape[-2], "history": []}) if return_info else h
    history = [] if return_info else None
    h = _DEER.apply(cell, jacobian, method, picard_matrix, tol, max_iter, history, u, h0, *params)
    if return_info:
        return h, {"iterations": len(history), "history": history}
    return h


def iterated_linear_rnn(u: Tensor, lam: Tensor, P: Tensor, Q: Tensor, *, sweeps: int | None,
                        return_history: bool = False):
    """The article's diagonalised iteration with free matrices, ``sweeps`` sweeps from ``y^(0) = 0``:

    ``y^(n)_t - lam * y^(n)_{t-1} = P tanh(Q y^(n-1)_{t-1} + u_t) - lam * y^(n-1)_{t-1}``, ``y_0 = 0``,

    every sweep an element-wise linear recurrence (the scan). Its fixed point is the non-linear RNN
    ``y_t = P tanh(Q y_{t-1} + u_t)``; ``sweeps=None`` returns that fixed point, computed by the plain loop.
    With ``P = V^-1`` and ``Q = V Lambda`` (``A = V Lambda V^-1``) the sweeps are those of the tanh RNN with matrix
    ``A`` in the coordinates ``y = V^-1 x``; initialising free ``P, Q`` with ``PQ = Lambda`` makes ``lam`` the
    linear part of the RNN ``x_t = tanh(QP x_{t-1} + u_t)`` that the fixed point encodes (``y = P x``).

    Shapes: ``u`` (..., T, D); ``lam`` (..., D); ``P``, ``Q`` (..., D, D), their leading dims broadcasting against
    ``u``'s leading dims (not T). Real or complex (``u`` real, ``lam, P, Q`` complex: ``tanh`` takes the real part
    of its argument, as for a real RNN written in a complex eigenbasis). Autograd flows through the sweeps.
    Returns ``y`` (..., T, D), and with ``return_history`` also the list of iterates after each sweep.

    >>> u = torch.tensor([[0.5], [0.2], [-0.1]], dtype=torch.float64)
    >>> one = torch.ones(1, 1, dtype=torch.float64)
    >>> y = iterated_linear_rnn(u, torch.tensor([0.3], dtype=torch.float64), one, 0.3 * one, sweeps=3)
    >>> torch.allclose(y, rnn_sequential(tanh_rnn_cell, u, torch.zeros(1, dtype=torch.float64), (0.3 * one,)))
    True
    """
    for name, t in (("u", u), ("lam", lam), ("P", P), ("Q", Q)):
        check_tensor(name, t)
        if not (t.is_floating_point() or t.is_complex()):
            raise ValueError(f"{name} must be a floating-point or complex tensor, got {t.dtype}")
    if u.is_complex():
        raise ValueError("u must be real (the inputs of a real RNN)")
    if u.ndim < 2:
        raise ValueError(f"u must have shape (..., T, D), got {tuple(u.shape)}")
    D = u.shape[-1]
    if lam.shape[-1:] != (D,) or P.shape[-2:] != (D, D) or Q.shape[-2:] != (D, D):
        raise ValueError(f"lam must end in ({D},) and P, Q in ({D}, {D}); got {tuple(lam.shape)}, "
                         f"{tuple(P.shape)}, {tuple(Q.shape)}")
    complex_ = lam.is_complex() or P.is_complex() or Q.is_complex()

    def nonlin(pre):  # tanh of a real RNN's pre-activation, back in the dtype of P
        act = torch.tanh(pre.real if complex_ else pre)
        return act.to(P.dtype) if complex_ else act

    lead = torch.broadcast_shapes(u.shape[:-2], lam.shape[:-1], P.shape[:-2], Q.shape[:-2])
    dtype = torch.promote_types(torch.promote_types(u.dtype, lam.dtype), torch.promote_types(P.dtype, Q.dtype))
    if sweeps is None:  # the fixed point y_t = P tanh(Q y_{t-1} + u_t), by the loop
        h = torch.zeros(*lead, D, dtype=dtype, device=u.device)
        out = []
        for t in range(u.shape[-2]):
            h = torch.einsum("...ij,...j->...i", P, nonlin(torch.einsum("...ij,...j->...i", Q, h) + u[..., t, :]))
            out.append(h)
        y = torch.stack(out, dim=-2)  # (..., T, D)
        return (y, [y]) if return_history else y
    sweeps = check_int("sweeps", sweeps, min_value=1)
    y = torch.zeros(*lead, *u.shape[-2:], dtype=dtype, device=u.device)  # y^(0) = 0
    lam_t = lam.unsqueeze(-2)  # (..., 1, D)
    history = []
    for _ in range(sweeps):
        prev = torch.cat([torch.zeros_like(y[..., :1, :]), y[..., :-1, :]], dim=-2)  # y^(n-1)_{t-1}: (..., T, D)
        pre = torch.einsum("...ij,...tj->...ti", Q, prev) + u  # Q y^(n-1)_{t-1} + u_t: (..., T, D)
        rhs = torch.einsum("...ij,...tj->...ti", P, nonlin(pre)) - lam_t * prev  # (..., T, D)
        y = linear_recurrence(lam_t.expand_as(rhs), rhs)
        if return_history:
            history.append(y)
    return (y, history) if return_history else y
