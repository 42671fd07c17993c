"""The two token mixers, and geom2vec v1.0's equivariant ``Lobe``, on the same tokens.

Part 1, a training step (time and peak memory). The settings of
``bench_side_by_side.py``: hidden 64, 4 mixer layers, 8 heads, dropout 0; one
step = forward of the 2B frames of B time-lagged pairs + VAMP-2 + backward +
AdamW, on the random protein-like tokens of ``bench_train.make_tokens``, 2
torch threads. Variants:

* ``invariant``: ``VAMPNetEstimator(mixer="invariant")``'s network after
  ``TokenMerger(window=w)`` (default graph convolution);
* ``equivariant``: the same with ``mixer="equivariant"``;
* ``g2v_equi``: geom2vec's ``Lobe(equi_rep=True, merger=w > 1,
  merger_window=w)``, its default equivariant attention mixer, imported from
  ../shared/anchors (MIT; torch-scatter/torch-cluster replaced by that
  folder's pure-torch shims).

Times: one fresh interpreter per configuration, the variants alternating,
median of R timed steps after one warm-up; ratios are within that process.
Peak memory: every variant of every configuration in its own fresh
interpreter (one warm-up step and one step), the increase of ``ru_maxrss``
over the resident size just before the warm-up step. A worker that does not
finish within ``--timeout`` seconds is stopped and its row says so; its
address space is capped at ``--mem-limit-gb`` (default 20), so running out of
memory is a clean error.

Part 2, held-out VAMP-2 on alanine dipeptide (the shipped data, every 4th
frame, embedded with the ViSNet checkpoint of ../shared/checkpoints): both
mixers, no merger (3 residues), lag 5 frames, 2 components, trained on three
trajectories and scored on the fourth, for each seed.

Usage::

    python benchmarks/bench_mixers.py                      # both parts
    python benchmarks/bench_mixers.py --configs 214:1:16 --no-vamp

Writes benchmarks/results/mixers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from _common import cpu_model

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("G2V_SHARED", HERE.parent.parent / "shared"))
ANCHORS = SHARED / "anchors"
TAG = "MIXERS "
DEFAULT_CONFIGS = "214:1:16,214:8:16,2645:1:3,2645:8:4"  # B > 2: more pairs than the 2 outputs
VARIANTS = ("invariant", "equivariant", "g2v_equi")


def build(n: int, w: int, b: int, variants):
    import torch

    sys.path[:0] = [str(ANCHORS / "shims"), str(ANCHORS)]
    import sitecustomize  # noqa: F401 - points torch_geometric's radius_graph at the shim
    from geom2vec.models.downstream import lobe as g2v_lobe

    from bench_train import ANCHOR_NETWORK, estimator_context, geom2vec_step, make_tokens

    torch.set_num_threads(2)
    tokens = make_tokens(n, 2 * b, 0)
    steps = {}
    for name in variants:
        torch.manual_seed(0)
        if name == "g2v_equi":
            lobe = g2v_lobe.Lobe(output_channels=2, input_channels=64, hidden_channels=64, num_tokens=n,
                                 merger=w > 1, merger_window=w, equi_rep=True, num_mixer_layers=4, nhead=8,
                                 dropout=0.0)
            step = geom2vec_step(lobe, tokens, b)
        else:  # ours: the estimator's own training step (fit's seams)
            est, trainer, ctx = estimator_context(tokens, w, b, mixer=name, lr=1e-4, **ANCHOR_NETWORK)

            def step(trainer=trainer, ctx=ctx):
                trainer.step(ctx, ctx.train)

        steps[name] = step
    return steps


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def time_worker(n, w, b, repeats, variants) -> dict:
    import numpy as np

    steps = build(n, w, b, variants)
    for step in steps.values():
        step()
    times = {k: [] for k in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {f"{k}_s": float(np.median(v)) for k, v in times.items()}


def memory_worker(n, w, b, variant) -> dict:
    import gc

    steps = build(n, w, b, [variant])
    gc.collect()
    before = rss_mib()
    steps[variant]()
    steps[variant]()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {f"{variant}_peak_mib": peak - before}


def spawn(kind: str, args_list, timeout: float, mem_limit_gb: float) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, *map(str, args_list)]
    env = dict(os.environ, OMP_NUM_THREADS="2")

    def limit():
        cap = int(mem_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=HERE,
                              preexec_fn=limit)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish in {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(TAG):
            return json.loads(line[len(TAG):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": ("out of memory: " if "memory" in tail.lower() else "") + tail[:200]}


def vamp_part(seeds) -> list[dict]:
    import warnings

    import numpy as np

    from g2v_sklearn import GeomEmbedder, VAMPNetEstimator
    from g2v_sklearn.datasets import load_alanine_dipeptide

    checkpoint = SHARED / "checkpoints" / "visnet_l6_h64_rbf64_r75.pth"
    data = load_alanine_dipeptide(stride=4)
    tokens = GeomEmbedder(str(checkpoint), progress=False).fit_transform(data.trajectories)
    rows = []
    for seed in seeds:
        row = {"seed": seed}
        for mixer in ("invariant", "equivariant"):
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                est = VAMPNetEstimator(lagtime=5, n_components=2, mixer=mixer, progress=False,
                                       random_state=seed).fit(tokens[:3])
            row[f"{mixer}_vamp2"] = float(est.score(tokens[3:]))
            row[f"{mixer}_fit_s"] = time.perf_counter() - start
        rows.append(row)
        print(row, flush=True)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="N:w:B,... (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per worker (default 600)")
    parser.add_argument("--mem-limit-gb", type=float, default=20.0)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--no-vamp", action="store_true", help="leave out part 2")
    parser.add_argument("--no-steps", action="store_true", help="leave out part 1")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == "time":
        n, w, b, repeats, *variants = args.rest
        print(TAG + json.dumps(time_worker(int(n), int(w), int(b), int(repeats), variants)), flush=True)
        return
    if args.worker == "memory":
        n, w, b, variant = args.rest
        print(TAG + json.dumps(memory_worker(int(n), int(w), int(b), variant)), flush=True)
        return
    results = {"machine": cpu_model(), "threads": 2, "steps": [], "vamp2": []}
    if not args.no_steps:
        for config in args.configs.split(","):
            n, w, b = (int(x) for x in config.split(":"))
            row = {"n_residues": n, "window": w, "batch_pairs": b}
            timed = spawn("time", [n, w, b, args.repeats, *VARIANTS], args.timeout, args.mem_limit_gb)
            if "error" in timed:  # the reference alone may be what does not fit or finish
                row["error_with_g2v_equi"] = timed["error"]
                timed = spawn("time", [n, w, b, args.repeats, "invariant", "equivariant"], args.timeout,
                              args.mem_limit_gb)
            row.update(timed)
            for variant in VARIANTS:
                mem = spawn("memory", [n, w, b, variant], args.timeout, args.mem_limit_gb)
                row[f"{variant}_peak_mib"] = mem.get(f"{variant}_peak_mib", mem.get("error"))
            ours = isinstance(row.get("equivariant_s"), float) and isinstance(row.get("invariant_s"), float)
            if ours and isinstance(row.get("g2v_equi_s"), float):
                row["g2v_equi_over_equivariant"] = row["g2v_equi_s"] / row["equivariant_s"]
            if ours:
                row["equivariant_over_invariant"] = row["equivariant_s"] / row["invariant_s"]
            results["steps"].append(row)
            print(row, flush=True)
    if not args.no_vamp:
        results["vamp2"] = vamp_part([int(s) for s in args.seeds.split(",")])
    out = HERE / "results" / "mixers.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print("wrote", out)


if __name__ == "__main__":
    main()
