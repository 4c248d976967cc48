"""Tests of the helpers added for article 9577 (RoPE + bias): ``qk_bias_terms``, ``mean_by_distance`` and the
accuracy metric of ``kexue_lib.extrapolation``."""
import pytest
import torch

from kexue_lib.extrapolation import accuracy_by_length, lm_accuracy, loss_by_length, sample_language
from kexue_lib.rope import PositionAttention, PositionLM, mean_by_distance, qk_bias_terms, window_mask
from kexue_lib.toy_lm import markov2_chain

F64 = torch.float64
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def layer(**opts):
    torch.manual_seed(5)
    lay = PositionAttention(16, 2, **opts).double()
    with torch.no_grad():  # biases of the size of the projections' outputs, so that every term matters
        if lay.q.bias is not None:
            lay.q.bias.normal_()
            lay.k.bias.normal_()
    return lay.requires_grad_(False)  # values, not gradients, are tested


def test_four_terms_sum_to_the_layer_logits():
    lay = layer()
    x = torch.randn(3, 9, 16, dtype=F64)
    terms = qk_bias_terms(lay, x).detach()
    assert terms.shape == (4, 3, 2, 9, 9)
    mask = window_mask(9, None)
    torch.testing.assert_close(terms.sum(0)[..., mask], lay.logits(x)[..., mask].detach(), rtol=1e-12, atol=1e-12)
    assert all(float(t[..., mask].abs().max()) > 1e-3 for t in terms)  # none of the four vanishes


def test_fourth_term_is_content_free_and_relative():
    lay = layer()
    t1 = qk_bias_terms(lay, torch.randn(1, 12, 16, dtype=F64))[3, 0]  # (h, n, n)
    t2 = qk_bias_terms(lay, torch.randn(1, 12, 16, dtype=F64))[3, 0]
    torch.testing.assert_close(t1, t2, rtol=0, atol=1e-13)  # the same for any input
    for r in range(-11, 12):  # constant along every diagonal: a function of i - j only
        diag = torch.diagonal(t1, offset=r, dim1=-2, dim2=-1)
        assert float((diag - diag[..., :1]).abs().max()) < 1e-12
    other = qk_bias_terms(lay, torch.randn(1, 12, 16, dtype=F64))[2, 0]  # q^T R b varies with the content
    assert not torch.allclose(other, qk_bias_terms(lay, torch.randn(1, 12, 16, dtype=F64))[2, 0])


def test_zero_biases_leave_only_the_first_term():
    lay = layer()
    with torch.no_grad():
        lay.q.bias.zero_()
        lay.k.bias.zero_()
    terms = qk_bias_terms(lay, torch.randn(2, 6, 16, dtype=F64))
    assert float(terms[1:].abs().max()) == 0.0


def test_half_layout_and_base_are_followed():
    lay = layer(layout="half", base=100.0)
    x = torch.randn(2, 7, 16, dtype=F64)
    mask = window_mask(7, None)
    torch.testing.assert_close(qk_bias_terms(lay, x).sum(0)[..., mask], lay.logits(x)[..., mask].detach(),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("opts", [dict(position="nope"), dict(qk_bias=False), dict(key_norm=True),
                                  dict(query_norm=True), dict(logn_train_len=4)])
def test_bad_layers_raise(opts):
    with pytest.raises(ValueError):
        qk_bias_terms(layer(**opts), torch.randn(1, 5, 16, dtype=F64))


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        qk_bias_terms(layer(), torch.randn(1, 5, 8, dtype=F64))
    with pytest.raises(ValueError):
        qk_bias_terms(torch.nn.Linear(2, 2), torch.randn(1, 5, 16))
    with pytest.raises(ValueError):
        mean_by_distance(torch.randn(3, 4))
    with pytest.raises(ValueError):
        mean_by_distance(torch.randn(4, 4), max_distance=4)


def test_mean_by_distance_matches_a_loop():
    t = torch.randn(2, 3, 7, 7, dtype=F64)
    got = mean_by_distance(t)
    ref = torch.zeros(2, 3, 7, dtype=F64)
    for r in range(7):
        ref[..., r] = torch.stack([t[..., i, i - r] for i in range(r, 7)], -1).mean(-1)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-13)
    torch.testing.assert_close(mean_by_distance(t, max_distance=2), ref[..., :3], rtol=0, atol=1e-13)
    w = torch.softmax(torch.randn(7, 7).masked_fill(~window_mask(7, None), float("-inf")), -1)
    assert float(mean_by_distance(w)[0]) > 0  # the diagonal of causal weights; the future is never read


def test_accuracy_of_an_oracle_and_the_shared_sequences():
    chain = markov2_chain(6, generator=torch.Generator().manual_seed(0))
    seen = []

    class Echo(torch.nn.Module):  # predicts the true next token of the sequence it is shown last
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.x = None

        def forward(self, inp):
            seen.append(inp.clone())
            logits = torch.zeros(*inp.shape, 6)
            return logits.scatter(-1, self.x[:, 1:, None], 1.0)

    x = sample_language(chain, "markov", 4, 10, generator=torch.Generator().manual_seed(3))
    echo = Echo()
    echo.x = x
    assert float(lm_accuracy(echo, x, "markov")) == 1.0
    y = x.clone()
    y[:, 5:] = (y[:, 5:] + 1) % 6  # wrong targets from the sixth token on: 5 of 9 predictions miss
    assert abs(float(lm_accuracy(echo, y, "markov")) - 4 / 9) < 1e-12

    model = PositionLM(6, d_model=8, n_heads=1, n_layers=1)
    seen.clear()

    class Spy(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, inp):
            seen.append(inp.clone())
            return self.inner(inp)

    spy = Spy(model)
    acc = accuracy_by_length(spy, chain, [8, 12], batch=3, seed=2)
    n_acc = len(seen)
    loss_by_length(spy, chain, [8, 12], batch=3, seed=2)
    assert set(acc) == {8, 12} and all(0.0 <= v <= 1.0 for v in acc.values())
    assert all(torch.equal(a, b) for a, b in zip(seen[:n_acc], seen[n_acc:]))  # the same held-out sequences


def test_copy_accuracy_scores_the_second_half_only():
    chain = markov2_chain(6, generator=torch.Generator().manual_seed(0))
    x = sample_language(chain, "copy", 2, 12, generator=torch.Generator().manual_seed(1))

    class Copier(torch.nn.Module):  # right on the copied half, wrong elsewhere
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, inp):
            wrong = (x[:, 1:] + 1) % 6
            tgt = torch.where(torch.arange(11) >= 5, x[:, 1:], wrong)
            return torch.zeros(*inp.shape, 6).scatter(-1, tgt[:, :, None], 1.0)

    assert float(lm_accuracy(Copier(), x, "copy")) == 1.0
    assert float(lm_accuracy(Copier(), x, "markov")) == pytest.approx(6 / 11)
    with pytest.raises(ValueError):
        lm_accuracy(Copier(), x, "mlm")


@CUDA
def test_terms_on_cuda_follow_the_input():
    lay = layer().cuda()
    x = torch.randn(2, 6, 16, dtype=F64, device="cuda")
    terms = qk_bias_terms(lay, x)
    assert terms.device.type == "cuda" and terms.dtype == F64
    assert mean_by_distance(terms).device.type == "cuda"
