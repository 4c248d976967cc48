"""Tests of kexue_lib.self_consuming: the self-consuming Gaussian loop and its exact moments."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special

from kexue_lib.self_consuming import (log_det_drift, mixture_diversity, mixture_sample, self_consuming_gaussian,
                                     self_consuming_mixture, self_consuming_moments)


def loop_reference(n, generations, lam, fresh, real, seed):
    """Float64 plain loop over one chain, with numpy-free python floats (1-D)."""
    g = torch.Generator().manual_seed(seed)
    mu, var = 0.0, 1.0
    fixed = [torch.randn((), generator=g, dtype=torch.float64).item() for _ in range(fresh)] if real == "fixed" else None
    out = [(mu, var)]
    for t in range(generations):
        sd = math.sqrt(var if t == 0 else lam * var)
        pts = fixed[:] if fixed is not None else [torch.randn((), generator=g, dtype=torch.float64).item() for _ in range(fresh)]
        pts += [mu + sd * torch.randn((), generator=g, dtype=torch.float64).item() for _ in range(n - fresh)]
        mu = sum(pts) / n
        var = sum((p - mu) ** 2 for p in pts) / (n - 1)
        out.append((mu, var))
    return out


def test_shapes_and_generation_zero():
    r = self_consuming_gaussian(5, 3, chains=7, dim=2, generator=torch.Generator().manual_seed(0))
    assert r["mu"].shape == (4, 7, 2) and r["cov"].shape == (4, 7, 2, 2)
    torch.testing.assert_close(r["mu"][0], torch.zeros(7, 2, dtype=torch.float64))
    torch.testing.assert_close(r["cov"][0], torch.eye(2, dtype=torch.float64).expand(7, 2, 2))
    torch.testing.assert_close(r["cov"], r["cov"].transpose(-1, -2))
    assert (torch.linalg.eigvalsh(r["cov"]) > 0).all()


def test_fit_is_sample_mean_and_unbiased_covariance():
    # with fresh = n every generation fits n fresh real points: moments are those of the sample
    g = torch.Generator().manual_seed(3)
    r = self_consuming_gaussian(4, 1, chains=3, fresh=4, dim=2, generator=g)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, 2, generator=g, dtype=torch.float64)
    torch.testing.assert_close(r["mu"][1], x.mean(1))
    for c in range(3):
        torch.testing.assert_close(r["cov"][1, c], torch.cov(x[c].T))


@pytest.mark.parametrize("lam, fresh, real", [(1.0, 0, "fresh"), (0.8, 2, "fresh"), (1.0, 3, "fixed")])
def test_statistics_match_plain_loop(lam, fresh, real):
    # same law as the one-chain python loop: compare moments over many chains vs many loops
    ref = [loop_reference(6, 4, lam, fresh, real, seed) for seed in range(1500)]
    r = self_consuming_gaussian(6, 4, chains=20_000, lam=lam, fresh=fresh, real=real,
                                generator=torch.Generator().manual_seed(1))
    for t in (1, 4):
        a = torch.tensor([row[t][1] for row in ref])
        b = r["cov"][t, :, 0, 0]
        assert abs(a.mean() - b.mean()) < 4 * math.sqrt(a.var() / len(a) + b.var() / len(b))
        a = torch.tensor([row[t][0] for row in ref]) ** 2
        b = r["mu"][t, :, 0] ** 2
        assert abs(a.mean() - b.mean()) < 4 * math.sqrt(a.var() / len(a) + b.var() / len(b))


def test_moments_closed_forms_without_fresh_data():
    n, G = 10, 30
    for lam in (1.0, 0.7):
        m = self_consuming_moments(n, G, lam=lam)
        t = torch.arange(G + 1, dtype=torch.float64)
        geo = t / n if lam == 1 else (1 - lam ** t) / (1 - lam) / n
        torch.testing.assert_close(m["var_mu"], geo)
        torch.testing.assert_close(m["mean_cov"][1:], lam ** (t[1:] - 1))
    assert m["m4_mu"][1].item() == pytest.approx(3 / n**2)  # generation 1 is Gaussian
    assert m["m4_mu"][5] > 3 * m["var_mu"][5] ** 2           # later ones are not


def test_moments_match_monte_carlo_with_fresh_data():
    m = self_consuming_moments(8, 6, lam=0.9, fresh=3)
    r = self_consuming_gaussian(8, 6, chains=100_000, lam=0.9, fresh=3, generator=torch.Generator().manual_seed(2))
    for t in (2, 6):
        v = r["cov"][t, :, 0, 0]
        assert abs(v.mean() - m["mean_cov"][t]) < 4 * v.std() / math.sqrt(len(v))
        d2 = r["mu"][t, :, 0] ** 2
        assert abs(d2.mean() - m["var_mu"][t]) < 4 * d2.std() / math.sqrt(len(d2))


def test_matrix_moments_are_scalar_moments_times_cov0():
    cov0 = torch.tensor([[2.0, 0.3], [0.3, 1.0]], dtype=torch.float64)
    a = self_consuming_moments(7, 5, lam=0.8, fresh=2, cov0=cov0)
    b = self_consuming_moments(7, 5, lam=0.8, fresh=2)
    torch.testing.assert_close(a["mean_cov"], b["mean_cov"][:, None, None] * cov0)
    torch.testing.assert_close(a["var_mu"], b["var_mu"][:, None, None] * cov0)


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 40), st.integers(1, 3))
def test_log_det_drift(n, dim):
    if n <= dim:
        with pytest.raises(ValueError):
            log_det_drift(n, dim)
        return
    k = n - 1
    expected = sum(special.digamma((k - i) / 2) for i in range(dim)) + dim * math.log(2 / k)
    assert log_det_drift(n, dim) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert log_det_drift(n, dim) < 0  # Jensen: E log < log E = 0


def test_log_variance_drift_monte_carlo():
    r = self_consuming_gaussian(10, 8, chains=50_000, generator=torch.Generator().manual_seed(4))
    lv = r["cov"][8, :, 0, 0].log()
    assert abs(lv.mean() - 8 * log_det_drift(10)) < 4 * lv.std() / math.sqrt(len(lv))


def test_float32_and_device_follow_arguments():
    r = self_consuming_gaussian(5, 2, chains=4, dtype=torch.float32)
    assert r["mu"].dtype == torch.float32 and r["mu"].device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda():
    r = self_consuming_gaussian(5, 3, chains=1000, generator=torch.Generator("cuda").manual_seed(0))
    assert r["cov"].device.type == "cuda"


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=1, generations=2), "n"),
    (dict(n=5, generations=0), "generations"),
    (dict(n=5, generations=2, lam=0.0), "lam"),
    (dict(n=5, generations=2, lam=1.5), "lam"),
    (dict(n=5, generations=2, fresh=6), "fresh"),
    (dict(n=5, generations=2, fresh=-1), "fresh"),
    (dict(n=5, generations=2, real="stale"), "real"),
    (dict(n=5, generations=2, chains=0), "chains"),
    (dict(n=3, generations=2, dim=3), "exceed"),
    (dict(n=5, generations=2, dtype=torch.int64), "dtype"),
    (dict(n=5, generations=2, mu0=[0.0, 1.0]), "mu0"),
    (dict(n=5, generations=2, dim=2, cov0=[[1.0, 2.0], [2.0, 1.0]]), "positive definite"),
    (dict(n=5, generations=2, dim=2, cov0=torch.eye(3)), "cov0"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        self_consuming_gaussian(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=5, generations=2, cov0=-1.0), "cov0"),
    (dict(n=5, generations=2, cov0=torch.ones(3)), "cov0"),
    (dict(n=5, generations=2, lam=2.0), "lam"),
    (dict(n=5.0, generations=2), "n"),
])
def test_bad_input_moments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        self_consuming_moments(**kwargs)


# ---- the non-Gaussian loop: a Gaussian mixture refitted by EM ---------------------------------------
def _circle(k=8, radius=2.0):
    a = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
    return radius * torch.stack([a.cos(), a.sin()], 1)


def test_mixture_loop_shapes_and_generation_zero():
    c = _circle()
    r = self_consuming_mixture(40, 3, centres=c, std=0.2, chains=5, generator=torch.Generator().manual_seed(0))
    assert r["weights"].shape == (4, 5, 8) and r["means"].shape == (4, 5, 8, 2) and r["variances"].shape == (4, 5, 8)
    torch.testing.assert_close(r["means"][0], c.expand(5, 8, 2))
    torch.testing.assert_close(r["variances"][0], torch.full((5, 8), 0.04, dtype=torch.float64))
    torch.testing.assert_close(r["weights"].sum(-1), torch.ones(4, 5, dtype=torch.float64))
    assert (r["variances"] > 0).all()


def test_mixture_fit_is_per_cluster_mean_and_unbiased_variance():
    # clusters 40 standard deviations apart: EM's responsibilities are 0 or 1, so one generation on all-real data
    # must return each cluster's share, sample mean and unbiased spherical variance (divisor d (n_k - 1))
    c = torch.tensor([[-20.0, 0.0], [20.0, 0.0], [0.0, 20.0]], dtype=torch.float64)
    n = 60
    r = self_consuming_mixture(n, 1, centres=c, std=0.5, chains=3, fresh=n, em_steps=3,
                               generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    w0 = torch.full((3, 3), 1 / 3, dtype=torch.float64)
    x = mixture_sample(w0, c.expand(3, 3, 2), torch.full((3, 3), 0.25, dtype=torch.float64), n, generator=g)
    for ch in range(3):
        lab = torch.cdist(x[ch], c).argmin(1)
        for k in range(3):
            pts = x[ch][lab == k]
            assert r["weights"][1, ch, k].item() == pytest.approx(len(pts) / n, abs=1e-12)
            torch.testing.assert_close(r["means"][1, ch, k], pts.mean(0))
            var = sum(((p - pts.mean(0)) ** 2).sum().item() for p in pts) / (2 * (len(pts) - 1))
            assert r["variances"][1, ch, k].item() == pytest.approx(var, rel=1e-9)


def test_one_component_mixture_is_the_gaussian_loop():
    # K = 1, d = 1: the mixture loop is the Gaussian loop; its mean variance must follow self_consuming_moments
    n, t, lam, chains = 10, 5, 0.9, 20_000
    r = self_consuming_mixture(n, t, centres=torch.zeros(1, 1, dtype=torch.float64), std=1.0, chains=chains, lam=lam,
                               generator=torch.Generator().manual_seed(2))
    v = r["variances"][t, :, 0]
    exact = self_consuming_moments(n, t, lam=lam)["mean_cov"][t].item()
    assert abs(v.mean().item() - exact) < 4 * v.std().item() / math.sqrt(chains)
    assert abs(v.mean().item() - lam ** t) > 4 * v.std().item() / math.sqrt(chains)   # off-by-one rejected
    mu = r["means"][t, :, 0, 0]
    exact_mu = self_consuming_moments(n, t, lam=lam)["var_mu"][t].item()
    assert abs(mu.square().mean().item() - exact_mu) < 4 * mu.square().std().item() / math.sqrt(chains)


def test_mixture_sample_moments_and_truncation():
    g = torch.Generator().manual_seed(0)
    w = torch.tensor([[0.25, 0.75]], dtype=torch.float64)
    m = torch.tensor([[[0.0, 0.0], [30.0, -10.0]]], dtype=torch.float64)
    v = torch.tensor([[1.0, 4.0]], dtype=torch.float64)
    x = mixture_sample(w, m, v, 200_000, lam=0.5, generator=g)[0]
    right = x[:, 0] > 15.0
    assert right.double().mean().item() == pytest.approx(0.75, abs=0.01)
    assert x[right].var(0).mean().item() == pytest.approx(0.5 * 4.0, rel=0.03)   # variance scaled by lam
    assert x[~right].var(0).mean().item() < 0.6


def test_mixture_diversity_counts_modes_spread_and_pairs():
    c = _circle()
    pts = torch.cat([c[[0, 0, 0, 3, 3, 5]], torch.tensor([[10.0, 10.0]], dtype=torch.float64)])
    d = mixture_diversity(pts.unsqueeze(0), c, radius=0.5, min_share=0.1)
    assert d["modes"].item() == 3 and d["spread"].item() == 0.0
    ref = sum((pts[i] - pts[j]).norm().item() for i in range(7) for j in range(7) if i != j) / 42
    assert d["pairwise"].item() == pytest.approx(ref, rel=1e-12)
    assert mixture_diversity(pts.unsqueeze(0), c, radius=0.5, min_share=0.2)["modes"].item() == 2


def test_fresh_data_keeps_modes_and_truncation_collapses_the_mixture():
    c, g = _circle(), lambda: torch.Generator().manual_seed(1)  # noqa: E731
    kw = dict(centres=c, std=0.2, chains=40, em_steps=5)
    synth = self_consuming_mixture(64, 30, generator=g(), **kw)
    fresh = self_consuming_mixture(64, 30, fresh=32, generator=g(), **kw)
    trunc = self_consuming_mixture(64, 30, lam=0.7, generator=g(), **kw)
    alive = lambda r: (r["weights"][-1] > 1 / 32).sum(1).double().mean().item()  # noqa: E731
    assert alive(fresh) > alive(synth) + 1
    spread = lambda r: (r["weights"][-1] * r["variances"][-1]).sum(1).median().item()  # noqa: E731
    assert spread(trunc) < 0.01 * spread(synth)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=1), "n"), (dict(std=0.0), "std"), (dict(lam=0.0), "lam"), (dict(fresh=11), "fresh"),
    (dict(real="stale"), "real"), (dict(em_steps=0), "em_steps"), (dict(centres=torch.zeros(3)), "centres"),
    (dict(dtype=torch.int64), "dtype"), (dict(var_floor=0.0), "var_floor"),
])
def test_bad_input_mixture(kwargs, match):
    args = dict(n=10, generations=2, centres=_circle(), std=0.2) | kwargs
    with pytest.raises(ValueError, match=match):
        self_consuming_mixture(**args)


def test_bad_input_sample_and_diversity():
    w, m, v = torch.ones(2, 3) / 3, torch.zeros(2, 3, 2), torch.ones(2, 3)
    for f in (lambda: mixture_sample(w, m, v, 0), lambda: mixture_sample(w, m, -v, 3),
              lambda: mixture_sample(w[:, :2], m, v, 3), lambda: mixture_sample(w, m, v, 3, lam=1.5),
              lambda: mixture_diversity(torch.zeros(2, 1, 2), _circle(), radius=0.3),
              lambda: mixture_diversity(torch.zeros(2, 5, 3), _circle(), radius=0.3),
              lambda: mixture_diversity(torch.zeros(2, 5, 2), _circle(), radius=0.0)):
        with pytest.raises(ValueError):
            f()
