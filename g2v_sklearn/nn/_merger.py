"""The token-merging module (TMM) as torch modules: residue tokens -> fragment tokens.

A fragment-graph convolution on the residue graph, a merging MLP over
windows of ``window`` consecutive residues, and a sinusoidal positional
encoding over fragment index. The scikit-learn step that sets it up is
:class:`g2v_sklearn.TokenMerger`; the learner after it builds this module from
the step's :class:`~g2v_sklearn.MergeSpec` and trains it end to end.

Of the token merger's three files (one per layer) this is the second: a
merge is described in ``tokens/_merge_spec.py`` and set up by the step in
``learners/_merger.py``.

Equivariance is kept exactly: the vector rows only pass through bias-free
linear maps over channels (shared by x, y and z) and are multiplied by gates
computed from invariants; nonlinearities, biases, norms and the positional
encoding touch the scalar row only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..backbones._neighbors import radius_graph
from ..tokens._merge_spec import MergeSpec

__all__ = [
    "FRAGMENT_CONVS",
    "GraphConv",
    "ResGatedGraphConv",
    "TokenMergerModule",
    "VectorLinear",
    "reset_children",
    "sinusoidal_encoding",
]


def reset_children(module: nn.Module) -> None:
    """Re-draw the parameters of every child of ``module``, in the order they were made.

    A child with ``reset_parameters()`` (every torch layer with parameters
    has one, and so does every module of this package) resets itself;
    containers such as ``nn.Sequential`` are walked into. Under the same
    torch seed, a reset module equals a freshly built one.
    """
    for child in module.children():
        if hasattr(child, "reset_parameters"):
            child.reset_parameters()
        else:
            reset_children(child)


def sinusoidal_encoding(n_positions: int, channels: int, *, device=None, dtype=None) -> Tensor:
    """Sinusoidal positional encoding of shape (n_positions, channels).

    .. math::
        PE_{p, 2i} = \\sin(p / 10000^{2i/C}), \\quad PE_{p, 2i+1} = \\cos(p / 10000^{2i/C})
    """
    position = torch.arange(n_positions, device=device, dtype=torch.float32).unsqueeze(1)
    half = torch.arange(0, channels, 2, device=device, dtype=torch.float32)
    angle = position / torch.pow(10000.0, half / channels)
    encoding = torch.zeros(n_positions, channels, device=device)
    encoding[:, 0::2] = torch.sin(angle)
    encoding[:, 1::2] = torch.cos(angle[:, : channels // 2])
    return encoding.to(dtype or torch.float32)


class VectorLinear(nn.Module):
    """Bias-free linear map over channels, shared by the x, y and z rows."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_channels, out_channels, bias=False)

    def reset_parameters(self) -> None:
        self.linear.reset_parameters()

    def forward(self, vec: Tensor) -> Tensor:  # (..., 3, C_in) -> (..., 3, C_out)
        return self.linear(vec)


def _neighbour_sum(values: Tensor, edge_index: Tensor) -> Tensor:
    """Sum the values of each node's neighbours: out[i] = sum of values[j] over edges j -> i.

    ``edge_index`` is either a (2, n_edges) edge list, summed by a sparse
    adjacency product (no per-edge copy of ``values`` is made or kept for
    the backward pass: memory stays O(nodes), not O(edges)), or a dense
    (n_frames, n, n) adjacency of small graphs, summed by a batched product.
    """
    if edge_index.dim() == 3:
        b, m, _ = edge_index.shape
        flat = values.reshape(b, m, -1)
        return torch.bmm(edge_index.to(flat.dtype), flat).reshape(values.shape)
    n = values.shape[0]
    flat = values.reshape(n, -1)
    source, target = edge_index
    adjacency = torch.sparse_coo_tensor(
        torch.stack([target, source]), torch.ones_like(source, dtype=flat.dtype), (n, n),
        check_invariants=False,  # indices come from radius_graph: valid by construction
    )
    return torch.sparse.mm(adjacency, flat).reshape(values.shape)


class GraphConv(nn.Module):
    """Root + neighbour-sum convolution, equivariant.

    Scalars: :math:`s_i' = \\mathrm{SiLU}(\\mathrm{LN}(W_r s_i + W_n \\sum_j s_j + b))`;
    vectors: :math:`v_i' = \\sigma(g(s_i')) \\odot (U_r v_i + U_n \\sum_j v_j)`,
    both added residually.
    """

    def __init__(self, channels: int, cutoff: float | None = None) -> None:
        super().__init__()
        self.root = nn.Linear(channels, channels)
        self.neighbour = nn.Linear(channels, channels, bias=False)
        self.norm = nn.LayerNorm(channels)
        self.vec_root = VectorLinear(channels, channels)
        self.vec_neighbour = VectorLinear(channels, channels)
        self.gate = nn.Linear(channels, channels)

    def reset_parameters(self) -> None:
        reset_children(self)

    def forward(self, s: Tensor, v: Tensor, edge_index: Tensor, edge_length: Tensor):
        s_new = nn.functional.silu(self.norm(self.root(s) + self.neighbour(_neighbour_sum(s, edge_index))))
        v_new = self.vec_root(v) + self.vec_neighbour(_neighbour_sum(v, edge_index))
        v_new = v_new * torch.sigmoid(self.gate(s_new)).unsqueeze(-2)
        return s + s_new, v + v_new


class ResGatedGraphConv(nn.Module):
    """Residual gated graph convolution ("RGGC") with gates from invariants.

    Edge gates :math:`\\eta_{ij} = \\sigma(A s_i + B s_j + C\\,\\rho(d_{ij}))` (with
    :math:`\\rho` a Gaussian expansion of the residue distance) weight both the
    scalar messages :math:`V s_j` and the vector messages :math:`U v_j`.
    """

    def __init__(self, channels: int, cutoff: float, n_rbf: int = 16) -> None:
        super().__init__()
        self.register_buffer("centers", torch.linspace(0.0, cutoff, n_rbf))
        self.width = cutoff / n_rbf
        self.gate_target = nn.Linear(channels, channels)
        self.gate_source = nn.Linear(channels, channels, bias=False)
        self.gate_edge = nn.Linear(n_rbf, channels, bias=False)
        self.root = nn.Linear(channels, channels)
        self.message = nn.Linear(channels, channels, bias=False)
        self.norm = nn.LayerNorm(channels)
        self.vec_root = VectorLinear(channels, channels)
        self.vec_message = VectorLinear(channels, channels)
        self.vec_gate = nn.Linear(channels, channels)

    def reset_parameters(self) -> None:
        reset_children(self)

    def forward(self, s: Tensor, v: Tensor, edge_index: Tensor, edge_length: Tensor):
        source, target = edge_index
        rbf = torch.exp(-(((edge_length.unsqueeze(-1) - self.centers) / self.width) ** 2))
        eta = torch.sigmoid(
            self.gate_target(s)[target] + self.gate_source(s)[source] + self.gate_edge(rbf)
        )
        scalar_messages = torch.zeros_like(s).index_add_(0, target, eta * self.message(s)[source])
        s_new = nn.functional.silu(self.norm(self.root(s) + scalar_messages))
        vec_messages = self.vec_message(v)[source] * eta.unsqueeze(-2)
        v_new = self.vec_root(v) + torch.zeros_like(v).index_add_(0, target, vec_messages)
        v_new = v_new * torch.sigmoid(self.vec_gate(s_new)).unsqueeze(-2)
        return s + s_new, v + v_new


class _NoConv(nn.Module):
    """Identity: no fragment-graph convolution."""

    def __init__(self, channels: int | None = None, cutoff: float | None = None) -> None:
        super().__init__()

    def reset_parameters(self) -> None:
        pass  # no parameters

    def forward(self, s, v, edge_index, edge_length):
        return s, v


FRAGMENT_CONVS = {"graphconv": GraphConv, "rggc": ResGatedGraphConv, "none": _NoConv}
"""Registry of fragment-graph convolutions by name (``TokenMerger(operator=...)``)."""


def _as_tokens(s: Tensor, v: Tensor) -> Tensor:
    """Scalars (B, F, C) and vectors (B, F, 3, C) as tokens (B, F, 4, C): the scalar row first."""
    return torch.cat([s.unsqueeze(2), v], dim=2)


_DENSE_GRAPH_MAX_RESIDUES = 32  # up to here the residue graph is a dense adjacency (measured faster)


class TokenMergerModule(nn.Module):
    """Residue tokens (B, N, 4, H) and positions (B, N, 3) -> fragment tokens (B, F, 4, C).

    Parameters
    ----------
    spec : MergeSpec
    """

    def __init__(self, spec: MergeSpec) -> None:
        super().__init__()
        self.spec = spec
        h, c, w = spec.in_channels, spec.hidden_channels, spec.window
        self.embed = nn.Linear(h, c)
        self.vec_embed = VectorLinear(h, c)
        self.conv = FRAGMENT_CONVS[spec.operator](c, spec.cutoff)
        self.merge = nn.Sequential(nn.Linear(w * c, c), nn.SiLU(), nn.Linear(c, c))
        self.vec_merge = VectorLinear(w * c, c)
        self.vec_gate = nn.Linear(c, c)
        self.norm = nn.LayerNorm(c)
        pe = sinusoidal_encoding(spec.n_fragments, c)
        self.register_buffer("pe", pe if spec.positional_encoding else torch.zeros_like(pe),
                             persistent=False)
        mask = torch.zeros(spec.n_fragments * w, dtype=torch.bool)
        mask[: spec.n_residues] = True
        self.register_buffer("valid", mask, persistent=False)

    def reset_parameters(self) -> None:
        reset_children(self)

    def graph(self, positions: Tensor) -> tuple[Tensor, Tensor | None]:
        """Residue graph of every frame: edges within the cutoff (inclusive), no self-loops.

        (edge_index, edge lengths) of all frames; for small systems under the
        root + neighbour-sum convolution, which needs no edge lengths, a dense
        (n_frames, n, n) adjacency and None instead (the same graph, without
        the overhead of a neighbour search and sparse products on a few nodes).
        """
        b, n, _ = positions.shape
        if n <= _DENSE_GRAPH_MAX_RESIDUES and self.spec.operator == "graphconv":
            flat = positions.float()
            d2 = ((flat[:, :, None] - flat[:, None, :]) ** 2).sum(-1)
            near = d2 <= self.spec.cutoff ** 2
            near &= ~torch.eye(n, dtype=torch.bool, device=positions.device)
            return near, None
        flat = positions.reshape(-1, 3).float()
        batch = torch.arange(b, device=positions.device).repeat_interleave(n)
        edge_index = radius_graph(flat, self.spec.cutoff, batch, loop=False)
        length = (flat[edge_index[0]] - flat[edge_index[1]]).norm(dim=-1)
        return edge_index, length

    #: Frames per activation-checkpointed chunk while training (None: no checkpointing).
    #: Residue-level activations are then recomputed chunk by chunk in the backward
    #: pass instead of being kept for the whole batch, so training memory is set by
    #: the fragment tokens, not the residues. Off by default; the learners set it when
    #: a batch would exceed their memory budget.
    checkpoint_frames: int | None = None

    def forward(self, features: Tensor, positions: Tensor) -> Tensor:
        """Fragment tokens (B, F, 4, C): the scalar row, then the x, y, z rows."""
        return _as_tokens(*self.fragments(features, positions))

    def fragments(self, features: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Fragment scalars (B, F, C) and vectors (B, F, 3, C), as two tensors (what the
        learners' lobes read: no concatenation into one token tensor and slicing back)."""
        chunk = self.checkpoint_frames
        if chunk is None or not torch.is_grad_enabled():
            return self._forward(features, positions)
        if chunk >= len(features):  # one chunk: no Python loop, no concatenation
            return checkpoint(self._forward, features, positions, use_reentrant=False)
        parts = [
            checkpoint(self._forward, features[i:i + chunk], positions[i:i + chunk], use_reentrant=False)
            for i in range(0, len(features), chunk)
        ]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def _forward(self, features: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        b, n, _, _ = features.shape
        s = self.embed(features[:, :, 0])
        v = self.vec_embed(features[:, :, 1:])
        if self.spec.operator != "none":
            edge_index, length = self.graph(positions)
            c = s.shape[-1]
            length = None if length is None else length.to(s.dtype)
            s, v = self.conv(s.reshape(b * n, c), v.reshape(b * n, 3, c), edge_index, length)
            s, v = s.reshape(b, n, c), v.reshape(b, n, 3, c)
        return self._merge_parts(s, v)

    def merge_windows(self, s: Tensor, v: Tensor) -> Tensor:
        """Merge windows of ``window`` residues into fragment tokens (B, F, 4, C).

        ``s`` (B, n, C) and ``v`` (B, n, 3, C) hold the residues, possibly
        followed by padding up to ``n_fragments * window``: whatever is
        beyond the last residue is masked out, never mixed in.
        """
        return _as_tokens(*self._merge_parts(s, v))

    def _merge_parts(self, s: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        spec = self.spec
        b, n, c = s.shape
        pad = spec.n_fragments * spec.window - n
        if pad > 0:  # zeros: nothing to mask
            s = torch.cat([s, s.new_zeros(b, pad, c)], dim=1)
            v = torch.cat([v, v.new_zeros(b, pad, 3, c)], dim=1)
        if n > spec.n_residues:  # the caller's padding, whatever it holds, is masked out
            valid = self.valid.view(1, -1, 1)
            s = torch.where(valid, s, torch.zeros((), dtype=s.dtype, device=s.device))
            v = torch.where(valid.unsqueeze(-1), v, torch.zeros((), dtype=v.dtype, device=v.device))
        f, w = spec.n_fragments, spec.window
        s = s.reshape(b, f, w * c)
        if w > 1:  # each fragment's x, y, z rows: its residues' channels side by side
            v = v.reshape(b, f, w, 3, c).transpose(2, 3).reshape(b, f, 3, w * c)
        s_frag = self.norm(self.merge(s)) + self.pe.to(s.dtype)
        v_frag = self.vec_merge(v) * torch.sigmoid(self.vec_gate(s_frag)).unsqueeze(-2)
        return s_frag, v_frag
