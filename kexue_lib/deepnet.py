r"""DeepNorm and the depth scaling of residual networks.

Articles: 训练1000层的Transformer究竟有什么困难？ (https://kexue.fm/archives/8978) and
为什么需要残差？一个来自DeepNet的视角 (https://kexue.fm/archives/8994). Paper: H. Wang et al., *DeepNet: Scaling
Transformers to 1,000 Layers*, arXiv:2203.00555.

* DeepNorm residual: :math:`x_{l+1}=\mathrm{LN}(\alpha x_l+F(x_l))` (:func:`deepnorm_residual`). Not
  :math:`\mathrm{LN}(x_l+\alpha F(x_l))`, which a popular implementation computes; the two differ for any
  :math:`\alpha\neq1`.
* Initialization: Xavier with gain :math:`\beta` on the value, output and FFN weights, gain 1 on the query and
  key weights (:func:`deepnorm_init_`).
* The paper's constants (:func:`deepnorm_coefficients`, ``optimizer="paper"``), N encoder and M decoder layers:
  encoder-only :math:`\alpha=(2N)^{1/4},\ \beta=(8N)^{-1/4}`; decoder-only :math:`(2M)^{1/4},\ (8M)^{-1/4}`;
  encoder-decoder: encoder :math:`0.81(N^4M)^{1/16},\ 0.87(N^4M)^{-1/16}`, decoder :math:`(3M)^{1/4},\ (12M)^{-1/4}`.
* The article's per-optimizer table for one stack of N layers (2N sublayers), with :math:`\lambda=\beta`:
  SGD :math:`\alpha=(2N)^{1/4},\lambda=(2N)^{-1/4}`; Adam :math:`(2N)^{1/2},(2N)^{-1/2}`; LAMB :math:`1,(2N)^{-1/2}`.
* Magnitude probe (:func:`magnitude_decompose`): :math:`W=\lambda U` with
  :math:`\lambda=\arg\min_\kappa\|WW^\top/\kappa^2-I\|_F`, in closed form :math:`\lambda^2=\mathrm{tr}(M^2)/\mathrm{tr}(M)`,
  :math:`M=WW^\top`.
* :class:`TransformerBlock` (``norm="post" | "pre" | "deepnorm"``) and :class:`TransformerStack` (a tiny LM or a
  hidden-state stack); :class:`MLPStack`, a deep MLP with or without the scaled residual
  :math:`y=x+\varepsilon f(x)` of article 8994.

Everything follows the device and dtype of its inputs or parameters.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._validate import check_int, check_real, check_tensor

__all__ = ["OPTIMIZERS", "NORMS", "deepnorm_coefficients", "deepnorm_residual", "deepnorm_init_",
           "magnitude_decompose", "TransformerBlock", "TransformerStack", "MLPStack"]

OPTIMIZERS = ("paper", "sgd", "adam", "lamb")
NORMS = ("post", "pre", "deepnorm")
_BETA_NAMES = ("v_proj", "o_proj", "fc1", "fc2")


def deepnorm_coefficients(n_enc: int = 0, n_dec: int = 0, *, optimizer: str = "paper") -> dict:
    """``{"enc_alpha", "enc_beta", "dec_alpha", "dec_beta"}`` for ``n_enc`` encoder and ``n_dec`` decoder layers.

    ``optimizer="paper"``: the DeepNet paper's constants (encoder-only, decoder-only or encoder-decoder).
    ``"sgd" | "adam" | "lamb"``: the article's table, for a single stack (encoder-only or decoder-only).
    The entries of an absent stack are ``None``.
    """
    n_enc = check_int("n_enc", n_enc, min_value=0)
    n_dec = check_int("n_dec", n_dec, min_value=0)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if n_enc == 0 and n_dec == 0:
        raise ValueError("need at least one layer: n_enc or n_dec must be >= 1")
    out = {"enc_alpha": None, "enc_beta": None, "dec_alpha": None, "dec_beta": None}
    if optimizer == "paper":
        if n_enc and n_dec:
            n, m = n_enc, n_dec
            out.update(enc_alpha=0.81 * (n**4 * m) ** (1 / 16), enc_beta=0.87 * (n**4 * m) ** (-1 / 16),
                       dec_alpha=(3 * m) ** 0.25, dec_beta=(12 * m) ** -0.25)
        elif n_enc:
            out.update(enc_alpha=(2 * n_enc) ** 0.25, enc_beta=(8 * n_enc) ** -0.25)
        else:
            out.update(dec_alpha=(2 * n_dec) ** 0.25, dec_beta=(8 * n_dec) ** -0.25)
        return out
    if n_enc and n_dec:
        raise ValueError(f"the article's {optimizer!r} row treats one stack; give n_enc or n_dec, not both")
    two_n = 2 * (n_enc or n_dec)
    alpha, lam = {"sgd": (two_n**0.25, two_n**-0.25), "adam": (two_n**0.5, two_n**-0.5),
                  "lamb": (1.0, two_n**-0.5)}[optimizer]
    side = "enc" if n_enc else "dec"
    out.update({f"{side}_alpha": alpha, f"{side}_beta": lam})
    return out


def deepnorm_residual(x: torch.Tensor, fx: torch.Tensor, *, alpha: float, norm=None) -> torch.Tensor:
    """``norm(alpha * x + fx)``; ``norm`` defaults to a LayerNorm over the last axis without affine weights."""
    check_tensor("x", x, floating=True)
    check_tensor("fx", fx, floating=True)
    if x.shape != fx.shape:
        raise ValueError(f"x and fx must have the same shape, got {tuple(x.shape)} and {tuple(fx.shape)}")
    alpha = check_real("alpha", alpha, low=0.0, low_open=True)
    z = alpha * x + fx  # (..., d)
    return norm(z) if norm is not None else F.layer_norm(z, z.shape[-1:])


def deepnorm_init_(module: nn.Module, *, beta: float, names=_BETA_NAMES) -> None:
    """Xavier-normal init of every ``nn.Linear`` in ``module``: gain ``beta`` if its name ends in one of
    ``names`` (value, output, FFN), gain 1 otherwise; biases zero. In place."""
    beta = check_real("beta", beta, low=0.0, low_open=True)
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear):
            gain = beta if name.split(".")[-1] in names else 1.0
            nn.init.xavier_normal_(sub.weight, gain=gain)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)


def magnitude_decompose(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lam, U)`` with ``w = lam * U`` and ``lam = argmin_k ||w w^T / k^2 - I||_F`` (a 0-dim tensor).

    Closed form: with ``t = 1/k^2`` the objective ``t^2 tr(M^2) - 2 t tr(M) + n`` is least at
    ``t = tr(M)/tr(M^2)``, so ``lam^2 = tr(M^2)/tr(M)``, ``M = w w^T``. Differentiable.
    """
    check_tensor("w", w, ndim=2, floating=True)
    m = w @ w.transpose(0, 1)  # (n, n)
    tr_m = torch.diagonal(m).sum()
    if not tr_m > 0:
        raise ValueError("w must not be the zero matrix")
    lam = torch.sqrt((m * m).sum() / tr_m)
    return lam, w / lam


class TransformerBlock(nn.Module):
    """One block, attention then FFN (ReLU), with a residual switch:

    ``"post"``: ``x = LN(x + F(x))``; ``"deepnorm"``: ``x = LN(alpha x + F(x))``; ``"pre"``: ``x = x + F(LN(x))``.
    Linear layers are named ``q_proj, k_proj, v_proj, o_proj, fc1, fc2`` (what :func:`deepnorm_init_` scales).
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, *, norm: str = "post", alpha: float = 1.0,
                 causal: bool = True):
        super().__init__()
        d_model, n_heads = check_int("d_model", d_model, min_value=1), check_int("n_heads", n_heads, min_value=1)
        d_ff = check_int("d_ff", d_ff, min_value=1)
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        alpha = check_real("alpha", alpha, low=0.0, low_open=True)
        if norm != "deepnorm" and alpha != 1.0:
            raise ValueError(f"alpha={alpha} needs norm='deepnorm' (norm={norm!r} has alpha 1)")
        self.norm, self.alpha, self.h, self.causal = norm, alpha, n_heads, bool(causal)
        self.q_proj, self.k_proj = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
        self.v_proj, self.o_proj = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
        self.fc1, self.fc2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)

    def attn(self, x: torch.Tensor) -> torch.Tensor:  # x: (b, n, d) -> (b, n, d)
        b, n, d = x.shape
        q, k, v = (p(x).view(b, n, self.h, d // self.h).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))  # (b, h, n, d/h)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (b, h, n, d/h)
        return self.o_proj(o.transpose(1, 2).reshape(b, n, d))

    def ffn(self, x: torch.Tensor) -> torch.Tensor:  # (b, n, d) -> (b, n, d)
        return self.fc2(F.relu(self.fc1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm == "pre":
            x = x + self.attn(self.ln1(x))
            return x + self.ffn(self.ln2(x))
        x = deepnorm_residual(x, self.attn(x), alpha=self.alpha, norm=self.ln1)
        return deepnorm_residual(x, self.ffn(x), alpha=self.alpha, norm=self.ln2)


class TransformerStack(nn.Module):
    """``n_layers`` :class:`TransformerBlock`s, initialized for their ``norm``.

    ``"deepnorm"`` takes ``alpha`` and ``beta`` from :func:`deepnorm_coefficients` (decoder-only, ``optimizer``)
    unless both are given; ``"post"`` and ``"pre"`` use Xavier gain 1 (``"pre"`` adds a final LayerNorm).
    With ``vocab`` set, ``forward(tokens (b, n)) -> logits (b, n, vocab)`` (token and learned position
    embeddings, a linear read-out); without, ``forward(x (b, n, d_model)) -> (b, n, d_model)``.
    """

    def __init__(self, n_layers: int, d_model: int, n_heads: int, d_ff: int, *, norm: str = "post",
                 optimizer: str = "paper", alpha: float | None = None, beta: float | None = None,
                 vocab: int | None = None, max_len: int = 64, causal: bool = True):
        super().__init__()
        n_layers = check_int("n_layers", n_layers, min_value=1)
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if norm == "deepnorm":
            c = deepnorm_coefficients(n_dec=n_layers, optimizer=optimizer)
            alpha = c["dec_alpha"] if alpha is None else alpha
            beta = c["dec_beta"] if beta is None else beta
        elif alpha is not None or beta is not None:
            raise ValueError(f"alpha and beta need norm='deepnorm', got norm={norm!r}")
        self.alpha, self.beta = (alpha or 1.0), (beta or 1.0)
        self.blocks = nn.ModuleList(TransformerBlock(d_model, n_heads, d_ff, norm=norm, alpha=self.alpha,
                                                     causal=causal) for _ in range(n_layers))
        for blk in self.blocks:
            deepnorm_init_(blk, beta=self.beta)
        self.final_ln = nn.LayerNorm(d_model) if norm == "pre" else nn.Identity()
        self.vocab = None if vocab is None else check_int("vocab", vocab, min_value=2)
        if self.vocab is not None:
            max_len = check_int("max_len", max_len, min_value=1)
            self.tok = nn.Embedding(self.vocab, d_model)
            self.pos = nn.Parameter(0.02 * torch.randn(max_len, d_model))
            self.head = nn.Linear(d_model, self.vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.vocab is not None:
            if x.ndim != 2 or x.shape[1] > self.pos.shape[0]:
                raise ValueError(f"tokens must be (batch, n) with n <= {self.pos.shape[0]}, got {tuple(x.shape)}")
            x = self.tok(x) + self.pos[: x.shape[1]]  # (b, n, d)
        elif x.ndim != 3:
            raise ValueError(f"x must be (batch, n, d_model), got shape {tuple(x.shape)}")
        for blk in self.blocks:
            x = blk(x)
        x = self.final_ln(x)
        return self.head(x) if self.vocab is not None else x


class MLPStack(nn.Module):
    """``depth`` layers of width ``dim`` (article 8994): plain ``x = relu(x W + b)`` (He init, stable forward),
    or residual ``x = x + eps * (relu(x W1) W2)`` with ``eps = 1/sqrt(depth)`` unless given (He init on ``W1``,
    variance ``1/dim`` on ``W2``, so that the branch keeps the second moment). Then a linear
    read-out to ``out_dim``. ``forward(x (b, dim)) -> (b, out_dim)``."""

    def __init__(self, dim: int, depth: int, *, out_dim: int = 1, residual: bool = False, eps: float | None = None):
        super().__init__()
        dim, depth = check_int("dim", dim, min_value=1), check_int("depth", depth, min_value=1)
        out_dim = check_int("out_dim", out_dim, min_value=1)
        if eps is not None and not residual:
            raise ValueError("eps needs residual=True")
        self.residual = bool(residual)
        self.eps = (check_real("eps", eps, low=0.0) if eps is not None else 1 / math.sqrt(depth)) if residual else None
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim)) if residual else nn.Linear(dim, dim)
            for _ in range(depth))
        for layer in self.layers:  # He init before a ReLU; variance 1/dim on the branch's output layer
            for i, mod in enumerate(layer if residual else [layer]):
                if isinstance(mod, nn.Linear):
                    nn.init.kaiming_normal_(mod.weight, nonlinearity="linear" if i == 2 else "relu")
                    nn.init.zeros_(mod.bias)
        self.head = nn.Linear(dim, out_dim)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden state, before the read-out: ``(b, dim) -> (b, dim)``."""
        check_tensor("x", x, ndim=2, floating=True)
        for layer in self.layers:
            x = x + self.eps * layer(x) if self.residual else F.relu(layer(x))  # (b, dim)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(x))
