"""The MSM end of the pipeline: thin scikit-learn adapters over deeptime.

Slow coordinates (or any per-trajectory features) are discretised with
deeptime's k-means (:class:`KMeansDiscretizer`), and the discrete
trajectories are turned into a Markov state model with deeptime's
estimators (:class:`MSMEstimator`). Model selection over the whole pipeline
uses a VAMP-2 score on held-out discrete trajectories
(:meth:`MSMEstimator.score`, :func:`msm_vamp2_scorer`); a single long
trajectory is cut into contiguous chunks first (:func:`split_trajectory`,
:class:`ContiguousSplit`).

As everywhere in the package, X is a list of per-trajectory arrays: each
trajectory is one sample, so scikit-learn's splitters hand whole
trajectories to the training and test folds and no lagged pair crosses from
one trajectory into another.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from numbers import Integral, Real

import numpy as np
from deeptime.clustering import KMeans, MiniBatchKMeans, kmeans_plusplus
from deeptime.markov import BayesianMSMPosterior, TransitionCountEstimator
from deeptime.markov.msm import MarkovStateModel, MaximumLikelihoodMSM
from deeptime.util.validation import implied_timescales as _implied_timescales
from joblib import effective_n_jobs
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import BaseCrossValidator
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from .._compat import Interval, StrOptions, validate_parameter_constraints, validate_params
from .._utils import PickleVersionMixin, check_generator
from .._validation import check_dtrajs, check_feature_trajs, long_enough, require_nonnegative

__all__ = [
    "ContiguousSplit",
    "KMeansDiscretizer",
    "MSMEstimator",
    "msm_vamp2_scorer",
    "split_trajectory",
]

# deeptime's k-means takes seeds in [0, 2**32 - 1]; its transition-matrix
# samplers take a C++ int.
_MAX_KMEANS_SEED = 2**32 - 1
_MAX_SAMPLER_SEED = 2**31 - 1
# How many trajectories an error or warning lists before it says "...".


# ----------------------------------------------------------------------------
# Input checking: lists of trajectories
# ----------------------------------------------------------------------------
# ----------------------------------------------------------------------------
# KMeansDiscretizer
# ----------------------------------------------------------------------------
class KMeansDiscretizer(PickleVersionMixin, TransformerMixin, BaseEstimator):
    """Discretise feature trajectories with deeptime's k-means.

    The frames of all trajectories are clustered together with
    :class:`deeptime.clustering.KMeans` (Lloyd iterations from a k-means++
    start) or :class:`deeptime.clustering.MiniBatchKMeans`; ``transform``
    assigns each frame to its nearest centre, giving one discrete trajectory
    per input trajectory.

    Parameters
    ----------
    n_clusters : int, default=100
        Number of cluster centres (Markov states before connectivity).
    method : {"kmeans", "minibatch"}, default="kmeans"
        ``"kmeans"``: deeptime's ``KMeans`` on all frames.
        ``"minibatch"``: deeptime's ``MiniBatchKMeans`` updates on random
        batches of ``batch_size`` frames.
    max_iter : int, default=None
        ``"kmeans"``: the most Lloyd iterations; ``"minibatch"``: the most
        passes over the data. ``None`` means deeptime's defaults, 500 and 5.
    tol : float, default=1e-5
        Stop when the relative change of the inertia falls below this.
    batch_size : int, default=1000
        Frames per mini-batch (``method="minibatch"`` only).
    random_state : int, numpy.random.Generator or None, default=None
        Seeds the k-means++ initialisation (deeptime's ``fixed_seed``) and the
        mini-batch order, through a local generator.
    n_jobs : int, default=None
        Threads of deeptime's clustering and assignment; ``None`` is 1, ``-1``
        all cores.

    Attributes
    ----------
    model_ : deeptime.clustering.KMeansModel
        The fitted deeptime model.
    cluster_centers_ : ndarray of shape (n_clusters, n_features)
        The cluster centres.
    inertia_ : float
        Sum of squared distances of the frames to their centres.
    converged_ : bool
        Whether the tolerance was reached within ``max_iter``.
    n_iter_ : int
        Lloyd iterations (``"kmeans"``) or passes over the data
        (``"minibatch"``) run.
    n_features_in_ : int
        Number of features seen in ``fit``.

    See Also
    --------
    MSMEstimator : Estimates a Markov state model on the discrete trajectories.
    deeptime.clustering.KMeans, deeptime.clustering.MiniBatchKMeans

    Notes
    -----
    Bit-for-bit reproducibility with a fixed ``random_state`` needs
    ``n_jobs=1``: deeptime's multithreaded k-means++ and Lloyd steps sum in a
    non-deterministic order, so ``n_jobs > 1`` gives slightly different
    centres from run to run. deeptime's ``KMeans`` has no ``n_init``: one
    k-means++ start is used.

    Examples
    --------
    >>> import numpy as np
    >>> from g2v_sklearn import KMeansDiscretizer
    >>> rng = np.random.default_rng(0)
    >>> X = [rng.normal(size=(500, 2)), rng.normal(size=(300, 2))]
    >>> km = KMeansDiscretizer(n_clusters=10, random_state=0).fit(X)
    >>> dtrajs = km.transform(X)
    >>> [d.shape for d in dtrajs], dtrajs[0].dtype
    ([(500,), (300,)], dtype('int32'))
    """

    _parameter_constraints: dict = {
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "method": [StrOptions({"kmeans", "minibatch"})],
        "max_iter": [Interval(Integral, 1, None, closed="left"), None],
        "tol": [Interval(Real, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state", np.random.Generator],
        "n_jobs": [Integral, None],
    }

    def __init__(
        self,
        n_clusters=100,
        *,
        method="kmeans",
        max_iter=None,
        tol=1e-5,
        batch_size=1000,
        random_state=None,
        n_jobs=None,
    ):
        self.n_clusters = n_clusters
        self.method = method
        self.max_iter = max_iter
        self.tol = tol
        self.batch_size = batch_size
        self.random_state = random_state
        self.n_jobs = n_jobs

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = []  # floats in, int32 states out
        tags.non_deterministic = self.n_jobs not in (None, 1)
        return tags

    def _n_threads(self) -> int:
        if self.n_jobs == 0:
            raise ValueError("n_jobs=0 is not a number of threads; use None (1), -1 (all) or k > 0.")
        return int(effective_n_jobs(self.n_jobs))

    def fit(self, X, y=None) -> KMeansDiscretizer:
        """Cluster the frames of all trajectories.

        Parameters
        ----------
        X : list of ndarray of shape (n_frames, n_features), or one such ndarray
            Feature trajectories (one array is one trajectory).
        y : None
            Ignored.

        Returns
        -------
        self : KMeansDiscretizer
        """
        validate_parameter_constraints(
            self._parameter_constraints, self.get_params(deep=False),
            caller_name=type(self).__name__,
        )
        trajs, _ = check_feature_trajs(X, f"{type(self).__name__}.fit")
        data = np.concatenate(trajs) if len(trajs) > 1 else trajs[0]
        if self.n_clusters > len(data):
            raise ValueError(
                f"n_clusters={self.n_clusters} is more than the {len(data)} frames given to "
                f"{type(self).__name__}.fit; use fewer clusters or more data."
            )
        n_threads = self._n_threads()
        rng = check_generator(self.random_state)
        seed = int(rng.integers(0, _MAX_KMEANS_SEED))
        if self.method == "kmeans":
            n_iter = None
            estimator = KMeans(
                int(self.n_clusters), max_iter=int(self.max_iter or 500), tolerance=float(self.tol),
                init_strategy="kmeans++", fixed_seed=seed, n_jobs=n_threads,
            )
            model = estimator.fit(data).fetch_model()
        else:
            model, n_iter = self._fit_minibatch(data, rng, seed, n_threads)

        self.model_ = model
        self.cluster_centers_ = np.asarray(model.cluster_centers)
        # deeptime's mini-batch inertia is that of the last batch; report all frames'.
        self.inertia_ = float(
            model.inertia if self.method == "kmeans" else model.score(data, n_jobs=n_threads)
        )
        self.converged_ = bool(model.converged)
        self.n_iter_ = int(len(model.inertias) if n_iter is None else n_iter)
        self.n_features_in_ = int(data.shape[1])
        return self

    def _fit_minibatch(self, data, rng, seed, n_threads):
        """deeptime's mini-batch updates, driven in batches drawn from our local generator.

        ``MiniBatchKMeans.fit`` shuffles with NumPy's global generator and
        cannot be seeded, so the epochs are run here: k-means++ centres from
        deeptime with our seed, then ``partial_fit`` on each batch of a local
        permutation, stopping once deeptime reports convergence.
        """
        centers = kmeans_plusplus(data, int(self.n_clusters), seed=seed, n_jobs=n_threads)
        estimator = MiniBatchKMeans(
            int(self.n_clusters), batch_size=int(self.batch_size), tolerance=float(self.tol),
            n_jobs=n_threads, initial_centers=centers,
        )
        n_batches = max(1, len(data) // int(self.batch_size))
        n_epochs, converged = 0, False
        while n_epochs < int(self.max_iter or 5) and not converged:
            n_epochs += 1
            for batch in np.array_split(rng.permutation(len(data)), n_batches):
                converged = estimator.partial_fit(data[np.sort(batch)]).fetch_model().converged
                if converged:
                    break
        return estimator.fetch_model(), n_epochs

    def transform(self, X) -> list[np.ndarray] | np.ndarray:
        """Assign each frame to its nearest cluster centre.

        Parameters
        ----------
        X : list of ndarray of shape (n_frames, n_features), or one such ndarray
            Feature trajectories.

        Returns
        -------
        dtrajs : list of ndarray of shape (n_frames,) and dtype int32, or one such ndarray
            Discrete trajectories, one per input trajectory (one array when
            ``X`` was one array).
        """
        check_is_fitted(self, "model_")
        trajs, single = check_feature_trajs(X, f"{type(self).__name__}.transform")
        if trajs[0].shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {trajs[0].shape[1]} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input."
            )
        n_threads = self._n_threads()
        dtype = self.cluster_centers_.dtype
        dtrajs = [
            np.asarray(self.model_.transform(t.astype(dtype, copy=False), n_jobs=n_threads),
                       dtype=np.int32)
            for t in trajs
        ]
        return dtrajs[0] if single else dtrajs


# ----------------------------------------------------------------------------
# MSM estimation (deeptime) and the robust VAMP-2 score
# ----------------------------------------------------------------------------
@contextmanager
def _numpy_global_seed(rng: np.random.Generator):
    """Seed NumPy's global generator from ``rng`` for the block, then restore it.

    For deeptime code that draws from ``np.random`` internally (the
    non-reversible transition-matrix sampler): what runs inside is
    reproducible, and the caller's global state is left as it was.
    """
    state = np.random.get_state()
    np.random.seed(int(rng.integers(0, 2**32 - 1)))
    try:
        yield
    finally:
        np.random.set_state(state)


def _sample_posterior(prior, n_samples: int, reversible: bool, rng: np.random.Generator):
    """deeptime's Bayesian MSM sampling around ``prior``, with a seed from ``rng``.

    The same sampler and settings as ``BayesianMSM.sample`` (which in
    deeptime 0.4.5 cannot be seeded): deeptime's transition-matrix sampler
    started at the maximum-likelihood matrix, sqrt(n_states) steps between
    samples.
    """
    # Not re-exported by deeptime (its public tmatrix_sampler takes no seed); imported
    # here so that a move in deeptime breaks Bayesian fits only.
    from deeptime.markov.tools.estimation.dense.tmat_sampling.tmatrix_sampler import (
        TransitionMatrixSampler,
    )

    counts = prior.count_model.count_matrix
    counts = counts.toarray() if hasattr(counts, "toarray") else np.asarray(counts)
    seed = int(rng.integers(0, _MAX_SAMPLER_SEED))
    with _numpy_global_seed(rng):  # the non-reversible sampler draws already when built
        sampler = TransitionMatrixSampler(
            counts, reversible=reversible, P0=prior.transition_matrix,
            n_steps=int(np.sqrt(prior.count_model.n_states_full)), seed=seed,
        )
        matrices, statdists = sampler.sample(nsamples=n_samples, return_statdist=True)
    if n_samples == 1:  # deeptime returns one (P, pi) pair, unstacked, for a single sample
        matrices, statdists = matrices[None], statdists[None]
    samples = [
        MarkovStateModel(P, stationary_distribution=pi, reversible=reversible,
                         count_model=prior.count_model,
                         transition_matrix_tolerance=prior.transition_matrix_tolerance)
        for P, pi in zip(matrices, statdists)
    ]
    return BayesianMSMPosterior(prior=prior, samples=samples)


def _active_set(msm) -> np.ndarray:
    return np.asarray(msm.count_model.state_symbols)


def _vamp2_score(msm, dtrajs, score_k: int, caller: str) -> float:
    """VAMP-2 of ``msm`` on held-out ``dtrajs`` with ``score_k`` singular values.

    deeptime's ``MarkovStateModel.score`` counts the test transitions over
    every state index it sees and keeps those between states of the model's
    active set. Before handing the data over, every frame outside the active
    set (a state the training data never visited, one cut off by the
    connectivity, or a negative "unassigned" index, on which deeptime's
    counting fails) is relabelled to one spare index just past the active
    set: its transitions are dropped exactly as deeptime drops unseen
    states, the test count matrix stays small however large the unseen
    indices, and nothing crashes.
    """
    dtrajs, _ = check_dtrajs(dtrajs, caller)
    lagtime = int(msm.lagtime)
    dtrajs = [dtrajs[i] for i in long_enough([len(d) for d in dtrajs], lagtime, caller)]
    active = _active_set(msm)
    spare = np.int32(active.max() + 1)
    mapped, n_pairs = [], 0
    for d in dtrajs:
        inside = np.isin(d, active)
        n_pairs += int(np.count_nonzero(inside[:-lagtime] & inside[lagtime:]))
        mapped.append(np.where(inside, d, spare).astype(np.int32, copy=False))
    if n_pairs == 0:
        warnings.warn(
            f"{caller}: no lagged pair of the test trajectories has both frames in the "
            f"{len(active)} states of the MSM's active set, so the test data say nothing about "
            f"the model; returning a VAMP-2 score of 0 (a score on any overlapping data is at "
            f"least 1).",
            UserWarning,
            stacklevel=3,
        )
        return 0.0
    if msm.n_states == 1:
        # Only the constant function: VAMP-2 is exactly 1 (deeptime fails on 0-d arrays here).
        return 1.0
    return float(msm.score(mapped, r="VAMP2", dim=int(score_k)))


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


def _check_lagtimes(lagtimes, name: str) -> list[int]:
    values = np.atleast_1d(np.asarray(lagtimes))
    if values.ndim != 1 or values.size == 0 or values.dtype.kind not in "iu" or values.min() < 1:
        raise ValueError(f"{name} must be a non-empty list of positive integers; got {lagtimes!r}.")
    return [int(v) for v in values]


class MSMEstimator(PickleVersionMixin, BaseEstimator):
    """Markov state model of discrete trajectories, estimated with deeptime.

    Transitions are counted at ``lagtime`` with
    :class:`deeptime.markov.TransitionCountEstimator`, restricted to the
    largest connected set of states, and turned into a transition matrix by
    :class:`deeptime.markov.msm.MaximumLikelihoodMSM` (``bayesian=False``),
    or into a maximum-likelihood prior plus posterior samples of deeptime's
    Bayesian MSM (``bayesian=True``). ``score`` is a cross-validation VAMP-2
    score, so the discretisation upstream can be chosen by ``GridSearchCV``
    at a fixed lag time.

    Parameters
    ----------
    lagtime : int, default=1
        Lag time in frames.
    reversible : bool, default=True
        Estimate a reversible (detailed-balance) transition matrix.
    bayesian : bool, default=False
        Also sample the posterior of transition matrices (deeptime's
        ``BayesianMSM``) for error bars; ``model_`` is then the
        maximum-likelihood prior.
    n_samples : int, default=100
        Posterior samples (``bayesian=True`` only).
    count_mode : {"sliding", "sample", "effective", "sliding-effective"}, default=None
        How transitions are counted (see
        :class:`deeptime.markov.TransitionCountEstimator`). ``None`` means
        ``"sliding"``, or ``"effective"`` when ``bayesian=True``, whose
        posterior needs statistically uncorrelated counts.
    score_k : int, default=5
        Singular values (the constant one included) in the VAMP-2 score, so
        that models with different numbers of states are compared fairly.
    random_state : int, numpy.random.Generator or None, default=None
        Seeds the posterior sampling (``bayesian=True``) through a local
        generator; the maximum-likelihood estimate is deterministic.

    Attributes
    ----------
    model_ : deeptime.markov.msm.MarkovStateModel
        The maximum-likelihood MSM on the largest connected set (the
        posterior's prior when ``bayesian=True``), with its count model.
    posterior_ : deeptime.markov.msm.BayesianMSMPosterior or None
        Prior and sampled MSMs (``bayesian=True``), else None.
    timescales_ : ndarray of shape (n_states - 1,)
        Implied timescales of ``model_`` in frames, slowest first.
    n_states_ : int
        States in the largest connected set.
    active_set_ : ndarray of shape (n_states,)
        Their indices in the input trajectories.
    lagtime_ : int
        The lag time, in frames.

    See Also
    --------
    KMeansDiscretizer : Makes discrete trajectories from features.
    msm_vamp2_scorer : The same score for pipelines ending in a deeptime estimator.
    deeptime.markov.msm.MaximumLikelihoodMSM, deeptime.markov.msm.BayesianMSM

    Notes
    -----
    The implied timescales are :math:`t_i = -\\tau / \\ln |\\lambda_i|` for
    the eigenvalues :math:`\\lambda_i` of the transition matrix at lag
    :math:`\\tau`. The VAMP-2 score of held-out data is

    .. math::

        \\left\\| (U^\\top C_{00} U)^{-1/2}\\, U^\\top C_{0\\tau} V\\,
        (V^\\top C_{\\tau\\tau} V)^{-1/2} \\right\\|_F^2,

    with the training model's first ``score_k`` left and right singular
    functions :math:`U, V` and the test data's count covariances; it lies
    between 1 (the constant function) and ``score_k``.

    References
    ----------
    .. [1] Wu and Noe, "Variational approach for learning Markov processes
       from time series data", J. Nonlinear Sci. 30, 23 (2020).
    .. [2] McGibbon and Pande, "Variational cross-validation of slow dynamical
       modes in molecular kinetics", J. Chem. Phys. 142, 124105 (2015).

    Examples
    --------
    >>> import numpy as np
    >>> from g2v_sklearn import MSMEstimator
    >>> rng = np.random.default_rng(0)
    >>> dtrajs = [rng.integers(0, 3, size=1000) for _ in range(2)]
    >>> msm = MSMEstimator(lagtime=2).fit(dtrajs)
    >>> msm.n_states_, msm.timescales_.shape
    (3, (2,))
    >>> 1.0 <= msm.score(dtrajs[:1]) <= 5.0
    True
    """

    _parameter_constraints: dict = {
        "lagtime": [Interval(Integral, 1, None, closed="left")],
        "reversible": ["boolean"],
        "bayesian": ["boolean"],
        "n_samples": [Interval(Integral, 1, None, closed="left")],
        "count_mode": [StrOptions({"sliding", "sample", "effective", "sliding-effective"}), None],
        "score_k": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state", np.random.Generator],
    }

    def __init__(
        self,
        lagtime=1,
        *,
        reversible=True,
        bayesian=False,
        n_samples=100,
        count_mode=None,
        score_k=5,
        random_state=None,
    ):
        self.lagtime = lagtime
        self.reversible = reversible
        self.bayesian = bayesian
        self.n_samples = n_samples
        self.count_mode = count_mode
        self.score_k = score_k
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.one_d_array = True
        tags.requires_fit = True
        return tags

    # -- estimation ---------------------------------------------------------------------
    def _validate(self) -> str:
        validate_parameter_constraints(
            self._parameter_constraints, self.get_params(deep=False),
            caller_name=type(self).__name__,
        )
        count_mode = self.count_mode
        if count_mode is None:
            count_mode = "effective" if self.bayesian else "sliding"
        if self.bayesian and "effective" not in count_mode:
            raise ValueError(
                f"bayesian=True samples a posterior that needs statistically uncorrelated "
                f"transition counts, but count_mode={count_mode!r} counts correlated ones; use "
                f"count_mode='effective' (the default when count_mode=None) or "
                f"'sliding-effective'."
            )
        return count_mode

    def _estimate(self, dtrajs, lagtime: int, count_mode: str, rng, caller: str,
                  restrict_to: np.ndarray | None = None):
        """(maximum-likelihood MSM, posterior or None) at ``lagtime`` on checked ``dtrajs``."""
        dtrajs = [dtrajs[i] for i in long_enough([len(d) for d in dtrajs], lagtime, caller)]
        counts = TransitionCountEstimator(lagtime=lagtime, count_mode=count_mode) \
            .fit(dtrajs).fetch_model()
        if restrict_to is not None:
            states = counts.symbols_to_states(restrict_to)
            if len(states) == 0:
                raise ValueError(
                    f"The trajectories given to {caller} never visit the fitted MSM's "
                    f"{len(restrict_to)} states."
                )
            counts = counts.submodel(states)
        if counts.count_matrix.sum() == 0:
            raise ValueError(
                f"The trajectories given to {caller} have no transition between the states "
                f"considered at lagtime={lagtime}."
            )
        msm = MaximumLikelihoodMSM(reversible=bool(self.reversible), use_lcc=True) \
            .fit(counts).fetch_model()
        posterior = None
        if self.bayesian:
            posterior = _sample_posterior(msm, int(self.n_samples), bool(self.reversible), rng)
        return msm, posterior

    def fit(self, X, y=None) -> MSMEstimator:
        """Estimate the MSM on discrete trajectories.

        Parameters
        ----------
        X : list of ndarray of shape (n_frames,) of int, or one such ndarray
            Discrete trajectories, states numbered from 0. Trajectories of at
            most ``lagtime`` frames are skipped with a warning.
        y : None
            Ignored.

        Returns
        -------
        self : MSMEstimator
        """
        count_mode = self._validate()
        caller = f"{type(self).__name__}.fit"
        dtrajs, _ = check_dtrajs(X, caller)
        require_nonnegative(dtrajs, caller)
        rng = check_generator(self.random_state)
        msm, posterior = self._estimate(dtrajs, int(self.lagtime), count_mode, rng, caller)
        self.model_ = msm
        self.posterior_ = posterior
        self.timescales_ = np.asarray(msm.timescales())
        self.n_states_ = int(msm.n_states)
        self.active_set_ = _active_set(msm).copy()
        self.lagtime_ = int(self.lagtime)
        return self

    # -- analysis -----------------------------------------------------------------------
    def timescales(self, k: int | None = None) -> np.ndarray:
        """Implied timescales of the fitted MSM, in frames.

        Parameters
        ----------
        k : int, default=None
            How many, slowest first; ``None`` gives all ``n_states_ - 1``.

        Returns
        -------
        timescales : ndarray of shape (k,)
            For error bars of a Bayesian fit use ``posterior_.timescales(k)``.
        """
        check_is_fitted(self, "model_")
        if k is not None and (not isinstance(k, Integral) or k < 1):
            raise ValueError(f"k must be a positive integer or None; got {k!r}.")
        return np.asarray(self.model_.timescales(k))

    def implied_timescales(self, dtrajs, lagtimes, n_its: int | None = None):
        """Implied timescales of MSMs estimated at several lag times.

        One MSM (or Bayesian posterior) is estimated per lag time with this
        estimator's settings; the fitted model is not needed. Timescales that
        level off with increasing lag time indicate a Markovian model.

        Parameters
        ----------
        dtrajs : list of ndarray of shape (n_frames,) of int, or one such ndarray
            Discrete trajectories.
        lagtimes : sequence of int
            Lag times in frames.
        n_its : int, default=None
            Timescales per lag time; ``None`` keeps as many as every model has.

        Returns
        -------
        its : deeptime.util.validation.ImpliedTimescales
            deeptime's result, for :func:`deeptime.plots.plot_implied_timescales`;
            with ``bayesian=True`` it carries the posterior samples too.
        """
        count_mode = self._validate()
        caller = f"{type(self).__name__}.implied_timescales"
        if n_its is not None and (not isinstance(n_its, Integral) or n_its < 1):
            raise ValueError(f"n_its must be a positive integer or None; got {n_its!r}.")
        lagtimes = _check_lagtimes(lagtimes, "lagtimes")
        dtrajs, _ = check_dtrajs(dtrajs, caller)
        require_nonnegative(dtrajs, caller)
        rng = check_generator(self.random_state)
        models = []
        for lag in lagtimes:
            msm, posterior = self._estimate(dtrajs, lag, count_mode, rng, caller)
            models.append(msm if posterior is None else posterior)
        return _implied_timescales(models, n_its=n_its)

    def ck_test(self, dtrajs, n_sets: int = 2, lagtime_multiples=(1, 2, 3, 4, 5)):
        """Chapman-Kolmogorov test of the fitted MSM on PCCA+ metastable sets.

        The fitted model's predictions at ``k * lagtime_`` are compared with
        MSMs estimated from ``dtrajs`` at those lag times (restricted to the
        fitted model's active set, so both speak of the same states).

        Parameters
        ----------
        dtrajs : list of ndarray of shape (n_frames,) of int, or one such ndarray
            Discrete trajectories, usually the training ones.
        n_sets : int, default=2
            Number of PCCA+ metastable sets (at least 2, at most ``n_states_``).
        lagtime_multiples : sequence of int, default=(1, 2, 3, 4, 5)
            Multiples ``k`` of ``lagtime_`` to test.

        Returns
        -------
        ck : deeptime.util.validation.ChapmanKolmogorovTest
            deeptime's result, for :func:`deeptime.plots.plot_ck_test`; with
            ``bayesian=True`` it carries confidences from the posterior.
        """
        check_is_fitted(self, "model_")
        count_mode = self._validate()
        caller = f"{type(self).__name__}.ck_test"
        if not self.reversible:
            raise ValueError(
                "ck_test uses PCCA+ metastable sets, which deeptime defines for reversible MSMs "
                "only; fit with reversible=True."
            )
        if not isinstance(n_sets, Integral) or not 2 <= n_sets <= self.n_states_:
            raise ValueError(
                f"n_sets must be an integer between 2 and the {self.n_states_} states of the "
                f"fitted MSM; got {n_sets!r}."
            )
        multiples = _check_lagtimes(lagtime_multiples, "lagtime_multiples")
        dtrajs, _ = check_dtrajs(dtrajs, caller)
        require_nonnegative(dtrajs, caller)
        rng = check_generator(self.random_state)
        models = []
        for k in sorted(set(multiples)):
            msm, posterior = self._estimate(
                dtrajs, k * self.lagtime_, count_mode, rng, caller, restrict_to=self.active_set_,
            )
            models.append(msm if posterior is None else posterior)
        test_model = self.model_ if self.posterior_ is None else self.posterior_
        return test_model.ck_test(models, int(n_sets), err_est=self.posterior_ is not None)

    def score(self, X, y=None) -> float:
        """VAMP-2 score of held-out discrete trajectories under the fitted MSM.

        Uses deeptime's ``MarkovStateModel.score`` with ``score_k`` singular
        values. Frames in states outside the fitted active set (never seen in
        training, cut off by connectivity, or negative) are left out; if no
        lagged pair remains, the score is 0 with a warning.

        Parameters
        ----------
        X : list of ndarray of shape (n_frames,) of int, or one such ndarray
            Held-out discrete trajectories.
        y : None
            Ignored.

        Returns
        -------
        score : float
            Between 1 and ``score_k`` (0 when the data miss the active set);
            higher is better.
        """
        check_is_fitted(self, "model_")
        return _vamp2_score(self.model_, X, int(self.score_k), f"{type(self).__name__}.score")


# ----------------------------------------------------------------------------
# A scorer for pipelines ending in a deeptime estimator
# ----------------------------------------------------------------------------
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
