"""The contract of a check: every claim in the book is an assertion that can fail.

A chapter registers its claims, then checks them::

    from kexue_lib import verify
    verify.claim("C1", "Four ducks lie in one semicircle with probability 1/2")
    verify.symbolic("C1", 4 * sympy.Rational(1, 2) ** 3, sympy.Rational(1, 2))
    verify.monte_carlo("C1", hits, expected=0.5, rivals={"3/8": 0.375})
    verify.summary()

Four kinds of check, each printing one line a person can read and recording itself:

* :func:`symbolic` proves ``lhs == rhs`` with sympy (``simplify(lhs - rhs) == 0``).
* :func:`numeric` asserts deterministic numerical agreement within ``rtol``/``atol``.
* :func:`monte_carlo` takes samples (or an estimate and its standard error) and passes when
  the exact value lies within ``z`` standard errors *and* every rival (a plausible wrong
  answer) lies outside; a rival that is not rejected fails the check, because then the
  sample could not tell the right answer from the wrong one.
* :func:`figure` records that a figure illustrates a claim (it checks nothing by itself).

A failed check raises ``AssertionError`` naming the claim and what failed; a malformed call
(an unknown claim, a Monte Carlo check without rivals, a non-positive tolerance) raises
``ValueError``. :func:`summary` returns the table of claims, checks and verdicts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import sympy

__all__ = ["claim", "symbolic", "numeric", "monte_carlo", "figure", "summary", "reset", "records", "roundoff"]


@dataclass
class Claim:
    cid: str
    statement: str
    refutes: bool = False
    checks: list = field(default_factory=list)


class Estimate(NamedTuple):
    """What :func:`monte_carlo` returns: unpacks as ``est, se = ...``; prints rounded."""

    estimate: float
    stderr: float

    def __repr__(self) -> str:
        return f"Estimate({self.estimate:.5f} +- {self.stderr:.5f})"


@dataclass(frozen=True)
class Check:
    cid: str
    kind: str
    detail: str


_CLAIMS: dict[str, Claim] = {}


def reset() -> None:
    """Forget every claim and check (for tests; a notebook starts with a fresh kernel)."""
    _CLAIMS.clear()


def records() -> list[Claim]:
    """The registered claims with their checks, in registration order."""
    return list(_CLAIMS.values())


def claim(cid: str, statement: str, *, refutes: bool = False) -> None:
    """Register claim ``cid`` (e.g. ``"C3"``).

    ``refutes=True`` marks a statement that the checks show to be *false* (an erratum): its
    checks assert the counter-evidence, and the summary's verdict reads ``refuted``.
    """
    if not isinstance(cid, str) or not cid.strip():
        raise ValueError(f"claim id must be a non-empty string, got {cid!r}")
    if cid in _CLAIMS:
        raise ValueError(f"claim {cid!r} is already registered")
    _CLAIMS[cid] = Claim(cid, statement, refutes)


def roundoff(value: float, bound: float = 1e-10) -> str:
    """A round-off size for a detail line, printed so that it reads the same on every machine.

    Differences at the level of rounding depend on the CPU's vector instructions and thread count, and
    nbval compares printed outputs exactly: below ``bound`` this gives ``"< 1e-10"``, above it the value.
    """
    value = abs(float(value))
    if not (math.isfinite(bound) and bound > 0):
        raise ValueError(f"bound must be a positive finite number, got {bound!r}")
    return f"< {bound:.0e}" if value < bound else f"{value:.1e}"


def _lookup(cid: str) -> Claim:
    if cid not in _CLAIMS:
        known = ", ".join(_CLAIMS) or "none"
        raise ValueError(f"unknown claim {cid!r}: register it with verify.claim first (known: {known})")
    return _CLAIMS[cid]


def _record(cid: str, kind: str, detail: str) -> None:
    _CLAIMS[cid].checks.append(Check(cid, kind, detail))
    print(f"PASS {cid} [{kind}] {detail}")


def _short(expr, width: int = 70) -> str:
    text = sympy.sstr(expr)
    return text if len(text) <= width else text[: width - 3] + "..."


def _is_zero(diff) -> bool:
    if isinstance(diff, sympy.MatrixBase):
        return all(_is_zero(e) for e in diff)
    diff = sympy.sympify(diff)
    if diff == 0:
        return True
    for transform in (sympy.expand, sympy.simplify, lambda e: sympy.simplify(sympy.expand(e))):
        if transform(diff) == 0:
            return True
    return False


def symbolic(cid: str, lhs, rhs=0, *, detail: str | None = None):
    """Prove ``lhs == rhs`` with sympy; return ``lhs``.

    Both sides may be scalars or matrices. The proof is ``simplify(lhs - rhs) == 0`` (with
    ``expand`` tried first); anything sympy cannot reduce to zero fails.
    """
    _lookup(cid)
    lhs = lhs if isinstance(lhs, sympy.MatrixBase) else sympy.sympify(lhs)
    rhs = rhs if isinstance(rhs, sympy.MatrixBase) else sympy.sympify(rhs)
    if isinstance(lhs, sympy.MatrixBase) != isinstance(rhs, sympy.MatrixBase):
        if not (isinstance(rhs, sympy.Expr) and rhs == 0):
            raise ValueError(f"{cid}: cannot compare a matrix with a scalar")
        rhs = sympy.zeros(*lhs.shape)
    if isinstance(lhs, sympy.MatrixBase) and lhs.shape != rhs.shape:
        raise AssertionError(f"{cid}: shapes differ, {lhs.shape} vs {rhs.shape}")
    if not _is_zero(lhs - rhs):
        left = sympy.simplify(lhs - rhs)
        raise AssertionError(f"{cid}: not proven: lhs - rhs simplifies to {_short(left)}, not 0")
    _record(cid, "symbolic", detail or f"{_short(lhs, 40)} == {_short(rhs, 40)}")
    return lhs


def _as_array(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, on any device
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=float)


def numeric(cid: str, value, expected, *, rtol: float = 1e-9, atol: float = 0.0, detail: str | None = None):
    """Assert ``|value - expected| <= atol + rtol * |expected|`` elementwise."""
    _lookup(cid)
    if rtol < 0 or atol < 0 or (rtol == 0 and atol == 0):
        raise ValueError(f"{cid}: need rtol >= 0 and atol >= 0, not both zero (got rtol={rtol}, atol={atol})")
    v, e = _as_array(value), _as_array(expected)
    try:
        v_b, e_b = np.broadcast_arrays(v, e)
    except ValueError as err:
        raise ValueError(f"{cid}: value shape {v.shape} does not match expected shape {e.shape}") from err
    if not np.all(np.isfinite(v_b)):
        raise AssertionError(f"{cid}: value is not finite: {v_b[~np.isfinite(v_b)][:3]}")
    err = np.abs(v_b - e_b)
    bound = atol + rtol * np.abs(e_b)
    if not np.all(err <= bound):
        i = int(np.argmax(err - bound))
        raise AssertionError(
            f"{cid}: {v_b.ravel()[i]:.6g} differs from expected {e_b.ravel()[i]:.6g} "
            f"by {err.ravel()[i]:.3g} > tolerance {bound.ravel()[i]:.3g}"
        )
    if detail is None:
        if v_b.size == 1:
            detail = f"{float(v_b.ravel()[0]):.6g} ~ {float(e_b.ravel()[0]):.6g}"
        else:
            detail = f"{v_b.size} values, max |error| {float(err.max()):.2g}"
        detail += f" (rtol={rtol:g}, atol={atol:g})"
    _record(cid, "numeric", detail)


def _rival_items(rivals):
    if rivals is None:
        return []
    if isinstance(rivals, dict):
        return [(str(k), float(v)) for k, v in rivals.items()]
    return [(f"rival {i + 1}", float(v)) for i, v in enumerate(rivals)]


def monte_carlo(
    cid: str,
    samples=None,
    expected: float | None = None,
    *,
    estimate: float | None = None,
    stderr: float | None = None,
    n: int | None = None,
    rivals=None,
    z: float = 4.0,
    detail: str | None = None,
):
    """Check a Monte Carlo estimate against ``expected`` and reject every rival.

    Give either ``samples`` (i.i.d. draws whose mean estimates ``expected``) or ``estimate``
    with its ``stderr`` (and optionally the sample size ``n`` for the printed line).
    Passes when ``|estimate - expected| <= z * stderr`` and ``|estimate - rival| > z * stderr``
    for every rival. ``rivals`` is a dict ``{name: value}`` or a list of values: the plausible
    wrong answers that the sample must be able to tell apart from the right one.
    Returns an :class:`Estimate` ``(estimate, stderr)``.
    """
    _lookup(cid)
    if expected is None:
        raise ValueError(f"{cid}: expected value missing")
    if not (z > 0 and math.isfinite(z)):
        raise ValueError(f"{cid}: z must be a positive number of standard errors, got {z}")
    items = _rival_items(rivals)
    if not items:
        raise ValueError(f"{cid}: a Monte Carlo check needs at least one rival (a plausible wrong answer) to reject")
    if samples is not None:
        if estimate is not None or stderr is not None:
            raise ValueError(f"{cid}: give samples or estimate/stderr, not both")
        x = _as_array(samples).ravel()
        if x.size < 2:
            raise ValueError(f"{cid}: need at least 2 samples, got {x.size}")
        n = x.size
        estimate = float(x.mean())
        stderr = float(x.std(ddof=1) / math.sqrt(n))
    elif estimate is None or stderr is None:
        raise ValueError(f"{cid}: give samples, or estimate and stderr")
    estimate, stderr, expected = float(estimate), float(stderr), float(expected)
    if not (stderr >= 0 and math.isfinite(stderr) and math.isfinite(estimate)):
        raise ValueError(f"{cid}: estimate {estimate} and stderr {stderr} must be finite, stderr >= 0")
    tol = z * stderr
    dev = abs(estimate - expected)
    size = f", n={n}" if n is not None else ""
    head = f"{estimate:.5f} +- {stderr:.5f}{size}"
    if dev > tol:
        raise AssertionError(
            f"{cid}: estimate {head} is {dev / stderr if stderr else math.inf:.1f} standard errors from "
            f"expected {expected:.5f} (tolerance {z:g})"
        )
    for name, value in items:
        gap = abs(estimate - value)
        if gap <= tol:
            raise AssertionError(
                f"{cid}: rival {name} = {value:.5f} is not rejected: the estimate {head} is only "
                f"{gap / stderr if stderr else 0:.1f} standard errors from it (need > {z:g}); use more samples"
            )
    rejected = ", ".join(
        f"{name} at {abs(estimate - value) / stderr:.0f} se" if stderr else f"{name}" for name, value in items
    )
    line = f"{head} vs expected {expected:.5f} ({dev / stderr if stderr else 0:.1f} se <= {z:g}); rejected: {rejected}"
    _record(cid, "monte carlo", f"{detail}: {line}" if detail else line)
    return Estimate(estimate, stderr)


def figure(cid: str, caption: str) -> None:
    """Record that a figure illustrates claim ``cid`` (it proves nothing on its own)."""
    _lookup(cid)
    _CLAIMS[cid].checks.append(Check(cid, "figure", caption))


class Summary:
    """The claims table; renders as Markdown in the book and as text in a terminal."""

    columns = ("claim", "statement", "checks", "verdict")

    def __init__(self, claims: list[Claim]):
        self.rows = []
        for c in claims:
            counts: dict[str, int] = {}
            for chk in c.checks:
                counts[chk.kind] = counts.get(chk.kind, 0) + 1
            proofs = sum(v for k, v in counts.items() if k != "figure")
            text = ", ".join(f"{v} {k}" for k, v in counts.items()) or "none"
            verdict = ("refuted" if c.refutes else "verified") if proofs else "UNCHECKED"
            self.rows.append((c.cid, c.statement, text, verdict))

    @property
    def all_checked(self) -> bool:
        return all(r[3] != "UNCHECKED" for r in self.rows)

    def __repr__(self) -> str:
        widths = [max(len(str(r[i])) for r in [self.columns, *self.rows]) for i in range(4)]
        widths[1] = min(widths[1], 60)

        def fmt(row):
            cells = [str(v) if len(str(v)) <= widths[i] else str(v)[: widths[i] - 3] + "..." for i, v in enumerate(row)]
            return " | ".join(c.ljust(widths[i]) for i, c in enumerate(cells)).rstrip()

        lines = [fmt(self.columns), "-+-".join("-" * w for w in widths)]
        lines += [fmt(r) for r in self.rows]
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * 4]
        lines += ["| " + " | ".join(esc(v) for v in r) + " |" for r in self.rows]
        return "\n".join(lines)


def summary(*, require_all: bool = True) -> Summary:
    """The notebook's claims, their checks and verdicts.

    With ``require_all`` (the default) a claim that no check supports raises ``AssertionError``.
    """
    table = Summary(records())
    if require_all and not table.all_checked:
        missing = [r[0] for r in table.rows if r[3] == "UNCHECKED"]
        raise AssertionError(f"claims without a check: {', '.join(missing)}")
    return table
