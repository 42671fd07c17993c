"""geom2vec's ET and TensorNet backbones on adenylate kinase: geom2vec's own code as the oracle,
equivariance, strict loading, denoising, and the embed -> merge -> VAMPNet path of the example.

The oracle is the authors' implementation in ../shared/anchors (geom2vec v1.0, MIT; its
torch-scatter and torch-cluster imports served by the pure-torch shims there), built as
geom2vec's factory builds it, loaded strictly with the same file, and fed a brute-force edge
list in float64 so that both sides see the same graph: geom2vec caps neighbours at 32 in
torch-cluster's search order, GeomEmbedder keeps every neighbour within the cutoff.
"""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
import torch
from conftest import CHECKPOINTS, SHARED, need
from scipy.spatial.transform import Rotation
from sklearn.pipeline import Pipeline

from g2v_sklearn import GeomEmbedder, TokenMerger, VAMPNetEstimator

# Embeddings compared bit for bit across runs: the same torch threads in every run.
pytestmark = pytest.mark.usefixtures("fixed_threads")

FILES = {"et": "et_l6_h64_rbf64_r75.pth", "tensornet": "tensornet_l3_h64_rbf32_r5.pth"}
# geom2vec's factory arguments for each file: layers, rbf, cutoff
SHAPES = {"et": (6, 64, 7.5), "tensornet": (3, 32, 5.0)}


def norm_relative_error(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


@pytest.fixture(scope="module", params=sorted(FILES))
def architecture(request):
    return request.param


@pytest.fixture(scope="module")
def checkpoint(architecture):
    return str(need(CHECKPOINTS / FILES[architecture]))


@pytest.fixture(scope="module")
def paths(adk_paths_short):
    """The two adenylate-kinase transition paths, 5 frames each (every neighbour within the
    cutoff: ET's frames are the suite's costliest embedding)."""
    return [p[:5] for p in adk_paths_short]


@pytest.fixture(scope="module")
def embedder(checkpoint, paths):
    return GeomEmbedder(checkpoint, progress=False).fit(paths)


@pytest.fixture(scope="module")
def tokens(embedder, paths):
    return embedder.transform(paths)


class _BruteForceDistance(torch.nn.Module):
    """geom2vec's ``Distance`` (self-loops, source -> target) over all pairs, in float64;
    with ``cap``, each target keeps its ``cap`` nearest sources."""

    def __init__(self, cutoff, cap=None):
        super().__init__()
        self.cutoff, self.cap = cutoff, cap

    def forward(self, pos, batch):
        p = pos.detach().double()
        d = (p[:, None] - p[None, :]).square().sum(-1).sqrt()
        within = (d <= self.cutoff) & (batch[:, None] == batch[None, :])
        if self.cap is not None:
            nearest = torch.where(within, d, torch.inf).topk(self.cap, dim=1, largest=False).indices
            within &= torch.zeros_like(within).scatter_(1, nearest, True)
        target, source = torch.nonzero(within, as_tuple=True)
        edge_index = torch.stack([source, target])
        edge_vec = pos[source] - pos[target]
        edge_weight = torch.zeros(len(source), dtype=pos.dtype)
        loop = source == target
        edge_weight[~loop] = torch.linalg.vector_norm(edge_vec[~loop], dim=-1)
        return edge_index, edge_weight, edge_vec


def geom2vec_backbone(architecture, checkpoint, cap=None):
    anchors = need(SHARED / "anchors" / "geom2vec").parent
    sys.path[:0] = [str(anchors / "shims"), str(anchors)]
    try:
        # first, as ../shared/anchors/README.md says: importing geom2vec imports its Lobe,
        # which must find torch-geometric's radius_graph already pointed at the shim's
        import sitecustomize  # noqa: F401
        from geom2vec.models.representation.torchmd.main_model import create_model, get_args
    finally:
        del sys.path[:2]
    layers, rbf, cutoff = SHAPES[architecture]
    model = create_model(get_args(64, layers, rbf, num_heads=8, cutoff=cutoff, rep_model=architecture))
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True), strict=True)
    model.representation_model.distance = _BruteForceDistance(cutoff, cap)
    return model.representation_model.eval()


def geom2vec_tokens(reference, embedder, traj):
    heavy = embedder.atom_indices_
    residue_of = np.unique([traj.topology.atom(int(i)).residue.index for i in heavy],
                           return_inverse=True)[1]
    z = torch.as_tensor(embedder.atomic_numbers_)
    expected = np.zeros((traj.n_frames, embedder.n_residues_, 4, 64))
    with torch.no_grad():
        for f, frame in enumerate(traj.xyz):
            x, vec, *_ = reference(z, torch.from_numpy(frame[heavy] * 10.0),
                                   torch.zeros(len(z), dtype=torch.long))
            np.add.at(expected[f], residue_of, torch.cat([x.unsqueeze(1), vec], 1).double().numpy())
    return expected


def test_tokens_equal_geom2vecs_own_backbone(architecture, checkpoint, embedder, tokens, paths):
    expected = geom2vec_tokens(geom2vec_backbone(architecture, checkpoint), embedder,
                               paths[0][:2])
    ours = tokens[0].features[:2]
    assert norm_relative_error(ours[:, :, 0], expected[:, :, 0]) <= 1e-5
    assert norm_relative_error(ours[:, :, 1:], expected[:, :, 1:]) <= 1e-5
    assert embedder.config_["architecture"] == architecture
    assert tokens[0].provenance["backbone"]["architecture"] == architecture


def test_a_neighbour_cap_keeps_geom2vecs_direction_of_messages(architecture, checkpoint,
                                                               paths):
    """With a cap the radius graph is not symmetric: ET sums messages at each edge's target,
    TensorNet at its source, so an atom hears from the atoms that keep it among their nearest."""
    frame = paths[0][:1]
    capped = GeomEmbedder(checkpoint, max_num_neighbors=12, progress=False).fit([frame])
    expected = geom2vec_tokens(geom2vec_backbone(architecture, checkpoint, cap=12), capped, frame)
    assert norm_relative_error(capped.transform([frame])[0].features, expected) <= 1e-5


def test_rotation_and_translation(embedder, tokens, paths):
    rotation = Rotation.from_euler("zyx", [40, -25, 70], degrees=True).as_matrix()
    moved = paths[1][:2]
    moved.xyz = moved.xyz @ rotation.T.astype(np.float32) + np.float32([1.5, -2.0, 0.7])
    turned = embedder.transform([moved])[0].features
    base = tokens[1].features[:2]
    assert norm_relative_error(turned[:, :, 0], base[:, :, 0]) < 1e-4
    expected = np.einsum("ij,frjh->frih", rotation, base[:, :, 1:].astype(np.float64))
    assert norm_relative_error(turned[:, :, 1:], expected) < 1e-4


def test_a_renamed_file_loads_the_same_and_a_misnamed_one_is_refused(architecture, checkpoint, embedder,
                                                                     tokens, paths, tmp_path):
    renamed = tmp_path / "backbone.pth"
    shutil.copy(checkpoint, renamed)
    again = GeomEmbedder(str(renamed), progress=False).fit(paths)
    assert again.config_ == embedder.config_ and again.weights_sha256_ == embedder.weights_sha256_
    np.testing.assert_array_equal(again.transform([paths[0][:1]])[0].features,
                                  tokens[0].features[:1])
    other = "tensornet" if architecture == "et" else "et"
    misnamed = tmp_path / FILES[other]
    shutil.copy(checkpoint, misnamed)
    long_name = {"et": "equivariant transformer", "tensornet": "TensorNet"}
    with pytest.raises(ValueError, match=f"is named as a {long_name[other]}.* file, but its weights "
                                         f"are those of a {long_name[architecture]}"):
        GeomEmbedder(str(misnamed)).fit(paths)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    key = next(k for k in state if k.endswith("layers.0.linears_tensor.0.weight")
               or k.endswith("attention_layers.0.q_proj.weight"))
    damaged = tmp_path / "damaged.pth"
    torch.save({k: v for k, v in state.items() if k != key}, damaged)
    short = key.removeprefix("representation_model.")
    with pytest.raises(ValueError, match=f"does not fit the .* backbone .*missing keys \\['{short}'\\]"):
        GeomEmbedder(str(damaged)).fit(paths)


def test_the_example_path_embed_merge_vampnet(embedder, tokens):
    """examples/adenylate_kinase.py, cut down: tokens -> TokenMerger -> VAMPNet -> importance."""
    pipe = Pipeline([
        ("merge", TokenMerger(window=4)),
        ("vamp", VAMPNetEstimator(lagtime=1, n_components=1, d_model=16, n_heads=2, n_layers=1,
                                  batch_size=8, max_epochs=1, validation_fraction=0,
                                  progress=False, random_state=0)),
    ])
    with pytest.warns(UserWarning, match="only 8 time-lagged pairs"):  # 2 paths of 5 frames
        pipe.fit(tokens)
    outputs = pipe.transform(tokens)
    assert [o.shape for o in outputs] == [(5, 1), (5, 1)]
    assert all(np.isfinite(o).all() for o in outputs)
    importance = pipe["vamp"].attention_importance(pipe["merge"].transform(tokens))
    assert importance.shape == (embedder.n_residues_,) and np.isfinite(importance).all()


def test_denoising_pretraining_starts_from_the_files_head(checkpoint, ala2_trajs):
    frames = [ala2_trajs[0][:40]]
    fitted = GeomEmbedder(checkpoint, pretrain="denoise", pretrain_steps=3, progress=False,
                          random_state=0).fit(frames)
    loaded = GeomEmbedder(checkpoint, progress=False).fit(frames)
    history = fitted.pretrain_history_
    assert len(history) == 3 and np.all(np.isfinite(history))
    # the file's head predicts the noise far better than chance (a mean squared error of 1)
    assert history[0] < 0.9
    assert fitted.weights_sha256_ != loaded.weights_sha256_
    again = GeomEmbedder(checkpoint, pretrain="denoise", pretrain_steps=3, progress=False,
                         random_state=0).fit(frames)
    assert again.pretrain_history_ == history
