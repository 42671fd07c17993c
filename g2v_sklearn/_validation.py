"""Input checks shared by the estimators: lists of trajectories, and which are long enough.

One home for them, so that every estimator words the same problem the same
way: a list of feature arrays or discrete trajectories (lists of token
trajectories are checked beside their class, by ``tokens.check_token_list``);
MD frames given where features are expected; and trajectories too short for
the lag time (skipped with one warning that names them, or an error giving
every length when none is long enough).
"""

from __future__ import annotations

import os
import re
import warnings
from contextlib import contextmanager

import numpy as np
from scipy.sparse import issparse
from sklearn.utils import check_array

__all__ = [
    "as_list",
    "check_array_trajectories",
    "check_dtrajs",
    "check_feature_trajs",
    "check_not_constant",
    "check_not_raw_frames",
    "lagged_pairs",
    "listing",
    "long_enough",
    "numbers_expected",
    "with_lagged_pair",
    "require_nonnegative",
]

MAX_LISTED = 10  # items named in a message before "... (n more)"


def listing(values) -> str:
    values = [str(v) for v in values]
    if len(values) > MAX_LISTED:
        values = values[:MAX_LISTED] + [f"... ({len(values) - MAX_LISTED} more)"]
    return ", ".join(values)


def as_list(X, caller: str, what: str) -> list:
    if isinstance(X, (str, bytes)) or not hasattr(X, "__len__"):
        raise TypeError(
            f"{caller} expects a list of {what} (one per trajectory); got {type(X).__name__}."
        )
    items = list(X)
    if not items:
        raise ValueError(f"{caller} got an empty list; it needs at least one trajectory.")
    return items


@contextmanager
def numbers_expected(label: str, who: str, expected: str):
    """Turn NumPy's "could not convert string to float" inside the block into an error
    that names the input (``label``) and what ``who`` expected there."""
    try:
        yield
    except ValueError as exc:
        text = str(exc)
        if "could not convert" not in text and "strings" not in text:
            raise
        found = re.search(r"could not convert \w+ to \w+: (?:np\.str_\()?('.*?'|\S+)", text)
        value = f" ({found.group(1).rstrip(')')} is not a number)" if found else ""
        raise ValueError(
            f"{label} holds text, not numbers{value}: {who} expects {expected}. Turn text into "
            f"numbers first (categories as one-hot columns, say), or drop those columns."
        ) from exc


def check_not_raw_frames(X, who: str) -> None:
    """Refuse MD frames (mdtraj trajectories, file paths): the learners take features or tokens."""
    is_list = isinstance(X, (list, tuple))
    for i, item in enumerate(X if is_list else [X]):
        if type(item).__module__.startswith("mdtraj") or isinstance(item, (str, os.PathLike)):
            kind = ("a file path" if isinstance(item, (str, os.PathLike))
                    else f"an MD trajectory (mdtraj.{type(item).__name__})")
            where = f"X[{i}]" if is_list else "X"
            raise TypeError(
                f"{where} is {kind}: {who} learns from features (2-D arrays) or token "
                f"trajectories, not from MD frames. Embed the frames first, e.g. "
                f"Pipeline([('embed', GeomEmbedder(checkpoint)), ('merge', TokenMerger()), "
                f"('learn', {who}(...))])."
            )


def check_array_trajectories(X, who: str) -> None:
    """Each array in a list of trajectories is 2-D (n_frames, n_features), named if not."""
    for i, x in enumerate(X):
        if not isinstance(x, np.ndarray):
            raise TypeError(
                f"X mixes arrays with other inputs (trajectory {i} is a {type(x).__name__}); "
                f"{who} takes one kind."
            )
        if x.ndim != 2:
            hint = " (for one feature, x.reshape(-1, 1))" if x.ndim == 1 else ""
            raise ValueError(
                f"Trajectory {i} of X is an array of shape {x.shape}; {who} takes a list of "
                f"trajectories, each a 2-D array of shape (n_frames, n_features){hint}. One "
                f"trajectory as a list of frames is a 2-D array: np.stack(frames)."
            )


def check_not_constant(items: list[np.ndarray], who: str) -> None:
    """Refuse features that never change: no dynamics to learn (and no whitening to do)."""
    if len(items) and all(len(x) > 1 and np.ptp(x, axis=0).max(initial=0.0) == 0 for x in items):
        if len({x[0].tobytes() for x in items}) == 1:
            raise ValueError(
                f"X is constant: every feature has one value in every frame of every trajectory, "
                f"so there are no dynamics for {who} to learn. Check the featurisation."
            )


def check_feature_trajs(X, caller: str) -> tuple[list[np.ndarray], bool]:
    """Float feature trajectories of shape (n_frames, n_features), and whether X was one array.

    Each trajectory goes through scikit-learn's ``check_array`` (so sparse,
    complex, 1-D and empty inputs get scikit-learn's usual messages); NaN is
    reported with the trajectory and frame it sits in.
    """
    _refuse_tokens(X, "X", caller)
    if not isinstance(X, (list, tuple, np.ndarray)) and hasattr(X, "__array__"):
        X = np.asarray(X)
    single = (isinstance(X, np.ndarray) and X.ndim == 2) or issparse(X)
    items = [X] if single else as_list(X, caller, "2-D feature arrays")
    trajs = []
    for i, item in enumerate(items):
        label = "X" if single else f"X[{i}]"
        _refuse_tokens(item, label, caller)
        with numbers_expected(label, caller, "numeric features, a float array of shape (n_frames, "
                                             "n_features) per trajectory"):
            arr = check_array(
                item, dtype=[np.float64, np.float32], order="C", ensure_all_finite=False,
                input_name=label, estimator=caller,
            )
        if not np.isfinite(arr).all():
            frame = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
            raise ValueError(f"{label} has NaN or infinite values at frame {frame}.")
        trajs.append(arr)
    widths = {t.shape[1] for t in trajs}
    if len(widths) > 1:
        raise ValueError(
            f"The trajectories have different numbers of features ({sorted(widths)}); "
            f"{caller} needs the same features in every trajectory."
        )
    return trajs, single


def _refuse_tokens(item, label: str, caller: str) -> None:
    """Token trajectories (or arrays of their shape) where 2-D features belong: say which
    step goes in between."""
    ndim = getattr(item, "ndim", None)
    is_tokens = type(item).__name__ == "TokenTrajectory"
    if not is_tokens and ndim != 4:
        return
    shape = getattr(item, "shape", None)
    what = "a token trajectory" if is_tokens else "an array"
    name = caller.split(".")[0]
    raise ValueError(
        f"{label} is {what} of shape {tuple(shape)} (n_frames, n_residues, 4, H): {name} clusters "
        f"2-D features, one array of shape (n_frames, n_features) per trajectory. Put a learner in "
        f"between that turns tokens into slow coordinates, e.g. Pipeline([('embed', GeomEmbedder(...)), "
        f"('merge', TokenMerger()), ('learn', VAMPNetEstimator(n_components=...)), "
        f"('cluster', {name}(...))])."
    )


def check_dtrajs(dtrajs, caller: str) -> tuple[list[np.ndarray], bool]:
    """Integer discrete trajectories of shape (n_frames,), and whether one array was given."""
    single = isinstance(dtrajs, np.ndarray) and dtrajs.ndim == 1
    items = [dtrajs] if single else as_list(dtrajs, caller, "1-D integer state arrays")
    out = []
    for i, item in enumerate(items):
        label = "the discrete trajectory" if single else f"dtrajs[{i}]"
        arr = np.asarray(item)
        if arr.ndim != 1:
            raise ValueError(
                f"{label} has shape {arr.shape}; {caller} expects each discrete trajectory as "
                f"a 1-D array of integer states (pass a single trajectory as a 1-D ndarray, "
                f"or a list of them)."
            )
        if arr.size and arr.dtype.kind not in "iu":
            raise TypeError(
                f"{label} has dtype {arr.dtype}; discrete trajectories must hold integer state "
                f"indices (e.g. the output of KMeansDiscretizer.transform)."
            )
        if arr.size and arr.max() > np.iinfo(np.int32).max:
            raise ValueError(f"{label} has state index {arr.max()}, beyond the int32 range.")
        out.append(np.ascontiguousarray(arr, dtype=np.int32))
    return out, single


def require_nonnegative(dtrajs: list[np.ndarray], caller: str) -> None:
    for i, d in enumerate(dtrajs):
        if d.size and d.min() < 0:
            frame = int(np.flatnonzero(d < 0)[0])
            raise ValueError(
                f"dtrajs[{i}] has the negative state {d[frame]} at frame {frame}; {caller} needs "
                f"states numbered from 0 (cut unassigned frames out of the trajectory)."
            )


def with_lagged_pair(lengths: list[int], lagtime: int) -> list[int]:
    """Indices of the trajectories longer than ``lagtime``: the one rule for which
    trajectories give a time-lagged pair (:func:`long_enough` adds the warning)."""
    return [i for i, n in enumerate(lengths) if n > lagtime]


def long_enough(lengths: list[int], lagtime: int, caller: str, *, stacklevel: int = 4) -> list[int]:
    """Indices of the trajectories longer than ``lagtime``: the ones with a time-lagged pair.

    The others are skipped with one warning naming them (``stacklevel`` as
    in ``warnings.warn``: 4 names the line that called a public method two
    calls above this one); if none is long enough, a ValueError gives every
    length.
    """
    kept = with_lagged_pair(lengths, lagtime)
    short = sorted(set(range(len(lengths))) - set(kept))
    if len(short) == len(lengths):
        one = ""
        if len(lengths) == 1:  # in the words scikit-learn's common checks look for
            n = lengths[0]
            one = f" (the one trajectory has {n} sample{'s' if n != 1 else ''}, n_samples={n})"
        raise ValueError(
            f"lagtime={lagtime} frames is not shorter than any trajectory given to {caller} "
            f"(lengths: {listing(lengths)} frames){one}; a trajectory needs at least lagtime + 1 "
            f"= {lagtime + 1} frames to give one time-lagged pair. Use a shorter lagtime or "
            f"longer trajectories."
        )
    if short:
        warnings.warn(
            f"{caller} skips {len(short)} trajector{'y' if len(short) == 1 else 'ies'} not "
            f"longer than lagtime={lagtime} frames, which give no time-lagged pair: "
            f"{listing(f'{i} ({lengths[i]} frames)' for i in short)}.",
            UserWarning,
            stacklevel=stacklevel,
        )
    return kept


def lagged_pairs(lengths: list[int], lagtime: int, caller: str) -> np.ndarray:
    """All (trajectory, t) with t + lagtime inside the trajectory, shape (n_pairs, 2);
    trajectories too short for one pair are handled by :func:`long_enough`."""
    return np.concatenate(
        [np.stack([np.full(lengths[i] - lagtime, i), np.arange(lengths[i] - lagtime)], axis=1)
         for i in long_enough(lengths, lagtime, caller)]
    ).astype(np.int64)
