"""Tests of kexue_lib.heads: the permutations, the heads against a float64 loop reference, the predictions,
the Monte Carlo sampler, and the 2-gram at initialisation."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as hs

from kexue_lib.heads import (HEADS, BigramLM, LMHead, channel_shuffle, head_logits, initial_loss_samples,
                             layer_norm, predicted_initial_loss, rms_norm, swap_halves, tied_init_std)


@settings(max_examples=30, deadline=None)
@given(half=hs.integers(1, 20), seed=hs.integers(0, 10_000))
def test_swap_and_shuffle_are_permutations_and_swap_is_an_involution(half, seed):
    x = torch.randn(3, 2 * half, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    torch.testing.assert_close(swap_halves(swap_halves(x)), x)
    for y in (swap_halves(x), channel_shuffle(x)):
        torch.testing.assert_close(y.sort(-1).values, x.sort(-1).values)


def test_norms_are_scale_free_and_unit_rms():
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for f in (rms_norm, layer_norm):
        torch.testing.assert_close(f(3.7 * x), f(x))
        torch.testing.assert_close(f(x).pow(2).mean(-1), torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(layer_norm(x).mean(-1), torch.zeros(5, dtype=torch.float64))


def _loop_logits(h, W, head, V=None, P=None, bias=None):
    """Float64 loop reference of head_logits."""
    n, d = W.shape
    out = torch.zeros(h.shape[0], n, dtype=torch.float64)
    for r in range(h.shape[0]):
        hr = [float(t) for t in h[r]]
        if head == "tied_proj":
            hr = [sum(hr[a] * float(P[a, b]) for a in range(d)) + (0.0 if bias is None else float(bias[b]))
                  for b in range(d)]
        elif head == "tied_swap":
            hr = hr[d // 2:] + hr[: d // 2]
        elif head == "tied_shuffle":
            hr = [hr[(k % 2) * (d // 2) + k // 2] for k in range(d)]
        M = V if head == "untied" else W
        for k in range(n):
            out[r, k] = sum(hr[a] * float(M[k, a]) for a in range(d))
    return out


@pytest.mark.parametrize("head", HEADS)
def test_head_logits_match_loop_reference(head):
    g = torch.Generator().manual_seed(1)
    h, W = torch.randn(3, 6, generator=g, dtype=torch.float64), torch.randn(7, 6, generator=g, dtype=torch.float64)
    V, P, b = (torch.randn(7, 6, generator=g, dtype=torch.float64), torch.randn(6, 6, generator=g, dtype=torch.float64),
               torch.randn(6, generator=g, dtype=torch.float64))
    kw = {"untied": dict(out_weight=V), "tied_proj": dict(proj=P, bias=b)}.get(head, {})
    ref = _loop_logits(h, W, head, V=V, P=P, bias=b if head == "tied_proj" else None)
    torch.testing.assert_close(head_logits(h, W, head=head, **kw), ref)


def test_bad_input_raises():
    W = torch.randn(4, 6)
    with pytest.raises(ValueError):
        swap_halves(torch.randn(2, 5))
    with pytest.raises(ValueError):
        head_logits(torch.randn(2, 6), W, head="nope")
    with pytest.raises(ValueError):
        head_logits(torch.randn(2, 6), W, head="untied")  # out_weight missing
    with pytest.raises(ValueError):
        head_logits(torch.randn(2, 5), W)
    with pytest.raises(ValueError):
        predicted_initial_loss(vocab=1, d_model=8, sigma=0.1)
    with pytest.raises(ValueError):
        LMHead(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError):
        BigramLM(vocab=10, d_model=7, head="tied_swap")


def test_predictions_closed_forms():
    n, d = 1000, 64
    assert tied_init_std(vocab=n, d_model=d) == pytest.approx(math.log(n) / d)
    s = tied_init_std(vocab=n, d_model=d)
    assert predicted_initial_loss(vocab=n, d_model=d, sigma=s) == pytest.approx(math.log(2 * n - 1))
    assert predicted_initial_loss(vocab=n, d_model=d, sigma=0.1, head="untied", refined=True) == pytest.approx(
        math.log(n) + d * 0.01 / 2)
    # as sigma -> 0 the refined tied value tends to log n, and it is never below the article's one for large n
    assert predicted_initial_loss(vocab=n, d_model=d, sigma=1e-4, refined=True) == pytest.approx(math.log(n), abs=1e-2)
    assert (predicted_initial_loss(vocab=n, d_model=d, sigma=s, refined=True)
            > predicted_initial_loss(vocab=n, d_model=d, sigma=s))


def test_initial_loss_samples_match_direct_cross_entropy_and_scale_linearly():
    g = torch.Generator().manual_seed(2)
    n, d = 50, 16
    G = torch.randn(n, d, generator=g, dtype=torch.float64)
    got = initial_loss_samples(G, rows=10, sigmas=(0.3, 1.0), chunk=4)  # (2, 10)
    for k, sg in enumerate((0.3, 1.0)):
        W = sg * G
        logits = rms_norm(W[:10]) @ W.T  # (10, n)
        ce = torch.stack([torch.stack([torch.logsumexp(logits[i], 0) - logits[i, j] for j in range(n) if j != i]).mean()
                          for i in range(10)])
        torch.testing.assert_close(got[k], ce)


def test_monte_carlo_agrees_with_refined_prediction():
    g = torch.Generator().manual_seed(3)
    n, d = 4000, 64
    G, V = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    s = d ** -0.5
    tied = initial_loss_samples(G, rows=256, sigmas=(s,))[0]
    untied = initial_loss_samples(G, rows=256, sigmas=(s,), head="untied", out_weight=V)[0]
    for x, head in ((tied, "tied"), (untied, "untied")):
        se = float(x.std() / 16)
        assert abs(float(x.mean()) - predicted_initial_loss(vocab=n, d_model=d, sigma=s, head=head, refined=True)) < 5 * se + 1e-3


@pytest.mark.parametrize("head", HEADS)
def test_bigram_lm_is_the_2gram_at_initialisation_and_trains(head):
    torch.manual_seed(0)
    m = BigramLM(vocab=20, d_model=8, head=head, layers=2).double()
    tok = torch.arange(20)
    W = m.embed.weight
    out_w = m.head.out_weight if head == "untied" else None
    proj = m.head.proj if head == "tied_proj" else None
    torch.testing.assert_close(m(tok), head_logits(rms_norm(W), W, head=head, out_weight=out_w, proj=proj))
    if head == "tied_proj":
        torch.testing.assert_close(m.head.proj.T @ m.head.proj, torch.eye(8, dtype=torch.float64), atol=1e-6, rtol=0)  # drawn in float32
    loss = torch.nn.functional.cross_entropy(m(tok), (tok + 1) % 20)
    loss.backward()
    assert W.grad is not None and W.grad.abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_follows_device():
    G = torch.randn(300, 32, device="cuda")
    x = initial_loss_samples(G, rows=16, sigmas=(0.2,), head="tied_swap")
    assert x.device.type == "cuda"
    m = BigramLM(vocab=30, d_model=8, head="tied_proj").cuda()
    assert m(torch.arange(30, device="cuda")).device.type == "cuda"
