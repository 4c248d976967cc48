r"""The cost of a BERT-style Transformer layer: a multiplication count, and the real modules it describes.

Article: 线性Transformer应该不是你要等的那个模型, https://kexue.fm/archives/8610 (2021-08-09).
Architecture: Devlin et al., BERT, arXiv:1810.04805 (post-LN layer, 4x FFN); linear attention:
Katharopoulos et al., arXiv:2006.16236.

Counts are multiplications of the forward pass (a multiply-add is one; ``torch.utils.flop_counter``
counts it as 2 FLOPs). With sequence length ``n``, ``h`` heads of size ``d`` (hidden size ``hd``)
and an FFN ``r`` times wider (``r = 4``):

.. math::

    \text{SA} = \underbrace{3n(hd)^2}_{q,k,v} + \underbrace{2n^2hd}_{QK^\top,\ AV} + \underbrace{n(hd)^2}_{o}
    = 4nh^2d^2 + 2n^2hd, \qquad \text{FFN} = 2rn(hd)^2 = 8nh^2d^2.

Self-attention costs more than the FFN iff :math:`n > (r-2)hd` (``2hd = 1536`` for BERT-base), and
the quadratic term outweighs everything linear iff :math:`n > (r+2)hd` (``6hd = 4608``). Linear
attention with features of size ``m`` and values of size ``d_v`` costs :math:`2nm d_v` per head
(plus :math:`nm` for the normalizer :math:`\phi(Q)\sum_j\phi(k_j)`), against :math:`2n^2 d` for softmax attention.

:class:`BertLayer` is the real layer (attention through :func:`kexue_lib.attention.softmax_attention`,
i.e. SDPA, or through explicit matmuls); :func:`count_flops` runs any callable under
``FlopCounterMode``, adding the formula torch 2.13 lacks for the CPU SDPA kernel
(``aten._scaled_dot_product_flash_attention_for_cpu``), which otherwise counts as 0 FLOPs.
Module parameters follow the usual ``device``/``dtype`` arguments; run on the ``meta`` device to
count article-scale layers without computing them.
"""
from __future__ import annotations

import time

import sympy
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import flop_counter

from ._validate import check_int, check_tensor
from .attention import attention_weights, softmax_attention

__all__ = [
    "layer_mults",
    "layer_mults_symbolic",
    "crossover_lengths",
    "linear_attention_mults",
    "BertLayer",
    "count_flops",
    "wall_time",
]


def layer_mults_symbolic(ffn_mult=4) -> dict[str, sympy.Expr]:
    """The per-part multiplication counts as sympy expressions in the symbols ``n, h, d``."""
    n, h, d = sympy.symbols("n h d", positive=True)
    hidden = h * d
    parts = {
        "qkv": 3 * n * hidden**2,
        "scores": h * n * n * d,  # Q K^T, one (n x d)(d x n) product per head
        "values": h * n * n * d,  # A V
        "out": n * hidden**2,
        "ffn": 2 * ffn_mult * n * hidden**2,
    }
    parts["attention"] = parts["qkv"] + parts["scores"] + parts["values"] + parts["out"]
    parts["total"] = parts["attention"] + parts["ffn"]
    return parts


def layer_mults(n: int, heads: int, head_size: int, ffn_mult: int = 4) -> dict[str, int]:
    """Integer multiplication counts of one layer (keys as in :func:`layer_mults_symbolic`).

    >>> layer_mults(512, 12, 64)["ffn"]
    2415919104
    """
    n = check_int("n", n, min_value=1)
    heads = check_int("heads", heads, min_value=1)
    head_size = check_int("head_size", head_size, min_value=1)
    ffn_mult = check_int("ffn_mult", ffn_mult, min_value=1)
    hidden = heads * head_size
    parts = {
        "qkv": 3 * n * hidden**2,
        "scores": heads * n * n * head_size,
        "values": heads * n * n * head_size,
        "out": n * hidden**2,
        "ffn": 2 * ffn_mult * n * hidden**2,
    }
    parts["attention"] = parts["qkv"] + parts["scores"] + parts["values"] + parts["out"]
    parts["total"] = parts["attention"] + parts["ffn"]
    return parts


def crossover_lengths(heads: int, head_size: int, ffn_mult: int = 4) -> dict[str, int]:
    """``{'sa_gt_ffn': (r-2)hd, 'quadratic_dominates': (r+2)hd}``: attention beats the FFN past the
    first length; the ``n^2`` term beats every linear term past the second.

    >>> crossover_lengths(12, 64)
    {'sa_gt_ffn': 1536, 'quadratic_dominates': 4608}
    """
    heads = check_int("heads", heads, min_value=1)
    head_size = check_int("head_size", head_size, min_value=1)
    ffn_mult = check_int("ffn_mult", ffn_mult, min_value=3)
    hidden = heads * head_size
    return {"sa_gt_ffn": (ffn_mult - 2) * hidden, "quadratic_dominates": (ffn_mult + 2) * hidden}


def linear_attention_mults(n: int, head_size: int, feature_dim: int | None = None, value_dim: int | None = None,
                           *, normalizer: bool = False) -> int:
    """Multiplications of bidirectional linear attention for one head: ``phi(K)^T V`` and
    ``phi(Q) (phi(K)^T V)``, ``2 n m d_v``; with ``normalizer=True`` also ``phi(Q) sum_j phi(k_j)``, ``n m``.

    ``feature_dim`` (``m``) and ``value_dim`` (``d_v``) default to ``head_size``.
    """
    n = check_int("n", n, min_value=1)
    head_size = check_int("head_size", head_size, min_value=1)
    m = head_size if feature_dim is None else check_int("feature_dim", feature_dim, min_value=1)
    dv = head_size if value_dim is None else check_int("value_dim", value_dim, min_value=1)
    return 2 * n * m * dv + (n * m if normalizer else 0)


class BertLayer(nn.Module):
    """A post-LN BERT layer: ``x + SA(x) -> LN -> + FFN -> LN`` on ``(batch, seq, hidden)`` inputs.

    ``attention="sdpa"`` uses :func:`softmax_attention`; ``"matmul"`` builds the attention matrix
    explicitly (same result, countable by ``FlopCounterMode`` on any device).
    """

    def __init__(self, *, heads: int = 12, head_size: int = 64, ffn_mult: int = 4, attention: str = "sdpa",
                 device=None, dtype=None):
        super().__init__()
        self.heads = check_int("heads", heads, min_value=1)
        self.head_size = check_int("head_size", head_size, min_value=1)
        ffn_mult = check_int("ffn_mult", ffn_mult, min_value=1)
        if attention not in ("sdpa", "matmul"):
            raise ValueError(f"attention must be 'sdpa' or 'matmul', got {attention!r}")
        self.attention = attention
        hidden = self.heads * self.head_size
        kw = {"device": device, "dtype": dtype}
        self.qkv = nn.Linear(hidden, 3 * hidden, **kw)
        self.out = nn.Linear(hidden, hidden, **kw)
        self.ffn_in = nn.Linear(hidden, ffn_mult * hidden, **kw)
        self.ffn_out = nn.Linear(ffn_mult * hidden, hidden, **kw)
        self.ln1 = nn.LayerNorm(hidden, **kw)
        self.ln2 = nn.LayerNorm(hidden, **kw)

    def _check(self, x):
        check_tensor("x", x, ndim=3, floating=True)
        if x.shape[-1] != self.heads * self.head_size:
            raise ValueError(f"x must be (batch, seq, {self.heads * self.head_size}), got {tuple(x.shape)}")

    def self_attention(self, x: torch.Tensor) -> torch.Tensor:
        """The attention sublayer without residual and norm: ``(batch, seq, hidden)``."""
        self._check(x)
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_size).permute(2, 0, 3, 1, 4)  # 3 x (b, h, n, d)
        if self.attention == "sdpa":
            o = softmax_attention(q, k, v)
        else:
            o = attention_weights(q, k) @ v
        return self.out(o.transpose(1, 2).reshape(b, n, -1))

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The FFN sublayer without residual and norm."""
        self._check(x)
        return self.ffn_out(F.gelu(self.ffn_in(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln1(x + self.self_attention(x))
        return self.ln2(x + self.feed_forward(x))


_CPU_SDPA = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def _cpu_sdpa_flops(*args, out_val=None, **kwargs) -> int:
    """torch's SDPA formula (2 bmm: ``Q K^T`` and ``A V``) for the CPU kernel's arguments."""
    return flop_counter.sdpa_flop(*args, out_val=out_val, **kwargs)  # already takes raw tensors


_cpu_sdpa_flops._get_raw = True  # tell FlopCounterMode not to wrap it a second time


def count_flops(fn, *args, cpu_sdpa: bool = True, **kwargs) -> int:
    """Total FLOPs ``FlopCounterMode`` records while ``fn(*args, **kwargs)`` runs (2 per multiply-add).

    ``cpu_sdpa=True`` maps the CPU SDPA kernel to torch's own SDPA formula; ``False`` shows what
    torch counts by itself (nothing, for that kernel).
    """
    if not callable(fn):
        raise ValueError(f"fn must be callable, got {type(fn).__name__}")
    mapping = {_CPU_SDPA: _cpu_sdpa_flops} if cpu_sdpa else None
    with torch.no_grad(), flop_counter.FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn(*args, **kwargs)
    return counter.get_total_flops()


def wall_time(fn, *args, repeat: int = 7, warmup: int = 1) -> float:
    """Best (minimum) wall time in seconds of ``fn(*args)`` over ``repeat`` runs under ``torch.no_grad``.

    The minimum, not the mean: on a shared machine interference only ever adds time. CUDA is
    synchronised around each run.
    """
    repeat = check_int("repeat", repeat, min_value=1)
    warmup = check_int("warmup", warmup, min_value=0)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    times = []
    with torch.no_grad():
        for i in range(warmup + repeat):
            sync()
            start = time.perf_counter()
            fn(*args)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return min(times)
