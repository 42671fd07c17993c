"""ViSNet on a padded neighbour table: the same function as torch-geometric's block.

Also GeomEmbedder's options built on it: ``compile`` (and its fallback) and
the float32 fallback of ``dtype="bfloat16"`` where bfloat16 is not native.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from g2v_sklearn import GeomEmbedder, radius_graph
from g2v_sklearn.backbones import _padded_visnet as padded
from g2v_sklearn.backbones._backbone import BackboneConfig, build_backbone
from g2v_sklearn.embedding import _embedder as embedder_module

# Embeddings compared bit for bit across runs: the same torch threads in every run.
pytestmark = pytest.mark.usefixtures("fixed_threads")


def norm_relative_error(a, b) -> float:
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return float((a - b).norm() / b.norm())


def random_backbone(seed: int, **kw):
    torch.manual_seed(seed)
    block = build_backbone(BackboneConfig(hidden_channels=32, num_layers=3, num_rbf=16,
                                          cutoff=4.0, **kw)).eval()
    # untrained vector norms start at one: perturb them, and the biases, so every term counts
    with torch.no_grad():
        for name, p in block.named_parameters():
            if name.endswith("bias") or "vec_layernorm" in name or "vec_out_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return block


def random_molecules(seed: int, sizes=(40, 23)):
    """Two clouds of different sizes (so degrees differ), a sorted batch vector."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.cat([torch.rand(n, 3, generator=g) * 7.0 for n in sizes])
    z = torch.randint(1, 10, (sum(sizes),), generator=g)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return z, pos, batch


def test_neighbor_table_lists_each_targets_sources_in_order():
    edge_index = torch.tensor([[0, 2, 1, 0, 1, 2], [0, 0, 1, 2, 2, 2]])
    neighbors, valid = padded.neighbor_table(edge_index, 3)
    assert neighbors.tolist() == [[0, 2, 0], [1, 1, 1], [0, 1, 2]]
    assert valid.tolist() == [[True, True, False], [True, False, False], [True, True, True]]


@pytest.mark.parametrize("max_num_neighbors", [None, 20])
def test_padded_forward_equals_the_torch_geometric_block(max_num_neighbors):
    block = random_backbone(0, max_num_neighbors=max_num_neighbors)
    z, pos, batch = random_molecules(1)
    assert padded.supports_padded(block)
    with torch.no_grad():
        x_ref, vec_ref = block(z, pos, batch)
        x, vec = padded.padded_forward(block, z, pos, batch)
    degrees = torch.bincount(radius_graph(pos, 4.0, batch, max_num_neighbors=max_num_neighbors)[1])
    assert degrees.min() < degrees.max()  # padding is exercised
    assert norm_relative_error(x, x_ref) < 1e-5
    assert norm_relative_error(vec, vec_ref) < 1e-5


@pytest.mark.parametrize("edges_per_chunk", [1, 50, None])
def test_blocks_of_target_atoms_give_the_whole_pass(edges_per_chunk):
    """The eager pass over blocks of rows (down to one atom a block) equals the pass in one piece."""
    block = random_backbone(1)
    z, pos, batch = random_molecules(2)
    with torch.no_grad():
        x_ref, vec_ref = block(z, pos, batch)
        x, vec = padded.padded_forward(block, z, pos, batch, edges_per_chunk=edges_per_chunk)
    assert norm_relative_error(x, x_ref) < 1e-5
    assert norm_relative_error(vec, vec_ref) < 1e-5


def small_frames(seed: int, frames: int = 5, atoms: int = 9, spread: float = 6.0):
    """Frames of one small molecule, spread so that some pairs lie beyond a 4-Angstrom cutoff."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(frames * atoms, 3, generator=g) * spread
    z = torch.randint(1, 10, (atoms,), generator=g).repeat(frames)
    batch = torch.arange(frames).repeat_interleave(atoms)
    return z, pos, batch


def test_small_molecules_take_the_dense_pass_and_it_equals_the_torch_geometric_block():
    block = random_backbone(3)
    z, pos, batch = small_frames(4)
    assert padded.dense_atoms(block, pos, batch) == 9
    degrees = torch.bincount(radius_graph(pos, 4.0, batch)[1])
    assert degrees.min() < 9  # some pairs are masked
    with torch.no_grad():
        x_ref, vec_ref = block(z, pos, batch)
        x, vec = padded.padded_forward(block, z, pos, batch)  # "auto": the dense pass
        x_table, vec_table = padded.padded_forward(block, z, pos, batch, edges_per_chunk=None)
    assert norm_relative_error(x, x_ref) < 1e-5
    assert norm_relative_error(vec, vec_ref) < 1e-5
    assert norm_relative_error(x, x_table) < 1e-6
    assert norm_relative_error(vec, vec_table) < 1e-6


@pytest.mark.parametrize("pairs_per_chunk", [1, 100, None])
def test_the_dense_pass_in_chunks_of_frames_gives_the_whole_pass(pairs_per_chunk):
    block = random_backbone(5)
    z, pos, batch = small_frames(6, frames=7)
    with torch.no_grad():
        x_ref, vec_ref = padded.dense_forward(block, z, pos, batch, 9, pairs_per_chunk=10**6)
        x, vec = padded.dense_forward(block, z, pos, batch, 9, pairs_per_chunk=pairs_per_chunk)
    assert norm_relative_error(x, x_ref) < 1e-6
    assert norm_relative_error(vec, vec_ref) < 1e-6


def test_the_dense_pass_gives_the_same_numbers_on_any_number_of_threads():
    """Its chunks run side by side, each on one torch thread: bit for bit the one-thread pass,
    inside inference mode as the embedder calls it (the mode is per thread in torch)."""
    block = random_backbone(6)
    z, pos, batch = small_frames(10, frames=12)
    saved = torch.get_num_threads()
    try:
        with torch.inference_mode():
            torch.set_num_threads(1)
            one = padded.dense_forward(block, z, pos, batch, 9, pairs_per_chunk=81 * 2)
            torch.set_num_threads(3)
            three = padded.dense_forward(block, z, pos, batch, 9, pairs_per_chunk=81 * 2)
            assert torch.get_num_threads() == 3  # restored after the chunks
    finally:
        torch.set_num_threads(saved)
    for a, b in zip(one, three):
        assert torch.equal(a, b)


def test_the_dense_pass_is_for_one_small_molecule_without_a_tighter_cap():
    z, pos, batch = small_frames(7)
    assert padded.dense_atoms(random_backbone(0, max_num_neighbors=20), pos, batch) == 9
    assert padded.dense_atoms(random_backbone(0, max_num_neighbors=5), pos, batch) is None
    mixed = torch.cat([torch.zeros(4, dtype=torch.long), torch.ones(41, dtype=torch.long)])
    assert padded.dense_atoms(random_backbone(0), pos, mixed) is None  # two sizes
    large = padded.DENSE_MAX_ATOMS + 1
    z, pos, batch = small_frames(8, frames=2, atoms=large)
    assert padded.dense_atoms(random_backbone(0), pos, batch) is None
    assert padded.dense_atoms(random_backbone(0, architecture="et"), pos[:9], batch[:9]) is None


def test_the_dense_pass_refuses_non_finite_positions():
    block = random_backbone(0)
    z, pos, batch = small_frames(9)
    pos[3, 1] = float("nan")
    with pytest.raises(ValueError, match="pos contains non-finite values"), torch.no_grad():
        padded.padded_forward(block, z, pos, batch)


def test_smearing_without_its_underflow_tail_matches_torch_geometric():
    """geom2vec's expansion (64 functions, 7.5 A), distances from 0 (self-loops: exponents near
    -1,000) to the cutoff: the clamp is reached, and the expansion is torch-geometric's."""
    import math

    from torch_geometric.nn.models.visnet import ExpNormalSmearing

    expansion = ExpNormalSmearing(7.5, 64, True)
    r = torch.linspace(0.0, 7.5, 751).view(1, -1)
    dist = r.unsqueeze(-1)
    exponent = -expansion.betas * ((expansion.alpha * (-dist)).exp() - expansion.means).square()
    floor = math.log(torch.finfo(torch.float32).tiny) + 8.0
    assert (exponent < floor).float().mean() > 0.1  # the clamped tail is a real part of the input
    with torch.no_grad():
        ref = expansion(r)
        ours = padded._smearing(expansion, r)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max() < 1e-30


def test_lmax_2_is_left_to_the_block():
    assert not padded.supports_padded(random_backbone(0, lmax=2))


# ----------------------------------------------------------------------------------
# GeomEmbedder options
# ----------------------------------------------------------------------------------
SMALL = dict(pretrain="random", hidden_channels=16, num_layers=2, num_rbf=8, progress=False,
             random_state=0)


@pytest.fixture(scope="module")
def short(ala2_trajs):
    return [ala2_trajs[0][:6]]


@pytest.fixture(scope="module")
def plain_tokens(short):
    return GeomEmbedder(**SMALL).fit_transform(short)[0].features


def test_compiled_embedding_equals_the_plain_path(short, plain_tokens):
    tokens = GeomEmbedder(compile=True, **SMALL).fit_transform(short)[0].features
    assert norm_relative_error(tokens, plain_tokens) < 1e-5


def test_compile_failure_falls_back_with_a_warning(short, plain_tokens, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(padded, "_compiled", lambda forward: broken)
    with pytest.warns(RuntimeWarning, match="torch.compile failed .*no C\\+\\+ compiler"):
        tokens = GeomEmbedder(compile=True, **SMALL).fit_transform(short)[0].features
    np.testing.assert_array_equal(tokens, plain_tokens)


@pytest.mark.parametrize("architecture", ["visnet", "et", "tensornet"])
def test_compile_auto_compiles_only_trajectories_that_repay_it(architecture, short, monkeypatch):
    """The threshold is on neighbour pairs x frames (not for ET, whose eager pass is as fast); the
    compiled path is observed through a stand-in for torch.compile that counts its calls and
    runs the plain pass."""
    calls = []

    def counting(forward):
        def run(*args):
            calls.append(len(args[1]))
            return forward(*args)
        return run

    monkeypatch.setattr(padded, "_compiled", counting)
    embedder = GeomEmbedder(architecture=architecture, **SMALL).fit(short)
    plain = GeomEmbedder(architecture=architecture, compile=False, **SMALL).fit(short)
    frames, atoms = short[0].n_frames, embedder.atom_indices_.size
    first = torch.from_numpy(short[0].xyz[0, embedder.atom_indices_] * 10.0)
    pairs = radius_graph(first, embedder.module_.distance.cutoff, loop=True).size(1)
    monkeypatch.setattr(embedder_module, "COMPILE_EDGE_FRAMES", pairs * frames + 1)
    small_job = embedder.transform(short)[0].features
    assert calls == []
    monkeypatch.setattr(embedder_module, "COMPILE_EDGE_FRAMES", pairs * frames)
    embedder.transform(short)
    if architecture == "et":  # its eager pass was the faster one: never compiled by "auto"
        assert calls == []
    else:
        assert sum(calls) == frames * atoms  # every frame through the compiled pass
    calls.clear()
    np.testing.assert_array_equal(plain.transform(short)[0].features, small_job)
    assert calls == []  # compile=False never compiles
    assert embedder.compile == "auto" and plain.get_params()["compile"] is False


def test_bfloat16_without_native_support_runs_in_float32(short, plain_tokens, monkeypatch):
    monkeypatch.setattr(embedder_module, "supports_bfloat16", lambda device: False)
    with pytest.warns(RuntimeWarning, match="no native bfloat16"):
        tokens = GeomEmbedder(dtype="bfloat16", **SMALL).fit_transform(short)[0]
    np.testing.assert_array_equal(tokens.features, plain_tokens)
    assert tokens.provenance["dtype"] == "float32"
