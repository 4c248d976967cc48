r"""Unargmaxable classes of a softmax output layer: classes that can never win the argmax.

Article: 你的语言模型有没有“无法预测的词”？, https://kexue.fm/archives/9046 (2022-04-20).
Paper: A. Grivas, N. Bogoychev, A. Lopez, *Low-Rank Softmax Can Have Unargmaxable Classes in
Theory but Rarely in Practice*, ACL 2022, arXiv:2203.06462.

An output layer with class vectors :math:`w_1, \dots, w_V \in \mathbb R^d` (rows of ``W``) and
biases :math:`b_i` scores a feature vector :math:`z` by :math:`\langle w_i, z\rangle + b_i`.
Class :math:`k` is *argmaxable* when some :math:`z` makes it the strict winner,

.. math::

    \exists z:\quad \langle w_k - w_i, z\rangle + b_k - b_i > 0 \quad \forall i \ne k.

Three ways to decide it, all here:

* **Linear program** (exact, :func:`argmax_margin`): maximise :math:`t` subject to
  :math:`\langle w_i - w_k, z\rangle + t \le b_k - b_i`, with ``t <= 1`` (so the program is
  bounded when ``z`` is free) or with the box :math:`\|z\|_\infty \le R` (bounded features, as in
  the paper). Class ``k`` is argmaxable iff the optimum ``t* > 0``.
* **Convex hull** (exact, :func:`hull_argmaxable`): without bias, ``k`` is argmaxable iff
  :math:`w_k` is a vertex of :math:`\mathrm{conv}\{w_i\}`; with bias, iff the lifted point
  :math:`(w_k, b_k)` is a vertex of the hull of the lifted points exposed by a direction
  :math:`(z, 1)`, i.e. lies on a facet whose outward normal has a positive last coordinate.
* **The article's own form** (:func:`ball_margin`, :func:`ball_minimax_dual`): with the ball
  :math:`\|z\|_2 \le r` and biases, :math:`\max_{\|z\|\le r}\min_i \langle\Delta w_i, z\rangle + \Delta b_i
  = \min_{\alpha\in\Delta} r\|\sum_i\alpha_i\Delta w_i\| + \sum_i\alpha_i\Delta b_i`, both sides solved
  independently (SLSQP for the primal, Kelley's cutting planes for the dual). As :math:`r\to\infty` a
  class whose :math:`w_k` lies in the hull of the other weights keeps the finite value
  :func:`interior_bias_margin` (an LP), which a bias can make positive.
* **Frank-Wolfe** (the article's route, :func:`min_norm_in_hull`): by the minimax theorem,
  :math:`\max_{\|z\|\le 1}\min_i\langle w_k - w_i, z\rangle = \min_{\alpha\in\Delta}
  \|\sum_i \alpha_i (w_k - w_i)\|` when positive; so without bias ``k`` is unargmaxable iff
  0 lies in :math:`\mathrm{conv}\{w_k - w_i\}`. Frank-Wolfe approaches the min-norm point; its
  iterate ``x`` is also a witness: if :math:`\min_i \langle x, w_k - w_i\rangle > 0`, then
  ``z = x`` makes ``k`` win, a certificate of argmaxability.

:func:`is_argmaxable` first certifies classes with cheap witnesses (``z = w_k`` and a few
random directions: a class that wins anywhere is argmaxable), then runs the LP on the rest.
:func:`gaussian_hull_expected_vertices` gives the exact expected number of argmaxable classes
for i.i.d. standard Gaussian rows in ``d = 1, 2, 3`` (no bias): a hyperplane through ``d`` of
the points lies at distance :math:`h \sim N(0, 1/d)` from the origin (the mean of the ``d``
points is independent of their differences), so
:math:`\mathbb E[\#\text{facets}] = 2\binom{V}{d}\,\mathbb E_h[\Phi(h)^{V-d}]`, and Euler's
formula turns facets into vertices (``V0 = F`` in 2-D, ``V0 = F/2 + 2`` in 3-D).

Arrays may be NumPy arrays or torch tensors on any device; the LP and hull run in float64 on the
CPU, Frank-Wolfe runs in torch on the input's device and dtype.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy import integrate, optimize, sparse, spatial, special

from ._validate import check_int, check_real

__all__ = [
    "argmax_margin",
    "is_argmaxable",
    "unargmaxable_classes",
    "hull_argmaxable",
    "minimax_dual_margin",
    "ball_margin",
    "ball_minimax_dual",
    "interior_bias_margin",
    "min_norm_in_hull",
    "gaussian_hull_expected_vertices",
]


def _as_numpy(name: str, x, ndim: int) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a real array, got {type(x).__name__}") from err
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return arr


def _weights(W, b):
    W = _as_numpy("W", W, 2)
    if W.shape[0] < 2 or W.shape[1] < 1:
        raise ValueError(f"W must be (classes >= 2, dim >= 1), got shape {W.shape}")
    if b is None:
        b = np.zeros(W.shape[0])
    else:
        b = _as_numpy("b", b, 1)
        if b.shape[0] != W.shape[0]:
            raise ValueError(f"b must have one entry per row of W ({W.shape[0]}), got {b.shape[0]}")
    return W, b


def _classes(k, V: int) -> list[int]:
    if k is None:
        return list(range(V))
    if isinstance(k, (bool, np.bool_)):
        raise ValueError(f"k must be a class index or a list of them, got {k!r}")
    ks = [k] if isinstance(k, (int, np.integer)) else list(k)
    return [check_int("k", int(c) if isinstance(c, np.integer) else c, min_value=0, max_value=V - 1) for c in ks]


def argmax_margin(W, b=None, k=None, *, radius: float | None = None) -> np.ndarray:
    r"""The best worst-case margin :math:`\max_z \min_{i\ne k} \langle w_k - w_i, z\rangle + b_k - b_i`.

    With ``radius=None`` ``z`` is free and the margin is capped at 1 (its sign is what matters:
    a positive margin can be scaled up when there is no bias). With ``radius=R`` the feature is
    confined to the box :math:`\|z\|_\infty \le R`. Returns one margin per class in ``k``
    (all classes by default), as a float64 array.

    >>> W = np.array([[1., 2.], [2., 1.], [1., 0.], [0., 1.], [1., 1.]])
    >>> (argmax_margin(W, radius=10.0).round(6) + 0.0).tolist()  # + 0.0 turns -0.0 into 0.0
    [10.0, 10.0, 10.0, 10.0, 0.0]
    """
    W, b = _weights(W, b)
    if radius is not None:
        radius = check_real("radius", radius, low=0.0, low_open=True)
    V, d = W.shape
    bounds = [(-radius, radius) if radius is not None else (None, None)] * d
    bounds.append((None, None if radius is not None else 1.0))
    cost = np.zeros(d + 1)
    cost[-1] = -1.0  # maximise t
    out = []
    for c in _classes(k, V):
        others = np.arange(V) != c
        A = np.hstack([W[others] - W[c], np.ones((V - 1, 1))])
        res = optimize.linprog(cost, A_ub=A, b_ub=b[c] - b[others], bounds=bounds, method="highs")
        if res.status != 0:  # pragma: no cover - the program is feasible (z = 0) and bounded
            raise RuntimeError(f"linprog failed for class {c}: {res.message}")
        out.append(-res.fun)
    return np.array(out)


def minimax_dual_margin(W, b=None, k=None, *, radius: float = 1.0) -> np.ndarray:
    r"""The minimax dual of :func:`argmax_margin` with the box :math:`\|z\|_\infty \le R`:

    .. math:: \min_{\alpha\in\Delta} R\,\Big\|\sum_i \alpha_i (w_k - w_i)\Big\|_1 + \sum_i \alpha_i (b_k - b_i),

    the article's swap of max and min with the ``l1`` norm (dual to the box) in place of ``l2``.
    Solved as an LP over ``(alpha, u)`` with ``u >= |sum_i alpha_i (w_k - w_i)|``.
    """
    W, b = _weights(W, b)
    radius = check_real("radius", radius, low=0.0, low_open=True)
    V, d = W.shape
    out = []
    for c in _classes(k, V):
        others = np.arange(V) != c
        D = (W[c] - W[others]).T  # (d, V-1): columns w_k - w_i
        cost = np.concatenate([b[c] - b[others], radius * np.ones(d)])
        A = np.block([[D, -np.eye(d)], [-D, -np.eye(d)]])
        A_eq = np.concatenate([np.ones(V - 1), np.zeros(d)])[None]
        res = optimize.linprog(cost, A_ub=A, b_ub=np.zeros(2 * d), A_eq=A_eq, b_eq=[1.0],
                               bounds=[(0, None)] * (V - 1) + [(None, None)] * d, method="highs")
        if res.status != 0:  # pragma: no cover - the simplex is non-empty and the cost bounded below
            raise RuntimeError(f"linprog failed for class {c}: {res.message}")
        out.append(res.fun)
    return np.array(out)


def _slsqp_rows(W, b, k):
    W, b = _weights(W, b)
    V = W.shape[0]
    for c in _classes(k, V):
        others = np.arange(V) != c
        yield W[c] - W[others], b[c] - b[others]  # (V-1, d) rows dw_i, (V-1,) db_i


def ball_margin(W, b=None, k=None, *, radius: float = 1.0) -> np.ndarray:
    r"""The article's primal with the :math:`\ell_2` ball: :math:`\max_{\|z\|_2\le r}\min_{i\ne k}
    \langle w_k - w_i, z\rangle + b_k - b_i`, one value per class in ``k`` (all by default).

    Solved as ``max t`` subject to ``<dw_i, z> + db_i >= t`` and ``|z|^2 <= r^2`` by SLSQP (a smooth
    convex program; accurate to about 1e-7). Compare :func:`ball_minimax_dual`.
    """
    radius = check_real("radius", radius, low=0.0, low_open=True)
    out = []
    for D, c in _slsqp_rows(W, b, k):
        d = D.shape[1]
        cons = [{"type": "ineq", "fun": lambda x, D=D, c=c: D @ x[:d] + c - x[d],
                 "jac": lambda x, D=D: np.hstack([D, -np.ones((D.shape[0], 1))])},
                {"type": "ineq", "fun": lambda x: radius**2 - x[:d] @ x[:d],
                 "jac": lambda x: np.concatenate([-2 * x[:d], [0.0]])}]
        x0 = np.zeros(d + 1)
        x0[d] = c.min()
        res = optimize.minimize(lambda x: -x[d], x0, jac=lambda x: np.eye(d + 1)[d] * -1.0, constraints=cons,
                                method="SLSQP", options={"ftol": 1e-12, "maxiter": 500})
        z = res.x[:d]
        z = z * min(1.0, radius / max(float(np.linalg.norm(z)), 1e-300))  # evaluate at a feasible z
        out.append(float((D @ z + c).min()))
    return np.array(out)


def ball_minimax_dual(W, b=None, k=None, *, radius: float = 1.0, tol: float = 1e-6, max_cuts: int = 5000) -> np.ndarray:
    r"""The article's minimax dual with the :math:`\ell_2` ball and biases:
    :math:`\min_{\alpha\in\Delta} r\,\|\sum_i \alpha_i (w_k - w_i)\|_2 + \sum_i \alpha_i (b_k - b_i)`.

    Solved by Kelley's cutting planes, independently of :func:`ball_margin`: the norm is the maximum
    of :math:`\langle u, x\rangle` over unit vectors ``u``, so each round solves an LP over
    ``(alpha, s)`` with cuts :math:`s \ge \langle u_j, \sum_i\alpha_i\Delta w_i\rangle` and adds the
    cut at the LP's point, until the LP's lower bound and the objective at its ``alpha`` agree within
    ``tol``. Returns the objective at the best ``alpha`` (an upper bound within ``tol`` of the minimum).
    """
    radius = check_real("radius", radius, low=0.0, low_open=True)
    tol = check_real("tol", tol, low=0.0, low_open=True)
    max_cuts = check_int("max_cuts", max_cuts, min_value=1)
    out = []
    for D, c in _slsqp_rows(W, b, k):
        m, d = D.shape
        cuts = [np.eye(d), -np.eye(d)]  # s >= |x_j| to start
        cost = np.r_[c, radius]
        A_eq = np.r_[np.ones(m), 0.0][None]
        best = math.inf
        for _ in range(max_cuts):
            U = np.vstack(cuts)  # (cuts, d)
            A_ub = np.hstack([U @ D.T, -np.ones((U.shape[0], 1))])  # <u, D^T alpha> - s <= 0
            res = optimize.linprog(cost, A_ub=A_ub, b_ub=np.zeros(U.shape[0]), A_eq=A_eq, b_eq=[1.0],
                                   bounds=[(0, None)] * (m + 1), method="highs")
            if res.status != 0:  # pragma: no cover - feasible (any alpha, large s) and bounded (s >= 0)
                raise RuntimeError(f"linprog failed: {res.message}")
            alpha = res.x[:m]
            x = D.T @ alpha
            nx = float(np.linalg.norm(x))
            best = min(best, radius * nx + float(c @ alpha))
            if best - res.fun <= tol * (1.0 + abs(best)):
                break
            cuts.append((x / nx)[None])
        else:
            raise RuntimeError(f"no convergence within {max_cuts} cuts (gap {best - res.fun:.3g})")
        out.append(best)
    return np.array(out)


def interior_bias_margin(W, b, k) -> float:
    r"""For a class whose weight lies in the hull of the others: the margin its bias buys.

    :math:`\min\{\sum_i \alpha_i (b_k - b_i) : \alpha\in\Delta,\ \sum_i \alpha_i w_i = w_k\}
    = b_k - \max\{\sum_i\alpha_i b_i : \sum_i\alpha_i w_i = w_k\}`, the limit of
    :func:`ball_minimax_dual` as :math:`r\to\infty` (an LP). ``nan`` when :math:`w_k` is outside
    :math:`\mathrm{conv}\{w_i: i\ne k\}` (the program is infeasible: the bias-free margin is then
    positive). A positive value means class ``k`` wins only thanks to its bias (near ``z = 0``),
    although the bias-free test calls it unargmaxable.
    """
    W, b = _weights(W, b)
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be one class index, got {k!r}")
    (c,) = _classes(int(k), W.shape[0])
    others = np.arange(W.shape[0]) != c
    D = (W[c] - W[others]).T  # (d, V-1)
    A_eq = np.vstack([D, np.ones((1, D.shape[1]))])
    b_eq = np.r_[np.zeros(D.shape[0]), 1.0]
    res = optimize.linprog(b[c] - b[others], A_eq=A_eq, b_eq=b_eq, bounds=[(0, None)] * D.shape[1], method="highs")
    if res.status == 2:
        return math.nan
    if res.status != 0:  # pragma: no cover - bounded: the cost is bounded on the simplex
        raise RuntimeError(f"linprog failed for class {c}: {res.message}")
    return float(res.fun)


def _witnesses(W: np.ndarray, b: np.ndarray, n_random: int, seed: int, tol: float, chunk: int = 2048) -> np.ndarray:
    """Classes that strictly win for some cheap candidate z (z = c * w_k and random directions)."""
    V, d = W.shape
    rng = np.random.default_rng(seed)
    scale = np.abs(W).max() + 1.0
    Z = [W, rng.standard_normal((n_random, d)) * scale]
    if np.any(b != 0):  # a long z = c * w_k lets the weights outweigh the biases
        Z.append(W * (1e3 * (np.abs(b).max() + 1.0) / scale))
    Z = np.vstack(Z)
    won = np.zeros(V, dtype=bool)
    for start in range(0, Z.shape[0], chunk):
        s = Z[start : start + chunk] @ W.T + b  # (candidates, V)
        top2 = np.partition(s, V - 2, axis=1)[:, -2:]
        strict = top2[:, 1] - top2[:, 0] > tol * (1.0 + np.abs(top2[:, 1]))
        won[s.argmax(1)[strict]] = True
    return won


def _block_margins(W: np.ndarray, b: np.ndarray, classes: np.ndarray, against: np.ndarray):
    """One sparse LP holding independent blocks, one per class in ``classes``, each constrained by
    the rows ``against`` (minus itself); maximising the sum of margins maximises each one.
    Returns ``(margins, z)`` with margins capped at 1 and ``z`` of shape ``(len(classes), d)``."""
    V, d = W.shape
    rows, cols, vals, rhs = [], [], [], []
    r = 0
    for blk, c in enumerate(classes):
        opp = against[against != c]
        m = opp.size
        base = blk * (d + 1)
        rows.append(np.repeat(np.arange(r, r + m), d + 1))
        cols.append(np.tile(np.arange(base, base + d + 1), m))
        vals.append(np.hstack([W[opp] - W[c], np.ones((m, 1))]).ravel())
        rhs.append(b[c] - b[opp])
        r += m
    K = len(classes)
    A = sparse.csr_array((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(r, K * (d + 1)))
    cost = np.zeros(K * (d + 1))
    cost[d :: d + 1] = -1.0
    bounds = ([(None, None)] * d + [(None, 1.0)]) * K
    res = optimize.linprog(cost, A_ub=A, b_ub=np.concatenate(rhs), bounds=bounds, method="highs")
    if res.status != 0:  # pragma: no cover - each block is feasible (z = 0) and bounded (t <= 1)
        raise RuntimeError(f"linprog failed: {res.message}")
    sol = res.x.reshape(K, d + 1)
    return sol[:, d], sol[:, :d]


def is_argmaxable(W, b=None, *, radius: float | None = None, tol: float = 1e-9, method: str = "auto",
                  n_random: int = 256, seed: int = 0, chunk: int = 64) -> np.ndarray:
    """Boolean array: which classes some feature ``z`` makes the strict argmax.

    ``method="lp"`` solves one LP per class against all the others (the reference). ``"auto"``
    (default, ``radius=None`` only) gives the same answer faster: it certifies classes that win
    for a cheap candidate ``z``, then decides the rest by Clarkson's scheme, solving LPs (``chunk``
    classes per sparse block LP) only against the classes known to be argmaxable: a margin
    ``<= tol`` there proves the class unargmaxable (fewer constraints can only raise the
    margin); a positive one yields a ``z`` that either makes the class win among all classes
    or names a new argmaxable winner to add. ``"hull"`` uses :func:`hull_argmaxable`.
    A class counts as argmaxable when its LP margin exceeds ``tol``.
    """
    has_bias = b is not None
    W, b = _weights(W, b)
    tol = check_real("tol", tol, low=0.0)
    n_random = check_int("n_random", n_random, min_value=0)
    chunk = check_int("chunk", chunk, min_value=1)
    if method == "hull":
        if radius is not None:
            raise ValueError("method='hull' decides argmaxability over all z: use radius=None")
        return hull_argmaxable(W, b if has_bias else None)
    if method not in ("lp", "auto"):
        raise ValueError(f"method must be 'lp', 'auto' or 'hull', got {method!r}")
    if method == "lp" or radius is not None:
        return argmax_margin(W, b, radius=radius) > tol
    known = _witnesses(W, b, n_random, seed, tol)  # certified argmaxable
    undecided = np.flatnonzero(~known)
    result = known.copy()
    while undecided.size:
        batch, undecided = undecided[:chunk], undecided[chunk:]
        while batch.size:
            margins, Z = _block_margins(W, b, batch, np.flatnonzero(known))
            s = Z @ W.T + b  # (batch, V): every class's score at each witness
            winner = s.argmax(1)
            top2 = np.partition(s, W.shape[0] - 2, axis=1)[:, -2:]
            strict = top2[:, 1] - top2[:, 0] > tol * (1.0 + np.abs(top2[:, 1]))
            pos = margins > tol
            wins = pos & strict & (winner == batch)
            result[batch[wins]] = known[batch[wins]] = True
            known[winner[pos & strict]] = True  # a strict winner somewhere is argmaxable
            # not positive: unargmaxable (result stays False); positive without a win: retry
            retry = pos & ~wins
            if retry.any() and not (pos & strict & ~wins).any():
                # no new winner found (ties at the witness): fall back to the exact full LP
                full = argmax_margin(W, b, batch[retry].tolist()) > tol
                result[batch[retry]] = known[batch[retry]] = full
                break
            batch = batch[retry]
    return result


def unargmaxable_classes(W, b=None, **kwargs) -> list[int]:
    """Indices of the classes that can never be the strict argmax (see :func:`is_argmaxable`)."""
    return np.flatnonzero(~is_argmaxable(W, b, **kwargs)).tolist()


def hull_argmaxable(W, b=None) -> np.ndarray:
    """Argmaxable classes from the convex hull (scipy.spatial.ConvexHull, Qhull); points in general position.

    Without bias: the vertices of conv{w_i}. With bias: the lifted points (w_i, b_i) lying on a
    facet whose outward normal has a positive last coordinate (the upper hull).
    """
    W, b_arr = _weights(W, b)
    V, d = W.shape
    if d == 1 and b is None:
        out = np.zeros(V, dtype=bool)
        out[[W[:, 0].argmin(), W[:, 0].argmax()]] = True
        return out
    pts = W if b is None else np.hstack([W, b_arr[:, None]])
    if pts.shape[0] <= pts.shape[1]:
        raise ValueError(f"the hull needs more points ({pts.shape[0]}) than dimensions ({pts.shape[1]})")
    hull = spatial.ConvexHull(pts)
    out = np.zeros(V, dtype=bool)
    if b is None:
        out[hull.vertices] = True
    else:
        upper = hull.equations[:, d] > 0  # outward normal (n_w, n_b) with n_b > 0: exposed by z = n_w / n_b
        out[np.unique(hull.simplices[upper])] = True
    return out


def min_norm_in_hull(W: torch.Tensor, iters: int = 500) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Frank-Wolfe for every class at once: the min-norm point of :math:`\mathrm{conv}\{w_k - w_i: i \ne k\}`.

    ``W`` is ``(..., V, d)`` (batches of output layers; no bias). Exact line search on
    :math:`\tfrac12\|x\|^2`; the linear oracle is :math:`\arg\max_{i\ne k}\langle x, w_i\rangle`,
    so no ``V x V x d`` tensor is built. Returns ``(x, upper, lower)``: the iterates ``(..., V, d)``,
    the upper bound :math:`\|x\|` on the distance from 0 to the hull and the lower bound
    :math:`\min_i \langle x, w_k - w_i\rangle / \|x\|` (a separating hyperplane). ``lower > 0``
    certifies that ``z = x`` makes class ``k`` the strict winner.
    """
    if not isinstance(W, torch.Tensor) or W.ndim < 2 or not W.is_floating_point():
        raise ValueError(f"W must be a floating tensor of shape (..., V, d), got {getattr(W, 'shape', type(W))}")
    V = W.shape[-2]
    if V < 2:
        raise ValueError(f"need at least 2 classes, got {V}")
    iters = check_int("iters", iters, min_value=1)
    eye = torch.eye(V, dtype=torch.bool, device=W.device)

    def oracle(x):  # vertex w_k - w_j minimising <x, w_k - w_i> over i != k
        s = (x @ W.transpose(-1, -2)).masked_fill(eye, -math.inf)  # (..., V, V): <x_k, w_i>
        j = s.argmax(-1)
        return W - torch.gather(W, -2, j.unsqueeze(-1).expand_as(W)), s

    x, _ = oracle(W)  # start at the vertex picked by the direction w_k
    for _ in range(iters):
        s_vec, _ = oracle(x)
        diff = x - s_vec
        den = diff.square().sum(-1, keepdim=True)
        gamma = ((x * diff).sum(-1, keepdim=True) / den.clamp_min(torch.finfo(W.dtype).tiny)).clamp(0, 1)
        x = x - gamma * diff
    _, s = oracle(x)
    upper = x.norm(dim=-1)
    worst = (x * W).sum(-1) - s.amax(-1)  # min_i <x, w_k - w_i>
    lower = worst / upper.clamp_min(torch.finfo(W.dtype).tiny)
    return x, upper, lower


def gaussian_hull_expected_vertices(n: int, d: int, *, power: int | None = None) -> float:
    r"""Exact E[number of hull vertices] of ``n`` i.i.d. standard Gaussian points in ``R^d``, ``d <= 3``.

    :math:`\mathbb E F = 2\binom{n}{d}\int \Phi(h)^{n-d}\, N(h; 0, 1/d)\, dh`; vertices ``= F`` for
    ``d = 2`` and ``F/2 + 2`` for ``d = 3`` (simplicial polytope); 2 for ``d = 1``.
    ``power`` replaces the exponent ``n - d`` (default) by another one: an off-by-one slip in the
    derivation, kept so that a check can show such a slip is rejected.

    >>> round(gaussian_hull_expected_vertices(3, 2), 6)
    3.0
    """
    d = check_int("d", d, min_value=1, max_value=3)
    n = check_int("n", n, min_value=d + 1)
    power = n - d if power is None else check_int("power", power, min_value=0)
    if d == 1:
        return 2.0
    sd = 1.0 / math.sqrt(d)

    def f(h):
        return math.exp(power * special.log_ndtr(h) - 0.5 * (h / sd) ** 2) / (sd * math.sqrt(2 * math.pi))

    peak = sd * math.sqrt(2 * math.log(n))
    value, _ = integrate.quad(f, -12 * sd, 12 * sd, points=[0.0, peak], limit=500, epsabs=0, epsrel=1e-12)
    facets = 2 * math.comb(n, d) * value
    return facets if d == 2 else facets / 2 + 2
