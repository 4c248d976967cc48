"""Tests of kexue_lib.flash: float64 loop reference, chunk equivalences, causality, masks, the peer, bad input."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from kexue_lib.flash import FLASH, chunk_linear_attention, full_linear_attention, mixed_chunk_attention
from kexue_lib.gau import rotary

F64 = torch.float64


def make(seed=0, **kw):
    torch.manual_seed(seed)
    kw.setdefault("chunk_size", 4)
    layer = FLASH(12, expansion=2, key_dim=6, **kw).double()
    with torch.no_grad():  # move the affine maps off their identity init so that they are tested
        for aff in (layer.q_affine, layer.k_affine, layer.q_lin, layer.k_lin):
            aff.gamma.uniform_(0.5, 1.5)
            aff.beta.uniform_(-0.3, 0.3)
    return layer


def x_in(b=2, n=11, seed=1):
    return torch.randn(b, n, 12, generator=torch.Generator().manual_seed(seed), dtype=F64)


def ref_flash(layer, x, normalizer, mask=None):
    """Plain loops over batch, query and key in float64, following the module docstring's formulas."""
    W = layer.to_uv.weight.T
    u, v = F.silu(x @ W[:, : layer.e]), F.silu(x @ W[:, layer.e:])
    z = F.silu(x @ layer.to_z.weight.T)
    qq, kq, ql, kl = (rotary(z * a.gamma + a.beta) for a in (layer.q_affine, layer.k_affine, layer.q_lin, layer.k_lin))
    b, n, _ = x.shape
    c, s, causal = layer.chunk_size, layer.s, layer.causal
    real = torch.ones(b, n, dtype=torch.bool) if mask is None else mask
    av = torch.zeros(b, n, layer.e, dtype=F64)
    for bi in range(b):
        for i in range(n):
            g = i // c
            quad = [j for j in range(g * c, min(n, g * c + c)) if (not causal or j <= i) and real[bi, j]]
            lin = [j for j in range(n) if (not causal or j < g * c) and real[bi, j]]
            for j in quad:
                w = max(float(qq[bi, i] @ kq[bi, j]), 0.0) ** 2
                w = {"count": w / (s * len(quad)), "article": w / (s * c), "peer": w / c**2, "sum": w / s}[normalizer]
                av[bi, i] += w * v[bi, j]
            if lin:
                if causal:
                    norm = {"count": len(lin), "article": g * n / c, "peer": c, "sum": 1}[normalizer]
                else:
                    norm = {"count": len(lin), "sum": 1}.get(normalizer, n)
                av[bi, i] += sum(float(ql[bi, i] @ kl[bi, j]) * v[bi, j] for j in lin) / norm
    return (u * av) @ layer.out.weight.T


@pytest.mark.parametrize("normalizer", ["count", "article", "peer", "sum"])
@pytest.mark.parametrize("causal", [False, True])
def test_forward_matches_loop_reference(normalizer, causal):
    layer = make(causal=causal, normalizer=normalizer)
    x = x_in()  # n = 11: the last chunk is partial
    with torch.no_grad():
        torch.testing.assert_close(layer(x), ref_flash(layer, x, normalizer), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_padding_mask_matches_reference_and_unpadded_sequence(causal):
    layer = make(causal=causal)
    x = x_in(n=11)
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[0, 6:] = False  # more than a chunk of padding
    with torch.no_grad():
        out = layer(x, mask=mask)
        ref = ref_flash(layer, x, "count", mask)
        torch.testing.assert_close(out[mask], ref[mask], rtol=1e-10, atol=1e-12)  # padded rows are don't-care
        torch.testing.assert_close(out[0, :6], layer(x[:1, :6])[0], rtol=1e-10, atol=1e-12)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("n,c", [(12, 4), (13, 4), (8, 8), (5, 1)])
def test_chunked_linear_part_equals_full_linear_attention(n, c):
    q, k, v = rand(2, n, 3, seed=1), rand(2, n, 3, seed=2), rand(2, n, 5, seed=3)
    for norm in ("count", "article", "peer", "sum"):
        torch.testing.assert_close(chunk_linear_attention(q, k, v, chunk_size=c, normalizer=norm),
                                   full_linear_attention(q, k, v, normalizer=norm), rtol=1e-12, atol=1e-12)
    # causal: previous chunks (chunked) + the causal block inside each chunk = full causal linear attention
    inside = torch.zeros_like(v)
    for g0 in range(0, n, c):
        blk = slice(g0, min(n, g0 + c))
        inside[:, blk] = full_linear_attention(q[:, blk], k[:, blk], v[:, blk], causal=True, normalizer="sum")
    total = chunk_linear_attention(q, k, v, chunk_size=c, causal=True, normalizer="sum") + inside
    torch.testing.assert_close(total, full_linear_attention(q, k, v, causal=True, normalizer="sum"),
                               rtol=1e-12, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 14), c=st.integers(1, 6), t=st.integers(1, 13), normalizer=st.sampled_from(["count", "article", "peer"]),
       seed=st.integers(0, 10_000))
def test_causal_flash_never_reads_the_future(n, c, t, normalizer, seed):
    t = min(t, n - 1)
    layer = make(seed=seed % 7, causal=True, chunk_size=c, normalizer=normalizer)
    x = x_in(b=1, n=n, seed=seed)
    y = x.clone()
    y[:, t:] += rand(1, n - t, 12, seed=seed + 1) * 3
    with torch.no_grad():
        assert torch.equal(layer(x)[:, :t], layer(y)[:, :t])


def test_relative_bias_off_is_off_and_on_changes_the_output():
    layer = make(rel_pos_bias=False)
    assert layer.rel_bias is None and not any("rel" in name for name, _ in layer.named_parameters())
    on = make(rel_pos_bias=True)
    on.load_state_dict(layer.state_dict(), strict=False)
    x = x_in()
    with torch.no_grad():
        torch.testing.assert_close(on(x), layer(x), rtol=1e-12, atol=1e-12)  # zero init: no change
        on.rel_bias.uniform_(-1, 1)
        assert not torch.allclose(on(x), layer(x))


def _peer_pair(causal, n_chunk, d=8, e_factor=2, s=6):
    flash_pytorch = pytest.importorskip("flash_pytorch")
    torch.manual_seed(3)
    peer = flash_pytorch.FLASH(dim=d, group_size=n_chunk, query_key_dim=s, expansion_factor=e_factor, causal=causal,
                               norm_klass=torch.nn.Identity).double()
    ours = FLASH(d, expansion=e_factor, key_dim=s, chunk_size=n_chunk, causal=causal, normalizer="peer", rope=False,
                 bias=True).double()
    e = d * e_factor
    with torch.no_grad():
        w, bia = peer.to_hidden[0].weight, peer.to_hidden[0].bias  # rows: [v, gate]; ours: [u (gate), v]
        ours.to_uv.weight.copy_(torch.cat([w[e:], w[:e]]))
        ours.to_uv.bias.copy_(torch.cat([bia[e:], bia[:e]]))
        ours.to_z.load_state_dict(peer.to_qk[0].state_dict())
        ours.out.load_state_dict(peer.to_out.state_dict())
        for h, aff in enumerate((ours.q_affine, ours.q_lin, ours.k_affine, ours.k_lin)):  # peer order
            aff.gamma.copy_(peer.qk_offset_scale.gamma[h])
            aff.beta.copy_(peer.qk_offset_scale.beta[h])
    return peer, ours


@pytest.mark.parametrize("causal", [False, True])
def test_peer_flash_pytorch_matches_once_its_always_on_bias_is_zeroed(causal):
    peer, ours = _peer_pair(causal, 4)
    x = x_in(b=2, n=11, seed=5)[..., :8].contiguous()
    with torch.no_grad():
        biased = peer(x) - x  # the peer adds the residual
        assert not torch.allclose(biased, ours(x))  # its T5 bias is on: FLASH has no flag to turn it off
        peer.rel_pos_bias.relative_attention_bias.weight.zero_()
        torch.testing.assert_close(peer(x) - x, ours(x), rtol=1e-10, atol=1e-12)


def test_peer_gau_rel_pos_bias_false_still_adds_the_bias():
    flash_pytorch = pytest.importorskip("flash_pytorch")
    torch.manual_seed(0)
    gau = flash_pytorch.GAU(dim=8, query_key_dim=6, rel_pos_bias=False).double()
    x = x_in(b=1, n=9, seed=2)[..., :8].contiguous()
    with torch.no_grad():
        before = gau(x)
        gau.rel_pos_bias.relative_attention_bias.weight.zero_()
        after = gau(x)
    assert not torch.allclose(before, after)  # the flag did not turn the bias off (a known peer bug)


def test_dtype_device_and_bad_input():
    layer = FLASH(8, key_dim=4, chunk_size=4)
    out = layer(torch.randn(2, 9, 8))
    assert out.dtype == torch.float32 and out.shape == (2, 9, 8)
    with pytest.raises(ValueError):
        FLASH(8, key_dim=4, normalizer="mean")
    with pytest.raises(ValueError):
        FLASH(8, key_dim=4, chunk_size=0)
    with pytest.raises(ValueError):
        FLASH(8, key_dim=4, attention="softmax")
    with pytest.raises(ValueError):
        layer(torch.randn(2, 9, 7))
    q = torch.randn(1, 5, 3)
    with pytest.raises(ValueError):
        chunk_linear_attention(q, q, torch.randn(1, 4, 3), chunk_size=2)
    with pytest.raises(ValueError):
        mixed_chunk_attention(q, q, q, q, q, chunk_size=2, mask=torch.ones(1, 5))
    with pytest.raises(ValueError):
        full_linear_attention(q, q, q, causal=True, normalizer="article")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    layer = make(causal=True)
    x = x_in()
    with torch.no_grad():
        torch.testing.assert_close(layer.cuda()(x.cuda()).cpu(), make(causal=True)(x), rtol=1e-9, atol=1e-11)


def test_parts_split_mixed_chunk_attention():
    """``parts="local"`` + ``parts="global"`` = ``"both"``; a bad value raises."""
    g = torch.Generator().manual_seed(5)
    qq, kq, ql, kl = (torch.randn(2, 13, 4, generator=g, dtype=torch.float64) for _ in range(4))
    v = torch.randn(2, 13, 3, generator=g, dtype=torch.float64)
    for causal in (False, True):
        kw = dict(chunk_size=4, causal=causal)
        both = mixed_chunk_attention(qq, kq, ql, kl, v, **kw)
        local = mixed_chunk_attention(qq, kq, ql, kl, v, parts="local", **kw)
        glob = mixed_chunk_attention(qq, kq, ql, kl, v, parts="global", **kw)
        torch.testing.assert_close(local + glob, both)
        torch.testing.assert_close(glob, chunk_linear_attention(ql, kl, v, **kw))
    with pytest.raises(ValueError):
        mixed_chunk_attention(qq, kq, ql, kl, v, chunk_size=4, parts="neither")
    with pytest.raises(ValueError):
        FLASH(8, key_dim=4, parts="neither")
