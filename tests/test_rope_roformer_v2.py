"""Tests of the RoFormerV2 additions: PositionLM's post-norm / ReZero residuals with alpha_ramp (kexue_lib.rope)
and the masked-LM objective and step hook of kexue_lib.extrapolation.train_lm."""
import pytest
import torch

from kexue_lib.extrapolation import loss_by_length, mlm_loss, train_lm
from kexue_lib.rope import PositionLM, alpha_ramp, rms_norm
from kexue_lib.toy_lm import markov2_chain

V = 8


def _model(residual="pre", **kw):
    torch.manual_seed(0)
    return PositionLM(V + 1, n_out=V, d_model=16, n_heads=2, n_layers=3, causal=False, norm="rmsnorm_nogain",
                      bias=False, attention={"qk_bias": False}, residual=residual, **kw).double()


def test_alpha_ramp_values_and_errors():
    assert [alpha_ramp(s, 4) for s in (0, 1, 2, 4, 9)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    with pytest.raises(ValueError):
        alpha_ramp(-1, 4)
    with pytest.raises(ValueError):
        alpha_ramp(1, 0)


def test_post_norm_at_alpha_zero_is_normalized_identity():
    m = _model("post")
    tok = torch.randint(V, (2, 7))
    m.set_alpha(0.0)
    with torch.no_grad():
        ref = m.head(rms_norm(m.embed(tok), eps=1e-6))
        torch.testing.assert_close(m(tok), ref, rtol=1e-6, atol=1e-9)
        m.set_alpha(1.0)
        assert not torch.allclose(m(tok), ref, atol=1e-3)


def test_post_norm_matches_loop_reference():
    m = _model("post")
    m.set_alpha(0.5)
    tok = torch.randint(V, (2, 5))
    with torch.no_grad():
        x = m.embed(tok)
        for b in m.blocks:
            x = rms_norm(x + 0.5 * b.attn(x), eps=1e-6)
            x = rms_norm(x + 0.5 * b.ffn(x), eps=1e-6)
        torch.testing.assert_close(m(tok), m.head(x))


def test_rezero_starts_as_identity_and_has_no_norm():
    m = _model("rezero")
    tok = torch.randint(V, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(m(tok), m.head(m.embed(tok)))
    names = [n for n, _ in m.named_parameters()]
    assert sum("alpha" in n for n in names) == 2 * 3
    from kexue_lib.rope import RMSNorm
    assert not any(isinstance(mod, (RMSNorm, torch.nn.LayerNorm)) for mod in m.modules())


def test_residual_errors():
    with pytest.raises(ValueError):
        PositionLM(V, residual="sandwich")
    with pytest.raises(ValueError):
        PositionLM(V).set_alpha(0.5)
    with pytest.raises(ValueError):
        _model("post").set_alpha(-1.0)


def test_default_pre_norm_unchanged():
    torch.manual_seed(0)
    a = PositionLM(V, d_model=16, n_heads=2)
    torch.manual_seed(0)
    b = PositionLM(V, d_model=16, n_heads=2, residual="pre")
    tok = torch.randint(V, (2, 5))
    torch.testing.assert_close(a(tok), b(tok))


def test_mlm_objective_paired_and_hook():
    chain = markov2_chain(V, generator=torch.Generator().manual_seed(0))
    seen = []
    runs = []
    for _ in range(2):
        m = _model("post").float()
        runs.append(train_lm(m, chain, steps=6, batch=4, length=8, seed=3, objective="mlm",
                             on_step=lambda s, m=m: (seen.append(s), m.set_alpha(alpha_ramp(s, 4)))))
    assert runs[0] == runs[1]
    assert seen == list(range(6)) * 2
    h = loss_by_length(m, chain, [8], batch=8, objective="mlm")
    assert h == loss_by_length(m, chain, [8], batch=8, objective="mlm")
    x = torch.randint(V, (3, 8))
    with torch.no_grad():
        assert float(mlm_loss(m, x, mask_id=V, generator=torch.Generator().manual_seed(0))) > 0


def test_objective_errors():
    chain = markov2_chain(V, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError):
        train_lm(_model(), chain, steps=1, objective="clm")
    with pytest.raises(ValueError):
        train_lm(_model(), chain, steps=1, kind="copy", objective="mlm")
