"""Tests for kexue_lib.optim: Lion and Tiger against plain-loop references and installed peers."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from kexue_lib.optim import (Lion, Tiger, amos_lion_hparams, lion_update_, signum_update_, tiger_param_groups,
                             tiger_update_)


def _sign(x):
    return (x > 0) - (x < 0)


# ---------------------------------------------------------------- plain-loop float64 references
def lion_loop(theta, grads, *, lr, b1, b2, wd):
    """The paper's pseudo-code, one coordinate at a time, in Python floats."""
    theta, m, out = list(theta), [0.0] * len(theta), []
    for g in grads:
        for i in range(len(theta)):
            u = _sign(b1 * m[i] + (1 - b1) * g[i])
            theta[i] = theta[i] - lr * (u + wd * theta[i])
            m[i] = b2 * m[i] + (1 - b2) * g[i]
        out.append(list(theta))
    return out


def tiger_loop(theta, grads, *, lr, beta, wd, k, kind, shrink=0.99):
    """bojone/tiger transcribed coordinate by coordinate (rows of a list-of-lists for 'embedding')."""
    rows = [list(r) for r in theta]
    m = [[0.0] * len(r) for r in rows]
    n = sum(len(r) for r in rows)
    for t, g in enumerate(grads):
        if any(math.isnan(x) or math.isinf(x) for r in g for x in r):
            c = 1.0 if kind == "gain" else 0.0
            rows = [[(x - c) * shrink + c for x in r] for r in rows]
            continue
        b1 = beta if t % k == 0 else 1.0
        m = [[b1 * mi + (1 - beta) / k * gi for mi, gi in zip(mr, gr)] for mr, gr in zip(m, g)]
        if (t + 1) % k:
            continue
        if kind in ("bias", "gain"):
            eta, d = [0.5 * lr] * len(rows), 0.0
        elif kind == "matrix":
            eta, d = [lr * math.sqrt(sum(x * x for r in rows for x in r) / n)] * len(rows), wd
        else:  # embedding: row-wise RMS
            eta, d = [lr * math.sqrt(sum(x * x for x in r) / len(r)) for r in rows], wd
        rows = [[x - e * (_sign(mi) + d * x) for x, mi in zip(r, mr)] for r, mr, e in zip(rows, m, eta)]
    return rows


def _run(opt_cls, p0, grads, **kw):
    p = nn.Parameter(p0.clone())
    opt = opt_cls([p], **kw)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach(), opt


# ---------------------------------------------------------------- Lion
def test_lion_matches_plain_loop_reference():
    gen = torch.Generator().manual_seed(0)
    p0 = torch.randn(7, generator=gen, dtype=torch.float64)
    grads = [torch.randn(7, generator=gen, dtype=torch.float64) for _ in range(25)]
    p, _ = _run(Lion, p0, grads, lr=0.01, betas=(0.9, 0.99), weight_decay=0.3)
    ref = lion_loop(p0.tolist(), [g.tolist() for g in grads], lr=0.01, b1=0.9, b2=0.99, wd=0.3)[-1]
    torch.testing.assert_close(p, torch.tensor(ref, dtype=torch.float64), rtol=0, atol=1e-14)


def test_lion_rejects_momentum_first_variant():
    """Updating m before the sign step (a plausible misreading) gives a different trajectory."""
    gen = torch.Generator().manual_seed(1)
    p0 = torch.randn(50, generator=gen, dtype=torch.float64)
    grads = [torch.randn(50, generator=gen, dtype=torch.float64) for _ in range(10)]
    p, _ = _run(Lion, p0, grads, lr=0.01, betas=(0.9, 0.99))
    q, m = p0.clone(), torch.zeros_like(p0)
    for g in grads:
        m = 0.99 * m + 0.01 * g
        q -= 0.01 * torch.sign(0.9 * m + 0.1 * g)
    assert (p - q).abs().max() > 1e-3


def _mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))


def _train(model, opt, steps=30, accum=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(32, 8, generator=gen)
        y = torch.randint(0, 3, (32,), generator=gen)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("wd", [0.0, 0.5])
def test_lion_trajectory_equals_lion_pytorch(wd):
    lion_pytorch = pytest.importorskip("lion_pytorch")
    a, b = _mlp(0), _mlp(0)
    ours = _train(a, Lion(a.parameters(), lr=3e-3, betas=(0.9, 0.99), weight_decay=wd))
    peer = _train(b, lion_pytorch.Lion(b.parameters(), lr=3e-3, betas=(0.9, 0.99), weight_decay=wd))
    torch.testing.assert_close(ours, peer, rtol=0, atol=0)  # bit for bit


def test_lion_equal_betas_no_decay_is_signum():
    gen = torch.Generator().manual_seed(2)
    p0 = torch.randn(4, 5, generator=gen)
    grads = [torch.randn(4, 5, generator=gen) for _ in range(40)]
    p, _ = _run(Lion, p0, grads, lr=0.05, betas=(0.9, 0.9))
    q, m = p0.clone(), torch.zeros_like(p0)
    for g in grads:
        signum_update_(q, g, m, lr=0.05, beta=0.9)
    torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


def test_lion_state_is_one_tensor_and_step_is_in_place():
    model = _mlp(0)
    ptrs = [p.data_ptr() for p in model.parameters()]
    opt = Lion(model.parameters(), lr=1e-3)
    _train(model, opt, steps=2)
    assert all(len(opt.state[p]) == 1 for p in model.parameters())
    assert ptrs == [p.data_ptr() for p in model.parameters()]
    adamw = torch.optim.AdamW(model.parameters())
    _train(model, adamw, steps=1)
    assert all(len([v for v in adamw.state[p].values() if v.numel() > 1]) == 2 for p in model.parameters())


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 64), st.integers(0, 10_000))
def test_sign_update_has_unit_rms(n, seed):
    gen = torch.Generator().manual_seed(seed)
    p, g, m = torch.zeros(n), torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    lion_update_(p, g, m, lr=1.0, beta1=0.9, beta2=0.99)
    assert p.pow(2).mean().sqrt().item() == pytest.approx(1.0, abs=1e-6)


def test_amos_rule_numbers():
    h = amos_lion_hparams(1.11e-3, math.sqrt(1 / 768))
    assert h["lr"] == pytest.approx(4.005e-5, rel=1e-3)
    assert h["weight_decay"] == pytest.approx(0.01538, rel=1e-3)


# ---------------------------------------------------------------- Tiger
@pytest.mark.parametrize("kind", ["matrix", "embedding", "bias", "gain"])
@pytest.mark.parametrize("k", [1, 3])
def test_tiger_matches_plain_loop_reference(kind, k):
    gen = torch.Generator().manual_seed(3)
    p0 = torch.randn(3, 4, generator=gen, dtype=torch.float64) + (1.0 if kind == "gain" else 0.0)
    grads = [torch.randn(3, 4, generator=gen, dtype=torch.float64) for _ in range(12)]
    grads[5][1, 2] = float("nan")
    grads[8][0, 0] = float("inf")
    p = nn.Parameter(p0.clone())
    opt = Tiger([dict(params=[p], kind=kind)], lr=0.02, beta=0.9, weight_decay=0.1, grad_accum_steps=k)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    ref = tiger_loop(p0.tolist(), [g.tolist() for g in grads], lr=0.02, beta=0.9, wd=0.1, k=k, kind=kind)
    torch.testing.assert_close(p.detach(), torch.tensor(ref, dtype=torch.float64), rtol=0, atol=1e-12)
    assert opt.guard_hits == 2


def test_tiger_folded_accumulation_equals_explicit_averaging():
    """k micro-steps into Tiger(grad_accum_steps=k) == one step on the mean gradient: theta bit for bit."""
    gen = torch.Generator().manual_seed(4)
    k, updates = 4, 100
    p0 = torch.randn(64, generator=gen, dtype=torch.float64)
    a, b = nn.Parameter(p0.clone()), nn.Parameter(p0.clone())
    folded = Tiger([dict(params=[a], kind="matrix")], lr=1e-2, grad_accum_steps=k)
    explicit = Tiger([dict(params=[b], kind="matrix")], lr=1e-2)
    for _ in range(updates):
        micro = [(a.detach() - 1.0) + torch.randn(64, generator=gen, dtype=torch.float64) for _ in range(k)]
        for g in micro:
            a.grad = g
            folded.step()
        b.grad = sum(micro) / k
        explicit.step()
    assert torch.equal(a.detach(), b.detach())
    torch.testing.assert_close(folded.state[a]["exp_avg"], explicit.state[b]["exp_avg"], rtol=1e-12, atol=1e-15)


def test_tiger_waits_between_accumulation_steps():
    p = nn.Parameter(torch.ones(5))
    opt = Tiger([p], lr=0.1, grad_accum_steps=3)
    for t in range(3):
        before = p.detach().clone()
        p.grad = torch.ones(5)
        opt.step()
        assert torch.equal(p.detach(), before) == (t < 2)


def test_tiger_nan_guard_shrinks_and_keeps_momentum():
    w, gamma = nn.Parameter(torch.full((2, 3), 2.0)), nn.Parameter(torch.full((3,), 3.0))
    opt = Tiger([dict(params=[w]), dict(params=[gamma], kind="gain")], shrink_ratio=0.9)
    w.grad, gamma.grad = torch.ones(2, 3), torch.ones(3)
    opt.step()
    w0, g0 = w.detach().clone(), gamma.detach().clone()
    m_w, m_g = opt.state[w]["exp_avg"].clone(), opt.state[gamma]["exp_avg"].clone()
    w.grad = torch.tensor([[1.0, float("nan"), 0.0], [0.0, 0.0, 0.0]])
    gamma.grad = torch.tensor([0.0, float("-inf"), 0.0])
    opt.step()
    torch.testing.assert_close(w.detach(), w0 * 0.9, rtol=0, atol=0)
    torch.testing.assert_close(gamma.detach(), (g0 - 1) * 0.9 + 1, rtol=0, atol=1e-7)
    assert torch.equal(opt.state[w]["exp_avg"], m_w) and torch.equal(opt.state[gamma]["exp_avg"], m_g)


def test_pytorch_optimizer_tiger_differs_on_purpose():
    """The peer has neither the RMS-relative learning rate nor the NaN guard; with both off, it agrees."""
    po = pytest.importorskip("pytorch_optimizer")
    gen = torch.Generator().manual_seed(5)
    grads = [torch.randn(6, 6, generator=gen) for _ in range(20)]
    rel = {}
    for scale in (0.1, 10.0):
        p0 = scale * torch.randn(6, 6, generator=gen)
        plain, _ = _run(lambda ps, **kw: Tiger([dict(params=ps, kind="plain")], **kw), p0, grads, lr=1e-2)
        peer, _ = _run(po.Tiger, p0, grads, lr=1e-2, foreach=False)
        torch.testing.assert_close(plain, peer, rtol=1e-6, atol=1e-7)  # same rule: agree
        ours, _ = _run(Tiger, p0, grads, lr=1e-2)  # 2-D -> RMS-relative learning rate
        rel_ours = ((ours - p0).pow(2).mean().sqrt() / p0.pow(2).mean().sqrt()).item()
        rel_peer = ((peer - p0).pow(2).mean().sqrt() / p0.pow(2).mean().sqrt()).item()
        rel[scale] = (rel_ours, rel_peer)
    assert 0.5 < rel[0.1][0] / rel[10.0][0] < 2  # ours: a relative step, whatever the scale
    assert rel[0.1][1] / rel[10.0][1] > 50  # peer: an absolute step, 100x larger relative to small weights
    # the guard: one NaN gradient poisons the peer's momentum for good (sign(NaN) = 0, so its weights
    # then only decay and training silently stops); ours keeps the momentum and shrinks the weights once
    p0 = torch.randn(4)
    grads = [torch.ones(4), torch.full((4,), float("nan"))] + [torch.ones(4)] * 3
    peer, peer_opt = _run(po.Tiger, p0, grads, lr=1e-2, weight_decay=0.0)
    ours, ours_opt = _run(Tiger, p0, grads, lr=1e-2, weight_decay=0.0)
    p = next(iter(peer_opt.state))
    assert torch.isnan(peer_opt.state[p]["exp_avg"]).all()
    torch.testing.assert_close(peer, p0 - 1e-2)  # frozen after the first step
    q = next(iter(ours_opt.state))
    assert torch.isfinite(ours_opt.state[q]["exp_avg"]).all()
    torch.testing.assert_close(ours, (p0 - 5e-3) * 0.99 - 3 * 5e-3)  # 1-D -> bias rule: lr / 2


@settings(max_examples=30, deadline=None)
@given(st.floats(1e-3, 1e3), st.floats(1e-4, 1e-1), st.integers(0, 1000))
def test_tiger_matrix_step_is_relative(scale, lr, seed):
    gen = torch.Generator().manual_seed(seed)
    p0 = scale * torch.randn(8, 8, generator=gen, dtype=torch.float64)
    p, _ = _run(Tiger, p0, [torch.randn(8, 8, generator=gen, dtype=torch.float64)], lr=lr, weight_decay=0.0)
    ratio = ((p - p0).pow(2).mean().sqrt() / p0.pow(2).mean().sqrt()).item()
    assert ratio == pytest.approx(lr, rel=1e-9)


def test_tiger_lazy_rows_freeze_unseen_rows():
    torch.manual_seed(0)
    emb = nn.Embedding(10, 4)
    opt = Tiger(tiger_param_groups(emb, lazy_rows=True), lr=0.1)
    emb(torch.tensor([1, 2])).sum().backward()
    opt.step()
    opt.zero_grad()
    w1, m1 = emb.weight.detach().clone(), opt.state[emb.weight]["exp_avg"].clone()
    for _ in range(20):
        emb(torch.tensor([3])).sum().backward()
        opt.step()
        opt.zero_grad()
    w, m = emb.weight.detach(), opt.state[emb.weight]["exp_avg"]
    assert torch.equal(w[[1, 2]], w1[[1, 2]]) and torch.equal(m[[1, 2]], m1[[1, 2]])
    assert not torch.equal(w[3], w1[3])
    # without lazy rows, rows 1 and 2 keep moving with the sign of a decaying momentum
    emb2 = nn.Embedding(10, 4)
    opt2 = Tiger(tiger_param_groups(emb2), lr=0.1)
    emb2(torch.tensor([1, 2])).sum().backward()
    opt2.step()
    w1 = emb2.weight.detach().clone()
    for _ in range(20):
        opt2.zero_grad()
        emb2(torch.tensor([3])).sum().backward()
        opt2.step()
    assert (emb2.weight.detach()[[1, 2]] - w1[[1, 2]]).abs().min() > 0


def test_tiger_param_groups_roles():
    model = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    groups = {g["kind"]: g["params"] for g in tiger_param_groups(model)}
    assert groups["embedding"] == [model[0].weight]
    assert groups["matrix"] == [model[1].weight]
    assert groups["gain"] == [model[2].weight]
    assert groups["bias"] == [model[1].bias, model[2].bias]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_steps_stay_in_dtype(dtype):
    for cls in (Lion, Tiger):
        p = nn.Parameter(torch.randn(4, 4).to(dtype))
        opt = cls([p])
        p.grad = torch.randn(4, 4).to(dtype)
        opt.step()
        assert p.dtype == dtype and opt.state[p]["exp_avg"].dtype == dtype and torch.isfinite(p).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    for cls in (Lion, Tiger):
        gen = torch.Generator().manual_seed(6)
        p0, grads = torch.randn(16, 16, generator=gen), [torch.randn(16, 16, generator=gen) for _ in range(5)]
        cpu, _ = _run(cls, p0, grads)
        gpu, _ = _run(cls, p0.cuda(), [g.cuda() for g in grads])
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("kw", [dict(lr=-1e-3), dict(lr=0.0), dict(betas=(1.0, 0.99)), dict(betas=(0.9, -0.1)),
                                dict(betas=(0.9,)), dict(weight_decay=-0.1), dict(lr=float("nan"))])
def test_lion_bad_hyperparameters(kw):
    with pytest.raises(ValueError):
        Lion([nn.Parameter(torch.zeros(2))], **kw)


@pytest.mark.parametrize("kw", [dict(lr=-1.0), dict(beta=1.0), dict(beta=-0.5), dict(grad_accum_steps=0),
                                dict(grad_accum_steps=1.5), dict(weight_decay=-1.0), dict(shrink_ratio=1.5)])
def test_tiger_bad_hyperparameters(kw):
    with pytest.raises(ValueError):
        Tiger([nn.Parameter(torch.zeros(2))], **kw)


def test_tiger_bad_groups_and_gradients():
    p = nn.Parameter(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="kind"):
        Tiger([dict(params=[p], kind="weights")])
    with pytest.raises(ValueError, match="lazy_rows"):
        Tiger([dict(params=[p], lazy_rows=True)], grad_accum_steps=2)
    opt = Tiger([dict(params=[p], lazy_rows=True)])
    p.grad = torch.ones(3, 2)
    with pytest.raises(ValueError, match="lazy_rows"):  # auto -> matrix: whole-tensor RMS
        opt.step()
    emb = nn.Embedding(4, 2, sparse=True)
    emb(torch.tensor([1])).sum().backward()
    for cls in (Lion, Tiger):
        with pytest.raises(ValueError, match="sparse"):
            cls(emb.parameters()).step()
    with pytest.raises(ValueError):
        tiger_param_groups([p])
    with pytest.raises(ValueError):
        amos_lion_hparams(-1.0, 0.1)


def test_tiger_update_functional_core_reports_guard():
    p, m = torch.ones(3), torch.zeros(3)
    assert tiger_update_(p, torch.tensor([0.0, float("nan"), 1.0]), m, lr=0.1, beta=0.9, weight_decay=0.0,
                         kind="plain", shrink_ratio=0.5)
    assert torch.equal(p, torch.full((3,), 0.5)) and torch.equal(m, torch.zeros(3))


def test_steps_reuse_one_scratch_buffer():
    """The sign is formed in one buffer per (device, dtype), sized to the largest parameter and
    reused by every parameter and step: a step allocates nothing per parameter."""
    from kexue_lib.optim import Lion, Tiger

    model = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Linear(5, 3))
    for opt in (Lion(model.parameters(), lr=1e-3), Tiger(model.parameters(), lr=1e-3)):
        seen = set()
        for _ in range(3):
            model.zero_grad()
            model(torch.randn(4, 7)).square().sum().backward()
            opt.step()
            (flat,) = opt._scratch_bufs.values()
            seen.add(flat.data_ptr())
        assert flat.numel() == max(p.numel() for p in model.parameters())
        assert len(seen) == 1
        assert "_scratch_bufs" not in opt.state_dict()["state"]


def test_optimizer_state_numel_counts_state_and_scratch():
    """Lion: momentum + one scratch as large as the largest parameter; AdamW: m, v and a step per tensor."""
    from kexue_lib.optim import optimizer_state_numel

    model = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Linear(5, 3))
    n = sum(p.numel() for p in model.parameters())
    big = max(p.numel() for p in model.parameters())
    model(torch.randn(4, 7)).square().sum().backward()
    lion, adamw = Lion(model.parameters(), lr=1e-3), torch.optim.AdamW(model.parameters())
    assert optimizer_state_numel(lion) == 0  # nothing before the first step
    lion.step()
    adamw.step()
    assert optimizer_state_numel(lion) == n + big
    assert optimizer_state_numel(adamw) == 2 * n + len(list(model.parameters()))
    with pytest.raises(ValueError):
        optimizer_state_numel(model)


# ---------------------------------------------------------------- the sign-power family (article 9512, future work)
def test_sign_power_family_endpoints_are_tiger_and_sgdm():
    """gamma = 1 follows Tiger's plain rule; gamma = 0 follows torch's SGD with a dampened momentum."""
    from kexue_lib.optim import sign_power_update_

    gen = torch.Generator().manual_seed(11)
    p0 = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    # torch's SGD starts its buffer at g_1 (not (1-beta) g_1): a zero first gradient makes the conventions meet
    grads = [torch.zeros_like(p0)] + [torch.randn(5, 7, generator=gen, dtype=torch.float64) for _ in range(30)]
    fam, m = p0.clone(), torch.zeros_like(p0)
    for g in grads:
        sign_power_update_(fam, g, m, lr=1e-2, beta=0.9, gamma=1.0)
    tiger, _ = _run(lambda ps, **kw: Tiger([dict(params=ps, kind="plain")], **kw), p0, grads, lr=1e-2, beta=0.9,
                    weight_decay=0.0)
    torch.testing.assert_close(fam, tiger, rtol=0, atol=0)
    fam, m = p0.clone(), torch.zeros_like(p0)
    for g in grads:
        sign_power_update_(fam, g, m, lr=0.5, beta=0.9, gamma=0.0)
    sgdm, _ = _run(torch.optim.SGD, p0, grads, lr=0.5, momentum=0.9, dampening=0.9)
    torch.testing.assert_close(fam, sgdm, rtol=1e-12, atol=1e-14)
    assert (fam - tiger).abs().max() > 1e-3  # the two endpoints are different optimizers
    half, m = p0.clone(), torch.zeros_like(p0)
    for g in grads:
        sign_power_update_(half, g, m, lr=1e-2, beta=0.9, gamma=0.5)
    assert not torch.allclose(half, tiger) and not torch.allclose(half, sgdm)


@pytest.mark.parametrize("kw", [dict(gamma=-0.1), dict(gamma=1.5), dict(lr=0.0), dict(beta=1.0)])
def test_sign_power_bad_input(kw):
    from kexue_lib.optim import sign_power_update_

    args = dict(lr=1e-2, beta=0.9, gamma=0.5) | kw
    with pytest.raises(ValueError):
        sign_power_update_(torch.zeros(3), torch.ones(3), torch.zeros(3), **args)


# ---------------------------------------------------------------- LAMB (the baseline of article 9512)
def test_lamb_matches_pytorch_optimizer():
    """The peer divides its step size by 1 - beta1^t *outside* the trust ratio (its AdamD switch off), so its
    early steps are up to 1/(1 - beta1) = 10x lr ||theta||; with that factor moved into our lr the two agree."""
    po = pytest.importorskip("pytorch_optimizer")
    from kexue_lib.optim import Lamb

    gen = torch.Generator().manual_seed(13)
    p0 = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    grads = [torch.randn(6, 5, generator=gen, dtype=torch.float64) for _ in range(20)]
    a, b = nn.Parameter(p0.clone()), nn.Parameter(p0.clone())
    ours = Lamb([a], lr=1e-2, bias_correction=False, decoupled_decay=True, max_weight_norm=10.0)
    peer = po.Lamb([b], lr=1e-2, foreach=False)
    for t, g in enumerate(grads, start=1):
        ours.param_groups[0]["lr"] = 1e-2 / (1 - 0.9 ** t)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        peer.step()
        if t == 1:
            assert ((b.detach() - p0).norm() / p0.norm()).item() == pytest.approx(0.1, rel=1e-6)  # 10x the paper's lr ||theta||
    torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-10, atol=1e-12)


def test_lamb_paper_update_is_relative_and_bias_corrected():
    """First step of the paper's LAMB (bias-corrected, no decay): r = g / (|g| + eps) ~ sign(g), step = lr ||theta||."""
    from kexue_lib.optim import Lamb

    gen = torch.Generator().manual_seed(12)
    for scale in (1e-2, 1e2):
        p0 = scale * torch.randn(6, 5, generator=gen, dtype=torch.float64)
        g = torch.randn(6, 5, generator=gen, dtype=torch.float64)
        p, _ = _run(Lamb, p0, [g], lr=1e-3, eps=0.0)
        u = torch.sign(g)
        torch.testing.assert_close(p, p0 - 1e-3 * p0.norm() / u.norm() * u, rtol=1e-12, atol=0)
        assert (p - p0).norm() / p0.norm() == pytest.approx(1e-3, rel=1e-9)
    # without bias correction the first step's direction is the same (the trust ratio removes the scale)
    q, _ = _run(lambda ps, **kw: Lamb(ps, bias_correction=False, **kw), p0, [g], lr=1e-3, eps=0.0)
    torch.testing.assert_close(q, p, rtol=1e-12, atol=0)
    # but on later steps it differs
    grads = [torch.randn(6, 5, generator=gen, dtype=torch.float64) for _ in range(5)]
    p, _ = _run(Lamb, p0, grads, lr=1e-3)
    q, _ = _run(lambda ps, **kw: Lamb(ps, bias_correction=False, **kw), p0, grads, lr=1e-3)
    assert (p - q).abs().max() > 1e-8


@pytest.mark.parametrize("kw", [dict(lr=0.0), dict(betas=(1.0, 0.9)), dict(betas=(0.9,)), dict(eps=-1.0),
                                dict(weight_decay=-0.1), dict(max_weight_norm=0.0), dict(bias_correction=1)])
def test_lamb_bad_hyperparameters(kw):
    from kexue_lib.optim import Lamb

    with pytest.raises(ValueError):
        Lamb([nn.Parameter(torch.zeros(2))], **kw)
