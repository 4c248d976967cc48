"""Tests of kexue_lib.tokenize (BytePiece-style tokenizer, kexue.fm/archives/9752)."""
import math
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from kexue_lib.tokenize import Tokenizer, brute_force_segment, compression_rate, count_ngrams, train

CORPUS = ["the cat sat on the mat\n", "the dog sat on the log\n", "字节是计算机存储的基本单位。\n",
          "then the cat ate the rat\n"] * 20


@pytest.fixture(scope="module")
def tok():
    return train(CORPUS, vocab_size=400, min_count=2)


def _viterbi_loop(data: bytes, logp: dict):
    """float64 loop reference of the unigram Viterbi recursion."""
    n, S, back = len(data), [0.0] + [-math.inf] * len(data), [0] * (len(data) + 1)
    for e in range(1, n + 1):
        for s in range(e):
            p = data[s:e]
            if p in logp and S[s] + logp[p] > S[e]:
                S[e], back[e] = S[s] + logp[p], s
    out, e = [], n
    while e:
        out.append(data[back[e]:e]); e = back[e]
    return out[::-1], S[n]


def test_viterbi_matches_loop_and_brute_force(tok):
    lp = dict(zip(tok.pieces, tok.logp.tolist()))
    rnd = random.Random(0)
    text = "".join(CORPUS[:4]).encode()
    for _ in range(100):
        i = rnd.randrange(len(text) - 10)
        s = text[i:i + rnd.randint(1, 10)]
        ours = tok.tokenize(s)
        _, ref = _viterbi_loop(s, lp)
        _, bf = brute_force_segment(s, lp)
        assert b"".join(ours) == s
        assert math.isclose(sum(lp[p] for p in ours), ref, rel_tol=1e-12, abs_tol=1e-12)
        assert math.isclose(ref, bf, rel_tol=1e-12, abs_tol=1e-12)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=60), max_size=5))
def test_round_trip_any_bytes(data):
    tok = _TOK
    for x, ids in zip(data, tok.encode_batch(data)):
        assert tok.decode(ids) == x


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=40), st.integers(0, 1000))
def test_round_trip_sampling(text, seed):
    ids = _TOK.encode(text, alpha=0.3, seed=seed)
    assert _TOK.decode(ids) == text.encode()


_TOK = train(CORPUS, vocab_size=400, min_count=2)


def test_no_normalization():
    s = "e\u0301 \uff21"                       # combining accent, fullwidth A: NFC/NFKC would change them
    assert _TOK.decode(_TOK.encode(s)) == s.encode()


def test_sampling_distribution():
    tok = Tokenizer({b"ab": 4, b"a": 3, b"b": 3})
    lp = dict(zip(tok.pieces, tok.logp.tolist()))
    alpha = 0.5
    w1, w2 = alpha * lp[b"ab"], alpha * (lp[b"a"] + lp[b"b"])
    p_ab = 1 / (1 + math.exp(w2 - w1))
    hits = np.mean([tok.encode(b"ab", alpha=alpha, seed=s) == [tok.piece_to_id[b"ab"]] for s in range(3000)])
    assert abs(hits - p_ab) < 4 * math.sqrt(p_ab * (1 - p_ab) / 3000)


def test_save_load(tmp_path, tok):
    path = str(tmp_path / "tok.json")
    tok.save(path)
    tok2 = Tokenizer.load(path)
    assert tok2.pieces == tok.pieces
    assert tok2.encode_batch(CORPUS[:4]) == tok.encode_batch(CORPUS[:4])


def test_count_ngrams_loop():
    chunks = [b"abcab", b"bca"]
    got = count_ngrams(chunks, order=3)
    for j in range(1, 4):
        ref = {}
        for c in chunks:
            for i in range(len(c) - j + 1):
                ref[c[i:i + j]] = ref.get(c[i:i + j], 0) + 1
        assert got[j] == ref


def test_peer_bytepiece_compression(tmp_path):
    bytepiece = pytest.importorskip("bytepiece")
    import contextlib
    import io
    trainer = bytepiece.Trainer(order=6, max_vocab_size=400, min_count=2)
    with contextlib.redirect_stderr(io.StringIO()):
        trainer.train(CORPUS)
    trainer.save(str(tmp_path / "bp.json"))
    peer = bytepiece.Tokenizer(str(tmp_path / "bp.json"))
    ours = train(CORPUS, vocab_size=400, min_count=2)
    c_ours, c_peer = compression_rate(CORPUS, ours.encode), compression_rate(CORPUS, peer.encode)
    assert abs(c_ours / c_peer - 1) < 0.02
    assert set(ours.pieces) == set(peer._pieces) | {bytes([i]) for i in range(256)}


def test_bad_input():
    with pytest.raises(ValueError):
        Tokenizer({})
    with pytest.raises(ValueError):
        Tokenizer({b"a": -1})
    with pytest.raises(ValueError):
        _TOK.encode(3)
    with pytest.raises(ValueError):
        _TOK.encode("a", alpha=-1.0)
    with pytest.raises(ValueError):
        train([], vocab_size=300)
    with pytest.raises(ValueError):
        train(CORPUS, vocab_size=10)
    with pytest.raises(ValueError):
        _TOK.decode([10 ** 9])
    with pytest.raises(ValueError):
        _TOK.decode([-1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_not_needed():
    # the tokenizer is a CPU (numpy) algorithm; token ids feed any device
    ids = torch.tensor(_TOK.encode("the cat"), device="cuda")
    assert _TOK.decode(ids.cpu().tolist()) == b"the cat"
