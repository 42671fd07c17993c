"""Callbacks: code that runs at fixed points of a learner's training loop.

A callback is a small object passed in a learner's ``callbacks`` parameter.
Like every scikit-learn parameter it is never changed by ``fit``, so
``clone``, ``GridSearchCV``, joblib workers and pickles copy callbacks freely;
what one fit learns ends in the run's :class:`FitContext` (``context.history``
becomes the learner's ``history_``).

The hooks, in the order the loop calls them:

* ``on_fit_begin(learner, context)``: once per training run (per ``n_init``
  restart, per SPIB training round and per ``partial_fit`` call), after the
  network and optimizer are built.
* ``on_batch_end(learner, context)``: after every optimizer step.
* ``on_epoch_end(learner, context)``: after every epoch, once its monitored
  score is in ``context.history``. Set ``context.stop = True`` to end
  training; set ``context.stop_reason`` to say why.
* ``on_rollback(learner, context)``: after a collapse, once training went
  back to the best weights at half the learning rate (``context.lr_factor``)
  and before it goes on.
* ``on_fit_end(learner, context)``: once per run, after the best weights
  were restored.

Per-run state. Before ``on_fit_begin`` every run asks each callback for the
object it will call, ``callback.for_run()``. The base class answers with the
callback itself. A callback that keeps state through a run (a count of
epochs without improvement, a torch scheduler, the file it writes) names
that state's attributes (with a trailing underscore) and their starting
values in its class attribute ``run_state``, and is answered with a copy of
itself holding them, set there or, where they need the run's network or
optimizer, in ``on_fit_begin`` (as Keras callbacks reset theirs in
``on_train_begin``). The copy lives as long as the run (``context.callbacks``
holds the run's copies) and the callback in ``callbacks`` stays as it was:
each run starts from fresh state, so nothing carries over from one
``n_init`` restart, SPIB round or ``partial_fit`` call to the next, two
learners may share one callback, and concurrent fits never see each other's
state. :class:`EarlyStopping`, :class:`LRScheduler` and
:class:`SaveBestWeights` work so. A callback that answers with itself may
still record what it sees on itself for the caller to read after ``fit``
(see the examples of :class:`Callback` and
:class:`~g2v_sklearn.learners._trainer.FitContext`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from numbers import Integral, Real
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from .._utils import unreadable_checkpoint

__all__ = ["Callback", "EarlyStopping", "LRScheduler", "MetricsLog", "SaveBestWeights"]


class Callback:
    """Base class of the training callbacks: every hook does nothing.

    Subclasses override the hooks they need. State that a training run
    needs, fresh for every run, belongs on the copy that :meth:`for_run`
    returns, not on the callback, which is a parameter of the learner (see
    the module's docstring); values the learner should keep go into
    ``context.history``.

    Examples
    --------
    A callback that stops training once the monitored score passes a bar:

    >>> import numpy as np
    >>> from g2v_sklearn import Callback, VAMPNetEstimator
    >>> class StopAbove(Callback):
    ...     def __init__(self, bar):
    ...         self.bar = bar
    ...     def on_epoch_end(self, learner, context):
    ...         if context.score > self.bar:
    ...             context.stop, context.stop_reason = True, f"score above {self.bar}"
    >>> x = np.cumsum(np.random.default_rng(0).normal(size=(400, 2)), axis=0) * 0.01
    >>> est = VAMPNetEstimator(lagtime=5, max_epochs=10, progress=False, random_state=0,
    ...                        callbacks=[StopAbove(1.0)]).fit(x)
    >>> len(est.history_["train"]), est.history_["stop_reason"]
    (1, 'score above 1.0')

    One with state through a run keeps it on its run's copy; here it stops
    once the score falls well below the best of the run so far:

    >>> class StopOnFall(Callback):
    ...     run_state = {"best_": -np.inf}
    ...     def on_epoch_end(self, learner, context):
    ...         if context.score < self.best_ - 0.5:
    ...             context.stop = True
    ...         self.best_ = max(self.best_, context.score)
    >>> watch = StopOnFall()
    >>> est = est.set_params(callbacks=[watch]).fit(x)
    >>> hasattr(watch, "best_")  # the fit changed the run's copy, not the parameter
    False
    """

    #: The attributes a training run changes, and their values at its start (names end in
    #: an underscore). A callback with any is copied for every run; one without is called itself.
    run_state: ClassVar[dict] = {}

    def for_run(self) -> Callback:
        """The object one training run calls: this callback itself, or, for a callback with
        :attr:`run_state`, a copy (``copy.copy(self)``) with that state at its starting
        values. The callback itself is never changed."""
        if not self.run_state:
            return self
        run = copy.copy(self)
        for name, value in self.run_state.items():
            setattr(run, name, value)
        return run

    def on_fit_begin(self, learner, context) -> None:
        """Called once per training run, after the network and optimizer are built."""

    def on_batch_end(self, learner, context) -> None:
        """Called after every optimizer step (``context.step``, ``context.last_loss``)."""

    def on_epoch_end(self, learner, context) -> None:
        """Called after every epoch; ``context.stop = True`` ends training."""

    def on_rollback(self, learner, context) -> None:
        """Called after a collapse, once the best weights are back and the rate is halved."""

    def on_fit_end(self, learner, context) -> None:
        """Called once per training run, after the best weights were restored."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other) -> bool:  # clones compare equal (GridSearchCV prints and compares params)
        return type(self) is type(other) and vars(self) == vars(other)

    __hash__ = None


class EarlyStopping(Callback):
    """Stop when the monitored score has not improved for ``patience`` epochs.

    The learners build one from their ``patience`` parameter; pass one in
    ``callbacks`` for a different rule (e.g. a relative ``tolerance``).
    Improvement is judged on the monitored score: the validation score, or
    without validation the training score of the weights at the end of the
    epoch. The best weights are restored whatever stops the fit.

    Parameters
    ----------
    patience : int, default=5
        Epochs in a row without an improvement before stopping (a run's
        first epoch improves on nothing before it, so it never counts).
    tolerance : float, default=0.0
        An epoch improves only when it beats the best score by more than
        ``tolerance`` times its magnitude.

    Examples
    --------
    >>> import numpy as np
    >>> from g2v_sklearn import EarlyStopping, VAMPNetEstimator
    >>> x = np.cumsum(np.random.default_rng(0).normal(size=(400, 2)), axis=0) * 0.01
    >>> est = VAMPNetEstimator(lagtime=5, max_epochs=20, patience=None, progress=False, random_state=0,
    ...                        callbacks=[EarlyStopping(patience=2)]).fit(x)
    >>> len(est.history_["train"]) <= 20
    True
    """

    # the state of a run, on the run's copy (for_run): the best monitored score so far (None
    # until the run's first epoch) and the epochs since it last improved
    run_state = {"best_": None, "stale_": 0}
    best_: float | None
    stale_: int

    def __init__(self, patience: int = 5, tolerance: float = 0.0) -> None:
        self.patience = patience
        self.tolerance = tolerance

    def on_epoch_end(self, learner, context) -> None:
        if not isinstance(self.patience, Integral) or self.patience < 1:
            raise ValueError(f"EarlyStopping's patience must be a positive int; got {self.patience!r}.")
        if not isinstance(self.tolerance, Real) or self.tolerance < 0:
            raise ValueError(f"EarlyStopping's tolerance must be >= 0; got {self.tolerance!r}.")
        if self.best_ is None:
            # the best score before the run's first epoch, taken at that epoch's end, not in for_run: a
            # resumed run (SaveBestWeights(resume=True)) starts from its file's best score, set in
            # on_fit_begin and shared among the ranks after it. The trainer has already counted this
            # epoch: if it is the best so far, it improved on whatever came before (nothing, in a new run)
            self.best_ = -np.inf if context.best_epoch == context.epoch else context.best_score
        score, best = context.score, self.best_
        threshold = best + self.tolerance * abs(best) if np.isfinite(best) else -np.inf
        if score > threshold:
            self.best_, self.stale_ = score, 0
        else:
            self.best_ = max(best, score)
            self.stale_ += 1
            if self.stale_ >= self.patience:
                context.stop = True
                context.stop_reason = context.stop_reason or (
                    f"no improvement for {self.patience} epochs")

    def on_rollback(self, learner, context) -> None:
        # training starts again from the best weights: the epochs since then count no more
        if self.best_ is None:  # a roll-back before the run's first scored epoch (a resumed run's)
            self.best_ = -np.inf
        self.stale_ = 0


class LRScheduler(Callback):
    """A :mod:`torch.optim.lr_scheduler` scheduler, stepped after every epoch.

    It replaces the learner's own ``lr_schedule`` (which steps per batch):
    the learner's warm-up and cosine decay are off while an ``LRScheduler``
    is among the callbacks.

    Parameters
    ----------
    policy : str or type
        A scheduler class of :mod:`torch.optim.lr_scheduler` or its name,
        e.g. ``"StepLR"``, ``"ExponentialLR"``, ``"ReduceLROnPlateau"``
        (which is given the monitored score, in ``mode="max"``).
    **kwargs
        Passed to the scheduler, e.g. ``step_size=5, gamma=0.5``.

    Examples
    --------
    >>> import numpy as np
    >>> from g2v_sklearn import LRScheduler, VAMPNetEstimator
    >>> x = np.cumsum(np.random.default_rng(0).normal(size=(400, 2)), axis=0) * 0.01
    >>> est = VAMPNetEstimator(lagtime=5, max_epochs=3, lr=1e-3, progress=False, random_state=0,
    ...                        callbacks=[LRScheduler("StepLR", step_size=1, gamma=0.5)]).fit(x)
    >>> est.history_["lr"]
    [0.001, 0.0005, 0.00025]
    """

    # the state of a run, on the run's copy (for_run): the scheduler on the run's optimizer
    run_state = {"scheduler_": None}
    scheduler_: torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau | None

    def __init__(self, policy, **kwargs) -> None:
        self.policy = policy
        self.kwargs = kwargs

    def _scheduler_class(self):
        policy = self.policy
        if isinstance(policy, str):
            policy = getattr(torch.optim.lr_scheduler, policy, None)
        if not (isinstance(policy, type) and hasattr(policy, "step")):
            raise ValueError(
                f"LRScheduler's policy must name a class of torch.optim.lr_scheduler (e.g. 'StepLR'); "
                f"got {self.policy!r}."
            )
        return policy

    def on_fit_begin(self, learner, context) -> None:
        self.scheduler_ = self._scheduler_class()(context.optimizer, **self.kwargs)

    def on_epoch_end(self, learner, context) -> None:
        scheduler = self.scheduler_
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(-context.score)  # it minimises by default; our scores are maximised
        else:
            scheduler.step()

    def on_rollback(self, learner, context) -> None:
        # Schedulers that compute the rate from their base rates undo the halving at every
        # step (this epoch's step, just taken, already did): halve the base rates and the
        # rate they set. ReduceLROnPlateau works on the current rate, which stays halved.
        scheduler = self.scheduler_
        if hasattr(scheduler, "base_lrs"):
            scheduler.base_lrs = [lr * 0.5 for lr in scheduler.base_lrs]
            for group in context.optimizer.param_groups:
                group["lr"] *= 0.5
                if "initial_lr" in group:
                    group["initial_lr"] *= 0.5


def _digest(value) -> str:
    return hashlib.sha256(repr(value).encode()).hexdigest()


class SaveBestWeights(Callback):
    """Write the best weights so far to a file, each time they improve; resume from it.

    For long runs (a GPU job that may be pre-empted): the file always holds
    the network of the best epoch so far, written atomically (a temporary
    file renamed over the old one), with the epoch, score and history. The
    file name is made from the learner's class, a digest of its parameters
    and a digest of the training pairs, so clones with other parameters (the
    candidates of a grid search) and fits on other data (its folds) never
    write the same file; the path is recorded in ``history_["best_weights_file"]``
    (for :class:`SPIBEstimator`, whose training rounds each save their own
    file, a list with one path per round; likewise ``resumed_from_epoch``).
    On several ranks (torch.distributed) only rank 0 writes, and a resumed
    run starts every rank from rank 0's file.

    Parameters
    ----------
    directory : str or path-like
        Folder for the files (created when missing).
    resume : bool, default=False
        When the file of this very fit (same class, parameters, data and
        run) exists, e.g. left by a job that was pre-empted, start from it:
        its weights, its best score, and the epoch after its best epoch (the
        history up to that epoch comes from the file; the learning-rate
        schedule goes on from there). Adam's moment estimates and the data
        order are not saved, so a resumed fit is not bit-identical to one
        that ran through. Without a file the fit starts afresh. With
        ``validation_split="trajectories"`` the file name depends on the
        random split: give the learner an int ``random_state`` to resume.

    Notes
    -----
    A file holds ``{"state_dict", "epoch", "score", "params", "history"}``; load it
    with ``torch.load(path, weights_only=True)`` and
    ``learner.module_.load_state_dict(...)``.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> import torch
    >>> from g2v_sklearn import SaveBestWeights, VAMPNetEstimator
    >>> x = np.cumsum(np.random.default_rng(0).normal(size=(400, 2)), axis=0) * 0.01
    >>> folder = tempfile.mkdtemp()
    >>> est = VAMPNetEstimator(lagtime=5, max_epochs=3, progress=False, random_state=0,
    ...                        callbacks=[SaveBestWeights(folder)]).fit(x)
    >>> saved = torch.load(est.history_["best_weights_file"], weights_only=True)
    >>> saved["epoch"] == est.history_["best_epoch"]
    True
    """

    # the state of a run, on the run's copy (for_run): the file this run writes
    run_state = {"path_": None}
    path_: Path | None

    def __init__(self, directory, resume: bool = False) -> None:
        self.directory = directory
        self.resume = resume

    def path_for(self, learner, context) -> Path:
        params = {k: v for k, v in learner.get_params(deep=False).items() if k != "callbacks"}
        data = (context.series.fingerprint(), context.train.tobytes(), context.run)
        name = f"{type(learner).__name__}-{_digest(sorted(params.items()))[:12]}-{_digest(data)[:10]}.pt"
        return Path(self.directory) / name

    def on_fit_begin(self, learner, context) -> None:
        path = self.path_for(learner, context)
        if context.ranks.rank == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.path_ = path
        context.history["best_weights_file"] = str(path)
        if self.resume and context.ranks.rank == 0 and path.exists():  # the other ranks get rank 0's start
            self._resume(learner, context, path)

    @staticmethod
    def _params(learner) -> dict:
        return {k: repr(v) for k, v in learner.get_params(deep=False).items() if k != "callbacks"}

    def _resume(self, learner, context, path: Path) -> None:
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch's advice (weights_only=False) is not ours
            raise ValueError(
                f"SaveBestWeights(resume=True) could not resume from {path}: "
                f"{unreadable_checkpoint(path, exc)}; move the file away to start afresh."
            ) from exc
        try:
            context.net.load_state_dict(saved["state_dict"])
            epoch, score, history = int(saved["epoch"]), float(saved["score"]), saved["history"]
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the same problem
            raise ValueError(
                f"SaveBestWeights(resume=True) could not resume from {path} ({type(exc).__name__}: "
                f"{str(exc)[:200]}); move the file away to start afresh."
            ) from exc
        if saved.get("params") != self._params(learner):
            raise ValueError(f"SaveBestWeights(resume=True): {path} was written by a learner with other "
                             f"parameters; move the file away to start afresh.")
        steps_per_epoch = context.total_steps // max(context.max_epochs, 1)
        context.epoch, context.step = epoch, (epoch + 1) * steps_per_epoch
        context.best_epoch, context.best_score = epoch, score
        context.best_state = {k: v.detach().clone() for k, v in context.net.state_dict().items()}
        context.history.update({k: list(v) for k, v in history.items()})
        context.history["resumed_from_epoch"] = epoch

    def on_epoch_end(self, learner, context) -> None:
        if context.best_epoch != context.epoch or context.ranks.rank != 0:
            return
        path = self.path_
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        history = {k: list(context.history[k]) for k in ("train", "validation", "train_batches", "lr")}
        torch.save({"state_dict": {k: v.detach().cpu() for k, v in context.net.state_dict().items()},
                    "epoch": context.epoch, "score": float(context.score), "params": self._params(learner),
                    "history": history}, tmp)
        os.replace(tmp, path)


class MetricsLog(Callback):
    """Append one JSON line per epoch to a file: epoch, scores, learning rate, seconds.

    Parameters
    ----------
    path : str or path-like
        The file; lines are appended, each a JSON object with ``learner``
        (the class name), ``run``, ``epoch``, ``train``, ``validation``,
        ``lr``, ``seconds`` and ``best_epoch``. Concurrent fits (a grid
        search) may share the file: every line is one ``write`` call.

    Examples
    --------
    >>> import json, tempfile
    >>> import numpy as np
    >>> from g2v_sklearn import MetricsLog, VAMPNetEstimator
    >>> x = np.cumsum(np.random.default_rng(0).normal(size=(400, 2)), axis=0) * 0.01
    >>> log = tempfile.mktemp(suffix=".jsonl")
    >>> est = VAMPNetEstimator(lagtime=5, max_epochs=2, progress=False, random_state=0,
    ...                        callbacks=[MetricsLog(log)]).fit(x)
    >>> [json.loads(line)["epoch"] for line in open(log)]
    [0, 1]
    """

    def __init__(self, path) -> None:
        self.path = path

    def on_epoch_end(self, learner, context) -> None:
        if context.ranks.rank != 0:  # one line per epoch, not one per rank
            return
        h = context.history
        row = {
            "learner": type(learner).__name__, "run": context.run, "epoch": context.epoch,
            "train": h["train"][-1], "validation": h["validation"][-1] if h["validation"] else None,
            "lr": h["lr"][-1], "seconds": context.epoch_seconds, "best_epoch": context.best_epoch,
        }
        with open(self.path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
