"""Where one ADK frame's embedding time goes: the reference path against ours.

What it measures
----------------
One ADK frame (1,656 heavy atoms, cutoff 7.5 Angstrom, at most
``--max-neighbors`` neighbours, float32) through

``reference``
    torch-geometric's ViSNet block fed brute-force edges (bench_embed's
    reference), its parts labelled with module and message-passing hooks:
    neighbour search (``distance``), edge features (RBF expansion, unit
    vectors), neighbour and edge embeddings, then per layer the messages
    (``propagate``: gathers, attention, scatter), the edge update
    (``edge_updater``) and the rest (norms, node projections, output).
``ours``
    :func:`g2v_sklearn.backbones._padded_visnet.padded_forward`: neighbour search
    (``radius_graph`` and the padded table), edge features and embeddings, and
    per layer ``_message_passing``, its per-edge work in blocks of
    ``EDGES_PER_CHUNK`` edges.
``ours, one block``
    The same with every edge at once (``edges_per_chunk=None``, the pass
    before blocks): what the blocks buy.
``ours, compiled`` / ``ours, compiled, bfloat16``
    The same with ``compile=True`` (in float32 / under bfloat16 autocast):
    neighbour search, then the compiled graph, whose fused kernels are no
    aten operators and show as "fused kernels" (wall time less aten time).

Each is run once as a warm-up (and compilation), then profiled once with
``torch.profiler``; the script prints each part's milliseconds (the labels'
``cpu_time_total``) and the self time by kind of operator: matrix products,
gathers/scatters, elementwise, reductions, the rest, fused kernels. The
matrix products' work (``FlopCounterMode``, on the eager path) over their
time gives the rate they run at, next to the machine's
(``_common.matmul_rates``).

Usage::

    python benchmarks/bench_profile.py                 # 32 neighbours
    python benchmarks/bench_profile.py --max-neighbors none

Results go to ``benchmarks/results/profile.json`` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack
from pathlib import Path

import bench_embed  # benchmarks/bench_embed.py: data, reference and its edges
from _common import cpu_model, matmul_rates

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "profile.json"

# aten operator -> kind, for the self-time breakdown; anything else is "other".
KINDS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul"),
    "gather/scatter": ("aten::index", "aten::index_select", "aten::scatter_add_",
                       "aten::index_add_", "aten::index_put_", "aten::_index_put_impl_",
                       "aten::scatter_", "aten::gather"),
    "elementwise": ("aten::mul", "aten::mul_", "aten::add", "aten::add_", "aten::sub",
                    "aten::sub_", "aten::div", "aten::div_", "aten::silu", "aten::exp",
                    "aten::cos", "aten::neg", "aten::pow", "aten::pow_", "aten::clamp",
                    "aten::clamp_min", "aten::relu", "aten::where", "aten::copy_",
                    "aten::fill_", "aten::lt", "aten::eq", "aten::ne", "aten::le",
                    "aten::masked_fill_", "aten::native_layer_norm", "aten::sqrt",
                    "aten::square", "aten::cat", "aten::stack", "aten::zeros_like"),
    "reduction": ("aten::sum", "aten::linalg_vector_norm", "aten::max", "aten::min",
                  "aten::all", "aten::any", "aten::nonzero", "aten::sort", "aten::bincount",
                  "aten::cumsum", "aten::unique_consecutive"),
}


def _label(name: str):
    """Forward pre/post hooks that open and close a ``record_function`` labelled ``name``."""
    from torch.profiler import record_function

    stack = []

    def enter(*_):
        stack.append(record_function(name))
        stack[-1].__enter__()

    def leave(*_):
        stack.pop().__exit__(None, None, None)

    return enter, leave


def label_reference(block, stack: ExitStack) -> None:
    """Label the parts of torch-geometric's ViSNet block."""
    parts = [("neighbour search", block.distance),
             ("neighbour embedding", block.neighbor_embedding),
             ("edge embedding", block.edge_embedding)]
    for name, module in parts:
        enter, leave = _label(name)
        stack.callback(module.register_forward_pre_hook(enter).remove)
        stack.callback(module.register_forward_hook(leave).remove)
    for i, layer in enumerate(block.vis_mp_layers):
        for part, pre, post in (
            ("layer", layer.register_forward_pre_hook, layer.register_forward_hook),
            ("messages", layer.register_propagate_forward_pre_hook,
             layer.register_propagate_forward_hook),
            ("edge update", layer.register_edge_update_forward_pre_hook,
             layer.register_edge_update_forward_hook),
        ):
            if part == "edge update" and layer.last_layer:
                continue
            name = f"layer {i}: {part}"
            enter, leave = _label(name)
            stack.callback(pre(enter).remove)
            stack.callback(post(leave).remove)


def label_ours(module, n_layers: int | None, stack: ExitStack) -> None:
    """Label the parts of ``padded_forward`` by wrapping the functions it calls.

    ``n_layers=None`` (a compiled forward: its layers are inside the compiled
    graph) labels the neighbour search only.
    """
    from torch.profiler import record_function

    calls = {"count": 0}

    def wrap(attribute: str, name):
        original = getattr(module, attribute)

        def labelled(*args, **kwargs):
            label = name() if callable(name) else name
            with record_function(label):
                return original(*args, **kwargs)

        setattr(module, attribute, labelled)
        stack.callback(setattr, module, attribute, original)

    def layer_name():
        calls["count"] += 1
        return f"layer {(calls['count'] - 1) % n_layers}: messages and edge update"

    wrap("radius_graph", "neighbour search")
    wrap("neighbor_table", "neighbour table")
    if n_layers is not None:
        wrap("table_forward", "after the neighbour search")
        wrap("_message_passing", layer_name)


def profile_once(forward) -> dict:
    """Wall ms, labelled parts (ms) and aten self time by kind (ms) of one profiled call.

    In a compiled forward the fused kernels are no aten operators: their time
    is the wall time less the aten self time ("fused kernels").
    """
    import time

    from torch.profiler import ProfilerActivity, profile

    forward()  # warm-up (and compilation)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        forward()
        wall = (time.perf_counter() - start) * 1e3
    averages = prof.key_averages()
    parts = {e.key: e.cpu_time_total / 1e3 for e in averages
             if not e.key.startswith("aten::") and e.key[0].isalpha() and e.count}
    kinds = {kind: 0.0 for kind in (*KINDS, "other")}
    for e in averages:
        if e.key.startswith("aten::"):
            kind = next((k for k, ops in KINDS.items() if e.key in ops), "other")
            kinds[kind] += e.self_cpu_time_total / 1e3
    kinds["fused kernels"] = max(wall - sum(kinds.values()), 0.0)
    return {"wall_ms": wall, "parts_ms": parts, "self_ms_by_kind": kinds}


def matmul_flops(forward) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        forward()
    return counter.get_total_flops()


def run(args) -> dict:
    from contextlib import nullcontext

    import numpy as np
    import torch

    import g2v_sklearn.backbones._padded_visnet as padded
    from g2v_sklearn.backbones._backbone import load_checkpoint

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    traj, heavy = bench_embed.load_adk(1)
    z = torch.tensor([traj.topology.atom(int(i)).element.number for i in heavy])
    pos = torch.from_numpy(np.ascontiguousarray(traj.xyz[0, heavy]) * np.float32(10.0))
    batch = torch.zeros(len(heavy), dtype=torch.long)
    reference = bench_embed.reference_block(args)
    ours, _, _ = load_checkpoint(args.checkpoint, {"max_num_neighbors": args.max_neighbors})
    ours.eval()
    n_layers = len(ours.vis_mp_layers)
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16)

    # name -> (forward, labeller, autocast)
    paths = {
        "reference": (lambda: reference(z, pos, batch),
                      lambda stack: label_reference(reference, stack), nullcontext()),
        "ours": (lambda: padded.padded_forward(ours, z, pos, batch),
                 lambda stack: label_ours(padded, n_layers, stack), nullcontext()),
        "ours, one block": (lambda: padded.padded_forward(ours, z, pos, batch, edges_per_chunk=None),
                            lambda stack: label_ours(padded, n_layers, stack), nullcontext()),
        "ours, compiled": (lambda: padded.padded_forward(ours, z, pos, batch, compile=True),
                           lambda stack: label_ours(padded, None, stack), nullcontext()),
        "ours, compiled, bfloat16": (
            lambda: padded.padded_forward(ours, z, pos, batch, compile=True),
            lambda stack: label_ours(padded, None, stack), bf16),
    }
    flops = {"reference": matmul_flops(paths["reference"][0])}
    with torch.inference_mode():
        flops["ours"] = matmul_flops(paths["ours"][0])  # the compiled paths do the same products
        report = {"machine": {"cpu": cpu_model(), "torch_threads": torch.get_num_threads()},
                  "settings": {"max_neighbors": args.max_neighbors, "n_atoms": len(heavy)},
                  "matmul_gflop_per_s": matmul_rates()}
        for name, (forward, label, autocast) in paths.items():
            with ExitStack() as stack, autocast:
                label(stack)
                result = profile_once(forward)
            gflop = flops[name if name == "reference" else "ours"] / 1e9
            matmul_ms = max(result["self_ms_by_kind"]["matmul"], 1e-9)
            report[name] = {**result, "gflop": gflop, "matmul_gflop_per_s": gflop * 1e3 / matmul_ms}
    return report


PATHS = ("reference", "ours", "ours, one block", "ours, compiled", "ours, compiled, bfloat16")


def format_report(report: dict) -> str:
    lines = [f"CPU: {report['machine']['cpu']}, {report['machine']['torch_threads']} threads; "
             f"ADK {report['settings']['n_atoms']} atoms, at most "
             f"{report['settings']['max_neighbors']} neighbours, one frame",
             "matmul GFLOP/s: " + ", ".join(f"{k} {v:.0f}"
                                            for k, v in report["matmul_gflop_per_s"].items())]
    for name in PATHS:
        r = report[name]
        wall = r["wall_ms"]
        lines += ["", f"{name}: {wall:.0f} ms (profiled), {r['gflop']:.1f} GFLOP of matrix "
                      f"products at {r['matmul_gflop_per_s']:.0f} GFLOP/s",
                  "  part (nested parts repeat their time)      ms      %"]
        for part, ms in r["parts_ms"].items():
            lines.append(f"  {part:<40} {ms:7.1f} {ms / wall:6.1%}")
        lines.append("  self time by kind of operator:")
        for kind, ms in r["self_ms_by_kind"].items():
            lines.append(f"  {kind:<40} {ms:7.1f} {ms / wall:6.1%}")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-neighbors", type=bench_embed._max_neighbors, default=32,
                        help="neighbour cap per atom, or 'none' (default 32)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--checkpoint", type=Path,
                        default=bench_embed.SHARED / "checkpoints" / bench_embed.BACKBONES["visnet"][0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.set_defaults(device="cpu", backbone="visnet")  # bench_embed.reference_block reads them
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    report = run(args)
    print(format_report(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {args.out}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
