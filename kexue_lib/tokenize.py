"""A BytePiece-style tokenizer: byte n-gram training, unigram Viterbi segmentation, lossless encode/decode.

Article: Su Jianlin, "BytePiece: 更纯粹、更高压缩率的Tokenizer", https://kexue.fm/archives/9752 (2023-09-07);
the training method is from https://kexue.fm/archives/3956. Peer: the ``bytepiece`` package
(github.com/bojone/bytepiece). No paper.

Units are bytes, so any byte string has a segmentation (the 256 single bytes are always pieces). A
vocabulary is a map piece -> count, with ``log p(w) = log c(w) - log sum_v c(v)``. The segmentation of
``x`` is the most probable unigram split

    w* = argmax_{w_1 ... w_k = x} sum_i log p(w_i)        (= the shortest code, -sum log p)

found by Viterbi, ``S[e] = max_L S[e-L] + log p(x[e-L:e])``. Subword sampling draws a split with
probability proportional to ``prod_i p(w_i)^alpha`` (forward filtering, backward sampling).

Training (as in the article): count byte n-grams up to ``order`` (6), segment the corpus with the byte
n-gram language model (a state machine whose state is the position inside the current piece, the context
truncated at ``order - 1`` bytes, so pieces can be longer than ``order``), count the pieces, then prune:
drop rare or over-long pieces (their counts go to their own segmentation), drop every piece that its own
segmentation does not choose (``p(w1) p(w2) > p(w1 w2)``), and cut to the vocabulary size.

Speed without compiled code: all pieces occurring in the text are found at once by a vectorized trie walk,
the text is cut where no piece of two or more bytes straddles a position (the Viterbi path must cut there,
so the problem splits exactly), and the independent segments run the Viterbi recursion in lockstep.

The rivals of the article's comparison, on the same bytes: :func:`train_bpe` (BPE, Sennrich et al.,
arXiv:1508.07909: merge the most frequent adjacent pair) and :func:`train_unigram` (a unigram LM trained by
EM and pruning, Kudo, arXiv:1804.10959), each optionally under SentencePiece's default rules
(:func:`sentencepiece_chunks`: no piece across a space or a change of script, characters covering 99.95% of
the text as the alphabet, at most 16 characters per piece). Data: :func:`sphinx_messages` reads the message
catalogs that Sphinx installs (English messages and their human translations), and :func:`parallel_lengths`
measures translation pairs.
"""
from __future__ import annotations

import collections
import functools
import json
import re
import unicodedata as _ud

import numpy as np

from ._validate import check_int, check_real

__all__ = ["Tokenizer", "train", "brute_force_segment", "compression_rate", "count_ngrams", "BPE", "train_bpe",
           "train_unigram", "sentencepiece_chunks", "sphinx_messages", "parallel_lengths"]

_LINES = re.compile(rb"[^\n]{0,10000}\n{1,100}|[^\n]{1,10000}")


def _as_bytes(x) -> bytes:
    if isinstance(x, str):
        return x.encode("utf-8")
    if isinstance(x, (bytes, bytearray, memoryview)):
        return bytes(x)
    raise ValueError(f"expected str or bytes, got {type(x).__name__}")


def _buckets(lengths: np.ndarray, max_cells: int) -> list[np.ndarray]:
    """Groups of row indices of similar length (within a factor 1.3), each with at most ``max_cells``
    padded cells (or a single row)."""
    order = np.argsort(lengths, kind="stable")
    key = np.floor(np.log(lengths[order] + 8.0) / np.log(1.3)).astype(np.int64)
    edges = np.flatnonzero(np.diff(key)) + 1
    groups = []
    for part in np.split(order, edges):
        rows = max(1, max_cells // max(int(lengths[part[-1]]), 1))
        groups.extend(np.split(part, np.arange(rows, len(part), rows)))
    return groups


class Tokenizer:
    """Unigram byte tokenizer over a vocabulary ``{piece (bytes): count}`` (the 256 bytes are added).

    >>> tok = Tokenizer({b"ab": 5, b"a": 1, b"b": 1})
    >>> tok.decode(tok.encode(b"abab\\xff")) == b"abab\\xff"
    True
    """

    def __init__(self, pieces: dict, *, max_cells: int = 1 << 16):
        if not isinstance(pieces, dict) or not pieces:
            raise ValueError("pieces must be a non-empty dict {bytes: count}")
        counts = {bytes([i]): 1 for i in range(256)}
        for k, v in pieces.items():
            k = _as_bytes(k)
            if not k or not (isinstance(v, (int, float)) and v > 0):
                raise ValueError(f"bad piece {k!r}: {v!r} (need non-empty bytes and a positive count)")
            counts[k] = v
        self.max_cells = check_int("max_cells", max_cells, min_value=1)
        self.pieces = sorted(counts, key=lambda p: (len(p), p))      # id = index
        self.counts = np.array([counts[p] for p in self.pieces], dtype=np.float64)
        self.logp = np.log(self.counts) - np.log(self.counts.sum())
        self.piece_to_id = {p: i for i, p in enumerate(self.pieces)}
        self.max_len = max(len(p) for p in self.pieces)
        # trie as a dense transition table: node 0 = dead, node 1 = root
        nodes = {b"": 1}
        for p in self.pieces:
            for j in range(1, len(p) + 1):
                nodes.setdefault(p[:j], len(nodes) + 1)
        self._trans = np.zeros((len(nodes) + 2) * 256, dtype=np.int32)      # (node, byte) -> node
        self._node_piece = np.full(len(nodes) + 2, -1, dtype=np.int64)      # node -> piece id or -1
        for q, n in nodes.items():
            if q:
                self._trans[nodes[q[:-1]] * 256 + q[-1]] = n
        for i, p in enumerate(self.pieces):
            self._node_piece[nodes[p]] = i

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    # -- matching ------------------------------------------------------------------------------------
    def _matches(self, buf: np.ndarray, stop: np.ndarray):
        """All piece occurrences in ``buf`` (uint8, (N,)) not crossing ``stop[s]`` (end of the document
        holding position s): arrays of start, length, piece id."""
        n = len(buf)
        act = np.arange(n, dtype=np.int64)                    # start positions still in the trie
        node = np.ones(n, dtype=np.int64)
        out_s, out_l, out_id = [], [], []
        k = 0
        while act.size:
            node = self._trans[node * 256 + buf[act + k]].astype(np.int64)
            keep = node != 0
            act, node = act[keep], node[keep]
            pid = self._node_piece[node]
            hit = pid >= 0
            out_s.append(act[hit]); out_l.append(np.full(hit.sum(), k + 1)); out_id.append(pid[hit])
            k += 1
            keep = act + k < stop[act]
            act, node = act[keep], node[keep]
        sizes = np.array([len(x) for x in out_s])           # matches of length 1, 2, ... in turn
        return np.concatenate(out_s), np.concatenate(out_l), np.concatenate(out_id), sizes

    # -- segmentation --------------------------------------------------------------------------------
    def _segment(self, docs: list[bytes], alpha: float | None, rng, exclude_whole: bool = False,
                 flat: bool = False):
        """Token ids of each doc: the best split, or (``alpha``) a sampled one; ``exclude_whole`` forbids a
        doc's own piece (docs of two or more bytes), which gives the best split of a piece into smaller ones.
        ``flat`` returns the ids of all docs as one array."""
        lens = np.array([len(d) for d in docs], dtype=np.int64)
        bounds = np.concatenate([[0], np.cumsum(lens)])
        total = int(bounds[-1])
        if total == 0:
            return np.zeros(0, dtype=np.int64) if flat else [np.zeros(0, dtype=np.int64) for _ in docs]
        buf = np.frombuffer(b"".join(docs), dtype=np.uint8)
        stop = np.repeat(bounds[1:], lens)
        ms, ml, mid, sizes = self._matches(buf, stop)
        # a position p is a forced cut unless a piece of length >= 2 straddles it
        long = ml >= 2
        cover = np.bincount(ms[long] + 1, minlength=total + 1)[: total + 1] - \
            np.bincount(ms[long] + ml[long], minlength=total + 1)[: total + 1]
        cut = np.cumsum(cover) == 0
        cut[bounds] = True
        seg_start = np.flatnonzero(cut)                      # segments [seg_start[i], seg_start[i+1])
        seg_len = np.diff(seg_start)
        seg_start = seg_start[:-1]
        # counting sort of the matches by end position (each length's matches come with ends ascending)
        me = ms + ml
        first = np.concatenate([[0], np.cumsum(np.bincount(me, minlength=total + 1))])
        cursor = first[:-1].copy()
        order = np.empty(len(me), dtype=np.int64)
        for a, e in zip(np.cumsum(sizes) - sizes, np.cumsum(sizes)):
            ee = me[a:e]                                     # one length: distinct ends
            order[cursor[ee]] = np.arange(a, e)
            cursor[ee] += 1
        ml, mid = ml[order], mid[order]
        w = self.logp[mid] if alpha is None else alpha * self.logp[mid]
        if exclude_whole:
            ms = ms[order]
            doc = np.searchsorted(bounds, ms, side="right") - 1
            w = np.where((ms == bounds[doc]) & (ml == lens[doc]), -np.inf, w)
        ends, ids = [], []
        for rows in _buckets(seg_len, self.max_cells):      # rows sorted by length, ascending
            B, T = len(rows), int(seg_len[rows[-1]])
            base, ln = seg_start[rows], seg_len[rows]
            S = np.full((B, T + 1), -np.inf)
            S[:, 0] = 0.0
            choice = np.zeros((B, T + 1), dtype=np.int64)    # sorted-match index of the last piece at (row, t)
            for t in range(1, T + 1):
                j0 = int(np.searchsorted(ln, t))             # rows still running
                E = base[j0:] + t
                a = first[E]
                c = first[E + 1] - a                         # matches ending here (>= 1: single bytes)
                head = np.cumsum(c) - c
                idx = np.repeat(a - head, c) + np.arange(int(head[-1] + c[-1]))
                rr = np.repeat(np.arange(j0, B), c)
                cand = S[rr, t - ml[idx]] + w[idx]           # S[t-l] + w(piece)
                key = cand if alpha is None else cand + rng.gumbel(size=len(cand))
                m = np.maximum.reduceat(key, head)
                best = np.flatnonzero(key == np.repeat(m, c))    # ties: the longest last piece, as in the package
                best = best[np.concatenate([rr[best[1:]] != rr[best[:-1]], [True]])]
                if alpha is None:
                    S[j0:, t] = m
                else:
                    cm = np.maximum.reduceat(cand, head)
                    S[j0:, t] = cm + np.log(np.add.reduceat(np.exp(cand - np.repeat(cm, c)), head))
                choice[j0:, t] = idx[best]
            cur = seg_len[rows].copy()
            bidx = np.arange(B)
            while True:
                live = cur > 0
                if not live.any():
                    break
                b, c = bidx[live], cur[live]
                k = choice[b, c]
                ends.append(seg_start[rows[b]] + c)
                ids.append(mid[k])
                cur[live] = c - ml[k]
        at_end = np.full(total + 1, -1, dtype=np.int64)
        at_end[np.concatenate(ends)] = np.concatenate(ids)  # token ending at each position, or -1
        is_end = at_end >= 0
        if flat:
            return at_end[is_end]
        cuts = np.cumsum(is_end)[bounds[1:-1]]
        return np.split(at_end[is_end], cuts)

    def encode_batch(self, texts, *, alpha: float | None = None, seed: int | None = None) -> list[list[int]]:
        """Token ids of each text (str is UTF-8 encoded, never normalized). ``alpha`` samples a split with
        probability proportional to prod p(w)^alpha instead of taking the best one."""
        docs = [_as_bytes(t) for t in texts]
        if alpha is not None:
            alpha = check_real("alpha", alpha, low=0.0)
        rng = np.random.default_rng(seed)
        return [a.tolist() for a in self._segment(docs, alpha, rng)]

    def encode(self, text, *, alpha: float | None = None, seed: int | None = None) -> list[int]:
        """Token ids of one text; see ``encode_batch``."""
        return self.encode_batch([text], alpha=alpha, seed=seed)[0]

    def tokenize(self, text, **kw) -> list[bytes]:
        return [self.pieces[i] for i in self.encode(text, **kw)]

    def decode(self, ids) -> bytes:
        """The bytes of a sequence of ids (exact inverse of ``encode``)."""
        ids = [int(i) for i in ids]
        if any(i < 0 or i >= len(self.pieces) for i in ids):
            raise ValueError(f"token ids must lie in [0, {len(self.pieces)})")
        return b"".join(self.pieces[i] for i in ids)

    # -- plain JSON ----------------------------------------------------------------------------------
    def save(self, path: str) -> None:
        """Write ``{"pieces": [[hex bytes, count], ...]}`` in id order."""
        data = {"format": "kexue-bytepiece-1",
                "pieces": [[p.hex(), float(c)] for p, c in zip(self.pieces, self.counts)]}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f)

    @classmethod
    def load(cls, path: str) -> "Tokenizer":
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if data.get("format") != "kexue-bytepiece-1":
            raise ValueError(f"{path} is not a saved kexue_lib tokenizer")
        return cls({bytes.fromhex(h): c for h, c in data["pieces"]})


def brute_force_segment(data: bytes, logp: dict) -> tuple[list[bytes], float]:
    """Test oracle: the best split of ``data`` over ``logp`` {piece: log p} by enumerating all 2^(n-1)."""
    data = _as_bytes(data)
    n = len(data)
    if n > 20:
        raise ValueError(f"brute force is for short strings (n <= 20), got n = {n}")
    best, best_score = None, -np.inf
    for mask in range(1 << max(n - 1, 0)):
        cuts = [0] + [i + 1 for i in range(n - 1) if mask >> i & 1] + [n]
        parts = [data[a:b] for a, b in zip(cuts, cuts[1:])]
        if all(p in logp for p in parts):
            s = sum(logp[p] for p in parts)
            if s > best_score:
                best, best_score = parts, s
    return best, best_score


def count_ngrams(chunks: list[bytes], *, order: int = 6) -> list[dict]:
    """``[{gram: count}]`` for gram lengths 0..order, counted inside each chunk (vectorized)."""
    order = check_int("order", order, min_value=1, max_value=7)
    buf = np.frombuffer(b"".join(chunks), dtype=np.uint8).astype(np.uint64)
    lens = np.array([len(c) for c in chunks], dtype=np.int64)
    stop = np.repeat(np.cumsum(lens), lens)
    out = [{b"": int(lens.sum())}]
    key = np.zeros(len(buf), dtype=np.uint64)
    for j in range(1, order + 1):
        if j > len(buf):                                        # the text is shorter than the gram
            out.append({})
            continue
        valid = np.arange(len(buf)) + j <= stop
        key[: len(buf) - j + 1] = (key[: len(buf) - j + 1] << np.uint64(8)) | buf[j - 1:]
        u, c = np.unique(key[valid], return_counts=True)
        out.append({int(x).to_bytes(j, "big"): int(n) for x, n in zip(u, c)})
    return out


def _bnlm_segment(chunks, ngrams, order, ensure_unicode) -> dict:
    """Piece counts of the byte n-gram LM segmentation (states = position inside the current piece)."""
    buf = np.frombuffer(b"".join(chunks), dtype=np.uint8)
    lens = np.array([len(c) for c in chunks], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    n = len(buf)
    idx = np.arange(n)
    pos = idx - np.repeat(starts, lens)                         # position inside the chunk
    node = np.full((n, order), -np.inf)
    key = np.zeros(n, dtype=np.uint64)
    for j in range(min(order, n)):                              # state j: (j+1)-gram ending here
        key[j:] = (key[j:] | (buf[: n - j].astype(np.uint64) << np.uint64(8 * j)))
        table = ngrams[j + 1]
        if not table:
            continue
        ks = np.array([int.from_bytes(k, "big") for k in table], dtype=np.uint64)
        vs = np.array(list(table.values()))
        o = np.argsort(ks)
        ks, vs = ks[o], vs[o]
        i = np.minimum(np.searchsorted(ks, key), len(ks) - 1)
        ok = (ks[i] == key) & (pos >= j)
        node[ok, j] = vs[i[ok]]
    if ensure_unicode:
        node[(buf >= 128) & (buf < 192), 0] = -np.inf
    is_start = np.zeros(n + 1, dtype=bool)
    is_start[starts] = True
    is_start[n] = True
    for rows in _buckets(lens, 1 << 16):
        B, T = len(rows), int(lens[rows].max())
        ln = lens[rows]
        at = starts[rows][:, None] + np.minimum(np.arange(T), ln[:, None] - 1)   # (B, T)
        E = node[at]                                             # (B, T, order) emissions
        S = E[:, 0].copy()                                       # (B, order)
        arg0 = np.zeros((B, T), dtype=np.int64)                  # best previous state when starting a piece
        stay = np.zeros((B, T), dtype=bool)                      # last state reached from itself
        dead = np.zeros((B, T, order), dtype=bool)               # no finite path reaches (t, state)
        for t in range(1, T):
            new = np.empty_like(S)
            arg0[:, t] = S.argmax(1)
            new[:, 0] = S.max(1)
            new[:, 1:order - 1] = S[:, :order - 2]
            stay[:, t] = S[:, order - 1] > S[:, order - 2]
            new[:, order - 1] = np.maximum(S[:, order - 2], S[:, order - 1])
            new += E[:, t]
            dead[:, t] = new == -np.inf
            S = np.where((t < ln)[:, None], new, S)
        st = S.argmax(1)
        bidx = np.arange(B)
        for t in range(T - 1, 0, -1):                            # backtrack all rows in lockstep
            live = t < ln
            b, s = bidx[live], st[live]
            is_start[starts[rows[b[s == 0]]] + t] = True
            prev = np.where(s == 0, arg0[b, t],
                            np.where(s == order - 1, np.where(stay[b, t], order - 1, order - 2), s - 1))
            # as in the package (an argmax over all -inf scores is 0): where no finite path reaches a state,
            # for instance after a byte that no state can emit, the path goes back to state 0
            prev = np.where(dead[b, t, s], 0, prev)
            st[live] = prev
    data = b"".join(chunks)
    bd = np.flatnonzero(is_start).tolist()
    counts: dict = {}
    for a, e in zip(bd, bd[1:]):
        w = data[a:e]
        counts[w] = counts.get(w, 0) + 1
    return counts


def _split(keep: dict, items) -> dict:
    """Counts of the pieces that ``keep``'s unigram tokenizer cuts each (piece, count) of ``items`` into."""
    items = list(items)
    out: dict = {}
    if not items:
        return out
    tok = Tokenizer(keep)
    for (_, v), ids in zip(items, tok._segment([k for k, _ in items], None, None)):
        for i in ids.tolist():
            p = tok.pieces[i]
            out[p] = out.get(p, 0) + v
    return out


def _prune_wasted(keep: dict) -> dict:
    while True:
        n = len(keep)
        keep = _split(keep, keep.items())
        if len(keep) == n:
            return keep


def train(texts, *, vocab_size: int = 10000, order: int = 6, max_piece_length: int = 36,
          min_count: int = 2, ensure_unicode: bool = True) -> Tokenizer:
    """Train a BytePiece-style tokenizer on ``texts`` (str or bytes); see the module docstring.

    ``vocab_size`` counts the 256 bytes and, as in the package, three reserved ids (not materialized here).
    Texts are counted line by line (runs of newlines end a line), as in the package.
    """
    vocab_size = check_int("vocab_size", vocab_size, min_value=259)
    order = check_int("order", order, min_value=2, max_value=7)
    max_piece_length = check_int("max_piece_length", max_piece_length, min_value=1)
    min_count = check_int("min_count", min_count, min_value=1)
    chunks = [c for t in texts for c in _LINES.findall(_as_bytes(t))]
    if not chunks:
        raise ValueError("texts is empty")
    grams = count_ngrams(chunks, order=order)
    for i in range(256):
        if bytes([i]) not in grams[1]:
            grams[1][bytes([i])] = 1
            grams[0][b""] += 1
    logs = [None] * (order + 1)
    for i in range(order, -1, -1):
        logs[i] = {k: np.log(v) for k, v in grams[i].items() if v >= (min_count if i > 1 else 0)}
        if i < order:
            logs[i + 1] = {k: v - logs[i][k[:i]] for k, v in logs[i + 1].items()}
    pieces = _bnlm_segment(chunks, logs, order, ensure_unicode)
    for i in range(256):
        pieces.setdefault(bytes([i]), 1)
    keep = {k: v for k, v in pieces.items() if len(k) == 1 or (len(k) <= max_piece_length and v >= min_count)}
    for k, v in _split(keep, [(k, v) for k, v in pieces.items() if k not in keep]).items():
        keep[k] += v
    keep = _prune_wasted(keep)
    if len(keep) > vocab_size - 3:
        ranked = sorted(keep.items(), key=lambda t: (len(t[0]) > 1, -t[1], -len(t[0]), t[0]))
        keep = dict(ranked[: vocab_size - 3])
        for k, v in _split(keep, ranked[vocab_size - 3:]).items():
            keep[k] += v
        keep = _prune_wasted(keep)
    return Tokenizer(keep)


def compression_rate(texts, encode) -> float:
    """Bytes per token of ``encode`` (a callable text -> token list) over ``texts`` (higher = shorter)."""
    nbytes = sum(len(_as_bytes(t)) for t in texts)
    ntok = sum(len(encode(t)) for t in texts)
    if ntok == 0:
        raise ValueError("no tokens")
    return nbytes / ntok


# -- rivals: byte-level BPE and a unigram LM trained by EM and pruning -------------------------------------
class _PairIndex:
    """Token sequences (one per chunk) as a linked list, with the positions of every adjacent pair."""

    DEAD = -1

    def __init__(self, chunks):
        self.tok, self.nxt, self.prv = [], [], []
        for c in chunks:
            base = len(self.tok)
            self.tok.extend(c)
            self.nxt.extend(range(base + 1, base + len(c)))
            self.nxt.append(-1)
            self.prv.append(-1)
            self.prv.extend(range(base, base + len(c) - 1))
        self.pos: dict = {}
        for i, j in enumerate(self.nxt):
            if j >= 0:
                self.pos.setdefault((self.tok[i], self.tok[j]), set()).add(i)

    def merge(self, pair, new: int) -> set:
        """Replace every non-overlapping occurrence of ``pair`` (left to right) by ``new``; the changed pairs."""
        a, b = pair
        tok, nxt, prv, pos = self.tok, self.nxt, self.prv, self.pos
        touched = set()
        for i in sorted(pos.pop(pair, ())):
            j = nxt[i]
            if tok[i] != a or j < 0 or tok[j] != b:         # consumed by an overlapping occurrence
                continue
            p, k = prv[i], nxt[j]
            if p >= 0:
                q = (tok[p], a)
                if q in pos:
                    pos[q].discard(p)
                pos.setdefault((tok[p], new), set()).add(p)
                touched.update((q, (tok[p], new)))
            if k >= 0:
                q = (b, tok[k])
                if q in pos:
                    pos[q].discard(j)
                pos.setdefault((new, tok[k]), set()).add(i)
                touched.update((q, (new, tok[k])))
                prv[k] = i
            tok[i], tok[j], nxt[i] = new, self.DEAD, k
        return touched

    def sequences(self, starts) -> list[list[int]]:
        out = []
        for i in starts:
            seq = []
            while i >= 0:
                seq.append(self.tok[i])
                i = self.nxt[i]
            out.append(seq)
        return out


_SP_MAX_CHARS = 16


@functools.lru_cache(maxsize=None)
def _script(ch: str) -> str:
    """An approximation of a character's Unicode script from its name and category (Python has no script
    property): letters and marks take the first word of their name (CJK, Hiragana and Katakana count as
    Han, as in SentencePiece; combining marks inherit), everything else is Common."""
    cat = _ud.category(ch)
    if cat[0] not in "LM":
        return "Common"
    words = _ud.name(ch, "UNKNOWN").split(" ")
    first = words[1] if words[0] in ("FULLWIDTH", "HALFWIDTH") and len(words) > 1 else words[0]
    if first in ("CJK", "HIRAGANA", "KATAKANA", "KATAKANA-HIRAGANA", "IDEOGRAPHIC"):
        return "Han"
    if first == "COMBINING":
        return "Inherited"
    return first


_KIND_CODE: dict = {"newline": "n", "space": "s", "Inherited": "i", "Common": "c"}


def _kind_table(s: str) -> dict:
    """``str.translate`` table: each character of ``s`` -> one code character for its kind (see below)."""
    table = {}
    for ch in set(s):
        kind = "newline" if ch == "\n" else "space" if ch == " " else _script(ch)
        if kind not in _KIND_CODE:
            _KIND_CODE[kind] = chr(0x100 + len(_KIND_CODE))
        table[ord(ch)] = _KIND_CODE[kind]
    return table


def sentencepiece_chunks(text) -> list[bytes]:
    """Split ``text`` where SentencePiece's default trainer forbids a piece to continue: before every space
    (a space only starts a piece, ``split_by_whitespace``), at every change of Unicode script
    (``split_by_unicode_script``; digits and punctuation are Common; a combining mark takes the script before
    it), and around newlines (SentencePiece trains on lines). The chunks concatenate to ``text``.

    >>> [c.decode() for c in sentencepiece_chunks("Run v2 now，好的")]
    ['Run', ' v', '2', ' now', '，', '好的']
    """
    return _sp_split(_as_bytes(text))


def _sp_split(data: bytes, extra_cuts=()) -> list[bytes]:
    """:func:`sentencepiece_chunks` of ``data``, also cut at the byte offsets ``extra_cuts``."""
    if not data:
        return []
    s = data.decode("utf-8", errors="surrogateescape")
    codes = s.translate(_kind_table(s))
    codes = re.sub(r"([^sni])(i+)", lambda m: m.group(1) * (1 + len(m.group(2))), codes).replace("i", "c")
    k = np.frombuffer(codes.encode("utf-32-le"), dtype=np.uint32)
    prev, cur = k[:-1], k[1:]
    sp, nl = ord("s"), ord("n")
    cut = (cur == sp) | (cur == nl) | (prev == nl) | ((prev != sp) & (cur != prev))
    cp = np.frombuffer(s.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)
    width = np.where(cp < 0x80, 1, np.where(cp < 0x800, 2, np.where(cp < 0x10000, 3, 4)))
    width[(cp >= 0xDC80) & (cp <= 0xDCFF)] = 1                       # bytes kept by surrogateescape
    off = np.concatenate([[0], np.cumsum(width)])
    bounds = sorted(set([0, len(data)] + off[1:-1][cut].tolist() + [int(c) for c in extra_cuts if 0 < c < len(data)]))
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def _n_chars(piece: bytes) -> int:
    return sum(1 for b in piece if not 128 <= b < 192)


class BPE:
    """Byte-level BPE: ids 0..255 are the bytes, then the ``alphabet`` (multi-byte characters taken as single
    symbols, as SentencePiece does), then one id per merge ``(a, b)`` in rank order.

    Encoding applies the merges in rank order. With ``sentencepiece=True`` the text is first cut by
    :func:`sentencepiece_chunks`, so no piece crosses a space or a change of script; otherwise there is no
    pre-tokenization. The text is never normalized.

    >>> bpe = BPE([(97, 98)])
    >>> bpe.encode("abab"), bpe.decode(bpe.encode("abab")) == b"abab"
    ([256, 256], True)
    """

    def __init__(self, merges, *, alphabet=(), sentencepiece: bool = False):
        self.alphabet = [_as_bytes(c) for c in alphabet]
        if any(len(c) < 2 for c in self.alphabet) or len(set(self.alphabet)) != len(self.alphabet):
            raise ValueError("alphabet must hold distinct multi-byte characters")
        self.sentencepiece = bool(sentencepiece)
        self.pieces = [bytes([i]) for i in range(256)] + self.alphabet
        self.merges = []
        for r, (a, b) in enumerate(merges):
            a, b = int(a), int(b)
            if not (0 <= a < len(self.pieces) and 0 <= b < len(self.pieces)):
                raise ValueError(f"merge {r} = {(a, b)} refers to an id not defined before it")
            self.merges.append((a, b))
            self.pieces.append(self.pieces[a] + self.pieces[b])
        self._char_id = {c: 256 + i for i, c in enumerate(self.alphabet)}

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def _symbols(self, chunk: bytes) -> list[int]:
        if not self._char_id:
            return list(chunk)
        out = []
        for ch in chunk.decode("utf-8", errors="surrogateescape"):
            b = ch.encode("utf-8", errors="surrogateescape")
            out.extend([self._char_id[b]] if b in self._char_id else b)
        return out

    def encode_batch(self, texts) -> list[list[int]]:
        docs = [_as_bytes(t) for t in texts]
        chunks, owner = [], []
        for k, d in enumerate(docs):
            parts = sentencepiece_chunks(d) if self.sentencepiece else ([d] if d else [])
            chunks.extend(self._symbols(p) for p in parts)
            owner.extend([k] * len(parts))
        idx = _PairIndex(chunks)
        base = len(self.pieces) - len(self.merges)
        for r, pair in enumerate(self.merges):
            if idx.pos.get(pair):
                idx.merge(pair, base + r)
        starts = np.cumsum([0] + [len(c) for c in chunks])[:-1].tolist()
        out = [[] for _ in docs]
        for k, seq in zip(owner, idx.sequences(starts)):
            out[k].extend(seq)
        return out

    def encode(self, text) -> list[int]:
        return self.encode_batch([text])[0]

    def decode(self, ids) -> bytes:
        ids = [int(i) for i in ids]
        if any(i < 0 or i >= len(self.pieces) for i in ids):
            raise ValueError(f"token ids must lie in [0, {len(self.pieces)})")
        return b"".join(self.pieces[i] for i in ids)


def _training_chunks(texts, sentencepiece: bool) -> list[bytes]:
    """The lines of ``texts`` (as :func:`train` counts them), or with ``sentencepiece`` their chunks."""
    docs = [_as_bytes(t) for t in texts]
    if not sentencepiece:
        chunks = [c for d in docs for c in _LINES.findall(d)]
    else:
        chunks = [c for d in docs for c in _sp_split(d, [m.end() for m in _LINES.finditer(d)])]
    if not chunks:
        raise ValueError("texts is empty")
    return chunks


def _alphabet(chunks, coverage: float = 0.9995) -> list[bytes]:
    """The multi-byte characters of ``chunks`` among the most frequent characters that cover ``coverage`` of all
    character occurrences (SentencePiece's ``character_coverage``, default 0.9995), most frequent first."""
    counts = collections.Counter(re.findall(rb"[\xc0-\xff][\x80-\xbf]+|[\x00-\x7f]", b"".join(chunks)))
    total, acc, out = sum(counts.values()), 0, []
    for ch in sorted(counts, key=lambda k: (-counts[k], k)):
        if acc >= coverage * total:
            break
        acc += counts[ch]
        if len(ch) > 1:
            out.append(ch)
    return out


def train_bpe(texts, *, vocab_size: int, sentencepiece: bool = False) -> BPE:
    """BPE (Sennrich et al. 2016) on the bytes of ``texts``, counted line by line like :func:`train`: repeatedly
    merge the most frequent adjacent pair (ties: the smallest ids) until ``vocab_size`` pieces or no pair
    occurs twice. ``sentencepiece=True`` follows SentencePiece's default BPE trainer: characters are the
    initial symbols (those covering 99.95% of the text; the alphabet counts in the vocabulary, rarer characters
    fall back to bytes), pieces stay inside :func:`sentencepiece_chunks` and have at most 16 characters. No
    normalization."""
    import heapq

    vocab_size = check_int("vocab_size", vocab_size, min_value=256)
    chunks = _training_chunks(texts, sentencepiece)
    bpe = BPE([], alphabet=_alphabet(chunks) if sentencepiece else (), sentencepiece=sentencepiece)
    if bpe.vocab_size > vocab_size:
        raise ValueError(f"vocab_size {vocab_size} is below the 256 bytes and {len(bpe.alphabet)} characters")
    pieces = list(bpe.pieces)
    idx = _PairIndex([bpe._symbols(c) for c in chunks])
    heap = [(-len(v), k) for k, v in idx.pos.items()]
    heapq.heapify(heap)
    merges = []
    while len(pieces) < vocab_size and heap:
        neg, pair = heapq.heappop(heap)
        n = len(idx.pos.get(pair, ()))
        if n != -neg:                                   # stale entry
            if n:
                heapq.heappush(heap, (-n, pair))
            continue
        if n < 2:
            break
        new = pieces[pair[0]] + pieces[pair[1]]
        if sentencepiece and _n_chars(new) > _SP_MAX_CHARS:
            continue                                     # never valid; dropped for good
        merges.append(pair)
        pieces.append(new)
        for q in idx.merge(pair, len(pieces) - 1):
            m = len(idx.pos.get(q, ()))
            if m:
                heapq.heappush(heap, (-m, q))
    return BPE(merges, alphabet=bpe.alphabet, sentencepiece=sentencepiece)


def _frequent_substrings(chunks, max_len: int, ensure_unicode: bool) -> dict:
    """``{substring: count}`` of the substrings of 2..max_len bytes occurring at least twice inside a chunk
    (64-bit polynomial hashes of all windows; with ``ensure_unicode`` only whole UTF-8 characters)."""
    buf = np.frombuffer(b"".join(chunks), dtype=np.uint8)
    n = len(buf)
    lens = np.array([len(c) for c in chunks], dtype=np.int64)
    stop = np.repeat(np.cumsum(lens), lens)
    head = ~((buf >= 128) & (buf < 192)) if ensure_unicode else np.ones(n, dtype=bool)
    head_after = np.append(head[1:], True)              # whether a character starts after position p
    h = buf.astype(np.uint64)
    out = {}
    with np.errstate(over="ignore"):
        for L in range(2, max_len + 1):
            h = h[:-1] * np.uint64(1000003) + buf[L - 1:].astype(np.uint64)
            i = np.arange(n - L + 1)
            ok = (i + L <= stop[: n - L + 1]) & head[: n - L + 1]
            ok &= head_after[L - 1:] | (i + L == stop[: n - L + 1])
            if not ok.any():
                break
            u, first, cnt = np.unique(h[ok], return_index=True, return_counts=True)
            at = np.flatnonzero(ok)[first[cnt >= 2]]
            out.update({bytes(buf[a:a + L]): int(c) for a, c in zip(at, cnt[cnt >= 2])})
    return out


def train_unigram(texts, *, vocab_size: int, max_piece_length: int = 36, seed_factor: int = 4,
                  shrink: float = 0.75, em_steps: int = 2, sentencepiece: bool = False, seed: int = 0) -> Tokenizer:
    """A unigram language-model tokenizer trained as SentencePiece's ``unigram`` model is (Kudo 2018), on bytes:

    seed with the ``seed_factor * vocab_size`` substrings (whole characters, up to ``max_piece_length``
    bytes, occurring twice) of largest count x length, then repeat: ``em_steps`` EM steps (the E-step's
    expected counts estimated from one segmentation sampled from the posterior, alpha = 1; the M-step
    ``log p = digamma(c) - digamma(sum c)`` as in SentencePiece, pieces with count 0 dropped), and prune to
    ``max(vocab_size, shrink * size)`` pieces, keeping those whose removal costs the most likelihood,
    ``freq(w) * (log p(w) - log p(best split of w without w))``. The 256 bytes always stay; with
    ``sentencepiece=True`` so do the characters that cover 99.95% of the corpus (SentencePiece's required
    characters), and
    pieces stay inside :func:`sentencepiece_chunks` with at most 16 characters. Returns a
    :class:`Tokenizer` with at most ``vocab_size`` pieces (exactly, unless EM itself drops below it).
    """
    from scipy.special import digamma

    vocab_size = check_int("vocab_size", vocab_size, min_value=256)
    max_piece_length = check_int("max_piece_length", max_piece_length, min_value=2)
    seed_factor = check_int("seed_factor", seed_factor, min_value=1)
    shrink = check_real("shrink", shrink, low=0.0, high=1.0, low_open=True, high_open=True)
    em_steps = check_int("em_steps", em_steps, min_value=1)
    chunks = _training_chunks(texts, sentencepiece)
    rng = np.random.default_rng(seed)
    subs = _frequent_substrings(chunks, max_piece_length, True)
    required = {bytes([i]) for i in range(256)} | (set(_alphabet(chunks)) if sentencepiece else set())
    if len(required) > vocab_size:
        raise ValueError(f"vocab_size {vocab_size} is below the {len(required)} required bytes and characters")
    cand = [k for k in subs if k not in required and not (sentencepiece and _n_chars(k) > _SP_MAX_CHARS)]
    top = sorted(cand, key=lambda k: (-subs[k] * len(k), k))[: seed_factor * vocab_size]
    counts = {k: float(subs.get(k, 1)) for k in required}
    counts.update({k: float(subs[k]) for k in top})

    def em(counts, drop):
        for _ in range(em_steps):
            tok = Tokenizer(counts)
            c = np.bincount(tok._segment(chunks, 1.0, rng, flat=True), minlength=tok.vocab_size).astype(np.float64)
            keep = (c > 0) | np.array([p in required for p in tok.pieces]) | (not drop)
            c = np.maximum(c, 0.5)
            p = np.exp(digamma(c) - digamma(c[keep].sum()))
            counts = {tok.pieces[i]: float(p[i]) for i in np.flatnonzero(keep)}
        return counts

    while True:
        counts = em(counts, drop=True)
        if len(counts) <= vocab_size:
            break
        tok = Tokenizer(counts)
        freq = np.bincount(tok._segment(chunks, None, None, flat=True), minlength=tok.vocab_size).astype(np.float64)
        free = np.array([i for i, p in enumerate(tok.pieces) if p not in required], dtype=np.int64)
        alt = [tok.logp[ids].sum() for ids in tok._segment([tok.pieces[i] for i in free], None, None, exclude_whole=True)]
        loss = freq[free] * (tok.logp[free] - np.array(alt))
        n_keep = max(vocab_size, int(shrink * len(counts))) - (len(counts) - len(free))
        kept = {tok.pieces[i] for i in free[np.lexsort((free, -loss))[:n_keep]]}
        counts = {k: v for k, v in counts.items() if k in required or k in kept}
        if len(counts) <= vocab_size:
            counts = em(counts, drop=False)
            break
    return Tokenizer(counts)


# -- a multilingual corpus that ships with the book's environment --------------------------------------------
def sphinx_messages(lang: str) -> list[tuple[str, str]]:
    """The ``(English message, translation)`` pairs of Sphinx's message catalog for ``lang`` (``"zh_CN"``,
    ``"fr"``, ...), as installed (Sphinx is pinned in ``constraints.txt``): real human translations of the
    same about 800 user-interface messages into 60-odd languages. Untranslated messages are left out."""
    import os

    import sphinx
    from babel.messages.pofile import read_po

    path = os.path.join(os.path.dirname(sphinx.__file__), "locale", str(lang), "LC_MESSAGES", "sphinx.po")
    if not os.path.isfile(path):
        raise ValueError(f"Sphinx has no message catalog for {lang!r}")
    with open(path, "rb") as f:
        catalog = read_po(f)
    pairs = []
    for m in catalog:
        msgid = m.id[0] if isinstance(m.id, (tuple, list)) else m.id
        msgstr = m.string[0] if isinstance(m.string, (tuple, list)) else m.string
        if msgid and msgstr:
            pairs.append((msgid, msgstr))
    return pairs


_ASCII_RUN = re.compile(r"[\x21-\x7e]+")


def parallel_lengths(pairs) -> np.ndarray:
    """Lengths of each ``(English, Chinese)`` translation pair, for an information-per-character comparison.

    Runs of printable ASCII in the translation (names, placeholders, code kept untranslated) are removed
    from both sides, then whitespace is dropped from the translation and collapsed in the English. Returns
    an int array ``(n, 4)``: English bytes, English letters (A-Z, a-z), translation characters, translation
    bytes; pairs whose translation has no CJK ideograph left are skipped.
    """
    rows = []
    for en, zh in pairs:
        for run in _ASCII_RUN.findall(zh):
            en = en.replace(run, " ", 1)
        zh = re.sub(r"\s+", "", _ASCII_RUN.sub("", zh))
        en = re.sub(r"\s+", " ", en).strip()
        if en and re.search("[\u4e00-\u9fff]", zh):
            rows.append((len(en.encode()), len(re.findall("[A-Za-z]", en)), len(zh), len(zh.encode())))
    if not rows:
        raise ValueError("no pair with a CJK translation")
    return np.array(rows, dtype=np.int64)
