"""Tests of kexue_lib.rope: RoPE against a float64 reference and the rotary-embedding-torch peer, ReRoPE's two
constructions, HWFA's receptive field, key normalization, RMSNorm and the PositionLM options."""
import math

import pytest
import torch

from kexue_lib import gau, rope
from kexue_lib.rope import (PositionAttention, PositionLM, RMSNorm, apply_rope, attention_weights,
                            hwfa_receptive_field, key_normalize, logn_scale, rerope_positions, rerope_scores,
                            rms_norm, rope_scores, window_mask)

F64 = torch.float64
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def ref_rope(x, positions, base=10000.0, layout="interleaved"):
    """Loop-free float64 reference: rotate each pair by an explicit 2x2 matrix."""
    x = x.double()
    d = x.shape[-1]
    theta = base ** (-torch.arange(0, d, 2, dtype=F64) / d)
    ang = positions.double()[..., None] * theta
    c, s = ang.cos(), ang.sin()
    if layout == "interleaved":
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack([a * c - b * s, a * s + b * c], -1).flatten(-2)
    h = d // 2
    a, b = x[..., :h], x[..., h:]
    return torch.cat([a * c - b * s, a * s + b * c], -1)


@pytest.mark.parametrize("layout", rope.LAYOUTS)
def test_matches_reference_and_keeps_norms(layout):
    x = torch.randn(2, 3, 17, 8, dtype=F64)
    out = apply_rope(x, layout=layout)
    torch.testing.assert_close(out, ref_rope(x, torch.arange(17), layout=layout), rtol=0, atol=1e-13)
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1), rtol=1e-13, atol=0)


@pytest.mark.parametrize("layout", rope.LAYOUTS)
def test_scores_depend_on_relative_position_only(layout):
    q, k = torch.randn(16, dtype=F64), torch.randn(16, dtype=F64)
    pos = torch.arange(40)
    rq, rk = apply_rope(q.expand(40, 16), pos, layout=layout), apply_rope(k.expand(40, 16), pos, layout=layout)
    dots = torch.stack([rq[m] @ rk[m - 5] for m in range(5, 40)])
    assert float(dots.max() - dots.min()) < 1e-12


def test_offsets_and_tensor_positions_agree():
    x = torch.randn(2, 5, 8, dtype=F64)
    torch.testing.assert_close(apply_rope(x, 7), apply_rope(x, torch.arange(7, 12)), rtol=0, atol=0)
    torch.testing.assert_close(apply_rope(x, 7), ref_rope(x, torch.arange(7, 12)), rtol=0, atol=1e-13)
    per_row = torch.tensor([[0, 1, 2, 3, 4], [3, 4, 5, 6, 7]])  # batch-dependent positions
    out = apply_rope(x, per_row)
    torch.testing.assert_close(out[1], apply_rope(x[1], 3), rtol=0, atol=1e-13)
    frac = torch.linspace(0, 2, 5, dtype=F64)  # fractional positions (interpolation, Leaky ReRoPE)
    torch.testing.assert_close(apply_rope(x, frac), ref_rope(x, frac), rtol=0, atol=1e-13)


def test_matches_gau_rotary_and_decoding_offset():
    x = torch.randn(3, 11, 8)
    assert torch.equal(gau.rotary(x), apply_rope(x))
    full = apply_rope(x)
    assert torch.equal(apply_rope(x[:, 6:], 6), full[:, 6:])  # KV-cache decoding: same rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, F64])
@pytest.mark.parametrize("layout", rope.LAYOUTS)
def test_cache_friendly_path_is_bitwise_the_plain_one(dtype, layout):
    x = torch.randn(4, 3, 300, 64).to(dtype)  # large enough for the slab path
    fast = apply_rope(x, layout=layout)
    slow = apply_rope(x.clone().requires_grad_(), layout=layout).detach()  # the autograd path
    assert fast.dtype == dtype and torch.equal(fast, slow)


def test_low_precision_inputs_are_rotated_in_float32():
    x = torch.randn(4096, 64).bfloat16()
    out = apply_rope(x)
    ref = ref_rope(x.double(), torch.arange(4096))
    # only the final rounding to bf16 remains: within half a bf16 ulp of the float64 result, plus float32 slack
    assert float(((out.double() - ref).abs() / ref.abs().clamp(min=1e-3)).max()) <= 2 ** -8 + 1e-5
    assert out.dtype == torch.bfloat16


def test_regression_bf16_keeps_every_position_distinct():
    x = torch.ones(4096, 64).bfloat16()
    assert torch.unique(apply_rope(x), dim=0).shape[0] == 4096


def test_peer_rotary_embedding_torch_matches_in_float64_and_collapses_positions_in_bf16():
    rotary_embedding_torch = pytest.importorskip("rotary_embedding_torch")
    peer = rotary_embedding_torch.RotaryEmbedding(32).double()
    x = torch.randn(2, 4, 50, 32, dtype=F64)
    torch.testing.assert_close(peer.rotate_queries_or_keys(x), apply_rope(x), rtol=1e-6, atol=1e-6)
    # (the peer's frequencies are float32, so agreement is to float32 precision only)
    peer16 = rotary_embedding_torch.RotaryEmbedding(64, cache_if_possible=False)
    ones = torch.ones(4096, 64).bfloat16()
    assert torch.unique(peer16.rotate_queries_or_keys(ones), dim=0).shape[0] == 769  # positions rounded in bf16
    assert torch.unique(apply_rope(ones), dim=0).shape[0] == 4096


def test_gradients_flow():
    x = torch.randn(2, 6, 8, requires_grad=True)
    apply_rope(x).square().sum().backward()
    # a rotation keeps the norm, so d/dx ||R x||^2 = 2x
    torch.testing.assert_close(x.grad, 2 * x.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("leak", [None, 4.0, 1.0])
@pytest.mark.parametrize("layout", rope.LAYOUTS)
def test_rerope_merge_equals_direct_clipped_positions(leak, layout):
    q, k = torch.randn(2, 3, 24, 16, dtype=F64), torch.randn(2, 3, 24, 16, dtype=F64)
    merge = rerope_scores(q, k, 6, leak=leak, layout=layout)
    direct = rerope_scores(q, k, 6, leak=leak, layout=layout, method="direct")
    finite = torch.isfinite(merge)
    assert torch.equal(finite, torch.isfinite(direct)) and torch.equal(finite, torch.ones(24, 24, dtype=torch.bool).tril().expand_as(finite))
    assert float((merge[finite] - direct[finite]).abs().max()) < 1e-12


def test_rerope_reduces_to_rope_inside_window_and_leak_one_is_rope():
    q, k = torch.randn(20, 8, dtype=F64), torch.randn(20, 8, dtype=F64)
    plain = rope_scores(q, k).masked_fill(torch.ones(20, 20, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(rerope_scores(q, k, 20), plain, rtol=0, atol=1e-12)  # window >= n: ordinary RoPE
    torch.testing.assert_close(rerope_scores(q, k, 5, leak=1.0), plain, rtol=0, atol=1e-12)  # slope 1 beyond w
    rel = rerope_positions(10, 4)
    assert float(rel.max()) == 4.0 and float(rel[9, 0]) == 4.0 and float(rel[3, 1]) == 2.0
    leaky = rerope_positions(10, 4, leak=2.0)
    assert float(leaky[9, 0]) == 4 + (9 - 4) / 2


def test_rerope_scores_beyond_window_do_not_grow_with_distance():
    # with one query/key vector repeated, ReRoPE logits are constant once the distance passes the window
    q, k = torch.randn(8, dtype=F64).expand(30, 8), torch.randn(8, dtype=F64).expand(30, 8)
    s = rerope_scores(q, k, 5)
    far = s[29, :25]  # distances 29..5, all clipped to 5
    assert float(far.max() - far.min()) < 1e-12


@pytest.mark.parametrize("window,layers", [(3, 4), (5, 2), (2, 6), (7, 1)])
def test_hwfa_receptive_field_by_mask_powers(window, layers):
    n = 64
    m = window_mask(n, window).double()
    reach = torch.eye(n, dtype=F64)
    for _ in range(layers - 1):
        reach = (m @ reach).clamp(max=1)  # which inputs each position depends on after one more windowed layer
    assert int(reach[n - 1].sum()) == hwfa_receptive_field(window, layers)


def test_hwfa_receptive_field_in_a_model():
    torch.manual_seed(0)
    w, L, n = 3, 4, 24
    model = PositionLM(10, d_model=16, n_heads=2, n_layers=L, layers=[{"window": w}] * (L - 1) + [{"window": None}])
    tokens = torch.randint(0, 10, (1, n))
    x = model.embed(tokens).detach().requires_grad_()
    h = x
    for block in model.blocks[:-1]:
        h = block(h)
    h[0, n - 1].sum().backward()
    seen = (x.grad[0].abs().sum(-1) > 0).nonzero().flatten()
    assert int(seen.numel()) == hwfa_receptive_field(w, L)
    assert int(seen.min()) == n - hwfa_receptive_field(w, L)


def test_window_mask_causal_and_bidirectional():
    m = window_mask(6, 2)
    assert m.sum(-1).tolist() == [1, 2, 2, 2, 2, 2]
    b = window_mask(6, 2, causal=False)
    assert b.sum(-1).tolist() == [2, 3, 3, 3, 3, 2]
    assert window_mask(4, None, causal=False).all()


def test_key_normalized_attention_ignores_key_scale():
    torch.manual_seed(1)
    layer = PositionAttention(16, 2, key_norm=True)
    x = torch.randn(2, 9, 16)
    out = layer(x)
    with torch.no_grad():
        layer.k.weight.mul_(7.0)
        layer.k.bias.mul_(7.0)
    torch.testing.assert_close(layer(x), out, rtol=1e-5, atol=1e-6)
    k = torch.randn(3, 5, 8, dtype=F64) * torch.rand(3, 5, 1, dtype=F64)
    torch.testing.assert_close(key_normalize(k).norm(dim=-1), torch.ones(3, 5, dtype=F64))


def test_logn_scale():
    s = logn_scale(10, 4)
    assert s.shape == (10, 1) and float(s[0]) == 1.0 and float(s[3]) == 1.0
    assert math.isclose(float(s[9]), math.log(10) / math.log(4), rel_tol=1e-15)
    assert float(logn_scale(4, 16, per_position=False)) == 1.0


def test_rms_norm_without_gain_has_unit_rms_and_ignores_scale():
    x = torch.randn(5, 32, dtype=F64)
    y = rms_norm(x, eps=0.0)
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(5, dtype=F64))
    torch.testing.assert_close(rms_norm(123.0 * x, eps=0.0), y)
    assert RMSNorm(32, gain=False).weight is None and sum(p.numel() for p in RMSNorm(32).parameters()) == 32


def test_attention_weights():
    s = torch.randn(3, 7, dtype=F64)
    torch.testing.assert_close(attention_weights(s, "l2").norm(dim=-1), torch.ones(3, dtype=F64))
    torch.testing.assert_close(attention_weights(s, "exp"), s.exp())
    torch.testing.assert_close(attention_weights(s, "softmax").sum(-1), torch.ones(3, dtype=F64))


def test_softmax_relative_model_outputs_identical_positions_on_constant_input():
    # article 9105's defect, as a property of the code: rows of a softmax attention sum to 1
    torch.manual_seed(0)
    enc = PositionLM(2, d_model=16, n_heads=2, n_layers=2, causal=False, n_out=1).requires_grad_(False)
    out = enc(torch.zeros(3, 12, dtype=torch.long))
    assert float((out - out[:, :1]).abs().max()) < 1e-5
    enc2 = PositionLM(2, d_model=16, n_heads=2, n_layers=2, causal=False, n_out=1, attention={"normalize": "l2"}).requires_grad_(False)
    out2 = enc2(torch.zeros(3, 12, dtype=torch.long))
    assert float((out2 - out2[:, :1]).abs().max()) > 1e-4


def test_model_options_bias_free_and_per_layer():
    m = PositionLM(11, d_model=16, n_heads=2, n_layers=2, norm="rmsnorm_nogain", bias=False,
                   attention={"qk_bias": False})
    assert not any("bias" in name for name, _ in m.named_parameters())
    tokens = torch.randint(0, 11, (2, 9))
    assert m(tokens).shape == (2, 9, 11)
    h = PositionLM(11, d_model=16, n_heads=2, n_layers=3, attention={"position": "rerope", "rerope_window": 4},
                   layers=[{"window": 3}, {"window": 3}, {}])
    assert h(tokens).shape == (2, 9, 11)
    for layer in h.attentions():  # switch positions after training
        layer.position = "rope"
    assert h(tokens).shape == (2, 9, 11)
    a = PositionLM(11, d_model=16, n_heads=2, n_layers=1, absolute="learned", max_len=9,
                   attention={"position": "nope", "urpe": 4, "logn_train_len": 4})
    assert a(tokens).shape == (2, 9, 11)


def test_causal_model_never_reads_the_future():
    torch.manual_seed(0)
    for opts in [{}, {"position": "rerope", "rerope_window": 3, "leak": 2.0}, {"window": 2, "key_norm": True}]:
        m = PositionLM(7, d_model=16, n_heads=2, n_layers=2, attention=opts)
        t = torch.randint(0, 7, (1, 10))
        t2 = t.clone()
        t2[0, 6:] = (t2[0, 6:] + 1) % 7
        with torch.no_grad():
            torch.testing.assert_close(m(t)[:, :6], m(t2)[:, :6], rtol=0, atol=1e-6)


@CUDA
def test_cuda_follows_device_and_dtype():
    x = torch.randn(2, 128, 64, device="cuda", dtype=torch.bfloat16)
    out = apply_rope(x)
    assert out.device.type == "cuda" and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.cpu(), apply_rope(x.cpu()), rtol=0, atol=2 ** -6)
    q = torch.randn(2, 40, 16, device="cuda", dtype=F64)
    torch.testing.assert_close(rerope_scores(q, q, 5).cpu(), rerope_scores(q.cpu(), q.cpu(), 5))


@pytest.mark.parametrize("call", [
    lambda: apply_rope(torch.randn(4, 5)),  # odd d
    lambda: apply_rope(torch.randn(6)),
    lambda: apply_rope(torch.arange(8).view(2, 4)),  # integer x
    lambda: apply_rope(torch.randn(3, 4), -1),
    lambda: apply_rope(torch.randn(3, 4), torch.arange(4)),  # positions do not broadcast
    lambda: apply_rope(torch.randn(3, 4), torch.tensor([0.0, float("nan"), 1.0])),
    lambda: apply_rope(torch.randn(3, 4), [0, 1, 2]),
    lambda: apply_rope(torch.randn(3, 4), base=1.0),
    lambda: apply_rope(torch.randn(3, 4), layout="neox"),
    lambda: rerope_scores(torch.randn(5, 4), torch.randn(5, 4), 0),
    lambda: rerope_scores(torch.randn(5, 4), torch.randn(5, 4), 2, leak=0.5),
    lambda: rerope_scores(torch.randn(5, 4), torch.randn(6, 4), 2),
    lambda: rerope_scores(torch.randn(5, 4), torch.randn(5, 4), 2, method="loop"),
    lambda: window_mask(5, 0),
    lambda: hwfa_receptive_field(3, 0),
    lambda: key_normalize(torch.zeros(2, 4)),
    lambda: logn_scale(5, 1),
    lambda: attention_weights(torch.full((2, 3), float("-inf"))),
    lambda: attention_weights(torch.randn(2, 3), "sparsemax"),
    lambda: PositionAttention(10, 4),
    lambda: PositionAttention(16, 2, position="alibi"),
    lambda: PositionAttention(16, 2, causal=False, position="rerope", rerope_window=3),
    lambda: PositionAttention(16, 2, position="rerope"),
    lambda: PositionAttention(16, 2)(torch.randn(2, 3, 8)),
    lambda: PositionLM(5, n_layers=2, layers=[{}]),
    lambda: PositionLM(5, absolute="learned"),
    lambda: PositionLM(5, attention={"causal": False}),
    lambda: PositionLM(5, d_model=16, absolute="learned", max_len=4)(torch.zeros(1, 5, dtype=torch.long)),
    lambda: PositionLM(5, d_model=16)(torch.zeros(1, 5)),
    lambda: RMSNorm(4)(torch.randn(2, 5)),
])
def test_bad_input_raises_value_error(call):
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_complex_product_rounds_like_the_real_formula(dtype):
    # the interleaved path multiplies complex numbers; it must round exactly as x1 cos - x2 sin, x1 sin + x2 cos
    x = torch.randn(8, 512, 32, dtype=dtype)
    cos, sin = rope.rope_tables(512, 32, dtype=dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    real = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1).flatten(-2)
    assert torch.equal(apply_rope(x), real)
    assert torch.equal(apply_rope(x.requires_grad_()).detach(), real)


def test_row_blocks_of_long_sequences():
    x = torch.randn(1, 9000, 64)  # more rows than one cache-sized block
    assert torch.equal(apply_rope(x), apply_rope(x.clone().requires_grad_()).detach())
    assert torch.equal(apply_rope(x, layout="half"), apply_rope(x.clone().requires_grad_(), layout="half").detach())
