"""The kinetic model over seeds: the default route from learned coordinates to an MSM, against (phi, psi).

What it measures
----------------
For each data set and each ``random_state``::

    GeomEmbedder -> TokenMerger(window=1) -> VAMPNetEstimator(lagtime=100 ps, random_state=seed)
                 -> KMeansDiscretizer(random_state=seed)          # the library's default n_clusters
                 -> MSMEstimator(lagtime=100 ps, bayesian=True)   -> kinetic_model(n_sets=2)

against the usual reference on the same frames: k-means(100) on (cos, sin) of
(phi, psi), a Bayesian MSM at the same lag and its kinetic model with two
PCCA+ sets (the smaller is alpha_L). Reported per seed: the two slowest
implied timescales with their 95 % credible intervals, each set's precision
and recall frame by frame against the reference's sets, and the mean
first-passage times into and out of alpha_L with intervals. A seed passes the
MSM check when its slowest timescale lies inside the reference's interval,
its own interval is no wider (log scale) than twice the reference's, and its
second timescale is not above the reference's upper bound for that process
(a longer one would be an artefact of the discretisation); it passes the
kinetics check when every set's precision and recall are at least 0.9 and
both MFPTs lie inside the reference's intervals.

``--clusters`` replaces the library's default number of k-means centres (for
comparison with the old default of 100). The learned coordinates of each
(data set, seed) are kept in ``--cache`` and reused by later runs (the fit
is the same: the library's defaults at that seed).

Usage::

    python benchmarks/bench_kinetics.py [--seeds 0,1,2,3,4] [--datasets shipped,shared] [--clusters 100]

Writes benchmarks/results/kinetics.json (or kinetics_k{N}.json with --clusters).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np

from _common import cpu_model
from bench_seeds import CHECKPOINT, HERE, LAG_PS, _example
from bench_seeds import load as load_data

#: Frames kept (every n-th): 50 ps and 10 ps between frames.
STRIDES = {"shipped": 5, "shared": 10}


def learned_coordinates(name, seed, tokens, lag, cache: Path):
    from g2v_sklearn import TokenMerger, VAMPNetEstimator

    path = cache / f"z_{name}_{seed}.npz"
    if path.exists():
        saved = np.load(path)
        return [saved[f"arr_{i}"] for i in range(len(tokens))], "cached"
    clock = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged = TokenMerger(window=1).fit_transform(tokens)
        vamp = VAMPNetEstimator(lagtime=lag, progress=False, random_state=seed).fit(merged)
        z = vamp.transform(merged)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, *z, sv=vamp.singular_values_)
    return z, f"{time.perf_counter() - clock:.0f} s"


def msm_summary(pipe, X, dt):
    """Two slowest ITS (ns) with 95 % intervals, and the two-set kinetic model."""
    from g2v_sklearn import kinetic_model

    msm = pipe[-1]
    stats = msm.posterior_.gather_stats("timescales", k=2, confidence=0.95)
    its = msm.timescales(2) * dt / 1000
    model = kinetic_model(pipe, X, n_sets=2, timestep=f"{dt} ps", unit="ns")
    rare = int(np.argmin(model.populations))
    return {"its_ns": its.tolist(), "low_ns": (np.ravel(stats.L) * dt / 1000).tolist(),
            "high_ns": (np.ravel(stats.R) * dt / 1000).tolist(), "n_states": int(msm.n_states_)}, model, rare


def compare(ours, ref, model, rare, ref_model, ref_rare):
    """The MSM check and the kinetics check of one seed."""
    its, low, high = np.array(ours["its_ns"]), np.array(ours["low_ns"]), np.array(ours["high_ns"])
    r_its, r_low, r_high = np.array(ref["its_ns"]), np.array(ref["low_ns"]), np.array(ref["high_ns"])
    checks = {
        "its1_inside": bool(r_low[0] <= its[0] <= r_high[0]),
        "width_ok": bool(np.log(high[0] / low[0]) <= 2 * np.log(r_high[0] / r_low[0])),
        "its2_not_above": bool(its[1] <= r_high[1]),
    }
    ours_sets, ref_sets = np.concatenate(model.assignments), np.concatenate(ref_model.assignments)
    kept = (ours_sets >= 0) & (ref_sets >= 0)
    a, b = (ours_sets[kept] == rare), (ref_sets[kept] == ref_rare)
    scores = {"alpha_L_precision": float(np.mean(b[a])), "alpha_L_recall": float(np.mean(a[b])),
              "main_precision": float(np.mean(~b[~a])), "main_recall": float(np.mean(~a[~b]))}
    other, ref_other = 1 - rare, 1 - ref_rare
    mfpt = {"into_alpha_L_ns": float(model.mfpt[other, rare]), "out_of_alpha_L_ns": float(model.mfpt[rare, other]),
            "ref_into_95ci": ref_model.mfpt_interval[:, ref_other, ref_rare].tolist(),
            "ref_out_95ci": ref_model.mfpt_interval[:, ref_rare, ref_other].tolist(),
            "into_95ci": model.mfpt_interval[:, other, rare].tolist(),
            "out_95ci": model.mfpt_interval[:, rare, other].tolist()}
    kinetics_ok = (min(scores.values()) >= 0.9
                   and mfpt["ref_into_95ci"][0] <= mfpt["into_alpha_L_ns"] <= mfpt["ref_into_95ci"][1]
                   and mfpt["ref_out_95ci"][0] <= mfpt["out_of_alpha_L_ns"] <= mfpt["ref_out_95ci"][1])
    return dict(checks, msm_passes=all(checks.values()), kinetics_passes=bool(kinetics_ok), **scores, **mfpt)


def run(args) -> dict:
    from sklearn.pipeline import Pipeline

    from g2v_sklearn import GeomEmbedder, KMeansDiscretizer, MSMEstimator

    example = _example()
    rows, references = [], {}
    for name in args.datasets:
        trajs, dt = load_data(name, STRIDES[name])
        lag = max(1, round(LAG_PS / dt))
        _, feats = example.dihedral_features(trajs)
        reference = Pipeline([("cluster", KMeansDiscretizer(100, random_state=0)),
                              ("msm", MSMEstimator(lagtime=lag, bayesian=True, n_samples=100, random_state=0))])
        ref, ref_model, ref_rare = msm_summary(reference.fit(feats), feats, dt)
        references[name] = dict(ref, mfpt_ns=ref_model.mfpt.tolist(), mfpt_95ci_ns=ref_model.mfpt_interval.tolist(),
                                populations=ref_model.populations.tolist())
        print(f"{name}: {len(trajs)} x {trajs[0].n_frames} frames, {dt:g} ps apart, lag {lag}; (phi, psi) MSM "
              f"ITS {ref['its_ns'][0]:.3f} [{ref['low_ns'][0]:.3f}, {ref['high_ns'][0]:.3f}] and "
              f"{ref['its_ns'][1]:.3f} [{ref['low_ns'][1]:.3f}, {ref['high_ns'][1]:.3f}] ns", flush=True)
        tokens = GeomEmbedder(str(CHECKPOINT), memory=str(HERE / "results" / "token-cache"), progress=False).fit_transform(trajs)
        for seed in args.seeds:
            z, fitted = learned_coordinates(name, seed, tokens, lag, args.cache)
            clusters = {} if args.clusters is None else {"n_clusters": args.clusters}
            pipe = Pipeline([("cluster", KMeansDiscretizer(random_state=seed, **clusters)),
                             ("msm", MSMEstimator(lagtime=lag, bayesian=True, n_samples=100, random_state=seed))])
            ours, model, rare = msm_summary(pipe.fit(z), z, dt)
            row = dict(dataset=name, seed=seed, timestep_ps=dt, lag_frames=lag, vampnet_fit=fitted, **ours,
                       **compare(ours, ref, model, rare, ref_model, ref_rare))
            rows.append(row)
            print(f"  seed {seed}: {ours['n_states']} states; ITS {ours['its_ns'][0]:.3f} "
                  f"[{ours['low_ns'][0]:.3f}, {ours['high_ns'][0]:.3f}], {ours['its_ns'][1]:.3f} "
                  f"[{ours['low_ns'][1]:.3f}, {ours['high_ns'][1]:.3f}] ns: MSM "
                  f"{'pass' if row['msm_passes'] else 'FAIL'}; sets alpha_L {row['alpha_L_precision']:.3f}/"
                  f"{row['alpha_L_recall']:.3f}, MFPT into {row['into_alpha_L_ns']:.2f} (ref "
                  f"[{row['ref_into_95ci'][0]:.2f}, {row['ref_into_95ci'][1]:.2f}]), out "
                  f"{row['out_of_alpha_L_ns']:.3f} (ref [{row['ref_out_95ci'][0]:.3f}, "
                  f"{row['ref_out_95ci'][1]:.3f}]) ns: kinetics {'pass' if row['kinetics_passes'] else 'FAIL'}",
                  flush=True)
    return {"rows": rows, "references": references}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--datasets", default="shipped,shared")
    parser.add_argument("--clusters", type=int, default=None, help="k-means centres (default: the library's)")
    parser.add_argument("--cache", type=Path, default=HERE / "results" / "kinetics-cache")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.datasets = args.datasets.split(",")
    started = time.perf_counter()
    report = run(args)
    report["machine"] = {"cpu": cpu_model(), "logical_cpus": os.cpu_count()}
    report["clusters"] = args.clusters
    report["total_seconds"] = time.perf_counter() - started
    rows = report["rows"]
    print(f"MSM check {sum(r['msm_passes'] for r in rows)}/{len(rows)}, kinetics check "
          f"{sum(r['kinetics_passes'] for r in rows)}/{len(rows)}; CPU {report['machine']['cpu']}")
    suffix = "" if args.clusters is None else f"_k{args.clusters}"
    out = args.out or HERE / "results" / f"kinetics{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"written to {out} in {report['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
