"""The token-merging module (g2v_sklearn.nn._merger): equivariance, masking, checkpointing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from g2v_sklearn import MergeSpec, TokenTrajectory
from g2v_sklearn.nn._lobes import TokenLobe
from g2v_sklearn.nn._merger import TokenMergerModule


def synthetic_tokens(rng, n_frames=6, n_res=10, h=8):
    features = rng.normal(size=(n_frames, n_res, 4, h)).astype(np.float32)
    positions = (np.cumsum(rng.normal(size=(n_frames, n_res, 3)), axis=1) * 3.8 / np.sqrt(3)).astype(np.float32)
    return TokenTrajectory(features, positions, residue_names=["ALA"] * n_res,
                           chain_ids=["A"] * n_res, residue_ids=np.arange(n_res))


def spec(window, operator="graphconv", n_res=10, h=8, c=8, pe=True):
    return MergeSpec(window=window, operator=operator, cutoff=8.0, in_channels=h,
                     hidden_channels=c, n_residues=n_res, n_fragments=math.ceil(n_res / window),
                     positional_encoding=pe)


def rotate_tokens(features, positions, rotation):
    f = features.clone()
    f[:, :, 1:] = torch.einsum("ij,brjh->brih", rotation, features[:, :, 1:])
    return f, positions @ rotation.T + torch.tensor([3.0, -1.0, 2.0])


@pytest.mark.parametrize("operator", ["graphconv", "rggc", "none"])
@pytest.mark.parametrize("window", [1, 3, 4])
def test_merger_module_is_equivariant(rng, operator, window):
    torch.manual_seed(0)
    module = TokenMergerModule(spec(window, operator)).double()
    tok = synthetic_tokens(rng)
    f = torch.as_tensor(tok.features, dtype=torch.float64)
    p = torch.as_tensor(tok.positions, dtype=torch.float64)
    rotation = torch.as_tensor(Rotation.from_euler("xyz", [20, 50, -30], degrees=True).as_matrix())
    out = module(f, p)
    assert out.shape == (6, math.ceil(10 / window), 4, 8)
    out_rot = module(*rotate_tokens(f, p, rotation))
    torch.testing.assert_close(out_rot[:, :, 0], out[:, :, 0])  # scalars stay
    torch.testing.assert_close(out_rot[:, :, 1:], torch.einsum("ij,brjh->brih", rotation, out[:, :, 1:]))


def test_padding_never_changes_a_result(rng):
    torch.manual_seed(0)
    module = TokenMergerModule(spec(4, "none"))
    s = torch.randn(2, 10, 8)
    v = torch.randn(2, 10, 3, 8)
    out = module.merge_windows(s, v)
    # the same call with garbage (even NaN) where the padding goes
    garbage_s = torch.cat([s, torch.full((2, 2, 8), float("nan"))], dim=1)
    garbage_v = torch.cat([v, torch.full((2, 2, 3, 8), 1e6)], dim=1)
    torch.testing.assert_close(module.merge_windows(garbage_s, garbage_v), out)
    # locality: the last fragment depends only on residues 8 and 9
    s2 = s.clone()
    s2[:, :8] += 5.0
    changed = module.merge_windows(s2, v)
    torch.testing.assert_close(changed[:, 2], out[:, 2])
    assert not torch.allclose(changed[:, 0], out[:, 0])


def test_learner_lobe_output_is_rotation_invariant(rng):
    torch.manual_seed(0)
    lobe = TokenLobe(in_channels=8, n_tokens=10, merge=spec(3, "rggc"), d_model=16, n_heads=2,
                     n_layers=2, pooling="cls", n_outputs=3).double().eval()
    tok = synthetic_tokens(rng)
    f = torch.as_tensor(tok.features, dtype=torch.float64)
    p = torch.as_tensor(tok.positions, dtype=torch.float64)
    rotation = torch.as_tensor(Rotation.random(random_state=3).as_matrix())
    torch.testing.assert_close(lobe(*rotate_tokens(f, p, rotation)), lobe(f, p))


def test_positional_encoding_only_touches_scalars(rng):
    torch.manual_seed(0)
    with_pe = TokenMergerModule(spec(2, "none", pe=True))
    without = TokenMergerModule(spec(2, "none", pe=False))
    without.load_state_dict(with_pe.state_dict())
    tok = synthetic_tokens(rng)
    f, p = torch.as_tensor(tok.features), torch.as_tensor(tok.positions)
    a, b = with_pe(f, p), without(f, p)
    assert not torch.allclose(a[:, :, 0], b[:, :, 0])
    # vectors differ only through gates computed from (encoded) scalars: directions agree
    cos = torch.nn.functional.cosine_similarity(a[:, :, 1:], b[:, :, 1:], dim=2)
    assert torch.all(cos > 1 - 1e-5)


def test_checkpointed_training_gives_the_same_gradients(rng):
    torch.manual_seed(0)
    module = TokenMergerModule(spec(3, "graphconv")).double()
    tok = synthetic_tokens(rng, n_frames=7)
    f = torch.as_tensor(tok.features, dtype=torch.float64)
    p = torch.as_tensor(tok.positions, dtype=torch.float64)
    grads = []
    for chunk in (None, 2, 7):  # none; chunks of 2 frames (4 chunks, the last short); one chunk
        module.checkpoint_frames = chunk
        module.zero_grad()
        out = module(f, p)
        (out ** 2).sum().backward()
        grads.append([q.grad.clone() for q in module.parameters() if q.grad is not None])
    assert all(len(g) == len(grads[0]) > 0 for g in grads)
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            torch.testing.assert_close(a, b)


def test_dense_small_graph_equals_the_radius_graph(rng, monkeypatch):
    from g2v_sklearn.nn import _merger

    torch.manual_seed(0)
    module = TokenMergerModule(spec(2, "graphconv")).double()
    tok = synthetic_tokens(rng, n_frames=5)
    f = torch.as_tensor(tok.features, dtype=torch.float64)
    p = torch.as_tensor(tok.positions, dtype=torch.float64)
    adjacency, lengths = module.graph(p)
    assert adjacency.shape == (5, 10, 10) and lengths is None
    dense = module(f, p)
    monkeypatch.setattr(_merger, "_DENSE_GRAPH_MAX_RESIDUES", 0)  # the edge-list path
    edge_index, _ = module.graph(p)
    assert edge_index.shape[0] == 2 and int(adjacency.sum()) == edge_index.shape[1] > 0
    torch.testing.assert_close(module(f, p), dense)


def test_checkpointed_lobe_gives_the_same_gradients(rng):
    torch.manual_seed(0)
    lobe = TokenLobe(in_channels=8, n_tokens=10, merge=spec(3, "graphconv"), d_model=16,
                     n_heads=2, n_layers=2, pooling="cls", n_outputs=2).double()
    tok = synthetic_tokens(rng, n_frames=5)
    f = torch.as_tensor(tok.features, dtype=torch.float64)
    p = torch.as_tensor(tok.positions, dtype=torch.float64)
    grads = []
    for flag in (False, True):
        lobe.checkpoint_blocks = flag
        lobe.zero_grad()
        (lobe(f, p) ** 2).sum().backward()
        grads.append([q.grad.clone() for q in lobe.parameters() if q.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)
