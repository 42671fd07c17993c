"""scikit-learn's estimator checks over every estimator, with a written reason per expected failure."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.utils.estimator_checks import (
    check_get_params_invariance,
    check_no_attributes_set_in_init,
    check_parameters_default_constructible,
    check_set_params,
    parametrize_with_checks,
)

from g2v_sklearn import (
    GeomEmbedder,
    KMeansDiscretizer,
    MSMEstimator,
    SPIBEstimator,
    TokenMerger,
    VAMPNetEstimator,
)

SAMPLE_WEIGHT_REASON = (
    "X is a time series: duplicating a row inserts a frame and changes the time-lagged "
    "pairs, so weighting a frame is not equivalent to repeating it."
)

# Estimators that take 2-D arrays (the learners' feature mode, the discretiser).
ARRAY_ESTIMATORS = [
    VAMPNetEstimator(max_epochs=2, hidden_layer_sizes=(8,), batch_size=32, progress=False,
                     random_state=0),
    SPIBEstimator(max_epochs=2, hidden_layer_sizes=(8,), batch_size=32, progress=False,
                  random_state=0),
    KMeansDiscretizer(n_clusters=3, random_state=0),
]


def expected_failures(estimator):
    failures = {}
    if isinstance(estimator, (VAMPNetEstimator, SPIBEstimator)):
        failures["check_sample_weight_equivalence_on_dense_data"] = SAMPLE_WEIGHT_REASON
    if isinstance(estimator, KMeansDiscretizer):
        failures["check_transformer_data_not_an_array"] = (
            "A list of arrays is a list of trajectories (the package's convention), so an "
            "array-like that is not an ndarray is read as trajectories, not as rows."
        )
    return failures


@parametrize_with_checks(ARRAY_ESTIMATORS, expected_failed_checks=expected_failures)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)


# Estimators whose X is a list of trajectories or token trajectories: the API-level checks.
ALL_ESTIMATORS = [GeomEmbedder(), TokenMerger(), MSMEstimator(), *ARRAY_ESTIMATORS]


@pytest.mark.parametrize("estimator", ALL_ESTIMATORS, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("check", [check_parameters_default_constructible,
                                   check_no_attributes_set_in_init,
                                   check_get_params_invariance, check_set_params],
                         ids=lambda c: c.__name__)
def test_api_checks(estimator, check):
    check(type(estimator).__name__, estimator)


@pytest.mark.parametrize("estimator", ALL_ESTIMATORS, ids=lambda e: type(e).__name__)
def test_clone_and_pickle_unfitted(estimator):
    cloned = clone(estimator)
    assert cloned.get_params() == estimator.get_params()
    assert pickle.loads(pickle.dumps(estimator)).get_params().keys() == estimator.get_params().keys()


def test_pickles_carry_the_package_version_and_another_version_warns():
    import warnings

    import g2v_sklearn
    from g2v_sklearn import GeomEmbedder, KMeansDiscretizer, MSMEstimator, TokenMerger, VAMPNetEstimator, VersionWarning

    x = np.cumsum(np.random.default_rng(0).normal(size=(300, 3)), axis=0) * 0.01
    fitted = VAMPNetEstimator(lagtime=5, max_epochs=1, progress=False, random_state=0).fit(x)
    for est in (fitted, GeomEmbedder(), TokenMerger(), KMeansDiscretizer(), MSMEstimator()):
        assert est.__getstate__()["_g2v_sklearn_version"] == g2v_sklearn.__version__
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same version: silent
        again = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(again.transform(x), fitted.transform(x))
    assert next(again.module_.parameters()).device.type == "cpu"
    state = fitted.__getstate__()
    state["_g2v_sklearn_version"] = "0.0.1"  # what a pickle made by another version holds
    other = VAMPNetEstimator.__new__(VAMPNetEstimator)
    with pytest.warns(VersionWarning, match=r"This VAMPNetEstimator was pickled by g2v_sklearn "
                                            r"0.0.1 and is unpickled by g2v_sklearn "
                                            r"0.1.0.dev0.*Refit it"):
        other.__setstate__(state)
    state = fitted.__getstate__()
    del state["_g2v_sklearn_version"]  # a pickle from before versions were recorded
    old = VAMPNetEstimator.__new__(VAMPNetEstimator)
    with pytest.warns(VersionWarning, match="pickled by g2v_sklearn before 0.1.0.dev0"):
        old.__setstate__(state)
