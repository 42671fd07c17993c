"""The kinetic model at the end of the real pipeline: alanine dipeptide's sets and MFPTs against the
(phi, psi) MSM, and adenylate kinase's end structures from a Markov walk along its opening path."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.pipeline import Pipeline

from conftest import SHIPPED_LAG
from g2v_sklearn import (
    GeomEmbedder,
    KMeansDiscretizer,
    MSMEstimator,
    TokenMerger,
    VAMPNetEstimator,
    kinetic_model,
    save_structures,
)


def test_learned_sets_and_mfpts_match_the_dihedral_msm(shipped_ala2):
    """The main job's data, lag and merging with a small VAMPNet (5 epochs: 3 s, where the main job's
    15 epochs take 18 s; seeds 0-4 all pass with it, and benchmarks/bench_kinetics.py runs the
    library's default VAMPNet over five seeds on two data sets), then the package's default route:
    k-means with its default centres, a Bayesian MSM, two PCCA+ sets."""
    tokens = shipped_ala2["tokens"]
    learner = Pipeline([("merge", TokenMerger(window=1, operator="none")),
                        ("vamp", VAMPNetEstimator(lagtime=SHIPPED_LAG, n_components=2, d_model=32, n_heads=2,
                                                  n_layers=1, batch_size=1000, lr=5e-3, max_epochs=5,
                                                  progress=False, random_state=0))]).fit(tokens)
    z = learner.transform(tokens)
    route = Pipeline([("cluster", KMeansDiscretizer(random_state=0)),
                      ("msm", MSMEstimator(lagtime=SHIPPED_LAG, bayesian=True, n_samples=100,
                                           random_state=0))]).fit(z)
    ours = kinetic_model(route, z, n_sets=2, timestep="50 ps", unit="ns")
    ref = kinetic_model(shipped_ala2["reference"], shipped_ala2["features"], n_sets=2, timestep="50 ps",
                        unit="ns")
    rare, ref_rare = int(np.argmin(ours.populations)), int(np.argmin(ref.populations))
    a, b = np.concatenate(ours.assignments), np.concatenate(ref.assignments)
    kept = (a >= 0) & (b >= 0)
    mine, theirs = a[kept] == rare, b[kept] == ref_rare
    for x, y in ((mine, theirs), (~mine, ~theirs)):  # alpha_L, then the rest
        precision, recall = np.mean(y[x]), np.mean(x[y])
        assert precision >= 0.9 and recall >= 0.9, (precision, recall)
    for i, j, ri, rj in ((1 - rare, rare, 1 - ref_rare, ref_rare), (rare, 1 - rare, ref_rare, 1 - ref_rare)):
        low, high = ref.mfpt_interval[:, ri, rj]
        print(f"MFPT {i} -> {j}: {ours.mfpt[i, j]:.3g} ns, (phi, psi) MSM's 95 % interval [{low:.3g}, {high:.3g}]")
        assert low <= ours.mfpt[i, j] <= high
    # the default route's second timescale is no artefact (benchmarks/bench_kinetics.py: 10 of 10 seeds)
    stats = shipped_ala2["reference"]["msm"].posterior_.gather_stats("timescales", k=2, confidence=0.95)
    assert route["msm"].timescales(2)[1] <= np.ravel(stats.R)[1]


def metropolis_walk(n_states=98, seed=0, length=3000, n_walks=1, barrier=2.0):
    """A Metropolis chain over ``n_states`` frames along the path in a double well of the frame index
    (wells near both ends, ``barrier`` kT between), each step proposing a move of 1 to 4 frames; its walks."""
    from deeptime.markov.msm import MarkovStateModel

    x = np.linspace(-1, 1, n_states)
    v = barrier * (x**2 - 0.64) ** 2 / 0.64**2
    p = np.zeros((n_states, n_states))
    for i in range(n_states):
        for step in (-4, -3, -2, -1, 1, 2, 3, 4):
            j = i + step
            if 0 <= j < n_states:
                p[i, j] = min(1.0, np.exp(v[i] - v[j])) / 8
        p[i, i] = 1 - p[i].sum()
    starts = [(5, n_states - 6)[k % 2] for k in range(n_walks)]  # alternately from each end
    return [MarkovStateModel(p).simulate(length, start=s, seed=seed + k) for k, s in enumerate(starts)]


def test_adenylate_kinase_end_sets_look_like_the_closed_and_open_ends(visnet_checkpoint, adk_files, token_cache,
                                                                     tmp_path):
    """A Markov walk over the 98 frames of the closed -> open path, through the pipeline. The frames
    are embedded from their C-alpha atoms (3 s here; all 1,656 heavy atoms would cost the suite one
    to two minutes); the structures written are the full frames."""
    import mdtraj as md

    psf, dcd, _ = adk_files
    path = md.load(dcd, top=psf)
    tokens = GeomEmbedder(visnet_checkpoint, selection="name CA", memory=token_cache,
                          progress=False).fit_transform([path])[0]
    walks = [w[::3] for w in metropolis_walk(path.n_frames)]  # every third step: 1,000 frames
    walk_tokens = [tokens[w] for w in walks]
    pipe = Pipeline([("merge", TokenMerger(window=16, operator="none")),
                     ("vamp", VAMPNetEstimator(lagtime=1, n_components=1, d_model=16, n_heads=2, n_layers=1,
                                               hidden_layer_sizes=(16,), batch_size=200, max_epochs=2,
                                               progress=False, random_state=0)),
                     ("cluster", KMeansDiscretizer(random_state=0)),
                     ("msm", MSMEstimator(lagtime=1))]).fit(walk_tokens)
    model = kinetic_model(pipe, walk_tokens, n_sets=2)
    files = save_structures(model, tmp_path, [path[w] for w in walks], n_samples=2)
    ends = {"closed": path[0], "open": path[-1]}
    ca = path.topology.select("name CA")
    halves = set()
    for k, entry in files.items():
        typical = md.load(str(entry["typical"]))
        rmsd = {name: float(md.rmsd(typical, end, atom_indices=ca)[0]) for name, end in ends.items()}
        frame = walks[entry["frames"][0, 0]][entry["frames"][0, 1]]  # the path frame it shows
        own = "closed" if frame < path.n_frames / 2 else "open"
        halves.add(own)
        print(f"set {k}: path frame {frame}, C-alpha RMSD to closed {rmsd['closed']:.2f} nm, open {rmsd['open']:.2f} nm")
        assert rmsd[own] < rmsd["open" if own == "closed" else "closed"]
    assert halves == {"closed", "open"}  # one set at each end of the path
    # (seeds 0-5 of the walk and the fit: 6 of 6 pass, measured; with walks too short to cross the
    # barrier both ways, the MSM's connected set is one side only, and kinetic_model warns)
