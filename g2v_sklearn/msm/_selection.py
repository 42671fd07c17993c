"""Model selection over whole pipelines: a VAMP-2 scorer and contiguous splits.

A pipeline ending in an MSM is scored by the VAMP-2 score of its MSM on
held-out discrete trajectories (:func:`msm_vamp2_scorer`, which also scores
pipelines ending in a deeptime estimator); a single long trajectory is cut
into contiguous chunks first (:func:`split_trajectory`,
:class:`ContiguousSplit`), so that scikit-learn's splitters hand whole
chunks to the folds and no lagged pair crosses from training to test.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
from deeptime.markov.msm import MarkovStateModel
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import BaseCrossValidator
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from .._compat import Interval, validate_parameter_constraints, validate_params
from ._estimator import MSMEstimator, _vamp2_score

__all__ = ["ContiguousSplit", "msm_vamp2_scorer", "split_trajectory"]


def _fitted_msm(step, caller: str):
    """The MarkovStateModel of a fitted MSMEstimator or deeptime MSM estimator."""
    if isinstance(step, MSMEstimator):
        check_is_fitted(step, "model_")
        return step.model_
    if not hasattr(step, "fetch_model"):
        raise TypeError(
            f"{caller} scores an MSMEstimator or a deeptime MSM estimator (MaximumLikelihoodMSM, "
            f"BayesianMSM), alone or as the last step of a Pipeline; got "
            f"{type(step).__name__}."
        )
    model = step.fetch_model()
    if model is None:
        raise NotFittedError(f"This {type(step).__name__} has not been fitted yet.")
    if not isinstance(model, MarkovStateModel) and hasattr(model, "prior"):
        model = model.prior  # a Bayesian posterior: score its maximum-likelihood prior
    if not isinstance(model, MarkovStateModel):
        raise TypeError(
            f"The fitted {type(step).__name__} holds a {type(model).__name__}, not a Markov state "
            f"model; {caller} scores MSMEstimator, MaximumLikelihoodMSM or BayesianMSM."
        )
    if not model.has_count_model:
        raise ValueError(
            f"The {type(step).__name__}'s MSM has no count model, which VAMP-2 scoring needs; "
            f"fit it on discrete trajectories or a TransitionCountModel."
        )
    return model


class _MSMVAMP2Scorer:
    """Callable ``scorer(estimator, X, y=None)``; see :func:`msm_vamp2_scorer`."""

    def __init__(self, score_k: int):
        self.score_k = score_k

    def __repr__(self) -> str:
        return f"msm_vamp2_scorer(score_k={self.score_k})"

    def __call__(self, estimator, X, y=None) -> float:
        caller = "msm_vamp2_scorer"
        if isinstance(estimator, Pipeline):
            final = estimator.steps[-1][1]
            dtrajs = estimator[:-1].transform(X) if len(estimator.steps) > 1 else X
        else:
            final, dtrajs = estimator, X
        msm = _fitted_msm(final, caller)
        return _vamp2_score(msm, dtrajs, self.score_k, caller)


@validate_params(
    {"score_k": [Interval(Integral, 1, None, closed="left")]},
    prefer_skip_nested_validation=True,
)
def msm_vamp2_scorer(score_k: int = 5) -> _MSMVAMP2Scorer:
    """A VAMP-2 scorer for pipelines that end in an MSM, for ``GridSearchCV``.

    The returned ``scorer(estimator, X, y=None)`` sends the held-out
    trajectories ``X`` through every step but the last
    (``estimator[:-1].transform(X)``), takes the fitted MSM of the last step
    (an :class:`MSMEstimator`, or a bare deeptime
    :class:`~deeptime.markov.msm.MaximumLikelihoodMSM` or
    :class:`~deeptime.markov.msm.BayesianMSM` through ``fetch_model()``, which
    have no ``score`` of their own), and returns its VAMP-2 score on the
    discrete trajectories with ``score_k`` singular values, exactly as
    :meth:`MSMEstimator.score` does (same handling of unseen states), with the
    scorer's ``score_k`` whatever the estimator's.

    Parameters
    ----------
    score_k : int, default=5
        Singular values (the constant one included) in the score.

    Returns
    -------
    scorer : callable
        ``scorer(estimator, X, y=None) -> float``; picklable.

    See Also
    --------
    MSMEstimator.score : The score itself.

    Notes
    -----
    A deeptime ``MaximumLikelihoodMSM`` fits on the list of discrete
    trajectories its Pipeline hands it only when constructed with a
    ``lagtime``; ``BayesianMSM`` is scored through its maximum-likelihood
    prior.

    Examples
    --------
    Choose the number of k-means clusters of a pipeline that ends in a bare
    deeptime MSM, with whole trajectories as folds:

    >>> import numpy as np
    >>> from deeptime.markov.msm import MaximumLikelihoodMSM
    >>> from sklearn.model_selection import GridSearchCV
    >>> from sklearn.pipeline import Pipeline
    >>> from g2v_sklearn import KMeansDiscretizer, msm_vamp2_scorer
    >>> rng = np.random.default_rng(0)
    >>> trajectories = [np.cumsum(rng.normal(size=(1000, 2)), axis=0) * 0.1 for _ in range(4)]
    >>> pipe = Pipeline([("cluster", KMeansDiscretizer(random_state=0)),
    ...                  ("msm", MaximumLikelihoodMSM(lagtime=10))])
    >>> search = GridSearchCV(pipe, {"cluster__n_clusters": [10, 30]}, cv=2,
    ...                       scoring=msm_vamp2_scorer(score_k=5)).fit(trajectories)
    >>> search.best_params_
    {'cluster__n_clusters': 30}
    >>> bool(1.0 <= search.best_score_ <= 5.0)
    True
    """
    return _MSMVAMP2Scorer(int(score_k))


# ----------------------------------------------------------------------------
# One long trajectory: contiguous chunks and a splitter over them
# ----------------------------------------------------------------------------
@validate_params(
    {"n_chunks": [Interval(Integral, 1, None, closed="left")]},
    prefer_skip_nested_validation=True,
)
def split_trajectory(traj_or_array, n_chunks: int) -> list:
    """Cut one trajectory into ``n_chunks`` contiguous pieces of (nearly) equal length.

    Give the list of chunks, not the trajectory, to cross-validation
    (with :class:`ContiguousSplit`): each chunk is then a trajectory of its
    own, so no lagged pair is formed across a fold boundary.

    Parameters
    ----------
    traj_or_array : ndarray, mdtraj.Trajectory, TokenTrajectory or any sliceable sequence
        One trajectory, frames along the first axis.
    n_chunks : int
        Number of chunks; the first ``n_frames % n_chunks`` chunks are one
        frame longer than the others.

    Returns
    -------
    chunks : list
        ``n_chunks`` consecutive slices (views for arrays), in time order.

    See Also
    --------
    ContiguousSplit : Cross-validation over the chunks.

    Examples
    --------
    >>> import numpy as np
    >>> from g2v_sklearn import split_trajectory
    >>> [c.shape for c in split_trajectory(np.zeros((10, 2)), 3)]
    [(4, 2), (3, 2), (3, 2)]
    """
    if isinstance(traj_or_array, (list, tuple)):
        raise TypeError(
            "split_trajectory cuts ONE trajectory; got a list (already one item per "
            "trajectory). Cut each trajectory separately if you need to."
        )
    try:
        n_frames = len(traj_or_array)
    except TypeError:
        raise TypeError(
            f"split_trajectory needs a trajectory with frames along its first axis; got "
            f"{type(traj_or_array).__name__}."
        ) from None
    if n_chunks > n_frames:
        raise ValueError(
            f"Cannot cut a trajectory of {n_frames} frames into n_chunks={n_chunks} chunks; "
            f"use at most {n_frames}."
        )
    size, longer = divmod(n_frames, n_chunks)
    bounds = np.cumsum([0] + [size + 1] * longer + [size] * (n_chunks - longer))
    return [traj_or_array[int(a):int(b)] for a, b in zip(bounds[:-1], bounds[1:])]


class ContiguousSplit(BaseCrossValidator):
    """K-fold cross-validation over the chunks of one long trajectory, in time order.

    For a single long trajectory cut into chunks with
    :func:`split_trajectory`: fold ``i`` tests on the ``i``-th contiguous
    block of chunks and trains on all the others. Every chunk reaches the
    estimators as a trajectory of its own, so lagged pairs never span two
    chunks.

    Why not scikit-learn's ``KFold`` on the trajectory itself? Given a single
    2-D array of frames, ``KFold`` splits frames, and the training rows on
    either side of a test block are glued back together into one array: the
    estimator then counts false lagged pairs (x_t, x_{t+lag}) across the
    seam, which jump over the held-out stretch. Cut into chunks first; this
    splitter is then ``KFold(n_splits, shuffle=False)`` over the list of
    chunks, made explicit. Never shuffle: neighbouring chunks are correlated
    in time, so contiguous test blocks keep training and test data apart as
    far as possible.

    Parameters
    ----------
    n_splits : int, default=5
        Number of folds, at least 2 and at most the number of chunks.

    See Also
    --------
    split_trajectory : Cuts one trajectory into chunks.
    sklearn.model_selection.KFold : The same folds, for lists of trajectories.

    Examples
    --------
    >>> import numpy as np
    >>> from g2v_sklearn import ContiguousSplit, split_trajectory
    >>> chunks = split_trajectory(np.zeros((100, 2)), 6)
    >>> [test.tolist() for _, test in ContiguousSplit(n_splits=3).split(chunks)]
    [[0, 1], [2, 3], [4, 5]]
    """

    _parameter_constraints: dict = {
        "n_splits": [Interval(Integral, 2, None, closed="left")],
    }

    def __init__(self, n_splits=5):
        self.n_splits = n_splits

    def get_n_splits(self, X=None, y=None, groups=None) -> int:
        """Number of folds.

        Parameters
        ----------
        X, y, groups : object
            Ignored.

        Returns
        -------
        n_splits : int
        """
        return int(self.n_splits)

    def split(self, X, y=None, groups=None):
        """Indices of the training and test chunks of each fold.

        Parameters
        ----------
        X : list of chunks
            The chunks of one trajectory, in time order (see
            :func:`split_trajectory`).
        y, groups : None
            Ignored.

        Yields
        ------
        train : ndarray of int
            Indices of the training chunks.
        test : ndarray of int
            Indices of the test chunks, a contiguous block.
        """
        validate_parameter_constraints(
            self._parameter_constraints, {"n_splits": self.n_splits},
            caller_name=type(self).__name__,
        )
        n_chunks = len(X)
        if self.n_splits > n_chunks:
            raise ValueError(
                f"ContiguousSplit(n_splits={self.n_splits}) needs at least {self.n_splits} "
                f"chunks, but got {n_chunks}; cut the trajectory into more chunks with "
                f"split_trajectory."
            )
        yield from super().split(X, y, groups)

    def _iter_test_indices(self, X=None, y=None, groups=None):
        yield from np.array_split(np.arange(len(X)), int(self.n_splits))
