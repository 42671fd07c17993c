"""Residue pooling as a pure function (g2v_sklearn.embedding._pooling), against a per-residue loop."""

import numpy as np
import pytest
import torch

from g2v_sklearn.datasets import load_alanine_dipeptide
from g2v_sklearn.embedding._pooling import pool_residues
from g2v_sklearn.embedding._topology import residue_layout


@pytest.fixture(scope="module")
def alanine():
    traj = load_alanine_dipeptide(stride=2000).trajectories[0]  # 10 heavy atoms, ACE-ALA-NME
    return traj, residue_layout(traj.topology, np.arange(traj.n_atoms))


@pytest.mark.parametrize("pooling", ["sum", "mean"])
@pytest.mark.parametrize("residue_position", ["centroid", "ca"])
def test_pooling_matches_a_loop_over_residues(alanine, pooling, residue_position):
    traj, layout = alanine
    rng = np.random.default_rng(0)
    atoms = rng.normal(size=(traj.n_frames, traj.n_atoms, 4, 6)).astype(np.float32)
    xyz = traj.xyz * 10.0
    tokens, positions = pool_residues(torch.from_numpy(atoms), torch.from_numpy(xyz), layout,
                                      pooling=pooling, residue_position=residue_position)
    residues = list(traj.topology.residues)
    assert tokens.shape == (traj.n_frames, len(residues), 4, 6) and positions.shape == (traj.n_frames, 3, 3)
    for r, residue in enumerate(residues):
        members = [atom.index for atom in residue.atoms]
        pooled = atoms[:, members].sum(axis=1)
        if pooling == "mean":
            pooled = pooled / len(members)
        np.testing.assert_allclose(tokens[:, r].numpy(), pooled, rtol=1e-5, atol=1e-5)
        ca = [atom.index for atom in residue.atoms if atom.name == "CA"]
        where = xyz[:, ca[0]] if residue_position == "ca" and ca else xyz[:, members].mean(axis=1)
        np.testing.assert_allclose(positions[:, r].numpy(), where, rtol=1e-5, atol=1e-4)
    # only ALA has an alpha carbon: with "ca" the caps still sit at their centroids
    assert [bool(np.any([a.name == "CA" for a in res.atoms])) for res in residues] == [False, True, False]
