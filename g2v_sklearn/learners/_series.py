"""The data of a fit, as the trainer sees it: trajectories, time-lagged pairs, the split.

Knows nothing of scikit-learn: the estimators turn ``X`` into a
:class:`TimeSeries` and freeze what one fit trains on into a :class:`FitData`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..tokens._merge_spec import MergeSpec
from ._distributed import Ranks

__all__ = ["FitData", "PairFrames", "TimeSeries", "grouped_pairs", "pair_arrays", "pair_frames"]


@dataclass
class TimeSeries:
    """A list of trajectories of one kind, as the learners see them.

    Attributes
    ----------
    kind : {"array", "tokens"}
    items : list
        2-D float arrays, or token trajectories.
    single : bool
        The input was one array (one trajectory): outputs are one array too.
    spec : MergeSpec or None
        The merge specification a TokenMerger attached.
    timestep : float or None
        Time between frames (ps) when the tokens carry it.
    """

    kind: str
    items: list
    single: bool = False
    spec: MergeSpec | None = None
    timestep: float | None = None

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.items]

    def fingerprint(self) -> str:
        """A digest of the data: lengths and the first and last frame of every trajectory."""
        digest = hashlib.sha256(repr(self.lengths).encode())
        for item in self.items:
            data = item if self.kind == "array" else item.features
            for frame in (data[0], data[len(item) - 1]):
                digest.update(np.ascontiguousarray(frame).tobytes())
        return digest.hexdigest()

    def frames(self, traj: int, index: np.ndarray, device) -> tuple[Tensor, ...]:
        """The network inputs of frames ``index`` of trajectory ``traj``."""
        item = self.items[traj]
        if self.kind == "array":
            return (torch.as_tensor(item[index], device=device),)
        # One copy of the frames asked for: read in sorted order (kind to memory maps),
        # put back in the order asked for in torch only when it differs.
        ascending = bool(np.all(index[1:] >= index[:-1]))
        read, inverse = (index, None) if ascending else np.unique(index, return_inverse=True)
        features = torch.as_tensor(np.asarray(item.features[read], dtype=np.float32), device=device)
        positions = torch.as_tensor(np.asarray(item.positions[read], dtype=np.float32), device=device)
        if inverse is not None:
            inverse = torch.as_tensor(inverse.reshape(-1), device=device)
            features, positions = features[inverse], positions[inverse]
        return features, positions


@dataclass(frozen=True, eq=False)
class FitData:
    """What one fit trains on, fixed before its first step and never changed by training.

    Attributes
    ----------
    series : TimeSeries
        The trajectories.
    pairs : ndarray of shape (n_pairs, 2)
        Every time-lagged pair (trajectory, t) of the series.
    train, val : ndarray of shape (n, 2)
        The training and validation pairs (``val`` may be empty).
    weights : list of ndarray or None
        Per-frame weights of every trajectory (a pair weighs as its first frame).
    lagtime : int
        Frames between the two ends of a pair.
    device : torch.device
        Where the network trains.
    ranks : Ranks
        The processes training together.
    """

    series: TimeSeries
    pairs: np.ndarray
    train: np.ndarray
    val: np.ndarray
    weights: list | None
    lagtime: int
    device: torch.device
    ranks: Ranks = field(default_factory=Ranks)

    def pair_weights(self, pairs: np.ndarray, device=None) -> Tensor | None:
        """The weights of ``pairs`` (of their first frames) as a tensor, or None without weights."""
        if self.weights is None:
            return None
        return torch.as_tensor(np.array([self.weights[i][t] for i, t in pairs]),
                               device=self.device if device is None else device)


class PairFrames(NamedTuple):
    """The frames one trajectory's pairs need, each once: the rows of the pairs, the frames
    in ascending order, and where each pair's two ends are among them."""

    rows: np.ndarray
    frames: np.ndarray
    ends: np.ndarray  # (2, len(rows)): positions in ``frames`` of t and of t + lag


def pair_frames(pairs: np.ndarray, lag: int):
    """(trajectory, :class:`PairFrames`) per trajectory of ``pairs``, in ascending order:
    every frame that is a t or a t + lag of some pair, read once even when it is both."""
    for traj in np.unique(pairs[:, 0]):
        rows = np.flatnonzero(pairs[:, 0] == traj)
        t = pairs[rows, 1]
        frames, inverse = np.unique(np.concatenate([t, t + lag]), return_inverse=True)
        yield int(traj), PairFrames(rows, frames, inverse.reshape(2, len(t)))


def grouped_pairs(pairs: np.ndarray):
    """(trajectory, its pairs' first frames) for each trajectory in ``pairs``, in a fixed order."""
    for i in np.unique(pairs[:, 0]):
        yield int(i), pairs[pairs[:, 0] == i, 1]


def pair_arrays(values: list[np.ndarray], pairs: np.ndarray, lagtime: int,
                weights: list[np.ndarray] | None = None):
    """``values`` at the start (x) and end (y) of every pair, and the pairs' weights (w, the
    weight of each pair's first frame, or None), grouped by trajectory."""
    groups = list(grouped_pairs(pairs))
    x = np.concatenate([values[i][t] for i, t in groups])
    y = np.concatenate([values[i][t + lagtime] for i, t in groups])
    w = None if weights is None else np.concatenate([weights[i][t] for i, t in groups])
    return x, y, w
