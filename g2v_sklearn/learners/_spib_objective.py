"""SPIB's objective: predict the state ``lagtime`` frames ahead through a Gaussian bottleneck.

Knows nothing of scikit-learn. The labels and the prior's representative
frames change between SPIBEstimator's training rounds; within a round they
are fixed, and so is the noise of the end-of-epoch scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from .._utils import local_torch_seed
from ..nn._spib import SPIBModule, spib_pair_losses
from ._forward import Inference
from ._network import NetworkSpec, standardise_inputs
from ._series import FitData, TimeSeries
from ._trainer import EpochScores, FitContext, Objective

__all__ = ["SpibObjective"]


def _gather_frames(series: TimeSeries, locations: np.ndarray, device) -> tuple[Tensor, ...]:
    """Network inputs of frames at (trajectory, frame) ``locations``, in that order."""
    parts, order = [], []
    for traj in np.unique(locations[:, 0]):
        rows = np.flatnonzero(locations[:, 0] == traj)
        parts.append(series.frames(int(traj), locations[rows, 1], device))
        order.append(rows)
    inverse = torch.as_tensor(np.argsort(np.concatenate(order)), device=device)
    return tuple(torch.cat([p[j] for p in parts])[inverse] for j in range(len(parts[0])))


@dataclass(eq=False)
class SpibObjective(Objective):
    """The SPIB loss (cross-entropy of the future state + beta * KL to the VampPrior) on an
    encoder of ``2 * z_dim`` outputs, for the labels of the current round.

    Attributes
    ----------
    labels : Tensor
        Every frame's label, trajectories concatenated (int64, on the device).
    n_states : int
        States the labels number (what :meth:`build` sizes the decoder for).
    offsets : ndarray
        Start of each trajectory in ``labels``.
    representatives : ndarray of shape (n_states, 2)
        (trajectory, frame) of each state's prior representative.
    generator : torch.Generator
        The reparameterisation noise of training.
    validation_seed : int
        The same noise for every end-of-epoch score.
    """

    spec: NetworkSpec
    inference: Inference
    z_dim: int
    beta: float
    batch_size: int
    offsets: np.ndarray
    generator: torch.Generator
    validation_seed: int
    labels: Tensor | None = None
    n_states: int = 0
    representatives: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))

    #: Training pairs the end-of-epoch training loss is computed on (evenly spaced, fixed per fit).
    monitor_pairs = 8192

    def set_labels(self, labels: list[np.ndarray], device) -> None:
        """The labels (one array per trajectory) training predicts from now on."""
        self.labels = torch.as_tensor(np.concatenate(labels), device=device)
        self.n_states = int(max(l.max() for l in labels)) + 1

    def build(self, data: FitData, rng: np.random.Generator) -> SPIBModule:
        """A fresh encoder, decoder and prior for ``n_states`` states."""
        with local_torch_seed(rng):
            lobe = self.spec.build(data.series, 2 * self.z_dim)
            net = SPIBModule(lobe, self.z_dim, self.n_states).to(data.device)
        standardise_inputs(lobe, data.series, data.train, data.device)
        return net

    def pair_losses(self, context: FitContext, forward, batch: np.ndarray,
                    generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Per-pair losses and weights of a batch of (trajectory, t) pairs.

        On several ranks, ``batch`` is the global batch and the losses are those
        of this rank's share; the noise is drawn for the whole batch, so each
        pair gets the noise one process holding the whole batch would give it.
        """
        net, device, d = context.net, context.device, self.z_dim
        noise = torch.randn((len(batch), d), generator=generator, device=device, dtype=torch.float64)
        if context.ranks.distributed:
            rows = context.ranks.share(len(batch))
            batch, noise = batch[rows], noise[torch.as_tensor(rows, device=device)]
        # the batch and the states' representatives in one pass through the network
        frames = _gather_frames(context.series, np.concatenate([batch, self.representatives]), device)
        both = self.inference.run(forward, frames, device)
        encoded = both[: len(batch)].double()
        reps = both[len(batch):].detach().double()  # the prior is a target: no gradient through it
        mean, logvar = encoded[:, :d], encoded[:, d:]
        z = mean + torch.exp(0.5 * logvar) * noise
        future = torch.as_tensor(self.offsets[batch[:, 0]] + batch[:, 1] + self.inference.lag, device=device)
        losses, _, _ = spib_pair_losses(net.decode(z).double(), self.labels[future], z, mean, logvar,
                                        reps[:, :d], reps[:, d:], net.prior_log_weights().double(), self.beta)
        w = context.data.pair_weights(batch)
        return losses, torch.ones_like(losses) if w is None else w.double()

    def batch_loss(self, context: FitContext, batch: np.ndarray) -> Tensor:
        losses, w = self.pair_losses(context, context.forward, batch, self.generator)
        # the weighted mean over the whole batch: numerator and total weight summed over ranks
        total, norm = context.ranks.sum_with_grad(torch.stack([(w * losses).sum(), w.sum()]))
        return total / norm.clamp_min(1e-300)

    def epoch_scores(self, context: FitContext) -> EpochScores:
        """Minus the loss of the end-of-epoch weights on (up to 8,192 of) the training pairs, and on
        the validation pairs; the noise is the same every epoch."""
        train = context.train
        if len(train) > self.monitor_pairs:
            train = train[np.linspace(0, len(train) - 1, self.monitor_pairs).astype(np.int64)]
        score = self.evaluate(context, train)
        return EpochScores(score, self.evaluate(context, context.val) if len(context.val) else None, False)

    def evaluate(self, context: FitContext, pairs: np.ndarray) -> float:
        """Minus the mean loss on ``pairs``, with the same noise every time."""
        context.net.eval()
        generator = torch.Generator(device=context.device)
        generator.manual_seed(self.validation_seed)
        total, norm = 0.0, 0.0
        with torch.no_grad():
            for start in range(0, len(pairs), self.batch_size):
                losses, w = self.pair_losses(context, context.net, pairs[start:start + self.batch_size], generator)
                total += float((w * losses).sum())
                norm += float(w.sum())
        total, norm = context.ranks.sum(torch.tensor([total, norm], dtype=torch.float64)).tolist()
        return -total / max(norm, 1e-300)
