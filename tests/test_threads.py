"""The thread budget (g2v_sklearn._threads): torch's thread team sized to the free cores.

The machine is simulated (cores, other runnable processes, the clock): what
is tested is the rule, not this machine's load."""

import pytest
import torch

from g2v_sklearn import _threads


# --------------------------------------------------------------------------- threads
def test_thread_budget_is_restored_and_shared_among_concurrent_fits(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(_threads, "_cores", lambda: [0, 1])
    monkeypatch.setattr(_threads, "_others_running", lambda: 0)  # an idle machine
    try:
        torch.set_num_threads(2)
        with _threads.ThreadBudget() as outer:
            assert outer.threads == 2
            with _threads.ThreadBudget() as inner:  # a second fit in this process
                assert inner.threads == 1 and torch.get_num_threads() == 1
            assert torch.get_num_threads() == 2
        # another process runnable on entry: start on the core that is left
        monkeypatch.setattr(_threads, "_others_running", lambda: 1)
        with _threads.ThreadBudget() as budget:
            assert budget.threads == 1 and torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert _threads._ACTIVE == 0


def test_a_busy_process_beside_us_is_seen_as_runnable():
    import subprocess
    import sys
    import time

    if _threads._others_running() is None:
        pytest.skip("no /proc/stat")
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert _threads._others_running() >= 1
    finally:
        spinner.kill()
        spinner.wait()


def test_others_load_is_the_busy_time_not_ours():
    class S:
        def __init__(self, busy, total, own, wall):
            self.jiffies, self.own, self.wall = (busy, total), own, wall

    # 2 cores for 1 s = 200 ticks; 150 busy, of which this process used 0.5 s: others used 1 core
    assert _threads._others_busy(S(0, 0, 0.0, 0.0), S(150, 200, 0.5, 1.0), 2) == pytest.approx(1.0)
    assert _threads._others_busy(S(0, 0, 0.0, 0.0), S(100, 200, 1.0, 1.0), 2) == pytest.approx(0.0)
    # a busy core halves the team; a lightly used one does not
    before = torch.get_num_threads()
    budget = _threads.ThreadBudget()
    budget._saved, budget._cores = 2, [0, 1]
    try:
        budget._apply(S(0, 0, 0.0, 0.0), S(150, 200, 0.5, 1.0))
        assert budget.threads == 1 and torch.get_num_threads() == 1
        budget._apply(S(0, 0, 0.0, 0.0), S(20, 200, 0.0, 1.0))
        assert budget.threads == 2
    finally:
        torch.set_num_threads(before)


def test_the_first_measurement_comes_soon_then_one_every_interval(monkeypatch):
    """A fit started beside a busy core is resized within 0.2 s, not after a whole second."""
    clock = [100.0]
    monkeypatch.setattr(_threads.time, "monotonic", lambda: clock[0])
    measured = []
    with _threads.ThreadBudget() as budget:
        if not budget.enabled:
            pytest.skip("G2V_THREAD_BUDGET=0")

        def apply(start, end):
            measured.append(round(end.wall - 100.0, 3))
            budget._last = end

        monkeypatch.setattr(budget, "_apply", apply)
        for _ in range(24):  # a step every 0.125 s (exact in binary) for 3 s
            clock[0] += 0.125
            budget.refresh()
    assert measured == [0.25, 1.25, 2.25]
