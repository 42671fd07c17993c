"""Embedding throughput and peak memory: GeomEmbedder against the reference path.

What it measures
----------------
For the first ``--frames`` frames of MDAnalysisTests' adenylate kinase
(ADK: 214 residues, 1,656 heavy atoms), each *variant* turns the frames into
residue tokens of shape (n_frames, 214, 4, 64) with the geom2vec ViSNet
checkpoint, and the script reports

* frames per second (and wall seconds) of embedding the frames,
* peak resident memory of the process that did it,
* both as ratios against the ``reference`` variant measured in the same run,
* the norm-relative error ``||tokens - reference|| / ||reference||`` of its
  tokens: over all tokens, over the scalar rows and over the vector rows.

Variants (``VARIANTS``; add entries there to benchmark more):

``reference``
    The oracle of tests/test_embedder_science.py: torch-geometric's
    ``ViSNet(...).representation_model`` with the geom2vec weights loaded
    strictly, whose neighbour search is replaced by a brute-force edge
    builder written here (every pair within the cutoff, self-loops,
    source -> target), run one frame at a time, heavy-atom features summed
    per residue.
``ours_fp32`` / ``ours_bf16``
    ``GeomEmbedder(checkpoint, batch_size=B, progress=False).fit_transform``
    in float32 / bfloat16 autocast.

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

from _common import cpu_model, max_rss_mib, worker_env  # benchmarks/_common.py

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_CHECKPOINT = REPO.parent / "shared" / "checkpoints" / "visnet_l6_h64_rbf64_r75.pth"
DEFAULT_OUT = HERE / "results" / "embed.json"
RESULT_TAG = "BENCH_EMBED_RESULT "  # prefix of the worker's JSON line on stdout

# Architecture of visnet_l6_h64_rbf64_r75.pth, for the reference model.
HIDDEN, LAYERS, RBF, CUTOFF = 64, 6, 64, 7.5

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
def _brute_force_distance_module(cutoff: float):
    """A stand-in for torch-geometric's ViSNet ``Distance`` built from all pairs."""
    import torch

    class BruteForceDistance(torch.nn.Module):
        """Edges between every pair of atoms of one graph within ``cutoff``.

        Self-loops included (weight 0), ``edge_index = [source, target]`` sorted by
        target, ``edge_vec = pos[source] - pos[target]``, as PyG's ``Distance``.
        The cutoff test is done in float64 on explicit differences.
        """

        def __init__(self, cutoff: float) -> None:
            super().__init__()
            self.cutoff = cutoff

        def forward(self, pos, batch):
            p = pos.detach().double()
            d = (p[:, None, :] - p[None, :, :]).square().sum(-1).sqrt()
            within = (d <= self.cutoff) & (batch[:, None] == batch[None, :])
            target, source = within.nonzero(as_tuple=True)
            edge_index = torch.stack([source, target])
            edge_vec = pos[source] - pos[target]
            loop = source == target
            edge_weight = torch.zeros(edge_vec.size(0), dtype=pos.dtype)
            edge_weight[~loop] = torch.linalg.vector_norm(edge_vec[~loop], dim=-1)
            return edge_index, edge_weight, edge_vec

    return BruteForceDistance(cutoff)


def make_reference(args):
    import numpy as np
    import torch
    from torch_geometric.nn.models import ViSNet

    def embed(traj, heavy):
        model = ViSNet(hidden_channels=HIDDEN, num_layers=LAYERS, num_rbf=RBF, cutoff=CUTOFF,
                       lmax=1, vecnorm_type="max_min", trainable_vecnorm=True)
        state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        prefix = "representation_model."
        rep = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        model.representation_model.load_state_dict(rep, strict=True)
        model.representation_model.distance = _brute_force_distance_module(CUTOFF)
        block = model.representation_model.eval()

        top = traj.topology
        z = torch.tensor([top.atom(int(i)).element.number for i in heavy])
        residue = np.array([top.atom(int(i)).residue.index for i in heavy])
        residue_of = torch.as_tensor(np.unique(residue, return_inverse=True)[1])
        n_res = int(residue_of.max()) + 1
        batch = torch.zeros(len(heavy), dtype=torch.long)
        out = np.empty((traj.n_frames, n_res, 4, HIDDEN), dtype=np.float32)
        with torch.no_grad():
            for f, frame in enumerate(traj.xyz):
                pos = torch.from_numpy(np.ascontiguousarray(frame[heavy]) * np.float32(10.0))
                x, vec = block(z, pos, batch)
                atoms = torch.cat([x.unsqueeze(1), vec[:, :3]], dim=1)
                tokens = atoms.new_zeros(n_res, 4, HIDDEN).index_add_(0, residue_of, atoms)
                out[f] = tokens.numpy()
        return out

    return embed


# ----------------------------------------------------------------------------------
# ours
# ----------------------------------------------------------------------------------
def make_ours(dtype: str):
    def factory(args):
        import numpy as np
        from g2v_sklearn import GeomEmbedder

        def embed(traj, heavy):
            embedder = GeomEmbedder(args.checkpoint, batch_size=args.batch_size,
                                    dtype=dtype, progress=False)
            tokens = embedder.fit_transform([traj])[0]
            if not np.array_equal(embedder.atom_indices_, heavy):
                raise RuntimeError("GeomEmbedder selected other atoms than the heavy atoms.")
            return np.asarray(tokens.features)

        return embed

    return factory


VARIANTS.update({
    "reference": make_reference,
    "ours_fp32": make_ours("float32"),
    "ours_bf16": make_ours("bfloat16"),
})


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

    embed(traj[:1], heavy)  # warm-up, not timed
    start = time.perf_counter()
    tokens = embed(traj, heavy)
    seconds = time.perf_counter() - start

    np.save(args.tokens_out, tokens)
    result = {
        "variant": args.worker,
        "frames": int(traj.n_frames),
        "n_atoms": int(len(heavy)),
        "n_residues": int(tokens.shape[1]),
        "batch_size": args.batch_size,
        "seconds": seconds,
        "frames_per_s": traj.n_frames / seconds,
        "baseline_rss_mib": baseline,
        "peak_rss_mib": max_rss_mib(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "tokens_shape": list(tokens.shape),
    }
    sys.stdout.flush()
    print(RESULT_TAG + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------------
# parent
# ----------------------------------------------------------------------------------
def spawn(name: str, args, tokens_out: Path) -> dict:
    """Run one variant in a fresh interpreter and return its JSON result."""
    command = [
        sys.executable, str(Path(__file__).resolve()), "--worker", name,
        "--frames", str(args.frames), "--batch-size", str(args.batch_size),
        "--checkpoint", str(args.checkpoint), "--tokens-out", str(tokens_out),
    ]
    if args.threads is not None:
        command += ["--threads", str(args.threads)]
    proc = subprocess.run(command, capture_output=True, text=True, env=worker_env())
    lines = [l for l in proc.stdout.splitlines() if l.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"variant {name!r} failed (exit status {proc.returncode}).")
    return json.loads(lines[-1][len(RESULT_TAG):])


def relative_errors(tokens, reference) -> dict:
    import numpy as np

    a = np.asarray(tokens, np.float64)
    b = np.asarray(reference, np.float64)

    def rel(x, y):
        return float(np.linalg.norm(x - y) / np.linalg.norm(y))

    return {
        "all": rel(a, b),
        "scalars": rel(a[:, :, 0], b[:, :, 0]),
        "vectors": rel(a[:, :, 1:], b[:, :, 1:]),
    }


def format_table(results: list[dict]) -> str:
    header = ("variant", "frames/s", "speed-up", "peak RSS MiB", "(baseline)",
              "peak ratio", "rel.err all", "scalars", "vectors")
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
            *((f"{err[k]:.2e}" for k in ("all", "scalars", "vectors")) if err
              else ("n/a",) * 3),
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

    started = time.perf_counter()
    results = []
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
    print(f"ADK: {first['frames']} frames, {first['n_atoms']} heavy atoms, "
          f"{first['n_residues']} residues; batch size {args.batch_size}; "
          f"1 warm-up frame per variant; each variant in a fresh process")
    print()
    print(format_table(results))
    print()
    print("speed-up and peak ratio are against 'reference' in this run; peak RSS is the whole "
          "process (baseline: after imports and data loading); rel.err = ||x-ref||/||ref||.")

    report = {
        "machine": machine,
        "settings": {"frames": args.frames, "batch_size": args.batch_size,
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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Frames/s and peak memory of embedding ADK frames, GeomEmbedder against "
                    "torch-geometric's ViSNet reference path (each variant in its own process).")
    parser.add_argument("--frames", type=int, default=6, help="ADK frames to embed (default 6)")
    parser.add_argument("--batch-size", type=_batch_size, default="auto",
                        help="GeomEmbedder batch_size: frames per pass or 'auto' (its default)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads in the workers (default: torch's default)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated subset of: {', '.join(VARIANTS)}")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                        help="geom2vec ViSNet checkpoint (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="JSON results file (default: %(default)s)")
    parser.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--tokens-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.frames < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--frames, --batch-size and --threads must be >= 1.")
    if not args.checkpoint.is_file():
        parser.error(f"checkpoint {str(args.checkpoint)!r} not found; pass --checkpoint "
                     f"PATH to a geom2vec visnet_l6_h64_rbf64_r75.pth.")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        if args.tokens_out is None:
            raise SystemExit("--worker needs --tokens-out.")
        run_worker(args)
    else:
        run_parent(args)


if __name__ == "__main__":
    main()
