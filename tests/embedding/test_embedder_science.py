"""GeomEmbedder on real molecules: shapes, the torch-geometric oracle, equivariance."""

from __future__ import annotations

import pickle

import mdtraj as md
import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from sklearn.base import clone
from torch_geometric.nn.models import ViSNet

from g2v_sklearn import GeomEmbedder

# Embeddings compared bit for bit across runs: the same torch threads in every run.
pytestmark = pytest.mark.usefixtures("fixed_threads")


def norm_relative_error(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def adk_embedder(visnet_checkpoint, adk_traj):
    return GeomEmbedder(visnet_checkpoint, batch_size=2, progress=False).fit([adk_traj])


@pytest.fixture(scope="module")
def adk_tokens(adk_embedder, adk_traj):
    return adk_embedder.transform([adk_traj])[0]


def test_adk_token_shapes(adk_tokens, adk_traj, adk_embedder):
    n = adk_traj.n_frames
    assert adk_tokens.features.shape == (n, 214, 4, 64)
    assert adk_tokens.positions.shape == (n, 214, 3)
    assert adk_tokens.features.dtype == np.float32
    assert np.isfinite(adk_tokens.features).all()
    assert list(adk_tokens.residue_names[:3]) == ["MET", "ARG", "ILE"]
    assert adk_embedder.atom_indices_.size == 1656  # heavy atoms of ADK
    prov = adk_tokens.provenance
    assert len(prov["checkpoint_sha256"]) == 64
    assert prov["stride"] == 1
    # centroids in Angstrom: residue positions lie inside the protein's box, in Angstrom.
    heavy = adk_traj.xyz[:, adk_embedder.atom_indices_] * 10
    assert np.all(adk_tokens.positions.min(axis=1) >= heavy.min(axis=1) - 1e-3)
    assert np.all(adk_tokens.positions.max(axis=1) <= heavy.max(axis=1) + 1e-3)


class _BruteForceDistance(torch.nn.Module):
    """The oracle's edges: all pairs within the cutoff, self-loops, source -> target."""

    def __init__(self, cutoff):
        super().__init__()
        self.cutoff = cutoff

    def forward(self, pos, batch):
        p = pos.detach().double().numpy()
        b = batch.numpy()
        d = np.linalg.norm(p[:, None, :] - p[None, :, :], axis=-1)
        target, source = np.nonzero((d <= self.cutoff) & (b[:, None] == b[None, :]))
        edge_index = torch.as_tensor(np.stack([source, target]))
        edge_vec = pos[edge_index[0]] - pos[edge_index[1]]
        mask = edge_index[0] != edge_index[1]
        edge_weight = torch.zeros(edge_vec.size(0))
        edge_weight[mask] = torch.norm(edge_vec[mask], dim=-1)
        return edge_index, edge_weight, edge_vec


def reference_tokens(checkpoint, traj, heavy, residue_of):
    """torch-geometric's ViSNet with geom2vec's weights, brute-force edges, summed per residue."""
    model = ViSNet(hidden_channels=64, num_layers=6, num_rbf=64, cutoff=7.5, lmax=1,
                   vecnorm_type="max_min", trainable_vecnorm=True)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    rep = {k.removeprefix("representation_model."): v for k, v in state.items()
           if k.startswith("representation_model.")}
    model.representation_model.load_state_dict(rep, strict=True)
    model.representation_model.distance = _BruteForceDistance(7.5)
    model.eval()
    z = torch.tensor([traj.topology.atom(int(i)).element.number for i in heavy])
    n_res = residue_of.max() + 1
    out = []
    with torch.no_grad():
        for frame in traj.xyz:
            pos = torch.from_numpy(frame[heavy] * 10.0)
            x, vec = model.representation_model(z, pos, torch.zeros(len(z), dtype=torch.long))
            atoms = torch.cat([x.unsqueeze(1), vec], dim=1).double().numpy()
            tokens = np.zeros((n_res, 4, 64))
            np.add.at(tokens, residue_of, atoms)
            out.append(tokens)
    return np.stack(out)


def test_oracle_against_torch_geometric_visnet(visnet_checkpoint, adk_traj, adk_tokens):
    traj = adk_traj[:2]
    heavy = traj.topology.select("not element H")
    residue_of = np.unique([traj.topology.atom(int(i)).residue.index for i in heavy],
                           return_inverse=True)[1]
    expected = reference_tokens(visnet_checkpoint, traj, heavy, residue_of)
    ours = adk_tokens.features[:2]
    assert norm_relative_error(ours[:, :, 0], expected[:, :, 0]) <= 1e-5
    assert norm_relative_error(ours[:, :, 1:], expected[:, :, 1:]) <= 1e-5
    assert norm_relative_error(ours, expected) <= 1e-5


def test_rotation_and_translation_equivariance(adk_embedder, adk_traj, adk_tokens):
    rotation = Rotation.from_euler("zyx", [40, -25, 70], degrees=True).as_matrix()
    moved = adk_traj[:2]
    moved.xyz = (moved.xyz @ rotation.T.astype(np.float32)) + np.float32([1.5, -2.0, 0.7])
    turned = adk_embedder.transform([moved])[0]
    base = adk_tokens.features[:2]
    # scalars stay
    assert norm_relative_error(turned.features[:, :, 0], base[:, :, 0]) < 1e-4
    # vectors turn: rows 1-3 are x, y, z
    expected = np.einsum("ij,frjh->frih", rotation, base[:, :, 1:].astype(np.float64))
    assert norm_relative_error(turned.features[:, :, 1:], expected) < 1e-4
    # positions turn and move
    expected_pos = adk_tokens.positions[:2] @ rotation.T + np.array([15.0, -20.0, 7.0])
    assert np.allclose(turned.positions, expected_pos, atol=1e-3)


def test_clone_and_pickle_round_trip(adk_embedder, adk_traj, adk_tokens):
    fresh = clone(adk_embedder)
    assert fresh.get_params() == adk_embedder.get_params()
    assert not hasattr(fresh, "module_")
    restored = pickle.loads(pickle.dumps(adk_embedder))
    assert all(p.device.type == "cpu" for p in restored.module_.parameters())
    again = restored.transform([adk_traj[:2]])[0]  # the same batch of two frames
    np.testing.assert_array_equal(again.features, adk_tokens.features[:2])
    assert restored.weights_sha256_ == adk_embedder.weights_sha256_


def test_ca_positions_and_mean_pooling(visnet_checkpoint, ala2_trajs):
    traj = ala2_trajs[0][:3]
    emb = GeomEmbedder(visnet_checkpoint, residue_position="ca", progress=False)
    tok = emb.fit_transform([traj])[0]
    ca = traj.topology.select("name CA")[0]
    np.testing.assert_allclose(tok.positions[:, 1], traj.xyz[:, ca] * 10, atol=1e-4)
    # ACE has no C-alpha: centroid of its heavy atoms
    ace = [a.index for a in traj.topology.residue(0).atoms if a.element.symbol != "H"]
    np.testing.assert_allclose(tok.positions[:, 0], traj.xyz[:, ace].mean(1) * 10, atol=1e-4)
    mean = GeomEmbedder(visnet_checkpoint, pooling="mean", progress=False).fit_transform([traj])[0]
    counts = np.bincount(emb.layout_.atom_to_residue)
    np.testing.assert_allclose(mean.features * counts[None, :, None, None], tok.features,
                               rtol=1e-5, atol=1e-5)


def test_alanine_dipeptide_session_tokens(ala2_tokens, ala2_trajs):
    assert len(ala2_tokens) == 4
    assert sum(len(t) for t in ala2_tokens) == sum(t.n_frames for t in ala2_trajs) == 20_000
    for tok in ala2_tokens:
        assert tok.features.shape[1:] == (3, 4, 64)
        assert np.isfinite(tok.features).all()
        assert tok.timestep == pytest.approx(20.0)
        assert list(tok.residue_names) == ["ACE", "ALA", "NME"]


def test_bfloat16_close_to_float32(visnet_checkpoint, ala2_trajs):
    import torch

    from g2v_sklearn._utils import supports_bfloat16

    traj = ala2_trajs[0][:64]
    f32 = GeomEmbedder(visnet_checkpoint, progress=False).fit_transform([traj])[0]
    native = supports_bfloat16(torch.device("cpu"))
    if native:
        bf16 = GeomEmbedder(visnet_checkpoint, dtype="bfloat16", progress=False).fit_transform([traj])[0]
    else:  # this CPU computes bfloat16 only by emulation: the embedder says so and uses float32
        with pytest.warns(RuntimeWarning, match="no native bfloat16 arithmetic.*embedding in float32"):
            bf16 = GeomEmbedder(visnet_checkpoint, dtype="bfloat16", progress=False).fit_transform([traj])[0]
    assert bf16.features.dtype == np.float32
    error = norm_relative_error(bf16.features, f32.features)
    if native:  # the guide promises about 1e-2 (benchmarks: 1.0-1.2e-2 on adenylate kinase)
        assert 0 < error < 2e-2
    else:
        assert error == 0.0


def test_file_paths_stream_in_chunks(visnet_checkpoint, ala2_files, ala2_trajs):
    pdb, paths = ala2_files
    emb = GeomEmbedder(visnet_checkpoint, topology=pdb, stride=2000, chunk_size=7,
                       progress=False)
    tok = emb.fit_transform([paths[1]])[0]
    assert len(tok) == 50
    loaded = md.load(paths[1], top=pdb, stride=2000)
    expected = GeomEmbedder(visnet_checkpoint, progress=False).fit_transform([loaded])[0]
    np.testing.assert_allclose(tok.features, expected.features, rtol=1e-5, atol=1e-5)
    assert tok.timestep == pytest.approx(2000.0)
    assert tok.provenance["source"] == paths[1]
