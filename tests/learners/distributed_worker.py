"""One rank of tests/learners/test_distributed.py (run as a script, one process per rank).

Usage: ``python distributed_worker.py DATA OUT`` with ``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT`` in the environment; with ``WORLD_SIZE=1``
and no launcher variables it is the single-process reference. ``DATA`` is an
``.npz`` of the test's features and weights (and a pickle of token
trajectories next to it); every result goes to ``OUT/rank{RANK}.npz`` and
``OUT/rank{RANK}.json`` as soon as it exists, so a rank that dies at the end
(the last check kills rank 1 mid-fit) leaves the earlier ones behind.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import sys
import threading
import time

import numpy as np
import torch

import g2v_sklearn
from g2v_sklearn import Callback, DistributedTrainingError, SPIBEstimator, VAMPNetEstimator
from g2v_sklearn.learners._series import FitData


def main():
    torch.set_num_threads(1)
    data_path, out = sys.argv[1], sys.argv[2]
    rank, world = g2v_sklearn.init_distributed(timeout=20)
    data = np.load(data_path)
    features = [data["x0"], data["x1"]]
    weights = [data["w0"], data["w1"]]
    arrays: dict = {}
    report: dict = {"rank": rank, "world": world}

    def save():
        np.savez(os.path.join(out, f"rank{rank}.npz"), **arrays)
        with open(os.path.join(out, f"rank{rank}.json"), "w") as handle:
            json.dump(report, handle)

    class FirstStep(Callback):
        """Records the loss and the (averaged, unclipped) gradients of the first optimizer step, then stops."""

        def for_run(self):
            run = copy.copy(self)
            run.first_ = None
            return run

        def on_batch_end(self, learner, context):
            if context.step == 1:
                self.first_ = (context.last_loss, [p.grad.detach().double().clone()
                                                   for p in context.net.parameters() if p.grad is not None])
                context.stop = True

        def on_fit_end(self, learner, context):
            if self.first_ is not None:
                loss, grads = self.first_
                arrays[f"{learner.name}_loss"] = np.array(loss)
                arrays[f"{learner.name}_grads"] = torch.cat([g.reshape(-1) for g in grads]).numpy()

    # the weight sum of this rank's share of every batch it trains on
    shares: list = []
    pair_weights = FitData.pair_weights

    def recording(self, pairs, device=None):
        out_weights = pair_weights(self, pairs, device)
        if out_weights is not None and torch.is_grad_enabled():
            shares.append(float(out_weights.sum()))
        return out_weights

    FitData.pair_weights = recording

    # 1. the first step's loss and gradients, float64 networks on feature arrays, sample weights
    common = dict(lagtime=5, hidden_layer_sizes=(16, 16), batch_size=256, max_epochs=1, max_grad_norm=None,
                  patience=None, lr_schedule="constant", warmup=0.0, progress=False, random_state=0)
    for name, est in [("vamp2", VAMPNetEstimator(score_method="VAMP2", **common)),
                      ("vampe", VAMPNetEstimator(score_method="VAMPE", **common)),
                      ("spib", SPIBEstimator(n_states=4, refinements=0, **common))]:
        est.name = name
        est.set_params(callbacks=[FirstStep()])
        shares.clear()
        est.fit(features, sample_weight=weights)
        report[f"{name}_share_weight"] = shares[0]
    save()
    FitData.pair_weights = pair_weights

    # 2. short fits: transform on every rank, with validation and early stopping
    fits = {
        "vampnet_arrays": (VAMPNetEstimator(lagtime=5, hidden_layer_sizes=(16, 16), batch_size=200, max_epochs=4,
                                            validation_fraction=0.2, patience=2, progress=False, random_state=0),
                           features),
        "spib_arrays": (SPIBEstimator(lagtime=5, n_states=4, hidden_layer_sizes=(16,), batch_size=200, max_epochs=4,
                                      refinements=2, progress=False, random_state=0), features),
    }
    with open(data_path.replace(".npz", "-tokens.pkl"), "rb") as handle:
        tokens = pickle.load(handle)  # memory-mapped stores, the same files on every rank
    fits["vampnet_tokens"] = (VAMPNetEstimator(lagtime=5, d_model=16, n_heads=2, n_layers=1, batch_size=128,
                                               max_epochs=2, progress=False, random_state=0), tokens)
    for name, (est, X) in fits.items():
        est.fit(X)
        arrays[f"{name}_transform"] = np.concatenate(est.transform(X))
        report[f"{name}_epochs"] = len(est.history_["train"])
        if isinstance(est, SPIBEstimator):
            arrays[f"{name}_labels"] = np.concatenate(est.labels_)
    save()

    # 3. a fit pre-empted after epoch 1 resumes from rank 0's best-weights file (only rank 0 writes it)
    class Preempted(Exception):
        pass

    class PreemptAfter(Callback):
        def on_epoch_end(self, learner, context):
            if context.epoch == 1:
                raise Preempted

    saver = g2v_sklearn.SaveBestWeights(os.path.join(out, "best"), resume=True)
    resumable = dict(lagtime=5, hidden_layer_sizes=(16,), batch_size=200, max_epochs=4, patience=None,
                     progress=False, random_state=0)
    try:
        VAMPNetEstimator(callbacks=[saver, PreemptAfter()], **resumable).fit(features)
    except Preempted:
        pass
    est = VAMPNetEstimator(callbacks=[saver], **resumable).fit(features)
    report["resumed_from_epoch"] = est.history_.get("resumed_from_epoch")
    report["resumed_train"] = est.history_["train"]
    report["best_files"] = sorted(os.listdir(os.path.join(out, "best"))) if rank == 0 else None
    arrays["resumed_transform"] = np.concatenate(est.transform(features))
    save()

    if world > 1:
        # 4. what is refused, on every rank alike
        from sklearn.model_selection import GridSearchCV, KFold

        small = VAMPNetEstimator(lagtime=5, hidden_layer_sizes=(8,), max_epochs=1, progress=False, random_state=0)
        refusals = {}
        try:
            GridSearchCV(small, {"lr": [1e-3, 1e-2]}, cv=KFold(2), error_score="raise").fit(features)
        except RuntimeError as exc:
            refusals["grid_search"] = str(exc)
        caught = {}

        def fit_on_a_thread():
            try:
                small.fit(features)
            except RuntimeError as exc:
                caught["error"] = str(exc)

        thread = threading.Thread(target=fit_on_a_thread)
        thread.start()
        thread.join()
        refusals["thread"] = caught.get("error")
        try:  # rank 1 holds other data
            small.fit(features if rank == 0 else [features[0][::-1].copy(), features[1]])
        except DistributedTrainingError as exc:
            refusals["other_data"] = str(exc)
        report["refusals"] = refusals
        save()

        # 5. rank 1 dies in the middle of a fit; rank 0 must end with an error, not hang
        class DieAt(Callback):
            def on_batch_end(self, learner, context):
                if context.ranks.rank == 1 and context.step == 3:
                    os._exit(17)

        est = VAMPNetEstimator(lagtime=5, hidden_layer_sizes=(16,), batch_size=128, max_epochs=3, progress=False,
                               random_state=0, callbacks=[DieAt()])
        clock = time.perf_counter()
        try:
            est.fit(features)
            report["dead_rank"] = {"error": None}
        except DistributedTrainingError as exc:
            report["dead_rank"] = {"error": str(exc), "seconds": time.perf_counter() - clock}
        save()


if __name__ == "__main__":  # a script; pytest's doctest collection imports it
    main()
