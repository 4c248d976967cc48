"""Tests of kexue_lib.jl: JL projections, distance ratios and the Dasgupta-Gupta bounds."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kexue_lib.jl import (RandomProjection, distance_ratios, gaussian_projection, jl_min_dim, max_distortion,
                          pair_failure_bound, pair_failure_prob, pairwise_sq_dists, random_project)


def _loop_sq_dists(x):
    """float64 plain-loop reference for pairwise_sq_dists on (n, D)."""
    n = x.shape[0]
    out = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            out[i, j] = sum((float(a) - float(b)) ** 2 for a, b in zip(x[i], x[j]))
    return out


def test_pairwise_sq_dists_matches_loop():
    x = torch.randn(2, 7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    d = pairwise_sq_dists(x)
    for b in range(2):
        torch.testing.assert_close(d[b], _loop_sq_dists(x[b]), rtol=1e-12, atol=1e-12)
    assert torch.all(d.diagonal(dim1=-2, dim2=-1) == 0)


def test_distance_ratios_matches_loop():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 9, dtype=torch.float64, generator=g)
    y = torch.randn(6, 4, dtype=torch.float64, generator=g)
    ref = []
    for i in range(6):
        for j in range(i + 1, 6):
            ref.append(float((y[i] - y[j]).square().sum() / (x[i] - x[j]).square().sum()))
    torch.testing.assert_close(distance_ratios(x, y), torch.tensor(ref, dtype=torch.float64), rtol=1e-12, atol=0)
    torch.testing.assert_close(max_distortion(x, y), torch.tensor(max(abs(r - 1) for r in ref), dtype=torch.float64))


def test_jl_min_dim_formula_and_monotone():
    assert jl_min_dim(256, 0.5) == math.ceil(4 * math.log(256) / (0.5**2 / 2 - 0.5**3 / 3))
    assert jl_min_dim(1000, 0.1) > jl_min_dim(100, 0.1) > jl_min_dim(100, 0.3)
    # at the DG dimension the per-pair bound is at most 2/n^2
    for n, eps in [(10, 0.2), (256, 0.5), (5000, 0.1)]:
        assert pair_failure_bound(jl_min_dim(n, eps), eps) <= 2 / n**2 * (1 + 1e-12)


@pytest.mark.parametrize("k,eps", [(5, 0.5), (64, 0.3), (400, 0.1)])
def test_exact_failure_below_bound(k, eps):
    assert 0 < pair_failure_prob(k, eps) < pair_failure_bound(k, eps)


def test_exact_failure_beyond_one_is_the_upper_tail():
    from scipy.stats import chi2

    assert pair_failure_prob(10, 1.0) == pytest.approx(float(chi2.sf(20, 10)), rel=1e-12)
    assert pair_failure_prob(10, 2.5) == pytest.approx(float(chi2.sf(35, 10)), rel=1e-12)
    assert pair_failure_prob(10, 2.5) < pair_failure_prob(10, 1.0) < pair_failure_prob(10, 0.5)


def test_exact_failure_matches_sampling():
    k, eps = 20, 0.4
    chi = torch.randn(200_000, k, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).square().mean(1)
    freq = float(((chi - 1).abs() > eps).double().mean())
    se = math.sqrt(freq * (1 - freq) / chi.numel())
    assert abs(freq - pair_failure_prob(k, eps)) < 4 * se


def test_projection_ratio_moments():
    """Each ratio is chi^2_k / k: mean 1, variance 2/k.

    The points are the origin and the D basis vectors: the D pairs (0, e_b) come first in the
    ratios and are independent draws (the squared norms of the matrix's rows).
    """
    k, dim = 16, 2000
    x = torch.cat([torch.zeros(1, dim, dtype=torch.float64), torch.eye(dim, dtype=torch.float64)])
    y = random_project(x, k, generator=torch.Generator().manual_seed(3))
    r = distance_ratios(x, y)[:dim]
    torch.testing.assert_close(r, y[1:].square().sum(-1))
    assert abs(float(r.mean()) - 1) < 4 * math.sqrt(2 / k / dim)
    assert abs(float(r.var()) - 2 / k) < 0.15 * 2 / k


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 12), d=st.integers(1, 8), seed=st.integers(0, 10_000))
def test_properties_of_distances(n, d, seed):
    x = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    dist = pairwise_sq_dists(x)
    assert torch.all(dist >= 0)
    torch.testing.assert_close(dist, dist.T)
    # a projection onto the same space by an orthogonal matrix preserves every distance
    qmat, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1)))
    if n >= 2:
        assert float(max_distortion(x, x @ qmat)) < 1e-9


def test_batching_device_and_dtype_follow_input():
    x = torch.randn(3, 4, 10, 32)
    y = random_project(x, 8, generator=torch.Generator().manual_seed(0))
    assert y.shape == (3, 4, 10, 8) and y.dtype == torch.float32
    assert max_distortion(x, y).shape == (3, 4)
    xd = x.double()
    assert random_project(xd, 8).dtype == torch.float64
    r = gaussian_projection(5, 3, dtype=torch.float64)
    assert r.shape == (5, 3) and r.dtype == torch.float64


def test_same_generator_same_projection():
    x = torch.randn(10, 20)
    a = random_project(x, 6, generator=torch.Generator().manual_seed(7))
    b = random_project(x, 6, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b)


def test_module_wrapper():
    m = RandomProjection(12, 4, seed=1)
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    y = m(x)
    assert y.shape == (2, 5, 4) and y.dtype == torch.float64
    torch.testing.assert_close(y, x @ m.matrix.double())
    assert "matrix" not in m.state_dict()
    torch.testing.assert_close(RandomProjection(12, 4, seed=1).matrix, m.matrix)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda():
    x = torch.randn(8, 16, device="cuda")
    y = random_project(x, 4)
    assert y.device.type == "cuda" and max_distortion(x, y).device.type == "cuda"


@pytest.mark.parametrize("call", [
    lambda: jl_min_dim(1, 0.5),
    lambda: jl_min_dim(10, 0.0),
    lambda: jl_min_dim(10, 1.0),
    lambda: jl_min_dim(10.0, 0.5),
    lambda: pair_failure_bound(0, 0.5),
    lambda: pair_failure_prob(10, -0.1),
    lambda: gaussian_projection(0, 3),
    lambda: gaussian_projection(3, 0),
    lambda: gaussian_projection(3, 2, dtype=torch.int64),
    lambda: random_project(torch.randn(5), 2),
    lambda: random_project(torch.ones(3, 4, dtype=torch.int64), 2),
    lambda: random_project(torch.randn(3, 4), 0),
    lambda: pairwise_sq_dists(torch.randn(4)),
    lambda: distance_ratios(torch.randn(4, 3), torch.randn(5, 2)),
    lambda: distance_ratios(torch.randn(1, 3), torch.randn(1, 2)),
    lambda: distance_ratios(torch.zeros(3, 3), torch.randn(3, 2)),
    lambda: distance_ratios([[0.0]], torch.randn(1, 2)),
    lambda: RandomProjection(0, 2),
    lambda: RandomProjection(4, 2)(torch.randn(3, 5)),
])
def test_bad_input_raises_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_peer_sklearn_min_dim_and_projection():
    """scikit-learn's JL helpers: same bound (it truncates where we round up), same kind of projection."""
    rp = pytest.importorskip("sklearn.random_projection")
    for n, eps in [(10, 0.1), (256, 0.5), (10_000, 0.25), (1_000_000, 0.9)]:
        ours, theirs = jl_min_dim(n, eps), int(rp.johnson_lindenstrauss_min_dim(n, eps=eps))
        exact = 4 * math.log(n) / (eps**2 / 2 - eps**3 / 3)
        assert ours == math.ceil(exact) and theirs == math.floor(exact)
        assert theirs < exact <= ours  # sklearn's value can fall one short of the bound
    # same linear map: sklearn's transform with our matrix as its components
    x = torch.randn(20, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    r = gaussian_projection(50, 7, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    peer = rp.GaussianRandomProjection(n_components=7, random_state=0).fit(x.numpy())
    peer.components_ = r.T.numpy()
    torch.testing.assert_close(torch.from_numpy(peer.transform(x.numpy())), x @ r)
    # and the same entry law N(0, 1/k): sklearn's own matrix has variance 1/k
    big = rp.GaussianRandomProjection(n_components=64, random_state=0).fit(torch.zeros(2, 4000).numpy())
    assert abs(float(big.components_.var()) - 1 / 64) < 0.02 / 64
