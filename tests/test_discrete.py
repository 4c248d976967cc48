"""Tests of kexue_lib.discrete: argmax(mu + eps) distributions by quadrature and Monte Carlo."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from kexue_lib.discrete import NOISES, NoiseArgmaxNormalizer, argmax_probs, argmax_probs_mc, quadrature_nodes

SCIPY = {  # the same families, from scipy, for the plain-loop reference
    "gumbel": stats.gumbel_r, "normal": stats.norm, "logistic": stats.logistic,
    "laplace": stats.laplace, "exponential": stats.expon, "uniform": stats.uniform,
}


def reference_probs(mu, noise):
    """Float64 plain loop: p_i = int pdf(e) prod_{j != i} cdf(mu_i - mu_j + e) de, by scipy.integrate.quad."""
    dist = SCIPY[noise]
    lo, hi = dist.support()
    out = []
    for i in range(len(mu)):
        def f(e, i=i):
            val = dist.pdf(e)
            for j in range(len(mu)):
                if j != i:
                    val *= dist.cdf(mu[i] - mu[j] + e)
            return val
        kinks = [mu[j] - mu[i] for j in range(len(mu)) if j != i] + [mu[j] - mu[i] + 1 for j in range(len(mu)) if j != i]
        if noise in ("uniform", "exponential"):
            a, b = (max(lo, -40.0), min(hi, 40.0))
            pts = sorted({a, b, *[k for k in kinks if a < k < b]})
            out.append(sum(integrate.quad(f, pts[k], pts[k + 1], epsabs=1e-13, epsrel=1e-12)[0] for k in range(len(pts) - 1)))
        else:
            pts = sorted({-40.0, 0.0, 40.0, *[mu[j] - mu[i] for j in range(len(mu)) if j != i]})
            out.append(sum(integrate.quad(f, pts[k], pts[k + 1], epsabs=1e-12, epsrel=1e-10)[0] for k in range(len(pts) - 1)))
    return np.array(out)


MU = [0.0, 0.4, -0.3, 1.1]


@pytest.mark.parametrize("noise", ["gumbel", "normal", "logistic", "laplace"])
def test_quadrature_matches_plain_loop_reference(noise):
    p = argmax_probs(torch.tensor(MU, dtype=torch.float64), noise, K=1024)
    np.testing.assert_allclose(p.numpy(), reference_probs(MU, noise), atol=1e-7)


@pytest.mark.parametrize("noise", ["exponential", "uniform"])
def test_kinked_families_match_reference(noise):
    mu = [0.0, 0.2, -0.3, 0.5]  # spread < 1 so uniform noise leaves every class a chance
    p = argmax_probs(torch.tensor(mu, dtype=torch.float64), noise, K=512)
    np.testing.assert_allclose(p.numpy(), reference_probs(mu, noise), atol=2e-5)


def test_gumbel_is_softmax():
    mu = torch.randn(5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(argmax_probs(mu, "gumbel", K=256), mu.softmax(-1), atol=1e-8, rtol=0)


def test_normal_two_classes_closed_form():
    d = torch.linspace(-3, 3, 13, dtype=torch.float64)
    mu = torch.stack([torch.zeros_like(d), d], -1)
    p = argmax_probs(mu, "normal", K=1024)
    torch.testing.assert_close(p[:, 1], torch.special.ndtr(d / math.sqrt(2)), atol=1e-8, rtol=0)


def test_article_rule_converges_first_order_and_loses_mass():
    mu = torch.tensor([0.0, 0.5, 1.0, 2.0], dtype=torch.float64)
    errs = [(argmax_probs(mu, "gumbel", K=K, rule="article") - mu.softmax(-1)).abs().max().item() for K in (100, 400)]
    assert 3.0 < errs[0] / errs[1] < 5.0  # O(1/K)
    assert argmax_probs(mu, "gumbel", K=100, rule="article").sum() < 1 - 1e-3
    mid = [(argmax_probs(mu, "gumbel", K=K, rule="midpoint") - mu.softmax(-1)).abs().max().item() for K in (100, 400)]
    assert 12.0 < mid[0] / mid[1] < 20.0  # O(1/K^2)


def test_quadrature_nodes():
    for rule in ("gauss-legendre", "article", "midpoint"):
        t, w = quadrature_nodes(10, rule)
        assert t.shape == w.shape == (10,)
        assert np.all((t > 0) & (t < 1))
        assert abs(w.sum() - 1) < 1e-14
    t, w = quadrature_nodes(5, "gauss-legendre")
    assert abs(np.sum(w * t ** 9) - 0.1) < 1e-14  # exact for degree 2K - 1


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-3, 3), min_size=2, max_size=6), st.floats(-5, 5),
       st.sampled_from(["gumbel", "normal", "logistic", "laplace"]))
def test_properties(mu, c, noise):
    mu = torch.tensor(mu, dtype=torch.float64)
    p = argmax_probs(mu, noise, K=256)
    assert torch.all(p >= 0)
    assert abs(p.sum().item() - 1) < 1e-4
    torch.testing.assert_close(argmax_probs(mu + c, noise, K=256), p, atol=1e-12, rtol=1e-9)  # shift invariance
    order = torch.argsort(mu)
    assert torch.all(p[order].diff() >= -1e-12)  # order preserved (weakly: ties give ties)


def test_mc_agrees_with_quadrature_and_is_seeded():
    mu = torch.tensor([[0.0, 0.5, 1.0], [1.0, -1.0, 0.0]])
    g = torch.Generator().manual_seed(1)
    p, se = argmax_probs_mc(mu, "normal", samples=200_000, generator=g)
    assert p.shape == se.shape == mu.shape
    q = argmax_probs(mu.double(), "normal")
    assert torch.all((p.double() - q).abs() <= 5 * se.double() + 1e-12)
    p2, _ = argmax_probs_mc(mu, "normal", samples=200_000, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(p, p2)
    torch.testing.assert_close(p.sum(-1), torch.ones(2))


def test_batch_and_dtype_follow_input():
    mu = torch.randn(3, 2, 5)
    p = argmax_probs(mu, "logistic")
    assert p.shape == mu.shape and p.dtype == torch.float32
    for b in range(3):
        torch.testing.assert_close(p[b, 1], argmax_probs(mu[b, 1], "logistic"))


def test_normalizer_module_gradients_and_dim():
    layer = NoiseArgmaxNormalizer(noise="normal", K=32, dim=1)
    x = torch.randn(4, 6, 3, dtype=torch.float64, requires_grad=True)
    p = layer(x)
    torch.testing.assert_close(p, argmax_probs(x.detach().movedim(1, -1), "normal", K=32).movedim(-1, 1))
    torch.testing.assert_close(p.sum(1), torch.ones(4, 3, dtype=torch.float64), atol=2e-3, rtol=0)
    assert torch.autograd.gradcheck(lambda z: layer.log_probs(z), (x[:1, :4, :1].detach().requires_grad_(),))
    layer.log_probs(x)[:, 0].sum().backward()
    assert torch.isfinite(x.grad).all()
    assert "normal" in repr(layer)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda():
    mu = torch.randn(8, 5, device="cuda")
    torch.testing.assert_close(argmax_probs(mu, "normal").cpu(), argmax_probs(mu.cpu(), "normal"), atol=1e-5, rtol=0)
    p, _ = argmax_probs_mc(mu, "gumbel", samples=1000, generator=torch.Generator("cuda").manual_seed(0))
    assert p.device.type == "cuda"


@pytest.mark.parametrize("bad, match", [
    (lambda: argmax_probs([0.0, 1.0]), "torch.Tensor"),
    (lambda: argmax_probs(torch.tensor([0, 1])), "floating"),
    (lambda: argmax_probs(torch.tensor(1.0)), "shape"),
    (lambda: argmax_probs(torch.zeros(3, 0)), "shape"),
    (lambda: argmax_probs(torch.tensor([0.0, math.inf])), "finite"),
    (lambda: argmax_probs(torch.zeros(3), "cauchy"), "noise"),
    (lambda: argmax_probs(torch.zeros(3), K=0), "K"),
    (lambda: argmax_probs(torch.zeros(3), K=2.5), "K"),
    (lambda: argmax_probs(torch.zeros(3), rule="simpson"), "rule"),
    (lambda: argmax_probs_mc(torch.zeros(3), samples=0), "samples"),
    (lambda: argmax_probs_mc(torch.zeros(3), chunk=-1), "chunk"),
    (lambda: NoiseArgmaxNormalizer(noise="student"), "noise"),
    (lambda: NoiseArgmaxNormalizer()(torch.tensor([[1, 2]])), "floating"),
])
def test_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


def test_noise_samplers_match_their_cdf():
    g = torch.Generator().manual_seed(0)
    for name, nz in NOISES.items():
        x = nz.sample((200_000,), generator=g)
        assert abs(x.std().item() - nz.std) < 0.02 * nz.std, name
        for q in (-0.5, 0.3, 1.2):
            emp = (x <= q).double().mean().item()
            assert abs(emp - nz.cdf(torch.tensor(q, dtype=torch.float64)).item()) < 0.005, (name, q)
            torch.testing.assert_close(nz.logcdf(torch.tensor(q, dtype=torch.float64)).exp(), nz.cdf(torch.tensor(q, dtype=torch.float64)))
