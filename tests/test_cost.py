"""Tests of kexue_lib.cost: the multiplication model against FlopCounterMode and a plain-loop layer."""
import math

import pytest
import sympy
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from kexue_lib.attention import linear_attention
from kexue_lib.cost import (BertLayer, count_flops, crossover_lengths, layer_mults, layer_mults_symbolic,
                            linear_attention_mults, wall_time)


def test_bert_base_numbers():
    m = layer_mults(512, 12, 64)
    assert m["attention"] == 4 * 512 * 768**2 + 2 * 512**2 * 768
    assert m["ffn"] == 8 * 512 * 768**2
    assert crossover_lengths(12, 64) == {"sa_gt_ffn": 1536, "quadratic_dominates": 4608}
    assert layer_mults(1536, 12, 64)["attention"] == layer_mults(1536, 12, 64)["ffn"]
    big = layer_mults(4608, 12, 64)
    assert big["scores"] + big["values"] == big["qkv"] + big["out"] + big["ffn"]


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 5000), h=st.integers(1, 16), d=st.integers(1, 128), r=st.integers(3, 8))
def test_integer_counts_match_symbolic(n, h, d, r):
    sym = layer_mults_symbolic(r)
    ints = layer_mults(n, h, d, r)
    subs = dict(zip(sympy.symbols("n h d", positive=True), (n, h, d)))
    for key, expr in sym.items():
        assert int(expr.subs(subs)) == ints[key]
    c = crossover_lengths(h, d, r)
    # strictly past each crossover the inequality holds, at or before it it does not
    m_at, m_past = layer_mults(c["sa_gt_ffn"], h, d, r), layer_mults(c["sa_gt_ffn"] + 1, h, d, r)
    assert m_at["attention"] <= m_at["ffn"] and m_past["attention"] > m_past["ffn"]
    q_at, q_past = layer_mults(c["quadratic_dominates"], h, d, r), layer_mults(c["quadratic_dominates"] + 1, h, d, r)
    assert q_at["scores"] + q_at["values"] <= q_at["total"] / 2
    assert q_past["scores"] + q_past["values"] > q_past["total"] / 2


@pytest.mark.parametrize("attention", ["sdpa", "matmul"])
def test_flop_counter_equals_twice_the_model(attention):
    torch.manual_seed(0)
    layer = BertLayer(heads=3, head_size=8, attention=attention)
    x = torch.randn(2, 20, 24)
    m = layer_mults(20, 3, 8)
    assert count_flops(layer.self_attention, x) == 2 * 2 * m["attention"]  # batch 2, 2 FLOPs per multiply
    assert count_flops(layer.feed_forward, x) == 2 * 2 * m["ffn"]
    assert count_flops(layer, x) == 2 * 2 * m["total"]


def test_cpu_sdpa_is_invisible_without_the_mapping():
    layer = BertLayer(heads=2, head_size=4)
    x = torch.randn(1, 10, 8)
    m = layer_mults(10, 2, 4)
    assert count_flops(layer.self_attention, x, cpu_sdpa=False) == 2 * (m["qkv"] + m["out"])


def test_meta_device_counts_article_scale():
    layer = BertLayer(attention="matmul", device="meta")
    x = torch.empty(1, 1536, 768, device="meta")
    assert count_flops(layer.self_attention, x) == count_flops(layer.feed_forward, x) == 2 * layer_mults(1536, 12, 64)["ffn"]


def test_sdpa_and_matmul_layers_agree_with_a_plain_loop_reference():
    torch.manual_seed(1)
    fast = BertLayer(heads=2, head_size=4, attention="sdpa", dtype=torch.float64)
    slow = BertLayer(heads=2, head_size=4, attention="matmul", dtype=torch.float64)
    slow.load_state_dict(fast.state_dict())
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    # plain loop: per batch, head and query, softmax over keys
    qkv = x @ fast.qkv.weight.T + fast.qkv.bias
    q, k, v = qkv.split(8, dim=-1)
    att = torch.zeros_like(q)
    for b in range(2):
        for hh in range(2):
            sl = slice(4 * hh, 4 * hh + 4)
            for i in range(5):
                logits = torch.stack([q[b, i, sl] @ k[b, j, sl] / math.sqrt(4) for j in range(5)])
                att[b, i, sl] = sum(p * v[b, j, sl] for j, p in enumerate(torch.softmax(logits, 0)))
    sa = att @ fast.out.weight.T + fast.out.bias
    h1 = F.layer_norm(x + sa, (8,), fast.ln1.weight, fast.ln1.bias)
    ref = F.layer_norm(h1 + fast.feed_forward(h1), (8,), fast.ln2.weight, fast.ln2.bias)
    torch.testing.assert_close(fast(x), ref)
    torch.testing.assert_close(slow(x), ref)


def test_linear_attention_count():
    q = torch.randn(1, 3, 50, 16)
    v = torch.randn(1, 3, 50, 24)
    assert count_flops(linear_attention, q, q, v) == 3 * 2 * linear_attention_mults(50, 16, value_dim=24, normalizer=True)
    assert linear_attention_mults(100, 64, 256, 256) == 2 * 100 * (4 * 64) ** 2
    assert linear_attention_mults(10, 4) == 2 * 10 * 16


def test_wall_time_runs():
    assert wall_time(lambda: sum(range(100)), repeat=3) >= 0


@pytest.mark.parametrize(
    "call",
    [
        lambda: layer_mults(0, 12, 64),
        lambda: layer_mults(512, 12.0, 64),
        lambda: layer_mults(512, 12, 64, ffn_mult=0),
        lambda: crossover_lengths(12, 64, ffn_mult=2),
        lambda: linear_attention_mults(10, 4, feature_dim=0),
        lambda: BertLayer(attention="flash"),
        lambda: BertLayer(heads=0),
        lambda: BertLayer(heads=2, head_size=4).self_attention(torch.randn(1, 3, 7)),
        lambda: BertLayer(heads=2, head_size=4).feed_forward(torch.randn(3, 8)),
        lambda: BertLayer(heads=2, head_size=4)(torch.ones(1, 3, 8, dtype=torch.int64)),
        lambda: count_flops("not a function"),
        lambda: wall_time(print, repeat=0),
    ],
)
def test_bad_input_raises_value_error(call):
    with pytest.raises(ValueError):
        call()
