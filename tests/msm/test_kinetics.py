"""The kinetic model: PCCA+ sets, MFPTs and TPT against a chain whose exact answers are known,
frames written as structures, and the errors promised."""

from __future__ import annotations

import numpy as np
import pytest
from deeptime.markov.msm import MarkovStateModel
from sklearn.pipeline import Pipeline

from g2v_sklearn import KMeansDiscretizer, MSMEstimator, SPIBEstimator, kinetic_model, save_structures
from g2v_sklearn.msm._kinetics import parse_timestep


def double_well(n=30):
    """A Metropolis chain on n states along x in [-1.5, 1.5] in V = 4 (x^2 - 1)^2 (in kT)."""
    x = np.linspace(-1.5, 1.5, n)
    v = 4 * (x**2 - 1) ** 2
    p = np.zeros((n, n))
    for i in range(n):
        for j in (i - 1, i + 1):
            if 0 <= j < n:
                p[i, j] = 0.5 * min(1.0, np.exp(-(v[j] - v[i])))
        p[i, i] = 1 - p[i].sum()
    return MarkovStateModel(p)


@pytest.fixture(scope="module")
def chain_runs():
    """Five seeded 200,000-step runs of the chain (its slowest timescale is ~1,800 steps:
    about a hundred crossings each), with their Bayesian kinetic models."""
    true = double_well()
    runs = []
    for seed in range(5):
        d = true.simulate(200_000, start=0, seed=seed)
        msm = MSMEstimator(lagtime=1, bayesian=True, n_samples=100, random_state=seed).fit([d])
        runs.append((d, kinetic_model(msm, [d], n_sets=2)))
    return true, runs


def test_mfpts_and_tpt_rate_agree_with_the_exact_chain_within_their_intervals(chain_runs):
    true, runs = chain_runs
    inside_mfpt, inside_rate = 0, 0
    for d, km in runs:
        a, b = km.sets
        assert set(a) | set(b) == set(range(30)) and len(a) and len(b)
        assert max(a) < min(b) or max(b) < min(a)  # PCCA+ splits the chain at the barrier
        for i, j, (source, sink) in ((0, 1, (a, b)), (1, 0, (b, a))):
            low, high = km.mfpt_interval[:, i, j]
            inside_mfpt += low <= true.mfpt(source, sink) <= high
        paths = km.tpt(0, 1)
        exact = true.reactive_flux(a, b).rate
        inside_rate += paths.rate_interval[0] <= exact <= paths.rate_interval[1]
        # TPT's total rate is the inverse of its own MFPT, and the one pathway carries all the flux
        assert paths.mfpt == pytest.approx(1 / paths.rate)
        assert paths.pathways == [((0, 1), pytest.approx(1.0))]
        # along the chain from the source's side the committor rises from 0 to 1
        q = paths.committor if max(a) < min(b) else paths.committor[::-1]
        assert q[0] < 0.01 and q[-1] > 0.99 and np.all(np.diff(q) >= -1e-9)
    # 95 % intervals: measured 9 of 10 MFPTs and 5 of 5 rates inside over these seeds
    assert inside_mfpt >= 8 and inside_rate >= 4, (inside_mfpt, inside_rate)


def test_sets_populations_free_energies_and_frames_of_the_chain(chain_runs):
    true, runs = chain_runs
    d, km = runs[0]
    pi = true.stationary_distribution
    exact = np.array([pi[s].sum() for s in km.sets])
    assert np.all((km.populations_interval[0] <= exact) & (exact <= km.populations_interval[1]))
    energies, interval = km.free_energies()
    assert energies.min() == 0 and np.all(interval[0] <= interval[1])
    kj, _ = km.free_energies("kJ/mol", temperature=300)
    np.testing.assert_allclose(kj, energies * 0.0083144626 * 300)
    # every frame's set is the set of its state; memberships sum to one
    np.testing.assert_array_equal(km.assignments[0], np.argmax(km.memberships, 1)[d])
    np.testing.assert_allclose(km.frame_memberships[0].sum(1), 1.0)
    # the committor is 0 in the source, 1 in the sink, and per frame that of the frame's state
    paths = km.tpt(0, 1)
    np.testing.assert_allclose(paths.committor[km.sets[0][km.memberships[km.sets[0], 0] > 0.99]], 0, atol=0.05)
    np.testing.assert_array_equal(paths.frame_committors[0], paths.committor[d])
    # drawn frames belong to their set (drawn by membership); the typical frame is in its set
    for k, frames in enumerate(km.sample_frames(20, random_state=0)):
        assert np.mean(km.assignments[0][frames[:, 1]] == k) >= 0.9
    for k, (traj, frame) in enumerate(km.typical_frames()):
        assert traj == 0 and km.assignments[0][frame] == k
    rows = km.table()
    assert rows[0]["mfpt_to_1_frames"] == pytest.approx(km.mfpt[0, 1])
    assert len(rows[1]["population_95ci"]) == 2


def test_times_in_physical_units():
    true = double_well()
    d = true.simulate(50_000, start=0, seed=0)
    msm = MSMEstimator(lagtime=2).fit([d])
    frames = kinetic_model(msm, [d], n_sets=2)
    ns = kinetic_model(msm, [d], n_sets=2, timestep="20 ps", unit="ns")
    assert frames.unit == "frames" and ns.unit == "ns" and frames.mfpt_interval is None
    np.testing.assert_allclose(ns.mfpt, frames.mfpt * 0.02)
    assert ns.tpt(0, 1).rate == pytest.approx(frames.tpt(0, 1).rate / 0.02)
    assert parse_timestep((2, "fs")) == (2.0, "fs")


def test_clear_errors():
    true = double_well(8)
    d = true.simulate(20_000, start=0, seed=0)
    msm = MSMEstimator(lagtime=1).fit([d])
    with pytest.raises(ValueError, match=r"n_sets=9 metastable sets .* only 8 states"):
        kinetic_model(msm, [d], n_sets=9)
    with pytest.raises(ValueError, match="n_sets is needed"):
        kinetic_model(msm, [d])
    with pytest.raises(ValueError, match="PCCA.* does not resolve 3 metastable sets"):
        kinetic_model(msm, [d], n_sets=3)  # a double well has two
    km = kinetic_model(msm, [d], n_sets=2)
    with pytest.raises(ValueError, match=r"source and sink sets overlap in set\(s\) \[1\]"):
        km.tpt([0, 1], [1])
    with pytest.raises(ValueError, match="source of TPT is empty"):
        km.tpt([], 1)
    with pytest.raises(ValueError, match=r"sink of TPT must be set indices in \[0, 1\]"):
        km.tpt(0, 5)
    with pytest.raises(ValueError, match="unit 'parsec', which is not a unit of time"):
        kinetic_model(msm, [d], n_sets=2, timestep="2 parsec")
    with pytest.raises(ValueError, match="needs a time step"):
        kinetic_model(msm, [d], n_sets=2, unit="ns")
    with pytest.raises(TypeError, match="ends in KMeansDiscretizer"):
        kinetic_model(Pipeline([("km", KMeansDiscretizer(3, random_state=0).fit([d[:, None] * 1.0]))]),
                      [d[:, None] * 1.0], n_sets=2)


def test_states_that_never_interconvert_are_a_disconnected_model():
    """Predicted states with no transition between them: no kinetics, and the error says why."""
    from sklearn.base import BaseEstimator

    class TwoIslands(BaseEstimator):  # a fitted state predictor whose states never meet
        lagtime, n_states_ = 1, 2

        def fit(self, X):
            self.fitted_ = True
            return self

        def predict(self, X):
            return [np.zeros(500, dtype=int), np.ones(500, dtype=int)]

        def transform(self, X):
            return [np.zeros((500, 1)), np.ones((500, 1))]

    with pytest.raises(ValueError, match=r"predicted states \[1\] are not connected .* disconnected"):
        kinetic_model(TwoIslands().fit(None), [None, None])


@pytest.fixture(scope="module")
def ala2_model(ala2_trajs, dihedral_features):
    """A small kinetic model on (phi, psi) features of the shared trajectories' first 1,000 frames."""
    feats = [f[:1000] for f in dihedral_features]
    pipe = Pipeline([("cluster", KMeansDiscretizer(20, random_state=0)),
                     ("msm", MSMEstimator(lagtime=5))]).fit(feats)
    return [t[:1000] for t in ala2_trajs], kinetic_model(pipe, feats, n_sets=2)


@pytest.mark.parametrize("kind", ["trajectory", "path", "universe"])
def test_structures_reload_and_equal_the_frames_they_name(ala2_model, ala2_files, tmp_path, kind):
    import mdtraj as md

    trajs, km = ala2_model
    pdb, paths = ala2_files
    if kind == "trajectory":
        source, options = trajs, {}
    elif kind == "path":
        source, options = paths, {"topology": pdb, "stride": 20}  # the fixture reads every 20th frame
    else:
        mda = pytest.importorskip("MDAnalysis")
        source, options = [mda.Universe(pdb, p) for p in paths], {"stride": 20}
    files = save_structures(km, tmp_path, source, n_samples=4, format="dcd", random_state=0, **options)
    assert sorted(files) == [0, 1]
    for k, entry in files.items():
        typical = md.load(str(entry["typical"]))
        samples = md.load(str(entry["samples"]), top=str(entry["topology"]))
        assert samples.n_frames == 4 and typical.n_atoms == trajs[0].n_atoms
        expected = md.join([trajs[t][f] for t, f in entry["frames"]])
        np.testing.assert_allclose(typical.xyz[0], expected.xyz[0], atol=6e-4)  # PDB: 0.001 nm
        np.testing.assert_allclose(samples.xyz, expected.xyz[1:], atol=1e-5)  # DCD: float32
        assert km.assignments[entry["frames"][0, 0]][entry["frames"][0, 1]] == k
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_structures_need_their_source_frames(ala2_model, ala2_files, tmp_path):
    import shutil

    _, km = ala2_model
    pdb, paths = ala2_files
    moved = [shutil.copy(p, tmp_path / f"traj_{i}.xtc") for i, p in enumerate(paths)]
    (tmp_path / "traj_0.xtc").unlink()
    with pytest.raises(FileNotFoundError, match=r"traj_0.xtc', which no longer exists"):
        save_structures(km, tmp_path / "out", [str(m) for m in moved], topology=pdb, stride=20)
    with pytest.raises(ValueError, match="pass topology="):
        save_structures(km, tmp_path / "out", [str(m) for m in moved[1:]] + [str(moved[1])])
    with pytest.raises(ValueError, match="needs source="):
        save_structures(km, tmp_path / "out")
    with pytest.raises(ValueError, match="source has 3 trajectories, but the kinetic model was built from 4"):
        save_structures(km, tmp_path / "out", [str(m) for m in moved[1:]], topology=pdb)
    assert not (tmp_path / "out").exists()


def test_a_missing_file_is_refused_whichever_frames_are_drawn(ala2_model, ala2_files, tmp_path, monkeypatch):
    """The files are checked before any frame is read or written: a missing one is an error
    even when no drawn frame lies in it, and nothing is written."""
    import shutil

    _, km = ala2_model
    pdb, paths = ala2_files
    moved = [shutil.copy(p, tmp_path / f"traj_{i}.xtc") for i, p in enumerate(paths)]
    (tmp_path / "traj_0.xtc").unlink()
    monkeypatch.setattr(km, "typical_frames", lambda: [(1, 0)] * km.n_sets)
    monkeypatch.setattr(km, "sample_frames", lambda n, random_state=None: [np.array([[2, 0], [3, 1]])] * km.n_sets)
    with pytest.raises(FileNotFoundError, match=r"traj_0.xtc', which no longer exists"):
        save_structures(km, tmp_path / "out", [str(m) for m in moved], topology=pdb, stride=20)
    assert not (tmp_path / "out").exists()


def test_spib_states_take_the_same_path(dihedral_features, ala2_trajs, tmp_path):
    """SPIB's predicted states are the sets: same kinetic model, same structures."""
    import mdtraj as md

    feats = [f[:1000] for f in dihedral_features]
    spib = SPIBEstimator(lagtime=5, hidden_layer_sizes=(16,), max_epochs=8, batch_size=256, progress=False,
                         random_state=0).fit(feats)
    states = spib.predict(feats)
    n = len(np.unique(np.concatenate(states)))
    km = kinetic_model(spib, feats, timestep="20 ps", unit="ns", random_state=0)
    assert km.n_sets == n and km.mfpt_interval is not None
    np.testing.assert_array_equal(np.concatenate(km.assignments),
                                  np.searchsorted(np.unique(np.concatenate(states)), np.concatenate(states)))
    files = save_structures(km, tmp_path, [t[:1000] for t in ala2_trajs], n_samples=2)
    reloaded = md.load(str(files[0]["samples"]), top=str(files[0]["topology"]))
    assert reloaded.n_frames == 2


def moving_residues_tokens(moving=(1, 4), n_res=6, seed=0):
    """Token trajectories of a two-state chain in which only ``moving`` residues change:
    their scalar channels shift by 3 in state 1; every other number is noise."""
    from g2v_sklearn import TokenTrajectory

    rng = np.random.default_rng(seed)
    trajs = []
    for _ in range(4):
        state = np.cumsum(rng.random(1500) < 0.01) % 2
        features = rng.normal(size=(1500, n_res, 4, 4)).astype(np.float32)
        features[:, list(moving), 0, :] += 3.0 * state[:, None, None]
        positions = np.broadcast_to(np.arange(n_res, dtype=np.float32)[:, None] * 3.8, (1500, n_res, 3)).copy()
        trajs.append(TokenTrajectory(features, positions, residue_names=["ALA"] * n_res, chain_ids=["A"] * n_res,
                                     residue_ids=list(range(1, n_res + 1)), timestep=10.0))
    return trajs


def test_state_importance_ranks_the_residues_that_move_first(tmp_path):
    import mdtraj as md

    from g2v_sklearn import TokenMerger, VAMPNetEstimator, state_importance

    tokens = moving_residues_tokens()
    pipe = Pipeline([("merge", TokenMerger(window=1, operator="none")),
                     ("vamp", VAMPNetEstimator(lagtime=5, n_components=1, d_model=16, n_heads=2, n_layers=1,
                                               hidden_layer_sizes=(16,), max_epochs=3, batch_size=500,
                                               progress=False, random_state=0)),
                     ("cluster", KMeansDiscretizer(random_state=0)),
                     ("msm", MSMEstimator(lagtime=5))]).fit(tokens)
    km = kinetic_model(pipe, tokens, n_sets=2)
    importance = state_importance(km, pipe, tokens, random_state=0)
    assert importance.shape == (2, 6)
    for k in range(2):
        assert set(np.argsort(importance[k])[-2:]) == {1, 4}, importance[k]
        assert importance[k, [1, 4]].min() > 2 * np.abs(importance[k, [0, 2, 3, 5]]).max(), importance[k]
    # written into the B-factors of a structure whose residues the tokens name
    top = md.Topology()
    chain = top.add_chain(chain_id="A")
    for i in range(6):
        top.add_atom("CA", md.element.carbon, top.add_residue("ALA", chain, resSeq=i + 1))
    frames = [md.Trajectory(np.zeros((len(t.features), 6, 3), np.float32) + np.arange(6)[:, None] * 0.38, top)
              for t in tokens]
    files = save_structures(km, tmp_path, frames, tokens=tokens, importance=importance, n_samples=2)
    bfactors = [float(line[60:66]) for line in open(files[0]["importance"]) if line.startswith("ATOM")]
    assert np.argmax(bfactors) in (1, 4) and max(bfactors) == pytest.approx(99.0)


def test_net_flux_and_pathways_keep_the_sets_numbering():
    """deeptime's coarse-graining orders the sets source first; the model reports them in its own order."""
    true = double_well()
    d = true.simulate(100_000, start=0, seed=1)
    km = kinetic_model(MSMEstimator(lagtime=1).fit([d]), [d], n_sets=2)
    for source, sink in ((0, 1), (1, 0)):
        paths = km.tpt(source, sink)
        assert paths.net_flux[source, sink] > 0 and paths.net_flux[sink, source] == 0
        assert paths.net_flux[source, sink] == pytest.approx(paths.total_flux)
        assert paths.rate > paths.total_flux  # the flux per unit of the source's committor-weighted population
        assert paths.pathways == [((source, sink), pytest.approx(1.0))]


def test_a_model_on_part_of_the_frames_says_so():
    """A trajectory that crosses into a region once and never comes back leaves it out of the
    connected set: its frames are in no set, and the model warns instead of describing them."""
    true = double_well(10)
    d = true.simulate(5_000, start=0, seed=0)
    one_way = np.concatenate([d, np.full(3_000, 10), np.full(3_000, 11)])  # enters 10, then 11, never back
    msm = MSMEstimator(lagtime=1).fit([one_way])
    with pytest.warns(UserWarning, match=r"connected set holds only \d+% of the frames"):
        km = kinetic_model(msm, [one_way], n_sets=2)
    assert np.all(km.assignments[0][5_000:] == -1) and np.all(km.assignments[0][:5_000] >= 0)
