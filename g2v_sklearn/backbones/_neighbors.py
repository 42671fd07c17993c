"""Pure-torch radius neighbour search.

``torch_geometric.nn.radius_graph`` needs the compiled ``torch-cluster`` or
``pyg-lib`` extensions. This module provides an exact, memory-bounded
replacement written with plain tensor operations, and :class:`RadiusDistance`,
a drop-in substitute for ``torch_geometric.nn.models.visnet.Distance``.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

__all__ = ["RadiusDistance", "radius_graph"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------
def _check_cutoff(cutoff: float) -> float:
    if isinstance(cutoff, bool) or not isinstance(cutoff, numbers.Real):
        raise ValueError(f"cutoff must be a positive real number, got {cutoff!r}.")
    cutoff = float(cutoff)
    if not cutoff > 0.0:  # also rejects NaN
        raise ValueError(f"cutoff must be > 0, got {cutoff!r}.")
    return cutoff


def _check_positive_int(value: int | None, name: str, allow_none: bool) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        expected = "None or an integer >= 1" if allow_none else "an integer >= 1"
        raise ValueError(f"{name} must be {expected}, got {value!r}.")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}.")
    return int(value)


def _check_pos(pos: Tensor) -> None:
    if not isinstance(pos, Tensor):
        raise ValueError(f"pos must be a torch.Tensor, got {type(pos).__name__}.")
    if pos.dim() != 2 or pos.size(1) != 3:
        raise ValueError(f"pos must have shape (n_atoms, 3), got {tuple(pos.shape)}.")
    if not pos.is_floating_point():
        raise ValueError(f"pos must be a floating-point tensor, got dtype {pos.dtype}.")


def _graph_sizes(batch: Tensor | None, n: int, device: torch.device) -> list[int]:
    """Number of nodes of each consecutive graph (validates ``batch``)."""
    if batch is None:
        return [n]
    if not isinstance(batch, Tensor):
        raise ValueError(f"batch must be None or a torch.Tensor, got {type(batch).__name__}.")
    if batch.dim() != 1 or batch.size(0) != n:
        raise ValueError(
            f"batch must have shape ({n},) to match pos, got {tuple(batch.shape)}."
        )
    if batch.is_floating_point() or batch.is_complex() or batch.dtype == torch.bool:
        raise ValueError(f"batch must be an integer tensor, got dtype {batch.dtype}.")
    batch = batch.to(device)
    if n > 1 and bool((batch[1:] < batch[:-1]).any()):
        raise ValueError("batch must be sorted in ascending order (nodes of a graph contiguous).")
    return torch.unique_consecutive(batch, return_counts=True)[1].tolist()


# --------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------
def _squared_distances(xt: Tensor, xs: Tensor) -> Tensor:
    """``d2[f, r, j] = |xs[f, j] - xt[f, r]|**2`` from explicit differences.

    Each element goes through the same sequence of correctly rounded
    operations (no fused multiply-add), so the result does not depend on the
    block shape.
    """
    d2 = xt[..., 0:1] - xs[..., 0].unsqueeze(-2)
    d2.square_()
    for c in (1, 2):
        t = xt[..., c : c + 1] - xs[..., c].unsqueeze(-2)
        d2.add_(t.square_())
    return d2


def _keep_k_nearest(d2: Tensor, mask: Tensor, k: int) -> Tensor:
    """Restrict each row of ``mask`` to its ``k`` nearest entries (ties: lower column)."""
    over = mask.sum(dim=-1) > k
    if not bool(over.any()):
        return mask
    sub_mask = mask[over]  # (n_rows, m)
    # Sort only the candidates within the cutoff: row r's candidates, in column
    # order, go to the first slots of row r of a (n_rows, width) table padded
    # with +inf.
    rows, cols = sub_mask.nonzero(as_tuple=True)  # row-major: columns ascending
    counts = sub_mask.sum(dim=-1)
    slot = torch.arange(rows.numel(), device=rows.device) - (torch.cumsum(counts, 0) - counts)[rows]
    width = int(counts.max())
    candidates = d2.new_full((sub_mask.size(0), width), float("inf"))
    candidates[rows, slot] = d2[over][rows, cols]
    column = cols.new_zeros(sub_mask.size(0), width)
    column[rows, slot] = cols
    # A stable sort keeps equal distances in column order, so the first k
    # candidates are the k nearest with ties broken by the smaller index.
    order = torch.sort(candidates, dim=-1, stable=True).indices[:, :k]
    kept = torch.zeros_like(sub_mask).scatter_(1, column.gather(1, order), True)
    mask[over] = kept
    return mask


def _block_edges(
    xt: Tensor, xs: Tensor, row_start: int, c2: float, loop: bool, k: int | None
) -> Tensor:
    """Edges of one block as ``(n_edges, 3)`` rows ``(frame, target_row, source)``.

    ``xt`` is ``(F, R, 3)``: targets ``row_start .. row_start + R`` of ``F``
    graphs whose ``m`` nodes are ``xs`` (``(F, m, 3)``).
    """
    d2 = _squared_distances(xt, xs)  # (F, R, m)
    mask = d2 <= c2
    if not loop:
        mask.diagonal(offset=row_start, dim1=-2, dim2=-1).fill_(False)
    if k is not None and k < xs.size(1):
        mask = _keep_k_nearest(d2, mask, k)
    # nonzero is row-major: sorted by frame, then target, then source.
    return mask.nonzero()


def _single_graph(
    x: Tensor, offset: int, c2: float, loop: bool, k: int | None, max_pairs: int
) -> list[Tensor]:
    """Edges of one graph with nodes ``x`` (``(m, 3)``), blocked over target rows."""
    m = x.size(0)
    rows = max(1, max_pairs // m)
    xs = x.unsqueeze(0)
    pieces = []
    for r0 in range(0, m, rows):
        idx = _block_edges(xs[:, r0 : r0 + rows], xs, r0, c2, loop, k)
        pieces.append(torch.stack((idx[:, 2] + offset, idx[:, 1] + (r0 + offset))))
    return pieces


def _equal_graphs(
    x: Tensor, c2: float, loop: bool, k: int | None, max_pairs: int
) -> list[Tensor]:
    """Edges of ``G`` graphs of ``m`` nodes each, ``x`` of shape ``(G, m, 3)``."""
    n_graphs, m, _ = x.shape
    if m * m > max_pairs:
        return [
            piece
            for g in range(n_graphs)
            for piece in _single_graph(x[g], g * m, c2, loop, k, max_pairs)
        ]
    frames = max(1, max_pairs // (m * m))
    pieces = []
    for g0 in range(0, n_graphs, frames):
        xb = x[g0 : g0 + frames]
        idx = _block_edges(xb, xb, 0, c2, loop, k)
        base = (idx[:, 0] + g0) * m
        pieces.append(torch.stack((base + idx[:, 2], base + idx[:, 1])))
    return pieces


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------
def radius_graph(
    pos: Tensor,
    cutoff: float,
    batch: Tensor | None = None,
    *,
    loop: bool = True,
    max_num_neighbors: int | None = None,
    max_pairs_per_block: int = 2**22,
) -> Tensor:
    """Exact radius graph of point clouds, in pure torch.

    Parameters
    ----------
    pos : Tensor
        Node coordinates, shape ``(n, 3)``, floating point, finite. Any device.
    cutoff : float
        Radius (> 0). The cutoff is **inclusive**: a pair is an edge when
        ``|pos[j] - pos[i]|**2 <= cutoff**2``.
    batch : Tensor, optional
        Graph id of each node, integer, shape ``(n,)``, sorted ascending.
        ``None`` means a single graph.
    loop : bool, default True
        Include the self-loops ``(i, i)``.
    max_num_neighbors : int, optional
        If set to ``k``, each target keeps only its ``k`` nearest sources (a
        self-loop counts, at distance 0); ties go to the smaller source index.
    max_pairs_per_block : int, default 2**22
        Upper bound on the number of pair distances held in memory at once.
        A block always holds at least one full target row, so the effective
        bound is ``max(max_pairs_per_block, largest graph size)``.

    Returns
    -------
    edge_index : Tensor
        ``int64``, shape ``(2, n_edges)``, on ``pos.device``. Row 0 is the
        source (neighbour ``j``), row 1 the target (centre ``i``); global node
        indices. Edges are sorted by target, then by source.

    Raises
    ------
    ValueError
        On a malformed ``pos`` or ``batch``, an unsorted ``batch``, a
        non-positive ``cutoff`` or a ``max_num_neighbors`` below 1.

    Notes
    -----
    Squared distances are computed from explicit coordinate differences
    (not ``|a|^2 + |b|^2 - 2ab``), in the dtype of ``pos`` (float16 and
    bfloat16 are upcast to float32), and compared with ``cutoff**2`` rounded
    to that dtype. The search is brute force, O(m^2) per graph of ``m``
    nodes. When all graphs have the same size, whole graphs are processed
    together in vectorised blocks; otherwise graphs are handled one by one.
    The search is not differentiable (``pos`` is detached).

    Examples
    --------
    >>> import torch
    >>> from g2v_sklearn import radius_graph
    >>> pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    >>> radius_graph(pos, 1.0, loop=False)
    tensor([[1, 0],
            [0, 1]])
    """
    _check_pos(pos)
    c = _check_cutoff(cutoff)
    k = _check_positive_int(max_num_neighbors, "max_num_neighbors", allow_none=True)
    max_pairs = _check_positive_int(max_pairs_per_block, "max_pairs_per_block", allow_none=False)
    n = pos.size(0)
    sizes = _graph_sizes(batch, n, pos.device)
    if n == 0:
        return torch.empty((2, 0), dtype=torch.long, device=pos.device)

    x = pos.detach()
    if x.dtype in _LOW_PRECISION:
        x = x.float()
    if not bool(torch.isfinite(x).all()):
        raise ValueError("pos contains non-finite values (NaN or inf).")
    c2 = c * c

    if min(sizes) == max(sizes):
        m = sizes[0]
        pieces = _equal_graphs(x.reshape(len(sizes), m, 3), c2, loop, k, max_pairs)
    else:
        pieces = []
        offset = 0
        for m in sizes:
            pieces.extend(_single_graph(x[offset : offset + m], offset, c2, loop, k, max_pairs))
            offset += m
    if len(pieces) == 1:
        return pieces[0]
    return torch.cat(pieces, dim=1)


class RadiusDistance(torch.nn.Module):
    """Radius graph with edge lengths and vectors, for ViSNet.

    Drop-in replacement for ``torch_geometric.nn.models.visnet.Distance``
    that uses :func:`radius_graph` instead of ``torch-cluster``.

    Parameters
    ----------
    cutoff : float
        Inclusive neighbour radius (> 0).
    max_num_neighbors : int, optional
        Keep only the ``k`` nearest sources per target (ties: smaller index).
        ``None`` keeps all neighbours within ``cutoff``.
    add_self_loops : bool, default True
        Include the self-loops ``(i, i)``.

    Notes
    -----
    ``max_pairs_per_block`` (an attribute, default ``2**22``) bounds the
    memory of the neighbour search; see :func:`radius_graph`. Unlike PyG's
    ``Distance``, ``edge_weight`` has the dtype of ``pos``.

    Examples
    --------
    >>> import torch
    >>> from g2v_sklearn import RadiusDistance
    >>> dist = RadiusDistance(cutoff=1.5)
    >>> pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    >>> edge_index, edge_weight, edge_vec = dist(pos, torch.zeros(2, dtype=torch.long))
    >>> edge_weight
    tensor([0., 1., 1., 0.])
    """

    def __init__(
        self,
        cutoff: float,
        max_num_neighbors: int | None = None,
        add_self_loops: bool = True,
    ) -> None:
        super().__init__()
        self.cutoff = _check_cutoff(cutoff)
        self.max_num_neighbors = _check_positive_int(
            max_num_neighbors, "max_num_neighbors", allow_none=True
        )
        self.add_self_loops = bool(add_self_loops)
        self.max_pairs_per_block = 2**22

    def forward(self, pos: Tensor, batch: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Neighbour edges of ``pos``.

        Parameters
        ----------
        pos : Tensor
            Coordinates, shape ``(n, 3)``.
        batch : Tensor
            Sorted graph id of each node, shape ``(n,)`` (``None`` means one graph).

        Returns
        -------
        edge_index : Tensor
            ``(2, n_edges)``, row 0 = source ``j``, row 1 = target ``i``.
        edge_weight : Tensor
            ``(n_edges,)`` edge lengths, exactly 0 on self-loops; dtype of ``pos``.
        edge_vec : Tensor
            ``(n_edges, 3)``, ``pos[j] - pos[i]``.
        """
        edge_index = radius_graph(
            pos,
            self.cutoff,
            batch,
            loop=self.add_self_loops,
            max_num_neighbors=self.max_num_neighbors,
            max_pairs_per_block=self.max_pairs_per_block,
        )
        edge_vec = pos[edge_index[0]] - pos[edge_index[1]]
        if self.add_self_loops:
            # The norm's gradient is NaN at zero length: leave self-loops out of it.
            mask = edge_index[0] != edge_index[1]
            edge_weight = edge_vec.new_zeros(edge_vec.size(0))
            edge_weight[mask] = torch.linalg.vector_norm(edge_vec[mask], dim=-1)
        else:
            edge_weight = torch.linalg.vector_norm(edge_vec, dim=-1)
        return edge_index, edge_weight, edge_vec

    def extra_repr(self) -> str:
        return (
            f"cutoff={self.cutoff}, max_num_neighbors={self.max_num_neighbors}, "
            f"add_self_loops={self.add_self_loops}"
        )
