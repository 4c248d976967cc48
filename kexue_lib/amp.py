r"""Mixed-precision training: an autocast step, a loss scaler, and a compiled variant.

Article: 在bert4keras中使用混合精度和XLA加速训练 (https://kexue.fm/archives/9059, 2022-04-28).
Paper: P. Micikevicius et al., *Mixed Precision Training*, arXiv:1710.03740.

The article runs TensorFlow 1.15 (automatic mixed precision by graph rewrite, XLA by ``TF_XLA_FLAGS``);
this module is the PyTorch counterpart: :func:`torch.autocast` for the rewrite and :func:`torch.compile`
for XLA.

**Mixed precision.** The forward and backward passes run in a 16-bit format (fp16 on CUDA, bf16 on CPU),
the parameters and the optimizer's state stay in fp32 ("master weights").

**Loss scaling.** fp16 has a smallest subnormal of :math:`2^{-24}\approx5.96\times10^{-8}`: a gradient
below half of it rounds to zero. Multiplying the loss by :math:`c` multiplies every gradient by :math:`c`
(the chain rule is linear), which lifts them into range; the optimizer then sees

.. math::

    g = \frac{\nabla_\theta (c\,L)}{c}, \qquad \text{and the step is skipped if } \nabla_\theta(c\,L)
    \text{ holds an inf or a NaN.}

A dynamic scaler halves :math:`c` (``backoff_factor``) on every overflow and doubles it (``growth_factor``)
after ``growth_interval`` finite steps in a row.

**Adam and a constant scale.** Feeding Adam the *unnormalized* gradients :math:`c g` (the article's manual
scaling, with no division) gives :math:`m\to c m`, :math:`v\to c^2 v` and

.. math::

    \frac{c\,\hat m}{\sqrt{c^2\hat v}+\epsilon} = \frac{\hat m}{\sqrt{\hat v}+\epsilon/c},

Adam with :math:`\epsilon/c`: invariant only as :math:`\epsilon\to0`.

Dtype policy: the scaler's arithmetic runs in fp32 on the gradients' device; the step's autocast device
and dtype follow the inputs (``inputs.device``), never a global setting.
"""
from __future__ import annotations

import math
import shutil
import time

import torch
from torch import nn

from ._validate import check_int, check_real, check_tensor

__all__ = ["FP16_SMALLEST_SUBNORMAL", "autocast_dtype", "LossScaler", "grads_finite", "train_step",
           "compiler_available", "compile_model"]

#: The smallest positive fp16 number (a subnormal): 2^-24.
FP16_SMALLEST_SUBNORMAL = 2.0 ** -24


def autocast_dtype(device) -> torch.dtype:
    """The 16-bit dtype autocast uses by default on ``device``: fp16 on CUDA, bf16 elsewhere."""
    device = torch.device(device)
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def _params_with_grad(params) -> list[torch.Tensor]:
    if isinstance(params, torch.optim.Optimizer):
        params = [p for group in params.param_groups for p in group["params"]]
    elif isinstance(params, nn.Module):
        params = list(params.parameters())
    else:
        params = list(params)
    for p in params:
        check_tensor("parameter", p)
    return [p for p in params if p.grad is not None]


@torch.no_grad()
def grads_finite(params) -> bool:
    """True when no gradient of ``params`` (an optimizer, a module or tensors) holds an inf or a NaN."""
    return all(bool(torch.isfinite(p.grad).all()) for p in _params_with_grad(params))


class LossScaler:
    """Static or dynamic loss scaling: ``scale`` the loss, ``unscale_`` the grads, ``step`` or skip.

    ``init_scale`` is :math:`c`; ``dynamic=False`` keeps it fixed (the article's manual factor, e.g. 1000)
    but still skips steps with non-finite gradients. With ``dynamic=True`` an overflow multiplies the
    scale by ``backoff_factor`` (0.5) and a run of ``growth_interval`` finite steps by ``growth_factor`` (2).
    ``unscale=False`` in :meth:`step` hands the optimizer the scaled gradients (the article's setting).
    """

    def __init__(self, *, init_scale: float = 2.0 ** 16, dynamic: bool = True, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000, min_scale: float = 2.0 ** -24):
        if not isinstance(dynamic, bool):
            raise ValueError(f"dynamic must be True or False, got {dynamic!r}")
        self.scale_value = check_real("init_scale", init_scale, low=0.0, low_open=True)
        self.growth_factor = check_real("growth_factor", growth_factor, low=1.0, low_open=True)
        self.backoff_factor = check_real("backoff_factor", backoff_factor, low=0.0, high=1.0, low_open=True,
                                         high_open=True)
        self.growth_interval = check_int("growth_interval", growth_interval, min_value=1)
        self.min_scale = check_real("min_scale", min_scale, low=0.0, low_open=True)
        self.dynamic = dynamic
        self.good_steps = 0
        self.skipped = 0

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """``c * loss``, computed in fp32 (a scaled fp16 loss could overflow before backward starts)."""
        loss = check_tensor("loss", loss, floating=True)
        if loss.numel() != 1:
            raise ValueError(f"loss must be a scalar, got shape {tuple(loss.shape)}")
        return loss.float() * self.scale_value

    @torch.no_grad()
    def unscale_(self, params) -> bool:
        """Divide every gradient by ``c`` in place; return True when all of them are finite."""
        grads = [p.grad for p in _params_with_grad(params)]
        finite = all(bool(torch.isfinite(g).all()) for g in grads)
        inv = 1.0 / self.scale_value
        for g in grads:
            g.mul_(inv)  # a power-of-two scale divides exactly
        return finite

    def update(self, finite: bool) -> None:
        """Advance the dynamic schedule after a step (finite) or a skipped step (not finite)."""
        if not isinstance(finite, bool):
            raise ValueError(f"finite must be True or False, got {finite!r}")
        if not finite:
            self.skipped += 1
            self.good_steps = 0
            if self.dynamic:
                self.scale_value = max(self.scale_value * self.backoff_factor, self.min_scale)
            return
        self.good_steps += 1
        if self.dynamic and self.good_steps >= self.growth_interval:
            self.scale_value *= self.growth_factor
            self.good_steps = 0

    def step(self, optimizer: torch.optim.Optimizer, *, unscale: bool = True) -> bool:
        """Unscale (unless ``unscale=False``), step the optimizer if every gradient is finite, update the scale.

        Returns True when the optimizer stepped, False when the step was skipped.
        """
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        finite = self.unscale_(optimizer) if unscale else grads_finite(optimizer)
        if finite:
            optimizer.step()
        self.update(finite)
        return finite

    def state_dict(self) -> dict:
        return {"scale": self.scale_value, "good_steps": self.good_steps, "skipped": self.skipped}


def train_step(model: nn.Module, loss_fn, inputs: torch.Tensor, targets: torch.Tensor,
               optimizer: torch.optim.Optimizer, *, scaler: LossScaler | None = None,
               dtype: torch.dtype | None = None, autocast: bool = True) -> tuple[float, bool]:
    """One training step under autocast; returns ``(loss, stepped)``.

    The autocast device is ``inputs.device`` and the dtype ``dtype`` (default :func:`autocast_dtype`: bf16 on
    CPU, fp16 on CUDA). The loss is computed in fp32 from the model's output. With fp16 a ``scaler`` should
    be given (one with default settings is *not* created silently); bf16 has fp32's range and needs none.
    ``autocast=False`` runs the same step in fp32.
    """
    inputs = check_tensor("inputs", inputs)
    check_tensor("targets", targets)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if scaler is not None and not isinstance(scaler, LossScaler):
        raise ValueError(f"scaler must be a LossScaler or None, got {type(scaler).__name__}")
    dtype = autocast_dtype(inputs.device) if dtype is None else dtype
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be torch.float16 or torch.bfloat16, got {dtype}")
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(inputs.device.type, dtype=dtype, enabled=autocast):
        out = model(inputs)  # (batch, ...) in the 16-bit dtype where autocast applies
    loss = loss_fn(out.float(), targets)
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"the forward pass gave a non-finite loss ({value})")
    if scaler is None:
        loss.backward()
        optimizer.step()
        return value, True
    scaler.scale(loss).backward()
    return value, scaler.step(optimizer)


def compiler_available() -> tuple[bool, str]:
    """Whether :func:`torch.compile`'s default backend can run here, and why not if it cannot.

    Inductor writes C++ (CPU) or Triton (CUDA) kernels; on CPU it needs a C++ compiler on the PATH.
    """
    if not hasattr(torch, "compile"):
        return False, "this torch has no torch.compile"
    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if cxx is None:
        return False, "no C++ compiler (g++, c++ or clang++) on the PATH: inductor cannot build CPU kernels"
    return True, f"inductor with {cxx}"


def compile_model(model: nn.Module, example_inputs: torch.Tensor, *, mode: str | None = None,
                  warmup_backward: bool = True) -> tuple[nn.Module, dict]:
    """``torch.compile(model)``, compiled once on ``example_inputs``; falls back to eager with a message.

    The first call compiles the forward (and, with ``warmup_backward``, the backward) graph; the returned
    info holds ``compiled`` (bool), ``message`` and ``compile_seconds`` (wall time of that first call,
    including the eager time of one step, which is small for the tiny models this is meant for).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    check_tensor("example_inputs", example_inputs)
    if mode not in (None, "default", "reduce-overhead", "max-autotune"):
        raise ValueError(f"mode must be None, 'default', 'reduce-overhead' or 'max-autotune', got {mode!r}")
    ok, message = compiler_available()
    if not ok:
        return model, {"compiled": False, "message": f"running eager: {message}", "compile_seconds": 0.0}
    compiled = torch.compile(model, mode=mode)
    start = time.perf_counter()
    try:
        out = compiled(example_inputs)
        if warmup_backward and out.requires_grad:
            out.float().sum().backward()
            model.zero_grad(set_to_none=True)
    except Exception as err:  # a backend failure must not stop training: report it and run eager
        return model, {"compiled": False, "message": f"running eager: torch.compile failed ({type(err).__name__})",
                       "compile_seconds": 0.0}
    seconds = time.perf_counter() - start
    return compiled, {"compiled": True, "message": message, "compile_seconds": seconds if math.isfinite(seconds) else 0.0}
