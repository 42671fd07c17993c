"""The MSM end of the pipeline on real alanine dipeptide, checked against deeptime called by hand."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest
from deeptime.clustering import KMeansModel
from deeptime.markov.msm import BayesianMSM, BayesianMSMPosterior, MaximumLikelihoodMSM
from deeptime.util.validation import ChapmanKolmogorovTest, ImpliedTimescales
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.utils._param_validation import InvalidParameterError

from g2v_sklearn import (
    ContiguousSplit,
    KMeansDiscretizer,
    MSMEstimator,
    msm_vamp2_scorer,
    split_trajectory,
)

N_CLUSTERS = 50
LAG = 5  # frames: 100 ps at the 20-ps stride
SCORE_K = 5


# ----------------------------------------------------------------------------
# Real data: (cos, sin) of the backbone dihedrals of alanine dipeptide
# ----------------------------------------------------------------------------
def dihedral_features(traj) -> np.ndarray:
    import mdtraj as md

    _, phi = md.compute_phi(traj)
    _, psi = md.compute_psi(traj)
    angles = np.concatenate([phi, psi], axis=1)
    return np.concatenate([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def features(ala2_trajs) -> list[np.ndarray]:
    """Four trajectories of 5,000 frames x 4 features."""
    return [dihedral_features(t) for t in ala2_trajs]


@pytest.fixture(scope="module")
def discretizer(features) -> KMeansDiscretizer:
    return KMeansDiscretizer(N_CLUSTERS, random_state=0).fit(features)


@pytest.fixture(scope="module")
def dtrajs(discretizer, features) -> list[np.ndarray]:
    return discretizer.transform(features)


@pytest.fixture(scope="module")
def msm(dtrajs) -> MSMEstimator:
    return MSMEstimator(lagtime=LAG).fit(dtrajs)


@pytest.fixture(scope="module")
def bayes_msm(dtrajs) -> MSMEstimator:
    return MSMEstimator(lagtime=LAG, bayesian=True, n_samples=20, random_state=3).fit(dtrajs)


# ----------------------------------------------------------------------------
# KMeansDiscretizer
# ----------------------------------------------------------------------------
def test_discretizer_shapes_and_dtypes(discretizer, dtrajs, features):
    assert isinstance(discretizer.model_, KMeansModel)
    assert discretizer.cluster_centers_.shape == (N_CLUSTERS, 4)
    assert discretizer.n_features_in_ == 4
    assert np.isfinite(discretizer.inertia_) and discretizer.inertia_ > 0
    assert isinstance(dtrajs, list) and len(dtrajs) == 4
    for d, x in zip(dtrajs, features):
        assert d.shape == (len(x),) and d.dtype == np.int32
        assert d.min() >= 0 and d.max() < N_CLUSTERS
    # every cluster is used: k-means++ centres sit on the data
    assert len(np.unique(np.concatenate(dtrajs))) == N_CLUSTERS
    # one array in, one array out
    single = discretizer.transform(features[1])
    assert isinstance(single, np.ndarray)
    np.testing.assert_array_equal(single, dtrajs[1])


def test_discretizer_assigns_nearest_centre(discretizer, dtrajs, features):
    """Oracle: brute-force nearest centre in float64."""
    x = features[0][:2000].astype(np.float64)
    c = discretizer.cluster_centers_.astype(np.float64)
    dist = ((x[:, None, :] - c[None]) ** 2).sum(-1)
    nearest = dist.argmin(1)
    # ties within float32 rounding may break either way
    sorted_dist = np.sort(dist, axis=1)
    clear = sorted_dist[:, 1] - sorted_dist[:, 0] > 1e-5
    np.testing.assert_array_equal(dtrajs[0][:2000][clear], nearest[clear])


@pytest.mark.parametrize("method", ["kmeans", "minibatch"])
def test_discretizer_reproducible_with_random_state(features, method):
    state = np.random.get_state()
    a = KMeansDiscretizer(20, method=method, random_state=7).fit(features)
    b = KMeansDiscretizer(20, method=method, random_state=7).fit(features)
    c = KMeansDiscretizer(20, method=method, random_state=8).fit(features)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    assert not np.array_equal(a.cluster_centers_, c.cluster_centers_)
    np.testing.assert_array_equal(a.transform(features)[2], b.transform(features)[2])
    # seeded through local generators: NumPy's global state is untouched
    after = np.random.get_state()
    assert state[0] == after[0] and np.array_equal(state[1], after[1]) and state[2:] == after[2:]


def test_discretizer_minibatch_close_to_kmeans(features, discretizer):
    mb = KMeansDiscretizer(N_CLUSTERS, method="minibatch", batch_size=2000, random_state=0)
    mb.fit(features)
    assert mb.cluster_centers_.shape == (N_CLUSTERS, 4)
    assert mb.inertia_ < 1.2 * discretizer.inertia_


def test_discretizer_errors(discretizer, features):
    with pytest.raises(InvalidParameterError, match="The 'method' parameter of KMeansDiscretizer"):
        KMeansDiscretizer(method="lloyd").fit(features)
    with pytest.raises(InvalidParameterError, match="The 'n_clusters' parameter"):
        KMeansDiscretizer(0).fit(features)
    with pytest.raises(ValueError, match=r"n_clusters=100 is more than the 10 frames"):
        KMeansDiscretizer(100).fit([features[0][:10]])
    with pytest.raises(ValueError, match="X has 2 features, but KMeansDiscretizer is expecting 4"):
        discretizer.transform([features[0][:, :2]])
    with pytest.raises(ValueError, match=r"(?s)Expected 2D array, got 1D array.*reshape\(-1, 1\)"):
        discretizer.transform([features[0], features[1][:, 0]])
    with pytest.raises(ValueError, match="different numbers of features"):
        KMeansDiscretizer(5).fit([features[0], features[1][:, :3]])
    bad = features[0].copy()
    bad[17, 2] = np.nan
    with pytest.raises(ValueError, match=r"X\[0\] has NaN or infinite values at frame 17"):
        discretizer.transform([bad])
    with pytest.raises(ValueError, match="empty list"):
        KMeansDiscretizer(5).fit([])
    with pytest.raises(NotFittedError):
        KMeansDiscretizer(5).transform(features)


def test_discretizer_given_tokens_or_text_says_what_it_needs(features, visnet_checkpoint, ala2_trajs):
    """Token trajectories had failed with "setting an array element with a sequence", text
    with "could not convert string to float: np.str_('a')"."""
    from g2v_sklearn import GeomEmbedder

    tokens = GeomEmbedder(visnet_checkpoint, progress=False).fit_transform([ala2_trajs[0][:10]])
    needs = (r"KMeansDiscretizer clusters 2-D features, one array of shape \(n_frames, n_features\) per "
             r"trajectory. Put a learner in between .*VAMPNetEstimator")
    with pytest.raises(ValueError, match=r"X\[0\] is a token trajectory of shape \(10, 3, 4, 64\) \(n_frames, "
                                         r"n_residues, 4, H\): " + needs):
        KMeansDiscretizer(3).fit(tokens)
    with pytest.raises(ValueError, match=r"^X is a token trajectory of shape \(10, 3, 4, 64\)"):
        KMeansDiscretizer(3).fit(tokens[0])
    with pytest.raises(ValueError, match=r"X\[0\] is an array of shape \(10, 3, 4, 64\) .*" + needs):
        KMeansDiscretizer(3).fit([np.asarray(tokens[0].features)])
    labelled = np.column_stack([features[0][:50], ["ALA"] * 50])  # a residue name as a column
    with pytest.raises(ValueError, match=r"X\[0\] holds text, not numbers \('ALA' is not a number\): "
                                         r"KMeansDiscretizer.fit expects numeric features"):
        KMeansDiscretizer(3).fit([labelled])


# ----------------------------------------------------------------------------
# MSMEstimator: against deeptime by hand
# ----------------------------------------------------------------------------
def test_msm_matches_deeptime(msm, dtrajs):
    ref = MaximumLikelihoodMSM(lagtime=LAG).fit(dtrajs).fetch_model()
    np.testing.assert_allclose(msm.model_.transition_matrix, ref.transition_matrix, rtol=0, atol=1e-12)
    np.testing.assert_allclose(msm.timescales_, ref.timescales(), rtol=1e-10)
    np.testing.assert_array_equal(msm.active_set_, ref.count_model.state_symbols)
    assert msm.n_states_ == ref.n_states == N_CLUSTERS
    assert msm.lagtime_ == LAG and msm.model_.lagtime == LAG


def test_msm_timescales_physical(msm, ala2_trajs):
    ts = msm.timescales_
    assert ts.shape == (msm.n_states_ - 1,)
    assert np.all(ts > 0) and np.all(np.diff(ts) <= 1e-9)
    frame_ps = ala2_trajs[0].timestep  # 20 ps
    slowest_ns = ts[0] * frame_ps / 1000.0
    # the phi flip of alanine dipeptide: about a nanosecond, well above everything else
    assert 0.5 < slowest_ns < 5.0, slowest_ns
    assert ts[0] > 10 * ts[1]
    np.testing.assert_array_equal(msm.timescales(3), ts[:3])
    np.testing.assert_array_equal(msm.timescales(), ts)


def test_implied_timescales_is_deeptime_object(msm, dtrajs):
    its = msm.implied_timescales(dtrajs, [1, 2, LAG, 10])
    assert isinstance(its, ImpliedTimescales)
    np.testing.assert_array_equal(its.lagtimes, [1, 2, LAG, 10])
    np.testing.assert_allclose(its.timescales_for_process(0)[2], msm.timescales_[0], rtol=1e-10)
    # the slow process levels off: within 30 % between lag 5 and 10
    slow = its.timescales_for_process(0)
    assert abs(slow[3] / slow[2] - 1) < 0.3


def test_ck_test_is_deeptime_object(msm, dtrajs):
    ck = msm.ck_test(dtrajs, n_sets=2, lagtime_multiples=[1, 2, 3, 4])
    assert isinstance(ck, ChapmanKolmogorovTest)
    np.testing.assert_array_equal(ck.lagtimes, [0, LAG, 2 * LAG, 3 * LAG, 4 * LAG])
    assert ck.estimates.shape == ck.predictions.shape == (5, 2, 2)
    # deeptime returns complex predictions at non-integer lag ratios; they are real here
    assert np.abs(np.imag(ck.predictions)).max() < 1e-10
    # ala2 is close to Markovian at 100 ps on the dihedrals
    assert np.abs(ck.estimates - np.real(ck.predictions)).max() < 0.15


def test_bayesian_msm(bayes_msm, dtrajs):
    assert isinstance(bayes_msm.posterior_, BayesianMSMPosterior)
    assert len(bayes_msm.posterior_.samples) == 20
    assert bayes_msm.model_ is bayes_msm.posterior_.prior
    assert bayes_msm.model_.count_model.counting_mode == "effective"
    # the prior is deeptime's BayesianMSM prior
    ref = BayesianMSM(lagtime=LAG, n_samples=2).fit(dtrajs).fetch_model()
    np.testing.assert_allclose(bayes_msm.model_.transition_matrix, ref.prior.transition_matrix,
                               rtol=0, atol=1e-12)
    # samples scatter around the prior's slowest timescale
    sampled = np.array([s.timescales(1)[0] for s in bayes_msm.posterior_.samples])
    assert np.all(sampled > 0) and sampled.std() > 0
    assert 0.5 < np.median(sampled) / bayes_msm.timescales_[0] < 2.0
    # reproducible through random_state
    again = clone(bayes_msm).fit(dtrajs)
    np.testing.assert_array_equal(again.posterior_.samples[7].transition_matrix,
                                  bayes_msm.posterior_.samples[7].transition_matrix)
    its = bayes_msm.implied_timescales(dtrajs, [LAG, 2 * LAG])
    assert its.has_samples
    ck = bayes_msm.ck_test(dtrajs, n_sets=2, lagtime_multiples=[1, 2])
    assert ck.has_errors


@pytest.mark.filterwarnings("ignore:Using eigenvalues with non-zero imaginary part")
def test_bayesian_nonreversible_leaves_global_rng(dtrajs):
    state = np.random.get_state()
    one = MSMEstimator(LAG, reversible=False, bayesian=True, n_samples=1, random_state=0).fit(dtrajs)
    assert len(one.posterior_.samples) == 1
    two = MSMEstimator(LAG, reversible=False, bayesian=True, n_samples=1, random_state=0).fit(dtrajs)
    np.testing.assert_array_equal(one.posterior_.samples[0].transition_matrix,
                                  two.posterior_.samples[0].transition_matrix)
    after = np.random.get_state()
    assert np.array_equal(state[1], after[1]) and state[2:] == after[2:]


# ----------------------------------------------------------------------------
# The VAMP-2 score
# ----------------------------------------------------------------------------
def test_score_matches_deeptime_and_bounds(dtrajs):
    train = MSMEstimator(lagtime=LAG, score_k=SCORE_K).fit(dtrajs[:2])
    test = dtrajs[2:]
    score = train.score(test)
    assert np.isfinite(score) and 1.0 - 1e-8 <= score <= SCORE_K
    assert score == pytest.approx(train.model_.score(test, r="VAMP2", dim=SCORE_K), rel=1e-12)
    # the slow process carries most of the score: well above the constant function's 1
    assert score > 1.5
    # one singular value (the constant function) scores exactly 1
    assert MSMEstimator(LAG, score_k=1).fit(dtrajs[:2]).score(test) == pytest.approx(1.0)


def test_score_robust_to_unseen_and_unassigned_states(msm, dtrajs):
    test = [d.copy() for d in dtrajs[2:]]
    clean = msm.score(test)
    # a state the training data never saw, with a small index: same as deeptime's own handling
    test[0][100:130] = N_CLUSTERS + 7
    unseen = msm.score(test)
    assert unseen == pytest.approx(msm.model_.score(test, dim=SCORE_K), rel=1e-12)
    assert np.isfinite(unseen) and abs(unseen - clean) < 0.01
    # a huge index (deeptime would build a dense 10**6 x 10**6 count matrix) and -1 frames
    # (on which deeptime's counting fails): left out, finite
    test[0][200:230] = 10**6
    test[1][5:50] = -1
    robust = msm.score(test)
    assert np.isfinite(robust) and 1.0 - 1e-8 <= robust <= SCORE_K
    # states outside the active set of a model trained without them
    trimmed = MSMEstimator(lagtime=LAG).fit([np.where(d == 3, 4, d) for d in dtrajs[:2]])
    assert 3 not in trimmed.active_set_
    assert np.isfinite(trimmed.score(dtrajs[2:]))


def test_score_of_disjoint_data_is_zero_with_warning(msm):
    with pytest.warns(UserWarning, match="no lagged pair of the test trajectories"):
        assert msm.score([np.full(100, 999, dtype=np.int32)]) == 0.0


# ----------------------------------------------------------------------------
# The scorer and model selection over whole pipelines
# ----------------------------------------------------------------------------
def _pipelines():
    return {
        "ours": Pipeline([("cluster", KMeansDiscretizer(random_state=0)),
                          ("msm", MSMEstimator(lagtime=10, score_k=SCORE_K))]),
        "deeptime": Pipeline([("cluster", KMeansDiscretizer(random_state=0)),
                              ("msm", MaximumLikelihoodMSM(lagtime=10))]),
    }


@pytest.mark.parametrize("ending", ["ours", "deeptime"])
def test_gridsearch_with_scorer(features, ending):
    pipe = _pipelines()[ending]
    # clones and fits with deeptime's estimator as the last step
    clone(pipe).fit(features[:2])
    search = GridSearchCV(pipe, {"cluster__n_clusters": [10, 30]}, cv=2,
                          scoring=msm_vamp2_scorer(score_k=SCORE_K), error_score="raise")
    search.fit(features)
    scores = search.cv_results_["mean_test_score"]
    assert np.all(np.isfinite(scores)) and np.all((scores >= 1 - 1e-8) & (scores <= SCORE_K))
    # 30 states resolve the slow process better than 10
    assert search.best_params_ == {"cluster__n_clusters": 30}
    assert np.isfinite(search.score(features[:1]))


def test_scorer_agrees_with_estimator_score(features):
    pipes = {k: p.set_params(cluster__n_clusters=20).fit(features[:2])
             for k, p in _pipelines().items()}
    scorer = msm_vamp2_scorer(score_k=SCORE_K)
    ours = scorer(pipes["ours"], features[2:])
    assert ours == pytest.approx(pipes["ours"].score(features[2:]), rel=1e-12)
    # the same clustering and lag: the deeptime ending scores the same
    assert scorer(pipes["deeptime"], features[2:]) == pytest.approx(ours, rel=1e-10)
    # bare estimators on discrete trajectories
    dtrajs = pipes["ours"][0].transform(features)
    bare = MaximumLikelihoodMSM(lagtime=10).fit(dtrajs[:2])
    assert scorer(bare, dtrajs[2:]) == pytest.approx(ours, rel=1e-10)
    assert scorer(pipes["ours"][-1], dtrajs[2:]) == pytest.approx(ours, rel=1e-12)
    assert repr(scorer) == "msm_vamp2_scorer(score_k=5)"
    assert pickle.loads(pickle.dumps(scorer))(bare, dtrajs[2:]) == pytest.approx(ours)


def test_scorer_errors(features, dtrajs):
    scorer = msm_vamp2_scorer()
    with pytest.raises(InvalidParameterError, match="The 'score_k' parameter"):
        msm_vamp2_scorer(score_k=0)
    with pytest.raises(NotFittedError, match="MaximumLikelihoodMSM has not been fitted"):
        scorer(MaximumLikelihoodMSM(lagtime=LAG), dtrajs)
    not_msm = Pipeline([("cluster", KMeansDiscretizer(5, random_state=0))]).fit(features[:1])
    with pytest.raises(TypeError, match="got KMeansDiscretizer"):
        scorer(not_msm, features[:1])


# ----------------------------------------------------------------------------
# clone and pickle
# ----------------------------------------------------------------------------
def test_clone_and_pickle_round_trips(discretizer, msm, bayes_msm, features, dtrajs):
    for est in (discretizer, msm, bayes_msm):
        twin = clone(est)
        assert twin.get_params() == est.get_params()
        assert not hasattr(twin, "model_")
    km = pickle.loads(pickle.dumps(discretizer))
    np.testing.assert_array_equal(km.transform(features[3]), dtrajs[3])
    for est in (msm, bayes_msm):
        again = pickle.loads(pickle.dumps(est))
        np.testing.assert_array_equal(again.timescales_, est.timescales_)
        assert again.score(dtrajs[1:]) == est.score(dtrajs[1:])
    pipe = _pipelines()["deeptime"].set_params(cluster__n_clusters=10).fit(features[:2])
    again = pickle.loads(pickle.dumps(pipe))
    assert msm_vamp2_scorer()(again, features[2:]) == msm_vamp2_scorer()(pipe, features[2:])
    # refitting forgets the previous fit
    refit = clone(msm).fit(dtrajs[:1])
    refit.fit(dtrajs)
    np.testing.assert_allclose(refit.timescales_, msm.timescales_)


# ----------------------------------------------------------------------------
# Every promised error of MSMEstimator
# ----------------------------------------------------------------------------
def test_msm_lag_errors_and_warnings(dtrajs):
    with pytest.raises(ValueError, match=r"lagtime=10 frames is not shorter than any trajectory.*"
                                         r"lengths: 4, 10 frames"):
        MSMEstimator(lagtime=10).fit([dtrajs[0][:4], dtrajs[1][:10]])
    with pytest.warns(UserWarning, match=r"skips 2 trajectories.*1 \(3 frames\), 2 \(5 frames\)"):
        fitted = MSMEstimator(lagtime=LAG).fit([dtrajs[0], dtrajs[1][:3], dtrajs[2][:5]])
    reference = MSMEstimator(lagtime=LAG).fit(dtrajs[:1])
    np.testing.assert_allclose(fitted.timescales_, reference.timescales_)
    with pytest.raises(ValueError, match="lagtime=1000 frames is not shorter than any trajectory"):
        MSMEstimator(lagtime=LAG).implied_timescales(dtrajs[:1][0][:900], [1, 1000])


@pytest.mark.filterwarnings("ignore:Using eigenvalues with non-zero imaginary part")
def test_msm_errors(msm, dtrajs):
    with pytest.raises(InvalidParameterError,
                       match=r"The 'lagtime' parameter of MSMEstimator must be an int in the range "
                             r"\[1, inf\). Got 0 instead."):
        MSMEstimator(lagtime=0).fit(dtrajs)
    with pytest.raises(ValueError, match="bayesian=True .* count_mode='sliding'"):
        MSMEstimator(LAG, bayesian=True, count_mode="sliding").fit(dtrajs)
    with pytest.raises(TypeError, match=r"dtrajs\[0\] has dtype float64"):
        MSMEstimator(LAG).fit([dtrajs[0].astype(float)])
    with pytest.raises(ValueError, match=r"dtrajs\[1\] has the negative state -1 at frame 3"):
        MSMEstimator(LAG).fit([dtrajs[0], np.array([0, 1, 2, -1, 2, 1, 0, 0])])
    with pytest.raises(ValueError, match=r"dtrajs\[0\] has shape \(5000, 1\)"):
        MSMEstimator(LAG).fit([dtrajs[0][:, None]])
    with pytest.raises(NotFittedError):
        MSMEstimator(LAG).score(dtrajs)
    with pytest.raises(NotFittedError):
        MSMEstimator(LAG).ck_test(dtrajs)
    with pytest.raises(ValueError, match=r"n_sets must be an integer between 2 and the 50 states"):
        msm.ck_test(dtrajs, n_sets=51)
    with pytest.raises(ValueError, match="lagtime_multiples must be a non-empty list of positive"):
        msm.ck_test(dtrajs, lagtime_multiples=[0, 1])
    with pytest.raises(ValueError, match="lagtimes must be a non-empty list of positive integers"):
        msm.implied_timescales(dtrajs, [])
    nonrev = MSMEstimator(LAG, reversible=False).fit(dtrajs)
    with pytest.raises(ValueError, match="reversible MSMs only; fit with reversible=True"):
        nonrev.ck_test(dtrajs)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        msm.timescales(0)


# ----------------------------------------------------------------------------
# One long trajectory: chunks and ContiguousSplit
# ----------------------------------------------------------------------------
def test_split_trajectory(features, ala2_trajs):
    x = features[0]
    chunks = split_trajectory(x, 3)
    assert [len(c) for c in chunks] == [1667, 1667, 1666]
    np.testing.assert_array_equal(np.concatenate(chunks), x)
    traj_chunks = split_trajectory(ala2_trajs[0], 4)
    assert [t.n_frames for t in traj_chunks] == [1250] * 4
    np.testing.assert_allclose(traj_chunks[1].xyz[0], ala2_trajs[0].xyz[1250])
    with pytest.raises(ValueError, match="trajectory of 5000 frames into n_chunks=5001"):
        split_trajectory(x, 5001)
    with pytest.raises(TypeError, match="cuts ONE trajectory; got a list"):
        split_trajectory(features, 2)
    with pytest.raises(InvalidParameterError, match="The 'n_chunks' parameter"):
        split_trajectory(x, 0)


def test_contiguous_split_is_kfold_over_chunks(features):
    chunks = split_trajectory(np.concatenate(features), 10)
    cv = ContiguousSplit(n_splits=5)
    assert cv.get_n_splits(chunks) == 5
    folds = list(cv.split(chunks))
    for (train, test), (k_train, k_test) in zip(folds, KFold(5).split(chunks)):
        np.testing.assert_array_equal(train, k_train)
        np.testing.assert_array_equal(test, k_test)
        assert np.all(np.diff(test) == 1)  # a contiguous block of chunks
    np.testing.assert_array_equal(np.concatenate([t for _, t in folds]), np.arange(10))
    # why chunk first: KFold on the frames glues training rows across the held-out block
    frames = np.concatenate(features)
    train, _ = list(KFold(5).split(frames[:1000]))[1]
    assert np.diff(train).max() > 1  # a false lagged pair spans the seam
    with pytest.raises(ValueError, match=r"needs at least 5 chunks, but got 3"):
        list(cv.split(chunks[:3]))
    with pytest.raises(InvalidParameterError, match="The 'n_splits' parameter of ContiguousSplit"):
        list(ContiguousSplit(n_splits=1).split(chunks))


def test_contiguous_split_cross_validates_a_pipeline(features):
    chunks = split_trajectory(np.concatenate(features[:2]), 4)
    pipe = Pipeline([("cluster", KMeansDiscretizer(20, random_state=0)),
                     ("msm", MSMEstimator(lagtime=LAG))])
    scores = cross_val_score(pipe, chunks, cv=ContiguousSplit(n_splits=2), error_score="raise")
    assert scores.shape == (2,) and np.all(np.isfinite(scores)) and np.all(scores >= 1 - 1e-8)


def test_score_of_a_one_state_model_is_one():
    """A one-way transition path can leave a single connected state: VAMP-2 is 1, no crash."""
    from g2v_sklearn import MSMEstimator, msm_vamp2_scorer

    msm = MSMEstimator(lagtime=1).fit([np.zeros(20, dtype=int)])
    assert msm.n_states_ == 1
    assert msm.score([np.zeros(10, dtype=int)]) == 1.0
    assert msm_vamp2_scorer(score_k=2)(msm, [np.zeros(10, dtype=int)]) == 1.0


def test_a_deeptime_without_the_seeded_sampler_breaks_bayesian_fits_only(dtrajs, monkeypatch):
    # The sampler is deeptime's private module, imported in _compat only when needed.
    private = "deeptime.markov.tools.estimation.dense.tmat_sampling.tmatrix_sampler"
    monkeypatch.setitem(sys.modules, private, None)  # what a deeptime that moved it looks like
    with pytest.raises(ImportError, match="moved its transition-matrix sampler, which Bayesian"):
        MSMEstimator(lagtime=LAG, bayesian=True, n_samples=2, random_state=0).fit(dtrajs)
    assert MSMEstimator(lagtime=LAG).fit(dtrajs).timescales_[0] > 0  # the rest still works


def test_auto_clusters_scale_with_the_features_not_the_rare_basin(rng):
    """n_clusters="auto": five centres per feature and one more set, at most 100 and the frames."""
    two = [rng.normal(size=(400, 2)), rng.normal(size=(300, 2))]
    km = KMeansDiscretizer(random_state=0).fit(two)
    assert km.n_clusters_ == 15 and km.cluster_centers_.shape == (15, 2)
    assert KMeansDiscretizer(random_state=0).fit([rng.normal(size=(40, 30))]).n_clusters_ == 40
    assert KMeansDiscretizer(random_state=0).fit([rng.normal(size=(500, 30))]).n_clusters_ == 100
    assert KMeansDiscretizer(7, random_state=0).fit(two).n_clusters_ == 7
    with pytest.raises(ValueError, match="'n_clusters' parameter .* among {'auto'}"):
        KMeansDiscretizer("many").fit(two)
