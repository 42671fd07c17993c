"""Re-make the alanine-dipeptide dataset shipped in g2v_sklearn/datasets/_data.

Runs :func:`g2v_sklearn.datasets.simulate_alanine_dipeptide`'s recipe with
``SHIPPED_SETTINGS``, one trajectory per worker process, and writes heavy-atom
XTC files, a heavy-atom PDB and ``settings.json``. About 12 minutes of one core
per 100-ns trajectory with OpenMM's Reference platform.

    python tools/make_ala2_dataset.py [--workers 2] [--out DIR]
"""

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import mdtraj as md
import numpy as np

from g2v_sklearn.datasets import _alanine as ala

OUT = Path(__file__).resolve().parents[1] / "g2v_sklearn" / "datasets" / "_data" / "alanine_dipeptide"


def one(args):
    index, seed = args
    s = ala.SHIPPED_SETTINGS
    return ala._simulate_one(s["length_ns"], s["save_every_ps"], seed, "Reference", False, f"traj {index}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    s = ala.SHIPPED_SETTINGS
    seeds = ala._trajectory_seeds(s["seed"], s["n_trajectories"])
    topology = md.load_topology(ala._pdb_path())
    heavy = topology.select("not element H")
    sub = topology.subset(heavy)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    files = []
    with ProcessPoolExecutor(args.workers) as pool:
        for i, xyz in enumerate(pool.map(one, enumerate(seeds))):
            time_ps = s["save_every_ps"] * np.arange(1, len(xyz) + 1)
            name = f"traj_{i}.xtc"
            md.Trajectory(xyz[:, heavy], sub, time=time_ps).save_xtc(str(args.out / name))
            files.append(name)
            print(f"trajectory {i} (seed {seeds[i]}): {len(xyz)} frames, {time.time() - start:.0f} s", flush=True)
    md.Trajectory(np.asarray(md.load(ala._pdb_path()).xyz[:, heavy]), sub).save_pdb(str(args.out / "ala2_heavy.pdb"))
    settings = dict(ala._RECIPE, **s, trajectory_seeds=seeds, platform="Reference",
                    format_version=ala._FORMAT_VERSION, files=files)
    (args.out / "settings.json").write_text(json.dumps(settings, indent=1) + "\n")
    print(f"done in {time.time() - start:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
