"""The training loop of the learners, free of scikit-learn (the ``_Engine`` of training).

A :class:`Trainer` runs epochs of optimizer steps on the time-lagged pairs of
a :class:`~g2v_sklearn.learners._series.FitData`, keeps the best epoch's
weights, rolls back after a collapse, stops early through its callbacks,
follows the learning-rate schedule and keeps several ranks in step. What it
trains for comes from an :class:`Objective`, a small object with a written
contract:

* ``build(data, rng)`` returns a freshly initialised network for the data;
* ``batch_loss(context, batch)`` returns the scalar loss of a batch of pairs
  (rows ``(trajectory, t)``), to minimise;
* ``epoch_scores(context)`` returns the :class:`EpochScores` of the weights at
  the end of an epoch (higher is better);
* ``score_floor`` is the score of outputs without signal (a fall back to it
  is a collapse), or None;
* ``remedy`` is advice added to the message when the loss stops being finite.

The estimators (``VAMPNetEstimator``, ``SPIBEstimator``) turn ``X`` into
the fit's data, hand it with their objective to a trainer, and compute their
fitted attributes from the trained network.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .._runtime import compiled_or_eager
from .._threads import ThreadBudget
from ._callbacks import LRScheduler
from ._series import FitData

__all__ = ["EpochScores", "FitContext", "Objective", "TrainConfig", "Trainer", "TrainingCollapsed",
           "TrainingWarning"]


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


class TrainingCollapsed(ValueError):
    """No epoch of a run gave outputs that vary: there are no weights to keep."""


class _NonFiniteLoss(Exception):
    def __init__(self, value: float) -> None:
        super().__init__(value)
        self.value = value


def new_history() -> dict:
    """The per-epoch record of one training run, as the callbacks see it."""
    return {"train": [], "validation": [], "train_batches": [], "lr": [], "best_epoch": None,
            "best_score": None, "rollbacks": []}


@dataclass(frozen=True)
class TrainConfig:
    """How a trainer trains: the optimizer, the schedule and the loop's limits.

    ``who`` names the learner in messages.
    """

    who: str
    optimizer: str = "adamw"
    lr: float = 5e-4
    weight_decay: float = 0.0
    batch_size: int = 256
    max_epochs: int = 30
    lr_schedule: str = "constant"
    warmup: float = 0.0
    max_grad_norm: float | None = None
    compile: bool = False
    progress: bool = False


class EpochScores(NamedTuple):
    """The scores of the weights at the end of an epoch (higher is better)."""

    train: float
    validation: float | None  # None without validation pairs
    constant: bool  # the outputs were constant: a collapse


class Objective:
    """What a learner trains for; the contract between a learner and the :class:`Trainer`.

    Subclasses implement :meth:`build`, :meth:`batch_loss` and
    :meth:`epoch_scores`, and may set :attr:`score_floor` and :attr:`remedy`.
    """

    #: The score of outputs that carry no signal (VAMP: the constant function's 1), or None.
    score_floor: float | None = None
    #: Advice appended to "Try a smaller lr" when the loss stops being finite.
    remedy: str = ""

    def build(self, data: FitData, rng: np.random.Generator) -> torch.nn.Module:
        """A freshly initialised network for ``data``, on ``data.device``."""
        raise NotImplementedError

    def batch_loss(self, context: FitContext, batch: np.ndarray) -> Tensor:
        """The scalar loss (to minimise) of ``batch``, pairs (trajectory, t) of ``context.train``.

        On several ranks, ``batch`` is the global batch: each rank computes its
        share, and the loss (the same on every rank) is that of the whole batch.
        """
        raise NotImplementedError

    def epoch_scores(self, context: FitContext) -> EpochScores:
        """The scores of the current weights on the training and validation pairs."""
        raise NotImplementedError


@dataclass(eq=False)
class FitContext:
    """The progress of one training run, handed to every step of the loop and to the callbacks.

    What the run trains on is ``data`` (a frozen :class:`FitData`; ``series``,
    ``train``, ``val``, ``weights``, ``device`` and ``ranks`` read it);
    everything else here changes as training goes. Nothing of it stays on
    the estimator after ``fit`` except what the estimator copies out
    (``history`` becomes ``history_``). ``callbacks`` are the run's: what
    each callback's ``for_run()`` returned, so that a callback's state
    through the run is on its run's copy (see
    :mod:`~g2v_sklearn.learners._callbacks`), not here.

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

    data: FitData
    net: torch.nn.Module
    rng: np.random.Generator
    optimizer: torch.optim.Optimizer
    max_epochs: int
    callbacks: list  # the run's: each callback's for_run()
    run: int = 0  # the n_init restart (SPIB: the training round)
    total_steps: int = 1
    scheduled: bool = True
    threads: ThreadBudget | None = None
    forward: object = None  # the network as training calls it (compiled with compile=True)
    history: dict = field(default_factory=new_history)
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

    def __post_init__(self) -> None:
        if self.forward is None:
            self.forward = self.net

    # what the run trains on, read from ``data`` (callbacks read them here)
    series = property(lambda self: self.data.series, doc="The trajectories.")
    train = property(lambda self: self.data.train, doc="The training pairs (trajectory, t).")
    val = property(lambda self: self.data.val, doc="The validation pairs (may be empty).")
    weights = property(lambda self: self.data.weights, doc="Per-frame weights, or None.")
    device = property(lambda self: self.data.device, doc="Where the network trains.")
    ranks = property(lambda self: self.data.ranks, doc="The processes training together.")


def _best_finite(scores, default: float) -> float:
    """The largest finite score (an epoch cut short by a non-finite loss has NaN), or ``default``."""
    return max((s for s in scores if np.isfinite(s)), default=default)


def _state_copy(net) -> dict:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


class Trainer:
    """Trains a network for an :class:`Objective`: the loop, roll-back, early stopping, the
    schedule and the ranks. Knows nothing of scikit-learn.

    Parameters
    ----------
    config : TrainConfig
    objective : Objective
    callbacks : list of Callback
        Every run calls what their ``for_run()`` returns (a copy, for a
        callback with per-run state), as ``callback.on_...(owner, context)``.
    owner : object
        What the callbacks are told is training (the estimator).

    Examples
    --------
    The estimators build one per fit; code that steps training itself (a
    benchmark timing one optimizer step) takes the same route through
    ``VAMPNetEstimator.training_session``:

    >>> import numpy as np
    >>> from g2v_sklearn import VAMPNetEstimator
    >>> x = np.cumsum(np.random.default_rng(0).normal(size=(300, 2)), axis=0) * 0.01
    >>> trainer, context = VAMPNetEstimator(lagtime=5, progress=False, random_state=0).training_session(x)
    >>> loss = trainer.step(context, context.train[:64])  # one optimizer step, exactly as fit takes it
    >>> context.step
    1
    """

    def __init__(self, config: TrainConfig, objective: Objective, callbacks: list, owner=None) -> None:
        self.config = config
        self.objective = objective
        self.callbacks = list(callbacks)
        self.owner = owner

    def start(self, net, data: FitData, rng: np.random.Generator, *, max_epochs: int | None = None,
              run: int = 0, threads: ThreadBudget | None = None) -> FitContext:
        """A training run's progress: the optimizer, its schedule, an empty history, the callbacks'
        run copies."""
        config = self.config
        steps_per_epoch = max(1, len(range(0, len(data.train) - 1, config.batch_size)))
        epochs = int(max_epochs or config.max_epochs)
        scheduled = config.lr_schedule != "constant" or config.warmup > 0
        if any(isinstance(c, LRScheduler) for c in self.callbacks):
            scheduled = False  # an epoch-wise scheduler replaces the per-step schedule
        optimizer = OPTIMIZERS[config.optimizer](net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        runs = {id(c): c.for_run() for c in self.callbacks}  # a callback listed twice is one callback
        return FitContext(
            data=data, net=net, rng=rng, optimizer=optimizer, max_epochs=epochs,
            callbacks=[runs[id(c)] for c in self.callbacks],
            run=run, total_steps=steps_per_epoch * epochs, scheduled=scheduled, threads=threads,
            forward=compiled_or_eager(net, config.who, compile=config.compile),
        )

    def learning_rate(self, ctx: FitContext) -> float:
        """``lr`` times the linear warm-up and the cosine decay at the current step."""
        config, factor = self.config, 1.0
        warm = int(np.ceil(config.warmup * ctx.total_steps))
        if warm > 0 and ctx.step < warm:
            factor = (ctx.step + 1) / warm
        progress = min(ctx.step / max(ctx.total_steps, 1), 1.0)
        factor *= LR_SCHEDULES[config.lr_schedule](progress)
        return config.lr * factor * ctx.lr_factor

    def step(self, ctx: FitContext, batch: np.ndarray) -> float:
        """One optimizer step on ``batch`` (pairs of ``ctx.train``); returns the loss.

        Forward pass, loss, backward pass, gradient averaging over ranks,
        clipping, the optimizer and the schedule: the step ``fit`` takes.
        Raises ``_NonFiniteLoss`` (the weights untouched) when the loss is not finite.
        """
        if ctx.scheduled:
            for group in ctx.optimizer.param_groups:
                group["lr"] = self.learning_rate(ctx)
        loss = self.objective.batch_loss(ctx, batch)
        if not torch.isfinite(loss):
            raise _NonFiniteLoss(loss.item())
        ctx.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        ctx.ranks.average_gradients(ctx.net.parameters())
        if self.config.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(ctx.net.parameters(), self.config.max_grad_norm)
        ctx.optimizer.step()
        ctx.step += 1
        if ctx.threads is not None:
            ctx.threads.refresh()
        ctx.last_loss = loss.item()
        return ctx.last_loss

    def fit(self, ctx: FitContext) -> dict:
        """Epochs until ``max_epochs`` or a stop; the best epoch's weights are restored.

        Returns ``ctx.history``. Raises :class:`TrainingCollapsed` when no
        epoch gave outputs that vary.
        """
        self._notify("on_fit_begin", ctx)
        self._share_start(ctx)
        bar = tqdm(total=ctx.max_epochs, desc=self.config.who, disable=not ctx.ranks.progress(self.config.progress),
                   leave=False, initial=ctx.epoch + 1)
        with bar:
            while ctx.epoch + 1 < ctx.max_epochs and not ctx.stop:
                self.run_epoch(ctx)
                bar.update(1)
                if np.isfinite(ctx.score):
                    bar.set_postfix(score=f"{ctx.score:.4f}")
        self._restore_best(ctx)
        if ctx.collapsed_epoch is not None:
            self._warn_collapsed(ctx)
        self._notify("on_fit_end", ctx)
        return ctx.history

    def run_epoch(self, ctx: FitContext) -> None:
        """One pass over the training pairs, then the monitored score, best weights and callbacks."""
        ctx.epoch += 1
        clock = time.perf_counter()
        ctx.net.train()
        epoch_start = _state_copy(ctx.net)
        order = ctx.rng.permutation(len(ctx.train))
        losses = []
        smallest = max(2, ctx.ranks.world_size)  # two pairs, and on several ranks one pair each
        for start in range(0, len(order) - 1, self.config.batch_size):
            batch = ctx.train[order[start:start + self.config.batch_size]]
            if len(batch) < smallest:
                continue
            try:
                losses.append(self.step(ctx, batch))
            except _NonFiniteLoss as exc:
                self._on_non_finite_loss(ctx, exc.value, epoch_start)
                return
            self._notify("on_batch_end", ctx)
        scores = self.objective.epoch_scores(ctx)
        self._record_epoch(ctx, scores, losses)
        ctx.epoch_seconds = time.perf_counter() - clock
        rolled_back = False
        if self._collapsed(ctx, scores):
            rolled_back = self._on_collapse(ctx, "collapse")
        elif ctx.score > ctx.best_score:
            ctx.best_score, ctx.best_epoch, ctx.best_state = ctx.score, ctx.epoch, _state_copy(ctx.net)
        self._notify("on_epoch_end", ctx)
        if ctx.ranks.any(ctx.stop) and not ctx.stop:  # a rank that stopped alone would hang the others
            ctx.stop, ctx.stop_reason = True, "another rank stopped"
        if rolled_back:  # after on_epoch_end, so that what callbacks reset there stays reset
            self._notify("on_rollback", ctx)

    # ------------------------------------------------------------------ inside the loop
    def _notify(self, hook: str, ctx: FitContext) -> None:
        for callback in ctx.callbacks:
            getattr(callback, hook)(self.owner, ctx)

    @staticmethod
    def _record_epoch(ctx: FitContext, scores: EpochScores, losses: list) -> None:
        """The epoch's scores into the history; the monitored one (validation if any) into ``ctx.score``."""
        history = ctx.history
        history["train"].append(scores.train)
        history["train_batches"].append(-float(np.mean(losses)) if losses else float("nan"))
        ctx.score = scores.train
        if scores.validation is not None:
            ctx.score = scores.validation
            history["validation"].append(scores.validation)
        history["lr"].append(float(ctx.optimizer.param_groups[0]["lr"]))

    def _collapsed(self, ctx: FitContext, scores: EpochScores) -> bool:
        """Outputs went constant, or the training score fell back to the floor after being above it.

        The training score, not the validation score: a validation block that
        happens to hold few events of the slowest process can score near the
        floor without anything being wrong with the network.
        """
        best_train = _best_finite(ctx.history["train"][:-1], -np.inf)
        if scores.constant:
            return True
        floor = self.objective.score_floor
        if floor is None or not np.isfinite(best_train):
            return False
        gain = best_train - floor
        return gain > _COLLAPSE_MIN_GAIN and scores.train - floor < _COLLAPSE_FRACTION * gain

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
                self._notify("on_rollback", ctx)
            return
        raise FloatingPointError(
            f"{self.config.who}: the loss became {value} in epoch {ctx.epoch}; training stopped "
            f"and the last good weights were restored. Try a smaller lr (now {self.config.lr})"
            f"{self.objective.remedy}."
        )

    # ------------------------------------------------------------------ around the loop
    def _restore_best(self, ctx: FitContext) -> None:
        """The best epoch's weights back into the network (rank 0's on every rank), its record in
        the history; raises :class:`TrainingCollapsed` when there are none."""
        history = ctx.history
        history["stop_reason"] = ctx.stop_reason
        history["collapsed_epoch"] = ctx.collapsed_epoch
        if ctx.best_state is None:
            raise TrainingCollapsed(
                f"{self.config.who}: training collapsed in every epoch (the network's outputs "
                f"are constant), so there are no weights to keep. Try a smaller lr (now {self.config.lr})."
            )
        ctx.net.load_state_dict(ctx.best_state)
        ctx.best_state = None  # the weights are in the network now
        ctx.ranks.broadcast_module(ctx.net)  # rank 0's, to the bit
        history["best_epoch"] = ctx.best_epoch
        history["best_score"] = ctx.best_score
        ctx.net.eval()

    def _warn_collapsed(self, ctx: FitContext) -> None:
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
            f"{self.config.who}: training {what}{went_on}; the weights of epoch {ctx.best_epoch} "
            f"were kept. Try a smaller lr (now {self.config.lr}).", TrainingWarning, stacklevel=5,
        )

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
