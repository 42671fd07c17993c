"""Write tests/data/learner_reference.npz: fixed fits the learners must reproduce bit for bit.

Run once, at one thread, with the code whose outputs are the reference:

    G2V_THREAD_BUDGET=0 OMP_NUM_THREADS=1 python tests/data/make_learner_reference.py

The pickles beside it stay as the code of that day made them (old pickles must keep
loading and giving the same outputs). When a deliberate change of training moves
some fits, record only what moved, in learner_reference_update.npz, and say why in
learner_reference.json's "updates":

    G2V_THREAD_BUDGET=0 OMP_NUM_THREADS=1 python tests/data/make_learner_reference.py --update

tests/learners/test_reference_fits.py refits the same estimators on the same data
and compares every array with ``np.array_equal`` on the kind of machine recorded
in learner_reference.json (write the processor's maker, torch's
``torch.backends.cpu.get_cpu_capability()`` and ``torch.__version__`` there when
the reference is made again); elsewhere, to the tolerance that test explains.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
FILE = HERE / "learner_reference.npz"
UPDATE = HERE / "learner_reference_update.npz"  # the fits that deliberate changes moved since FILE
PICKLES = HERE / "learner_reference.pkl"  # the same fitted estimators, pickled by the code that made them


def dihedrals():
    """(cos, sin) of (phi, psi) of the shipped alanine dipeptide, 4 x 400 frames (1 ns apart)."""
    import mdtraj as md

    from g2v_sklearn.datasets import load_alanine_dipeptide

    out = []
    for t in load_alanine_dipeptide(stride=25).trajectories:
        phi, psi = md.compute_phi(t)[1][:, 0], md.compute_psi(t)[1][:, 0]
        out.append(np.stack([np.cos(phi), np.sin(phi), np.cos(psi), np.sin(psi)], 1))
    return out


def tokens():
    """Two seeded synthetic token trajectories (60 and 50 frames of 5 residues, H=8), merged by 2."""
    from g2v_sklearn import TokenMerger, TokenTrajectory

    rng = np.random.default_rng(11)
    trajs = []
    for n in (60, 50):
        walk = np.cumsum(rng.normal(size=(n, 5, 4, 8)), axis=0).astype(np.float32) * 0.1
        pos = (np.arange(5)[None, :, None] * 3.8 + rng.normal(size=(n, 5, 3))).astype(np.float32)
        trajs.append(TokenTrajectory(walk, pos, residue_names=["ALA"] * 5, chain_ids=["A"] * 5,
                                     residue_ids=range(1, 6)))
    return TokenMerger(window=2).fit_transform(trajs)


def fits():
    """name -> (estimator factory, data): the fits the reference holds."""
    from g2v_sklearn import SPIBEstimator, VAMPNetEstimator

    x, tok = dihedrals(), tokens()
    small = dict(hidden_layer_sizes=(16, 16), batch_size=128, progress=False, random_state=0)
    net = dict(d_model=16, n_heads=2, n_layers=1, batch_size=32, progress=False, random_state=1)
    return {
        "vampnet_features": (lambda: VAMPNetEstimator(lagtime=2, max_epochs=4, n_init=2, validation_fraction=0.2,
                                                      **small), x),
        "vampnet_tokens": (lambda: VAMPNetEstimator(lagtime=2, max_epochs=3, **net), tok),
        "spib_features": (lambda: SPIBEstimator(lagtime=2, n_states=5, max_epochs=12, refinements=3, patience=1,
                                                tolerance=0.05, lr=3e-3, **small), x),
        "spib_tokens": (lambda: SPIBEstimator(lagtime=2, n_states=4, max_epochs=6, refinements=2, lr=3e-3, patience=1,
                                              **net), tok),
    }


def outputs(name, est, X) -> dict:
    """The arrays of a fitted estimator that the reference compares."""
    out = {"transform": np.concatenate(est.transform(X)), "train": np.asarray(est.history_["train"])}
    out["state"] = np.concatenate([v.detach().double().cpu().reshape(-1).numpy()
                                   for v in est.module_.state_dict().values()])
    if name.startswith("vampnet"):
        out["singular_values"] = np.asarray(est.singular_values_)
        out["score"] = np.asarray([est.score(X)])
    else:
        out["predict"] = np.concatenate(est.predict(X))
        out["labels_history"] = np.concatenate([np.concatenate(ls) for ls in est.labels_history_])
        out["score"] = np.asarray([est.score(X)])
    return out


def partial_outputs(X) -> dict:
    """VAMPNet trained by three ``partial_fit`` calls on pieces of the features."""
    from g2v_sklearn import VAMPNetEstimator

    est = VAMPNetEstimator(lagtime=2, hidden_layer_sizes=(16,), batch_size=128, progress=False, random_state=2)
    for piece in (X[:2], X[2:], X[:1]):
        est.partial_fit(piece)
    return {"transform": np.concatenate(est.transform(X)), "train": np.asarray(est.history_["train"])}


def compute(fitted: dict | None = None) -> dict[str, np.ndarray]:
    """The reference arrays; the fitted estimators go into ``fitted`` when given."""
    torch.set_num_threads(1)
    arrays = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        specs = fits()
        for name, (make, X) in specs.items():
            est = make().fit(X)
            if fitted is not None:
                fitted[name] = est
            for key, value in outputs(name, est, X).items():
                arrays[f"{name}/{key}"] = value
        for key, value in partial_outputs(specs["vampnet_features"][1]).items():
            arrays[f"vampnet_partial/{key}"] = value
    return arrays


def expected_refits() -> dict[str, np.ndarray]:
    """What a refit must give today: the reference, with the updates on top."""
    expected = dict(np.load(FILE))
    if UPDATE.exists():
        expected.update(np.load(UPDATE))
    return expected


if __name__ == "__main__":
    import pickle
    import sys

    if "--update" in sys.argv[1:]:
        got, before = compute(), dict(np.load(FILE))
        moved = {k: v for k, v in got.items() if not np.array_equal(v, before[k])}  # False on another shape
        np.savez_compressed(UPDATE, **moved)
        print(f"wrote {UPDATE}: {sorted(moved)}")
    else:
        estimators = {}
        np.savez_compressed(FILE, **compute(estimators))
        PICKLES.write_bytes(pickle.dumps(estimators))
        print(f"wrote {FILE} and {PICKLES}")
