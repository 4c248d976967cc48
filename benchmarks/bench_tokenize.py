"""BytePiece-style tokenizer: kexue_lib.tokenize against the ``bytepiece`` package (0.6.x, Aho-Corasick
automaton + Cython Viterbi) on the same corpus (Python's own standard-library sources plus Chinese lines),
same order, vocabulary size and min_count. Reports compression (bytes per token; the task asks ours within
2% of the package's), encode throughput (interleaved best of several rounds) and training CPU time.
Usage: python benchmarks/bench_tokenize.py [--threads T] [--kbytes K] [--vocab V]"""
import argparse
import contextlib
import glob
import io
import os
import sys
import sysconfig
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import emit, interleaved_best, pin_threads  # noqa: E402

from kexue_lib.tokenize import compression_rate, train  # noqa: E402

CHINESE = ["字节是计算机存储的基本单位，一个汉字在UTF-8编码中通常占三个字节。\n",
           "分词器把文本切成片段，好的分词器应当无损、高压缩率并且与语言无关。\n",
           "最大概率分词可以用维特比算法在线性时间内求出。\n"]


def cpu_best(fns: dict, rounds: int) -> dict:
    """Like ``interleaved_best`` but in process CPU time (robust on a shared machine: other processes'
    load does not count)."""
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.process_time()
            fn()
            best[name] = min(best[name], time.process_time() - start)
    return best


def corpus(kbytes: int) -> list[str]:
    texts, total = [], 0
    for path in sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py"))):
        with open(path, encoding="utf-8", errors="replace") as f:
            texts.append(f.read() + "".join(CHINESE) * 3)
        total += len(texts[-1].encode())
        if total >= kbytes * 1000:
            break
    return texts


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--kbytes", type=int, default=1000)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--min-count", type=int, default=8)
    args = parser.parse_args()
    threads = pin_threads(args.threads)
    import bytepiece

    texts = corpus(args.kbytes)
    nbytes = sum(len(t.encode()) for t in texts)
    t0 = time.process_time()
    ours = train(texts, vocab_size=args.vocab, order=6, min_count=args.min_count)
    t_ours = time.process_time() - t0
    trainer = bytepiece.Trainer(order=6, max_vocab_size=args.vocab, min_count=args.min_count)
    t0 = time.process_time()
    with contextlib.redirect_stderr(io.StringIO()):
        trainer.train(texts)
    t_peer = time.process_time() - t0
    with tempfile.TemporaryDirectory() as d:
        trainer.save(os.path.join(d, "bp.json"))
        peer = bytepiece.Tokenizer(os.path.join(d, "bp.json"))
    c_ours = compression_rate(texts, ours.encode)
    c_peer = compression_rate(texts, peer.encode)
    assert all(ours.decode(ids) == t.encode() for ids, t in zip(ours.encode_batch(texts), texts))
    t = interleaved_best({"peer": lambda: [peer.encode(x) for x in texts],
                          "ours": lambda: ours.encode_batch(texts)}, 5, 1)
    t1 = interleaved_best({"ours_one_by_one": lambda: [ours.encode(x) for x in texts]}, 3, 1)
    tc = cpu_best({"peer": lambda: [peer.encode(x) for x in texts], "ours": lambda: ours.encode_batch(texts),
                   "ours_one_by_one": lambda: [ours.encode(x) for x in texts]}, 5)
    print(f"corpus: {len(texts)} stdlib files + Chinese lines, {nbytes / 1e6:.2f} MB; vocab {args.vocab}, "
          f"min_count {args.min_count}, {threads} thread(s)")
    print(f"vocabulary : ours {ours.vocab_size} pieces, bytepiece {peer.vocab_size - 3}")
    print(f"compression: ours {c_ours:.4f} B/token, bytepiece {c_peer:.4f} B/token, ratio {c_ours / c_peer:.4f}")
    print(f"encode     : ours (batch) {nbytes / t['ours'] / 1e6:.2f} MB/s, ours (one text per call) "
          f"{nbytes / t1['ours_one_by_one'] / 1e6:.2f} MB/s, bytepiece {nbytes / t['peer'] / 1e6:.2f} MB/s")
    print(f"encode, CPU time: ours (batch) {nbytes / tc['ours'] / 1e6:.2f} MB/s, ours (one text per call) "
          f"{nbytes / tc['ours_one_by_one'] / 1e6:.2f} MB/s, bytepiece {nbytes / tc['peer'] / 1e6:.2f} MB/s")
    print(f"train (CPU): ours {t_ours:.2f} s, bytepiece {t_peer:.2f} s")
    emit("BytePiece tokenizer", "compression, bytes/token", f"{c_ours:.4f}", f"{c_peer:.4f}", c_ours / c_peer,
         "ratio >= 0.98 asked")
    emit("BytePiece tokenizer", "encode throughput (batch)", f"{nbytes / t['ours'] / 1e6:.2f} MB/s",
         f"{nbytes / t['peer'] / 1e6:.2f} MB/s", t["ours"] / t["peer"], f"speed-up {t['peer'] / t['ours']:.2f}x")
    emit("BytePiece tokenizer", "encode throughput (one text per call)",
         f"{nbytes / t1['ours_one_by_one'] / 1e6:.2f} MB/s", f"{nbytes / t['peer'] / 1e6:.2f} MB/s",
         t1["ours_one_by_one"] / t["peer"], f"speed-up {t['peer'] / t1['ours_one_by_one']:.2f}x")
    emit("BytePiece tokenizer", "encode, CPU time (batch)", f"{nbytes / tc['ours'] / 1e6:.2f} MB/s",
         f"{nbytes / tc['peer'] / 1e6:.2f} MB/s", tc["ours"] / tc["peer"], f"speed-up {tc['peer'] / tc['ours']:.2f}x")
    emit("BytePiece tokenizer", "training CPU time", f"{t_ours:.2f} s", f"{t_peer:.2f} s", t_ours / t_peer,
         f"speed-up {t_peer / t_ours:.2f}x")
