"""The learners' networks as plain parameters describe them, and how much memory they may train in.

Knows nothing of scikit-learn: an estimator turns its parameters into a
:class:`NetworkSpec`; the objectives build their networks from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._runtime import training_memory_budget
from ..nn._lobes import MLPLobe, TokenLobe
from ._series import FitData, TimeSeries

__all__ = ["MemoryPlan", "NetworkSpec", "plan_memory"]


@dataclass(frozen=True)
class NetworkSpec:
    """The encoder (lobe) family shared by the learners: an MLP on feature arrays, the token
    network (merger, transformer mixer, pooling, MLP head) on token trajectories."""

    hidden_layer_sizes: tuple
    d_model: int
    n_heads: int
    n_layers: int
    pooling: str
    mixer: str
    dropout: float

    def build(self, series: TimeSeries, n_outputs: int):
        """A freshly initialised lobe for ``series`` with ``n_outputs`` outputs (torch's global
        generator draws the weights: seed it around the call)."""
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


def standardise_inputs(lobe, series: TimeSeries, train: np.ndarray, device) -> None:
    """Feature arrays are standardised by the mean and spread of the training
    trajectories only (those in ``train``'s pairs), never the validation ones."""
    if series.kind != "array":
        return
    stacked = np.concatenate([series.items[i] for i in np.unique(train[:, 0])])
    lobe.set_standardization(torch.as_tensor(stacked.mean(0), device=device),
                             torch.as_tensor(stacked.std(0), device=device))


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


@dataclass(frozen=True)
class MemoryPlan:
    """What :func:`plan_memory` measured and decided."""

    activation_bytes_per_frame: int
    batch_activation_bytes: int
    budget_bytes: int
    checkpointing: bool
    merger_chunk_frames: int | None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def plan_memory(net, data: FitData, batch_size: int, budget) -> MemoryPlan | None:
    """Gradient checkpointing only when a batch's activations would exceed ``budget``
    (bytes, or "auto"; see :func:`g2v_sklearn._runtime.training_memory_budget`).

    The activations autograd keeps per frame are measured on a two-frame
    forward pass; a step holds up to ``2 * batch_size`` frames (on several
    ranks, its share). None for networks that are not token networks.
    """
    lobe = getattr(net, "lobe", net)
    if not isinstance(lobe, TokenLobe):
        return None
    per_frame = _saved_bytes_per_frame(lobe, data.series, data.device)
    per_rank = -(-batch_size // data.ranks.world_size)  # this rank's share
    need = per_frame * 2 * per_rank
    budget = training_memory_budget(budget, data.device)
    checkpointing = need > budget
    lobe.checkpoint_blocks = checkpointing
    chunk = None
    if lobe.merger is not None:
        chunk = max(1, int(budget // max(per_frame, 1))) if checkpointing else None
        lobe.merger.checkpoint_frames = chunk
    return MemoryPlan(int(per_frame), int(need), int(budget), bool(checkpointing), chunk)
