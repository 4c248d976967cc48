"""kexue_lib.runtime and kexue_lib._validate: the notebook switches and the shared input checks."""
import math

import numpy as np
import pytest
import torch

from kexue_lib import runtime
from kexue_lib._validate import check_int, check_real, check_tensor


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("YES", True), ("on", True),
                                             ("0", False), ("no", False), ("", False), (None, False)])
def test_env_flag(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("KEXUE_TEST_FLAG", raising=False)
    else:
        monkeypatch.setenv("KEXUE_TEST_FLAG", value)
    assert runtime.env_flag("KEXUE_TEST_FLAG") is expected


def test_seed_everything_reproduces():
    runtime.seed_everything(3)
    a = (torch.rand(3), np.random.rand(3))
    runtime.seed_everything(3)
    b = (torch.rand(3), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_progress_is_silent_by_default(monkeypatch):
    monkeypatch.setattr(runtime, "SHOW_PROGRESS", False)
    items = [1, 2, 3]
    assert runtime.progress(items) is items
    monkeypatch.setattr(runtime, "SHOW_PROGRESS", True)
    assert list(runtime.progress(items, disable=True)) == items


def test_device_is_cpu_or_cuda():
    assert runtime.device().type in {"cpu", "cuda"}


def test_check_int():
    assert check_int("n", np.int64(4), min_value=1) == 4
    for bad in (True, 2.0, "2", None):
        with pytest.raises(ValueError, match="n must be an integer"):
            check_int("n", bad)
    with pytest.raises(ValueError, match=">= 1"):
        check_int("n", 0, min_value=1)
    with pytest.raises(ValueError, match="<= 3"):
        check_int("n", 4, max_value=3)


def test_check_real():
    assert check_real("x", 1, low=0, high=1) == 1.0
    for bad in (math.nan, math.inf, "1", None, True):
        with pytest.raises(ValueError, match="x must be"):
            check_real("x", bad)
    with pytest.raises(ValueError, match="> 0"):
        check_real("x", 0.0, low=0.0, low_open=True)
    with pytest.raises(ValueError, match="< 1"):
        check_real("x", 1.0, high=1.0, high_open=True)


def test_check_tensor():
    x = torch.zeros(2, 3)
    assert check_tensor("x", x, ndim=(2, 3), floating=True) is x
    with pytest.raises(ValueError, match="torch.Tensor"):
        check_tensor("x", np.zeros(2))
    with pytest.raises(ValueError, match="3 or 4 dimensions"):
        check_tensor("x", x, ndim=(3, 4))
    with pytest.raises(ValueError, match="floating-point"):
        check_tensor("x", torch.zeros(2, dtype=torch.long), floating=True)
