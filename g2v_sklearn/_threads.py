"""Thread hygiene: torch's intra-op threads sized to the cores that are free now.

Why
---
torch's CPU kernels run on an OpenMP team whose threads spin-wait at every
barrier. When another process keeps one of two cores busy, a two-thread team
waits at each of the thousands of small parallel regions of a training step
for the thread the kernel has descheduled: a fit measured 24 times slower
beside a single busy loop, and 1.03 times with one thread (see
docs/benchmarks.md). The wait policy of OpenMP is fixed when torch is
imported, so the fix that works from inside a library is the team size.

What
----
:class:`ThreadBudget` is a context manager around one fit (or one
embedding). On entry it shares the cores among the fits running
concurrently in this process (the threading backend of joblib, or Dask's
threads); when another fit begins or ends, the others share again at their
next step. Then, every second (:meth:`ThreadBudget.refresh`, called at every
training step and embedded batch), it measures how busy the cores this
process may run on were with *other* work (``/proc/stat`` for the cores in
the affinity mask, minus this process's own CPU time; on entry, a first
guess from the threads of other processes runnable at that moment) and sets torch's
thread count to the free cores' share, never above what it was. On exit the
thread count is restored. Where ``/proc/stat`` is missing (not Linux) only
the concurrency rule applies. On an idle machine nothing changes.

``G2V_THREAD_BUDGET=0`` in the environment switches it off (torch's thread
count is then left as it is). CPU quotas (cgroup ``cpu.max``) are not seen: a container limited to two
cores' worth of time on a larger host is taken at its affinity mask.
"""

from __future__ import annotations

import os
import threading
import time

import torch

__all__ = ["ThreadBudget", "free_cores"]

_LOCK = threading.Lock()
_ACTIVE = 0  # fits inside a ThreadBudget in this process right now
_GENERATION = 0  # bumped when a fit enters or leaves a budget: the others re-share at their next step


def _cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return list(range(os.cpu_count() or 1))


def _busy_jiffies(cores: list[int]) -> tuple[int, int] | None:
    """(busy, total) clock ticks summed over ``cores``, from /proc/stat; None if unreadable."""
    wanted = {f"cpu{c}" for c in cores}
    busy = total = 0
    try:
        with open("/proc/stat") as handle:
            for line in handle:
                fields = line.split()
                if not fields or fields[0] not in wanted:
                    continue
                ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
                total += sum(ticks)
                busy += sum(ticks) - ticks[3] - ticks[4]
    except (OSError, ValueError):
        return None
    return (busy, total) if total else None


def _others_running() -> int | None:
    """Threads of other processes runnable right now (/proc/stat's procs_running less ours); None if unknown."""
    try:
        with open("/proc/stat") as handle:
            running = next(int(line.split()[1]) for line in handle if line.startswith("procs_running"))
        tasks = list(os.scandir("/proc/self/task"))
    except (OSError, ValueError, StopIteration):
        return None
    ours = 0
    for entry in tasks:
        try:
            with open(os.path.join(entry.path, "stat")) as handle:
                text = handle.read()
        except OSError:  # the thread ended meanwhile
            continue
        ours += text[text.rindex(")") + 2] == "R"
    return max(0, running - ours)


def _own_seconds() -> float:
    times = os.times()
    return times.user + times.system


class _Sample:
    """One reading of the cores' and this process's CPU use."""

    def __init__(self, cores: list[int]) -> None:
        self.jiffies = _busy_jiffies(cores)
        self.own = _own_seconds()
        self.wall = time.monotonic()


def _others_busy(start: _Sample, end: _Sample, n_cores: int) -> float | None:
    """Cores' worth of CPU that other processes used between two samples."""
    if start.jiffies is None or end.jiffies is None:
        return None
    busy = end.jiffies[0] - start.jiffies[0]
    total = end.jiffies[1] - start.jiffies[1]
    if total <= 0:
        return None
    busy_cores = n_cores * busy / total  # all processes, in cores
    wall = end.wall - start.wall
    own_cores = (end.own - start.own) / wall if wall > 0 else 0.0
    return max(0.0, busy_cores - own_cores)


def free_cores(window: float = 0.03) -> float | None:
    """Cores not used by other processes, measured over ``window`` seconds (None: unknown)."""
    cores = _cores()
    start = _Sample(cores)
    time.sleep(window)
    busy = _others_busy(start, _Sample(cores), len(cores))
    return None if busy is None else len(cores) - busy


class ThreadBudget:
    """Torch threads for one fit: the free cores shared among concurrent fits.

    Parameters
    ----------
    enabled : bool, default=True
        ``False`` leaves torch's thread count alone (the context manager
        then does nothing).
    device : torch.device or None
        Only CPU work is sized; on CUDA the count is left alone.
    """

    def __init__(self, enabled: bool = True, device: torch.device | None = None) -> None:
        self.enabled = (enabled and (device is None or device.type == "cpu")
                        and os.environ.get("G2V_THREAD_BUDGET", "1") != "0")
        self.threads: int | None = None  # in use now
        self._saved: int | None = None
        self._cores = _cores()
        self._last: _Sample | None = None
        self._measured = False
        self._free: float = float(len(self._cores))  # the free cores, as last measured or guessed
        self._generation = -1  # the _GENERATION this budget's share was computed at

    #: Seconds between measurements: long enough for /proc/stat's 10 ms ticks to average out.
    interval: float = 1.0
    #: Seconds before the first measurement: soon, so that a fit started beside a busy
    #: core does not spend its first second on a team that waits for a descheduled thread
    #: (twenty ticks per core tell a busy loop from an idle core).
    first_interval: float = 0.2

    def __enter__(self) -> ThreadBudget:
        global _ACTIVE, _GENERATION
        if not self.enabled:
            return self
        # the free cores, first guessed from what is runnable now (the first measurement
        # follows in 0.2 s; machine-wide: on a host with more cores than the affinity mask
        # this only errs low, for 0.2 s), shared among the fits running in this process
        others = _others_running()
        free = len(self._cores) if others is None else max(1, len(self._cores) - others)
        with _LOCK:
            _ACTIVE += 1
            _GENERATION += 1
        self._free = free
        self._saved = self.threads = torch.get_num_threads()
        self._measured = False
        self._resize()
        self._last = _Sample(self._cores)
        return self

    def refresh(self) -> None:
        """Every ``interval`` seconds: measure the others' load since the last time, resize the team.

        Cheap enough to call at every step: between measurements it reads the clock only.
        """
        if not self.enabled or self._last is None:
            return
        if _GENERATION != self._generation:  # a fit began or ended beside this one: share again
            self._resize()
        interval = self.interval if self._measured else self.first_interval
        if time.monotonic() - self._last.wall >= interval:
            self._apply(self._last, _Sample(self._cores))
            self._measured = True

    def _apply(self, start: _Sample, end: _Sample) -> None:
        n_cores = len(self._cores)
        busy = _others_busy(start, end, n_cores)
        self._free = n_cores if busy is None else n_cores - busy
        self._resize()
        self._last = end

    def _resize(self) -> None:
        """Torch threads: the free cores shared among the fits running in this process now."""
        # a core counts as free when less than a third of it is taken: a shell, a
        # monitor or an editor must not halve the team, a busy loop must
        whole = int(self._free + 1.0 / 3.0)
        with _LOCK:
            threads = max(1, min(self._saved, whole // max(_ACTIVE, 1)))
            self._generation = _GENERATION
        if threads != self.threads:
            torch.set_num_threads(threads)
            self.threads = threads

    def __exit__(self, *exc) -> None:
        global _ACTIVE, _GENERATION
        if not self.enabled:
            return
        with _LOCK:
            _ACTIVE -= 1
            _GENERATION += 1
        self._last = None  # refresh() after the fit changes nothing
        if self._saved is not None:
            torch.set_num_threads(self._saved)
