"""The kinetic model a study reports: metastable sets, their kinetics and pathways.

:class:`KineticModel` is a thin layer over deeptime (PCCA+, mean first-passage
times, transition path theory) that keeps the bookkeeping a user would
otherwise write by hand: which frame of which trajectory is in which set,
times in physical units, and credible intervals from a Bayesian MSM's
posterior samples. :func:`kinetic_model` builds one from a fitted pipeline
(``... -> KMeansDiscretizer -> MSMEstimator``, or one that ends in an
estimator predicting states, as SPIB does) and its input.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
from sklearn.utils.validation import check_is_fitted

from .._utils import check_generator
from .._validation import check_dtrajs

__all__ = ["KineticModel", "TransitionPathways", "kinetic_model"]

#: Time units a time step may be given in, as multiples of a picosecond.
TIME_UNITS = {"fs": 1e-3, "ps": 1.0, "ns": 1e3, "us": 1e6, "µs": 1e6, "ms": 1e9, "s": 1e12}
_UNIT_NAMES = ", ".join(sorted(set(TIME_UNITS) - {"µs"}))  # for error messages
#: Below this fraction of frames in the MSM's connected set, kinetic_model warns.
MIN_ACTIVE_FRACTION = 0.9
#: Boltzmann's constant in kJ/(mol K) and kcal/(mol K).
_KB = {"kJ/mol": 0.0083144626, "kcal/mol": 0.0019872043}


def parse_timestep(timestep) -> tuple[float, str]:
    """``"10 ps"`` (or ``(10, "ps")``) -> ``(10.0, "ps")``; a clear error otherwise."""
    if isinstance(timestep, str):
        match = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([a-zµ]+)\s*", timestep)
        value, unit = (match.group(1), match.group(2)) if match else (None, None)
    elif isinstance(timestep, tuple) and len(timestep) == 2:
        value, unit = timestep
    else:
        raise TypeError(
            f"timestep must be a string such as '10 ps' or a (value, unit) pair; got {timestep!r}."
        )
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = float("nan")
    if unit not in TIME_UNITS:
        raise ValueError(
            f"The time step {timestep!r} has the unit {unit!r}, which is not a unit of time this "
            f"package knows; use one of {_UNIT_NAMES}."
        )
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"The time step must be a positive number of {unit}; got {timestep!r}.")
    return value, unit


@dataclass(frozen=True)
class TransitionPathways:
    """Transition path theory between two groups of metastable sets (deeptime's reactive flux).

    Times and rates are in the kinetic model's ``unit``; intervals are 95 %
    credible intervals ``(lower, upper)`` from a Bayesian MSM's posterior,
    or None for a maximum-likelihood MSM.

    Attributes
    ----------
    source, sink : tuple of int
        The sets the paths start from and end in.
    committor : ndarray of shape (n_states,)
        Forward committor of every microstate of the MSM's active set: the
        probability of reaching the sink before the source.
    frame_committors : list of ndarray of shape (n_frames,)
        The committor of every frame (NaN for frames outside the active set).
    net_flux : ndarray of shape (n_sets, n_sets)
        Net reactive flux between the sets (probability per ``unit``).
    total_flux : float
        The reactive flux out of the source (probability per ``unit``).
    rate : float
        Total rate of source -> sink transitions, per ``unit``.
    rate_interval : tuple of float or None
    mfpt : float
        Its inverse, the mean time between source -> sink transitions.
    pathways : list of (tuple of int, float)
        The dominant pathways through the sets, each with the fraction of the
        total reactive flux it carries, largest first.

    Examples
    --------
    >>> import numpy as np
    >>> from g2v_sklearn import MSMEstimator, kinetic_model
    >>> dtraj = np.repeat([0, 1, 2, 1] * 50, 20)  # 0 <-> 1 <-> 2, 20 frames in each visit
    >>> model = kinetic_model(MSMEstimator(lagtime=1).fit([dtraj]), [dtraj], n_sets=2)
    >>> paths = model.tpt(0, 1)
    >>> paths.pathways, round(paths.mfpt * paths.rate, 6)
    ([((0, 1), 1.0)], 1.0)
    """

    source: tuple
    sink: tuple
    committor: np.ndarray
    frame_committors: list
    net_flux: np.ndarray
    total_flux: float
    rate: float
    rate_interval: tuple | None
    mfpt: float
    pathways: list


class KineticModel:
    """Metastable sets of a fitted MSM, with populations, kinetics and frames.

    Built by :func:`kinetic_model`; every quantity is computed on the
    maximum-likelihood MSM, and when the MSM is Bayesian (``MSMEstimator(
    bayesian=True)``) also on each posterior sample, for 95 % credible
    intervals. The sets are fixed on the maximum-likelihood MSM (PCCA+'s
    memberships, each microstate in the set of its largest membership), so
    every sample is asked the same question.

    Attributes
    ----------
    n_sets : int
    memberships : ndarray of shape (n_states, n_sets)
        PCCA+'s fuzzy membership of every microstate of the active set in
        every set (for states read from a network, each state is its own set).
    sets : list of ndarray of int
        The active-set microstates of each set.
    assignments : list of ndarray of shape (n_frames,) of int
        The set of every frame of every trajectory (-1 for frames in no
        state of the active set).
    frame_memberships : list of ndarray of shape (n_frames, n_sets)
        Every frame's membership in every set (NaN outside the active set).
    frame_index : ndarray of shape (n_frames_total, 2)
        ``(trajectory, frame)`` of every frame, in the order of
        ``np.concatenate(assignments)``.
    coordinates : list of ndarray or None
        The features the frames were discretised from (the learned
        coordinates), when the pipeline has them.
    populations : ndarray of shape (n_sets,)
        Stationary probability of each set.
    populations_interval : ndarray of shape (2, n_sets) or None
    mfpt : ndarray of shape (n_sets, n_sets)
        Mean first-passage time from set ``i`` (started in its local
        equilibrium) into set ``j``, in ``unit``; 0 on the diagonal.
    mfpt_interval : ndarray of shape (2, n_sets, n_sets) or None
    timestep : float
        Time between frames in ``unit`` (1 when no time step was given: then
        times are in frames).
    unit : str
        The unit of every time (``"frames"`` without a time step).
    lagtime : int
        The MSM's lag time in frames.
    msm : deeptime.markov.msm.MarkovStateModel
        The maximum-likelihood MSM on the active set.
    samples : list of deeptime.markov.msm.MarkovStateModel
        Its posterior samples (empty for a maximum-likelihood MSM).

    Examples
    --------
    >>> import numpy as np
    >>> from g2v_sklearn import MSMEstimator, kinetic_model
    >>> rng = np.random.default_rng(0)
    >>> dtraj = np.concatenate([rng.integers(0, 2, 100) if k % 2 else rng.integers(2, 4, 100)
    ...                         for k in range(20)])  # two pairs of states, 100 frames per visit
    >>> msm = MSMEstimator(lagtime=1, bayesian=True, n_samples=20, random_state=0).fit([dtraj])
    >>> model = kinetic_model(msm, [dtraj], n_sets=2, timestep="10 ps", unit="ns")
    >>> [s.tolist() for s in model.sets], model.populations.round(1).tolist()
    ([[2, 3], [0, 1]], [0.5, 0.5])
    >>> model.mfpt.shape, model.mfpt_interval.shape, model.unit
    ((2, 2), (2, 2, 2), 'ns')
    """

    def __init__(self, msm, samples, dtrajs, memberships, *, timestep=1.0, unit="frames",
                 coordinates=None):
        self.msm = msm
        self.samples = list(samples)
        self.memberships = np.asarray(memberships, dtype=float)
        self.n_sets = self.memberships.shape[1]
        self.lagtime = int(msm.lagtime)
        self.timestep, self.unit = float(timestep), unit
        self.coordinates = coordinates
        hard = np.argmax(self.memberships, axis=1)
        self.sets = [np.flatnonzero(hard == k) for k in range(self.n_sets)]
        empty = [k for k, s in enumerate(self.sets) if s.size == 0]
        if empty:
            raise ValueError(
                f"PCCA+ left set(s) {empty} with no microstate of its own (every state belongs "
                f"more to another set): the MSM does not resolve {self.n_sets} metastable sets; "
                f"ask for fewer."
            )
        self.active_dtrajs = [_to_active(d, msm) for d in dtrajs]
        self.frame_index = np.concatenate([np.stack([np.full(len(d), i), np.arange(len(d))], 1)
                                           for i, d in enumerate(self.active_dtrajs)])
        inside = float(np.mean(np.concatenate(self.active_dtrajs) >= 0))
        if inside < MIN_ACTIVE_FRACTION:
            warnings.warn(
                f"The MSM's largest connected set holds only {inside:.0%} of the frames; the others are "
                f"in no set (assignment -1), and every quantity describes the connected part only. The "
                f"trajectories do not go both ways between all states: sample longer, or use a shorter "
                f"lag time or fewer states.", UserWarning, stacklevel=3,
            )
        self.assignments = [np.where(d >= 0, hard[np.maximum(d, 0)], -1) for d in self.active_dtrajs]
        self.frame_memberships = [np.where((d >= 0)[:, None], self.memberships[np.maximum(d, 0)], np.nan)
                                  for d in self.active_dtrajs]
        self.populations, self.populations_interval = self._statistic(self._populations)
        self.mfpt, self.mfpt_interval = self._statistic(self._mfpt)

    # -- the statistics, on the MLE and on every sample --------------------------------
    def _statistic(self, function):
        value = function(self.msm)
        if not self.samples:
            return value, None
        values = np.stack([function(sample) for sample in self.samples])
        return value, np.nanquantile(values, [0.025, 0.975], axis=0)

    def _populations(self, msm) -> np.ndarray:
        pi = msm.stationary_distribution
        return np.array([pi[s].sum() for s in self.sets])

    def _mfpt(self, msm) -> np.ndarray:
        times = np.zeros((self.n_sets, self.n_sets))
        for i in range(self.n_sets):
            for j in range(self.n_sets):
                if i != j:
                    times[i, j] = msm.mfpt(self.sets[i], self.sets[j]) * self.timestep
        return times

    # -- derived quantities -------------------------------------------------------------
    @property
    def rates(self) -> np.ndarray:
        """Rates ``1 / mfpt`` between the sets, per ``unit`` (0 on the diagonal)."""
        with np.errstate(divide="ignore"):
            return np.where(self.mfpt > 0, 1.0 / np.where(self.mfpt > 0, self.mfpt, 1.0), 0.0)

    def free_energies(self, unit: str = "kT", temperature: float | None = None):
        """Free energy of each set, ``-kT ln(population)``, relative to the most populated one.

        Parameters
        ----------
        unit : {"kT", "kJ/mol", "kcal/mol"}, default="kT"
        temperature : float, optional
            Kelvin; needed for ``"kJ/mol"`` and ``"kcal/mol"``.

        Returns
        -------
        energies : ndarray of shape (n_sets,)
        interval : ndarray of shape (2, n_sets) or None
            95 % credible interval (Bayesian MSMs).
        """
        if unit == "kT":
            kt = 1.0
        elif unit in _KB:
            if temperature is None or not isinstance(temperature, Real) or temperature <= 0:
                raise ValueError(f"Free energies in {unit} need temperature= in kelvin; got {temperature!r}.")
            kt = _KB[unit] * float(temperature)
        else:
            raise ValueError(f"unit must be 'kT', 'kJ/mol' or 'kcal/mol'; got {unit!r}.")
        reference = np.max(self.populations)
        energies = -kt * np.log(self.populations / reference)
        interval = None
        if self.populations_interval is not None:
            interval = -kt * np.log(self.populations_interval[::-1] / reference)
        return energies, interval

    def table(self) -> list[dict]:
        """One row per set: population, free energy (kT) and MFPT to every other set, with intervals."""
        energies, energy_interval = self.free_energies()
        rows = []
        for k in range(self.n_sets):
            row = {"set": k, "microstates": int(self.sets[k].size), "population": float(self.populations[k]),
                   "free_energy_kT": float(energies[k])}
            if self.populations_interval is not None:
                row["population_95ci"] = [float(v) for v in self.populations_interval[:, k]]
                row["free_energy_kT_95ci"] = [float(v) for v in energy_interval[:, k]]
            for j in range(self.n_sets):
                if j != k:
                    row[f"mfpt_to_{j}_{self.unit}"] = float(self.mfpt[k, j])
                    if self.mfpt_interval is not None:
                        row[f"mfpt_to_{j}_{self.unit}_95ci"] = [float(v) for v in self.mfpt_interval[:, k, j]]
            rows.append(row)
        return rows

    def tpt(self, source, sink, *, fraction: float = 0.95) -> TransitionPathways:
        """Transition path theory from the ``source`` sets to the ``sink`` sets.

        Parameters
        ----------
        source, sink : int or sequence of int
            Set indices; they must not overlap or be empty.
        fraction : float, default=0.95
            Decompose the flux into pathways until they carry this fraction.

        Returns
        -------
        TransitionPathways
        """
        source, sink = self._set_indices(source, "source"), self._set_indices(sink, "sink")
        overlap = sorted(set(source) & set(sink))
        if overlap:
            raise ValueError(f"The source and sink sets overlap in set(s) {overlap}; TPT needs them apart.")
        a, b = np.concatenate([self.sets[k] for k in source]), np.concatenate([self.sets[k] for k in sink])
        flux = self.msm.reactive_flux(a, b)
        per_time = 1.0 / (self.lagtime * self.timestep)
        net_flux, pathways = self._coarse_flux(flux, fraction)
        rates = [s.reactive_flux(a, b).rate * per_time for s in self.samples]
        q = np.asarray(flux.forward_committor)
        return TransitionPathways(
            source=source, sink=sink, committor=q,
            frame_committors=[np.where(d >= 0, q[np.maximum(d, 0)], np.nan) for d in self.active_dtrajs],
            net_flux=net_flux * per_time, total_flux=float(flux.total_flux * per_time),
            rate=float(flux.rate * per_time),
            rate_interval=tuple(np.quantile(rates, [0.025, 0.975])) if rates else None,
            mfpt=float(1.0 / (flux.rate * per_time)), pathways=pathways,
        )

    def _coarse_flux(self, flux, fraction: float):
        """Net flux between the sets (in their order) and the pathways through them.

        deeptime's ``coarse_grain`` may reorder the sets (and split one at the source's or
        sink's boundary), so each of its sets is mapped back to the set that holds it."""
        coarse_sets, coarse = flux.coarse_grain([list(s) for s in self.sets])
        owner = np.empty(self.memberships.shape[0], dtype=int)
        for k, members in enumerate(self.sets):
            owner[members] = k
        mine = np.array([owner[next(iter(members))] for members in coarse_sets])
        net = np.zeros((self.n_sets, self.n_sets))
        np.add.at(net, (mine[:, None].repeat(len(mine), 1), mine[None, :].repeat(len(mine), 0)),
                  np.asarray(coarse.net_flux))
        np.fill_diagonal(net, 0.0)
        paths, capacities = coarse.pathways(fraction=fraction)
        pathways = []
        for path, capacity in zip(paths, capacities):
            steps = [int(mine[i]) for i in path]
            steps = [k for i, k in enumerate(steps) if i == 0 or k != steps[i - 1]]
            pathways.append((tuple(steps), float(capacity / coarse.total_flux)))
        return net, pathways

    def _set_indices(self, sets, name: str) -> tuple:
        values = np.atleast_1d(np.asarray(sets))
        if values.size == 0:
            raise ValueError(f"The {name} of TPT is empty; give at least one set index.")
        if values.dtype.kind not in "iu" or values.min() < 0 or values.max() >= self.n_sets:
            raise ValueError(f"The {name} of TPT must be set indices in [0, {self.n_sets - 1}]; got {sets!r}.")
        return tuple(sorted({int(v) for v in values}))

    # -- frames -------------------------------------------------------------------------
    def typical_frames(self) -> list[tuple[int, int]]:
        """The most typical frame of each set as ``(trajectory, frame)``.

        Among the frames of the set's highest-membership microstate, the one
        nearest (in ``coordinates``, when known) to the membership-weighted
        mean of the set's frames; without coordinates, the first of them.
        """
        state = np.concatenate(self.active_dtrajs)
        coords = None if self.coordinates is None else np.concatenate(
            [np.asarray(c).reshape(len(c), -1) for c in self.coordinates])
        weights = np.nan_to_num(np.concatenate(self.frame_memberships))
        chosen = []
        for k in range(self.n_sets):
            best = self.sets[k][np.argmax(self.memberships[self.sets[k], k])]
            candidates = np.flatnonzero(state == best)
            pick = candidates[0]
            if coords is not None:
                centre = weights[:, k] @ coords / weights[:, k].sum()
                pick = candidates[np.argmin(((coords[candidates] - centre) ** 2).sum(1))]
            chosen.append(tuple(int(v) for v in self.frame_index[pick]))
        return chosen

    def sample_frames(self, n_samples: int = 10, random_state=None) -> list[np.ndarray]:
        """``n_samples`` frames of each set, drawn with probability proportional to their
        membership (PCCA+'s metastable distribution over the frames).

        Returns
        -------
        frames : list of ndarray of shape (n_samples, 2)
            ``(trajectory, frame)`` pairs per set.
        """
        if not isinstance(n_samples, Integral) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer; got {n_samples!r}.")
        rng = check_generator(random_state)
        weights = np.nan_to_num(np.concatenate(self.frame_memberships))
        drawn = []
        for k in range(self.n_sets):
            p = weights[:, k] / weights[:, k].sum()
            picks = rng.choice(len(self.frame_index), size=int(n_samples), replace=True, p=p)
            drawn.append(self.frame_index[picks].astype(int))
        return drawn


def _to_active(dtraj: np.ndarray, msm) -> np.ndarray:
    """Microstate symbols -> indices in the MSM's active set (-1 outside it)."""
    symbols = np.asarray(msm.count_model.state_symbols)
    index = np.full(max(int(dtraj.max(initial=0)), int(symbols.max())) + 1, -1, dtype=np.int64)
    index[symbols] = np.arange(len(symbols))
    return np.where(dtraj >= 0, index[np.maximum(dtraj, 0)], -1)


def _pcca_memberships(msm, n_sets) -> np.ndarray:
    if not isinstance(n_sets, Integral) or isinstance(n_sets, bool) or n_sets < 2:
        raise ValueError(f"n_sets must be an integer of at least 2; got {n_sets!r}.")
    if n_sets > msm.n_states:
        raise ValueError(
            f"n_sets={n_sets} metastable sets were asked for, but the MSM has only {msm.n_states} "
            f"states in its active set; ask for at most {msm.n_states}."
        )
    if not msm.reversible:
        warnings.warn("PCCA+ assumes a reversible MSM; the sets of a non-reversible one may mislead.",
                      UserWarning, stacklevel=3)
    return np.asarray(msm.pcca(int(n_sets)).memberships)


def kinetic_model(estimator, X, n_sets=None, *, timestep=None, unit=None, n_samples=100,
                  random_state=None) -> KineticModel:
    """The kinetic model of a fitted pipeline on its data: sets, populations, MFPTs, frames.

    Parameters
    ----------
    estimator : Pipeline, MSMEstimator or a fitted state predictor
        A fitted pipeline that ends in :class:`MSMEstimator` (its steps
        before make the discrete trajectories, for example
        ``TokenMerger -> VAMPNetEstimator -> KMeansDiscretizer``), or one
        that ends in an estimator whose ``predict`` gives metastable states
        (:class:`SPIBEstimator`); or such an estimator itself.
    X : list
        What the pipeline was fitted on (or any data of the same kind): a
        list of per-trajectory inputs, e.g. token trajectories; discrete
        trajectories for a bare ``MSMEstimator``.
    n_sets : int, optional
        Metastable sets to coarse-grain the MSM into with PCCA+ (required
        for an MSM). For predicted states, each state is a set and
        ``n_sets`` must be None or their number.
    timestep : str or (float, str), optional
        Time between frames, e.g. ``"10 ps"``. By default the token
        trajectories' own time step (picoseconds), if they have one; without
        any, times are in frames.
    unit : str, optional
        Unit of the reported times (e.g. ``"ns"``); default the time step's.
    n_samples : int, default=100
        Posterior samples of the Bayesian MSM built on predicted states.
    random_state : int, numpy.random.Generator or None, default=None
        Seeds that Bayesian MSM.

    Returns
    -------
    KineticModel

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.pipeline import Pipeline
    >>> from g2v_sklearn import KMeansDiscretizer, MSMEstimator, kinetic_model
    >>> rng = np.random.default_rng(0)
    >>> well = np.repeat(rng.integers(0, 2, 40) * 4.0, 50)  # 40 visits to x=0 or x=4
    >>> X = [(well + rng.normal(scale=0.3, size=well.size))[:, None]]
    >>> pipe = Pipeline([("cluster", KMeansDiscretizer(random_state=0)),
    ...                  ("msm", MSMEstimator(lagtime=1))]).fit(X)
    >>> model = kinetic_model(pipe, X, n_sets=2, timestep="1 ns")
    >>> sorted(round(float(X[0][model.assignments[0] == k].mean())) for k in range(2))
    [0, 4]
    """
    from ._estimator import MSMEstimator

    steps = list(estimator.steps) if hasattr(estimator, "steps") else [("model", estimator)]
    last = steps[-1][1]
    check_is_fitted(last)
    front = steps[:-1]
    if isinstance(last, MSMEstimator):
        coordinates, dtrajs = _discretised(front, X)
        msm = last
        if n_sets is None:
            raise ValueError("n_sets is needed to coarse-grain an MSM into metastable sets, e.g. n_sets=2.")
        memberships = _pcca_memberships(msm.model_, n_sets)
    elif hasattr(last, "predict") and hasattr(last, "lagtime"):
        coordinates = _transformed(front, X)
        dtrajs, _ = check_dtrajs(last.predict(coordinates), "kinetic_model")
        latent = last.transform(coordinates)
        coordinates = latent if isinstance(latent, list) else [latent]
        msm = MSMEstimator(lagtime=int(last.lagtime), bayesian=True, n_samples=n_samples,
                           random_state=random_state).fit(dtrajs)
        memberships = _state_memberships(msm.model_, dtrajs, n_sets)
    else:
        raise TypeError(
            f"kinetic_model needs a fitted pipeline (or estimator) that ends in MSMEstimator or in an "
            f"estimator that predicts states (SPIBEstimator); got one that ends in {type(last).__name__}."
        )
    step, time_unit = _time_step(timestep, X)
    scale, out_unit = _convert(step, time_unit, unit)
    samples = msm.posterior_.samples if getattr(msm, "posterior_", None) is not None else []
    return KineticModel(msm.model_, samples, dtrajs, memberships, timestep=scale, unit=out_unit,
                        coordinates=coordinates)


def _transformed(steps, X):
    for _, step in steps:
        if step is not None and step != "passthrough":
            X = step.transform(X)
    return X


def _discretised(steps, X):
    """(the features the discretiser saw or None, the discrete trajectories)."""
    if steps and hasattr(steps[-1][1], "cluster_centers_"):
        features = _transformed(steps[:-1], X)
        dtrajs = steps[-1][1].transform(features)
        features = features if isinstance(features, list) else [features]
    else:
        features, dtrajs = None, _transformed(steps, X)
    dtrajs, _ = check_dtrajs(dtrajs, "kinetic_model")
    return features, dtrajs


def _state_memberships(msm, dtrajs, n_sets) -> np.ndarray:
    """Each predicted state its own set; every state must be in the connected MSM."""
    seen = np.unique(np.concatenate(dtrajs))
    active = np.asarray(msm.count_model.state_symbols)
    missing = sorted(set(seen.tolist()) - set(active.tolist()))
    if missing:
        raise ValueError(
            f"The predicted states {missing} are not connected to the others at lagtime="
            f"{int(msm.lagtime)} (no transition into and out of them), so the MSM on the states is "
            f"disconnected and has no kinetics between all of them; fit with a shorter lag time or "
            f"more data."
        )
    if n_sets is not None and n_sets != len(active):
        raise ValueError(
            f"The estimator predicts {len(active)} states, and each is a metastable set; got "
            f"n_sets={n_sets}. Leave n_sets=None."
        )
    if len(active) < 2:
        raise ValueError("The estimator predicts a single state: there are no kinetics between sets.")
    return np.eye(len(active))


def _time_step(timestep, X) -> tuple[float, str]:
    if timestep is not None:
        return parse_timestep(timestep)
    steps = {getattr(x, "timestep", None) for x in (X if isinstance(X, list) else [X])}
    if len(steps) == 1 and None not in steps:
        return float(steps.pop()), "ps"
    return 1.0, "frames"


def _convert(step: float, unit: str, out: str | None) -> tuple[float, str]:
    if out is None or out == unit:
        return step, unit
    if unit == "frames":
        raise ValueError(f"unit={out!r} needs a time step (timestep='10 ps', say): the data have none.")
    if out not in TIME_UNITS:
        raise ValueError(f"unit={out!r} is not a unit of time this package knows; use one of {_UNIT_NAMES}.")
    return step * TIME_UNITS[unit] / TIME_UNITS[out], out
