"""Tests of kexue_lib.toy_lm: the chain, the masks, direction of information flow, a short training run."""
import pytest
import torch

from kexue_lib.attention import linear_attention, local_linear_attention, softmax_attention
from kexue_lib.toy_lm import (ToyTransformer, markov2_chain, mixed_attention, mlm_corrupt, sample_markov2,
                              train_toy_lm)


def test_chain_rows_are_distributions_and_sampling_follows_them():
    g = torch.Generator().manual_seed(0)
    chain = markov2_chain(4, sharpness=2.0, generator=g)
    torch.testing.assert_close(chain.sum(-1), torch.ones(4, 4, dtype=torch.float64))
    x = sample_markov2(chain, 4000, 6, generator=g)
    sel = (x[:, 0] == 1) & (x[:, 1] == 2)
    freq = torch.bincount(x[sel, 2], minlength=4).double() / sel.sum()
    assert (freq - chain[1, 2]).abs().max() < 5 * (0.25 / sel.sum().item()) ** 0.5


def test_mlm_corrupt_masks_at_least_one_position_per_row():
    x = torch.randint(8, (50, 10), generator=torch.Generator().manual_seed(1))
    inp, tgt = mlm_corrupt(x, mask_id=8, rate=0.01, generator=torch.Generator().manual_seed(2))
    picked = tgt != -100
    assert picked.any(1).all()
    assert (inp[picked] == 8).all() and (tgt[picked] == x[picked]).all() and (inp[~picked] == x[~picked]).all()


def _qkv(h=4, n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, h, n, 6, generator=g, dtype=torch.float64) for _ in range(3)]


@pytest.mark.parametrize("attention", ["softmax", "linear", "local_linear"])
def test_mixed_heads_are_causal_then_anticausal(attention):
    q, k, v = _qkv()
    out = mixed_attention(q, k, v, attention=attention, direction="mixed", window=3)
    ref = {"softmax": lambda a, b, c, causal: softmax_attention(a, b, c, causal=causal),
           "linear": lambda a, b, c, causal: linear_attention(a, b, c, causal=causal),
           "local_linear": lambda a, b, c, causal: local_linear_attention(a, b, c, window=3, causal=causal)}[attention]
    torch.testing.assert_close(out[:, :2], ref(q[:, :2], k[:, :2], v[:, :2], True))
    f = lambda t: t[:, 2:].flip(-2)
    torch.testing.assert_close(out[:, 2:], ref(f(q), f(k), f(v), True).flip(-2))
    if attention == "local_linear":  # the anti-causal window, written directly
        torch.testing.assert_close(out[:, 2:], local_linear_attention(q[:, 2:], k[:, 2:], v[:, 2:], window=3,
                                                                      anticausal=True))


@pytest.mark.parametrize("direction", ["causal", "bidirectional", "mixed"])
@pytest.mark.parametrize("attention", ["softmax", "linear", "local_linear"])
def test_model_information_flow(direction, attention):
    torch.manual_seed(0)
    model = ToyTransformer(vocab=6, max_len=12, d_model=16, n_heads=2, n_layers=2, attention=attention,
                           direction=direction, window=20).double()
    emb = model.tok.weight
    tokens = torch.randint(6, (1, 12))
    logits = model(tokens)
    (grad,) = torch.autograd.grad(logits[0, 0].sum(), emb)
    later = torch.zeros(7, dtype=torch.bool)
    later[tokens[0, 1:].unique()] = True
    later[tokens[0, 0]] = False  # only tokens absent from position 0
    sees_future = bool(grad[later].abs().sum() > 0) if later.any() else None
    if sees_future is not None:
        assert sees_future == (direction != "causal")


def test_bad_input_and_lm_needs_causal():
    with pytest.raises(ValueError):
        train_toy_lm(attention="softmax", direction="bidirectional", objective="lm", seed=0, steps=1)
    with pytest.raises(ValueError):
        train_toy_lm(attention="softmax", direction="causal", objective="nope", seed=0, steps=1)
    with pytest.raises(ValueError):
        ToyTransformer(vocab=6, max_len=8, d_model=10, n_heads=4)
    with pytest.raises(ValueError):
        mixed_attention(*_qkv(), attention="rnn")
    with pytest.raises(ValueError):
        markov2_chain(1)


def test_training_learns_and_is_reproducible():
    kw = dict(attention="softmax", direction="causal", objective="lm", steps=60, vocab=4, length=12, batch=16,
              d_model=16, n_heads=2, lr=1e-2, eval_batch=64)
    a, b = train_toy_lm(seed=3, **kw), train_toy_lm(seed=3, **kw)
    assert a == b
    assert a["floor"] < a["loss"] < 1.386  # better than uniform over 4 tokens, not better than the chain itself
