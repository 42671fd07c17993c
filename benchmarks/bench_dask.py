"""Embedding on a Dask cluster: frames/s with 1 and 2 local worker processes against this process.

Four trajectories of adenylate kinase (MDAnalysisTests' two transition paths, each
cut in two; ``--frames`` frames each; 1,656 heavy atoms) go through
``GeomEmbedder(checkpoint, max_num_neighbors=32).transform`` with geom2vec's ViSNet
(its cap of 32 neighbours, ``--max-neighbors``), written to
memory-mapped stores in a temporary directory, in four ways:

``serial, 2 threads``
    this process, torch's default threads (what a user gets without a cluster);
``serial, 1 thread``
    this process, ``torch.set_num_threads(1)``;
``dask, 1 worker`` / ``dask, 2 workers``
    ``joblib.parallel_config(backend="dask")`` over a ``LocalCluster`` of that
    many worker processes, one torch thread each (Dask starts them with
    ``OMP_NUM_THREADS=1``). Two workers have one task thread each; the one
    worker has two (two trajectories at a time), because joblib runs the work
    of a cluster with a single task thread in all in the calling process, not
    on the worker. The task stream checks that the work ran on the cluster.
    The cluster is started before the clock.
``..., no trim threshold``
    the same, with ``MALLOC_TRIM_THRESHOLD_`` taken out of Dask's
    ``distributed.nanny.pre-spawn-environ`` (see the comment in ``main``).

Every run embeds the same frames (the stores are deleted in between); tokens
are compared with the one-thread serial run. On a 2-core machine two workers
can at best double one worker's rate; against the two-thread serial run the
gain is what two processes win over one process's two threads. Nothing here
asserts on timings.

Usage::

    python benchmarks/bench_dask.py [--frames 12] [--max-neighbors 32]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from _common import cpu_model  # benchmarks/_common.py

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("G2V_SHARED", HERE.parent.parent / "shared"))
CHECKPOINT = SHARED / "checkpoints" / "visnet_l6_h64_rbf64_r75.pth"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=12, help="frames per trajectory (4 trajectories)")
    parser.add_argument("--max-neighbors", type=int, default=32, help="neighbour cap (0: none)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "dask.json")
    args = parser.parse_args(argv)

    import distributed
    import joblib
    import numpy as np
    import torch

    from g2v_sklearn import GeomEmbedder
    from g2v_sklearn.datasets import load_adenylate_kinase

    paths = load_adenylate_kinase().paths
    trajs = [p[start:start + args.frames] for p in paths for start in (0, args.frames)]
    n_frames = sum(t.n_frames for t in trajs)
    tmp = Path(tempfile.mkdtemp(prefix="bench_dask_"))
    embedder = GeomEmbedder(str(CHECKPOINT), store_dir=str(tmp / "stores"), progress=False,
                            max_num_neighbors=args.max_neighbors or None).fit(trajs)
    embedder.transform(trajs[:1])  # warm-up in this process
    shutil.rmtree(tmp / "stores")

    def timed():
        start = time.perf_counter()
        tokens = embedder.transform(trajs)
        seconds = time.perf_counter() - start
        features = [np.array(t.features) for t in tokens]
        del tokens
        shutil.rmtree(tmp / "stores")
        return seconds, features

    rows, reference = [], None
    default_threads = torch.get_num_threads()
    for name, threads in (("serial, 1 thread", 1), ("serial, 2 threads", default_threads)):
        torch.set_num_threads(threads)
        seconds, features = timed()
        reference = features if threads == 1 else reference
        rows.append({"variant": name, "seconds": seconds, "features": features})
    torch.set_num_threads(default_threads)
    import dask

    # Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536 among its
    # pre-spawn-environ; setting it fixes glibc's mmap threshold, and every large
    # temporary then costs fresh page faults. The last two rows start them without it.
    # The nanny also leaves the variable in this process's os.environ, which later
    # workers inherit whatever the config says: it is taken out of both for those rows.
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ"))
    without_trim = {k: v for k, v in environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    for workers, spawn_environ, note in ((1, environ, ""), (2, environ, ""),
                                         (1, without_trim, ", no trim threshold"),
                                         (2, without_trim, ", no trim threshold")):
        if "MALLOC_TRIM_THRESHOLD_" not in spawn_environ:
            os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
        with dask.config.set({"distributed.nanny.pre-spawn-environ": spawn_environ}), \
                distributed.LocalCluster(n_workers=workers, threads_per_worker=2 if workers == 1 else 1,
                                         processes=True, dashboard_address=None) as cluster, \
                distributed.Client(cluster) as client, joblib.parallel_config(backend="dask"), \
                distributed.get_task_stream(client) as stream:
            client.run(torch.set_num_threads, 1)
            trim = sorted(set(map(str, client.run(lambda: __import__("os").environ.get("MALLOC_TRIM_THRESHOLD_"))
                                  .values())))
            worker_threads = sorted(set(client.run(torch.get_num_threads).values()))
            client.run(lambda: __import__("g2v_sklearn"))  # imports before the clock
            seconds, features = timed()
        if not stream.data:
            raise RuntimeError(f"the {workers}-worker run did not go through the cluster")
        rows.append({"variant": f"dask, {workers} worker{'s' if workers > 1 else ''}{note}",
                     "seconds": seconds, "features": features, "worker_threads": worker_threads,
                     "workers_trim_threshold": trim})
    shutil.rmtree(tmp)

    base = next(r for r in rows if r["variant"] == "serial, 2 threads")["seconds"]
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs); torch {torch.__version__}; "
          f"{len(trajs)} trajectories, {n_frames} ADK frames, ViSNet, memory-mapped stores")
    print(f"{'variant':38s} {'frames/s':>9s} {'vs serial, 2 threads':>21s} {'identical to 1-thread serial':>29s}")
    for r in rows:
        r["frames_per_s"] = n_frames / r["seconds"]
        r["vs_serial_default"] = base / r["seconds"]
        r["identical"] = all(np.array_equal(a, b) for a, b in zip(r.pop("features"), reference))
        print(f"{r['variant']:38s} {r['frames_per_s']:9.3f} {r['vs_serial_default']:20.2f}x "
              f"{str(r['identical']):>29s}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpu": cpu_model(), "frames": n_frames, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
