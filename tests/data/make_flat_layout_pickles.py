"""Make ``flat_layout_pickles.pkl``: fitted steps pickled by the flat layout (0.1.0.dev0).

Run once, at the last commit before the package moved into folders
(``git worktree add /tmp/flat 37ddbae``, then this script with
``PYTHONPATH=/tmp/flat``); the file is committed, and
``tests/test_moved.py`` loads it with today's code and checks that
every step gives the outputs it gave then. Small synthetic tokens: the point
is the pickle's class paths, not the science.

    python tests/data/make_flat_layout_pickles.py
"""

import pickle
from pathlib import Path

import numpy as np
import torch
from sklearn.pipeline import make_pipeline

import g2v_sklearn
from g2v_sklearn import (
    EarlyStopping,
    GeomEmbedder,
    KMeansDiscretizer,
    MSMEstimator,
    SPIBEstimator,
    TokenMerger,
    TokenTrajectory,
    VAMPNetEstimator,
)
from g2v_sklearn.datasets import load_alanine_dipeptide


def tokens(seed, n_frames=120, n_residues=6, channels=8):
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames)[:, None, None, None]
    feats = rng.normal(size=(n_frames, n_residues, 4, channels)).astype(np.float32)
    feats[:, :, 0, 0] += np.sign(np.sin(t[:, :, 0, 0] / 15.0))  # a slow switch
    pos = (rng.normal(size=(n_frames, n_residues, 3)) + 3.8 * np.arange(n_residues)[None, :, None])
    return TokenTrajectory(feats, pos.astype(np.float32), residue_names=["ALA"] * n_residues,
                           chain_ids=["A"] * n_residues, residue_ids=np.arange(1, n_residues + 1),
                           timestep=10.0)


def main():
    torch.manual_seed(0)
    train = [tokens(0), tokens(1)]
    probe = [tokens(2)]
    small = dict(hidden_layer_sizes=(8,), d_model=8, n_heads=2, n_layers=1, max_epochs=2,
                 batch_size=64, progress=False, random_state=0, device="cpu")
    vampnet = make_pipeline(
        TokenMerger(window=2),
        VAMPNetEstimator(lagtime=2, n_components=2, callbacks=[EarlyStopping(patience=3)], **small),
    ).fit(train)
    spib = make_pipeline(
        TokenMerger(window=3),
        SPIBEstimator(lagtime=2, n_states=3, init_components=2, refinements=1, **small),
    ).fit(train)
    coords = vampnet.transform(train)
    msm = make_pipeline(KMeansDiscretizer(n_clusters=4, random_state=0),
                        MSMEstimator(lagtime=2)).fit(coords)
    merged = TokenMerger(window=2).fit_transform(probe)[0]  # a MergedTokens in this layout
    frames = load_alanine_dipeptide(stride=2000).trajectories[0]  # 5 frames of the shipped data
    embedder = GeomEmbedder(pretrain="random", hidden_channels=16, num_layers=1, num_rbf=8, cutoff=5.0,
                            random_state=0, progress=False).fit([frames])
    outputs = {
        "vampnet": [np.asarray(z) for z in vampnet.transform(probe)],
        "spib": [np.asarray(z) for z in spib.transform(probe)],
        "msm_score": float(msm.score(vampnet.transform(probe))),
        "tokens": np.asarray(probe[0].features),
        "embedder": np.asarray(embedder.transform([frames])[0].features),
    }
    record = {
        "version": g2v_sklearn.__version__,
        "steps": {"vampnet": vampnet, "spib": spib, "msm": msm, "tokens": probe[0], "merged": merged,
                  "embedder": embedder},
        "probe": probe,
        "outputs": outputs,
    }
    out = Path(__file__).with_name("flat_layout_pickles.pkl")
    out.write_bytes(pickle.dumps(record, protocol=4))
    print(out, out.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
