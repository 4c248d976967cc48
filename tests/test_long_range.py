"""Tests of kexue_lib.long_range: the task, the EMA kernel, the backbones' features, SPT and fine-tuning."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kexue_lib.long_range import (LinearRecurrenceLM, SequenceClassifier, accuracy, attention_maps, ema_kernel,
                                  encode, finetune, permutation_chains, sample_chain_task, self_pretrain,
                                  shuffle_within)
from kexue_lib.toy_lm import ToyTransformer


@settings(max_examples=25, deadline=None)
@given(vocab=st.integers(2, 12), noise=st.floats(0.0, 0.95), seed=st.integers(0, 1000))
def test_chains_are_doubly_stochastic_and_distinct(vocab, noise, seed):
    p = permutation_chains(vocab, noise=noise, generator=torch.Generator().manual_seed(seed))
    ones = torch.ones(2, vocab, dtype=torch.float64)
    torch.testing.assert_close(p.sum(-1), ones)
    torch.testing.assert_close(p.sum(-2), ones)  # columns too: the uniform law is stationary
    assert (p[0].argmax(-1) != p[1].argmax(-1)).all()  # every token has a different likely successor


def test_sampler_follows_the_chain_of_its_label():
    g = torch.Generator().manual_seed(0)
    p = permutation_chains(4, noise=0.5, generator=g)
    x, y = sample_chain_task(p, 2000, 6, generator=g)
    assert x.shape == (2000, 6) and int(y.sum()) == 1000
    for c in (0, 1):
        a, b = x[y == c, :-1].reshape(-1), x[y == c, 1:].reshape(-1)
        sel = a == 2
        freq = torch.bincount(b[sel], minlength=4).double() / sel.sum()
        assert (freq - p[c, 2]).abs().max() < 5 * (0.25 / sel.sum().item()) ** 0.5


def test_lagged_sampler_links_tokens_lag_apart():
    g = torch.Generator().manual_seed(8)
    p = permutation_chains(4, noise=0.5, generator=g)
    x, y = sample_chain_task(p, 2000, 12, lag=3, generator=g)
    assert x.shape == (2000, 12) and int(y.sum()) == 1000
    for c in (0, 1):
        xc = x[y == c]
        for dist, law in ((3, p[c, 1]), (1, torch.full((4,), 0.25, dtype=torch.float64))):
            a, b = xc[:, :-dist].reshape(-1), xc[:, dist:].reshape(-1)
            sel = a == 1
            freq = torch.bincount(b[sel], minlength=4).double() / sel.sum()
            assert (freq - law).abs().max() < 5 * (0.25 / sel.sum().item()) ** 0.5  # chain at 3 apart, none at 1


def test_lag_one_is_the_plain_sampler_and_bad_lags_raise():
    p = permutation_chains(5, generator=torch.Generator().manual_seed(9))
    a = sample_chain_task(p, 7, 9, generator=torch.Generator().manual_seed(10))
    b = sample_chain_task(p, 7, 9, lag=1, generator=torch.Generator().manual_seed(10))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    x, y = a
    # a float64 loop reference of the plain sampler: the same draws in the same order
    g = torch.Generator().manual_seed(10)
    y_ref = (torch.arange(7) % 2)[torch.randperm(7, generator=g)]
    x_ref = torch.empty(7, 9, dtype=torch.long)
    x_ref[:, 0] = torch.randint(5, (7,), generator=g)
    cdf = p.cumsum(-1)
    for t in range(1, 9):
        u = torch.rand(7, 1, generator=g, dtype=torch.float64)
        for i in range(7):
            x_ref[i, t] = min(int((cdf[y_ref[i], x_ref[i, t - 1]] < u[i]).sum()), 4)
    assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    for lag in (0, 9, 2.0):
        with pytest.raises(ValueError):
            sample_chain_task(p, 4, 9, lag=lag)


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 6), n=st.integers(1, 20), seed=st.integers(0, 1000))
def test_shuffle_within_permutes_each_row(b, n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(50, (b, n), generator=g)
    s = shuffle_within(x, generator=g)
    assert s.shape == x.shape and s.dtype == x.dtype
    assert torch.equal(s.sort(1).values, x.sort(1).values)  # the same tokens in every row


def test_shuffle_within_destroys_order():
    x = torch.arange(64).repeat(50, 1)  # (50, 64), every row 0..63
    s = shuffle_within(x, generator=torch.Generator().manual_seed(11))
    assert (s == x).double().mean() < 0.1  # few tokens stay in place
    assert len({tuple(r.tolist()) for r in s}) == 50  # one permutation per row
    with pytest.raises(ValueError):
        shuffle_within(torch.zeros(3, dtype=torch.long))


def test_decay_init_structured_or_one_time_scale():
    torch.manual_seed(0)
    structured = LinearRecurrenceLM(vocab=4, d_model=8, n_layers=2)
    slow = LinearRecurrenceLM(vocab=4, d_model=8, n_layers=2, decay_logit=4.0)
    for blk in structured.blocks:
        torch.testing.assert_close(blk.logit.detach(), torch.linspace(-2.0, 4.0, 8))
    for blk in slow.blocks:
        assert (blk.logit.detach() == 4.0).all()
    torch.testing.assert_close(torch.sigmoid(slow.blocks[0].logit.detach()), torch.full((8,), 0.982014), atol=1e-6, rtol=0)
    for bad in (float("nan"), True, "4"):
        with pytest.raises(ValueError):
            LinearRecurrenceLM(vocab=4, decay_logit=bad)


def test_ema_kernel_matches_a_float64_loop():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(5, generator=g, dtype=torch.float64) * 0.98 + 0.01
    u = torch.randn(7, 5, generator=g, dtype=torch.float64)
    h, out = torch.zeros(5, dtype=torch.float64), []
    for t in range(7):
        h = a * h + (1 - a) * u[t]
        out.append(h)
    torch.testing.assert_close(torch.einsum("cts,sc->tc", ema_kernel(a, 7), u), torch.stack(out))


def test_encode_then_head_is_forward_for_both_backbones():
    x = torch.randint(8, (3, 10), generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    for m in (ToyTransformer(vocab=8, max_len=10, direction="bidirectional"), LinearRecurrenceLM(vocab=8)):
        torch.testing.assert_close(m.head(encode(m, x)), m(x))


def test_recurrence_is_causal():
    torch.manual_seed(0)
    m = LinearRecurrenceLM(vocab=8, n_layers=2)
    x = torch.randint(8, (2, 12), generator=torch.Generator().manual_seed(3))
    y = x.clone()
    y[:, 7:] = (y[:, 7:] + 1) % 8
    torch.testing.assert_close(m(x)[:, :7], m(y)[:, :7])


def test_attention_maps_are_row_stochastic_and_causal():
    torch.manual_seed(0)
    x = torch.randint(8, (2, 9), generator=torch.Generator().manual_seed(4))
    (a,) = attention_maps(ToyTransformer(vocab=8, max_len=9, direction="causal"), x)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 4, 9))
    assert (a.triu(1) == 0).all()


def test_pretraining_and_finetuning_lower_their_losses():
    g = torch.Generator().manual_seed(5)
    p = permutation_chains(6, noise=0.3, generator=g)
    x, y = sample_chain_task(p, 128, 16, generator=g)
    torch.manual_seed(0)
    m = LinearRecurrenceLM(vocab=6)
    for obj in ("ar", "mlm"):
        losses = self_pretrain(m, x, objective=obj, steps=60, lr=1e-2, generator=torch.Generator().manual_seed(6))
        assert sum(losses[-10:]) < sum(losses[:10])
    clf = SequenceClassifier(m, n_classes=2)
    losses = finetune(clf, x, y, steps=80, generator=torch.Generator().manual_seed(7))
    assert sum(losses[-10:]) < sum(losses[:10]) and accuracy(clf, x, y) > 0.6


def test_bad_input_raises():
    with pytest.raises(ValueError):
        permutation_chains(1)
    with pytest.raises(ValueError):
        permutation_chains(4, noise=1.0)
    with pytest.raises(ValueError):
        sample_chain_task(torch.ones(2, 3, 4, dtype=torch.float64), 4, 5)
    with pytest.raises(ValueError):
        self_pretrain(LinearRecurrenceLM(vocab=4), torch.zeros(2, 5, dtype=torch.long), objective="clm")
    with pytest.raises(ValueError):
        encode(torch.nn.Linear(2, 2), torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError):
        ema_kernel(torch.rand(3, 3), 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_follows_the_inputs():
    m = LinearRecurrenceLM(vocab=8).cuda()
    x = torch.randint(8, (2, 10), device="cuda")
    assert m(x).device.type == "cuda"
    assert ema_kernel(torch.full((3,), 0.5, device="cuda"), 4).device.type == "cuda"
    assert shuffle_within(x).device.type == "cuda"
