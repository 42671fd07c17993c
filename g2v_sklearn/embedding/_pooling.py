"""Residue pooling: per-atom features and positions -> residue tokens and residue positions.

A pure function of tensors and a :class:`~g2v_sklearn.embedding._topology.ResidueLayout`;
the embedder calls it on every batch. How atoms are combined
(``GeomEmbedder(pooling=...)``) and where a residue sits
(``GeomEmbedder(residue_position=...)``) are registries by name.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ._topology import ResidueLayout

__all__ = ["RESIDUE_POOLINGS", "RESIDUE_POSITIONS", "pool_residues"]


def _sum(tokens: Tensor, counts: Tensor) -> Tensor:
    return tokens


def _mean(tokens: Tensor, counts: Tensor) -> Tensor:
    return tokens / counts.view(1, -1, 1, 1)


RESIDUE_POOLINGS = {"sum": _sum, "mean": _mean}
"""Registry of atom -> residue poolings by name: (summed tokens, atoms per residue) -> tokens."""


def _centroid(positions: Tensor, centroid: Tensor, layout: ResidueLayout) -> Tensor:
    return centroid


def _alpha_carbon(positions: Tensor, centroid: Tensor, layout: ResidueLayout) -> Tensor:
    has_ca = torch.as_tensor(layout.ca_local >= 0, device=positions.device)
    ca = positions[:, torch.as_tensor(np.maximum(layout.ca_local, 0), device=positions.device)]
    return torch.where(has_ca.view(1, -1, 1), ca, centroid)  # the centroid where there is no CA


RESIDUE_POSITIONS = {"centroid": _centroid, "ca": _alpha_carbon}
"""Registry of residue positions by name: (atom positions, centroids, layout) -> positions."""


def pool_residues(atoms: Tensor, positions: Tensor, layout: ResidueLayout, *, pooling: str = "sum",
                  residue_position: str = "centroid") -> tuple[Tensor, Tensor]:
    """Pool per-atom features into residue tokens.

    Parameters
    ----------
    atoms : Tensor of shape (n_frames, n_atoms, 4, H)
        Per-atom scalars (row 0) and vectors (rows 1-3) of the selected atoms.
    positions : Tensor of shape (n_frames, n_atoms, 3)
        Their positions.
    layout : ResidueLayout
        Which residue each selected atom belongs to.
    pooling : {"sum", "mean"}, default="sum"
        How a residue's atoms combine (a key of :data:`RESIDUE_POOLINGS`).
    residue_position : {"centroid", "ca"}, default="centroid"
        Where a residue sits (a key of :data:`RESIDUE_POSITIONS`): the centroid of
        its atoms, or its alpha carbon (the centroid for residues without one).

    Returns
    -------
    tokens : Tensor of shape (n_frames, n_residues, 4, H)
    residue_positions : Tensor of shape (n_frames, n_residues, 3)
    """
    n_frames, _, _, hidden = atoms.shape
    index = torch.as_tensor(layout.atom_to_residue, device=atoms.device)
    counts = torch.as_tensor(layout.counts, device=atoms.device, dtype=torch.float32)
    n_res = layout.n_residues
    tokens = atoms.new_zeros(n_frames, n_res, 4, hidden).index_add_(1, index, atoms)
    centroid = positions.new_zeros(n_frames, n_res, 3).index_add_(1, index, positions)
    centroid /= counts.view(1, -1, 1)
    tokens = RESIDUE_POOLINGS[pooling](tokens, counts)
    return tokens, RESIDUE_POSITIONS[residue_position](positions, centroid, layout)
