import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from kexue_lib.cosent import (best_binary_threshold, binary_accuracy, class_threshold_predict, cosent_loss,
                              pair_cosines, powell_binary_threshold, psd_factor, search_class_thresholds)


def _loop_reference(cos, labels, scale):
    """log(1 + sum over y_i > y_j of exp(scale (c_j - c_i))), pair by pair in float64 (no stabilization)."""
    c, y = [float(v) for v in cos], [float(v) for v in labels]
    total = 1.0
    for i in range(len(c)):
        for j in range(len(c)):
            if y[i] > y[j]:
                total += math.exp(scale * (c[j] - c[i]))
    return math.log(total)


@pytest.mark.parametrize("scale", [1.0, 5.0, 20.0])
def test_cosent_matches_loop_reference(scale):
    g = torch.Generator().manual_seed(0)
    cos = torch.rand(9, generator=g, dtype=torch.float64) * 2 - 1
    labels = torch.randint(0, 3, (9,), generator=g)
    assert float(cosent_loss(cos, labels, scale=scale)) == pytest.approx(_loop_reference(cos, labels, scale), rel=1e-12)


def test_cosent_stable_at_large_scale():
    cos = torch.tensor([-1.0, 1.0, 0.0], dtype=torch.float64)
    labels = torch.tensor([1, 0, 0])
    loss = cosent_loss(cos, labels, scale=1000.0)  # exp(2000) overflows; logsumexp does not
    assert math.isfinite(float(loss))
    assert float(loss) == pytest.approx(2000.0, rel=1e-9)


def test_cosent_zero_without_ordered_pairs_and_grad():
    cos = torch.tensor([0.3, -0.2, 0.9], requires_grad=True)
    assert float(cosent_loss(cos.detach(), torch.tensor([1, 1, 1]))) == 0.0
    loss = cosent_loss(cos, torch.tensor([1, 0, 0]))
    loss.backward()
    assert torch.isfinite(cos.grad).all() and cos.grad[0] < 0 and cos.grad[1] > 0  # pushes the positive up


def test_cosent_gradcheck():
    g = torch.Generator().manual_seed(2)
    cos = (torch.rand(6, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
    labels = torch.tensor([0, 1, 2, 1, 0, 2])
    assert torch.autograd.gradcheck(lambda c: cosent_loss(c, labels, scale=3.0), (cos,))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(-1, 1), st.integers(0, 2)), min_size=2, max_size=12))
def test_cosent_properties(rows):
    cos = torch.tensor([r[0] for r in rows], dtype=torch.float64)
    labels = torch.tensor([r[1] for r in rows])
    loss = float(cosent_loss(cos, labels))
    assert loss >= 0.0
    assert loss == pytest.approx(_loop_reference(cos, labels, 20.0), rel=1e-9, abs=1e-12)
    # invariant to a shift of all cosines and to a monotone relabelling
    assert float(cosent_loss(cos + 0.5, labels)) == pytest.approx(loss, rel=1e-9, abs=1e-12)
    assert float(cosent_loss(cos, 3 * labels + 7)) == pytest.approx(loss, rel=1e-9, abs=1e-12)


def test_cosent_dtype_device_and_errors():
    cos = torch.tensor([0.1, 0.2], dtype=torch.float32)
    assert cosent_loss(cos, torch.tensor([0, 1])).dtype == torch.float32
    with pytest.raises(ValueError):
        cosent_loss(cos, torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError):
        cosent_loss(cos, torch.tensor([0, 1]), scale=0.0)
    with pytest.raises(ValueError):
        cosent_loss(torch.tensor([1, 2]), torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        pair_cosines(torch.zeros(3, 2), torch.zeros(2, 2))


def test_cosent_batched_rows_and_label_dtypes():
    g = torch.Generator().manual_seed(5)
    cos = torch.rand(4, 30, generator=g, dtype=torch.float64) * 2 - 1
    labels = torch.randint(0, 3, (4, 30), generator=g)
    batched = cosent_loss(cos, labels)
    assert batched.shape == (4,)
    torch.testing.assert_close(batched, torch.stack([cosent_loss(cos[s], labels[s]) for s in range(4)]))
    for s in range(4):
        assert float(batched[s]) == pytest.approx(_loop_reference(cos[s], labels[s], 20.0), rel=1e-12)
    c = torch.tensor([0.1, 0.5, -0.2], dtype=torch.float64)
    ref = float(cosent_loss(c, torch.tensor([1, 0, 0])))
    assert float(cosent_loss(c, torch.tensor([True, False, False]))) == pytest.approx(ref, rel=1e-15)
    assert float(cosent_loss(c, torch.tensor([0.9, -1.5, -1.5]))) == pytest.approx(ref, rel=1e-15)
    with pytest.raises(ValueError):
        cosent_loss(c, torch.tensor([1.0, float("nan"), 0.0]))
    with pytest.raises(ValueError):
        cosent_loss(torch.tensor(0.3), torch.tensor(1))


def test_cosent_memory_is_linear_in_n():
    """n = 20000 pairs: an n x n float64 matrix would need 3.2 GB; the sorted running sum does not build it."""
    g = torch.Generator().manual_seed(6)
    cos = torch.rand(20_000, generator=g, dtype=torch.float64) * 2 - 1
    labels = torch.randint(0, 2, (20_000,), generator=g)
    loss = float(cosent_loss(cos, labels, scale=5.0))
    pos, neg = cos[labels == 1], cos[labels == 0]  # binary labels: the double sum factors exactly
    expect = math.log1p(float(torch.exp(5.0 * neg).sum() * torch.exp(-5.0 * pos).sum()))
    assert loss == pytest.approx(expect, rel=1e-10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cosent_cuda_matches_cpu():
    g = torch.Generator().manual_seed(3)
    cos, labels = torch.rand(50, generator=g) * 2 - 1, torch.randint(0, 2, (50,), generator=g)
    cpu = cosent_loss(cos, labels)
    gpu = cosent_loss(cos.cuda(), labels.cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-6)


def _brute_force_best(s, y):
    cands = np.concatenate([[s.min() - 1], np.sort(s)])
    return max(np.mean((s > t) == (y == 1)) for t in cands)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(-5, 5), st.integers(0, 1)), min_size=1, max_size=30))
def test_best_binary_threshold_is_exact(rows):
    s = np.array([r[0] / 5 for r in rows], dtype=np.float64)  # ties on purpose
    y = np.array([r[1] for r in rows])
    t, acc = best_binary_threshold(s, y)
    assert acc == pytest.approx(_brute_force_best(s, y))
    assert binary_accuracy(s, y, t) == pytest.approx(acc)


def test_powell_binary_never_below_start_and_at_most_exact():
    rng = np.random.default_rng(0)
    for seed in range(5):
        rng = np.random.default_rng(seed)
        y = rng.integers(0, 2, 300)
        s = np.tanh(0.4 + 0.5 * y + 0.4 * rng.standard_normal(300))
        t, acc = powell_binary_threshold(s, y)
        assert acc >= binary_accuracy(s, y, float(np.tanh(1.0)))
        assert acc <= best_binary_threshold(s, y)[1] + 1e-12
        assert binary_accuracy(s, y, t) == pytest.approx(acc)


def _shifted_probs(rng, n, prior, shift):
    y = rng.choice(len(prior), size=n, p=prior)
    logits = rng.standard_normal((n, len(prior))) + 1.5 * np.eye(len(prior))[y] + shift[None, :]
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True), y


def test_class_thresholds_guarantee():
    for seed in range(4):
        rng = np.random.default_rng(seed)
        p, y = _shifted_probs(rng, 400, [0.6, 0.3, 0.1], np.array([-1.0, 0.0, 1.0]))
        t = search_class_thresholds(p, y)
        assert t.shape == (3,) and np.all((t > 0) & (t < 1))
        tuned = np.mean(class_threshold_predict(p, t) == y)
        assert tuned >= np.mean(p.argmax(1) == y)


def test_class_thresholds_start_is_argmax_when_nothing_helps():
    p = np.eye(3)[[0, 1, 2, 0]] * 0.8 + 0.05
    y = np.array([0, 1, 2, 0])
    t = search_class_thresholds(p, y)
    assert np.all(class_threshold_predict(p, t) == y)


def test_threshold_errors():
    with pytest.raises(ValueError):
        best_binary_threshold([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError):
        best_binary_threshold([0.1, np.nan], [0, 1])
    with pytest.raises(ValueError):
        search_class_thresholds(np.ones((3, 1)), [0, 0, 0])
    with pytest.raises(ValueError):
        class_threshold_predict(np.ones((3, 2)), [1.0])
    with pytest.raises(ValueError):
        powell_binary_threshold([0.1, 0.2], [0, 1], start=1.0)


def test_psd_factor_reconstructs_and_truncates():
    g = torch.Generator().manual_seed(4)
    X = torch.randn(30, 8, generator=g, dtype=torch.float64)
    S = X @ X.T
    V = psd_factor(S)
    torch.testing.assert_close(V @ V.T, S, rtol=0, atol=1e-10)
    V8 = psd_factor(S, dim=8)
    assert V8.shape == (30, 8)
    torch.testing.assert_close(V8 @ V8.T, S, rtol=0, atol=1e-10)
    with pytest.raises(ValueError):
        psd_factor(-S - torch.eye(30, dtype=torch.float64))
    with pytest.raises(ValueError):
        psd_factor(torch.randn(3, 3, generator=g, dtype=torch.float64) + torch.triu(torch.ones(3, 3, dtype=torch.float64)))
