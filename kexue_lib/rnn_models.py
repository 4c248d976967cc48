"""Small sequence models built from linear recurrences, trained as ensembles over seeds.

Article: Su Jianlin, "脑洞大开：非线性RNN居然也可以并行计算？" (https://kexue.fm/archives/9783, 2023-09-26),
sections "why insist on convergence" and "the general case". Two proposals of the article become trainable models:

* ``"sweeps"``: a fixed number ``K`` of sweeps of the diagonalised iteration (:func:`kexue_lib.rnn.iterated_linear_rnn`)
  *is* the model, ``y^(n)_t - lam y^(n)_{t-1} = P tanh(Q y^(n-1)_{t-1} + u_t) - lam y^(n-1)_{t-1}``, a weight-shared
  stack of ``K`` linear RNNs, with ``PQ = Lambda`` at initialisation. ``K = 1`` is a linear RNN of ``P tanh(u_t)``;
  ``K = None`` is the converged non-linear RNN ``y_t = P tanh(Q y_{t-1} + u_t)`` (the plain loop).
* ``"linear_mlp"``: ``L`` layers of "linear RNN + MLP", ``z <- z + W_2 gelu(W_1 h + c_1) + c_2`` with ``h`` the
  element-wise linear RNN ``h_t = lam * h_{t-1} + B z_t`` (not weight-shared).
* ``"gru"``: the GRU of :func:`kexue_lib.rnn.gru_cell` (``torch.nn.GRU``'s layout), the non-linear baseline.

Every model maps inputs ``x`` (S, B, T, I) to outputs (S, B, T, O) for ``S`` independent seeds at once: each
parameter carries a leading seed axis, the loss is the sum of the per-seed losses, and Adam and the per-seed gradient
clipping act seed by seed, so seed ``s`` trains exactly as it would alone (up to round-off) at a fraction of the
Python overhead. The task is regression on a random tanh-RNN teacher (:func:`tanh_teacher`).

Dtype and device follow ``dtype`` / ``device`` arguments (float64 on the CPU for stable digits; float32 on a GPU).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._validate import check_int, check_real
from .rnn import gru_cell, iterated_linear_rnn, linear_recurrence, rnn_sequential

__all__ = ["ARCHS", "TanhTeacher", "init_models", "model_forward", "tanh_teacher", "train_models"]

ARCHS = ("sweeps", "linear_mlp", "gru")


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")


def _seeds(seeds) -> list[int]:
    seeds = [check_int("seed", s, min_value=0) for s in seeds]
    if not seeds:
        raise ValueError("need at least one seed")
    return seeds


def init_models(arch: str, *, seeds, d_in: int, d_hidden: int, d_out: int, layers: int = 2,
                mlp_width: int | None = None,
                lam_range: tuple[float, float] = (0.3, 0.9), dtype=torch.float64, device=None) -> dict:
    """Parameters of one model per seed, each tensor with a leading seed axis (requires grad).

    ``lam_range``: the initial eigenvalues (``"sweeps"`` and ``"linear_mlp"``) are spread evenly over it; ``P`` is a
    random orthogonal matrix and ``Q = P^T Lambda``, so ``PQ = Lambda`` (the article's initialisation). ``layers`` and
    ``mlp_width`` (default ``d_hidden``) are those of ``"linear_mlp"``. The GRU is initialised like ``torch.nn.GRU``.
    """
    _check_arch(arch)
    seeds = _seeds(seeds)
    I, D, O = (check_int(n, v, min_value=1) for n, v in (("d_in", d_in), ("d_hidden", d_hidden), ("d_out", d_out)))
    L = check_int("layers", layers, min_value=1)
    W = D if mlp_width is None else check_int("mlp_width", mlp_width, min_value=1)
    lo, hi = (check_real("lam_range", v, low=-1.0, high=1.0, low_open=True, high_open=True) for v in lam_range)
    per_seed = []
    for s in seeds:
        g = torch.Generator().manual_seed(s)
        rnd = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
        lam = torch.linspace(lo, hi, D, dtype=torch.float64)
        p = {"w_out": rnd(O, D) / math.sqrt(D), "b_out": torch.zeros(O, dtype=torch.float64)}
        if arch == "sweeps":
            P = torch.linalg.qr(rnd(D, D))[0]
            p.update(w_in=rnd(D, I) / math.sqrt(I), b_in=torch.zeros(D, dtype=torch.float64), lam_raw=torch.atanh(lam),
                     P=P, Q=P.T * lam)  # P^T diag(lam): P Q = Lambda
        elif arch == "linear_mlp":
            p.update(w_in=rnd(D, I) / math.sqrt(I), b_in=torch.zeros(D, dtype=torch.float64))
            for k in range(L):
                p.update({f"lam_raw{k}": torch.atanh(lam), f"B{k}": rnd(D, D) / math.sqrt(D),
                          f"w1{k}": rnd(W, D) / math.sqrt(D), f"c1{k}": torch.zeros(W, dtype=torch.float64),
                          f"w2{k}": rnd(D, W) / math.sqrt(W), f"c2{k}": torch.zeros(D, dtype=torch.float64)})
        else:
            k = 1 / math.sqrt(D)
            uni = lambda *shape: (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * k  # noqa: E731
            p.update(w_ih=uni(3 * D, I), w_hh=uni(3 * D, D), b_ih=uni(3 * D), b_hh=uni(3 * D))
        per_seed.append(p)
    return {k: torch.stack([p[k] for p in per_seed]).to(dtype=dtype, device=device).requires_grad_()
            for k in per_seed[0]}


def _lin(x: Tensor, w: Tensor) -> Tensor:
    """x (S, B, T, i) times w (S, o, i) transposed, per seed: (S, B, T, o) (one bmm, no broadcast copies)."""
    return (x.flatten(1, -2) @ w.mT).view(*x.shape[:-1], w.shape[-2])


def model_forward(arch: str, params: dict, x: Tensor, *, sweeps: int | None = None) -> Tensor:
    """Outputs (S, B, T, O) of the ``S`` models in ``params`` on inputs ``x`` (S, B, T, I).

    ``sweeps`` (``"sweeps"`` only): the number ``K`` of sweeps, or None for the converged RNN (the loop).
    """
    _check_arch(arch)
    if x.ndim != 4:
        raise ValueError(f"x must have shape (seeds, batch, T, d_in), got {tuple(x.shape)}")
    S = params["w_out"].shape[0]
    if x.shape[0] != S:
        raise ValueError(f"x has {x.shape[0]} seeds, the parameters {S}")
    ex = lambda t: t[:, None]  # noqa: E731  (S, ...) -> (S, 1, ...): broadcast over the batch
    bias = lambda t: t[:, None, None]  # noqa: E731  (S, n) -> (S, 1, 1, n)
    if arch == "sweeps":
        u = _lin(x, params["w_in"]) + bias(params["b_in"])  # (S, B, T, D)
        y = iterated_linear_rnn(u, ex(torch.tanh(params["lam_raw"])), ex(params["P"]), ex(params["Q"]), sweeps=sweeps)
    elif arch == "linear_mlp":
        y = _lin(x, params["w_in"]) + bias(params["b_in"])  # (S, B, T, D)
        k = 0
        while f"B{k}" in params:
            b = _lin(y, params[f"B{k}"])  # (S, B, T, D)
            h = linear_recurrence(bias(torch.tanh(params[f"lam_raw{k}"])).expand_as(b), b)  # h_t = lam h_{t-1} + b_t
            mid = F.gelu(_lin(h, params[f"w1{k}"]) + bias(params[f"c1{k}"]))  # (S, B, T, W)
            y = y + _lin(mid, params[f"w2{k}"]) + bias(params[f"c2{k}"])
            k += 1
    else:
        H = params["w_hh"].shape[-1]
        h0 = torch.zeros(S, x.shape[1], H, dtype=x.dtype, device=x.device)
        y = rnn_sequential(gru_cell, x, h0, (params["w_ih"], params["w_hh"], params["b_ih"][:, None],
                                             params["b_hh"][:, None]))  # (S, B, T, H)
    return _lin(y, params["w_out"]) + bias(params["b_out"])


class TanhTeacher:
    """Random tanh RNNs, one per seed: ``x_t = tanh(A x_{t-1} + W u_t)``, read out by ``C x_t``."""

    def __init__(self, seeds, A: Tensor, W: Tensor, C: Tensor):
        self.seeds, self.A, self.W, self.C = list(seeds), A, W, C  # (S, H, H), (S, H, I), (S, O, H)

    def _targets(self, xs: Tensor) -> Tensor:
        with torch.no_grad():
            drive = xs @ self.W[:, None].mT  # (S, n, T, H)
            h = torch.zeros(*drive.shape[:2], drive.shape[-1], dtype=drive.dtype, device=drive.device)
            out = []
            for t in range(drive.shape[2]):
                h = torch.tanh(h @ self.A.mT + drive[:, :, t])
                out.append(h @ self.C.mT)
        return torch.stack(out, dim=2)  # (S, n, T, O)

    def _draw(self, gens, n: int, T: int) -> Tensor:
        d_in = self.W.shape[-1]
        return torch.stack([torch.randn(n, T, d_in, generator=g, dtype=torch.float64) for g in gens]).to(
            dtype=self.A.dtype, device=self.A.device)

    def __call__(self, n: int, T: int, offset: int):
        """``n`` input sequences of length ``T`` per seed (N(0, 1) entries, generator seeded ``offset + seed``) and
        their targets: ``(inputs (S, n, T, d_in), targets (S, n, T, d_out))``."""
        xs = self._draw([torch.Generator().manual_seed(offset + s) for s in self.seeds], n, T)
        return xs, self._targets(xs)

    def memory(self, n: int, T: int, offset: int) -> list[float]:
        """How much of its initial state the teacher remembers: per seed, the mean |difference| of two states driven by
        the same ``n`` input sequences for ``T`` steps, one started at 0 and one at a random corner of [-1, 1]^H
        (which starts at mean |difference| 1). Near 0: fading memory; of order 1: the start is never forgotten."""
        xs = self._draw([torch.Generator().manual_seed(offset + s) for s in self.seeds], n, T)
        with torch.no_grad():
            drive = xs @ self.W[:, None].mT  # (S, n, T, H)
            g = torch.Generator().manual_seed(offset)
            h2 = torch.randint(0, 2, drive[:, :, 0].shape, generator=g).to(drive) * 2 - 1  # (S, n, H), entries +-1
            h1 = torch.zeros_like(h2)
            for t in range(T):
                h1 = torch.tanh(h1 @ self.A.mT + drive[:, :, t])
                h2 = torch.tanh(h2 @ self.A.mT + drive[:, :, t])
        return [float(v) for v in (h1 - h2).abs().mean(dim=(1, 2)).cpu()]

    def stream(self, batch: int, T: int, offset: int):
        """Batches of ``batch`` sequences per seed, drawn one after another from generators seeded ``offset + seed``
        (so memory does not grow with the number of steps); an endless iterator of ``(inputs, targets)``."""
        gens = [torch.Generator().manual_seed(offset + s) for s in self.seeds]
        while True:
            xs = self._draw(gens, batch, T)
            yield xs, self._targets(xs)


def tanh_teacher(seeds, *, d_in: int, d_hidden: int, d_out: int, radius: float, input_scale: float = 1.0,
                 dtype=torch.float64, device=None) -> TanhTeacher:
    """A random tanh RNN per seed, ``x_t = tanh(A x_{t-1} + W u_t)``, read out by ``C x_t``.

    ``A`` has spectral radius ``radius``; ``W`` has entries N(0, input_scale^2 / d_in); ``C`` N(0, 1 / d_hidden).
    The result is callable: ``teacher(n, T, offset)`` draws ``n`` input sequences of length ``T`` per seed (N(0, 1)
    entries, generator seeded with ``offset + seed``) and returns ``(inputs (S, n, T, d_in), targets (S, n, T,
    d_out))``; ``teacher.stream(batch, T, offset)`` yields such batches one after another.
    """
    seeds = _seeds(seeds)
    d_in, d_hidden, d_out = (check_int(n, v, min_value=1) for n, v in
                             (("d_in", d_in), ("d_hidden", d_hidden), ("d_out", d_out)))
    radius = check_real("radius", radius, low=0.0, low_open=True)
    input_scale = check_real("input_scale", input_scale, low=0.0, low_open=True)
    mats = []
    for s in seeds:
        g = torch.Generator().manual_seed(50_000 + s)
        A = torch.randn(d_hidden, d_hidden, generator=g, dtype=torch.float64)
        A = radius * A / torch.linalg.eigvals(A).abs().max()
        W = torch.randn(d_hidden, d_in, generator=g, dtype=torch.float64) * input_scale / math.sqrt(d_in)
        C = torch.randn(d_out, d_hidden, generator=g, dtype=torch.float64) / math.sqrt(d_hidden)
        mats.append((A, W, C))
    A, W, C = (torch.stack(m).to(dtype=dtype, device=device) for m in zip(*mats))  # (S, ., .)
    return TanhTeacher(seeds, A, W, C)


def _clip_per_seed(params: dict, clip: float) -> None:
    grads = [p.grad for p in params.values() if p.grad is not None]  # (the converged RNN leaves lam unused)
    norms = torch.sqrt(sum(g.pow(2).flatten(1).sum(1) for g in grads))  # (S,)
    scale = (clip / (norms + 1e-12)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *([1] * (g.ndim - 1))))


def train_models(arch: str, teacher: TanhTeacher, *, seeds, steps: int, batch: int, length: int, d_in: int,
                 d_hidden: int, d_out: int, sweeps: int | None = None, lr: float = 3e-3, clip: float = 1.0,
                 eval_size: int = 512, dtype=torch.float64, device=None, **init) -> dict:
    """Train one model per seed on ``teacher`` (from :func:`tanh_teacher`) with Adam and a cosine schedule.

    Each step draws a fresh batch per seed from ``teacher.stream(batch, length, 100_000)`` (seeded per seed: every
    architecture sees the same data); the gradient norm is clipped to ``clip`` seed by seed. ``init`` goes to
    :func:`init_models` (``layers``, ``mlp_width``, ``lam_range``). Returns ``{"loss": [held-out MSE / target variance,
    one per seed], "params": the trained parameters}``; the held-out set is ``teacher(eval_size, length, 200_000)``.
    """
    _check_arch(arch)
    seeds = _seeds(seeds)
    steps, batch = check_int("steps", steps, min_value=1), check_int("batch", batch, min_value=1)
    lr, clip = check_real("lr", lr, low=0.0, low_open=True), check_real("clip", clip, low=0.0, low_open=True)
    params = init_models(arch, seeds=seeds, d_in=d_in, d_hidden=d_hidden, d_out=d_out, dtype=dtype, device=device,
                         **init)
    if list(teacher.seeds) != seeds:
        raise ValueError(f"the teacher has seeds {teacher.seeds}, the models {seeds}")
    stream = teacher.stream(batch, length, 100_000)
    opt = torch.optim.Adam(params.values(), lr=lr, foreach=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    kw = {"sweeps": sweeps} if arch == "sweeps" else {}
    for _ in range(steps):
        xb, yb = next(stream)
        loss = F.mse_loss(model_forward(arch, params, xb, **kw), yb, reduction="none")
        opt.zero_grad(set_to_none=True)
        loss.mean(dim=(1, 2, 3)).sum().backward()  # the sum of the per-seed losses: seeds do not interact
        _clip_per_seed(params, clip)
        opt.step()
        sched.step()
    xe, ye = teacher(eval_size, length, 200_000)
    with torch.no_grad():
        err = (model_forward(arch, params, xe, **kw) - ye).pow(2).mean(dim=(1, 2, 3))
        held = err / ye.var(dim=(1, 2, 3))
    return {"loss": [float(v) for v in held.cpu()], "params": params}
