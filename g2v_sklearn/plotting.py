"""Diagnostic plots: implied timescales, CK tests, training curves, free energies, residues.

matplotlib is an optional dependency (``pip install g2v_sklearn[plot]``). It
is imported when a function is called, never when this module (or the
package) is imported, and nothing is drawn on import. Every function draws
into ``ax`` (a new figure from :func:`matplotlib.pyplot.subplots` when
``ax=None``) and returns the Axes it drew on, so plots compose into the
caller's own figures.

The implied timescales and the Chapman-Kolmogorov test are drawn by
deeptime's own :mod:`deeptime.plots`; this module adds time units, the
unresolvable region below the lag time and correct legends.
"""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Integral, Real

import numpy as np

__all__ = [
    "plot_ck_test",
    "plot_committor",
    "plot_free_energy",
    "plot_history",
    "plot_implied_timescales",
    "plot_residue_importance",
    "plot_state_importance",
    "plot_state_network",
    "plot_states_on_coordinates",
]


# ----------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------
def _pyplot():
    """matplotlib.pyplot, or an ImportError that says how to install it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(
            "g2v_sklearn.plotting needs matplotlib, which is not installed: "
            "pip install matplotlib (or pip install g2v_sklearn[plot])."
        ) from err
    return plt


def _axes(ax, **subplots_kw):
    """``ax``, or the Axes of a new figure."""
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(**subplots_kw)
    return ax


def _time_scale(timestep, unit) -> tuple[float, str]:
    """(time per frame, unit label): (1, "frames") without a timestep."""
    if not isinstance(unit, str):
        raise TypeError(f"unit must be a str such as 'ns'; got {type(unit).__name__}.")
    if timestep is None:
        if unit != "frames":
            raise ValueError(
                f"unit={unit!r} needs timestep=, the time between frames in {unit}; without a "
                f"timestep lag times and timescales are in frames (unit='frames')."
            )
        return 1.0, "frames"
    if isinstance(timestep, bool) or not isinstance(timestep, Real) or not (
            np.isfinite(timestep) and timestep > 0):
        raise ValueError(f"timestep must be a positive number (the time between frames); got {timestep!r}.")
    if unit == "frames":
        raise ValueError(
            f"timestep={timestep} converts frames to time: name its unit, e.g. unit='ns' or unit='ps'."
        )
    return float(timestep), unit


def _check_confidence(confidence) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, Real) or not 0 < confidence < 1:
        raise ValueError(f"confidence must be a number between 0 and 1 (e.g. 0.95); got {confidence!r}.")
    return float(confidence)


# ----------------------------------------------------------------------------
# Implied timescales
# ----------------------------------------------------------------------------
class _Timescales:
    """What deeptime's ``plot_implied_timescales`` reads of an ``ImpliedTimescales``, in any unit.

    deeptime's container keeps integer lag times (frames); this one holds
    float lag times, so timescales can be drawn in ns.
    """

    def __init__(self, lagtimes: np.ndarray, timescales: np.ndarray, samples: np.ndarray | None):
        self.lagtimes = lagtimes  # (n_lagtimes,)
        self._timescales = timescales  # (n_lagtimes, n_processes)
        self._samples = samples  # (n_lagtimes, n_processes, n_samples) or None

    @property
    def n_lagtimes(self) -> int:
        return len(self.lagtimes)

    @property
    def max_n_processes(self) -> int:
        return self._timescales.shape[1]

    @property
    def has_samples(self) -> bool:
        return self._samples is not None and self._samples.shape[2] > 0

    def timescales_for_process(self, process: int) -> np.ndarray:
        return self._timescales[:, process]

    def samples_for_process(self, process: int) -> np.ndarray:
        return self._samples[:, process]


def _timescales(its, scale: float) -> _Timescales:
    """Lag times, timescales and samples of ``its`` (deeptime's or a tuple), times ``scale``."""
    from deeptime.util.validation import ImpliedTimescales

    if isinstance(its, ImpliedTimescales):
        lagtimes = np.asarray(its.lagtimes, dtype=np.float64)
        n_processes = its.max_n_processes
        timescales = np.stack([its.timescales_for_process(i) for i in range(n_processes)], axis=1)
        samples = None
        if its.has_samples:
            samples = np.stack([its.samples_for_process(i) for i in range(n_processes)], axis=1)
    elif isinstance(its, (tuple, list)) and len(its) in (2, 3):
        lagtimes = np.asarray(its[0], dtype=np.float64)
        timescales = np.asarray(its[1], dtype=np.float64)
        samples = None if len(its) == 2 or its[2] is None else np.asarray(its[2], dtype=np.float64)
        if lagtimes.ndim != 1 or len(lagtimes) == 0:
            raise ValueError(f"The lag times of its must be a non-empty 1-D array; got shape {lagtimes.shape}.")
        if not (np.isfinite(lagtimes).all() and (lagtimes > 0).all()):
            raise ValueError("The lag times of its must be positive and finite.")
        if timescales.ndim == 1:
            timescales = timescales[:, None]
        if timescales.ndim != 2 or len(timescales) != len(lagtimes):
            raise ValueError(
                f"its has {len(lagtimes)} lag times, but timescales of shape {timescales.shape}; "
                f"expected shape ({len(lagtimes)}, n_processes)."
            )
        if samples is not None and (samples.ndim != 3 or samples.shape[:2] != timescales.shape):
            raise ValueError(
                f"The samples of its have shape {samples.shape}; expected (n_lagtimes, n_processes, "
                f"n_samples) = ({timescales.shape[0]}, {timescales.shape[1]}, n_samples)."
            )
        order = np.argsort(lagtimes, kind="stable")
        lagtimes, timescales = lagtimes[order], timescales[order]
        samples = None if samples is None else samples[order]
    else:
        raise TypeError(
            "its must be a deeptime ImpliedTimescales (from VAMPNetEstimator.implied_timescales, "
            "MSMEstimator.implied_timescales or deeptime.util.validation.implied_timescales) or a "
            f"tuple (lagtimes, timescales[, samples]); got {type(its).__name__}."
        )
    if timescales.shape[1] == 0:
        raise ValueError("its holds no timescales (0 processes).")
    return _Timescales(lagtimes * scale, timescales * scale, None if samples is None else samples * scale)


def plot_implied_timescales(its, *, ax=None, n_its=None, timestep=None, unit="frames",
                            confidence=0.95, colors=None, legend=True, **kwargs):
    """Implied timescales against lag time, with confidence bands from Bayesian samples.

    Timescales that level off as the lag time grows indicate a Markovian
    model. A timescale below the lag time cannot be resolved by a model at
    that lag; that region is shaded grey below the black line
    ``timescale = lag time``. Each process is drawn by deeptime's
    :func:`deeptime.plots.plot_implied_timescales`: the maximum-likelihood
    (or VAMP) timescale as a solid line and, when ``its`` carries Bayesian
    samples, their mean (dashed, with markers) and a confidence band.

    Parameters
    ----------
    its : deeptime.util.validation.ImpliedTimescales or tuple
        What :meth:`VAMPNetEstimator.implied_timescales`,
        :meth:`MSMEstimator.implied_timescales` and
        :func:`deeptime.util.validation.implied_timescales` return (with
        samples from a Bayesian MSM); or a tuple ``(lagtimes, timescales)``
        or ``(lagtimes, timescales, samples)`` of arrays of shape
        (n_lagtimes,), (n_lagtimes, n_processes) and
        (n_lagtimes, n_processes, n_samples), in frames.
    ax : matplotlib.axes.Axes, default=None
        Axes to draw into; ``None`` makes a new figure.
    n_its : int, default=None
        Number of timescales to draw, slowest first (``None``: all).
    timestep : float, default=None
        Time between frames, in ``unit``; lag times and timescales are
        converted from frames with it (e.g. ``est.timestep_`` of a learner
        fitted on token trajectories, in ps, with ``unit="ps"``). ``None``
        keeps frames.
    unit : str, default="frames"
        The time unit of ``timestep`` for the axis labels, e.g. ``"ns"``;
        ``"frames"`` only without a timestep.
    confidence : float, default=0.95
        Probability mass inside the bands drawn from samples.
    colors : list of color, default=None
        Colour of each process (``None``: matplotlib's colour cycle).
    legend : bool, default=True
        Whether to draw a legend.
    **kwargs
        Passed to :meth:`matplotlib.axes.Axes.plot` for the timescale lines.

    Returns
    -------
    ax : matplotlib.axes.Axes
        The Axes drawn into, with a logarithmic y axis. The timescale lines
        are labelled ``"process 1"``, ``"process 2"``, ...; the shaded
        region has the gid ``"cutoff"``.

    See Also
    --------
    deeptime.plots.plot_implied_timescales : The per-process drawing used here.
    plot_ck_test : The other test of Markovianity.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> import numpy as np
    >>> from deeptime.markov.msm import MarkovStateModel
    >>> from g2v_sklearn import MSMEstimator
    >>> from g2v_sklearn.plotting import plot_implied_timescales
    >>> P = np.array([[0.98, 0.02, 0.0], [0.01, 0.97, 0.02], [0.0, 0.05, 0.95]])
    >>> dtraj = MarkovStateModel(P).simulate(5000, seed=0)
    >>> its = MSMEstimator().implied_timescales(dtraj, lagtimes=[1, 2, 4, 8], n_its=2)
    >>> ax = plot_implied_timescales(its, timestep=0.1, unit="ns")
    >>> ax.get_yscale(), ax.get_xlabel(), ax.get_ylabel()
    ('log', 'lag time (ns)', 'timescale (ns)')
    >>> [line.get_label() for line in ax.lines if line.get_label().startswith("process")]
    ['process 1', 'process 2']
    >>> plt.close("all")
    """
    _pyplot()
    from deeptime.plots import plot_implied_timescales as deeptime_plot

    scale, unit = _time_scale(timestep, unit)
    confidence = _check_confidence(confidence)
    data = _timescales(its, scale)
    if n_its is None:
        n_its = data.max_n_processes
    elif isinstance(n_its, bool) or not isinstance(n_its, Integral) or n_its < 1:
        raise ValueError(f"n_its must be a positive integer or None; got {n_its!r}.")
    elif n_its > data.max_n_processes:
        raise ValueError(
            f"n_its={n_its} is more than the {data.max_n_processes} timescales per lag time in its."
        )
    ax = _axes(ax)
    ax.set_yscale("log")
    for process in range(int(n_its)):
        deeptime_plot(data, process=process, ax=ax, colors=colors, show_cutoff=False,
                      sample_confidence=confidence, **{"label": f"process {process + 1}", **kwargs})
    lagtimes = data.lagtimes
    ax.plot(lagtimes, lagtimes, color="black", linewidth=1.5)
    bottom, top = ax.get_ylim()  # the data's range, the lag-time line included
    ax.fill_between(lagtimes, bottom, lagtimes, color="grey", alpha=0.3, linewidth=0,
                    label="timescale < lag time", gid="cutoff")
    ax.set_ylim(bottom, top)
    if len(lagtimes) > 1:
        ax.set_xlim(lagtimes[0], lagtimes[-1])
    ax.set_xlabel(f"lag time ({unit})")
    ax.set_ylabel(f"timescale ({unit})")
    if legend:
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch

        handles, labels = ax.get_legend_handles_labels()
        if data.has_samples:  # say what the line styles and bands are
            handles += [Line2D([], [], color="grey", linestyle="solid"),
                        Line2D([], [], color="grey", linestyle="dashed", marker="."),
                        Patch(color="grey", alpha=0.2)]
            labels += ["maximum likelihood", "mean of the samples", f"{100 * confidence:.0f}% of the samples"]
        ax.legend(handles, labels, fontsize="small")
    return ax


# ----------------------------------------------------------------------------
# Chapman-Kolmogorov test
# ----------------------------------------------------------------------------
class _CKTest:
    """What deeptime's ``plot_ck_test`` reads of a ``ChapmanKolmogorovTest``, lag times scaled."""

    def __init__(self, ck, scale: float):
        self.lagtimes = np.asarray(ck.lagtimes, dtype=np.float64) * scale
        self.estimates = np.asarray(ck.estimates)
        self.predictions = np.asarray(ck.predictions)
        self.estimates_samples = _without_lag0_sample(ck)
        self.predictions_samples = ck.predictions_samples
        self.has_errors = bool(ck.has_errors)
        self.err_est = bool(ck.err_est)

    @property
    def n_components(self) -> int:
        return self.estimates.shape[1] if self.estimates.ndim == 3 else 0


def _without_lag0_sample(ck) -> list:
    """The estimate samples of ``ck`` without the lag-0 value deeptime appends to each lag time.

    deeptime's ``ck_test`` (0.4.5 and earlier) gathers the samples of each
    estimated model in a ``for`` loop whose ``else`` clause also appends the
    observable at lag 0 (the identity for membership tests), so every
    lag time carries one spurious sample that stretches its band to 0 or 1.
    A trailing sample equal to the lag-0 estimate at a lag time > 0 is
    that artefact and is dropped here.
    """
    samples = ck.estimates_samples
    if not samples:
        return samples
    lagtimes = np.asarray(ck.lagtimes)
    lag0 = np.asarray(ck.estimates)[0] if lagtimes[0] == 0 else None
    out = []
    for lag, lag_samples in zip(lagtimes, samples):
        lag_samples = list(lag_samples)
        if (lag > 0 and lag0 is not None and len(lag_samples) > 1
                and np.array_equal(np.asarray(lag_samples[-1]), lag0)):
            lag_samples = lag_samples[:-1]
        out.append(lag_samples)
    return out


def _ck_confidences(samples, confidence: float):
    """(lower, upper) per lag time, as deeptime draws them; None without samples."""
    from deeptime.util import confidence_interval

    if samples is None or len(samples) == 0:
        return None
    bounds = [confidence_interval(np.real(np.asarray(s)), conf=confidence, remove_nans=True) for s in samples]
    return np.array([b[0] for b in bounds]), np.array([b[1] for b in bounds])


def _draw_ck(axes: np.ndarray, test: _CKTest, color, confidence: float, **kwargs) -> None:
    """deeptime's CK panels drawn into the caller's Axes (deeptime's grid makes its own figure)."""
    est_band = _ck_confidences(test.estimates_samples, confidence) if test.has_errors else None
    pred_band = _ck_confidences(test.predictions_samples, confidence) if test.has_errors else None
    n = test.n_components
    for i in range(n):
        for j in range(n):
            ax = axes[i, j]
            ax.plot(test.lagtimes, test.estimates[:, i, j].real, color="black", **kwargs)
            if est_band is not None:
                ax.fill_between(test.lagtimes, est_band[0][:, i, j], est_band[1][:, i, j], color="black",
                                alpha=0.2)
            ax.plot(test.lagtimes, test.predictions[:, i, j].real, color=color, linestyle="dashed", **kwargs)
            if pred_band is not None:
                ax.fill_between(test.lagtimes, pred_band[0][:, i, j], pred_band[1][:, i, j], color=color,
                                alpha=0.2)
            ax.text(0.05, 0.05, f"{i + 1} -> {j + 1}", transform=ax.transAxes, weight="bold")


def plot_ck_test(ck, *, ax=None, timestep=None, unit="frames", confidence=0.95, y01=None, ylabel=None,
                 color="C0", legend=True, height=2.5, **kwargs):
    """Chapman-Kolmogorov test: predictions of the model at lag tau against models at k tau.

    Panel ``(i, j)`` compares the estimate at each tested lag time (black,
    solid) with the prediction of the tested model propagated to it
    (``color``, dashed), for set (or observable) ``i`` and statistic
    ``j``; for an MSM test, the probability of being in metastable set
    ``j`` after starting in set ``i``. A Markovian model keeps the dashed
    line on the solid one. Bands give ``confidence`` intervals when the
    test carries Bayesian samples.

    Parameters
    ----------
    ck : deeptime.util.validation.ChapmanKolmogorovTest
        What :meth:`MSMEstimator.ck_test`, :meth:`VAMPNetEstimator.ck_test`
        and deeptime's ``ck_test`` methods return.
    ax : ndarray of matplotlib.axes.Axes of shape (n, n), default=None
        Axes to draw into, ``n`` the number of sets (observables) of the
        test (a single Axes for ``n = 1``); ``None`` makes a new grid with
        deeptime's :func:`deeptime.plots.plot_ck_test`.
    timestep : float, default=None
        Time between frames, in ``unit`` (``None``: lag times in frames).
    unit : str, default="frames"
        The time unit of ``timestep`` for the axis labels, e.g. ``"ns"``.
    confidence : float, default=0.95
        Probability mass inside the bands of a Bayesian test.
    y01 : bool, default=None
        Fix the y axes to [0, 1]. ``None``: when every estimate and
        prediction lies in [0, 1] (probabilities of an MSM test).
    ylabel : str, default=None
        ``None``: ``"probability"`` for a test that starts from the
        identity at lag time 0 with values in [0, 1] (an MSM test),
        ``"expectation"`` otherwise (a Koopman test of
        :meth:`VAMPNetEstimator.ck_test`, which has no estimate at lag 0).
    color : color, default="C0"
        Colour of the predictions.
    legend : bool, default=True
        Whether to draw a figure legend.
    height : float, default=2.5
        Height (inches) of one panel of a new grid.
    **kwargs
        Passed to :meth:`matplotlib.axes.Axes.plot` for the lines.

    Returns
    -------
    axes : ndarray of matplotlib.axes.Axes of shape (n, n)
        The panels; ``axes[0, 0].figure`` is the figure.

    See Also
    --------
    deeptime.plots.plot_ck_test : The grid drawn here when ``ax=None``.
    plot_implied_timescales : The other test of Markovianity.

    Notes
    -----
    Two workarounds for deeptime 0.4.5: its figure legend swaps the labels
    of the estimate and prediction lines, so this function draws its own;
    and its ``ck_test`` adds the lag-0 value (the identity) to the samples
    of every estimated model, which would stretch the estimate bands of a
    Bayesian test to 0 and 1, so that extra sample is left out.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> import numpy as np
    >>> from deeptime.markov.msm import MarkovStateModel
    >>> from g2v_sklearn import MSMEstimator
    >>> from g2v_sklearn.plotting import plot_ck_test
    >>> P = np.array([[0.98, 0.02, 0.0], [0.01, 0.97, 0.02], [0.0, 0.05, 0.95]])
    >>> dtraj = MarkovStateModel(P).simulate(5000, seed=0)
    >>> msm = MSMEstimator(lagtime=2).fit(dtraj)
    >>> axes = plot_ck_test(msm.ck_test(dtraj, n_sets=2), timestep=0.1, unit="ns")
    >>> axes.shape, axes[1, 0].get_xlabel(), axes[0, 0].get_ylabel()
    ((2, 2), 'lag time (ns)', 'probability')
    >>> plt.close("all")
    """
    _pyplot()
    from deeptime.util.validation import ChapmanKolmogorovTest
    from matplotlib.lines import Line2D

    if not isinstance(ck, ChapmanKolmogorovTest):
        raise TypeError(
            "ck must be a deeptime ChapmanKolmogorovTest (from MSMEstimator.ck_test, "
            f"VAMPNetEstimator.ck_test or a deeptime model's ck_test); got {type(ck).__name__}."
        )
    scale, unit = _time_scale(timestep, unit)
    confidence = _check_confidence(confidence)
    test = _CKTest(ck, scale)
    n = test.n_components
    if n == 0:
        raise ValueError("The Chapman-Kolmogorov test holds no estimates.")
    values = np.concatenate([test.estimates.real.ravel(), test.predictions.real.ravel()])
    values = values[np.isfinite(values)]
    in_01 = bool(values.size) and values.min() >= -1e-9 and values.max() <= 1 + 1e-9
    if y01 is None:
        y01 = in_01
    if ylabel is None:
        starts_at_identity = test.lagtimes[0] == 0 and np.isfinite(test.estimates[0]).all()
        ylabel = "probability" if in_01 and starts_at_identity else "expectation"
    xlabel = f"lag time ({unit})"

    if ax is None:
        from deeptime.plots import plot_ck_test as deeptime_plot

        grid = deeptime_plot(test, height=height, conf=confidence, color=color, legend=False,
                             xlabel=xlabel, ylabel=ylabel, y01=bool(y01), **kwargs)
        axes = np.asarray(grid.axes)
    else:
        axes = np.asarray(ax, dtype=object)
        if axes.size != n * n:
            raise ValueError(
                f"The test has {n} sets, so ax must hold {n} x {n} = {n * n} Axes; got {axes.size}."
            )
        axes = axes.reshape(n, n)
        _draw_ck(axes, test, color, confidence, **kwargs)
        for i in range(n):
            axes[i, 0].set_ylabel(ylabel)
            axes[n - 1, i].set_xlabel(xlabel)
        if y01:
            for a in axes.flat:
                a.set_ylim(0, 1)
    if legend:
        conf = f" ({100 * confidence:.0f}% conf.)" if test.has_errors else ""
        handles = [Line2D([], [], color="black"), Line2D([], [], color=color, linestyle="dashed")]
        labels = [f"estimate{conf if test.err_est else ''}", f"prediction{conf}"]
        axes[0, 0].figure.legend(handles, labels, loc="upper center", ncol=2, frameon=False)
    return axes


# ----------------------------------------------------------------------------
# Training history
# ----------------------------------------------------------------------------
def _entries(history: Mapping, key: str) -> list:
    """``history[key]`` as a list (empty when missing or None)."""
    value = history.get(key)
    return [] if value is None else list(value)


def _history(estimator_or_history):
    """The history of a learner or the history itself, as a :class:`~g2v_sklearn.History`, checked."""
    if isinstance(estimator_or_history, Mapping):
        history = estimator_or_history
    elif hasattr(estimator_or_history, "get_params"):
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(estimator_or_history, "history_")
        history = estimator_or_history.history_
    else:
        raise TypeError(
            "plot_history expects a fitted VAMPNetEstimator or SPIBEstimator, or its history_ dict; "
            f"got {type(estimator_or_history).__name__}."
        )
    if "train" not in history:
        raise ValueError(
            "The history has no 'train' scores; expected the history_ of a fitted VAMPNetEstimator "
            f"or SPIBEstimator (keys 'train', 'validation', 'best_epoch'); got keys {sorted(history)}."
        )
    n = len(history["train"])
    if n == 0:
        raise ValueError("The history has no epochs.")
    for key in ("validation", "round"):
        m = len(_entries(history, key))
        if m not in (0, n):
            raise ValueError(
                f"history[{key!r}] has {m} entries, but history['train'] has {n}: expected one per epoch."
            )
    from g2v_sklearn.learners._history import History  # absolute: the module also loads as a lone file

    return History.from_mapping(history)


#: The y label of the scores and of the losses, by what a history's scores are (``History.measure``).
_MEASURES = {
    "VAMP-2": ("VAMP-2 score", "VAMP-2 loss"),
    "SPIB": ("score (minus the SPIB loss)", "SPIB loss"),
}


def plot_history(estimator_or_history, *, ax=None, loss=False, mark_best=True, **kwargs):
    """Training and validation scores per epoch, with the epoch whose weights were kept.

    Parameters
    ----------
    estimator_or_history : VAMPNetEstimator, SPIBEstimator, History or dict
        A fitted learner, or its ``history_`` (a :class:`~g2v_sklearn.History`,
        or a dict with its keys: ``"train"`` and ``"validation"`` scores
        per epoch, higher is better, the validation list empty without
        validation data; ``"best_epoch"``, 0-based; optionally ``"round"``
        and ``"best_epochs"``). The ``history_`` dicts of earlier versions
        (``history.json`` files) are read too: VAMPNet's, and SPIB's whose
        ``"best_epoch"`` lists each round's best, counted within the round.
    ax : matplotlib.axes.Axes, default=None
        Axes to draw into; ``None`` makes a new figure.
    loss : bool, default=False
        Draw minus the scores (the losses) instead.
    mark_best : bool, default=True
        Mark the best epoch of every round with a star on the monitored
        curve (validation, else train) and the epoch whose weights the
        estimator kept (``best_epoch``) with a dashed vertical line.
    **kwargs
        Passed to :meth:`matplotlib.axes.Axes.plot` for both curves.

    Returns
    -------
    ax : matplotlib.axes.Axes
        The Axes drawn into; the curves are the lines labelled ``"train"``
        and ``"validation"`` (with the score in brackets when they differ),
        with epochs numbered from 1 on the x axis.

    Notes
    -----
    Both curves are scores of the weights at the end of each epoch, on
    the training and on the validation pairs (VAMP-2 for
    VAMPNetEstimator), so they are on the same footing; the mean of the
    mini-batch scores taken while the weights changed is in
    ``history_["train_batches"]``. For SPIBEstimator the score is minus
    the SPIB loss, and the grey dotted lines mark where a round ended in a
    relabelling.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> from g2v_sklearn.plotting import plot_history
    >>> history = {"train": [1.2, 1.5, 1.7, 1.8], "validation": [1.3, 1.6, 1.65, 1.6],
    ...            "best_epoch": 2}
    >>> ax = plot_history(history)
    >>> [line.get_label() for line in ax.lines]
    ['train', 'validation', 'best epoch', 'kept weights (epoch 3)']
    >>> ax.lines[1].get_ydata().tolist()
    [1.3, 1.6, 1.65, 1.6]
    >>> plt.close("all")
    """
    history = _history(estimator_or_history)
    train = np.asarray(history.train, dtype=np.float64)
    validation = np.asarray(history.validation, dtype=np.float64)
    sign = -1.0 if loss else 1.0
    epochs = np.arange(1, len(train) + 1)
    what = _MEASURES.get(history.measure, ("score", "loss"))[bool(loss)]

    ax = _axes(ax)
    ax.plot(epochs, sign * train, label="train", **kwargs)
    if len(validation):
        ax.plot(epochs, sign * validation, label="validation", **kwargs)
    rounds = np.asarray(history.round, dtype=int)
    if len(rounds) and rounds.max() > 0:
        for k, boundary in enumerate(np.flatnonzero(np.diff(rounds)) + 1.5):
            ax.axvline(boundary, color="grey", linestyle="dotted", linewidth=1,
                       label="relabelled" if k == 0 else "_nolegend_")
    best = [b for b in history.best_epochs_overall() if 0 <= b < len(train)]
    if mark_best and best:
        monitored = validation if len(validation) else train
        ax.plot(np.asarray(best) + 1, sign * monitored[best], linestyle="none", marker="*",
                markersize=12, color="black", label="best epoch")
        kept = history.best_epoch
        if kept is not None and 0 <= kept < len(train):
            ax.axvline(kept + 1, color="black", linestyle="dashed", linewidth=1,
                       label=f"kept weights (epoch {kept + 1})")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.set_xlabel("epoch")
    ax.set_ylabel(what)
    ax.legend()
    return ax


# ----------------------------------------------------------------------------
# Free energy
# ----------------------------------------------------------------------------
def _per_trajectory(values) -> list[np.ndarray]:
    """One array, or a list of per-trajectory arrays, as a list of float arrays."""
    if isinstance(values, np.ndarray):
        return [values.astype(np.float64, copy=False)]
    if isinstance(values, (list, tuple)) and len(values) and all(np.ndim(v) >= 1 for v in values):
        return [np.asarray(v, dtype=np.float64) for v in values]
    return [np.asarray(values, dtype=np.float64)]


def _coordinates(x, y, weights) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Concatenated x, y and weights of all trajectories, checked against each other."""
    xs = _per_trajectory(x)
    if y is None:
        for i, item in enumerate(xs):
            if item.ndim != 2 or item.shape[1] != 2:
                where = "x" if len(xs) == 1 else f"x[{i}]"
                raise ValueError(
                    f"With y=None, x must be an array of shape (n_frames, 2) (or a list of them) "
                    f"holding the two coordinates; {where} has shape {item.shape}."
                )
        ys = [item[:, 1] for item in xs]
        xs = [item[:, 0] for item in xs]
    else:
        ys = _per_trajectory(y)
        if len(xs) != len(ys):
            raise ValueError(f"x has {len(xs)} trajectories, but y has {len(ys)}.")
        for i, (a, b) in enumerate(zip(xs, ys)):
            suffix = "" if len(xs) == 1 else f"[{i}]"
            if a.ndim != 1 or b.ndim != 1:
                raise ValueError(
                    f"x{suffix} and y{suffix} must be 1-D (one value per frame); got shapes {a.shape} "
                    f"and {b.shape}. To pass both coordinates as one (n_frames, 2) array use y=None."
                )
            if len(a) != len(b):
                raise ValueError(f"x{suffix} has {len(a)} frames, but y{suffix} has {len(b)}.")
    w = None
    if weights is not None:
        ws = _per_trajectory(weights)
        if len(ws) != len(xs):
            raise ValueError(f"weights has {len(ws)} trajectories, but x has {len(xs)}.")
        for i, (wi, a) in enumerate(zip(ws, xs)):
            if wi.shape != a.shape:
                suffix = "" if len(xs) == 1 else f"[{i}]"
                raise ValueError(
                    f"weights{suffix} has shape {wi.shape}, but x{suffix} has {len(a)} frames: one weight "
                    f"per frame."
                )
        w = np.concatenate(ws)
        if not np.isfinite(w).all() or (w < 0).any():
            raise ValueError("weights must be finite and non-negative.")
        if w.sum() == 0:
            raise ValueError("All weights are zero: there is no probability to plot.")
    x, y = np.concatenate(xs), np.concatenate(ys)
    if len(x) == 0:
        raise ValueError("x and y have no frames.")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("x and y must be finite: they hold NaN or infinite values.")
    return x, y, w


def _free_energy_surface(x, y, weights=None, *, bins=60, range=None, kT=1.0):
    """(F of shape (n_xbins, n_ybins) masked where empty, x edges, y edges), min(F) = 0."""
    counts, xedges, yedges = np.histogram2d(x, y, bins=bins, range=range, weights=weights)
    probability = counts / counts.sum()
    with np.errstate(divide="ignore"):
        energy = -kT * np.log(probability)
    energy = np.ma.masked_where(counts <= 0, energy)
    return energy - energy.min(), xedges, yedges


def plot_free_energy(x, y=None, *, weights=None, bins=60, range=None, kT=1.0, energy_unit="kT",
                     max_energy=None, levels=12, cmap="viridis", colorbar=True, ax=None, **kwargs):
    """Free-energy surface -kT ln p(x, y) of two coordinates, lowest bin at 0.

    The frames of all trajectories are histogrammed together (with
    ``weights``, e.g. reweighting factors of a biased simulation); empty
    bins have no free energy and are left blank.

    Parameters
    ----------
    x : ndarray of shape (n_frames,) or (n_frames, 2), or list of such
        First coordinate (one array per trajectory), e.g. the slowest
        learned coordinate or phi in degrees; with ``y=None`` an array (or
        list of arrays) of shape (n_frames, 2) holding both coordinates,
        e.g. ``VAMPNetEstimator.transform(X)[:, :2]``.
    y : ndarray of shape (n_frames,) or list of such, default=None
        Second coordinate, shaped like ``x``.
    weights : ndarray of shape (n_frames,) or list of such, default=None
        Non-negative weight of every frame.
    bins : int, [int, int] or [array, array], default=60
        Histogram bins, as in :func:`numpy.histogram2d`.
    range : [[xmin, xmax], [ymin, ymax]], default=None
        Histogram range, as in :func:`numpy.histogram2d`, e.g.
        ``[[-180, 180], [-180, 180]]`` for dihedrals in degrees.
    kT : float, default=1.0
        Thermal energy in ``energy_unit`` (2.494 kJ/mol at 300 K).
    energy_unit : str, default="kT"
        Unit of the colour bar label.
    max_energy : float, default=None
        Leave bins above this free energy blank too.
    levels : int or array-like, default=12
        Contour levels, as in :meth:`matplotlib.axes.Axes.contourf`.
    cmap : str or Colormap, default="viridis"
    colorbar : bool, default=True
        Whether to add a colour bar.
    ax : matplotlib.axes.Axes, default=None
        Axes to draw into; ``None`` makes a new figure.
    **kwargs
        Passed to :meth:`matplotlib.axes.Axes.contourf`.

    Returns
    -------
    ax : matplotlib.axes.Axes
        The Axes drawn into; the filled contours are ``ax.collections[0]``
        (their ``zmin`` is 0).

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> import numpy as np
    >>> from g2v_sklearn.plotting import plot_free_energy
    >>> rng = np.random.default_rng(0)
    >>> xy = rng.normal(size=(5000, 2))
    >>> ax = plot_free_energy(xy, bins=30, kT=2.494, energy_unit="kJ/mol")
    >>> float(ax.collections[0].zmin)
    0.0
    >>> ax.figure.axes[1].get_ylabel()
    'free energy (kJ/mol)'
    >>> plt.close("all")
    """
    if isinstance(kT, bool) or not isinstance(kT, Real) or not (np.isfinite(kT) and kT > 0):
        raise ValueError(f"kT must be a positive number; got {kT!r}.")
    x, y, w = _coordinates(x, y, weights)
    energy, xedges, yedges = _free_energy_surface(x, y, w, bins=bins, range=range, kT=float(kT))
    if max_energy is not None:
        energy = np.ma.masked_where(energy > max_energy, energy)
    ax = _axes(ax)
    xcenters = 0.5 * (xedges[1:] + xedges[:-1])
    ycenters = 0.5 * (yedges[1:] + yedges[:-1])
    # histogram2d counts [x bin, y bin]; contourf wants rows along y.
    filled = ax.contourf(xcenters, ycenters, energy.T, levels=levels, cmap=cmap, **kwargs)
    if colorbar:
        ax.figure.colorbar(filled, ax=ax, label=f"free energy ({energy_unit})")
    return ax


# ----------------------------------------------------------------------------
# Per-residue importance
# ----------------------------------------------------------------------------
def _domain_ranges(domains, low: int, high: int) -> dict[str, list[tuple[int, int]]]:
    if not isinstance(domains, Mapping):
        raise TypeError(
            "domains must be a mapping name -> list of (first, last) residue ids, e.g. "
            f"{{'LID': [(122, 159)]}}; got {type(domains).__name__}."
        )
    out = {}
    for name, ranges in domains.items():
        if (isinstance(ranges, (tuple, list)) and len(ranges) == 2
                and all(isinstance(v, Integral) for v in ranges)):
            ranges = [ranges]  # one (first, last) pair
        checked = []
        for item in ranges:
            if (not isinstance(item, (tuple, list)) or len(item) != 2
                    or not all(isinstance(v, Integral) and not isinstance(v, bool) for v in item)):
                raise ValueError(
                    f"Domain {name!r}: each range must be a pair (first, last) of integer residue ids; "
                    f"got {item!r}."
                )
            first, last = int(item[0]), int(item[1])
            if first > last:
                raise ValueError(f"Domain {name!r}: range ({first}, {last}) ends before it starts.")
            if first < low or last > high:
                raise ValueError(
                    f"Domain {name!r}: range ({first}, {last}) lies outside the residues {low}-{high} of "
                    f"importance."
                )
            checked.append((first, last))
        out[str(name)] = checked
    return out


def plot_residue_importance(importance, *, residue_ids=None, domains=None, spread="std", ax=None,
                            color="C0", domain_colors=None, label=None, **kwargs):
    """Per-residue importance along the sequence, with protein domains as coloured bands.

    Parameters
    ----------
    importance : ndarray of shape (n_residues,) or (n_frames, n_residues)
        One value per residue, e.g. ``est.attention_importance(tokens)`` of
        a fitted VAMPNetEstimator or SPIBEstimator (already averaged over
        frames, heads and layers; with a :class:`TokenMerger` every residue
        of a fragment carries the fragment's value). A 2-D array (one row
        per frame, or per model of an ensemble) is averaged over its rows
        and its spread drawn as a band.
    residue_ids : array-like of int of shape (n_residues,), default=None
        Strictly increasing residue numbers for the x axis, e.g.
        ``tokens[0].residue_ids`` of the token trajectories (``None``: 1 to
        n_residues).
    domains : mapping of str to list of (int, int), default=None
        Name -> inclusive ``(first, last)`` residue-id ranges, drawn as
        coloured background bands from ``first - 0.5`` to ``last + 0.5``
        with one legend entry per domain. For adenylate kinase:
        ``{"CORE": [(1, 29), (60, 121), (160, 214)], "NMP": [(30, 59)],
        "LID": [(122, 159)]}``.
    spread : "std" or (float, float), default="std"
        Band of a 2-D ``importance``: mean +- standard deviation, or two
        percentiles such as ``(10, 90)``.
    ax : matplotlib.axes.Axes, default=None
        Axes to draw into; ``None`` makes a new, wide figure.
    color : color, default="C0"
        Colour of the importance line and band.
    domain_colors : mapping of str to color, default=None
        Colour of each domain (``None``: the ``"Pastel1"`` colours).
    label : str, default=None
        Legend label of the importance line.
    **kwargs
        Passed to :meth:`matplotlib.axes.Axes.plot` for the line.

    Returns
    -------
    ax : matplotlib.axes.Axes
        The Axes drawn into; the importance is ``ax.lines[0]``, the domain
        bands are the Rectangle patches with gid ``"domain <name>"``.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> import numpy as np
    >>> from g2v_sklearn.plotting import plot_residue_importance
    >>> importance = np.random.default_rng(0).random(214)  # est.attention_importance(tokens)
    >>> adk = {"CORE": [(1, 29), (60, 121), (160, 214)], "NMP": [(30, 59)], "LID": [(122, 159)]}
    >>> ax = plot_residue_importance(importance, domains=adk)
    >>> [(p.get_gid(), p.get_x(), p.get_x() + p.get_width()) for p in ax.patches][3:]
    [('domain NMP', 29.5, 59.5), ('domain LID', 121.5, 159.5)]
    >>> plt.close("all")
    """
    values = np.asarray(importance, dtype=np.float64)
    if values.ndim not in (1, 2) or values.shape[-1] == 0 or (values.ndim == 2 and values.shape[0] == 0):
        raise ValueError(
            "importance must be 1-D of shape (n_residues,) or 2-D of shape (n_frames, n_residues); got "
            f"shape {values.shape}."
        )
    if not np.isfinite(values).all():
        raise ValueError("importance holds NaN or infinite values.")
    n_residues = values.shape[-1]
    if residue_ids is None:
        ids = np.arange(1, n_residues + 1)
    else:
        ids = np.asarray(residue_ids)
        if ids.ndim != 1 or len(ids) != n_residues:
            raise ValueError(
                f"residue_ids has shape {ids.shape}, but importance has {n_residues} residues: one id per "
                f"residue."
            )
        if ids.dtype.kind not in "iu":
            raise ValueError(f"residue_ids must be integers; got dtype {ids.dtype}.")
        if (np.diff(ids) <= 0).any():
            raise ValueError(
                "residue_ids must increase strictly along the sequence (for several chains, plot one "
                "chain at a time or pass residue indices)."
            )
    low, high = int(ids[0]), int(ids[-1])
    ranges = {} if domains is None else _domain_ranges(domains, low, high)
    band = None
    if values.ndim == 2:
        mean = values.mean(axis=0)
        if isinstance(spread, str) and spread == "std":
            std = values.std(axis=0)
            band = mean - std, mean + std
        elif isinstance(spread, (tuple, list)) and len(spread) == 2:
            band = tuple(np.percentile(values, spread, axis=0))
        else:
            raise ValueError(f"spread must be 'std' or a pair of percentiles such as (10, 90); got {spread!r}.")
    else:
        mean = values

    plt = _pyplot()
    from matplotlib.patches import Rectangle

    ax = _axes(ax, figsize=(8, 3))
    palette = plt.get_cmap("Pastel1").colors
    for k, (name, spans) in enumerate(ranges.items()):
        face = (domain_colors or {}).get(name, palette[k % len(palette)])
        for s, (first, last) in enumerate(spans):
            ax.add_patch(Rectangle((first - 0.5, 0), last - first + 1, 1, transform=ax.get_xaxis_transform(),
                                   facecolor=face, edgecolor="none", zorder=0, gid=f"domain {name}",
                                   label=name if s == 0 else "_nolegend_"))
    ax.plot(ids, mean, color=color, label=label, **kwargs)
    if band is not None:
        ax.fill_between(ids, band[0], band[1], color=color, alpha=0.3, linewidth=0)
    ax.set_xlim(low - 0.5, high + 0.5)
    ax.set_xlabel("residue")
    ax.set_ylabel("importance")
    if ranges or label is not None:
        ax.legend(loc="upper right")
    return ax


# The kinetic model's figures live in their own file (they build on the helpers above), loaded
# on first use: this module imports alone, without the package or matplotlib.
_KINETIC_FIGURES = ("plot_committor", "plot_state_importance", "plot_state_network", "plot_states_on_coordinates")


def __getattr__(name: str):
    if name in _KINETIC_FIGURES:
        import importlib

        return getattr(importlib.import_module("g2v_sklearn._plotting_kinetics"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
