"""Embed adenylate kinase frames into residue tokens and report throughput.

Usage::

    python examples/embed_adk.py [--frames 4] [--checkpoint PATH] [--dtype float32|bfloat16]

The protein (214 residues, 1,656 heavy atoms) is read from MDAnalysisTests'
data files; the backbone from a geom2vec ViSNet checkpoint (by default
../shared/checkpoints/visnet_l6_h64_rbf64_r75.pth beside the repository).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import mdtraj as md

from g2v_sklearn import GeomEmbedder

DEFAULT_CHECKPOINT = (
    Path(__file__).resolve().parents[1].parent / "shared" / "checkpoints" / "visnet_l6_h64_rbf64_r75.pth"
)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=4, help="frames to embed (default 4)")
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args(argv)

    try:
        from MDAnalysisTests.datafiles import DCD, PSF
    except ImportError:
        raise SystemExit("This example needs MDAnalysisTests: pip install -e '.[test]'") from None
    if not Path(args.checkpoint).is_file():
        raise SystemExit(f"Checkpoint {args.checkpoint} not found; pass --checkpoint PATH.")

    traj = md.load(DCD, top=PSF)[: args.frames]
    embedder = GeomEmbedder(args.checkpoint, dtype=args.dtype).fit([traj])
    start = time.perf_counter()
    (tokens,) = embedder.transform([traj])
    seconds = time.perf_counter() - start

    print(f"input      : {traj}")
    print(f"embedded   : {embedder.atom_indices_.size} heavy atoms in {embedder.n_residues_} residues")
    print(f"tokens     : {tokens}")
    print(f"features   : {tokens.features.shape} (frames, residues, scalar+xyz rows, channels)")
    print(f"positions  : {tokens.positions.shape} (Angstrom)")
    print(f"throughput : {len(tokens) / seconds:.2f} frames/s ({args.dtype}, {seconds:.1f} s)")


if __name__ == "__main__":
    main()
