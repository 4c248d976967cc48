"""The contract of a check: every claim in the book ends with a verdict that the checks earned.

A chapter lists every central claim of its article, then checks what it can::

    from kexue_lib import verify
    verify.claim("C1", "Four ducks lie in one semicircle with probability 1/2")
    verify.symbolic("C1", 4 * sympy.Rational(1, 2) ** 3, sympy.Rational(1, 2))
    verify.monte_carlo("C1", hits, expected=0.5, rivals={"3/8 (the naive 1/2^3 x 3)": 0.375})
    verify.claim("C2", "The result carries over to the sphere", not_checked="the article states it without proof")
    verify.summary()

Kinds of check, each printing one line a person can read and recording itself:

* :func:`symbolic` proves ``lhs == rhs`` with sympy; :func:`exact` compares exact values (integers,
  booleans, fractions: exact arithmetic or exhaustive enumeration). Both are *proofs*.
* :func:`numeric` asserts deterministic numerical agreement within ``rtol``/``atol``, and rejects
  ``rivals`` if given; :func:`monte_carlo` passes when the exact value lies within ``z`` standard errors
  *and* every rival lies outside, and prints the smallest error the sample would detect. Both are
  *evidence*.
* :func:`experiment` asserts an experiment's outcome against a baseline (one value each, or one per seed
  for a paired test) and records the scale it ran at. It is a *reproduction*.
* :func:`consistency` records a check that holds by construction (a mask built triangular asserted
  triangular, a value read back from the library's own table, the same expression typed twice). It still
  raises if it fails, but it supports no verdict.
* :func:`figure` records that a figure illustrates a claim (it checks nothing by itself).

Verdicts come from one vocabulary (:data:`VERDICTS`) and are derived from the checks that ran, never
typed: ``not checked`` (a reason given, or only consistency checks ran), ``refuted`` (the claim was
registered with ``refutes=True`` and evidence against it ran), ``qualified`` (registered with the
restriction under which it holds, and checked under it), ``reproduced`` (an experiment ran),
``proven`` (a symbolic or exact check ran), otherwise ``confirmed`` (numeric or Monte Carlo evidence).

A failed check raises ``AssertionError`` naming the claim and what failed; a malformed call (an unknown
claim, a Monte Carlo check without rivals or a reason for having none, a non-finite expected value, a
tolerance that is not a positive finite number) raises ``ValueError``. :func:`summary` returns the table
of claims, checks and verdicts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import NamedTuple

import numpy as np
import sympy

__all__ = [
    "VERDICTS", "claim", "symbolic", "exact", "numeric", "monte_carlo", "experiment", "consistency", "figure",
    "summary", "reset", "records", "roundoff",
]

#: The verdicts a claim can end with, strongest evidence first within each family.
VERDICTS = ("proven", "confirmed", "reproduced", "qualified", "refuted", "not checked")

#: Which kinds of check support which verdict; "consistency" and "figure" support none.
PROOF_KINDS = ("symbolic", "exact")
EVIDENCE_KINDS = ("numeric", "monte carlo")
EXPERIMENT_KINDS = ("experiment",)
SUPPORTING_KINDS = PROOF_KINDS + EVIDENCE_KINDS + EXPERIMENT_KINDS

ONLY_CONSISTENCY = "only consistency checks ran, and those hold by construction"


@dataclass
class Claim:
    cid: str
    statement: str
    refutes: bool = False
    qualified: str | None = None
    not_checked: str | None = None
    checks: list = field(default_factory=list)

    def verdict(self) -> str:
        """The verdict the recorded checks support (see the module docstring for the rule)."""
        kinds = {c.kind for c in self.checks}
        if self.not_checked is not None or not kinds & set(SUPPORTING_KINDS):
            return "not checked"
        if self.refutes:
            return "refuted"
        if self.qualified is not None:
            return "qualified"
        if kinds & set(EXPERIMENT_KINDS):
            return "reproduced"
        if kinds & set(PROOF_KINDS):
            return "proven"
        return "confirmed"

    def reason(self) -> str | None:
        """Why a claim is not checked, or None when it is."""
        if self.not_checked is not None:
            return self.not_checked
        if not {c.kind for c in self.checks} & set(SUPPORTING_KINDS):
            return ONLY_CONSISTENCY if any(c.kind == "consistency" for c in self.checks) else "no check ran"
        return None


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


def _text(name: str, value, cid: str) -> str:
    if not isinstance(value, str) or len(value.split()) < 2:
        raise ValueError(f"claim {cid!r}: {name} must be a sentence a reader can follow, got {value!r}")
    return value.strip()


def claim(
    cid: str, statement: str, *, refutes: bool = False, qualified: str | None = None, not_checked: str | None = None
) -> None:
    """Register claim ``cid`` (e.g. ``"C3"``) of the article.

    ``refutes=True`` marks a statement that the checks show to be *false* (an erratum): its checks assert
    the counter-evidence, and the verdict reads ``refuted``. ``qualified="..."`` states the restriction
    under which the claim holds (the article overstates it); its checks test it under that restriction,
    and the verdict reads ``qualified``. ``not_checked="..."`` gives the reason a claim is listed but not
    checked (needs data that cannot ship, more than the FULL budget, or is not a checkable claim); such a
    claim must not receive supporting checks.
    """
    if not isinstance(cid, str) or not cid.strip():
        raise ValueError(f"claim id must be a non-empty string, got {cid!r}")
    if cid in _CLAIMS:
        raise ValueError(f"claim {cid!r} is already registered")
    if not isinstance(statement, str) or not statement.strip():
        raise ValueError(f"claim {cid!r}: the statement must be a non-empty string")
    if not isinstance(refutes, bool):
        raise ValueError(f"claim {cid!r}: refutes must be True or False, got {refutes!r}")
    given = [n for n, v in (("refutes", refutes), ("qualified", qualified), ("not_checked", not_checked)) if v]
    if len(given) > 1:
        raise ValueError(f"claim {cid!r}: {' and '.join(given)} exclude each other")
    if qualified is not None:
        qualified = _text("qualified (the restriction)", qualified, cid)
    if not_checked is not None:
        not_checked = _text("not_checked (the reason)", not_checked, cid)
    _CLAIMS[cid] = Claim(cid, statement.strip(), refutes, qualified, not_checked)


def roundoff(value: float, bound: float = 1e-10) -> str:
    """A round-off size for a detail line, printed so that it reads the same on every machine.

    Differences at the level of rounding depend on the CPU's vector instructions and thread count, and
    nbval compares printed outputs exactly: below ``bound`` this gives ``"< 1e-10"``, above it the value.
    """
    value = abs(float(value))
    if not (math.isfinite(bound) and bound > 0):
        raise ValueError(f"bound must be a positive finite number, got {bound!r}")
    return f"< {bound:.0e}" if value < bound else f"{value:.1e}"


def _lookup(cid: str, kind: str) -> Claim:
    if cid not in _CLAIMS:
        known = ", ".join(_CLAIMS) or "none"
        raise ValueError(f"unknown claim {cid!r}: register it with verify.claim first (known: {known})")
    c = _CLAIMS[cid]
    if c.not_checked is not None and kind in SUPPORTING_KINDS:
        raise ValueError(f"claim {cid!r} is registered as not checked ({c.not_checked}); a {kind} check contradicts it")
    return c


_LABEL = {"consistency": "HOLDS", "figure": None}


def _record(cid: str, kind: str, detail: str) -> None:
    _CLAIMS[cid].checks.append(Check(cid, kind, detail))
    label = _LABEL.get(kind, "PASS")
    if label:
        print(f"{label} {cid} [{kind}] {detail}")


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
    ``expand`` tried first); anything sympy cannot reduce to zero fails. A proof supports ``proven``:
    make sure the two sides were derived independently (an expression compared with itself typed again
    proves nothing; record that with :func:`consistency`).
    """
    _lookup(cid, "symbolic")
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


def _exact_array(x, cid: str) -> np.ndarray:
    """x as an object array of exact numbers (int, bool, Fraction, sympy Rational); floats are refused."""
    if hasattr(x, "detach"):  # a torch tensor
        if x.is_floating_point() or x.is_complex():
            raise ValueError(f"{cid}: exact() needs integers, booleans or fractions, got a {x.dtype} tensor; use numeric()")
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=object) if not isinstance(x, np.ndarray) else x
    if arr.dtype.kind in "fc":
        raise ValueError(f"{cid}: exact() needs integers, booleans or fractions, got {arr.dtype}; use numeric()")
    flat = arr.astype(object).ravel()
    for v in flat:
        if isinstance(v, (bool, int, np.integer, np.bool_, Fraction)):
            continue
        if isinstance(v, sympy.Basic) and v.is_number and v.is_rational:
            continue
        raise ValueError(f"{cid}: exact() needs integers, booleans or fractions, got {type(v).__name__} {v!r}; use numeric()")
    return arr.astype(object)


def exact(cid: str, value, expected, *, detail: str | None = None) -> None:
    """Assert ``value == expected`` exactly, elementwise: exact arithmetic or exhaustive enumeration.

    Both sides must hold exact numbers (Python or numpy integers and booleans, ``fractions.Fraction``,
    sympy rationals, integer or boolean tensors); floats raise ``ValueError`` (use :func:`numeric`).
    Supports ``proven``.
    """
    _lookup(cid, "exact")
    v, e = _exact_array(value, cid), _exact_array(expected, cid)
    if v.shape != e.shape:
        raise ValueError(f"{cid}: value shape {v.shape} does not match expected shape {e.shape}")
    bad = [i for i, (a, b) in enumerate(zip(v.ravel(), e.ravel())) if sympy.Rational(a) != sympy.Rational(b)]
    if bad:
        i = bad[0]
        raise AssertionError(f"{cid}: {len(bad)} of {v.size} values differ; first: {v.ravel()[i]} != {e.ravel()[i]}")
    if detail is None:
        detail = f"{v.ravel()[0]} == {e.ravel()[0]}" if v.size == 1 else f"all {v.size} values equal"
    _record(cid, "exact", detail)


def _as_array(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, on any device
        if x.is_complex():
            raise ValueError("complex values are not compared; compare real and imaginary parts")
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x)
    if arr.dtype.kind == "c":
        raise ValueError("complex values are not compared; compare real and imaginary parts")
    return arr.astype(float)


def _tolerance(cid: str, rtol: float, atol: float) -> None:
    for name, t in (("rtol", rtol), ("atol", atol)):
        if not (isinstance(t, (int, float, np.floating)) and math.isfinite(t) and t >= 0):
            raise ValueError(f"{cid}: {name} must be a finite number >= 0, got {t!r}")
    if rtol == 0 and atol == 0:
        raise ValueError(f"{cid}: need rtol or atol above 0 (got rtol={rtol}, atol={atol})")
    if rtol >= 1:
        raise ValueError(f"{cid}: rtol={rtol} accepts anything within 100% of the expected value; that checks nothing")


def _rival_items(cid: str, rivals):
    if rivals is None:
        return []
    items = rivals.items() if isinstance(rivals, dict) else ((f"rival {i + 1}", v) for i, v in enumerate(rivals))
    out = []
    for name, value in items:
        arr = _as_array(value)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{cid}: rival {name} = {value!r} is not finite; a rival must be a number a reader might believe")
        out.append((str(name), arr))
    return out


def numeric(cid: str, value, expected, *, rtol: float = 1e-9, atol: float = 0.0, rivals=None, detail: str | None = None):
    """Assert ``|value - expected| <= atol + rtol * |expected|`` elementwise.

    ``rivals`` (a dict ``{name: value}`` or a list) are plausible wrong answers: each must lie outside
    the tolerance somewhere, or the check fails because it could not tell them from the right one.
    """
    _lookup(cid, "numeric")
    _tolerance(cid, rtol, atol)
    v, e = _as_array(value), _as_array(expected)
    if not np.all(np.isfinite(e)):
        raise ValueError(f"{cid}: expected value is not finite: {e[~np.isfinite(e)][:3]}")
    try:
        v_b, e_b = np.broadcast_arrays(v, e)
    except ValueError as err:
        raise ValueError(f"{cid}: value shape {v.shape} does not match expected shape {e.shape}") from err
    if v_b.shape != v.shape:
        raise ValueError(f"{cid}: expected shape {e.shape} would enlarge the value's shape {v.shape}")
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
    rejected = []
    for name, r in _rival_items(cid, rivals):
        try:
            r_b = np.broadcast_to(r, v_b.shape)
        except ValueError as exc:
            raise ValueError(f"{cid}: rival {name} has shape {r.shape}, the value {v_b.shape}") from exc
        if np.all(np.abs(v_b - r_b) <= bound):
            raise AssertionError(f"{cid}: rival {name} is not rejected: it lies within the tolerance too")
        rejected.append(name)
    if detail is None:
        if v_b.size == 1:
            detail = f"{float(v_b.ravel()[0]):.6g} ~ {float(e_b.ravel()[0]):.6g}"
        else:
            detail = f"{v_b.size} values, max |error| {float(err.max()):.2g}"
        detail += f" (rtol={rtol:g}, atol={atol:g})"
    if rejected:
        detail += f"; rejected: {', '.join(rejected)}"
    _record(cid, "numeric", detail)


def monte_carlo(
    cid: str,
    samples=None,
    expected: float | None = None,
    *,
    estimate: float | None = None,
    stderr: float | None = None,
    n: int | None = None,
    rivals=None,
    no_rival: str | None = None,
    z: float = 4.0,
    detail: str | None = None,
):
    """Check a Monte Carlo estimate against ``expected`` and reject every rival.

    Give either ``samples`` (i.i.d. draws whose mean estimates ``expected``) or ``estimate``
    with its ``stderr`` (and optionally the sample size ``n`` for the printed line).
    Passes when ``|estimate - expected| <= z * stderr`` and ``|estimate - rival| > z * stderr``
    for every rival. ``rivals`` is a dict ``{name: value}`` or a list of values: the plausible
    wrong answers that the sample must be able to tell apart from the right one. Where no plausible
    rival exists, say why in ``no_rival`` instead of inventing a strawman.

    The printed line states the check's power: the smallest error of the expected value that the
    check would catch 98% of the time, ``(z + 2) * stderr``.
    Returns an :class:`Estimate` ``(estimate, stderr)``.
    """
    _lookup(cid, "monte carlo")
    if expected is None:
        raise ValueError(f"{cid}: expected value missing")
    if not (isinstance(z, (int, float)) and z > 0 and math.isfinite(z)):
        raise ValueError(f"{cid}: z must be a positive number of standard errors, got {z}")
    items = [(name, float(np.ravel(v)[0])) for name, v in _rival_items(cid, rivals)]
    if not items and no_rival is None:
        raise ValueError(
            f"{cid}: a Monte Carlo check needs at least one rival (a plausible wrong answer) to reject, "
            "or no_rival='why no plausible rival exists'"
        )
    if no_rival is not None:
        no_rival = _text("no_rival (the reason)", no_rival, cid)
    if samples is not None:
        if estimate is not None or stderr is not None:
            raise ValueError(f"{cid}: give samples or estimate/stderr, not both")
        x = _as_array(samples).ravel()
        if x.size < 2:
            raise ValueError(f"{cid}: need at least 2 samples, got {x.size}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{cid}: {int((~np.isfinite(x)).sum())} samples are not finite")
        n = x.size
        estimate = float(x.mean())
        stderr = float(x.std(ddof=1) / math.sqrt(n))
    elif estimate is None or stderr is None:
        raise ValueError(f"{cid}: give samples, or estimate and stderr")
    estimate, stderr, expected = float(estimate), float(stderr), float(expected)
    if not math.isfinite(expected):
        raise ValueError(f"{cid}: expected value {expected} is not finite")
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
    if items:
        rejected = "rejected: " + ", ".join(
            f"{name} at {abs(estimate - value) / stderr:.0f} se" if stderr else f"{name}" for name, value in items
        )
    else:
        rejected = f"no rival: {no_rival}"
    power = f"detects an error of {(z + 2) * stderr:.2g}" if stderr else "exact (stderr 0)"
    line = f"{head} vs expected {expected:.5f} ({dev / stderr if stderr else 0:.1f} se <= {z:g}); {power}; {rejected}"
    _record(cid, "monte carlo", f"{detail}: {line}" if detail else line)
    return Estimate(estimate, stderr)


def experiment(
    cid: str,
    value,
    baseline,
    *,
    better: str = "lower",
    factor: float = 1.0,
    z: float = 2.0,
    scale: str,
    name: str = "result",
    baseline_name: str = "baseline",
    detail: str | None = None,
):
    """Assert an experiment's outcome against a baseline: ``value`` beats ``baseline`` by ``factor``.

    ``better="lower"`` asks ``factor * value < baseline`` (a loss ``factor`` times smaller), ``"higher"``
    asks ``value > factor * baseline``. Scalars compare once. Sequences (one entry per seed, the same seeds
    for both) make a paired test: the mean margin must exceed ``z`` standard errors of the margin, and
    the line reports how many seeds agree. ``scale`` says what ran (model, data, steps, seeds) and, where
    it differs, the article's scale. Supports ``reproduced``.
    """
    _lookup(cid, "experiment")
    if better not in ("lower", "higher"):
        raise ValueError(f"{cid}: better must be 'lower' or 'higher', got {better!r}")
    if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0):
        raise ValueError(f"{cid}: factor must be a positive finite number, got {factor!r}")
    if not (isinstance(z, (int, float)) and math.isfinite(z) and z > 0):
        raise ValueError(f"{cid}: z must be a positive number of standard errors, got {z!r}")
    scale = _text("scale (what ran, and the article's scale)", scale, cid)
    v, b = _as_array(value).ravel(), _as_array(baseline).ravel()
    if v.shape != b.shape:
        raise ValueError(f"{cid}: {v.size} values against {b.size} baseline values; pair them seed by seed")
    if v.size == 0 or not (np.all(np.isfinite(v)) and np.all(np.isfinite(b))):
        raise AssertionError(f"{cid}: the experiment gave no finite outcome ({v[:3]}, {b[:3]})")
    margin = (b - factor * v) if better == "lower" else (v - factor * b)
    rel = f"{factor:g}x " if factor != 1 else ""
    want = f"{name} {rel}{'below' if better == 'lower' else 'above'} {baseline_name}"
    if v.size == 1:
        shown = f"{name} {v[0]:.4g} vs {baseline_name} {b[0]:.4g}"
        if not margin[0] > 0:
            raise AssertionError(f"{cid}: expected {want}, got {shown}")
    else:
        se = float(margin.std(ddof=1) / math.sqrt(margin.size))
        mean = float(margin.mean())
        wins = int((margin > 0).sum())
        shown = (f"{name} {v.mean():.4g} vs {baseline_name} {b.mean():.4g} (means over {v.size} seeds; "
                 f"{wins} of {v.size} agree; margin {mean / se if se else math.inf:.1f} se)")
        if not (mean > z * se and mean > 0):
            raise AssertionError(f"{cid}: expected {want} by more than {z:g} se, got {shown}")
    line = f"{shown}: {want}; scale: {scale}"
    _record(cid, "experiment", f"{detail}: {line}" if detail else line)


def consistency(cid: str, value, expected=True, *, rtol: float = 1e-9, atol: float = 0.0, detail: str):
    """Record a check that holds by construction; it raises if it fails, but supports no verdict.

    ``value`` is a boolean (expected True) or numbers compared with ``expected`` within the tolerance.
    ``detail`` says what is being confirmed, so a reader sees why it is here.
    """
    _lookup(cid, "consistency")
    if not isinstance(detail, str) or not detail.strip():
        raise ValueError(f"{cid}: a consistency check needs a detail saying what it confirms")
    if isinstance(value, (bool, np.bool_)) or (hasattr(value, "dtype") and str(value.dtype).endswith("bool")):
        ok = bool(np.all(_as_array(value) == _as_array(expected)))
    else:
        _tolerance(cid, rtol, atol)
        v, e = _as_array(value), _as_array(expected)
        ok = bool(np.all(np.isfinite(v)) and np.all(np.abs(v - e) <= atol + rtol * np.abs(e)))
    if not ok:
        raise AssertionError(f"{cid}: consistency check failed: {detail}")
    _record(cid, "consistency", detail)


def figure(cid: str, caption: str) -> None:
    """Record that a figure illustrates claim ``cid`` (it proves nothing on its own)."""
    _lookup(cid, "figure")
    _record(cid, "figure", caption)


class Summary:
    """The claims table; renders as Markdown in the book and as text in a terminal."""

    columns = ("claim", "statement", "checks", "verdict")

    def __init__(self, claims: list[Claim]):
        self.rows = []
        for c in claims:
            counts: dict[str, int] = {}
            for chk in c.checks:
                counts[chk.kind] = counts.get(chk.kind, 0) + 1
            text = ", ".join(f"{v} {k}" for k, v in counts.items())
            reason = c.reason()
            if reason is not None:
                text = f"{text}; reason: {reason}" if text else f"reason: {reason}"
            statement = c.statement if c.qualified is None else f"{c.statement} [holds only: {c.qualified}]"
            self.rows.append((c.cid, statement, text, c.verdict()))

    @property
    def counts(self) -> dict[str, int]:
        """How many claims end with each verdict (every verdict of the vocabulary, zeros included)."""
        return {v: sum(r[3] == v for r in self.rows) for v in VERDICTS}

    @property
    def all_checked(self) -> bool:
        return all(r[3] != "not checked" for r in self.rows)

    def __repr__(self) -> str:
        widths = [max(len(str(r[i])) for r in [self.columns, *self.rows]) for i in range(4)]
        widths[1] = min(widths[1], 60)
        widths[2] = min(widths[2], 50)

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
        checked = len(self.rows) - self.counts["not checked"]
        tally = ", ".join(f"{n} {v}" for v, n in self.counts.items() if n)
        lines += ["", f"{checked} of {len(self.rows)} claims checked: {tally}."]
        return "\n".join(lines)


def summary(*, require_all: bool = True) -> Summary:
    """The notebook's claims, their checks and verdicts.

    With ``require_all`` (the default) a claim that no check supports and that gives no reason for it
    raises ``AssertionError``: a claim left "not checked" must say why (``claim(..., not_checked=...)``);
    one whose only checks are consistency checks is "not checked" and says so.
    """
    table = Summary(records())
    if require_all:
        missing = [c.cid for c in records() if c.reason() == "no check ran"]
        if missing:
            raise AssertionError(
                f"claims without a check: {', '.join(missing)} (check them, or register them with not_checked='why')"
            )
    return table
