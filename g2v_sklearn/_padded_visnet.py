"""ViSNet's forward pass on a padded neighbour table, for fast inference.

torch-geometric's :class:`~torch_geometric.nn.models.visnet.ViSNetBlock`
stores the graph as an edge list: every per-edge quantity is gathered for
both ends of the edge (``x_i`` and ``x_j``) and summed back with a scatter,
and the edge update projects the gathered vectors edge by edge. On a CPU
that is memory traffic, not arithmetic. :func:`padded_forward` computes the
same function with the block's own parameters on a table ``neighbors`` of
shape (n_atoms, K): row ``i`` lists the sources of the edges into atom ``i``
(its self-loop included), padded with ``i`` and masked. Then

* target-side quantities broadcast over the row instead of being gathered,
* sums over neighbours are sums over ``K`` (no scatter),
* linear maps without bias are applied once per atom, not once per edge
  (``W (v_j) = (W v)_j``), and the edge update uses
  ``rej(a, d) . rej(b, -d) = a . b - (a . d)(b . d)`` for unit (or zero) ``d``,
* the sum of ``s2 d^T`` over neighbours is one batched matrix product,
* the vector norm has no data-dependent branch, so ``torch.compile`` traces
  the whole pass as one graph.

The results equal the block's own forward up to floating-point rounding
(the order of the sums changes); ``tests/test_embedder_science.py`` checks
them against torch-geometric's ViSNet. Only ``lmax=1`` without vertex
features (the geom2vec checkpoints) is covered; :func:`supports_padded`
says when a block qualifies.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.nn import functional as F
from torch_geometric.nn.models.visnet import (
    VecLayerNorm,
    ViS_MP,
    ViS_MP_Vertex,
    ViSNetBlock,
)

from ._neighbors import radius_graph

__all__ = ["neighbor_table", "padded_forward", "supports_padded", "table_forward"]


def supports_padded(block: ViSNetBlock) -> bool:
    """Whether :func:`padded_forward` computes ``block``'s function (lmax 1, no vertex terms)."""
    return block.lmax == 1 and not any(
        isinstance(layer, ViS_MP_Vertex) for layer in block.vis_mp_layers
    )


def neighbor_table(edge_index: Tensor, n_nodes: int) -> tuple[Tensor, Tensor]:
    """Padded neighbour table of an edge list sorted by target.

    Parameters
    ----------
    edge_index : Tensor of shape (2, n_edges)
        Rows ``(source, target)``, sorted by target (as :func:`radius_graph`
        returns them).
    n_nodes : int
        Number of nodes.

    Returns
    -------
    neighbors : Tensor of shape (n_nodes, K)
        ``neighbors[i]`` lists the sources of the edges into ``i`` in their
        order, padded with ``i``; ``K`` is the largest in-degree.
    valid : Tensor of shape (n_nodes, K)
        ``True`` on the real edges.
    """
    source, target = edge_index
    device = edge_index.device
    counts = torch.bincount(target, minlength=n_nodes)
    width = int(counts.max()) if n_nodes else 0
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(source.numel(), device=device) - start[target]
    neighbors = torch.arange(n_nodes, device=device).unsqueeze(1).repeat(1, width)
    neighbors[target, slot] = source
    valid = torch.zeros(n_nodes, width, dtype=torch.bool, device=device)
    valid[target, slot] = True
    return neighbors, valid


def _gather(table: Tensor, neighbors: Tensor) -> Tensor:
    """``table[neighbors]`` for a table of shape (n, ...): one contiguous row copy per entry."""
    rows = table.reshape(table.size(0), -1).index_select(0, neighbors.reshape(-1))
    return rows.view(*neighbors.shape, *table.shape[1:])


def _vec_layernorm(norm: VecLayerNorm, vec: Tensor) -> Tensor:
    """``norm(vec)`` for vectors of shape (n, 3, H), without its all-zero branch.

    torch-geometric returns zeros when every vector is zero; the formula below
    gives exactly those zeros then (every length clamps to ``eps``, so the
    spread is 0, replaced by 1, and every direction is 0).
    """
    if norm.norm_type == "max_min":
        dist = torch.norm(vec, dim=1, keepdim=True).clamp(min=norm.eps)  # (n, 1, H)
        direct = vec / dist
        max_val = dist.amax(dim=-1, keepdim=True)
        min_val = dist.amin(dim=-1, keepdim=True)
        delta = max_val - min_val
        delta = torch.where(delta == 0, torch.ones_like(delta), delta)
        vec = ((dist - min_val) / delta).relu() * direct
    return vec * norm.weight


def _message_passing(layer: ViS_MP, x: Tensor, vec: Tensor, f: Tensor, neighbors: Tensor,
                     attn_cut: Tensor, valid: Tensor, d: Tensor):
    """One ViS_MP layer: residual updates of atom scalars, vectors and edge features."""
    n, width = neighbors.shape
    hidden, heads = layer.hidden_channels, layer.num_heads
    x = layer.layernorm(x)
    vec = _vec_layernorm(layer.vec_layernorm, vec)

    q = layer.q_proj(x).view(n, 1, heads, -1)
    k = _gather(layer.k_proj(x), neighbors).view(n, width, heads, -1)
    dk = F.silu(layer.dk_proj(f)).view(n, width, heads, -1)
    attn = F.silu((k.mul_(dk).mul_(q)).sum(-1)).mul_(attn_cut.unsqueeze(-1))
    v = _gather(layer.v_proj(x), neighbors).mul_(F.silu(layer.dv_proj(f)))
    v = v.view(n, width, heads, -1).mul_(attn.unsqueeze(-1)).view(n, width, hidden)
    s1, s2 = torch.split(F.silu(layer.s_proj(v)).mul_(valid), hidden, dim=-1)

    # messages: v_j into x; vec_j * s1 + s2 d^T into vec
    x_in = v.sum(1)
    vec_in = (_gather(vec, neighbors) * s1.unsqueeze(2)).sum(1)
    vec_in = torch.baddbmm(vec_in, d.transpose(1, 2), s2)

    vec1, vec2, vec3 = torch.split(layer.vec_proj(vec), hidden, dim=-1)
    o1, o2, o3 = torch.split(layer.o_proj(x_in), hidden, dim=1)
    dx = (vec1 * vec2).sum(1).mul_(o2).add_(o3)
    dvec = vec3.mul_(o1.unsqueeze(1)).add_(vec_in)
    if layer.last_layer:
        return dx, dvec, None

    # rej(a_i, d) . rej(b_j, -d) = a_i . b_j - (a_i . d)(b_j . d), for |d| = 1 or d = 0
    a = layer.w_trg_proj(vec)
    b = _gather(layer.w_src_proj(vec), neighbors)  # (n, K, 3, H)
    a_dot_d = torch.bmm(d, a)  # (n, K, H)
    b_dot_d = (b * d.unsqueeze(-1)).sum(2)
    w_dot = b.mul_(a.unsqueeze(1)).sum(2).sub_(a_dot_d.mul_(b_dot_d))
    df = F.silu(layer.f_proj(f)).mul_(w_dot)
    return dx, dvec, df


def padded_forward(block: ViSNetBlock, z: Tensor, pos: Tensor, batch: Tensor, *,
                   compile: bool = False) -> tuple[Tensor, Tensor]:
    """``block(z, pos, batch)`` computed on a padded neighbour table.

    Parameters
    ----------
    block : ViSNetBlock
        A block for which :func:`supports_padded` holds. Its ``distance``
        module supplies the cutoff, the neighbour cap and self-loops.
    z : Tensor of shape (n_atoms,)
        Atomic numbers.
    pos : Tensor of shape (n_atoms, 3)
        Positions, in Angstrom.
    batch : Tensor of shape (n_atoms,)
        Sorted graph index of each atom.
    compile : bool, default=False
        Run the part after the neighbour search (:func:`table_forward`)
        through ``torch.compile``, compiled once per process and recompiled
        for new shapes. Compilation errors propagate.

    Returns
    -------
    x : Tensor of shape (n_atoms, H)
        Atom scalars.
    vec : Tensor of shape (n_atoms, 3, H)
        Atom vectors.
    """
    distance = block.distance
    edge_index = radius_graph(pos, distance.cutoff, batch, loop=True,
                              max_num_neighbors=distance.max_num_neighbors)
    neighbors, valid = neighbor_table(edge_index, pos.size(0))
    forward = _compiled_table_forward() if compile else table_forward
    return forward(block, z, pos, neighbors, valid)


@functools.cache
def _compiled_table_forward():
    return torch.compile(table_forward, dynamic=None)


def table_forward(block: ViSNetBlock, z: Tensor, pos: Tensor, neighbors: Tensor,
                  valid: Tensor) -> tuple[Tensor, Tensor]:
    """The forward pass of :func:`padded_forward` on a given neighbour table.

    All shapes are fixed by ``(n_atoms, K)``, so this is the part worth
    handing to ``torch.compile``.
    """
    n = pos.size(0)
    vec_ij = _gather(pos, neighbors) - pos.unsqueeze(1)  # (n, K, 3): pos_j - pos_i
    r = torch.linalg.vector_norm(vec_ij, dim=-1)
    d = vec_ij / r.clamp_min(torch.finfo(r.dtype).tiny).unsqueeze(-1)  # 0 on self-loops
    valid = valid.to(pos.dtype)

    cut = block.neighbor_embedding.cutoff(r).mul_(valid)  # torch-geometric's CosineCutoff
    rbf = block.distance_expansion(r)  # (n, K, num_rbf)

    x = block.embedding(z)
    embed = block.neighbor_embedding
    not_self = neighbors != torch.arange(n, device=pos.device).unsqueeze(1)
    weight = embed.distance_proj(rbf).mul_((cut * not_self).unsqueeze(-1))
    x_neighbors = (_gather(embed.embedding(z), neighbors) * weight).sum(1)
    x = embed.combine(torch.cat([x, x_neighbors], dim=1))
    f = block.edge_embedding.edge_proj(rbf).mul_(_gather(x, neighbors).add_(x.unsqueeze(1)))

    vec = x.new_zeros(n, 3, x.size(1))
    valid = valid.unsqueeze(-1)
    for layer in block.vis_mp_layers:
        dx, dvec, df = _message_passing(layer, x, vec, f, neighbors, cut, valid, d)
        x = x + dx
        vec = vec + dvec
        if df is not None:
            f = f + df
    return block.out_norm(x), _vec_layernorm(block.vec_out_norm, vec)
