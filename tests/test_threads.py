"""The thread budget (g2v_sklearn._threads): torch's thread team sized to the free cores.

The machine is simulated (cores, other runnable processes, the clock): what
is tested is the rule, not this machine's load."""

import copy
import threading

import numpy as np
import pytest
import torch

from g2v_sklearn import Callback, VAMPNetEstimator, _threads


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


def test_a_fit_that_begins_or_ends_beside_another_makes_it_share_again(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(_threads, "_cores", lambda: [0, 1])
    monkeypatch.setattr(_threads, "_others_running", lambda: 0)
    monkeypatch.setattr(_threads, "_busy_jiffies", lambda cores: None)  # this machine's load is not tested
    try:
        torch.set_num_threads(2)
        with _threads.ThreadBudget() as first:
            assert first.threads == 2
            with _threads.ThreadBudget():
                first.refresh()  # its next step, not its next measurement
                assert first.threads == 1
            first.refresh()
            assert first.threads == 2
        first.refresh()  # after the fit: nothing changes
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_cores_are_shared_whole_among_many_fits(monkeypatch):
    """Eight free cores and three fits: two threads each (six), not three each (nine)."""
    before = torch.get_num_threads()
    monkeypatch.setattr(_threads, "_cores", lambda: list(range(8)))
    monkeypatch.setattr(_threads, "_others_running", lambda: 0)
    try:
        torch.set_num_threads(8)
        with _threads.ThreadBudget() as a, _threads.ThreadBudget() as b, _threads.ThreadBudget() as c:
            a.refresh(), b.refresh()
            assert (a.threads, b.threads, c.threads) == (2, 2, 2)
    finally:
        torch.set_num_threads(before)


# what the fits below saw; module-level, because GridSearchCV deep-copies callbacks
_BOTH_RUNNING = threading.Barrier(2, timeout=60)
_SEEN: list = []
_STARTED: list = []


class _RecordThreads(Callback):
    def for_run(self):
        return copy.copy(self)  # fit_, set in on_fit_begin, is the run's

    def on_fit_begin(self, learner, context):
        with _threads._LOCK:
            self.fit_ = len(_STARTED)
            _STARTED.append(self.fit_)
        _BOTH_RUNNING.wait()  # both fits are inside their budgets from here on

    def on_batch_end(self, learner, context):
        # torch's threads now, and the fits in their budgets when the step last shared (valid
        # while no fit began or ended since: a fit that ends first leaves the other alone)
        with _threads._LOCK:
            current = context.threads._generation == _threads._GENERATION
            _SEEN.append((self.fit_, torch.get_num_threads(), _threads._ACTIVE, current))


def test_concurrent_fits_on_dask_threads_share_the_cores(monkeypatch):
    """GridSearchCV on a Dask cluster of one process with two threads: two fits at a time,
    one core each on a two-core machine (not two teams of two threads on two cores)."""
    distributed = pytest.importorskip("distributed", reason="needs the 'dask' extra")
    import joblib
    from sklearn.model_selection import GridSearchCV

    monkeypatch.setattr(_threads, "_cores", lambda: [0, 1])
    monkeypatch.setattr(_threads, "_others_running", lambda: 0)
    monkeypatch.setattr(_threads, "_busy_jiffies", lambda cores: None)  # the concurrency rule alone,
    monkeypatch.setattr(_threads.ThreadBudget, "first_interval", 1e9)  # applied at once, not at the
    monkeypatch.setattr(_threads.ThreadBudget, "interval", 1e9)  # next measurement of the load
    rng = np.random.default_rng(0)
    trajs = [np.cumsum(rng.normal(size=(400, 3)), axis=0) * 0.01 for _ in range(4)]
    est = VAMPNetEstimator(lagtime=5, hidden_layer_sizes=(16,), batch_size=32, max_epochs=2, patience=None,
                           progress=False, random_state=0, callbacks=[_RecordThreads()])
    _SEEN.clear()
    _STARTED.clear()
    _BOTH_RUNNING.reset()
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the count Dask's threads start from
    try:
        with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                      dashboard_address=None) as cluster, \
                distributed.Client(cluster), joblib.parallel_config(backend="dask"):
            GridSearchCV(est, {"lr": [1e-3, 2e-3]}, cv=2, n_jobs=2, refit=False, error_score="raise").fit(trajs)
    finally:
        torch.set_num_threads(before)
    fits = {fit for fit, *_ in _SEEN}
    assert len(fits) == 4  # 2 candidates x 2 folds
    for fit in fits:
        together = [threads for f, threads, active, current in _SEEN if f == fit and active == 2 and current]
        alone = [threads for f, threads, active, current in _SEEN if f == fit and active == 1 and current]
        assert len(together) >= 5 and set(together) == {1}  # each fit shared the cores while both ran
        assert set(alone) <= {2}  # and took both back when it ran alone


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
