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
    assert verdicts == {"C1": "verified", "C2": "refuted", "C3": "UNCHECKED"}
    assert "| C1 | a test claim | 1 numeric | verified |" in table._repr_markdown_()
    assert "C3" in repr(table)


def test_roundoff_hides_machine_dependent_digits():
    assert verify.roundoff(1.1e-12) == verify.roundoff(3.7e-13) == "< 1e-10"
    assert verify.roundoff(-2e-16, 1e-12) == "< 1e-12"
    assert verify.roundoff(3e-9) == "3.0e-09"  # above the bound the value shows: a real difference is not hidden
    for bad in (0.0, -1e-10, float("inf"), float("nan")):
        with pytest.raises(ValueError):
            verify.roundoff(1e-12, bad)
