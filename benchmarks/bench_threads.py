"""Thread hygiene: training and embedding beside a busy core, and grid searches on threads.

What it measures (each number a ratio against a baseline run in the same process):

* a VAMPNet fit (library defaults, 2 epochs, on the shipped alanine dipeptide's
  tokens at stride 5) and an embedding of 1,000 frames, on an idle machine and
  with a busy loop (a child process spinning on one core) beside it, with the
  package's thread budget (default) and without it (``G2V_THREAD_BUDGET=0``,
  torch's own thread count): busy / idle, each the best of two runs after a
  warm-up run; and the same work idle on one thread, whose ratio to idle on
  two is the floor of busy / idle (with one of two cores taken, one core is
  what is left);
* ``GridSearchCV`` over two learning rates with 2 folds, ``n_jobs=2`` on
  joblib's threading backend against ``n_jobs=1``.

Usage::

    python benchmarks/bench_threads.py

Run nothing else meanwhile. Writes benchmarks/results/threads.json.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path

from _common import cpu_model, timings

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("G2V_SHARED", HERE.parent.parent / "shared"))
CHECKPOINT = SHARED / "checkpoints" / "visnet_l6_h64_rbf64_r75.pth"


def spin(stop):
    while not stop.is_set():
        pass


class Busy:
    """A child process keeping one core busy while the block runs."""

    def __enter__(self):
        self.stop = mp.Event()
        self.proc = mp.Process(target=spin, args=(self.stop,), daemon=True)
        self.proc.start()
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.proc.join()


def timed(fn, repeats=1):
    return min(timings(fn, repeats, warm_up=False))


def main() -> None:
    import joblib
    import torch
    from sklearn.model_selection import GridSearchCV, KFold

    from g2v_sklearn import GeomEmbedder, TokenMerger, VAMPNetEstimator
    from g2v_sklearn.datasets import load_alanine_dipeptide

    data = load_alanine_dipeptide(stride=5)
    embedder = GeomEmbedder(str(CHECKPOINT), memory=str(HERE / "results" / "token-cache"), progress=False)
    merged = TokenMerger(window=1).fit_transform(embedder.fit_transform(data.trajectories))
    frames = data.trajectories[0][:1000]
    plain = GeomEmbedder(str(CHECKPOINT), progress=False).fit([frames])

    def fit():
        VAMPNetEstimator(lagtime=2, max_epochs=2, patience=None, progress=False, random_state=0).fit(merged)

    def embed():
        plain.transform([frames])

    rows = {}
    threads = torch.get_num_threads()
    for name, fn in (("fit", fit), ("embed", embed)):
        fn()  # warm-up: first-call allocations and kernel choices are not timed
        torch.set_num_threads(1)
        one_thread = timed(fn, 2)
        torch.set_num_threads(threads)
        for budget in ("1", "0"):
            os.environ["G2V_THREAD_BUDGET"] = budget
            label = "with thread budget" if budget == "1" else "without (torch's threads)"
            idle = timed(fn, 2)
            with Busy():
                busy = timed(fn, 2)
            rows[f"{name}, {label}"] = {"idle_s": idle, "busy_s": busy, "busy_over_idle": busy / idle,
                                        "idle_one_thread_s": one_thread, "floor": one_thread / idle}
            print(f"{name:5s} {label:26s}: idle {idle:6.1f} s, beside a busy core {busy:6.1f} s "
                  f"({busy / idle:.2f}x; one thread idle {one_thread:.1f} s, the floor {one_thread / idle:.2f}x)",
                  flush=True)
    os.environ["G2V_THREAD_BUDGET"] = "1"

    def search(n_jobs):
        est = VAMPNetEstimator(lagtime=2, max_epochs=2, patience=None, progress=False, random_state=0)
        with joblib.parallel_config(backend="threading"):
            GridSearchCV(est, {"lr": [1e-3, 5e-3]}, cv=KFold(2), n_jobs=n_jobs, refit=False).fit(merged)

    search(1)  # warm-up
    one, two = timed(lambda: search(1)), timed(lambda: search(2))
    rows["GridSearchCV threading"] = {"n_jobs_1_s": one, "n_jobs_2_s": two, "n_jobs_2_over_1": two / one}
    print(f"GridSearchCV (4 fits), threading backend: n_jobs=1 {one:.1f} s, n_jobs=2 {two:.1f} s "
          f"({two / one:.2f}x)")
    report = {"machine": {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "torch": torch.__version__},
              "rows": rows}
    out = HERE / "results" / "threads.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"CPU {report['machine']['cpu']}; written to {out}")


if __name__ == "__main__":
    main()
