"""Training speed before and after the learners' redesign, side by side in one run.

What it measures
----------------
The same fits with two versions of the package: ``before`` (a git revision,
by default the last one before the trainer and its objectives were split out
of the estimators) and ``after`` (this checkout). Each fit goes through the
public API that both versions share, ``Pipeline([TokenMerger, learner]).fit``,
on the same tokens, with early stopping off so that both run the same
number of epochs, at one thread:

* ``vampnet_ala2_w1``: the main job's VAMPNet (3 residues, ``window=1``,
  ``operator="none"``, 2 components, batch 256) on the shipped alanine
  dipeptide's tokens (8,000 frames), 3 epochs;
* ``vampnet_214_w8``: VAMPNet on 214-residue tokens (adenylate kinase's
  size, standard normal, a compact random chain), ``window=8``, batch 16,
  3 epochs over 320 frames;
* ``spib_ala2_w1``: SPIB (its defaults, but no label refinement and 3
  epochs) on the alanine dipeptide tokens.

Every fit runs in its own fresh interpreter whose ``PYTHONPATH`` selects the
version; the versions alternate (before, after, after, before, ...) so that
a drift of the machine's speed falls on both. The result is the median
seconds per epoch of each version, their spread, and the ratio
after / before (below 1: the redesign is faster).

Usage::

    python benchmarks/bench_redesign.py [--before REV] [--repeats 5] [--cases a,b]

Writes benchmarks/results/redesign.json. Run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import cpu_model

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: The last commit before the trainer redesign (the reference fits were saved there).
BEFORE = "76dde7a"
CASES = {
    "vampnet_ala2_w1": {"learner": "vampnet", "tokens": "ala2", "window": 1, "operator": "none",
                        "batch_size": 256, "epochs": 3},
    "vampnet_214_w8": {"learner": "vampnet", "tokens": "synthetic214", "window": 8, "operator": "graphconv",
                       "batch_size": 16, "epochs": 3},
    "spib_ala2_w1": {"learner": "spib", "tokens": "ala2", "window": 1, "operator": "none",
                     "batch_size": 256, "epochs": 3},
}


def make_tokens(folder: Path) -> None:
    """The shipped alanine dipeptide's tokens (this checkout's embedder) and 214-residue
    synthetic tokens, as plain arrays that either version can wrap."""
    from g2v_sklearn import GeomEmbedder
    from g2v_sklearn.datasets import load_alanine_dipeptide

    trajs = load_alanine_dipeptide(stride=5).trajectories
    tokens = GeomEmbedder("visnet", memory=str(HERE / "results" / "token-cache"), progress=False).fit_transform(trajs)
    np.savez(folder / "ala2.npz", **{f"features{i}": t.features for i, t in enumerate(tokens)},
             **{f"positions{i}": t.positions for i, t in enumerate(tokens)},
             names=np.asarray(tokens[0].residue_names), ids=np.asarray(tokens[0].residue_ids))
    rng = np.random.default_rng(0)
    n, frames = 214, 320
    steps = rng.normal(size=(n, 3))
    chain = np.cumsum(3.8 * steps / np.linalg.norm(steps, axis=1, keepdims=True), axis=0)
    chain = (chain - chain.mean(0)) * (16.0 / np.abs(chain - chain.mean(0)).max())  # a compact chain
    positions = chain[None] + 0.5 * rng.normal(size=(frames, n, 3))
    features = rng.normal(size=(frames, n, 4, 64))
    np.savez(folder / "synthetic214.npz", features0=features.astype(np.float32),
             positions0=positions.astype(np.float32), names=np.asarray(["ALA"] * n), ids=np.arange(1, n + 1))


def worker(case: dict, folder: Path) -> dict:
    import torch
    from sklearn.pipeline import Pipeline

    from g2v_sklearn import SPIBEstimator, TokenMerger, TokenTrajectory, VAMPNetEstimator

    torch.set_num_threads(1)
    arrays = np.load(folder / f"{case['tokens']}.npz")
    n_trajs = sum(k.startswith("features") for k in arrays.files)
    names, ids = list(arrays["names"]), list(arrays["ids"])
    tokens = [TokenTrajectory(arrays[f"features{i}"], arrays[f"positions{i}"], residue_names=names,
                              chain_ids=["A"] * len(names), residue_ids=ids) for i in range(n_trajs)]
    common = {"batch_size": case["batch_size"], "max_epochs": case["epochs"], "patience": None,
              "progress": False, "random_state": 0}
    if case["learner"] == "vampnet":
        learner = VAMPNetEstimator(lagtime=2, n_components=2, **common)
    else:
        learner = SPIBEstimator(lagtime=2, refinements=0, **common)
    pipe = Pipeline([("merge", TokenMerger(window=case["window"], operator=case["operator"])), ("learn", learner)])
    start = time.perf_counter()
    pipe.fit(tokens)
    return {"seconds_per_epoch": (time.perf_counter() - start) / case["epochs"], "torch": torch.__version__}


def run_worker(version: str, source: Path, case: str, folder: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(source), "OMP_NUM_THREADS": "1", "G2V_THREAD_BUDGET": "0"}
    out = subprocess.run([sys.executable, __file__, "--worker", case, "--folder", str(folder)],
                         env=env, capture_output=True, text=True, cwd=str(folder), check=False)
    if out.returncode:
        raise RuntimeError(f"{version} {case} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds_per_epoch"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BEFORE, help="git revision of the 'before' version")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "redesign.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(CASES[args.worker], args.folder)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        before = folder / "before"
        before.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before, "g2v_sklearn"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
        make_tokens(folder)
        versions = {"before": before, "after": ROOT}
        results = {}
        for case in args.cases.split(","):
            times = {"before": [], "after": []}
            for repeat in range(args.repeats):
                order = ("before", "after") if repeat % 2 == 0 else ("after", "before")
                for version in order:
                    times[version].append(run_worker(version, versions[version], case, folder))
            medians = {v: float(np.median(t)) for v, t in times.items()}
            results[case] = {"seconds_per_epoch": times, "median": medians,
                             "ratio_after_over_before": medians["after"] / medians["before"],
                             "ratio_range": [min(times["after"]) / max(times["before"]),
                                             max(times["after"]) / min(times["before"])]}
            print(f"{case}: before {medians['before']:.3f} s/epoch "
                  f"[{min(times['before']):.3f}, {max(times['before']):.3f}], after {medians['after']:.3f} "
                  f"[{min(times['after']):.3f}, {max(times['after']):.3f}]; after/before "
                  f"{results[case]['ratio_after_over_before']:.3f}", flush=True)
    import torch

    report = {"before": args.before, "cases": {k: CASES[k] for k in results}, "results": results,
              "machine": {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "torch": torch.__version__,
                          "load_average": os.getloadavg()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
