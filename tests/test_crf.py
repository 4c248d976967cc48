"""Tests of kexue_lib.crf: BIO tags and the linear-chain CRF (article https://kexue.fm/archives/8373)."""
import itertools

import pytest
import torch
from hypothesis import given, settings, strategies as st

from kexue_lib import crf
from kexue_lib import global_pointer as gp


def _params(k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*shape, generator=g, dtype=torch.float64) for shape in ((k, k), (k,), (k,)))


def _brute(e, A, pi, om, length):
    """float64 enumeration of all k^length paths of one sentence: (log Z, best path, {path: score})."""
    k = e.shape[-1]
    scores = {}
    for y in itertools.product(range(k), repeat=length):
        s = pi[y[0]] + om[y[-1]] + sum(e[t, y[t]] for t in range(length)) + sum(A[y[t - 1], y[t]] for t in range(1, length))
        scores[y] = s
    vals = torch.stack(list(scores.values()))
    return torch.logsumexp(vals, 0), max(scores, key=lambda y: float(scores[y])), scores


def test_partition_score_and_viterbi_match_enumeration():
    k, n = 3, 5
    A, pi, om = _params(k)
    e = torch.randn(2, n, k, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mask = torch.tensor([[1] * 5, [1, 1, 1, 0, 0]]).bool()
    logz = crf.crf_log_partition(e, A, pi, om, mask)
    best = crf.crf_viterbi(e, A, pi, om, mask)
    for b, length in enumerate((5, 3)):
        ref_z, ref_best, scores = _brute(e[b], A, pi, om, length)
        torch.testing.assert_close(logz[b], ref_z)
        assert tuple(best[b, :length].tolist()) == ref_best and best[b, length:].eq(0).all()
        tags = torch.zeros(1, n, dtype=torch.long)
        tags[0, :length] = torch.tensor(ref_best)
        got = crf.crf_path_score(e[b:b + 1], tags, A, pi, om, mask[b:b + 1])
        torch.testing.assert_close(got[0], scores[ref_best])


def test_nll_is_normalised_and_marginals_sum_to_one():
    k, n = 3, 4
    A, pi, om = _params(k, 2)
    e = torch.randn(1, n, k, generator=torch.Generator().manual_seed(3), dtype=torch.float64, requires_grad=True)
    total = sum(torch.exp(-crf.crf_nll(e, torch.tensor([y]), A, pi, om)) for y in itertools.product(range(k), repeat=n))
    torch.testing.assert_close(total[0], torch.tensor(1.0, dtype=torch.float64))
    crf.crf_log_partition(e, A, pi, om).sum().backward()  # d log Z / d e = per-position tag marginals
    torch.testing.assert_close(e.grad.sum(-1), torch.ones(1, n, dtype=torch.float64))


def test_module_casts_parameters_and_is_mean_nll():
    m = crf.LinearChainCRF(4)
    with torch.no_grad():
        m.transitions.copy_(torch.randn(4, 4))
    e = torch.randn(3, 6, 4, dtype=torch.float64)
    tags = torch.randint(4, (3, 6))
    ref = crf.crf_nll(e, tags, m.transitions.double(), m.start.double(), m.end.double()).mean()
    torch.testing.assert_close(m(e, tags), ref)
    assert m.decode(e).shape == (3, 6)


def test_bad_input():
    A, pi, om = _params(3)
    e = torch.randn(2, 4, 3, dtype=torch.float64)
    with pytest.raises(ValueError):
        crf.crf_log_partition(e, A, pi, om, torch.tensor([[1, 0, 1, 1], [1, 1, 1, 1]]))  # not a prefix
    with pytest.raises(ValueError):
        crf.crf_log_partition(e, A[:2, :2], pi, om)
    with pytest.raises(ValueError):
        crf.bio_encode([{(0, 0, 2), (1, 2, 3)}], n=4, types=2)  # overlap
    with pytest.raises(ValueError):
        crf.bio_encode([{(2, 0, 1)}], n=4, types=2)
    with pytest.raises(ValueError):
        crf.LinearChainCRF(0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 9), st.integers(0, 3)), max_size=6))
def test_bio_roundtrip_and_outermost(raw):
    spans = {(t, i, min(i + L, 9)) for t, i, L in raw}
    flat = crf.outermost_spans(spans)
    assert all(j < a or i > b for (_, i, j), (_, a, b) in itertools.combinations(flat, 2))  # non-overlapping
    for s in spans - flat:  # every dropped span overlaps a kept one at least as long
        assert any(not (s[2] < a or s[1] > b) and b - a >= s[2] - s[1] for _, a, b in flat)
    assert crf.bio_decode(crf.bio_encode([flat], n=10, types=3)) == [flat]


def test_outermost_keeps_outer_of_a_nest():
    assert crf.outermost_spans({(0, 2, 3), (2, 2, 4), (1, 6, 6)}) == {(2, 2, 4), (1, 6, 6)}


def test_bio_decode_drops_orphan_inside_tags():
    assert crf.bio_decode(torch.tensor([[2, 1, 2, 4, 3, 3]])) == [{(0, 1, 2), (1, 4, 4), (1, 5, 5)}]


def test_sequential_depth_grows_for_crf_not_for_global_pointer():
    torch.manual_seed(0)
    m, head = crf.LinearChainCRF(5), gp.GlobalPointer(8, 2, head_size=4)
    depth_crf, depth_gp, calls_vit = [], [], []
    for n in (6, 18):
        e = torch.randn(2, n, 5, requires_grad=True)
        h = torch.randn(2, n, 8, requires_grad=True)
        depth_crf.append(crf.autograd_depth(m(e, torch.randint(5, (2, n)))))
        depth_gp.append(crf.autograd_depth(gp.global_pointer_loss(head(h), torch.zeros(2, 2, n, n))))
        calls_vit.append(crf.torch_call_count(m.decode, e.detach()))
    assert depth_gp[0] == depth_gp[1] and depth_crf[1] - depth_crf[0] >= 12 and calls_vit[1] > calls_vit[0] + 12
    assert crf.autograd_depth(torch.zeros(3)) == 0
    assert crf.torch_call_count(lambda x: (x > 0).nonzero(), torch.randn(4)) == 2


def test_interleaved_times():
    t = crf.interleaved_times({"a": lambda: torch.randn(10).sum(), "b": lambda: None}, repeat=3, number=2)
    assert set(t) == {"a", "b"} and all(len(v) == 3 and min(v) >= 0 for v in t.values())
    with pytest.raises(ValueError):
        crf.interleaved_times({}, repeat=2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda():
    A, pi, om = (p.cuda() for p in _params(3))
    e = torch.randn(2, 5, 3, dtype=torch.float64, device="cuda")
    assert crf.crf_viterbi(e, A, pi, om).device.type == "cuda"
    torch.testing.assert_close(crf.crf_log_partition(e, A, pi, om).cpu(),
                               crf.crf_log_partition(e.cpu(), A.cpu(), pi.cpu(), om.cpu()))


def test_crf_tagger_uses_emissions_of_its_linear_layer():
    torch.manual_seed(0)
    tagger = crf.CRFTagger(6, 5).double()
    h = torch.randn(2, 4, 6, dtype=torch.float64)
    tags = torch.randint(5, (2, 4))
    torch.testing.assert_close(tagger.nll(h, tags), tagger.crf(tagger.emit(h), tags))
    assert torch.equal(tagger.decode(h), tagger.crf.decode(tagger.emit(h)))
    torch.manual_seed(1)
    a = crf.CRFTagger(6, 5)
    torch.manual_seed(1)
    b = torch.nn.Linear(6, 5)
    assert torch.equal(a.emit.weight, b.weight)  # same initial emissions as a softmax tagger of the same seed
