"""Per-residue token trajectories: the type every step after the embedder reads.

A *token trajectory* holds, for every stored frame of one MD trajectory and
every residue, a block of equivariant features of shape ``(4, H)`` -- row 0
the scalar channels, rows 1-3 the x, y, z components of the vector channels
-- together with the residue positions in Angstrom. Its arrays live in RAM
or are memory-mapped from a store (:mod:`._format`); a trajectory opened
from a store knows it (:class:`StoreRef`) and pickles by path.
"""

from __future__ import annotations

import json
import numbers
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from ._merge_spec import MergeSpec  # a trajectory carries one; pickles of earlier versions name it here

__all__ = ["StoreRef", "TokenTrajectory", "check_token_list"]


# --------------------------------------------------------------------------- #
# small helpers
# --------------------------------------------------------------------------- #
def _json_default(obj: Any) -> Any:
    """Turn numpy scalars/arrays into JSON types; reject anything else."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON-serialisable")


def _float_dtype(dtype: Any, what: str) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise ValueError(f"{what} dtype {dtype!r} is not a numpy dtype") from exc
    if not np.issubdtype(dt, np.floating):
        raise ValueError(f"{what} must be a floating-point dtype; got {dt}")
    return dt


def _check_count(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer; got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1; got {value}")
    return int(value)


class _Metadata(NamedTuple):
    """A token trajectory's metadata, checked and normalised."""

    residue_names: tuple[str, ...]
    chain_ids: tuple[str | int, ...]
    residue_ids: np.ndarray
    timestep: float | None
    provenance: dict


def _validate_metadata(
    n_residues: int,
    residue_names: Sequence[str],
    chain_ids: Sequence[str | int],
    residue_ids: Sequence[int],
    timestep: float | None,
    provenance: Mapping[str, Any] | None,
) -> _Metadata:
    """Check per-residue metadata against ``n_residues`` and normalise it."""
    if isinstance(residue_names, str):
        raise ValueError("residue_names must be a sequence of str, not a single str")
    names = tuple(str(n) for n in residue_names)
    if len(names) != n_residues:
        raise ValueError(
            f"residue_names has {len(names)} entries but the features have "
            f"{n_residues} residues"
        )
    if isinstance(chain_ids, str):
        raise ValueError("chain_ids must be a sequence of str or int, not a single str")
    chains: list[str | int] = []
    for c in chain_ids:
        if isinstance(c, (numbers.Integral, np.integer)) and not isinstance(c, bool):
            chains.append(int(c))
        elif isinstance(c, (str, np.str_)):
            chains.append(str(c))
        else:
            raise ValueError(f"chain_ids must hold str or int values; got {c!r}")
    if len(chains) != n_residues:
        raise ValueError(
            f"chain_ids has {len(chains)} entries but the features have "
            f"{n_residues} residues"
        )
    resids = np.asarray(residue_ids)
    if resids.ndim != 1 or len(resids) != n_residues:
        raise ValueError(
            f"residue_ids must be a 1-D sequence with one entry per residue; got "
            f"shape {resids.shape} for {n_residues} residues"
        )
    if n_residues and not np.issubdtype(resids.dtype, np.integer):
        raise ValueError(f"residue_ids must be integers; got dtype {resids.dtype}")
    resids = resids.astype(np.int64)  # a copy: the caller's array stays writeable
    resids.flags.writeable = False
    if timestep is not None:
        if isinstance(timestep, bool) or not isinstance(timestep, numbers.Real):
            raise ValueError(f"timestep must be a number of picoseconds or None; got {timestep!r}")
        timestep = float(timestep)
        if not np.isfinite(timestep) or timestep <= 0:
            raise ValueError(f"timestep must be a positive number of picoseconds; got {timestep}")
    if provenance is None:
        prov: dict = {}
    elif isinstance(provenance, Mapping):
        prov = dict(provenance)
    else:
        raise ValueError(f"provenance must be a dict; got {type(provenance).__name__}")
    try:
        json.dumps(prov, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"provenance must be JSON-serialisable: {exc}") from exc
    return _Metadata(names, tuple(chains), resids, timestep, prov)


class StoreRef(NamedTuple):
    """Where a token trajectory's arrays are mapped from: set by :func:`load_tokens`."""

    path: str  # the store's directory
    mmap_mode: str  # how its arrays are mapped ("r", "r+", "c")
    store_id: str  # the digest of its arrays, to tell a replaced store from the same one
    frames: range  # the trajectory's frames among the store's


# --------------------------------------------------------------------------- #
# TokenTrajectory
# --------------------------------------------------------------------------- #
class TokenTrajectory:
    """Residue tokens of one trajectory.

    Parameters
    ----------
    features : ndarray of shape (n_frames, n_residues, 4, H)
        Equivariant residue features; row 0 holds the H scalar channels, rows
        1-3 the x, y, z components of the H vector channels. May be an
        ``np.memmap``. Not copied.
    positions : ndarray of shape (n_frames, n_residues, 3)
        Residue positions in Angstrom. Not copied.
    residue_names : sequence of str of length n_residues
        Residue names, e.g. ``"ALA"``.
    chain_ids : sequence of str or int of length n_residues
        Chain of every residue.
    residue_ids : sequence of int of length n_residues
        Residue sequence numbers (``resSeq``).
    timestep : float or None, default=None
        Picoseconds between consecutive stored frames.
    provenance : dict or None, default=None
        JSON-serialisable description of how the tokens were made.
    merge_spec : MergeSpec or None, default=None
        How the learner that reads these tokens merges residues into
        fragments; set by a fitted :class:`TokenMerger` (see
        :meth:`with_merge_spec`). A fitted step's attachment, not data:
        :func:`save_tokens` does not write it.

    Attributes
    ----------
    features : ndarray of shape (n_frames, n_residues, 4, H)
    positions : ndarray of shape (n_frames, n_residues, 3)
    residue_names : tuple of str
    chain_ids : tuple of str or int
    residue_ids : ndarray of shape (n_residues,), dtype int64, read-only
    timestep : float or None
    provenance : dict
    merge_spec : MergeSpec or None

    Notes
    -----
    Indexing with an int, a slice or an integer array selects frames and
    returns a new ``TokenTrajectory``; slices (and ints) give views. A token
    trajectory opened from a store pickles by path (the store is reopened
    read-only on unpickling); one held in RAM pickles by value.

    Examples
    --------
    :class:`GeomEmbedder` makes these; any arrays of the right shapes do:

    >>> import numpy as np
    >>> from g2v_sklearn import TokenTrajectory
    >>> rng = np.random.default_rng(0)
    >>> tokens = TokenTrajectory(
    ...     rng.normal(size=(10, 3, 4, 8)).astype(np.float32),  # (frames, residues, 4, H)
    ...     rng.normal(size=(10, 3, 3)).astype(np.float32),     # positions, Angstrom
    ...     residue_names=["ACE", "ALA", "NME"], chain_ids=["A", "A", "A"],
    ...     residue_ids=[1, 2, 3], timestep=10.0)
    >>> tokens
    TokenTrajectory(n_frames=10, n_residues=3, n_channels=8, in RAM)
    >>> tokens.features[:, :, 0].shape  # the scalar row of every residue
    (10, 3, 8)
    >>> every_other = tokens[::2]  # a view; the time step follows the stride
    >>> every_other.n_frames, every_other.timestep
    (5, 20.0)
    """

    def __init__(
        self,
        features: np.ndarray,
        positions: np.ndarray,
        *,
        residue_names: Sequence[str],
        chain_ids: Sequence[str | int],
        residue_ids: Sequence[int],
        timestep: float | None = None,
        provenance: Mapping[str, Any] | None = None,
        merge_spec: MergeSpec | None = None,
    ) -> None:
        if not isinstance(features, np.ndarray):
            features = np.asarray(features)
        if not isinstance(positions, np.ndarray):
            positions = np.asarray(positions)
        if features.ndim != 4 or features.shape[2] != 4:
            raise ValueError(
                "features must have shape (n_frames, n_residues, 4, H) -- one scalar "
                f"row and three vector rows per residue; got shape {features.shape}"
            )
        if positions.ndim != 3 or positions.shape[2] != 3:
            raise ValueError(
                f"positions must have shape (n_frames, n_residues, 3); got shape "
                f"{positions.shape}"
            )
        if features.shape[0] != positions.shape[0]:
            raise ValueError(
                f"features has {features.shape[0]} frames but positions has "
                f"{positions.shape[0]}"
            )
        if features.shape[1] != positions.shape[1]:
            raise ValueError(
                f"features has {features.shape[1]} residues but positions has "
                f"{positions.shape[1]}"
            )
        _float_dtype(features.dtype, "features")
        _float_dtype(positions.dtype, "positions")
        metadata = _validate_metadata(features.shape[1], residue_names, chain_ids, residue_ids, timestep,
                                      provenance)
        self.residue_names, self.chain_ids = metadata.residue_names, metadata.chain_ids
        self.residue_ids, self.timestep, self.provenance = metadata.residue_ids, metadata.timestep, metadata.provenance
        self.features = features
        self.positions = positions
        self.merge_spec = _check_merge_spec(merge_spec, features.shape[1], features.shape[3])
        self._store: StoreRef | None = None  # set by load_tokens; None when the arrays are not a store's

    # ---------------------------------------------------------------- shape
    @property
    def n_frames(self) -> int:
        """Number of stored frames."""
        return self.features.shape[0]

    @property
    def n_residues(self) -> int:
        """Number of residues."""
        return self.features.shape[1]

    @property
    def n_channels(self) -> int:
        """Number of channels H."""
        return self.features.shape[3]

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """Shape of ``features``, ``(n_frames, n_residues, 4, H)``."""
        return tuple(self.features.shape)

    @property
    def dtype(self) -> np.dtype:
        """Data type of ``features``."""
        return self.features.dtype

    @property
    def path(self) -> str | None:
        """Directory of the store the features are mapped from, or None in RAM."""
        return None if self._store is None else self._store.path

    def __len__(self) -> int:
        return self.n_frames

    def __repr__(self) -> str:
        where = "in RAM" if self.path is None else f"at {self.path!r}"
        merge = ""
        if self.merge_spec is not None:
            merge = f", merged by window={self.merge_spec.window} ({self.merge_spec.operator})"
        return (
            f"TokenTrajectory(n_frames={self.n_frames}, n_residues={self.n_residues}, "
            f"n_channels={self.n_channels}, {where}{merge})"
        )

    @property
    def spec(self) -> MergeSpec | None:
        """Deprecated: ``merge_spec`` (the name on the retired ``MergedTokens``)."""
        warnings.warn("TokenTrajectory.spec is deprecated and will be removed in 0.2; use merge_spec.",
                      FutureWarning, stacklevel=2)
        return self.merge_spec

    @property
    def tokens(self) -> TokenTrajectory:
        """Deprecated: the trajectory itself (``MergedTokens.tokens`` unwrapped it)."""
        warnings.warn("TokenTrajectory.tokens is deprecated and will be removed in 0.2: "
                      "TokenMerger returns the token trajectories themselves.",
                      FutureWarning, stacklevel=2)
        return self

    def with_merge_spec(self, merge_spec: MergeSpec | None) -> TokenTrajectory:
        """The same tokens (no copy) with ``merge_spec`` attached, or removed with None.

        Parameters
        ----------
        merge_spec : MergeSpec or None

        Returns
        -------
        tokens : TokenTrajectory
            A new object sharing this one's arrays (and store, when opened
            from one).

        Examples
        --------
        >>> import numpy as np
        >>> from g2v_sklearn import TokenMerger, TokenTrajectory
        >>> tokens = TokenTrajectory(np.zeros((5, 10, 4, 8), np.float32), np.zeros((5, 10, 3), np.float32),
        ...                          residue_names=["ALA"] * 10, chain_ids=["A"] * 10,
        ...                          residue_ids=range(1, 11))
        >>> spec = TokenMerger(window=4).fit([tokens]).spec_
        >>> merged = tokens.with_merge_spec(spec)
        >>> merged
        TokenTrajectory(n_frames=5, n_residues=10, n_channels=8, in RAM, merged by window=4 (graphconv))
        >>> merged.features is tokens.features, merged[:2].merge_spec.n_fragments
        (True, 3)
        """
        return self._derive(merge_spec=_check_merge_spec(merge_spec, self.n_residues, self.n_channels))

    def _derive(self, **changes) -> TokenTrajectory:
        """A new trajectory with this one's arrays, metadata and store, but for ``changes``.

        The one way to make a trajectory from another: no check runs, so
        ``changes`` must already be valid (the callers check them). The
        provenance dict is copied, so the two never share it.
        """
        new = TokenTrajectory.__new__(TokenTrajectory)
        new.__dict__.update(self.__dict__)
        new.provenance = dict(self.provenance)
        new.__dict__.update(changes)
        return new

    # ------------------------------------------------------------- indexing
    def __getitem__(self, key: int | slice | Sequence[int] | np.ndarray) -> TokenTrajectory:
        n = self.n_frames
        timestep: float | None = None
        if isinstance(key, (numbers.Integral, np.integer)) and not isinstance(key, bool):
            i = int(key)
            if not -n <= i < n:
                raise IndexError(f"frame {i} is out of range for {n} frames")
            i %= n
            key = slice(i, i + 1)  # a one-frame view; it has no time step
        elif isinstance(key, slice):
            step = 1 if key.step is None else key.step
            if step > 0 and self.timestep is not None:
                timestep = self.timestep * step
        else:
            idx = np.asarray(key)
            if idx.dtype == bool and idx.ndim == 1:
                if len(idx) != n:
                    raise IndexError(
                        f"a boolean frame mask must have length {n}; got {len(idx)}"
                    )
                idx = np.flatnonzero(idx)
            elif idx.size == 0:
                idx = idx.astype(np.intp)
            if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
                raise TypeError(
                    "frames can be selected with an int, a slice or a 1-D integer "
                    f"array; got {type(key).__name__} (dtype {idx.dtype}, shape {idx.shape})"
                )
            key = idx
        store = None  # an integer array copies the frames: no longer the store's
        if self._store is not None and isinstance(key, slice):
            store = self._store._replace(frames=self._store.frames[key])
        return self._derive(features=self.features[key], positions=self.positions[key], timestep=timestep,
                            _store=store)

    # -------------------------------------------------------------- pickling
    def __reduce__(self):
        meta = (
            self.residue_names,
            self.chain_ids,
            self.residue_ids,
            self.timestep,
            self.provenance,
            self.merge_spec,
        )
        # Copy-on-write maps hold private changes the files do not have.
        store = self._store
        if store is not None and store.mmap_mode in ("r", "r+"):
            if isinstance(self.features, np.memmap) and store.mmap_mode == "r+":
                self.features.flush()
                self.positions.flush()
            return _from_store, (store.path, store.store_id, _range_to_slice(store.frames), meta)
        return _from_arrays, (np.asarray(self.features), np.asarray(self.positions), meta)


def check_token_list(X, who: str) -> list:
    """Validate a list of token trajectories of one system; returns the list."""
    if isinstance(X, TokenTrajectory):
        raise TypeError(
            f"X is a single token trajectory; {who} expects a list of them (one per "
            f"trajectory). Wrap it in a list."
        )
    items = list(X)
    if not items:
        raise ValueError(f"X is an empty list; {who} needs at least one token trajectory.")
    for i, item in enumerate(items):
        if not isinstance(item, TokenTrajectory):
            raise TypeError(
                f"X[{i}] is a {type(item).__name__}; {who} expects token trajectories "
                f"(the output of GeomEmbedder)."
            )
    first = items[0]
    for i, item in enumerate(items[1:], start=1):
        if (item.n_residues, item.n_channels) != (first.n_residues, first.n_channels):
            raise ValueError(
                f"Token trajectory {i} has {item.n_residues} residues and {item.n_channels} "
                f"channels, but token trajectory 0 has {first.n_residues} residues and "
                f"{first.n_channels} channels; all must come from one system."
            )
    return items


def _range_to_slice(r: range) -> slice:
    stop: int | None = r.stop
    if r.step < 0 and r.stop < 0:
        stop = None  # range(5, -1, -1) means "down to 0 included"
    return slice(r.start, stop, r.step)


def _from_arrays(features: np.ndarray, positions: np.ndarray, meta: tuple) -> TokenTrajectory:
    names, chains, resids, timestep, prov, *spec = meta  # 0.1.0.dev0 pickles have no spec
    return TokenTrajectory(
        features,
        positions,
        residue_names=names,
        chain_ids=chains,
        residue_ids=resids,
        timestep=timestep,
        provenance=prov,
        merge_spec=spec[0] if spec else None,
    )


def _check_merge_spec(spec, n_residues: int, n_channels: int) -> MergeSpec | None:
    if spec is None:
        return None
    if not isinstance(spec, MergeSpec):
        raise TypeError(
            f"merge_spec must be a MergeSpec (a fitted TokenMerger's spec_) or None; "
            f"got {type(spec).__name__}"
        )
    if (spec.n_residues, spec.in_channels) != (n_residues, n_channels):
        raise ValueError(
            f"merge_spec was made for {spec.n_residues} residues with {spec.in_channels} "
            f"channels, but these tokens have {n_residues} residues with {n_channels} channels"
        )
    return spec


def _from_store(path: str, store_id: str, frames: slice, meta: tuple) -> TokenTrajectory:
    from ._format import load_tokens  # the store's format needs this type: imported when unpickling

    # the pickling process opened (and verified) the store; its id says whether it is the same
    whole = load_tokens(path, mmap_mode="r", verify="header")
    if whole._store.store_id != store_id:
        raise ValueError(
            f"the token store at {path!r} was replaced after this object was "
            "pickled; it no longer holds the same data"
        )
    names, chains, resids, timestep, prov, *spec = meta  # 0.1.0.dev0 pickles have no spec
    return whole[frames]._derive(residue_names=names, chain_ids=chains, residue_ids=resids, timestep=timestep,
                                 provenance=prov, merge_spec=spec[0] if spec else None)
