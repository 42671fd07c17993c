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


def max_rss_mib() -> float:
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # kilobytes on Linux, bytes on macOS
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024
