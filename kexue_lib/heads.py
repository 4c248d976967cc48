r"""Tied and untied output heads of a language model, and their loss at initialisation.

Article: 语言模型输出端共享Embedding的重新探索 (https://kexue.fm/archives/9698). Paper discussed:
H. W. Chung et al., *Rethinking embedding coupling in pre-trained language models*, arXiv:2010.12821.

A tied head reuses the input embedding :math:`W\in\mathbb R^{n\times d}` (rows :math:`w_k`, i.i.d. entries of
standard deviation :math:`\sigma`) as the output projection. With residual branches near zero at
initialisation the model is a 2-gram: token :math:`i` gives the hidden :math:`h=\mathrm{Norm}(w_i)\approx w_i/\sigma`
and logits :math:`z_k=h\cdot w_k`. The self logit :math:`z_i=\sqrt d\,\|w_i\|\approx d\sigma` dominates, so

.. math:: -\log p(j\mid i)\approx\log\left(e^{d\sigma}+n-1\right)\qquad(j\ne i),

far above the uniform :math:`\log n` when :math:`\sigma=1/\sqrt d`. The remedies (``HEADS``):

* ``"tied"`` with the small initialisation :math:`\sigma=(\log n)/d` (:func:`tied_init_std`);
* ``"untied"``: a separate output matrix :math:`V`;
* ``"tied_proj"``: an orthogonally initialised :math:`d\times d` projection after the final norm (BERT's head),
  optionally with a bias;
* ``"tied_swap"``: the parameter-free swap of halves :math:`\mathcal S[h]=h[d/2:]\circ h[:d/2]` (:func:`swap_halves`);
* ``"tied_shuffle"``: ShuffleNet's reshape-transpose-reshape channel shuffle (:func:`channel_shuffle`).

Beyond the article (:func:`predicted_initial_loss` with ``refined=True``): given :math:`w_i`, the other logits
are exactly :math:`\mathcal N(0,d\sigma^2)`, so the :math:`n-1` non-self terms sum to :math:`(n-1)e^{d\sigma^2/2}`,
not :math:`n-1`; the untied loss is :math:`\log n+d\sigma^2/2`, and the tied one
:math:`\mathbb E_{q\sim\chi^2_d}\log\big(e^{\sigma\sqrt{dq}}+(n-1)e^{d\sigma^2/2}\big)`.

Everything follows the dtype and device of its inputs; the norms have no epsilon, so the logits are exactly
linear in the weights' scale (:func:`initial_loss_samples` uses this to serve several :math:`\sigma` at once).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ._validate import check_int, check_real, check_tensor

__all__ = ["HEADS", "NORMS", "rms_norm", "layer_norm", "swap_halves", "channel_shuffle", "tied_init_std",
           "predicted_initial_loss", "head_logits", "initial_loss_samples", "LMHead", "BigramLM"]

HEADS = ("tied", "untied", "tied_proj", "tied_swap", "tied_shuffle")
NORMS = ("rms", "layer")


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """:math:`x/\\sqrt{\\mathrm{mean}(x^2)}` over the last axis (no gain, no epsilon: exactly scale-free)."""
    x = check_tensor("x", x, floating=True)
    return x * x.pow(2).mean(-1, keepdim=True).rsqrt()  # (..., d)


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    """Centre, then :func:`rms_norm` (LayerNorm without gain, bias or epsilon)."""
    x = check_tensor("x", x, floating=True)
    return rms_norm(x - x.mean(-1, keepdim=True))  # (..., d)


def _norm(x, norm):
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return rms_norm(x) if norm == "rms" else layer_norm(x)


def swap_halves(x: torch.Tensor) -> torch.Tensor:
    """:math:`\\mathcal S[x]=x[d/2:]\\circ x[:d/2]` on the last axis (``d`` must be even)."""
    x = check_tensor("x", x)
    d = x.shape[-1]
    if d % 2:
        raise ValueError(f"swap_halves needs an even last dimension, got {d}")
    return torch.cat([x[..., d // 2:], x[..., : d // 2]], dim=-1)  # (..., d)


def channel_shuffle(x: torch.Tensor, *, groups: int = 2) -> torch.Tensor:
    """ShuffleNet's shuffle: view the last axis as ``(groups, d // groups)``, transpose, flatten."""
    x = check_tensor("x", x)
    groups = check_int("groups", groups, min_value=2)
    d = x.shape[-1]
    if d % groups:
        raise ValueError(f"the last dimension ({d}) must be divisible by groups ({groups})")
    return x.unflatten(-1, (groups, d // groups)).transpose(-1, -2).flatten(-2)  # (..., d)


def tied_init_std(*, vocab: int, d_model: int) -> float:
    """The article's first remedy: :math:`\\sigma=(\\log n)/d`, which makes :math:`e^{d\\sigma}=n`."""
    vocab, d_model = check_int("vocab", vocab, min_value=2), check_int("d_model", d_model, min_value=1)
    return math.log(vocab) / d_model


def predicted_initial_loss(*, vocab: int, d_model: int, sigma: float, head: str = "tied",
                           refined: bool = False) -> float:
    """Initial loss (nats) of the 2-gram with the given head, target :math:`j\\ne i`.

    ``refined=False``: the article, :math:`\\log(e^{d\\sigma}+n-1)` for ``"tied"`` and :math:`\\log n` for every
    other head. ``refined=True``: the lognormal factor :math:`e^{d\\sigma^2/2}` on the non-self terms, and the
    spread of :math:`\\|w_i\\|` integrated over its :math:`\\chi_d` law (float64 quadrature); the other heads give
    :math:`\\log n+d\\sigma^2/2` (their self term is one more lognormal, negligible for large ``n``).
    """
    vocab, d = check_int("vocab", vocab, min_value=2), check_int("d_model", d_model, min_value=2)
    sigma = check_real("sigma", sigma, low=0.0, low_open=True)
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if not refined:
        if head != "tied":
            return math.log(vocab)
        return d * sigma + math.log1p((vocab - 1) * math.exp(-d * sigma))  # log(e^{d sigma} + n - 1), stable
    rest = math.log(vocab - 1) + d * sigma ** 2 / 2
    if head != "tied":
        return math.log(vocab) + d * sigma ** 2 / 2
    half = 14.0 * math.sqrt(2.0 * d)  # chi^2_d: mean d, sd sqrt(2d)
    q = torch.linspace(max(d - half, 0.0), d + half, 40001, dtype=torch.float64)  # (grid,)
    logpdf = (d / 2 - 1) * q.clamp_min(1e-300).log() - q / 2
    w = torch.exp(logpdf - logpdf.max())
    f = torch.logaddexp(sigma * (d * q).sqrt(), torch.tensor(rest, dtype=torch.float64))
    return float(torch.trapezoid(w * f, q) / torch.trapezoid(w, q))


def head_logits(h: torch.Tensor, weight: torch.Tensor, *, head: str = "tied", out_weight=None, proj=None,
                bias=None) -> torch.Tensor:
    """Logits ``(..., n)`` from the normalised hidden ``h (..., d)`` and the embedding ``weight (n, d)``.

    ``"untied"`` uses ``out_weight (n, d)``; ``"tied_proj"`` multiplies by ``proj (d, d)`` (and adds ``bias (d,)``)
    first; ``"tied_swap"`` / ``"tied_shuffle"`` permute the features of ``h`` first.
    """
    h, weight = check_tensor("h", h, floating=True), check_tensor("weight", weight, ndim=2, floating=True)
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if h.shape[-1] != weight.shape[1]:
        raise ValueError(f"h has {h.shape[-1]} features, the embedding {weight.shape[1]}")
    if (head == "untied") != (out_weight is not None) or (head == "tied_proj") != (proj is not None):
        raise ValueError("out_weight is needed by (and only by) 'untied', proj by (and only by) 'tied_proj'")
    if head == "untied":
        return h @ check_tensor("out_weight", out_weight, ndim=2).T  # (..., n)
    if head == "tied_proj":
        h = h @ proj  # (..., d)
        if bias is not None:
            h = h + bias
    elif head == "tied_swap":
        h = swap_halves(h)
    elif head == "tied_shuffle":
        h = channel_shuffle(h)
    return h @ weight.T  # (..., n)


def initial_loss_samples(weight: torch.Tensor, *, rows: int, sigmas=(1.0,), head: str = "tied", out_weight=None,
                         proj=None, norm: str = "rms", chunk: int = 128) -> torch.Tensor:
    """Per-token initial losses ``(len(sigmas), rows)`` of the 2-gram built from unit-scale weights.

    Row ``r`` is input token ``r`` (rows are i.i.d., so the first ``rows`` serve); its loss is averaged over every
    target :math:`j\\ne r` (the article's "the next token is not the current one"), which removes the target's
    own noise. The weights are drawn with unit scale: as the norm is scale-free, scale :math:`\\sigma` multiplies
    every logit by :math:`\\sigma`, so one product serves all ``sigmas``.
    """
    weight = check_tensor("weight", weight, ndim=2, floating=True)
    n = weight.shape[0]
    rows, chunk = check_int("rows", rows, min_value=1, max_value=n), check_int("chunk", chunk, min_value=1)
    s = torch.tensor([check_real("sigma", x, low=0.0, low_open=True) for x in sigmas], dtype=weight.dtype,
                     device=weight.device)  # (S,)
    out = []
    for a in range(0, rows, chunk):
        idx = torch.arange(a, min(a + chunk, rows), device=weight.device)  # (c,)
        z = head_logits(_norm(weight[idx], norm), weight, head=head, out_weight=out_weight, proj=proj)  # (c, n)
        zs = s[:, None, None] * z  # (S, c, n)
        own = zs[:, torch.arange(len(idx)), idx]  # (S, c): the logit of token i itself
        target = (zs.sum(-1) - own) / (n - 1)  # (S, c): mean logit over j != i
        out.append(torch.logsumexp(zs, dim=-1) - target)
    return torch.cat(out, dim=1)  # (S, rows)


class LMHead(nn.Module):
    """Final norm (with a learnable gain) and one of the ``HEADS`` on top of ``embedding``.

    ``init_std`` initialises the untied output matrix (default: the embedding's own std); the projection of
    ``"tied_proj"`` starts orthogonal, its optional bias (``proj_bias=True``) at zero.
    """

    def __init__(self, embedding: nn.Embedding, *, head: str = "tied", norm: str = "rms", init_std=None,
                 proj_bias: bool = False):
        super().__init__()
        if not isinstance(embedding, nn.Embedding):
            raise ValueError(f"embedding must be an nn.Embedding, got {type(embedding).__name__}")
        if head not in HEADS or norm not in NORMS:
            raise ValueError(f"head in {HEADS} and norm in {NORMS}, got {head!r}, {norm!r}")
        n, d = embedding.weight.shape
        if head in ("tied_swap", "tied_shuffle") and d % 2:
            raise ValueError(f"{head} needs an even d_model, got {d}")
        self.embedding, self.head, self.norm = embedding, head, norm
        kw = dict(device=embedding.weight.device, dtype=embedding.weight.dtype)
        self.gain = nn.Parameter(torch.ones(d, **kw))
        self.out_weight = self.proj = self.bias = None
        if head == "untied":
            std = float(embedding.weight.detach().std()) if init_std is None else check_real("init_std", init_std, low=0.0)
            self.out_weight = nn.Parameter(torch.randn(n, d, **kw) * std)
        if head == "tied_proj":
            self.proj = nn.Parameter(nn.init.orthogonal_(torch.empty(d, d, **kw)))
            if proj_bias:
                self.bias = nn.Parameter(torch.zeros(d, **kw))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., d) -> (..., n)
        h = _norm(x, self.norm) * self.gain
        return head_logits(h, self.embedding.weight, head=self.head, out_weight=self.out_weight, proj=self.proj,
                           bias=self.bias)


class BigramLM(nn.Module):
    """Embedding, ``layers`` pre-RMSNorm residual MLP blocks whose output layers start at zero (the article's
    near-zero residual branches), and an :class:`LMHead`. ``forward(tokens (...)) -> logits (..., n)``: a model of
    the next token given the current one, at initialisation exactly the 2-gram of the article."""

    def __init__(self, *, vocab: int, d_model: int, head: str = "tied", init_std=None, layers: int = 1,
                 hidden=None, proj_bias: bool = False):
        super().__init__()
        vocab, d_model = check_int("vocab", vocab, min_value=2), check_int("d_model", d_model, min_value=2)
        layers = check_int("layers", layers, min_value=0)
        hidden = 4 * d_model if hidden is None else check_int("hidden", hidden, min_value=1)
        std = d_model ** -0.5 if init_std is None else check_real("init_std", init_std, low=0.0, low_open=True)
        self.embed = nn.Embedding(vocab, d_model)
        nn.init.normal_(self.embed.weight, std=std)
        self.blocks = nn.ModuleList()
        for _ in range(layers):
            mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model))
            nn.init.zeros_(mlp[2].weight)
            nn.init.zeros_(mlp[2].bias)
            self.blocks.append(mlp)
        self.head = LMHead(self.embed, head=head, init_std=d_model ** -0.5 if head == "untied" else None,
                           proj_bias=proj_bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)  # (..., d)
        for mlp in self.blocks:
            x = x + mlp(rms_norm(x))
        return self.head(x)  # (..., n)
