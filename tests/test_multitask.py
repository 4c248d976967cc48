"""Tests for kexue_lib.multitask (articles 8870 and 8907)."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy.optimize import nnls

from kexue_lib.multitask import (aux_coefficient, combine_normalized_grads, generalized_mean, gradnorm_loss, gradnorm_renormalize_,
                                 gradnorm_target_weights, l2_constrained_grad, mtl_loss,
                                 normalized_grad_sum, primary_aux_direction, primary_aux_hybrid, prior_loss_ce, prior_loss_mse,
                                 realtime_normalized, reference_normalized, uncertainty_weighted)


def _grad(f, theta):
    theta = theta.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(theta), theta)
    return g


def _losses(theta, c=1.0, shift=0.0):
    return torch.stack([(theta - 1).square().sum() + 0.5, c * (theta + 2).square().sum() + shift + 0.1])


def test_generalized_mean_loop_reference_and_limit():
    L = torch.tensor([0.3, 2.0, 5.0], dtype=torch.float64)
    for gamma in (-2.0, -0.5, 1.0, 3.0):
        ref = (sum(float(x) ** gamma for x in L) / 3) ** (1 / gamma)
        assert math.isclose(float(generalized_mean(L, gamma=gamma)), ref, rel_tol=1e-12)
    geo = math.exp(sum(math.log(float(x)) for x in L) / 3)
    assert math.isclose(float(generalized_mean(L, gamma=0.0)), geo, rel_tol=1e-12)
    assert math.isclose(float(generalized_mean(L, gamma=1e-7)), geo, rel_tol=1e-6)


def test_realtime_gradient_is_log_gradient():
    theta = torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    g1 = _grad(lambda t: realtime_normalized(_losses(t)), theta)
    g2 = _grad(lambda t: _losses(t).log().sum(), theta)
    torch.testing.assert_close(g1, g2)
    assert float(realtime_normalized(_losses(theta))) == 2.0


def test_gradnorm_scale_and_shift_invariant():
    theta = torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    base = _grad(lambda t: normalized_grad_sum(_losses(t), [t]), theta)
    for c, s in ((10.0, 0.0), (1.0, 7.0), (1e3, 5.0)):
        torch.testing.assert_close(_grad(lambda t: normalized_grad_sum(_losses(t, c, s), [t]), theta), base)
    plain = _grad(lambda t: _losses(t, 10.0).sum(), theta)
    assert not torch.allclose(plain / plain.norm(), base / base.norm(), atol=1e-3)


def test_batched_weightings_and_combine():
    L = torch.rand(3, 4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) + 0.1
    for gamma in (0.0, 1.0, -1.0):
        out = generalized_mean(L, gamma=gamma)
        assert out.shape == (3, 4)
        assert math.isclose(float(out[1, 2]), float(generalized_mean(L[1, 2], gamma=gamma)), rel_tol=1e-12)
    grads = torch.randn(5, 2, 7, dtype=torch.float64)
    ref = sum(grads[:, i] / grads[:, i].norm(dim=-1, keepdim=True) for i in range(2))
    torch.testing.assert_close(combine_normalized_grads(grads), ref)


def test_uncertainty_optimum_is_log():
    L = torch.tensor([0.5, 3.0], dtype=torch.float64)
    s = L.log().requires_grad_(True)
    val = uncertainty_weighted(L, s)
    (g,) = torch.autograd.grad(val, s)
    assert float(g.abs().max()) < 1e-12
    assert math.isclose(float(val.detach()), float((1 + L.log()).sum()), rel_tol=1e-12)


def test_priors_and_reference():
    assert math.isclose(prior_loss_ce([0.5, 0.5]), math.log(2))
    y = torch.tensor([[1.0, 2.0], [3.0, 6.0]], dtype=torch.float64)
    assert math.isclose(prior_loss_mse(y), 1.0 + 4.0)
    L = torch.tensor([2.0, 8.0])
    assert float(reference_normalized(L, [2.0, 4.0])) == 3.0
    assert float(mtl_loss(L, scheme="sum")) == 10.0


def _loop_cd(g0, G, iters=20000):
    g0, G = g0.tolist(), G.tolist()
    n, d = len(G), len(g0)
    lam = [0.0] * n
    for _ in range(iters):
        for t in range(n):
            u = [g0[k] + sum(lam[i] * G[i][k] for i in range(n)) for k in range(d)]
            dot = sum(G[t][k] * u[k] for k in range(d))
            lam[t] = max(0.0, lam[t] - dot / sum(x * x for x in G[t]))
    return np.array(lam)


def test_primary_aux_matches_nnls_and_loop():
    gen = torch.Generator().manual_seed(2)
    for _ in range(20):
        G = torch.randn(4, 9, generator=gen, dtype=torch.float64)
        g0 = torch.randn(9, generator=gen, dtype=torch.float64)
        ref, _ = nnls(G.numpy().T, -g0.numpy())
        u, lam = primary_aux_direction(g0, G, method="cd")
        np.testing.assert_allclose(lam.numpy(), ref, atol=1e-7)
        u2, lam2 = primary_aux_direction(g0, G, method="nnls")
        np.testing.assert_allclose(lam2.numpy(), ref, atol=1e-12)
    G = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    g0 = torch.randn(5, generator=gen, dtype=torch.float64)
    np.testing.assert_allclose(primary_aux_direction(g0, G)[1].numpy(), _loop_cd(g0, G, 3000), atol=1e-7)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 4), st.integers(5, 12))
def test_primary_aux_kkt(seed, n, d):
    gen = torch.Generator().manual_seed(seed)
    G = torch.randn(n, d, generator=gen, dtype=torch.float64)
    g0 = torch.randn(d, generator=gen, dtype=torch.float64)
    u, lam = primary_aux_direction(g0, G)
    dots = G @ u
    assert float(dots.min()) >= -1e-7
    assert float((lam * dots).abs().max()) <= 1e-7
    assert float(g0 @ u) >= float(u @ u) - 1e-7  # primary does not increase to first order


def test_single_aux_closed_form_and_l2():
    gen = torch.Generator().manual_seed(3)
    g0, g1 = torch.randn(2, 6, generator=gen, dtype=torch.float64)
    lam = aux_coefficient(g0, g1)
    u, lam_cd = primary_aux_direction(g0, g1[None])
    assert math.isclose(float(lam), float(lam_cd[0]), rel_tol=1e-9, abs_tol=1e-12)
    theta = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    g = -theta + 0.1 * torch.randn(2, 3, generator=gen, dtype=torch.float64)
    assert float((l2_constrained_grad(g, theta) * theta).sum()) >= -1e-12


def test_bad_input():
    with pytest.raises(ValueError):
        generalized_mean(torch.tensor([1.0, -1.0]), gamma=1.0)
    with pytest.raises(ValueError):
        realtime_normalized(torch.tensor(1.0))
    with pytest.raises(ValueError):
        primary_aux_direction(torch.zeros(3), torch.zeros(2, 3))
    with pytest.raises(ValueError):
        primary_aux_direction(torch.zeros(3), torch.ones(2, 4))
    with pytest.raises(ValueError):
        primary_aux_direction(torch.zeros(3), torch.ones(2, 3), method="sgd")
    with pytest.raises(ValueError):
        mtl_loss(torch.ones(2), scheme="nope")
    with pytest.raises(ValueError):
        l2_constrained_grad(torch.ones(3), torch.zeros(3))
    with pytest.raises(ValueError):
        prior_loss_ce([0.2, 0.2])


def test_dtype_follows_input():
    g0, G = torch.randn(5, dtype=torch.float32), torch.randn(2, 5, dtype=torch.float32)
    for m in ("cd", "article", "nnls"):
        u, lam = primary_aux_direction(g0, G, method=m)
        assert u.dtype == lam.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda():
    g0, G = torch.randn(7, device="cuda"), torch.randn(3, 7, device="cuda")
    u, lam = primary_aux_direction(g0, G, method="nnls")
    assert u.device.type == lam.device.type == "cuda"
    L = torch.rand(3, device="cuda") + 0.1
    assert generalized_mean(L, gamma=0.0).device.type == "cuda"


def test_hybrid_reduces_to_nnls_and_min_norm():
    gen = torch.Generator().manual_seed(11)
    for _ in range(5):
        g0 = torch.randn(1, 8, generator=gen, dtype=torch.float64)
        H = torch.randn(3, 8, generator=gen, dtype=torch.float64)
        u, alpha, lam = primary_aux_hybrid(g0, H)
        ref, _ = nnls(H.numpy().T, -g0[0].numpy())
        np.testing.assert_allclose(lam.numpy(), ref, atol=1e-6)
        assert float(alpha) == 1.0
        P = torch.randn(2, 8, generator=gen, dtype=torch.float64)
        a, b = P[0].tolist(), P[1].tolist()  # two primaries, no auxiliary: min-norm point on the segment
        num = sum(y * (y - x) for x, y in zip(a, b))
        den = sum((x - y) ** 2 for x, y in zip(a, b))
        t = min(1.0, max(0.0, num / den))
        u2, alpha2, lam2 = primary_aux_hybrid(P, P[:0])
        np.testing.assert_allclose(alpha2.numpy(), [t, 1 - t], atol=1e-6)
        assert lam2.numel() == 0


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 3), st.integers(0, 3))
def test_hybrid_kkt(seed, n, m):
    gen = torch.Generator().manual_seed(seed)
    P = torch.randn(n, 10, generator=gen, dtype=torch.float64)
    H = torch.randn(m, 10, generator=gen, dtype=torch.float64)
    u, alpha, lam = primary_aux_hybrid(P, H)
    uu = float(u @ u)
    assert float((P @ u).min()) >= uu - 1e-6 * (1 + uu)
    if m:
        assert float((H @ u).min()) >= -1e-6
    with pytest.raises(ValueError):
        primary_aux_hybrid(P, torch.ones(m, 9, dtype=torch.float64))


def _gradnorm_loop(w, n, L, L0, alpha):  # plain-float reference of L_grad for one (n,) instance
    ratio = [a / b for a, b in zip(L, L0)]
    r = [x / (sum(ratio) / len(ratio)) for x in ratio]
    G = [wi * ni for wi, ni in zip(w, n)]
    Gbar = sum(G) / len(G)
    return sum(abs(g - Gbar * ri**alpha) for g, ri in zip(G, r))


def test_gradnorm_loss_matches_loop_and_holds_targets_constant():
    gen = torch.Generator().manual_seed(21)
    w = torch.rand(4, 3, generator=gen, dtype=torch.float64) + 0.2
    n, L, L0 = (torch.rand(3, 4, 3, generator=gen, dtype=torch.float64) + 0.1).unbind(0)
    for alpha in (0.0, 1.0, 1.5):
        out = gradnorm_loss(w, n, L, L0, alpha=alpha)
        assert out.shape == (4,)
        for i in range(4):
            ref = _gradnorm_loop(w[i].tolist(), n[i].tolist(), L[i].tolist(), L0[i].tolist(), alpha)
            assert math.isclose(float(out[i]), ref, rel_tol=1e-12)
    wg = w.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(gradnorm_loss(wg, n, L, L0, alpha=1.5).sum(), wg)
    Gbar = (w * n).mean(-1, keepdim=True)
    ratio = L / L0
    target = Gbar * (ratio / ratio.mean(-1, keepdim=True)) ** 1.5
    torch.testing.assert_close(g, torch.sign(w * n - target) * n)  # only through w_i n_i: the targets are constants


def test_gradnorm_target_is_the_fixed_point():
    gen = torch.Generator().manual_seed(22)
    n, L, L0 = (torch.rand(3, 5, 2, generator=gen, dtype=torch.float64) + 0.1).unbind(0)
    w1 = gradnorm_target_weights(n, L, L0, alpha=1.0)
    torch.testing.assert_close(w1.sum(-1), torch.full((5,), 2.0, dtype=torch.float64))
    assert float(gradnorm_loss(w1, n, L, L0, alpha=1.0).abs().max()) < 1e-12  # a joint zero at alpha = 1
    w0 = gradnorm_target_weights(n, L, L0, alpha=0.0)
    torch.testing.assert_close(w0, 2 * (1 / n) / (1 / n).sum(-1, keepdim=True))  # gradient normalisation
    assert float(gradnorm_loss(gradnorm_target_weights(n, L, L0, alpha=1.5), n, L, L0, alpha=1.5).max()) > 1e-6
    c = torch.tensor([1.0, 1e3], dtype=torch.float64)  # rescale task 2: the shares of w_i n_i are unchanged

    def shares(w, norms):
        return w * norms / (w * norms).sum(-1, keepdim=True)

    torch.testing.assert_close(shares(gradnorm_target_weights(n * c, L * c, L0 * c, alpha=1.5), n * c),
                               shares(gradnorm_target_weights(n, L, L0, alpha=1.5), n))
    assert not torch.allclose(shares(gradnorm_target_weights(n, L + 1, L0 + 1, alpha=1.5), n),
                              shares(gradnorm_target_weights(n, L, L0, alpha=1.5), n), atol=1e-3)  # a shift moves them


def test_gradnorm_updates_reach_the_target():
    gen = torch.Generator().manual_seed(23)
    n, L, L0 = (torch.rand(3, 6, 3, generator=gen, dtype=torch.float64) + 0.1).unbind(0)
    w = torch.ones(6, 3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.02)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 - k / 1500)
    for _ in range(1500):
        opt.zero_grad()
        gradnorm_loss(w, n, L, L0, alpha=1.0).sum().backward()
        opt.step(); sched.step()
        gradnorm_renormalize_(w.data)
    torch.testing.assert_close(w.detach(), gradnorm_target_weights(n, L, L0, alpha=1.0), atol=2e-3, rtol=0)


def test_gradnorm_renormalize_and_bad_input():
    w = torch.tensor([[1.0, 3.0], [0.5, 0.5]], dtype=torch.float64)
    out = gradnorm_renormalize_(w)
    assert out is w
    torch.testing.assert_close(w, torch.tensor([[0.5, 1.5], [1.0, 1.0]], dtype=torch.float64))
    ones = torch.ones(2, dtype=torch.float64)
    with pytest.raises(ValueError):
        gradnorm_renormalize_(torch.tensor([1.0, -2.0]))
    with pytest.raises(ValueError):
        gradnorm_loss(ones, ones, ones, torch.ones(3, dtype=torch.float64), alpha=1.0)
    with pytest.raises(ValueError):
        gradnorm_loss(torch.ones(3, dtype=torch.float64), ones, ones, ones, alpha=1.0)
    with pytest.raises(ValueError):
        gradnorm_target_weights(ones, ones, ones, alpha=-1.0)
    with pytest.raises(ValueError):
        gradnorm_target_weights(torch.zeros(2, dtype=torch.float64), ones, ones, alpha=1.0)
    with pytest.raises(ValueError):
        gradnorm_target_weights(ones[:1], ones[:1], ones[:1], alpha=1.0)


def test_gradnorm_dtype_follows_input():
    n, L, L0 = torch.rand(3, 4, 2).add(0.1).unbind(0)
    w = gradnorm_target_weights(n, L, L0, alpha=1.5)
    assert w.dtype == torch.float32 and gradnorm_loss(w, n, L, L0[0], alpha=1.5).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gradnorm_cuda():
    n, L, L0 = torch.rand(3, 4, 2, device="cuda").add(0.1).unbind(0)
    w = gradnorm_target_weights(n, L, L0, alpha=1.5)
    assert w.device.type == gradnorm_loss(w, n, L, L0, alpha=1.5).device.type == "cuda"
