"""Tests of kexue_lib.extrapolation: the two languages, the loss mask, paired training and evaluation."""
import math

import pytest
import torch

from kexue_lib.extrapolation import loss_by_length, lm_loss, sample_language, train_lm
from kexue_lib.rope import PositionLM
from kexue_lib.toy_lm import markov2_chain


def chain(seed=0):
    return markov2_chain(8, generator=torch.Generator().manual_seed(seed))


def test_copy_language_repeats_its_first_half():
    x = sample_language(chain(), "copy", 5, 20, generator=torch.Generator().manual_seed(1))
    assert x.shape == (5, 20) and torch.equal(x[:, :10], x[:, 10:])
    y = sample_language(chain(), "markov", 5, 20, generator=torch.Generator().manual_seed(1))
    assert y.shape == (5, 20) and not torch.equal(y[:, :10], y[:, 10:])


def test_copy_loss_counts_only_the_copied_half():
    class Oracle(torch.nn.Module):  # knows the copy: perfect on the second half, uniform elsewhere
        def __init__(self, x):
            super().__init__()
            self.x, self.w = x, torch.nn.Parameter(torch.zeros(()))

        def forward(self, inp):
            logits = torch.zeros(*inp.shape, 8)
            half = self.x.shape[1] // 2
            nxt = self.x[:, 1:]
            logits[:, half - 1:].scatter_(-1, nxt[:, half - 1:, None], 50.0)
            return logits

    x = sample_language(chain(), "copy", 4, 16, generator=torch.Generator().manual_seed(2))
    assert float(lm_loss(Oracle(x), x, "copy")) < 1e-6
    # scored on every target instead, the uniform first half (7 of 15 targets) costs log 8 each
    assert abs(float(lm_loss(Oracle(x), x, "markov")) - 7 / 15 * math.log(8)) < 1e-4


def test_training_lowers_the_loss_and_is_paired_by_seed():
    torch.manual_seed(0)
    a = PositionLM(8, d_model=16, n_heads=2, n_layers=1)
    b = PositionLM(8, d_model=16, n_heads=2, n_layers=1)
    b.load_state_dict(a.state_dict())
    la = train_lm(a, chain(), steps=40, batch=16, length=16, seed=3)
    lb = train_lm(b, chain(), steps=40, batch=16, length=16, seed=3)
    assert la == lb  # same seed, same start: identical runs
    assert sum(la[-10:]) / 10 < la[0] - 0.2
    scores = loss_by_length(a, chain(), [16, 32], seed=0)
    assert set(scores) == {16, 32} and all(v > 0 for v in scores.values())
    assert scores == loss_by_length(a, chain(), [16, 32], seed=0)


@pytest.mark.parametrize("call", [
    lambda: sample_language(chain(), "zipf", 2, 8),
    lambda: sample_language(chain(), "copy", 2, 9),
    lambda: sample_language(chain(), "markov", 2, 3),
    lambda: train_lm(PositionLM(8, d_model=16), chain(), steps=0),
    lambda: train_lm(PositionLM(8, d_model=16), chain(), lr=0.0),
    lambda: loss_by_length(PositionLM(8, d_model=16), chain(), []),
    lambda: lm_loss(PositionLM(8, d_model=16), torch.zeros(2, 8, dtype=torch.long), "mlm"),
])
def test_bad_input_raises_value_error(call):
    with pytest.raises(ValueError):
        call()
