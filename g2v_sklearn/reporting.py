"""Reports of fitted models: the tables, figures and summary that ``g2v report`` and the examples write.

:func:`pipeline_report` writes the whole report of a fitted pipeline
(embedding or token stores, an optional merge step, a learner, an optional
k-means step and an MSM); the other functions are its parts, for reports of
one's own (``examples/alanine_dipeptide.py`` puts them beside a (phi, psi)
reference). Needs matplotlib (``pip install "g2v_sklearn[plot]"``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from . import plotting

__all__ = ["central_range", "cv_table", "pipeline_report", "save_figures", "slowest_timescales"]


def _short_names(keys) -> dict[str, str]:
    """Grid keys without their step prefix (``vamp__lr`` -> ``lr``) when that leaves them distinct."""
    short = {key: key.rpartition("__")[2] for key in keys}
    return short if len(set(short.values())) == len(short) else {key: key for key in keys}


def cv_table(search, *, score_name: str = "score") -> list[dict]:
    """One row per candidate of a fitted grid search: its parameters and its cross-validated score.

    Parameters
    ----------
    search : sklearn.model_selection.GridSearchCV
        A fitted search.
    score_name : str, default="score"
        The score's name in the columns ``mean_cv_<score_name>`` and
        ``std_cv_<score_name>``.

    Returns
    -------
    rows : list of dict
        The parameters of each candidate (without their step prefix when
        the names stay distinct, so ``vamp__lr`` is ``lr``), then the mean
        and standard deviation over the folds of its test score.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import Ridge
    >>> from sklearn.model_selection import GridSearchCV
    >>> from g2v_sklearn.reporting import cv_table
    >>> X, y = np.arange(20.0).reshape(10, 2), np.arange(10.0)
    >>> search = GridSearchCV(Ridge(), {"alpha": [0.1, 1.0]}, cv=2).fit(X, y)
    >>> [sorted(row) for row in cv_table(search, score_name="r2")]
    [['alpha', 'mean_cv_r2', 'std_cv_r2'], ['alpha', 'mean_cv_r2', 'std_cv_r2']]
    """
    results = search.cv_results_
    short = _short_names(results["params"][0])
    return [
        {**{short[k]: v for k, v in params.items()},
         f"mean_cv_{score_name}": float(mean), f"std_cv_{score_name}": float(std)}
        for params, mean, std in zip(results["params"], results["mean_test_score"],
                                     results["std_test_score"])
    ]


def slowest_timescales(msm, k: int = 2, *, timestep: float = 1.0, confidence: float = 0.95) -> dict:
    """The ``k`` slowest implied timescales of a fitted MSM, with credible intervals when Bayesian.

    Parameters
    ----------
    msm : MSMEstimator
        A fitted MSM step.
    k : int, default=2
        How many timescales, slowest first.
    timestep : float, default=1.0
        Time per frame in the unit wanted (e.g. ``dt_ps / 1000`` for ns).
    confidence : float, default=0.95
        Mass of the credible intervals.

    Returns
    -------
    timescales : dict
        ``"timescales"``: list of ``k`` floats (maximum likelihood);
        ``"ci"``: ``[lower, upper]`` lists from the Bayesian posterior, or
        None for a maximum-likelihood MSM.

    Examples
    --------
    >>> import numpy as np
    >>> from g2v_sklearn import MSMEstimator
    >>> from g2v_sklearn.reporting import slowest_timescales
    >>> dtraj = np.random.default_rng(0).integers(0, 3, 500)
    >>> result = slowest_timescales(MSMEstimator(lagtime=1).fit([dtraj]), k=2)
    >>> len(result["timescales"]), result["ci"]
    (2, None)
    """
    values = (np.asarray(msm.timescales(k)) * timestep).tolist()
    ci = None
    if getattr(msm, "posterior_", None) is not None:
        stats = msm.posterior_.gather_stats("timescales", k=k, confidence=confidence)
        ci = [(np.asarray(stats.L) * timestep).tolist(), (np.asarray(stats.R) * timestep).tolist()]
    return {"timescales": values, "ci": ci}


def central_range(values, coverage: float = 99.8) -> list[list[float]]:
    """Per column, the range that holds the central ``coverage`` percent of the values.

    Learned coordinates have long sparse tails; a free-energy surface over
    this range shows the wells instead of the outliers.

    Parameters
    ----------
    values : ndarray of shape (n_frames, n_columns) or list of such
        Coordinates, one array per trajectory or all together.
    coverage : float, default=99.8
        Percent of the values inside the range.

    Returns
    -------
    ranges : list of [low, high]
        One per column, for ``plot_free_energy(range=...)``.

    Examples
    --------
    >>> import numpy as np
    >>> from g2v_sklearn.reporting import central_range
    >>> central_range(np.arange(1001.0).reshape(-1, 1), coverage=80)
    [[100.0, 900.0]]
    """
    stacked = np.concatenate(values) if isinstance(values, (list, tuple)) else np.asarray(values)
    stacked = stacked.reshape(len(stacked), -1)
    tail = (100.0 - coverage) / 2
    return [np.percentile(stacked[:, i], [tail, 100.0 - tail]).tolist() for i in range(stacked.shape[1])]


def save_figures(figures: dict, out: str | os.PathLike, *, dpi: int = 120) -> None:
    """Lay out, save as PNG and close figures.

    Parameters
    ----------
    figures : dict of str to matplotlib.figure.Figure
        File name (in ``out``) to figure. A figure with a figure-level legend
        (the CK test's) keeps room for it above the panels.
    out : str or path-like
        Output folder (made if missing).
    dpi : int, default=120
        Resolution.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import matplotlib.pyplot as plt
    >>> from g2v_sklearn.reporting import save_figures
    >>> with tempfile.TemporaryDirectory() as out:
    ...     save_figures({"line.png": plt.figure()}, out)
    ...     print(sorted(p.name for p in Path(out).iterdir()))
    ['line.png']
    """
    plt = plotting._pyplot()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
        fig.tight_layout(rect=(0, 0, 1, 0.92) if fig.legends else None)
        fig.savefig(out / name, dpi=dpi)
        plt.close(fig)


def _learner_index(pipeline) -> int:
    for index, (_, step) in enumerate(pipeline.steps):
        if hasattr(step, "history_"):
            return index
    raise ValueError(
        f"The pipeline has no fitted learner (a step with history_, such as VAMPNetEstimator or "
        f"SPIBEstimator); its steps are {[name for name, _ in pipeline.steps]}."
    )


def _report_lagtimes(lag: int, shortest: int) -> list[int]:
    """Lag times around the model's for the implied-timescale plot, each below a quarter of
    the shortest trajectory (the model's own lag time always among them)."""
    wanted = {max(1, round(lag * f)) for f in (0.25, 0.5, 1, 2, 4, 7, 10)}
    return sorted({t for t in wanted if t <= shortest // 4} | {lag})


def pipeline_report(pipeline, X, out: str | os.PathLike, *, timestep: float | None = None,
                    lagtimes=None, n_sets: int = 2, extra: dict | None = None) -> dict:
    """Write the report of a fitted pipeline that ends in an MSM: figures and summary.json.

    The learner's coordinates (or states) and the discrete trajectories are
    computed from ``X`` with the fitted steps; then ``out`` gets
    ``implied_timescales.png`` (MSMs at lag times around the model's),
    ``ck_test.png`` (Chapman-Kolmogorov test on ``n_sets`` PCCA+ sets),
    ``free_energy.png`` (on the first two learned coordinates; left out
    when the learner gives states), ``training.png`` (the learner's
    history) and ``summary.json``.

    Parameters
    ----------
    pipeline : sklearn.pipeline.Pipeline
        Fitted; one step has ``history_`` (the learner) and the last is an
        :class:`MSMEstimator`.
    X : list
        What the pipeline takes: trajectories, or token trajectories when it
        starts after the embedding.
    out : str or path-like
        Output folder (made if missing).
    timestep : float, default=None
        Picoseconds between frames; times are then in ns, else in frames.
    lagtimes : sequence of int, default=None
        Lag times (frames) of the implied-timescale plot; ``None`` takes
        multiples of the MSM's lag time below a quarter of the shortest
        trajectory.
    n_sets : int, default=2
        Metastable sets of the CK test.
    extra : dict, default=None
        More entries for summary.json (``g2v fit``'s grid search, say).

    Returns
    -------
    summary : dict
        What summary.json holds: ``data``, ``msm`` and the slowest implied
        timescales (``slowest_timescales_ns`` with a timestep, else
        ``slowest_timescales_frames``: ``learned`` and, for a Bayesian MSM,
        ``learned_95ci``), then ``extra``.

    Examples
    --------
    A fitted pipeline from ``g2v fit`` (``model.joblib``) and its token
    stores give the same report as ``g2v report``:

    >>> import joblib  # doctest: +SKIP
    >>> from g2v_sklearn import load_tokens  # doctest: +SKIP
    >>> from g2v_sklearn.reporting import pipeline_report  # doctest: +SKIP
    >>> tokens = [load_tokens(d) for d in ["tokens/a1b2", "tokens/c3d4"]]  # doctest: +SKIP
    >>> summary = pipeline_report(joblib.load("fit/model.joblib"), tokens, "report",
    ...                           timestep=tokens[0].timestep)  # doctest: +SKIP
    """
    plt = plotting._pyplot()
    learner_at = _learner_index(pipeline)
    learner, msm = pipeline.steps[learner_at][1], pipeline.steps[-1][1]
    if msm.n_states_ < 2:
        raise ValueError(f"The MSM has {msm.n_states_} state: it has no timescales to report. "
                         f"Refit with more states (n_clusters, or SPIB's n_states and lagtime).")
    z = pipeline[: learner_at + 1].transform(X)
    rest = pipeline[learner_at + 1: -1]
    dtrajs = rest.transform(z) if len(rest.steps) else z
    scale, unit = (timestep / 1000.0, "ns") if timestep else (1.0, "frames")
    lag = int(msm.lagtime_)
    lengths = [len(d) for d in dtrajs]
    if lagtimes is None:
        lagtimes = _report_lagtimes(lag, min(lengths))

    figures = {}
    ax = plotting.plot_implied_timescales(msm.implied_timescales(dtrajs, lagtimes, n_its=3),
                                          timestep=scale, unit=unit)
    ax.set_title("MSM on learned coordinates")
    figures["implied_timescales.png"] = ax.figure
    axes = plotting.plot_ck_test(msm.ck_test(dtrajs, n_sets=n_sets), timestep=scale, unit=unit)
    figures["ck_test.png"] = np.asarray(axes).ravel()[0].figure
    coordinates = np.concatenate([np.asarray(c, dtype=float).reshape(len(c), -1) for c in z])
    if np.issubdtype(np.asarray(z[0]).dtype, np.floating) and coordinates.shape[1] >= 2:
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        plotting.plot_free_energy(coordinates[:, 0], coordinates[:, 1], ax=ax,
                                  range=central_range(coordinates[:, :2]))
        ax.set(xlabel="learned coordinate 1", ylabel="learned coordinate 2",
               title="Free energy on the learned coordinates")
        figures["free_energy.png"] = fig
    figures["training.png"] = plotting.plot_history(learner).figure
    save_figures(figures, out)

    slowest = slowest_timescales(msm, k=min(2, msm.n_states_ - 1), timestep=scale)
    times = {"learned": slowest["timescales"]}
    if slowest["ci"] is not None:
        times["learned_95ci"] = slowest["ci"]
    summary = {
        "data": {"trajectories": len(lengths), "frames": lengths, "timestep_ps": timestep,
                 "lag_frames": lag, **({"lag_ps": lag * timestep} if timestep else {})},
        "msm": {"n_states": int(msm.n_states_), "bayesian": bool(msm.bayesian),
                "lagtimes_plotted": [int(t) for t in lagtimes]},
        f"slowest_timescales_{unit}": times,
        "figures": sorted(figures),
        **(extra or {}),
    }
    (Path(out) / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return summary
