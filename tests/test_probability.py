"""kexue_lib.probability: exact sector probability, its Monte Carlo estimator, the spacings."""
import math
from fractions import Fraction

import numpy as np
import pytest
import sympy as sp
import torch
from hypothesis import given
from hypothesis import strategies as st

from kexue_lib.probability import (circle_spacings, in_one_sector, longest_spacing_cdf, sector_probability,
                                   sector_probability_mc)

TWO_PI = 2 * math.pi
ns = st.integers(min_value=1, max_value=40)
thetas = st.floats(min_value=0.0, max_value=TWO_PI, allow_nan=False)


def brute_force(n, theta, trials, seed):
    """Plain-loop float64 reference: sort each trial's angles and take the largest gap."""
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(trials):
        pts = []
        while len(pts) < n:
            x, y = rng.uniform(-1, 1, 2)
            if x * x + y * y <= 1:
                pts.append(math.atan2(y, x))
        a = sorted(pts)
        gaps = [b - c for b, c in zip(a[1:], a[:-1])] + [TWO_PI - (a[-1] - a[0])]
        hits += max(gaps) >= TWO_PI - theta
    return hits / trials


@pytest.mark.parametrize(
    "n, theta, expected",
    [(4, math.pi, 0.5), (3, math.pi / 2, 3 / 16), (5, 1.2 * math.pi, 0.632), (6, 1.5 * math.pi, 998 / 1024),
     (4, 1.5 * math.pi, 1.0), (1, 0.0, 1.0), (2, 0.0, 0.0), (7, TWO_PI, 1.0)],
)
def test_known_values(n, theta, expected):
    assert sector_probability(n, theta) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_exact_values():
    assert sector_probability(4, sp.pi, exact=True) == sp.Rational(1, 2)
    assert sector_probability(6, 3 * sp.pi / 2, exact=True) == sp.Rational(499, 512)
    assert sector_probability(5, sp.Rational(6, 5) * sp.pi, exact=True) == sp.Rational(79, 125)
    assert sector_probability(3, 0, exact=True) == 0
    assert isinstance(sector_probability(3, sp.pi / 3, exact=True), sp.Rational)


@given(ns, thetas)
def test_in_unit_interval(n, theta):
    assert 0.0 <= sector_probability(n, theta) <= 1.0


@given(ns, thetas, thetas)
def test_non_decreasing_in_theta(n, a, b):
    lo, hi = min(a, b), max(a, b)
    assert sector_probability(n, lo) <= sector_probability(n, hi) + 1e-12


@given(st.integers(min_value=1, max_value=39), thetas)
def test_non_increasing_in_n(n, theta):
    assert sector_probability(n + 1, theta) <= sector_probability(n, theta) + 1e-12


@given(ns, st.floats(min_value=0.0, max_value=1.0))
def test_one_past_pigeonhole_bound(n, u):
    theta = TWO_PI * (1 - 1 / n) + u * (TWO_PI / n)
    assert sector_probability(n, min(theta, TWO_PI)) == 1.0


@given(st.integers(min_value=2, max_value=30))
def test_continuous_at_pi(n):
    eps = 1e-9
    left, mid, right = (sector_probability(n, math.pi + d) for d in (-eps, 0.0, eps))
    assert abs(left - mid) < 1e-6 and abs(right - mid) < 1e-6
    assert mid == pytest.approx(n / 2 ** (n - 1), rel=1e-12)


@given(st.integers(min_value=2, max_value=12), st.fractions(min_value=0, max_value=1, max_denominator=50))
def test_float_matches_exact(n, t):
    exact = sector_probability(n, 2 * sp.pi * sp.Rational(t.numerator, t.denominator), exact=True)
    assert sector_probability(n, float(2 * math.pi * t)) == pytest.approx(float(exact), abs=1e-9)


def test_longest_spacing_cdf_complements_sector():
    for n in (2, 3, 5, 9):
        for x in (0.05, 0.3, 0.5, 0.77):
            assert longest_spacing_cdf(n, x) == pytest.approx(1 - sector_probability(n, TWO_PI * (1 - x)), abs=1e-12)
    assert longest_spacing_cdf(1, 0.5) == 0.0 and longest_spacing_cdf(1, 1.0) == 1.0


@pytest.mark.parametrize("n, theta", [(2, 1.0), (4, math.pi), (5, 1.2 * math.pi), (12, 1.7 * math.pi)])
def test_mc_matches_exact_and_loop_reference(n, theta):
    p, se = sector_probability_mc(n, theta, trials=200_000, seed=7)
    exact = sector_probability(n, theta)
    assert abs(p - exact) <= 4 * max(se, 1e-4)
    ref = brute_force(n, theta, trials=4_000, seed=1)
    assert abs(ref - exact) <= 4 * math.sqrt(exact * (1 - exact) / 4_000) + 1e-9


def test_mc_reproducible_and_float64():
    assert sector_probability_mc(4, 2.0, trials=10_000, seed=3) == sector_probability_mc(4, 2.0, trials=10_000, seed=3)
    p, _ = sector_probability_mc(4, math.pi, trials=50_000, seed=3, dtype=torch.float64, chunk=7_777)
    assert abs(p - 0.5) < 0.01


def test_spacings_on_simplex():
    s = circle_spacings(6, 1000, seed=0)
    assert s.shape == (1000, 6) and s.dtype == torch.float64
    assert torch.all(s >= 0)
    assert torch.allclose(s.sum(1), torch.ones(1000, dtype=torch.float64))


@pytest.mark.parametrize("n", [0, -1, 2.0, "3", True, None])
def test_bad_n(n):
    with pytest.raises(ValueError, match="n must"):
        sector_probability(n, 1.0)
    with pytest.raises(ValueError, match="n must"):
        sector_probability_mc(n, 1.0, trials=10)


@pytest.mark.parametrize("theta", [-0.1, TWO_PI + 1e-9, float("nan"), float("inf"), "pi", None])
def test_bad_theta(theta):
    with pytest.raises(ValueError, match="theta"):
        sector_probability(3, theta)
    with pytest.raises(ValueError, match="theta"):
        sector_probability_mc(3, theta, trials=10)


@pytest.mark.parametrize("theta", [math.pi, sp.sqrt(2) * sp.pi, 3 * sp.pi, -sp.pi, sp.Symbol("t")])
def test_bad_exact_theta(theta):
    with pytest.raises(ValueError):
        sector_probability(3, theta, exact=True)


def test_bad_mc_arguments():
    for kwargs in ({"trials": 0}, {"trials": 1.5}, {"seed": -1}, {"chunk": 0}, {"dtype": torch.float16}):
        with pytest.raises(ValueError):
            sector_probability_mc(3, 1.0, **{"trials": 10, **kwargs})
    with pytest.raises(ValueError):
        longest_spacing_cdf(3, 1.5)


def test_exact_arithmetic_has_no_cancellation():
    # n = 300 near the pigeonhole bound: compare with an independent Fraction evaluation
    n, t = 300, Fraction(297, 300) - Fraction(1, 10_000)
    x = 1 - t
    ref = sum((-1) ** (k - 1) * math.comb(n, k) * (1 - k * x) ** (n - 1) for k in range(1, n + 1) if k * x < 1)
    assert sector_probability(n, float(2 * math.pi * t)) == pytest.approx(float(ref), rel=1e-9)


def test_in_one_sector_matches_brute_force():
    g = torch.Generator().manual_seed(3)
    for n, theta in [(1, 0.0), (2, 1.0), (3, math.pi), (5, 4.0), (6, 2 * math.pi - 0.3)]:
        a = torch.rand(4000, n, generator=g, dtype=torch.float64) * 2 * math.pi
        # brute force: some point i such that every point lies within theta counter-clockwise of it
        rel = torch.remainder(a[:, None, :] - a[:, :, None], 2 * math.pi)
        brute = (rel <= theta).all(dim=2).any(dim=1)
        assert torch.equal(in_one_sector(a, theta), brute)
    assert bool(in_one_sector(torch.tensor([[0.0, 3.0]]), 3.0)) and not bool(in_one_sector(torch.tensor([[0.0, 3.0]]), 2.9))


@pytest.mark.parametrize("angles, theta", [
    (torch.zeros(4), 1.0),                       # not (trials, n)
    (torch.zeros(4, 0), 1.0),                    # no points
    (torch.zeros(4, 2, dtype=torch.long), 1.0),  # not floating
    (torch.full((2, 2), 7.0), 1.0),              # outside [0, 2pi)
    (torch.full((2, 2), -0.1), 1.0),
    (torch.zeros(2, 2), -1.0),                   # theta out of range
    (torch.zeros(2, 2), 7.0),
])
def test_in_one_sector_bad_input(angles, theta):
    with pytest.raises(ValueError):
        in_one_sector(angles, theta)
