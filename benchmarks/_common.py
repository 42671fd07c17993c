"""Helpers shared by the benchmark scripts (imported as ``_common`` from their folder)."""

from __future__ import annotations

import os
import platform
import sys


def worker_env() -> dict:
    """Environment of a worker process: glibc's mmap threshold fixed at 64 KiB.

    By default glibc raises its mmap threshold after large frees and then keeps
    freed blocks of up to 32 MiB cached in the heap, so a process's peak RSS
    counts memory that was free at the time. With a fixed threshold every large
    tensor is its own mapping, returned to the system when freed, and peak RSS
    tracks the memory actually live (measured: 2.4 MiB instead of 12.9 MiB per
    extra training pair at 2,645 residues, w=8).
    """
    env = dict(os.environ)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    return env


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timings(fn, repeats: int, warm_up: bool = True) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn()`` (``time.perf_counter``), after one
    untimed call when ``warm_up`` (page faults, kernel selection, caches)."""
    import time

    if warm_up:
        fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return seconds


def max_rss_mib() -> float:
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # kilobytes on Linux, bytes on macOS
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def matmul_rates(device: str = "cpu", repeats: int = 5) -> dict:
    """The machine's matrix-multiply rate, GFLOP/s (best of ``repeats``), with torch's threads.

    Square ``2048 x 2048`` products (the usual peak) and the edge-shaped
    ``(53,000 x 64) @ (64 x 64)`` product of a ViSNet layer on ADK (1,656
    atoms, 32 neighbours each), in float32 and, where oneDNN is present,
    bfloat16 where the device computes it natively (AVX512-BF16 or AMX; CUDA).
    """
    import time

    import torch

    shapes = {"square_2048": (2048, 2048, 2048), "edge_53000x64x64": (53_000, 64, 64)}
    from g2v_sklearn._utils import supports_bfloat16

    # bfloat16 only where it is native: emulated, one 2048^3 product takes minutes
    native_bf16 = supports_bfloat16(torch.device(device))
    dtypes = [torch.float32] + ([torch.bfloat16] if native_bf16 else [])

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    rates = {}
    for name, (m, k, n) in shapes.items():
        for dtype in dtypes:
            a = torch.randn(m, k, device=device).to(dtype)
            b = torch.randn(k, n, device=device).to(dtype)
            torch.mm(a, b)  # warm-up: kernel selection, page faults
            best = float("inf")
            for _ in range(repeats):
                sync()
                start = time.perf_counter()
                torch.mm(a, b)
                sync()
                best = min(best, time.perf_counter() - start)
            rates[f"{name}_{str(dtype).removeprefix('torch.')}"] = 2 * m * k * n / best / 1e9
    return rates
