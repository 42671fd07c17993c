"""How close each hot path comes to this machine's limits.

What it measures
----------------
First the limits, in this process, at ``--threads`` torch threads (default 1;
the thread budget is off, so every path runs at that count too):

* the float32 matrix-product rate (``_common.matmul_rates``: 2048 x 2048
  products) and, where the CPU computes bfloat16 natively (AVX512-BF16 or
  AMX), the bfloat16 rate;
* the memory bandwidth: ``copy_`` of a 256 MiB float32 tensor (read + write
  bytes over the time);
* exponentials per second: ``torch.exp`` over 16 M float32 values in the range
  a softmax sees (the bound of attention whose heads are too thin for its
  products to dominate).

Then each hot path, its work counted on one call and its time measured on
another, and the fraction of the limit that binds it:

* embedding with ``GeomEmbedder(checkpoint)`` at its defaults, per frame:
  alanine dipeptide (10 heavy atoms, 3 residues) and adenylate kinase
  (MDAnalysisTests' PSF/DCD, 1,656 heavy atoms, 214 residues), with each of
  geom2vec's backbones (ViSNet, ET, TensorNet). Work: matrix-product FLOPs
  (``torch.utils.flop_counter``, matrix products only; the elementwise work
  and the gathers are not counted, so the fraction is a lower bound on how
  busy the cores are);
* one VAMPNet training step (forward of 2B frames, VAMP-2, backward, AdamW:
  the estimator's own step through fit's seams, as in
  ``bench_side_by_side.py``) at 3, 214 and 2,645 residues with
  ``TokenMerger(window=1)`` and ``window=8``, on random tokens on a
  protein-like chain, with the side-by-side benchmark's network (hidden 64,
  4 layers, 8 heads). Work: FLOPs counted as ``bench_side_by_side.count_gflop``
  does (dense products, attention by torch's formulas, sparse products by
  their nonzeros) and the attention's exponentials (one per score in the
  forward pass and one per score in the backward pass, which recomputes the
  probabilities). The bound is whichever floor is higher: FLOPs at the
  matmul rate or exponentials at the exp rate;
* SPIB's fit on 3-residue tokens (2,000 frames, lag 10, two epochs a round,
  at most one refinement): its FLOPs over its time, k-means initialisation
  and label refinement included.

Output: a markdown table ``hot path | bound | limit | achieved | fraction``
with the processor named, and ``benchmarks/results/limits.json``.

Usage::

    python benchmarks/bench_limits.py               # one thread, a few minutes
    python benchmarks/bench_limits.py --threads 2   # both cores (on a quiet machine)
    python benchmarks/bench_limits.py --quick       # smoke test: tiny sizes; numbers mean little

Needs ``G2V_MIRROR`` (or ``../shared/checkpoints``) for the backbones, and
MDAnalysisTests for adenylate kinase.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from _common import cpu_model, matmul_rates, timings

HERE = Path(__file__).resolve().parent
CHECKPOINTS = Path(os.environ.get("G2V_SHARED", HERE.parent.parent / "shared")) / "checkpoints"
BACKBONES = {"visnet": "visnet_l6_h64_rbf64_r75.pth", "et": "et_l6_h64_rbf64_r75.pth",
             "tensornet": "tensornet_l3_h64_rbf32_r5.pth"}
#: name -> (ala2 frames, adk frames, training configs N:w:B, step repeats)
SIZES = {
    "default": (1000, 2, "3:1:256,214:1:16,214:8:16,2645:1:3,2645:8:4", 3),
    "quick": (40, 0, "3:1:16,16:8:4", 1),
}


# ----------------------------------------------------------------------------------
# limits
# ----------------------------------------------------------------------------------
def _best_seconds(fn, repeats: int) -> float:
    return min(timings(fn, repeats))


def machine_limits(quick: bool) -> dict:
    import torch

    limits = {f"matmul_{k}": v for k, v in matmul_rates("cpu", repeats=1 if quick else 5).items()}
    n = (16 if quick else 64) * 2**20  # floats: 64 or 256 MiB
    src = torch.rand(n)
    dst = torch.empty_like(src)
    limits["memory_gb_per_s"] = 2 * 4 * n / _best_seconds(lambda: dst.copy_(src), 3 if quick else 5) / 1e9
    del src, dst
    m = 2**22 if quick else 2**24
    scores = torch.rand(m) * -20.0  # what a softmax exponentiates: max-subtracted scores
    out = torch.empty_like(scores)
    limits["exp_per_s"] = m / _best_seconds(lambda: torch.exp(scores, out=out), 3 if quick else 5)
    return limits


# ----------------------------------------------------------------------------------
# embedding
# ----------------------------------------------------------------------------------
def _matmul_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def embedding_rows(system: str, frames: int) -> list[dict]:
    from g2v_sklearn import GeomEmbedder

    if system == "ala2":
        from g2v_sklearn.datasets import load_alanine_dipeptide

        traj = load_alanine_dipeptide().trajectories[0][:frames]
        label = "alanine dipeptide (10 atoms)"
    else:
        import mdtraj as md
        from MDAnalysisTests.datafiles import DCD, PSF

        traj = md.load(DCD, top=PSF)[:frames]
        label = "adenylate kinase (1,656 atoms)"
    rows = []
    for backbone, file in BACKBONES.items():
        embedder = GeomEmbedder(str(CHECKPOINTS / file), progress=False).fit([traj])
        counted = traj[:min(frames, 20)]
        flops = _matmul_flops(lambda: embedder.transform([counted])) / counted.n_frames
        embedder.transform([traj[:1]])  # warm-up
        start = time.perf_counter()
        embedder.transform([traj])
        seconds = time.perf_counter() - start
        rows.append({"path": f"embed {label}, {backbone}", "kind": "flops",
                     "flops_per_unit": flops, "units": traj.n_frames, "seconds": seconds,
                     "unit": "frame"})
    return rows


# ----------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------
def count_exponentials(fn) -> int:
    """Exponentials of torch's fused CPU attention (forward and backward) while ``fn()`` runs."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    attention = {aten._scaled_dot_product_flash_attention_for_cpu.default,
                 aten._scaled_dot_product_flash_attention_for_cpu_backward.default}

    class Counter(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in attention:
                query, key = (args[1], args[2]) if "backward" in str(func) else (args[0], args[1])
                b, h, lq, _ = query.shape
                Counter.total += b * h * lq * key.shape[2]
            return func(*args, **(kwargs or {}))

    with Counter():
        fn()
    return Counter.total


def training_rows(configs: str, repeats: int) -> list[dict]:
    import torch

    from bench_side_by_side import count_gflop
    from bench_train import ANCHOR_NETWORK, estimator_context, make_tokens

    rows = []
    for config in configs.split(","):
        n, w, b = map(int, config.split(":"))
        tokens = make_tokens(n, 2 * b, 0)
        est, trainer, ctx = estimator_context(tokens, w, b, dropout=0.0, lr=1e-4, **ANCHOR_NETWORK)

        def step():
            trainer.step(ctx, ctx.train)

        step()  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        flops = count_gflop(step) * 1e9
        exps = count_exponentials(step)
        rows.append({"path": f"VAMPNet step, {n:,} residues, w={w}, B={b}", "kind": "step",
                     "flops_per_unit": flops, "exp_per_unit": exps, "units": 1,
                     "seconds": statistics.median(times), "unit": "step"})
        del est, trainer, ctx
    return rows


def spib_row(quick: bool) -> dict:
    from bench_side_by_side import count_gflop
    from bench_train import make_tokens

    from g2v_sklearn import SPIBEstimator, TokenMerger

    frames = 400 if quick else 2000
    tokens = TokenMerger(window=1).fit_transform([make_tokens(3, frames, 1)])

    def fit():
        SPIBEstimator(lagtime=10, max_epochs=2, refinements=1, progress=False,
                      random_state=0).fit(tokens)

    fit()  # warm-up
    start = time.perf_counter()
    fit()
    seconds = time.perf_counter() - start
    flops = count_gflop(fit) * 1e9
    return {"path": f"SPIB fit, 3 residues, {frames:,} frames, 2 epochs a round", "kind": "flops",
            "flops_per_unit": flops, "units": 1, "seconds": seconds, "unit": "fit"}


# ----------------------------------------------------------------------------------
# table
# ----------------------------------------------------------------------------------
def add_fractions(rows: list[dict], limits: dict) -> None:
    rate = limits["matmul_square_2048_float32"] * 1e9
    for r in rows:
        flop_rate = r["flops_per_unit"] * r["units"] / r["seconds"]
        floors = {"fp32 matmul": r["flops_per_unit"] * r["units"] / rate}
        if r.get("exp_per_unit"):
            floors["exp throughput"] = r["exp_per_unit"] * r["units"] / limits["exp_per_s"]
        bound = max(floors, key=floors.get)
        r["bound"] = bound
        r["floor_seconds"] = floors[bound]
        r["fraction"] = floors[bound] / r["seconds"]
        if bound == "fp32 matmul":
            r["limit"] = f"{rate / 1e9:.0f} GFLOP/s"
            r["achieved"] = (f"{flop_rate / 1e9:.1f} GFLOP/s ({r['units'] / r['seconds']:,.1f} "
                             f"{r['unit']}s/s, {r['flops_per_unit'] / 1e6:,.1f} MFLOP a {r['unit']})")
        else:
            exp_rate = r["exp_per_unit"] * r["units"] / r["seconds"]
            r["limit"] = f"{limits['exp_per_s'] / 1e9:.2f} G exp/s"
            r["achieved"] = (f"{exp_rate / 1e9:.2f} G exp/s ({r['seconds'] * 1e3:,.0f} ms a step, "
                             f"{r['exp_per_unit'] / 1e6:,.0f} M exp; {flop_rate / 1e9:.1f} GFLOP/s)")


def format_table(rows: list[dict], limits: dict, machine: dict) -> str:
    lines = [f"Processor: {machine['cpu']} ({machine['logical_cpus']} logical CPUs, torch "
             f"{machine['torch']}, {machine['torch_threads']} torch threads; load average "
             f"{machine['load_before'][0]:.2f} before, {machine['load_after'][0]:.2f} after)",
             "Limits: " + ", ".join(
                 [f"fp32 matmul {limits['matmul_square_2048_float32']:.0f} GFLOP/s"]
                 + ([f"bf16 matmul {limits['matmul_square_2048_bfloat16']:.0f} GFLOP/s"]
                    if "matmul_square_2048_bfloat16" in limits else [])
                 + [f"memory {limits['memory_gb_per_s']:.1f} GB/s",
                    f"exp {limits['exp_per_s'] / 1e9:.2f} G/s"]),
             "",
             "| hot path | bound | limit | achieved | fraction |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['path']} | {r['bound']} | {r['limit']} | {r['achieved']} | "
                     f"{r['fraction']:.1%} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for the limits and every path (default 1: on a shared "
                             "machine one core's limit is the one that holds still)")
    parser.add_argument("--parts", default="embed,train,spib",
                        help="comma-separated subset of embed, train, spib (default all)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "limits.json")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    os.environ["G2V_THREAD_BUDGET"] = "0"  # the limits and every path at the same threads
    sys.path.insert(0, str(HERE))
    ala2_frames, adk_frames, configs, repeats = SIZES["quick" if args.quick else "default"]
    parts = set(args.parts.split(","))
    load_before = os.getloadavg()
    limits = machine_limits(args.quick)
    rows = []
    if "embed" in parts:
        rows += embedding_rows("ala2", ala2_frames)
        if adk_frames:
            rows += embedding_rows("adk", adk_frames)
    if "train" in parts:
        rows += training_rows(configs, repeats)
    if "spib" in parts:
        rows.append(spib_row(args.quick))
    add_fractions(rows, limits)
    machine = {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "torch": torch.__version__,
               "torch_threads": torch.get_num_threads(), "load_before": load_before,
               "load_after": os.getloadavg()}
    table = format_table(rows, limits, machine)
    print(table)
    report = {"machine": machine, "limits": limits, "rows": rows, "table": table,
              "quick": args.quick}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"written to {args.out}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
