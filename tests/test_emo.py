"""Tests of kexue_lib.emo (article 9797): loop reference, OT peers (POT, scipy), bounds, gradient, errors."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from kexue_lib.emo import cosine_cost_matrix, emd_linprog, emo_ce_mix, emo_loss, emo_soft_bounds

ot = pytest.importorskip("ot")


def _loop_emo(logits, labels, emb):
    """float64 loop reference: sum_i p_i (1 - cos(e_i, e_t))."""
    out = []
    for z, t in zip(logits.double(), labels):
        p = torch.softmax(z, -1)
        s = 0.0
        for i in range(z.numel()):
            s += float(p[i]) * (1 - float(F.cosine_similarity(emb[i].double(), emb[t].double(), dim=0)))
        out.append(s)
    return torch.tensor(out, dtype=torch.float64)


def _case(seed, b=5, v=7, d=3, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, v, generator=g, dtype=dtype), torch.randint(0, v, (b,), generator=g),
            torch.randn(v, d, generator=g, dtype=dtype))


def test_loop_reference():
    z, t, e = _case(0)
    torch.testing.assert_close(emo_loss(z, t, e, reduction="none"), _loop_emo(z, t, e))


def test_matches_pot_and_linprog_one_hot():
    z, t, e = _case(1, b=4, v=9)
    cost = cosine_cost_matrix(e).numpy()
    got = emo_loss(z, t, e, reduction="none").numpy()
    for k in range(4):
        p = torch.softmax(z[k], -1).numpy()
        tau = np.eye(9)[int(t[k])]
        assert got[k] == pytest.approx(ot.emd2(p, tau, cost), abs=1e-9)
        assert got[k] == pytest.approx(emd_linprog(p, tau, cost), abs=1e-7)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_soft_bounds_bracket_exact_ot(seed):
    g = torch.Generator().manual_seed(seed)
    v = 6
    e = torch.randn(v, 3, generator=g, dtype=torch.float64)
    p = torch.softmax(2 * torch.randn(v, generator=g, dtype=torch.float64), -1)
    tau = torch.softmax(2 * torch.randn(v, generator=g, dtype=torch.float64), -1)
    lo, up = emo_soft_bounds(p, tau, e)
    exact = ot.emd2(p.numpy(), tau.numpy(), cosine_cost_matrix(e).numpy())
    assert float(lo) - 1e-9 <= exact <= float(up) + 1e-9
    assert float(up) == pytest.approx(float(p @ cosine_cost_matrix(e) @ tau), abs=1e-12)


def test_gradient_of_target_logit():
    z, t, e = _case(2)
    z.requires_grad_(True)
    loss = emo_loss(z, t, e, reduction="none")
    loss.sum().backward()
    p = torch.softmax(z.detach(), -1)
    torch.testing.assert_close(z.grad[torch.arange(5), t], -p[torch.arange(5), t] * loss.detach())
    assert torch.autograd.gradcheck(lambda x: emo_loss(x, t, e), (z.detach().clone().requires_grad_(True),))


def test_ignore_index_reductions_and_mix():
    z, t, e = _case(3, b=6)
    t2 = t.clone()
    t2[0] = -100
    full = emo_loss(z, t2, e, reduction="none")
    assert full[0] == 0
    torch.testing.assert_close(emo_loss(z, t2, e), full[1:].mean())
    torch.testing.assert_close(emo_loss(z, t2, e, reduction="sum"), full.sum())
    mix = emo_ce_mix(z, t2, e)
    torch.testing.assert_close(mix, F.cross_entropy(z, t2))  # value equals CE
    # embedding is frozen
    e2 = e.clone().requires_grad_(True)
    assert not emo_loss(z, t, e2).requires_grad


def test_dtype_and_batch_shapes():
    z, t, e = _case(4, b=6, dtype=torch.float32)
    out = emo_loss(z.view(2, 3, -1).to(torch.bfloat16), t.view(2, 3), e, reduction="none")
    assert out.dtype == torch.bfloat16 and out.shape == (2, 3)
    torch.testing.assert_close(out.float(), emo_loss(z, t, e, reduction="none").view(2, 3), atol=2e-2, rtol=0)


@pytest.mark.parametrize("bad", [
    lambda z, t, e: emo_loss(z, t.float(), e),
    lambda z, t, e: emo_loss(z, t[:-1], e),
    lambda z, t, e: emo_loss(z, t, e[:-1]),
    lambda z, t, e: emo_loss(z, t + 100, e),
    lambda z, t, e: emo_loss(z, t, e, reduction="avg"),
    lambda z, t, e: emo_loss(z, t, torch.zeros_like(e)),
    lambda z, t, e: emo_soft_bounds(torch.softmax(z, -1), torch.softmax(z, -1) * 2, e),
    lambda z, t, e: emd_linprog([0.5, 0.5], [1.0], [[0.0, 1.0]]),
])
def test_bad_input(bad):
    z, t, e = _case(5)
    with pytest.raises(ValueError):
        bad(z, t, e)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    z, t, e = _case(6, dtype=torch.float32)
    out = emo_loss(z.cuda(), t.cuda(), e.cuda(), reduction="none")
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), emo_loss(z, t, e, reduction="none"))
