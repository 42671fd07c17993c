"""Torch networks shared by the learners: token lobes and MLP lobes.

Plain ``nn.Module``\\ s with typed ``forward``; nothing here knows scikit-learn.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from ..tokens._merge_spec import MergeSpec
from ._merger import TokenMergerModule, VectorLinear, reset_children, sinusoidal_encoding

__all__ = [
    "MIXERS",
    "EquivariantMixerBlock",
    "MLPLobe",
    "MixerBlock",
    "TokenLobe",
    "attention",
    "attention_backend",
]

_FLASH = None  # flash_attn.flash_attn_func once looked up; False when not installed
_FLASH_MAX_HEAD_DIM = 256  # flash-attn 2's widest head
_CPU_MATH_MAX_TOKENS = 32  # below this, attention on CPU is plain matrix products (measured faster)


def _flash_attn_func():
    global _FLASH
    if _FLASH is None:
        try:
            from flash_attn import flash_attn_func
        except Exception:  # not installed, or built for another CUDA
            _FLASH = False
        else:
            _FLASH = flash_attn_func
    return _FLASH or None


def attention_backend(q: Tensor, v: Tensor | None = None) -> str:
    """Which kernel :func:`attention` uses for queries like ``q`` (and values like ``v``).

    ``"flash_attn"`` when the flash-attn package is importable, ``q`` is a
    CUDA tensor in float16/bfloat16 and its heads fit flash-attn (values as
    wide as the queries, at most 256 channels a head); ``"math"`` on CPU for at most
    32 tokens (plain matrix products, faster there than the fused kernel);
    otherwise ``"sdpa"``, torch's ``scaled_dot_product_attention``, which
    itself picks FlashAttention kernels on CUDA in half precision (no mask
    is ever passed, so it can).
    """
    if not q.is_cuda and q.shape[-2] <= _CPU_MATH_MAX_TOKENS:
        return "math"
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and _flash_attn_func():
        if q.shape[-1] <= _FLASH_MAX_HEAD_DIM and (v is None or v.shape[-1] == q.shape[-1]):
            return "flash_attn"
    return "sdpa"


def attention(q: Tensor, k: Tensor, v: Tensor, *, need_weights: bool = False):
    """Unmasked multi-head attention on (batch, heads, tokens, head_dim) tensors.

    Returns ``(out, weights)``; ``weights`` (batch, heads, tokens, tokens) is
    computed explicitly only when ``need_weights`` (for interpretation), else None.
    """
    if need_weights:
        scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
        weights = scores.softmax(dim=-1)
        return weights @ v, weights
    if not q.is_cuda and q.shape[-2] <= _CPU_MATH_MAX_TOKENS:
        # torch's fused CPU kernel works in blocks of query rows: for a handful of tokens
        # (alanine dipeptide has 3) its per-block overhead dominates, and three plain
        # batched matrix products are several times faster.
        scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
        return scores.softmax(dim=-1) @ v, None
    if attention_backend(q, v) == "flash_attn":
        out = _flash_attn_func()(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2), None
    return F.scaled_dot_product_attention(q, k, v), None


def _heads(d_model: int, n_heads: int) -> int:
    """``n_heads``, once it is known to split ``d_model`` channels evenly."""
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}.")
    return n_heads


class MixerBlock(nn.Module):
    """Pre-norm transformer block: attention then a feed-forward network."""

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_heads = _heads(d_model, n_heads)
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Linear(2 * d_model, d_model))
        self.dropout = nn.Dropout(dropout)

    def reset_parameters(self) -> None:
        reset_children(self)

    def forward(self, x: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """Mixed tokens, and the attention weights when ``need_weights`` (else None)."""
        b, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).view(b, n, 3, self.n_heads, d // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        mixed, weights = attention(q, k, v, need_weights=need_weights)
        x = x + self.dropout(self.out(mixed.transpose(1, 2).reshape(b, n, d)))
        x = x + self.dropout(self.ff(self.norm2(x)))
        return x, weights


def _vector_norm(v: Tensor, eps: float = 1e-6) -> Tensor:
    """Vectors (B, L, 3, C) divided by their root-mean-square length over the frame's tokens
    and channels: a norm that keeps directions (rotation-equivariant) and the lengths of
    tokens and channels relative to each other (a per-token norm would erase the length of
    a token whose channels all point one way, which is how alignment shows)."""
    scale = v.pow(2).sum(dim=-2).mean(dim=(-2, -1), keepdim=True)  # (B, 1, 1)
    return v * torch.rsqrt(scale + eps).unsqueeze(-1)


class EquivariantMixerBlock(nn.Module):
    """Pre-norm transformer block on scalar (B, L, d) and vector (B, L, 3, d) channels, equivariant.

    Attention weights come from invariants only: the scalars and the inner
    products of two bias-free linear maps of each token's vectors. The values
    carry a token's scalars and its vectors together (a bias-free map over
    channels shared by x, y and z), so the vectors are mixed only by the
    attention weights; the vector update is gated by invariants. The
    feed-forward network updates the scalars from the scalars and the vector
    norms, and the vectors by invariant gates. Rotating and translating the
    input rotates the vector channels and leaves the scalars unchanged.

    Parameters
    ----------
    d_model : int
        Channels of both kinds.
    n_heads : int
        Attention heads (each over ``d_model // n_heads`` channels of both kinds).
    dropout : float, default=0.0
        On the scalar updates.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_heads = _heads(d_model, n_heads)
        self.norm1 = nn.LayerNorm(d_model)
        self.vec_pair = VectorLinear(d_model, 2 * d_model)
        self.qk = nn.Linear(2 * d_model, 2 * d_model)
        self.value = nn.Linear(d_model, d_model)
        self.vec_value = VectorLinear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        self.vec_out = VectorLinear(d_model, d_model)
        self.vec_gate = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.vec_ff = VectorLinear(d_model, d_model)
        self.ff = nn.Sequential(nn.Linear(2 * d_model, 2 * d_model), nn.GELU(), nn.Linear(2 * d_model, 2 * d_model))
        self.dropout = nn.Dropout(dropout)

    def reset_parameters(self) -> None:
        reset_children(self)

    def forward(self, s: Tensor, v: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """Mixed scalars and vectors, and the attention weights when ``need_weights`` (else None)."""
        b, n, d = s.shape
        h, hd = self.n_heads, d // self.n_heads
        s_in, v_in = self.norm1(s), _vector_norm(v)
        left, right = self.vec_pair(v_in).chunk(2, dim=-1)
        dots = (left * right).sum(dim=-2)  # inner products over x, y, z: invariant
        q, k = self.qk(torch.cat([s_in, dots], dim=-1)).chunk(2, dim=-1)
        # The values are four rows (a scalar, x, y, z) of hd channels per head. Queries and keys
        # are zero-padded to that width, the queries doubled so that the 1/sqrt(width) of the
        # kernels is 1/sqrt(hd): the same weights, from one fused attention call of equal
        # widths, which every backend runs without storing the (n x n) scores.
        q = F.pad(2.0 * q.reshape(b, n, h, hd).transpose(1, 2), (0, 3 * hd))
        k = F.pad(k.reshape(b, n, h, hd).transpose(1, 2), (0, 3 * hd))
        values = torch.cat([self.value(s_in).unsqueeze(2), self.vec_value(v_in)], dim=2)  # (b, n, 4, d)
        values = values.reshape(b, n, 4, h, hd).permute(0, 3, 1, 2, 4).reshape(b, h, n, 4 * hd)
        mixed, weights = attention(q, k, values, need_weights=need_weights)
        mixed = mixed.reshape(b, h, n, 4, hd).permute(0, 2, 3, 1, 4).reshape(b, n, 4, d)
        s = s + self.dropout(self.out(mixed[:, :, 0]))
        v = v + self.vec_out(mixed[:, :, 1:]) * torch.sigmoid(self.vec_gate(s)).unsqueeze(-2)
        u = self.vec_ff(_vector_norm(v))
        norms = torch.sqrt(u.pow(2).sum(dim=-2) + 1e-8)
        ds, gate = self.ff(torch.cat([self.norm2(s), norms], dim=-1)).chunk(2, dim=-1)
        return s + self.dropout(ds), v + u * torch.sigmoid(gate).unsqueeze(-2), weights


MIXERS = {"invariant": MixerBlock, "equivariant": EquivariantMixerBlock}
"""Registry of token mixers by name (``VAMPNetEstimator(mixer=...)``, ``SPIBEstimator(mixer=...)``)."""


def _block_output(block: MixerBlock, x: Tensor) -> Tensor:
    return block(x)[0]


def _equivariant_block_output(block: EquivariantMixerBlock, s: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    return block(s, v)[:2]


class TokenLobe(nn.Module):
    """Tokens -> outputs: [merger] -> invariant projection -> transformer -> pooling -> MLP head.

    Parameters
    ----------
    in_channels : int
        Token width ``H`` of the input.
    n_tokens : int
        Residues per frame.
    merge : MergeSpec or None
        Build a :class:`TokenMergerModule` first (trained end to end).
    d_model, n_heads, n_layers : int
        Transformer size.
    pooling : {"cls", "mean"}
    n_outputs : int
    dropout : float
    mixer : {"invariant", "equivariant"}, default="invariant"
        ``"invariant"`` mixes invariant embeddings (scalars and vector norms)
        with :class:`MixerBlock`; ``"equivariant"`` keeps vector channels
        through the mixer (:class:`EquivariantMixerBlock`), so that attention
        can see how tokens are oriented relative to each other. The head
        reads pooled scalars either way.
    """

    def __init__(self, *, in_channels: int, n_tokens: int, merge: MergeSpec | None, d_model: int,
                 n_heads: int, n_layers: int, pooling: str, n_outputs: int, dropout: float = 0.0,
                 mixer: str = "invariant"):
        super().__init__()
        self.merger = TokenMergerModule(merge) if merge is not None else None
        channels = merge.hidden_channels if merge is not None else in_channels
        n_fragments = merge.n_fragments if merge is not None else n_tokens
        self.vec_proj = VectorLinear(channels, channels)
        self.project = nn.Sequential(nn.Linear(2 * channels, d_model), nn.SiLU(), nn.Linear(d_model, d_model))
        # The merger adds its own positional encoding; raw residue tokens get one here.
        pe = sinusoidal_encoding(n_fragments, d_model)
        self.register_buffer("pe", torch.zeros_like(pe) if merge is not None else pe, persistent=False)
        self.pooling = pooling
        self.cls = nn.Parameter(torch.zeros(1, 1, d_model)) if pooling == "cls" else None
        self.mixer = mixer
        self.blocks = nn.ModuleList(MIXERS[mixer](d_model, n_heads, dropout) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Sequential(nn.Linear(d_model, d_model), nn.SiLU(), nn.Linear(d_model, n_outputs))
        # the vector channels the equivariant mixer carries (made last: the invariant lobe's
        # parameters are drawn as before)
        self.vec_in = VectorLinear(channels, d_model) if mixer == "equivariant" else None

    def reset_parameters(self) -> None:
        reset_children(self)
        if self.cls is not None:
            nn.init.zeros_(self.cls)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if "mixer" not in self.__dict__:  # pickled by 0.1.0.dev0, which had only this mixer
            self.mixer, self.vec_in = "invariant", None

    #: Recompute each transformer block in the backward pass instead of keeping its
    #: activations (only block inputs are kept): training memory then grows with the
    #: number of fragments times d_model, not with the attention internals. Off by
    #: default; the learners switch it on when a batch would exceed their memory budget.
    checkpoint_blocks: bool = False

    def embed(self, features: Tensor, positions: Tensor) -> Tensor:
        """Invariant fragment embeddings (B, F, d_model)."""
        return self._embed(features, positions)[0]

    def _embed(self, features: Tensor, positions: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.merger is not None:
            scalars, vectors = self.merger.fragments(features, positions)
        else:
            scalars, vectors = features[:, :, 0], features[:, :, 1:]
        norms = torch.sqrt(self.vec_proj(vectors).pow(2).sum(dim=-2) + 1e-8)
        s = self.project(torch.cat([scalars, norms], dim=-1)) + self.pe.to(scalars.dtype)
        return s, (self.vec_in(vectors) if self.vec_in is not None else None)

    def forward(self, features: Tensor, positions: Tensor) -> Tensor:
        """Outputs (B, n_outputs)."""
        return self._run(features, positions, need_weights=False)[0]

    def attention_maps(self, features: Tensor, positions: Tensor) -> list[Tensor]:
        """Attention weights of every block, each (B, heads, L, L) with L the tokens mixed
        (the class token first with ``pooling="cls"``)."""
        return self._run(features, positions, need_weights=True)[1]

    def _run(self, features: Tensor, positions: Tensor, *, need_weights: bool):
        x, v = self._embed(features, positions)
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
            if v is not None:  # the class token's vectors start at zero, which turns with anything
                v = torch.cat([v.new_zeros(v.shape[0], 1, *v.shape[2:]), v], dim=1)
        maps = []
        recompute = self.checkpoint_blocks and torch.is_grad_enabled() and not need_weights
        for block in self.blocks:
            if v is not None:
                if recompute:
                    x, v = checkpoint(_equivariant_block_output, block, x, v, use_reentrant=False)
                    continue
                x, v, weights = block(x, v, need_weights=need_weights)
            elif recompute:
                x = checkpoint(_block_output, block, x, use_reentrant=False)
                continue
            else:
                x, weights = block(x, need_weights=need_weights)
            maps.append(weights)
        x = self.norm(x)
        pooled = x[:, 0] if self.cls is not None else x.mean(dim=1)
        return self.head(pooled), maps


class MLPLobe(nn.Module):
    """Feature vectors -> outputs, with input standardisation fixed at fit.

    Parameters
    ----------
    n_features : int
    hidden_layer_sizes : tuple of int
    n_outputs : int
    dropout : float
    """

    def __init__(self, n_features: int, hidden_layer_sizes: tuple, n_outputs: int, dropout: float = 0.0):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))
        layers: list[nn.Module] = []
        width = n_features
        for size in hidden_layer_sizes:
            layers += [nn.Linear(width, size), nn.ELU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, n_outputs))
        self.net = nn.Sequential(*layers)

    def reset_parameters(self) -> None:
        """Re-draw the weights; the input standardisation (set from data at fit) is kept."""
        reset_children(self.net)

    def set_standardization(self, mean: Tensor, std: Tensor) -> None:
        self.mean.copy_(mean)
        self.scale.copy_(torch.where(std > 0, std, torch.ones_like(std)))

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - self.mean) / self.scale)
