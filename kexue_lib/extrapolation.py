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
from .toy_lm import sample_markov2

__all__ = ["LANGUAGES", "sample_language", "lm_loss", "train_lm", "loss_by_length"]

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


def train_lm(model: nn.Module, chain: torch.Tensor, *, kind: str = "markov", steps: int = 300, batch: int = 32,
             length: int = 64, lr: float = 3e-3, seed: int = 0, progress=None) -> list[float]:
    """Train ``model`` in place with AdamW (cosine decay, no warmup) on fresh batches of ``kind`` at ``length``;
    return the training loss per step. Data come from a generator seeded by ``seed``: two models trained with the
    same seed see the same batches (paired arms). ``progress`` wraps the step range (e.g. a progress bar)."""
    steps = check_int("steps", steps, min_value=1)
    batch = check_int("batch", batch, min_value=1)
    lr = check_real("lr", lr, low=0.0, low_open=True)
    seed = check_int("seed", seed, min_value=0)
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(40_000 + seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, foreach=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    losses = []
    model.train()
    for _ in (progress or (lambda r: r))(range(steps)):
        x = sample_language(chain, kind, batch, length, generator=g).to(device)
        loss = lm_loss(model, x, kind)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def loss_by_length(model: nn.Module, chain: torch.Tensor, lengths, *, kind: str = "markov", batch: int = 64,
                   seed: int = 0) -> dict:
    """``{length: held-out loss}`` of ``model`` (no gradients) on fresh ``kind`` sequences of each length;
    the held-out data depend only on ``seed`` and the length, so every model is scored on the same sequences."""
    lengths = [check_int("length", n, min_value=4) for n in lengths]
    if not lengths:
        raise ValueError("lengths must not be empty")
    device = next(model.parameters()).device
    out = {}
    with torch.no_grad():
        for n in lengths:
            g = torch.Generator().manual_seed(50_000 + 1000 * seed + n)
            x = sample_language(chain, kind, batch, n, generator=g).to(device)
            out[n] = float(lm_loss(model, x, kind))
    return out
