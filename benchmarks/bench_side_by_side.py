"""A training step, ours against geom2vec v1.0's own ``Lobe``, on the same tokens in one process.

The settings of ../shared/anchors/side_by_side.py, pinned: hidden 64, 4 mixer
layers, 8 heads, dropout 0, one training step = forward of the 2B frames of B
time-lagged pairs + VAMP-2 + backward + AdamW (lr 1e-4), same random tokens on
a protein-like chain (``bench_train.make_tokens``), 2 torch threads, the
variants alternating, median of R timed steps after one warm-up, each
configuration in a fresh interpreter.

Variants (ours: the estimator's own training step, through fit's seams:
``est.training_session(X)`` then ``trainer.step(ctx, pairs)``, so forward,
VAMP-2, backward, gradient clipping, the fused AdamW step and the schedule are
exactly what ``fit`` runs):

* ``ours``: ``VAMPNetEstimator``'s network after ``TokenMerger(window=w)`` with
  its default graph convolution (it runs even at w=1);
* ``ours_none``: the same with ``operator="none"`` (no graph convolution), the
  like-for-like case for geom2vec's ``merger=False`` at w=1;
* ``ours_compiled``: ``compile=True`` (compilation happens in the warm-up step
  and is not timed);
* ``ours_bf16``: ``precision="bfloat16"``, only on CPUs that compute bfloat16
  natively (AVX512-BF16 or AMX);
* ``ours_checkpointed``: a memory budget of half what the batch's activations
  take, so that the network recomputes them in the backward pass: what
  checkpointing only above the budget saves against checkpointing always;
* ``g2v_std``: geom2vec's ``Lobe(equi_rep=False, merger=w > 1, merger_window=w)``,
  imported from ../shared/anchors (geom2vec v1.0, MIT; torch-scatter and
  torch-cluster replaced by that folder's pure-torch shims), stepped as its
  own code steps it (forward, VAMP-2, backward, ``torch.optim.AdamW``). With
  merging its residue graph comes from the shims' brute-force
  ``radius_graph``: the time spent there is measured separately
  (``g2v_radius_s``), and the ratio is given with and without it.

Each step is also counted in floating-point operations (``count_gflop``:
matrix products, attention, sparse products by their nonzeros), and set
against the machine's matrix-multiply rate measured in the same process: a
step cannot take less than its FLOPs at that rate, which bounds any ratio
between two steps that do the same work.

Usage::

    python benchmarks/bench_side_by_side.py            # 3/214/2645 residues, w = 1 and 8
    python benchmarks/bench_side_by_side.py --configs 3:1:256,214:8:16 --repeats 5 --variants ours_none

Writes benchmarks/results/side_by_side.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import cpu_model

HERE = Path(__file__).resolve().parent
ANCHORS = Path(os.environ.get("G2V_SHARED", HERE.parent.parent / "shared")) / "anchors"
TAG = "SIDE_BY_SIDE "
DEFAULT_CONFIGS = "3:1:256,214:1:16,214:8:16,2645:1:3,2645:8:4"  # B > 2: more pairs than components


def count_gflop(fn) -> float:
    """GFLOPs of ``fn()``: matrix products and attention by torch's formulas, sparse products by nonzeros.

    torch's ``FlopCounterMode`` counts the backward of a sparse-dense product
    as a dense product of the full adjacency (for 2,645 residues x 4 frames,
    ~100x its real work) and does not count the fused CPU attention kernels;
    this counter uses torch's formulas for the dense products, the CPU
    attention kernels' shapes for those, and ``2 * nnz * columns`` for any
    product with a sparse operand.
    """
    import torch
    from torch.utils import flop_counter
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    registry = dict(flop_counter.flop_registry)

    @flop_counter.shape_wrapper
    def attention(query, key, value, *args, out_shape=None, **kwargs):
        return flop_counter.sdpa_flop_count(query, key, value)

    @flop_counter.shape_wrapper
    def attention_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs):
        return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)

    registry[aten._scaled_dot_product_flash_attention_for_cpu] = attention
    registry[aten._scaled_dot_product_flash_attention_for_cpu_backward] = attention_backward

    class Counter(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            sparse = [t for t in tensors if t.layout != torch.strided]
            if sparse:
                dense = [t for t in tensors if t.layout == torch.strided and t.dim() == 2]
                if dense and func._overloadpacket in (aten.mm, aten.addmm, aten._sparse_addmm):
                    Counter.total += 2 * sparse[0]._nnz() * dense[-1].shape[-1]
            elif func._overloadpacket in registry:
                Counter.total += registry[func._overloadpacket](*args, **kwargs, out_val=out)
            return out

    with Counter():
        fn()
    return Counter.total / 1e9


OURS = {  # variant -> (TokenMerger's operator, VAMPNetEstimator parameters beyond the pinned ones)
    "ours": ("graphconv", {}),
    "ours_none": ("none", {}),  # w = 1 only: geom2vec's merger=False runs no graph convolution either
    "ours_compiled": ("graphconv", {"compile": True}),
    "ours_bf16": ("graphconv", {"precision": "bfloat16"}),  # where the CPU computes bfloat16 natively
    # a memory budget of half what the batch's activations take: the network recomputes them in
    # the backward pass (what every step did before checkpointing became conditional)
    "ours_checkpointed": ("graphconv", {"memory_budget": "half"}),
}


def worker(n: int, w: int, b: int, repeats: int, variants: list[str]) -> dict:
    import numpy as np
    import torch

    sys.path[:0] = [str(ANCHORS / "shims"), str(ANCHORS)]
    import sitecustomize  # noqa: F401 - points torch_geometric's radius_graph at the shim
    from geom2vec.models.downstream import lobe as g2v_lobe

    from _common import matmul_rates
    from bench_train import ANCHOR_NETWORK, estimator_context, geom2vec_step, make_tokens
    from g2v_sklearn._utils import supports_bfloat16

    torch.set_num_threads(2)
    tokens = make_tokens(n, 2 * b, 0)
    if w != 1:
        variants = [v for v in variants if v != "ours_none"]
    if not supports_bfloat16(torch.device("cpu")):
        variants = [v for v in variants if v != "ours_bf16"]  # emulated bfloat16 is slower than float32
    # ours: the estimator's own training step (fit's seams), on B pairs of the 2B frames
    plans, steps = {}, {}
    for name in ["ours"] + [v for v in variants if v != "ours"]:
        operator, extra = OURS[name]
        if extra.get("memory_budget") == "half":
            extra = {"memory_budget": 0.5 * plans["ours"]["batch_activation_bytes"]}
        est, trainer, ctx = estimator_context(tokens, w, b, operator=operator, dropout=0.0, lr=1e-4, **ANCHOR_NETWORK,
                                     **extra)
        plans[name] = est.memory_plan_
        steps[name] = (lambda trainer, ctx: lambda: trainer.step(ctx, ctx.train))(trainer, ctx)
    # geom2vec's Lobe, stepped as its own training code steps it
    torch.manual_seed(0)
    g2v = g2v_lobe.Lobe(output_channels=2, input_channels=64, hidden_channels=64, num_tokens=n, merger=w > 1,
                        merger_window=w, equi_rep=False, num_mixer_layers=4, nhead=8, dropout=0.0)
    radius = {"s": 0.0}
    original = g2v_lobe.radius_graph

    def timed_radius(*args, **kwargs):
        start = time.perf_counter()
        out = original(*args, **kwargs)
        radius["s"] += time.perf_counter() - start
        return out

    g2v_lobe.radius_graph = timed_radius
    steps["g2v_std"] = geom2vec_step(g2v, tokens, b)
    times = {k: [] for k in steps}
    radius_times = []
    for name, step in steps.items():
        step()  # warm-up (and compilation), not timed
    for _ in range(repeats):
        for name, step in steps.items():
            radius["s"] = 0.0
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
            if name == "g2v_std":
                radius_times.append(radius["s"])
    med = {k: float(np.median(v)) for k, v in times.items()}
    gflop = {name: count_gflop(steps[name]) for name in ("ours", "ours_none", "g2v_std") if name in steps}
    rate = matmul_rates("cpu", repeats=3)["square_2048_float32"]
    row = {"n_residues": n, "window": w, "batch_pairs": b, "repeats": repeats,
           **{f"{k}_s": v for k, v in med.items()}, "g2v_radius_s": float(np.median(radius_times)),
           **{f"{k}_gflop": v for k, v in gflop.items()}, "matmul_gflop_per_s": rate,
           **{f"{k}_floor_s": v / rate for k, v in gflop.items()},
           "memory_plans": plans}
    row["g2v_over_ours"] = med["g2v_std"] / med["ours"]
    row["g2v_without_radius_over_ours"] = (med["g2v_std"] - row["g2v_radius_s"]) / med["ours"]
    for name in med:
        if name.startswith("ours_"):
            row[f"g2v_over_{name}"] = med["g2v_std"] / med[name]
            row[f"{name}_over_ours"] = med[name] / med["ours"]
    # the largest ratio any step doing ours' FLOPs could reach against geom2vec's measured time
    row["g2v_over_ours_floor"] = med["g2v_std"] / row["ours_floor_s"]
    return row


def _describe(row: dict) -> str:
    ratios = "; ".join(f"{name.removeprefix('ours_')} {row[name + '_s'] * 1e3:.0f} ms "
                       f"({row['g2v_over_' + name]:.2f}x)" for name in OURS if name != "ours" and name + "_s" in row)
    return (f"N={row['n_residues']} w={row['window']} B={row['batch_pairs']}: ours {row['ours_s'] * 1e3:.0f} ms, "
            f"geom2vec {row['g2v_std_s'] * 1e3:.0f} ms (of which radius graph {row['g2v_radius_s'] * 1e3:.0f} ms): "
            f"{row['g2v_over_ours']:.2f}x, {row['g2v_without_radius_over_ours']:.2f}x without its radius graph; "
            f"{ratios}; FLOPs ours {row['ours_gflop']:.2f} G, geom2vec {row['g2v_std_gflop']:.2f} G, at "
            f"{row['matmul_gflop_per_s']:.0f} GFLOP/s ours cannot take less than {row['ours_floor_s'] * 1e3:.0f} ms "
            f"(ratio at most {row['g2v_over_ours_floor']:.1f}x)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="N:w:B,... (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default=",".join(OURS),
                        help="our variants besides 'ours' (default %(default)s; each is skipped where it cannot run)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(OURS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {sorted(OURS)}")
    if args.worker:
        n, w, b = map(int, args.worker.split(":"))
        print(TAG + json.dumps(worker(n, w, b, args.repeats, variants)), flush=True)
        return
    rows = []
    for config in args.configs.split(","):
        done = subprocess.run([sys.executable, __file__, "--worker", config, "--repeats", str(args.repeats),
                               "--variants", ",".join(variants)], capture_output=True, text=True, cwd=HERE)
        lines = [line for line in done.stdout.splitlines() if line.startswith(TAG)]
        if done.returncode or not lines:
            print(f"{config}: failed\n{done.stderr[-2000:]}", flush=True)
            rows.append({"config": config, "failed": done.stderr[-500:]})
            continue
        row = json.loads(lines[-1][len(TAG):])
        rows.append(row)
        print(_describe(row), flush=True)
    out = HERE / "results" / "side_by_side.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": {"cpu": cpu_model(), "logical_cpus": os.cpu_count()},
                               "anchor": "geom2vec v1.0 (../shared/anchors, MIT)", "rows": rows}, indent=1) + "\n")
    print(f"CPU {cpu_model()}; written to {out}")


if __name__ == "__main__":
    main()
