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
(the order of the sums changes); ``tests/embedding/test_embedder_science.py`` checks
them against torch-geometric's ViSNet. Only ``lmax=1`` without vertex
features (the geom2vec checkpoints) is covered; :func:`supports_padded`
says when a block qualifies.
"""

from __future__ import annotations

import functools
import math
import sys
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.nn import functional as F
from ._neighbors import _squared_distances, radius_graph

if TYPE_CHECKING:
    from torch_geometric.nn.models.visnet import VecLayerNorm, ViS_MP, ViSNetBlock

__all__ = ["dense_forward", "neighbor_table", "padded_forward", "supports_padded", "table_forward"]

#: Edges (target atoms x table width) per block of the eager per-edge pass. Its
#: temporaries are then a few MB, which glibc serves from its heap instead of a
#: fresh ``mmap`` per tensor (above 32 MB every allocation is new pages, each
#: one a page fault), and which stay in cache between the operations on them.
#: ``benchmarks/bench_profile.py`` profiles it against the pass in one block.
EDGES_PER_CHUNK = 8192

#: Molecules of at most this many atoms go through :func:`dense_forward` (every atom
#: pair of a frame, those beyond the cutoff masked) instead of the neighbour table: at
#: this size nearly every pair is within ViSNet's cutoff, so the dense layout does no
#: more work, and it needs no gathers. ``benchmarks/bench_limits.py`` measures the
#: embedding of alanine dipeptide (10 heavy atoms) this way.
DENSE_MAX_ATOMS = 32

#: Atom pairs per chunk of :func:`dense_forward`: 4,096 pairs of 64 float32 channels are
#: 1 MB a tensor. On alanine dipeptide (2-core AMD EPYC, one thread) 1,024 and 2,048
#: pairs ran 10-20 % slower (per-operation overhead), 4,096 and 8,192 alike; the
#: smaller of those gives a default batch (204 frames) five chunks to share among threads.
DENSE_PAIRS_PER_CHUNK = 4096


def _pyg_visnet(name: str):
    """``name`` from torch-geometric's ViSNet module if that module is loaded, else None.

    torch-geometric takes seconds to import (most of ``import g2v_sklearn``), and only
    ViSNet backbones need it: they import it when they are built, so an object that is
    one of its classes exists only once it is loaded. Processes that never embed with
    ViSNet (the learners' workers, the command line) skip the import.
    """
    module = sys.modules.get("torch_geometric.nn.models.visnet")
    return None if module is None else getattr(module, name)


def _is_visnet_block(block) -> bool:
    visnet_block = _pyg_visnet("ViSNetBlock")
    return visnet_block is not None and isinstance(block, visnet_block)


def supports_padded(block) -> bool:
    """Whether :func:`padded_forward` computes ``block``'s function.

    True for the backbones of :mod:`._torchmd` (they have a ``table_forward``)
    and for ViSNet blocks with lmax 1 and no vertex terms.
    """
    if not _is_visnet_block(block):
        return callable(getattr(block, "table_forward", None))
    vertex = _pyg_visnet("ViS_MP_Vertex")
    return block.lmax == 1 and not any(isinstance(layer, vertex) for layer in block.vis_mp_layers)


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
        # the length over the 3-axis, written out: torch.norm over a middle axis of size 3
        # takes a strided path about 100x slower (23 ms against 0.2 ms on (1656, 3, 64))
        dist = vec.square().sum(1, keepdim=True).sqrt().clamp(min=norm.eps)  # (n, 1, H)
        direct = vec / dist
        max_val = dist.amax(dim=-1, keepdim=True)
        min_val = dist.amin(dim=-1, keepdim=True)
        delta = max_val - min_val
        delta = torch.where(delta == 0, torch.ones_like(delta), delta)
        vec = ((dist - min_val) / delta).relu() * direct
    return vec * norm.weight


def _smearing(expansion, r: Tensor) -> Tensor:
    """``expansion(r)``, with torch-geometric's ExpNormalSmearing computed without its slow tail.

    Its outer exponent reaches -1,000 for distances near zero (the self-loops),
    and ``exp`` of arguments whose result is near or below the smallest normal
    number takes a slow path (on 1656 x 105 x 64 adenylate-kinase entries:
    130-210 ms against 9 ms). The argument is clamped 8 above the log of the
    smallest normal number, so an entry changes by at most
    ``exp(log(tiny) + 8)`` (3.5e-35 in float32), far below rounding.
    """
    smearing = _pyg_visnet("ExpNormalSmearing")
    if smearing is None or not isinstance(expansion, smearing):
        return expansion(r)
    dist = r.unsqueeze(-1)
    floor = math.log(torch.finfo(dist.dtype).tiny) + 8.0
    exponent = -expansion.betas * ((expansion.alpha * (-dist)).exp() - expansion.means).square()
    return expansion.cutoff_fn(dist) * exponent.clamp_min(floor).exp()


def _message_passing(layer: ViS_MP, x: Tensor, vec: Tensor, f: Tensor, neighbors: Tensor,
                     attn_cut: Tensor, valid: Tensor, d: Tensor, rows_per_chunk: int | None = None):
    """One ViS_MP layer: updates of atom scalars and vectors, and the new edge features.

    The per-atom projections are computed once for all atoms; the per-edge
    part runs over blocks of ``rows_per_chunk`` target atoms (all at once
    when None), so that its temporaries stay small: see :data:`EDGES_PER_CHUNK`.
    """
    n = neighbors.size(0)
    hidden = layer.hidden_channels
    x = layer.layernorm(x)
    vec = _vec_layernorm(layer.vec_layernorm, vec)
    atoms = {
        "q": layer.q_proj(x), "k": layer.k_proj(x), "v": layer.v_proj(x), "vec": vec,
        "a": None if layer.last_layer else layer.w_trg_proj(vec),
        "b": None if layer.last_layer else layer.w_src_proj(vec),
    }
    x_in, vec_in, f_new = _by_blocks(
        lambda rows: _edge_messages(layer, atoms, rows, f, neighbors, attn_cut, valid, d),
        n, rows_per_chunk,
    )

    vec1, vec2, vec3 = torch.split(layer.vec_proj(vec), hidden, dim=-1)
    o1, o2, o3 = torch.split(layer.o_proj(x_in), hidden, dim=1)
    dx = (vec1 * vec2).sum(1).mul_(o2).add_(o3)
    dvec = vec3.mul_(o1.unsqueeze(1)).add_(vec_in)
    return dx, dvec, f if f_new is None else f_new


def _by_blocks(compute, n: int, rows_per_chunk: int | None):
    """``compute(rows)`` over blocks of ``rows_per_chunk`` rows of ``n``, concatenated.

    ``compute`` returns a tensor or a tuple of tensors (or None, kept as None);
    each is concatenated over the blocks along its first axis.
    """
    step = max(1, n if rows_per_chunk is None else rows_per_chunk)
    parts = [compute(slice(i, i + step)) for i in range(0, max(n, 1), step)]
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], Tensor):
        return torch.cat(parts)
    return tuple(None if p[0] is None else torch.cat(p) for p in zip(*parts))


def _edge_messages(layer: ViS_MP, atoms: dict, rows: slice, f: Tensor, neighbors: Tensor,
                   attn_cut: Tensor, valid: Tensor, d: Tensor):
    """Messages into the target atoms ``rows``, and their edges' new features (None at the end)."""
    neighbors, f, d = neighbors[rows], f[rows], d[rows]
    n, width = neighbors.shape
    hidden, heads = layer.hidden_channels, layer.num_heads
    q = atoms["q"][rows].view(n, 1, heads, -1)
    k = _gather(atoms["k"], neighbors).view(n, width, heads, -1)
    dk = F.silu(layer.dk_proj(f)).view(n, width, heads, -1)
    attn = F.silu((k.mul_(dk).mul_(q)).sum(-1)).mul_(attn_cut[rows].unsqueeze(-1))
    v = _gather(atoms["v"], neighbors).mul_(F.silu(layer.dv_proj(f)))
    v = v.view(n, width, heads, -1).mul_(attn.unsqueeze(-1)).view(n, width, hidden)
    s1, s2 = torch.split(F.silu(layer.s_proj(v)).mul_(valid[rows]), hidden, dim=-1)

    # messages: v_j into x; vec_j * s1 + s2 d^T into vec
    x_in = v.sum(1)
    vec_in = (_gather(atoms["vec"], neighbors) * s1.unsqueeze(2)).sum(1)
    vec_in = torch.baddbmm(vec_in, d.transpose(1, 2), s2)
    if layer.last_layer:
        return x_in, vec_in, None

    # rej(a_i, d) . rej(b_j, -d) = a_i . b_j - (a_i . d)(b_j . d), for |d| = 1 or d = 0
    a = atoms["a"][rows]
    b = _gather(atoms["b"], neighbors)  # (n, K, 3, H)
    a_dot_d = torch.bmm(d, a)  # (n, K, H)
    b_dot_d = (b * d.unsqueeze(-1)).sum(2)
    w_dot = b.mul_(a.unsqueeze(1)).sum(2).sub_(a_dot_d.mul_(b_dot_d))
    return x_in, vec_in, F.silu(layer.f_proj(f)).mul_(w_dot).add_(f)


def padded_forward(block: ViSNetBlock, z: Tensor, pos: Tensor, batch: Tensor, *,
                   compile: bool = False, edges_per_chunk: int | None | str = "auto",
                   ) -> tuple[Tensor, Tensor]:
    """``block(z, pos, batch)`` computed on a padded neighbour table.

    Parameters
    ----------
    block : ViSNetBlock, EquivariantTransformer or TensorNet
        A block for which :func:`supports_padded` holds. Its ``distance``
        module supplies the cutoff, the neighbour cap and self-loops.
    z : Tensor of shape (n_atoms,)
        Atomic numbers.
    pos : Tensor of shape (n_atoms, 3)
        Positions, in Angstrom.
    batch : Tensor of shape (n_atoms,)
        Sorted graph index of each atom.
    compile : bool, default=False
        Run the part after the neighbour search (the table forward pass)
        through ``torch.compile``, compiled once per process with dynamic
        shapes. Compilation errors propagate.
    edges_per_chunk : int, None or "auto", default="auto"
        Edges per block of the eager per-edge pass (None: all at once;
        "auto": the block's ``edges_per_chunk`` or :data:`EDGES_PER_CHUNK`). The
        compiled pass always runs whole: the compiler fuses the per-edge
        operations itself. With "auto", the eager pass of a ViSNet block over
        frames of one small molecule (:func:`dense_atoms`) runs on every atom
        pair instead (:func:`dense_forward`).

    Returns
    -------
    x : Tensor of shape (n_atoms, H)
        Atom scalars.
    vec : Tensor of shape (n_atoms, 3, H)
        Atom vectors.
    """
    if not compile and edges_per_chunk == "auto":
        n_atoms = dense_atoms(block, pos, batch)
        if n_atoms is not None:  # a small molecule: every atom pair, no neighbour table
            return dense_forward(block, z, pos, batch, n_atoms)
    distance = block.distance
    edge_index = radius_graph(pos, distance.cutoff, batch, loop=True,
                              max_num_neighbors=distance.max_num_neighbors)
    if getattr(block, "aggregates_at_source", False) and distance.max_num_neighbors is not None:
        # TensorNet sums its messages at the source of each edge. Without a cap the graph
        # is symmetric and that is the same; with one, atom i hears from the atoms that
        # keep i among their nearest, so the table lists those: the edges reversed
        source, target = edge_index
        order = torch.argsort(source, stable=True)
        edge_index = torch.stack([target[order], source[order]])
    neighbors, valid = neighbor_table(edge_index, pos.size(0))
    # ViSNet's pass is a function of the torch-geometric block; the other backbones own one
    forward = table_forward if _is_visnet_block(block) else type(block).table_forward
    if compile:
        return _compiled(forward)(block, z, pos, neighbors, valid)
    if edges_per_chunk == "auto":
        edges_per_chunk = getattr(block, "edges_per_chunk", EDGES_PER_CHUNK)
    width = max(1, neighbors.size(1))
    rows = None if edges_per_chunk is None else max(1, edges_per_chunk // width)
    return forward(block, z, pos, neighbors, valid, rows_per_chunk=rows)


@functools.cache
def _compiled(forward):
    """``torch.compile(forward)``, made once per process and function.

    With dynamic shapes from the start: the neighbour table's width changes
    from batch to batch, and torch's default (static, then dynamic at the first
    new shape) would compile twice; one dynamic graph ran as fast (ADK, 2 cores).
    """
    return torch.compile(forward, dynamic=True)


def table_forward(block: ViSNetBlock, z: Tensor, pos: Tensor, neighbors: Tensor,
                  valid: Tensor, rows_per_chunk: int | None = None) -> tuple[Tensor, Tensor]:
    """The forward pass of :func:`padded_forward` on a given neighbour table.

    All shapes are fixed by ``(n_atoms, K)``, so this is the part worth
    handing to ``torch.compile``. ``rows_per_chunk`` target atoms at a time
    go through each layer's per-edge part (all at once when None).
    """
    n = pos.size(0)
    vec_ij = _gather(pos, neighbors) - pos.unsqueeze(1)  # (n, K, 3): pos_j - pos_i
    r = torch.linalg.vector_norm(vec_ij, dim=-1)
    d = vec_ij / r.clamp_min(torch.finfo(r.dtype).tiny).unsqueeze(-1)  # 0 on self-loops
    valid = valid.to(pos.dtype)

    cut = block.neighbor_embedding.cutoff(r).mul_(valid)  # torch-geometric's CosineCutoff
    rbf = _by_blocks(lambda rows: _smearing(block.distance_expansion, r[rows]), n, rows_per_chunk)

    x = block.embedding(z)
    embed = block.neighbor_embedding
    not_self = neighbors != torch.arange(n, device=pos.device).unsqueeze(1)
    neighbor_cut = (cut * not_self).unsqueeze(-1)
    z_embedding = embed.embedding(z)
    x_neighbors = _by_blocks(
        lambda rows: (_gather(z_embedding, neighbors[rows])
                      * embed.distance_proj(rbf[rows]).mul_(neighbor_cut[rows])).sum(1),
        n, rows_per_chunk,
    )
    x = embed.combine(torch.cat([x, x_neighbors], dim=1))
    f = _by_blocks(
        lambda rows: block.edge_embedding.edge_proj(rbf[rows]).mul_(
            _gather(x, neighbors[rows]).add_(x[rows].unsqueeze(1))),
        n, rows_per_chunk,
    )

    vec = x.new_zeros(n, 3, x.size(1))
    valid = valid.unsqueeze(-1)
    for layer in block.vis_mp_layers:
        dx, dvec, f = _message_passing(layer, x, vec, f, neighbors, cut, valid, d, rows_per_chunk)
        x = x + dx
        vec = vec + dvec
    return block.out_norm(x), _vec_layernorm(block.vec_out_norm, vec)


def dense_atoms(block, pos: Tensor, batch: Tensor) -> int | None:
    """Atoms per frame when ``block(z, pos, batch)`` goes through :func:`dense_forward`, else None.

    That is a ViSNet block (as :func:`supports_padded`) and graphs of one size of at
    most :data:`DENSE_MAX_ATOMS` atoms that no neighbour cap below that size trims: the
    same molecule frame after frame, as the embedder batches it. Decided by the
    molecule, not by the frames in the batch, so every batch of one trajectory takes
    the same path.
    """
    if not _is_visnet_block(block) or pos.dim() != 2 or pos.size(0) == 0:
        return None
    cap = block.distance.max_num_neighbors
    if batch is None or batch.dim() != 1 or batch.size(0) != pos.size(0):
        return None  # radius_graph says what is wrong
    counts = torch.unique_consecutive(batch, return_counts=True)[1]
    m = int(counts[0])
    if m > DENSE_MAX_ATOMS or (cap is not None and cap < m) or bool((counts != m).any()):
        return None
    return m


def dense_forward(block: ViSNetBlock, z: Tensor, pos: Tensor, batch: Tensor, n_atoms: int, *,
                  pairs_per_chunk: int | None = None) -> tuple[Tensor, Tensor]:
    """``block(z, pos, batch)`` for frames of ``n_atoms`` atoms each, on every atom pair.

    The neighbour table of a small molecule lists nearly every atom of the
    frame, so this pass keeps every pair ``(i, j)`` of a frame, in tensors of
    shape (frames, n_atoms, n_atoms, H), and masks the pairs that are no edge
    (beyond the cutoff, inclusive as in :func:`radius_graph`). Atom quantities
    then broadcast over the pair axes instead of being gathered, and vectors
    are read one component at a time, so that every elementwise operation
    runs over long contiguous rows. Frames go through in chunks of about
    ``pairs_per_chunk`` pairs (default :data:`DENSE_PAIRS_PER_CHUNK`), whose
    temporaries stay in cache, each chunk on one thread and the chunks on
    torch's threads side by side (the tokens are those of one thread, whatever
    the number of threads). In the first layer the atom vectors are still
    zero, and the terms that multiply them (and the edge update, which is then
    zero) are skipped: they would add exact zeros.

    Same function as :func:`table_forward` (sums over neighbours add exact
    zeros at the masked pairs; otherwise the rounding differs only where
    operations are grouped differently), checked in
    ``tests/backbones/test_padded_visnet.py``.
    """
    from ._neighbors import _check_pos, _graph_sizes

    _check_pos(pos)
    _graph_sizes(batch, pos.size(0), pos.device)  # validates a sorted integer batch
    if not bool(torch.isfinite(pos.detach()).all()):
        raise ValueError("pos contains non-finite values (NaN or inf).")
    frames, m = pos.size(0) // n_atoms, n_atoms
    hidden = block.hidden_channels
    pairs = DENSE_PAIRS_PER_CHUNK if pairs_per_chunk is None else pairs_per_chunk
    step = max(1, pairs // (m * m))
    x_out = pos.new_empty(frames, m, hidden)
    vec_out = pos.new_empty(frames, m, 3, hidden)
    p_all, z_all = pos.view(frames, m, 3), z.view(frames, m)

    def run(start: int) -> None:
        x, vec = _dense_chunk(block, z_all[start:start + step], p_all[start:start + step])
        x_out[start:start + step] = x
        vec_out[start:start + step] = vec

    starts = range(0, frames, step)
    threads = min(torch.get_num_threads(), len(starts)) if pos.device.type == "cpu" else 1
    if threads <= 1:
        for start in starts:
            run(start)
    else:
        _in_threads(run, starts, threads)
    n = frames * m
    return x_out.view(n, hidden), vec_out.view(n, 3, hidden)


def _in_threads(run, items, threads: int) -> None:
    """``run(item)`` for every item, on ``threads`` threads of one torch thread each.

    The chunks of a small molecule are too small for torch's own threads to
    share one operation well; whole chunks on separate threads keep every core
    busy. Each chunk computes as it would at one thread, so the result does not
    depend on the number of threads. Autograd, inference mode and CPU autocast
    are per thread in torch: the workers take the caller's.
    """
    from concurrent.futures import ThreadPoolExecutor

    grad = torch.is_grad_enabled()
    inference = torch.is_inference_mode_enabled()
    autocast = torch.is_autocast_enabled("cpu")
    autocast_dtype = torch.get_autocast_dtype("cpu")

    def work(item) -> None:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad), \
                torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast):
            run(item)

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads) as pool:
            for _ in pool.map(work, items):
                pass
    finally:
        torch.set_num_threads(saved)


def _dense_chunk(block: ViSNetBlock, z: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`dense_forward` on the frames ``p`` (frames, m, 3) with atomic numbers ``z`` (frames, m)."""
    frames, m, _ = p.shape
    x_search = p.detach().float() if p.dtype in (torch.float16, torch.bfloat16) else p.detach()
    cutoff = float(block.distance.cutoff)
    within = _squared_distances(x_search, x_search) <= cutoff * cutoff  # [f, target, source]

    vec_ij = p.unsqueeze(1) - p.unsqueeze(2)  # [f, i, j] = pos_j - pos_i
    r = torch.linalg.vector_norm(vec_ij, dim=-1)
    d = vec_ij / r.clamp_min(torch.finfo(r.dtype).tiny).unsqueeze(-1)  # 0 on self-pairs
    valid = within.to(p.dtype)
    cut = block.neighbor_embedding.cutoff(r).mul_(valid)
    rbf = _smearing(block.distance_expansion, r)

    hidden = block.hidden_channels
    z = z.reshape(-1)
    x = block.embedding(z).view(frames, m, hidden)
    embed = block.neighbor_embedding
    not_self = ~torch.eye(m, dtype=torch.bool, device=p.device)
    neighbor_cut = (cut * not_self).unsqueeze(-1)
    z_embedding = embed.embedding(z).view(frames, m, hidden)
    x_neighbors = (z_embedding.unsqueeze(1) * embed.distance_proj(rbf).mul_(neighbor_cut)).sum(2)
    x = embed.combine(torch.cat([x, x_neighbors], dim=-1))
    f = block.edge_embedding.edge_proj(rbf).mul_(x.unsqueeze(1) + x.unsqueeze(2))

    vec = None  # all zero before the first layer
    valid = valid.unsqueeze(-1)
    for layer in block.vis_mp_layers:
        dx, dvec, f = _dense_message_passing(layer, x, vec, f, cut, valid, d)
        x = x + dx
        vec = dvec if vec is None else vec + dvec
    n = frames * m
    return (block.out_norm(x),
            _vec_layernorm(block.vec_out_norm, vec.view(n, 3, hidden)).view(frames, m, 3, hidden))


def _dense_message_passing(layer: ViS_MP, x: Tensor, vec: Tensor | None, f: Tensor, cut: Tensor,
                           valid: Tensor, d: Tensor):
    """One ViS_MP layer on every atom pair of each frame (see :func:`dense_forward`).

    ``x`` (F, m, H), ``vec`` (F, m, 3, H) or None when all zero, ``f`` (F, m,
    m, H) indexed [frame, target, source], ``cut`` (F, m, m), ``valid`` (F, m,
    m, 1), ``d`` (F, m, m, 3) the unit vectors from target to source.
    """
    frames, m, hidden = x.shape
    heads = layer.num_heads
    x = layer.layernorm(x)
    q, k, v = layer.q_proj(x), layer.k_proj(x), layer.v_proj(x)

    # attention: silu(sum over a head's channels of q_i k_j dk_ij), cut
    dk = F.silu(layer.dk_proj(f))
    attn = dk.mul_(k.unsqueeze(1)).mul_(q.unsqueeze(2)).view(frames, m, m, heads, -1).sum(-1)
    attn = F.silu(attn).mul_(cut.unsqueeze(-1))
    ve = F.silu(layer.dv_proj(f)).mul_(v.unsqueeze(1))
    ve = ve.view(frames, m, m, heads, -1).mul_(attn.unsqueeze(-1)).view(frames, m, m, hidden)
    x_in = ve.sum(2)
    d_t = d.view(-1, m, 3).transpose(1, 2)
    o1, o2, o3 = torch.split(layer.o_proj(x_in), hidden, dim=-1)

    if vec is None:
        # zero vectors: no vec_j * s1 message, no edge update (a = b = 0), dx = o3
        weight, bias = layer.s_proj.weight[hidden:], layer.s_proj.bias[hidden:]
        s2 = F.silu(F.linear(ve, weight, bias)).mul_(valid)
        vec_in = torch.bmm(d_t, s2.view(-1, m, hidden)).view(frames, m, 3, hidden)
        return o3, vec_in, f

    vec = _vec_layernorm(layer.vec_layernorm, vec.view(-1, 3, hidden)).view(frames, m, 3, hidden)
    s1, s2 = torch.split(F.silu(layer.s_proj(ve)).mul_(valid), hidden, dim=-1)
    # messages: vec_j * s1 + s2 d^T into vec, one vector component at a time
    by_component = vec.transpose(1, 2).contiguous()  # (F, 3, m, H)
    vec_in = torch.stack([(s1 * by_component[:, c].unsqueeze(1)).sum(2) for c in range(3)], dim=2)
    vec_in = torch.baddbmm(vec_in.view(-1, 3, hidden), d_t,
                           s2.reshape(-1, m, hidden)).view(frames, m, 3, hidden)

    f_new = f
    if not layer.last_layer:
        # rej(a_i, d) . rej(b_j, -d) = a_i . b_j - (a_i . d)(b_j . d), for |d| = 1 or d = 0
        a = layer.w_trg_proj(vec)
        b = layer.w_src_proj(vec).transpose(1, 2).contiguous()  # (F, 3, m, H)
        a_dot_d = torch.bmm(d.view(-1, m, 3), a.view(-1, 3, hidden)).view(frames, m, m, hidden)
        a = a.transpose(1, 2).contiguous()
        b_dot_d = d[..., 0:1] * b[:, 0].unsqueeze(1)
        a_dot_b = a[:, 0].unsqueeze(2) * b[:, 0].unsqueeze(1)
        for c in (1, 2):
            b_dot_d += d[..., c:c + 1] * b[:, c].unsqueeze(1)
            a_dot_b += a[:, c].unsqueeze(2) * b[:, c].unsqueeze(1)
        w_dot = a_dot_b.sub_(a_dot_d.mul_(b_dot_d))
        f_new = F.silu(layer.f_proj(f)).mul_(w_dot).add_(f)

    vec1, vec2, vec3 = torch.split(layer.vec_proj(vec), hidden, dim=-1)
    dx = (vec1 * vec2).sum(-2).mul_(o2).add_(o3)
    dvec = vec3.mul_(o1.unsqueeze(-2)).add_(vec_in)
    return dx, dvec, f_new
