"""Token lobes and mixers (g2v_sklearn.nn._lobes): the equivariant mixer's symmetry, and its reason to exist."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation
from sklearn.pipeline import make_pipeline

from g2v_sklearn import MergeSpec, SPIBEstimator, TokenMerger, TokenTrajectory, VAMPNetEstimator
from g2v_sklearn.nn._lobes import EquivariantMixerBlock, TokenLobe

SPEC = MergeSpec(window=3, operator="rggc", cutoff=8.0, in_channels=8, hidden_channels=8,
                 n_residues=10, n_fragments=4)


def turned(features, positions, seed=1):
    """The same frames rotated (vector rows and positions) and translated."""
    rotation = torch.as_tensor(Rotation.random(random_state=seed).as_matrix(), dtype=features.dtype)
    f = features.clone()
    f[:, :, 1:] = torch.einsum("ij,brjh->brih", rotation, features[:, :, 1:])
    return f, positions @ rotation.T + torch.tensor([3.0, -1.0, 2.0], dtype=positions.dtype)


@pytest.mark.parametrize("merge, pooling", [(None, "cls"), (None, "mean"), (SPEC, "cls"), (SPEC, "mean")])
def test_equivariant_mixer_outputs_do_not_turn_with_the_molecule(merge, pooling):
    torch.manual_seed(0)
    lobe = TokenLobe(in_channels=8, n_tokens=10, merge=merge, d_model=16, n_heads=2, n_layers=2,
                     pooling=pooling, n_outputs=3, mixer="equivariant").double().eval()
    features = torch.randn(5, 10, 4, 8, dtype=torch.float64)
    positions = torch.cumsum(torch.randn(5, 10, 3, dtype=torch.float64), dim=1) * 2.2
    out = lobe(features, positions)
    torch.testing.assert_close(lobe(*turned(features, positions)), out, rtol=1e-7, atol=1e-7)
    assert out.std(dim=0).min() > 1e-3  # the outputs depend on the frames


def test_the_block_turns_vectors_with_the_frame_and_keeps_scalars():
    torch.manual_seed(0)
    block = EquivariantMixerBlock(16, 4).double()
    s, v = torch.randn(3, 7, 16, dtype=torch.float64), torch.randn(3, 7, 3, 16, dtype=torch.float64)
    rotation = torch.as_tensor(Rotation.random(random_state=2).as_matrix())
    s1, v1, w1 = block(s, v, need_weights=True)
    s2, v2, w2 = block(s, torch.einsum("ij,bljc->blic", rotation, v), need_weights=True)
    torch.testing.assert_close(s2, s1)
    torch.testing.assert_close(v2, torch.einsum("ij,bljc->blic", rotation, v1))
    torch.testing.assert_close(w2, w1)
    torch.testing.assert_close(w1.sum(-1), torch.ones(3, 4, 7, dtype=torch.float64))


def test_the_fused_path_gives_the_weights_of_the_explicit_one():
    # Over 32 tokens on a CPU attention runs fused (no scores stored); the queries and keys are
    # zero-padded to the values' width there. It must agree with the explicit scores.
    torch.manual_seed(0)
    block = EquivariantMixerBlock(16, 4)  # float32: the dtype of the fused kernels
    s, v = torch.randn(2, 40, 16), torch.randn(2, 40, 3, 16)
    fused = block(s, v, need_weights=False)
    explicit = block(s, v, need_weights=True)
    torch.testing.assert_close(fused[0], explicit[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused[1], explicit[1], rtol=1e-5, atol=1e-5)


def orientation_tokens(seed, n_frames=1000, n_res=4, p_switch=0.02):
    """A slow two-state switch seen only in how the tokens point relative to one another.

    Every frame is turned by its own random rotation, and every token has the same
    invariants in both states (noise scalars, one unit vector): in state 0 all vectors
    are parallel, in state 1 every other token points perpendicular to the rest."""
    rng = np.random.default_rng(seed)
    state = np.zeros(n_frames, dtype=int)
    for t in range(1, n_frames):
        state[t] = state[t - 1] ^ (rng.random() < p_switch)
    directions = np.zeros((n_frames, n_res, 3))
    directions[:, :, 0] = 1.0
    directions[np.ix_(state == 1, np.arange(n_res) % 2 == 1)] = [0.0, 1.0, 0.0]
    rotations = Rotation.random(n_frames, random_state=seed).as_matrix()
    features = np.empty((n_frames, n_res, 4, 1), np.float32)
    features[:, :, 0, 0] = rng.normal(size=(n_frames, n_res))
    features[:, :, 1:, 0] = np.einsum("fij,frj->fri", rotations, directions)
    positions = (np.cumsum(rng.normal(size=(n_frames, n_res, 3)), axis=1) * 3.8).astype(np.float32)
    return TokenTrajectory(features, positions, residue_names=["ALA"] * n_res, chain_ids=["A"] * n_res,
                           residue_ids=np.arange(1, n_res + 1), timestep=1.0)


def test_only_the_equivariant_mixer_sees_relative_orientation():
    # No TokenMerger: its graph convolution would mix neighbours' vectors before any norm.
    # Over three seeds of data and weights (10s + 1, 2, 3 and random_state=s) this fit scored
    # 1.61, 1.60, 1.67 (equivariant) against 1.00 each time (invariant) on a 2-core AMD EPYC.
    train, test = [orientation_tokens(1), orientation_tokens(2)], [orientation_tokens(3)]
    scores = {}
    for mixer in ("invariant", "equivariant"):
        est = VAMPNetEstimator(lagtime=5, n_components=2, d_model=16, n_heads=2, n_layers=1, mixer=mixer,
                               max_epochs=20, batch_size=256, progress=False, random_state=0).fit(train)
        scores[mixer] = est.score(test)  # held-out VAMP-2: 1 is the constant alone
    assert scores["invariant"] < 1.1, scores
    assert scores["equivariant"] > 1.3, scores


def test_a_fitted_learner_gives_the_same_outputs_for_a_turned_molecule():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 10, 4, 8)).astype(np.float32)
    positions = (np.cumsum(rng.normal(size=(300, 10, 3)), axis=1) * 2.2).astype(np.float32)
    meta = dict(residue_names=["ALA"] * 10, chain_ids=["A"] * 10, residue_ids=np.arange(1, 11))
    pipe = make_pipeline(TokenMerger(window=3), VAMPNetEstimator(
        lagtime=2, n_components=2, d_model=16, n_heads=2, n_layers=2, mixer="equivariant", max_epochs=2,
        progress=False, random_state=0))
    out = pipe.fit_transform([TokenTrajectory(features, positions, **meta)])[0]
    f, p = turned(torch.from_numpy(features), torch.from_numpy(positions))
    again = pipe.transform([TokenTrajectory(f.numpy(), p.numpy(), **meta)])[0]
    np.testing.assert_allclose(again, out, rtol=1e-4, atol=1e-4)  # float32
    assert np.std(out, axis=0).min() > 1e-3
    importance = pipe[-1].attention_importance(pipe[0].transform([TokenTrajectory(features, positions, **meta)]))
    assert importance.shape == (10,) and np.all(importance >= 0)
    # SPIB takes the same mixer
    spib = make_pipeline(TokenMerger(window=3), SPIBEstimator(
        lagtime=2, n_states=3, init_components=2, refinements=1, d_model=16, n_heads=2, n_layers=1,
        mixer="equivariant", max_epochs=1, progress=False, random_state=0))
    latent = spib.fit_transform([TokenTrajectory(features, positions, **meta)])[0]
    assert spib[-1].module_.lobe.mixer == "equivariant" and latent.shape == (300, 2)
