"""The frozen geometric backbone: building it and reading geom2vec checkpoints.

Three architectures, those of geom2vec's pretrained files:

* ``"visnet"``: torch-geometric's :class:`~torch_geometric.nn.models.ViSNet`
  block, used as is except that its neighbour search
  (``representation_model.distance``, which needs pyg-lib or torch-cluster)
  is replaced by :class:`RadiusDistance`;
* ``"et"`` and ``"tensornet"``: TorchMD-Net's equivariant transformer and
  TensorNet, written in :mod:`._torchmd` (why not torchmd-net itself: see there).

Which one a file holds is read from its keys (``vis_mp_layers``,
``attention_layers``, ``tensor_embedding``); geom2vec's file-name prefix
(``visnet_``, ``et_``, ``tensornet_``) is only a cross-check. The rest of the
architecture is read from the checkpoint whenever the user leaves a parameter
at ``None``: the hidden size and the largest atomic number from the embedding
table, the number of layers from the layer blocks, the number of radial basis
functions from their means, and the cutoff from the first mean, which the
exponential-normal basis of all three sets to ``exp(-cutoff)``.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .._utils import unreadable_checkpoint
from ._neighbors import RadiusDistance
from ._pretrained import check_known_file, file_sha256, missing_file_hint
from ._torchmd import EquivariantTransformer, TensorNet

__all__ = [
    "ARCHITECTURES",
    "BackboneConfig",
    "DenoisingHead",
    "build_backbone",
    "file_sha256",
    "load_checkpoint",
]

_PREFIX = "representation_model."
#: The architectures, by the name ``GeomEmbedder(architecture=...)`` takes.
ARCHITECTURES = ("visnet", "et", "tensornet")
# What identifies each in a file: its layer blocks, its embedding table, its denoising head
_LAYERS = {"visnet": "vis_mp_layers", "et": "attention_layers", "tensornet": "layers"}
_EMBEDDING = {"visnet": "embedding.weight", "et": "embedding.weight",
              "tensornet": "tensor_embedding.emb.weight"}
_HEAD_PREFIX = {"visnet": "vec_out.", "et": "output_model_noise.", "tensornet": "output_model_noise."}
# geom2vec's file-name prefixes (its factory's own table)
_FILE_PREFIX = {"visnet": "visnet", "vis": "visnet", "et": "et", "torchmdet": "et",
                "tensornet": "tensornet", "tn": "tensornet"}
_LONG_NAME = {"visnet": "ViSNet", "et": "equivariant transformer (ET)", "tensornet": "TensorNet"}
# Entries of a geom2vec checkpoint that belong to its pretraining, not to the backbone.
_SET_ASIDE = ("vec_out.", "output_model.", "output_model_noise.", "pos_normalizer.", "prior_model.")
_SET_ASIDE_KEYS = ("mean", "std")
_NAME_PATTERN = re.compile(r"_l(?P<layers>\d+)_h(?P<hidden>\d+)_rbf(?P<rbf>\d+)_r(?P<cutoff>\d+)")


@dataclass(frozen=True)
class BackboneConfig:
    """Architecture of a backbone.

    Parameters
    ----------
    architecture : {"visnet", "et", "tensornet"}
        ViSNet, TorchMD-Net's equivariant transformer, or TensorNet.
    hidden_channels : int
        Width of the scalar and vector channels, ``H``.
    num_layers : int
        Number of message-passing layers.
    num_rbf : int
        Number of radial basis functions.
    cutoff : float
        Interaction cutoff, in Angstrom.
    lmax : int
        ViSNet's highest degree of the spherical harmonics (1 or 2). Tokens
        always use the degree-1 (vector) part.
    max_num_neighbors : int or None
        Cap on neighbours per atom, ``None`` for every atom within the cutoff.
    max_z : int
        Size of the atomic-number embedding; elements with ``Z >= max_z``
        have no embedding.
    vecnorm_type, trainable_vecnorm
        ViSNet's vector norm.
    num_heads : int
        Attention heads (ViSNet, ET). Shapes do not show it; geom2vec uses 8.
    """

    architecture: str = "visnet"
    hidden_channels: int = 64
    num_layers: int = 6
    num_rbf: int = 64
    cutoff: float = 7.5
    lmax: int = 1
    max_num_neighbors: int | None = None
    max_z: int = 100
    vecnorm_type: str | None = "max_min"
    trainable_vecnorm: bool = True
    num_heads: int = 8

    def __post_init__(self) -> None:
        if self.architecture != "visnet" and self.lmax != 1:
            raise ValueError(f"lmax={self.lmax} applies to ViSNet only, not to "
                             f"architecture={self.architecture!r}.")

    def as_dict(self) -> dict:
        """The fields that describe this architecture (ViSNet's own only for ViSNet)."""
        fields = asdict(self)
        if self.architecture != "visnet":
            for name in ("lmax", "vecnorm_type", "trainable_vecnorm"):
                fields.pop(name)
        if self.architecture == "tensornet":
            fields.pop("num_heads")
        return fields


def build_backbone(config: BackboneConfig) -> nn.Module:
    """Build a backbone with our neighbour search.

    Parameters
    ----------
    config : BackboneConfig
        The architecture.

    Returns
    -------
    block : ViSNetBlock, EquivariantTransformer or TensorNet
        Randomly initialised; ``block(z, pos, batch)`` returns per-atom
        scalars of shape (n_atoms, H) and vectors of shape (n_atoms, 3, H)
        (8 rows for ViSNet with ``lmax=2``).
    """
    if config.architecture == "et":
        return EquivariantTransformer(
            hidden_channels=config.hidden_channels, num_layers=config.num_layers,
            num_rbf=config.num_rbf, cutoff=config.cutoff, num_heads=config.num_heads,
            max_z=config.max_z, max_num_neighbors=config.max_num_neighbors)
    if config.architecture == "tensornet":
        return TensorNet(
            hidden_channels=config.hidden_channels, num_layers=config.num_layers,
            num_rbf=config.num_rbf, cutoff=config.cutoff, max_z=config.max_z,
            max_num_neighbors=config.max_num_neighbors)
    if config.architecture != "visnet":
        raise ValueError(f"Unknown architecture {config.architecture!r}; expected one of {ARCHITECTURES}.")
    from torch_geometric.nn.models.visnet import ViSNetBlock  # seconds to import: only for ViSNet

    block = ViSNetBlock(
        lmax=config.lmax,
        vecnorm_type=config.vecnorm_type,
        trainable_vecnorm=config.trainable_vecnorm,
        num_heads=config.num_heads,
        num_layers=config.num_layers,
        hidden_channels=config.hidden_channels,
        num_rbf=config.num_rbf,
        max_z=config.max_z,
        cutoff=config.cutoff,
        # torch-geometric's own Distance needs pyg-lib; it is replaced just below.
        max_num_neighbors=config.max_num_neighbors or 32,
    )
    block.distance = RadiusDistance(
        config.cutoff, max_num_neighbors=config.max_num_neighbors, add_self_loops=True
    )
    return block


class DenoisingHead(nn.Module):
    """Equivariant head that predicts per-atom coordinate noise.

    Two gated equivariant blocks, as in geom2vec's heads (``vec_out`` for
    ViSNet, ``output_model_noise`` for ET and TensorNet, the same structure),
    so the head of a geom2vec checkpoint loads into it.

    Parameters
    ----------
    hidden_channels : int
        Width ``H`` of the backbone.
    """

    def __init__(self, hidden_channels: int) -> None:
        from torch_geometric.nn.models.visnet import EquivariantScalar

        super().__init__()
        self.output_network = EquivariantScalar(hidden_channels).output_network

    def reset_parameters(self) -> None:
        for block in self.output_network:
            block.reset_parameters()

    def forward(self, x: Tensor, vec: Tensor) -> Tensor:
        """Noise prediction of shape (n_atoms, 3) from backbone features."""
        vec = vec[:, :3]
        for block in self.output_network:
            x, vec = block(x, vec)
        return vec.squeeze(-1)


_ZIP_MAGIC = b"PK\x03\x04"


def _read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    if os.path.isdir(path):
        raise IsADirectoryError(
            f"Checkpoint {os.fspath(path)!r} is a directory; give the checkpoint file in it "
            f"(for example visnet_l6_h64_rbf64_r75.pth)."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint file {os.fspath(path)!r} does not exist."
                                + missing_file_hint(path))
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head[:4] != _ZIP_MAGIC and head[:1] != b"\x80":  # torch.save writes a zip, or (legacy) a pickle
        what = "it is empty" if not head else "neither a zip archive nor a pickle, which torch.save writes"
        raise ValueError(
            f"Checkpoint {os.fspath(path)!r} could not be read as a weights-only torch file: it is not "
            f"a torch checkpoint ({what}), but a damaged file or another kind of file. Use a good copy "
            f"of the checkpoint (geom2vec's files are visnet_*.pth, et_*.pth and tensornet_*.pth)."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, unsafe globals, corrupt zip...
        raise ValueError(unreadable_checkpoint(path, exc)) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # a Lightning-style wrapper
    if not isinstance(state, dict):
        raise ValueError(
            f"Checkpoint {os.fspath(path)!r} is not a state_dict of tensors "
            f"(it holds a {type(state).__name__})."
        )
    odd = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if odd:
        raise ValueError(
            f"Checkpoint {os.fspath(path)!r} is not a state_dict of tensors: entry {odd[0]!r} is a "
            f"{type(state[odd[0]]).__name__}"
            f"{f' ({len(odd)} such entries)' if len(odd) > 1 else ''}."
        )
    broken = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise ValueError(
            f"Checkpoint {os.fspath(path)!r} has NaN or infinite weights in {broken[0]!r}"
            f"{f' and {len(broken) - 1} other entries' if len(broken) > 1 else ''}: every token "
            f"would be NaN. The file is damaged; use a good copy."
        )
    return state


def detect_architecture(state: dict[str, Tensor], path: str | os.PathLike) -> str:
    """Which of :data:`ARCHITECTURES` a geom2vec-format state_dict holds, from its keys."""
    keys = [k[len(_PREFIX):] for k in state if k.startswith(_PREFIX)]
    if not keys:
        raise ValueError(
            f"Checkpoint {os.fspath(path)!r} holds no geom2vec backbone: none of its keys starts "
            f"with {_PREFIX!r}. Expected one of geom2vec's pretrained files "
            f"(visnet_*.pth, et_*.pth, tensornet_*.pth)."
        )
    for name, marker in (("visnet", "vis_mp_layers."), ("et", "attention_layers."),
                         ("tensornet", "tensor_embedding.")):
        if any(k.startswith(marker) for k in keys):
            return name
    blocks = sorted({k.split(".")[0] for k in keys})
    raise ValueError(
        f"Checkpoint {os.fspath(path)!r} holds a backbone of an unknown architecture (its "
        f"'{_PREFIX}*' entries are {_shorten(blocks)}). GeomEmbedder reads geom2vec's ViSNet "
        f"('vis_mp_layers'), equivariant transformer ('attention_layers') and TensorNet "
        f"('tensor_embedding', 'layers') files."
    )


def _infer_config(state: dict[str, Tensor], path: str | os.PathLike) -> dict:
    """Architecture read from the weights (and the geom2vec file name as a check)."""
    architecture = detect_architecture(state, path)
    try:
        table = state[_PREFIX + _EMBEDDING[architecture]]
        means = state[_PREFIX + "distance_expansion.means"]
    except KeyError as exc:
        raise ValueError(
            f"Checkpoint {os.fspath(path)!r} does not hold a complete "
            f"{_LONG_NAME[architecture]} backbone: key {exc.args[0]!r} is missing."
        ) from None
    layers = {
        int(m.group(1))
        for key in state
        if (m := re.match(re.escape(_PREFIX + _LAYERS[architecture]) + r"\.(\d+)\.", key))
    }
    inferred = {
        "architecture": architecture,
        "hidden_channels": int(table.shape[1]),
        "max_z": int(table.shape[0]),
        "num_rbf": int(means.numel()),
        "num_layers": len(layers),
        # the exponential-normal basis starts its means at exp(-cutoff)
        "cutoff": round(-math.log(float(means[0])), 4),
    }
    if architecture == "visnet":
        inferred["trainable_vecnorm"] = (_PREFIX + "vec_out_norm.weight") in state
    name = os.path.basename(os.fspath(path))
    named = _FILE_PREFIX.get(name.lower().split("_")[0].split(".")[0])
    if named is not None and named != architecture:
        raise ValueError(
            f"Checkpoint {os.fspath(path)!r} is named as a {_LONG_NAME[named]} file, but its "
            f"weights are those of a {_LONG_NAME[architecture]}. Check that it is the file you "
            f"meant; a file named without geom2vec's prefix is read from its weights alone."
        )
    match = _NAME_PATTERN.search(name)
    if match is not None:
        from_name = {
            "num_layers": int(match["layers"]),
            "hidden_channels": int(match["hidden"]),
            "num_rbf": int(match["rbf"]),
            # geom2vec's rule: r75 is 7.5 Angstrom, r5 is 5
            "cutoff": int(match["cutoff"]) / 10 if int(match["cutoff"]) > 10 else float(match["cutoff"]),
        }
        for key, value in from_name.items():
            if not math.isclose(inferred[key], value, rel_tol=1e-3):
                raise ValueError(
                    f"Checkpoint {os.fspath(path)!r} is named for {key}={value}, but its "
                    f"weights have {key}={inferred[key]}."
                )
    return inferred


def _conflicts(inferred, value) -> bool:
    if isinstance(inferred, str) or isinstance(value, str):
        return inferred != value
    return not math.isclose(float(inferred), float(value), rel_tol=1e-3)


def load_checkpoint(
    path: str | os.PathLike, overrides: dict | None = None, *, sha256: str | None = None
) -> tuple[nn.Module, BackboneConfig, dict[str, Tensor]]:
    """Build a backbone from a geom2vec-format checkpoint, strictly.

    Parameters
    ----------
    path : str or path-like
        A ``.pth`` file holding a plain state_dict (read with
        ``weights_only=True``, so it cannot run code).
    overrides : dict, optional
        Architecture values the user set explicitly. A value that disagrees
        with the weights is an error; the rest are read from the file.
    sha256 : str, optional
        The file's SHA-256, when the caller has it already (else it is
        computed). A file named or laid out as one of geom2vec's published
        files (:data:`._pretrained.BACKBONES`) with another hash gets a
        :class:`CheckpointWarning` naming both hashes.

    Returns
    -------
    block : ViSNetBlock, EquivariantTransformer or TensorNet
        The backbone with the checkpoint's weights.
    config : BackboneConfig
        Its architecture.
    head_state : dict
        The denoising head's weights (``vec_out.*`` or ``output_model_noise.*``,
        prefix removed), empty when the file has none.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the file is not a weights-only state_dict, holds no backbone of a
        known architecture, disagrees with an explicit parameter or its own
        name, or its backbone keys or shapes do not match the architecture
        one to one.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    state = _read_state_dict(path)
    # torch does not check the zip CRCs: a damaged copy of a known file loads; its hash tells
    check_known_file(path, state, file_sha256(path) if sha256 is None else sha256)
    inferred = _infer_config(state, path)
    for name, value in overrides.items():
        if name in inferred and _conflicts(inferred[name], value):
            raise ValueError(
                f"The checkpoint {os.fspath(path)!r} has {name}={inferred[name]}, which "
                f"conflicts with the explicit parameter {name}={value}. Leave {name}=None "
                f"to read it from the checkpoint."
            )
    architecture = inferred["architecture"]
    config = BackboneConfig(**{**inferred, **overrides})
    block = build_backbone(config)
    head_prefix = _HEAD_PREFIX[architecture]

    backbone_state = {k[len(_PREFIX):]: v for k, v in state.items() if k.startswith(_PREFIX)}
    others = [
        k
        for k in state
        if not k.startswith(_PREFIX) and not k.startswith(_SET_ASIDE) and k not in _SET_ASIDE_KEYS
    ]
    expected = block.state_dict()
    missing = sorted(set(expected) - set(backbone_state))
    unexpected = sorted(set(backbone_state) - set(expected)) + others
    mismatched = [
        f"{k}: file {tuple(backbone_state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in backbone_state and backbone_state[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing keys {_shorten(missing)}")
        if unexpected:
            problems.append(f"unexpected keys {_shorten(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatches {_shorten(mismatched)}")
        raise ValueError(
            f"Checkpoint {os.fspath(path)!r} does not fit the {_LONG_NAME[architecture]} backbone "
            f"{config.as_dict()}: " + "; ".join(problems) + "."
        )
    block.load_state_dict(backbone_state, strict=True)
    head_state = {
        k[len(head_prefix):]: v for k, v in state.items() if k.startswith(head_prefix)
    }
    return block, config, head_state


def _shorten(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(i) for i in items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)} in all)"
