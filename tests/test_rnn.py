"""Tests of kexue_lib.rnn: the parallel linear scan and DEER (article 9783, arXiv:2309.12252)."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from kexue_lib.rnn import (deer_rnn, gru_cell, iterated_linear_rnn, linear_recurrence, rnn_sequential,
                           tanh_rnn_cell, tanh_rnn_jacobian)

F64 = torch.float64


def loop_ref(a, b, x0=None):
    """float64 Python loop, element by element (diagonal a)."""
    T, D = b.shape
    x = [0.0] * D if x0 is None else [float(v) for v in x0]
    out = []
    for t in range(T):
        x = [float(a[t, d]) * x[d] + float(b[t, d]) for d in range(D)]
        out.append(x)
    return torch.tensor(out, dtype=F64)


@settings(max_examples=30, deadline=None)
@given(T=st.integers(1, 70), D=st.integers(1, 4), seed=st.integers(0, 10_000), with_x0=st.booleans())
def test_scan_equals_float64_loop(T, D, seed, with_x0):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(T, D, generator=g, dtype=F64) * 2 - 1
    b = torch.randn(T, D, generator=g, dtype=F64)
    x0 = torch.randn(D, generator=g, dtype=F64) if with_x0 else None
    torch.testing.assert_close(linear_recurrence(a, b, x0), loop_ref(a, b, x0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("T", [1, 2, 3, 5, 31, 100, 257])
def test_dense_scan_equals_loop(T):
    g = torch.Generator().manual_seed(T)
    a = torch.randn(2, T, 3, 3, generator=g, dtype=F64) * 0.5
    b = torch.randn(2, T, 3, generator=g, dtype=F64)
    x0 = torch.randn(2, 3, generator=g, dtype=F64)
    torch.testing.assert_close(linear_recurrence(a, b, x0), linear_recurrence(a, b, x0, method="loop"))


def test_stable_near_unit_modulus():
    """|a| = 1 - 1e-6 over T = 4096 (products stay near 1) and tiny |a| (products underflow): both fine,
    where the cumprod/cumsum closed form x_t = P_t * cumsum(b / P) overflows."""
    T = 4096
    g = torch.Generator().manual_seed(0)
    b = torch.randn(T, 2, generator=g, dtype=F64)
    for val in (1 - 1e-6, -(1 - 1e-6), 1e-3):
        a = torch.full((T, 2), val, dtype=F64)
        ref = linear_recurrence(a, b, method="loop")
        torch.testing.assert_close(linear_recurrence(a, b), ref, rtol=1e-10, atol=1e-10)
    P = torch.cumprod(torch.full((T, 2), 1e-3, dtype=F64), 0)
    assert not torch.isfinite(P * torch.cumsum(b / P, 0)).all()


def test_float32_scan_close_to_float64():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(1000, 8, generator=g, dtype=F64) * 0.2 + 0.79
    b = torch.randn(1000, 8, generator=g, dtype=F64)
    out = linear_recurrence(a.float(), b.float())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), loop_ref(a, b), rtol=1e-4, atol=1e-4)


def test_bad_input():
    with pytest.raises(ValueError):
        linear_recurrence(torch.ones(5, 2), torch.ones(4, 2))
    with pytest.raises(ValueError):
        linear_recurrence(torch.ones(5, 2), torch.ones(5, 2), method="blelloch2")
    with pytest.raises(ValueError):
        deer_rnn(tanh_rnn_cell, torch.ones(5, 2), torch.zeros(2), (torch.eye(2),), method="jacobi")
    with pytest.raises(ValueError):
        deer_rnn(tanh_rnn_cell, torch.ones(5, 2), torch.zeros(2), (torch.eye(2),), max_iter=0)


def _tanh_problem(T=40, D=4, radius=0.9, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(D, D, generator=g, dtype=F64)
    A = radius * A / torch.linalg.eigvals(A).abs().max()
    u = torch.randn(T, D, generator=g, dtype=F64)
    return A, u, torch.zeros(D, dtype=F64)


@pytest.mark.parametrize("method", ["newton", "picard"])
def test_deer_matches_sequential(method):
    A, u, h0 = _tanh_problem()
    ref = rnn_sequential(tanh_rnn_cell, u, h0, (A,))
    out = deer_rnn(tanh_rnn_cell, u, h0, (A,), method=method, tol=1e-13)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    out_j = deer_rnn(tanh_rnn_cell, u, h0, (A,), jacobian=tanh_rnn_jacobian, tol=1e-13)
    torch.testing.assert_close(out_j, ref, rtol=1e-10, atol=1e-10)


def test_picard_prefix_exact():
    A, u, h0 = _tanh_problem(T=20)
    ref = rnn_sequential(tanh_rnn_cell, u, h0, (A,))
    _, info = deer_rnn(tanh_rnn_cell, u, h0, (A,), method="picard", picard_matrix=A, tol=0.0, max_iter=20,
                       return_info=True)
    for k, h in enumerate(info["history"], start=1):
        torch.testing.assert_close(h[:k], ref[:k], rtol=1e-9, atol=1e-9)


def test_gradcheck_tanh_and_gru():
    g = torch.Generator().manual_seed(3)
    A = (torch.randn(3, 3, generator=g, dtype=F64) * 0.5).requires_grad_()
    u = torch.randn(6, 3, generator=g, dtype=F64, requires_grad=True)
    h0 = torch.randn(3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u, h0, A: deer_rnn(tanh_rnn_cell, u, h0, (A,), tol=1e-14), (u, h0, A))
    H, I = 3, 2
    ps = [(torch.randn(*s, generator=g, dtype=F64) * 0.5).requires_grad_()
          for s in [(3 * H, I), (3 * H, H), (3 * H,), (3 * H,)]]
    x = torch.randn(2, 5, I, generator=g, dtype=F64, requires_grad=True)
    hh = torch.randn(2, H, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, hh, *ps: deer_rnn(gru_cell, x, hh, ps, tol=1e-14), (x, hh, *ps))


def test_ift_gradient_equals_sequential_backprop():
    A, u, h0 = _tanh_problem(T=30)
    A1, A2 = A.clone().requires_grad_(), A.clone().requires_grad_()
    w = torch.randn(30, 4, generator=torch.Generator().manual_seed(9), dtype=F64)
    (deer_rnn(tanh_rnn_cell, u, h0, (A1,), tol=1e-13) * w).sum().backward()
    (rnn_sequential(tanh_rnn_cell, u, h0, (A2,)) * w).sum().backward()
    torch.testing.assert_close(A1.grad, A2.grad, rtol=1e-9, atol=1e-9)


def test_gru_equals_torch_peer():
    H, I, T = 5, 3, 17
    torch.manual_seed(0)
    gru = torch.nn.GRU(I, H, batch_first=True).double()
    ps = (gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0)
    x = torch.randn(2, T, I, dtype=F64)
    h0 = torch.randn(2, H, dtype=F64)
    with torch.no_grad():
        ref = gru(x, h0[None])[0]
        torch.testing.assert_close(rnn_sequential(gru_cell, x, h0, ps), ref)
        torch.testing.assert_close(deer_rnn(gru_cell, x, h0, ps, tol=1e-13), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_follows_device():
    A, u, h0 = _tanh_problem()
    out = deer_rnn(tanh_rnn_cell, u.cuda(), h0.cuda(), (A.cuda(),), tol=1e-12)
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), rnn_sequential(tanh_rnn_cell, u, h0, (A,)), rtol=1e-9, atol=1e-9)


# --- iterated_linear_rnn: the article's diagonalised sweeps with free P, Q ----------------------------------------

def test_iterated_equals_diagonalised_tanh_rnn_sweeps():
    """P = V^-1, Q = V Lambda (A's complex eigenbasis): each sweep is deer_rnn's fixed-A sweep, in y = V^-1 x."""
    A, u, h0 = _tanh_problem(T=30, D=4, radius=0.8, seed=2)
    lam, V = torch.linalg.eig(A)
    _, hist = iterated_linear_rnn(u, lam, torch.linalg.inv(V), V * lam, sweeps=6, return_history=True)
    _, info = deer_rnn(tanh_rnn_cell, u, h0, (A,), method="picard", picard_matrix=A, tol=0.0, max_iter=6,
                       return_info=True)
    for y, x in zip(hist, info["history"]):
        torch.testing.assert_close((y @ V.T).real, x, rtol=1e-10, atol=1e-10)
        assert (y @ V.T).imag.abs().max() < 1e-10


@pytest.mark.parametrize("T", [1, 7, 33])
def test_iterated_prefix_exact_and_fixed_point(T):
    g = torch.Generator().manual_seed(T)
    D = 3
    u = torch.randn(2, T, D, generator=g, dtype=F64)
    lam = torch.rand(D, generator=g, dtype=F64) * 1.8 - 0.9
    P, Q = (torch.randn(D, D, generator=g, dtype=F64) for _ in range(2))
    fixed = iterated_linear_rnn(u, lam, P, Q, sweeps=None)
    h, loop = torch.zeros(2, D, dtype=F64), []
    for t in range(T):  # the RNN y_t = P tanh(Q y_{t-1} + u_t), written out
        h = torch.tanh(h @ Q.T + u[:, t]) @ P.T
        loop.append(h)
    torch.testing.assert_close(fixed, torch.stack(loop, 1))
    _, hist = iterated_linear_rnn(u, lam, P, Q, sweeps=T, return_history=True)
    for k, y in enumerate(hist, start=1):
        torch.testing.assert_close(y[:, :k], fixed[:, :k], rtol=1e-8, atol=1e-8)


def test_iterated_broadcasts_an_ensemble():
    g = torch.Generator().manual_seed(4)
    S, B, T, D = 3, 2, 9, 4
    u = torch.randn(S, B, T, D, generator=g, dtype=F64)
    lam = torch.rand(S, 1, D, generator=g, dtype=F64)
    P, Q = (torch.randn(S, 1, D, D, generator=g, dtype=F64) * 0.5 for _ in range(2))
    for sweeps in (2, None):
        out = iterated_linear_rnn(u, lam, P, Q, sweeps=sweeps)
        for s in range(S):
            torch.testing.assert_close(out[s], iterated_linear_rnn(u[s], lam[s, 0], P[s, 0], Q[s, 0], sweeps=sweeps))


def test_iterated_bad_input():
    u, lam, M = torch.ones(5, 2), torch.ones(2), torch.eye(2)
    with pytest.raises(ValueError):
        iterated_linear_rnn(u, torch.ones(3), M, M, sweeps=1)
    with pytest.raises(ValueError):
        iterated_linear_rnn(u, lam, torch.eye(3), M, sweeps=1)
    with pytest.raises(ValueError):
        iterated_linear_rnn(u, lam, M, M, sweeps=0)
    with pytest.raises(ValueError):
        iterated_linear_rnn(u.to(torch.complex64), lam, M, M, sweeps=1)
    with pytest.raises(ValueError):
        iterated_linear_rnn(torch.ones(5), lam, M, M, sweeps=1)


def test_gru_cell_with_ensemble_weights():
    H, I, S = 4, 3, 2
    g = torch.Generator().manual_seed(5)
    ps = [torch.randn(S, *s, generator=g, dtype=F64) for s in [(3 * H, I), (3 * H, H), (3 * H,), (3 * H,)]]
    x, h = torch.randn(S, 6, I, generator=g, dtype=F64), torch.randn(S, 6, H, generator=g, dtype=F64)
    out = gru_cell(h, x, ps[0], ps[1], ps[2][:, None], ps[3][:, None])
    for s in range(S):
        torch.testing.assert_close(out[s], gru_cell(h[s], x[s], *(p[s] for p in ps)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_iterated_cuda_follows_device():
    g = torch.Generator().manual_seed(6)
    u, lam, P, Q = (torch.randn(*s, generator=g, dtype=F64) * 0.5 for s in [(20, 3), (3,), (3, 3), (3, 3)])
    out = iterated_linear_rnn(u.cuda(), lam.cuda(), P.cuda(), Q.cuda(), sweeps=4)
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), iterated_linear_rnn(u, lam, P, Q, sweeps=4))
