"""The main job, timed as a user runs it: ``python examples/alanine_dipeptide.py``, side by side.

What it measures
----------------
Each run is a fresh interpreter running the example into a fresh output
folder (so the embedding of 8,000 frames is included, as on a first run):
the wall clock from the parent (interpreter start and imports included), the
CPU seconds of the run and every process it started (user and system, from
``RUSAGE_CHILDREN``), and the job's own clock (``seconds`` in its
``summary.json``, which starts after the imports). With ``--baseline PATH``
(another checkout, for example ``git worktree add /tmp/base <commit>``) the
two checkouts' examples alternate A B A B for ``--rounds`` rounds, so both
see the same machine. Every run's science is read back from its summary: the
chosen learning rate, the slowest implied timescales against the (phi, psi)
MSM's, alpha_L precision and recall from coordinate 1 and SPIB's states, so
a faster layout can be seen to give the same numbers.

``--seeds 0 1 2`` runs the example at each seed (its ``--seed``; only this
checkout's example needs to know the option when a seed other than 0 is
asked for).

Usage::

    python benchmarks/bench_main_job.py                                # this checkout, 2 rounds
    python benchmarks/bench_main_job.py --baseline /tmp/base --rounds 3
    python benchmarks/bench_main_job.py --seeds 0 1 2 --rounds 1

Needs ``G2V_MIRROR`` (default: ``../shared/checkpoints`` beside the
repository) for the ViSNet checkpoint. Run nothing else meanwhile: the job
uses both cores. Results go to ``benchmarks/results/main_job.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import cpu_model

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def children_cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime, usage.ru_stime


def run_once(checkout: Path, seed: int, quick: bool) -> dict:
    """One run of ``checkout``'s example in a fresh output folder: times and science."""
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(checkout))
    env.setdefault("G2V_MIRROR", str(REPO.parent / "shared" / "checkpoints"))
    env.pop("G2V_EXAMPLE_QUICK", None)
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, str(checkout / "examples" / "alanine_dipeptide.py"), "--out", folder]
        command += ["--seed", str(seed)] if seed else []
        command += ["--quick"] if quick else []
        user, system = children_cpu()
        start = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=checkout)
        wall = time.perf_counter() - start
        if done.returncode:
            raise SystemExit(f"{checkout} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        user_after, system_after = children_cpu()
        summary = json.loads((Path(folder) / "summary.json").read_text())
    timescales = summary["slowest_timescales_ns"]
    return {
        "wall_s": wall, "own_clock_s": summary["seconds"],
        "cpu_user_s": user_after - user, "cpu_system_s": system_after - system,
        "chosen": summary["grid_search"]["chosen"],
        "slowest_its_ns": timescales["learned"], "its_95ci": timescales["learned_95ci"],
        "reference_its_ns": timescales["phi_psi_msm"], "reference_95ci": timescales["phi_psi_msm_95ci"],
        "alpha_L": summary["alpha_L_from_coordinate_1"],
        "spib": {k: summary["spib"][k] for k in ("n_states", "alpha_L_precision", "alpha_L_recall")},
    }


def in_bounds(run: dict) -> bool:
    """The science bounds: slowest timescale in [0.85 x the reference's, the upper end of its
    95 % interval], alpha_L precision and recall at least 0.9."""
    ours, ref = run["slowest_its_ns"][0], run["reference_its_ns"][0]
    upper = run["reference_95ci"][1][0] if run["reference_95ci"] else float("inf")
    return 0.85 * ref <= ours <= upper and min(run["alpha_L"].values()) >= 0.9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another checkout of the package, run alternately")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--quick", action="store_true", help="the example's reduced size (a smoke test)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "main_job.json")
    args = parser.parse_args()
    variants = {"this": REPO} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    runs = {name: [] for name in variants}
    load_before = os.getloadavg()
    for round_ in range(args.rounds):
        for seed in args.seeds:
            for name, checkout in variants.items():
                run = dict(run_once(checkout, seed, args.quick), seed=seed, round=round_)
                runs[name].append(run)
                its, ci = run["slowest_its_ns"][0], run["its_95ci"]
                print(f"{name:>8} seed {seed} round {round_}: wall {run['wall_s']:.1f} s, own clock "
                      f"{run['own_clock_s']:.1f} s, CPU {run['cpu_user_s']:.1f} + {run['cpu_system_s']:.1f} s; "
                      f"lr {run['chosen']}, slowest ITS {its:.3f} ns"
                      + (f" [{ci[0][0]:.3f}, {ci[1][0]:.3f}]" if ci else "")
                      + f", alpha_L {run['alpha_L']['precision']:.3f}/{run['alpha_L']['recall']:.3f}, "
                      f"SPIB {run['spib']['n_states']} states, in bounds: {in_bounds(run)}", flush=True)
    report = {"cpu": cpu_model(), "cores": os.cpu_count(), "load_before": load_before,
              "load_after": os.getloadavg(), "quick": args.quick, "runs": runs}
    print(f"\n{report['cpu']}, {report['cores']} CPUs, load {load_before[0]:.2f} before, "
          f"{report['load_after'][0]:.2f} after")
    for name, rows in runs.items():
        for key in ("wall_s", "own_clock_s", "cpu_user_s"):
            values = [row[key] for row in rows]
            print(f"{name:>8} {key:<12} median {statistics.median(values):6.1f}  "
                  f"[{min(values):.1f}, {max(values):.1f}]")
    if "baseline" in runs:
        ratio = statistics.median(r["wall_s"] for r in runs["this"]) / statistics.median(
            r["wall_s"] for r in runs["baseline"])
        print(f"this / baseline, median wall: {ratio:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
