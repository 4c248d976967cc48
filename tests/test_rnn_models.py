"""Tests of kexue_lib.rnn_models: ensembles of small sequence models over seeds (article 9783)."""
import pytest
import torch

from kexue_lib.rnn import gru_cell, linear_recurrence, rnn_sequential
from kexue_lib.rnn_models import ARCHS, init_models, model_forward, tanh_teacher, train_models

F64 = torch.float64
DIMS = dict(d_in=2, d_hidden=5, d_out=3)


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_shapes_and_per_seed_independence(arch):
    """Seed s of an ensemble computes what the same seed computes alone."""
    p2 = init_models(arch, seeds=[3, 4], **DIMS)
    p1 = init_models(arch, seeds=[4], **DIMS)
    x = torch.randn(2, 6, 7, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    kw = {"sweeps": 3} if arch == "sweeps" else {}
    out2 = model_forward(arch, p2, x, **kw)
    assert out2.shape == (2, 6, 7, 3)
    torch.testing.assert_close(out2[1:], model_forward(arch, p1, x[1:], **kw))


def test_sweeps_init_pq_lambda_and_converged_forward():
    p = init_models("sweeps", seeds=[0, 1], **DIMS)
    lam = torch.tanh(p["lam_raw"])
    torch.testing.assert_close(p["P"] @ p["Q"], torch.diag_embed(lam))  # P Q = Lambda
    x = torch.randn(2, 4, 9, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    with torch.no_grad():
        conv = model_forward("sweeps", p, x, sweeps=None)
        torch.testing.assert_close(model_forward("sweeps", p, x, sweeps=9), conv, rtol=1e-8, atol=1e-8)
        # the converged model, written out for seed 0: y_t = P tanh(Q y_{t-1} + W x_t + b), out = C y + c
        u = x[0] @ p["w_in"][0].T + p["b_in"][0]
        cell = lambda h, ut: torch.tanh(h @ p["Q"][0].T + ut) @ p["P"][0].T  # noqa: E731
        y = rnn_sequential(cell, u, torch.zeros(5, dtype=F64), ())
        torch.testing.assert_close(conv[0], y @ p["w_out"][0].T + p["b_out"][0])


def test_linear_mlp_and_gru_written_out():
    x = torch.randn(1, 3, 8, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    p = init_models("linear_mlp", seeds=[5], layers=2, mlp_width=4, **DIMS)
    q = {k: v[0].detach() for k, v in p.items()}
    z = x[0] @ q["w_in"].T + q["b_in"]
    for k in range(2):
        b = z @ q[f"B{k}"].T
        h = linear_recurrence(torch.tanh(q[f"lam_raw{k}"]).expand_as(b), b, method="loop")
        z = z + torch.nn.functional.gelu(h @ q[f"w1{k}"].T + q[f"c1{k}"]) @ q[f"w2{k}"].T + q[f"c2{k}"]
    torch.testing.assert_close(model_forward("linear_mlp", p, x)[0], z @ q["w_out"].T + q["b_out"])
    g = init_models("gru", seeds=[6], **DIMS)
    q = {k: v[0].detach() for k, v in g.items()}
    h = rnn_sequential(gru_cell, x[0], torch.zeros(3, 5, dtype=F64), (q["w_ih"], q["w_hh"], q["b_ih"], q["b_hh"]))
    torch.testing.assert_close(model_forward("gru", g, x)[0], h @ q["w_out"].T + q["b_out"])


def test_teacher_is_a_tanh_rnn():
    sample = tanh_teacher([0, 1], d_in=2, d_hidden=4, d_out=1, radius=1.5)
    x, y = sample(3, 10, 7)
    assert x.shape == (2, 3, 10, 2) and y.shape == (2, 3, 10, 1)
    x2, y2 = sample(3, 10, 7)
    torch.testing.assert_close(y, y2)  # the same offset gives the same data
    assert not torch.equal(x[0], x[1])  # seeds differ
    stream = sample.stream(3, 10, 7)
    x3, y3 = next(stream)
    torch.testing.assert_close(y3, y)  # the stream starts where a single draw with the same offset does
    x4, _ = next(stream)
    assert not torch.equal(x4, x3)
    h = torch.zeros(4, dtype=F64)  # the teacher written out for seed 1, sequence 2
    for t in range(10):
        h = torch.tanh(sample.A[1] @ h + sample.W[1] @ x[1, 2, t])
    torch.testing.assert_close(y[1, 2, -1], sample.C[1] @ h)


def test_training_lowers_the_loss_and_seeds_do_not_interact():
    common = dict(steps=20, batch=8, length=12, lr=1e-2, **DIMS)
    s2 = tanh_teacher([7, 8], d_in=2, d_hidden=5, d_out=3, radius=1.0)
    s1 = tanh_teacher([8], d_in=2, d_hidden=5, d_out=3, radius=1.0)
    both = train_models("sweeps", s2, seeds=[7, 8], sweeps=2, **common)["loss"]
    alone = train_models("sweeps", s1, seeds=[8], sweeps=2, **common)["loss"]
    assert both[1] == pytest.approx(alone[0], rel=1e-6)
    untrained = train_models("sweeps", s1, seeds=[8], sweeps=2, **{**common, "steps": 1, "lr": 1e-9})["loss"]
    assert alone[0] < 0.7 * untrained[0]


def test_bad_input():
    with pytest.raises(ValueError):
        init_models("lstm", seeds=[0], **DIMS)
    with pytest.raises(ValueError):
        init_models("sweeps", seeds=[], **DIMS)
    with pytest.raises(ValueError):
        init_models("sweeps", seeds=[0], lam_range=(0.5, 1.0), **DIMS)
    p = init_models("gru", seeds=[0, 1], **DIMS)
    with pytest.raises(ValueError):
        model_forward("gru", p, torch.zeros(3, 2, 4, 2, dtype=F64))
    with pytest.raises(ValueError):
        model_forward("gru", p, torch.zeros(2, 4, 2, dtype=F64))
    with pytest.raises(ValueError):
        tanh_teacher([0], d_in=2, d_hidden=3, d_out=1, radius=0.0)
    with pytest.raises(ValueError):  # the teacher's seeds must be the models' seeds
        train_models("gru", tanh_teacher([0], radius=1.0, **DIMS), seeds=[1], steps=1, batch=2, length=3, **DIMS)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_follows_device():
    s = tanh_teacher([0], d_in=2, d_hidden=4, d_out=1, radius=1.0, dtype=torch.float32, device="cuda")
    out = train_models("linear_mlp", s, seeds=[0], steps=3, batch=4, length=8, d_in=2, d_hidden=4, d_out=1,
                       dtype=torch.float32, device="cuda")
    assert out["params"]["w_out"].device.type == "cuda"


def test_teacher_memory_probe():
    short = tanh_teacher([0, 1], d_in=2, d_hidden=6, d_out=1, radius=0.3).memory(16, 40, 5)
    long_ = tanh_teacher([0, 1], d_in=2, d_hidden=6, d_out=1, radius=3.0, input_scale=0.1).memory(16, 40, 5)
    assert len(short) == 2 and all(0 <= v < 1e-8 for v in short)  # contracting: the start is forgotten
    assert all(0.05 < v <= 2 for v in long_)  # saturated and weakly driven: the start is remembered
