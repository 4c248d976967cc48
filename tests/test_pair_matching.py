import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kexue_lib.cosent import best_binary_threshold, binary_accuracy
from kexue_lib.pair_matching import (OBJECTIVES, BestOnValidation, StackedBiEncoder, StackedCrossEncoder, StackedLinear,
                                     build_pair_model, stacked_pairs, synonym_pairs, train_pair_models,
                                     validation_threshold_accuracy)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny batched matmuls: one thread is several times faster than two on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_synonym_pairs_semantics():
    K, L = 5, 6
    for task in ("lexical", "order"):
        a, b, y = synonym_pairs(2000, task=task, generator=torch.Generator().manual_seed(0), concepts=K, length=L)
        assert a.shape == b.shape == (2000, L) and y.shape == (2000,)
        assert int(a.max()) < 2 * K and int(a.min()) >= 0
        ca, cb = a % K, b % K  # concepts
        pos, neg = y == 1, y == 0
        assert torch.equal(ca[pos], cb[pos])  # paraphrases: same concepts, synonyms redrawn
        assert bool(((a != b)[pos]).any())
        assert 0.45 < float(y.float().mean()) < 0.55
        changed = (ca[neg] != cb[neg]).sum(1)  # positions whose concept differs
        if task == "order":  # the same multiset of concepts, exactly two positions differ
            assert torch.equal(ca[neg].sort(1).values, cb[neg].sort(1).values)
            assert bool((changed == 2).all())
        else:  # every negative differs somewhere; about p_change of the positions differ
            assert int(changed.min()) >= 1
            assert abs(float(changed.float().mean()) / L - 0.5) < 0.05


def test_synonym_pairs_errors():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError):
        synonym_pairs(10, task="shuffle", generator=g)
    with pytest.raises(ValueError):
        synonym_pairs(0, task="order", generator=g)
    with pytest.raises(ValueError):
        synonym_pairs(10, task="lexical", generator=g, p_change=0.0)
    with pytest.raises(ValueError):
        stacked_pairs(10, task="order", seeds=[])


def test_stacked_pairs_are_per_seed():
    a, b, y = stacked_pairs(50, task="order", seeds=[3, 4], salt=10)
    a3, b3, y3 = synonym_pairs(50, task="order", generator=torch.Generator().manual_seed(13))
    assert a.shape == (2, 50, 8) and torch.equal(a[0], a3) and torch.equal(b[0], b3) and torch.equal(y[0], y3)


def test_stacked_modules_match_a_loop_over_models():
    g = torch.Generator().manual_seed(1)
    bi = StackedBiEncoder(3, vocab=16, length=8, generator=g)
    cross = StackedCrossEncoder(3, vocab=16, length=8, generator=g)
    x = torch.randint(0, 16, (3, 5, 8), generator=g)
    x2 = torch.randint(0, 16, (3, 5, 8), generator=g)
    out, logit = bi(x), cross(x, x2)
    for s in range(3):
        e = bi.emb.weight[s][x[s]]  # (5, 8, 16)
        h = F.gelu(e.flatten(1) @ bi.fc1.weight[s] + bi.fc1.bias[s])
        torch.testing.assert_close(out[s], h @ bi.fc2.weight[s] + bi.fc2.bias[s])
        ea, eb = cross.emb.weight[s][x[s]], cross.emb.weight[s][x2[s]]
        m = (ea @ eb.transpose(1, 2) / 4.0).flatten(1)  # sqrt(16) = 4
        ref = F.gelu(m @ cross.fc1.weight[s] + cross.fc1.bias[s]) @ cross.fc2.weight[s] + cross.fc2.bias[s]
        torch.testing.assert_close(logit[s], ref.squeeze(-1))
    bag = StackedBiEncoder(2, vocab=16, length=8, order=False, generator=g)
    perm = x[:2, :, torch.randperm(8, generator=g)]
    torch.testing.assert_close(bag(x[:2]), bag(perm), rtol=1e-5, atol=1e-6)  # order-blind
    with pytest.raises(ValueError):
        bi(x[:2])
    with pytest.raises(ValueError):
        cross(x[:, :, :6], x2[:, :, :6])
    with pytest.raises(ValueError):
        bi(x + 16)  # token ids out of range


def test_stacked_linear_init_bound():
    lin = StackedLinear(4, 100, 7, generator=torch.Generator().manual_seed(0))
    assert lin.weight.shape == (4, 100, 7) and float(lin.weight.detach().abs().max()) <= 0.1


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_stacked_training_equals_separate_training(objective):
    """Adam on the summed loss of a stack = each model trained alone on its own batches (no cross terms)."""
    train = stacked_pairs(300, task="order", seeds=[0, 1])
    stack = build_pair_model(objective, 2, vocab=16, length=8, generator=torch.Generator().manual_seed(7))
    alone = [build_pair_model(objective, 1, vocab=16, length=8) for _ in range(2)]
    with torch.no_grad():
        for s, m in enumerate(alone):
            for (_, p), (_, q) in zip(stack.named_parameters(), m.named_parameters()):
                q.copy_(p[s:s + 1])
    opts = [torch.optim.Adam(m.parameters(), lr=3e-3) for m in [stack, *alone]]
    g = torch.Generator().manual_seed(3)
    rows = torch.arange(2)[:, None]
    for _ in range(12):
        idx = torch.randint(0, 300, (2, 32), generator=g)
        batch = tuple(t[rows, idx] for t in train)
        for k, (m, opt) in enumerate(zip([stack, *alone], opts)):
            part = batch if k == 0 else tuple(t[k - 1:k] for t in batch)
            loss = m.loss(*part).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    for s, m in enumerate(alone):
        for (name, p), (_, q) in zip(stack.named_parameters(), m.named_parameters()):
            torch.testing.assert_close(p[s:s + 1], q, rtol=1e-4, atol=1e-5, msg=name)


def test_train_pair_models_learns_and_validates():
    train = stacked_pairs(2000, task="lexical", seeds=[0, 1])
    test = stacked_pairs(500, task="lexical", seeds=[0, 1], salt=99)
    seen = []
    m = train_pair_models("cosent", train, steps=60, seed=0, callback=lambda step, model: seen.append(step))
    assert seen == list(range(60)) and not m.training
    with torch.no_grad():
        acc = validation_threshold_accuracy(m.score(*train[:2]), train[2], m.score(*test[:2]), test[2])
    assert acc.shape == (2,) and np.all(acc > 0.75)  # chance is 0.5
    with pytest.raises(ValueError):
        train_pair_models("triplet", train, steps=1)
    with pytest.raises(ValueError):
        train_pair_models("cosent", (train[0], train[1][:, :10], train[2]), steps=1)
    with pytest.raises(ValueError):
        validation_threshold_accuracy(torch.zeros(2, 5), torch.zeros(2, 5), torch.zeros(3, 5), torch.zeros(3, 5))


def test_validation_threshold_accuracy_matches_per_model_scan():
    g = torch.Generator().manual_seed(0)
    vs, ts = torch.rand(3, 200, generator=g), torch.rand(3, 300, generator=g)
    vy, ty = (vs + 0.3 * torch.rand(3, 200, generator=g) > 0.6).long(), (ts > 0.5).long()
    acc = validation_threshold_accuracy(vs, vy, ts, ty)
    for s in range(3):
        t, _ = best_binary_threshold(vs[s], vy[s])
        assert acc[s] == pytest.approx(binary_accuracy(ts[s], ty[s], t))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pair_models_on_cuda():
    train = tuple(t.cuda() for t in stacked_pairs(200, task="order", seeds=[0, 1]))
    for objective in OBJECTIVES:
        m = train_pair_models(objective, train, steps=3, batch=16)
        assert m.score(*train[:2]).device.type == "cuda"


def test_best_on_validation_keeps_each_models_best_checkpoint():
    train = stacked_pairs(1500, task="order", seeds=[0, 1, 2])
    val = stacked_pairs(400, task="order", seeds=[0, 1, 2], salt=50)
    test = stacked_pairs(400, task="order", seeds=[0, 1, 2], salt=60)
    sel = BestOnValidation(val, test, every=10, fit=tuple(t[:, :300] for t in train))
    model = train_pair_models("cosent", train, steps=60, batch=64, callback=sel)
    h = sel.arrays()
    assert h["val"].shape == h["test"].shape == h["fit"].shape == (6, 3) and list(h["step"]) == [10, 20, 30, 40, 50, 60]
    np.testing.assert_array_equal(sel.best_val, h["val"].max(0))
    first_best = h["val"].argmax(0)  # strict improvement keeps the earliest of equal maxima
    np.testing.assert_array_equal(sel.best_epoch, first_best)
    np.testing.assert_array_equal(sel.best_test, h["test"][first_best, np.arange(3)])
    with torch.no_grad():
        sel.restore(model)
        again = [best_binary_threshold(s, y)[1] for s, y in zip(model.score(*val[:2]), val[2])]
    np.testing.assert_allclose(again, sel.best_val)
    with pytest.raises(ValueError):
        BestOnValidation(val, every=5).restore(model)
