import math

import pytest
import torch

from kexue_lib.losses import info_nce_logits, info_nce_loss


def _loop_reference(a, b, tau):
    """The loss written out pair by pair in float64."""
    a, b = a.double(), b.double()
    n = a.shape[0]
    total = 0.0
    for x, y in ((a, b), (b, a)):
        for i in range(n):
            cos = [float(x[i] @ y[j] / (x[i].norm() * y[j].norm())) / tau for j in range(n)]
            total += math.log(sum(math.exp(c) for c in cos)) - cos[i]
    return total / (2 * n)


@pytest.mark.parametrize("tau", [0.05, 0.3, 1.0])
def test_info_nce_matches_loop_reference(tau):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    assert float(info_nce_loss(a.double(), b.double(), tau=tau)) == pytest.approx(_loop_reference(a, b, tau), rel=1e-12)


def test_info_nce_scale_invariant_and_batched():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(3, 6, 4, generator=g, dtype=torch.float64), torch.randn(3, 6, 4, generator=g, dtype=torch.float64)
    full = info_nce_loss(a, 2.5 * b, tau=0.5)
    per = torch.stack([info_nce_loss(a[i], b[i], tau=0.5) for i in range(3)]).mean()
    assert float(full) == pytest.approx(float(per), rel=1e-12)
    assert info_nce_logits(a, b, tau=0.5).shape == (3, 6, 6)


def test_info_nce_rejects_bad_input():
    a = torch.randn(4, 3)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError):
            info_nce_loss(a, a, tau=bad)
    with pytest.raises(ValueError):
        info_nce_loss(a, torch.randn(4, 2), tau=1.0)
    with pytest.raises(ValueError):
        info_nce_loss(a[:1], a[:1], tau=1.0)
    with pytest.raises(ValueError):
        info_nce_loss(torch.zeros(4, 3), a, tau=1.0)
    with pytest.raises(ValueError):
        info_nce_loss(a.long(), a.long(), tau=1.0)
