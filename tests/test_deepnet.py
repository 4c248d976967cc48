"""Tests of kexue_lib.deepnet: the paper's constants, the DeepNorm residual (and its popular misreading), the
beta-scaled init, the magnitude probe, the block's three residual modes, the MLP stack."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

from kexue_lib.deepnet import (MLPStack, TransformerBlock, TransformerStack, deepnorm_coefficients,
                               deepnorm_init_, deepnorm_residual, magnitude_decompose)


@pytest.mark.parametrize("n", [1, 6, 18, 100, 1000])
def test_paper_constants_single_stack(n):
    enc = deepnorm_coefficients(n_enc=n)
    dec = deepnorm_coefficients(n_dec=n)
    assert enc["enc_alpha"] == pytest.approx((2 * n) ** 0.25) and enc["enc_beta"] == pytest.approx((8 * n) ** -0.25)
    assert dec["dec_alpha"] == pytest.approx((2 * n) ** 0.25) and dec["dec_beta"] == pytest.approx((8 * n) ** -0.25)
    assert enc["dec_alpha"] is None and dec["enc_beta"] is None
    # the paper's bound: beta / alpha = (4N)^(-1/2)
    assert enc["enc_beta"] / enc["enc_alpha"] == pytest.approx((4 * n) ** -0.5)


@pytest.mark.parametrize("n,m", [(6, 6), (12, 6), (100, 100)])
def test_paper_constants_encoder_decoder(n, m):
    c = deepnorm_coefficients(n, m)
    assert c["enc_alpha"] == pytest.approx(0.81 * (n**4 * m) ** (1 / 16))
    assert c["enc_beta"] == pytest.approx(0.87 * (n**4 * m) ** (-1 / 16))
    assert c["dec_alpha"] == pytest.approx((3 * m) ** 0.25) and c["dec_beta"] == pytest.approx((12 * m) ** -0.25)


@pytest.mark.parametrize("opt,alpha,lam", [("sgd", 0.25, -0.25), ("adam", 0.5, -0.5), ("lamb", 0.0, -0.5)])
def test_article_table(opt, alpha, lam):
    c = deepnorm_coefficients(n_dec=24, optimizer=opt)
    assert c["dec_alpha"] == pytest.approx(48**alpha) and c["dec_beta"] == pytest.approx(48**lam)


@pytest.mark.parametrize("kwargs", [dict(), dict(n_enc=-1), dict(n_enc=2.0), dict(n_dec=3, optimizer="rmsprop"),
                                    dict(n_enc=2, n_dec=2, optimizer="adam"), dict(n_enc=True)])
def test_coefficients_bad_input(kwargs):
    with pytest.raises(ValueError):
        deepnorm_coefficients(**kwargs)


def test_deepnorm_residual_is_not_the_popular_misreading():
    g = torch.Generator().manual_seed(0)
    x, fx = torch.randn(4, 16, generator=g), torch.randn(4, 16, generator=g)
    ours = deepnorm_residual(x, fx, alpha=3.0)
    torch.testing.assert_close(ours, F.layer_norm(3.0 * x + fx, (16,)))
    torch.testing.assert_close(ours, F.layer_norm(x + fx / 3.0, (16,)), atol=1e-4, rtol=0)  # equal up to the eps of LN
    wrong = F.layer_norm(x + 3.0 * fx, (16,))  # LN(x + alpha F(x)): what a popular implementation computes
    assert (ours - wrong).abs().max() > 0.1
    torch.testing.assert_close(deepnorm_residual(x, fx, alpha=1.0), F.layer_norm(x + fx, (16,)))


def test_block_deepnorm_uses_alpha_on_the_identity_path():
    torch.manual_seed(0)
    blk = TransformerBlock(8, 2, 16, norm="deepnorm", alpha=5.0).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    # float64 loop reference of the two sublayers
    h = blk.ln1(5.0 * x + blk.attn(x))
    ref = blk.ln2(5.0 * h + blk.fc2(torch.relu(blk.fc1(h))))
    torch.testing.assert_close(blk(x), ref)


def test_block_modes_and_causality():
    torch.manual_seed(1)
    x = torch.randn(1, 6, 8)
    for norm in ("post", "pre", "deepnorm"):
        blk = TransformerBlock(8, 2, 16, norm=norm, alpha=2.0 if norm == "deepnorm" else 1.0)
        y = blk(x)
        x2 = x.clone()
        x2[:, -1] += 1.0
        torch.testing.assert_close(blk(x2)[:, :-1], y[:, :-1])  # the future does not leak
    pre = TransformerBlock(8, 2, 16, norm="pre")
    ref = x + pre.attn(pre.ln1(x))
    torch.testing.assert_close(pre(x), ref + pre.ffn(pre.ln2(ref)))


@pytest.mark.parametrize("kwargs", [dict(norm="sandwich"), dict(norm="post", alpha=2.0), dict(alpha=0.0, norm="deepnorm")])
def test_block_bad_input(kwargs):
    with pytest.raises(ValueError):
        TransformerBlock(8, 2, 16, **kwargs)
    with pytest.raises(ValueError):
        TransformerBlock(8, 3, 16)


def test_init_scales_value_output_ffn_only():
    torch.manual_seed(2)
    blk = TransformerBlock(256, 4, 512, norm="deepnorm", alpha=2.0)
    deepnorm_init_(blk, beta=0.1)
    def xavier_std(lin):
        fan_out, fan_in = lin.weight.shape
        return math.sqrt(2.0 / (fan_in + fan_out))
    for name in ("v_proj", "o_proj", "fc1", "fc2", "q_proj", "k_proj"):
        lin = getattr(blk, name)
        gain = 0.1 if name not in ("q_proj", "k_proj") else 1.0
        assert lin.weight.std().item() == pytest.approx(gain * xavier_std(lin), rel=0.03)
        assert (lin.bias == 0).all()
    with pytest.raises(ValueError):
        deepnorm_init_(blk, beta=-1.0)


def test_stack_takes_the_paper_or_table_constants():
    s = TransformerStack(12, 8, 2, 16, norm="deepnorm")
    assert s.alpha == pytest.approx(24**0.25) and s.beta == pytest.approx(96**-0.25)
    s = TransformerStack(12, 8, 2, 16, norm="deepnorm", optimizer="adam")
    assert s.alpha == pytest.approx(24**0.5) and s.beta == pytest.approx(24**-0.5)
    assert all(b.alpha == s.alpha for b in s.blocks)
    lm = TransformerStack(2, 8, 2, 16, norm="pre", vocab=5, max_len=7)
    assert lm(torch.zeros(3, 7, dtype=torch.long)).shape == (3, 7, 5)
    with pytest.raises(ValueError):
        TransformerStack(2, 8, 2, 16, norm="post", alpha=2.0)
    with pytest.raises(ValueError):
        lm(torch.zeros(3, 8, dtype=torch.long))


def test_magnitude_decompose_closed_form_against_a_grid():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(6, 9, generator=g, dtype=torch.float64)
    lam, u = magnitude_decompose(w)
    torch.testing.assert_close(lam * u, w)
    eye = torch.eye(6, dtype=torch.float64)
    kappas = torch.linspace(0.5 * lam.item(), 1.5 * lam.item(), 2001, dtype=torch.float64)
    obj = torch.stack([((w @ w.T) / k**2 - eye).norm() for k in kappas])
    assert abs(kappas[obj.argmin()].item() - lam.item()) < 1e-3 * lam.item()


@given(st.floats(0.01, 100.0), st.integers(2, 12), st.integers(0, 10_000))
def test_magnitude_probe_homogeneous_and_exact_on_orthogonal(c, n, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, n + 3, generator=g, dtype=torch.float64)
    assert magnitude_decompose(c * w)[0].item() == pytest.approx(c * magnitude_decompose(w)[0].item(), rel=1e-9)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    assert magnitude_decompose(c * q)[0].item() == pytest.approx(c, rel=1e-9)


def test_magnitude_probe_bad_input():
    for w in (torch.zeros(3, 3), torch.ones(3), torch.ones(2, 2, dtype=torch.long), [[1.0]]):
        with pytest.raises(ValueError):
            magnitude_decompose(w)


def test_mlp_stack_residual_and_plain():
    torch.manual_seed(4)
    res = MLPStack(8, 16, residual=True).double()
    assert res.eps == pytest.approx(0.25)
    x = torch.randn(3, 8, dtype=torch.float64)
    h = x
    for layer in res.layers:
        h = h + 0.25 * layer[2](torch.relu(layer[0](h)))
    torch.testing.assert_close(res(x), res.head(h))
    plain = MLPStack(8, 4)
    assert plain(x.float()).shape == (3, 1)
    with pytest.raises(ValueError):
        MLPStack(8, 4, eps=0.1)
    with pytest.raises(ValueError):
        plain(torch.ones(3, 8, dtype=torch.long))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_follows_device():
    s = TransformerStack(2, 8, 2, 16, norm="deepnorm").cuda()
    y = s(torch.randn(2, 5, 8, device="cuda"))
    assert y.device.type == "cuda"
    lam, _ = magnitude_decompose(torch.randn(4, 4, device="cuda"))
    assert lam.device.type == "cuda"
