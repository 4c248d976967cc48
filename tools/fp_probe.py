"""Which switch moves which floating-point result: hash a few common operations.

Usage: python tools/fp_probe.py            (prints one hash per operation and the CPU capability)
Run it under different switches and compare, e.g.::

    python tools/fp_probe.py > native.txt
    ATEN_CPU_CAPABILITY=avx2 python tools/fp_probe.py > avx2.txt
    diff native.txt avx2.txt

On an AVX-512 machine each of the switches pinned by `make test` (see the Makefile) changes at least one
line: ATen's capability moves softmax, log_softmax and SDPA; oneDNN's ISA cap moves GELU; MKL_CBWR moves
float64 matmul; OPENBLAS_CORETYPE moves numpy's matmul, SVD and solve.
"""
import hashlib

import numpy as np
import scipy.linalg
import torch


def digest(x) -> str:
    if hasattr(x, "detach"):
        x = x.detach().contiguous().numpy()
    return hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest()[:10]


def main():
    torch.manual_seed(0)
    rows = {}
    a, b = torch.randn(257, 129), torch.randn(129, 65)
    x = torch.randn(1000, 37)
    q = torch.randn(2, 4, 50, 16)
    rows["torch matmul float32"] = a @ b
    rows["torch matmul float64"] = a.double() @ b.double()
    rows["torch bmm"] = torch.randn(8, 33, 17) @ torch.randn(8, 17, 31)
    rows["torch linear"] = torch.nn.functional.linear(a, torch.randn(40, 129), torch.randn(40))
    rows["torch conv2d"] = torch.nn.functional.conv2d(torch.randn(2, 3, 16, 16), torch.randn(8, 3, 3, 3))
    rows["torch sdpa"] = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    for name, f in [("exp", torch.exp), ("tanh", torch.tanh), ("sigmoid", torch.sigmoid), ("erf", torch.erf),
                    ("gelu", torch.nn.functional.gelu), ("softmax", lambda t: t.softmax(-1)),
                    ("log_softmax", lambda t: t.log_softmax(-1)), ("sum", lambda t: t.sum(0)),
                    ("norm", lambda t: t.norm(dim=1)), ("cumsum", lambda t: t.cumsum(0)),
                    ("layer_norm", lambda t: torch.nn.functional.layer_norm(t, (37,)))]:
        rows[f"torch {name}"] = f(x)
    m = np.random.default_rng(0).standard_normal((300, 200))
    rows["numpy matmul"] = m @ m.T
    rows["numpy svd"] = np.linalg.svd(m)[1]
    rows["scipy solve"] = scipy.linalg.solve(m[:200] @ m[:200].T + np.eye(200), m[:200])
    rows["numpy exp"] = np.exp(m)
    print(f"torch CPU capability: {torch.backends.cpu.get_cpu_capability()}")
    for name, value in rows.items():
        print(f"{name:24s} {digest(value)}")


if __name__ == "__main__":
    main()
