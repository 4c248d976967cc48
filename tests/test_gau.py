"""Tests of kexue_lib.gau: a float64 loop reference, reductions, causality, masks, rotary, bad input."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from kexue_lib.gau import GAU, ScaleOffset, relu2_rowsum_weights, rotary

F64 = torch.float64


def make(seed=0, **kw):
    torch.manual_seed(seed)
    unit = GAU(12, expansion=2, key_dim=6, **kw).double()
    with torch.no_grad():  # move the affine maps off their identity init so that they are tested
        for aff in (unit.q_affine, unit.k_affine):
            aff.gamma.uniform_(0.5, 1.5)
            aff.beta.uniform_(-0.3, 0.3)
    return unit


def x_in(b=2, n=7, seed=1):
    return torch.randn(b, n, 12, generator=torch.Generator().manual_seed(seed), dtype=F64)


def ref_rotary(x, theta=10000.0):
    out = x.clone()
    n, s = x.shape[-2], x.shape[-1]
    for p in range(n):
        for i in range(s // 2):
            a = p * theta ** (-2 * i / s)
            c, si = math.cos(a), math.sin(a)
            out[..., p, 2 * i] = x[..., p, 2 * i] * c - x[..., p, 2 * i + 1] * si
            out[..., p, 2 * i + 1] = x[..., p, 2 * i] * si + x[..., p, 2 * i + 1] * c
    return out


def ref_gau(unit, x, attention, causal, length="actual", mask=None):
    """Plain loops over batch, query and key in float64."""
    W = unit.to_uv.weight.T
    u, v = F.silu(x @ W[:, : unit.e]), F.silu(x @ W[:, unit.e:])
    z = F.silu(x @ unit.to_z.weight.T)
    q = ref_rotary(z * unit.q_affine.gamma + unit.q_affine.beta)
    k = ref_rotary(z * unit.k_affine.gamma + unit.k_affine.beta)
    b, n, _ = x.shape
    av = torch.zeros(b, n, unit.e, dtype=F64)
    for bi in range(b):
        for i in range(n):
            js = [j for j in range(n) if (not causal or j <= i) and (mask is None or bool(mask[bi, j]))]
            s = torch.stack([q[bi, i] @ k[bi, j] for j in js]) / math.sqrt(unit.s)
            if attention == "softmax":
                w = torch.softmax(s, 0)
            else:
                w = torch.relu(s) ** 2
                w = w / (len(js) if length == "actual" else max(float(w.sum()), 1e-300) if length == "rowsum" else length)
            av[bi, i] = sum(w[t] * v[bi, j] for t, j in enumerate(js))
    return (u * av) @ unit.out.weight.T


@pytest.mark.parametrize("attention", ["relu2", "softmax"])
@pytest.mark.parametrize("causal", [False, True])
def test_forward_matches_loop_reference(attention, causal):
    unit = make(attention=attention, causal=causal, scale="standard")
    x = x_in()
    with torch.no_grad():
        torch.testing.assert_close(unit(x), ref_gau(unit, x, attention, causal), rtol=1e-10, atol=1e-12)
        if attention == "relu2":
            unit.set_normalization(length=64)
            torch.testing.assert_close(unit(x), ref_gau(unit, x, attention, causal, length=64), rtol=1e-10, atol=1e-12)


def test_padding_mask_matches_reference_and_unpadded_sequence():
    for attention in ("relu2", "softmax"):
        unit = make(attention=attention)
        x = x_in(n=9)
        mask = torch.ones(2, 9, dtype=torch.bool)
        mask[0, 6:] = False
        with torch.no_grad():
            out = unit(x, mask=mask)
            torch.testing.assert_close(out, ref_gau(unit, x, attention, False, mask=mask), rtol=1e-10, atol=1e-12)
            # the real tokens of row 0 see exactly what the unpadded 6-token sequence gives
            torch.testing.assert_close(out[0, :6], unit(x[:1, :6])[0], rtol=1e-10, atol=1e-12)


def test_reductions_to_glu_and_to_attention():
    """A = I gives the GLU feed-forward layer; U = 1 gives plain single-head attention."""
    unit = make(attention="softmax")
    x = x_in()
    with torch.no_grad():
        u, v, q, k = unit.attention_matrix_input(x)
        glu = unit.out(u * v)
        W = unit.to_uv.weight.T
        torch.testing.assert_close(glu, (F.silu(x @ W[:, : unit.e]) * F.silu(x @ W[:, unit.e:])) @ unit.out.weight.T)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(unit.s), -1)
        torch.testing.assert_close(unit.out(a @ v), unit.out(torch.ones_like(u) * (a @ v)))
        torch.testing.assert_close(unit(x), unit.out(u * (a @ v)), rtol=1e-10, atol=1e-12)


def test_parameter_count():
    unit = GAU(64, expansion=2, key_dim=16)
    d, e, s = 64, 128, 16
    assert sum(p.numel() for p in unit.parameters()) == 2 * d * e + d * s + e * d + 4 * s


def test_relu2_fixed_equals_actual_at_the_training_length_only():
    unit = make(attention="relu2", length=7)
    x = x_in(n=7)
    with torch.no_grad():
        fixed = unit(x)
        actual = unit.set_normalization(length="actual")(x)
        torch.testing.assert_close(fixed, actual)
        x4 = x[:, :4]
        assert not torch.allclose(unit(x4), unit.set_normalization(length=7)(x4))


@settings(max_examples=10, deadline=None)
@given(n=st.integers(2, 12), t=st.integers(1, 11), attention=st.sampled_from(["relu2", "softmax"]))
def test_causal_gau_ignores_the_future(n, t, attention):
    t = min(t, n - 1)
    unit = make(attention=attention, causal=True, scale="log512", base=8) if attention == "softmax" else make(causal=True)
    x = x_in(n=n)
    x2 = x.clone()
    x2[:, t:] = 3 * torch.randn_like(x2[:, t:])
    with torch.no_grad():
        torch.testing.assert_close(unit(x2)[:, :t], unit(x)[:, :t], rtol=0, atol=1e-12)


def test_rotary_reference_norm_and_relative_position():
    x = torch.randn(2, 9, 8, dtype=F64)
    torch.testing.assert_close(rotary(x), ref_rotary(x))
    torch.testing.assert_close(rotary(x).norm(dim=-1), x.norm(dim=-1))
    q, k = torch.randn(8, dtype=F64), torch.randn(8, dtype=F64)
    rq, rk = rotary(q.expand(12, 8)), rotary(k.expand(12, 8))
    dots = [float(rq[m] @ rk[m - 3]) for m in range(3, 12)]  # depends on m - n only
    assert max(dots) - min(dots) < 1e-12


def test_gradients_flow_and_float32_close_to_float64():
    unit = make(attention="relu2")
    x = x_in()
    unit(x.requires_grad_()).square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in unit.parameters())
    out32 = unit.float()(x.detach().float())
    torch.testing.assert_close(out32.double(), unit.double()(x.detach()), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("call", [
    lambda: GAU(0),
    lambda: GAU(8, key_dim=5),
    lambda: GAU(8, attention="linear"),
    lambda: GAU(8, length=0),
    lambda: GAU(8, length="train"),
    lambda: GAU(8, scale="log512"),  # relu2 is homogeneous: named log scales are rejected
    lambda: GAU(8, attention="softmax", scale="log2"),
    lambda: GAU(8, init_std=-1.0),
    lambda: GAU(8).set_normalization("relu3"),
    lambda: GAU(8)(torch.randn(2, 3, 7)),
    lambda: GAU(8)(torch.randn(3, 8)),
    lambda: GAU(8)(torch.randn(2, 3, 8), mask=torch.ones(2, 3)),
    lambda: GAU(8)(torch.randn(2, 3, 8), mask=torch.ones(2, 4, dtype=torch.bool)),
    lambda: rotary(torch.randn(3, 5)),
    lambda: ScaleOffset(0),
])
def test_bad_input_raises_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_set_normalization_rolls_back_on_error():
    unit = GAU(8, length=16)
    with pytest.raises(ValueError):
        unit.set_normalization(length=-2)
    assert unit.length == 16 and unit.attention == "relu2"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    unit = make(attention="softmax", causal=True)
    x = x_in()
    with torch.no_grad():
        torch.testing.assert_close(unit.cuda()(x.cuda()).cpu(), unit.cpu()(x))


def test_encoder_shapes_normalization_and_bad_input():
    from kexue_lib.gau import GAUEncoder
    torch.manual_seed(0)
    model = GAUEncoder(10, 4, d_model=16, depth=2, key_dim=8, length=32)
    tokens = torch.randint(0, 10, (3, 12))
    assert model(tokens).shape == (3, 12, 4)
    model.set_normalization(length="actual")
    assert all(layer.length == "actual" for layer in model.layers)
    with pytest.raises(ValueError):
        model(tokens.float())
    with pytest.raises(ValueError):
        GAUEncoder(0, 4)


@pytest.mark.parametrize("causal", [False, True])
def test_rowsum_normalization_matches_loop_reference_and_mask(causal):
    """length='rowsum' (article 9019's third fix): relu^2 divided by its own row sum."""
    unit = make(attention="relu2", causal=causal, length="rowsum")
    x = x_in(n=9)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 5:] = False
    with torch.no_grad():
        torch.testing.assert_close(unit(x), ref_gau(unit, x, "relu2", causal, length="rowsum"), rtol=1e-10, atol=1e-12)
        out = unit(x, mask=mask)
        torch.testing.assert_close(out, ref_gau(unit, x, "relu2", causal, length="rowsum", mask=mask),
                                   rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(out[1, :5], unit(x[1:, :5])[0], rtol=1e-10, atol=1e-12)


def test_rowsum_weights_rows_sum_to_one_ignore_scale_and_zero_rows():
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(2, 6, 4, generator=g, dtype=F64), torch.randn(2, 6, 4, generator=g, dtype=F64)
    w = relu2_rowsum_weights(q, k)
    has_mass = (torch.relu(q @ k.transpose(-1, -2)) > 0).any(-1)
    torch.testing.assert_close(w.sum(-1)[has_mass], torch.ones(int(has_mass.sum()), dtype=F64))
    torch.testing.assert_close(relu2_rowsum_weights(7.5 * q, k), w)  # homogeneous: a temperature cancels
    # the length does not enter: duplicating every key leaves each query's weights per distinct key halved
    w2 = relu2_rowsum_weights(q, torch.cat([k, k], dim=-2))
    torch.testing.assert_close(w2[..., :6] + w2[..., 6:], w)
    # a query with no positive score gives a zero row, not NaN
    qz = -k[:, :1].clone()
    kz = k[:, :1]
    assert torch.equal(relu2_rowsum_weights(qz, kz), torch.zeros(2, 1, 1, dtype=F64))
    assert relu2_rowsum_weights(q.float(), k.float()).dtype == torch.float32


def test_rowsum_gradients_are_finite():
    unit = make(attention="relu2", length="rowsum")
    x = x_in()
    unit(x.requires_grad_()).square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in unit.parameters())
    with pytest.raises(ValueError):
        unit.set_normalization(length="row_sum")
    assert unit.length == "rowsum"


# ---- article 8990: scale at initialization and the Post-LN stack ----

def ref_init_stats(unit, x, act):
    """Loop reference in float64: A entry by entry, the diagonal-only output, the off-diagonal means."""
    W = unit.to_uv.weight.T
    u, v = act(x @ W[:, : unit.e]), act(x @ W[:, unit.e:])
    z = act(x @ unit.to_z.weight.T)
    q = z * unit.q_affine.gamma + unit.q_affine.beta
    k = z * unit.k_affine.gamma + unit.k_affine.beta
    b, n, _ = x.shape
    a = torch.zeros(b, n, n, dtype=F64)
    for bi in range(b):
        for i in range(n):
            for j in range(n):
                a[bi, i, j] = torch.relu(q[bi, i] @ k[bi, j] / math.sqrt(unit.s)) ** 2 / n
    wo = unit.out.weight.T
    o = (u * (a @ v)) @ wo
    d = torch.diagonal(a, dim1=-2, dim2=-1)
    o_diag = (u * d[..., None] * v) @ wo
    off = a.sum(-1) - d
    return {"rms_out": float(o.pow(2).mean().sqrt()), "rms_out_diag": float(o_diag.pow(2).mean().sqrt()),
            "a_diag": float(d.mean()), "a_off": float(a.sum() - d.sum()) / (b * n * (n - 1)),
            "off_rowsum": float(off.mean()), "a_diag_sq": float(d.pow(2).mean()),
            "rowsum_sq": float(a.sum(-1).pow(2).mean()), "a_sq_rowsum": float(a.pow(2).sum(-1).mean())}


@pytest.mark.parametrize("act", [None, torch.relu])
def test_init_output_stats_matches_loop_reference_and_the_unit(act):
    from kexue_lib.gau import init_output_stats
    unit = make(rope=False)
    x = x_in(n=6)
    got = init_output_stats(unit, x, activation=act)
    with torch.no_grad():
        want = ref_init_stats(unit, x, F.silu if act is None else act)
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-10), key
    if act is None:
        with torch.no_grad():
            assert got["rms_out"] == pytest.approx(float(unit(x).square().mean().sqrt()), rel=1e-12)


def test_init_output_stats_relu_scales_as_lambda_to_the_seventh():
    """Positively homogeneous phi: every weight times 1/2 gives an output 2^-7 times smaller (exact in binary)."""
    from kexue_lib.gau import init_output_stats
    torch.manual_seed(0)
    unit = GAU(12, key_dim=6, rope=False).double()
    x = x_in(n=5)
    base = init_output_stats(unit, x, activation=torch.relu)["rms_out"]
    with torch.no_grad():
        for lin in (unit.to_uv, unit.to_z, unit.out):
            lin.weight.mul_(0.5)
    assert init_output_stats(unit, x, activation=torch.relu)["rms_out"] == pytest.approx(base * 2.0 ** -7, rel=1e-12)
    assert init_output_stats(unit, x)["rms_out"] < 0.5 * base  # swish is not homogeneous: not a check of 2^-7


@pytest.mark.parametrize("call", [
    lambda: __import__("kexue_lib.gau", fromlist=["x"]).init_output_stats(GAU(8, causal=True), torch.randn(1, 3, 8)),
    lambda: __import__("kexue_lib.gau", fromlist=["x"]).init_output_stats(GAU(8, attention="softmax"), torch.randn(1, 3, 8)),
    lambda: __import__("kexue_lib.gau", fromlist=["x"]).init_output_stats(GAU(8), torch.randn(1, 1, 8)),
    lambda: __import__("kexue_lib.gau", fromlist=["x"]).init_output_stats(GAU(8), torch.randn(1, 3, 8), activation=2),
    lambda: __import__("kexue_lib.gau", fromlist=["x"]).init_output_stats(torch.nn.Linear(8, 8), torch.randn(1, 3, 8)),
])
def test_init_output_stats_bad_input(call):
    with pytest.raises(ValueError):
        call()


def test_post_norm_lm_is_post_ln_causal_and_validates():
    from kexue_lib.gau import PostNormGAULM
    torch.manual_seed(0)
    model = PostNormGAULM(10, d_model=16, depth=3, key_dim=8, causal=True).double()
    tokens = torch.randint(0, 10, (2, 9))
    with torch.no_grad():
        logits = model(tokens)
        assert logits.shape == (2, 9, 10)
        # Post-LN by hand: LN after each residual sum
        h = model.embed(tokens)
        for layer, norm in zip(model.layers, model.norms):
            h = F.layer_norm(h + layer(h), (16,), norm.weight, norm.bias, norm.eps)
        torch.testing.assert_close(logits, model.head(h))
        changed = tokens.clone()
        changed[:, 6:] = (changed[:, 6:] + 1) % 10
        torch.testing.assert_close(model(changed)[:, :6], logits[:, :6])  # causal: the future is invisible
    with pytest.raises(ValueError):
        model(tokens.float())
    with pytest.raises(ValueError):
        PostNormGAULM(10, depth=0)
