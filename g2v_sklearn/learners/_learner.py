"""The scikit-learn side the learners share: parameters, input checks, the fit's data, seams.

VAMPNetEstimator and SPIBEstimator differ in their objective (the loss, the
epoch scores, the network) and in what they compute after training; the
training loop itself is the :class:`~g2v_sklearn.learners._trainer.Trainer`,
which knows nothing of scikit-learn. This base turns ``X`` into the frozen
:class:`~g2v_sklearn.learners._series.FitData` of a fit and the estimator's
parameters into the trainer's configuration.
"""

from __future__ import annotations

import hashlib
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from .._compat import Interval, StrOptions
from .._runtime import autocast, resolve_device, warn_without_bfloat16
from .._utils import PickleVersionMixin, check_generator
from .._validation import (
    check_array_trajectories,
    check_not_constant,
    check_not_raw_frames,
    lagged_pairs,
    numbers_expected,
)
from ..nn._lobes import MIXERS, TokenLobe
from ..tokens._trajectory import TokenTrajectory, check_token_list
from ._callbacks import Callback, EarlyStopping
from ._distributed import Ranks
from ._forward import Inference
from ._history import History
from ._network import NetworkSpec, plan_memory
from ._series import FitData, TimeSeries, grouped_pairs, pair_arrays
from ._trainer import LR_SCHEDULES, OPTIMIZERS, FitContext, TrainConfig, TrainingWarning

__all__ = ["FitContext", "TimeSeries", "TorchLearner", "TrainingWarning", "pair_arrays"]

#: What the learners expect where numbers were not given, for errors about it.
_FEATURES_EXPECTED = ("numeric features, a float array of shape (n_frames, n_features) per trajectory, or "
                      "token trajectories from GeomEmbedder")


def sample_weights(sample_weight, series: TimeSeries) -> list[np.ndarray] | None:
    """``sample_weight`` as one float64 array per trajectory (None for None), checked."""
    if sample_weight is None:
        return None
    weights = [sample_weight] if series.single else list(sample_weight)
    if len(weights) != len(series.items):
        raise ValueError(
            f"sample_weight has {len(weights)} entries, but X has {len(series.items)} trajectories."
        )
    out = []
    if all(np.all(np.asarray(w) == 0) for w in weights):
        raise ValueError("All sample_weight values are zero: no time-lagged pair would count.")
    for i, (w, n) in enumerate(zip(weights, series.lengths)):
        w = np.asarray(w, dtype=np.float64)
        if w.shape != (n,):
            raise ValueError(
                f"sample_weight for trajectory {i} has shape {w.shape}, expected ({n},): one "
                f"weight per frame."
            )
        bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
        if bad.size:
            raise ValueError(
                f"sample_weight for trajectory {i} is {w[bad[0]]} at frame {bad[0]} "
                f"(frames like it: {bad.size}): weights must be finite and non-negative."
            )
        out.append(w)
    return out

def check_pair_weights(weights, pairs, lagtime: int) -> None:
    """A pair (t, t + lagtime) has the weight of frame t: at least two must count."""
    if weights is None:
        return
    positive = sum(int(np.count_nonzero(weights[i][t] > 0)) for i, t in grouped_pairs(pairs))
    if positive < 2:
        raise ValueError(
            f"sample_weight gives a positive weight to {positive} time-lagged "
            f"pair{'s' if positive != 1 else ''}, and the covariances need at least two. A "
            f"pair (t, t + lagtime) takes the weight of frame t, so weights on the last "
            f"lagtime={lagtime} frames of a trajectory count for no pair."
        )


class TorchLearner(PickleVersionMixin, BaseEstimator):
    """Base class of the torch learners (not public): the scikit-learn side of training.

    A subclass supplies an objective (:class:`~g2v_sklearn.learners._trainer.Objective`:
    its network, loss and epoch scores) and computes its fitted attributes
    after training. This base gives it the fit's data (:meth:`_fit_data`:
    validated input, time-lagged pairs, the split, weights, device, ranks),
    the trainer's configuration (:meth:`_train_config`, :meth:`_callback_list`),
    the network family (:meth:`_network_spec`), how networks are run
    (:meth:`_inference`) and the memory plan (:meth:`_plan_memory`).
    """

    _common_constraints: dict = {
        "lagtime": [Interval(Integral, 1, None, closed="left")],
        "hidden_layer_sizes": [tuple, list],
        "d_model": [Interval(Integral, 1, None, closed="left")],
        "n_heads": [Interval(Integral, 1, None, closed="left")],
        "n_layers": [Interval(Integral, 0, None, closed="left")],
        "pooling": [StrOptions({"cls", "mean"})],
        "mixer": [StrOptions(set(MIXERS))],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "optimizer": [StrOptions(set(OPTIMIZERS))],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 2, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "patience": [Interval(Integral, 1, None, closed="left"), None],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "validation_split": [StrOptions({"blocks", "trajectories"})],
        "n_init": [Interval(Integral, 1, None, closed="left")],
        "lr_schedule": [StrOptions(set(LR_SCHEDULES))],
        "warmup": [Interval(Real, 0, 1, closed="left")],
        "max_grad_norm": [Interval(Real, 0, None, closed="neither"), None],
        "memory_budget": [StrOptions({"auto"}), Interval(Real, 0, None, closed="neither")],
        "compile": ["boolean"],
        "callbacks": [list, tuple, None],
        "precision": [StrOptions({"float32", "bfloat16"})],
        "device": [str, torch.device],
        "progress": ["boolean"],
        "random_state": ["random_state", np.random.Generator],
    }

    #: Parameters added since 0.1.0.dev0, with the value that reproduces the fits made
    #: before: a pickle made without them unpickles with them.
    _ADDED_PARAMETERS = {"mixer": "invariant"}

    #: What the scores in ``history_`` are (:attr:`History.measure`).
    _HISTORY_MEASURE: str | None = None

    def __setstate__(self, state):
        for name, value in self._ADDED_PARAMETERS.items():
            state.setdefault(name, value)
        if "_partial_rng" in state:  # its name before the trainer redesign
            state["_rng"] = state.pop("_partial_rng")
        if isinstance(state.get("history_"), dict):  # a dict, in one of two layouts, before the record
            state["history_"] = History.from_mapping(state["history_"], measure=self._HISTORY_MEASURE)
        super().__setstate__(state)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False  # CPU fits with a random_state are repeatable
        tags.input_tags.allow_nan = False
        return tags

    # ------------------------------------------------------------------ input dispatch
    def _as_time_series(self, X, *, reset: bool) -> TimeSeries:
        who = type(self).__name__
        check_not_raw_frames(X, who)
        if isinstance(X, (list, tuple)) and len(X) == 0:
            raise ValueError(f"X is an empty list; {who} needs at least one trajectory.")
        is_list = isinstance(X, (list, tuple)) and len(X) > 0
        if is_list and isinstance(X[0], np.ndarray):  # the first item sets the kind
            check_array_trajectories(X, who)
        if isinstance(X, TokenTrajectory) or (is_list and isinstance(X[0], TokenTrajectory)):
            if is_list and not all(isinstance(x, TokenTrajectory) for x in X):
                raise TypeError(f"X mixes token trajectories with other inputs; {who} takes one kind.")
            return self._token_series(X, reset=reset)
        if is_list and isinstance(X[0], np.ndarray):  # 2-D arrays all, by check_array_trajectories
            return self._array_series(X, reset=reset)
        with numbers_expected("X", who, _FEATURES_EXPECTED):
            array = validate_data(self, X, reset=reset, dtype=[np.float64, np.float32])
        if reset:
            self.input_shape_ = (array.shape[1],)
        return TimeSeries("array", [array.astype(np.float64, copy=False)], single=True)

    def _token_series(self, X, *, reset: bool) -> TimeSeries:
        who = type(self).__name__
        items = check_token_list(X, who)
        specs = {x.merge_spec for x in items}
        if len(specs) > 1:
            raise ValueError("X mixes token trajectories with different merge specifications.")
        for i, item in enumerate(items):
            if not np.isfinite(item.features).all():  # streams through memory maps
                raise ValueError(f"Token trajectory {i} has NaN or infinite features.")
        series = TimeSeries("tokens", items, spec=specs.pop(), timestep=items[0].timestep)
        shape = (series.items[0].n_residues, series.items[0].n_channels)
        if reset:
            self.input_shape_ = shape
        elif getattr(self, "input_shape_", None) != shape:
            raise ValueError(
                f"X has {shape[0]} residues with {shape[1]} channels, but {who} was fitted "
                f"on {self._describe_input()}."
            )
        return series

    def _array_series(self, X, *, reset: bool) -> TimeSeries:
        who = type(self).__name__
        items = []
        for i, x in enumerate(X):
            with numbers_expected(f"Trajectory {i} of X", who, _FEATURES_EXPECTED):
                items.append(check_array(x, dtype=[np.float32, np.float64]))
        widths = {x.shape[1] for x in items}
        if len(widths) > 1:
            raise ValueError(f"The trajectories in X have different numbers of features: {sorted(widths)}.")
        width = widths.pop()
        if reset:
            self.n_features_in_ = width
            self.input_shape_ = (width,)
        elif getattr(self, "input_shape_", None) != (width,):
            raise ValueError(
                f"X has {width} features, but {who} is expecting {self._describe_input()} as input."
            )
        return TimeSeries("array", [x.astype(np.float64, copy=False) for x in items])

    def _describe_input(self) -> str:
        shape = getattr(self, "input_shape_", None)
        if shape is None:
            return "nothing yet"
        if len(shape) == 1:
            return f"{shape[0]} features"
        return f"token trajectories of {shape[0]} residues with {shape[1]} channels"

    # ------------------------------------------------------------------ the fit's data
    def _fit_data(self, X, sample_weight, *, reset: bool = True, split: bool = True,
                  constant_is_an_error: bool = True) -> tuple[FitData, np.random.Generator]:
        """The frozen data of a fit, and the fit's random generator (the same on every rank).

        ``reset``: ``X`` sets the input shape (a fit) or must match it (a
        warm ``partial_fit``). ``split``: training and validation pairs as
        ``validation_fraction`` says, or every pair for training.
        ``constant_is_an_error``: refuse features that never change (nothing
        to learn, and VAMP's whitening would divide by zero).
        """
        who = type(self).__name__
        ranks = Ranks.detect(who)
        series = self._as_time_series(X, reset=reset)
        if constant_is_an_error and reset and series.kind == "array":
            check_not_constant(series.items, who)
        weights = sample_weights(sample_weight, series)
        pairs = lagged_pairs(series.lengths, self.lagtime, who)
        if reset:
            check_pair_weights(weights, pairs, self.lagtime)
        rng = self._shared_generator(ranks, series, weights, len(pairs))
        device = resolve_device(self.device)
        if reset:
            warn_without_bfloat16(self.precision, device, who, stacklevel=4)
        train, val = self._split(series, pairs, rng) if split else (pairs, pairs[:0])
        return FitData(series, pairs, train, val, weights, int(self.lagtime), device, ranks), rng

    def _shared_generator(self, ranks: Ranks, series: TimeSeries, weights, n_pairs: int) -> np.random.Generator:
        """The fit's random generator, the same on every rank, after checking that every rank
        was given the same data, weights and parameters (a rank with other data would train
        the others on a mixture, silently)."""
        rng = check_generator(self.random_state)
        if not ranks.distributed:
            return rng
        who = type(self).__name__
        if n_pairs < 2 * ranks.world_size:
            raise ValueError(f"{who}: X gives {n_pairs} time-lagged pairs, too few to share among "
                             f"{ranks.world_size} ranks (at least two each).")
        ranks.check_same(series.fingerprint(), "data (trajectories or token stores)", who)
        digest = hashlib.sha256()
        for w in weights or ():
            digest.update(np.ascontiguousarray(w).tobytes())
        ranks.check_same(digest.hexdigest(), "sample weights", who)
        params = {k: v for k, v in self.get_params(deep=False).items()
                  if k not in ("callbacks", "progress", "device")}
        ranks.check_same(repr(sorted(params.items())), "parameters", who)
        if not isinstance(self.random_state, Integral):  # None or a Generator: rank 0's draw for all
            rng = np.random.default_rng(ranks.broadcast_object(int(rng.integers(0, 2**63 - 1))))
        return rng

    def _split(self, series: TimeSeries, pairs: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
        """Training and validation pairs, as ``validation_split`` says.

        ``"blocks"``: the final ``validation_fraction`` of every trajectory's
        pairs, after a gap of ``lagtime`` frames so that no frame is in both
        sets. ``"trajectories"``: whole trajectories (a single trajectory is
        split into blocks). Trajectories too short to give both a training
        and a validation block of two pairs are kept for training only.
        """
        if self.validation_fraction == 0:
            return pairs, pairs[:0]
        used = np.unique(pairs[:, 0])
        if self.validation_split == "trajectories" and len(used) > 1:
            n_val = min(len(used) - 1, max(1, round(self.validation_fraction * len(used))))
            val_trajs = rng.choice(used, size=n_val, replace=False)
            is_val = np.isin(pairs[:, 0], val_trajs)
            return pairs[~is_val], pairs[is_val]
        train, val = [], []
        for traj in used:
            rows = pairs[pairs[:, 0] == traj]  # ascending in t
            n_val = int(round(self.validation_fraction * len(rows)))
            cut = len(rows) - n_val
            if n_val < 2 or cut - self.lagtime < 2:
                train.append(rows)
                continue
            train.append(rows[: cut - self.lagtime])
            val.append(rows[cut:])
        if not val:
            return pairs, pairs[:0]
        return np.concatenate(train), np.concatenate(val)

    def _callback_list(self, *, early_stopping: bool = True) -> list:
        """The callbacks of a fit: early stopping from ``patience``, then the user's.

        ``early_stopping=False`` leaves every :class:`EarlyStopping` out (``partial_fit``).
        """
        user = list(self.callbacks) if self.callbacks is not None else []
        for i, callback in enumerate(user):
            if not isinstance(callback, Callback):
                raise TypeError(
                    f"callbacks[{i}] is a {type(callback).__name__}; {type(self).__name__} takes "
                    f"instances of g2v_sklearn.Callback (EarlyStopping, LRScheduler, SaveBestWeights, "
                    f"MetricsLog or a subclass)."
                )
        builtin = [EarlyStopping(self.patience, getattr(self, "tolerance", 0.0))] if self.patience else []
        callbacks = builtin + user
        return callbacks if early_stopping else [c for c in callbacks if not isinstance(c, EarlyStopping)]

    def _train_config(self, **changes) -> TrainConfig:
        """The trainer's configuration from this estimator's parameters (``changes`` override)."""
        config = dict(
            who=type(self).__name__, optimizer=self.optimizer, lr=self.lr, weight_decay=self.weight_decay,
            batch_size=self.batch_size, max_epochs=self.max_epochs, lr_schedule=self.lr_schedule,
            warmup=self.warmup, max_grad_norm=self.max_grad_norm, compile=self.compile, progress=self.progress,
        )
        return TrainConfig(**{**config, **changes})

    def _network_spec(self) -> NetworkSpec:
        return NetworkSpec(tuple(self.hidden_layer_sizes), self.d_model, self.n_heads, self.n_layers,
                           self.pooling, self.mixer, self.dropout)

    def _inference(self) -> Inference:
        return Inference(self.precision, self.batch_size, self.lagtime)

    def _plan_memory(self, net, data: FitData) -> None:
        """Gradient checkpointing only where a batch would exceed ``memory_budget``; what was
        decided goes into ``memory_plan_``."""
        plan = plan_memory(net, data, self.batch_size, self.memory_budget)
        self.memory_plan_ = plan.as_dict() if plan is not None else {}

    # ------------------------------------------------------------------ fitted use
    def _fitted_input(self, X) -> tuple[TimeSeries, torch.nn.Module, torch.device]:
        """For every method of a fitted learner: the input, checked against what fit saw,
        and the fitted network on the device asked for now."""
        check_is_fitted(self, "module_")
        series = self._as_time_series(X, reset=False)
        device = resolve_device(self.device)
        return series, self.module_.to(device), device

    def _outputs(self, net, series: TimeSeries, device, ranks: Ranks | None = None) -> list[np.ndarray]:
        """Network outputs of every frame of every trajectory (eval mode, no grad)."""
        return self._inference().outputs(net, series, device, ranks)

    def _lagged_values(self, values: list[np.ndarray], series: TimeSeries) -> tuple[np.ndarray, np.ndarray]:
        """``values`` at both ends of every time-lagged pair of the series (what a score sees)."""
        pairs = lagged_pairs(series.lengths, self.lagtime, type(self).__name__)
        x, y, _ = pair_arrays(values, pairs, self.lagtime)
        return x, y

    def attention_importance(self, X, *, batch_size: int | None = None) -> np.ndarray:
        """Per-residue importance from the token mixer's attention.

        Attention weights are read out batch by batch and averaged over
        frames, heads and layers: with ``pooling="cls"`` the attention the
        class token pays to each fragment, with ``"mean"`` the attention each
        fragment receives. Fragments map back to residues through the window
        boundaries (every residue of a fragment gets its importance).

        Parameters
        ----------
        X : list of token trajectories
            Frames to average over (the training data, typically).
        batch_size : int, default=None
            Frames per forward pass (``None``: the estimator's ``batch_size``).

        Returns
        -------
        importance : ndarray of shape (n_residues,)
            Non-negative, one value per residue; plot it along the sequence
            or write it into a PDB's B-factor column.
        """
        series, net, device = self._fitted_input(X)
        if series.kind != "tokens":
            raise ValueError("attention_importance needs token trajectories, not feature arrays.")
        lobe = net if isinstance(net, TokenLobe) else net.lobe
        if not lobe.blocks:
            raise ValueError("The network has no attention layers (n_layers=0).")
        net.eval()
        batch_size = batch_size or self.batch_size
        total, count = 0.0, 0
        with torch.no_grad():
            for traj, n in enumerate(series.lengths):
                for start in range(0, n, batch_size):
                    index = np.arange(start, min(n, start + batch_size))
                    with autocast(self.precision, device):
                        maps = lobe.attention_maps(*series.frames(traj, index, device))
                    weights = torch.stack(maps).float()  # (layers, frames, heads, L, L)
                    if lobe.cls is not None:
                        received = weights[..., 0, 1:]  # what the class token reads
                    else:
                        received = weights.mean(dim=-2)  # what each token is read, on average
                    total = total + received.mean(dim=(0, 2)).sum(dim=0).double().cpu()
                    count += len(index)
        fragments = (total / count).numpy()
        n_residues = series.items[0].n_residues
        window = series.spec.window if series.spec is not None else 1
        return fragments[np.arange(n_residues) // window]
