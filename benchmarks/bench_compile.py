"""When does ``torch.compile`` repay itself in embedding? The measurement behind ``compile="auto"``.

For each of geom2vec's backbones and neighbour settings, one fresh process
(this file, ``--worker``) with an empty inductor cache (a new
``TORCHINDUCTOR_CACHE_DIR``, as a user's first run) takes ``--frames``
adenylate-kinase frames (1,656 heavy atoms) one frame a pass, as
``batch_size="auto"`` does, and measures

* the eager pass, seconds a frame (after one warm-up frame),
* the first compiled call (compilation included) and the compiled pass,
  seconds a frame, alternating eager and compiled frames so that a slow
  moment of a shared machine hits both,
* the neighbour pairs of a frame (self pairs included), what
  ``GeomEmbedder(compile="auto")`` counts,

and reports the saving per pair and the break-even work: the compilation's
extra seconds divided by the saving per pair, in pair-frames. A trajectory
whose pairs times frames exceed it embeds faster compiled, compilation
included. ``g2v_sklearn.embedding._embedder.COMPILE_EDGE_FRAMES`` is chosen
from this table (docs/benchmarks.md, "compile='auto'").

Usage::

    python benchmarks/bench_compile.py                    # all backbones, cap 32 and none
    python benchmarks/bench_compile.py --backbones et --caps none --frames 6

Nothing here asserts on timings; the machine is named in the output.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import cpu_model  # benchmarks/_common.py

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("G2V_SHARED", HERE.parent.parent / "shared"))
FILES = {"visnet": "visnet_l6_h64_rbf64_r75.pth", "et": "et_l6_h64_rbf64_r75.pth",
         "tensornet": "tensornet_l3_h64_rbf32_r5.pth"}
TAG = "BENCH_COMPILE_RESULT "


def worker(args) -> None:
    import mdtraj as md
    import numpy as np
    import torch
    from MDAnalysisTests.datafiles import DCD, PSF

    from g2v_sklearn.backbones._backbone import load_checkpoint
    from g2v_sklearn.backbones._neighbors import radius_graph
    from g2v_sklearn.backbones._padded_visnet import padded_forward

    cap = None if args.cap == "none" else int(args.cap)
    traj = md.load(DCD, top=PSF)[: 2 * args.frames + 1]
    heavy = traj.topology.select("not element H")
    z = torch.tensor([traj.topology.atom(int(i)).element.number for i in heavy])
    block, _, _ = load_checkpoint(SHARED / "checkpoints" / FILES[args.backbone],
                                  {"max_num_neighbors": cap})
    block.eval()
    batch = torch.zeros(len(z), dtype=torch.long)
    frames = [torch.from_numpy(np.ascontiguousarray(f[heavy]) * np.float32(10.0)) for f in traj.xyz]
    pairs = radius_graph(frames[0], block.distance.cutoff, loop=True,
                         max_num_neighbors=cap).size(1)

    def timed(pos, compile):
        start = time.perf_counter()
        padded_forward(block, z, pos, batch, compile=compile)
        return time.perf_counter() - start

    with torch.inference_mode():
        timed(frames[0], False)  # warm-up of the eager pass
        first_compiled = timed(frames[0], True)
        eager, compiled = [], []
        for i in range(args.frames):
            eager.append(timed(frames[1 + 2 * i], False))
            compiled.append(timed(frames[2 + 2 * i], True))
    eager_s, compiled_s = float(np.median(eager)), float(np.median(compiled))
    saving = (eager_s - compiled_s) / pairs
    extra = first_compiled - compiled_s  # the compilation, over a compiled frame
    print(TAG + json.dumps({
        "backbone": args.backbone, "cap": args.cap, "pairs_per_frame": pairs,
        "eager_s": eager_s, "compiled_s": compiled_s, "speedup": eager_s / compiled_s,
        "compile_s": extra, "saving_us_per_pair": saving * 1e6,
        "break_even_pair_frames": extra / saving if saving > 0 else None,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
    }), flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="visnet,et,tensornet")
    parser.add_argument("--caps", default="32,none", help="neighbour caps: integers or 'none'")
    parser.add_argument("--frames", type=int, default=8, help="frames each of eager and compiled")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "compile.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backbone", help=argparse.SUPPRESS)
    parser.add_argument("--cap", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return
    rows = []
    for backbone in args.backbones.split(","):
        for cap in args.caps.split(","):
            with tempfile.TemporaryDirectory(prefix="inductor_") as cache:
                env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache)
                command = [sys.executable, __file__, "--worker", "--backbone", backbone,
                           "--cap", cap, "--frames", str(args.frames)]
                proc = subprocess.run(command, capture_output=True, text=True, env=env)
            lines = [l for l in proc.stdout.splitlines() if l.startswith(TAG)]
            if proc.returncode or not lines:
                sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
                raise SystemExit(f"{backbone}, cap {cap}: the worker failed.")
            rows.append(json.loads(lines[-1][len(TAG):]))
            r = rows[-1]
            print(f"{backbone:9s} cap {cap:>4s}: {r['pairs_per_frame']:7d} pairs, eager "
                  f"{r['eager_s']:.3f} s, compiled {r['compiled_s']:.3f} s ({r['speedup']:.2f}x), "
                  f"compilation {r['compile_s']:.1f} s, saving {r['saving_us_per_pair']:.2f} us/pair, "
                  f"break-even {r['break_even_pair_frames'] or float('inf'):.2g} pair-frames", flush=True)
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs); torch {rows[0]['torch']}, "
          f"{rows[0]['threads']} threads; medians over {args.frames} frames each")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpu": cpu_model(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
