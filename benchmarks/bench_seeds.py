"""Science over seeds: the main example's pipeline with the library's defaults.

What it measures
----------------
For each data set and each ``random_state`` the pipeline of
``examples/alanine_dipeptide.py`` with the library's defaults::

    GeomEmbedder -> TokenMerger(window=1) -> VAMPNetEstimator(lagtime=100 ps, random_state=seed)
                 -> KMeansDiscretizer(100, random_state=seed) -> MSMEstimator(lagtime=100 ps)

and, on the same frames, the usual reference: k-means(100) on (cos, sin) of
(phi, psi) and a Bayesian MSM at the same lag (its maximum-likelihood
slowest implied timescale and 95 % credible interval). A seed passes when
the learned slowest timescale is at least 0.85 times the reference's and at
most the upper end of its interval. It also reports how well learned
coordinate 1 separates alpha_L (phi > 0): the frames are split by 1-D
k-means (2 clusters) on coordinate 1, the smaller cluster is called
alpha_L (no label is used), and its precision and recall against phi > 0
are given.

Data sets: the one shipped with the package (4 x 100 ns, stride 5: 50 ps
between frames, 8,000 frames) and ../shared/data/ala2 (4 x 100 ns made
independently, stride 20: 20 ps, 20,000 frames), which the defaults were not
tuned on.

``--collapse`` instead fits VAMPNetEstimator alone (defaults) on the shipped
data for seeds 0-9 at lr 1e-3 and 5e-3 and records whether training
collapsed (``history_["collapsed_epoch"]``), the kept epoch, and the
held-out-free training VAMP-2 of the kept weights.

Usage::

    python benchmarks/bench_seeds.py [--seeds 0,1,2,3,4] [--datasets shipped,shared]
    python benchmarks/bench_seeds.py --collapse [--seeds 0,...,9]

Writes benchmarks/results/seeds.json (or collapse.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from _common import cpu_model

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = Path(os.environ.get("G2V_SHARED", REPO.parent / "shared"))
CHECKPOINT = SHARED / "checkpoints" / "visnet_l6_h64_rbf64_r75.pth"
LAG_PS = 100.0


#: Frames kept of each data set (every n-th): the shipped one is saved every 10 ps, ../shared's every 1 ps.
STRIDES = {"shipped": 5, "shared": 20}


def load(name: str, stride: int | None = None):
    """(trajectories, timestep in ps) of a data set, heavy atoms only, at ``stride`` (default ``STRIDES``)."""
    import mdtraj as md

    stride = STRIDES[name] if stride is None else stride
    if name == "shipped":
        from g2v_sklearn.datasets import load_alanine_dipeptide

        data = load_alanine_dipeptide(stride=stride)
        return data.trajectories, data.timestep_ps
    folder = SHARED / "data" / "ala2"
    trajs = [md.load(str(folder / f"traj_{i}.xtc"), top=str(folder / "ala2.pdb"), stride=stride) for i in range(4)]
    trajs = [t.atom_slice(t.topology.select("element != H")) for t in trajs]
    return trajs, 1.0 * stride


def _example():
    """examples/alanine_dipeptide.py as a module: its (phi, psi) features and alpha_L measure, not copies."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("alanine_dipeptide_example",
                                                  REPO / "examples" / "alanine_dipeptide.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_msm(feats, lag):
    from g2v_sklearn import KMeansDiscretizer, MSMEstimator

    dtrajs = KMeansDiscretizer(100, random_state=0).fit_transform(feats)
    msm = MSMEstimator(lagtime=lag, bayesian=True, n_samples=100, random_state=0).fit(dtrajs)
    stats = msm.posterior_.gather_stats("timescales", k=1, confidence=0.95)
    return float(msm.timescales(1)[0]), float(np.ravel(stats.L)[0]), float(np.ravel(stats.R)[0])


def run_science(args) -> dict:
    from sklearn.pipeline import Pipeline

    from g2v_sklearn import GeomEmbedder, KMeansDiscretizer, MSMEstimator, TokenMerger, VAMPNetEstimator

    example = _example()
    rows = []
    for name in args.datasets:
        trajs, dt = load(name)
        lag = max(1, round(LAG_PS / dt))
        angles, feats = example.dihedral_features(trajs)
        in_alpha_l = np.concatenate(angles)[:, 0] > 0
        ref, ref_low, ref_high = reference_msm(feats, lag)
        tokens = GeomEmbedder(str(CHECKPOINT), memory=str(args.cache), progress=False).fit_transform(trajs)
        print(f"{name}: {len(trajs)} x {trajs[0].n_frames} frames, {dt:g} ps apart, lag {lag}; "
              f"(phi, psi) MSM slowest ITS {ref * dt / 1000:.3f} ns [{ref_low * dt / 1000:.3f}, "
              f"{ref_high * dt / 1000:.3f}]", flush=True)
        for seed in args.seeds:
            clock = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                learner = Pipeline([("merge", TokenMerger(window=1)),
                                    ("vamp", VAMPNetEstimator(lagtime=lag, progress=False, random_state=seed,
                                                              **args.params))])
                z = learner.fit(tokens).transform(tokens)
            seconds = time.perf_counter() - clock
            dtrajs = KMeansDiscretizer(100, random_state=seed).fit_transform(z)
            ours = float(MSMEstimator(lagtime=lag).fit(dtrajs).timescales_[0])
            precision, recall = example.alpha_l_recovery(np.concatenate(z)[:, 0], in_alpha_l)
            vamp = learner["vamp"]
            row = {
                "dataset": name, "seed": seed, "timestep_ps": dt, "lag_frames": lag,
                "learned_its_ns": ours * dt / 1000, "reference_its_ns": ref * dt / 1000,
                "reference_95ci_ns": [ref_low * dt / 1000, ref_high * dt / 1000],
                "ratio": ours / ref, "passes": bool(ours >= 0.85 * ref and ours <= ref_high),
                "alpha_l_precision": precision, "alpha_l_recall": recall,
                "epochs": len(vamp.history_["train"]), "best_epoch": vamp.history_["best_epoch"],
                "best_score": vamp.history_["best_score"], "collapsed_epoch": vamp.history_["collapsed_epoch"],
                "warnings": [str(w.message)[:200] for w in caught], "fit_seconds": seconds,
            }
            rows.append(row)
            print(f"  seed {seed}: {row['learned_its_ns']:.3f} ns ({row['ratio']:.2f}x), "
                  f"{'pass' if row['passes'] else 'FAIL'}; alpha_L precision {precision:.3f} recall {recall:.3f}; "
                  f"{row['epochs']} epochs (best {row['best_epoch']}), fit {seconds:.0f} s", flush=True)
    return {"rows": rows}


def run_collapse(args) -> dict:
    from g2v_sklearn import GeomEmbedder, TokenMerger, VAMPNetEstimator

    trajs, dt = load("shipped")
    lag = max(1, round(LAG_PS / dt))
    tokens = GeomEmbedder(str(CHECKPOINT), memory=str(args.cache), progress=False).fit_transform(trajs)
    merged = TokenMerger(window=1).fit_transform(tokens)
    rows = []
    for lr in (1e-3, 5e-3):
        for seed in args.seeds:
            clock = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                est = VAMPNetEstimator(lagtime=lag, lr=lr, progress=False, random_state=seed).fit(merged)
            h = est.history_
            row = {"lr": lr, "seed": seed, "collapsed_epoch": h["collapsed_epoch"], "best_epoch": h["best_epoch"],
                   "epochs": len(h["train"]), "best_score": h["best_score"], "train_curve": h["train"],
                   "validation_curve": h["validation"], "score_all": est.score(merged),
                   "warnings": [str(w.message)[:200] for w in caught], "seconds": time.perf_counter() - clock}
            rows.append(row)
            print(f"lr {lr:g} seed {seed}: collapsed {row['collapsed_epoch']}, best epoch {row['best_epoch']} of "
                  f"{row['epochs']}, kept VAMP-2 {row['best_score']:.3f}, on all data {row['score_all']:.3f}, "
                  f"{row['seconds']:.0f} s", flush=True)
    return {"rows": rows}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default=None, help="comma-separated (default 0-4; 0-9 with --collapse)")
    parser.add_argument("--datasets", default="shipped,shared")
    parser.add_argument("--collapse", action="store_true")
    parser.add_argument("--params", default="", help="VAMPNetEstimator parameters to change, e.g. "
                        "'validation_fraction=0.2' (default: none, the library's defaults)")
    parser.add_argument("--cache", type=Path, default=HERE / "results" / "token-cache")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(range(10 if args.collapse else 5))
    args.datasets = args.datasets.split(",")
    args.params = eval(f"dict({args.params})")  # noqa: S307 - a command-line convenience
    import torch

    started = time.perf_counter()
    report = run_collapse(args) if args.collapse else run_science(args)
    report["params"] = {k: repr(v) for k, v in args.params.items()}
    report["machine"] = {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "torch": torch.__version__,
                         "torch_threads": torch.get_num_threads()}
    report["total_seconds"] = time.perf_counter() - started
    out = args.out or HERE / "results" / ("collapse.json" if args.collapse else "seeds.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    if not args.collapse:
        rows = report["rows"]
        print(f"{sum(r['passes'] for r in rows)}/{len(rows)} seeds pass; CPU {report['machine']['cpu']}")
    print(f"written to {out} in {report['total_seconds']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
