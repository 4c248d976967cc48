"""Train short, test long: the length-extrapolation protocol shared by the chapters of Part IV.

Articles: 9577 (RoPE + bias), 9731 (HWFA + ReRoPE), 9859 (key normalization). A causal model (usually
:class:`kexue_lib.rope.PositionLM`) is trained on sequences of one length and evaluated, unchanged or with its
position options switched, on longer ones. Two synthetic languages, both from the second-order Markov chains
of :mod:`kexue_lib.toy_lm`:

* ``"markov"``: plain chain samples; only the last two tokens matter, so a model that extrapolates keeps
  its loss flat as the length grows, and one that does not shows it directly.
* ``"copy"``: the first half of each sequence is a chain sample and the second half repeats it; the loss is
  taken on the second half, which is predictable only by attending back half the sequence (an induction
  task: long context really is needed, at distances never seen in training once the length grows).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._validate import check_int, check_real
from .toy_lm import mlm_corrupt, sample_markov2

__all__ = ["LANGUAGES", "sample_language", "lm_loss", "train_lm", "loss_by_length",
           "PROBE_TOKEN", "PROBE_CLS", "PROBE_SEP", "position_probe", "probe_loss", "train_probe",
           "OBJECTIVES", "mlm_loss", "lm_accuracy", "accuracy_by_length"]

OBJECTIVES = ("lm", "mlm")

LANGUAGES = ("markov", "copy")


def sample_language(chain: torch.Tensor, kind: str, batch: int, length: int, *, generator=None) -> torch.Tensor:
    """``(batch, length)`` token ids of language ``kind`` (see the module docstring); ``length`` even for copy."""
    if kind not in LANGUAGES:
        raise ValueError(f"kind must be one of {LANGUAGES}, got {kind!r}")
    length = check_int("length", length, min_value=4)
    if kind == "markov":
        return sample_markov2(chain, batch, length, generator=generator)
    if length % 2:
        raise ValueError(f"the copy language needs an even length, got {length}")
    half = sample_markov2(chain, batch, length // 2, generator=generator)
    return torch.cat([half, half], dim=1)


def lm_loss(model: nn.Module, x: torch.Tensor, kind: str) -> torch.Tensor:
    """Next-token cross-entropy (nats per token) of ``model`` on ``x``; for ``"copy"``, on the repeated half only
    (the targets at positions ``n/2 .. n-1``)."""
    if kind not in LANGUAGES:
        raise ValueError(f"kind must be one of {LANGUAGES}, got {kind!r}")
    logits = model(x[:, :-1])
    targets = x[:, 1:].clone()
    if kind == "copy":
        targets[:, : x.shape[1] // 2 - 1] = -100  # predict only the copied half
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


def mlm_loss(model: nn.Module, x: torch.Tensor, *, mask_id: int, rate: float = 0.15, generator=None) -> torch.Tensor:
    """Masked-LM cross-entropy (nats per masked token): a ``rate`` fraction of the tokens of ``x`` (at least one per
    row, :func:`kexue_lib.toy_lm.mlm_corrupt`) replaced by ``mask_id``, predicted by the bidirectional ``model``."""
    inputs, targets = mlm_corrupt(x.cpu(), mask_id=mask_id, rate=rate, generator=generator)
    logits = model(inputs.to(x.device))
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.to(x.device).reshape(-1), ignore_index=-100)


def _objective_loss(model, x, kind, objective, mask_rate, generator, vocab):
    if objective == "lm":
        return lm_loss(model, x, kind)
    return mlm_loss(model, x, mask_id=vocab, rate=mask_rate, generator=generator)


def _check_objective(objective, kind):
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if objective == "mlm" and kind != "markov":
        raise ValueError("objective='mlm' is defined for kind='markov' only")


def train_lm(model: nn.Module, chain: torch.Tensor, *, kind: str = "markov", steps: int = 300, batch: int = 32,
             length: int = 64, lr: float = 3e-3, seed: int = 0, progress=None, lengths=None, objective: str = "lm",
             mask_rate: float = 0.15, on_step=None) -> list[float]:
    """Train ``model`` in place with AdamW (cosine decay, no warmup) on fresh batches of ``kind`` at ``length``;
    return the training loss per step. Data come from a generator seeded by ``seed``: two models trained with the
    same seed see the same batches (paired arms). ``progress`` wraps the step range (e.g. a progress bar).
    ``lengths`` (a sequence; ``length`` is then ignored) cycles the training length step by step, ``lengths[s % k]``
    at step ``s``: with ``"copy"`` the copy distance then varies, so that no fixed offset solves the task.
    ``objective="mlm"`` trains a bidirectional model as a masked LM instead (:func:`mlm_loss`, mask id ``V`` =
    the chain's vocabulary size, so the model needs ``V + 1`` input tokens and ``V`` outputs; masks drawn from the
    same seeded generator). ``on_step(s)``, if given, is called before step ``s`` (e.g. to set a residual scale)."""
    _check_objective(objective, kind)
    steps = check_int("steps", steps, min_value=1)
    batch = check_int("batch", batch, min_value=1)
    lr = check_real("lr", lr, low=0.0, low_open=True)
    seed = check_int("seed", seed, min_value=0)
    if lengths is not None:
        lengths = [check_int("length", n, min_value=4) for n in lengths]
        if not lengths:
            raise ValueError("lengths must not be empty (or None for a single training length)")
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(40_000 + seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, foreach=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    losses = []
    model.train()
    for _ in (progress or (lambda r: r))(range(steps)):
        n = length if lengths is None else lengths[len(losses) % len(lengths)]
        x = sample_language(chain, kind, batch, n, generator=g).to(device)
        if on_step is not None:
            on_step(len(losses))
        loss = _objective_loss(model, x, kind, objective, mask_rate, g, chain.shape[0])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def loss_by_length(model: nn.Module, chain: torch.Tensor, lengths, *, kind: str = "markov", batch: int = 64,
                   seed: int = 0, objective: str = "lm", mask_rate: float = 0.15) -> dict:
    """``{length: held-out loss}`` of ``model`` (no gradients) on fresh ``kind`` sequences of each length;
    the held-out data depend only on ``seed`` and the length, so every model is scored on the same sequences
    (with ``objective="mlm"``, the same masks too)."""
    _check_objective(objective, kind)
    return _by_length(model, chain, lengths, kind, batch, seed,
                      lambda x, g: _objective_loss(model, x, kind, objective, mask_rate, g, chain.shape[0]))


def _by_length(model, chain, lengths, kind, batch, seed, score) -> dict:
    """``{n: float(score(x, g))}`` with no gradients, ``x`` the held-out ``kind`` batch of length ``n`` drawn from
    generator ``g``, seeded by ``seed`` and ``n`` only (so every model and metric sees the same sequences)."""
    lengths = [check_int("length", n, min_value=4) for n in lengths]
    if not lengths:
        raise ValueError("lengths must not be empty")
    device = next(model.parameters()).device
    out = {}
    with torch.no_grad():
        for n in lengths:
            g = torch.Generator().manual_seed(50_000 + 1000 * seed + n)
            x = sample_language(chain, kind, batch, n, generator=g).to(device)
            out[n] = float(score(x, g))
    return out


# The position probe of article 9105 (相对位置编码Transformer的一个理论缺陷与对策, https://kexue.fm/archives/9105):
# n identical input tokens must be mapped to the outputs 1, 2, ..., n (a regression, one output per position).
PROBE_TOKEN, PROBE_CLS, PROBE_SEP = 0, 1, 2


def position_probe(n: int, *, special_tokens: bool = False, targets: torch.Tensor | None = None, device=None):
    """``(tokens, targets, keep)`` of the position probe of article 9105 at length ``n``.

    ``tokens``: ``(1, n)`` ids, all :data:`PROBE_TOKEN`; with ``special_tokens`` the sequence is
    ``[CLS] 0 ... 0 [SEP]`` (``(1, n + 2)``, ids :data:`PROBE_CLS` and :data:`PROBE_SEP`: three ids in all, so a
    model needs ``vocab >= 3``). ``targets``: float32 ``(n,)``, ``1..n`` by default or the given ``(n,)`` values.
    ``keep``: the slice of output positions that carry the targets (the marker tokens' outputs are not scored).
    """
    n = check_int("n", n, min_value=2)
    if targets is None:
        targets = torch.arange(1, n + 1, dtype=torch.float32, device=device)
    else:
        if not isinstance(targets, torch.Tensor) or targets.shape != (n,) or not targets.is_floating_point():
            raise ValueError(f"targets must be a floating-point tensor of shape ({n},), got {targets!r}")
        targets = targets.to(device=device)
    tokens = torch.full((1, n), PROBE_TOKEN, dtype=torch.long, device=device)
    if not special_tokens:
        return tokens, targets, slice(0, n)
    cls = torch.full((1, 1), PROBE_CLS, dtype=torch.long, device=device)
    sep = torch.full((1, 1), PROBE_SEP, dtype=torch.long, device=device)
    return torch.cat([cls, tokens, sep], dim=1), targets, slice(1, n + 1)


def probe_loss(model: nn.Module, n: int, *, special_tokens: bool = False, targets: torch.Tensor | None = None,
               standardize: bool = True):
    r"""Mean squared error of ``model`` on the position probe (see :func:`position_probe`), in the targets' units.

    ``model`` maps ``(1, length)`` token ids to ``(1, length, 1)`` outputs (e.g. ``PositionLM(3, causal=False,
    n_out=1)``). With ``standardize`` (the default) the output :math:`y_i` is read as a standardized target: the
    prediction is :math:`\bar t + \sigma_t y_i` (mean and population standard deviation of the targets), a fixed
    affine map after the model's own linear head that changes neither what the model can represent nor the
    plateau, and spares the optimizer from growing the head to the targets' scale. A model whose outputs are
    equal at every position can do no better than the variance of the targets, :math:`(n^2 - 1)/12` for ``1..n``.
    """
    device = next(model.parameters()).device
    tokens, targets, keep = position_probe(n, special_tokens=special_tokens, targets=targets, device=device)
    out = model(tokens)
    if out.shape != (*tokens.shape, 1):
        raise ValueError(f"the probe needs a model with one output per position, got output shape {tuple(out.shape)}")
    pred = out[0, keep, 0].float()
    if standardize:
        pred = targets.mean() + targets.std(unbiased=False) * pred
    return F.mse_loss(pred, targets)


def train_probe(model: nn.Module, n: int, *, steps: int = 300, lr: float = 3e-3, special_tokens: bool = False,
                targets: torch.Tensor | None = None, standardize: bool = True, progress=None) -> list[float]:
    """Train ``model`` in place on the position probe with AdamW (cosine decay, no warmup, no weight decay) and
    return the loss (:func:`probe_loss`, in the targets' units) per step, each taken before its update (so call
    :func:`probe_loss` for the final value). The probe's input is one fixed sequence: full-batch training,
    deterministic given the model's initialization (seed it before building the model)."""
    steps = check_int("steps", steps, min_value=1)
    lr = check_real("lr", lr, low=0.0, low_open=True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, fused=True)  # fused: fewer small ops
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    losses = []
    model.train()
    for _ in (progress or (lambda r: r))(range(steps)):
        loss = probe_loss(model, n, special_tokens=special_tokens, targets=targets, standardize=standardize)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def lm_accuracy(model: nn.Module, x: torch.Tensor, kind: str) -> torch.Tensor:
    """Next-token accuracy (the share of targets that are the model's argmax) of ``model`` on ``x``, scored on the
    same targets as :func:`lm_loss` (for ``"copy"``, the repeated half only): the metric of article 9577's table."""
    if kind not in LANGUAGES:
        raise ValueError(f"kind must be one of {LANGUAGES}, got {kind!r}")
    logits = model(x[:, :-1])
    targets = x[:, 1:]
    if kind == "copy":
        logits, targets = logits[:, x.shape[1] // 2 - 1:], targets[:, x.shape[1] // 2 - 1:]
    return (logits.argmax(-1) == targets).double().mean()


def accuracy_by_length(model: nn.Module, chain: torch.Tensor, lengths, *, kind: str = "markov", batch: int = 64,
                       seed: int = 0) -> dict:
    """``{length: held-out next-token accuracy}`` of ``model`` (no gradients), on the very sequences that
    :func:`loss_by_length` scores for the same ``kind``, ``batch`` and ``seed``."""
    return _by_length(model, chain, lengths, kind, batch, seed, lambda x, g: lm_accuracy(model, x, kind))
