import math

import pytest
import torch

from kexue_lib.losses import info_nce_logits, info_nce_loss


def _loop_reference(a, b, tau):
    """The loss written out pair by pair in float64."""
    a, b = a.double(), b.double()
    n = a.shape[0]
    total = 0.0
    for x, y in ((a, b), (b, a)):
        for i in range(n):
            cos = [float(x[i] @ y[j] / (x[i].norm() * y[j].norm())) / tau for j in range(n)]
            total += math.log(sum(math.exp(c) for c in cos)) - cos[i]
    return total / (2 * n)


@pytest.mark.parametrize("tau", [0.05, 0.3, 1.0])
def test_info_nce_matches_loop_reference(tau):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    assert float(info_nce_loss(a.double(), b.double(), tau=tau)) == pytest.approx(_loop_reference(a, b, tau), rel=1e-12)


def test_info_nce_scale_invariant_and_batched():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(3, 6, 4, generator=g, dtype=torch.float64), torch.randn(3, 6, 4, generator=g, dtype=torch.float64)
    full = info_nce_loss(a, 2.5 * b, tau=0.5)
    per = torch.stack([info_nce_loss(a[i], b[i], tau=0.5) for i in range(3)]).mean()
    assert float(full) == pytest.approx(float(per), rel=1e-12)
    assert info_nce_logits(a, b, tau=0.5).shape == (3, 6, 6)


def test_info_nce_rejects_bad_input():
    a = torch.randn(4, 3)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError):
            info_nce_loss(a, a, tau=bad)
    with pytest.raises(ValueError):
        info_nce_loss(a, torch.randn(4, 2), tau=1.0)
    with pytest.raises(ValueError):
        info_nce_loss(a[:1], a[:1], tau=1.0)
    with pytest.raises(ValueError):
        info_nce_loss(torch.zeros(4, 3), a, tau=1.0)
    with pytest.raises(ValueError):
        info_nce_loss(a.long(), a.long(), tau=1.0)


# ---- ZLPR (kexue.fm/archives/9064) ------------------------------------------------------------------------------
from hypothesis import given, settings
from hypothesis import strategies as st

from kexue_lib.losses import (
    expected_calibration_error,
    multilabel_categorical_crossentropy,
    sparse_multilabel_categorical_crossentropy,
    zlpr_probs,
)


def _zlpr_loop(s, t, keep=None):
    """The soft ZLPR loss written out class by class in float64 (``keep`` lists the classes not masked)."""
    out = []
    for row_s, row_t in zip(s.double().tolist(), t.double().tolist()):
        idx = range(len(row_s)) if keep is None else keep
        pos = 1.0 + sum(row_t[i] * math.exp(-row_s[i]) for i in idx)
        neg = 1.0 + sum((1 - row_t[i]) * math.exp(row_s[i]) for i in idx)
        out.append(math.log(pos) + math.log(neg))
    return out


def test_zlpr_matches_loop_reference_soft_and_hard():
    g = torch.Generator().manual_seed(0)
    s = 3 * torch.randn(6, 9, generator=g, dtype=torch.float64)
    t = torch.rand(6, 9, generator=g, dtype=torch.float64)
    assert multilabel_categorical_crossentropy(s, t).tolist() == pytest.approx(_zlpr_loop(s, t), rel=1e-12)
    hard = (torch.rand(6, 9, generator=g) < 0.3)
    assert multilabel_categorical_crossentropy(s, hard).tolist() == pytest.approx(_zlpr_loop(s, hard), rel=1e-12)


def test_zlpr_batched_shape_and_leading_axes():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 3, 7, generator=g), torch.rand(2, 3, 7, generator=g)
    out = multilabel_categorical_crossentropy(s, t)
    assert out.shape == (2, 3)
    torch.testing.assert_close(out.reshape(-1), multilabel_categorical_crossentropy(s.reshape(6, 7), t.reshape(6, 7)))


def test_zlpr_gradcheck_float64():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.rand(4, 6, generator=g, dtype=torch.float64)
    t[0, 0], t[1, 1] = 0.0, 1.0
    assert torch.autograd.gradcheck(lambda x: multilabel_categorical_crossentropy(x, t), (s,))
    s_m = s.detach().clone()
    s_m[2, 3] = -1e7
    s_m.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: multilabel_categorical_crossentropy(x, t, mask_value=-1e6), (s_m,))


def test_zlpr_zero_gradient_at_half_logit():
    t = torch.tensor([[0.1, 0.5, 0.9, 0.3, 0.99]], dtype=torch.float64)
    s = (0.5 * torch.log(t / (1 - t))).requires_grad_(True)
    multilabel_categorical_crossentropy(s, t).sum().backward()
    assert float(s.grad.abs().max()) < 1e-14
    torch.testing.assert_close(zlpr_probs(s.detach()), t)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("masked", [-math.inf, -1e4])
def test_zlpr_masked_classes_excluded_no_nan(dtype, masked):
    g = torch.Generator().manual_seed(3)
    s = torch.randn(3, 6, generator=g)
    t = torch.rand(3, 6, generator=g)
    t[:, 2] = 0.0
    ref = _zlpr_loop(s, t, keep=[0, 1, 3, 4, 5])
    s_m = s.clone()
    s_m[:, 2] = masked
    x = s_m.to(dtype).requires_grad_(True)
    loss = multilabel_categorical_crossentropy(x, t.to(dtype), mask_value=-1e3)
    loss.sum().backward()
    assert loss.dtype == dtype and bool(torch.isfinite(loss).all()) and bool(torch.isfinite(x.grad).all())
    assert float(x.grad[:, 2].abs().max()) == 0.0
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert loss.float().tolist() == pytest.approx(ref, rel=tol)
    # a smoothed (nonzero) target on a masked class is ignored too: no leak back
    t2 = t.clone()
    t2[:, 2] = 0.05
    loss2 = multilabel_categorical_crossentropy(s_m.to(dtype), t2.to(dtype), mask_value=-1e3)
    assert loss2.float().tolist() == pytest.approx(_zlpr_loop(s, t2, keep=[0, 1, 3, 4, 5]), rel=tol)


def test_zlpr_very_negative_score_with_zero_target_needs_no_mask_value():
    s = torch.tensor([[0.3, -1e7, -0.2]], dtype=torch.float64)
    t = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    got = float(multilabel_categorical_crossentropy(s, t))
    assert got == pytest.approx(_zlpr_loop(s[:, [0, 2]], t[:, [0, 2]])[0], rel=1e-12)
    # the naive clipped version leaks: -s + log(eps) is about 1e7
    eps = 1e-7
    tc = t.clamp(eps, 1 - eps)
    naive = torch.logsumexp(torch.cat([-s + tc.log(), torch.zeros(1, 1, dtype=s.dtype)], -1), -1)
    assert float(naive) > 1e6


def test_zlpr_sparse_equals_dense():
    g = torch.Generator().manual_seed(4)
    s = torch.randn(4, 8, generator=g, dtype=torch.float64)
    idx = torch.tensor([[0, 3], [5, -1], [-1, -1], [7, 1]])
    dense = torch.zeros(4, 8, dtype=torch.float64)
    for r, row in enumerate(idx.tolist()):
        for c in row:
            if c >= 0:
                dense[r, c] = 1.0
    torch.testing.assert_close(sparse_multilabel_categorical_crossentropy(s, idx),
                               multilabel_categorical_crossentropy(s, dense), rtol=0, atol=0)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.floats(-20, 20), st.floats(0, 1))
def test_zlpr_property_below_bce_and_nonnegative(n, shift, tval):
    g = torch.Generator().manual_seed(n)
    s = torch.randn(2, n, generator=g, dtype=torch.float64) + shift
    t = torch.full((2, n), tval, dtype=torch.float64)
    loss = multilabel_categorical_crossentropy(s, t)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(s, t, reduction="none").sum(-1)
    assert bool((loss >= 0).all())
    # at hard labels ZLPR is BCE with the (nonnegative) cross terms dropped
    if tval in (0.0, 1.0):
        assert bool((loss <= bce + 1e-9).all())


def test_zlpr_rejects_bad_input():
    s = torch.randn(2, 3)
    with pytest.raises(ValueError):
        multilabel_categorical_crossentropy(s, torch.rand(2, 4))
    with pytest.raises(ValueError):
        multilabel_categorical_crossentropy(s, torch.full((2, 3), 1.5))
    with pytest.raises(ValueError):
        multilabel_categorical_crossentropy(s, torch.full((2, 3), math.nan))
    with pytest.raises(ValueError):
        multilabel_categorical_crossentropy(s, torch.rand(2, 3), eps=0.0)
    with pytest.raises(ValueError):
        multilabel_categorical_crossentropy(s.long(), torch.rand(2, 3))
    bad = s.clone()
    bad[0, 0] = math.nan
    with pytest.raises(ValueError):
        multilabel_categorical_crossentropy(bad, torch.rand(2, 3))
    with pytest.raises(ValueError):
        sparse_multilabel_categorical_crossentropy(s, torch.tensor([[0, 0], [1, -1]]))
    with pytest.raises(ValueError):
        sparse_multilabel_categorical_crossentropy(s, torch.tensor([[3], [1]]))
    with pytest.raises(ValueError):
        sparse_multilabel_categorical_crossentropy(s, torch.tensor([[0.0], [1.0]]))
    with pytest.raises(ValueError):
        zlpr_probs(torch.tensor([1, 2]))
    with pytest.raises(ValueError):
        expected_calibration_error(torch.rand(5), torch.rand(4))
    with pytest.raises(ValueError):
        expected_calibration_error(torch.rand(5), torch.rand(5), bins=0)


def test_expected_calibration_error_loop_reference():
    g = torch.Generator().manual_seed(5)
    p, y = torch.rand(200, generator=g, dtype=torch.float64), (torch.rand(200, generator=g) < 0.4).double()
    total = 0.0
    for b in range(10):
        sel = [i for i in range(200) if min(int(p[i] * 10), 9) == b]
        if sel:
            total += len(sel) / 200 * abs(sum(float(p[i]) for i in sel) / len(sel) - sum(float(y[i]) for i in sel) / len(sel))
    assert float(expected_calibration_error(p, y)) == pytest.approx(total, rel=1e-12)
    assert float(expected_calibration_error(p, p)) == 0.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_zlpr_cuda_matches_cpu():
    g = torch.Generator().manual_seed(6)
    s, t = torch.randn(5, 7, generator=g), torch.rand(5, 7, generator=g)
    s[0, 0] = -math.inf
    out = multilabel_categorical_crossentropy(s.cuda(), t.cuda())
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), multilabel_categorical_crossentropy(s, t))


def test_part_vi_losses_are_reexported_from_one_module():
    from kexue_lib import cosent, emo, losses
    assert losses.cosent_loss is cosent.cosent_loss
    assert losses.emo_loss is emo.emo_loss and losses.emo_ce_mix is emo.emo_ce_mix


# ---- soft targets for ZLPR: label smoothing and mixup (kexue.fm/archives/9064) ------------------------------------
from kexue_lib.losses import mixup, smooth_labels


def test_smooth_labels_values_dtype_and_soft_inputs():
    y = torch.tensor([[1, 0, 1], [0, 0, 1]])
    t = smooth_labels(y, 0.1)
    assert t.dtype == torch.get_default_dtype()
    torch.testing.assert_close(t, torch.tensor([[0.9, 0.1, 0.9], [0.1, 0.1, 0.9]]))
    soft = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    torch.testing.assert_close(smooth_labels(soft, 0.2), 0.8 * soft + 0.2 * (1 - soft), rtol=1e-15, atol=0)
    assert smooth_labels(soft, 0.2).dtype == torch.float64
    torch.testing.assert_close(smooth_labels(soft, 0.0), soft, rtol=0, atol=0)
    torch.testing.assert_close(smooth_labels(y.bool(), 0.3), torch.tensor([[0.7, 0.3, 0.7], [0.3, 0.3, 0.7]]))


def test_smooth_labels_zlpr_optimum_reads_back_the_smoothed_target():
    # the soft loss at smoothed targets is minimized where sigma(2s) = 1 - eps (positive) or eps (negative)
    t = smooth_labels(torch.tensor([[1.0, 0.0, 0.0, 1.0]], dtype=torch.float64), 0.1)
    s = (0.5 * torch.log(t / (1 - t))).requires_grad_(True)
    multilabel_categorical_crossentropy(s, t).sum().backward()
    assert float(s.grad.abs().max()) < 1e-14


def test_smooth_labels_rejects_bad_input():
    y = torch.tensor([1.0, 0.0])
    for bad in (-0.1, 0.5, 0.7, math.nan):
        with pytest.raises(ValueError):
            smooth_labels(y, bad)
    with pytest.raises(ValueError):
        smooth_labels(torch.tensor([1.5, 0.0]), 0.1)
    with pytest.raises(ValueError):
        smooth_labels([1.0, 0.0], 0.1)


def test_mixup_loop_reference_scalar_and_per_sample_lam():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(5, 3, 2, generator=g, dtype=torch.float64)
    y = (torch.rand(5, 4, generator=g) < 0.5).double()
    perm = torch.randperm(5, generator=g)
    xm, ym = mixup(x, y, lam=0.3, perm=perm)
    for i in range(5):
        torch.testing.assert_close(xm[i], 0.3 * x[i] + 0.7 * x[int(perm[i])], rtol=1e-15, atol=0)
        torch.testing.assert_close(ym[i], 0.3 * y[i] + 0.7 * y[int(perm[i])], rtol=1e-15, atol=0)
    lam = torch.rand(5, generator=g, dtype=torch.float64)
    xm, ym = mixup(x, y, lam=lam, perm=perm)
    for i in range(5):
        li = float(lam[i])
        torch.testing.assert_close(xm[i], li * x[i] + (1 - li) * x[int(perm[i])], rtol=1e-14, atol=1e-15)
        torch.testing.assert_close(ym[i], li * y[i] + (1 - li) * y[int(perm[i])], rtol=1e-14, atol=1e-15)
    # lam = 1 returns the batch unchanged; 0/1 integer labels become x's dtype
    xm, ym = mixup(x.float(), y.long(), lam=1.0, perm=perm)
    assert ym.dtype == torch.float32
    torch.testing.assert_close(xm, x.float(), rtol=0, atol=0)
    assert bool(((ym >= 0) & (ym <= 1)).all())


def test_mixup_rejects_bad_input():
    x, y = torch.randn(4, 3), torch.rand(4, 2)
    perm = torch.tensor([1, 0, 3, 2])
    with pytest.raises(ValueError):
        mixup(x, y, lam=1.2, perm=perm)
    with pytest.raises(ValueError):
        mixup(x, y, lam=0.5, perm=torch.tensor([0, 0, 1, 2]))
    with pytest.raises(ValueError):
        mixup(x, y, lam=0.5, perm=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError):
        mixup(x, y, lam=0.5, perm=perm.float())
    with pytest.raises(ValueError):
        mixup(x, torch.rand(3, 2), lam=0.5, perm=perm)
    with pytest.raises(ValueError):
        mixup(x, y + 1.0, lam=0.5, perm=perm)
    with pytest.raises(ValueError):
        mixup(x, y, lam=torch.rand(3), perm=perm)
    with pytest.raises(ValueError):
        mixup(x.long(), y, lam=0.5, perm=perm)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mixup_and_smoothing_follow_the_device():
    x, y = torch.randn(4, 3, device="cuda"), torch.rand(4, 2, device="cuda")
    xm, ym = mixup(x, y, lam=torch.rand(4, device="cuda"), perm=torch.tensor([1, 0, 3, 2], device="cuda"))
    assert xm.device.type == "cuda" and ym.device.type == "cuda"
    assert smooth_labels(y, 0.1).device.type == "cuda"
