"""Figures of a kinetic model: the network of sets, sets on the free-energy surface,
committors, and what distinguishes each set. Re-exported by :mod:`g2v_sklearn.plotting`."""

from __future__ import annotations

import numpy as np

from .plotting import _axes, _pyplot, plot_free_energy, plot_residue_importance

__all__ = ["plot_committor", "plot_state_importance", "plot_state_network", "plot_states_on_coordinates"]


def _layout(n: int) -> np.ndarray:
    if n == 2:
        return np.array([[-1.0, 0.0], [1.0, 0.0]])
    angle = np.pi / 2 - 2 * np.pi * np.arange(n) / n
    return 1.6 * np.stack([np.cos(angle), np.sin(angle)], 1)


def _route(tpt) -> str:
    """``"0, 1 -> 2"``: the source and sink sets of a TPT result."""
    return " -> ".join(", ".join(str(k) for k in group) for group in (tpt.source, tpt.sink))


def _time(value: float, interval=None) -> str:
    text = f"{value:.3g}"
    return text if interval is None else f"{text} [{interval[0]:.3g}, {interval[1]:.3g}]"


def plot_state_network(model, *, tpt=None, ax=None, positions=None, cmap="tab10"):
    """The metastable sets as a network: node area by population, edges by net flux or MFPT.

    Parameters
    ----------
    model : KineticModel
    tpt : TransitionPathways, optional
        With it, edges are the net reactive flux between sets (width by flux);
        without, every pair is joined and labelled with the MFPTs both ways
        (and their 95 % intervals for a Bayesian MSM).
    ax : matplotlib.axes.Axes, optional
    positions : ndarray of shape (n_sets, 2), optional
        Where to draw the sets (default: on a circle, or side by side for two).
    cmap : str, default="tab10"

    Returns
    -------
    ax : matplotlib.axes.Axes
        Nodes are ``ax.collections[0]`` (one point per set).

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from g2v_sklearn import MSMEstimator, kinetic_model
    >>> rng = np.random.default_rng(0)
    >>> dtraj = np.concatenate([rng.integers(0, 2, 100) if k % 2 else rng.integers(2, 4, 100) for k in range(20)])
    >>> model = kinetic_model(MSMEstimator(lagtime=1).fit([dtraj]), [dtraj], n_sets=2)
    >>> from g2v_sklearn.plotting import plot_state_network
    >>> ax = plot_state_network(model)
    >>> len(ax.collections[0].get_sizes())
    2
    """
    plt = _pyplot()
    ax = _axes(ax, figsize=(6, 5))
    n = model.n_sets
    xy = _layout(n) if positions is None else np.asarray(positions, dtype=float)
    if xy.shape != (n, 2):
        raise ValueError(f"positions must have shape ({n}, 2), one point per set; got {xy.shape}.")
    colours = plt.get_cmap(cmap)(np.arange(n) % 10)
    if tpt is not None:
        flux = np.clip(tpt.net_flux, 0, None)
        top = flux.max() if flux.max() > 0 else 1.0
        for i, j in zip(*np.nonzero(flux)):
            ax.annotate("", xy=xy[j], xytext=xy[i], arrowprops=dict(
                arrowstyle="-|>", lw=1 + 6 * flux[i, j] / top, color="0.4", shrinkA=22, shrinkB=22))
            mid = (xy[i] + xy[j]) / 2
            ax.text(*mid, f"{flux[i, j]:.3g}/{model.unit}", ha="center", va="bottom", fontsize=8)
        ax.set_title(f"net flux, sets {_route(tpt)}: rate {_time(tpt.rate, tpt.rate_interval)} "
                     f"per {model.unit}", fontsize=9)
    else:
        for i in range(n):
            for j in range(i + 1, n):
                ax.plot(*xy[[i, j]].T, color="0.7", zorder=0)
                interval = (None, None) if model.mfpt_interval is None else (
                    model.mfpt_interval[:, i, j], model.mfpt_interval[:, j, i])
                mid = (xy[i] + xy[j]) / 2
                ax.text(*mid, f"{i}->{j}: {_time(model.mfpt[i, j], interval[0])}\n"
                              f"{j}->{i}: {_time(model.mfpt[j, i], interval[1])} {model.unit}",
                        ha="center", va="center", fontsize=7, bbox=dict(facecolor="white", edgecolor="none",
                                                                         alpha=0.8))
        ax.set_title(f"mean first-passage times ({model.unit})", fontsize=9)
    sizes = 200 + 3000 * model.populations / model.populations.max()
    ax.scatter(*xy.T, s=sizes, c=colours, edgecolors="k", zorder=3)
    for k in range(n):
        ax.text(*xy[k], f"{k}\n{model.populations[k]:.1%}", ha="center", va="center", zorder=4, fontsize=9)
    ax.set_xlim(xy[:, 0].min() - 0.8, xy[:, 0].max() + 0.8)
    ax.set_ylim(xy[:, 1].min() - 0.8, xy[:, 1].max() + 0.8)
    ax.set_axis_off()
    return ax


def plot_states_on_coordinates(model, coordinates=None, *, dims=(0, 1), bins=60, range=None, ax=None,
                               cmap="tab10", **kwargs):
    """The free-energy surface of two coordinates with each set outlined and its typical frame marked.

    Parameters
    ----------
    model : KineticModel
    coordinates : list of ndarray of shape (n_frames, n_dims), optional
        Default: the coordinates the model's frames were discretised from.
    dims : (int, int), default=(0, 1)
        Which two coordinates to draw.
    bins, range
        As in :func:`~g2v_sklearn.plotting.plot_free_energy`.
    ax : matplotlib.axes.Axes, optional
    cmap : str, default="tab10"
        Colours of the sets' outlines.
    **kwargs
        Passed to :func:`~g2v_sklearn.plotting.plot_free_energy`.

    Returns
    -------
    ax : matplotlib.axes.Axes

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from g2v_sklearn import MSMEstimator, kinetic_model
    >>> rng = np.random.default_rng(0)
    >>> dtraj = np.concatenate([rng.integers(0, 2, 100) if k % 2 else rng.integers(2, 4, 100) for k in range(20)])
    >>> model = kinetic_model(MSMEstimator(lagtime=1).fit([dtraj]), [dtraj], n_sets=2)
    >>> from g2v_sklearn.plotting import plot_states_on_coordinates
    >>> xy = [rng.normal(size=(dtraj.size, 2)) + 3 * (dtraj[:, None] >= 2)]  # the two sets apart
    >>> ax = plot_states_on_coordinates(model, xy)
    >>> [t.get_text() for t in ax.get_legend().get_texts()]
    ['set 0', 'set 1']
    """
    plt = _pyplot()
    coords = model.coordinates if coordinates is None else coordinates
    if coords is None:
        raise ValueError("The kinetic model has no coordinates; pass coordinates= (the learned ones).")
    xy = np.concatenate([np.asarray(c).reshape(len(c), -1) for c in coords])
    if xy.shape[1] <= max(dims):
        raise ValueError(f"dims={dims} needs {max(dims) + 1} coordinates; the data have {xy.shape[1]}.")
    x, y = xy[:, dims[0]], xy[:, dims[1]]
    ax = plot_free_energy(x, y, bins=bins, range=range, ax=ax, **kwargs)
    sets = np.concatenate(model.assignments)
    extent = ax.get_xlim(), ax.get_ylim()
    edges = [np.linspace(*extent[0], bins + 1), np.linspace(*extent[1], bins + 1)]
    total = np.histogram2d(x, y, bins=edges)[0]
    centres = [(e[1:] + e[:-1]) / 2 for e in edges]
    colours = plt.get_cmap(cmap)(np.arange(model.n_sets) % 10)
    typical = model.typical_frames()
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in model.assignments])])
    for k in np.arange(model.n_sets):
        share = np.histogram2d(x[sets == k], y[sets == k], bins=edges)[0] / np.maximum(total, 1)
        if share.max() >= 0.5 and share.min() < 0.5:
            ax.contour(*centres, share.T, levels=[0.5], colors=[colours[k]], linewidths=1.5)
        t, f = typical[k]
        ax.plot(x[offsets[t] + f], y[offsets[t] + f], marker="*", markersize=14, color=colours[k],
                markeredgecolor="k", linestyle="none", label=f"set {k}")
    ax.legend(loc="best", fontsize=8)
    return ax


def plot_committor(tpt, coordinate, *, bins=40, ax=None, **kwargs):
    """The forward committor of the frames against a coordinate (binned mean and spread).

    Parameters
    ----------
    tpt : TransitionPathways
    coordinate : list of ndarray of shape (n_frames,) or (n_frames, k)
        Per trajectory; the first column is used, e.g. the slowest learned coordinate.
    bins : int, default=40
    ax : matplotlib.axes.Axes, optional
    **kwargs
        Passed to :meth:`matplotlib.axes.Axes.plot`.

    Returns
    -------
    ax : matplotlib.axes.Axes

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from g2v_sklearn import MSMEstimator, kinetic_model
    >>> rng = np.random.default_rng(0)
    >>> dtraj = np.concatenate([rng.integers(0, 2, 100) if k % 2 else rng.integers(2, 4, 100) for k in range(20)])
    >>> model = kinetic_model(MSMEstimator(lagtime=1).fit([dtraj]), [dtraj], n_sets=2)
    >>> from g2v_sklearn.plotting import plot_committor
    >>> ax = plot_committor(model.tpt(0, 1), [dtraj.astype(float)])
    >>> ax.get_ylabel()
    'committor, sets 0 -> 1'
    """
    q = np.concatenate(tpt.frame_committors)
    x = np.concatenate([np.asarray(c).reshape(len(c), -1)[:, 0] for c in coordinate])
    if len(x) != len(q):
        raise ValueError(f"coordinate has {len(x)} frames but the committors {len(q)}.")
    keep = np.isfinite(q)
    edges = np.linspace(x[keep].min(), x[keep].max(), bins + 1)
    which = np.clip(np.digitize(x[keep], edges) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    mean = np.bincount(which, q[keep], minlength=bins) / np.maximum(count, 1)
    spread = np.sqrt(np.maximum(np.bincount(which, q[keep] ** 2, minlength=bins) / np.maximum(count, 1)
                                - mean**2, 0))
    centres = (edges[1:] + edges[:-1]) / 2
    seen = count > 0
    ax = _axes(ax, figsize=(5, 4))
    ax.plot(centres[seen], mean[seen], **kwargs)
    ax.fill_between(centres[seen], (mean - spread)[seen], (mean + spread)[seen], alpha=0.3, linewidth=0)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("coordinate")
    ax.set_ylabel(f"committor, sets {_route(tpt)}")
    return ax


def plot_state_importance(importance, *, residue_ids=None, domains=None, ax=None, cmap="tab10"):
    """Per-residue importance of every set (one line each), with domains as bands.

    Parameters
    ----------
    importance : ndarray of shape (n_sets, n_residues)
        From :func:`~g2v_sklearn.state_importance`.
    residue_ids, domains
        As in :func:`~g2v_sklearn.plotting.plot_residue_importance`.
    ax : matplotlib.axes.Axes, optional
    cmap : str, default="tab10"

    Returns
    -------
    ax : matplotlib.axes.Axes

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from g2v_sklearn.plotting import plot_state_importance
    >>> ax = plot_state_importance(np.random.default_rng(0).random((2, 30)), domains={"A": [(1, 15)]})
    >>> [t.get_text() for t in ax.get_legend().get_texts()]
    ['A', 'set 0', 'set 1']
    """
    values = np.asarray(importance, dtype=float)
    if values.ndim != 2:
        raise ValueError(f"importance must have shape (n_sets, n_residues); got {values.shape}.")
    plt = _pyplot()
    colours = plt.get_cmap(cmap)(np.arange(len(values)) % 10)
    for k, row in enumerate(values):
        ax = plot_residue_importance(row, residue_ids=residue_ids, domains=domains if k == 0 else None, ax=ax,
                                     color=colours[k], label=f"set {k}")
    ax.set_ylabel("importance (shift of the learned coordinates)")
    ax.legend(loc="upper right", fontsize=8)
    return ax
