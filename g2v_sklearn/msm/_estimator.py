"""Markov state models of discrete trajectories, estimated with deeptime.

:class:`MSMEstimator` wraps deeptime's transition counting and its
maximum-likelihood or Bayesian estimators in a scikit-learn estimator, with
a seeded posterior sampler and a VAMP-2 score on held-out trajectories that
does not fail on states the training data never visited.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from numbers import Integral

import numpy as np
from deeptime.markov import BayesianMSMPosterior, TransitionCountEstimator
from deeptime.markov.msm import MarkovStateModel, MaximumLikelihoodMSM
from deeptime.util.validation import implied_timescales as _implied_timescales
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from .._compat import Interval, StrOptions, _fit_context, transition_matrix_sampler
from .._utils import PickleVersionMixin, check_generator, keep_parameters
from .._validation import check_dtrajs, long_enough, require_nonnegative

__all__ = ["MSMEstimator"]

# deeptime's transition-matrix samplers take a C++ int seed.
_MAX_SAMPLER_SEED = 2**31 - 1


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
    TransitionMatrixSampler = transition_matrix_sampler()  # deeptime's seeded sampler

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
        keep_parameters(self, locals())

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.one_d_array = True
        tags.requires_fit = True
        return tags

    # -- estimation ---------------------------------------------------------------------
    def _count_mode(self) -> str:
        """The count mode to estimate with (``count_mode=None`` resolved), checked against ``bayesian``."""
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
                  restrict_to: np.ndarray | None = None, stacklevel: int = 4):
        """(maximum-likelihood MSM, posterior or None) at ``lagtime`` on checked ``dtrajs``;
        ``stacklevel`` points the short-trajectory warning at the public method's caller."""
        lengths = [len(d) for d in dtrajs]
        dtrajs = [dtrajs[i] for i in long_enough(lengths, lagtime, caller, stacklevel=stacklevel)]
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

    @_fit_context(prefer_skip_nested_validation=True)
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
        count_mode = self._count_mode()
        caller = f"{type(self).__name__}.fit"
        dtrajs, _ = check_dtrajs(X, caller)
        require_nonnegative(dtrajs, caller)
        rng = check_generator(self.random_state)
        msm, posterior = self._estimate(dtrajs, int(self.lagtime), count_mode, rng, caller,
                                        stacklevel=5)  # one frame more: _fit_context's
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
        self._validate_params()  # not a fit, so no _fit_context: checked here as fit checks them
        count_mode = self._count_mode()
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
        self._validate_params()  # as fit checks them (set_params may have changed them since)
        count_mode = self._count_mode()
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
