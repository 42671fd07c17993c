"""Tests of the pure-torch radius graph against a brute-force NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from g2v_sklearn.backbones import _neighbors
from g2v_sklearn.backbones._neighbors import RadiusDistance, radius_graph


# --------------------------------------------------------------------------
# NumPy float64 reference
# --------------------------------------------------------------------------
def reference_radius_graph(pos, cutoff, batch=None, loop=True, k=None, margin=None):
    """Brute-force edge list (2, E) sorted by (target, source).

    With ``margin`` set, also assert that no pair's squared distance lies
    within ``margin`` of ``cutoff**2``, so that a float32 computation cannot
    legitimately disagree with this float64 one.
    """
    pos = np.asarray(pos, dtype=np.float64)
    n = len(pos)
    batch = np.zeros(n, dtype=np.int64) if batch is None else np.asarray(batch)
    c2 = float(cutoff) ** 2
    sources, targets = [], []
    for g in np.unique(batch):
        nodes = np.flatnonzero(batch == g)
        p = pos[nodes]
        diff = p[None, :, :] - p[:, None, :]  # diff[i, j] = p[j] - p[i]
        d2 = diff[..., 0] ** 2 + diff[..., 1] ** 2 + diff[..., 2] ** 2
        if margin is not None:
            assert np.abs(d2 - c2).min() > margin, "pair too close to the cutoff"
        for i in range(len(nodes)):
            cand = np.flatnonzero(d2[i] <= c2)
            if not loop:
                cand = cand[cand != i]
            if k is not None and len(cand) > k:
                # nearest first, ties by smaller index
                cand = np.sort(cand[np.lexsort((cand, d2[i, cand]))[:k]])
            sources.append(nodes[cand])
            targets.append(np.full(len(cand), nodes[i]))
    if not sources:
        return np.zeros((2, 0), dtype=np.int64)
    return np.stack([np.concatenate(sources), np.concatenate(targets)])


def assert_same_edges(edge_index, expected):
    assert isinstance(edge_index, torch.Tensor)
    assert edge_index.dtype == torch.long
    assert edge_index.dim() == 2 and edge_index.size(0) == 2
    np.testing.assert_array_equal(edge_index.cpu().numpy(), expected)


def batch_from_sizes(sizes, ids=None):
    ids = range(len(sizes)) if ids is None else ids
    return np.repeat(np.asarray(list(ids)), sizes)


# --------------------------------------------------------------------------
# correctness on random clouds
# --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("loop", [True, False])
def test_single_graph_random(dtype, loop):
    rng = np.random.default_rng(0)
    pos = torch.as_tensor(rng.uniform(0.0, 20.0, size=(300, 3))).to(dtype)
    expected = reference_radius_graph(pos.double().numpy(), 5.0, loop=loop, margin=1e-4)
    out = radius_graph(pos, 5.0, loop=loop)
    assert_same_edges(out, expected)
    assert out.size(1) > 300  # non-trivial graph
    one_graph = torch.zeros(300, dtype=torch.long)
    assert_same_edges(radius_graph(pos, 5.0, one_graph, loop=loop), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("loop", [True, False])
def test_equal_size_frames(dtype, loop):
    rng = np.random.default_rng(1)
    sizes = [60] * 5
    pos = torch.as_tensor(rng.uniform(0.0, 12.0, size=(300, 3))).to(dtype)
    batch = batch_from_sizes(sizes)
    expected = reference_radius_graph(pos.double().numpy(), 5.0, batch, loop=loop, margin=1e-4)
    out = radius_graph(pos, 5.0, torch.as_tensor(batch), loop=loop)
    assert_same_edges(out, expected)


@pytest.mark.parametrize("loop", [True, False])
@pytest.mark.parametrize("ids", [None, [0, 2, 3, 7, 8, 100]])
def test_unequal_sizes(loop, ids):
    rng = np.random.default_rng(2)
    sizes = [1, 37, 80, 5, 120, 2]
    pos = torch.as_tensor(rng.uniform(0.0, 12.0, size=(sum(sizes), 3)))
    batch = batch_from_sizes(sizes, ids)
    expected = reference_radius_graph(pos.numpy(), 4.0, batch, loop=loop, margin=1e-6)
    out = radius_graph(pos, 4.0, torch.as_tensor(batch), loop=loop)
    assert_same_edges(out, expected)


def test_float32_protein_scale():
    rng = np.random.default_rng(3)
    pos = torch.as_tensor(rng.uniform(0.0, 40.0, size=(1656, 3)), dtype=torch.float32)
    expected = reference_radius_graph(pos.double().numpy(), 7.5, margin=1e-4)
    assert_same_edges(radius_graph(pos, 7.5), expected)


def test_many_small_frames_vectorised(monkeypatch):
    """20,000 frames of 10 atoms: a handful of vectorised blocks, exact result."""
    rng = np.random.default_rng(4)
    n_frames, m = 20_000, 10
    pos_np = rng.uniform(0.0, 6.0, size=(n_frames, m, 3))
    calls = []
    original = _neighbors._block_edges

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(_neighbors, "_block_edges", counting)
    pos = torch.as_tensor(pos_np.reshape(-1, 3))
    batch = torch.arange(n_frames).repeat_interleave(m)
    out = radius_graph(pos, 4.0, batch, loop=False)
    assert len(calls) == 1

    # vectorised reference (same ordering: frame, target, source)
    diff = pos_np[:, None, :, :] - pos_np[:, :, None, :]
    d2 = diff[..., 0] ** 2 + diff[..., 1] ** 2 + diff[..., 2] ** 2
    mask = d2 <= 16.0
    mask[:, np.arange(m), np.arange(m)] = False
    f, i, j = np.nonzero(mask)
    assert_same_edges(out, np.stack([f * m + j, f * m + i]))


# --------------------------------------------------------------------------
# boundary
# --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_cutoff_is_inclusive(dtype):
    pos = torch.tensor(
        [
            [0.0, 0.0, 0.0],
            [7.5, 0.0, 0.0],  # exactly at the cutoff from node 0
            [4.5, 6.0, 0.0],  # 4.5**2 + 6**2 = 7.5**2 from node 0
            [0.0, -6.0, 4.5],  # exactly at the cutoff from node 0
        ],
        dtype=dtype,
    )
    out = radius_graph(pos, 7.5, loop=False)
    edges = set(map(tuple, out.t().tolist()))
    for j in (1, 2, 3):
        assert (j, 0) in edges and (0, j) in edges
    assert (1, 2) in edges  # |(3, -6, 0)| = sqrt(45)


def test_pair_beyond_cutoff_excluded():
    for dtype in (torch.float32, torch.float64):
        pos = torch.tensor([[0.0, 0.0, 0.0], [7.5 + 1e-3, 0.0, 0.0]], dtype=dtype)
        out = radius_graph(pos, 7.5)
        assert out.tolist() == [[0, 1], [0, 1]]  # self-loops only
        assert radius_graph(pos, 7.5, loop=False).shape == (2, 0)


def test_low_precision_matches_float32():
    rng = np.random.default_rng(5)
    pos = torch.as_tensor(rng.uniform(0.0, 10.0, size=(120, 3)), dtype=torch.bfloat16)
    expected = radius_graph(pos.float(), 3.0, max_num_neighbors=8)
    assert torch.equal(radius_graph(pos, 3.0, max_num_neighbors=8), expected)


# --------------------------------------------------------------------------
# max_num_neighbors
# --------------------------------------------------------------------------
def lattice(shape=(5, 5, 4), spacing=1.0):
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    return grid.reshape(-1, 3).astype(np.float64) * spacing


@pytest.mark.parametrize("k", [1, 3, 7, 13, 20, 1000])
@pytest.mark.parametrize("loop", [True, False])
def test_max_num_neighbors_lattice_ties(k, loop):
    pos = lattice()  # 6 neighbours at 1, 12 at sqrt(2), 8 at sqrt(3): many ties
    expected = reference_radius_graph(pos, 1.8, loop=loop, k=k)
    for dtype in (torch.float32, torch.float64):
        out = radius_graph(torch.as_tensor(pos, dtype=dtype), 1.8, loop=loop, max_num_neighbors=k)
        assert_same_edges(out, expected)
    counts = np.bincount(expected[1], minlength=len(pos))
    assert counts.max() <= k


@pytest.mark.parametrize("k", [2, 9])
def test_max_num_neighbors_batched(k):
    # equal frames of a shifted lattice, then unequal frames
    frame = lattice((4, 3, 3))
    pos = np.concatenate([frame + 0.25 * t for t in range(4)])
    batch = batch_from_sizes([len(frame)] * 4)
    expected = reference_radius_graph(pos, 1.5, batch, k=k)
    out = radius_graph(torch.as_tensor(pos), 1.5, torch.as_tensor(batch), max_num_neighbors=k)
    assert_same_edges(out, expected)

    pos2 = np.concatenate([frame, lattice((2, 2, 3)), lattice((5, 2, 2))])
    batch2 = batch_from_sizes([36, 12, 20])
    expected2 = reference_radius_graph(pos2, 1.5, batch2, loop=False, k=k)
    out2 = radius_graph(
        torch.as_tensor(pos2), 1.5, torch.as_tensor(batch2), loop=False, max_num_neighbors=k
    )
    assert_same_edges(out2, expected2)


def test_max_num_neighbors_random():
    rng = np.random.default_rng(6)
    pos = rng.uniform(0.0, 15.0, size=(250, 3))
    expected = reference_radius_graph(pos, 5.0, k=10, margin=1e-6)
    assert_same_edges(radius_graph(torch.as_tensor(pos), 5.0, max_num_neighbors=10), expected)


def test_self_loop_ties_broken_by_index():
    # duplicate points: for target 1, source 0 (also at distance 0) precedes
    # the self-loop (1, 1); node 2 keeps its own self-loop
    pos = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    out = radius_graph(pos, 2.0, max_num_neighbors=1)
    assert out.tolist() == [[0, 0, 2], [0, 1, 2]]


# --------------------------------------------------------------------------
# memory blocking
# --------------------------------------------------------------------------
@pytest.mark.parametrize("block", [1, 64, 1000, 2 * 40 * 40 + 1, 3 * 40 * 40])
@pytest.mark.parametrize("k", [None, 5])
def test_small_blocks_match_default(block, k):
    rng = np.random.default_rng(7)
    pos = torch.as_tensor(rng.uniform(0.0, 8.0, size=(200, 3)), dtype=torch.float32)
    equal = torch.arange(5).repeat_interleave(40)  # 5 frames of 40 atoms
    unequal = torch.as_tensor(batch_from_sizes([13, 40, 1, 66, 80]))
    for batch in (None, equal, unequal):
        for loop in (True, False):
            ref = radius_graph(pos, 3.0, batch, loop=loop, max_num_neighbors=k)
            out = radius_graph(
                pos, 3.0, batch, loop=loop, max_num_neighbors=k, max_pairs_per_block=block
            )
            assert torch.equal(out, ref)


def test_blocks_bound_memory(monkeypatch):
    sizes = []
    original = _neighbors._squared_distances

    def recording(xt, xs):
        out = original(xt, xs)
        sizes.append(out.numel())
        return out

    monkeypatch.setattr(_neighbors, "_squared_distances", recording)
    pos = torch.rand(10 * 30, 3) * 10
    radius_graph(pos, 3.0, torch.arange(10).repeat_interleave(30), max_pairs_per_block=2000)
    assert max(sizes) <= 2000 and len(sizes) == 5  # 2 frames of 30 x 30 per block
    sizes.clear()
    radius_graph(pos, 3.0, max_pairs_per_block=2000)  # one graph of 300: rows of 300
    assert max(sizes) <= 2000 and len(sizes) == 50


def test_empty_and_single_atom():
    assert radius_graph(torch.zeros(0, 3), 1.0).shape == (2, 0)
    assert radius_graph(torch.zeros(0, 3), 1.0, torch.zeros(0, dtype=torch.long)).shape == (2, 0)
    assert radius_graph(torch.zeros(1, 3), 1.0).tolist() == [[0], [0]]
    assert radius_graph(torch.zeros(1, 3), 1.0, loop=False).shape == (2, 0)


# --------------------------------------------------------------------------
# RadiusDistance
# --------------------------------------------------------------------------
def pyg_style_distance(pos, edge_index, add_self_loops):
    """What torch_geometric's Distance does after its radius_graph call."""
    edge_vec = pos[edge_index[0]] - pos[edge_index[1]]
    if add_self_loops:
        mask = edge_index[0] != edge_index[1]
        edge_weight = torch.zeros(edge_vec.size(0), device=edge_vec.device, dtype=pos.dtype)
        edge_weight[mask] = torch.norm(edge_vec[mask], dim=-1)
    else:
        edge_weight = torch.norm(edge_vec, dim=-1)
    return edge_weight, edge_vec


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("loop", [True, False])
def test_radius_distance_matches_pyg(dtype, loop):
    rng = np.random.default_rng(8)
    pos = torch.as_tensor(rng.uniform(0.0, 10.0, size=(150, 3)), dtype=dtype)
    batch = torch.arange(3).repeat_interleave(50)
    module = RadiusDistance(4.0, max_num_neighbors=16, add_self_loops=loop)
    edge_index, edge_weight, edge_vec = module(pos, batch)
    assert torch.equal(edge_index, radius_graph(pos, 4.0, batch, loop=loop, max_num_neighbors=16))
    ref_weight, ref_vec = pyg_style_distance(pos, edge_index, loop)
    assert edge_weight.dtype == dtype and edge_vec.dtype == dtype
    assert torch.equal(edge_vec, ref_vec)
    assert torch.equal(edge_weight, ref_weight)
    self_loops = edge_index[0] == edge_index[1]
    assert bool(self_loops.any()) == loop
    assert bool((edge_weight[self_loops] == 0).all())
    assert bool((edge_weight[~self_loops] > 0).all())


def test_radius_distance_equals_torch_geometric_distance(monkeypatch):
    from torch_geometric.nn.models import visnet

    rng = np.random.default_rng(9)
    pos = torch.as_tensor(rng.uniform(0.0, 10.0, size=(120, 3)), dtype=torch.float32)
    batch = torch.arange(2).repeat_interleave(60)
    ours = RadiusDistance(5.0, max_num_neighbors=32)
    edge_index, edge_weight, edge_vec = ours(pos, batch)
    # feed PyG's own Distance the same edge_index
    monkeypatch.setattr(visnet, "radius_graph", lambda *args, **kwargs: edge_index)
    pyg_index, pyg_weight, pyg_vec = visnet.Distance(5.0, max_num_neighbors=32)(pos, batch)
    assert torch.equal(pyg_index, edge_index)
    assert torch.equal(edge_vec, pyg_vec)
    assert torch.equal(edge_weight, pyg_weight)


def test_radius_distance_gradient_finite():
    rng = np.random.default_rng(10)
    pos = torch.as_tensor(rng.uniform(0.0, 6.0, size=(40, 3)), dtype=torch.float64)
    pos.requires_grad_()
    edge_index, edge_weight, edge_vec = RadiusDistance(3.0)(pos, torch.zeros(40, dtype=torch.long))
    assert bool((edge_index[0] == edge_index[1]).any())
    (edge_weight.sum() + edge_vec.square().sum()).backward()
    assert pos.grad is not None and bool(torch.isfinite(pos.grad).all())

    # gradient matches that of the plain distances over non-self-loop edges
    pos2 = pos.detach().clone().requires_grad_()
    src, dst = edge_index[:, edge_index[0] != edge_index[1]]
    vec2 = pos2[edge_index[0]] - pos2[edge_index[1]]
    ((pos2[src] - pos2[dst]).norm(dim=-1).sum() + vec2.square().sum()).backward()
    torch.testing.assert_close(pos.grad, pos2.grad)


def test_radius_distance_in_visnet():
    from torch_geometric.nn.models import ViSNet

    torch.manual_seed(0)
    model = ViSNet(hidden_channels=16, num_layers=1, num_heads=2, num_rbf=8, cutoff=4.0)
    model.representation_model.distance = RadiusDistance(4.0, max_num_neighbors=32)
    z = torch.randint(1, 10, (30,))
    pos = torch.rand(30, 3) * 6
    batch = torch.arange(3).repeat_interleave(10)
    energy, _ = model(z, pos, batch)
    assert energy.shape == (3, 1) and bool(torch.isfinite(energy).all())


def test_radius_distance_repr_and_validation():
    assert "cutoff=5.0" in repr(RadiusDistance(5.0))
    with pytest.raises(ValueError, match="cutoff"):
        RadiusDistance(0.0)
    with pytest.raises(ValueError, match="max_num_neighbors"):
        RadiusDistance(5.0, max_num_neighbors=0)


# --------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------
def test_errors():
    pos = torch.rand(4, 3)
    with pytest.raises(ValueError, match="sorted"):
        radius_graph(pos, 1.0, torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="batch must have shape"):
        radius_graph(pos, 1.0, torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="integer"):
        radius_graph(pos, 1.0, torch.zeros(4))
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="cutoff must be > 0"):
            radius_graph(pos, bad)
    with pytest.raises(ValueError, match="cutoff must be a positive real"):
        radius_graph(pos, "1.0")
    for shape in ((4,), (4, 2), (2, 4, 3)):
        with pytest.raises(ValueError, match=r"shape \(n_atoms, 3\)"):
            radius_graph(torch.rand(shape), 1.0)
    with pytest.raises(ValueError, match="floating-point"):
        radius_graph(torch.ones(4, 3, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        radius_graph(torch.tensor([[0.0, 0.0, float("nan")]]), 1.0)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="max_num_neighbors"):
            radius_graph(pos, 1.0, max_num_neighbors=bad)
    with pytest.raises(ValueError, match="max_pairs_per_block"):
        radius_graph(pos, 1.0, max_pairs_per_block=0)
    with pytest.raises(ValueError, match="pos must be a torch.Tensor"):
        radius_graph(np.zeros((4, 3)), 1.0)
