"""Each kind of check passes a right claim and fails a wrong one."""
import numpy as np
import pytest
import sympy as sp
import torch

from kexue_lib import verify


@pytest.fixture(autouse=True)
def fresh_ledger():
    verify.reset()
    verify.claim("C1", "a test claim")
    yield
    verify.reset()


def test_symbolic_passes_true_identity(capsys):
    x = sp.symbols("x")
    verify.symbolic("C1", (x + 1) ** 2, x**2 + 2 * x + 1)
    assert capsys.readouterr().out.startswith("PASS C1 [symbolic]")


def test_symbolic_needs_simplify():
    x = sp.symbols("x", positive=True)
    verify.symbolic("C1", sp.sin(x) ** 2 + sp.cos(x) ** 2, 1)


def test_symbolic_fails_wrong_identity():
    x = sp.symbols("x")
    with pytest.raises(AssertionError, match="C1: not proven"):
        verify.symbolic("C1", (x + 1) ** 2, x**2 + 1)


def test_symbolic_matrices():
    a = sp.Matrix([[1, 2], [3, 4]])
    verify.symbolic("C1", a * a.inv(), sp.eye(2))
    with pytest.raises(AssertionError):
        verify.symbolic("C1", a * a, sp.eye(2))


def test_numeric_pass_and_fail():
    verify.numeric("C1", 1.0 + 1e-12, 1.0, rtol=1e-9)
    verify.numeric("C1", torch.tensor([1.0, 2.0]), np.array([1.0, 2.0]), atol=1e-6)
    with pytest.raises(AssertionError, match="differs from expected"):
        verify.numeric("C1", 1.01, 1.0, rtol=1e-3)
    with pytest.raises(AssertionError, match="not finite"):
        verify.numeric("C1", float("nan"), 1.0, rtol=1e-3)


def test_numeric_rejects_bad_tolerance_and_shapes():
    with pytest.raises(ValueError):
        verify.numeric("C1", 1.0, 1.0, rtol=0, atol=0)
    with pytest.raises(ValueError):
        verify.numeric("C1", np.ones(3), np.ones(2), rtol=1e-3)


def test_monte_carlo_passes_right_value_and_rejects_rival():
    rng = np.random.default_rng(0)
    samples = rng.random(100_000) < 0.3
    est = verify.monte_carlo("C1", samples, expected=0.3, rivals={"wrong": 0.32})
    assert abs(est.estimate - 0.3) < 0.01 and est.stderr > 0
    assert repr(est).startswith("Estimate(")


def test_monte_carlo_fails_wrong_expected():
    rng = np.random.default_rng(0)
    samples = rng.random(100_000) < 0.3
    with pytest.raises(AssertionError, match="standard errors from expected"):
        verify.monte_carlo("C1", samples, expected=0.32, rivals={"other": 0.5})


def test_monte_carlo_fails_when_rival_not_rejected():
    rng = np.random.default_rng(0)
    samples = rng.random(1_000) < 0.3  # too few samples to separate 0.3 from 0.31
    with pytest.raises(AssertionError, match="rival close = 0.31000 is not rejected"):
        verify.monte_carlo("C1", samples, expected=0.3, rivals={"close": 0.31})


def test_monte_carlo_estimate_form_and_malformed_calls():
    verify.monte_carlo("C1", estimate=0.5, stderr=0.01, expected=0.51, rivals=[0.6])
    with pytest.raises(ValueError, match="at least one rival"):
        verify.monte_carlo("C1", estimate=0.5, stderr=0.01, expected=0.5)
    with pytest.raises(ValueError):
        verify.monte_carlo("C1", [0.5, 0.5], estimate=0.5, stderr=0.01, expected=0.5, rivals=[0.7])
    with pytest.raises(ValueError):
        verify.monte_carlo("C1", estimate=0.5, expected=0.5, rivals=[0.7])
    with pytest.raises(ValueError):
        verify.monte_carlo("C1", estimate=0.5, stderr=0.01, expected=0.5, rivals=[0.7], z=0)


def test_unknown_and_duplicate_claims():
    with pytest.raises(ValueError, match="unknown claim"):
        verify.numeric("C9", 1.0, 1.0, rtol=1e-9)
    with pytest.raises(ValueError, match="already registered"):
        verify.claim("C1", "again")


def test_summary_verdicts():
    verify.claim("C2", "an erratum", refutes=True)
    verify.claim("C3", "illustrated only")
    verify.numeric("C1", 1.0, 1.0, rtol=1e-9)
    verify.numeric("C2", 2.0, 2.0, rtol=1e-9)
    verify.figure("C3", "a picture")
    with pytest.raises(AssertionError, match="claims without a check: C3"):
        verify.summary()
    table = verify.summary(require_all=False)
    verdicts = {row[0]: row[3] for row in table.rows}
    assert verdicts == {"C1": "confirmed", "C2": "refuted", "C3": "not checked"}
    md = table._repr_markdown_()
    assert "| C1 | a test claim | 1 numeric | confirmed |" in md
    assert "2 of 3 claims checked: 1 confirmed, 1 refuted, 1 not checked." in md
    assert "C3" in repr(table)


def _verdict(cid):
    return {row[0]: row[3] for row in verify.summary(require_all=False).rows}[cid]


def test_each_verdict_comes_from_the_checks_that_ran():
    x = sp.symbols("x")
    verify.symbolic("C1", (x + 1) ** 2, x**2 + 2 * x + 1)
    verify.numeric("C1", 1.0, 1.0, rtol=1e-9)  # a numeric illustration does not weaken a proof
    verify.claim("C2", "enumerated")
    verify.exact("C2", [1, 2, 3], np.array([1, 2, 3]))
    verify.claim("C3", "sampled")
    verify.monte_carlo("C3", estimate=0.5, stderr=0.01, expected=0.5, rivals={"0.6": 0.6})
    verify.claim("C4", "trained")
    verify.experiment("C4", 0.1, 1.0, scale="a toy regression, 10 steps")
    verify.claim("C5", "holds for small x", qualified="only for x below 1, which the article omits")
    verify.numeric("C5", 0.5, 0.5, rtol=1e-9)
    verify.claim("C6", "wrong as stated", refutes=True)
    verify.numeric("C6", 2.0, 2.0, rtol=1e-9)
    verify.claim("C7", "needs ImageNet", not_checked="needs data that cannot ship with the book")
    got = {row[0]: row[3] for row in verify.summary().rows}
    assert got == {"C1": "proven", "C2": "proven", "C3": "confirmed", "C4": "reproduced",
                   "C5": "qualified", "C6": "refuted", "C7": "not checked"}
    assert set(got.values()) == set(verify.VERDICTS)
    rows = {row[0]: row for row in verify.summary().rows}
    assert "reason: needs data that cannot ship" in rows["C7"][2]
    assert "[holds only: only for x below 1" in rows["C5"][1]


def test_consistency_checks_support_no_verdict(capsys):
    verify.consistency("C1", True, detail="the mask was built triangular")
    verify.consistency("C1", 2.0, 2.0, detail="read back from the library's table")
    assert capsys.readouterr().out.startswith("HOLDS C1 [consistency]")
    assert _verdict("C1") == "not checked"
    row = verify.summary().rows[0]  # a reason is given automatically, so summary() does not raise
    assert "2 consistency" in row[2] and "hold by construction" in row[2]
    with pytest.raises(AssertionError, match="consistency check failed"):
        verify.consistency("C1", False, detail="cannot hold")
    with pytest.raises(ValueError, match="detail"):
        verify.consistency("C1", True, detail="")
    verify.figure("C1", "a picture")
    assert _verdict("C1") == "not checked"  # figures support nothing either


def test_only_a_proof_makes_a_claim_proven():
    verify.numeric("C1", 1.0, 1.0, rtol=1e-9)
    verify.consistency("C1", True, detail="by construction")
    assert _verdict("C1") == "confirmed"
    verify.claim("C2", "typed twice")
    verify.consistency("C2", True, detail="sympy compares an expression with itself")
    assert _verdict("C2") == "not checked"


def test_not_checked_claims_need_a_reason_and_no_evidence():
    with pytest.raises(ValueError, match="reason"):
        verify.claim("C2", "no reason", not_checked="")
    verify.claim("C3", "listed", not_checked="not a checkable claim: a matter of taste")
    with pytest.raises(ValueError, match="registered as not checked"):
        verify.numeric("C3", 1.0, 1.0, rtol=1e-9)
    verify.consistency("C3", True, detail="an illustration is allowed")
    with pytest.raises(ValueError, match="exclude each other"):
        verify.claim("C4", "both", refutes=True, qualified="only for small x, as shown")


def test_exact_refuses_floats_and_fails_wrong_values():
    from fractions import Fraction

    verify.exact("C1", Fraction(1, 3) * 3, 1)
    verify.exact("C1", torch.tensor([True, False]), [True, False])
    verify.exact("C1", sp.Rational(1, 2), Fraction(1, 2))
    with pytest.raises(AssertionError, match="1 of 3 values differ"):
        verify.exact("C1", [1, 2, 3], [1, 2, 4])
    for bad in (0.5, np.array([1.0]), torch.tensor([1.0])):
        with pytest.raises(ValueError, match="use numeric"):
            verify.exact("C1", bad, bad)


def test_numeric_rivals_must_be_rejected():
    verify.numeric("C1", 0.5, 0.5, rtol=1e-3, rivals={"off by one": 0.51})
    with pytest.raises(AssertionError, match="rival close is not rejected"):
        verify.numeric("C1", 0.5, 0.5, rtol=1e-1, rivals={"close": 0.52})
    with pytest.raises(ValueError, match="not finite"):
        verify.numeric("C1", 0.5, 0.5, rtol=1e-3, rivals={"nan": float("nan")})


def test_numeric_refuses_checks_that_cannot_fail():
    for kwargs in ({"rtol": float("inf")}, {"atol": float("inf")}, {"rtol": 1.0}, {"rtol": float("nan")}):
        with pytest.raises(ValueError):
            verify.numeric("C1", 1.0, 1.0, **kwargs)
    with pytest.raises(ValueError, match="expected value is not finite"):
        verify.numeric("C1", 1.0, float("inf"), rtol=1e-3)
    with pytest.raises(ValueError, match="enlarge"):
        verify.numeric("C1", 1.0, np.ones(3), rtol=1e-3)  # one value is not three


def test_monte_carlo_power_and_no_rival():
    est = verify.monte_carlo("C1", estimate=0.5, stderr=0.01, expected=0.5, rivals={"0.6": 0.6}, z=4)
    assert est.stderr == 0.01
    verify.monte_carlo("C1", estimate=0.5, stderr=0.01, expected=0.5, no_rival="no competing formula is known")
    out = verify.records()[0].checks
    assert "detects an error of 0.06" in out[0].detail and "no rival: no competing" in out[1].detail
    with pytest.raises(ValueError):
        verify.monte_carlo("C1", estimate=0.5, stderr=0.01, expected=float("nan"), rivals=[0.6])
    with pytest.raises(ValueError):
        verify.monte_carlo("C1", estimate=0.5, stderr=0.01, expected=0.5, rivals=[float("nan")])
    with pytest.raises(ValueError, match="not finite"):
        verify.monte_carlo("C1", [0.5, float("nan"), 0.4], expected=0.5, rivals=[0.9])


def test_experiment_against_a_baseline():
    verify.experiment("C1", 0.1, 1.5, factor=10, scale="a toy run, 10 steps")
    verify.experiment("C1", [0.9, 0.8, 0.85], [0.5, 0.55, 0.52], better="higher", scale="three seeds, a toy run")
    with pytest.raises(AssertionError, match="expected result 10x below baseline"):
        verify.experiment("C1", 0.2, 1.5, factor=10, scale="a toy run, 10 steps")
    with pytest.raises(AssertionError, match="by more than 2 se"):  # one lucky seed is not a paired win
        verify.experiment("C1", [0.9, 0.4, 0.5], [0.5, 0.55, 0.52], better="higher", scale="three seeds, a toy run")
    with pytest.raises(ValueError, match="scale"):
        verify.experiment("C1", 0.1, 1.0, scale="")
    with pytest.raises(ValueError, match="pair"):
        verify.experiment("C1", [0.1, 0.2], [1.0], scale="two seeds against one")
    with pytest.raises(AssertionError, match="no finite outcome"):
        verify.experiment("C1", float("nan"), 1.0, scale="a diverged run, 10 steps")
    assert _verdict("C1") == "reproduced"


def test_roundoff_hides_machine_dependent_digits():
    assert verify.roundoff(1.1e-12) == verify.roundoff(3.7e-13) == "< 1e-10"
    assert verify.roundoff(-2e-16, 1e-12) == "< 1e-12"
    assert verify.roundoff(3e-9) == "3.0e-09"  # above the bound the value shows: a real difference is not hidden
    for bad in (0.0, -1e-10, float("inf"), float("nan")):
        with pytest.raises(ValueError):
            verify.roundoff(1e-12, bad)
