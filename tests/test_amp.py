"""Tests for kexue_lib.amp: the loss scaler, the autocast step, the compile fallback."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from kexue_lib import amp
from kexue_lib.amp import FP16_SMALLEST_SUBNORMAL, LossScaler, autocast_dtype, grads_finite, train_step


def _model(seed=0):
    g = torch.Generator().manual_seed(seed)
    m = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return m


def _data(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 6, generator=g), torch.randn(16, 3, generator=g)


def test_smallest_subnormal_is_fp16s():
    assert FP16_SMALLEST_SUBNORMAL == torch.finfo(torch.float16).smallest_normal * 2.0 ** -10
    assert torch.tensor(FP16_SMALLEST_SUBNORMAL).half().item() == FP16_SMALLEST_SUBNORMAL
    assert torch.tensor(FP16_SMALLEST_SUBNORMAL / 2).half().item() == 0.0  # ties to even: rounds to 0


def test_skips_inf_gradient_and_halves_scale():
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    before = [p.detach().clone() for p in m.parameters()]
    for p in m.parameters():
        p.grad = torch.ones_like(p)
    m[0].weight.grad[0, 0] = float("inf")
    scaler = LossScaler(init_scale=1024.0)
    assert scaler.step(opt) is False
    assert scaler.scale_value == 512.0 and scaler.skipped == 1
    for p, b in zip(m.parameters(), before):
        assert torch.equal(p, b)
    for p in m.parameters():  # NaN too
        p.grad = torch.full_like(p, float("nan"))
    assert scaler.step(opt) is False and scaler.scale_value == 256.0


def test_static_scaler_keeps_scale_but_skips():
    m = _model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    for p in m.parameters():
        p.grad = torch.full_like(p, float("inf"))
    s = LossScaler(init_scale=1000.0, dynamic=False)
    assert s.step(opt) is False and s.scale_value == 1000.0


def test_growth_after_interval():
    s = LossScaler(init_scale=8.0, growth_interval=3)
    for _ in range(2):
        s.update(True)
    assert s.scale_value == 8.0
    s.update(True)
    assert s.scale_value == 16.0 and s.good_steps == 0
    s.update(True)
    s.update(False)
    assert s.scale_value == 8.0 and s.good_steps == 0


def _loop_grads(m, x, y):
    """float64 reference: gradients of the mean squared error by autograd in double precision."""
    md = _model()
    md.load_state_dict(m.state_dict())
    md = md.double()
    loss = ((md(x.double()) - y.double()) ** 2).mean()
    loss.backward()
    return [p.grad for p in md.parameters()]


@pytest.mark.parametrize("scale", [1.0, 2.0 ** 10, 2.0 ** 16])
def test_unscaled_grads_equal_fp32_grads(scale):
    m = _model()
    x, y = _data()
    ref = _loop_grads(m, x, y)
    s = LossScaler(init_scale=scale)
    loss = ((m(x) - y) ** 2).mean()
    s.scale(loss).backward()
    assert s.unscale_(m) is True
    for p, r in zip(m.parameters(), ref):
        torch.testing.assert_close(p.grad.double(), r, rtol=1e-5, atol=1e-6)


@given(st.integers(min_value=-10, max_value=20))
def test_power_of_two_unscale_is_exact(k):
    m = _model()
    x, y = _data()
    loss = ((m(x) - y) ** 2).mean()
    loss.backward()
    plain = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    s = LossScaler(init_scale=2.0 ** k)
    s.scale(((m(x) - y) ** 2).mean()).backward()
    s.unscale_(m)
    for p, g in zip(m.parameters(), plain):
        assert torch.equal(p.grad, g)  # scaling by 2^k commutes with every rounding (no overflow here)


def test_scaling_rescues_fp16_underflow():
    g = torch.full((4,), 1e-8)
    assert torch.count_nonzero(g.half()) == 0
    assert torch.count_nonzero((g * 1024).half()) == 4


def test_train_step_cpu_bf16_matches_fp32_direction():
    x, y = _data()
    losses = {}
    for ac in (False, True):
        m = _model()
        opt = torch.optim.SGD(m.parameters(), lr=0.05)
        out = [train_step(m, nn.functional.mse_loss, x, y, opt, autocast=ac)[0] for _ in range(20)]
        losses[ac] = out
        assert all(p.dtype == torch.float32 for p in m.parameters())  # master weights stay fp32
    assert losses[True][-1] < losses[True][0]
    assert abs(losses[True][-1] - losses[False][-1]) < 0.05 * losses[False][0]


def test_train_step_with_scaler_steps():
    x, y = _data()
    m = _model()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    s = LossScaler(init_scale=256.0, growth_interval=2)
    loss, stepped = train_step(m, nn.functional.mse_loss, x, y, opt, scaler=s)
    assert stepped and s.good_steps == 1
    train_step(m, nn.functional.mse_loss, x, y, opt, scaler=s)
    assert s.scale_value == 512.0


def test_bad_input_raises():
    m = _model()
    x, y = _data()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with pytest.raises(ValueError):
        LossScaler(init_scale=0.0)
    with pytest.raises(ValueError):
        LossScaler(backoff_factor=1.5)
    with pytest.raises(ValueError):
        LossScaler(growth_interval=0)
    with pytest.raises(ValueError):
        LossScaler(init_scale=float("inf"))
    with pytest.raises(ValueError):
        LossScaler().scale(torch.ones(3))
    with pytest.raises(ValueError):
        LossScaler().step("not an optimizer")
    with pytest.raises(ValueError):
        train_step(m, nn.functional.mse_loss, x, y, opt, dtype=torch.float64)
    with pytest.raises(ValueError):
        train_step(m, nn.functional.mse_loss, x.numpy(), y, opt)
    with pytest.raises(ValueError):
        amp.compile_model(m, x, mode="fastest")


def test_autocast_dtype_follows_device():
    assert autocast_dtype("cpu") == torch.bfloat16
    assert autocast_dtype(torch.device("cuda")) == torch.float16


def test_grads_finite():
    m = _model()
    assert grads_finite(m)  # no grads at all
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    assert grads_finite(m)
    m[2].bias.grad[0] = float("nan")
    assert not grads_finite(m)


def test_compile_falls_back_without_compiler(monkeypatch):
    monkeypatch.setattr(amp.shutil, "which", lambda name: None)
    m = _model()
    x, _ = _data()
    out, info = amp.compile_model(m, x)
    assert out is m and info["compiled"] is False and "no C++ compiler" in info["message"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fp16_step_with_dynamic_scaler():
    x, y = (t.cuda() for t in _data())
    m = _model().cuda()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    s = LossScaler()
    with torch.autocast("cuda", dtype=torch.float16):
        assert m(x).dtype == torch.float16
    losses = [train_step(m, nn.functional.mse_loss, x, y, opt, scaler=s)[0] for _ in range(30)]
    assert all(p.dtype == torch.float32 for p in m.parameters())
    assert losses[-1] < losses[0]
    ref = torch.amp.GradScaler("cuda", init_scale=2.0 ** 16, growth_interval=2000)
    assert s.scale_value <= ref.get_scale()


def _schedule_loop(pattern, *, init, growth, backoff, interval):
    """Plain-loop reference of the dynamic schedule: the scale after each step of a finite/overflow pattern."""
    scale, good, out = float(init), 0, []
    for finite in pattern:
        if finite:
            good += 1
            if good == interval:
                scale, good = scale * growth, 0
        else:
            scale, good = scale * backoff, 0
        out.append(scale)
    return out


@given(st.lists(st.booleans(), min_size=1, max_size=40), st.integers(min_value=1, max_value=5))
def test_schedule_matches_loop(pattern, interval):
    s = LossScaler(init_scale=2.0 ** 10, growth_interval=interval)
    got = []
    for finite in pattern:
        s.update(finite)
        got.append(s.scale_value)
    assert got == _schedule_loop(pattern, init=2.0 ** 10, growth=2.0, backoff=0.5, interval=interval)


def test_peer_torch_gradscaler_same_scales_and_weights():
    """Peer equivalence: torch.amp.GradScaler on CPU gives the same scale sequence and the same weights."""
    pattern = [True, True, False, True, True, True, False, False, True, True]
    runs = []
    for use_peer in (False, True):
        m = _model()
        x, y = _data()
        opt = torch.optim.SGD(m.parameters(), lr=0.05)
        ours = LossScaler(init_scale=2.0 ** 8, growth_interval=2)
        peer = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8, growth_interval=2)
        scales = []
        for finite in pattern:
            opt.zero_grad(set_to_none=True)
            loss = nn.functional.mse_loss(m(x), y)
            (peer.scale(loss) if use_peer else ours.scale(loss)).backward()
            if not finite:
                m[0].weight.grad[0, 0] = float("inf")
            if use_peer:
                peer.step(opt)
                peer.update()
                scales.append(peer.get_scale())
            else:
                ours.step(opt)
                scales.append(ours.scale_value)
        runs.append((scales, [p.detach().clone() for p in m.parameters()]))
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
