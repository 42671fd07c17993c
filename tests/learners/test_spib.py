"""SPIBEstimator: states found, refinement, outputs, score oracle, errors, pipelines."""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest
import torch
from deeptime.decomposition import VAMP
from scipy.optimize import linear_sum_assignment
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from g2v_sklearn import (
    GeomEmbedder,
    KMeansDiscretizer,
    MSMEstimator,
    SPIBEstimator,
    TokenMerger,
    TokenTrajectory,
)
from g2v_sklearn.learners._spib_objective import SpibObjective

# Fits compared bit for bit across runs: the same torch threads in every run.
pytestmark = pytest.mark.usefixtures("fixed_threads")

FAST = dict(hidden_layer_sizes=(32, 32), batch_size=64, max_epochs=60, patience=3, validation_fraction=0,
            progress=False, random_state=0)


def three_wells(rng, n_frames=1500, n_trajs=2, p_jump=0.01, noise=0.35):
    """A hidden three-state jump process seen through 2-D wells plus two noise features."""
    centers = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    trajs, states = [], []
    for _ in range(n_trajs):
        jumps = rng.random(n_frames) < p_jump
        s = np.empty(n_frames, dtype=int)
        s[0] = rng.integers(3)
        for t in range(1, n_frames):
            s[t] = (s[t - 1] + rng.integers(1, 3)) % 3 if jumps[t] else s[t - 1]
        x = centers[s] + noise * rng.normal(size=(n_frames, 2))
        trajs.append(np.hstack([x, rng.normal(size=(n_frames, 2))]))
        states.append(s)
    return trajs, states


def matched_recalls(found: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Recall of every reference set after Hungarian matching of found states to sets."""
    n = max(found.max(), reference.max()) + 1
    counts = np.zeros((n, n))
    np.add.at(counts, (found, reference), 1)
    rows, cols = linear_sum_assignment(-counts)
    matched = counts[rows, cols]
    recalls = np.zeros(n)
    recalls[cols] = matched / np.maximum(counts[:, cols].sum(axis=0), 1)
    return recalls[: reference.max() + 1]


@pytest.fixture(scope="module")
def wells():
    return three_wells(np.random.default_rng(7))


@pytest.fixture(scope="module")
def fitted(wells):
    trajs, _ = wells
    return SPIBEstimator(lagtime=5, n_states=8, **FAST).fit(trajs)


# --------------------------------------------------------------------------- what it finds
def test_refinement_merges_kmeans_clusters_into_the_hidden_states(wells, fitted):
    trajs, states = wells
    est = fitted
    assert est.n_states_ == 3
    assert np.unique(np.concatenate(est.labels_history_[0])).tolist() == list(range(8))
    assert est.n_refinements_ == len(est.labels_history_) - 1 >= 1
    assert set(est.history_) == {"measure", "train", "validation", "round", "best_epochs", "best_epoch", "n_states",
                                 "rollbacks", "states_score", "restarts", "refused_round", "best_run", "runs"}
    assert est.history_["restarts"] == [] and est.history_["refused_round"] is None
    assert est.history_["rollbacks"] == []  # nothing collapsed on these wells
    assert est.history_["n_states"][0] == 8 and len(est.history_["train"]) == len(est.history_["round"])
    recalls = matched_recalls(np.concatenate(est.labels_), np.concatenate(states))
    assert np.all(recalls > 0.95), recalls
    # the final labels are the decoder's states
    for labels, predicted in zip(est.labels_, est.predict(trajs)):
        np.testing.assert_array_equal(labels, predicted)
    # one representative per state, a training frame of that state; mixture weights sum to 1
    assert est.representatives_.shape == (3, 2)
    for k, (traj, frame) in enumerate(est.representatives_):
        assert est.labels_[traj][frame] == k
    assert est.state_weights_.shape == (3,) and est.state_weights_.sum() == pytest.approx(1.0)


def relabelling_into_one_state_at(calls):
    """A ``_relabelled`` that, at the given calls (0 is the end of the first round), merges every
    frame into state 0, as the decoder of a round that learned nothing does."""
    original = SPIBEstimator._relabelled
    seen = []

    def relabelled(self, net, means, device):
        seen.append(len(seen))
        if seen[-1] in calls:
            return np.array([0]), [np.zeros(len(m), dtype=np.int64) for m in means]
        return original(self, net, means, device)

    return relabelled


def test_a_refinement_that_loses_the_slow_states_is_refused(wells, monkeypatch):
    trajs, states = wells
    monkeypatch.setattr(SPIBEstimator, "_relabelled", relabelling_into_one_state_at({1}))
    est = SPIBEstimator(lagtime=5, n_states=8, **FAST).fit(trajs)
    # the second round's refinement would have merged the three wells: the first round's model is kept
    assert est.history_["refused_round"] == 1 and est.n_refinements_ == 1 and not est.converged_
    assert est.n_states_ == est.history_["n_states"][1] >= 3
    found, hidden = np.concatenate(est.labels_), np.concatenate(states)
    for k in range(est.n_states_):  # no state straddles two wells
        assert np.bincount(hidden[found == k], minlength=3).max() > 0.95 * np.sum(found == k)
    assert len(est.history_["states_score"]) == 2 and est.history_["states_score"][-1] > 1.5
    for labels, predicted in zip(est.labels_, est.predict(trajs)):  # still the decoder's states
        np.testing.assert_array_equal(labels, predicted)


def test_a_first_round_that_learns_nothing_starts_again(wells, monkeypatch):
    trajs, states = wells
    monkeypatch.setattr(SPIBEstimator, "_relabelled", relabelling_into_one_state_at({0}))
    est = SPIBEstimator(lagtime=5, n_states=8, **FAST).fit(trajs)
    restarts = est.history_["restarts"]
    assert len(restarts) == 1 and restarts[0] > 0
    assert est.history_["round"][: restarts[0] + 1] == [0] * (restarts[0] + 1)  # round 0, twice
    assert len(est.history_["best_epochs"]) == est.n_refinements_ + 1  # one round's refinement refused
    assert est.n_states_ == 3
    assert np.all(matched_recalls(np.concatenate(est.labels_), np.concatenate(states)) > 0.95)
    # every attempt failing ends in one state, said out loud, after two restarts
    monkeypatch.setattr(SPIBEstimator, "_relabelled", relabelling_into_one_state_at({0, 1, 2}))
    with pytest.warns(UserWarning, match="merged everything into a single state"):
        est = SPIBEstimator(lagtime=5, n_states=8, **FAST).fit(trajs)
    assert len(est.history_["restarts"]) == 2 and est.n_states_ == 1


def test_n_init_keeps_the_run_whose_states_resolve_the_most(wells, monkeypatch):
    trajs, _ = wells
    # the first run's every attempt learns nothing; the second finds the wells
    monkeypatch.setattr(SPIBEstimator, "_relabelled", relabelling_into_one_state_at({0, 1, 2}))
    est = SPIBEstimator(lagtime=5, n_states=8, n_init=2, **FAST).fit(trajs)
    runs = est.history_["runs"]
    assert len(runs) == 2 and runs[0]["states_score"][-1] == 1.0 and runs[1]["states_score"][-1] > 1.5
    assert est.history_["best_run"] == 1 and est.n_states_ == 3
    assert est.history_["train"] == runs[1]["train"]


def test_outputs_and_dispatch(wells, fitted):
    trajs, _ = wells
    est = fitted
    x = trajs[0][:300]
    latent = est.transform(x)
    assert isinstance(latent, np.ndarray) and latent.shape == (300, 2) and latent.dtype == np.float64
    proba = est.predict_proba(x)
    assert proba.shape == (300, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    states = est.predict(x)
    assert states.shape == (300,) and states.dtype == np.int32
    np.testing.assert_array_equal(states, proba.argmax(axis=1))
    as_list = est.predict([x, x[:50]])
    assert isinstance(as_list, list) and [s.shape for s in as_list] == [(300,), (50,)]
    np.testing.assert_array_equal(as_list[0], states)
    as_states = copy.deepcopy(est).set_params(transform_output="states")  # no refit needed
    np.testing.assert_array_equal(as_states.transform(x), states)
    with pytest.raises(ValueError, match="X has 3 features, but SPIBEstimator is expecting 4 features"):
        est.predict(x[:, :3])


def test_score_is_deeptime_cross_validated_vamp2_of_state_probabilities(wells, fitted):
    trajs, _ = wells
    est = copy.deepcopy(fitted)
    test = three_wells(np.random.default_rng(8), n_trajs=1)[0]
    train_p, test_p = est.predict_proba(trajs), est.predict_proba(test)
    for k in (1, 2, 5):
        model = VAMP(lagtime=5).fit(train_p).fetch_model()
        expected = model.score(r=2, test_model=VAMP(lagtime=5).fit(test_p).fetch_model(), dim=min(k, 2))
        assert est.set_params(score_k=k).score(test) == pytest.approx(expected, rel=1e-6)
    # two slow processes of eigenvalue (1 - 0.015)^5 = 0.93 each: VAMP-2 near 1 + 2 * 0.86
    assert 2.4 < est.set_params(score_k=2).score(trajs) <= 3.0
    assert est.set_params(score_k=5).score(trajs) == est.score(trajs)  # capped at the rank, 2
    assert 1.7 < est.score(test) < est.score(trajs)  # the test trajectory visits two wells only


# --------------------------------------------------------------------------- the contract
def test_given_labels_and_their_errors(wells):
    trajs, states = wells
    short = [t[:400] for t in trajs]
    labels = [np.where(s[:400] == 2, 7, s[:400]) for s in states]  # any integers name states
    est = SPIBEstimator(lagtime=5, **{**FAST, "refinements": 0}).fit(short, labels)
    initial = np.concatenate(est.labels_history_[0])
    np.testing.assert_array_equal(initial, np.unique(np.concatenate(labels), return_inverse=True)[1])
    assert len(est.labels_history_) == 2  # the initial labels and the final decoder's
    single = SPIBEstimator(lagtime=5, **{**FAST, "refinements": 0}).fit(short[0], labels[0])
    assert single.labels_.shape == (400,)
    with pytest.raises(ValueError, match=r"y\[1\] has shape \(399,\), but trajectory 1 has 400 frames"):
        SPIBEstimator(lagtime=5, **FAST).fit(short, [labels[0], labels[1][:-1]])
    with pytest.raises(ValueError, match="y has 1 label arrays, but X has 2 trajectories"):
        SPIBEstimator(lagtime=5, **FAST).fit(short, labels[:1])
    with pytest.raises(ValueError, match="must hold integer state labels"):
        SPIBEstimator(lagtime=5, **FAST).fit(short, [l + 0.5 for l in labels])


def test_fewer_than_two_initial_states(wells):
    trajs, _ = wells
    x = trajs[0][:200]
    with pytest.raises(ValueError, match="at least two initial states, but y has only 1 distinct state"):
        SPIBEstimator(**FAST).fit(x, np.zeros(200, dtype=int))
    # constant features are refused as what they are, before k-means could find one state in them
    with pytest.raises(ValueError, match="X is constant: every feature has one value"):
        SPIBEstimator(**FAST).fit(np.ones((200, 3)))
    with pytest.raises(ValueError, match="'n_states' parameter of SPIBEstimator must be an int in the range"):
        SPIBEstimator(n_states=1, **FAST).fit(x)


def test_lagtime_errors(wells):
    trajs, _ = wells
    with pytest.raises(ValueError, match=r"lagtime=8 frames is not shorter than any trajectory given to SPIBEstimator \(lengths: 4, 6 frames\)"):
        SPIBEstimator(lagtime=8, **FAST).fit([trajs[0][:4], trajs[1][:6]])
    with pytest.raises(ValueError, match="1 sample"):
        SPIBEstimator(**FAST).fit(trajs[0][:1])


def test_nan_loss_stops_restores_and_advises(wells, nan_on_fourth_loss):
    trajs, _ = wells
    record = nan_on_fourth_loss(SpibObjective, "batch_loss")
    est = SPIBEstimator(lagtime=5, callbacks=[record], **FAST)
    with pytest.raises(FloatingPointError, match=r"loss became nan .*last good weights were restored.*smaller lr"):
        est.fit(trajs)
    assert not hasattr(est, "module_") and not hasattr(est, "_fit_state")
    assert len(record.steps) == 3 and len(record.steps[-1]) == len(list(record.net.parameters()))
    for a, b in zip(record.net.parameters(), record.steps[-1]):  # the weights after the last good step
        torch.testing.assert_close(a.detach(), b)


def test_fits_are_repeatable_and_refits_forget(wells):
    trajs = [t[:600] for t in wells[0]]
    a = SPIBEstimator(lagtime=5, **FAST).fit(trajs)
    b = SPIBEstimator(lagtime=5, **FAST).fit(trajs)
    np.testing.assert_array_equal(a.transform(trajs)[0], b.transform(trajs)[0])
    assert a.history_ == b.history_
    for la, lb in zip(a.labels_history_, b.labels_history_):
        np.testing.assert_array_equal(np.concatenate(la), np.concatenate(lb))
    b.set_params(z_dim=3).fit(trajs)
    assert b.transform(trajs)[0].shape[1] == 3


def test_pickle_and_clone(wells, fitted):
    trajs, _ = wells
    restored = pickle.loads(pickle.dumps(fitted))
    assert all(p.device.type == "cpu" for p in restored.module_.parameters())
    np.testing.assert_array_equal(restored.predict_proba(trajs[1][:80]), fitted.predict_proba(trajs[1][:80]))
    assert restored.score(trajs) == fitted.score(trajs)
    assert clone(fitted).get_params() == fitted.get_params()
    assert not hasattr(clone(fitted), "module_")


def test_sample_weight(wells):
    trajs = [t[:600] for t in wells[0]]
    plain = SPIBEstimator(lagtime=5, **FAST).fit(trajs)
    ones = SPIBEstimator(lagtime=5, **FAST).fit(trajs, sample_weight=[np.ones(len(t)) for t in trajs])
    np.testing.assert_allclose(ones.transform(trajs)[0], plain.transform(trajs)[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ones.history_["train"], plain.history_["train"], rtol=1e-6)
    ramps = [np.linspace(0.1, 2, len(t)) for t in trajs]
    biased = SPIBEstimator(lagtime=5, **FAST).fit(trajs, sample_weight=ramps)
    assert not np.allclose(biased.transform(trajs)[0], plain.transform(trajs)[0])
    with pytest.raises(ValueError, match=r"sample_weight for trajectory 1 has shape \(3,\), expected \(600,\)"):
        SPIBEstimator(lagtime=5, **FAST).fit(trajs, sample_weight=[np.ones(600), np.ones(3)])


def test_a_single_state_is_reported_and_scored_as_one(rng):
    x = np.ones((400, 2))  # every frame alike: one latent, one most likely state
    y = (rng.random(400) < 0.25).astype(int)
    with pytest.warns(UserWarning, match="merged everything into a single state"):
        est = SPIBEstimator(**FAST).fit(x, y)
    assert est.n_states_ == 1 and est.vamp_ is None
    assert est.predict_proba(x).shape == (400, 1) and np.all(est.predict(x) == 0)
    assert est.score(x) == 1.0


# --------------------------------------------------------------------------- tokens
def planted_tokens(rng, n_frames=400, n_res=6, h=8):
    """Noise tokens; the last two residues carry a slow two-state signal in their scalars."""
    state = np.repeat(rng.integers(0, 2, size=n_frames // 40), 40)
    features = rng.normal(size=(n_frames, n_res, 4, h)).astype(np.float32)
    features[:, -2:, 0, :] += 2.0 * (2 * state[:, None, None] - 1)
    walk = np.cumsum(rng.normal(size=(n_res, 3)), axis=0) * 2.2
    positions = np.broadcast_to(walk, (n_frames, n_res, 3)).astype(np.float32)
    return TokenTrajectory(features, positions.copy(), residue_names=["ALA"] * n_res,
                           chain_ids=["A"] * n_res, residue_ids=range(n_res)), state


def test_tokens_with_a_merger_and_attention_importance(rng):
    tokens, state = planted_tokens(rng)
    merged = TokenMerger(window=2).fit_transform([tokens])
    est = SPIBEstimator(lagtime=2, n_states=4, d_model=16, n_heads=2, n_layers=1, batch_size=64,
                        max_epochs=6, refinements=3, validation_fraction=0, progress=False,
                        random_state=0).fit(merged)
    assert est.module_.lobe.merger.spec.n_fragments == 3
    assert est.transform(merged)[0].shape == (400, 2)
    assert est.n_states_ == 2
    assert matched_recalls(est.labels_[0], state).min() > 0.9
    importance = est.attention_importance(merged)
    assert importance.shape == (6,) and np.all(importance >= 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_model_unpickles_on_cpu(wells):
    trajs = [t[:600] for t in wells[0]]
    est = SPIBEstimator(lagtime=5, device="cuda", **FAST).fit(trajs)
    assert next(est.module_.parameters()).is_cuda
    restored = pickle.loads(pickle.dumps(est))
    assert all(p.device.type == "cpu" for p in restored.module_.parameters())
    restored.set_params(device="cpu")
    np.testing.assert_allclose(restored.predict_proba(trajs)[0], est.predict_proba(trajs)[0], atol=1e-4)


# --------------------------------------------------------------------------- pipelines on molecules
@pytest.mark.filterwarnings("ignore:SPIBEstimator merged everything into a single state")
def test_adenylate_kinase_pipeline_to_msm_and_window_search(visnet_checkpoint, adk_paths_short, token_cache):
    # Plumbing on 2 x 8 frames: SPIB's states feed an MSM, y reaches SPIB through the
    # Pipeline, and a window search runs. (Too few frames to learn much: a single state
    # is a fine answer here.)
    halves = [np.repeat([0, 1], 4) for _ in adk_paths_short]  # closed half, open half
    spib = SPIBEstimator(lagtime=1, transform_output="states", d_model=16, n_heads=2, n_layers=1,
                         batch_size=8, max_epochs=3, validation_fraction=0, progress=False, random_state=0)
    pipe = Pipeline([
        ("embed", GeomEmbedder(visnet_checkpoint, memory=token_cache, progress=False)),
        ("merge", TokenMerger(window=1)),
        ("spib", spib),
        ("msm", MSMEstimator(lagtime=1)),
    ]).fit(adk_paths_short, halves)
    for initial, given in zip(pipe["spib"].labels_history_[0], halves):
        np.testing.assert_array_equal(initial, given)
    dtrajs = pipe[:-1].transform(adk_paths_short)
    assert [d.shape for d in dtrajs] == [(8,), (8,)] and dtrajs[0].dtype == np.int32
    assert np.concatenate(dtrajs).max() < pipe["spib"].n_states_
    assert 1 <= pipe["msm"].n_states_ <= pipe["spib"].n_states_

    seen = []

    def spib_scorer(estimator, X, y=None):
        # An MSM fitted on one one-way transition path has a single connected state and no
        # VAMP score; the states are scored by SPIB's own VAMP-2 of their probabilities.
        seen.append((estimator["merge"].window, estimator["spib"].module_.lobe.merger.spec.n_fragments))
        return estimator[:-1].score(X)

    search = GridSearchCV(pipe, {"merge__window": [1, 2, 4]}, cv=2, scoring=spib_scorer,
                          error_score="raise").fit(adk_paths_short)
    scores = search.cv_results_["mean_test_score"]
    assert np.all(np.isfinite(scores)) and np.all(scores >= 1.0 - 1e-9)
    assert sorted(set(seen)) == [(w, math.ceil(214 / w)) for w in (1, 2, 4)]
    # a pipeline ending in SPIB (initial states from k-means) is scored by SPIB itself
    search = GridSearchCV(Pipeline(pipe.steps[:-1]), {"merge__window": [1, 2, 4]}, cv=2,
                          error_score="raise").fit(adk_paths_short)
    scores = search.cv_results_["mean_test_score"]
    assert np.all(np.isfinite(scores)) and np.all(scores >= 1.0 - 1e-9)
    best = search.best_estimator_
    assert best["spib"].module_.lobe.merger.spec.n_fragments == math.ceil(214 / best["merge"].window)


# The data the example uses: the shipped alanine dipeptide at 50 ps a frame (4 x 2,000 frames), lag
# 100 ps. (benchmarks/bench_spib.py runs the same pipeline on it and on ../shared/data/ala2 at 10 ps
# a frame, for ten seeds each.)
LAG = 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_alanine_dipeptide_states_with_the_defaults_find_alpha_l(shipped_ala2, seed):
    # The README's pipeline, SPIB with the defaults a user gets.
    tokens, ref_labels = shipped_ala2["tokens"], shipped_ala2["labels"]
    stats = shipped_ala2["reference"]["msm"].posterior_.gather_stats("timescales", k=1, confidence=0.95)
    low, high = float(np.ravel(stats.L)[0]), float(np.ravel(stats.R)[0])
    pipe = Pipeline([("merge", TokenMerger(window=1)),
                     ("spib", SPIBEstimator(lagtime=LAG, progress=False, random_state=seed))]).fit(tokens)
    spib = pipe["spib"]
    found = np.concatenate(spib.labels_)
    print(f"SPIB: {spib.n_states_} states, populations {np.bincount(found) / len(found)}; "
          f"history: states per round {spib.history_['n_states']}, restarts {spib.history_['restarts']}, "
          f"refused round {spib.history_['refused_round']}")
    assert spib.n_states_ >= 2
    # alpha_L: the states whose frames are mostly in the reference's alpha_L set
    kept = ref_labels >= 0
    found, ref = found[kept], ref_labels[kept]
    in_alpha_l = np.array([ref[found == k].mean() > 0.5 if np.any(found == k) else False
                           for k in range(spib.n_states_)])[found]
    precision = np.mean(ref[in_alpha_l] == 1)
    recall = np.mean(in_alpha_l[ref == 1])
    its = MSMEstimator(lagtime=LAG).fit(spib.labels_).timescales_[0]
    print(f"alpha_L precision {precision:.3f} recall {recall:.3f}; slowest implied timescale {its * 50:.0f} ps, "
          f"(phi, psi) Bayesian MSM's 95 % interval [{low * 50:.0f}, {high * 50:.0f}] ps")
    assert precision >= 0.9 and recall >= 0.9
    assert low <= its <= high
    # the pipeline's states are the training labels
    np.testing.assert_array_equal(np.concatenate(pipe.set_params(spib__transform_output="states")
                                                 .transform(tokens)), np.concatenate(spib.labels_))


def test_save_best_weights_records_every_rounds_file_and_resume(dihedral_features, tmp_path):
    """SaveBestWeights wrote and resumed SPIB's files, but history_ lacked best_weights_file and
    resumed_from_epoch (a KeyError), which the callback promises."""
    from g2v_sklearn import SaveBestWeights

    x = [t[:400] for t in dihedral_features[:2]]
    params = dict(lagtime=5, n_states=4, refinements=1, hidden_layer_sizes=(16,), batch_size=128, max_epochs=4,
                  patience=None, validation_fraction=0, progress=False, random_state=0)
    first = SPIBEstimator(callbacks=[SaveBestWeights(tmp_path / "one")], **params).fit(x)
    files = first.history_["best_weights_file"]
    assert len(files) == first.n_refinements_ >= 1 and len(set(files)) == len(files)
    for path, best in zip(files, first.history_["best_epochs"]):
        assert torch.load(path, weights_only=True)["epoch"] == best
    assert "resumed_from_epoch" not in first.history_
    again = SPIBEstimator(callbacks=[SaveBestWeights(tmp_path / "one", resume=True)], **params).fit(x)
    assert again.history_["best_weights_file"][0] == files[0]
    assert again.history_["resumed_from_epoch"][0] == first.history_["best_epochs"][0]
    # every round of every n_init run keeps a file of its own (a round settles after two epochs
    # without a gain of half its loss: several rounds in 12 epochs); the kept run's files hold its networks
    params.update(refinements=3, max_epochs=12, patience=2, tolerance=0.5, n_init=2)
    two = SPIBEstimator(callbacks=[SaveBestWeights(tmp_path / "two")], **params).fit(x)
    runs = two.history_["runs"]
    names = [name for run in runs for name in run["best_weights_file"]]
    assert len(names) == len(set(names)) == sum(len(run["best_epochs"]) for run in runs) >= 4
    last = torch.load(two.history_["best_weights_file"][-1], weights_only=True)
    assert last["epoch"] == two.history_["best_epochs"][-1]


def test_partial_fit_trains_one_epoch_and_refines_once_per_call(wells):
    trajs, _ = wells
    first, second = trajs[:1], trajs[1:]
    est = SPIBEstimator(lagtime=5, n_states=4, hidden_layer_sizes=(16,), batch_size=64, progress=False,
                        random_state=0)
    est.partial_fit(first)
    assert est.n_refinements_ == 1 and len(est.history_["train"]) == 1 and est.history_["round"] == [0]
    assert len(est.labels_history_) == 2 and [len(l) for l in est.labels_] == [len(t) for t in first]
    before = [p.detach().clone() for p in est.module_.lobe.parameters()]
    est.partial_fit(second)
    assert est.n_refinements_ == 2 and est.history_["round"] == [0, 1] and len(est.history_["best_epochs"]) == 2
    assert [len(l) for l in est.labels_] == [len(t) for t in second] and est.n_states_ == est.module_.n_states
    assert any(not torch.equal(a, b) for a, b in zip(before, est.module_.lobe.parameters()))  # it trained on
    for predicted, labels in zip(est.predict(second), est.labels_):
        np.testing.assert_array_equal(predicted, labels)
    est.fit(trajs)  # fit starts over: one run, its own rounds
    assert len(est.history_["runs"]) == 1 and est.history_["round"][0] == 0
