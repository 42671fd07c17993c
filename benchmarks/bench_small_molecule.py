"""Embedding a small molecule: frames/s of this checkout against another, side by side.

What it measures
----------------
``GeomEmbedder("visnet", progress=False).transform([traj])`` with every other
setting at its default, on the first ``--frames`` frames of the shipped
alanine dipeptide (10 heavy atoms, 3 residues): the path a user who sets
nothing gets, reading, checks, pooling and token writing included. Each
measurement runs in a fresh interpreter: the checkout under test (this
repository) and, with ``--baseline PATH``, another checkout of the package
(for example ``git worktree add /tmp/base <commit>``), alternating A B A B
``--rounds`` times, so that both see the same machine load. A worker fits the
embedder, embeds 200 frames as a warm-up, then times one ``transform``. It
reports frames/s by the wall clock and by the process's CPU time (which
counts only the time the process ran, so it moves less when other jobs share
the cores), the torch threads, and its tokens' digest; the parent prints the
medians, their ratio, the load average before and after, the processor, and
the largest norm-relative difference between the two checkouts' tokens.

Usage::

    python benchmarks/bench_small_molecule.py --baseline /tmp/base             # 2,000 frames, 3 rounds
    python benchmarks/bench_small_molecule.py --baseline /tmp/base --threads 1
    python benchmarks/bench_small_molecule.py --frames 8000 --rounds 5

Needs ``G2V_MIRROR`` (or network access) for the ViSNet checkpoint, as the
examples do. Results go to ``benchmarks/results/small_molecule.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import cpu_model

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TAG = "SMALL_MOLECULE "


def worker(frames: int, threads: int | None, tokens_out: str) -> None:
    import numpy as np
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    import g2v_sklearn
    from g2v_sklearn import GeomEmbedder
    from g2v_sklearn.datasets import load_alanine_dipeptide

    traj = load_alanine_dipeptide().trajectories[0][:frames]
    embedder = GeomEmbedder("visnet", progress=False).fit([traj])
    embedder.transform([traj[:200]])  # warm-up
    wall, cpu = time.perf_counter(), time.process_time()
    tokens = embedder.transform([traj])[0]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    np.save(tokens_out, np.asarray(tokens.features))
    print(TAG + json.dumps({"package": g2v_sklearn.__file__, "frames": frames,
                            "wall_frames_per_s": frames / wall, "cpu_frames_per_s": frames / cpu,
                            "torch_threads": torch.get_num_threads()}), flush=True)


def spawn(checkout: Path, args, tokens_out: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(checkout)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    command = [sys.executable, __file__, "--worker", "--frames", str(args.frames),
               "--tokens-out", tokens_out] + (["--threads", str(args.threads)] if args.threads else [])
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=HERE)
    lines = [line for line in done.stdout.splitlines() if line.startswith(TAG)]
    if done.returncode or not lines:
        raise SystemExit(f"worker for {checkout} failed:\n{done.stderr[-3000:]}")
    result = json.loads(lines[-1][len(TAG):])
    if not result["package"].startswith(str(checkout)):
        raise SystemExit(f"worker imported {result['package']}, not the checkout {checkout}")
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads in the workers (default: torch's own)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="another checkout of the package to compare with (its root folder)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tokens-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.frames, args.threads, args.tokens_out)
        return
    import numpy as np

    checkouts = {"this": REPO} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    runs = {name: [] for name in checkouts}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name, checkout in checkouts.items():
                runs[name].append(spawn(checkout, args, os.path.join(tmp, f"{name}.npy")))
                print(f"round {round_}: {name} {runs[name][-1]['wall_frames_per_s']:.0f} frames/s "
                      f"(CPU time {runs[name][-1]['cpu_frames_per_s']:.0f}), load {os.getloadavg()[0]:.2f}",
                      flush=True)
        tokens = {name: np.load(os.path.join(tmp, f"{name}.npy")).astype(np.float64) for name in checkouts}
    summary = {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "frames": args.frames,
               "threads": runs["this"][0]["torch_threads"], "load_before": load_before,
               "load_after": os.getloadavg(), "runs": runs}
    for name in checkouts:
        for clock in ("wall", "cpu"):
            summary[f"{name}_{clock}_frames_per_s"] = statistics.median(
                r[f"{clock}_frames_per_s"] for r in runs[name])
    print(f"CPU {summary['cpu']} ({summary['logical_cpus']} logical CPUs), torch threads "
          f"{summary['threads']}, {args.frames} frames of alanine dipeptide, {args.rounds} rounds; "
          f"load average {load_before[0]:.2f} before, {summary['load_after'][0]:.2f} after")
    for name in checkouts:
        print(f"{name}: {summary[name + '_wall_frames_per_s']:.0f} frames/s wall, "
              f"{summary[name + '_cpu_frames_per_s']:.0f} by CPU time (medians)")
    if "baseline" in checkouts:
        for clock in ("wall", "cpu"):
            summary[f"ratio_{clock}"] = (summary[f"this_{clock}_frames_per_s"]
                                         / summary[f"baseline_{clock}_frames_per_s"])
        a, b = tokens["this"], tokens["baseline"]
        summary["tokens_norm_relative_difference"] = float(np.linalg.norm(a - b) / np.linalg.norm(b))
        summary["tokens_max_abs_difference"] = float(np.abs(a - b).max())
        print(f"this / baseline: {summary['ratio_wall']:.2f}x wall, {summary['ratio_cpu']:.2f}x by CPU "
              f"time; tokens differ by {summary['tokens_norm_relative_difference']:.1e} "
              f"(norm-relative), at most {summary['tokens_max_abs_difference']:.1e}")
    out = HERE / "results" / "small_molecule.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
