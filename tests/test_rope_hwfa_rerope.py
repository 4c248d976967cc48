"""Tests of the HWFA + ReRoPE helpers (article 9731): layer placement, the switch to ReRoPE, logit counts, and
training on cycled lengths."""
import pytest
import torch

from kexue_lib.extrapolation import train_lm
from kexue_lib.rope import (PositionLM, causal_logit_count, hwfa_full_layers, hwfa_layers, model_logit_count,
                            switch_to_rerope, window_mask)
from kexue_lib.toy_lm import markov2_chain

F64 = torch.float64


def test_full_layer_placement_follows_the_article():
    assert hwfa_full_layers(24, 1) == [12]  # index num_layers / 2
    assert hwfa_full_layers(24, 2) == [8, 16]  # num_layers / 3 and 2 num_layers / 3
    assert hwfa_full_layers(24, 3) == [6, 12, 18]
    assert hwfa_full_layers(24, 1, placement="last") == [23]
    assert hwfa_full_layers(5, 2, placement="last") == [3, 4]
    for n_layers in range(1, 30):
        for n_full in range(1, n_layers + 1):
            idx = hwfa_full_layers(n_layers, n_full)
            assert len(set(idx)) == n_full and 0 <= min(idx) and max(idx) < n_layers


def test_hwfa_layers_builds_per_layer_options():
    layers = hwfa_layers(4, 3, n_full=1, placement="last", full={"position": "nope", "logn_train_len": 16},
                         windowed={"qk_bias": False})
    assert layers[:3] == [{"qk_bias": False, "window": 3}] * 3
    assert layers[3] == {"position": "nope", "logn_train_len": 16, "window": None}
    model = PositionLM(8, d_model=8, n_heads=2, n_layers=4, layers=layers)
    att = model.attentions()
    assert [a.window for a in att] == [3, 3, 3, None] and att[3].position == "nope" and att[3].logn_train_len == 16
    mid = hwfa_layers(6, 5, n_full=2)
    assert [d["window"] for d in mid] == [5, 5, None, 5, None, 5]


def test_causal_logit_count_equals_the_visible_pairs_of_the_mask():
    for n in (1, 2, 7, 33, 64):
        for w in (None, 1, 2, 5, 33, 100):
            assert causal_logit_count(n, w) == int(window_mask(n, w).sum())
            assert causal_logit_count(n, w, matrices=2) == 2 * int(window_mask(n, w).sum())


def test_switch_to_rerope_touches_only_full_rope_layers_and_matches_a_rerope_model():
    torch.manual_seed(0)
    layers = [{"window": 4}, {}, {"window": 4}, {"position": "nope"}]
    model = PositionLM(10, d_model=16, n_heads=2, n_layers=4, layers=layers).double()
    x = torch.randint(0, 10, (2, 40))
    with torch.no_grad():
        before = model(x)
        assert switch_to_rerope(model, 6) == [1]
        att = model.attentions()
        assert [a.position for a in att] == ["rope", "rerope", "rope", "nope"] and att[1].rerope_window == 6
        after = model(x)
        # causality: positions that see no key at distance >= 6 are unchanged; later ones change
        torch.testing.assert_close(after[:, :6], before[:, :6], rtol=0, atol=1e-12)
        assert float((after[:, 6:] - before[:, 6:]).abs().max()) > 1e-6
        ref = PositionLM(10, d_model=16, n_heads=2, n_layers=4,
                         layers=[{"window": 4}, {"position": "rerope", "rerope_window": 6}, {"window": 4},
                                 {"position": "nope"}]).double()
        ref.load_state_dict(model.state_dict())
        torch.testing.assert_close(ref(x), after, rtol=0, atol=1e-12)
    assert switch_to_rerope(model, 6) == []  # nothing left to switch
    leaky = PositionLM(10, d_model=16, n_heads=2, n_layers=2)
    assert switch_to_rerope(leaky.attentions(), 5, leak=4.0) == [0, 1]
    assert all(a.leak == 4.0 and a.rerope_window == 5 for a in leaky.attentions())


def test_model_logit_count_counts_rerope_twice():
    model = PositionLM(8, d_model=8, n_heads=2, n_layers=3, layers=[{"window": 4}, {}, {"position": "nope"}])
    n = 50
    assert model_logit_count(model, n) == causal_logit_count(n, 4) + 2 * causal_logit_count(n)
    switch_to_rerope(model, 8)
    assert model_logit_count(model, n) == causal_logit_count(n, 4) + 3 * causal_logit_count(n)


def test_train_lm_cycles_the_given_lengths():
    seen = []

    class Recorder(PositionLM):
        def forward(self, tokens):
            seen.append(tokens.shape[1])
            return super().forward(tokens)

    chain = markov2_chain(8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = Recorder(8, d_model=16, n_heads=2, n_layers=1)
    losses = train_lm(model, chain, kind="copy", steps=5, batch=4, lengths=[8, 12], seed=1)
    assert len(losses) == 5 and seen == [7, 11, 7, 11, 7]  # inputs are x[:, :-1]


@pytest.mark.parametrize("call", [
    lambda: hwfa_full_layers(4, 5),
    lambda: hwfa_full_layers(4, 0),
    lambda: hwfa_full_layers(4, 1, placement="first"),
    lambda: hwfa_layers(4, 0),
    lambda: hwfa_layers(4, 3, full={"window": 8}),
    lambda: causal_logit_count(0),
    lambda: causal_logit_count(8, 0),
    lambda: causal_logit_count(8, 2, matrices=0),
    lambda: switch_to_rerope(PositionLM(8, d_model=8, causal=False), 4),
    lambda: switch_to_rerope([torch.nn.Linear(2, 2)], 4),
    lambda: switch_to_rerope(PositionLM(8, d_model=8), 0),
    lambda: model_logit_count(PositionLM(8, d_model=8, causal=False), 8),
    lambda: train_lm(PositionLM(8, d_model=8), markov2_chain(8), lengths=[]),
    lambda: train_lm(PositionLM(8, d_model=8), markov2_chain(8), lengths=[2]),
])
def test_bad_input_raises_value_error(call):
    with pytest.raises(ValueError):
        call()
