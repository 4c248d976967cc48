r"""Multi-task loss weightings and the primary/auxiliary update.

Articles (Su Jianlin, *Scientific Spaces*):

* 多任务学习漫谈（一）：以损失之名, https://kexue.fm/archives/8870 (2022-01-18): weightings of
  :math:`\mathcal L = \sum_i \alpha_i \mathcal L_i`. Normalising by a reference loss (initial or prior),
  :math:`\sum_i \mathcal L_i / \mathcal L_i^{\rm ref}`; real-time normalisation
  :math:`\sum_i \mathcal L_i / \mathrm{sg}(\mathcal L_i)`, whose gradient is
  :math:`\sum_i \nabla\mathcal L_i / \mathcal L_i = \nabla \sum_i \log \mathcal L_i`; the generalised mean
  :math:`(\tfrac1n\sum_i \mathcal L_i^\gamma)^{1/\gamma}` (geometric mean at :math:`\gamma = 0`); and gradient
  normalisation :math:`\sum_i \mathcal L_i / \mathrm{sg}(\|\nabla\mathcal L_i\|)`, invariant to scaling and
  to shifting each loss. Also uncertainty weighting (Kendall, Gal, Cipolla, arXiv:1705.07115),
  :math:`\sum_i e^{-s_i}\mathcal L_i + s_i`, whose optimum :math:`s_i = \log\mathcal L_i` turns it into
  :math:`\sum_i (1 + \log\mathcal L_i)`. GradNorm (Chen et al., arXiv:1711.02257) learns weights :math:`w_i` by
  minimising :math:`\sum_i |w_i n_i - \mathrm{sg}(\bar G\, r_i^\alpha)|` with :math:`n_i = \|\nabla_W\mathcal L_i\|`,
  :math:`\bar G = \mathrm{mean}_i\, w_i n_i` and :math:`r_i` the initial-state-normalised loss
  :math:`\mathcal L_i/\mathcal L_i^{(0)}` over its mean; each term vanishes at :math:`w_i \propto r_i^\alpha / n_i`,
  gradient normalisation weighted by the initial-state-normalised losses to the power :math:`\alpha`.
* 多任务学习漫谈（三）：分主次之序, https://kexue.fm/archives/8907 (2022-02-14): with primary gradient
  :math:`g_0` and auxiliary gradients :math:`g_1..g_n` (rows of ``G``), the update :math:`-\eta u` solves
  :math:`\max_u \langle u, g_0\rangle - \tfrac12\|u\|^2` s.t. :math:`\langle u, g_i\rangle \ge 0`, whose dual
  is the non-negative least squares problem :math:`\min_{\lambda\ge0}\|g_0 + G^\top\lambda\|^2`,
  :math:`u = g_0 + G^\top\lambda`. One auxiliary task: :math:`\lambda = \mathrm{relu}(-\langle g_0, g_1\rangle)
  / \|g_1\|^2`. Several: the article's coordinate rule (re-solve the coefficient of
  :math:`\tau = \arg\min_i \langle g_i, u\rangle` by the one-task formula), coordinate descent on the most
  violated KKT condition, or ``scipy.optimize.nnls``. L2 regularisation as the auxiliary task gives
  :math:`g + \mathrm{relu}(-\langle g, \theta\rangle)\,\theta / \|\theta\|^2`.

Tensors may live on any device and dtype; results follow the inputs (``nnls`` runs in float64 on the CPU
and is cast back).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import optimize

from ._validate import check_int, check_real, check_tensor

__all__ = [
    "generalized_mean",
    "realtime_normalized",
    "reference_normalized",
    "uncertainty_weighted",
    "prior_loss_ce",
    "prior_loss_mse",
    "combine_normalized_grads",
    "normalized_grad_sum",
    "mtl_loss",
    "gradnorm_loss",
    "gradnorm_target_weights",
    "gradnorm_renormalize_",
    "aux_coefficient",
    "primary_aux_direction",
    "l2_constrained_grad",
    "primary_aux_hybrid",
]


def _losses(losses) -> torch.Tensor:
    if isinstance(losses, (list, tuple)):
        if not losses or not all(isinstance(x, torch.Tensor) and x.ndim == 0 for x in losses):
            raise ValueError("losses must be a non-empty list of scalar tensors or a (..., n) tensor")
        losses = torch.stack(list(losses))
    check_tensor("losses", losses, floating=True)
    if losses.ndim < 1 or losses.numel() == 0:
        raise ValueError("losses must not be empty")
    return losses


def _positive(losses: torch.Tensor) -> torch.Tensor:
    if not bool((losses.detach() > 0).all()):
        raise ValueError("this weighting needs strictly positive losses")
    return losses


def generalized_mean(losses, *, gamma: float) -> torch.Tensor:
    r""":math:`(\frac1n\sum_i L_i^\gamma)^{1/\gamma}`; ``gamma = 0`` is the geometric mean (its limit)."""
    L = _positive(_losses(losses))  # (n,)
    gamma = check_real("gamma", gamma)
    if gamma == 0.0:
        return L.log().mean(-1).exp()  # (...)
    return L.pow(gamma).mean(-1).pow(1.0 / gamma)  # (...)


def realtime_normalized(losses) -> torch.Tensor:
    r""":math:`\sum_i L_i / \mathrm{sg}(L_i)`: value ``n``, gradient :math:`\sum_i \nabla L_i / L_i`."""
    L = _positive(_losses(losses))
    return (L / L.detach()).sum(-1)  # (...)


def reference_normalized(losses, reference) -> torch.Tensor:
    r""":math:`\sum_i L_i / L_i^{\rm ref}` with fixed references (initial or prior losses)."""
    L = _losses(losses)
    ref = torch.as_tensor(reference, dtype=L.dtype, device=L.device)  # (n,)
    if ref.shape not in (L.shape, L.shape[-1:]) or not bool((ref > 0).all()):
        raise ValueError(f"reference must be {tuple(L.shape)} positive numbers, got {tuple(ref.shape)}")
    return (L / ref).sum(-1)  # (...)


def uncertainty_weighted(losses, log_vars: torch.Tensor) -> torch.Tensor:
    r""":math:`\sum_i e^{-s_i} L_i + s_i` (``log_vars`` = :math:`s`, learnable); minimised over ``s`` at
    :math:`s_i = \log L_i`, where it equals :math:`\sum_i 1 + \log L_i`."""
    L = _losses(losses)
    check_tensor("log_vars", log_vars, floating=True)
    if log_vars.shape != L.shape:
        raise ValueError(f"log_vars must have shape {tuple(L.shape)}, got {tuple(log_vars.shape)}")
    return (torch.exp(-log_vars) * L + log_vars).sum(-1)  # (...)


def prior_loss_ce(label_freqs) -> float:
    r"""Cross-entropy of the best constant predictor: the label entropy :math:`-\sum_k p_k\log p_k`."""
    p = np.asarray(label_freqs, dtype=np.float64)
    if p.ndim != 1 or p.size < 2 or (p < 0).any() or not np.isclose(p.sum(), 1.0):
        raise ValueError("label_freqs must be a 1-D probability vector with at least 2 entries")
    q = p[p > 0]
    return float(-(q * np.log(q)).sum())


def prior_loss_mse(y) -> float:
    r"""Squared error of the best constant predictor: :math:`\mathbb E\|y - \mathbb E y\|^2` (``y`` is (N, k))."""
    y = torch.as_tensor(y)
    if y.ndim not in (1, 2) or y.shape[0] < 1 or not y.is_floating_point():
        raise ValueError("y must be a floating (N,) or (N, k) array of targets")
    y = y.reshape(y.shape[0], -1).double()  # (N, k)
    return float((y - y.mean(0)).square().sum(1).mean())


def _flat_grads(losses: torch.Tensor, params) -> torch.Tensor:
    rows = []
    for i in range(losses.numel()):
        gs = torch.autograd.grad(losses[i], params, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(gs, params)]))
    return torch.stack(rows)  # (n, P)


def combine_normalized_grads(grads: torch.Tensor, *, eps: float = 0.0) -> torch.Tensor:
    r""":math:`\sum_i g_i / (\|g_i\| + \epsilon)` for per-task gradients ``grads`` of shape ``(..., n, P)``."""
    check_tensor("grads", grads, floating=True)
    if grads.ndim < 2:
        raise ValueError(f"grads must be (..., n, P), got shape {tuple(grads.shape)}")
    eps = check_real("eps", eps, low=0.0)
    norms = grads.norm(dim=-1, keepdim=True) + eps  # (..., n, 1)
    if not bool((norms > 0).all()):
        raise ValueError("a task has a zero gradient; pass eps > 0")
    return (grads / norms).sum(-2)  # (..., P)


def normalized_grad_sum(losses, params, *, eps: float = 0.0) -> torch.Tensor:
    r""":math:`\sum_i L_i / \mathrm{sg}(\|\nabla_\theta L_i\| + \epsilon)`: its gradient is
    :math:`\sum_i \nabla L_i / \|\nabla L_i\|` (scale and shift invariant)."""
    L = _losses(losses)
    if L.ndim != 1:
        raise ValueError("normalized_grad_sum takes a 1-D vector of losses; use combine_normalized_grads for batches")
    params = list(params)
    if not params:
        raise ValueError("params must be a non-empty iterable of tensors")
    eps = check_real("eps", eps, low=0.0)
    norms = _flat_grads(L, params).norm(dim=1)  # (n,)
    if not bool((norms + eps > 0).all()):
        raise ValueError("a task has a zero gradient; pass eps > 0")
    return (L / (norms + eps).detach()).sum()


def mtl_loss(losses, *, scheme: str = "realtime", reference=None, gamma: float | None = None,
             log_vars=None, params=None) -> torch.Tensor:
    """One entry point: ``scheme`` in ``sum, reference, realtime, log, generalized_mean, uncertainty, gradnorm``."""
    L = _losses(losses)
    if scheme == "sum":
        return L.sum(-1)
    if scheme == "reference":
        return reference_normalized(L, reference)
    if scheme == "realtime":
        return realtime_normalized(L)
    if scheme == "log":
        return _positive(L).log().sum(-1)
    if scheme == "generalized_mean":
        if gamma is None:
            raise ValueError("scheme 'generalized_mean' needs gamma")
        return generalized_mean(L, gamma=gamma)
    if scheme == "uncertainty":
        return uncertainty_weighted(L, log_vars)
    if scheme == "gradnorm":
        return normalized_grad_sum(L, params)
    raise ValueError(f"unknown scheme {scheme!r}")


def _gradnorm_inputs(grad_norms, losses, initial_losses, alpha):
    check_tensor("grad_norms", grad_norms, floating=True)
    L = _losses(losses)
    check_tensor("initial_losses", initial_losses, floating=True)
    try:
        fits = torch.broadcast_shapes(initial_losses.shape, L.shape) == L.shape
    except RuntimeError:
        fits = False
    if grad_norms.shape != L.shape or not fits or initial_losses.shape[-1:] != L.shape[-1:]:
        raise ValueError(f"grad_norms {tuple(grad_norms.shape)} and losses {tuple(L.shape)} must have the same "
                         f"(..., n) shape, and initial_losses {tuple(initial_losses.shape)} must broadcast to it")
    if L.shape[-1] < 2:
        raise ValueError("GradNorm balances at least 2 tasks")
    alpha = check_real("alpha", alpha, low=0.0)
    n, L, L0 = grad_norms.detach(), L.detach(), initial_losses.detach()
    if not (bool((n > 0).all()) and bool((L > 0).all()) and bool((L0 > 0).all())):
        raise ValueError("GradNorm needs positive gradient norms, losses and initial losses")
    ratio = L / L0  # (..., n) initial-state-normalised losses
    r = ratio / ratio.mean(-1, keepdim=True)  # (..., n) relative inverse training rates
    return n, r, alpha


def gradnorm_loss(weights: torch.Tensor, grad_norms: torch.Tensor, losses, initial_losses: torch.Tensor, *,
                  alpha: float) -> torch.Tensor:
    r"""GradNorm's objective for the task weights (Chen et al., arXiv:1711.02257, their :math:`L_{\rm grad}`).

    :math:`\sum_i |w_i n_i - \mathrm{sg}(\bar G\, r_i^\alpha)|` with ``grad_norms`` :math:`n_i = \|\nabla_W L_i\|`
    (unweighted, for the shared layer :math:`W`), :math:`\bar G = \mathrm{mean}_i\, w_i n_i` and
    :math:`r_i = \tilde L_i / \mathrm{mean}_j \tilde L_j`, :math:`\tilde L_i = L_i / L_i^{(0)}`. The targets
    :math:`\bar G r_i^\alpha` are held constant, as in the paper, so the gradient reaches ``weights`` only through
    :math:`w_i n_i`. Shapes ``(..., n)`` (``initial_losses`` broadcasts); returns ``(...)``. After each step on the weights the paper rescales them
    to sum to ``n`` (:func:`gradnorm_renormalize_`).
    """
    check_tensor("weights", weights, floating=True)
    n, r, alpha = _gradnorm_inputs(grad_norms, losses, initial_losses, alpha)
    if weights.shape != n.shape:
        raise ValueError(f"weights must have shape {tuple(n.shape)}, got {tuple(weights.shape)}")
    G = weights * n  # (..., n) weighted gradient norms
    target = (G.mean(-1, keepdim=True) * r.pow(alpha)).detach()  # (..., n)
    return (G - target).abs().sum(-1)  # (...)


def gradnorm_target_weights(grad_norms: torch.Tensor, losses, initial_losses: torch.Tensor, *,
                            alpha: float) -> torch.Tensor:
    r"""The weights at which every term of :func:`gradnorm_loss` is zero up to one common factor, in closed form.

    :math:`w_i = n\,\frac{r_i^\alpha / n_i}{\sum_j r_j^\alpha / n_j}` (summing to ``n``): the update
    :math:`\sum_i w_i\nabla L_i \propto \sum_i r_i^\alpha \nabla L_i / \|\nabla L_i\|` is gradient normalisation
    (``alpha = 0``) weighted by the initial-state-normalised losses. The loss is exactly zero there when
    :math:`\mathrm{mean}_i\, r_i^\alpha = 1` (e.g. ``alpha`` 0 or 1). Shapes ``(..., n)``; no gradient flows.
    """
    n, r, alpha = _gradnorm_inputs(grad_norms, losses, initial_losses, alpha)
    w = r.pow(alpha) / n  # (..., n)
    return w * (w.shape[-1] / w.sum(-1, keepdim=True))


@torch.no_grad()
def gradnorm_renormalize_(weights: torch.Tensor) -> torch.Tensor:
    """Rescale task weights ``(..., n)`` in place to sum to ``n`` (GradNorm's step after each weight update)."""
    check_tensor("weights", weights, floating=True)
    if weights.ndim < 1 or weights.shape[-1] < 1:
        raise ValueError(f"weights must be (..., n) with n >= 1, got shape {tuple(weights.shape)}")
    total = weights.sum(-1, keepdim=True)  # (..., 1)
    if not bool((total > 0).all()):
        raise ValueError("weights must have a positive sum")
    return weights.mul_(weights.shape[-1] / total)


def aux_coefficient(g0: torch.Tensor, g1: torch.Tensor) -> torch.Tensor:
    r"""One auxiliary task: :math:`\lambda = \mathrm{relu}(-\langle g_0, g_1\rangle)/\|g_1\|^2` (shape ``(...)``)."""
    check_tensor("g0", g0, floating=True)
    check_tensor("g1", g1, floating=True)
    if g0.shape != g1.shape or g0.ndim < 1:
        raise ValueError(f"g0 and g1 must be vectors of equal shape, got {tuple(g0.shape)}, {tuple(g1.shape)}")
    den = g1.square().sum(-1)  # (...)
    if not bool((den > 0).all()):
        raise ValueError("g1 must be non-zero")
    return torch.relu(-(g0 * g1).sum(-1)) / den


def primary_aux_direction(g0: torch.Tensor, G: torch.Tensor, *, method: str = "cd", iters: int = 10000,
                          tol: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Solve :math:`\min_{\lambda\ge0}\|g_0 + G^\top\lambda\|^2`; return ``(u, lam)``, ``u = g0 + G.T @ lam``.

    ``g0`` is ``(d,)``, ``G`` is ``(n, d)`` (one row per auxiliary gradient). ``method``: ``"article"``
    re-solves the coefficient of :math:`\arg\min_i\langle g_i, u\rangle` (the article's rule), ``"cd"``
    re-solves the coefficient with the largest KKT violation, ``"nnls"`` calls ``scipy.optimize.nnls``.
    The iterative methods stop when no coefficient moves by more than ``tol`` (relative).
    """
    check_tensor("g0", g0, ndim=1, floating=True)
    check_tensor("G", G, ndim=2, floating=True)
    if G.shape[1] != g0.shape[0] or G.shape[0] < 1:
        raise ValueError(f"G must be (n, {g0.shape[0]}) with n >= 1, got {tuple(G.shape)}")
    sq = G.square().sum(1)  # (n,)
    if not bool((sq > 0).all()):
        raise ValueError("every auxiliary gradient must be non-zero")
    iters = check_int("iters", iters, min_value=1)
    tol = check_real("tol", tol, low=0.0)
    if method == "nnls":
        A = G.detach().to("cpu", torch.float64).numpy().T  # (d, n)
        lam_np, _ = optimize.nnls(A, -g0.detach().to("cpu", torch.float64).numpy())
        lam = torch.as_tensor(lam_np, dtype=g0.dtype, device=g0.device)
        return g0 + lam @ G, lam
    if method not in ("article", "cd"):
        raise ValueError(f"method must be 'article', 'cd' or 'nnls', got {method!r}")
    lam = torch.zeros(G.shape[0], dtype=g0.dtype, device=g0.device)  # (n,)
    u = g0.clone()  # (d,)
    scale = lam.new_tensor(1.0) + g0.norm() / sq.sqrt().min()
    for _ in range(iters):
        dots = G @ u  # (n,)
        new = torch.relu(lam - dots / sq)  # (n,) one-task re-solve of each coefficient
        if method == "article":
            t = int(torch.argmin(dots))
        else:
            t = int(torch.argmax((new - lam).abs()))
        step = new[t] - lam[t]
        if float(step.abs()) <= tol * float(scale):
            break
        lam[t] = new[t]
        u = u + step * G[t]
    return u, lam


def l2_constrained_grad(g: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    r"""Primary gradient ``g`` with :math:`\tfrac12\|\theta\|^2` as auxiliary task:
    :math:`g + \mathrm{relu}(-\langle g,\theta\rangle)\,\theta/\|\theta\|^2`, so that :math:`\langle u, \theta\rangle \ge 0`."""
    check_tensor("g", g, floating=True)
    check_tensor("theta", theta, floating=True)
    if g.shape != theta.shape:
        raise ValueError(f"g and theta must have the same shape, got {tuple(g.shape)}, {tuple(theta.shape)}")
    gf, tf = g.reshape(-1), theta.reshape(-1)  # (P,)
    den = tf.square().sum()
    if not bool(den > 0):
        raise ValueError("theta must be non-zero")
    return g + (torch.relu(-(gf * tf).sum()) / den) * theta


def primary_aux_hybrid(P: torch.Tensor, H: torch.Tensor, *, tol: float = 1e-15,
                       maxiter: int = 1000) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Several primary tasks (rows of ``P``, ``(n, d)``) and auxiliary tasks (rows of ``H``, ``(m, d)``, ``m`` may be 0).

    Solves :math:`\min_{\alpha\in\Delta^n,\lambda\ge0}\tfrac12\|P^\top\alpha + H^\top\lambda\|^2` (article 8907's
    hybrid of part (2)'s min-norm point and part (3)'s constraints) with SLSQP in float64 on the CPU and returns
    ``(u, alpha, lam)``, ``u = P.T @ alpha + H.T @ lam``. At the optimum every primary loss falls at rate
    :math:`\langle u, p_i\rangle \ge \|u\|^2` and no auxiliary one rises, :math:`\langle u, h_j\rangle \ge 0`.
    """
    check_tensor("P", P, ndim=2, floating=True)
    check_tensor("H", H, ndim=2, floating=True)
    if P.shape[0] < 1 or H.shape[1] != P.shape[1]:
        raise ValueError(f"P must be (n >= 1, d) and H (m, d), got {tuple(P.shape)} and {tuple(H.shape)}")
    tol = check_real("tol", tol, low=0.0)
    maxiter = check_int("maxiter", maxiter, min_value=1)
    n, m = P.shape[0], H.shape[0]
    M = torch.cat([P, H]).detach().to("cpu", torch.float64).numpy()  # (n + m, d)
    ones = np.r_[np.ones(n), np.zeros(m)]  # (n + m,)
    res = optimize.minimize(lambda x: 0.5 * float((x @ M) @ (x @ M)), np.r_[np.full(n, 1.0 / n), np.zeros(m)],
                            jac=lambda x: M @ (x @ M), method="SLSQP", bounds=[(0.0, None)] * (n + m),
                            constraints=[{"type": "eq", "fun": lambda x: x @ ones - 1.0, "jac": lambda x: ones}],
                            options={"ftol": tol, "maxiter": maxiter})
    if not res.success:  # pragma: no cover - a convex QP with a feasible start
        raise RuntimeError(f"SLSQP failed: {res.message}")
    x = torch.as_tensor(np.clip(res.x, 0.0, None), dtype=P.dtype, device=P.device)  # (n + m,)
    alpha, lam = x[:n] / x[:n].sum(), x[n:]
    return alpha @ P + lam @ H, alpha, lam
