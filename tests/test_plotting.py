"""g2v_sklearn.plotting: what is drawn, checked against the data it was drawn from."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

import matplotlib.pyplot as plt
from deeptime.markov.msm import MarkovStateModel
from deeptime.util import confidence_interval
from matplotlib.collections import PolyCollection
from matplotlib.patches import Rectangle
from sklearn.exceptions import NotFittedError

from g2v_sklearn import MSMEstimator, SPIBEstimator, VAMPNetEstimator
from g2v_sklearn.plotting import (
    _free_energy_surface,
    plot_ck_test,
    plot_free_energy,
    plot_history,
    plot_implied_timescales,
    plot_residue_importance,
)

P3 = np.array([[0.98, 0.02, 0.0], [0.01, 0.97, 0.02], [0.0, 0.05, 0.95]])
ADK = {"CORE": [(1, 29), (60, 121), (160, 214)], "NMP": [(30, 59)], "LID": [(122, 159)]}


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def dtraj():
    return MarkovStateModel(P3).simulate(5000, seed=0)


@pytest.fixture(scope="module")
def bayesian_msm(dtraj):
    return MSMEstimator(lagtime=2, bayesian=True, n_samples=20, random_state=0).fit(dtraj)


def process_lines(ax):
    return [line for line in ax.lines if line.get_label().startswith("process")]


def bands(ax):
    """Filled regions other than the shaded cutoff."""
    return [c for c in ax.collections if isinstance(c, PolyCollection) and c.get_gid() != "cutoff"]


def by_label(ax, label):
    (line,) = [line for line in ax.lines if line.get_label() == label]
    return line


# ----------------------------------------------------------------------------- implied timescales
@pytest.mark.parametrize("n_its", [1, 2])
def test_its_one_line_per_process_and_cutoff_below_lag(dtraj, n_its):
    its = MSMEstimator().implied_timescales(dtraj, [1, 2, 4, 8], n_its=2)
    ax = plot_implied_timescales(its, n_its=n_its)
    lines = process_lines(ax)
    assert len(lines) == n_its
    for i, line in enumerate(lines):
        np.testing.assert_array_equal(line.get_xdata(), its.lagtimes)
        np.testing.assert_allclose(line.get_ydata(), its.timescales_for_process(i))
    assert ax.get_yscale() == "log"
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("lag time (frames)", "timescale (frames)")
    assert bands(ax) == []  # no samples, no bands
    (cutoff,) = [c for c in ax.collections if c.get_gid() == "cutoff"]
    vertices = cutoff.get_paths()[0].vertices
    for lag in its.lagtimes:  # the shading's upper edge is the lag time itself ...
        assert np.any(np.all(np.isclose(vertices, (lag, lag)), axis=1))
    assert vertices[:, 1].max() == pytest.approx(its.lagtimes.max())
    assert vertices[:, 1].min() == pytest.approx(ax.get_ylim()[0])  # ... and it reaches the bottom


def test_its_bayesian_samples_give_bands(bayesian_msm, dtraj):
    its = bayesian_msm.implied_timescales(dtraj, [1, 2, 4], n_its=2)
    assert its.has_samples
    ax = plot_implied_timescales(its, confidence=0.9)
    band_list = bands(ax)
    assert len(band_list) == 2
    for i, band in enumerate(band_list):
        lower, upper = confidence_interval(its.samples_for_process(i).T, conf=0.9, remove_nans=True)
        y = band.get_paths()[0].vertices[:, 1]
        assert y.min() == pytest.approx(lower.min()) and y.max() == pytest.approx(upper.max())
    assert len(process_lines(ax)) == 2


def test_its_time_units_scale_both_axes(dtraj):
    its = MSMEstimator().implied_timescales(dtraj, [1, 2, 4], n_its=1)
    ax = plot_implied_timescales(its, timestep=0.5, unit="ns")
    (line,) = process_lines(ax)
    np.testing.assert_allclose(line.get_xdata(), its.lagtimes * 0.5)
    np.testing.assert_allclose(line.get_ydata(), its.timescales_for_process(0) * 0.5)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("lag time (ns)", "timescale (ns)")
    assert ax.get_xlim() == pytest.approx((0.5, 2.0))


def test_its_from_arrays_sorted_by_lag():
    lagtimes = np.array([4, 1, 2])
    timescales = np.array([12.0, 10.0, 11.0])
    samples = timescales[:, None, None] * np.linspace(0.9, 1.1, 7)
    ax = plot_implied_timescales((lagtimes, timescales, samples), legend=False)
    (line,) = process_lines(ax)
    np.testing.assert_array_equal(line.get_xdata(), [1, 2, 4])
    np.testing.assert_array_equal(line.get_ydata(), [10.0, 11.0, 12.0])
    assert len(bands(ax)) == 1 and ax.get_legend() is None


def test_its_draws_into_given_axes(dtraj):
    its = MSMEstimator().implied_timescales(dtraj, [1, 2], n_its=1)
    _, (left, right) = plt.subplots(1, 2)
    assert plot_implied_timescales(its, ax=right) is right
    assert len(left.lines) == 0 and len(process_lines(right)) == 1


def test_its_errors(dtraj):
    its = MSMEstimator().implied_timescales(dtraj, [1, 2], n_its=2)
    with pytest.raises(ValueError, match="n_its=3 is more than the 2 timescales"):
        plot_implied_timescales(its, n_its=3)
    with pytest.raises(ValueError, match="n_its must be a positive integer"):
        plot_implied_timescales(its, n_its=0)
    with pytest.raises(ValueError, match="unit='ns' needs timestep="):
        plot_implied_timescales(its, unit="ns")
    with pytest.raises(ValueError, match="name its unit, e.g. unit='ns'"):
        plot_implied_timescales(its, timestep=0.1)
    with pytest.raises(ValueError, match="timestep must be a positive number"):
        plot_implied_timescales(its, timestep=-1.0, unit="ns")
    with pytest.raises(ValueError, match="confidence must be a number between 0 and 1"):
        plot_implied_timescales(its, confidence=95)
    with pytest.raises(TypeError, match="ImpliedTimescales"):
        plot_implied_timescales(np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"its has 3 lag times, but timescales of shape \(2, 2\)"):
        plot_implied_timescales(([1, 2, 3], np.ones((2, 2))))
    with pytest.raises(ValueError, match="samples of its have shape"):
        plot_implied_timescales(([1, 2], np.ones((2, 2)), np.ones((2, 3, 5))))


# ----------------------------------------------------------------------------- CK test
def test_ck_panels_show_estimates_and_predictions(bayesian_msm, dtraj):
    ck = bayesian_msm.ck_test(dtraj, n_sets=2)
    axes = plot_ck_test(ck)
    assert axes.shape == (2, 2)
    for i in range(2):
        for j in range(2):
            estimate, prediction = axes[i, j].lines[:2]
            np.testing.assert_allclose(estimate.get_ydata(), ck.estimates[:, i, j])
            np.testing.assert_allclose(prediction.get_ydata(), ck.predictions[:, i, j])
            assert prediction.get_linestyle() == "--" and estimate.get_linestyle() == "-"
            assert len(bands(axes[i, j])) == 2  # Bayesian: estimate and prediction bands
            assert axes[i, j].get_ylim() == (0, 1)
    assert axes[0, 0].get_ylabel() == "probability" and axes[1, 1].get_xlabel() == "lag time (frames)"
    (legend,) = axes[0, 0].figure.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == ["estimate (95% conf.)", "prediction (95% conf.)"]
    handles = legend.legend_handles
    assert handles[0].get_linestyle() == "-" and handles[1].get_linestyle() == "--"


def test_ck_estimate_bands_leave_out_deeptimes_lag0_sample(bayesian_msm, dtraj):
    ck = bayesian_msm.ck_test(dtraj, n_sets=2)
    # deeptime appends the lag-0 identity to every lag time's samples: 20 samples + 1
    assert [len(s) for s in ck.estimates_samples[1:]] == [21] * (len(ck.lagtimes) - 1)
    axes = plot_ck_test(ck, confidence=0.9)
    vertices = bands(axes[0, 1])[0].get_paths()[0].vertices  # the black estimate band, drawn first
    genuine = np.array([np.asarray(s[:-1])[:, 0, 1] for s in ck.estimates_samples[1:]])
    lower, upper = confidence_interval(genuine.T, conf=0.9)
    for k, lag in enumerate(ck.lagtimes[1:]):
        y = vertices[np.isclose(vertices[:, 0], lag), 1]
        assert y.min() == pytest.approx(lower[k]) and y.max() == pytest.approx(upper[k])
    with_identity = np.array([np.asarray(s)[:, 0, 1] for s in ck.estimates_samples[1:]])
    stretched, _ = confidence_interval(with_identity.T, conf=0.9)
    assert lower.min() > 0.2 and stretched.min() < 0.1  # the extra 0 would pull the band down


def test_ck_into_given_axes_matches_deeptime_grid(bayesian_msm, dtraj):
    ck = bayesian_msm.ck_test(dtraj, n_sets=2)
    grid = plot_ck_test(ck, timestep=0.1, unit="ns")
    _, mine = plt.subplots(2, 2)
    assert plot_ck_test(ck, ax=mine, timestep=0.1, unit="ns") is not None
    for a, b in zip(grid.flat, mine.flat):
        assert len(a.lines) == len(b.lines) and len(a.collections) == len(b.collections)
        for la, lb in zip(a.lines, b.lines):
            np.testing.assert_allclose(la.get_xydata(), lb.get_xydata())
        for ca, cb in zip(a.collections, b.collections):
            np.testing.assert_allclose(ca.get_paths()[0].vertices, cb.get_paths()[0].vertices)
        assert a.get_ylim() == b.get_ylim()
    np.testing.assert_allclose(mine[0, 0].lines[0].get_xdata(), ck.lagtimes * 0.1)
    assert mine[1, 0].get_xlabel() == "lag time (ns)"


def test_ck_errors(bayesian_msm, dtraj):
    ck = bayesian_msm.ck_test(dtraj, n_sets=2)
    _, axes = plt.subplots(1, 3)
    with pytest.raises(ValueError, match=r"must hold 2 x 2 = 4 Axes; got 3"):
        plot_ck_test(ck, ax=axes)
    with pytest.raises(TypeError, match="ChapmanKolmogorovTest"):
        plot_ck_test(bayesian_msm)


# ----------------------------------------------------------------------------- history
def test_history_curves_equal_the_history():
    history = {"train": [1.0, 1.4, 1.6, 1.7, 1.75], "validation": [1.2, 1.5, 1.65, 1.6, 1.55],
               "best_epoch": 2}
    ax = plot_history(history)
    for key in ("train", "validation"):
        line = by_label(ax, key)
        np.testing.assert_array_equal(line.get_xdata(), np.arange(1, 6))
        np.testing.assert_array_equal(line.get_ydata(), history[key])
    star = by_label(ax, "best epoch")
    np.testing.assert_array_equal(star.get_xydata(), [[3, 1.65]])  # epoch 3 (1-based), on validation
    kept = by_label(ax, "kept weights (epoch 3)")
    assert list(kept.get_xdata()) == [3, 3]
    losses = plot_history(history, loss=True)
    np.testing.assert_array_equal(by_label(losses, "train").get_ydata(), -np.asarray(history["train"]))
    assert losses.get_ylabel() == "loss"


def test_history_without_validation_marks_the_train_curve():
    ax = plot_history({"train": [1.0, 2.0, 3.0], "validation": [], "best_epoch": 2})
    assert [line.get_label() for line in ax.lines] == ["train", "best epoch", "kept weights (epoch 3)"]
    np.testing.assert_array_equal(by_label(ax, "best epoch").get_xydata(), [[3, 3.0]])


def test_history_spib_rounds_count_best_epochs_within_rounds():
    history = {"train": [1, 2, 3, 2.5, 3, 3.5, 3.2], "validation": [1.5, 2, 2.8, 2.7, 3.1, 3.3, 3.0],
               "round": [0, 0, 0, 1, 1, 1, 1], "best_epoch": [2, 2], "n_states": [4, 3]}
    ax = plot_history(history)
    # round 0: its epoch 2 is epoch 3 overall; round 1 starts at epoch 4, its epoch 2 is epoch 6
    np.testing.assert_array_equal(by_label(ax, "best epoch").get_xydata(), [[3, 2.8], [6, 3.3]])
    assert list(by_label(ax, "relabelled").get_xdata()) == [3.5, 3.5]
    assert list(by_label(ax, "kept weights (epoch 6)").get_xdata()) == [6, 6]  # a vertical line there
    assert ax.get_ylabel() == "score (minus the SPIB loss)"


def test_history_errors():
    with pytest.raises(ValueError, match="no 'train' scores"):
        plot_history({"loss": [1.0]})
    with pytest.raises(ValueError, match=r"history\['validation'\] has 2 entries, but history\['train'\] has 3"):
        plot_history({"train": [1, 2, 3], "validation": [1, 2], "best_epoch": 0})
    with pytest.raises(NotFittedError):
        plot_history(SPIBEstimator())
    with pytest.raises(TypeError, match="fitted VAMPNetEstimator or SPIBEstimator"):
        plot_history([1.0, 2.0])


# ----------------------------------------------------------------------------- free energy
@pytest.fixture(scope="module")
def gaussian():
    """20,000 frames of a Gaussian centred at (1, -2), wider along y."""
    rng = np.random.default_rng(1)
    return rng.normal((1.0, -2.0), (0.5, 1.0), size=(20_000, 2))


def test_free_energy_minimum_is_zero_at_the_densest_bin(gaussian):
    x, y = gaussian.T
    counts, _, _ = np.histogram2d(x, y, bins=30, range=[[-4, 4], [-6, 4]])
    energy, _, _ = _free_energy_surface(x, y, bins=30, range=[[-4, 4], [-6, 4]], kT=2.0)
    assert energy.min() == 0.0
    assert np.unravel_index(energy.argmin(), energy.shape) == np.unravel_index(counts.argmax(), counts.shape)
    np.testing.assert_array_equal(energy.mask, counts == 0)  # empty bins are masked
    full = counts > 0
    np.testing.assert_allclose(energy[full], -2.0 * np.log(counts[full] / counts.max()))

    ax = plot_free_energy(x, y, bins=30, range=[[-4, 4], [-6, 4]], kT=2.0, levels=np.arange(0, 21, 1.0))
    filled = ax.collections[0]
    assert filled.zmin == 0.0 and filled.levels[0] == 0.0
    lowest = filled.get_paths()[0]  # the region 0 <= F < 1: around the mean, x and y not swapped
    assert lowest.contains_point((1.0, -2.0))
    assert not lowest.contains_point((-2.0, 1.0)) and not lowest.contains_point((1.0, 1.5))
    assert ax.figure.axes[1].get_ylabel() == "free energy (kT)"


def test_free_energy_inputs_draw_the_same_surface(gaussian):
    x, y = gaussian.T
    kw = {"bins": 20, "range": [[-2, 4], [-6, 2]], "colorbar": False}
    reference = plot_free_energy(gaussian, **kw).collections[0].get_paths()
    variants = [
        plot_free_energy(x, y, **kw),
        plot_free_energy([x[:5000], x[5000:]], [y[:5000], y[5000:]], **kw),
        plot_free_energy([gaussian[:7000], gaussian[7000:]], **kw),
        # zero weight on a copy of the data far away: only the Gaussian counts
        plot_free_energy([gaussian, gaussian + 1.0], weights=[np.ones(20_000), np.zeros(20_000)], **kw),
    ]
    for ax in variants:
        paths = ax.collections[0].get_paths()
        assert len(paths) == len(reference)
        for a, b in zip(paths, reference):
            np.testing.assert_allclose(a.vertices, b.vertices)


def test_free_energy_errors():
    x = np.zeros(100)
    with pytest.raises(ValueError, match="x has 100 frames, but y has 99"):
        plot_free_energy(x, np.zeros(99))
    with pytest.raises(ValueError, match=r"x\[1\] has 10 frames, but y\[1\] has 11"):
        plot_free_energy([x, x[:10]], [x, np.zeros(11)])
    with pytest.raises(ValueError, match="x has 2 trajectories, but y has 1"):
        plot_free_energy([x, x], [x])
    with pytest.raises(ValueError, match=r"With y=None, x must be an array of shape \(n_frames, 2\)"):
        plot_free_energy(x)
    with pytest.raises(ValueError, match="To pass both coordinates as one"):
        plot_free_energy(np.zeros((100, 2)), x)
    with pytest.raises(ValueError, match="one weight per frame"):
        plot_free_energy(x, x, weights=np.ones(50))
    with pytest.raises(ValueError, match="non-negative"):
        plot_free_energy(x, x, weights=-np.ones(100))
    with pytest.raises(ValueError, match="must be finite"):
        plot_free_energy(np.full(100, np.nan), x)
    with pytest.raises(ValueError, match="kT must be a positive number"):
        plot_free_energy(x, x, kT=0)


# ----------------------------------------------------------------------------- residue importance
def domain_spans(ax):
    spans = {}
    for patch in ax.patches:
        if isinstance(patch, Rectangle) and (patch.get_gid() or "").startswith("domain "):
            spans.setdefault(patch.get_gid()[7:], []).append((patch.get_x(), patch.get_x() + patch.get_width()))
            assert (patch.get_y(), patch.get_height()) == (0, 1)  # the full height of the axes
    return spans


def test_importance_line_and_domain_bands():
    importance = np.random.default_rng(0).random(214)
    ax = plot_residue_importance(importance, domains=ADK)
    line = ax.lines[0]
    np.testing.assert_array_equal(line.get_xdata(), np.arange(1, 215))
    np.testing.assert_array_equal(line.get_ydata(), importance)
    spans = domain_spans(ax)
    assert spans == {name: [(a - 0.5, b + 0.5) for a, b in ranges] for name, ranges in ADK.items()}
    covered = sorted(r for ranges in spans.values() for r in ranges)  # AdK: the domains tile 1-214
    assert covered[0][0] == 0.5 and covered[-1][1] == 214.5
    assert all(a[1] == b[0] for a, b in itertools.pairwise(covered))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["CORE", "NMP", "LID"]


def test_importance_over_frames_is_averaged_with_a_band():
    rng = np.random.default_rng(0)
    values = rng.random((30, 50))
    ids = np.arange(101, 151)
    ax = plot_residue_importance(values, residue_ids=ids, domains={"hinge": (110, 120)})
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), ids)
    np.testing.assert_allclose(ax.lines[0].get_ydata(), values.mean(0))
    (band,) = bands(ax)
    y = band.get_paths()[0].vertices[:, 1]
    mean, std = values.mean(0), values.std(0)
    assert y.min() == pytest.approx((mean - std).min()) and y.max() == pytest.approx((mean + std).max())
    assert domain_spans(ax) == {"hinge": [(109.5, 120.5)]}
    assert ax.get_xlim() == (100.5, 150.5)
    ax = plot_residue_importance(values, spread=(10, 90))
    y = bands(ax)[0].get_paths()[0].vertices[:, 1]
    lower, upper = np.percentile(values, [10, 90], axis=0)
    assert y.min() == pytest.approx(lower.min()) and y.max() == pytest.approx(upper.max())


def test_importance_errors():
    with pytest.raises(ValueError, match=r"importance must be 1-D .* got shape \(2, 3, 4\)"):
        plot_residue_importance(np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="residue_ids has shape .* but importance has 214 residues"):
        plot_residue_importance(np.ones(214), residue_ids=np.arange(10))
    with pytest.raises(ValueError, match=r"Domain 'LID': range \(122, 260\) lies outside the residues 1-214"):
        plot_residue_importance(np.ones(214), domains={"LID": [(122, 260)]})
    with pytest.raises(ValueError, match=r"Domain 'NMP': range \(59, 30\) ends before it starts"):
        plot_residue_importance(np.ones(214), domains={"NMP": [(59, 30)]})
    with pytest.raises(ValueError, match="must increase strictly"):
        plot_residue_importance(np.ones(3), residue_ids=[1, 3, 2])
    with pytest.raises(ValueError, match="NaN or infinite"):
        plot_residue_importance(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="spread must be 'std' or a pair"):
        plot_residue_importance(np.ones((2, 3)), spread="iqr")


# ----------------------------------------------------------------------------- matplotlib is optional
def test_importing_the_package_does_not_import_pyplot():
    # deeptime imports the matplotlib package itself when it is installed; the promise here
    # is that no pyplot (no backend, no figure) comes with importing g2v_sklearn.
    code = ("import sys, g2v_sklearn, g2v_sklearn.plotting; "
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'")
    run = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr


def test_plotting_imports_without_matplotlib_and_says_how_to_install(monkeypatch):
    import importlib.util

    import g2v_sklearn.plotting

    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)  # as if matplotlib were not installed
    spec = importlib.util.spec_from_file_location("_plotting_copy", g2v_sklearn.plotting.__file__)
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)  # a fresh import of the module needs no matplotlib
    with pytest.raises(ImportError, match=r"pip install matplotlib \(or pip install g2v_sklearn\[plot\]\)"):
        copy.plot_history({"train": [1.0], "validation": [], "best_epoch": 0})
    with pytest.raises(ImportError, match="pip install"):
        copy.plot_free_energy([0.0, 1.0], [0.0, 1.0])


# ----------------------------------------------------------------------------- end to end
def test_fitted_vampnet_history_its_and_ck():
    rng = np.random.default_rng(0)
    trajectories = []
    for _ in range(2):  # two trajectories: one is held out for validation
        state = np.cumsum(rng.random(1000) < 0.02) % 2  # a two-state jump process
        trajectories.append(np.stack([2.0 * state + rng.normal(0, 0.3, 1000), rng.normal(size=1000)], 1))
    est = VAMPNetEstimator(lagtime=5, max_epochs=3, batch_size=128, hidden_layer_sizes=(16,),
                           validation_fraction=0.2, progress=False, random_state=0).fit(trajectories)

    ax = plot_history(est)
    np.testing.assert_array_equal(by_label(ax, "train").get_ydata(), est.history_["train"])
    np.testing.assert_array_equal(by_label(ax, "validation").get_ydata(), est.history_["validation"])
    best = est.history_["best_epoch"]
    assert list(by_label(ax, f"kept weights (epoch {best + 1})").get_xdata()) == [best + 1] * 2
    assert ax.get_ylabel() == "VAMP-2 score"

    its = est.implied_timescales(trajectories, [1, 2, 5, 10])
    ax = plot_implied_timescales(its, n_its=1)
    (line,) = process_lines(ax)
    np.testing.assert_allclose(line.get_ydata(), its.timescales_for_process(0))

    ck = est.ck_test(trajectories, lagtime_multiples=(1, 2, 3))
    axes = plot_ck_test(ck, timestep=0.02, unit="ns")
    assert axes.shape == (2, 2)
    np.testing.assert_allclose(axes[1, 0].lines[0].get_xdata(), ck.lagtimes * 0.02)
    np.testing.assert_allclose(axes[0, 0].lines[1].get_ydata(), ck.predictions[:, 0, 0].real)
    assert axes[0, 0].get_ylabel() == "expectation"  # a Koopman test, no lag-0 estimate
    (legend,) = axes[0, 0].figure.legends
    assert [t.get_text() for t in legend.get_texts()] == ["estimate", "prediction"]


def _three_well_model():
    """A Metropolis chain over three wells (populations 1 : 2 : 1) and its Bayesian kinetic model,
    with the chain position (plus noise) as two coordinates."""
    from g2v_sklearn import kinetic_model

    x = np.linspace(-1.6, 1.6, 33)
    v = 6 * (x**2 - 1) ** 2 * x**2 - np.log(np.where(np.abs(x) < 0.5, 2.0, 1.0))
    p = np.zeros((33, 33))
    for i in range(33):
        for j in (i - 1, i + 1):
            if 0 <= j < 33:
                p[i, j] = 0.5 * min(1.0, np.exp(-(v[j] - v[i])))
        p[i, i] = 1 - p[i].sum()
    d = MarkovStateModel(p).simulate(100_000, start=16, seed=0)
    msm = MSMEstimator(lagtime=1, bayesian=True, n_samples=20, random_state=0).fit([d])
    noise = np.random.default_rng(0).normal(scale=0.05, size=(len(d), 2))
    coords = [np.stack([x[d], np.zeros(len(d))], 1) + noise]
    model = kinetic_model(msm, [d], n_sets=3, timestep="10 ps")
    model.coordinates = coords
    return model, coords


def test_kinetic_model_figures():
    from g2v_sklearn.plotting import (
        plot_committor,
        plot_state_importance,
        plot_state_network,
        plot_states_on_coordinates,
    )

    model, coords = _three_well_model()
    ax = plot_state_network(model)
    sizes = ax.collections[0].get_sizes()
    assert len(sizes) == 3 and np.argmax(sizes) == np.argmax(model.populations)
    assert any("[" in t.get_text() for t in ax.texts)  # MFPTs with their intervals
    ends = np.argsort([model.sets[k].mean() for k in range(3)])  # left, middle, right
    paths = model.tpt(int(ends[0]), int(ends[2]))
    ax = plot_state_network(model, tpt=paths)
    assert "rate" in ax.get_title() and len(ax.texts) >= 3
    ax = plot_states_on_coordinates(model)
    assert len(ax.get_legend().get_texts()) == 3 and ax.collections  # surface, outlines, typical frames
    ax = plot_committor(paths, coords)
    y = ax.lines[0].get_ydata()
    assert y[0] < 0.1 and y[-1] > 0.9  # from the source's side to the sink's
    ax = plot_state_importance(np.abs(np.random.default_rng(0).normal(size=(3, 20))),
                               domains={"A": [(1, 10)], "B": [(11, 20)]})
    assert len(ax.lines) == 3 and {p.get_gid() for p in ax.patches} == {"domain A", "domain B"}
    with pytest.raises(ValueError, match=r"shape \(n_sets, n_residues\)"):
        plot_state_importance(np.ones(5))
    with pytest.raises(ValueError, match="positions must have shape"):
        plot_state_network(model, positions=np.zeros((2, 2)))
    plt.close("all")
