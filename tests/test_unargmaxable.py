"""Tests of kexue_lib.unargmaxable: LP, convex hull, Frank-Wolfe and the Gaussian-hull formula."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import spatial

from kexue_lib.unargmaxable import (argmax_margin, ball_margin, ball_minimax_dual, gaussian_hull_expected_vertices,
                                    hull_argmaxable, interior_bias_margin, is_argmaxable, min_norm_in_hull,
                                    minimax_dual_margin, unargmaxable_classes)

ARTICLE_W = np.array([[1.0, 2.0], [2.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])


def brute_force_winners_2d(W, b=None, n_dir=20000, radii=(1.0, 10.0, 1e3, 1e6)):
    """Plain-loop reference in 2-D: every class that strictly wins for some z on a fine polar grid."""
    b = np.zeros(len(W)) if b is None else b
    won = set()
    for r in radii:
        for a in np.linspace(0, 2 * math.pi, n_dir, endpoint=False):
            s = W @ (r * np.array([math.cos(a), math.sin(a)])) + b
            order = np.argsort(s)
            if s[order[-1]] - s[order[-2]] > 1e-12 * (1 + abs(s[order[-1]])):
                won.add(int(order[-1]))
    return won


def test_article_example():
    np.testing.assert_allclose(argmax_margin(ARTICLE_W, radius=10.0), [10, 10, 10, 10, 0], atol=1e-9)
    np.testing.assert_allclose(argmax_margin(ARTICLE_W), [1, 1, 1, 1, 0], atol=1e-9)
    assert unargmaxable_classes(ARTICLE_W) == [4]
    assert unargmaxable_classes(ARTICLE_W, method="lp") == [4]
    assert unargmaxable_classes(ARTICLE_W, method="hull") == [4]
    assert brute_force_winners_2d(ARTICLE_W, n_dir=720) == {0, 1, 2, 3}
    # a bias can rescue class 5: raise it and it wins near z = 0
    b = np.array([0, 0, 0, 0, 0.5])
    assert is_argmaxable(ARTICLE_W, b).all()


def test_single_class_subset_and_numpy_ints():
    m = argmax_margin(ARTICLE_W, k=np.int64(4))
    assert m.shape == (1,) and abs(m[0]) < 1e-12
    assert argmax_margin(ARTICLE_W, k=[0, 4]).shape == (2,)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), d=st.sampled_from([2, 3]), bias=st.booleans())
def test_lp_equals_hull(seed, d, bias):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((25, d)) * np.exp(0.5 * rng.standard_normal((25, 1)))
    b = rng.standard_normal(25) if bias else None
    lp = is_argmaxable(W, b, method="lp")
    np.testing.assert_array_equal(lp, hull_argmaxable(W, b))
    np.testing.assert_array_equal(lp, is_argmaxable(W, b))  # the fast path


@pytest.mark.parametrize("bias", [False, True])
def test_lp_equals_plain_loop_reference_2d(bias):
    rng = np.random.default_rng(7)
    W = rng.standard_normal((12, 2))
    b = rng.standard_normal(12) if bias else None
    assert set(np.flatnonzero(is_argmaxable(W, b, method="lp")).tolist()) == brute_force_winners_2d(W, b, n_dir=4000)


@pytest.mark.parametrize("d", [4, 8])
def test_fast_path_equals_lp_in_higher_dimensions(d):
    rng = np.random.default_rng(d)
    W = rng.standard_normal((60, d)) * np.exp(0.7 * rng.standard_normal((60, 1)))
    b = 0.3 * rng.standard_normal(60)
    np.testing.assert_array_equal(is_argmaxable(W, b), is_argmaxable(W, b, method="lp"))
    np.testing.assert_array_equal(is_argmaxable(W, chunk=7), is_argmaxable(W, method="lp"))


def test_box_margins_with_bias():
    # class 2 has a zero vector and a small bias: it wins only near z = 0 with margin 0.1 at best;
    # class 0 at z = (5, 0) beats class 1 by 10 and class 2 by 5 - 0.1
    W = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]])
    b = np.array([0.0, 0.0, 0.1])
    assert is_argmaxable(W, b).all()
    m = argmax_margin(W, b, radius=5.0)
    assert m[2] == pytest.approx(0.1) and m[0] == pytest.approx(4.9)


def test_minimax_dual_equals_primal():
    rng = np.random.default_rng(3)
    W, b = rng.standard_normal((30, 3)), rng.standard_normal(30)
    for r in (0.5, 2.0, 50.0):
        np.testing.assert_allclose(minimax_dual_margin(W, b, radius=r), argmax_margin(W, b, radius=r), atol=1e-8)


def test_ball_primal_equals_dual_with_bias():
    rng = np.random.default_rng(4)
    W, b = rng.standard_normal((15, 3)), rng.standard_normal(15)
    for r in (0.3, 3.0):
        p, q = ball_margin(W, b, radius=r), ball_minimax_dual(W, b, radius=r)
        np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-5)
        assert (q >= p - 1e-9).all()  # weak duality: the dual's value at any alpha bounds the primal
    # without bias the ball margin is r times the distance from 0 to conv{w_k - w_i} (sign: argmaxable)
    m = ball_margin(W, radius=2.0)
    np.testing.assert_array_equal(m > 1e-7, is_argmaxable(W, method="lp"))


def test_ball_article_example_by_hand():
    # class 5 of the article: best worst margin 0 in the unit ball (at z = 0). Class 1: its differences
    # w1 - w_i are (-1,1), (0,2), (1,1), (0,1); z = (0,1) gives min 1, and the row (0,1) caps it at z2 <= 1
    np.testing.assert_allclose(ball_margin(ARTICLE_W, radius=1.0), [1, 1, 1, 1, 0], atol=1e-7)
    np.testing.assert_allclose(ball_minimax_dual(ARTICLE_W, radius=1.0), [1, 1, 1, 1, 0], atol=1e-6)


def test_interior_bias_margin():
    # class 5 sits at the mean of the others: with bias 0.5 against 0 it gains margin 0.5 near z = 0
    b = np.array([0, 0, 0, 0, 0.5])
    assert interior_bias_margin(ARTICLE_W, b, 4) == pytest.approx(0.5)
    assert interior_bias_margin(ARTICLE_W, -b, 4) == pytest.approx(-0.5)
    assert np.isnan(interior_bias_margin(ARTICLE_W, b, 0))  # w1 is a vertex: not in the others' hull
    # the limit of the ball dual for large r, and the sign decides argmaxability with bias
    assert ball_minimax_dual(ARTICLE_W, b, 4, radius=1e3)[0] == pytest.approx(0.5, abs=1e-5)
    assert is_argmaxable(ARTICLE_W, b)[4] and not is_argmaxable(ARTICLE_W, -b)[4]


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), d=st.integers(2, 6))
def test_equal_norms_all_argmaxable(seed, d):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((40, d))
    W /= np.linalg.norm(W, axis=1, keepdims=True)
    assert is_argmaxable(W, method="lp").all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_frank_wolfe_bounds_and_certificates(dtype):
    rng = np.random.default_rng(5)
    W = torch.tensor(rng.standard_normal((2, 30, 3)), dtype=dtype)  # a batch of two layers
    x, upper, lower = min_norm_in_hull(W, iters=300)
    assert x.shape == W.shape and x.dtype == dtype and upper.shape == (2, 30)
    assert (lower <= upper + 1e-5).all()
    for layer in range(2):
        arg = torch.tensor(is_argmaxable(W[layer].double().numpy(), method="lp"))
        assert (lower[layer] > 0)[~arg].sum() == 0  # never certifies an unargmaxable class
        assert upper[layer][~arg].max() < 0.05  # and drives their distance towards 0 (slowly: O(1/t))
        assert (lower[layer][arg] > 0).float().mean() > 0.8  # certifies most argmaxable ones
        # a certificate is a real witness: z = x makes class k the strict winner
        k = int(torch.nonzero(lower[layer] > 0)[0])
        assert int((W[layer] @ x[layer, k]).argmax()) == k


def test_frank_wolfe_article_example_exact():
    _, upper, lower = min_norm_in_hull(torch.tensor(ARTICLE_W), iters=50)
    torch.testing.assert_close(upper, torch.tensor([1.0, 1, 1, 1, 0], dtype=torch.float64))
    torch.testing.assert_close(lower, torch.tensor([1.0, 1, 1, 1, 0], dtype=torch.float64))


def test_gaussian_hull_formula():
    assert gaussian_hull_expected_vertices(3, 2) == pytest.approx(3.0, abs=1e-9)  # a triangle
    assert gaussian_hull_expected_vertices(4, 3) == pytest.approx(4.0, abs=1e-9)  # a tetrahedron
    assert gaussian_hull_expected_vertices(100, 1) == 2.0
    # the default exponent is n - d; another exponent moves the value (the off-by-one rival of the chapter)
    assert gaussian_hull_expected_vertices(50, 3, power=47) == gaussian_hull_expected_vertices(50, 3)
    assert gaussian_hull_expected_vertices(50, 2, power=49) < gaussian_hull_expected_vertices(50, 2) < \
        gaussian_hull_expected_vertices(50, 2, power=47)
    rng = np.random.default_rng(11)
    for n, d in [(30, 2), (30, 3)]:
        counts = np.array([len(spatial.ConvexHull(rng.standard_normal((n, d))).vertices) for _ in range(1500)])
        se = counts.std(ddof=1) / math.sqrt(counts.size)
        assert abs(counts.mean() - gaussian_hull_expected_vertices(n, d)) < 4 * se


@pytest.mark.parametrize(
    "call",
    [
        lambda: argmax_margin(np.ones(3)),
        lambda: argmax_margin(np.ones((1, 2))),
        lambda: argmax_margin(ARTICLE_W, b=np.ones(3)),
        lambda: argmax_margin(np.array([[1.0, np.nan], [0.0, 1.0]])),
        lambda: argmax_margin(ARTICLE_W, radius=0.0),
        lambda: argmax_margin(ARTICLE_W, k=5),
        lambda: argmax_margin(ARTICLE_W, k=True),
        lambda: argmax_margin("abc"),
        lambda: is_argmaxable(ARTICLE_W, method="simplex"),
        lambda: is_argmaxable(ARTICLE_W, method="hull", radius=1.0),
        lambda: is_argmaxable(ARTICLE_W, tol=-1.0),
        lambda: is_argmaxable(ARTICLE_W, chunk=0),
        lambda: hull_argmaxable(np.ones((3, 3))),
        lambda: minimax_dual_margin(ARTICLE_W, radius=-1.0),
        lambda: ball_margin(ARTICLE_W, radius=0.0),
        lambda: ball_minimax_dual(ARTICLE_W, radius=1.0, tol=0.0),
        lambda: ball_minimax_dual(ARTICLE_W, b=np.ones(2)),
        lambda: interior_bias_margin(ARTICLE_W, None, [0, 1]),
        lambda: interior_bias_margin(ARTICLE_W, np.zeros(5), 7),
        lambda: min_norm_in_hull(ARTICLE_W),
        lambda: min_norm_in_hull(torch.ones(1, 3)),
        lambda: min_norm_in_hull(torch.ones(4, 3, dtype=torch.int64)),
        lambda: min_norm_in_hull(torch.ones(4, 3), iters=0),
        lambda: gaussian_hull_expected_vertices(10, 4),
        lambda: gaussian_hull_expected_vertices(3, 3),
        lambda: gaussian_hull_expected_vertices(10, 2, power=-1),
        lambda: gaussian_hull_expected_vertices(10, 2, power=2.5),
    ],
)
def test_bad_input_raises_value_error(call):
    with pytest.raises(ValueError):
        call()
