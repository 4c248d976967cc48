"""Tests of kexue_lib.emo (article 9797): loop reference, OT peers (POT, scipy), bounds, gradient, errors."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from kexue_lib.emo import cosine_cost_matrix, emd_linprog, emo_ce_mix, emo_loss, emo_soft_bounds

ot = pytest.importorskip("ot")


def _loop_emo(logits, labels, emb):
    """float64 loop reference: sum_i p_i (1 - cos(e_i, e_t))."""
    out = []
    for z, t in zip(logits.double(), labels):
        p = torch.softmax(z, -1)
        s = 0.0
        for i in range(z.numel()):
            s += float(p[i]) * (1 - float(F.cosine_similarity(emb[i].double(), emb[t].double(), dim=0)))
        out.append(s)
    return torch.tensor(out, dtype=torch.float64)


def _case(seed, b=5, v=7, d=3, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, v, generator=g, dtype=dtype), torch.randint(0, v, (b,), generator=g),
            torch.randn(v, d, generator=g, dtype=dtype))


def test_loop_reference():
    z, t, e = _case(0)
    torch.testing.assert_close(emo_loss(z, t, e, reduction="none"), _loop_emo(z, t, e))


def test_matches_pot_and_linprog_one_hot():
    z, t, e = _case(1, b=4, v=9)
    cost = cosine_cost_matrix(e).numpy()
    got = emo_loss(z, t, e, reduction="none").numpy()
    for k in range(4):
        p = torch.softmax(z[k], -1).numpy()
        tau = np.eye(9)[int(t[k])]
        assert got[k] == pytest.approx(ot.emd2(p, tau, cost), abs=1e-9)
        assert got[k] == pytest.approx(emd_linprog(p, tau, cost), abs=1e-7)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_soft_bounds_bracket_exact_ot(seed):
    g = torch.Generator().manual_seed(seed)
    v = 6
    e = torch.randn(v, 3, generator=g, dtype=torch.float64)
    p = torch.softmax(2 * torch.randn(v, generator=g, dtype=torch.float64), -1)
    tau = torch.softmax(2 * torch.randn(v, generator=g, dtype=torch.float64), -1)
    lo, up = emo_soft_bounds(p, tau, e)
    exact = ot.emd2(p.numpy(), tau.numpy(), cosine_cost_matrix(e).numpy())
    assert float(lo) - 1e-9 <= exact <= float(up) + 1e-9
    assert float(up) == pytest.approx(float(p @ cosine_cost_matrix(e) @ tau), abs=1e-12)


def test_gradient_of_target_logit():
    z, t, e = _case(2)
    z.requires_grad_(True)
    loss = emo_loss(z, t, e, reduction="none")
    loss.sum().backward()
    p = torch.softmax(z.detach(), -1)
    torch.testing.assert_close(z.grad[torch.arange(5), t], -p[torch.arange(5), t] * loss.detach())
    assert torch.autograd.gradcheck(lambda x: emo_loss(x, t, e), (z.detach().clone().requires_grad_(True),))


def test_ignore_index_reductions_and_mix():
    z, t, e = _case(3, b=6)
    t2 = t.clone()
    t2[0] = -100
    full = emo_loss(z, t2, e, reduction="none")
    assert full[0] == 0
    torch.testing.assert_close(emo_loss(z, t2, e), full[1:].mean())
    torch.testing.assert_close(emo_loss(z, t2, e, reduction="sum"), full.sum())
    mix = emo_ce_mix(z, t2, e)
    torch.testing.assert_close(mix, F.cross_entropy(z, t2))  # value equals CE
    # embedding is frozen
    e2 = e.clone().requires_grad_(True)
    assert not emo_loss(z, t, e2).requires_grad


def test_dtype_and_batch_shapes():
    z, t, e = _case(4, b=6, dtype=torch.float32)
    out = emo_loss(z.view(2, 3, -1).to(torch.bfloat16), t.view(2, 3), e, reduction="none")
    assert out.dtype == torch.bfloat16 and out.shape == (2, 3)
    torch.testing.assert_close(out.float(), emo_loss(z, t, e, reduction="none").view(2, 3), atol=2e-2, rtol=0)


@pytest.mark.parametrize("bad", [
    lambda z, t, e: emo_loss(z, t.float(), e),
    lambda z, t, e: emo_loss(z, t[:-1], e),
    lambda z, t, e: emo_loss(z, t, e[:-1]),
    lambda z, t, e: emo_loss(z, t + 100, e),
    lambda z, t, e: emo_loss(z, t, e, reduction="avg"),
    lambda z, t, e: emo_loss(z, t, torch.zeros_like(e)),
    lambda z, t, e: emo_soft_bounds(torch.softmax(z, -1), torch.softmax(z, -1) * 2, e),
    lambda z, t, e: emd_linprog([0.5, 0.5], [1.0], [[0.0, 1.0]]),
])
def test_bad_input(bad):
    z, t, e = _case(5)
    with pytest.raises(ValueError):
        bad(z, t, e)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    z, t, e = _case(6, dtype=torch.float32)
    out = emo_loss(z.cuda(), t.cuda(), e.cuda(), reduction="none")
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), emo_loss(z, t, e, reduction="none"))


# --- the fine-tuning harness: count-form losses, the synonym language, batched bigram LMs ------------------------

from kexue_lib.emo import (BigramLMs, chain_cross_entropy, chain_emo, cross_entropy_counts,  # noqa: E402
                           distinct_bigrams,
                           emo_ce_mix_counts, emo_loss_counts, neighbour_purity, ppmi_embedding, sample_chain,
                           synonym_language, train_lms)


def _pairs_case(seed, g=3, v=7, d=4, n=40):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(g, v, v, generator=gen, dtype=torch.float64)
    e = torch.randn(g, v, d, generator=gen, dtype=torch.float64)
    pairs = torch.randint(0, v, (g, n, 2), generator=gen)
    counts = torch.zeros(g, v, v, dtype=torch.float64)
    for k in range(g):
        for a, b in pairs[k].tolist():
            counts[k, a, b] += 1
    return z, e, pairs, counts


def test_count_form_equals_token_means():
    z, e, pairs, counts = _pairs_case(10)
    for k in range(3):
        zl, y = z[k][pairs[k, :, 0]], pairs[k, :, 1]  # the same pairs listed token by token
        torch.testing.assert_close(cross_entropy_counts(z, counts)[k], F.cross_entropy(zl, y))
        torch.testing.assert_close(emo_loss_counts(z, counts, e)[k], emo_loss(zl, y, e[k]))
        torch.testing.assert_close(emo_ce_mix_counts(z, counts, e)[k], emo_ce_mix(zl, y, e[k]))


def test_count_form_gradient_equals_token_gradient():
    z, e, pairs, counts = _pairs_case(11)
    z1 = z.clone().requires_grad_(True)
    emo_ce_mix_counts(z1, counts, e).sum().backward()
    z2 = z.clone().requires_grad_(True)
    sum(emo_ce_mix(z2[k][pairs[k, :, 0]], pairs[k, :, 1], e[k]) for k in range(3)).backward()
    torch.testing.assert_close(z1.grad, z2.grad)
    assert torch.autograd.gradcheck(lambda x: emo_loss_counts(x, counts, e), (z.clone().requires_grad_(True),))


def _members(v=12, k=3, seed=0):
    return torch.randperm(v, generator=torch.Generator().manual_seed(seed)).view(k, v // k)


def test_synonym_language_structure():
    members = _members()
    law, pi = synonym_language(members, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(law.sum(1), torch.ones(12))
    torch.testing.assert_close(pi @ law, pi, atol=1e-6, rtol=0)  # stationary
    for c in range(3):  # the next-token law depends on the class of the current token only
        rows = law[members[c]]
        torch.testing.assert_close(rows, rows[:1].expand_as(rows))
        # and a class emits only its members, with Zipf weights 1, 1/2, ... in some order
        w = law[0, members[c]] / law[0, members[c]].sum()
        torch.testing.assert_close(w.sort(descending=True).values, torch.tensor([1, 1 / 2, 1 / 3, 1 / 4]) / (25 / 12))


def test_sample_chain_frequencies_and_entropy_rate():
    members = _members()
    law, pi = synonym_language(members, generator=torch.Generator().manual_seed(2))
    x = sample_chain(law, 4000, 6, generator=torch.Generator().manual_seed(3))
    a, b = x[:, :-1].reshape(-1), x[:, 1:].reshape(-1)
    freq = torch.zeros(12, 12)
    freq.index_put_((a, b), torch.ones(a.numel()), accumulate=True)
    emp = freq / freq.sum(1, keepdim=True)
    se = (law * (1 - law) / freq.sum(1, keepdim=True)).sqrt()
    assert bool(((emp - law).abs() <= 5 * se + 1e-6).all())
    # the true law minimises the true cross-entropy (Gibbs); a uniform model pays log V
    h = chain_cross_entropy(law, law, pi)
    other = torch.softmax(torch.randn(12, 12, generator=torch.Generator().manual_seed(4)), -1)
    assert float(h) < float(chain_cross_entropy(other, law, pi))
    uniform = chain_cross_entropy(torch.full((12, 12), 1 / 12), law, pi)
    torch.testing.assert_close(uniform, torch.tensor(np.log(12.0)).float())
    # Monte Carlo check of the closed form: mean of -log qhat(next | current) along the chain after burn-in
    y = sample_chain(law, 2000, 40, generator=torch.Generator().manual_seed(8))[:, 20:]
    nll = -other[y[:, :-1], y[:, 1:]].log().mean(1)  # (2000,): one mean per independent sequence
    se = float(nll.std() / np.sqrt(nll.numel()))
    assert abs(float(nll.mean()) - float(chain_cross_entropy(other, law, pi))) < 4 * se


def test_bigram_lms_match_a_plain_module_and_do_not_depend_on_the_batch():
    lms = BigramLMs(vocab=10, dim=6, seeds=[3, 7])
    alone = BigramLMs(vocab=10, dim=6, seeds=[7])
    for name in ("emb", "w1", "b1", "w2", "b2"):
        torch.testing.assert_close(getattr(lms, name)[1], getattr(alone, name)[0])
    ref = torch.nn.Sequential(torch.nn.Embedding(10, 6), torch.nn.Linear(6, 6), torch.nn.GELU(), torch.nn.Linear(6, 10))
    with torch.no_grad():
        ref[0].weight.copy_(lms.emb[0]); ref[1].weight.copy_(lms.w1[0]); ref[1].bias.copy_(lms.b1[0])
        ref[3].weight.copy_(lms.w2[0]); ref[3].bias.copy_(lms.b2[0])
    x = torch.randint(0, 10, (2, 4, 5))
    torch.testing.assert_close(lms(x)[0], ref(x[0]))
    torch.testing.assert_close(lms.table()[0], ref(torch.arange(10)))
    torch.testing.assert_close(lms.next_token_law().sum(-1), torch.ones(2, 10))
    assert lms.head.shape == (2, 10, 6) and not lms.head.requires_grad


def test_train_lms_models_are_independent_and_learn():
    members = _members()
    law, pi = synonym_language(members, generator=torch.Generator().manual_seed(5))
    data = torch.stack([sample_chain(law, 64, 9, generator=torch.Generator().manual_seed(s)) for s in (0, 1)])
    both = BigramLMs(vocab=12, dim=8, seeds=[0, 1])
    before = chain_cross_entropy(both.next_token_law(), law, pi)
    snaps = train_lms(both, data, 30, cross_entropy_counts, seeds=[10, 11], batch=8, record=(30,))
    one = BigramLMs(vocab=12, dim=8, seeds=[1])
    train_lms(one, data[1:], 30, cross_entropy_counts, seeds=[11], batch=8)
    torch.testing.assert_close(both.w2[1], one.w2[0], atol=1e-5, rtol=1e-5)
    after = chain_cross_entropy(snaps[30], law, pi)
    assert bool((after < before).all())
    cost = torch.randn(2, 12, 4)
    train_lms(both, data, 2, lambda z, n: emo_ce_mix_counts(z, n, cost), seeds=[0, 1], batch=4)
    with pytest.raises(ValueError):
        train_lms(both, data, 1, lambda z, n: cross_entropy_counts(z, n).sum(), seeds=[0, 1])


def test_ppmi_embedding_recovers_synonyms():
    members = _members(v=32, k=8)
    token_class = torch.empty(32, dtype=torch.long)
    token_class[members] = torch.arange(8)[:, None]
    law, _ = synonym_language(members, generator=torch.Generator().manual_seed(6))
    x = sample_chain(law, 400, 33, generator=torch.Generator().manual_seed(7))
    e = ppmi_embedding(x, 32, 8)
    assert e.shape == (32, 8) and e.dtype == torch.float32
    assert neighbour_purity(e, token_class) >= 0.9  # chance is 3/31
    assert neighbour_purity(torch.randn(32, 8, generator=torch.Generator().manual_seed(8)), token_class) < 0.5
    assert neighbour_purity(F.one_hot(token_class, 8).float() + 0.01 * torch.randn(32, 8), token_class) == 1.0
    # two tokens with identical contexts get the same row direction
    y = torch.tensor([[0, 1, 2], [0, 3, 2], [2, 1, 0], [2, 3, 0]])
    ey = F.normalize(ppmi_embedding(y, 4, 2), dim=-1)
    assert float(ey[1] @ ey[3]) == pytest.approx(1.0, abs=1e-6)


def test_chain_emo_matches_the_cost_matrix_sum():
    members = _members()
    law, pi = synonym_language(members, generator=torch.Generator().manual_seed(9))
    law, pi = law.double(), pi.double()
    gen = torch.Generator().manual_seed(10)
    qhat = torch.softmax(torch.randn(2, 12, 12, generator=gen, dtype=torch.float64), -1)
    e = torch.randn(2, 12, 3, generator=gen, dtype=torch.float64)
    for k in range(2):
        direct = (pi[:, None] * (qhat[k] @ cosine_cost_matrix(e[k])) * law).sum()
        torch.testing.assert_close(chain_emo(qhat, law, pi, e)[k], direct)
    with pytest.raises(ValueError):
        chain_emo(qhat, law, pi, e[:, :5])


def test_distinct_bigrams():
    assert distinct_bigrams(torch.tensor([[1, 2, 1, 2], [1, 2, 3, 3]])) == pytest.approx(4 / 6)


@pytest.mark.parametrize("bad", [
    lambda: cross_entropy_counts(torch.randn(2, 3, 3), -torch.ones(2, 3, 3)),
    lambda: cross_entropy_counts(torch.randn(2, 3, 3), torch.zeros(2, 3, 3)),
    lambda: emo_loss_counts(torch.randn(2, 3, 3), torch.ones(2, 3, 3), torch.randn(2, 4, 2)),
    lambda: emo_loss_counts(torch.randn(2, 3, 3), torch.ones(2, 3, 3), torch.zeros(2, 3, 2)),
    lambda: synonym_language(torch.tensor([[0, 1], [1, 2]])),
    lambda: sample_chain(torch.ones(3, 4) / 4, 2, 3),
    lambda: chain_cross_entropy(torch.ones(3, 3) / 3, torch.ones(4, 4) / 4, torch.ones(4) / 4),
    lambda: BigramLMs(vocab=1, dim=4, seeds=[0]),
    lambda: BigramLMs(vocab=5, dim=4, seeds=[]),
    lambda: BigramLMs(vocab=5, dim=4, seeds=[0])(torch.zeros(2, 3, 4, dtype=torch.long)),
    lambda: train_lms(BigramLMs(vocab=5, dim=4, seeds=[0]), torch.zeros(1, 3, 4, dtype=torch.long), 1,
                      cross_entropy_counts, seeds=[0, 1]),
    lambda: ppmi_embedding(torch.tensor([[0, 5]]), 4, 2),
    lambda: ppmi_embedding(torch.tensor([[0, 1]]), 4, 5),
    lambda: neighbour_purity(torch.randn(4, 2), torch.zeros(3, dtype=torch.long)),
    lambda: distinct_bigrams(torch.zeros(3, 1, dtype=torch.long)),
])
def test_harness_bad_input(bad):
    with pytest.raises(ValueError):
        bad()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_count_form_cuda_matches_cpu():
    z, e, _, counts = _pairs_case(12)
    out = emo_ce_mix_counts(z.cuda(), counts.cuda(), e.cuda())
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), emo_ce_mix_counts(z, counts, e))
    lms = BigramLMs(vocab=7, dim=4, seeds=[0]).cuda()
    assert lms.next_token_law().device.type == "cuda"
