"""The paper's pipeline end to end on real molecules."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from g2v_sklearn import (
    GeomEmbedder,
    KMeansDiscretizer,
    MSMEstimator,
    TokenMerger,
    VAMPNetEstimator,
)

LAG = 5  # frames of 20 ps: 100 ps, well below the slow process's few nanoseconds


@pytest.fixture(scope="module")
def dihedral_msm_timescale(dihedral_features):
    """Slowest implied timescale (frames) of a Bayesian MSM on (cos, sin) of (phi, psi), and
    the upper end of its 95% interval."""
    # 100 clusters: with 50, k-means may split the rare alpha_L basin badly for some seeds
    # (1.6 ns instead of 2.6 ns); from 100 on the timescale is stable across seeds.
    reference = Pipeline([
        ("cluster", KMeansDiscretizer(100, random_state=0)),
        ("msm", MSMEstimator(lagtime=LAG, bayesian=True, n_samples=100, random_state=0)),
    ]).fit(dihedral_features)
    stats = reference[-1].posterior_.gather_stats("timescales", k=1, confidence=0.95)
    return reference[-1].timescales(1)[0], float(np.ravel(stats.R)[0])


@pytest.mark.parametrize("seed", [0, 1, 2])  # seeds 3 and 4 pass too (checked), at ~9 s each
def test_alanine_dipeptide_vampnet_msm_matches_dihedral_msm(
        visnet_checkpoint, ala2_trajs, ala2_tokens, token_cache, dihedral_msm_timescale, seed):
    pipe = Pipeline([
        ("embed", GeomEmbedder(visnet_checkpoint, memory=token_cache, progress=False)),
        # three residues: no graph convolution over a three-node graph (as in the example's VAMPNet pipeline)
        ("merge", TokenMerger(window=1, operator="none")),
        ("vamp", VAMPNetEstimator(lagtime=LAG, n_components=2, d_model=32, n_heads=2, n_layers=1,
                                  batch_size=1000, lr=1e-3, max_epochs=5, validation_fraction=0,
                                  progress=False, random_state=seed)),
        ("cluster", KMeansDiscretizer(100, random_state=0)),
        ("msm", MSMEstimator(lagtime=LAG)),
    ]).fit(ala2_trajs)
    ours = pipe[-1].timescales_[0]
    ref, ref_high = dihedral_msm_timescale
    print(f"slowest implied timescale: ours {ours * 20:.0f} ps, dihedral MSM {ref * 20:.0f} ps "
          f"(95% up to {ref_high * 20:.0f} ps)")
    assert ref * 20 > 1000  # the alpha_L exchange: nanoseconds
    # issue 10's bound, as in benchmarks/bench_seeds.py: a learned coordinate may resolve the
    # slow process better than (phi, psi) (a longer timescale, by the variational principle),
    # but not beyond what the reference's own uncertainty allows
    assert 0.85 * ref <= ours <= ref_high
    # the learner's own timescale in time units, from the token timestep
    assert pipe["vamp"].timescales(unit="time")[0] == pytest.approx(pipe["vamp"].timescales_[0] * 20)


def test_grid_search_over_window_on_adenylate_kinase(visnet_checkpoint, adk_paths_short, token_cache):
    seen = []

    def scorer(estimator, X, y=None):
        vamp = estimator[-1]
        window = estimator["merge"].window
        seen.append((window, vamp.module_.merger.spec.n_fragments))
        return estimator.score(X)

    pipe = Pipeline([
        ("embed", GeomEmbedder(visnet_checkpoint, memory=token_cache, progress=False)),
        ("merge", TokenMerger(window=1)),
        ("vamp", VAMPNetEstimator(lagtime=1, n_components=1, d_model=16, n_heads=2, n_layers=1,
                                  batch_size=8, max_epochs=2, validation_fraction=0,
                                  progress=False, random_state=0)),
    ])
    search = GridSearchCV(pipe, {"merge__window": [1, 2, 4]}, cv=2, scoring=scorer,
                          error_score="raise").fit(adk_paths_short)
    scores = search.cv_results_["mean_test_score"]
    assert np.all(np.isfinite(scores)) and len(scores) == 3
    assert sorted(set(seen)) == [(w, math.ceil(214 / w)) for w in (1, 2, 4)]
    best = search.best_estimator_
    assert best["vamp"].module_.merger.spec.n_fragments == math.ceil(214 / best["merge"].window)
    # fresh merger per candidate and fold: the pipeline's own step was never fitted by the search
    assert not hasattr(pipe["merge"], "spec_")


@pytest.mark.parametrize("seed", [0, 1])
def test_defaults_do_not_collapse_at_a_large_learning_rate(visnet_checkpoint, token_cache, seed, fixed_threads):
    """The shipped data, the library's defaults, lr 5e-3 (the grid's larger rate): no collapse.

    The thread count stays fixed (another count rounds differently and sends training down
    another path: which path is the machine's load, not the code)."""
    import warnings

    from g2v_sklearn import TrainingWarning
    from g2v_sklearn.datasets import load_alanine_dipeptide

    data = load_alanine_dipeptide(stride=10)  # 4 x 1,000 frames, 100 ps apart
    tokens = GeomEmbedder(visnet_checkpoint, memory=token_cache, progress=False).fit_transform(data.trajectories)
    merged = TokenMerger(window=1).fit_transform(tokens)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingWarning)  # a collapse fails the test
        est = VAMPNetEstimator(lagtime=1, lr=5e-3, max_epochs=5, progress=False, random_state=seed).fit(merged)
    h = est.history_
    assert h["collapsed_epoch"] is None
    assert h["best_score"] > 1.3 and est.score(merged) > 1.5  # well above the constant function's 1
