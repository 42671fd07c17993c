"""Every benchmark of issue 6 in one run, at a size that takes minutes on a CPU.

What it runs
------------
Each benchmark is its own script, run here as a subprocess with small
settings (each keeps its own fresh-process measurements):

``profile``
    ``bench_profile.py``: where one ADK frame's time goes, the reference
    against ours, and the machine's matrix-multiply rate.
``embed``
    ``bench_embed.py --frames F``: ADK frames/s, peak memory, error against
    the reference and achieved fraction of the matmul rate, for the
    reference, torch-geometric's block with our neighbour search, and ours in
    float32 and bfloat16, eager and compiled; once with the workers' fixed
    mmap threshold (exact peak memory) and once with glibc's default malloc
    (``--default-malloc``: the speed a user sees). With CUDA present, again on
    the GPU (``--device cuda``, peak GPU memory).
``train``
    ``bench_train.py --sizes 128,214 --windows 1,8``: VAMPNetEstimator
    steps/s and peak memory against the merge window; with CUDA also float32
    and bfloat16 on the GPU, where a bfloat16 step is run with only the
    FlashAttention SDPA backend allowed (it raises if attention cannot use it).
``quality``
    ``bench_quality.py --seeds 0``: held-out VAMP-2 and slowest implied
    timescale on alanine dipeptide of VAMPNetEstimator, deeptime TICA/VAMP and
    deeptime's VAMPNet.

It then prints one summary (markdown tables) and writes it, with the full
results of every part, to ``benchmarks/results/run_all.md`` and
``run_all.json``; each part's own output goes to ``results/<part>.log`` and
its JSON to ``results/<part>.json`` (the folder is git-ignored). A part that
fails is reported as failed, with its log, and the others still run.

Usage::

    python benchmarks/run_all.py                       # about 10 minutes on 2 cores
    python benchmarks/run_all.py --parts embed,profile --frames 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from _common import cpu_model

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PARTS = ("profile", "embed", "train", "quality")


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def commands(args) -> dict[str, list[list[str]]]:
    """Part -> the command lines it runs (each writes ``--out``)."""
    embed = ["bench_embed.py", "--frames", str(args.frames)]
    runs = {
        "profile": [["bench_profile.py", "--out", str(RESULTS / "profile.json")]],
        "embed": [embed + ["--out", str(RESULTS / "embed.json")],
                  embed + ["--default-malloc",
                           "--out", str(RESULTS / "embed_default_malloc.json")]],
        "train": [["bench_train.py", "--sizes", "128,214", "--windows", "1,8", "--steps", "2",
                   "--out", str(RESULTS / "train.json")]],
        "quality": [["bench_quality.py", "--seeds", "0", "--out", str(RESULTS / "quality.json")]],
    }
    if args.cuda:
        runs["embed"].append(embed + ["--device", "cuda",
                                      "--out", str(RESULTS / "embed_cuda.json")])
    return {part: runs[part] for part in args.parts}


def run_part(part: str, lines: list[list[str]]) -> dict:
    """Run a part's commands, logging to ``results/<part>.log``; returns its status."""
    log = RESULTS / f"{part}.log"
    started = time.perf_counter()
    with log.open("w") as handle:
        for line in lines:
            handle.write("$ python " + " ".join(line) + "\n")
            handle.flush()
            proc = subprocess.run([sys.executable, *line], cwd=HERE, stdout=handle,
                                  stderr=subprocess.STDOUT, text=True)
            if proc.returncode != 0:
                return {"ok": False, "seconds": time.perf_counter() - started, "log": str(log),
                        "failed": " ".join(line)}
    return {"ok": True, "seconds": time.perf_counter() - started, "log": str(log)}


# ----------------------------------------------------------------------------------
# summary
# ----------------------------------------------------------------------------------
def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def embed_section(report: dict) -> str:
    s = report["settings"]
    device = report["results"][0].get("device", "cpu")
    rates = report["matmul_gflop_per_s"]
    rows = []
    for r in report["results"]:
        err = r.get("error_vs_reference", {})
        memory = (f"{r['peak_gpu_mib']:.0f} (GPU)" if r.get("peak_gpu_mib") is not None
                  else f"{r['peak_rss_mib']:.0f}")
        rows.append([
            r["variant"], f"{r['frames_per_s']:.3f}", f"{r['speedup_vs_reference']:.2f}x",
            memory, f"{r['peak_ratio_vs_reference']:.2f}",
            f"{err.get('all', 0):.1e}", f"{err.get('worst_token', 0):.1e}",
            f"{r['gflop_per_frame']:.1f}", f"{r['gflop_per_s']:.1f}",
            f"{r['fraction_of_matmul_peak']:.1%}", f"{r['warmup_seconds']:.0f}",
        ])
    malloc = ("glibc's default malloc" if s.get("default_malloc")
              else "fixed mmap threshold: exact peak memory, slower large allocations")
    return "\n".join([
        f"### Embedding, {device} (ADK: {s['frames']} frames, 1,656 heavy atoms, at most "
        f"{s['max_neighbors']} neighbours; {malloc})",
        "",
        "matmul rate, GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in rates.items()),
        "",
        table(["variant", "frames/s", "vs reference", "peak MiB", "peak vs ref",
               "rel. error", "worst token", "GFLOP/frame", "GFLOP/s", "of matmul peak",
               "warm-up s"], rows),
    ])


def profile_section(report: dict) -> str:
    rows = []
    for name in ("reference", "ours", "ours, compiled", "ours, compiled, bfloat16"):
        r = report[name]
        parts, kinds, wall = r["parts_ms"], r["self_ms_by_kind"], r["wall_ms"]
        search = parts.get("neighbour search", 0.0) + parts.get("neighbour table", 0.0)
        rows.append([name, f"{wall:.0f}", f"{search / wall:.0%}",
                     *(f"{kinds[k] / wall:.0%}" for k in kinds),
                     f"{r['gflop']:.1f}", f"{r['matmul_gflop_per_s']:.0f}"])
    kinds = list(report["reference"]["self_ms_by_kind"])
    return "\n".join([
        "### Where one frame's time goes (ADK, torch.profiler; shares of the wall time)",
        "",
        table(["path", "ms", "neighbour search", *kinds, "matmul GFLOP",
               "matmul GFLOP/s"], rows),
    ])


def train_section(report: dict) -> str:
    rows = [[r["n_residues"], r["window"], f"{r['device']}/{r['precision']}", r["batch_pairs"],
             f"{r['steps_per_s']:.2f}", f"{r['time_vs_w1']:.2f}", f"{r['peak_increase_mib']:.0f}",
             r["attention"], {True: "yes", None: "-"}[r.get("flash_attention_only_step")]]
            if not r.get("failed") else
            [r["n_residues"], r["window"], f"{r['device']}/{r['precision']}", "-", r["failed"],
             "-", "-", "-", "-"]
            for r in report["results"]]
    return "\n".join([
        "### VAMPNetEstimator training step against the merge window",
        "",
        table(["residues", "window", "device/precision", "B (pairs)", "steps/s",
               "time per pair vs w=1", "peak increase MiB", "attention",
               "flash-only step ran"], rows),
    ])


def quality_section(report: dict) -> str:
    rows = [[r["method"], "-" if r["seed"] is None else r["seed"], f"{r['heldout_vamp2']:.3f}",
             f"{r['timescales_ps'][0]:.0f}"] for r in report["rows"]]
    return "\n".join([
        f"### Quality on alanine dipeptide (lag {report['rows'][0]['lag_frames']} frames, "
        f"k = {report['rows'][0]['k']}, held-out trajectories {report['config']['test']})",
        "",
        table(["method", "seed", "held-out VAMP-2", "slowest timescale, ps"], rows),
    ])


SECTIONS = {"profile": [("profile.json", profile_section)],
            "embed": [("embed.json", embed_section),
                      ("embed_default_malloc.json", embed_section),
                      ("embed_cuda.json", embed_section)],
            "train": [("train.json", train_section)],
            "quality": [("quality.json", quality_section)]}


def summarise(args, status: dict) -> tuple[str, dict]:
    import torch

    machine = {"cpu": cpu_model(), "logical_cpus": os.cpu_count(),
               "gpu": torch.cuda.get_device_name() if args.cuda else None,
               "python": platform.python_version(), "torch": torch.__version__,
               "torch_threads": torch.get_num_threads(),
               "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    text = [f"## Benchmarks ({time.strftime('%Y-%m-%d %H:%M %Z')})", "",
            f"Machine: {machine['cpu']}, {machine['logical_cpus']} logical CPUs, "
            f"GPU: {machine['gpu'] or 'none'}; torch {machine['torch']}, "
            f"{machine['torch_threads']} threads; load average at the end "
            f"{', '.join(f'{x:.1f}' for x in machine['load_average'] or ())}."]
    results = {"machine": machine, "status": status}
    for part in args.parts:
        if not status[part]["ok"]:
            failed = status[part]
            text += ["", f"### {part}: FAILED (`{failed['failed']}`; see {failed['log']})"]
            continue
        for filename, section in SECTIONS[part]:
            path = RESULTS / filename
            if not path.is_file() or path.stat().st_mtime < status[part]["started"]:
                continue  # not produced by this run (e.g. no CUDA)
            report = json.loads(path.read_text())
            results[filename.removesuffix(".json")] = report
            text += ["", section(report)]
    text += ["", "Times are ratios within one run; " + ", ".join(
        f"{part} took {status[part]['seconds']:.0f} s" for part in args.parts) + "."]
    return "\n".join(text), results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated subset of {', '.join(PARTS)} (default: all)")
    parser.add_argument("--frames", type=int, default=4,
                        help="ADK frames per embedding variant (default 4)")
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown or not args.parts:
        parser.error(f"unknown parts {unknown}; choose from {', '.join(PARTS)}.")
    if args.frames < 1:
        parser.error("--frames must be >= 1.")
    args.cuda = cuda_available()
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    status = {}
    for part, lines in commands(args).items():
        print(f"running {part} ...", file=sys.stderr, flush=True)
        started = time.time()
        status[part] = {**run_part(part, lines), "started": started}
        print(f"    {'done' if status[part]['ok'] else 'FAILED'} in "
              f"{status[part]['seconds']:.0f} s (log: {status[part]['log']})",
              file=sys.stderr, flush=True)
    text, results = summarise(args, status)
    print(text)
    (RESULTS / "run_all.md").write_text(text + "\n")
    (RESULTS / "run_all.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {RESULTS / 'run_all.md'} and {RESULTS / 'run_all.json'}", file=sys.stderr)
    return 0 if all(s["ok"] for s in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
