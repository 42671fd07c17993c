"""A training step, ours against geom2vec v1.0's own ``Lobe``, on the same tokens in one process.

The settings of ../shared/anchors/side_by_side.py, pinned: hidden 64, 4 mixer
layers, 8 heads, dropout 0, one training step = forward of the 2B frames of B
time-lagged pairs + VAMP-2 + backward + AdamW (lr 1e-4), same random tokens on
a protein-like chain (``bench_train.make_tokens``), 2 torch threads, the
variants alternating, median of R timed steps after one warm-up, each
configuration in a fresh interpreter.

Variants:

* ``ours``: ``VAMPNetEstimator``'s network after ``TokenMerger(window=w)`` with
  its default graph convolution (it runs even at w=1);
* ``ours_none``: the same with ``operator="none"`` (no graph convolution), the
  like-for-like case for geom2vec's ``merger=False`` at w=1;
* ``ours_compiled``: ``ours`` through ``torch.compile`` (what ``compile=True``
  does; compilation happens in the warm-up step and is not timed);
* ``g2v_std``: geom2vec's ``Lobe(equi_rep=False, merger=w > 1, merger_window=w)``,
  imported from ../shared/anchors (geom2vec v1.0, MIT; torch-scatter and
  torch-cluster replaced by that folder's pure-torch shims). With merging its
  residue graph comes from the shims' brute-force ``radius_graph``: the time
  spent there is measured separately (``g2v_radius_s``), and the ratio is given
  with and without it.

Ours steps with the estimator's own optimizer (AdamW, fused where torch has
it), geom2vec's with ``torch.optim.AdamW`` as geom2vec does. Each variant's
step is also counted in floating-point operations (``count_gflop``: matrix
products, attention, sparse products by their nonzeros), and set against the machine's matrix-multiply rate
measured in the same process: a step cannot take less than its FLOPs at that
rate, which bounds any ratio between two steps that do the same work.

Usage::

    python benchmarks/bench_side_by_side.py            # 3/214/2645 residues, w = 1 and 8
    python benchmarks/bench_side_by_side.py --configs 3:1:256,214:8:16 --repeats 5

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
DEFAULT_CONFIGS = "3:1:256,214:1:16,214:8:16,2645:1:2,2645:8:4"


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


def worker(n: int, w: int, b: int, repeats: int, compile_ours: bool = True) -> dict:
    import numpy as np
    import torch

    sys.path[:0] = [str(ANCHORS / "shims"), str(ANCHORS)]
    import sitecustomize  # noqa: F401 - points torch_geometric's radius_graph at the shim
    from geom2vec.models.downstream import lobe as g2v_lobe

    from _common import matmul_rates
    from bench_train import make_tokens
    from g2v_sklearn import TokenMerger, VAMPNetEstimator
    from g2v_sklearn.learners._learner import TimeSeries
    from g2v_sklearn._validation import lagged_pairs
    from g2v_sklearn.learners._vamp import vamp_loss

    torch.set_num_threads(2)
    tokens = make_tokens(n, 2 * b, 0)
    est = VAMPNetEstimator(lagtime=b, batch_size=b, d_model=64, n_heads=8, n_layers=4, progress=False)
    pairs = lagged_pairs([2 * b], b, "bench")
    nets, series = {}, {}
    for name, operator in (("ours", "graphconv"), ("ours_none", "none")):
        if name == "ours_none" and w != 1:
            continue
        merger = TokenMerger(window=w, operator=operator).fit([tokens])
        series[name] = TimeSeries("tokens", merger.transform([tokens]), spec=merger.spec_)
        torch.manual_seed(0)
        nets[name] = est._build_network(series[name], 2)
    if compile_ours:
        series["ours_compiled"] = series["ours"]
        torch.manual_seed(0)
        nets["ours_compiled"] = est._build_network(series["ours"], 2)
    torch.manual_seed(0)
    nets["g2v_std"] = g2v_lobe.Lobe(output_channels=2, input_channels=64, hidden_channels=64, num_tokens=n,
                                     merger=w > 1, merger_window=w, equi_rep=False, num_mixer_layers=4, nhead=8,
                                     dropout=0.0)
    radius = {"s": 0.0}
    original = g2v_lobe.radius_graph

    def timed_radius(*args, **kwargs):
        start = time.perf_counter()
        out = original(*args, **kwargs)
        radius["s"] += time.perf_counter() - start
        return out

    g2v_lobe.radius_graph = timed_radius
    feat, pos = torch.as_tensor(np.asarray(tokens.features)), torch.as_tensor(np.asarray(tokens.positions))
    est.set_params(lr=1e-4)
    optimizers = {k: torch.optim.AdamW(v.parameters(), lr=1e-4) if k == "g2v_std" else est._make_optimizer(v)
                  for k, v in nets.items()}
    forwards = {k: torch.compile(v) if k == "ours_compiled" else v for k, v in nets.items()}

    def step(name):
        net = forwards[name]
        nets[name].train()
        if name == "g2v_std":
            out = net((feat, pos))
            out_0, out_t = out[:b], out[b:]
        else:
            out_0, out_t = est._forward_pairs(net, series[name], pairs, torch.device("cpu"))
        loss = vamp_loss(out_0, out_t, method="VAMP2", epsilon=1e-6, mode="regularize")
        optimizers[name].zero_grad()
        loss.backward()
        optimizers[name].step()

    times = {k: [] for k in nets}
    radius_times = []
    for name in nets:
        step(name)
    for _ in range(repeats):
        for name in nets:
            radius["s"] = 0.0
            start = time.perf_counter()
            step(name)
            times[name].append(time.perf_counter() - start)
            if name == "g2v_std":
                radius_times.append(radius["s"])
    med = {k: float(np.median(v)) for k, v in times.items()}
    gflop = {}
    for name in nets:
        if name == "ours_compiled":
            continue  # the same arithmetic as ours
        gflop[name] = count_gflop(lambda: step(name))
    rate = matmul_rates("cpu", repeats=3)["square_2048_float32"]
    row = {"n_residues": n, "window": w, "batch_pairs": b, "repeats": repeats,
           **{f"{k}_s": v for k, v in med.items()}, "g2v_radius_s": float(np.median(radius_times)),
           **{f"{k}_gflop": v for k, v in gflop.items()}, "matmul_gflop_per_s": rate,
           **{f"{k}_floor_s": v / rate for k, v in gflop.items()}}
    row["g2v_over_ours"] = med["g2v_std"] / med["ours"]
    row["g2v_without_radius_over_ours"] = (med["g2v_std"] - row["g2v_radius_s"]) / med["ours"]
    if "ours_none" in med:
        row["g2v_over_ours_none"] = med["g2v_std"] / med["ours_none"]
    if "ours_compiled" in med:
        row["g2v_over_ours_compiled"] = med["g2v_std"] / med["ours_compiled"]
    # the largest ratio any step doing ours' FLOPs could reach against geom2vec's measured time
    row["g2v_over_ours_floor"] = med["g2v_std"] / row["ours_floor_s"]
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="N:w:B,... (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile variant")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        n, w, b = map(int, args.worker.split(":"))
        print(TAG + json.dumps(worker(n, w, b, args.repeats, not args.no_compile)), flush=True)
        return
    rows = []
    for config in args.configs.split(","):
        done = subprocess.run([sys.executable, __file__, "--worker", config, "--repeats", str(args.repeats)]
                              + (["--no-compile"] if args.no_compile else []),
                              capture_output=True, text=True, cwd=HERE)
        lines = [line for line in done.stdout.splitlines() if line.startswith(TAG)]
        if done.returncode or not lines:
            print(f"{config}: failed\n{done.stderr[-2000:]}", flush=True)
            rows.append({"config": config, "failed": done.stderr[-500:]})
            continue
        row = json.loads(lines[-1][len(TAG):])
        rows.append(row)
        extra = f", ours_none {row['ours_none_s'] * 1e3:.0f} ms ({row['g2v_over_ours_none']:.2f}x)" \
            if "ours_none_s" in row else ""
        print(f"N={row['n_residues']} w={row['window']} B={row['batch_pairs']}: ours {row['ours_s'] * 1e3:.0f} ms, "
              f"geom2vec {row['g2v_std_s'] * 1e3:.0f} ms (of which radius graph {row['g2v_radius_s'] * 1e3:.0f} ms): "
              f"{row['g2v_over_ours']:.2f}x, {row['g2v_without_radius_over_ours']:.2f}x without its radius graph"
              f"{extra}" + (f", compiled {row['ours_compiled_s'] * 1e3:.0f} ms ({row['g2v_over_ours_compiled']:.2f}x)"
                            if "ours_compiled_s" in row else "")
              + f"; FLOPs ours {row['ours_gflop']:.2f} G, geom2vec {row['g2v_std_gflop']:.2f} G, at "
              f"{row['matmul_gflop_per_s']:.0f} GFLOP/s ours cannot take less than {row['ours_floor_s'] * 1e3:.0f} ms "
              f"(ratio at most {row['g2v_over_ours_floor']:.1f}x)", flush=True)
    out = HERE / "results" / "side_by_side.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": {"cpu": cpu_model(), "logical_cpus": os.cpu_count()},
                               "anchor": "geom2vec v1.0 (../shared/anchors, MIT)", "rows": rows}, indent=1) + "\n")
    print(f"CPU {cpu_model()}; written to {out}")


if __name__ == "__main__":
    main()
