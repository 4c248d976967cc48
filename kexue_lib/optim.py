r"""Sign-based optimizers: Lion and Tiger.

Articles: Google新搜出的优化器Lion (https://kexue.fm/archives/9473, 2023-02-16);
Tiger:一个"抠"到极致的优化器 (https://kexue.fm/archives/9512, 2023-03-07);
Lion/Tiger优化器训练下的Embedding异常和对策 (https://kexue.fm/archives/9736, 2023-08-28).
Paper: X. Chen et al., *Symbolic Discovery of Optimization Algorithms*, arXiv:2302.06675.
Tiger follows the reference implementation ``bojone/tiger`` (TensorFlow/Keras).

**Lion** (decoupled weight decay multiplied by the learning rate; momentum updated *after* the step)

.. math::

    u_t = \operatorname{sign}(\beta_1 m_{t-1} + (1-\beta_1) g_t),\quad
    \theta_t = \theta_{t-1} - \eta(u_t + \lambda\theta_{t-1}),\quad
    m_t = \beta_2 m_{t-1} + (1-\beta_2) g_t .

**Tiger** is Lion with :math:`\beta_1=\beta_2=\beta`, a learning rate relative to the
parameter's RMS, and gradient accumulation folded into the momentum. At micro-step ``t``
(counted from 0) with ``k = grad_accum_steps``:

.. math::

    m_t = b_t m_{t-1} + \tfrac{1-\beta}{k} g_t,\quad b_t = \beta \text{ if } t \bmod k = 0 \text{ else } 1,

    \theta_t = \theta_{t-1} - \eta_t[\operatorname{sign}(m_t) + \lambda\theta_{t-1}]
    \quad\text{only when } (t+1) \bmod k = 0,

with :math:`\eta_t = \alpha\,\mathrm{RMS}(\theta_{t-1})` for matrices (row-wise RMS for
embeddings) and :math:`\eta_t = \alpha/2`, :math:`\lambda = 0` for biases and normalization
gains. If a gradient holds a NaN or an infinity, the momentum is kept and the weight shrinks
instead: :math:`\theta_t = (\theta_{t-1} - c)s + c` with ``s = shrink_ratio``, ``c = 1`` for
gains and 0 otherwise (the reference checks NaN only; we also catch infinities).

Both steps run in place on any device and dtype; the only state is one momentum tensor per
parameter. The sign is formed in a scratch buffer that the optimizer allocates once per device
and dtype, sized to the largest parameter and reused by every parameter at every step, so a
step allocates nothing per parameter. ``lazy_rows=True`` (a Tiger group
option, article 9736's first counter-measure) updates only the rows of a matrix whose
gradient row is non-zero, so that rows of unseen tokens neither move nor decay.

Article 9512's closing proposal, the family :math:`u_t=\operatorname{sign}(m_t)|m_t|^{1-\gamma}`
between Tiger (:math:`\gamma=1`) and SGD with momentum (:math:`\gamma=0`), is
:func:`sign_power_update_`.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ._validate import check_int, check_real

__all__ = ["lion_update_", "signum_update_", "tiger_update_", "sign_power_update_", "amos_lion_hparams", "Lamb",
           "Lion", "Tiger", "tiger_param_groups", "optimizer_state_numel", "TIGER_KINDS"]

TIGER_KINDS = ("auto", "matrix", "embedding", "bias", "gain", "plain")


@torch.no_grad()
def lion_update_(param, grad, exp_avg, *, lr: float, beta1: float, beta2: float, weight_decay: float = 0.0,
                 buf=None):
    """One Lion step in place on ``param`` and its momentum ``exp_avg`` (same shape).

    ``buf``, a tensor of the same shape, dtype and device, receives the sign (a fresh
    temporary when ``None``); its content on entry is ignored.
    """
    if weight_decay:
        param.mul_(1.0 - lr * weight_decay)                  # theta <- theta (1 - eta lambda)
    update = torch.mul(exp_avg, beta1) if buf is None else torch.mul(exp_avg, beta1, out=buf)
    update.add_(grad, alpha=1.0 - beta1).sign_()              # u = sign(b1 m + (1-b1) g)
    param.add_(update, alpha=-lr)                             # theta <- theta - eta u
    exp_avg.mul_(beta2).add_(grad, alpha=1.0 - beta2)         # m <- b2 m + (1-b2) g
    return param


@torch.no_grad()
def signum_update_(param, grad, exp_avg, *, lr: float, beta: float):
    """SIGNUM (Bernstein et al., arXiv:1802.04434): ``m <- b m + (1-b) g``, ``theta -= lr sign(m)``."""
    exp_avg.mul_(beta).add_(grad, alpha=1.0 - beta)
    param.sub_(lr * torch.sign(exp_avg))
    return param


def _row_rms(x):  # RMS over the last axis, shape (..., 1)
    return torch.linalg.vector_norm(x, dim=-1, keepdim=True) / math.sqrt(x.shape[-1])


def _resolve_kind(kind: str, param) -> str:
    if kind == "auto":
        return "matrix" if param.ndim >= 2 else "bias"
    return kind


@torch.no_grad()
def tiger_update_(param, grad, exp_avg, *, lr: float, beta: float, weight_decay: float, kind: str = "auto",
                  micro_step: int = 0, grad_accum_steps: int = 1, shrink_ratio: float = 0.99, buf=None) -> bool:
    """One Tiger micro-step in place; returns ``True`` when the non-finite guard fired.

    ``kind`` sets the learning-rate rule: ``matrix`` (lr x RMS of the tensor), ``embedding``
    (lr x RMS of each row), ``bias`` and ``gain`` (lr / 2, no decay; the guard shrinks gains
    toward 1), ``plain`` (lr and decay as given), ``auto`` (matrix if 2-D or more, else bias).
    ``buf`` (same shape, dtype and device as ``param``) receives the sign, as in :func:`lion_update_`.
    """
    kind = _resolve_kind(kind, param)
    center = 1.0 if kind == "gain" else 0.0
    lo, hi = torch.aminmax(grad) if grad.numel() else (grad.new_zeros(()), grad.new_zeros(()))
    if not bool(torch.isfinite(lo) & torch.isfinite(hi)):  # NaN or inf: keep m, shrink theta
        if center:
            param.sub_(center).mul_(shrink_ratio).add_(center)
        else:
            param.mul_(shrink_ratio)
        return True
    k = grad_accum_steps
    if micro_step % k == 0:
        exp_avg.mul_(beta)                                    # b_t = beta on the first micro-step
    exp_avg.add_(grad, alpha=(1.0 - beta) / k)                # + (1-beta)/k g
    if (micro_step + 1) % k:
        return False                                          # still accumulating: theta unchanged
    if kind in ("bias", "gain"):
        lr, weight_decay = 0.5 * lr, 0.0
    elif kind == "matrix":
        lr = lr * _row_rms(param.reshape(1, -1)).reshape(())  # 0-d tensor: no host sync
    elif kind == "embedding":
        lr = lr * _row_rms(param)                             # (rows, 1)
    if weight_decay:
        param.mul_(1.0 - lr * weight_decay)                   # theta (1 - eta lambda)
    step = torch.sign(exp_avg) if buf is None else torch.sign(exp_avg, out=buf)
    if isinstance(lr, torch.Tensor):
        step.mul_(lr)
        param.sub_(step)
    else:
        param.add_(step, alpha=-lr)                           # - eta sign(m)
    return False


@torch.no_grad()
def sign_power_update_(param, grad, exp_avg, *, lr: float, beta: float, gamma: float):
    """One step of article 9512's proposed family, in place on ``param`` and ``exp_avg``.

    ``m <- beta m + (1-beta) g``, then ``theta <- theta - lr sign(m) |m|^(1-gamma)`` (elementwise).
    ``gamma = 1`` is Tiger's sign step (the ``plain`` rule, no decay); ``gamma = 0`` is SGD with
    a dampened momentum, ``theta -= lr m``. The article suggests letting ``gamma`` fall from 1 to 0
    with the learning-rate schedule; that is left to the caller (pass a new ``gamma`` each step).
    """
    lr = check_real("lr", lr, low=0.0, low_open=True)
    beta = check_real("beta", beta, low=0.0, high=1.0, high_open=True)
    gamma = check_real("gamma", gamma, low=0.0, high=1.0)
    exp_avg.mul_(beta).add_(grad, alpha=1.0 - beta)           # m <- b m + (1-b) g
    step = exp_avg.abs().pow_(1.0 - gamma).mul_(torch.sign(exp_avg))  # sign(m)|m|^(1-gamma), no special cases
    param.add_(step, alpha=-lr)
    return param


def amos_lion_hparams(alpha0: float, sigma: float) -> dict:
    """Su's rule for Lion from the Amos recipe: ``lr = alpha0 sigma``, ``weight_decay = alpha0 / (2 sigma)``."""
    alpha0 = check_real("alpha0", alpha0, low=0.0, low_open=True)
    sigma = check_real("sigma", sigma, low=0.0, low_open=True)
    return {"lr": alpha0 * sigma, "weight_decay": alpha0 / (2.0 * sigma)}


def _scratch(opt, p):
    """A reusable buffer shaped like ``p``: one flat tensor per (device, dtype), grown to the largest
    parameter on first use and shared by every parameter and step (not part of the state_dict)."""
    bufs = opt.__dict__.setdefault("_scratch_bufs", {})
    key = (p.device, p.dtype)
    flat = bufs.get(key)
    if flat is None or flat.numel() < p.numel():
        flat = bufs[key] = torch.empty(max(p.numel() for g in opt.param_groups for p in g["params"]
                                           if (p.device, p.dtype) == key), device=p.device, dtype=p.dtype)
    return flat[: p.numel()].view(p.shape)


def optimizer_state_numel(opt: torch.optim.Optimizer) -> int:
    """Elements of every tensor ``opt`` keeps between steps, each storage counted once.

    Counts the per-parameter state (``opt.state``) *and* tensors held as attributes of the
    optimizer, such as the scratch buffer of :class:`Lion` and :class:`Tiger` (not part of the
    state_dict, but memory all the same). The parameters themselves are not counted.
    """
    if not isinstance(opt, torch.optim.Optimizer):
        raise ValueError(f"opt must be a torch.optim.Optimizer, got {type(opt).__name__}")
    seen, total = set(), 0

    def visit(x):
        nonlocal total
        if torch.is_tensor(x):
            storage = x.untyped_storage()
            key = (storage.data_ptr(), x.device)
            if key not in seen:
                seen.add(key)
                total += storage.nbytes() // x.element_size()
        elif isinstance(x, dict):
            for v in x.values():
                visit(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                visit(v)

    visit(list(opt.state.values()))
    visit([v for k, v in vars(opt).items() if k not in ("state", "param_groups", "defaults")])
    return total


def _call_closure(closure):
    """The usual ``torch.optim`` contract: re-evaluate the loss (with gradients) when a closure is given."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def _momentum(opt, p):
    """The one state tensor of Lion and Tiger, created as zeros on first use."""
    state = opt.state[p]
    if not state:
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return state["exp_avg"]


def _dense_grad(p, name):
    if p.grad.is_sparse:
        raise ValueError(f"{name} does not support sparse gradients (use a dense nn.Embedding; Tiger has lazy_rows)")
    return p.grad


class Lion(torch.optim.Optimizer):
    """Lion (arXiv:2302.06675), bit-for-bit the update of the paper's reference code."""

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        g = self.param_groups[-1]
        g["lr"] = check_real("lr", g["lr"], low=0.0, low_open=True)
        if not isinstance(g["betas"], (tuple, list)) or len(g["betas"]) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {g['betas']!r}")
        g["betas"] = tuple(check_real(f"beta{i + 1}", b, low=0.0, high=1.0, high_open=True)
                           for i, b in enumerate(g["betas"]))
        g["weight_decay"] = check_real("weight_decay", g["weight_decay"], low=0.0)

    @torch.no_grad()
    def step(self, closure=None):
        loss = _call_closure(closure)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                lion_update_(p, _dense_grad(p, "Lion"), _momentum(self, p), lr=group["lr"], beta1=beta1,
                             beta2=beta2, weight_decay=group["weight_decay"], buf=_scratch(self, p))
        return loss


class Tiger(torch.optim.Optimizer):
    """Tiger (kexue.fm/archives/9512), faithful to the reference ``bojone/tiger``.

    Call ``step()`` after every micro-batch's ``backward()`` and zero the gradients each time:
    with ``grad_accum_steps = k`` the parameters move on every k-th call only, exactly as
    Tiger on the mean of the k micro-batch gradients. Per-group options: ``kind`` (see
    :func:`tiger_update_`; :func:`tiger_param_groups` sets it from a model) and ``lazy_rows``.
    A learning-rate schedule is a ``torch.optim.lr_scheduler`` acting on ``group['lr']``.
    """

    def __init__(self, params, lr: float = 1e-3, beta: float = 0.965, weight_decay: float = 0.01,
                 grad_accum_steps: int = 1, shrink_ratio: float = 0.99):
        defaults = dict(lr=lr, beta=beta, weight_decay=weight_decay, grad_accum_steps=grad_accum_steps,
                        shrink_ratio=shrink_ratio, kind="auto", lazy_rows=False)
        super().__init__(params, defaults)
        self.guard_hits = 0  # how many (parameter, micro-step) pairs the non-finite guard caught

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        g = self.param_groups[-1]
        g["lr"] = check_real("lr", g["lr"], low=0.0, low_open=True)
        g["beta"] = check_real("beta", g["beta"], low=0.0, high=1.0, high_open=True)
        g["weight_decay"] = check_real("weight_decay", g["weight_decay"], low=0.0)
        g["grad_accum_steps"] = check_int("grad_accum_steps", g["grad_accum_steps"], min_value=1)
        g["shrink_ratio"] = check_real("shrink_ratio", g["shrink_ratio"], low=0.0, high=1.0)
        if g["kind"] not in TIGER_KINDS:
            raise ValueError(f"kind must be one of {TIGER_KINDS}, got {g['kind']!r}")
        if g["lazy_rows"] and g["grad_accum_steps"] != 1:
            raise ValueError("lazy_rows needs grad_accum_steps == 1 (a row's accumulation window is ill-defined)")
        g.setdefault("step", 0)

    @torch.no_grad()
    def step(self, closure=None):
        loss = _call_closure(closure)
        for group in self.param_groups:
            opts = {k: group[k] for k in ("lr", "beta", "weight_decay", "grad_accum_steps", "shrink_ratio")}
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad, m, kind = _dense_grad(p, "Tiger"), _momentum(self, p), _resolve_kind(group["kind"], p)
                if group["lazy_rows"] and p.ndim >= 2:
                    if kind == "matrix":  # the RMS would have to be the whole tensor's, not the rows'
                        raise ValueError("lazy_rows applies to kind='embedding' or 'plain' parameters")
                    rows = grad.reshape(grad.shape[0], -1).ne(0).any(dim=1).nonzero().squeeze(1)
                    if rows.numel() == 0:
                        continue
                    sub_p, sub_m = p.index_select(0, rows), m.index_select(0, rows)
                    hit = tiger_update_(sub_p, grad.index_select(0, rows), sub_m, kind=kind, micro_step=0, **opts)
                    p.index_copy_(0, rows, sub_p)
                    m.index_copy_(0, rows, sub_m)
                else:
                    hit = tiger_update_(p, grad, m, kind=kind, micro_step=group["step"], buf=_scratch(self, p),
                                        **opts)
                self.guard_hits += int(hit)
            group["step"] += 1
        return loss


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al., arXiv:1904.00962, Algorithm 2), the baseline of article 9512's experiments.

    Per tensor: Adam's direction ``r = m_hat / (sqrt(v_hat) + eps)``, ``u = r + lambda theta``, then
    ``theta -= lr * trust * u`` with ``trust = min(||theta||, max_weight_norm) / ||u||`` (1 when a norm is 0).
    The trust ratio makes the step relative to the weight, ``||dtheta|| = lr ||theta||``, as in Tiger.
    ``bias_correction=False`` drops ``m_hat``/``v_hat``; ``decoupled_decay=True`` shrinks
    ``theta *= 1 - lr lambda`` outside the trust ratio (with both, and ``max_weight_norm=10``, this is
    ``pytorch_optimizer.Lamb``'s default update).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, *, bias_correction: bool = True, decoupled_decay: bool = False,
                 max_weight_norm: float | None = None):
        if not isinstance(bias_correction, bool) or not isinstance(decoupled_decay, bool):
            raise ValueError("bias_correction and decoupled_decay must be True or False")
        if max_weight_norm is not None:
            max_weight_norm = check_real("max_weight_norm", max_weight_norm, low=0.0, low_open=True)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self._opts = (bias_correction, decoupled_decay, max_weight_norm)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        g = self.param_groups[-1]
        g["lr"] = check_real("lr", g["lr"], low=0.0, low_open=True)
        if not (isinstance(g["betas"], (tuple, list)) and len(g["betas"]) == 2):
            raise ValueError(f"betas must be a pair, got {g['betas']!r}")
        g["betas"] = tuple(check_real(f"beta{i + 1}", b, low=0.0, high=1.0, high_open=True)
                           for i, b in enumerate(g["betas"]))
        g["eps"] = check_real("eps", g["eps"], low=0.0)
        g["weight_decay"] = check_real("weight_decay", g["weight_decay"], low=0.0)
        g.setdefault("step", 0)

    @torch.no_grad()
    def step(self, closure=None):
        loss = _call_closure(closure)
        bias_correction, decoupled, max_norm = self._opts
        for group in self.param_groups:
            group["step"] += 1
            (b1, b2), t, lr, wd, eps = group["betas"], group["step"], group["lr"], group["weight_decay"], group["eps"]
            c1, c2 = (1 - b1 ** t, 1 - b2 ** t) if bias_correction else (1.0, 1.0)
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad, state = _dense_grad(p, "Lamb"), self.state[p]
                if not state:
                    state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(grad, alpha=1 - b1)                          # m <- b1 m + (1-b1) g
                v.mul_(b2).addcmul_(grad, grad, value=1 - b2)                # v <- b2 v + (1-b2) g^2
                u = (v / c2).sqrt_().add_(eps)
                u = torch.div(m / c1, u)                                     # r = m_hat / (sqrt(v_hat) + eps)
                if wd and decoupled:
                    p.mul_(1 - lr * wd)
                elif wd:
                    u.add_(p, alpha=wd)                                      # u = r + lambda theta
                w_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(u)
                if max_norm is not None:
                    w_norm = w_norm.clamp(max=max_norm)
                trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / (u_norm + (eps if decoupled else 0.0)),
                                    torch.ones_like(w_norm))
                p.sub_(u.mul_(trust), alpha=lr)                              # theta -= lr trust u
        return loss


_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._BatchNorm)


def tiger_param_groups(model: nn.Module, **options) -> list[dict]:
    """Split ``model``'s parameters into Tiger groups by role (the reference matches names).

    ``nn.Embedding`` weights -> ``embedding`` (row-wise RMS); normalization weights -> ``gain``;
    every bias and normalization shift -> ``bias``; everything else -> ``matrix`` (``auto``
    for 1-D leftovers). ``options`` (e.g. ``lazy_rows=True``) go to the embedding group only.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    buckets: dict[str, list] = {"embedding": [], "gain": [], "bias": [], "matrix": [], "auto": []}
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            if isinstance(module, nn.Embedding):
                buckets["embedding"].append(p)
            elif isinstance(module, _NORMS):
                buckets["gain" if name == "weight" else "bias"].append(p)
            elif name.endswith("bias"):
                buckets["bias"].append(p)
            else:
                buckets["matrix" if p.ndim >= 2 else "auto"].append(p)
    return [dict(params=ps, kind=kind, **(options if kind == "embedding" else {}))
            for kind, ps in buckets.items() if ps]
