"""Running a learner's network over frames and time-lagged pairs.

One place that reads frames, de-duplicates them (a frame that is the end of one
pair and the start of another is computed once), runs the network in the
precision asked for and puts the outputs back in order. Knows nothing of
scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .._runtime import autocast, full_precision
from ._distributed import Ranks
from ._series import TimeSeries, pair_frames

__all__ = ["Inference"]


@dataclass(frozen=True)
class Inference:
    """How a network is run: in which precision, in chunks of how many frames, at which lag.

    Parameters
    ----------
    precision : {"float32", "bfloat16"}
        bfloat16 autocast where the device computes it natively; outputs are
        float32 (or the network's float64) either way.
    batch_size : int
        Frames per forward pass when the network is evaluated (not trained).
    lag : int
        Frames between the two ends of a time-lagged pair.
    """

    precision: str
    batch_size: int
    lag: int

    def run(self, net, inputs: tuple[Tensor, ...], device) -> Tensor:
        """``net`` on ``inputs`` in this precision, outputs in full precision."""
        with autocast(self.precision, device):
            return full_precision(net(*inputs))

    def training_pairs(self, net, series: TimeSeries, pairs: np.ndarray, device) -> tuple[Tensor, Tensor]:
        """Network outputs at t and t + lag for ``pairs``, in pair order, with gradients.

        Every frame needed is read once (ascending, per trajectory) and all of
        them go through the network in one call, whatever trajectories the
        pairs come from: one forward pass of the whole batch.
        """
        inputs, where, offset = [], np.empty((2, len(pairs)), dtype=np.int64), 0
        for traj, plan in pair_frames(pairs, self.lag):
            inputs.append(series.frames(traj, plan.frames, device))
            where[:, plan.rows] = plan.ends + offset
            offset += len(plan.frames)
        batch = tuple(torch.cat(parts) for parts in zip(*inputs)) if len(inputs) > 1 else inputs[0]
        out = self.run(net, batch, device)[torch.as_tensor(where.reshape(-1), device=device)]
        return out[: len(pairs)], out[len(pairs):]

    def pair_outputs(self, net, series: TimeSeries, pairs: np.ndarray, device,
                     ranks: Ranks | None = None) -> tuple[Tensor, Tensor]:
        """Outputs at t and t + lag of ``pairs`` (eval, no grad), each frame computed once.

        With ``ranks`` of several processes, each computes its share of the pairs
        and all get every output.
        """
        if ranks is not None and ranks.distributed and len(pairs) >= ranks.world_size:
            out_0, out_t = self.pair_outputs(net, series, pairs[ranks.share(len(pairs))], device)
            both = ranks.gather_rows(torch.cat([out_0, out_t], dim=1).double(), len(pairs))
            return both[:, : out_0.shape[1]], both[:, out_0.shape[1]:]
        net.eval()
        outs_0, outs_t, order = [], [], []
        with torch.no_grad():
            for traj, plan in pair_frames(pairs, self.lag):
                chunks = [self.run(net, series.frames(traj, plan.frames[start:start + self.batch_size], device),
                                   device) for start in range(0, len(plan.frames), self.batch_size)]
                out = torch.cat(chunks)[torch.as_tensor(plan.ends.reshape(-1), device=device)]
                outs_0.append(out[: len(plan.rows)])
                outs_t.append(out[len(plan.rows):])
                order.append(plan.rows)
        inverse = torch.as_tensor(np.argsort(np.concatenate(order)), device=device)
        return torch.cat(outs_0)[inverse], torch.cat(outs_t)[inverse]

    def outputs(self, net, series: TimeSeries, device, ranks: Ranks | None = None) -> list[np.ndarray]:
        """Network outputs of every frame of every trajectory (eval mode, no grad), float64.

        With ``ranks`` of several processes, each computes its share of the
        frames and all get every output (the same arrays on every rank).
        """
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
                chunks = [self.run(net, series.frames(traj, np.arange(start, min(hi, start + self.batch_size)),
                                                      device), device).cpu()
                          for start in range(lo, hi, self.batch_size)]
                results.append(torch.cat(chunks).numpy().astype(np.float64) if chunks else np.zeros((0, 0)))
        if not distributed:
            return results
        local = torch.from_numpy(np.concatenate([r for r in results if r.size]))
        return np.split(ranks.gather_rows(local, total).numpy(), starts[1:-1])
