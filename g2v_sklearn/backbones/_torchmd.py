"""TorchMD-Net's equivariant transformer ("ET") and TensorNet, on a padded neighbour table.

geom2vec ships pretrained ET and TensorNet backbones next to its ViSNet one
(``et_l6_h64_rbf64_r75.pth``, ``tensornet_l3_h64_rbf32_r5.pth``). Their home is
torchmd-net, which we do not depend on: torchmd-net 3.1 installs from PyPI
with torch 2.13 on a CPU, but pulls in Lightning, ASE, h5py and warp-lang (whose
kernels it compiles into a user cache on first use), and its TensorNet returns
no vector features at all, while geom2vec's copy of it adds them. So the two
forward passes are written here, as ViSNet's is in :mod:`._padded_visnet`:
on a table ``neighbors`` of shape (n_atoms, K) whose row ``i`` lists the
atoms within the cutoff of atom ``i`` (itself included), padded and masked,
so that sums over neighbours are sums over ``K`` and per-atom projections are
computed once per atom, not once per edge. Parameter names are geom2vec's,
so its ``representation_model.*`` weights load one to one with strict keys.

The functions are those of geom2vec's modules (``tests/embedding/
test_backbones.py`` compares them with geom2vec's own code to 1e-5), as
geom2vec builds them: SiLU activations, exponential-normal radial basis
functions with a cosine cutoff (lower cutoff 0), no neighbour embedding and no
vector layer norm in ET, the O(3) interaction without charges in TensorNet.

Tokens need per-atom scalars and vectors, shape (n_atoms, H) and
(n_atoms, 3, H). ET has both. TensorNet's features are 3 x 3 tensors per
channel; as geom2vec does, its scalars are the network's own scalar output
(the norms of the tensor's isotropic, antisymmetric and symmetric-traceless
parts, normalised, through a linear layer and SiLU), and its vectors are the
three independent entries ``(A[1, 2], A[2, 0], A[0, 1])`` of the antisymmetric
part ``A``: for ``A = skew(a)`` that is ``-a``, a vector under rotations (a
pseudovector under reflections, as TensorNet's O(3) design makes it).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ._neighbors import RadiusDistance
from ._padded_visnet import _by_blocks, _gather, padded_forward

__all__ = ["EquivariantTransformer", "TensorNet"]


def cosine_cutoff(r: Tensor, cutoff: float) -> Tensor:
    """``0.5 (cos(pi r / cutoff) + 1)`` below the cutoff, 0 from it on."""
    return 0.5 * (torch.cos(r * (math.pi / cutoff)) + 1.0) * (r < cutoff).to(r.dtype)


class ExpNormalRBF(nn.Module):
    """Exponential-normal radial basis (PhysNet's), times a cosine cutoff.

    ``means`` and ``betas`` are buffers under the names geom2vec's files use
    (its checkpoints were trained with them frozen).
    """

    def __init__(self, cutoff: float, num_rbf: int) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.alpha = 5.0 / self.cutoff
        start = math.exp(-self.cutoff)
        self.register_buffer("means", torch.linspace(start, 1.0, num_rbf))
        self.register_buffer("betas", torch.full((num_rbf,), (2.0 / num_rbf * (1.0 - start)) ** -2))

    def forward(self, r: Tensor) -> Tensor:
        dist = r.unsqueeze(-1)
        # the exponent is clamped far below rounding (see _padded_visnet._smearing): exp of
        # arguments near the smallest normal number takes a slow path on CPUs
        floor = math.log(torch.finfo(dist.dtype).tiny) + 8.0
        exponent = -self.betas * ((-self.alpha * dist).exp() - self.means).square()
        return cosine_cutoff(dist, self.cutoff) * exponent.clamp_min(floor).exp()


def _edges(pos: Tensor, neighbors: Tensor, valid: Tensor, cutoff: float) -> tuple[Tensor, Tensor, Tensor]:
    """Lengths of the neighbour vectors ``pos_j - pos_i``, their unit vectors (0 on
    self-loops and padding) and the cutoff weights (0 on padding)."""
    vec = _gather(pos, neighbors) - pos.unsqueeze(1)  # (n, K, 3)
    r = torch.linalg.vector_norm(vec, dim=-1)
    unit = vec / r.clamp_min(torch.finfo(r.dtype).tiny).unsqueeze(-1)
    return r, unit, cosine_cutoff(r, cutoff) * valid.to(pos.dtype)


class _PaddedBackbone(nn.Module):
    """``forward(z, pos, batch)``: the neighbour search, then :meth:`table_forward`.

    Holds what both networks share: the width, the cutoff, the neighbour search
    (self pairs included; ``max_num_neighbors`` nearest, or all within the
    cutoff when None) and the radial basis.
    """

    def __init__(self, hidden_channels: int, num_rbf: int, cutoff: float,
                 max_num_neighbors: int | None) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.cutoff = float(cutoff)
        self.distance = RadiusDistance(cutoff, max_num_neighbors=max_num_neighbors, add_self_loops=True)
        self.distance_expansion = ExpNormalRBF(cutoff, num_rbf)

    def forward(self, z: Tensor, pos: Tensor, batch: Tensor) -> tuple[Tensor, Tensor]:
        return padded_forward(self, z, pos, batch)


# ---------------------------------------------------------------------------------------
# the equivariant transformer
# ---------------------------------------------------------------------------------------
class _AttentionLayer(nn.Module):
    def __init__(self, hidden: int, num_rbf: int, num_heads: int) -> None:
        super().__init__()
        if hidden % num_heads:
            raise ValueError(f"hidden_channels={hidden} is not divisible by num_heads={num_heads}.")
        self.hidden_channels, self.num_heads = hidden, num_heads
        self.layernorm = nn.LayerNorm(hidden)
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_proj = nn.Linear(hidden, 3 * hidden)
        self.o_proj = nn.Linear(hidden, 3 * hidden)
        self.vec_proj = nn.Linear(hidden, 3 * hidden, bias=False)
        self.dk_proj = nn.Linear(num_rbf, hidden)
        self.dv_proj = nn.Linear(num_rbf, 3 * hidden)


class EquivariantTransformer(_PaddedBackbone):
    """TorchMD-Net's equivariant transformer with geom2vec's settings.

    Parameters: ``hidden_channels``, ``num_layers``, ``num_rbf``, ``cutoff``
    (Angstrom), ``num_heads``, ``max_z`` (the embedding table's size) and
    ``max_num_neighbors`` (see :class:`_PaddedBackbone`).
    """

    #: torch.compile made this pass slower on a CPU, not faster (benchmarks/bench_compile.py,
    #: ADK on a 2-core AVX-512 EPYC: 0.33 s against 0.29 s a frame at 32 neighbours, 0.93
    #: against 0.61 uncapped), so ``compile="auto"`` leaves it eager
    compiles_faster = False
    #: Edges per block of the eager pass: blocks of 2,048-4,096 ran an ADK frame in
    #: 0.18-0.21 s against 0.22-0.24 s at the ViSNet pass's 8,192 (2-core AVX-512 EPYC,
    #: 32 neighbours; noisy, but in that order in two alternating runs)
    edges_per_chunk = 4096

    def __init__(self, hidden_channels=64, num_layers=6, num_rbf=64, cutoff=7.5, num_heads=8,
                 max_z=100, max_num_neighbors=None) -> None:
        super().__init__(hidden_channels, num_rbf, cutoff, max_num_neighbors)
        self.num_heads = num_heads
        self.embedding = nn.Embedding(max_z, hidden_channels)
        self.attention_layers = nn.ModuleList(
            _AttentionLayer(hidden_channels, num_rbf, num_heads) for _ in range(num_layers))
        self.out_norm = nn.LayerNorm(hidden_channels)

    def table_forward(self, z: Tensor, pos: Tensor, neighbors: Tensor, valid: Tensor,
                      rows_per_chunk: int | None = None) -> tuple[Tensor, Tensor]:
        return et_table_forward(self, z, pos, neighbors, valid, rows_per_chunk)


def et_table_forward(block: EquivariantTransformer, z: Tensor, pos: Tensor, neighbors: Tensor,
                     valid: Tensor, rows_per_chunk: int | None = None) -> tuple[Tensor, Tensor]:
    """Atom scalars (n, H) and vectors (n, 3, H) of ``block`` on a padded neighbour table."""
    n = pos.size(0)
    r, unit, cut = _edges(pos, neighbors, valid, block.cutoff)
    rbf = _by_blocks(lambda rows: block.distance_expansion(r[rows]), n, rows_per_chunk)
    mask = valid.to(pos.dtype).unsqueeze(-1)
    x = block.embedding(z)
    vec = x.new_zeros(n, 3, x.size(1))
    for layer in block.attention_layers:
        dx, dvec = _attention(layer, x, vec, rbf, neighbors, cut, mask, unit, rows_per_chunk)
        x = x + dx
        vec = vec + dvec
    return block.out_norm(x), vec


def _imul(a: Tensor, b: Tensor) -> Tensor:
    """``a * b``, in place into ``a`` when no gradient flows (embedding; not pretraining)."""
    return a * b if a.requires_grad or b.requires_grad else a.mul_(b)


def _by_part(linear: nn.Linear, heads: int) -> tuple[Tensor, Tensor]:
    """``linear``'s weight and bias with output rows reordered from (head, part, channel)
    to (part, head, channel): its three parts are then contiguous blocks of ``H`` outputs."""
    out = linear.out_features
    order = torch.arange(out, device=linear.weight.device).view(heads, 3, -1).transpose(0, 1).reshape(-1)
    return linear.weight[order], linear.bias[order]


def _attention(layer: _AttentionLayer, x, vec, rbf, neighbors, cut, mask, unit, rows_per_chunk):
    hidden, heads = layer.hidden_channels, layer.num_heads
    x = layer.layernorm(x)
    q, k = layer.q_proj(x), layer.k_proj(x)
    # values: per head, three slices of hidden / heads (scalar, vector gate, direction gate);
    # reordered as three blocks of H, one per part, so that each part is contiguous
    v = F.linear(x, *_by_part(layer.v_proj, heads))
    dv_weight, dv_bias = _by_part(layer.dv_proj, heads)
    # the keys' and the values' distance filters in one product
    filter_weight = torch.cat([layer.dk_proj.weight, dv_weight])
    filter_bias = torch.cat([layer.dk_proj.bias, dv_bias])
    vec1, vec2, vec3 = torch.split(layer.vec_proj(vec), hidden, dim=-1)

    def messages(rows):
        nb = neighbors[rows]
        m, width = nb.shape
        filters = F.silu(F.linear(rbf[rows], filter_weight, filter_bias))  # (m, K, 4H)
        dk, dv = filters[..., :hidden], filters[..., hidden:]
        score = _imul(_imul(_gather(k, nb), dk).view(m, width, heads, -1),
                      q[rows].view(m, 1, heads, -1)).sum(-1)
        attn = _imul(F.silu(score), cut[rows].unsqueeze(-1))  # (m, K, heads)
        values = _imul(_gather(v, nb), dv)  # (m, K, 3H): scalar | gate | along
        x_in = (values[..., :hidden].view(m, width, heads, -1) * attn.unsqueeze(-1)).sum(1)
        values = _imul(values, mask[rows])
        vec_in = _imul(_gather(vec, nb), values[..., hidden:2 * hidden].unsqueeze(2)).sum(1)
        vec_in = torch.baddbmm(vec_in, unit[rows].transpose(1, 2),
                               values[..., 2 * hidden:])
        return x_in.reshape(m, hidden), vec_in

    x_in, vec_in = _by_blocks(messages, neighbors.size(0), rows_per_chunk)
    o1, o2, o3 = torch.split(layer.o_proj(x_in), hidden, dim=1)
    dx = (vec1 * vec2).sum(1) * o2 + o3
    dvec = vec3 * o1.unsqueeze(1) + vec_in
    return dx, dvec


# ---------------------------------------------------------------------------------------
# TensorNet
# ---------------------------------------------------------------------------------------
class _TensorEmbedding(nn.Module):
    def __init__(self, hidden: int, num_rbf: int, max_z: int) -> None:
        super().__init__()
        self.distance_proj1 = nn.Linear(num_rbf, hidden)
        self.distance_proj2 = nn.Linear(num_rbf, hidden)
        self.distance_proj3 = nn.Linear(num_rbf, hidden)
        self.emb = nn.Embedding(max_z, hidden)
        self.emb2 = nn.Linear(2 * hidden, hidden)
        self.linears_tensor = nn.ModuleList(nn.Linear(hidden, hidden, bias=False) for _ in range(3))
        self.linears_scalar = nn.ModuleList([nn.Linear(hidden, 2 * hidden), nn.Linear(2 * hidden, 3 * hidden)])
        self.init_norm = nn.LayerNorm(hidden)


class _Interaction(nn.Module):
    def __init__(self, hidden: int, num_rbf: int) -> None:
        super().__init__()
        self.linears_scalar = nn.ModuleList(
            [nn.Linear(num_rbf, hidden), nn.Linear(hidden, 2 * hidden), nn.Linear(2 * hidden, 3 * hidden)])
        self.linears_tensor = nn.ModuleList(nn.Linear(hidden, hidden, bias=False) for _ in range(6))


class TensorNet(_PaddedBackbone):
    """TensorNet (O(3), no charges) with geom2vec's vector output.

    Its messages are summed at the source of each edge of the radius graph:
    under a neighbour cap, atom ``i`` hears from the atoms that keep ``i``
    among their nearest (:attr:`aggregates_at_source`), as in geom2vec.

    Parameters: ``hidden_channels``, ``num_layers``, ``num_rbf``, ``cutoff``
    (Angstrom), ``max_z`` (the embedding table's size) and ``max_num_neighbors``
    (see :class:`_PaddedBackbone`).
    """

    aggregates_at_source = True
    #: Edges per block of the eager pass: each edge carries 10 numbers per channel, and
    #: blocks of 1,024 (2.6 MB at H = 64) ran 0.27-0.29 s an ADK frame against 0.36-0.40 s
    #: at the ViSNet pass's 8,192 (2-core AVX-512 EPYC, 32 neighbours)
    edges_per_chunk = 1024

    def __init__(self, hidden_channels=64, num_layers=3, num_rbf=32, cutoff=5.0, max_z=128,
                 max_num_neighbors=None) -> None:
        super().__init__(hidden_channels, num_rbf, cutoff, max_num_neighbors)
        self.tensor_embedding = _TensorEmbedding(hidden_channels, num_rbf, max_z)
        self.layers = nn.ModuleList(_Interaction(hidden_channels, num_rbf) for _ in range(num_layers))
        self.linear = nn.Linear(3 * hidden_channels, hidden_channels)
        self.out_norm = nn.LayerNorm(3 * hidden_channels)

    def table_forward(self, z: Tensor, pos: Tensor, neighbors: Tensor, valid: Tensor,
                      rows_per_chunk: int | None = None) -> tuple[Tensor, Tensor]:
        return tensornet_table_forward(self, z, pos, neighbors, valid, rows_per_chunk)


# Tensors are (n, 3, 3, H): a 3 x 3 matrix per channel, channels last so that the
# channel-mixing linear maps act on the last axis.
def _eye_like(t: Tensor) -> Tensor:
    return torch.eye(3, dtype=t.dtype, device=t.device).view(1, 3, 3, 1)


def _skew(a: Tensor) -> Tensor:
    """(n, 3, H) vectors to (n, 3, 3, H) antisymmetric matrices ``[a]_x``."""
    a0, a1, a2 = a.unbind(1)
    zero = torch.zeros_like(a0)
    return torch.stack([zero, -a2, a1, a2, zero, -a0, -a1, a0, zero], dim=1).view(
        a.size(0), 3, 3, a.size(-1))


def _norm2(t: Tensor) -> Tensor:
    """Squared Frobenius norm over the 3 x 3 axes: (n, 3, 3, H) to (n, H)."""
    return t.square().sum((1, 2))


def _decompose(t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Isotropic part's scalar (n, H), antisymmetric part's axial vector (n, 3, H) and
    symmetric traceless part (n, 3, 3, H): ``t = s I + [a]_x + S``."""
    s = t.diagonal(dim1=1, dim2=2).mean(-1)  # (n, H)
    transposed = t.transpose(1, 2)
    a = 0.5 * torch.stack([t[:, 2, 1] - t[:, 1, 2], t[:, 0, 2] - t[:, 2, 0], t[:, 1, 0] - t[:, 0, 1]], 1)
    sym = 0.5 * (t + transposed) - s.unsqueeze(1).unsqueeze(1) * _eye_like(t)
    return s, a, sym


def _compose(s: Tensor, a: Tensor, sym: Tensor) -> Tensor:
    return s.unsqueeze(1).unsqueeze(1) * _eye_like(sym) + _skew(a) + sym


def _matmul(a: Tensor, b: Tensor) -> Tensor:
    """Per-channel 3 x 3 matrix product of (n, 3, 3, H) tensors."""
    return (a.unsqueeze(3) * b.unsqueeze(1)).sum(2)


def tensornet_table_forward(block: TensorNet, z: Tensor, pos: Tensor, neighbors: Tensor,
                            valid: Tensor, rows_per_chunk: int | None = None) -> tuple[Tensor, Tensor]:
    """Atom scalars (n, H) and vectors (n, 3, H) of ``block`` on a padded neighbour table."""
    n = pos.size(0)
    hidden = block.hidden_channels
    # TensorNet's edge vectors point from the neighbour to the atom: pos_i - pos_j
    r, unit, cut = _edges(pos, neighbors, valid, block.cutoff)
    unit = -unit
    rbf = _by_blocks(lambda rows: block.distance_expansion(r[rows]), n, rows_per_chunk)
    x_tensor = _embed_tensors(block.tensor_embedding, z, rbf, neighbors, cut, unit, rows_per_chunk)
    for layer in block.layers:
        x_tensor = _interact(layer, x_tensor, rbf, neighbors, cut, hidden, rows_per_chunk)
    s, a, sym = _decompose(x_tensor)
    norms = torch.cat([3.0 * s.square(), 2.0 * a.square().sum(1), _norm2(sym)], dim=-1)
    x = F.silu(block.linear(block.out_norm(norms)))
    # geom2vec's vectors: (A[1, 2], A[2, 0], A[0, 1]) of A = [a]_x, which is -a
    return x, -a


def _embed_tensors(emb: _TensorEmbedding, z, rbf, neighbors, cut, unit, rows_per_chunk) -> Tensor:
    hidden = emb.emb.embedding_dim
    atom = emb.emb(z)
    # emb2 of [Z_i, Z_j] as two per-atom halves
    own = F.linear(atom, emb.emb2.weight[:, :hidden], emb.emb2.bias)
    other = F.linear(atom, emb.emb2.weight[:, hidden:])

    def sums(rows):
        nb = neighbors[rows]
        m, width = nb.shape
        pair = (own[rows].unsqueeze(1) + _gather(other, nb)) * cut[rows].unsqueeze(-1)  # (m, K, H)
        f = rbf[rows]
        w_iso = emb.distance_proj1(f) * pair
        w_anti = emb.distance_proj2(f) * pair
        w_sym = emb.distance_proj3(f) * pair
        u = unit[rows]  # (m, K, 3)
        s = w_iso.sum(1)
        a = torch.bmm(u.transpose(1, 2), w_anti)  # (m, 3, H)
        outer = (u.unsqueeze(-1) * u.unsqueeze(-2)).view(m, width, 9)
        sym = torch.bmm(outer.transpose(1, 2), w_sym).view(m, 3, 3, -1)
        trace = torch.bmm(u.square().sum(-1).unsqueeze(1), w_sym) / 3.0  # (m, 1, H)
        sym = sym - trace.unsqueeze(1) * _eye_like(sym)
        return s, a, sym

    s, a, sym = _by_blocks(sums, neighbors.size(0), rows_per_chunk)
    norm = emb.init_norm(_norm2(_compose(s, a, sym)))
    for linear in emb.linears_scalar:
        norm = F.silu(linear(norm))
    norm = norm.view(-1, hidden, 3)  # channel h's three gates are entries 3h, 3h + 1, 3h + 2
    iso, anti, symm = emb.linears_tensor
    return _compose(iso(s) * norm[..., 0], anti(a) * norm[..., 1].unsqueeze(1),
                    symm(sym) * norm[..., 2].unsqueeze(1).unsqueeze(1))


# the six entries of a symmetric matrix's upper triangle, and where each 3 x 3 entry is among them
_UPPER_ROWS, _UPPER_COLS = (0, 0, 0, 1, 1, 2), (0, 1, 2, 1, 2, 2)
_FROM_UPPER = (0, 1, 2, 1, 3, 4, 2, 4, 5)


def _interact(layer: _Interaction, x_tensor, rbf, neighbors, cut, hidden, rows_per_chunk) -> Tensor:
    lin = layer.linears_tensor
    x_tensor = x_tensor / (_norm2(x_tensor) + 1.0).unsqueeze(1).unsqueeze(1)
    s, a, sym = _decompose(x_tensor)
    s, a, sym = lin[0](s), lin[1](a), lin[2](sym)
    y = _compose(s, a, sym)
    # what a neighbour sends, per channel: s, a (3) and sym's upper triangle (6), one gather
    table = torch.cat([s.unsqueeze(1), a, sym[:, _UPPER_ROWS, _UPPER_COLS]], dim=1)  # (n, 10, H)
    # the last filter layer's outputs reordered from (channel, part) to (part, channel)
    last = layer.linears_scalar[2]
    order = torch.arange(3 * hidden, device=last.weight.device).view(hidden, 3).t().reshape(-1)
    last_weight, last_bias = last.weight[order], last.bias[order]

    def messages(rows):
        nb = neighbors[rows]
        m, width = nb.shape
        f = F.silu(layer.linears_scalar[1](F.silu(layer.linears_scalar[0](rbf[rows]))))
        f = _imul(F.silu(F.linear(f, last_weight, last_bias)), cut[rows].unsqueeze(-1))
        f = f.view(m, width, 3, hidden)  # the isotropic, antisymmetric, symmetric filters
        sent = _gather(table, nb)  # (m, K, 10, H)
        if sent.requires_grad or f.requires_grad:
            sent = torch.cat([sent[:, :, :1] * f[:, :, :1], sent[:, :, 1:4] * f[:, :, 1:2],
                              sent[:, :, 4:] * f[:, :, 2:]], dim=2)
        else:
            sent[:, :, :1].mul_(f[:, :, :1])
            sent[:, :, 1:4].mul_(f[:, :, 1:2])
            sent[:, :, 4:].mul_(f[:, :, 2:])
        return sent.sum(1)

    received = _by_blocks(messages, neighbors.size(0), rows_per_chunk)  # (n, 10, H)
    n = received.size(0)
    msg = _compose(received[:, 0], received[:, 1:4],
                   received[:, 4:][:, _FROM_UPPER].view(n, 3, 3, hidden))
    product = _matmul(msg, y) + _matmul(y, msg)
    s, a, sym = _decompose(product)
    scale = (_norm2(_compose(s, a, sym)) + 1.0)
    s, a, sym = s / scale, a / scale.unsqueeze(1), sym / scale.unsqueeze(1).unsqueeze(1)
    dx = _compose(lin[3](s), lin[4](a), lin[5](sym))
    return x_tensor + dx + _matmul(dx, dx)
