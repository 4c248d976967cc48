"""Tests of kexue_lib.global_pointer (article https://kexue.fm/archives/8373 and 8877)."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from kexue_lib import global_pointer as gp


def _loop_scores(q, k, rope=True):
    """float64 loop reference: rotate each position by pos * theta^(-2m/d), dot, scale, mask."""
    B, H, n, d = q.shape
    out = torch.full((B, H, n, n), gp.MASK_VALUE, dtype=torch.float64)
    def rot(v, p):
        w = v.clone()
        for m in range(d // 2):
            a = p * 10000.0 ** (-2 * m / d)
            c, s = math.cos(a), math.sin(a)
            w[2 * m], w[2 * m + 1] = v[2 * m] * c - v[2 * m + 1] * s, v[2 * m] * s + v[2 * m + 1] * c
        return w
    for b in range(B):
        for h in range(H):
            for i in range(n):
                for j in range(i, n):
                    qi = rot(q[b, h, i], i) if rope else q[b, h, i]
                    kj = rot(k[b, h, j], j) if rope else k[b, h, j]
                    out[b, h, i, j] = (qi @ kj) / math.sqrt(d)
    return out


@pytest.mark.parametrize("rope", [True, False])
def test_scores_match_loop(rope):
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 3, 6, 4, generator=g, dtype=torch.float64), torch.randn(2, 3, 6, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(gp.span_scores(q, k, rope=rope), _loop_scores(q, k, rope))


def test_relative_position():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(8, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
    n = 12
    def score(i, j):
        Q = torch.zeros(1, 1, n, 8, dtype=torch.float64); K = torch.zeros_like(Q)
        Q[0, 0, i], K[0, 0, j] = q, k
        return gp.span_scores(Q, K)[0, 0, i, j]
    torch.testing.assert_close(score(1, 4), score(6, 9))


def test_mask_and_padding():
    assert int(gp.span_mask(7).sum()) == 28
    m = gp.span_mask(5, lengths=torch.tensor([5, 3]))
    assert int(m[1].sum()) == 6
    h = torch.randn(2, 5, 16)
    for head in (gp.GlobalPointer(16, 3, head_size=8), gp.EfficientGlobalPointer(16, 3, head_size=8)):
        s = head(h, torch.tensor([[1] * 5, [1, 1, 1, 0, 0]]).bool())
        assert s.shape == (2, 3, 5, 5)
        assert (s[1, :, :, 3:] <= gp.MASK_VALUE / 2).all() and (s[:, :, 1, 0] <= gp.MASK_VALUE / 2).all()


def test_param_counts():
    D, d, K = 32, 8, 5
    assert sum(p.numel() for p in gp.GlobalPointer(D, K, head_size=d).parameters()) == 2 * K * d * D + 2 * K * d
    assert sum(p.numel() for p in gp.EfficientGlobalPointer(D, K, head_size=d).parameters()) == 2 * d * D + 2 * d + 4 * d * K + 2 * K


def test_loss_closed_form_and_mask():
    g = torch.Generator().manual_seed(2)
    s = torch.randn(2, 2, 4, 4, generator=g, dtype=torch.float64) * 3
    s = s.masked_fill(~gp.span_mask(4), gp.MASK_VALUE)
    y = ((torch.rand(2, 2, 4, 4, generator=g) < 0.3) & gp.span_mask(4)).double()
    ref = []
    for b in range(2):
        for t in range(2):
            v, m, yy = s[b, t][gp.span_mask(4)], None, y[b, t][gp.span_mask(4)]
            ref.append(torch.log1p(torch.exp(-v[yy > 0]).sum()) + torch.log1p(torch.exp(v[yy == 0]).sum()))
    torch.testing.assert_close(gp.global_pointer_loss(s, y), torch.stack(ref).mean())


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 5), st.integers(0, 5)), max_size=8),
       st.lists(st.tuples(st.integers(0, 2), st.integers(0, 5), st.integers(0, 5)), max_size=8))
def test_f1_tensor_equals_sets(a, b):
    a = {(t, min(i, j), max(i, j)) for t, i, j in a}; b = {(t, min(i, j), max(i, j)) for t, i, j in b}
    ya, yb = (gp.spans_to_labels([x], n=6, types=3, dtype=torch.float64) for x in (a, b))
    assert gp.decode_spans(yb * 2 - 1) == [b]
    if a or b:
        assert math.isclose(float(gp.global_pointer_f1(ya, yb * 2 - 1)), gp.span_f1([b], [a]))


def test_bad_input():
    with pytest.raises(ValueError):
        gp.GlobalPointer(16, 2, head_size=7)
    with pytest.raises(ValueError):
        gp.span_scores(torch.randn(1, 1, 4, 4), torch.randn(1, 1, 5, 4))
    with pytest.raises(ValueError):
        gp.spans_to_labels([{(0, 3, 1)}], n=4, types=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda():
    head = gp.GlobalPointer(16, 2, head_size=8).cuda()
    h = torch.randn(2, 5, 16, device="cuda")
    s = head(h)
    assert s.device.type == "cuda"
    torch.testing.assert_close(s.cpu(), head.cpu()(h.cpu()), rtol=1e-4, atol=1e-4)


def test_additive_scorer_matches_formula():
    torch.manual_seed(0)
    head = gp.AdditiveSpanScorer(6, 2, inner_size=5).double()
    h = torch.randn(1, 4, 6, dtype=torch.float64)
    s = head(h)
    for i in range(4):
        for j in range(4):
            if i > j:
                assert s[0, 0, i, j] == gp.MASK_VALUE
                continue
            z = torch.tanh(head.start(h[0, i]) + head.end(h[0, j]))
            torch.testing.assert_close(s[0, :, i, j], head.out(z))


def test_efficient_matches_loop():
    torch.manual_seed(1)
    head = gp.EfficientGlobalPointer(8, 3, head_size=4).double()
    h = torch.randn(2, 5, 8, dtype=torch.float64)
    u = head.proj(h)
    q, k = u.view(2, 5, 2, 4)[:, :, 0], u.view(2, 5, 2, 4)[:, :, 1]
    base = _loop_scores(q[:, None], k[:, None])  # (2, 1, 5, 5)
    b = head.type_bias(u).view(2, 5, 3, 2) / 2  # (B, n, K, start/end)
    ref = base + b[..., 0].permute(0, 2, 1)[:, :, :, None] + b[..., 1].permute(0, 2, 1)[:, :, None, :]
    ref = ref.masked_fill(~gp.span_mask(5), gp.MASK_VALUE)
    torch.testing.assert_close(head(h), ref)


def test_spans_to_labels_matches_loop():
    spans = [{(0, 1, 3), (2, 0, 0)}, set(), {(1, 4, 4)}]
    y = gp.spans_to_labels(spans, n=5, types=3, dtype=torch.int64)
    ref = torch.zeros(3, 3, 5, 5, dtype=torch.int64)
    for b, ss in enumerate(spans):
        for t, i, j in ss:
            ref[b, t, i, j] = 1
    assert torch.equal(y, ref)
    assert gp.spans_to_labels([set()], n=2, types=1).sum() == 0


def test_bce_loss_is_mean_over_valid_cells():
    g = torch.Generator().manual_seed(4)
    s = torch.randn(2, 2, 5, 5, generator=g, dtype=torch.float64).masked_fill(~gp.span_mask(5), gp.MASK_VALUE)
    y = ((torch.rand(2, 2, 5, 5, generator=g) < 0.2) & gp.span_mask(5)).double()
    v = gp.span_mask(5).expand(2, 2, 5, 5)
    p = torch.sigmoid(s[v])
    ref = -(y[v] * p.log() + (1 - y[v]) * (1 - p).log()).mean()
    torch.testing.assert_close(gp.global_pointer_bce_loss(s, y), ref)


def test_span_token_f1_matches_loop():
    gold = torch.tensor([[1, 3], [0, 0]])
    f = gp.span_token_f1(gold, 5, dtype=torch.float64)
    for b, (a, e) in enumerate(gold.tolist()):
        for i in range(5):
            for j in range(5):
                if i > j:
                    assert f[b, i, j] == 0
                    continue
                ov = len(set(range(i, j + 1)) & set(range(a, e + 1)))
                assert math.isclose(float(f[b, i, j]), 2 * ov / (j - i + 1 + e - a + 1))
    with pytest.raises(ValueError):
        gp.span_token_f1(torch.tensor([[3, 1]]), 5)


def test_span_softmax_and_expected_f1_loss():
    g = torch.Generator().manual_seed(5)
    s = torch.randn(2, 6, 6, generator=g, dtype=torch.float64).masked_fill(~gp.span_mask(6), gp.MASK_VALUE)
    logp = gp.span_log_softmax(s)
    valid = gp.span_mask(6)
    torch.testing.assert_close(logp.exp().sum((-1, -2)), torch.ones(2, dtype=torch.float64))
    assert torch.isinf(logp[:, ~valid]).all()
    f1 = gp.span_token_f1(torch.tensor([[1, 2], [3, 5]]), 6, dtype=torch.float64)
    lam = 0.3
    ref = []
    for b in range(2):
        p = torch.softmax(s[b][valid], 0)
        ref.append(-(p * f1[b][valid]).sum() + lam * (p * p.log()).sum())
    torch.testing.assert_close(gp.expected_f1_loss(s, f1, lam=lam), torch.stack(ref).mean())
    with pytest.raises(ValueError):
        gp.expected_f1_loss(s, f1, lam=-1.0)
    with pytest.raises(ValueError):
        gp.span_log_softmax(torch.full((1, 3, 3), gp.MASK_VALUE))


def test_expected_f1_loss_minimiser_is_gibbs():
    f1 = gp.span_token_f1(torch.tensor([[2, 3]]), 5, dtype=torch.float64)
    valid = gp.span_mask(5)
    lam = 0.25
    free = torch.zeros(int(valid.sum()), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([free], max_iter=300, tolerance_grad=1e-12, tolerance_change=1e-14, line_search_fn="strong_wolfe")
    def scores():
        return torch.full((1, 5, 5), gp.MASK_VALUE, dtype=torch.float64).masked_scatter(valid[None], free)
    def closure():
        opt.zero_grad()
        loss = gp.expected_f1_loss(scores(), f1, lam=lam)
        loss.backward()
        return loss
    opt.step(closure)
    p = gp.span_log_softmax(scores()).exp()[0][valid]
    torch.testing.assert_close(p, torch.softmax(f1[0][valid] / lam, 0), atol=1e-6, rtol=0)
