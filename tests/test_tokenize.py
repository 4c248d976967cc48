"""Tests of kexue_lib.tokenize (BytePiece-style tokenizer, kexue.fm/archives/9752)."""
import math
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from kexue_lib import tokenize as T
from kexue_lib.tokenize import (BPE, Tokenizer, brute_force_segment, compression_rate, count_ngrams, parallel_lengths,
                                sentencepiece_chunks, sphinx_messages, train, train_bpe, train_unigram)

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


def test_train_tiny_and_short_lines():
    # lines shorter than the n-gram order (a crash before) and a text of one line
    for texts in (["ab\n"], ["a\nbb\nccc\n"] * 3, ["x"]):
        tok = train(texts, vocab_size=300, min_count=1)
        assert all(tok.decode(tok.encode(t)) == t.encode() for t in texts)


def test_ties_go_to_the_longest_last_piece():
    # ab|c and a|bc score the same; the package keeps the longest last piece, and so do we
    tok = Tokenizer({b"ab": 5, b"bc": 5, b"a": 5, b"b": 5, b"c": 5})
    assert tok.tokenize(b"abc") == [b"a", b"bc"]


_rnd = random.Random(0)
VARIED = [" ".join(_rnd.choice("the a cat dog sat ran on under mat log big red".split()) for _ in range(_rnd.randint(3, 8)))
          + "\n" for _ in range(300)] + ["".join(_rnd.choice("字节是计算机存储的基本单位") for _ in range(6)) + "\n" for _ in range(60)]
# eight rare characters U+4F00..U+4F07, each once: they share their first two bytes, not the third
RARE = VARIED + [f"{chr(0x4F00 + i)} zebra quokka sat\n" for i in range(8)]


def test_peer_vocabulary_with_rare_characters(tmp_path):
    # a rare character's last byte cannot be emitted by any state of the n-gram model (its bigram is pruned):
    # every path has probability 0, and the package's argmax over all -inf scores goes back to state 0; we must
    # do the same to get its vocabulary
    bytepiece = pytest.importorskip("bytepiece")
    import contextlib
    import io
    for min_count in (2, 3):
        trainer = bytepiece.Trainer(order=6, max_vocab_size=2000, min_count=min_count)
        with contextlib.redirect_stderr(io.StringIO()):
            trainer.train(RARE)
        ours = train(RARE, vocab_size=2000, min_count=min_count)
        assert ours.vocab_size > 300
        assert set(ours.pieces) == set(trainer.pieces[0]) | {bytes([i]) for i in range(256)}


def test_exclude_whole_is_the_best_proper_split(tok):
    lp = dict(zip(tok.pieces, tok.logp.tolist()))
    multi = [p for p in tok.pieces if 2 <= len(p) <= 12][:150]
    for p, ids in zip(multi, tok._segment(multi, None, None, exclude_whole=True)):
        parts = [tok.pieces[i] for i in ids]
        assert b"".join(parts) == p and len(parts) >= 2
        best = max(sum(lp[q] for q in c) for c in _splits(p, lp) if len(c) >= 2)
        assert math.isclose(sum(lp[q] for q in parts), best, rel_tol=1e-12, abs_tol=1e-12)


def _splits(s, vocab):
    for mask in range(1 << (len(s) - 1)):
        cuts = [0] + [i + 1 for i in range(len(s) - 1) if mask >> i & 1] + [len(s)]
        parts = [s[a:b] for a, b in zip(cuts, cuts[1:])]
        if all(q in vocab for q in parts):
            yield parts


def test_flat_segmentation_is_the_concatenation(tok):
    docs = [c.encode() for c in CORPUS[:8]]
    assert tok._segment(docs, None, None, flat=True).tolist() == sum((a.tolist() for a in tok._segment(docs, None, None)), [])


# -- BPE ------------------------------------------------------------------------------------------------------
def _bpe_loop(chunks, n_merges):
    """Plain loop reference: count every adjacent pair (overlaps too), merge the most frequent (ties: smallest
    ids), left to right."""
    seqs, merges, nid = [list(c) for c in chunks], [], 256
    for _ in range(n_merges):
        counts = {}
        for q in seqs:
            for a, b in zip(q, q[1:]):
                counts[(a, b)] = counts.get((a, b), 0) + 1
        if not counts:
            break
        pair = min(counts, key=lambda p: (-counts[p], p))
        if counts[pair] < 2:
            break
        merges.append(pair)
        seqs = [_apply(q, pair, nid) for q in seqs]
        nid += 1
    return merges


def _apply(q, pair, new):
    out, i = [], 0
    while i < len(q):
        if i + 1 < len(q) and (q[i], q[i + 1]) == pair:
            out.append(new); i += 2
        else:
            out.append(q[i]); i += 1
    return out


def test_bpe_matches_loop_reference():
    texts = ["aaaa abab aaab\n", "the cat sat on the mat\n"] * 5 + ["字节字节是\n"] * 3
    chunks = [c for t in texts for c in T._LINES.findall(t.encode())]
    bpe = train_bpe(texts, vocab_size=300)
    assert bpe.merges == _bpe_loop(chunks, 300 - 256)
    for c in chunks[:5] + [b"aaaaaaa", b"unseen text"]:       # encoding = the merges applied in rank order
        q = list(c)
        for r, pair in enumerate(bpe.merges):
            q = _apply(q, pair, 256 + r)
        assert bpe.encode(c) == q


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=4), st.booleans())
def test_bpe_round_trip(data, sp):
    bpe = _BPE_SP if sp else _BPE
    for x, ids in zip(data, bpe.encode_batch(data)):
        assert bpe.decode(ids) == x


_BPE = train_bpe(CORPUS, vocab_size=320)
_BPE_SP = train_bpe(CORPUS, vocab_size=290, sentencepiece=True)


def test_sentencepiece_bpe_rules():
    assert all(len(sentencepiece_chunks(p)) == 1 and T._n_chars(p) <= 16 for p in _BPE_SP.pieces)
    assert "字".encode() in _BPE_SP.alphabet                     # characters are symbols of their own
    assert any(b" " in p[1:] for p in _BPE.pieces)              # without the rules pieces cross spaces
    assert _BPE_SP.vocab_size == 290


def test_alphabet_coverage():
    chunks = [("a" * 5000 + "字" * 100 + "龘").encode()]
    assert T._alphabet(chunks) == ["字".encode()]                  # the single rare character falls below 99.95%
    assert T._alphabet(chunks, coverage=1.0) == ["字".encode(), "龘".encode()]


# -- SentencePiece's pre-tokenization rules -------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_sentencepiece_chunks_partition(text):
    chunks = sentencepiece_chunks(text)
    assert b"".join(chunks) == text.encode("utf-8", errors="surrogateescape")
    for c in chunks:
        s = c.decode("utf-8", errors="surrogateescape")
        assert " " not in s[1:] and ("\n" not in s or s == "\n")
        scripts = {T._script(ch) for ch in s.lstrip(" ")} - {"Inherited"}
        assert len(scripts) <= 1


def test_sentencepiece_chunks_examples():
    assert [c.decode() for c in sentencepiece_chunks("Run v2 now，好的\nok  x")] == \
        ["Run", " v", "2", " now", "，", "好的", "\n", "ok", " ", " x"]
    assert [c.decode() for c in sentencepiece_chunks("ひらがなとカタカナと漢字")] == ["ひらがなとカタカナと漢字"]  # all Han
    assert [c.decode() for c in sentencepiece_chunks("e\u0301x \u0301")] == ["e\u0301x", " \u0301"]
    assert sentencepiece_chunks("") == []


def test_frequent_substrings_loop():
    chunks = ["abcabc字字ab\n".encode(), "字字abc".encode()]
    got = T._frequent_substrings(chunks, 8, True)
    ref = {}
    for c in chunks:
        starts = [i for i in range(len(c) + 1) if i == len(c) or not 128 <= c[i] < 192]
        for a in starts:
            for b in starts:
                if 2 <= b - a <= 8:
                    ref[c[a:b]] = ref.get(c[a:b], 0) + 1
    assert got == {k: v for k, v in ref.items() if v >= 2}


# -- unigram LM training ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("sp, size", [(False, 262), (True, 275)])
def test_unigram_trainer(sp, size):
    tok = train_unigram(CORPUS, vocab_size=size, sentencepiece=sp)
    assert tok.vocab_size == size                                   # pruned to exactly the size asked
    assert all(tok.decode(tok.encode(t)) == t.encode() for t in CORPUS[:4])
    assert compression_rate(CORPUS, tok.encode) > 2.0                # it learned multi-byte pieces
    if sp:
        assert all(len(sentencepiece_chunks(p)) == 1 for p in tok.pieces if len(p) > 1)
        assert "字".encode() in tok.piece_to_id                       # required characters stay
    assert train_unigram(CORPUS, vocab_size=size, sentencepiece=sp).pieces == tok.pieces  # seeded: reproducible


# -- data ------------------------------------------------------------------------------------------------------
def test_parallel_lengths():
    rows = parallel_lengths([("Open the file", "打开文件"), ("Run Sphinx now", "现在运行 Sphinx"), ("x", "y")])
    assert rows.tolist() == [[13, 11, 4, 12], [7, 6, 4, 12]]       # "Sphinx" removed from both sides; ("x", "y") skipped
    with pytest.raises(ValueError):
        parallel_lengths([("a", "b")])


def test_sphinx_messages():
    pytest.importorskip("sphinx")
    pairs = sphinx_messages("zh_CN")
    assert len(pairs) > 500 and all(a and b for a, b in pairs)
    with pytest.raises(ValueError):
        sphinx_messages("no_such_language")


def test_bad_input_rivals():
    with pytest.raises(ValueError):
        train_bpe(CORPUS, vocab_size=100)
    with pytest.raises(ValueError):
        train_bpe(CORPUS, vocab_size=260, sentencepiece=True)       # below the bytes plus the characters
    with pytest.raises(ValueError):
        train_bpe([], vocab_size=300)
    with pytest.raises(ValueError):
        BPE([(300, 1)])
    with pytest.raises(ValueError):
        BPE([], alphabet=[b"a"])
    with pytest.raises(ValueError):
        train_unigram(CORPUS, vocab_size=300, shrink=1.0)
    with pytest.raises(ValueError):
        train_unigram(CORPUS, vocab_size=260, sentencepiece=True)
    with pytest.raises(ValueError):
        _BPE.decode([10 ** 6])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_not_needed():
    # the tokenizer is a CPU (numpy) algorithm; token ids feed any device
    ids = torch.tensor(_TOK.encode("the cat"), device="cuda")
    assert _TOK.decode(ids.cpu().tolist()) == b"the cat"
