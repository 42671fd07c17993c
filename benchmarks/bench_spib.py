"""SPIB's states over seeds: the README's pipeline with the library's defaults.

What it measures
----------------
For each data set and each ``random_state``::

    GeomEmbedder -> TokenMerger(window=1) -> SPIBEstimator(lagtime=100 ps, random_state=seed)
                 -> MSMEstimator(lagtime=100 ps) on SPIB's states

against the usual reference on the same frames: k-means(100) on (cos, sin)
of (phi, psi), a Bayesian MSM at the same lag (its slowest implied timescale
and 95 % credible interval) and its PCCA+ into two sets, whose smaller set is
alpha_L. SPIB's states are mapped to the PCCA+ set that holds most of their
frames; the frames of the states mapped to alpha_L are SPIB's alpha_L, and
their precision and recall against the reference's alpha_L set are given. A
seed passes when SPIB finds at least two states, precision and recall are at
least 0.9, and the slowest implied timescale of the MSM on SPIB's states lies
inside the reference's interval.

Data sets: ``shipped`` (the package's, stride 5: 50 ps between frames, 8,000
frames, lag 2) and ``shared`` (../shared/data/ala2, made independently with
other seeds, stride 10: 10 ps, 40,000 frames, lag 10).

Usage::

    python benchmarks/bench_spib.py [--seeds 0,1,2,3,4] [--datasets shipped,shared]
                                    [--params "beta=1e-2"]

Writes benchmarks/results/spib.json.
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
from bench_seeds import CHECKPOINT, HERE, LAG_PS, _example
from bench_seeds import load as load_data

#: Frames kept (every n-th): 50 ps and 10 ps between frames.
STRIDES = {"shipped": 5, "shared": 10}


def reference(feats, lag):
    """The (phi, psi) MSM: slowest ITS, its 95 % interval, and every frame's PCCA+ set (alpha_L is 1)."""
    from g2v_sklearn import KMeansDiscretizer, MSMEstimator

    dtrajs = KMeansDiscretizer(100, random_state=0).fit_transform(feats)
    msm = MSMEstimator(lagtime=lag, bayesian=True, n_samples=100, random_state=0).fit(dtrajs)
    stats = msm.posterior_.gather_stats("timescales", k=1, confidence=0.95)
    sets = np.full(max(d.max() for d in dtrajs) + 1, -1)
    sets[msm.active_set_] = msm.model_.pcca(2).memberships.argmax(axis=1)
    labels = np.concatenate([sets[d] for d in dtrajs])
    if (labels == 1).sum() > (labels == 0).sum():  # alpha_L, the rare set, is 1
        labels = np.where(labels >= 0, 1 - labels, labels)
    return float(msm.timescales(1)[0]), float(np.ravel(stats.L)[0]), float(np.ravel(stats.R)[0]), labels


def run(args) -> dict:
    from sklearn.pipeline import Pipeline

    from g2v_sklearn import GeomEmbedder, MSMEstimator, SPIBEstimator, TokenMerger

    example = _example()
    rows = []
    for name in args.datasets:
        trajs, dt = load_data(name, STRIDES[name])
        lag = max(1, round(LAG_PS / dt))
        _, feats = example.dihedral_features(trajs)
        ref, ref_low, ref_high, ref_labels = reference(feats, lag)
        tokens = GeomEmbedder(str(CHECKPOINT), memory=str(args.cache), progress=False).fit_transform(trajs)
        print(f"{name}: {len(trajs)} x {trajs[0].n_frames} frames, {dt:g} ps apart, lag {lag}; (phi, psi) MSM "
              f"slowest ITS {ref * dt / 1000:.3f} ns [{ref_low * dt / 1000:.3f}, {ref_high * dt / 1000:.3f}], "
              f"alpha_L {np.mean(ref_labels == 1):.2%} of frames", flush=True)
        for seed in args.seeds:
            clock = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                learner = Pipeline([("merge", TokenMerger(window=1)),
                                    ("spib", SPIBEstimator(lagtime=lag, progress=False, random_state=seed,
                                                           **args.params))]).fit(tokens)
            seconds = time.perf_counter() - clock
            spib = learner["spib"]
            states = spib.labels_
            flat = np.concatenate(states)
            its = float(MSMEstimator(lagtime=lag).fit(states).timescales_[0]) if spib.n_states_ > 1 else 0.0
            kept = ref_labels >= 0
            precision, recall = example.states_alpha_l_recovery(flat[kept], ref_labels[kept] == 1)
            h = spib.history_
            row = {
                "dataset": name, "seed": seed, "timestep_ps": dt, "lag_frames": lag,
                "n_states": int(spib.n_states_), "populations": (np.bincount(flat) / flat.size).tolist(),
                "alpha_l_precision": precision, "alpha_l_recall": recall,
                "its_ns": its * dt / 1000, "reference_its_ns": ref * dt / 1000,
                "reference_95ci_ns": [ref_low * dt / 1000, ref_high * dt / 1000],
                "passes": bool(spib.n_states_ >= 2 and precision >= 0.9 and recall >= 0.9
                               and ref_low <= its <= ref_high),
                "epochs": len(h["train"]), "rounds": spib.n_refinements_, "n_states_per_round": h["n_states"],
                "restarts": len(h["restarts"]), "refused_round": h["refused_round"],
                "initial_states": int(np.concatenate(spib.labels_history_[0]).max() + 1),
                "warnings": [str(w.message)[:200] for w in caught], "fit_seconds": seconds,
            }
            rows.append(row)
            print(f"  seed {seed}: {row['n_states']} states {np.round(row['populations'], 3).tolist()}; alpha_L "
                  f"precision {precision:.3f} recall {recall:.3f}; ITS {row['its_ns']:.3f} ns; "
                  f"{'pass' if row['passes'] else 'FAIL'}; {row['epochs']} epochs in {row['rounds']} rounds "
                  f"(states {row['n_states_per_round']}, restarts {row['restarts']}, refused round "
                  f"{row['refused_round']}), fit {seconds:.0f} s", flush=True)
    return {"rows": rows}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--datasets", default="shipped,shared")
    parser.add_argument("--params", default="", help="SPIBEstimator parameters to change, e.g. 'beta=1e-2' "
                        "(default: none, the library's defaults)")
    parser.add_argument("--cache", type=Path, default=HERE / "results" / "token-cache")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "spib.json")
    args = parser.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.datasets = args.datasets.split(",")
    args.params = eval(f"dict({args.params})")  # noqa: S307 - a command-line convenience
    import torch

    started = time.perf_counter()
    report = run(args)
    report["params"] = {k: repr(v) for k, v in args.params.items()}
    report["machine"] = {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "torch": torch.__version__,
                         "torch_threads": torch.get_num_threads()}
    report["total_seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    rows = report["rows"]
    print(f"{sum(r['passes'] for r in rows)}/{len(rows)} seeds pass; CPU {report['machine']['cpu']}")
    print(f"written to {args.out} in {report['total_seconds']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
