r"""CoSENT: a ranking loss on cosines, and the thresholds that turn scores into classes.

Articles: CoSENT(一):比Sentence-BERT更有效的句向量方案, https://kexue.fm/archives/8847 (2022-01-06), which
defines the loss, and CoSENT(二):特征式匹配与交互式匹配有多大差距?, https://kexue.fm/archives/8860
(2022-01-12), which compares representation-based matching (two inputs encoded separately, scored by the
cosine of their vectors) with interaction-based matching (one encoder on the concatenated pair) by accuracy,
and so needs a threshold. Baseline: N. Reimers and I. Gurevych, *Sentence-BERT*, arXiv:1908.10084.

**Loss.** For a batch of pairs with cosines :math:`c_k` and graded labels :math:`y_k`, every pair of pairs
ordered by label should be ordered by cosine:

.. math::

    \mathcal L = \log\Big(1 + \sum_{y_i > y_j} e^{\lambda (c_j - c_i)}\Big), \qquad \lambda = 20,

a smooth version of :math:`\max(0, \max_{y_i>y_j}(c_j - c_i))`. The double sum factors as
:math:`\sum_i e^{-\lambda c_i}\sum_{y_j<y_i} e^{\lambda c_j}`; after one sort by label the inner sums are a running
``logcumsumexp``, so the loss costs :math:`O(n\log n)` time and :math:`O(n)` memory (no :math:`n\times n` matrix),
and a ``logsumexp`` with a zero appended (the "1 +") keeps it finite for any :math:`\lambda` and cosines.

**Thresholds.** A binary score is turned into a class by ``score > threshold``. The accuracy is a step
function of the threshold that changes only between consecutive sorted scores, so the exact optimum is one
sort and one scan (:func:`best_binary_threshold`, :math:`O(n\log n)`). For :math:`C` classes the article
predicts :math:`\arg\max_i p_i t_i` with :math:`t = (\tanh x + 1)/2 \in (0,1)^C` and maximizes the
validation accuracy over :math:`x` with Powell's method from :math:`x = 0` (:func:`search_class_thresholds`);
the article's code does the same for one cosine threshold :math:`\tanh x` (:func:`powell_binary_threshold`).
Both searches start at the default (argmax, or the given threshold) and return the start when the search
does not beat it, so the returned validation accuracy is never below the default's.

Functional core only: :func:`cosent_loss`, :func:`pair_cosines`, :func:`binary_accuracy`,
:func:`best_binary_threshold`, :func:`powell_binary_threshold`, :func:`class_threshold_predict`,
:func:`search_class_thresholds`, :func:`psd_factor`. Losses follow the device and dtype of their inputs; the
threshold searches work in float64 NumPy.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ._validate import check_int, check_real, check_tensor

__all__ = [
    "cosent_loss", "pair_cosines", "binary_accuracy", "best_binary_threshold", "powell_binary_threshold",
    "class_threshold_predict", "search_class_thresholds", "psd_factor",
]


def pair_cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine ``cos(a_k, b_k)``: ``(..., n)`` for ``a``, ``b`` of shape ``(..., n, d)`` (e.g. ``(n, d)``)."""
    a = check_tensor("a", a, floating=True)
    b = check_tensor("b", b, floating=True)
    if a.ndim < 2 or a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape (..., n, d), got {tuple(a.shape)} and {tuple(b.shape)}")
    return F.cosine_similarity(a, b, dim=-1, eps=1e-12)  # (..., n)


def cosent_loss(cos: torch.Tensor, labels: torch.Tensor, *, scale: float = 20.0) -> torch.Tensor:
    r"""The CoSENT loss :math:`\log(1 + \sum_{y_i > y_j} e^{\lambda(c_j - c_i)})` of kexue.fm/archives/8847.

    ``cos``: ``(n,)`` floating scores (cosines of the pairs); ``labels``: ``(n,)`` graded labels (any real or
    integer dtype; only their order matters); ``scale``: :math:`\lambda > 0` (20 in the article). Returns a
    0-dim tensor in the dtype and on the device of ``cos``; 0 when no two labels differ. Leading batch axes
    ``(..., n)`` (the same for both) give one loss per batch entry, ``(...)``, each over its own ``n`` pairs.
    """
    cos = check_tensor("cos", cos, floating=True)
    labels = check_tensor("labels", labels)
    if cos.ndim < 1:
        raise ValueError("cos must have shape (..., n), got a 0-dim tensor")
    if labels.shape != cos.shape:
        raise ValueError(f"labels must have the shape of cos {tuple(cos.shape)}, got {tuple(labels.shape)}")
    if labels.is_floating_point() and not bool(torch.isfinite(labels).all()):
        raise ValueError("labels must be finite")
    scale = check_real("scale", scale, low=0.0, low_open=True)
    labels = labels.to(device=cos.device, dtype=torch.int64 if labels.dtype == torch.bool else labels.dtype)
    # sum_{y_i > y_j} e^{lambda (c_j - c_i)} = sum_i e^{-lambda c_i} sum_{y_j < y_i} e^{lambda c_j}: sort by label,
    # then the inner sum is a running logsumexp up to the last pair whose label is below y_i (O(n log n), no n x n)
    y_sorted, order = labels.sort(dim=-1, stable=True)  # (..., n)
    c_sorted = cos.gather(-1, order)  # (..., n)
    running = torch.logcumsumexp(scale * c_sorted, dim=-1)  # (..., n): log sum_{k <= m} e^{lambda c_k}
    below = torch.searchsorted(y_sorted.contiguous(), y_sorted.contiguous(), side="left") - 1  # (..., n)
    inner = running.gather(-1, below.clamp_min(0)).masked_fill(below < 0, float("-inf"))  # (..., n)
    terms = inner - scale * c_sorted  # (..., n): log of e^{-lambda c_i} sum_{y_j < y_i} e^{lambda c_j}
    zero = cos.new_zeros(*cos.shape[:-1], 1)  # (..., 1): the "1 +"
    return torch.logsumexp(torch.cat([terms, zero], dim=-1), dim=-1)  # (...)


def _scores_labels(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64)
    y = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
    if s.ndim != 1 or y.shape != s.shape or s.size == 0:
        raise ValueError(f"scores and labels must be 1-d of the same nonzero length, got {s.shape} and {y.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 or 1")
    return s, y.astype(np.int64)


def binary_accuracy(scores, labels, threshold: float) -> float:
    """Accuracy of the rule ``score > threshold`` against 0/1 ``labels``."""
    s, y = _scores_labels(scores, labels)
    threshold = check_real("threshold", threshold)
    return float(np.mean((s > threshold) == (y == 1)))


def best_binary_threshold(scores, labels) -> tuple[float, float]:
    """Exact optimum of ``score > t`` over all ``t``: ``(t, accuracy)`` by one sort and one scan.

    Candidates are below the smallest score and the midpoints between consecutive distinct sorted scores;
    the first best candidate (smallest threshold) is returned.
    """
    s, y = _scores_labels(scores, labels)
    order = np.argsort(s, kind="stable")
    s, y = s[order], y[order]
    # correct(k) when the k smallest scores are called negative: negatives among them + positives after
    neg_before = np.concatenate([[0], np.cumsum(y == 0)])  # (n+1,)
    pos_after = int(y.sum()) - np.concatenate([[0], np.cumsum(y == 1)])  # (n+1,)
    correct = neg_before + pos_after  # (n+1,)
    valid = np.ones(s.size + 1, dtype=bool)
    valid[1:-1] = s[1:] > s[:-1]  # a cut is possible only between distinct scores
    k = int(np.argmax(np.where(valid, correct, -1)))
    if k == 0:
        t = s[0] - 1.0
    elif k == s.size:
        t = s[-1]
    else:
        t = 0.5 * (s[k - 1] + s[k])
    return float(t), float(correct[k] / s.size)


def powell_binary_threshold(scores, labels, *, start: float = float(np.tanh(1.0)), xtol: float = 1e-10,
                            ftol: float = 1e-10, maxiter: int = 100_000) -> tuple[float, float]:
    r"""The article's search for one cosine threshold :math:`\tanh x`: Powell on minus the accuracy.

    Starts at ``start`` (a threshold in (-1, 1); :math:`\tanh 1` as in the article's code) and returns
    ``(threshold, accuracy)``; if Powell does not beat the start, the start is returned, so the accuracy is
    at least ``binary_accuracy(scores, labels, start)``.
    """
    from scipy.optimize import minimize

    s, y = _scores_labels(scores, labels)
    start = check_real("start", start, low=-1.0, high=1.0, low_open=True, high_open=True)
    maxiter = check_int("maxiter", maxiter, min_value=1)

    def loss(x):
        return -float(np.mean((s > np.tanh(x[0])) == (y == 1)))

    x0 = np.array([np.arctanh(start)])
    res = minimize(loss, x0, method="Powell",
                   options={"xtol": check_real("xtol", xtol, low=0.0, low_open=True),
                            "ftol": check_real("ftol", ftol, low=0.0, low_open=True), "maxiter": maxiter})
    x = np.atleast_1d(res.x)
    if loss(x) > loss(x0):  # the guarantee: never worse than the start on this set
        x = x0
    return float(np.tanh(x[0])), -loss(x)


def _probs_labels(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs.detach().cpu() if isinstance(probs, torch.Tensor) else probs, dtype=np.float64)
    y = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
    if p.ndim != 2 or p.shape[1] < 2 or y.shape != (p.shape[0],) or p.shape[0] == 0:
        raise ValueError(f"probs must be (n, C) with C >= 2 and labels (n,), got {p.shape} and {y.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("probs must be finite and non-negative")
    if not np.all((y >= 0) & (y < p.shape[1]) & (y == np.round(y))):
        raise ValueError(f"labels must be class indices in [0, {p.shape[1]})")
    return p, y.astype(np.int64)


def class_threshold_predict(probs, thresholds) -> np.ndarray:
    r"""Predicted classes :math:`\arg\max_i p_i t_i` for ``probs`` ``(n, C)`` and ``thresholds`` ``(C,)``."""
    p, _ = _probs_labels(probs, np.zeros(np.shape(probs)[0]))
    t = np.asarray(thresholds, dtype=np.float64)
    if t.shape != (p.shape[1],) or not np.all(np.isfinite(t)) or np.any(t < 0):
        raise ValueError(f"thresholds must be {p.shape[1]} finite non-negative numbers, got shape {t.shape}")
    return (p * t[None, :]).argmax(1)  # (n,)


def search_class_thresholds(probs, labels, *, xtol: float = 1e-10, ftol: float = 1e-10,
                            maxiter: int = 100_000) -> np.ndarray:
    r"""Class weights :math:`t = (\tanh x + 1)/2` maximizing the accuracy of :math:`\arg\max_i p_i t_i`.

    Powell's method from :math:`x = 0` (:math:`t = \tfrac12\mathbf 1`, plain argmax), options as in the
    article. Returns ``t`` of shape ``(C,)``; if the search does not beat plain argmax on ``(probs,
    labels)``, returns the start, so the accuracy on that set is at least argmax's.
    """
    from scipy.optimize import minimize

    p, y = _probs_labels(probs, labels)
    maxiter = check_int("maxiter", maxiter, min_value=1)

    def loss(x):
        t = (np.tanh(x) + 1) / 2
        return -float(np.mean((p * t[None, :]).argmax(1) == y))

    x0 = np.zeros(p.shape[1])
    res = minimize(loss, x0, method="Powell",
                   options={"xtol": check_real("xtol", xtol, low=0.0, low_open=True),
                            "ftol": check_real("ftol", ftol, low=0.0, low_open=True), "maxiter": maxiter})
    x = np.atleast_1d(res.x)
    if loss(x) > loss(x0):
        x = x0
    return (np.tanh(x) + 1) / 2


def psd_factor(S: torch.Tensor, *, dim: int | None = None) -> torch.Tensor:
    r"""Vectors :math:`V = U_k\sqrt{\Lambda_k}` with :math:`VV^\top \approx S` for a symmetric PSD ``S`` ``(n, n)``.

    The article's argument that an inner-product (representation-based) model can express any PSD
    similarity: :math:`S = U\Lambda U^\top = (U\sqrt\Lambda)(U\sqrt\Lambda)^\top`. ``dim`` keeps the ``dim``
    largest eigenvalues (the best rank-``dim`` fit in Frobenius norm); ``None`` keeps all. Eigenvalues below
    zero by round-off are clipped to 0; a clearly indefinite ``S`` raises ``ValueError``.
    """
    S = check_tensor("S", S, ndim=2, floating=True)
    n = S.shape[0]
    if S.shape != (n, n) or not torch.allclose(S, S.T, rtol=1e-10, atol=1e-10 * float(S.abs().max())):
        raise ValueError(f"S must be a symmetric square matrix, got shape {tuple(S.shape)}")
    dim = n if dim is None else check_int("dim", dim, min_value=1, max_value=n)
    lam, U = torch.linalg.eigh(S)  # (n,), (n, n), ascending
    tol = n * torch.finfo(S.dtype).eps * float(lam.abs().max())
    if float(lam.min()) < -100 * tol:
        raise ValueError(f"S must be positive semi-definite, smallest eigenvalue {float(lam.min()):.3g}")
    lam, U = lam.flip(0)[:dim].clamp_min(0), U.flip(1)[:, :dim]  # (dim,), (n, dim)
    return U * lam.sqrt()[None, :]  # (n, dim)
