"""Does reading memory-mapped token stores stall training? A profile of one epoch.

What it measures
----------------
A VAMPNet fit of one epoch (library defaults, ``TokenMerger(window=8)``,
batches of 256 pairs) on token trajectories shaped like adenylate kinase
(214 residues, ``bench_train.make_tokens``), held three ways:

* ``ram``: NumPy arrays in memory;
* ``store, warm``: stores written by ``save_tokens`` and opened memory-mapped
  by ``load_tokens``, their pages in the operating system's cache (as on a
  second epoch, or a data set that fits in RAM);
* ``store, cold``: the same stores with their pages dropped from the cache
  when training starts (a callback's ``on_fit_begin``, after ``fit``'s input
  checks have read every frame once: ``madvise``/``posix_fadvise``
  ``DONTNEED``), so every frame the epoch reads comes from the disk (a data
  set much larger than RAM, as at the paper's scale).

For each, the wall time of ``fit`` from the start of training (its input
checks excluded: the training pass, the end-of-epoch scores and the final
decomposition, which read every frame again, by then from a warm cache in
the cold case) and the time spent reading frames in it
(``TimeSeries.frames``: the copy out of the arrays or the memory maps into a
tensor, wrapped with a timer here), best of ``--repeats``. The share spent
reading is the most a prefetching reader (reading batch i + 1 while batch i
trains) could save.

Usage::

    python benchmarks/bench_prefetch.py [--frames 500] [--trajectories 4] [--repeats 2] [--network small]

Run nothing else meanwhile. Writes benchmarks/results/prefetch_<network>.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
from pathlib import Path

from _common import cpu_model

HERE = Path(__file__).resolve().parent


def drop_from_cache(directory: Path, arrays=()) -> None:
    """Make the next read of the stores in ``directory`` come from the disk.

    The pages of ``arrays`` (memory maps of those stores) are unmapped from this
    process first (``madvise(MADV_DONTNEED)``: a mapped page cannot be evicted),
    then the kernel is asked to forget every file's cached pages
    (``posix_fadvise(DONTNEED)``; clean pages go).
    """
    import mmap

    for array in arrays:
        handle = getattr(array, "_mmap", None)
        if handle is not None:
            handle.madvise(mmap.MADV_DONTNEED)
    for path in directory.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--residues", type=int, default=214)
    parser.add_argument("--frames", type=int, default=500, help="frames per trajectory")
    parser.add_argument("--trajectories", type=int, default=4)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--network", default="defaults", choices=("defaults", "small"),
                        help="'small': d_model 16, one layer, no graph convolution: less computing per "
                             "frame read")
    args = parser.parse_args(argv)

    import torch

    from bench_train import make_tokens
    from g2v_sklearn import Callback, TokenMerger, VAMPNetEstimator, load_tokens, save_tokens
    from g2v_sklearn.learners import _learner

    reading = {"s": 0.0}
    frames = _learner.TimeSeries.frames

    def timed_frames(self, *a, **kw):
        start = time.perf_counter()
        out = frames(self, *a, **kw)
        reading["s"] += time.perf_counter() - start
        return out

    _learner.TimeSeries.frames = timed_frames
    trajs = [make_tokens(args.residues, args.frames, seed) for seed in range(args.trajectories)]
    size_gb = sum(t.features.nbytes + t.positions.nbytes for t in trajs) / 1e9
    rows = []
    with tempfile.TemporaryDirectory(dir=HERE / "results" if (HERE / "results").is_dir() else None) as tmp:
        stores = [Path(tmp) / f"traj_{i}" for i in range(len(trajs))]
        for t, path in zip(trajs, stores):
            save_tokens(t, path)

        class FromTraining(Callback):
            """Time (and count reads) from the start of training, after fit's input checks have read
            every frame once; ``cold``: drop the stores' pages from the cache first."""

            def __init__(self, cold=False):
                self.cold, self.start = cold, None

            def on_fit_begin(self, learner, context):
                if self.cold:
                    drop_from_cache(Path(tmp), [a for t in context.series.items for a in (t.features, t.positions)])
                reading["s"] = 0.0
                self.start = time.perf_counter()

        small = args.network == "small"
        network = dict(d_model=16, n_heads=2, n_layers=1) if small else {}

        def fit(data, cold=False):
            merged = TokenMerger(window=args.window, operator="none" if small else "graphconv").fit_transform(data)
            clock = FromTraining(cold)
            VAMPNetEstimator(lagtime=10, max_epochs=1, progress=False, random_state=0, callbacks=[clock],
                             **network).fit(merged)
            return time.perf_counter() - clock.start, reading["s"]

        fit(trajs)  # warm-up: first-call allocations and kernel choices
        for case in ("ram", "store, warm", "store, cold"):
            best = None
            for _ in range(args.repeats):
                gc.collect()
                if case == "ram":
                    data = trajs
                else:
                    data = [load_tokens(p, verify="header") for p in stores]
                    if case == "store, warm":
                        for t in data:  # touch every page once
                            float(t.features.sum())
                seconds, read = fit(data, cold=case == "store, cold")
                del data
                if best is None or seconds < best[0]:
                    best = (seconds, read)
            row = {"case": case, "epoch_s": best[0], "reading_s": best[1], "reading_share": best[1] / best[0]}
            rows.append(row)
            print(f"{case:12s}: epoch {best[0]:6.2f} s, reading frames {best[1]:5.2f} s "
                  f"({100 * best[1] / best[0]:.1f} %)", flush=True)
    report = {"machine": {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "torch": torch.__version__,
                          "torch_threads": torch.get_num_threads()},
              "data": {"residues": args.residues, "trajectories": args.trajectories,
                       "frames_each": args.frames, "gigabytes": size_gb, "window": args.window},
              "network": args.network,
              "rows": rows}
    out = HERE / "results" / f"prefetch_{args.network}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{size_gb:.2f} GB of tokens; CPU {report['machine']['cpu']}; written to {out}")
    return report


if __name__ == "__main__":
    main()
