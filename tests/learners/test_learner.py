"""The shared training loop (g2v_sklearn.learners._learner): best weights, collapse, restarts, splits, schedules, seams."""

from __future__ import annotations

import json
import math
import pickle
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, KFold

from g2v_sklearn import (
    Callback,
    EarlyStopping,
    LRScheduler,
    MetricsLog,
    SaveBestWeights,
    SPIBEstimator,
    TokenMerger,
    TokenTrajectory,
    TrainingWarning,
    VAMPNetEstimator,
)
from g2v_sklearn._validation import lagged_pairs

# Fits compared bit for bit across runs: the same torch threads in every run.
pytestmark = pytest.mark.usefixtures("fixed_threads")

FAST = dict(hidden_layer_sizes=(16,), batch_size=128, progress=False)


class ShrinkOutputs(Callback):
    """Force a collapse: from epoch ``epoch`` on, the last layer's weights shrink to ~0.

    The outputs are then the bias plus variations far below float32 rounding: what a
    collapsed training leaves. ``every_step=False`` shrinks them after each epoch's last
    step only, so the end-of-epoch score sees constant outputs; ``True`` after every
    step, so the next loss is not finite (what a collapse usually does to VAMP-2).
    """

    def __init__(self, epoch, every_step=False, until=None):
        self.epoch, self.every_step, self.until = epoch, every_step, until

    def on_batch_end(self, learner, context):
        per_epoch = context.total_steps // context.max_epochs
        last_step = context.step == per_epoch * (context.epoch + 1)
        during = context.epoch >= self.epoch and (self.until is None or context.epoch <= self.until)
        if during and (self.every_step or last_step):
            with torch.no_grad():
                context.net.net[-1].weight.mul_(1e-9)


# --------------------------------------------------------------------------- never a worse model
@pytest.mark.parametrize("every_step, message", [
    (False, r"collapsed in epoch 3 \(training score .*\); it went on from the best weights at a smaller rate "
            r"2 times \(after the collapses in epochs \[3, 4\]\), and stopped at the next collapse "
            r"\(epoch 5\); the weights of epoch \d were kept.*smaller lr"),
    (True, r"failed in epoch 3: the loss became nan; it went on .* 2 times.*; the weights of epoch \d were kept"),
])
def test_forced_collapse_keeps_the_best_epoch_warns_and_scores_it(dihedral_features, every_step, message):
    x = [t[:2500] for t in dihedral_features]
    est = VAMPNetEstimator(lagtime=5, max_epochs=6, validation_fraction=0, random_state=0,
                           callbacks=[ShrinkOutputs(3, every_step)], **FAST)
    with pytest.warns(TrainingWarning, match=message):
        est.fit(x)
    h = est.history_
    # rolled back twice (epochs 3 and 4), then stopped at the third collapse (epoch 5)
    assert h["collapsed_epoch"] == 3 and h["rollbacks"] == [3, 4] and len(h["train"]) == 6
    assert h["stop_reason"] == ("collapse" if not every_step else "the loss became nan")
    assert h["best_epoch"] < 3 and h["best_score"] == max(h["train"][:3])
    # the score of the kept weights is that epoch's score, recomputed
    assert est.score(x) == pytest.approx(h["best_score"], rel=1e-6)


class CheckRollback(Callback):
    """At each roll-back: the network holds the best epoch's weights and the optimizer no moments."""

    def __init__(self):
        self.seen = []

    def on_rollback(self, learner, context):
        state = context.net.state_dict()
        restored = all(torch.equal(state[k], v) for k, v in context.best_state.items())
        self.seen.append((context.epoch, restored, len(context.optimizer.state), context.lr_factor))


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_a_passing_collapse_is_rolled_back_and_training_goes_on(dihedral_features, schedule):
    """One bad epoch: back to the best weights at half the rate, then on to max_epochs."""
    x = [t[:2500] for t in dihedral_features]
    check = CheckRollback()
    extra = dict(lr_schedule="constant", warmup=0.0) if schedule == "constant" else {}
    est = VAMPNetEstimator(lagtime=5, max_epochs=6, validation_fraction=0, random_state=0,
                           callbacks=[ShrinkOutputs(2, until=2), check, EarlyStopping(patience=2)],
                           **extra, **{**FAST, "patience": None})
    with pytest.warns(TrainingWarning, match=r"collapsed in epoch 2 .*went on from the best weights .*1 time "):
        est.fit(x)
    h = est.history_
    assert check.seen == [(2, True, 0, 0.5)]  # weights restored, moments cleared, rate halved
    # early stopping's patience of 2 starts again at the roll-back: without that reset the
    # collapsed epoch and the next would end training at epoch 3
    assert h["collapsed_epoch"] == 2 and h["rollbacks"] == [2] and len(h["train"]) >= 5
    assert h["stop_reason"] != "collapse"
    # the rate at each epoch's end: the schedule's own (a fit without the collapse has the same
    # steps), halved from the roll-back on
    plain = VAMPNetEstimator(lagtime=5, max_epochs=6, validation_fraction=0, random_state=0,
                             **extra, **{**FAST, "patience": None}).fit(x).history_["lr"]
    assert h["lr"][:3] == plain[:3]  # epoch 2's rate is recorded before its roll-back
    assert h["lr"][3:] == pytest.approx([lr / 2 for lr in plain[3:len(h["lr"])]], rel=1e-12)
    assert h["best_score"] == max(h["train"])
    assert est.score(x) == pytest.approx(h["best_score"], rel=1e-6)


def test_a_rollback_carries_through_an_epoch_wise_scheduler(dihedral_features):
    """LambdaLR computes the rate from its base rates: those are halved too, so the halving holds."""
    x = [t[:2500] for t in dihedral_features]
    est = VAMPNetEstimator(lagtime=5, max_epochs=5, validation_fraction=0, random_state=0,
                           callbacks=[ShrinkOutputs(2, until=2), LRScheduler("LambdaLR", lr_lambda=lambda e: 1.0)],
                           **FAST)
    with pytest.warns(TrainingWarning):
        est.fit(x)
    assert est.history_["lr"][:2] == [est.lr] * 2 and est.history_["lr"][3:] == [est.lr / 2] * 2


def test_large_lr_never_returns_a_worse_model_than_its_best_epoch(dihedral_features):
    x = [t[:2500] for t in dihedral_features]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = VAMPNetEstimator(lagtime=5, lr=0.5, max_epochs=8, validation_fraction=0, patience=None,
                               max_grad_norm=None, warmup=0.0, random_state=1, **FAST).fit(x)
    h = est.history_
    assert h["best_score"] == max(h["train"])
    assert est.score(x) == pytest.approx(h["best_score"], rel=1e-6)
    if h["collapsed_epoch"] is not None:  # then the user was told
        assert any(issubclass(w.category, TrainingWarning) for w in caught)


def test_collapse_in_every_epoch_is_an_error(dihedral_features):
    est = VAMPNetEstimator(lagtime=5, max_epochs=3, validation_fraction=0, random_state=0,
                           callbacks=[ShrinkOutputs(0)], **FAST)
    with pytest.raises(ValueError, match="collapsed in every epoch.*smaller lr"):
        est.fit(dihedral_features[0][:2000])
    assert not hasattr(est, "module_")


def test_without_validation_the_best_training_epoch_is_kept(dihedral_features):
    x = [t[:2000] for t in dihedral_features[:2]]
    est = VAMPNetEstimator(lagtime=5, max_epochs=6, validation_fraction=0, patience=None, lr=2e-2,
                           random_state=0, **FAST).fit(x)
    h = est.history_
    assert h["validation"] == [] and len(h["train"]) == 6
    assert h["best_epoch"] == int(np.argmax(h["train"])) and h["best_score"] == max(h["train"])
    assert est.score(x) == pytest.approx(h["best_score"], rel=1e-6)


@pytest.mark.parametrize("patience", [1, 2])
def test_early_stopping_counts_only_epochs_that_fail_to_improve(dihedral_features, patience):
    """A run stops at its patience-th epoch in a row that does not beat every epoch before it;
    its first epoch improves on nothing before it and never counts against it."""
    x = [t[:800] for t in dihedral_features[:2]]
    est = VAMPNetEstimator(lagtime=5, lr=1e-3, max_epochs=12, patience=None, random_state=0,
                           callbacks=[EarlyStopping(patience=patience)], **FAST).fit(x)
    scores = est.history_["train"]
    assert len(scores) > patience  # not before `patience` epochs after the first
    best, stale, expected = -np.inf, 0, 12
    for epoch, score in enumerate(scores):
        best, stale = (score, 0) if score > best else (best, stale + 1)
        if stale == patience:
            expected = epoch + 1
            break
    assert len(scores) == expected


def test_n_init_keeps_the_best_of_three_and_records_all(dihedral_features):
    x = [t[:1500] for t in dihedral_features]
    est = VAMPNetEstimator(lagtime=5, max_epochs=2, n_init=3, validation_fraction=0, random_state=0,
                           **FAST).fit(x)
    runs = est.history_["runs"]
    assert len(runs) == 3 and all(len(r["train"]) == 2 for r in runs)
    scores = [r["best_score"] for r in runs]
    assert len(set(scores)) == 3  # independent initialisations
    assert est.history_["best_run"] == int(np.argmax(scores))
    assert est.history_["best_score"] == max(scores)
    assert est.score(x) == pytest.approx(max(scores), rel=1e-6)  # the kept network is the best run's


# --------------------------------------------------------------------------- the validation split
@pytest.mark.parametrize("n_trajs", [1, 3])
def test_block_split_holds_out_the_end_of_every_trajectory(dihedral_features, n_trajs):
    lag = 7
    x = [t[:1000 - 100 * i] for i, t in enumerate(dihedral_features[:n_trajs])]
    est = VAMPNetEstimator(lagtime=lag, validation_fraction=0.25, **FAST)
    series = est._as_time_series(x, reset=True)
    pairs = lagged_pairs(series.lengths, lag, "test")
    train, val = est._split(series, pairs, np.random.default_rng(0))
    for traj, n in enumerate(series.lengths):
        t_train, t_val = train[train[:, 0] == traj, 1], val[val[:, 0] == traj, 1]
        n_pairs = n - lag
        assert len(t_val) == round(0.25 * n_pairs)  # the final quarter of this trajectory's pairs
        np.testing.assert_array_equal(t_val, np.arange(n_pairs - len(t_val), n_pairs))
        # a gap of lagtime: the last training frame (t + lag) comes before the first validation frame
        assert t_train.max() + lag < t_val.min()
        np.testing.assert_array_equal(t_train, np.arange(t_train.max() + 1))


def test_trajectory_split_holds_out_whole_trajectories(dihedral_features):
    x = [t[:500] for t in dihedral_features]
    est = VAMPNetEstimator(lagtime=5, validation_split="trajectories", validation_fraction=0.25, **FAST)
    series = est._as_time_series(x, reset=True)
    train, val = est._split(series, lagged_pairs(series.lengths, 5, "test"), np.random.default_rng(0))
    assert len(np.unique(val[:, 0])) == 1 and not set(val[:, 0]) & set(train[:, 0])


# --------------------------------------------------------------------------- stabilisers
def test_warmup_and_cosine_schedule(dihedral_features):
    x = dihedral_features[0][:1286]  # 1,281 pairs: 10 steps of 128 per epoch (the last pair alone is skipped)
    est = VAMPNetEstimator(lagtime=5, lr=1e-2, max_epochs=4, warmup=0.25, validation_fraction=0, patience=None,
                           random_state=0, **FAST).fit(x)
    lrs = est.history_["lr"]  # the rate of each epoch's last step
    # 40 steps, 10 of warm-up: epoch 0 ends at the full rate times the cosine at step 9/40
    assert lrs[0] == pytest.approx(1e-2 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * 9 / 40))))
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.2e-2
    flat = clone(est).set_params(lr_schedule="constant", warmup=0.0).fit(x)
    assert flat.history_["lr"] == [1e-2] * 4


def test_gradient_clipping_bounds_the_step(dihedral_features):
    class GradNorms(Callback):
        def __init__(self):
            self.norms = []

        def on_batch_end(self, learner, context):
            grads = [p.grad for p in context.net.parameters() if p.grad is not None]
            self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    record = GradNorms()
    VAMPNetEstimator(lagtime=5, max_epochs=1, max_grad_norm=1e-3, random_state=0, callbacks=[record],
                     **FAST).fit(dihedral_features[0][:1000])
    assert len(record.norms) > 3 and max(record.norms) <= 1e-3 * (1 + 1e-5)


def test_bfloat16_without_native_support_trains_in_float32(dihedral_features, monkeypatch):
    from g2v_sklearn import _runtime

    monkeypatch.setattr(_runtime, "supports_bfloat16", lambda device: False)
    x = dihedral_features[0][:600]
    with pytest.warns(UserWarning, match="does not compute in bfloat16 natively.*trains in float32"):
        bf = VAMPNetEstimator(lagtime=5, max_epochs=1, precision="bfloat16", random_state=0, **FAST).fit(x)
    fp = VAMPNetEstimator(lagtime=5, max_epochs=1, random_state=0, **FAST).fit(x)
    np.testing.assert_array_equal(bf.transform(x), fp.transform(x))


# --------------------------------------------------------------------------- memory
def planted(rng, n_frames=120, n_res=12, h=8):
    state = np.repeat(rng.integers(0, 2, size=n_frames // 20), 20)
    features = rng.normal(size=(n_frames, n_res, 4, h)).astype(np.float32)
    features[:, -3:, 0] += 2.0 * (2 * state[:, None, None] - 1)
    walk = np.cumsum(rng.normal(size=(n_res, 3)), axis=0) * 2.5
    positions = np.broadcast_to(walk, (n_frames, n_res, 3)).astype(np.float32).copy()
    return TokenTrajectory(features, positions, residue_names=["ALA"] * n_res, chain_ids=["A"] * n_res,
                           residue_ids=range(n_res))


def test_checkpointing_only_above_the_memory_budget(rng):
    merged = TokenMerger(window=2).fit_transform([planted(rng)])
    kw = dict(lagtime=2, d_model=16, n_heads=2, n_layers=1, batch_size=32, max_epochs=1, random_state=0,
              progress=False)
    roomy = VAMPNetEstimator(**kw).fit(merged)
    assert roomy.memory_plan_["checkpointing"] is False
    assert not roomy.module_.checkpoint_blocks and roomy.module_.merger.checkpoint_frames is None
    per_frame = roomy.memory_plan_["activation_bytes_per_frame"]
    assert roomy.memory_plan_["batch_activation_bytes"] == per_frame * 2 * 32 > 0
    tight = VAMPNetEstimator(memory_budget=per_frame * 10, **kw).fit(merged)
    assert tight.memory_plan_["checkpointing"] is True
    assert tight.module_.checkpoint_blocks and tight.module_.merger.checkpoint_frames == 10
    # recomputation changes memory, not the result
    np.testing.assert_allclose(tight.transform(merged)[0], roomy.transform(merged)[0], rtol=1e-3, atol=1e-4)


# --------------------------------------------------------------------------- seams: partial_fit, callbacks
def test_partial_fit_continues_from_the_current_weights(dihedral_features):
    x = [t[:1000] for t in dihedral_features[:2]]
    est = VAMPNetEstimator(lagtime=5, random_state=0, **FAST)
    est.partial_fit(x)
    first = [p.detach().clone() for p in est.module_.parameters()]
    scale = est.output_scale_.copy()
    est.partial_fit(x)
    assert len(est.history_["train"]) == 2 and est.n_iter_ == 2
    assert any(not torch.equal(a, b) for a, b in zip(first, est.module_.parameters()))
    assert not np.array_equal(scale, est.output_scale_)  # the decomposition follows the new weights
    assert est.score(x) == pytest.approx(est.history_["train"][-1], rel=1e-6)
    with pytest.raises(ValueError, match="X has 3 features, but VAMPNetEstimator is expecting 4 features"):
        est.partial_fit(x[0][:, :3])
    # fit starts over
    est.fit(x)
    assert len(est.history_["runs"]) == 1


def test_callbacks_survive_clone_and_pickle(tmp_path):
    callbacks = [EarlyStopping(patience=2, tolerance=1e-3), LRScheduler("StepLR", step_size=1, gamma=0.5),
                 SaveBestWeights(tmp_path), MetricsLog(tmp_path / "log.jsonl")]
    est = VAMPNetEstimator(callbacks=callbacks)
    twin = clone(est)
    assert twin.callbacks == callbacks and twin.callbacks is not callbacks
    assert all(a is not b for a, b in zip(twin.callbacks, callbacks))
    assert pickle.loads(pickle.dumps(est)).callbacks == callbacks
    with pytest.raises(TypeError, match=r"callbacks\[0\] is a str"):
        VAMPNetEstimator(callbacks=["early"]).fit(np.zeros((50, 2)) + np.arange(50)[:, None])
    with pytest.raises(ValueError, match="LRScheduler's policy must name a class"):
        VAMPNetEstimator(max_epochs=1, progress=False, callbacks=[LRScheduler("Nope")]).fit(
            np.random.default_rng(0).normal(size=(60, 2)))


def test_a_runs_callback_state_is_on_its_run_copies_never_on_the_parameters(dihedral_features, tmp_path):
    x = [t[:800] for t in dihedral_features[:2]]
    callbacks = [EarlyStopping(patience=1), LRScheduler("StepLR", step_size=1, gamma=0.5), SaveBestWeights(tmp_path),
                 MetricsLog(tmp_path / "log.jsonl")]
    before = [dict(vars(c)) for c in callbacks]
    est = VAMPNetEstimator(lagtime=5, max_epochs=3, n_init=2, random_state=0, callbacks=callbacks, **FAST).fit(x)
    assert [vars(c) for c in callbacks] == before  # fit left nothing on them
    assert pickle.loads(pickle.dumps(est)).callbacks == callbacks
    trainer, context = est.training_session(x)
    early, scheduler, saver, log = context.callbacks[1:]  # after the EarlyStopping made from patience
    assert log is callbacks[3]  # no state of its own: the run calls it
    assert all(type(a) is type(b) and a is not b for a, b in zip((early, scheduler, saver), callbacks))
    assert (early.best_, early.stale_, scheduler.scheduler_, saver.path_) == (None, 0, None, None)
    history = trainer.fit(context)
    assert isinstance(scheduler.scheduler_, torch.optim.lr_scheduler.StepLR)
    assert str(saver.path_) == history["best_weights_file"] and early.best_ == history["best_score"]
    assert [vars(c) for c in callbacks] == before


def test_grid_search_saves_best_weights_per_candidate_and_fold(dihedral_features, tmp_path):
    x = [t[:600] for t in dihedral_features]
    log = tmp_path / "metrics.jsonl"
    est = VAMPNetEstimator(lagtime=5, max_epochs=2, random_state=0,
                           callbacks=[SaveBestWeights(tmp_path / "best"), MetricsLog(log)], **FAST)
    search = GridSearchCV(est, {"lr": [1e-3, 1e-2]}, cv=KFold(2), error_score="raise").fit(x)
    files = sorted((tmp_path / "best").glob("*.pt"))
    assert len(files) == 2 * 2 + 1  # candidates x folds, and the refit on all of X
    best = search.best_estimator_
    saved = torch.load(best.history_["best_weights_file"], weights_only=True)
    assert saved["epoch"] == best.history_["best_epoch"] and saved["score"] == best.history_["best_score"]
    for name, tensor in best.module_.state_dict().items():  # the file holds the kept weights
        torch.testing.assert_close(saved["state_dict"][name], tensor)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) == sum(2 for _ in range(5))  # 2 epochs in each of the 5 fits
    assert {r["learner"] for r in rows} == {"VAMPNetEstimator"}


class _Preempted(Exception):
    pass


class _PreemptAfter(Callback):
    """Ends a fit the way a job's pre-emption would, after ``epoch``."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, learner, context):
        if context.epoch == self.epoch:
            raise _Preempted


def test_a_preempted_fit_resumes_from_its_best_weights_file(dihedral_features, tmp_path):
    x = [t[:800] for t in dihedral_features[:2]]
    params = dict(lagtime=5, max_epochs=6, patience=None, validation_fraction=0.2, random_state=0, **FAST)
    saver = SaveBestWeights(tmp_path, resume=True)
    with pytest.raises(_Preempted):
        VAMPNetEstimator(callbacks=[saver, _PreemptAfter(3)], **params).fit(x)
    (path,) = tmp_path.glob("*.pt")
    saved = torch.load(path, weights_only=True)
    assert saved["epoch"] <= 3 and len(saved["history"]["train"]) == saved["epoch"] + 1
    log = tmp_path / "after.jsonl"
    est = VAMPNetEstimator(callbacks=[saver, MetricsLog(log)], **params).fit(x)
    history = est.history_
    assert history["resumed_from_epoch"] == saved["epoch"]
    # the epochs up to the saved one come from the file; training went on from the next one to the end
    assert history["train"][: saved["epoch"] + 1] == saved["history"]["train"]
    assert len(history["train"]) == params["max_epochs"]
    epochs = [json.loads(line)["epoch"] for line in log.read_text().splitlines()]
    assert epochs == list(range(saved["epoch"] + 1, params["max_epochs"]))
    assert history["best_score"] >= saved["score"]
    # resume=False (the default) starts afresh even with the file there
    fresh = VAMPNetEstimator(callbacks=[SaveBestWeights(tmp_path)], **params).fit(x)
    assert "resumed_from_epoch" not in fresh.history_
    path.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="could not resume from .*move the file away"):
        VAMPNetEstimator(callbacks=[saver], **params).fit(x)


def test_spib_trains_on_the_same_seams(tmp_path):
    rng = np.random.default_rng(3)
    side = np.repeat(rng.integers(0, 2, size=30), 30)
    x = rng.normal(size=(900, 3)) * 0.3 + side[:, None]
    log = tmp_path / "spib.jsonl"
    est = SPIBEstimator(lagtime=5, n_states=4, max_epochs=6, refinements=2, validation_fraction=0, progress=False,
                        random_state=0, callbacks=[MetricsLog(log)]).fit(x)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) == len(est.history_["train"])
    assert [r["run"] for r in rows] == est.history_["round"]  # context.run is the training round


def test_the_training_context_steps_exactly_as_fit_does(rng):
    """Benchmarks time ``trainer.step`` on ``training_session``: that must be fit's own step."""
    tokens = TokenTrajectory(rng.normal(size=(40, 5, 4, 8)).astype(np.float32),
                             (np.arange(5)[None, :, None] * 3.8 + rng.normal(size=(40, 5, 3))).astype(np.float32),
                             residue_names=["ALA"] * 5, chain_ids=["A"] * 5, residue_ids=range(1, 6))
    merged = TokenMerger(window=2).fit_transform([tokens])
    kw = dict(lagtime=3, d_model=16, n_heads=2, n_layers=1, batch_size=64, max_epochs=1, patience=None,
              progress=False, random_state=4)
    fitted = VAMPNetEstimator(**kw).fit(merged)  # one epoch = one step: 37 pairs, batches of 64
    est = VAMPNetEstimator(**kw)
    trainer, ctx = est.training_session(merged)
    assert len(ctx.train) == 37 and ctx.optimizer.param_groups[0]["lr"] == est.lr
    before = {name: tensor.clone() for name, tensor in ctx.net.state_dict().items()}
    loss = trainer.step(ctx, ctx.train)
    assert np.isfinite(loss) and ctx.step == 1
    assert any(not torch.equal(before[name], t) for name, t in ctx.net.state_dict().items())  # it stepped
    for name, tensor in fitted.module_.state_dict().items():
        torch.testing.assert_close(ctx.net.state_dict()[name], tensor, rtol=1e-5, atol=1e-6)
