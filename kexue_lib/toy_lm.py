r"""A tiny Transformer for attention experiments on a synthetic language: softmax vs linear, causal vs MLM.

Articles: Transformer升级之路:3、从Performer到线性Attention (https://kexue.fm/archives/8338) and
为什么现在的LLM都是Decoder-only的架构？ (https://kexue.fm/archives/9529). Both draw conclusions from training
runs: locally truncated linear attention beats full linear attention; linear attention loses less to softmax
attention in a causal language model (LM) than in a masked language model (MLM); half causal / half
anti-causal heads train at least as well as bidirectional ones in an MLM. This module runs small versions.

* The language: a random second-order Markov chain over ``vocab`` tokens,
  :math:`P(x_t\mid x_{t-2},x_{t-1})=\mathrm{softmax}(\beta z)`, :math:`z` standard normal per context
  (``sharpness`` :math:`\beta`: larger, more predictable). Predicting a token needs the content of its neighbours, fetched by attention.
* The model (:class:`ToyTransformer`): token and learned position embeddings, pre-LN blocks
  (attention + 4x GELU MLP), a linear read-out. ``attention``: ``"softmax"``
  (:func:`kexue_lib.attention.softmax_attention`), ``"linear"`` (:func:`~kexue_lib.attention.linear_attention`,
  1 + elu features) or ``"local_linear"`` (:func:`~kexue_lib.attention.local_linear_attention`).
  ``direction``: ``"causal"``, ``"bidirectional"`` or ``"mixed"`` (the first half of the heads causal, the
  rest anti-causal: the fix of article 9529).
* The objectives: ``"lm"`` (next-token cross-entropy, causal only) and ``"mlm"`` (a fraction ``mask_rate``
  of positions replaced by a mask token ``vocab``; cross-entropy on those).

:func:`train_toy_lm` trains one arm and returns its held-out loss (nats per predicted token). The seed fixes
the chain, the data stream, the held-out set (its masks included) and the initial weights, so arms run with
the same seed are paired. Everything runs in float32 on the given device.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._validate import check_int, check_real
from .attention import causal_mask, linear_attention, local_linear_attention, softmax_attention

__all__ = ["ATTENTIONS", "DIRECTIONS", "OBJECTIVES", "markov2_chain", "sample_markov2", "mlm_corrupt",
           "mixed_attention", "ToyTransformer", "train_toy_lm"]

ATTENTIONS = ("softmax", "linear", "local_linear")
DIRECTIONS = ("causal", "bidirectional", "mixed")
OBJECTIVES = ("lm", "mlm")


def markov2_chain(vocab: int, *, sharpness: float = 2.5, generator=None) -> torch.Tensor:
    """``(vocab, vocab, vocab)`` table ``P[a, b, c] = P(x_t = c | x_{t-2} = a, x_{t-1} = b)``.

    Each row is ``softmax(sharpness * z)`` with ``z`` standard normal: larger ``sharpness``, a more predictable
    language. Float64.
    """
    vocab = check_int("vocab", vocab, min_value=2)
    sharpness = check_real("sharpness", sharpness, low=0.0)
    z = torch.randn(vocab, vocab, vocab, generator=generator, dtype=torch.float64)
    return torch.softmax(sharpness * z, dim=-1)


def sample_markov2(chain: torch.Tensor, batch: int, length: int, *, generator=None) -> torch.Tensor:
    """``(batch, length)`` long tensor of sequences from ``chain``, the first two tokens uniform."""
    if chain.ndim != 3 or len(set(chain.shape)) != 1:
        raise ValueError(f"chain must be a (V, V, V) table, got shape {tuple(chain.shape)}")
    batch, length = check_int("batch", batch, min_value=1), check_int("length", length, min_value=3)
    vocab = chain.shape[0]
    x = torch.empty(batch, length, dtype=torch.long)
    x[:, :2] = torch.randint(vocab, (batch, 2), generator=generator)
    cdf = chain.cumsum(-1)
    for t in range(2, length):
        u = torch.rand(batch, 1, generator=generator, dtype=cdf.dtype)
        x[:, t] = (cdf[x[:, t - 2], x[:, t - 1]] < u).sum(-1).clamp_max(vocab - 1)
    return x


def mlm_corrupt(x: torch.Tensor, *, mask_id: int, rate: float = 0.15, generator=None):
    """``(inputs, targets)``: a ``rate`` fraction of positions (at least one per row) set to ``mask_id``;
    ``targets`` holds the original token there and ``-100`` (ignored) elsewhere."""
    rate = check_real("rate", rate, low=0.0, high=1.0, low_open=True)
    pick = torch.rand(x.shape, generator=generator) < rate
    pick[torch.arange(x.shape[0]), torch.randint(x.shape[1], (x.shape[0],), generator=generator)] = True
    return x.masked_fill(pick, mask_id), x.masked_fill(~pick, -100)


def mixed_attention(q, k, v, *, attention: str = "softmax", direction: str = "causal", window: int = 2):
    """Attention of the chosen kind and direction on ``(batch, heads, n, d)`` tensors.

    ``"mixed"`` runs the first ``heads // 2`` heads causally and the others anti-causally (article 9529).
    """
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if direction == "mixed":
        h = q.shape[1] // 2
        if h == 0 or q.ndim != 4:
            raise ValueError("mixed direction needs (batch, heads, n, d) inputs with at least two heads")
        if attention == "softmax":
            low = causal_mask(q.shape[-2], device=q.device)
            mask = torch.stack([low] * h + [low.T] * (q.shape[1] - h))  # (heads, n, n)
            return softmax_attention(q, k, v, mask=mask)
        fwd = mixed_attention(q[:, :h], k[:, :h], v[:, :h], attention=attention, direction="causal", window=window)
        flip = lambda t: t[:, h:].flip(-2)  # anti-causal = causal on the reversed sequence
        bwd = mixed_attention(flip(q), flip(k), flip(v), attention=attention, direction="causal", window=window)
        return torch.cat([fwd, bwd.flip(-2)], dim=1)
    causal = direction == "causal"
    if attention == "softmax":
        return softmax_attention(q, k, v, causal=causal)
    if attention == "linear":
        return linear_attention(q, k, v, causal=causal)
    return local_linear_attention(q, k, v, window=window, causal=causal)


class _Block(nn.Module):
    def __init__(self, d_model, n_heads, attention, direction, window):
        super().__init__()
        self.h, self.attention, self.direction, self.window = n_heads, attention, direction, window
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv, self.out = nn.Linear(d_model, 3 * d_model), nn.Linear(d_model, d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x):  # x: (b, n, d_model)
        b, n, dm = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.h, dm // self.h).permute(2, 0, 3, 1, 4)  # (b, h, n, dh)
        o = mixed_attention(q, k, v, attention=self.attention, direction=self.direction, window=self.window)
        x = x + self.out(o.transpose(1, 2).reshape(b, n, dm))
        return x + self.mlp(self.ln2(x))


class ToyTransformer(nn.Module):
    """Tiny pre-LN Transformer; ``forward(tokens (b, n)) -> logits (b, n, vocab)``. Input ids may include the
    mask token ``vocab``."""

    def __init__(self, *, vocab: int, max_len: int, d_model: int = 32, n_heads: int = 4, n_layers: int = 1,
                 attention: str = "softmax", direction: str = "causal", window: int = 2):
        super().__init__()
        vocab, max_len = check_int("vocab", vocab, min_value=2), check_int("max_len", max_len, min_value=1)
        d_model, n_heads = check_int("d_model", d_model, min_value=1), check_int("n_heads", n_heads, min_value=1)
        n_layers, window = check_int("n_layers", n_layers, min_value=1), check_int("window", window, min_value=0)
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        if attention not in ATTENTIONS or direction not in DIRECTIONS:
            raise ValueError(f"attention in {ATTENTIONS} and direction in {DIRECTIONS}, got {attention!r}, {direction!r}")
        if direction == "mixed" and n_heads < 2:
            raise ValueError("mixed direction needs at least two heads")
        self.tok = nn.Embedding(vocab + 1, d_model)
        self.pos = nn.Parameter(torch.randn(max_len, d_model))  # unit scale, like the token embeddings
        self.blocks = nn.ModuleList(_Block(d_model, n_heads, attention, direction, window) for _ in range(n_layers))
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim != 2 or tokens.shape[1] > self.pos.shape[0]:
            raise ValueError(f"tokens must be (batch, n) with n <= {self.pos.shape[0]}, got {tuple(tokens.shape)}")
        x = self.tok(tokens) + self.pos[: tokens.shape[1]]
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln(x))


def _loss(model, x, objective, vocab, gen):
    if objective == "lm":
        logits = model(x[:, :-1])
        return F.cross_entropy(logits.reshape(-1, vocab), x[:, 1:].reshape(-1))
    inp, tgt = mlm_corrupt(x, mask_id=vocab, rate=0.15, generator=gen)
    return F.cross_entropy(model(inp).reshape(-1, vocab), tgt.reshape(-1), ignore_index=-100)


def train_toy_lm(*, attention: str, direction: str, objective: str, seed: int, steps: int = 200, vocab: int = 16,
                 length: int = 32, batch: int = 32, d_model: int = 32, n_heads: int = 4, n_layers: int = 1,
                 window: int = 2, lr: float = 3e-3, sharpness: float = 2.5, eval_batch: int = 256,
                 device=None) -> dict:
    """Train one arm with AdamW (cosine decay) and return ``{"loss", "floor"}`` on a held-out set.

    ``loss`` is the held-out cross-entropy (nats per predicted token); ``floor`` is the chain's own conditional
    entropy on the LM targets (the best any LM can do; for ``"mlm"`` a bound that bidirectional context beats).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if objective == "lm" and direction != "causal":
        raise ValueError("next-token training needs causal attention (otherwise the target is visible)")
    steps = check_int("steps", steps, min_value=1)
    seed = check_int("seed", seed, min_value=0)
    g = torch.Generator().manual_seed(seed)
    chain = markov2_chain(vocab, sharpness=sharpness, generator=g)
    g_eval = torch.Generator().manual_seed(10_000 + seed)
    x_eval = sample_markov2(chain, eval_batch, length, generator=g_eval)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ToyTransformer(vocab=vocab, max_len=length, d_model=d_model, n_heads=n_heads, n_layers=n_layers,
                               attention=attention, direction=direction, window=window).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, foreach=True)  # foreach: 1 kernel per op, not per tensor
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    g_data = torch.Generator().manual_seed(20_000 + seed)
    stream = sample_markov2(chain, steps * batch, length, generator=g_data).to(device)  # every batch at once
    for step in range(steps):
        loss = _loss(model, stream[step * batch:(step + 1) * batch], objective, vocab, g_data)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        held = float(_loss(model, x_eval.to(device), objective, vocab, torch.Generator().manual_seed(30_000 + seed)))
    p = chain[x_eval[:, :-2], x_eval[:, 1:-1], x_eval[:, 2:]]
    return {"loss": held, "floor": float(-p.clamp_min(1e-300).log().mean())}


def compare_arms(arms: dict, *, seeds, **options) -> dict:
    """``{name: [held-out loss per seed]}`` for ``arms = {name: (attention, direction, objective)}``.

    Every arm runs on the same seeds (same chain, data and initial weights per seed): the lists are paired.
    ``options`` go to :func:`train_toy_lm`.
    """
    seeds = [check_int("seed", s, min_value=0) for s in seeds]
    if not seeds or not arms:
        raise ValueError("need at least one arm and one seed")
    out = {}
    for name, spec in arms.items():
        if not (isinstance(spec, tuple) and len(spec) == 3):
            raise ValueError(f"arm {name!r} must be (attention, direction, objective), got {spec!r}")
        att, direc, obj = spec
        out[name] = [train_toy_lm(attention=att, direction=direc, objective=obj, seed=s, **options)["loss"]
                     for s in seeds]
    return out


__all__ += ["compare_arms"]
