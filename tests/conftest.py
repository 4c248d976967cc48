import os

from hypothesis import settings

# Property tests: no per-example deadline (a shared 2-core CI machine is slow and noisy).
# derandomize: the same examples on every run, so a red CI is reproducible and never a coin toss.
settings.register_profile("ci", deadline=None, max_examples=60, derandomize=True)
settings.register_profile("explore", deadline=None, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def native_cpu_capability() -> str:
    """What PyTorch would pick on this CPU without ATEN_CPU_CAPABILITY (read from /proc/cpuinfo flags)."""
    try:
        flags = set(open("/proc/cpuinfo", encoding="utf-8").read().split())
    except OSError:
        return "unknown"
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "AVX512"
    return "AVX2" if "avx2" in flags else "DEFAULT"


def pytest_report_header(config):
    import torch

    pins = [f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR",
                                              "OPENBLAS_CORETYPE", "OMP_NUM_THREADS") if k in os.environ]
    return (f"floating-point path: torch uses {torch.backends.cpu.get_cpu_capability()} kernels, "
            f"native capability {native_cpu_capability()}; pins: {' '.join(pins) or 'none'}")
