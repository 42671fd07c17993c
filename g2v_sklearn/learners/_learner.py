"""What the learners share: input dispatch, time-lagged pairs, the torch training loop.

VAMPNetEstimator and SPIBEstimator differ in their loss and what they do
after training; everything else lives here, once.
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from dataclasses import dataclass, field
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_array, check_is_fitted, validate_data
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._compat import Interval, StrOptions, validate_parameter_constraints
from .._threads import ThreadBudget
from .._utils import PickleVersionMixin, check_generator, resolve_device, supports_bfloat16
from .._validation import (
    check_array_trajectories,
    check_not_constant,
    check_not_raw_frames,
    lagged_pairs,
    numbers_expected,
)
from ..nn._lobes import MIXERS, MLPLobe, TokenLobe
from ..tokens._tokens import MergeSpec, TokenTrajectory, check_token_list
from ._callbacks import Callback, EarlyStopping, LRScheduler
from ._distributed import Ranks

__all__ = ["FitContext", "TimeSeries", "TorchLearner", "TrainingWarning"]


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


def _full_precision(out: Tensor) -> Tensor:
    """Outputs of an autocast forward back in float32; float32/float64 outputs as they are."""
    return out.float() if out.dtype in (torch.float16, torch.bfloat16) else out


def _fused_where_possible(optimizer_class):
    """``optimizer_class`` with its fused (single-kernel) implementation when torch has one.

    Adam's default on CPU updates each parameter tensor in its own handful of
    kernels; the fused kernel does the same arithmetic in one pass (on the default
    network, 0.7 ms a step instead of 4 ms, about 5 % of a training step; see
    docs/benchmarks.md).
    """

    def make(params, **kwargs):
        params = list(params)
        # torch checks devices and dtypes for the fused kernel only at the first step, so
        # decide here: CPU and CUDA floating-point parameters (float16/32/64, bfloat16)
        fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
        return optimizer_class(params, fused=fused, **kwargs) if fused else optimizer_class(params, **kwargs)

    return make


OPTIMIZERS = {
    "adamw": _fused_where_possible(torch.optim.AdamW),
    "adam": _fused_where_possible(torch.optim.Adam),
    "sgd": lambda params, **kw: torch.optim.SGD(params, momentum=0.9, **kw),
}
"""Registry of optimizers by name (Adam and AdamW fused where torch can; SGD with momentum 0.9)."""

#: What the learners expect where numbers were not given, for errors about it.
_FEATURES_EXPECTED = ("numeric features, a float array of shape (n_frames, n_features) per trajectory, or "
                      "token trajectories from GeomEmbedder")
_MIN_LR_FACTOR = 0.05  # the cosine schedule ends at 5 % of lr, not at 0


def _cosine_decay(progress: float) -> float:
    return _MIN_LR_FACTOR + (1 - _MIN_LR_FACTOR) * 0.5 * (1 + math.cos(math.pi * progress))


LR_SCHEDULES = {"constant": lambda progress: 1.0, "cosine": _cosine_decay}
"""Registry of learning-rate decays by name: progress through training (0 to 1) -> factor on ``lr``."""
_COLLAPSE_MIN_GAIN = 0.05  # a collapse needs a best score at least this far above the floor ...
_COLLAPSE_FRACTION = 0.1  # ... and a fall to within this fraction of that gain above the floor
_MAX_ROLLBACKS = 2  # after a collapse: back to the best weights at half the rate, at most this often


class TrainingWarning(UserWarning):
    """Training went wrong in a way the learner recovered from (the best weights were kept).

    Raised as a warning when training collapsed (outputs constant, or the
    training score fell back to the floor) or the loss stopped being finite
    after a good epoch; ``history_["collapsed_epoch"]`` names the epoch.
    After a collapse training goes back to the best weights, with fresh
    optimizer moments and half the learning rate, and goes on
    (``history_["rollbacks"]``); after the third it stops.

    Examples
    --------
    Turn it into an error, e.g. in a pipeline that must not keep going on a
    recovered fit:

    >>> import warnings
    >>> from g2v_sklearn import TrainingWarning
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("error", TrainingWarning)
    ...     issubclass(TrainingWarning, UserWarning)
    True
    """


class _TrainingCollapsed(ValueError):
    pass


class _NonFiniteLoss(Exception):
    def __init__(self, value: float) -> None:
        super().__init__(value)
        self.value = value


def _new_history() -> dict:
    return {"train": [], "validation": [], "train_batches": [], "lr": [], "best_epoch": None,
            "best_score": None, "rollbacks": []}


@dataclass(eq=False)
class FitContext:
    """The state of one training run, handed to every step of the loop and to the callbacks.

    Nothing of it stays on the estimator after ``fit`` except what the
    estimator copies out (``history`` becomes ``history_``).

    Examples
    --------
    Callbacks receive it; here one records the learning rate after every step:

    >>> import numpy as np
    >>> from g2v_sklearn import Callback, VAMPNetEstimator
    >>> class Rates(Callback):
    ...     def __init__(self):
    ...         self.seen = []
    ...     def on_batch_end(self, learner, context):
    ...         self.seen.append(context.optimizer.param_groups[0]["lr"])
    >>> rates = Rates()
    >>> x = np.cumsum(np.random.default_rng(0).normal(size=(300, 2)), axis=0) * 0.01
    >>> est = VAMPNetEstimator(lagtime=5, max_epochs=1, batch_size=64, progress=False, random_state=0,
    ...                        callbacks=[rates]).fit(x)
    >>> len(rates.seen)  # 295 pairs in steps of 64
    5
    """

    net: torch.nn.Module
    series: TimeSeries
    train: np.ndarray
    val: np.ndarray
    weights: list | None
    device: torch.device
    rng: np.random.Generator
    optimizer: torch.optim.Optimizer
    max_epochs: int
    callbacks: list
    run: int = 0  # the n_init restart (SPIB: the training round)
    total_steps: int = 1
    scheduled: bool = True
    threads: ThreadBudget | None = None
    forward: object = None  # the network as training calls it (compiled with compile=True)
    history: dict = field(default_factory=_new_history)
    epoch: int = -1  # the epoch running, or the last one run (0-based)
    step: int = 0
    last_loss: float = float("nan")
    epoch_seconds: float = float("nan")  # wall time of the last epoch
    score: float = float("nan")  # the monitored score of the last epoch
    best_score: float = -np.inf
    best_epoch: int | None = None
    best_state: dict | None = None
    stop: bool = False
    stop_reason: str | None = None
    collapsed_epoch: int | None = None  # the first epoch that collapsed
    collapse_reason: str | None = None  # and how ("collapse" or the non-finite loss)
    stopped_by_collapse: bool = False  # a collapse after the last roll-back ended training
    lr_factor: float = 1.0  # halved at every roll-back after a collapse
    extra: dict = field(default_factory=dict)  # learner- and callback-specific state
    ranks: Ranks = field(default_factory=Ranks)  # the processes training together (rank, world_size)

    def __post_init__(self) -> None:
        if self.forward is None:
            self.forward = self.net


def _best_finite(scores, default: float) -> float:
    """The largest finite score (an epoch cut short by a non-finite loss has NaN), or ``default``."""
    return max((s for s in scores if np.isfinite(s)), default=default)


def _state_copy(net) -> dict:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def _varies(out: Tensor) -> bool:
    """Whether any output column varies above float32 rounding noise."""
    spread = out.double().std(dim=0)
    scale = out.double().abs().max(dim=0).values
    return bool((spread > 1e-5 * scale).any()) if len(out) > 1 else False


def _saved_bytes_per_frame(lobe: TokenLobe, series: TimeSeries, device) -> float:
    """Bytes autograd saves for backward per frame, measured on two frames, no checkpointing."""
    saved: dict = {}

    def pack(tensor):
        try:
            storage = tensor.untyped_storage()
            saved[(storage.device.type, storage.data_ptr())] = storage.nbytes()
        except (NotImplementedError, RuntimeError):  # sparse tensors: count their values
            saved[("tensor", id(tensor))] = tensor.nelement() * tensor.element_size()
        return tensor

    n = min(2, series.lengths[0])
    blocks, frames = lobe.checkpoint_blocks, lobe.merger.checkpoint_frames if lobe.merger else None
    lobe.checkpoint_blocks = False
    if lobe.merger is not None:
        lobe.merger.checkpoint_frames = None
    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            lobe(*series.frames(0, np.arange(n), device))
    finally:
        lobe.checkpoint_blocks = blocks
        if lobe.merger is not None:
            lobe.merger.checkpoint_frames = frames
    return sum(saved.values()) / n


def _memory_budget(budget, device) -> float:
    """Bytes a training step's activations may take: ``memory_budget`` or, for "auto", half
    the GPU's memory (CUDA) or half the memory available now (CPU)."""
    if budget != "auto":
        return float(budget)
    if device.type == "cuda":
        return 0.5 * torch.cuda.get_device_properties(device).total_memory
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return 0.5 * int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4e9


class TorchLearner(PickleVersionMixin, BaseEstimator):
    """Base class of the torch learners (not public).

    Subclasses define ``_n_outputs()`` and ``_loss(out_0, out_t, weights)``
    (a scalar tensor to minimise) or ``_batch_loss(ctx, batch)``, and
    ``_epoch_scores(ctx)`` (or ``_evaluate(ctx, pairs)``: higher is better),
    and train through the seams of the loop: :meth:`_new_context` builds a
    run's :class:`FitContext`, :meth:`_fit_loop` runs its epochs
    (:meth:`_run_epoch`: :meth:`_train_step` per batch, then the scores of
    the end-of-epoch weights) and restores the best epoch's weights.
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

    def __setstate__(self, state):
        for name, value in self._ADDED_PARAMETERS.items():
            state.setdefault(name, value)
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
        if is_list and isinstance(X[0], np.ndarray):  # 2-D arrays all, by check_array_trajectories
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
        with numbers_expected("X", who, _FEATURES_EXPECTED):
            array = validate_data(self, X, reset=reset, dtype=[np.float64, np.float32])
        if reset:
            self.input_shape_ = (array.shape[1],)
        return TimeSeries("array", [array.astype(np.float64, copy=False)], single=True)

    def _describe_input(self) -> str:
        shape = getattr(self, "input_shape_", None)
        if shape is None:
            return "nothing yet"
        if len(shape) == 1:
            return f"{shape[0]} features"
        return f"token trajectories of {shape[0]} residues with {shape[1]} channels"

    @staticmethod
    def _sample_weights(sample_weight, series: TimeSeries) -> list[np.ndarray] | None:
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

    def _check_pair_weights(self, weights, pairs) -> None:
        """A pair (t, t + lagtime) has the weight of frame t: at least two must count."""
        if weights is None:
            return
        positive = sum(int(np.count_nonzero(weights[i][t] > 0)) for i, t in grouped_pairs(pairs))
        if positive < 2:
            raise ValueError(
                f"sample_weight gives a positive weight to {positive} time-lagged "
                f"pair{'s' if positive != 1 else ''}, and the covariances need at least two. A "
                f"pair (t, t + lagtime) takes the weight of frame t, so weights on the last "
                f"lagtime={self.lagtime} frames of a trajectory count for no pair."
            )

    # ------------------------------------------------------------------ networks
    def _build_network(self, series: TimeSeries, n_outputs: int):
        if series.kind == "array":
            # Feature MLPs are small: float64 makes transform independent of batch composition.
            return MLPLobe(series.items[0].shape[1], tuple(self.hidden_layer_sizes), n_outputs,
                           self.dropout).double()
        first = series.items[0]
        return TokenLobe(
            in_channels=first.n_channels, n_tokens=first.n_residues, merge=series.spec,
            d_model=self.d_model, n_heads=self.n_heads, n_layers=self.n_layers,
            pooling=self.pooling, n_outputs=n_outputs, dropout=self.dropout, mixer=self.mixer,
        )

    def _autocast(self, device: torch.device):
        enabled = self.precision == "bfloat16" and supports_bfloat16(device)
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)

    def _forward_pairs(self, net, series, pairs, device, *, lag: int | None = None):
        """Network outputs at t and t + lag for the given pairs, in pair order.

        Every frame needed is read once (ascending, per trajectory) and all of
        them go through the network in one call, whatever trajectories the
        pairs come from: one forward pass of the whole batch, not one per
        trajectory.
        """
        lag = self.lagtime if lag is None else lag
        inputs, where, offset = [], np.empty(2 * len(pairs), dtype=np.int64), 0
        for traj in np.unique(pairs[:, 0]):
            rows = np.flatnonzero(pairs[:, 0] == traj)
            t = pairs[rows, 1]
            # each frame once, in ascending order, even when it is both a t and a t + lag
            frames, inverse = np.unique(np.concatenate([t, t + lag]), return_inverse=True)
            inputs.append(series.frames(int(traj), frames, device))
            inverse = inverse.reshape(-1) + offset
            where[rows], where[len(pairs) + rows] = inverse[: len(t)], inverse[len(t):]
            offset += len(frames)
        batch = tuple(torch.cat(parts) for parts in zip(*inputs)) if len(inputs) > 1 else inputs[0]
        with self._autocast(device):
            out = _full_precision(net(*batch))
        out = out[torch.as_tensor(where, device=device)]
        return out[: len(pairs)], out[len(pairs):]

    def _outputs(self, net, series, device, batch_size: int | None = None,
                 ranks: Ranks | None = None) -> list[np.ndarray]:
        """Network outputs of every frame of every trajectory (eval mode, no grad).

        With ``ranks`` of several processes, each computes its share of the
        frames and all get every output (the same arrays on every rank).
        """
        batch_size = batch_size or self.batch_size
        distributed = ranks is not None and ranks.distributed
        starts = np.concatenate([[0], np.cumsum(series.lengths)]).astype(np.int64)
        total = int(starts[-1])
        first, stop = 0, total  # the frames this process computes, trajectories concatenated
        if distributed:  # its rank's contiguous share
            mine = ranks.share(total)
            first, stop = int(mine[0]), int(mine[-1]) + 1
        net.eval()
        results = []
        with torch.no_grad():
            for traj, offset in enumerate(starts[:-1].tolist()):
                lo, hi = max(first, offset) - offset, min(stop, int(starts[traj + 1])) - offset
                chunks = []
                for start in range(lo, hi, batch_size):
                    index = np.arange(start, min(hi, start + batch_size))
                    with self._autocast(device):
                        chunks.append(_full_precision(net(*series.frames(traj, index, device))).cpu())
                results.append(torch.cat(chunks).numpy().astype(np.float64) if chunks else np.zeros((0, 0)))
        if not distributed:
            return results
        local = torch.from_numpy(np.concatenate([r for r in results if r.size]))
        return np.split(ranks.gather_rows(local, total).numpy(), starts[1:-1])

    # ------------------------------------------------------------------ training
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

    def _make_optimizer(self, net):
        return OPTIMIZERS[self.optimizer](net.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def _pair_weights(self, weights, pairs, device):
        if weights is None:
            return None
        return torch.as_tensor(np.array([weights[i][t] for i, t in pairs]), device=device)

    def _callback_list(self) -> list:
        """The callbacks of a fit: early stopping from ``patience``, then the user's."""
        user = list(self.callbacks) if self.callbacks is not None else []
        for i, callback in enumerate(user):
            if not isinstance(callback, Callback):
                raise TypeError(
                    f"callbacks[{i}] is a {type(callback).__name__}; {type(self).__name__} takes "
                    f"instances of g2v_sklearn.Callback (EarlyStopping, LRScheduler, SaveBestWeights, "
                    f"MetricsLog or a subclass)."
                )
        builtin = [EarlyStopping(self.patience, getattr(self, "tolerance", 0.0))] if self.patience else []
        return builtin + user

    def _new_context(self, net, series, train, val, weights, device, rng, *, max_epochs=None, run=0,
                     extra=None, threads=None, ranks: Ranks | None = None) -> FitContext:
        """A training run's state: the optimizer, its schedule, the callbacks, an empty history."""
        callbacks = self._callback_list()
        steps_per_epoch = max(1, len(range(0, len(train) - 1, self.batch_size)))
        epochs = int(max_epochs or self.max_epochs)
        scheduled = self.lr_schedule != "constant" or self.warmup > 0
        if any(isinstance(c, LRScheduler) for c in callbacks):
            scheduled = False  # an epoch-wise scheduler replaces the per-step schedule
        return FitContext(
            net=net, series=series, train=train, val=val, weights=weights, device=device, rng=rng,
            optimizer=self._make_optimizer(net), max_epochs=epochs, callbacks=callbacks, run=run,
            total_steps=steps_per_epoch * epochs, scheduled=scheduled, threads=threads,
            forward=self._training_forward(net), extra={} if extra is None else extra,
            ranks=ranks or Ranks(),
        )

    def _learning_rate(self, ctx: FitContext) -> float:
        """``lr`` times the linear warm-up and the cosine decay at the current step."""
        factor = 1.0
        warm = int(np.ceil(self.warmup * ctx.total_steps))
        if warm > 0 and ctx.step < warm:
            factor = (ctx.step + 1) / warm
        progress = min(ctx.step / max(ctx.total_steps, 1), 1.0)
        factor *= LR_SCHEDULES[self.lr_schedule](progress)
        return self.lr * factor * ctx.lr_factor

    def _batch_loss(self, ctx: FitContext, batch: np.ndarray) -> Tensor:
        """The loss of one batch of pairs (a hook: SPIB's loss needs labels and a prior).

        On several ranks, ``batch`` is the global batch: this rank computes its
        share, and the loss (the same on every rank) is that of the whole batch.
        """
        local = batch[ctx.ranks.share(len(batch))]
        out_0, out_t = self._forward_pairs(ctx.forward, ctx.series, local, ctx.device)
        weights = self._pair_weights(ctx.weights, local, ctx.device)
        if ctx.ranks.distributed:
            return self._loss(out_0, out_t, weights, ranks=ctx.ranks)
        return self._loss(out_0, out_t, weights)

    def _train_step(self, ctx: FitContext, batch: np.ndarray) -> float:
        """One optimizer step on ``batch``; returns the loss. Raises _NonFiniteLoss."""
        if ctx.scheduled:
            for group in ctx.optimizer.param_groups:
                group["lr"] = self._learning_rate(ctx)
        loss = self._batch_loss(ctx, batch)
        if not torch.isfinite(loss):
            raise _NonFiniteLoss(loss.item())
        ctx.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        ctx.ranks.average_gradients(ctx.net.parameters())
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(ctx.net.parameters(), self.max_grad_norm)
        ctx.optimizer.step()
        ctx.step += 1
        if ctx.threads is not None:
            ctx.threads.refresh()
        ctx.last_loss = loss.item()
        return ctx.last_loss

    def _pair_outputs(self, net, series, pairs, device, ranks: Ranks | None = None) -> tuple[Tensor, Tensor]:
        """Outputs at t and t + lag of ``pairs`` (eval, no grad), each frame computed once.

        With ``ranks`` of several processes, each computes its share of the pairs
        and all get every output.
        """
        if ranks is not None and ranks.distributed and len(pairs) >= ranks.world_size:
            out_0, out_t = self._pair_outputs(net, series, pairs[ranks.share(len(pairs))], device)
            both = ranks.gather_rows(torch.cat([out_0, out_t], dim=1).double(), len(pairs))
            return both[:, : out_0.shape[1]], both[:, out_0.shape[1]:]
        net.eval()
        outs_0, outs_t, order = [], [], []
        with torch.no_grad():
            for traj in np.unique(pairs[:, 0]):
                rows = np.flatnonzero(pairs[:, 0] == traj)
                t = pairs[rows, 1]
                frames, where = np.unique(np.concatenate([t, t + self.lagtime]), return_inverse=True)
                chunks = []
                for start in range(0, len(frames), self.batch_size):
                    with self._autocast(device):
                        chunks.append(_full_precision(net(*series.frames(
                            int(traj), frames[start:start + self.batch_size], device))))
                out = torch.cat(chunks)[torch.as_tensor(where.reshape(-1), device=device)]
                outs_0.append(out[: len(t)])
                outs_t.append(out[len(t):])
                order.append(rows)
        inverse = torch.as_tensor(np.argsort(np.concatenate(order)), device=device)
        return torch.cat(outs_0)[inverse], torch.cat(outs_t)[inverse]

    def _evaluate(self, ctx: FitContext, pairs: np.ndarray) -> tuple[float, bool]:
        """(score, outputs constant) of the current weights on ``pairs``; higher is better."""
        raise NotImplementedError

    def _epoch_scores(self, ctx: FitContext) -> tuple[float, float | None, bool]:
        """(training score, validation score or None, outputs constant) of the end-of-epoch weights."""
        train, constant = self._evaluate(ctx, ctx.train)
        if not len(ctx.val):
            return train, None, constant
        val, val_constant = self._evaluate(ctx, ctx.val)
        return train, val, constant or val_constant

    #: The score of outputs that carry no signal (VAMP: the constant function's 1), or None.
    _score_floor: float | None = None

    def _collapsed(self, ctx: FitContext, train_score: float, constant: bool) -> bool:
        """Outputs went constant, or the training score fell back to the floor after being above it.

        The training score, not the validation score: a validation block that
        happens to hold few events of the slowest process can score near the
        floor without anything being wrong with the network.
        """
        best_train = _best_finite(ctx.history["train"][:-1], -np.inf)
        if constant:
            return True
        floor = self._score_floor
        if floor is None or not np.isfinite(best_train):
            return False
        gain = best_train - floor
        return gain > _COLLAPSE_MIN_GAIN and train_score - floor < _COLLAPSE_FRACTION * gain

    def _run_epoch(self, ctx: FitContext) -> None:
        """One pass over the training pairs, then the monitored score, best weights and callbacks."""
        ctx.epoch += 1
        clock = time.perf_counter()
        ctx.net.train()
        epoch_start = _state_copy(ctx.net)
        order = ctx.rng.permutation(len(ctx.train))
        losses = []
        smallest = max(2, ctx.ranks.world_size)  # two pairs, and on several ranks one pair each
        for start in range(0, len(order) - 1, self.batch_size):
            batch = ctx.train[order[start:start + self.batch_size]]
            if len(batch) < smallest:
                continue
            try:
                losses.append(self._train_step(ctx, batch))
            except _NonFiniteLoss as exc:
                self._on_non_finite_loss(ctx, exc.value, epoch_start)
                return
            for callback in ctx.callbacks:
                callback.on_batch_end(self, ctx)
        train_score, val_score, constant = self._epoch_scores(ctx)
        history = ctx.history
        history["train"].append(train_score)
        history["train_batches"].append(-float(np.mean(losses)) if losses else float("nan"))
        score = train_score
        if val_score is not None:
            score = val_score
            history["validation"].append(score)
        history["lr"].append(float(ctx.optimizer.param_groups[0]["lr"]))
        ctx.epoch_seconds = time.perf_counter() - clock
        ctx.score = score
        rolled_back = False
        if self._collapsed(ctx, train_score, constant):
            rolled_back = self._on_collapse(ctx, "collapse")
        elif score > ctx.best_score:
            ctx.best_score, ctx.best_epoch, ctx.best_state = score, ctx.epoch, _state_copy(ctx.net)
        for callback in ctx.callbacks:
            callback.on_epoch_end(self, ctx)
        if ctx.ranks.any(ctx.stop) and not ctx.stop:  # a rank that stopped alone would hang the others
            ctx.stop, ctx.stop_reason = True, "another rank stopped"
        if rolled_back:  # after on_epoch_end, so that what callbacks reset there stays reset
            for callback in ctx.callbacks:
                callback.on_rollback(self, ctx)

    def _on_collapse(self, ctx: FitContext, reason: str) -> bool:
        """Back to the best epoch's weights at half the learning rate, or stop after ``_MAX_ROLLBACKS``.

        A collapse at a large learning rate is usually one bad stretch of
        steps, not the end of what the network can learn: going on from the
        best weights with fresh optimizer moments (Adam's running averages are
        what carried the weights off) at half the rate recovers it. The
        epochs before the roll-back stay in ``history``; ``history["rollbacks"]``
        lists the epochs that collapsed. Returns whether it rolled back (the
        caller then calls the callbacks' ``on_rollback``).
        """
        if ctx.collapsed_epoch is None:
            ctx.collapsed_epoch, ctx.collapse_reason = ctx.epoch, reason
        if ctx.best_state is None or len(ctx.history["rollbacks"]) >= _MAX_ROLLBACKS:
            ctx.stop, ctx.stop_reason, ctx.stopped_by_collapse = True, reason, True
            return False
        ctx.history["rollbacks"].append(ctx.epoch)
        ctx.net.load_state_dict(ctx.best_state)
        ctx.optimizer.state.clear()
        ctx.lr_factor *= 0.5
        if not ctx.scheduled:  # nothing sets the rate per step: halve it here
            for group in ctx.optimizer.param_groups:
                group["lr"] *= 0.5
        return True

    def _on_non_finite_loss(self, ctx: FitContext, value: float, epoch_start: dict) -> None:
        """Keep the last good weights: roll back to the best epoch's, or raise before there is one."""
        if not all(torch.isfinite(p).all() for p in ctx.net.parameters()):
            ctx.net.load_state_dict(epoch_start)
        if ctx.best_state is not None:
            # the aborted epoch keeps its place in the history, unscored
            for key in ("train", "train_batches") + (("validation",) if len(ctx.val) else ()):
                ctx.history[key].append(float("nan"))
            ctx.history["lr"].append(float(ctx.optimizer.param_groups[0]["lr"]))
            ctx.score = float("nan")  # the epoch ended unscored; callbacks see no on_epoch_end for it
            if self._on_collapse(ctx, f"the loss became {value}"):
                for callback in ctx.callbacks:
                    callback.on_rollback(self, ctx)
            return
        raise FloatingPointError(
            f"{type(self).__name__}: the loss became {value} in epoch {ctx.epoch}; training stopped "
            f"and the last good weights were restored. Try a smaller lr (now {self.lr})"
            f"{' or a larger epsilon' if hasattr(self, 'epsilon') else ''}."
        )

    def _fit_loop(self, ctx: FitContext) -> dict:
        """Epochs until ``max_epochs`` or a stop; the best epoch's weights are restored.

        Returns ``ctx.history``. Raises _TrainingCollapsed when no epoch gave
        outputs that vary.
        """
        for callback in ctx.callbacks:
            callback.on_fit_begin(self, ctx)
        self._share_start(ctx)
        bar = tqdm(total=ctx.max_epochs, desc=type(self).__name__, disable=not ctx.ranks.progress(self.progress),
                   leave=False, initial=ctx.epoch + 1)
        with bar:
            while ctx.epoch + 1 < ctx.max_epochs and not ctx.stop:
                self._run_epoch(ctx)
                bar.update(1)
                if np.isfinite(ctx.score):
                    bar.set_postfix(score=f"{ctx.score:.4f}")
        history = ctx.history
        history["stop_reason"] = ctx.stop_reason
        history["collapsed_epoch"] = ctx.collapsed_epoch
        if ctx.best_state is None:
            raise _TrainingCollapsed(
                f"{type(self).__name__}: training collapsed in every epoch (the network's outputs "
                f"are constant), so there are no weights to keep. Try a smaller lr (now {self.lr})."
            )
        ctx.net.load_state_dict(ctx.best_state)
        ctx.best_state = None  # the weights are in the network now
        ctx.ranks.broadcast_module(ctx.net)  # rank 0's, to the bit
        history["best_epoch"] = ctx.best_epoch
        history["best_score"] = ctx.best_score
        ctx.net.eval()
        if ctx.collapsed_epoch is not None:
            train, first = ctx.history["train"], ctx.collapsed_epoch
            what = (f"collapsed in epoch {first} (training score {train[first]:.4g}, against "
                    f"{_best_finite(train[:first], float('nan')):.4g} before)"
                    if len(train) > first and ctx.collapse_reason == "collapse" else
                    f"failed in epoch {first}: {ctx.collapse_reason}")
            rollbacks = ctx.history["rollbacks"]
            went_on = (f"; it went on from the best weights at a smaller rate {len(rollbacks)} time"
                       f"{'s' if len(rollbacks) > 1 else ''} (after the collapses in epochs {rollbacks})"
                       if rollbacks else "")
            if ctx.stopped_by_collapse and rollbacks:
                went_on += f", and stopped at the next collapse (epoch {ctx.epoch})"
            warnings.warn(
                f"{type(self).__name__}: training {what}{went_on}; the weights of epoch {ctx.best_epoch} "
                f"were kept. Try a smaller lr (now {self.lr}).", TrainingWarning, stacklevel=3,
            )
        for callback in ctx.callbacks:
            callback.on_fit_end(self, ctx)
        return history

    @staticmethod
    def _share_start(ctx: FitContext) -> None:
        """Rank 0's weights and starting point (a resumed run's epoch, best score, history) on
        every rank, whatever the callbacks' ``on_fit_begin`` did on each."""
        ranks = ctx.ranks
        if not ranks.distributed:
            return
        ranks.broadcast_module(ctx.net)
        start = ranks.broadcast_object({
            "epoch": ctx.epoch, "step": ctx.step, "best_score": ctx.best_score, "best_epoch": ctx.best_epoch,
            "resumed": ctx.best_state is not None, "history": ctx.history,
        })
        ctx.epoch, ctx.step, ctx.best_score, ctx.best_epoch = (start["epoch"], start["step"], start["best_score"],
                                                                start["best_epoch"])
        ctx.history = start["history"]
        ctx.best_state = _state_copy(ctx.net) if start["resumed"] else None

    def _training_forward(self, net):
        """The network as training calls it: ``torch.compile``\\ d with ``compile=True``."""
        if not self.compile:
            return net
        compiled = torch.compile(net)

        def forward(*inputs):
            nonlocal compiled
            if compiled is not None:
                try:
                    return compiled(*inputs)
                except Exception as exc:  # noqa: BLE001 - any compiler failure falls back
                    warnings.warn(
                        f"torch.compile failed ({type(exc).__name__}: {str(exc)[:200]}); "
                        f"{type(self).__name__} trains the network uncompiled.", UserWarning, stacklevel=2,
                    )
                    compiled = None
            return net(*inputs)

        return forward

    def _plan_memory(self, net, series: TimeSeries, device, ranks: Ranks | None = None) -> dict:
        """Gradient checkpointing only when a batch's activations would exceed ``memory_budget``.

        The activations autograd keeps per frame are measured on a two-frame
        forward pass; a step holds up to ``2 * batch_size`` frames (on several ranks, its share).
        """
        lobe = getattr(net, "lobe", net)
        if not isinstance(lobe, TokenLobe):
            return {}
        per_frame = _saved_bytes_per_frame(lobe, series, device)
        per_rank = -(-self.batch_size // (ranks.world_size if ranks is not None else 1))  # this rank's share
        need = per_frame * 2 * per_rank
        budget = _memory_budget(self.memory_budget, device)
        checkpointing = need > budget
        lobe.checkpoint_blocks = checkpointing
        chunk = None
        if lobe.merger is not None:
            chunk = max(1, int(budget // max(per_frame, 1))) if checkpointing else None
            lobe.merger.checkpoint_frames = chunk
        return {"activation_bytes_per_frame": int(per_frame), "batch_activation_bytes": int(need),
                "budget_bytes": int(budget), "checkpointing": bool(checkpointing), "merger_chunk_frames": chunk}


    def _setup(self, X, sample_weight, *, constant_is_an_error: bool = True):
        """Validate parameters and data; return what every fit needs.

        ``constant_is_an_error``: refuse features that never change (nothing to
        learn, and VAMP's whitening would divide by zero).
        """
        validate_parameter_constraints(
            self._parameter_constraints, self.get_params(deep=False), caller_name=type(self).__name__,
        )
        ranks = Ranks.detect(type(self).__name__)
        series = self._as_time_series(X, reset=True)
        if constant_is_an_error and series.kind == "array":
            check_not_constant(series.items, type(self).__name__)
        weights = self._sample_weights(sample_weight, series)
        pairs = lagged_pairs(series.lengths, self.lagtime, type(self).__name__)
        self._check_pair_weights(weights, pairs)
        rng = self._shared_generator(ranks, series, weights, len(pairs))
        device = resolve_device(self.device)
        if self.precision == "bfloat16" and not supports_bfloat16(device):
            warnings.warn(
                f"precision='bfloat16' was asked for, but this {device.type.upper()} does not compute in "
                f"bfloat16 natively (on a CPU that needs AVX512-BF16 or AMX), where it would be slower "
                f"than float32: {type(self).__name__} trains in float32.", UserWarning, stacklevel=3,
            )
        return series, weights, pairs, rng, device, ranks

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

    def _fitted_input(self, X) -> tuple[TimeSeries, nn.Module, torch.device]:
        """For every method of a fitted learner: the input, checked against what fit saw,
        and the fitted network on the device asked for now."""
        check_is_fitted(self, "module_")
        series = self._as_time_series(X, reset=False)
        device = resolve_device(self.device)
        return series, self.module_.to(device), device

    def _lagged_values(self, values: list[np.ndarray], series: TimeSeries) -> tuple[np.ndarray, np.ndarray]:
        """``values`` at both ends of every time-lagged pair of the series (what a score sees)."""
        pairs = lagged_pairs(series.lengths, self.lagtime, type(self).__name__)
        x, y, _ = pair_arrays(values, pairs, self.lagtime)
        return x, y

    @staticmethod
    def _standardise_inputs(lobe, series: TimeSeries, train: np.ndarray, device) -> None:
        """Feature arrays are standardised by the mean and spread of the training
        trajectories only (those in ``train``'s pairs), never the validation ones."""
        if series.kind != "array":
            return
        stacked = np.concatenate([series.items[i] for i in np.unique(train[:, 0])])
        lobe.set_standardization(torch.as_tensor(stacked.mean(0), device=device),
                                 torch.as_tensor(stacked.std(0), device=device))

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
                    with self._autocast(device):
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
