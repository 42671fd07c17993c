"""Embedding throughput and peak memory: GeomEmbedder against the reference path.

What it measures
----------------
For the first ``--frames`` frames of MDAnalysisTests' adenylate kinase
(ADK: 214 residues, 1,656 heavy atoms), each *variant* turns the frames into
residue tokens of shape (n_frames, 214, 4, 64) with one of geom2vec's
checkpoints (``--backbone visnet``, ``et`` or ``tensornet``), and the script reports

* frames per second (and wall seconds) of embedding the frames,
* peak resident memory of the process that did it,
* both as ratios against the ``reference`` variant measured in the same run,
* the norm-relative error ``||tokens - reference|| / ||reference||`` of its
  tokens: over all tokens, over the scalar rows and over the vector rows, and
  the worst per-token norm-relative error,
* the multiply-add work of one frame (``torch.utils.flop_counter``: matrix
  products only) and the rate it achieves, as a fraction of this machine's
  measured matrix-multiply rate (``_common.matmul_rates``, in its own process:
  2048 x 2048 products, float32 or bfloat16 as the variant computes),
* the warm-up seconds (for compiled variants: the compilation).

Variants (``VARIANTS``; add entries there to benchmark more):

``reference``
    The oracle of the tests, run one frame at a time, heavy-atom features
    summed per residue, its neighbour search replaced by a brute-force edge
    builder written here (every pair within the cutoff, self-loops,
    source -> target). For ViSNet (tests/embedding/test_embedder_science.py)
    torch-geometric's ``ViSNet(...).representation_model`` with the geom2vec
    weights loaded strictly; for ET and TensorNet (tests/embedding/
    test_backbones.py) geom2vec's own modules from ../shared/anchors (v1.0,
    MIT; torch-scatter and torch-cluster served by the shims there), built as
    geom2vec's factory builds them and loaded strictly.
``pyg_block``
    torch-geometric's ``ViSNetBlock`` forward with this package's neighbour
    search (``load_checkpoint``), batched like GeomEmbedder: GeomEmbedder's
    path before issue 6.
``ours_fp32`` / ``ours_bf16``
    ``GeomEmbedder(checkpoint, batch_size=B, progress=False).fit_transform``
    in float32 / bfloat16 autocast (ViSNet on a padded neighbour table).
``ours_fp32_compile`` / ``ours_bf16_compile``
    The same with ``compile=True``.
``ours_default``
    ``GeomEmbedder(checkpoint, batch_size=B, progress=False)``: every other
    setting at its default (float32, ``compile="auto"``), the path a user who
    sets nothing gets. ``ours_fp32`` and ``ours_fp32_compile`` are its two
    possible outcomes.

Neighbours: every atom within the cutoff, at most ``--max-neighbors`` (default
32, the nearest; ties to the smaller index) per atom, for all variants.

How
---
Every variant runs in its own fresh subprocess (this file, ``--worker NAME``),
so its peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``) is its own and not
inflated by another variant; the peak includes the interpreter, torch and the
loaded trajectory, so the RSS after loading the data is reported as a
baseline too. A worker loads the data, embeds one frame as a warm-up (not
timed), then times with ``time.perf_counter`` one end-to-end call from the
checkpoint path to tokens for all the frames (model construction and weight
loading included, for both ours and the reference; they are small next to
the forward passes). It prints its measurements as one JSON line on stdout and
saves its tokens to a temporary ``.npy`` file, from which the parent computes
the errors against the reference.

Absolute numbers depend on the machine and on whatever else runs on it; the
ratios compare variants measured back to back in one run and are the numbers
to read. Nothing here asserts on timings.

Usage::

    python benchmarks/bench_embed.py                       # 6 frames, all variants
    python benchmarks/bench_embed.py --frames 16 --batch-size 8 --threads 2
    python benchmarks/bench_embed.py --variants reference,ours_fp32
    python benchmarks/bench_embed.py --max-neighbors none   # every neighbour in the cutoff
    python benchmarks/bench_embed.py --backbone et --frames 98 --variants reference,ours_default

Full results are written as JSON to ``benchmarks/results/embed.json`` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import (  # benchmarks/_common.py
    cpu_model,
    matmul_rates,
    max_rss_mib,
    worker_env,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = Path(os.environ.get("G2V_SHARED", REPO.parent / "shared"))
ANCHORS = SHARED / "anchors"
#: geom2vec's file for each backbone, and its layers, radial basis functions and cutoff
BACKBONES = {
    "visnet": ("visnet_l6_h64_rbf64_r75.pth", 6, 64, 7.5),
    "et": ("et_l6_h64_rbf64_r75.pth", 6, 64, 7.5),
    "tensornet": ("tensornet_l3_h64_rbf32_r5.pth", 3, 32, 5.0),
}
DEFAULT_OUT = HERE / "results" / "embed.json"
RESULT_TAG = "BENCH_EMBED_RESULT "  # prefix of the worker's JSON line on stdout
HIDDEN = 64  # every geom2vec file's width

# name -> factory(args) returning embed(traj, heavy) -> tokens of shape (F, R, 4, H).
# Filled below the factories; order is the table's order, "reference" first.
VARIANTS: dict = {}


# ----------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------

def load_adk(n_frames: int):
    """The first ``n_frames`` frames of ADK and the indices of its heavy atoms."""
    import mdtraj as md
    from MDAnalysisTests.datafiles import DCD, PSF

    traj = md.load(DCD, top=PSF)
    if n_frames > traj.n_frames:
        raise SystemExit(f"--frames {n_frames}: the ADK trajectory has only {traj.n_frames}.")
    traj = traj[:n_frames]
    heavy = traj.topology.select("not element H")
    return traj, heavy


# ----------------------------------------------------------------------------------
# the reference path
# ----------------------------------------------------------------------------------
def _brute_force_distance_module(cutoff: float, max_neighbors: int | None):
    """A stand-in for torch-geometric's ViSNet ``Distance`` built from all pairs."""
    import torch

    class BruteForceDistance(torch.nn.Module):
        """Edges between every pair of atoms of one graph within ``cutoff``.

        Self-loops included (weight 0), ``edge_index = [source, target]`` sorted by
        target, ``edge_vec = pos[source] - pos[target]``, as PyG's ``Distance``.
        The cutoff test is done in float64 on explicit differences; with
        ``max_neighbors`` each target keeps its nearest sources (``topk``: exact
        float64 ties, which real coordinates do not have, in no set order).
        """

        def __init__(self, cutoff: float, max_neighbors: int | None) -> None:
            super().__init__()
            self.cutoff = cutoff
            self.max_neighbors = max_neighbors

        def forward(self, pos, batch):
            p = pos.detach().double()
            d = (p[:, None, :] - p[None, :, :]).square().sum(-1).sqrt()
            within = (d <= self.cutoff) & (batch[:, None] == batch[None, :])
            if self.max_neighbors is not None and within.size(1) > self.max_neighbors:
                far = torch.where(within, d, torch.inf)
                nearest = far.topk(self.max_neighbors, dim=1, largest=False).indices
                within &= torch.zeros_like(within).scatter_(1, nearest, True)
            target, source = within.nonzero(as_tuple=True)
            edge_index = torch.stack([source, target])
            edge_vec = pos[source] - pos[target]
            loop = source == target
            edge_weight = torch.zeros(edge_vec.size(0), dtype=pos.dtype, device=pos.device)
            edge_weight[~loop] = torch.linalg.vector_norm(edge_vec[~loop], dim=-1)
            return edge_index, edge_weight, edge_vec

    return BruteForceDistance(cutoff, max_neighbors)


def reference_block(args):
    """The backbone's reference (see the module docstring), geom2vec weights, brute-force edges.

    Returns a module mapping ``(z, pos, batch)`` to a tuple whose first two
    entries are the atom scalars and vectors.
    """
    import torch

    _, layers, rbf, cutoff = BACKBONES[args.backbone]
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    if args.backbone == "visnet":
        from torch_geometric.nn.models import ViSNet

        model = ViSNet(hidden_channels=HIDDEN, num_layers=layers, num_rbf=rbf, cutoff=cutoff,
                       lmax=1, vecnorm_type="max_min", trainable_vecnorm=True)
        prefix = "representation_model."
        rep = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        model.representation_model.load_state_dict(rep, strict=True)
    else:
        sys.path[:0] = [str(ANCHORS / "shims"), str(ANCHORS)]
        import sitecustomize  # noqa: F401 - before geom2vec: its Lobe binds radius_graph on import
        from geom2vec.models.representation.torchmd.main_model import create_model, get_args

        model = create_model(get_args(HIDDEN, layers, rbf, num_heads=8, cutoff=cutoff,
                                      rep_model=args.backbone))
        model.load_state_dict(state, strict=True)
    model.representation_model.distance = _brute_force_distance_module(cutoff, args.max_neighbors)
    return model.representation_model.eval().to(args.device)


def make_reference(args):
    import numpy as np
    import torch

    def embed(traj, heavy):
        block = reference_block(args)

        top = traj.topology
        device = args.device
        z = torch.tensor([top.atom(int(i)).element.number for i in heavy], device=device)
        residue = np.array([top.atom(int(i)).residue.index for i in heavy])
        residue_of = torch.as_tensor(np.unique(residue, return_inverse=True)[1], device=device)
        n_res = int(residue_of.max()) + 1
        batch = torch.zeros(len(heavy), dtype=torch.long, device=device)
        out = np.empty((traj.n_frames, n_res, 4, HIDDEN), dtype=np.float32)
        with torch.no_grad():
            for f, frame in enumerate(traj.xyz):
                pos = torch.from_numpy(np.ascontiguousarray(frame[heavy]) * np.float32(10.0))
                x, vec, *_ = block(z, pos.to(device), batch)
                atoms = torch.cat([x.unsqueeze(1), vec[:, :3]], dim=1)
                tokens = atoms.new_zeros(n_res, 4, HIDDEN).index_add_(0, residue_of, atoms)
                out[f] = tokens.cpu().numpy()
        return out

    return embed


# ----------------------------------------------------------------------------------
# ours
# ----------------------------------------------------------------------------------
def make_pyg_block(args):
    import numpy as np
    import torch

    from g2v_sklearn.backbones._backbone import load_checkpoint

    def embed(traj, heavy):
        device = args.device
        block, _, _ = load_checkpoint(args.checkpoint, {"max_num_neighbors": args.max_neighbors})
        block.eval().to(device)
        top = traj.topology
        z = torch.tensor([top.atom(int(i)).element.number for i in heavy], device=device)
        residue = np.array([top.atom(int(i)).residue.index for i in heavy])
        residue_of = torch.as_tensor(np.unique(residue, return_inverse=True)[1], device=device)
        n_res = int(residue_of.max()) + 1
        per_batch = (max(1, 2048 // len(heavy)) if args.batch_size == "auto"
                     else args.batch_size)  # GeomEmbedder's batches
        pos_all = torch.from_numpy(np.ascontiguousarray(traj.xyz[:, heavy]) * np.float32(10.0))
        pos_all = pos_all.to(device)
        out = np.empty((traj.n_frames, n_res, 4, HIDDEN), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, traj.n_frames, per_batch):
                pos = pos_all[start:start + per_batch]
                frames = len(pos)
                batch = torch.arange(frames, device=device).repeat_interleave(len(heavy))
                x, vec = block(z.repeat(frames), pos.reshape(-1, 3), batch)
                atoms = torch.cat([x.unsqueeze(1), vec[:, :3]], dim=1)
                atoms = atoms.view(frames, len(heavy), 4, HIDDEN)
                tokens = atoms.new_zeros(frames, n_res, 4, HIDDEN).index_add_(1, residue_of, atoms)
                out[start:start + frames] = tokens.cpu().numpy()
        return out

    return embed


def make_ours(dtype: str | None, compile: bool | None = False):
    """GeomEmbedder with these settings; None leaves a setting at its default."""
    def factory(args):
        import numpy as np

        from g2v_sklearn import GeomEmbedder

        settings = {k: v for k, v in (("dtype", dtype), ("compile", compile)) if v is not None}

        def embed(traj, heavy):
            embedder = GeomEmbedder(args.checkpoint, batch_size=args.batch_size,
                                    max_num_neighbors=args.max_neighbors, device=args.device,
                                    progress=False, **settings)
            tokens = embedder.fit_transform([traj])[0]
            if not np.array_equal(embedder.atom_indices_, heavy):
                raise RuntimeError("GeomEmbedder selected other atoms than the heavy atoms.")
            return np.asarray(tokens.features)

        return embed

    return factory


VARIANTS.update({
    "reference": make_reference,
    "pyg_block": make_pyg_block,
    "ours_fp32": make_ours("float32"),
    "ours_fp32_compile": make_ours("float32", compile=True),
    "ours_bf16": make_ours("bfloat16"),
    "ours_bf16_compile": make_ours("bfloat16", compile=True),
    "ours_default": make_ours(None, compile=None),
})
VISNET_ONLY = ("pyg_block",)  # torch-geometric's block is ViSNet's
COMPILED_SUFFIX = "_compile"  # such a variant's FLOPs are counted on its eager twin


def eager_twin(name: str) -> str:
    return name.removesuffix(COMPILED_SUFFIX)


# ----------------------------------------------------------------------------------
# worker: one variant, one fresh process
# ----------------------------------------------------------------------------------
def run_worker(args) -> None:
    import numpy as np
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    traj, heavy = load_adk(args.frames)
    embed = VARIANTS[args.worker](args)
    baseline = max_rss_mib()

    cuda = args.device == "cuda"
    start = time.perf_counter()
    embed(traj[:1], heavy)  # warm-up (compilation, for compiled variants), not timed
    warmup = time.perf_counter() - start
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start, cpu_start = time.perf_counter(), time.process_time()
    tokens = embed(traj, heavy)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    peak = max_rss_mib()
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if cuda else None

    # Matrix-product work of one frame, counted on the eager path (compiled
    # kernels bypass the counter); after the timing, so it cannot raise the peak.
    from torch.utils.flop_counter import FlopCounterMode

    counted = VARIANTS[eager_twin(args.worker)](args)
    with FlopCounterMode(display=False) as counter:
        counted(traj[:1], heavy)

    np.save(args.tokens_out, tokens)
    result = {
        "variant": args.worker,
        "frames": int(traj.n_frames),
        "n_atoms": len(heavy),
        "n_residues": int(tokens.shape[1]),
        "batch_size": args.batch_size,
        "seconds": seconds,
        "frames_per_s": traj.n_frames / seconds,
        "cpu_seconds": cpu_seconds,
        "warmup_seconds": warmup,
        "gflop_per_frame": counter.get_total_flops() / 1e9,
        "max_neighbors": args.max_neighbors,
        "baseline_rss_mib": baseline,
        "peak_rss_mib": peak,
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "peak_gpu_mib": peak_gpu,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "tokens_shape": list(tokens.shape),
    }
    sys.stdout.flush()
    print(RESULT_TAG + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------------
# parent
# ----------------------------------------------------------------------------------
def spawn(name: str, args, tokens_out: Path | None) -> dict:
    """Run one variant (or, for ``name="matmul"``, the matmul-rate measurement)
    in a fresh interpreter and return its JSON result."""
    command = [sys.executable, str(Path(__file__).resolve()), "--checkpoint", str(args.checkpoint)]
    if name == "matmul":
        command += ["--matmul-worker", "--device", args.device]
    else:
        command += [
            "--worker", name, "--frames", str(args.frames), "--batch-size", str(args.batch_size),
            "--max-neighbors", str(args.max_neighbors), "--tokens-out", str(tokens_out),
            "--device", args.device, "--backbone", args.backbone,
        ]
    if args.threads is not None:
        command += ["--threads", str(args.threads)]
    env = dict(os.environ) if args.default_malloc else worker_env()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = [l for l in proc.stdout.splitlines() if l.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"variant {name!r} failed (exit status {proc.returncode}).")
    return json.loads(lines[-1][len(RESULT_TAG):])


def run_matmul_worker(args) -> None:
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(RESULT_TAG + json.dumps(matmul_rates(args.device)), flush=True)


def relative_errors(tokens, reference) -> dict:
    import numpy as np

    a = np.asarray(tokens, np.float64)
    b = np.asarray(reference, np.float64)

    def rel(x, y):
        return float(np.linalg.norm(x - y) / np.linalg.norm(y))

    per_token = (np.linalg.norm((a - b).reshape(*a.shape[:2], -1), axis=-1)
                 / np.linalg.norm(b.reshape(*b.shape[:2], -1), axis=-1))
    return {
        "all": rel(a, b),
        "scalars": rel(a[:, :, 0], b[:, :, 0]),
        "vectors": rel(a[:, :, 1:], b[:, :, 1:]),
        "worst_token": float(per_token.max()),
    }


def add_flop_rates(results: list[dict], rates: dict) -> None:
    """Achieved GFLOP/s and its fraction of the matmul rate of the variant's precision."""
    for r in results:
        precision = "bfloat16" if "bf16" in r["variant"] else "float32"
        peak = rates.get(f"square_2048_{precision}", rates["square_2048_float32"])
        r["gflop_per_s"] = r["gflop_per_frame"] * r["frames_per_s"]
        r["fraction_of_matmul_peak"] = r["gflop_per_s"] / peak


def format_table(results: list[dict]) -> str:
    header = ("variant", "frames/s", "speed-up", "peak RSS MiB", "(baseline)",
              "peak ratio", "rel.err all", "scalars", "vectors", "worst token",
              "GFLOP/frame", "GFLOP/s", "of peak", "warm-up s")
    rows = []
    for r in results:
        err = r.get("error_vs_reference")
        rows.append((
            r["variant"],
            f"{r['frames_per_s']:.3f}",
            f"{r['speedup_vs_reference']:.2f}x" if "speedup_vs_reference" in r else "n/a",
            f"{r['peak_rss_mib']:.0f}",
            f"({r['baseline_rss_mib']:.0f})",
            f"{r['peak_ratio_vs_reference']:.2f}" if "peak_ratio_vs_reference" in r else "n/a",
            *((f"{err[k]:.2e}" for k in ("all", "scalars", "vectors", "worst_token")) if err
              else ("n/a",) * 4),
            f"{r['gflop_per_frame']:.1f}",
            f"{r['gflop_per_s']:.1f}" if "gflop_per_s" in r else "n/a",
            f"{r['fraction_of_matmul_peak']:.1%}" if "fraction_of_matmul_peak" in r else "n/a",
            f"{r['warmup_seconds']:.1f}",
        ))
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def fmt(row):
        cells = zip(row, widths)
        return "  ".join(str(x).ljust(w) if i == 0 else str(x).rjust(w)
                         for i, (x, w) in enumerate(cells))

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def run_parent(args) -> None:
    import numpy as np

    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise SystemExit(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}.")
    if args.backbone != "visnet":
        names = [n for n in names if n not in VISNET_ONLY]

    started = time.perf_counter()
    results = []
    print("measuring the matmul rate ...", file=sys.stderr, flush=True)
    rates = spawn("matmul", args, None)
    with tempfile.TemporaryDirectory(prefix="bench_embed_") as tmp:
        tokens = {}
        for name in names:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            path = Path(tmp) / f"{name}.npy"
            results.append(spawn(name, args, path))
            tokens[name] = np.load(path)
        ref = next((r for r in results if r["variant"] == "reference"), None)
        if ref is not None:
            for r in results:
                r["speedup_vs_reference"] = r["frames_per_s"] / ref["frames_per_s"]
                r["peak_ratio_vs_reference"] = r["peak_rss_mib"] / ref["peak_rss_mib"]
                r["error_vs_reference"] = relative_errors(tokens[r["variant"]],
                                                          tokens["reference"])
    add_flop_rates(results, rates)

    first = results[0]
    machine = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": first["torch"],
        "torch_threads": first["torch_threads"],
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    print(f"CPU: {machine['cpu']} ({machine['logical_cpus']} logical CPUs)")
    print(f"torch {machine['torch']}, {machine['torch_threads']} threads, "
          f"Python {machine['python']}")
    print(f"backbone: {args.backbone} ({Path(args.checkpoint).name}); reference: "
          + ("torch-geometric's ViSNet" if args.backbone == "visnet"
             else "geom2vec's own module (../shared/anchors)"))
    print(f"ADK: {first['frames']} frames, {first['n_atoms']} heavy atoms, "
          f"{first['n_residues']} residues; at most {args.max_neighbors} neighbours; "
          f"batch size {args.batch_size}; 1 warm-up frame per variant; each variant in a "
          f"fresh process")
    print("matmul GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in rates.items()))
    print()
    print(format_table(results))
    print()
    print("speed-up and peak ratio are against 'reference' in this run; peak RSS is the whole "
          "process (baseline: after imports and data loading); rel.err = ||x-ref||/||ref||; "
          "'of peak': achieved GFLOP/s over the 2048x2048 matmul rate in the variant's "
          "precision.")

    report = {
        "machine": machine,
        "matmul_gflop_per_s": rates,
        "settings": {"backbone": args.backbone, "frames": args.frames, "batch_size": args.batch_size,
                     "max_neighbors": args.max_neighbors, "default_malloc": args.default_malloc,
                     "threads": args.threads, "checkpoint": str(args.checkpoint),
                     "variants": names},
        "results": results,
        "total_seconds": time.perf_counter() - started,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {out}")


def _batch_size(text: str):
    if text == "auto":
        return text
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("--batch-size must be >= 1 or 'auto'")
    return value


def _max_neighbors(text: str):
    if text.lower() == "none":
        return None
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("--max-neighbors must be >= 1 or 'none'")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Frames/s and peak memory of embedding ADK frames, GeomEmbedder against "
                    "torch-geometric's ViSNet reference path (each variant in its own process).")
    parser.add_argument("--frames", type=int, default=6, help="ADK frames to embed (default 6)")
    parser.add_argument("--batch-size", type=_batch_size, default="auto",
                        help="GeomEmbedder batch_size: frames per pass or 'auto' (its default)")
    parser.add_argument("--max-neighbors", type=_max_neighbors, default=32,
                        help="neighbour cap per atom, or 'none' for every atom within the "
                             "cutoff (default 32, as geom2vec)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads in the workers (default: torch's default)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="run the workers with glibc's default malloc settings instead of "
                             "worker_env's fixed mmap threshold (which makes peak RSS exact "
                             "but turns every large allocation into fresh page faults, "
                             "slowing paths with many large temporaries)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="device of every variant (default cpu); with cuda the peak GPU "
                             "memory is reported too")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated subset of: {', '.join(VARIANTS)}")
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="visnet",
                        help="which of geom2vec's pretrained backbones (default visnet)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="its checkpoint (default: geom2vec's file for --backbone in "
                             "../shared/checkpoints)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="JSON results file (default: %(default)s)")
    parser.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--tokens-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--matmul-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.frames < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--frames, --batch-size and --threads must be >= 1.")
    if args.checkpoint is None:
        args.checkpoint = SHARED / "checkpoints" / BACKBONES[args.backbone][0]
    if not args.checkpoint.is_file():
        parser.error(f"checkpoint {str(args.checkpoint)!r} not found; pass --checkpoint "
                     f"PATH to geom2vec's {BACKBONES[args.backbone][0]}.")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.matmul_worker:
        run_matmul_worker(args)
    elif args.worker:
        if args.tokens_out is None:
            raise SystemExit("--worker needs --tokens-out.")
        run_worker(args)
    else:
        run_parent(args)


if __name__ == "__main__":
    main()
