"""Tests of the options added for article 9859 (key normalization): ``query_norm`` (QNA, CosA) and ``ntk_base``."""
import math

import pytest
import torch
import torch.nn.functional as F

from kexue_lib.rope import PositionAttention, PositionLM, apply_rope, ntk_base, rope_frequencies

F64 = torch.float64


def layer(**opts):
    torch.manual_seed(3)
    return PositionAttention(16, 2, **opts).double()


def per_row_hook(module_attr, c):
    """Scale the output rows (positions) of a projection by c (shape (n,)): one factor per token."""
    return module_attr.register_forward_hook(lambda m, inp, out: out * c[None, :, None])


def test_query_norm_defaults_off_and_leaves_logits_unchanged():
    a, b = layer(), layer(query_norm=False)
    x = torch.randn(2, 7, 16, dtype=F64)
    assert a.query_norm is False
    torch.testing.assert_close(a.logits(x), b.logits(x), rtol=0, atol=0)


def test_qna_logits_are_unit_queries_dot_keys_without_scale():
    lay = layer(query_norm=True, position="nope")
    x = torch.randn(2, 6, 16, dtype=F64)
    q, k = lay._heads(lay.q(x)), lay._heads(lay.k(x))
    ref = F.normalize(q, dim=-1) @ k.transpose(-1, -2)
    got = lay.logits(x).detach()
    mask = torch.ones(6, 6, dtype=torch.bool).tril()
    torch.testing.assert_close(got[..., mask], ref[..., mask])


def test_cosa_logits_are_scale_times_cosine_with_rope():
    lam = 7.5
    lay = layer(query_norm=True, key_norm=True, key_scale=lam)
    x = torch.randn(1, 5, 16, dtype=F64)
    q, k = lay._heads(lay.q(x)), lay._heads(lay.k(x))
    rq, rk = apply_rope(q), apply_rope(k)
    cos = F.cosine_similarity(rq[..., :, None, :], rk[..., None, :, :], dim=-1)
    got = lay.logits(x).detach()
    mask = torch.ones(5, 5, dtype=torch.bool).tril()
    torch.testing.assert_close(got[..., mask], lam * cos[..., mask])
    assert float(got[..., mask].abs().max()) <= lam * (1 + 1e-12)


def test_qna_ignores_query_scale_per_token_and_kna_key_scale():
    x = torch.randn(2, 8, 16, dtype=F64)
    c = torch.rand(8, dtype=F64) * 5 + 0.1
    for opts, proj in [({"query_norm": True}, "q"), ({"key_norm": True}, "k")]:
        lay = layer(**opts)
        out = lay(x)
        handle = per_row_hook(getattr(lay, proj), c)
        torch.testing.assert_close(lay(x), out)
        handle.remove()
    plain = layer()
    with torch.no_grad():
        out = plain(x)
        handle = per_row_hook(plain.k, c)
        assert float((plain(x) - out).abs().max()) > 1e-3  # without key norm the key scales matter
    handle.remove()


def test_query_norm_in_a_model_trains_and_switches():
    torch.manual_seed(0)
    m = PositionLM(8, d_model=16, n_heads=2, n_layers=1, attention={"query_norm": True, "key_norm": True,
                                                                    "key_scale": 4 * math.log(8)})
    x = torch.randint(0, 8, (2, 12))
    assert m(x).shape == (2, 12, 8)
    m.attentions()[0].query_norm = False
    assert torch.isfinite(m(x)).all()


def test_ntk_base_interpolates_lowest_frequency_and_keeps_highest():
    d, s = 32, 8.0
    b2 = ntk_base(10000.0, s, d)
    f1, f2 = rope_frequencies(d, 10000.0), rope_frequencies(d, b2)
    assert math.isclose(float(f2[-1]), float(f1[-1]) / s, rel_tol=1e-12)
    assert float(f2[0]) == float(f1[0]) == 1.0
    assert ntk_base(10000.0, 1.0, d) == 10000.0


@pytest.mark.parametrize("call", [
    lambda: ntk_base(10000.0, 0.5, 32),
    lambda: ntk_base(1.0, 2.0, 32),
    lambda: ntk_base(10000.0, 2.0, 7),
    lambda: ntk_base(10000.0, 2.0, 2),
])
def test_ntk_base_bad_input(call):
    with pytest.raises(ValueError):
        call()
