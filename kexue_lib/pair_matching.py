r"""A synthetic paraphrase task and small matching models, many seeds trained at once (kexue.fm/archives/8860).

The CoSENT articles (8847, 8860) compare *representation-based* matching (each text encoded alone, the pair
scored by the cosine of the two vectors) with *interaction-based* matching (one model sees both texts), on
Chinese matching sets such as LCQMC (ordinary negatives) and PAWSX (adversarial negatives: the same words in
another order). This module supplies a synthetic analogue that runs on a CPU in seconds.

**Task** (:func:`synonym_pairs`). A text is ``length`` tokens; each position carries one of ``concepts``
concepts written with one of ``synonyms`` synonyms (token ``concept + concepts * synonym``). A positive pair is
the same concept sequence written twice with independently drawn synonyms; a negative is

* ``task="lexical"``: each position given another concept with probability ``p_change``, at least one
  position changed (other words, the ordinary case), or
* ``task="order"``: two positions holding different concepts swapped (the same words, the PAWS case).

Every negative thus differs from its positive in meaning (up to the one-in-a-million text whose concepts are all
equal, which no swap can change).

Labels are balanced in expectation (fair coin per pair).

**Models**, each a stack of ``n_models`` independent models trained together: parameters carry a leading model
axis and every model sees only its own data, so one batched step equals ``n_models`` separate steps (Adam is
elementwise; the summed loss has no cross terms). ``tests/test_pair_matching.py`` checks this against a loop.

* :class:`StackedBiEncoder`: token embedding per position, flattened, then an MLP, :math:`u = f(x)`; scored by
  :math:`\cos(f(a), f(b))`. With ``order=False`` the embeddings are averaged first (a bag of vectors).
* :class:`StackedCrossEncoder`: the interaction matrix :math:`M_{ij} = \langle e(a_i), e(b_j)\rangle/\sqrt d`
  (``length x length``) fed to an MLP that returns one logit per pair; :math:`M` is looked up in the token Gram
  matrix :math:`EE^\top/\sqrt d` rather than computed pair by pair (same values, tested against the loop).

**Objectives** (:func:`train_pair_models`): ``"cosent"`` (:func:`~kexue_lib.cosent.cosent_loss` on the cosines),
``"sbert"`` (Sentence-BERT's classifier: softmax over a linear map of :math:`(u, v, |u-v|)`, the cosine used at
test time), ``"cosine_mse"`` (squared error between the cosine and the 0/1 label), ``"cross"`` (binary
cross-entropy on the interaction logit).

**Protocol** (:class:`BestOnValidation`, :func:`validation_threshold_accuracy`): the article's code keeps, per
model, the checkpoint of best validation accuracy (threshold chosen on validation) and reports test accuracy at that
checkpoint and threshold.

All tensors are ``(n_models, n, ...)``; token ids are integers, so device and dtype follow the models' parameters
(float32 by default) and the data's device.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ._validate import check_int, check_real, check_tensor
from .cosent import best_binary_threshold, binary_accuracy, cosent_loss, pair_cosines

__all__ = [
    "synonym_pairs", "stacked_pairs", "StackedLinear", "StackedBiEncoder", "StackedCrossEncoder",
    "PairModel", "build_pair_model", "train_pair_models", "OBJECTIVES", "validation_threshold_accuracy",
    "BestOnValidation",
]

OBJECTIVES = ("cosent", "sbert", "cosine_mse", "cross")


def synonym_pairs(n: int, *, task: str, generator: torch.Generator, concepts: int = 8, length: int = 8,
                  synonyms: int = 2, p_change: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` pairs ``(a, b, y)``: token ids ``(n, length)`` twice and labels ``(n,)`` (1 = paraphrase)."""
    n = check_int("n", n, min_value=1)
    concepts = check_int("concepts", concepts, min_value=2)
    length = check_int("length", length, min_value=2)
    synonyms = check_int("synonyms", synonyms, min_value=1)
    p_change = check_real("p_change", p_change, low=0.0, high=1.0, low_open=True)
    if task not in ("lexical", "order"):
        raise ValueError(f"task must be 'lexical' or 'order', got {task!r}")
    g = generator
    c = torch.randint(0, concepts, (n, length), generator=g)  # (n, L) concepts of text a
    a = c + concepts * torch.randint(0, synonyms, (n, length), generator=g)  # (n, L) tokens
    y = torch.randint(0, 2, (n,), generator=g)  # (n,)
    cb = c.clone()
    if task == "lexical":  # other words: each position changed with probability p_change, at least one changed
        m = torch.rand(n, length, generator=g) < p_change  # (n, L)
        none = ~m.any(1)
        m[none, torch.randint(0, length, (int(none.sum()),), generator=g)] = True
        other = (cb + torch.randint(1, concepts, (n, length), generator=g)) % concepts  # always a different concept
        cb = torch.where(m, other, cb)
    else:  # the same words: two positions with different concepts swapped
        r = torch.arange(n)
        i = torch.randint(0, length, (n,), generator=g)
        j = (i + 1 + torch.randint(0, length - 1, (n,), generator=g)) % length
        for _ in range(64):  # redraw j where the swap would change nothing (all-equal rows keep their last draw)
            same = cb[r, i] == cb[r, j]
            if not same.any():
                break
            j = torch.where(same, (i + 1 + torch.randint(0, length - 1, (n,), generator=g)) % length, j)
        ci, cj = cb[r, i].clone(), cb[r, j].clone()
        cb[r, i], cb[r, j] = cj, ci
    cb = torch.where(y[:, None] == 1, c, cb)
    b = cb + concepts * torch.randint(0, synonyms, (n, length), generator=g)  # (n, L) fresh synonyms
    return a, b, y


def stacked_pairs(n: int, *, task: str, seeds, salt: int = 0, **kw) -> tuple[torch.Tensor, ...]:
    """:func:`synonym_pairs` for each seed (generator seeded with ``seed + salt``), stacked to ``(S, n, ...)``."""
    seeds = [check_int("seed", s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must not be empty")
    out = [synonym_pairs(n, task=task, generator=torch.Generator().manual_seed(s + salt), **kw) for s in seeds]
    return tuple(torch.stack(t) for t in zip(*out))


class StackedLinear(nn.Module):
    """``n_models`` independent linear maps: ``(S, n, fan_in) -> (S, n, fan_out)``; nn.Linear's init."""

    def __init__(self, n_models: int, fan_in: int, fan_out: int, *, generator: torch.Generator | None = None):
        super().__init__()
        bound = 1 / math.sqrt(fan_in)
        self.weight = nn.Parameter((torch.rand(n_models, fan_in, fan_out, generator=generator) * 2 - 1) * bound)
        self.bias = nn.Parameter((torch.rand(n_models, 1, fan_out, generator=generator) * 2 - 1) * bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)  # (S, n, fan_out)


class _StackedEmbedding(nn.Module):
    def __init__(self, n_models: int, vocab: int, dim: int, *, generator=None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_models, vocab, dim, generator=generator))

    def check(self, x: torch.Tensor) -> torch.Tensor:
        x = check_tensor("tokens", x, ndim=3)
        if x.shape[0] != self.weight.shape[0]:
            raise ValueError(f"tokens must have {self.weight.shape[0]} models on axis 0, got shape {tuple(x.shape)}")
        if x.is_floating_point() or (x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.weight.shape[1])):
            raise ValueError(f"tokens must be integer ids in [0, {self.weight.shape[1]})")
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (S, n, L) -> (S, n, L, d)
        x = self.check(x)
        s = torch.arange(x.shape[0], device=x.device)[:, None, None]
        return self.weight[s, x]


class StackedBiEncoder(nn.Module):
    """``n_models`` encoders ``(S, n, length) -> (S, n, out)``: per-position embeddings, flattened, then an MLP."""

    def __init__(self, n_models: int, *, vocab: int, length: int, dim: int = 16, hidden: int = 64, out: int = 32,
                 order: bool = True, generator: torch.Generator | None = None):
        super().__init__()
        n_models = check_int("n_models", n_models, min_value=1)
        self.order, self.length, self.out = bool(order), check_int("length", length, min_value=1), out
        self.emb = _StackedEmbedding(n_models, vocab, dim, generator=generator)
        self.fc1 = StackedLinear(n_models, length * dim if order else dim, hidden, generator=generator)
        self.fc2 = StackedLinear(n_models, hidden, out, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.emb(x)  # (S, n, L, d)
        if self.order and e.shape[2] != self.length:
            raise ValueError(f"tokens must have length {self.length}, got shape {tuple(x.shape)}")
        h = e.flatten(2) if self.order else e.mean(2)  # (S, n, L d) or (S, n, d)
        return self.fc2(F.gelu(self.fc1(h)))  # (S, n, out)


class StackedCrossEncoder(nn.Module):
    """``n_models`` interaction models ``(S, n, L), (S, n, L) -> (S, n)`` logits from the L x L similarity map."""

    def __init__(self, n_models: int, *, vocab: int, length: int, dim: int = 16, hidden: int = 64,
                 generator: torch.Generator | None = None):
        super().__init__()
        n_models = check_int("n_models", n_models, min_value=1)
        self.emb = _StackedEmbedding(n_models, vocab, dim, generator=generator)
        self.fc1 = StackedLinear(n_models, length * length, hidden, generator=generator)
        self.fc2 = StackedLinear(n_models, hidden, 1, generator=generator)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = self.emb.check(a), self.emb.check(b)
        if a.shape != b.shape:
            raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        S, n, L = a.shape
        if L * L != self.fc1.weight.shape[1]:
            length = math.isqrt(self.fc1.weight.shape[1])
            raise ValueError(f"texts must have length {length}, got shape {tuple(a.shape)}")
        E = self.emb.weight  # (S, V, d)
        V = E.shape[1]
        # M_ij = <e(a_i), e(b_j)> / sqrt(d) is an entry of the token Gram matrix G = E E^T / sqrt(d) (V x V):
        # look it up instead of n small (L x d) x (d x L) products
        gram = (E @ E.transpose(1, 2) / math.sqrt(E.shape[-1])).reshape(S, V * V)  # (S, V V)
        pair = a.unsqueeze(-1) * V + b.unsqueeze(-2)  # (S, n, L, L): token pair (a_i, b_j)
        m = gram.gather(1, pair.reshape(S, n * L * L)).view(S, n, L * L)  # (S, n, L L) interactions
        return self.fc2(F.gelu(self.fc1(m))).squeeze(-1)  # (S, n)


class PairModel(nn.Module):
    """A trained stack with one scoring rule: ``score(a, b)`` is ``(S, n)`` cosines (bi) or logits (cross)."""

    def __init__(self, objective: str, net: nn.Module, head: nn.Module | None = None):
        super().__init__()
        self.objective, self.net, self.head = objective, net, head

    def score(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.objective == "cross":
            return self.net(a, b)  # (S, n)
        return pair_cosines(*self._encode_pair(a, b))  # (S, n)

    def _encode_pair(self, a, b):
        u, v = self.net(torch.cat([a, b], 1)).split(a.shape[1], dim=1)  # one pass for both sides: (S, n, out) x 2
        return u, v

    def loss(self, a: torch.Tensor, b: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training objective, ``(S,)``: one loss per model (mean over its batch)."""
        if self.objective == "cross":
            logits = self.net(a, b)  # (S, n)
            return F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype), reduction="none").mean(-1)
        u, v = self._encode_pair(a, b)  # (S, n, out) each
        if self.objective == "sbert":
            logits = self.head(torch.cat([u, v, (u - v).abs()], -1))  # (S, n, 2)
            return F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(-1)
        c = pair_cosines(u, v)  # (S, n)
        if self.objective == "cosine_mse":
            return (c - y.to(c.dtype)).square().mean(-1)
        return cosent_loss(c, y)  # (S,)


def build_pair_model(objective: str, n_models: int, *, vocab: int, length: int, dim: int = 16, hidden: int = 64,
                     out: int = 32, order: bool = True, generator: torch.Generator | None = None) -> PairModel:
    """A fresh stack of ``n_models`` models for ``objective`` (one of :data:`OBJECTIVES`), initialized from
    ``generator``: a :class:`StackedCrossEncoder` for ``"cross"``, else a :class:`StackedBiEncoder` (plus
    Sentence-BERT's linear classifier on :math:`(u, v, |u-v|)` for ``"sbert"``)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if objective == "cross":
        net = StackedCrossEncoder(n_models, vocab=vocab, length=length, dim=dim, hidden=hidden, generator=generator)
    else:
        net = StackedBiEncoder(n_models, vocab=vocab, length=length, dim=dim, hidden=hidden, out=out, order=order,
                               generator=generator)
    head = StackedLinear(n_models, 3 * out, 2, generator=generator) if objective == "sbert" else None
    return PairModel(objective, net, head)


def train_pair_models(objective: str, train, *, steps: int, batch: int = 128, lr: float = 3e-3, seed: int = 0,
                      vocab: int = 16, order: bool = True, dim: int = 16, hidden: int = 64, out: int = 32,
                      callback=None) -> PairModel:
    """Train ``S`` models on their own data ``train = (a, b, y)`` of shapes ``(S, n, L), (S, n, L), (S, n)``.

    Adam (``lr``) for ``steps`` steps of ``batch`` pairs drawn with replacement (each model its own draws);
    initialization and draws from ``torch.Generator().manual_seed(seed)``. ``callback(step, model)``, if given,
    runs after each step (e.g. to record a learning curve). Returns a :class:`PairModel` in eval mode.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    a, b, y = train
    a, b = check_tensor("a", a, ndim=3), check_tensor("b", b, ndim=3)
    y = check_tensor("y", y, ndim=2)
    if a.shape != b.shape or y.shape != a.shape[:2]:
        raise ValueError(f"train must be (S, n, L), (S, n, L), (S, n); got {tuple(a.shape)}, {tuple(b.shape)}, "
                         f"{tuple(y.shape)}")
    steps, batch = check_int("steps", steps, min_value=0), check_int("batch", batch, min_value=1)
    lr = check_real("lr", lr, low=0.0, low_open=True)
    S, n, L = a.shape
    g = torch.Generator().manual_seed(check_int("seed", seed))
    model = build_pair_model(objective, S, vocab=vocab, length=L, dim=dim, hidden=hidden, out=out, order=order,
                             generator=g).to(a.device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rows = torch.arange(S, device=a.device)[:, None]
    for step in range(steps):
        idx = torch.randint(0, n, (S, batch), generator=g).to(a.device)  # (S, batch): each model its own draws
        loss = model.loss(a[rows, idx], b[rows, idx], y[rows, idx]).sum()  # no cross terms between models
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if callback is not None:
            model.eval()
            with torch.no_grad():
                callback(step, model)
            model.train()
    return model.eval()


def validation_threshold_accuracy(val_scores, val_labels, test_scores, test_labels) -> np.ndarray:
    """Per model: the threshold chosen on validation (exact optimum), applied to test; ``(S,)`` test accuracies."""
    vs, vy = torch.as_tensor(val_scores), torch.as_tensor(val_labels)
    ts, ty = torch.as_tensor(test_scores), torch.as_tensor(test_labels)
    if vs.ndim != 2 or vs.shape != vy.shape or ts.ndim != 2 or ts.shape != ty.shape or vs.shape[0] != ts.shape[0]:
        raise ValueError(f"scores and labels must be (S, n) with the same S; got {tuple(vs.shape)}, "
                         f"{tuple(vy.shape)}, {tuple(ts.shape)}, {tuple(ty.shape)}")
    out = []
    for s in range(vs.shape[0]):
        t, _ = best_binary_threshold(vs[s], vy[s])
        out.append(binary_accuracy(ts[s], ty[s], t))
    return np.array(out)


class BestOnValidation:
    """Per-epoch model selection, as in the article's code: keep each model's checkpoint of best validation accuracy.

    A ``callback`` for :func:`train_pair_models`: every ``every`` steps (one epoch) it scores ``val`` (``(a, b, y)``
    with a leading model axis) and records per model the validation accuracy at the best validation threshold
    (exact optimum); with ``test``, the test accuracy at that threshold; with ``fit`` (training pairs), the accuracy
    on them at a threshold chosen on them (how well the model fits what it saw). A model's checkpoint is replaced
    only when its validation accuracy strictly improves. After training, :meth:`restore` loads each model's best
    checkpoint; :meth:`arrays` returns the history as ``(epochs, S)`` arrays.
    """

    def __init__(self, val, test=None, *, every: int, fit=None):
        self.val, self.test, self.fit = val, test, fit
        self.every = check_int("every", every, min_value=1)
        self.history: dict[str, list] = {"step": [], "val": [], "test": [], "fit": []}
        self.best_val = self.best_test = self.best_epoch = None
        self._state = None

    @staticmethod
    def _own_threshold_accuracy(scores, labels) -> np.ndarray:
        return np.array([best_binary_threshold(scores[s], labels[s])[1] for s in range(scores.shape[0])])

    def __call__(self, step: int, model: PairModel) -> None:
        if (step + 1) % self.every:
            return
        sv = model.score(*self.val[:2])  # (S, n_val)
        val_acc = self._own_threshold_accuracy(sv, self.val[2])
        epoch = len(self.history["step"])
        self.history["step"].append(step + 1)
        self.history["val"].append(val_acc)
        test_acc = None
        if self.test is not None:
            test_acc = validation_threshold_accuracy(sv, self.val[2], model.score(*self.test[:2]), self.test[2])
            self.history["test"].append(test_acc)
        if self.fit is not None:
            self.history["fit"].append(self._own_threshold_accuracy(model.score(*self.fit[:2]), self.fit[2]))
        params = dict(model.named_parameters())
        if self._state is None:
            self._state = {k: p.detach().clone() for k, p in params.items()}
            self.best_val, self.best_epoch = val_acc.copy(), np.zeros(val_acc.size, dtype=int)
            self.best_test = None if test_acc is None else test_acc.copy()
            return
        better = val_acc > self.best_val  # (S,)
        if better.any():
            idx = torch.as_tensor(np.flatnonzero(better), device=sv.device)
            for k, p in params.items():
                self._state[k][idx] = p.detach()[idx]
            self.best_val[better], self.best_epoch[better] = val_acc[better], epoch
            if test_acc is not None:
                self.best_test[better] = test_acc[better]

    def restore(self, model: PairModel) -> PairModel:
        """Load each model's best-validation checkpoint into ``model`` (in place) and return it."""
        if self._state is None:
            raise ValueError("no checkpoint recorded: train for at least `every` steps with this callback")
        with torch.no_grad():
            for k, p in model.named_parameters():
                p.copy_(self._state[k])
        return model

    def arrays(self) -> dict[str, np.ndarray]:
        """The history as arrays: ``step`` ``(E,)``; ``val``, and ``test``/``fit`` if recorded, ``(E, S)``."""
        return {k: np.array(v) for k, v in self.history.items() if len(v)}
