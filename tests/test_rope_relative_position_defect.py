"""Tests of the position probe of article 9105 (kexue_lib.extrapolation) and the swish-l2 attention weights
(kexue_lib.rope) that the chapter relative_position_defect uses."""
import pytest
import torch
import torch.nn.functional as F

from kexue_lib.extrapolation import PROBE_CLS, PROBE_SEP, PROBE_TOKEN, position_probe, probe_loss, train_probe
from kexue_lib.rope import PositionAttention, PositionLM, attention_weights

F64 = torch.float64


def test_position_probe_layout():
    tokens, targets, keep = position_probe(5)
    assert tokens.shape == (1, 5) and bool((tokens == PROBE_TOKEN).all())
    assert torch.equal(targets, torch.arange(1, 6, dtype=torch.float32)) and keep == slice(0, 5)
    tokens, targets, keep = position_probe(5, special_tokens=True)
    assert tokens.shape == (1, 7) and tokens[0, 0] == PROBE_CLS and tokens[0, -1] == PROBE_SEP
    assert bool((tokens[0, keep] == PROBE_TOKEN).all()) and targets.shape == (5,)
    t = torch.randn(5)
    assert torch.equal(position_probe(5, targets=t)[1], t)


@pytest.mark.parametrize("bad", [dict(n=1), dict(n=4, targets=torch.ones(3)), dict(n=4, targets=torch.ones(4, dtype=torch.long)),
                                 dict(n=4, targets=[1.0, 2.0, 3.0, 4.0])])
def test_position_probe_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        position_probe(**bad)


class _Fixed(torch.nn.Module):
    """Returns the given per-position outputs whatever the tokens (one parameter so that a device exists)."""

    def __init__(self, out):
        super().__init__()
        self.out, self.w = out, torch.nn.Parameter(torch.zeros(()))

    def forward(self, tokens):
        return (self.out + 0 * self.w).expand(tokens.shape[0], -1)[..., None]


@pytest.mark.parametrize("standardize", [True, False])
def test_constant_outputs_cannot_beat_the_variance(standardize):
    n = 9
    targets = torch.arange(1, n + 1, dtype=torch.float32)
    var = float(targets.var(unbiased=False))
    assert var == pytest.approx((n * n - 1) / 12)
    for c in (-1.0, 0.0, 0.3, 5.0):
        with torch.no_grad():
            loss = float(probe_loss(_Fixed(torch.full((n,), c)), n, standardize=standardize))
        assert loss >= var * (1 - 1e-6)
    best = 0.0 if standardize else 5.0  # the mean, in the model's units
    assert float(probe_loss(_Fixed(torch.full((n,), best)), n, standardize=standardize).detach()) == pytest.approx(var, rel=1e-6)


def test_oracle_reaches_zero_and_standardize_is_the_affine_head():
    n = 7
    t = torch.arange(1, n + 1, dtype=torch.float32)
    z = (t - t.mean()) / t.std(unbiased=False)
    assert float(probe_loss(_Fixed(z), n).detach()) < 1e-10
    assert float(probe_loss(_Fixed(t), n, standardize=False).detach()) < 1e-10
    out = torch.randn(n)
    direct = F.mse_loss(t.mean() + t.std(unbiased=False) * out, t)
    torch.testing.assert_close(probe_loss(_Fixed(out), n), direct)


def test_probe_loss_needs_one_output_per_position():
    m = PositionLM(3, d_model=16, n_heads=2, n_layers=1, causal=False)  # n_out = vocab = 3
    with pytest.raises(ValueError, match="one output per position"):
        probe_loss(m, 6)


def test_softmax_rope_stays_at_the_plateau_and_exp_goes_below():
    n = 8
    plateau = (n * n - 1) / 12
    torch.manual_seed(0)
    soft = PositionLM(3, d_model=32, n_heads=2, n_layers=1, causal=False, n_out=1)
    losses = train_probe(soft, n, steps=60)
    assert min(losses) >= plateau * (1 - 1e-5)
    torch.manual_seed(0)
    exp = PositionLM(3, d_model=32, n_heads=2, n_layers=1, causal=False, n_out=1, attention={"normalize": "exp"})
    train_probe(exp, n, steps=60)
    with torch.no_grad():
        assert float(probe_loss(exp, n)) < 0.2 * plateau


def test_train_probe_is_deterministic_and_special_tokens_break_the_symmetry():
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        m = PositionLM(3, d_model=16, n_heads=2, n_layers=1, causal=False, n_out=1)
        runs.append(train_probe(m, 6, steps=5, special_tokens=True))
    assert runs[0] == runs[1]
    with torch.no_grad():
        tokens, _, keep = position_probe(6, special_tokens=True)
        out = m(tokens)[0, keep, 0]
    assert float(out.max() - out.min()) > 1e-4  # the markers make the positions differ
    with pytest.raises(ValueError):
        train_probe(m, 6, steps=0)


def test_swish_l2_weights():
    s = torch.randn(4, 7, dtype=F64)
    w = attention_weights(s, "swish_l2")
    torch.testing.assert_close(w, F.silu(s) / F.silu(s).norm(dim=-1, keepdim=True))
    torch.testing.assert_close(w.norm(dim=-1), torch.ones(4, dtype=F64))
    assert bool((w < 0).any())  # signed weights
    masked = s.clone()
    masked[:, 3:] = float("-inf")
    wm = attention_weights(masked, "swish_l2")
    assert bool((wm[:, 3:] == 0).all()) and bool(torch.isfinite(wm).all())
    torch.testing.assert_close(wm[:, :3], attention_weights(s[:, :3], "swish_l2"))
    zero = attention_weights(torch.zeros(2, 5, dtype=F64), "swish_l2")  # swish(0) = 0: all-zero row, no NaN
    assert bool((zero == 0).all())


def test_position_attention_accepts_swish_l2():
    torch.manual_seed(0)
    att = PositionAttention(16, 2, causal=True, normalize="swish_l2")
    y = att(torch.randn(2, 5, 16))
    assert y.shape == (2, 5, 16) and bool(torch.isfinite(y).all())
