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
"""
from __future__ import annotations

import json
import re

import numpy as np

from ._validate import check_int, check_real

__all__ = ["Tokenizer", "train", "brute_force_segment", "compression_rate", "count_ngrams"]

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
        self._trans = np.zeros((len(nodes) + 2) * 256, dtype=np.int64)      # (node, byte) -> node
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
            node = self._trans[node * 256 + buf[act + k]]
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
    def _segment(self, docs: list[bytes], alpha: float | None, rng) -> list[np.ndarray]:
        lens = np.array([len(d) for d in docs], dtype=np.int64)
        bounds = np.concatenate([[0], np.cumsum(lens)])
        total = int(bounds[-1])
        if total == 0:
            return [np.zeros(0, dtype=np.int64) for _ in docs]
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
                best = np.flatnonzero(key == np.repeat(m, c))
                best = best[np.concatenate([[True], rr[best[1:]] != rr[best[:-1]]])]
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
    for j in range(order):                                      # state j: (j+1)-gram ending here
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
        for t in range(1, T):
            new = np.empty_like(S)
            arg0[:, t] = S.argmax(1)
            new[:, 0] = S.max(1)
            new[:, 1:order - 1] = S[:, :order - 2]
            stay[:, t] = S[:, order - 1] > S[:, order - 2]
            new[:, order - 1] = np.maximum(S[:, order - 2], S[:, order - 1])
            S = np.where((t < ln)[:, None], new + E[:, t], S)
        st = S.argmax(1)
        bidx = np.arange(B)
        for t in range(T - 1, 0, -1):                            # backtrack all rows in lockstep
            live = t < ln
            b, s = bidx[live], st[live]
            is_start[starts[rows[b[s == 0]]] + t] = True
            prev = np.where(s == 0, arg0[b, t],
                            np.where(s == order - 1, np.where(stay[b, t], order - 1, order - 2), s - 1))
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
