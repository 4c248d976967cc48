"""Tests of kexue_lib.attention: float64 loop references, causality proofs, Performer features, bad input."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kexue_lib.attention import (
    attention_entropy, attention_scale, attention_weights, causal_mask, linear_attention, performer_features,
    performer_omega, performer_variance, relu2_attention, relu2_weights, softmax_attention,
)

F64 = torch.float64


def qkv(b=2, h=3, n=9, d=8, dv=5, n_k=None, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    n_k = n if n_k is None else n_k
    return (torch.randn(b, h, n, d, generator=g, dtype=dtype), torch.randn(b, h, n_k, d, generator=g, dtype=dtype),
            torch.randn(b, h, n_k, dv, generator=g, dtype=dtype))


# ---------------------------------------------------------------- plain-loop float64 references
def ref_softmax(q, k, v, scale_of_n, visible):
    """One query at a time: visible(i, j) -> bool, scale_of_n(count) -> float."""
    out = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=F64)
    for i in range(q.shape[-2]):
        js = [j for j in range(k.shape[-2]) if visible(i, j)]
        s = torch.stack([(q[..., i, :] * k[..., j, :]).sum(-1) for j in js], -1) * scale_of_n(len(js))
        w = torch.exp(s - s.amax(-1, keepdim=True))
        w = w / w.sum(-1, keepdim=True)
        out[..., i, :] = sum(w[..., t, None] * v[..., j, :] for t, j in enumerate(js))
    return out


def ref_linear(fq, fk, v, causal, eps=1e-6):
    out = torch.zeros(*fq.shape[:-1], v.shape[-1], dtype=F64)
    for i in range(fq.shape[-2]):
        num, den = 0.0, 0.0
        for j in range(i + 1 if causal else fk.shape[-2]):
            w = (fq[..., i, :] * fk[..., j, :]).sum(-1, keepdim=True)
            num, den = num + w * v[..., j, :], den + w
        out[..., i, :] = num / (den + eps)
    return out


@pytest.mark.parametrize("scale", [None, "standard", "log_n", "log512", 0.37])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("use_mask", [False, True])
def test_softmax_matches_loop_reference(scale, causal, use_mask):
    q, k, v = qkv()
    d = q.shape[-1]
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(9, 9, generator=g) > 0.4
    mask |= torch.eye(9, dtype=torch.bool)  # every row sees a key
    got = softmax_attention(q, k, v, scale=scale, causal=causal, mask=mask if use_mask else None, kappa=1.3)

    def visible(i, j):
        return (not causal or j <= i) and (not use_mask or bool(mask[i, j]))

    def scale_of_n(n):
        return {None: 1 / math.sqrt(d), "standard": 1 / math.sqrt(d), "log_n": 1.3 * math.log(n) / d,
                "log512": math.log(n) / math.log(512) / math.sqrt(d), 0.37: 0.37}[scale]

    torch.testing.assert_close(got, ref_softmax(q, k, v, scale_of_n, visible), rtol=1e-10, atol=1e-12)
    w = attention_weights(q, k, scale=scale, causal=causal, mask=mask if use_mask else None, kappa=1.3)
    torch.testing.assert_close(w @ v, got, rtol=1e-10, atol=1e-12)


def test_softmax_float32_and_3d_inputs():
    q, k, v = qkv()
    out32 = softmax_attention(q.float(), k.float(), v.float(), scale="log512", causal=True)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), softmax_attention(q, k, v, scale="log512", causal=True),
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(softmax_attention(q[:, 0], k[:, 0], v[:, 0]), softmax_attention(q, k, v)[:, 0])


def test_cross_attention_causal_is_bottom_right_aligned():
    q, k, v = qkv(n=4, n_k=7)
    m = causal_mask(4, 7)
    assert m[-1].all() and m[0].sum() == 4
    got = softmax_attention(q, k, v, causal=True)
    ref = ref_softmax(q, k, v, lambda n: 1 / math.sqrt(8), lambda i, j: j <= i + 3)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_attention_scale_named_values():
    assert attention_scale("standard", 100, 64) == pytest.approx(1 / 8)
    assert attention_scale(None, 100, 64) == pytest.approx(1 / 8)
    assert attention_scale("log512", 512, 64) == pytest.approx(1 / 8)
    assert attention_scale("log512", 64, 16, base=64) == pytest.approx(1 / 4)
    assert attention_scale("log_n", 1000, 64, kappa=2.0) == pytest.approx(2 * math.log(1000) / 64)
    per_row = attention_scale("log_n", torch.tensor([1, 10]), 4)
    torch.testing.assert_close(per_row, torch.tensor([0.0, math.log(10) / 4], dtype=F64))


# ---------------------------------------------------------------- relu^2 (GAU)
def test_relu2_reference_and_lengths():
    q, k, v = qkv()
    s = q @ k.transpose(-1, -2) / math.sqrt(8)
    a = torch.zeros_like(s)
    for i in range(9):
        for j in range(i + 1):
            a[..., i, j] = torch.clamp(s[..., i, j], min=0) ** 2 / (i + 1)
    torch.testing.assert_close(relu2_weights(q, k, causal=True), a)
    torch.testing.assert_close(relu2_attention(q, k, v, causal=True), a @ v)
    # a fixed length L and the actual length n differ by the factor n / L exactly
    torch.testing.assert_close(relu2_attention(q, k, v, length=512) * 512, relu2_attention(q, k, v) * 9)
    torch.testing.assert_close(relu2_attention(q, k, v, length=9), relu2_attention(q, k, v))


# ---------------------------------------------------------------- linear attention
@pytest.mark.parametrize("fmap", ["elu1", "relu", "exp"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_linear_matches_loop_reference(fmap, causal, chunk):
    q, k, v = qkv(n=11)
    f = {"elu1": lambda x: torch.nn.functional.elu(x) + 1, "relu": torch.relu, "exp": torch.exp}[fmap]
    fq = f(q) if fmap != "exp" else torch.exp(q - q.amax(-1, keepdim=True))
    got = linear_attention(q, k, v, causal=causal, feature_map=fmap, chunk_size=chunk)
    torch.testing.assert_close(got, ref_linear(fq, f(k), v, causal), rtol=1e-10, atol=1e-12)


def test_linear_without_eps_equals_normalised_kernel_matrix():
    q, k, v = qkv(n=10)
    fq, fk = torch.exp(q / 2), torch.exp(k / 2)
    a = (fq @ fk.transpose(-1, -2)).tril()
    torch.testing.assert_close(linear_attention(fq, fk, v, feature_map=None, causal=True, eps=0.0, chunk_size=3),
                               (a / a.sum(-1, keepdim=True)) @ v)


def test_linear_float32_matches_float64():
    q, k, v = qkv(n=300)
    for causal in (False, True):
        got = linear_attention(q.float(), k.float(), v.float(), causal=causal)
        torch.testing.assert_close(got.double(), linear_attention(q, k, v, causal=causal), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- causality proofs
def _future_edit(k, v, t, seed):
    g = torch.Generator().manual_seed(seed)
    k2, v2 = k.clone(), v.clone()
    k2[..., t:, :] = 5 * torch.randn(k2[..., t:, :].shape, generator=g, dtype=k.dtype)
    v2[..., t:, :] = 5 * torch.randn(v2[..., t:, :].shape, generator=g, dtype=v.dtype)
    return k2, v2


CAUSAL_VARIANTS = {
    "softmax_sdpa": lambda q, k, v: softmax_attention(q, k, v, causal=True),
    "softmax_log512": lambda q, k, v: softmax_attention(q, k, v, causal=True, scale="log512"),
    "softmax_log_n_mask": lambda q, k, v: softmax_attention(q, k, v, causal=True, scale="log_n",
                                                            mask=torch.ones(q.shape[-2], k.shape[-2]).bool()),
    "relu2_actual": lambda q, k, v: relu2_attention(q, k, v, causal=True),
    "relu2_fixed": lambda q, k, v: relu2_attention(q, k, v, causal=True, length=64),
    "linear_elu1": lambda q, k, v: linear_attention(q, k, v, causal=True, chunk_size=3),
    "linear_exp": lambda q, k, v: linear_attention(q, k, v, causal=True, feature_map="exp", chunk_size=5),
}


@pytest.mark.parametrize("name", list(CAUSAL_VARIANTS))
@settings(max_examples=8, deadline=None)
@given(n=st.integers(2, 17), t=st.integers(1, 16), seed=st.integers(0, 10_000))
def test_every_causal_variant_ignores_the_future(name, n, t, seed):
    t = min(t, n - 1)
    q, k, v = qkv(b=1, h=2, n=n, seed=seed, dtype=torch.float32)
    k2, v2 = _future_edit(k, v, t, seed + 1)
    # The edited key at position t points along q_t, so its score is positive for every variant: relu^2 would
    # otherwise zero a negative score and the "edit reaches the present" half could not see the change.
    k2[..., t, :] = 3 * q[..., t, :]
    fn = CAUSAL_VARIANTS[name]
    before, after = fn(q, k, v), fn(q, k2, v2)
    torch.testing.assert_close(after[..., :t, :], before[..., :t, :], rtol=0, atol=1e-6)
    assert not torch.allclose(after[..., t:, :], before[..., t:, :])  # the edit does reach the present


def test_performer_features_in_causal_linear_attention_are_causal():
    q, k, v = qkv(b=1, h=2, n=40, d=16, dtype=torch.float32)
    omega = performer_omega(64, 16, generator=torch.Generator().manual_seed(0))
    k2, v2 = _future_edit(k, v, 20, 7)
    out = linear_attention(performer_features(q / 2, omega), performer_features(k / 2, omega), v,
                           feature_map=None, causal=True)
    out2 = linear_attention(performer_features(q / 2, omega), performer_features(k2 / 2, omega), v2,
                            feature_map=None, causal=True)
    assert torch.equal(out[..., :20, :], out2[..., :20, :])


def test_performer_pytorch_causal_attention_leaks_future_keys():
    """Regression: performer-pytorch 1.1.x shifts key features by a max over the whole sequence
    (future keys included) before adding eps, so a future key changes past outputs. Ours does not."""
    pp = pytest.importorskip("performer_pytorch")
    torch.manual_seed(0)
    attn = pp.FastAttention(dim_heads=16, nb_features=64, causal=True)
    q, k, v = qkv(b=1, h=2, n=40, d=16, dtype=torch.float32)
    k2 = k.clone()
    k2[..., 30, :] *= 8  # one loud key in the future of positions 0..29
    leak = (attn(q, k2, v) - attn(q, k, v))[..., :30, :].abs().max().item()
    assert leak > 1e-2, leak
    omega = attn.projection_matrix
    ours = [linear_attention(performer_features(q / 2, omega), performer_features(kk / 2, omega), v,
                             feature_map=None, causal=True) for kk in (k, k2)]
    assert torch.equal(ours[0][..., :30, :], ours[1][..., :30, :])


def test_performer_pytorch_bidirectional_agrees_with_ours():
    """Peer equivalence: with its eps set to 0, performer-pytorch's features differ from ours by a
    per-query and a global key factor, which cancel in the normalised bidirectional attention."""
    pytest.importorskip("performer_pytorch")
    pp = pytest.importorskip("performer_pytorch.performer_pytorch")
    q, k, v = qkv(b=1, h=2, n=30, d=16, dtype=F64)
    omega = performer_omega(256, 16, generator=torch.Generator().manual_seed(0), dtype=F64)
    theirs = pp.linear_attention(pp.softmax_kernel(q, projection_matrix=omega, is_query=True, eps=0.0),
                                 pp.softmax_kernel(k, projection_matrix=omega, is_query=False, eps=0.0), v)
    c = 16 ** -0.25
    ours = linear_attention(performer_features(q * c, omega), performer_features(k * c, omega), v,
                            feature_map=None, eps=0.0)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- Performer features
def test_performer_estimator_is_unbiased():
    g = torch.Generator().manual_seed(0)
    x = torch.full((2, 6), 0.4, dtype=F64)
    x[1, :3] = 0.2
    exact = math.exp(float(x[0] @ x[1]))
    for orthogonal in (False, True):
        om = performer_omega(400 * 24, 6, orthogonal=orthogonal, generator=g, dtype=F64)
        phi = performer_features(x, om) * math.sqrt(om.shape[0])  # per-row features, no 1/sqrt(m)
        est = (phi[0] * phi[1]).reshape(400, 24).mean(1)  # 400 independent estimates with m = 24
        se = est.std() / math.sqrt(len(est))
        assert abs(est.mean() - exact) < 4 * se, (orthogonal, est.mean(), exact, se)
        assert abs(est.mean() - 1.0) > 4 * se  # the rival exp(0) = 1 is rejected


def test_orthogonal_omega_blocks():
    om = performer_omega(10, 4, orthogonal=True, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert om.shape == (10, 4)
    for blk in (om[:4], om[4:8], om[8:]):
        unit = blk / blk.norm(dim=1, keepdim=True)
        torch.testing.assert_close(unit @ unit.T, torch.eye(len(blk), dtype=F64))
    sq = performer_omega(20000, 5, orthogonal=True, generator=torch.Generator().manual_seed(1), dtype=F64)
    assert abs(sq.square().sum(1).mean() - 5) < 0.1  # chi^2(d) norms: E|w|^2 = d


def test_performer_features_positive_and_follow_dtype():
    om = performer_omega(8, 4)
    x = torch.randn(3, 5, 4, dtype=torch.bfloat16)
    phi = performer_features(x, om)
    assert phi.dtype == torch.bfloat16 and phi.shape == (3, 5, 8) and bool((phi > 0).all())


# ---------------------------------------------------------------- entropy
def test_entropy_values():
    assert attention_entropy(torch.full((3, 8), 1 / 8)).allclose(torch.full((3,), math.log(8)))
    assert attention_entropy(torch.eye(4)).abs().max() == 0
    s = torch.randn(2, 5, 7, dtype=F64) * 30
    torch.testing.assert_close(attention_entropy(s, logits=True), attention_entropy(s.softmax(-1)))
    p = s.softmax(-1)
    torch.testing.assert_close(attention_entropy(p), -(p * p.log()).nan_to_num().sum(-1))


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("call", [
    lambda q, k, v: softmax_attention(q[0, 0, 0], k, v),
    lambda q, k, v: softmax_attention(q, k[..., :-1], v),
    lambda q, k, v: softmax_attention(q, k, v[..., :-1, :]),
    lambda q, k, v: softmax_attention(q.long(), k.long(), v.long()),
    lambda q, k, v: softmax_attention(q.float(), k, v),
    lambda q, k, v: softmax_attention(q, k, v, scale="log1024"),
    lambda q, k, v: softmax_attention(q, k, v, scale=-1.0),
    lambda q, k, v: softmax_attention(q, k, v, scale="log_n", kappa=0.0),
    lambda q, k, v: softmax_attention(q, k, v, scale="log512", base=1.0),
    lambda q, k, v: softmax_attention(q, k, v, mask=torch.ones(9, 9)),
    lambda q, k, v: softmax_attention(q, k, v, mask=torch.ones(9, 8, dtype=torch.bool)),
    lambda q, k, v: softmax_attention(q, k, v, mask=torch.zeros(9, 9, dtype=torch.bool)),
    lambda q, k, v: softmax_attention(q, k[..., :4, :], v[..., :4, :], causal=True),
    lambda q, k, v: relu2_attention(q, k, v, length=0),
    lambda q, k, v: relu2_attention(q, k, v, length="fixed"),
    lambda q, k, v: relu2_attention(q, k, v, scale="log512"),
    lambda q, k, v: linear_attention(q, k, v, feature_map="tanh"),
    lambda q, k, v: linear_attention(q, k, v, chunk_size=0),
    lambda q, k, v: linear_attention(q, k, v, eps=-1.0),
    lambda q, k, v: linear_attention(q, k[..., :4, :], v[..., :4, :], causal=True),
    lambda q, k, v: linear_attention(q, k, v, feature_map=lambda x: x[..., :1, :]),
    lambda q, k, v: performer_features(q, torch.randn(4, 7)),
    lambda q, k, v: performer_features(q, torch.randn(4)),
    lambda q, k, v: performer_omega(0, 3),
    lambda q, k, v: attention_entropy(-torch.ones(3)),
    lambda q, k, v: attention_entropy([0.5, 0.5]),
    lambda q, k, v: causal_mask(5, 3),
    lambda q, k, v: causal_mask(2.0),
])
def test_bad_input_raises_value_error(call):
    with pytest.raises(ValueError):
        call(*qkv())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    q, k, v = qkv(dtype=torch.float32)
    for fn in CAUSAL_VARIANTS.values():
        torch.testing.assert_close(fn(q.cuda(), k.cuda(), v.cuda()).cpu(), fn(q, k, v), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- exact variance of the estimator
@pytest.mark.parametrize("orthogonal", [False, True])
def test_performer_variance_matches_monte_carlo(orthogonal):
    g = torch.Generator().manual_seed(3)
    q = torch.tensor([0.5, -0.2, 0.1, 0.3], dtype=F64)
    k = torch.tensor([0.2, 0.4, -0.3, 0.1], dtype=F64)
    reps, m = 40_000, 4
    om = performer_omega(reps * m, 4, orthogonal=orthogonal, generator=g, dtype=F64)
    phi = performer_features(torch.stack([q, k]), om) * math.sqrt(reps * m)
    est = (phi[0] * phi[1]).reshape(reps, m).mean(1)
    sq = (est - math.exp(float(q @ k))) ** 2
    se = float(sq.std()) / math.sqrt(reps)
    assert abs(float(sq.mean()) - performer_variance(q, k, m, orthogonal=orthogonal)) < 4 * se


def test_performer_variance_closed_forms():
    q = torch.tensor([0.3, 0.4], dtype=F64)
    k = torch.tensor([0.1, -0.2], dtype=F64)
    a2, qk = float((q + k).square().sum()), float(q @ k)
    assert performer_variance(q, k, 5) == pytest.approx(math.exp(2 * qk) * math.expm1(a2) / 5, rel=1e-12)
    # orthogonal rows reduce the variance; one row per block (m = 1) changes nothing
    assert performer_variance(q, k, 2, orthogonal=True) < performer_variance(q, k, 2)
    assert performer_variance(q, k, 1, orthogonal=True) == pytest.approx(performer_variance(q, k, 1), rel=1e-12)
    zero = torch.zeros(2, dtype=F64)
    assert performer_variance(zero, zero, 3, orthogonal=True) == 0.0


@pytest.mark.parametrize("call", [
    lambda: performer_variance(torch.zeros(3), torch.zeros(4), 2),
    lambda: performer_variance(torch.zeros(3), torch.zeros(3), 0),
    lambda: performer_variance(torch.zeros(1, 3), torch.zeros(1, 3), 2),
])
def test_performer_variance_bad_input(call):
    with pytest.raises(ValueError):
        call()


# ---------------------------------------------------------------- finite-n entropy expansion
from kexue_lib.attention import softmax_entropy_expansion  # noqa: E402


def _bernoulli_moments(q):
    return lambda t: (1 - q + q * math.exp(t), q * math.exp(t))


@pytest.mark.parametrize("lam,q", [(1.0, 0.3), (2.0, 0.1)])
def test_entropy_expansion_exact_for_bernoulli_scores(lam, q):
    """Scores in {0, 1}: E[H] is an exact binomial sum, so n (E H - log n - h) -> c can be checked to 1e-4."""
    from scipy.stats import binom
    h, c = softmax_entropy_expansion(lam, moments=_bernoulli_moments(q))
    assert h == pytest.approx(math.log(1 - q + q * math.exp(lam)) - lam * q * math.exp(lam) / (1 - q + q * math.exp(lam)))

    def scaled_gap(n):  # n (E H - log n - h) = c + O(1/n)
        k = torch.arange(n + 1, dtype=F64)
        z = k * math.exp(lam) + (n - k)
        hk = torch.log(z) - lam * k * math.exp(lam) / z
        return n * (float((torch.from_numpy(binom.pmf(k.numpy(), n, q)) * hk).sum()) - math.log(n) - h)

    r1, r2 = scaled_gap(1000), scaled_gap(2000)
    assert abs(r2 - c) < 0.6 * abs(r1 - c)  # the remainder shrinks like 1/n
    assert 2 * r2 - r1 == pytest.approx(c, rel=1e-4)  # Richardson: the 1/n remainder removed


def test_entropy_expansion_gaussian_closed_form_and_monte_carlo():
    from scipy.integrate import quad

    def gauss_moments(t):
        pdf = lambda s: math.exp(-s * s / 2) / math.sqrt(2 * math.pi)  # noqa: E731
        return (quad(lambda s: math.exp(t * s) * pdf(s), -40, 40)[0],
                quad(lambda s: s * math.exp(t * s) * pdf(s), -40, 40)[0])

    for lam in (0.0, 0.5, 1.0, 2.0):
        h, c = softmax_entropy_expansion(lam)
        assert h == pytest.approx(-lam**2 / 2, abs=1e-12)
        assert c == pytest.approx(lam**2 * math.exp(lam**2) - math.expm1(lam**2) / 2, abs=1e-12)
        h_g, c_g = softmax_entropy_expansion(lam, moments=gauss_moments)
        assert (h_g, c_g) == (pytest.approx(h, abs=1e-9), pytest.approx(c, rel=1e-7, abs=1e-9))
    # Monte Carlo at lam = 0.5, Richardson over n = 8, 16 (the O(1/n^2) rest is ~3e-4, far below 4 se)
    lam, g = 0.5, torch.Generator().manual_seed(0)
    h, c = softmax_entropy_expansion(lam)
    est, var = 0.0, 0.0
    for n, weight in ((8, -1.0), (16, 2.0)):
        rows = 4_000_000 // n
        ent = attention_entropy(lam * torch.randn(rows, n, dtype=F64, generator=g), logits=True)
        est += weight * n * (float(ent.mean()) - math.log(n) - h)
        var += (weight * n) ** 2 * float(ent.var()) / rows
    se = math.sqrt(var)
    assert abs(est - c) < 4 * se
    for rival in (0.0, -c, -math.expm1(lam**2) / 2, lam**2 * math.exp(lam**2)):  # no term, sign, half the terms
        assert abs(est - rival) > 4 * se


@pytest.mark.parametrize("call", [
    lambda: softmax_entropy_expansion(-0.1),
    lambda: softmax_entropy_expansion(float("nan")),
    lambda: softmax_entropy_expansion("1"),
    lambda: softmax_entropy_expansion(40.0),
    lambda: softmax_entropy_expansion(1.0, moments=3.0),
    lambda: softmax_entropy_expansion(1.0, moments=lambda t: (0.0, 1.0)),
    lambda: softmax_entropy_expansion(1.0, moments=lambda t: (float("inf"), 1.0)),
])
def test_entropy_expansion_bad_input(call):
    with pytest.raises(ValueError):
        call()


# ---------------------------------------------------------------- locally truncated linear attention
from kexue_lib.attention import local_linear_attention  # noqa: E402


@pytest.mark.parametrize("window", [0, 1, 3])
@pytest.mark.parametrize("direction", ["both", "causal", "anticausal"])
def test_local_linear_matches_loop_reference(window, direction):
    q, k, v = qkv()
    fq, fk = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
    got = local_linear_attention(q, k, v, window=window, causal=direction == "causal",
                                 anticausal=direction == "anticausal", eps=0.0)
    ref = torch.zeros_like(got)
    for i in range(q.shape[-2]):
        lo = i if direction == "anticausal" else max(0, i - window)
        hi = i if direction == "causal" else min(q.shape[-2] - 1, i + window)
        js = range(lo, hi + 1)
        w = torch.stack([(fq[..., i, :] * fk[..., j, :]).sum(-1) for j in js], -1)
        ref[..., i, :] = sum(w[..., t, None] * v[..., j, :] for t, j in enumerate(js)) / w.sum(-1, keepdim=True)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_local_linear_with_a_full_window_is_linear_attention():
    q, k, v = qkv(n=12)
    for causal in (False, True):
        torch.testing.assert_close(local_linear_attention(q, k, v, window=11, causal=causal),
                                   linear_attention(q, k, v, causal=causal), rtol=1e-10, atol=1e-12)
    assert local_linear_attention(q.float(), k.float(), v.float(), window=2).dtype == torch.float32


@pytest.mark.parametrize("call", [
    lambda q, k, v: local_linear_attention(q, k, v, window=-1),
    lambda q, k, v: local_linear_attention(q, k, v, window=2, causal=True, anticausal=True),
    lambda q, k, v: local_linear_attention(q, k[..., :4, :], v[..., :4, :], window=2),
    lambda q, k, v: local_linear_attention(q, k, v, window=2, feature_map="nope"),
])
def test_local_linear_bad_input(call):
    q, k, v = qkv()
    with pytest.raises(ValueError):
        call(q, k, v)
