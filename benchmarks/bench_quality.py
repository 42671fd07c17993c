"""Quality of slow coordinates on alanine dipeptide: held-out VAMP-2, VAMPNet against TICA.

What it measures
----------------
On the 45 pairwise distances between the 10 heavy atoms (nm) of the four
alanine-dipeptide trajectories (read at a 20-ps stride), every method is
fitted on the training trajectories and scored on the test trajectories with
the cross-validated VAMP-2 of Wu and Noe with ``k`` singular functions (the
1 of the constant function included, so the score lies in [1, k + 1]), at
one lag time. Methods:

``TICA``
    ``deeptime.decomposition.TICA(lagtime, dim=k)``, scored with
    ``model.score(r=2, test_model=TICA(lagtime).fit(test).fetch_model(), dim=k)``
    (symmetrised test covariances, the usual TICA baseline).
``TICA/VAMP-test``
    The same TICA model scored against ``VAMP(lagtime).fit(test)`` (plain,
    non-symmetrised test covariances: the convention of
    ``VAMPNetEstimator.score``).
``VAMP``
    ``deeptime.decomposition.VAMP(lagtime, dim=k)``, the non-reversible
    linear estimate, scored against a VAMP test model.
``VAMPNetEstimator``
    ``g2v_sklearn.VAMPNetEstimator`` (MLP lobe on 2-D arrays), fitted on the
    training list, ``score(test_list)``; one row per ``--seeds`` entry.
``tokens-VAMPNet (float32)`` / ``tokens-VAMPNet (bfloat16)``
    The token pipeline: ``GeomEmbedder(checkpoint, dtype=...)`` ->
    ``TokenMerger(window=1)`` -> ``VAMPNetEstimator`` (d_model 32, 2 heads, 1
    layer, 5 epochs), fitted on the training trajectories and scored with
    ``Pipeline.score`` on the test ones; the two rows differ only in the
    embedding's precision, so they judge bfloat16 embedding downstream (the
    JSON's ``summary`` has the relative difference). Skip with
    ``--no-token-pipeline``.
``deeptime-VAMPNet``
    ``deeptime.decomposition.deep.VAMPNet`` with a ``deeptime.util.torch.MLP``
    lobe of the same shape, trained with the same lag, batch size, learning
    rate and epochs on inputs standardised with the training mean and standard
    deviation (as VAMPNetEstimator does internally). A ``VAMP(lagtime, dim=k)``
    fitted on its training outputs is scored against a VAMP test model of its
    test outputs. Skip with ``--no-deeptime-vampnet``.

The table also gives the training VAMP-2 and the slowest implied timescale of
the *training* model in ps (frames x 20 ps): TICA's/VAMP's ``timescales()``
(from the singular values), VAMPNetEstimator's ``timescales_`` (from the
eigenvalues of its Koopman matrix; the singular-value version is in the
JSON), deeptime-VAMPNet's from the singular values of the VAMP fitted on its
outputs.

Why this split and lag
----------------------
The slow process, phi > 0 (alpha_L) <-> rest, is rare: at the 20-ps stride
trajectory 0 is at phi > 0 for 1 frame, 1 for 241 frames (one visit), 2
never, 3 for 20 frames (3 visits); the script prints these counts. The default
split trains on 0, 1, 2 and tests on 3, so that both sides contain visits.
The default lag of 5 frames (100 ps) is well past the ~20-ps relaxation of
the psi flip (TICA's second process), so the score measures how well the slow
phi process is resolved. Scores at different lags are not comparable.

Usage::

    python benchmarks/bench_quality.py                          # lag 5, k 2, seeds 0,1,2
    python benchmarks/bench_quality.py --seeds 0 --no-deeptime-vampnet
    python benchmarks/bench_quality.py --lag 1 --k 2 --train 0,1,2 --test 3

Results are written as JSON to ``benchmarks/results/quality.json`` (git-ignored).
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "ala2"
DEFAULT_OUT = HERE / "results" / "quality.json"
DEFAULT_CHECKPOINT = REPO.parent / "shared" / "checkpoints" / "visnet_l6_h64_rbf64_r75.pth"
N_TRAJ = 4


# ----------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------
def load_ala2(data: Path, stride: int):
    """The four trajectories at ``stride``; a clear error if the files are missing."""
    import mdtraj as md

    pdb = data / "ala2.pdb"
    xtcs = [data / f"traj_{i}.xtc" for i in range(N_TRAJ)]
    missing = [str(p) for p in [pdb, *xtcs] if not p.is_file()]
    if missing:
        raise SystemExit(
            "bench_quality: alanine dipeptide data not found; missing:\n  " + "\n  ".join(missing)
            + f"\nPass --data DIR (a folder with ala2.pdb and traj_0..{N_TRAJ - 1}.xtc)."
        )
    return [md.load(str(x), top=str(pdb), stride=stride) for x in xtcs]


def heavy_atom_distances(traj) -> np.ndarray:
    import mdtraj as md

    heavy = traj.topology.select("element != H")
    pairs = np.array(list(itertools.combinations(heavy, 2)))
    return md.compute_distances(traj, pairs).astype(np.float64)


def phi_visits(traj) -> dict:
    """Frames at phi > 0 and the number of separate visits."""
    import mdtraj as md

    inside = md.compute_phi(traj)[1][:, 0] > 0
    entries = int(inside[0]) + int(np.sum(np.diff(inside.astype(int)) == 1))
    return {"frames": int(inside.sum()), "visits": entries}


# ----------------------------------------------------------------------------------
# methods: each returns a row dict
# ----------------------------------------------------------------------------------
def run_linear(name, estimator_cls, test_cls, train, test, lag, k):
    start = time.perf_counter()
    model = estimator_cls(lagtime=lag, dim=k).fit(train).fetch_model()
    seconds = time.perf_counter() - start
    held_out = model.score(r=2, test_model=test_cls(lagtime=lag).fit(test).fetch_model(), dim=k)
    timescales = model.timescales()[:k]
    return {
        "method": name,
        "seed": None,
        "heldout_vamp2": float(held_out),
        "train_vamp2": float(model.score(r=2, dim=k)),
        "timescales_frames": [float(t) for t in timescales],
        "fit_seconds": seconds,
    }


def run_ours(train, test, lag, k, seed, args):
    from g2v_sklearn import VAMPNetEstimator

    est = VAMPNetEstimator(
        lagtime=lag, n_components=k, score_k=k, hidden_layer_sizes=tuple(args.hidden),
        lr=args.lr, batch_size=args.batch_size, max_epochs=args.epochs,
        validation_fraction=0.0, patience=None, device=args.device, progress=False,
        random_state=seed,
    )
    start = time.perf_counter()
    est.fit(train)
    seconds = time.perf_counter() - start
    sv = np.asarray(est.singular_values_, dtype=float)
    return {
        "method": "VAMPNetEstimator",
        "seed": seed,
        "heldout_vamp2": est.score(test),
        "train_vamp2": est.score(train),
        "timescales_frames": [float(t) for t in est.timescales_],
        "timescales_from_singular_values_frames": [float(-lag / np.log(s)) for s in sv],
        "fit_seconds": seconds,
        "epochs": len(est.history_["train"]),
        "final_train_batch_score": est.history_["train"][-1],
    }


def run_token_pipeline(train, test, lag, k, seed, dtype, args):
    import tempfile

    from sklearn.pipeline import Pipeline

    from g2v_sklearn import GeomEmbedder, TokenMerger, VAMPNetEstimator

    cache = tempfile.TemporaryDirectory(prefix="bench_quality_tokens_")  # embed each frame once
    pipe = Pipeline([
        ("embed", GeomEmbedder(args.checkpoint, dtype=dtype, memory=cache.name, progress=False)),
        ("merge", TokenMerger(window=1)),
        ("vamp", VAMPNetEstimator(lagtime=lag, n_components=k, score_k=k, d_model=32, n_heads=2,
                                  n_layers=1, batch_size=args.batch_size, lr=args.lr,
                                  max_epochs=5, validation_fraction=0.0, device=args.device,
                                  progress=False, random_state=seed)),
    ])
    start = time.perf_counter()
    pipe.fit(train)
    seconds = time.perf_counter() - start
    with cache:
        return {
            "method": f"tokens-VAMPNet ({dtype})",
            "seed": seed,
            "heldout_vamp2": float(pipe.score(test)),
            "train_vamp2": float(pipe.score(train)),
            "timescales_frames": [float(t) for t in pipe["vamp"].timescales_],
            "fit_seconds": seconds,
        }


def run_deeptime_vampnet(train, test, lag, k, seed, args):
    import torch
    from deeptime.decomposition import VAMP
    from deeptime.decomposition.deep import VAMPNet
    from deeptime.util.data import TrajectoriesDataset
    from deeptime.util.torch import MLP

    stacked = np.concatenate(train)
    mean, std = stacked.mean(0), stacked.std(0)
    std[std == 0] = 1.0
    scale = lambda xs: [((x - mean) / std).astype(np.float32) for x in xs]
    train_s, test_s = scale(train), scale(test)
    device = torch.device(args.device if args.device != "auto"
                          else ("cuda" if torch.cuda.is_available() else "cpu"))

    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lobe = MLP([train[0].shape[1], *args.hidden, k]).to(device)
    loader = torch.utils.data.DataLoader(
        TrajectoriesDataset.from_numpy(lag, train_s), batch_size=args.batch_size, shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    net = VAMPNet(lobe, learning_rate=args.lr, device=device)
    net.fit(loader, n_epochs=args.epochs)
    model = net.fetch_model()
    seconds = time.perf_counter() - start

    def outputs(xs):
        out = model.transform(xs)
        out = out if isinstance(out, list) else [out]
        return [np.asarray(o, dtype=np.float64) for o in out]

    vamp = VAMP(lagtime=lag, dim=k).fit(outputs(train_s)).fetch_model()
    test_model = VAMP(lagtime=lag).fit(outputs(test_s)).fetch_model()
    return {
        "method": "deeptime-VAMPNet",
        "seed": seed,
        "heldout_vamp2": float(vamp.score(r=2, test_model=test_model, dim=k)),
        "train_vamp2": float(vamp.score(r=2, dim=k)),
        "timescales_frames": [float(t) for t in vamp.timescales()[:k]],
        "fit_seconds": seconds,
        "final_train_batch_score": float(net.train_scores[-1, 1]),
    }


# ----------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------
def int_list(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help=f"folder with ala2.pdb and traj_0..3.xtc (default {DEFAULT_DATA})")
    p.add_argument("--stride", type=int, default=20, help="read every STRIDE-th frame (default 20)")
    p.add_argument("--dt-ps", type=float, default=None,
                   help="ps between strided frames (default: the trajectories' own timestep)")
    p.add_argument("--lag", type=int, default=5, help="lag time in strided frames (default 5 = 100 ps)")
    p.add_argument("--k", type=int, default=2, help="singular functions scored / network outputs (default 2)")
    p.add_argument("--train", type=int_list, default=[0, 1, 2], help="training trajectories (default 0,1,2)")
    p.add_argument("--test", type=int_list, default=[3], help="test trajectories (default 3)")
    p.add_argument("--seeds", type=int_list, default=[0, 1, 2], help="random states of the networks")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int_list, default=[64, 64], help="hidden layer sizes (default 64,64)")
    p.add_argument("--device", default="cpu", help="torch device for the networks (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--deeptime-vampnet", action=argparse.BooleanOptionalAction, default=True,
                   help="also train deeptime's VAMPNet (default on)")
    p.add_argument("--token-pipeline", action=argparse.BooleanOptionalAction, default=True,
                   help="also run the token pipeline with float32 and bfloat16 embedding "
                        "(default on)")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                   help="ViSNet checkpoint of the token pipeline (default: %(default)s)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    overlap = set(args.train) & set(args.test)
    bad = [i for i in args.train + args.test if not 0 <= i < N_TRAJ]
    if overlap or bad or not args.train or not args.test:
        p.error(f"--train and --test must be disjoint, non-empty subsets of 0..{N_TRAJ - 1}.")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import deeptime
    import torch
    from deeptime.decomposition import TICA, VAMP

    import g2v_sklearn

    if args.threads:
        torch.set_num_threads(args.threads)

    trajs = load_ala2(args.data, args.stride)
    dt_ps = args.dt_ps if args.dt_ps is not None else float(trajs[0].timestep)
    features = [heavy_atom_distances(t) for t in trajs]
    visits = [phi_visits(t) for t in trajs]
    train = [features[i] for i in args.train]
    test = [features[i] for i in args.test]

    print(f"alanine dipeptide: {N_TRAJ} trajectories x {[len(f) for f in features]} frames, "
          f"{dt_ps:g} ps apart; {features[0].shape[1]} heavy-atom distances")
    for i, v in enumerate(visits):
        side = "train" if i in args.train else "test" if i in args.test else "unused"
        print(f"  traj {i} ({side:6s}): {v['frames']:4d} frames at phi > 0 in {v['visits']} visit(s)")
    for side, ids in (("train", args.train), ("test", args.test)):
        if sum(visits[i]["frames"] for i in ids) == 0:
            print(f"  WARNING: the {side} trajectories never visit phi > 0; the slow process is "
                  f"missing there and the comparison says little.")
    print(f"lag {args.lag} frames = {args.lag * dt_ps:g} ps, k = {args.k}, "
          f"train {args.train}, test {args.test}\n")

    rows = [
        run_linear("TICA", TICA, TICA, train, test, args.lag, args.k),
        run_linear("TICA/VAMP-test", TICA, VAMP, train, test, args.lag, args.k),
        run_linear("VAMP", VAMP, VAMP, train, test, args.lag, args.k),
    ]
    for seed in args.seeds:
        rows.append(run_ours(train, test, args.lag, args.k, seed, args))
        print(f"  VAMPNetEstimator seed {seed}: {rows[-1]['heldout_vamp2']:.4f} "
              f"({rows[-1]['fit_seconds']:.1f} s)", flush=True)
        if args.deeptime_vampnet:
            rows.append(run_deeptime_vampnet(train, test, args.lag, args.k, seed, args))
            print(f"  deeptime-VAMPNet seed {seed}: {rows[-1]['heldout_vamp2']:.4f} "
                  f"({rows[-1]['fit_seconds']:.1f} s)", flush=True)
        if args.token_pipeline:
            for dtype in ("float32", "bfloat16"):
                rows.append(run_token_pipeline([trajs[i] for i in args.train],
                                               [trajs[i] for i in args.test],
                                               args.lag, args.k, seed, dtype, args))
                print(f"  {rows[-1]['method']} seed {seed}: {rows[-1]['heldout_vamp2']:.4f} "
                      f"({rows[-1]['fit_seconds']:.1f} s)", flush=True)
    for row in rows:
        row["lag_frames"] = args.lag
        row["k"] = args.k
        row["timescales_ps"] = [t * dt_ps for t in row["timescales_frames"]]

    header = (f"{'method':26s} {'seed':>4s} {'lag':>4s} {'k':>2s} {'held-out VAMP-2':>16s} "
              f"{'train VAMP-2':>13s} {'t1 [ps]':>9s} {'fit [s]':>8s}")
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        seed = "-" if r["seed"] is None else str(r["seed"])
        print(f"{r['method']:26s} {seed:>4s} {r['lag_frames']:4d} {r['k']:2d} {r['heldout_vamp2']:16.4f} "
              f"{r['train_vamp2']:13.4f} {r['timescales_ps'][0]:9.0f} {r['fit_seconds']:8.1f}")

    tica = rows[0]["heldout_vamp2"]
    ours = [r["heldout_vamp2"] for r in rows if r["method"] == "VAMPNetEstimator"]
    summary = {
        "tica_heldout_vamp2": tica,
        "vampnet_heldout_vamp2_min": min(ours),
        "vampnet_heldout_vamp2_mean": float(np.mean(ours)),
        "vampnet_at_least_tica_all_seeds": bool(min(ours) >= max(r["heldout_vamp2"] for r in rows[:2])),
    }
    if args.token_pipeline:  # mean over seeds
        f32, bf16 = (float(np.mean([r["heldout_vamp2"] for r in rows
                                    if r["method"] == f"tokens-VAMPNet ({dtype})"]))
                     for dtype in ("float32", "bfloat16"))
        summary["bfloat16_vs_float32_heldout_vamp2"] = (bf16 - f32) / f32
        print(f"token pipeline held-out VAMP-2: bfloat16 embedding {bf16:.4f} vs float32 "
              f"{f32:.4f} ({(bf16 - f32) / f32:+.2%})")
    print(f"\nVAMPNetEstimator held-out VAMP-2 over {len(ours)} seed(s): min {min(ours):.4f}, "
          f"mean {np.mean(ours):.4f}; TICA {tica:.4f} -> "
          f"{'VAMPNet >= TICA' if summary['vampnet_at_least_tica_all_seeds'] else 'VAMPNet < TICA for some seed'}")

    result = {
        "benchmark": "bench_quality",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "dt_ps": dt_ps,
        "n_features": int(features[0].shape[1]),
        "frames": [len(f) for f in features],
        "phi_positive": visits,
        "rows": rows,
        "summary": summary,
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "deeptime": deeptime.__version__,
            "g2v_sklearn": getattr(g2v_sklearn, "__version__", None),
            "torch_threads": torch.get_num_threads(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
