"""The trainer-objective contract, exercised by a third learner defined here: one slow linear
coordinate (a one-component "TICA"), trained by the Trainer alone, without scikit-learn."""

import numpy as np
import torch

from g2v_sklearn import Callback
from g2v_sklearn._validation import lagged_pairs
from g2v_sklearn.learners._forward import Inference
from g2v_sklearn.learners._series import FitData, TimeSeries
from g2v_sklearn.learners._trainer import EpochScores, Objective, TrainConfig, Trainer


def _autocorrelation(out_0, out_t):
    a, b = out_0[:, 0] - out_0[:, 0].mean(), out_t[:, 0] - out_t[:, 0].mean()
    return (a * b).mean() / (a.std(unbiased=False) * b.std(unbiased=False) + 1e-12)


class SlowestLine(Objective):
    """The toy learner: a linear map to one output whose lag autocorrelation is maximised."""

    score_floor = None  # no collapse floor: a correlation can be anything in [-1, 1]
    remedy = " or standardised features"

    def __init__(self, lag):
        self.inference = Inference("float32", batch_size=64, lag=lag)

    def build(self, data, rng):
        torch.manual_seed(int(rng.integers(0, 2**31)))
        return torch.nn.Linear(data.series.items[0].shape[1], 1).double().to(data.device)

    def batch_loss(self, context, batch):
        out_0, out_t = self.inference.training_pairs(context.forward, context.series, batch, context.device)
        return -_autocorrelation(out_0, out_t)

    def epoch_scores(self, context):
        out_0, out_t = self.inference.pair_outputs(context.net, context.series, context.train, context.device)
        return EpochScores(float(_autocorrelation(out_0, out_t)), None, False)


class Seen(Callback):
    def __init__(self):
        self.hooks = []

    def on_fit_begin(self, learner, context):
        self.hooks.append(("begin", learner))

    def on_epoch_end(self, learner, context):
        self.hooks.append(("epoch", context.epoch))


def test_a_toy_objective_trains_through_the_trainer_alone():
    rng = np.random.default_rng(0)
    slow = np.repeat(rng.integers(0, 2, size=40), 25).astype(float)  # a slow switch in feature 0 ...
    x = np.stack([slow + 0.3 * rng.normal(size=1000), rng.normal(size=1000)], axis=1)  # ... and noise
    pairs = lagged_pairs([len(x)], 5, "toy")
    data = FitData(TimeSeries("array", [x]), pairs, pairs, pairs[:0], None, 5, torch.device("cpu"))
    objective, seen = SlowestLine(lag=5), Seen()
    trainer = Trainer(TrainConfig(who="SlowestLine", lr=0.05, batch_size=128, max_epochs=8), objective,
                      [seen], owner="toy")
    net = objective.build(data, rng)
    context = trainer.start(net, data, rng)
    history = trainer.fit(context)
    assert len(history["train"]) == 8 and history["best_score"] == max(history["train"]) > 0.5
    weights = net.weight.detach().abs()[0]
    assert weights[0] > 3 * weights[1]  # it found the slow feature
    assert seen.hooks[0] == ("begin", "toy") and [h[1] for h in seen.hooks[1:]] == list(range(8))
    assert context.step == 8 * 8  # 995 pairs in steps of 128, every epoch
