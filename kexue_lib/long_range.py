r"""Self-pretraining (SPT) before a long-sequence classification task: a small synthetic version.

Article: 预训练一下,Transformer的长序列成绩还能涨不少! (https://kexue.fm/archives/9787, 2023-10-08), on
I. Amos, J. Berant, A. Gupta, *Never Train from Scratch: Fair Comparison of Long-Sequence Models Requires
Data-Driven Priors*, arXiv:2310.02980. The paper's recipe: before training a classifier on a long-sequence
task (Long Range Arena), pretrain the same backbone with a denoising objective (next-token, "ar", or masked
tokens, "mlm") on **the task's own training inputs**, then fine-tune on the labels. No extra data enters, so
the comparison between architectures stays fair.

* The task (:func:`permutation_chains`, :func:`sample_chain_task`): fine-grained tokens, like LRA's
  characters and pixels. Class :math:`c` draws a sequence from a first-order Markov chain with transition
  matrix :math:`P_c=(1-\epsilon)\Pi_c+\epsilon\,\mathbf 1\mathbf 1^\top/V`, :math:`\Pi_c` a random
  permutation matrix. Every :math:`P_c` is doubly stochastic, so the stationary law is uniform for both
  classes: token counts carry no information, and the label is only visible in adjacent pairs, each pair a
  weak piece of evidence that must be pooled over the whole sequence. ``lag=k`` links tokens ``k`` apart
  instead (a long-range variant); :func:`shuffle_within` permutes each sequence's tokens (a control input
  with the same tokens and no order).
* The recurrent baseline (:class:`LinearRecurrenceLM`): a stack of diagonal linear recurrences (EMA, the
  core of S4D/LRU/MEGA's EMA) :math:`h_t=a\odot h_{t-1}+(1-a)\odot u_t`, computed as a causal Toeplitz
  product :math:`h=K u` with :math:`K_{ts}=(1-a)a^{t-s}` for :math:`s\le t` (:func:`ema_kernel`). It has a
  locality prior built in: recent tokens weigh most. Its decays start spread over time scales (structured,
  the default) or all at one value (``decay_logit``).
* The Transformer is :class:`kexue_lib.toy_lm.ToyTransformer` (learned absolute positions, no locality
  prior). :func:`encode` returns either backbone's features before its read-out; :class:`SequenceClassifier`
  mean-pools them into a linear head; :func:`self_pretrain` runs the denoising objective on the inputs;
  :func:`finetune` trains on labels; :func:`attention_maps` reads the Transformer's attention matrices.

Everything follows the device and dtype of the model; data are long tensors on CPU unless moved.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._validate import check_int, check_real, check_tensor
from .attention import attention_weights
from .toy_lm import ToyTransformer, mlm_corrupt

__all__ = ["permutation_chains", "sample_chain_task", "shuffle_within", "ema_kernel", "LinearRecurrenceLM", "encode",
           "SequenceClassifier", "self_pretrain", "finetune", "accuracy", "attention_maps", "OBJECTIVES"]

OBJECTIVES = ("ar", "mlm")


def permutation_chains(vocab: int, *, n_classes: int = 2, noise: float = 0.5, generator=None) -> torch.Tensor:
    """``(n_classes, vocab, vocab)`` float64 transition tables ``(1 - noise) Pi_c + noise / vocab``.

    ``Pi_c`` are random permutation matrices drawn without fixed points in common (each class maps every
    token to a different successor), so every table is doubly stochastic with the uniform stationary law.
    """
    vocab = check_int("vocab", vocab, min_value=2)
    n_classes = check_int("n_classes", n_classes, min_value=2, max_value=vocab)
    noise = check_real("noise", noise, low=0.0, high=1.0, high_open=True)
    shift = torch.randperm(vocab - 1, generator=generator)[: n_classes - 1] + 1  # distinct nonzero shifts
    shifts = torch.cat([torch.zeros(1, dtype=torch.long), shift])  # (C,)
    relabel = torch.randperm(vocab, generator=generator)  # hide the cyclic structure
    eye = torch.eye(vocab, dtype=torch.float64)
    tables = []
    for s in shifts.tolist():
        succ = torch.empty(vocab, dtype=torch.long)
        succ[relabel] = relabel[(torch.arange(vocab) + 1 + s) % vocab]  # a -> successor under class c
        tables.append((1 - noise) * eye[succ] + noise / vocab)
    return torch.stack(tables)  # (C, V, V)


def sample_chain_task(chains: torch.Tensor, batch: int, length: int, *, lag: int = 1, generator=None):
    """``(x, y)``: ``x`` ``(batch, length)`` long sequences, ``y`` ``(batch,)`` labels, classes balanced.

    Row ``i`` has label ``i % n_classes`` (then shuffled) and is a path of chain ``y_i`` from a uniform start.
    With ``lag = k > 1`` the chain links tokens ``k`` apart, ``x_t ~ P_y[x_{t-k}]`` (``k`` interleaved paths
    of the same chain, uniform starts ``x_0..x_{k-1}``): the evidence then sits in pairs at distance ``k``, a
    long-range version of the task. ``lag=1`` draws exactly what it drew before the option existed.
    """
    check_tensor("chains", chains, ndim=3, floating=True)
    if chains.shape[1] != chains.shape[2]:
        raise ValueError(f"chains must be (C, V, V), got shape {tuple(chains.shape)}")
    batch, length = check_int("batch", batch, min_value=1), check_int("length", length, min_value=2)
    lag = check_int("lag", lag, min_value=1, max_value=length - 1)
    n_classes, vocab = chains.shape[0], chains.shape[1]
    y = (torch.arange(batch) % n_classes)[torch.randperm(batch, generator=generator)]  # (b,)
    x = torch.empty(batch, length, dtype=torch.long)
    x[:, :lag] = torch.randint(vocab, (batch, lag), generator=generator)  # (b, lag) uniform starts
    cdf = chains.cumsum(-1)  # (C, V, V)
    for t in range(lag, length):
        u = torch.rand(batch, 1, generator=generator, dtype=cdf.dtype)
        x[:, t] = (cdf[y, x[:, t - lag]] < u).sum(-1).clamp_max(vocab - 1)
    return x, y


def shuffle_within(x: torch.Tensor, *, generator=None) -> torch.Tensor:
    """``x`` ``(b, n)`` with each row's positions randomly permuted (its own permutation per row).

    Every sequence keeps its tokens (so its token counts), but the order, hence any pair structure, is gone:
    pretraining on ``shuffle_within(x)`` costs what pretraining on ``x`` costs and learns nothing about order.
    """
    check_tensor("x", x, ndim=2)
    perm = torch.argsort(torch.rand(x.shape, generator=generator), dim=1).to(x.device)  # (b, n)
    return torch.gather(x, 1, perm)


def ema_kernel(decay: torch.Tensor, n: int) -> torch.Tensor:
    """``(d, n, n)`` causal Toeplitz kernel ``K[c, t, s] = (1 - a_c) a_c^(t - s)`` for ``s <= t``, else 0.

    ``decay`` holds ``a`` in (0, 1), shape ``(d,)``; ``h = K u`` runs ``h_t = a h_{t-1} + (1 - a) u_t``.
    """
    check_tensor("decay", decay, ndim=1, floating=True)
    n = check_int("n", n, min_value=1)
    t = torch.arange(n, device=decay.device)
    lag = (t[:, None] - t[None, :]).to(decay.dtype)  # (n, n)
    causal = lag >= 0
    logk = lag.clamp_min(0) * decay.log()[:, None, None]  # (d, n, n)
    return torch.where(causal, (1 - decay)[:, None, None] * logk.exp(), torch.zeros((), dtype=decay.dtype,
                                                                                       device=decay.device))


class _EMABlock(nn.Module):
    def __init__(self, d_model, decay_logit=None):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.inp, self.gate, self.out = (nn.Linear(d_model, d_model) for _ in range(3))
        if decay_logit is None:  # structured: a spread of time scales, decays from ~0.12 to ~0.98
            self.logit = nn.Parameter(torch.linspace(-2.0, 4.0, d_model))
        else:  # one time scale for every channel
            self.logit = nn.Parameter(torch.full((d_model,), float(decay_logit)))
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x):  # x: (b, n, d)
        z = self.ln1(x)
        k = ema_kernel(torch.sigmoid(self.logit), x.shape[1])  # (d, n, n)
        h = torch.einsum("cts,bsc->btc", k, self.inp(z))  # (b, n, d)
        x = x + self.out(h * torch.sigmoid(self.gate(z)))
        return x + self.mlp(self.ln2(x))


class LinearRecurrenceLM(nn.Module):
    """Causal stack of gated diagonal linear recurrences (no position embedding: order comes from the
    recurrence); ``forward(tokens (b, n)) -> logits (b, n, vocab)``. Input ids may include the mask token
    ``vocab``.

    ``decay_logit=None`` (default) initialises the decays ``a = sigmoid(logit)`` spread over time scales, the
    structured choice of S4D/LRU-style models; a number gives every channel that one logit (``4.0``: all
    decays ~0.98, one slow time scale), the unstructured alternative."""

    def __init__(self, *, vocab: int, d_model: int = 32, n_layers: int = 1, decay_logit: float | None = None):
        super().__init__()
        vocab, d_model = check_int("vocab", vocab, min_value=2), check_int("d_model", d_model, min_value=1)
        n_layers = check_int("n_layers", n_layers, min_value=1)
        if decay_logit is not None:
            decay_logit = check_real("decay_logit", decay_logit)
        self.tok = nn.Embedding(vocab + 1, d_model)
        self.blocks = nn.ModuleList(_EMABlock(d_model, decay_logit) for _ in range(n_layers))
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(encode(self, tokens))


def encode(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``(b, n, d_model)`` features of a :class:`ToyTransformer` or :class:`LinearRecurrenceLM` before the
    read-out (``model.head(encode(model, x)) == model(x)``)."""
    check_tensor("tokens", tokens, ndim=2)
    if isinstance(model, ToyTransformer):
        if tokens.shape[1] > model.pos.shape[0]:
            raise ValueError(f"tokens longer than max_len {model.pos.shape[0]}: {tuple(tokens.shape)}")
        x = model.tok(tokens) + model.pos[: tokens.shape[1]]  # (b, n, d)
    elif isinstance(model, LinearRecurrenceLM):
        x = model.tok(tokens)  # (b, n, d)
    else:
        raise ValueError(f"model must be a ToyTransformer or LinearRecurrenceLM, got {type(model).__name__}")
    for blk in model.blocks:
        x = blk(x)
    return model.ln(x)


class SequenceClassifier(nn.Module):
    """Mean-pooled backbone features into a linear head: ``forward(tokens (b, n)) -> logits (b, n_classes)``."""

    def __init__(self, backbone: nn.Module, *, n_classes: int):
        super().__init__()
        n_classes = check_int("n_classes", n_classes, min_value=2)
        self.backbone = backbone
        self.cls = nn.Linear(backbone.head.in_features, n_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.cls(encode(self.backbone, tokens).mean(1))  # (b, C)


def _batches(n, batch, steps, generator):
    for _ in range(steps):
        yield torch.randint(n, (batch,), generator=generator)


def self_pretrain(model: nn.Module, inputs: torch.Tensor, *, objective: str = "ar", steps: int = 200,
                  batch: int = 32, lr: float = 3e-3, mask_rate: float = 0.15, generator=None) -> list:
    """Denoising pretraining of ``model`` on the task's own ``inputs`` ``(N, n)``, in place; returns the losses.

    ``"ar"``: next-token cross-entropy (the model must be causal); ``"mlm"``: a ``mask_rate`` fraction of
    tokens replaced by the mask id ``vocab`` and predicted.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    check_tensor("inputs", inputs, ndim=2)
    steps, batch = check_int("steps", steps, min_value=1), check_int("batch", batch, min_value=1)
    vocab = model.head.out_features
    dev = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, foreach=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    losses = []
    for idx in _batches(inputs.shape[0], batch, steps, generator):
        x = inputs[idx]
        if objective == "ar":
            logits, tgt = model(x[:, :-1].to(dev)), x[:, 1:].to(dev)  # (b, n-1, V), (b, n-1)
        else:
            inp, tgt = mlm_corrupt(x, mask_id=vocab, rate=mask_rate, generator=generator)
            logits, tgt = model(inp.to(dev)), tgt.to(dev)
        loss = F.cross_entropy(logits.reshape(-1, vocab), tgt.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return losses


def finetune(clf: SequenceClassifier, x: torch.Tensor, y: torch.Tensor, *, steps: int = 200, batch: int = 32,
             lr: float = 3e-3, generator=None) -> list:
    """Train ``clf`` (backbone included) on labels with AdamW and cosine decay, in place; returns the losses."""
    check_tensor("x", x, ndim=2)
    check_tensor("y", y, ndim=1)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y disagree on the number of examples: {x.shape[0]} vs {y.shape[0]}")
    steps, batch = check_int("steps", steps, min_value=1), check_int("batch", batch, min_value=1)
    dev = next(clf.parameters()).device
    opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=0.01, foreach=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    losses = []
    for idx in _batches(x.shape[0], batch, steps, generator):
        loss = F.cross_entropy(clf(x[idx].to(dev)), y[idx].to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return losses


@torch.no_grad()
def accuracy(clf: SequenceClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` whose predicted class equals ``y``."""
    dev = next(clf.parameters()).device
    return float((clf(x.to(dev)).argmax(-1).cpu() == y).double().mean())


@torch.no_grad()
def attention_maps(model: ToyTransformer, tokens: torch.Tensor) -> list:
    """Per layer, the ``(b, heads, n, n)`` softmax attention matrices of a ``ToyTransformer`` with softmax
    attention and causal or bidirectional direction."""
    if not isinstance(model, ToyTransformer):
        raise ValueError(f"model must be a ToyTransformer, got {type(model).__name__}")
    check_tensor("tokens", tokens, ndim=2)
    x = model.tok(tokens) + model.pos[: tokens.shape[1]]  # (b, n, d)
    maps = []
    for blk in model.blocks:
        if blk.attention != "softmax" or blk.direction == "mixed":
            raise ValueError("attention_maps reads softmax attention, causal or bidirectional")
        b, n, dm = x.shape
        q, k, _ = blk.qkv(blk.ln1(x)).view(b, n, 3, blk.h, dm // blk.h).permute(2, 0, 3, 1, 4)  # (b, h, n, dh)
        maps.append(attention_weights(q, k, causal=blk.direction == "causal"))  # (b, h, n, n)
        x = blk(x)
    return maps
