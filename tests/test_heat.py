"""Tests of kexue_lib.heat: the QB-Heat linear feature-field predictor."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kexue_lib.heat import (LinearFieldPredictor, euler_matrix, fit_generators, matrix_powers, mean_fill,
                            qb_heat_extrapolate, quarter_mask, split_field)

F64 = torch.float64


def commuting_pair(d, seed, scale=0.2):
    """A, B = polynomials in one random matrix: they commute."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(d, d, generator=g, dtype=F64) * scale / d**0.5
    return x, 0.5 * x - 0.7 * x @ x + 0.1 * torch.eye(d, dtype=F64)


def loop_extrapolate(visible, a, b, h, w, dx=1.0, dy=1.0, order="xy"):
    """Float64 plain-loop reference: step cell by cell, one matrix-vector product each."""
    n, h0, w0, d = visible.shape
    mx = torch.eye(d, dtype=F64) + dx * a.double()
    my = torch.eye(d, dtype=F64) + dy * b.double()
    out = torch.zeros(n, h, w, d, dtype=F64)
    out[:, :h0, :w0] = visible.double()
    for s in range(n):
        if order == "xy":
            for i in range(h0):
                for j in range(w0, w):
                    out[s, i, j] = mx @ out[s, i, j - 1]
            for i in range(h0, h):
                for j in range(w):
                    out[s, i, j] = my @ out[s, i - 1, j]
        else:
            for i in range(h0, h):
                for j in range(w0):
                    out[s, i, j] = my @ out[s, i - 1, j]
            for i in range(h):
                for j in range(w0, w):
                    out[s, i, j] = mx @ out[s, i, j - 1]
    return out


def loop_fit(fields):
    """Float64 reference of the horizontal least-squares step via the normal equations, by loops."""
    n, h, w, d = fields.shape
    gram = torch.zeros(d, d, dtype=F64)
    cross = torch.zeros(d, d, dtype=F64)
    for s in range(n):
        for i in range(h):
            for j in range(w - 1):
                u, v = fields[s, i, j].double(), fields[s, i, j + 1].double()
                gram += torch.outer(u, u)
                cross += torch.outer(v, u)
    return cross @ torch.linalg.inv(gram) - torch.eye(d, dtype=F64)


# ---------------------------------------------------------------- fast paths against loops


@pytest.mark.parametrize("order", ["xy", "yx"])
@pytest.mark.parametrize("hw", [(6, 8), (8, 8), (5, 3)])
def test_extrapolate_matches_loop(order, hw):
    g = torch.Generator().manual_seed(1)
    d = 3
    a, b = (torch.randn(d, d, generator=g, dtype=F64) * 0.3 for _ in range(2))  # not commuting
    h0, w0 = (hw[0] + 1) // 2, (hw[1] + 1) // 2
    visible = torch.randn(2, h0, w0, d, generator=g, dtype=F64)
    got = qb_heat_extrapolate(visible, a, b, hw, dx=0.5, dy=2.0, order=order)
    want = loop_extrapolate(visible, a, b, *hw, dx=0.5, dy=2.0, order=order)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_fit_matches_loop():
    g = torch.Generator().manual_seed(2)
    fields = torch.randn(3, 4, 5, 3, generator=g, dtype=F64)
    a, _ = fit_generators(fields)
    torch.testing.assert_close(a, loop_fit(fields), rtol=1e-10, atol=1e-10)
    _, b = fit_generators(fields.transpose(1, 2))  # B of the transposed grid is A of the original
    torch.testing.assert_close(b, loop_fit(fields), rtol=1e-10, atol=1e-10)


def test_matrix_powers_and_euler():
    g = torch.Generator().manual_seed(3)
    m = torch.randn(4, 4, generator=g, dtype=F64)
    p = matrix_powers(m, 5)
    for k in range(5):
        torch.testing.assert_close(p[k], torch.linalg.matrix_power(m, k + 1))
    torch.testing.assert_close(euler_matrix(m, 0.25), torch.eye(4, dtype=F64) + 0.25 * m)


def test_split_field_loop_and_equations():
    d = 3
    a, b = commuting_pair(d, 4)
    z0 = torch.randn(2, d, dtype=F64)
    f = split_field(z0, a, b, 4, 5, dx=0.5, dy=0.25)
    for i in range(4):
        for j in range(5):
            want = torch.linalg.matrix_exp(0.25 * i * b) @ torch.linalg.matrix_exp(0.5 * j * a) @ z0.T
            torch.testing.assert_close(f[:, i, j], want.T)
    e = split_field(z0, a, b, 4, 5, dx=0.5, dy=0.25, method="euler")
    torch.testing.assert_close(e[:, 3, 4], (torch.linalg.matrix_power(euler_matrix(b, 0.25), 3)
                                            @ torch.linalg.matrix_power(euler_matrix(a, 0.5), 4) @ z0.T).T)


# ---------------------------------------------------------------- properties


@settings(max_examples=25, deadline=None)
@given(d=st.integers(1, 4), h=st.integers(1, 4), w=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_exact_field_is_reproduced(d, h, w, seed):
    """On a noise-free field with commuting generators, the predictor with I + A' = exp(A) is exact."""
    a, b = commuting_pair(d, seed)
    z0 = torch.randn(2, d, generator=torch.Generator().manual_seed(seed), dtype=F64)
    f = split_field(z0, a, b, 2 * h, 2 * w)
    eye = torch.eye(d, dtype=F64)
    ax, by = torch.linalg.matrix_exp(a) - eye, torch.linalg.matrix_exp(b) - eye
    for order in ("xy", "yx"):
        pred = qb_heat_extrapolate(f[:, :h, :w], ax, by, (2 * h, 2 * w), order=order)
        torch.testing.assert_close(pred, f, rtol=1e-9, atol=1e-9)


@settings(max_examples=25, deadline=None)
@given(d=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_orders_agree_iff_commuting(d, seed):
    g = torch.Generator().manual_seed(seed)
    visible = torch.randn(1, 3, 3, d, generator=g, dtype=F64)
    a, b = commuting_pair(d, seed)
    xy = qb_heat_extrapolate(visible, a, b, (6, 6), order="xy")
    yx = qb_heat_extrapolate(visible, a, b, (6, 6), order="yx")
    torch.testing.assert_close(xy, yx, rtol=1e-10, atol=1e-10)
    # the visible block is never touched
    torch.testing.assert_close(xy[:, :3, :3], visible, rtol=0, atol=0)
    if d >= 2:  # a non-commuting pair changes only the bottom-right quarter
        b2 = b + torch.diag(torch.arange(d, dtype=F64))
        xy2 = qb_heat_extrapolate(visible, a, b2, (6, 6), order="xy")
        yx2 = qb_heat_extrapolate(visible, a, b2, (6, 6), order="yx")
        if (a @ b2 - b2 @ a).abs().max() > 1e-6:
            torch.testing.assert_close(xy2[:, :3], yx2[:, :3])
            torch.testing.assert_close(xy2[:, :, :3], yx2[:, :, :3])
            assert (xy2[:, 3:, 3:] - yx2[:, 3:, 3:]).abs().max() > 1e-8


def test_fit_recovers_euler_generators():
    """Least squares on the visible quarter of noise-free Euler fields returns A and B exactly."""
    d = 4
    a, b = commuting_pair(d, 5)
    z0 = torch.randn(8, d, generator=torch.Generator().manual_seed(5), dtype=F64)
    f = split_field(z0, a, b, 8, 8, dx=0.5, dy=0.5, method="euler")
    fa, fb = fit_generators(f[:, :4, :4], dx=0.5, dy=0.5)
    torch.testing.assert_close(fa, a, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(fb, b, rtol=1e-8, atol=1e-8)


def test_ridge_shrinks_toward_zero_step():
    f = torch.randn(2, 3, 3, 2, generator=torch.Generator().manual_seed(6), dtype=F64)
    a, b = fit_generators(f, ridge=1e9)  # M -> 0, so A -> -I
    torch.testing.assert_close(a, -torch.eye(2, dtype=F64), atol=1e-6, rtol=0)


def test_mean_fill():
    vis = torch.arange(2 * 2 * 2 * 3, dtype=torch.float32).view(2, 2, 2, 3)
    out = mean_fill(vis, (4, 4))
    assert out.shape == (2, 4, 4, 3)
    torch.testing.assert_close(out[:, :2, :2], vis)
    torch.testing.assert_close(out[:, 3, 3], vis.mean(dim=(1, 2)))


def test_quarter_mask():
    m = quarter_mask(4, 6)
    assert m.dtype == torch.bool and m.sum() == 6 and m[:2, :3].all() and not m[2:].any()


# ---------------------------------------------------------------- module, dtype, device, gradients


def test_module_fit_and_forward_float32():
    d = 3
    a, b = commuting_pair(d, 7)
    z0 = torch.randn(4, d, generator=torch.Generator().manual_seed(7), dtype=F64)
    f = split_field(z0, a, b, 6, 6, method="euler").float()
    model = LinearFieldPredictor(d).fit_(f[:, :3, :3])
    out = model(f[:, :3, :3], (6, 6))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, f, rtol=1e-4, atol=1e-4)
    assert "dim=3" in repr(model)


@pytest.fixture
def one_thread():
    """Tiny tensors: one intra-op thread avoids the sync overhead that dominates on a busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_module_gradients_flow_and_descend(one_thread):
    d = 2
    a, b = commuting_pair(d, 8)
    z0 = torch.randn(16, d, generator=torch.Generator().manual_seed(8), dtype=F64)
    f = split_field(z0, a, b, 6, 6).float()
    model = LinearFieldPredictor(d)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    mask = quarter_mask(6, 6)
    losses = []
    for _ in range(60):
        pred = model(f[:, :3, :3], (6, 6))
        loss = (pred - f)[:, ~mask].square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert model.A.grad is not None and model.B.grad is not None
    assert losses[-1] < 0.2 * losses[0]


def test_double_gradcheck():
    g = torch.Generator().manual_seed(9)
    vis = torch.randn(1, 2, 2, 2, generator=g, dtype=F64)
    a = (0.3 * torch.randn(2, 2, generator=g, dtype=F64)).requires_grad_()
    b = (0.3 * torch.randn(2, 2, generator=g, dtype=F64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: qb_heat_extrapolate(vis, a, b, (4, 4)), (a, b))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_follows_input():
    d = 3
    vis = torch.randn(2, 3, 3, d, device="cuda")
    a, b = torch.zeros(d, d), torch.zeros(d, d)  # on the CPU: cast to the grid's device
    out = qb_heat_extrapolate(vis, a, b, (6, 6))
    assert out.device.type == "cuda"
    model = LinearFieldPredictor(d).cuda().fit_(vis)
    assert model(vis, (6, 6)).device.type == "cuda"


# ---------------------------------------------------------------- bad input


def test_bad_inputs_raise_value_error():
    d = 3
    vis = torch.randn(1, 2, 2, d)
    a = torch.zeros(d, d)
    cases = [
        lambda: euler_matrix(torch.zeros(2, 3)),
        lambda: euler_matrix(a, 0.0),
        lambda: euler_matrix(a, float("nan")),
        lambda: matrix_powers(a, 0),
        lambda: matrix_powers(a, 2.0),
        lambda: split_field(torch.randn(2, d), a, a, 0, 3),
        lambda: split_field(torch.randn(2, d), a, a, 3, 3, method="rk4"),
        lambda: split_field(torch.randn(2, d), torch.zeros(2, 2), a, 3, 3),
        lambda: split_field(torch.randn(2, d), a, a, 3, 3, dy=-1.0),
        lambda: quarter_mask(3, 4),
        lambda: quarter_mask(0, 4),
        lambda: qb_heat_extrapolate(vis[0], a, a, (4, 4)),
        lambda: qb_heat_extrapolate(vis.long(), a, a, (4, 4)),
        lambda: qb_heat_extrapolate(vis, torch.zeros(2, 2), a, (4, 4)),
        lambda: qb_heat_extrapolate(vis, a, a, (1, 4)),
        lambda: qb_heat_extrapolate(vis, a, a, 4),
        lambda: qb_heat_extrapolate(vis, a, a, (4, 4), order="diag"),
        lambda: qb_heat_extrapolate(torch.randn(0, 2, 2, d), a, a, (4, 4)),
        lambda: qb_heat_extrapolate(vis, a, a, (4, 4), dx=0.0),
        lambda: mean_fill(vis, (4, 1)),
        lambda: fit_generators(torch.randn(1, 1, 4, d)),
        lambda: fit_generators(torch.randn(1, 2, 2, 5)),  # 2 pairs < d = 5
        lambda: fit_generators(vis, ridge=-1.0),
        lambda: fit_generators([[1.0]]),
        lambda: LinearFieldPredictor(0),
        lambda: LinearFieldPredictor(3, order="z"),
        lambda: LinearFieldPredictor(3, dx=-1.0),
        lambda: LinearFieldPredictor(4)(vis, (4, 4)),
    ]
    for i, case in enumerate(cases):
        with pytest.raises(ValueError):
            case()
        del i


# ---------------------------------------------------------------- the toy QB-Heat / MAE pipeline

from kexue_lib.heat import CORNERS, GridDecoder, QuarterCNNEncoder, QuarterPredictor, quarter_block, token_fill  # noqa: E402


def test_quarter_block_corners():
    x = torch.arange(2 * 1 * 4 * 6, dtype=torch.float32).view(2, 1, 4, 6)
    torch.testing.assert_close(quarter_block(x, corner="tl"), x[:, :, :2, :3])
    torch.testing.assert_close(quarter_block(x, corner="tr"), x[:, :, :2, 3:])
    torch.testing.assert_close(quarter_block(x, corner="bl"), x[:, :, 2:, :3])
    torch.testing.assert_close(quarter_block(x, corner="br"), x[:, :, 2:, 3:])
    g = x.permute(0, 2, 3, 1)
    torch.testing.assert_close(quarter_block(g, corner="br", channels_last=True), g[:, 2:, 3:])


@pytest.mark.parametrize("corner", CORNERS)
def test_token_fill_places_block_and_token(corner):
    vis = torch.randn(2, 2, 3, 4)
    tok = torch.randn(4, requires_grad=True)
    out = token_fill(vis, tok, (4, 6), corner=corner)
    torch.testing.assert_close(quarter_block(out, corner=corner, channels_last=True), vis)
    keep = torch.zeros(1, 1, 4, 6, dtype=torch.bool)
    quarter_block(keep, corner=corner).fill_(True)
    masked = out[:, ~keep[0, 0]]  # (2, 18, 4)
    torch.testing.assert_close(masked, tok.detach().expand_as(masked))
    out.sum().backward()
    torch.testing.assert_close(tok.grad, torch.full((4,), 2.0 * 18))


def test_quarter_predictor_matches_flipped_loop():
    """Each corner: the loop reference in the flipped frame, with the generators of the directions walked."""
    g = torch.Generator().manual_seed(11)
    d = 3
    model = QuarterPredictor(d).double()
    with torch.no_grad():
        model.A.copy_(0.3 * torch.randn(2, d, d, generator=g, dtype=F64))
        model.B.copy_(0.3 * torch.randn(2, d, d, generator=g, dtype=F64))
    vis = torch.randn(2, 3, 2, d, generator=g, dtype=F64)
    for corner in CORNERS:
        rows, cols = corner[0] == "b", corner[1] == "r"
        out = model(vis, (6, 4), corner=corner)
        torch.testing.assert_close(quarter_block(out, corner=corner, channels_last=True), vis, rtol=0, atol=0)
        dims = [dim for dim, f in ((1, rows), (2, cols)) if f]
        flip = (lambda t: t.flip(dims)) if dims else (lambda t: t)
        want = flip(loop_extrapolate(flip(vis), model.A[int(cols)].detach(), model.B[int(rows)].detach(), 6, 4))
        torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    assert "dim=3" in repr(model)


def test_quarter_predictor_zero_init_copies_edge_and_learns():
    vis = torch.randn(1, 2, 2, 2)
    out = QuarterPredictor(2)(vis, (4, 4), corner="tl")
    torch.testing.assert_close(out[:, 0, 3], vis[:, 0, 1])  # copy of the edge
    torch.testing.assert_close(out[:, 3, 3], vis[:, 1, 1])
    model = QuarterPredictor(2)
    model(vis, (4, 4), corner="br").square().sum().backward()
    assert model.A.grad[1].abs().sum() > 0 and model.B.grad[1].abs().sum() > 0  # left and up were used
    assert model.A.grad[0].abs().sum() == 0 and model.B.grad[0].abs().sum() == 0


def test_encoder_is_convolutional_and_decoder_shapes():
    torch.manual_seed(0)
    enc = QuarterCNNEncoder(dim=5, width=7, depth=3)
    img = torch.randn(2, 1, 8, 8)
    z = enc(img)
    assert z.shape == (2, 8, 8, 5) and z.dtype == torch.float32
    assert enc(img[:, :, :4, :4]).shape == (2, 4, 4, 5)  # the same weights on the visible quarter
    # receptive field 7x7: a pixel change moves features at most 3 cells away
    img2 = img.clone()
    img2[:, :, 0, 0] += 1.0
    diff = (enc(img2) - z).abs().sum(-1)
    assert diff[:, 4:].abs().max() == 0 and diff[:, :, 4:].abs().max() == 0 and diff[:, 0, 0].min() > 0
    dec = GridDecoder(dim=5, hw=(8, 8), width=7)
    assert dec(z).shape == (2, 1, 8, 8)
    enc64 = QuarterCNNEncoder(dim=5).double()
    assert enc64(img.double()).dtype == F64


def test_pipeline_bad_inputs_raise_value_error():
    vis = torch.randn(1, 2, 2, 3)
    cases = [
        lambda: quarter_block(torch.randn(1, 1, 3, 4)),
        lambda: quarter_block(torch.randn(1, 1, 4, 4), corner="center"),
        lambda: quarter_block(torch.randn(4, 4)),
        lambda: token_fill(vis, torch.zeros(4), (4, 4)),
        lambda: token_fill(vis, torch.zeros(3), (1, 4)),
        lambda: token_fill(vis, torch.zeros(3), (4, 4), corner="x"),
        lambda: QuarterPredictor(0),
        lambda: QuarterPredictor(3, order="z"),
        lambda: QuarterPredictor(4)(vis, (4, 4)),
        lambda: QuarterPredictor(3)(vis, (4, 4), corner="mid"),
        lambda: QuarterCNNEncoder(dim=0),
        lambda: QuarterCNNEncoder(depth=0),
        lambda: QuarterCNNEncoder(in_channels=1)(torch.randn(1, 3, 4, 4)),
        lambda: QuarterCNNEncoder()(torch.zeros(1, 1, 4, 4, dtype=torch.long)),
        lambda: GridDecoder(dim=3, hw=8),
        lambda: GridDecoder(dim=3, hw=(4, 4))(torch.randn(1, 4, 4, 2)),
    ]
    for case in cases:
        with pytest.raises(ValueError):
            case()
