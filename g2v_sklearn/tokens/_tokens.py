"""Per-residue token trajectories and their on-disk, memory-mapped store.

A *token trajectory* holds, for every stored frame of one MD trajectory and
every residue, a block of equivariant features of shape ``(4, H)`` -- row 0
the scalar channels, rows 1-3 the x, y, z components of the vector channels
-- together with the residue positions in Angstrom.

Large systems do not fit in memory, so a token trajectory can live in a
*store*: a directory holding ``features.npy``, ``positions.npy`` and
``meta.json``. Stores are written atomically. Data go to a sibling
``<directory>.partial-<random>`` directory, ``meta.json`` is written last,
and the directory is then renamed to its final name, so an interrupted write
never leaves anything at ``directory`` that looks complete.

Concurrent writers of one store (threads, processes, joblib or Dask workers)
commit one at a time under an advisory lock (``flock``) on the parent
directory, which readers take shared while they open a store; the lock also
lets a writer remove the debris of killed ones (``.old-*`` directories, and
``.partial-*`` directories whose writing process on this host is gone). A
store's ``store_id`` is a digest of its arrays, so a store replaced by the
same data is the same store to objects pickled from it.

Every committed chunk of frames carries a SHA-256 of its bytes in
``meta.json``, checked on load (``verify="full"``). A writer given a
``resume_key`` also records its committed chunks in the partial directory, so
that a writer killed mid-way, or ended by any exception, can be resumed by the
next one with the same key. A cache's writer (``if_busy="wait"``) that finds a
live writer filling the same store waits for it, by the same liveness check,
instead of writing a second copy.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import numbers
import os
import re
import secrets
import shutil
import signal
import socket
import threading
import time
import warnings
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "MergeSpec",
    "TokenTrajectory",
    "RamTokenWriter",
    "TokenStoreWriter",
    "save_tokens",
    "load_tokens",
    "check_token_list",
    "is_complete_store",
]

_FORMAT = "g2v_sklearn.token_store"
_FORMAT_VERSION = 2  # 2 added the per-chunk checksums ("chunks")
_READABLE_VERSIONS = (1, 2)
_VERIFY_LEVELS = ("full", "header")
_META = "meta.json"
_FEATURES = "features.npy"
_POSITIONS = "positions.npy"
_META_KEYS = (
    "store_id",
    "dtype",
    "positions_dtype",
    "features_shape",
    "positions_shape",
    "residue_names",
    "chain_ids",
    "residue_ids",
    "timestep",
    "provenance",
)
# the suffixes this module makes (secrets.token_hex(6)); names like run.old-1 stay the user's
_PARTIAL_RE = re.compile(r"\.partial-[0-9a-f]{12}$")
_OLD_RE = re.compile(r"\.old-[0-9a-f]{12}$")
_OWNER = "writer.json"  # in a partial directory: the host and process writing it
_PROGRESS = "progress.json"  # in a resumable partial directory: its committed chunks
_ORPHAN_AGE_S = 600.0  # a partial directory without an owner file this old is debris
# a writer on another host (not provably alive or dead) is waited for while its partial
# directory changed this recently
_STALE_WRITER_S = 600.0
_WAIT_POLL_S = (0.05, 1.0)  # first and longest pause between looks at a busy store
_COPY_BLOCK_BYTES = 64 * 2**20  # frames copied per block by save_tokens
# Test-only: "point" or "point:n" makes this process SIGKILL itself the n-th time it
# reaches that point of a store write (tests/tokens/test_store_faults.py).
_KILL_ENV = "G2V_SKLEARN_TEST_KILL_AT"
_KILL_POINTS = ("mid-chunk", "after-last-chunk", "mid-commit")
_kill_counts: dict[str, int] = {}


def _kill_point(point: str) -> None:
    """SIGKILL this process here when the test-only environment variable names ``point``."""
    spec = os.environ.get(_KILL_ENV)
    if not spec:
        return
    name, _, nth = spec.partition(":")
    if name != point:
        return
    _kill_counts[point] = _kill_counts.get(point, 0) + 1
    if _kill_counts[point] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------- #
# small helpers
# --------------------------------------------------------------------------- #
def _abspath(directory: str | os.PathLike) -> str:
    return os.path.abspath(os.path.expanduser(os.fspath(directory)))


def _json_default(obj: Any) -> Any:
    """Turn numpy scalars/arrays into JSON types; reject anything else."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON-serialisable")


def _fsync(path: str) -> None:
    """Best-effort fsync of a file or directory (directories fail on Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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


def _validate_metadata(
    n_residues: int,
    residue_names: Sequence[str],
    chain_ids: Sequence[str | int],
    residue_ids: Sequence[int],
    timestep: float | None,
    provenance: Mapping[str, Any] | None,
) -> tuple[tuple[str, ...], tuple[str | int, ...], np.ndarray, float | None, dict]:
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
    return names, tuple(chains), resids, timestep, prov


# --------------------------------------------------------------------------- #
# MergeSpec: what a fitted TokenMerger attaches to token trajectories
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class MergeSpec:
    """What a learner needs to build the merging module.

    A fitted :class:`TokenMerger` makes one (its ``spec_``) and attaches it
    to the token trajectories it transforms (:attr:`TokenTrajectory.merge_spec`);
    the learner after it builds and trains the torch module from it. Frozen:
    a specification is a value, compared and hashed by its fields.

    Attributes
    ----------
    window : int
        Residues per fragment; 1 means no merging.
    operator : str
        Fragment-graph convolution: ``"graphconv"``, ``"rggc"`` or ``"none"``.
    cutoff : float
        Residue-graph cutoff in Angstrom.
    in_channels, hidden_channels : int
        Token width in and out.
    n_residues, n_fragments : int
        Sequence length before and after merging.
    positional_encoding : bool
        Whether a sinusoidal encoding of the fragment index is added.

    Examples
    --------
    >>> import numpy as np
    >>> from g2v_sklearn import TokenMerger, TokenTrajectory
    >>> tokens = TokenTrajectory(np.zeros((5, 10, 4, 8), np.float32), np.zeros((5, 10, 3), np.float32),
    ...                          residue_names=["ALA"] * 10, chain_ids=["A"] * 10,
    ...                          residue_ids=range(1, 11))
    >>> spec = TokenMerger(window=4).fit([tokens]).spec_
    >>> spec.window, spec.n_residues, spec.n_fragments, spec.in_channels
    (4, 10, 3, 8)
    """

    window: int
    operator: str
    cutoff: float
    in_channels: int
    hidden_channels: int
    n_residues: int
    n_fragments: int
    positional_encoding: bool = True

    def fragment_of_residue(self) -> np.ndarray:
        """Fragment index of every residue, shape (n_residues,).

        Returns
        -------
        fragments : ndarray of shape (n_residues,)

        Examples
        --------
        >>> from g2v_sklearn import MergeSpec
        >>> spec = MergeSpec(window=4, operator="graphconv", cutoff=8.0, in_channels=8,
        ...                  hidden_channels=8, n_residues=10, n_fragments=3)
        >>> spec.fragment_of_residue()
        array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
        """
        return np.arange(self.n_residues) // self.window


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
        (
            self.residue_names,
            self.chain_ids,
            self.residue_ids,
            self.timestep,
            self.provenance,
        ) = _validate_metadata(
            features.shape[1], residue_names, chain_ids, residue_ids, timestep, provenance
        )
        self.features = features
        self.positions = positions
        self.merge_spec = _check_merge_spec(merge_spec, features.shape[1], features.shape[3])
        # Set by load_tokens: (store path, mmap_mode, store_id, frames as a range
        # over the store's frames). None when the arrays are not a store's.
        self._store: tuple[str, str, str, range] | None = None

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
        return None if self._store is None else self._store[0]

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
        spec = _check_merge_spec(merge_spec, self.n_residues, self.n_channels)
        new = TokenTrajectory.__new__(TokenTrajectory)
        new.__dict__.update(self.__dict__)  # the same arrays, metadata and store
        new.provenance = dict(self.provenance)
        new.merge_spec = spec
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
        new = TokenTrajectory.__new__(TokenTrajectory)
        new.features = self.features[key]
        new.positions = self.positions[key]
        new.residue_names = self.residue_names
        new.chain_ids = self.chain_ids
        new.residue_ids = self.residue_ids
        new.timestep = timestep
        new.provenance = dict(self.provenance)
        new.merge_spec = self.merge_spec
        new._store = None
        if self._store is not None and isinstance(key, slice):
            path, mode, store_id, frames = self._store
            new._store = (path, mode, store_id, frames[key])
        return new

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
        if self._store is not None and self._store[1] in ("r", "r+"):
            if isinstance(self.features, np.memmap) and self._store[1] == "r+":
                self.features.flush()
                self.positions.flush()
            path, _, store_id, frames = self._store
            return _from_store, (path, store_id, _range_to_slice(frames), meta)
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
    # the pickling process opened (and verified) the store; its id says whether it is the same
    whole = load_tokens(path, mmap_mode="r", verify="header")
    if whole._store[2] != store_id:  # type: ignore[index]
        raise ValueError(
            f"the token store at {path!r} was replaced after this object was "
            "pickled; it no longer holds the same data"
        )
    sub = whole[frames]
    names, chains, resids, timestep, prov, *spec = meta  # 0.1.0.dev0 pickles have no spec
    sub.residue_names, sub.chain_ids, sub.residue_ids = names, chains, resids
    sub.timestep, sub.provenance = timestep, prov
    sub.merge_spec = spec[0] if spec else None
    return sub


# --------------------------------------------------------------------------- #
# the parent directory's lock, and the debris of killed writers
# --------------------------------------------------------------------------- #
_LOCK_FDS: set[int] = set()  # descriptors holding a directory lock in this process


def _close_inherited_locks() -> None:
    """In a forked child: drop the parent's lock descriptors, so a lock held by another
    thread at the fork is not held on for the child's whole life."""
    for fd in list(_LOCK_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _LOCK_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


@contextlib.contextmanager
def _directory_lock(parent: str, exclusive: bool = True):
    """Hold ``flock`` on the directory ``parent``; yields whether the lock is held.

    Exclusive for commits, shared for readers. Where the platform or the
    filesystem has no ``flock`` (Windows; some network filesystems) nothing
    is locked and False is yielded: commits are then atomic renames only.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield False
        return
    try:
        fd = os.open(parent or ".", os.O_RDONLY)
    except OSError:
        yield False
        return
    _LOCK_FDS.add(fd)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        except OSError:
            locked = False
        else:
            locked = True
        yield locked
    finally:
        _LOCK_FDS.discard(fd)
        os.close(fd)  # closing the last descriptor releases the lock


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux's /proc), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _owner_record() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _process_start(pid),
            "pid_namespace": _pid_namespace(), "thread": threading.get_ident()}


def _writer_is_gone(partial: str, locked: bool = True) -> bool:
    """Whether the process that made ``partial`` has ended (only provable on this host).

    ``locked``: the caller holds the parent's exclusive lock.
    """
    try:
        with open(os.path.join(partial, _OWNER), encoding="utf-8") as fh:
            owner = json.load(fh)
    except FileNotFoundError:
        # the owner file is made with the directory, under the lock, and removed only under
        # the lock just before the commit's rename: without it the writer died in
        # between, or the directory is not ours (an older version's, which has no progress
        # file either): judge that by its age
        if locked and os.path.isfile(os.path.join(partial, _PROGRESS)):
            return True
        try:
            return time.time() - os.stat(partial).st_mtime > _ORPHAN_AGE_S
        except OSError:
            return False
    except ValueError:
        # owner files are written under the lock: a garbled one seen under it was cut short
        # by its writer's death
        return locked
    except OSError:
        return False
    if not isinstance(owner, dict) or owner.get("host") != socket.gethostname():
        return False  # another machine's writer (a shared filesystem): not ours to judge
    if owner.get("pid_namespace") != _pid_namespace():
        return False  # another container's processes: their pids mean nothing here
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    start = owner.get("start")
    return start is not None and _process_start(pid) not in (None, start)  # pid reused


def _writer_is_busy(partial: str) -> bool:
    """Whether a live writer, other than this thread, is filling ``partial``.

    Call with the parent's exclusive lock held. A writer on this host is
    busy while its process lives (the liveness check of :func:`_writer_is_gone`);
    one on another host or in another container, which cannot be told dead,
    while its directory changed within ``_STALE_WRITER_S``. A partial directory
    without an owner (kept for a resume, or an older version's) is not busy.
    """
    try:
        with open(os.path.join(partial, _OWNER), encoding="utf-8") as fh:
            owner = json.load(fh)
    except (OSError, ValueError):
        return False
    if not isinstance(owner, dict):
        return False
    here = owner.get("host") == socket.gethostname() and owner.get("pid_namespace") == _pid_namespace()
    if not here:
        return time.time() - _last_change(partial) < _STALE_WRITER_S
    if owner.get("pid") == os.getpid() and owner.get("thread") == threading.get_ident():
        return False  # this very thread: waiting for it would never end
    return not _writer_is_gone(partial)


def _last_change(partial: str) -> float:
    """When anything in ``partial`` last changed (its files' and its own mtimes)."""
    times = []
    for path in [partial] + [os.path.join(partial, e) for e in _listdir(partial)]:
        with contextlib.suppress(OSError):
            times.append(os.stat(path).st_mtime)
    return max(times, default=0.0)


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _remove_debris(parent: str, name: str) -> None:
    """Remove ``name``'s ``.old-*`` and dead writers' ``.partial-*`` siblings.

    Call with the parent's exclusive lock held: commits move an old store
    aside inside that lock and delete it just after, so an ``.old-*`` seen
    under it belongs to a commit that was killed or is deleting it anyway.
    """
    try:
        entries = sorted(os.listdir(parent or "."))
    except OSError:
        return
    target = os.path.join(parent, name)
    for entry in entries:
        if not entry.startswith(name + "."):
            continue
        suffix = entry[len(name):]
        path = os.path.join(parent, entry)
        if _OLD_RE.fullmatch(suffix) and not os.path.lexists(target) and _is_complete(path):
            # a replacing commit killed between its renames: nothing is at the name, so the
            # store it moved aside goes back (a writer resuming that commit replaces it again)
            os.rename(path, target)
        elif _OLD_RE.fullmatch(suffix) or (_PARTIAL_RE.fullmatch(suffix) and _writer_is_gone(path)):
            _remove_tree(path)


# --------------------------------------------------------------------------- #
# store reading
# --------------------------------------------------------------------------- #
def _read_store(directory: str, mmap_mode: str | None,
                verify: str = "header") -> tuple[dict, np.ndarray, np.ndarray]:
    """Open a store; raise FileNotFoundError/ValueError if it is not complete.

    ``verify="full"`` also hashes every chunk against its checksum.
    """
    if not os.path.isdir(directory):
        hint = ""
        parent, name = os.path.split(directory)
        try:
            if any(
                e.startswith(name + ".partial-") for e in os.listdir(parent or ".")
            ):
                hint = " (an incomplete, interrupted or ongoing write was found next to it)"
        except OSError:
            pass
        raise FileNotFoundError(f"no token store at {directory!r}{hint}")
    if _PARTIAL_RE.search(os.path.basename(directory)):
        raise ValueError(
            f"{directory!r} is the temporary directory of an unfinished write, "
            "not a complete token store"
        )
    meta_path = os.path.join(directory, _META)
    if not os.path.isfile(meta_path):
        raise ValueError(
            f"{directory!r} is not a complete token store: {_META} is missing "
            "(it is written last, so the store is incomplete or not a token store)"
        )
    try:
        with open(meta_path, encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{directory!r} is not a token store: unreadable {_META} ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ValueError(f"{directory!r} is not a token store: {_META} has the wrong format")
    version = meta.get("format_version")
    if version not in _READABLE_VERSIONS:
        newer = isinstance(version, int) and version > _FORMAT_VERSION
        raise ValueError(
            f"token store {directory!r} has format version {version!r}; this version of "
            f"g2v_sklearn reads versions {', '.join(map(str, _READABLE_VERSIONS))}"
            + ("; it was written by a newer g2v_sklearn: upgrade to read it" if newer else "")
        )
    missing = [k for k in _META_KEYS + (("chunks",) if version >= 2 else ()) if k not in meta]
    if missing:
        raise ValueError(f"{directory!r} is not a token store: {_META} lacks {missing}")
    arrays = []
    for fname, key, dkey in (
        (_FEATURES, "features_shape", "dtype"),
        (_POSITIONS, "positions_shape", "positions_dtype"),
    ):
        fpath = os.path.join(directory, fname)
        try:
            arr = np.load(fpath, mmap_mode=mmap_mode, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise ValueError(
                f"token store {directory!r} is incomplete: cannot read {fname} ({exc})"
            ) from exc
        try:
            want_shape, want_dtype = tuple(meta[key]), np.dtype(meta[dkey])
        except TypeError as exc:
            raise ValueError(f"{directory!r} is not a token store: bad {_META} ({exc})") from exc
        if arr.shape != want_shape or arr.dtype != want_dtype:
            raise ValueError(
                f"token store {directory!r} is incomplete or corrupt: {fname} has "
                f"shape {arr.shape} and dtype {arr.dtype}, {_META} says "
                f"{want_shape} and {want_dtype}"
            )
        size, expected = os.path.getsize(fpath), _npy_data_offset(fpath) + arr.nbytes
        if size != expected:  # numpy ignores bytes after the array
            raise ValueError(
                f"token store {directory!r} is corrupt: {fname} has {size} bytes where its "
                f"header and {_META} make {expected}"
            )
        arrays.append(arr)
    try:  # the residue metadata must describe the arrays' residues (what TokenTrajectory checks)
        _validate_metadata(arrays[0].shape[1], meta["residue_names"], meta["chain_ids"],
                           meta["residue_ids"], meta["timestep"], meta["provenance"])
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"token store {directory!r} is corrupt: its {_META} disagrees with its arrays ({exc})"
        ) from exc
    if verify == "full" and version >= 2:
        _verify_chunks(directory, meta["chunks"], arrays[0], arrays[1])
    return meta, arrays[0], arrays[1]


def _npy_data_offset(path: str) -> int:
    """Where the array's bytes start in a .npy file (after its header)."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            np.lib.format.read_array_header_1_0(fh)
        else:
            np.lib.format.read_array_header_2_0(fh)
        return fh.tell()


def _chunk_digests(features: np.ndarray, positions: np.ndarray) -> tuple[str, str]:
    """SHA-256 of the bytes of a block of frames (C order, as stored)."""
    return tuple(
        hashlib.sha256(memoryview(np.ascontiguousarray(a)).cast("B")).hexdigest()
        for a in (features, positions)
    )


def _check_chunk_list(chunks: Any, n_frames: int) -> list[tuple[int, str, str]]:
    """The chunk records of ``meta.json`` or a progress file, or ValueError if malformed."""
    if not isinstance(chunks, list):
        raise ValueError("the chunk list is not a list")
    out, start = [], 0
    for record in chunks:
        if (not isinstance(record, list) or len(record) != 3 or not isinstance(record[0], int)
                or isinstance(record[0], bool) or not all(isinstance(h, str) for h in record[1:])):
            raise ValueError(f"malformed chunk record {record!r}")
        if not start < record[0] <= n_frames:
            raise ValueError(f"chunk ending at frame {record[0]} does not follow frame {start}")
        out.append((record[0], record[1], record[2]))
        start = record[0]
    return out


def _verify_chunks(directory: str, chunks: Any, features: np.ndarray,
                   positions: np.ndarray) -> None:
    """Hash every chunk and compare with ``meta.json``; ValueError naming the first bad one."""
    try:
        records = _check_chunk_list(chunks, features.shape[0])
    except ValueError as exc:
        raise ValueError(f"token store {directory!r} is corrupt: in {_META}, {exc}") from exc
    if (records[-1][0] if records else 0) != features.shape[0]:
        raise ValueError(
            f"token store {directory!r} is corrupt: its checksums cover "
            f"{records[-1][0] if records else 0} of {features.shape[0]} frames"
        )
    start = 0
    for stop, want_f, want_p in records:
        got_f, got_p = _chunk_digests(features[start:stop], positions[start:stop])
        if (got_f, got_p) != (want_f, want_p):
            which = _FEATURES if got_f != want_f else _POSITIONS
            raise ValueError(
                f"token store {directory!r} is corrupt: frames {start}-{stop - 1} of {which} "
                f"do not match their checksum (the file was changed or damaged after it was "
                f"written)"
            )
        start = stop


def _check_verify(verify: Any) -> str:
    if verify not in _VERIFY_LEVELS:
        raise ValueError(f"verify must be 'full' or 'header'; got {verify!r}")
    return verify


def is_complete_store(directory: str | os.PathLike, *, verify: str = "full") -> bool:
    """Tell whether ``directory`` holds a complete, undamaged token store.

    Parameters
    ----------
    directory : str or path-like
        Candidate store directory.
    verify : {"full", "header"}, default="full"
        How much to check; see :func:`load_tokens`.

    Returns
    -------
    bool
        True when ``meta.json`` exists, the arrays' shapes and dtypes match
        it and (with ``verify="full"``) every chunk matches its checksum;
        False for a missing directory, an unfinished write or a damaged store.
    """
    verify = _check_verify(verify)
    try:
        _verified_read(_abspath(directory), "r", verify)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def _store_problem(directory: str, verify: str = "full") -> str | None:
    """Why ``directory`` is not a complete store (None if it is, or if nothing is there)."""
    if not os.path.lexists(directory) or (os.path.isdir(directory) and not os.listdir(directory)):
        return None
    try:
        _verified_read(directory, "r", verify)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return str(exc)
    return None


def _verified_read(directory: str, mmap_mode: str | None, verify: str):
    """:func:`_read_store` with the lock held only to open the files: a commit of this
    parent waits for that, not for the hashing (the mapped files outlive a replacement)."""
    with _directory_lock(os.path.dirname(directory), exclusive=False):
        meta, features, positions = _read_store(directory, mmap_mode, "header")
    if verify == "full" and meta["format_version"] >= 2:
        _verify_chunks(directory, meta["chunks"], features, positions)
    return meta, features, positions


def _discard_damaged(directory: str) -> bool:
    """Remove ``directory`` if it is damaged, unless another writer replaced it meanwhile."""
    directory = _abspath(directory)
    try:
        before = os.stat(directory).st_ino
    except OSError:
        return False
    if _store_problem(directory, "full") is None:
        return False
    with _directory_lock(os.path.dirname(directory)):
        try:
            if os.stat(directory).st_ino != before:
                return False  # a commit put another store there: not the damaged one
        except OSError:
            return False
        if os.path.isdir(directory) and not os.path.islink(directory):
            shutil.rmtree(directory)
        else:
            os.remove(directory)
        return True


def _is_complete(directory: str, verify: str = "header") -> bool:
    """:func:`is_complete_store` without the lock (for callers that hold it)."""
    try:
        _read_store(directory, "r", verify)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def load_tokens(directory: str | os.PathLike, mmap_mode: str | None = "r", *,
                verify: str = "full") -> TokenTrajectory:
    """Open a complete token store.

    Parameters
    ----------
    directory : str or path-like
        Store directory written by :func:`save_tokens` or
        :class:`TokenStoreWriter`.
    mmap_mode : {"r", "r+", "c"} or None, default="r"
        Passed to :func:`numpy.load`. None reads the arrays into RAM.
    verify : {"full", "header"}, default="full"
        ``"full"`` reads every chunk of frames and compares its SHA-256 with
        the checksum written when it was committed: any changed byte of the
        arrays (a zeroed block, a flipped bit, a partly overwritten file) is
        an error. ``"header"`` checks only that ``meta.json`` is complete and
        that both arrays' headers and file sizes agree with it (it catches
        missing, truncated or swapped files, not changed bytes), and reads
        nothing else: use it for a very large store already verified once.
        Stores written before checksums (format version 1) get the header
        check only.

    Returns
    -------
    TokenTrajectory
        Memory-mapped (read-only with the default ``"r"``) unless
        ``mmap_mode`` is None.

    Raises
    ------
    FileNotFoundError
        If ``directory`` does not exist.
    ValueError
        If ``directory`` is an incomplete, damaged or newer-format store, or
        not a token store.

    See Also
    --------
    save_tokens : Writes a store.

    Notes
    -----
    Changing a store through ``mmap_mode="r+"`` makes it disagree with its
    checksums: a later full verification reports it as damaged. Write
    changed tokens to a new store with :func:`save_tokens` instead.

    Examples
    --------
    >>> import os
    >>> import tempfile
    >>> import numpy as np
    >>> from g2v_sklearn import TokenTrajectory, load_tokens, save_tokens
    >>> tokens = TokenTrajectory(np.ones((10, 3, 4, 8), np.float32), np.zeros((10, 3, 3), np.float32),
    ...                          residue_names=["ACE", "ALA", "NME"], chain_ids=["A"] * 3,
    ...                          residue_ids=[1, 2, 3], timestep=10.0)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = save_tokens(tokens, os.path.join(tmp, "run0"))
    ...     loaded = load_tokens(os.path.join(tmp, "run0"))  # memory-mapped, read-only
    ...     print(loaded.shape, type(loaded.features).__name__, loaded.features.flags.writeable)
    ...     in_ram = load_tokens(os.path.join(tmp, "run0"), mmap_mode=None)
    ...     del _, loaded
    (10, 3, 4, 8) memmap False
    >>> in_ram.path is None, in_ram.timestep
    (True, 10.0)
    """
    if mmap_mode not in ("r", "r+", "c", None):
        raise ValueError(f"mmap_mode must be 'r', 'r+', 'c' or None; got {mmap_mode!r}")
    verify = _check_verify(verify)
    directory = _abspath(directory)
    # opened under the shared lock (no commit of this store is half-way through its renames)
    return _tokens_of(directory, mmap_mode, *_verified_read(directory, mmap_mode, verify))


def _open_store(directory: str, mmap_mode: str | None) -> TokenTrajectory:
    """Open a store with the header check, for callers that hold the parent's lock."""
    return _tokens_of(directory, mmap_mode, *_read_store(directory, mmap_mode, "header"))


def _tokens_of(directory: str, mmap_mode: str | None, meta: dict, features: np.ndarray,
               positions: np.ndarray) -> TokenTrajectory:
    tokens = TokenTrajectory(
        features,
        positions,
        residue_names=meta["residue_names"],
        chain_ids=meta["chain_ids"],
        residue_ids=meta["residue_ids"],
        timestep=meta["timestep"],
        provenance=meta["provenance"],
    )
    if mmap_mode is not None:
        tokens._store = (directory, mmap_mode, meta["store_id"], range(features.shape[0]))
    return tokens


# --------------------------------------------------------------------------- #
# store writing
# --------------------------------------------------------------------------- #
def _remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _check_target(directory: str) -> None:
    """Refuse to overwrite anything but a complete store or an empty directory."""
    if not os.path.lexists(directory):
        return
    if os.path.isdir(directory) and not os.path.islink(directory):
        if not os.listdir(directory) or _is_complete(directory):
            return
    raise FileExistsError(
        f"{directory!r} exists and is not a complete token store (an unrelated folder, or a "
        f"store damaged or written by an incompatible version); refusing to overwrite it. "
        f"Remove it, or write elsewhere."
    )


class TokenStoreWriter:
    """Stream frames into a new token store, written atomically.

    Parameters
    ----------
    directory : str or path-like
        Final store directory. If it already holds a complete store, that store
        is replaced only when :meth:`finalize` succeeds.
    n_frames : int
        Number of frames that will be written.
    n_residues : int
        Number of residues.
    n_channels : int
        Number of channels H.
    dtype : dtype-like, default="float32"
        Floating dtype of the stored features.
    positions_dtype : dtype-like, default="float32"
        Floating dtype of the stored positions.
    if_exists : {"replace", "keep"}, default="replace"
        What :meth:`finalize` does when a complete store is already at
        ``directory`` (another writer of the same key finished first):
        replace it, or keep it, discard this one and return the kept store
        (for content-addressed caches, where both hold the same data).
    resume_key : str or None, default=None
        Makes the write resumable. Every :meth:`checkpoint` then records the
        committed frames in the partial directory, and a new writer of the
        same ``directory``, shape, dtypes and ``resume_key`` takes over the
        partial directory of one that was killed, interrupted
        (``KeyboardInterrupt``) or ended by any exception, keeping the frames
        whose checksums still match: :attr:`n_written` says how many. The
        key must identify what is written (the input, the parameters, the
        chunking), since the kept frames are not written again.
    if_busy : {"write", "wait"}, default="write"
        What opening the writer does while another writer (a thread or a
        process) is writing ``directory``: write a copy of its own beside it,
        or (``"wait"``, with ``if_exists="keep"``) wait for it. The wait ends
        when that writer commits its store (then :attr:`existing` holds it and
        nothing is to be written), or when it stops: a writer that was killed
        or failed after committing a chunk is taken over as with
        ``resume_key``, and after one that left nothing this writer starts
        afresh. A writer on this host is waited for while its process lives;
        one on another host (a shared filesystem), which cannot be told dead,
        while its partial directory changed within the last 10 minutes.

    Attributes
    ----------
    n_written : int
        Frames written so far, including those taken over from an
        interrupted writer.
    resumed_info : dict or None
        The ``info`` of the last checkpoint taken over, or None.
    existing : TokenTrajectory or None
        With ``if_busy="wait"``: the complete store found at ``directory``
        when the writer opened (another writer committed it, maybe while this
        one waited), memory-mapped read-only. There is then nothing to write:
        :meth:`finalize` returns it. None otherwise.

    Notes
    -----
    Use as a context manager::

        with TokenStoreWriter(d, n_frames=T, n_residues=N, n_channels=H) as w:
            for feats, pos in blocks:   # (k, N, 4, H) and (k, N, 3)
                w.write(feats, pos)
            tokens = w.finalize(residue_names=..., chain_ids=..., residue_ids=...)

    The arrays are written into ``<directory>.partial-<random>``, whose disk
    space is reserved when the writer opens (a full disk is an error then,
    not a crash later); ``meta.json`` is written last and that directory is
    then renamed to ``directory``. If the block raises, :meth:`finalize` is
    not called, or the number of written frames differs from ``n_frames``,
    the partial directory is removed and ``directory`` is left as it was
    (a resumable writer that committed a chunk keeps it for the next one when
    the block raises, whatever the exception). Commits of one directory by
    concurrent writers (threads or processes) take turns under a lock on the
    parent directory (see the module's notes); each writer returns a complete
    store.

    The frames between two checkpoints (and between the last one and
    :meth:`finalize`) form one chunk, whose SHA-256 goes into ``meta.json``
    and is checked by :func:`load_tokens`.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        n_frames: int,
        n_residues: int,
        n_channels: int,
        dtype: Any = "float32",
        positions_dtype: Any = "float32",
        if_exists: str = "replace",
        resume_key: str | None = None,
        if_busy: str = "write",
    ) -> None:
        if if_exists not in ("replace", "keep"):
            raise ValueError(f"if_exists must be 'replace' or 'keep'; got {if_exists!r}")
        if if_busy not in ("write", "wait"):
            raise ValueError(f"if_busy must be 'write' or 'wait'; got {if_busy!r}")
        if if_busy == "wait" and if_exists != "keep":
            raise ValueError(
                "if_busy='wait' returns the store another writer commits, so it needs "
                f"if_exists='keep' (both hold the same data); got if_exists={if_exists!r}"
            )
        if resume_key is not None and not isinstance(resume_key, str):
            raise ValueError(f"resume_key must be a str or None; got {resume_key!r}")
        self.if_exists = if_exists
        self.resume_key = resume_key
        self.if_busy = if_busy
        self.existing: TokenTrajectory | None = None
        self.directory = _abspath(directory)
        self.n_frames = _check_count(n_frames, "n_frames")
        self.n_residues = _check_count(n_residues, "n_residues")
        self.n_channels = _check_count(n_channels, "n_channels")
        self.dtype = _float_dtype(dtype, "dtype")
        self.positions_dtype = _float_dtype(positions_dtype, "positions_dtype")
        if _PARTIAL_RE.search(os.path.basename(self.directory)) or _OLD_RE.search(
                os.path.basename(self.directory)):
            raise ValueError(f"store name {self.directory!r} looks like a temporary directory")
        with _directory_lock(os.path.dirname(self.directory), exclusive=False):
            _check_target(self.directory)  # not while another writer's commit moves it
        self.n_written = 0
        self.resumed_info: dict | None = None
        self._state = "new"  # new -> open -> finalized | aborted
        self._partial: str | None = None
        self._features: np.memmap | None = None
        self._positions: np.memmap | None = None
        self._cleanup: weakref.finalize | None = None
        # streamed digests of the two arrays' bytes (block sizes do not change them)
        self._digests = (hashlib.sha256(), hashlib.sha256())
        # the committed chunks, [stop, features sha256, positions sha256], and the open one
        self._chunks: list[list] = []
        self._chunk_digests = (hashlib.sha256(), hashlib.sha256())
        self._infos: list[dict | None] = []  # a resumable writer's checkpoint info, per chunk
        self._claimed = False  # took over an interrupted writer's partial directory

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> TokenStoreWriter:
        self._open()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._state in ("new", "open"):
            # whatever ended the block (^C, a CUDA out-of-memory error, a bug in the caller),
            # the committed chunks stay for the next writer: it re-verifies their checksums
            self._abort(keep=exc_type is not None)
            if exc_type is None:
                warnings.warn(
                    f"TokenStoreWriter for {self.directory!r} closed without finalize(); "
                    "the partial store was discarded",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return False

    def close(self) -> None:
        """Discard the partial store unless :meth:`finalize` succeeded."""
        if self._state in ("new", "open"):
            self._abort()

    def _layout(self) -> dict:
        """What a partial directory must match to be taken over."""
        return {
            "resume_key": self.resume_key,
            "features_shape": [self.n_frames, self.n_residues, 4, self.n_channels],
            "features_dtype": self.dtype.str,
            "positions_shape": [self.n_frames, self.n_residues, 3],
            "positions_dtype": self.positions_dtype.str,
        }

    def _claim(self, parent: str, name: str) -> tuple[str, dict] | None:
        """Under the parent's exclusive lock: take over a dead writer's matching partial.

        Returns the partial directory and its progress record, the one with
        the most committed frames, after writing this process into its owner file.
        """
        best = None
        try:
            entries = sorted(os.listdir(parent or "."))
        except OSError:
            return None
        for entry in entries:
            if not (entry.startswith(name + ".") and _PARTIAL_RE.fullmatch(entry[len(name):])):
                continue
            path = os.path.join(parent, entry)
            try:
                with open(os.path.join(path, _PROGRESS), encoding="utf-8") as fh:
                    progress = json.load(fh)
                chunks = _check_chunk_list(progress["chunks"], self.n_frames)
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if progress.get("layout") != self._layout() or not _writer_is_gone(path):
                continue
            done = chunks[-1][0] if chunks else 0
            if best is None or done > best[0]:
                best = (done, path, progress)
        if best is None:
            return None
        _, path, progress = best
        _write_json_atomic(os.path.join(path, _OWNER), _owner_record())
        return path, progress

    def _open(self) -> None:
        if self._state == "open":
            return
        if self._state != "new":
            raise RuntimeError(f"this TokenStoreWriter is already {self._state}")
        parent, name = os.path.split(self.directory)
        os.makedirs(parent, exist_ok=True)
        pause = _WAIT_POLL_S[0]
        while True:
            with _directory_lock(parent) as locked:
                claimed = self._take_place(parent, name, locked)
            if claimed is not False:
                break
            time.sleep(pause)  # another writer is busy with this store: look again later
            pause = min(pause * 1.5, _WAIT_POLL_S[1])
        if self._state == "finalized":
            return  # another writer's store is there: nothing to write
        self._claimed = claimed is not None
        try:
            if claimed is not None and self._resume(claimed):
                return
            self._claimed = False  # its arrays were unreadable: it starts again
            self._create_arrays()
        except BaseException:
            self._abort(keep=True)  # a claimed partial (^C while re-verifying it) stays claimable
            raise

    def _take_place(self, parent: str, name: str, locked: bool) -> dict | None | bool:
        """Claim a dead writer's partial directory or make one, with this process in its
        owner file; under the parent's exclusive lock when ``locked``.

        Returns the claimed directory's progress record, None for a new
        directory, or (with ``if_busy="wait"``) False while a live writer fills
        a partial directory of this store: the caller looks again after a
        pause. A complete store at the target ends an ``if_busy="wait"``
        writer there (:attr:`existing`).
        """
        claimed = None
        if locked and self.resume_key is not None:
            claimed = self._claim(parent, name)
        if claimed is None and locked and self.if_busy == "wait":
            if _is_complete(self.directory):
                self.existing = _open_store(self.directory, "r")
                self.n_written = self.n_frames
                self._state = "finalized"
                return None
            if any(_writer_is_busy(os.path.join(parent, entry)) for entry in _listdir(parent)
                   if entry.startswith(name + ".") and _PARTIAL_RE.fullmatch(entry[len(name):])):
                return False
        if locked:
            _remove_debris(parent, name)  # a claimed partial has a live owner again
        if claimed is not None:
            partial = claimed[0]
        else:
            while True:
                partial = os.path.join(parent, f"{name}.partial-{secrets.token_hex(6)}")
                try:
                    os.mkdir(partial)  # honours the umask, unlike tempfile.mkdtemp
                    break
                except FileExistsError:
                    continue
        self._partial = partial
        self._cleanup = weakref.finalize(self, _remove_tree, partial)
        self._state = "open"
        if claimed is None:
            try:  # before the lock goes: no other writer sees this directory without its owner
                with open(os.path.join(partial, _OWNER), "w", encoding="utf-8") as fh:
                    json.dump(_owner_record(), fh)
            except BaseException:
                self._abort()
                raise
            return None
        return claimed[1]

    def _array_paths(self) -> tuple[str, str]:
        return (os.path.join(self._partial, _FEATURES), os.path.join(self._partial, _POSITIONS))

    def _create_arrays(self) -> None:
        """Make both array files at full size, their disk space reserved."""
        shapes = ((self.n_frames, self.n_residues, 4, self.n_channels),
                  (self.n_frames, self.n_residues, 3))
        dtypes = (self.dtype, self.positions_dtype)
        need = sum(int(np.prod(sh)) * dt.itemsize for sh, dt in zip(shapes, dtypes))
        free = shutil.disk_usage(self._partial).free
        if need > free:
            raise self._disk_full(f"it needs {human_bytes(need)} and {human_bytes(free)} are free")
        arrays = []
        for path, shape, dtype in zip(self._array_paths(), shapes, dtypes):
            arrays.append(np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape))
            _reserve(path, self._disk_full)
        self._features, self._positions = arrays

    def _disk_full(self, detail: str, kept: bool = False) -> OSError:
        what = ("The frames written so far are kept in its partial directory, and the next run "
                "with the same key resumes from them" if kept else
                "Nothing was written there (the partial store was removed)")
        return OSError(
            errno.ENOSPC,
            f"Not enough disk space for the token store {self.directory!r}: {detail}. {what}; "
            f"free some space, or write the store elsewhere (store_dir= or memory= of "
            f"GeomEmbedder).",
        )

    def _resume(self, progress: dict) -> bool:
        """Open a claimed partial; keep its committed chunks whose checksums match.

        Returns False (and empties the directory) when its arrays cannot be opened.
        """
        for entry in os.listdir(self._partial):  # a write of progress.json the kill cut short
            if ".tmp-" in entry:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(self._partial, entry))
        try:
            arrays = [np.lib.format.open_memmap(p, mode="r+") for p in self._array_paths()]
        except (OSError, ValueError, EOFError):
            for fname in (_FEATURES, _POSITIONS, _PROGRESS):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(self._partial, fname))
            return False
        layout = self._layout()
        if (list(arrays[0].shape) != layout["features_shape"] or arrays[0].dtype != self.dtype
                or list(arrays[1].shape) != layout["positions_shape"]
                or arrays[1].dtype != self.positions_dtype):
            del arrays
            for fname in (_FEATURES, _POSITIONS, _PROGRESS):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(self._partial, fname))
            return False
        self._features, self._positions = arrays
        chunks = _check_chunk_list(progress["chunks"], self.n_frames)
        infos = progress.get("infos")
        if not isinstance(infos, list) or len(infos) != len(chunks):
            infos = [None] * len(chunks)
        start = 0
        for (stop, want_f, want_p), info in zip(chunks, infos):
            block = (self._features[start:stop], self._positions[start:stop])
            if _chunk_digests(*block) != (want_f, want_p):
                break  # damaged since it was committed: this and later chunks are written again
            for digest, part in zip(self._digests, block):
                digest.update(memoryview(part).cast("B"))
            self._chunks.append([stop, want_f, want_p])
            self._infos.append(info)
            self.resumed_info = info
            start = stop
        self.n_written = start
        return True

    def _abort(self, keep: bool = False) -> None:
        """Remove the partial directory; with ``keep``, leave a resumable one for the next writer."""
        self._features = self._positions = None  # unmap before deleting
        keep = (keep and self.resume_key is not None and self._partial is not None
                and (bool(self._chunks) or self._claimed))
        if keep:
            self._state = "aborted"
            if self._cleanup is not None:
                self._cleanup.detach()  # first: a second ^C below must not delete it
            parent = os.path.dirname(self.directory)
            with _directory_lock(parent):  # ownerless with a progress file: claimable
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(self._partial, _OWNER))
        elif self._cleanup is not None:
            self._cleanup()  # removes the partial directory once
        self._state = "aborted"

    # ---------------------------------------------------------------- write
    def write(self, features: np.ndarray, positions: np.ndarray) -> None:
        """Append a block of consecutive frames.

        Parameters
        ----------
        features : ndarray of shape (k, n_residues, 4, H)
            Features of the next ``k`` frames; cast to the store dtype.
        positions : ndarray of shape (k, n_residues, 3)
            Positions of the same frames, in Angstrom.
        """
        self._open()
        features = np.asarray(features)
        positions = np.asarray(positions)
        want_f = (self.n_residues, 4, self.n_channels)
        if features.ndim != 4 or features.shape[1:] != want_f:
            raise ValueError(
                f"features block must have shape (k, {', '.join(map(str, want_f))}); "
                f"got {features.shape}"
            )
        if positions.ndim != 3 or positions.shape[1:] != (self.n_residues, 3):
            raise ValueError(
                f"positions block must have shape (k, {self.n_residues}, 3); "
                f"got {positions.shape}"
            )
        k = features.shape[0]
        if positions.shape[0] != k:
            raise ValueError(
                f"features block has {k} frames but positions block has {positions.shape[0]}"
            )
        if self.n_written + k > self.n_frames:
            done = self.n_written
            self._abort()
            raise ValueError(
                f"writing {k} more frames after {done} would exceed n_frames="
                f"{self.n_frames}; the partial store was discarded"
            )
        stop = self.n_written + k
        self._features[self.n_written : stop] = features
        self._positions[self.n_written : stop] = positions
        if k:
            for digests in (self._digests, self._chunk_digests):
                for digest, array in zip(digests, (self._features, self._positions)):
                    digest.update(memoryview(array[self.n_written : stop]).cast("B"))
        self.n_written = stop
        _kill_point("mid-chunk")

    def checkpoint(self, info: Mapping[str, Any] | None = None) -> None:
        """End the current chunk: flush it to disk and record its checksum.

        With a ``resume_key``, the chunk is then committed: a writer that
        takes over after an interruption keeps it.

        Parameters
        ----------
        info : dict or None, default=None
            JSON-serialisable state to hand to a writer that resumes after
            this checkpoint (its :attr:`resumed_info`).
        """
        self._open()
        if info is not None:
            info = json.loads(json.dumps(dict(info), default=_json_default))
        stop = self._chunks[-1][0] if self._chunks else 0
        if self.n_written == stop:
            if info is not None and self._infos:
                self._infos[-1] = info  # nothing new to commit; the info goes with the last chunk
            else:
                return
        else:
            self._features.flush()  # msync: the chunk is on disk before it is recorded
            self._positions.flush()
            self._chunks.append([self.n_written, *(d.hexdigest() for d in self._chunk_digests)])
            self._infos.append(info)
            self._chunk_digests = (hashlib.sha256(), hashlib.sha256())
        if self.resume_key is not None:
            progress = {"layout": self._layout(), "chunks": self._chunks, "infos": self._infos}
            _write_json_atomic(os.path.join(self._partial, _PROGRESS), progress)

    def finalize(
        self,
        *,
        residue_names: Sequence[str],
        chain_ids: Sequence[str | int],
        residue_ids: Sequence[int],
        timestep: float | None = None,
        provenance: Mapping[str, Any] | None = None,
    ) -> TokenTrajectory:
        """Write the metadata and move the store into place.

        Parameters
        ----------
        residue_names, chain_ids, residue_ids, timestep, provenance
            As in :class:`TokenTrajectory`.

        Returns
        -------
        TokenTrajectory
            The new store, memory-mapped read-only (or :attr:`existing`).

        Raises
        ------
        ValueError
            If fewer than ``n_frames`` frames were written or the metadata is
            invalid; the partial store is then discarded (a resumable
            writer's committed chunks are kept for the next writer).
        OSError
            If the disk fills while the metadata is written; the partial
            store is then discarded (kept, as above, for a resumable writer).
        """
        if self.existing is not None:
            return self.existing  # if_busy="wait" found another writer's store
        self._open()
        try:
            if self.n_written != self.n_frames:
                raise ValueError(
                    f"only {self.n_written} of n_frames={self.n_frames} frames were "
                    "written; the partial store was discarded"
                )
            names, chains, resids, timestep, prov = _validate_metadata(
                self.n_residues, residue_names, chain_ids, residue_ids, timestep, provenance
            )
            if (self._chunks[-1][0] if self._chunks else 0) != self.n_written:
                self._chunks.append([self.n_written, *(d.hexdigest() for d in self._chunk_digests)])
            _kill_point("after-last-chunk")
            self._features.flush()
            self._positions.flush()
            self._features = self._positions = None
            partial = self._partial
            for fname in (_FEATURES, _POSITIONS):
                _fsync(os.path.join(partial, fname))
            meta = {
                "format": _FORMAT,
                "format_version": _FORMAT_VERSION,
                "store_id": self._store_id(),
                "n_frames": self.n_frames,
                "n_residues": self.n_residues,
                "n_channels": self.n_channels,
                "dtype": self.dtype.str,
                "positions_dtype": self.positions_dtype.str,
                "features_shape": [self.n_frames, self.n_residues, 4, self.n_channels],
                "positions_shape": [self.n_frames, self.n_residues, 3],
                "residue_names": list(names),
                "chain_ids": list(chains),
                "residue_ids": resids.tolist(),
                "timestep": timestep,
                "provenance": prov,
                "chunks": self._chunks,
            }
            try:
                _write_json_atomic(os.path.join(partial, _META), meta, indent=1)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise self._disk_full("the disk filled while its metadata was written",
                                          kept=self.resume_key is not None) from exc
                raise
            _fsync(partial)
            tokens = self._commit(partial)
        except BaseException:
            if self._state == "open":
                # every frame is written: whatever failed (an interrupt, a full disk, a
                # target that is not a store), a resumable write's chunks stay for the next
                self._abort(keep=True)
            raise
        self._state = "finalized"
        self._cleanup.detach()
        return tokens

    def _store_id(self) -> str:
        """A digest of the arrays' shapes, dtypes and bytes: equal data, equal id."""
        digest = hashlib.sha256()
        for array_digest, shape, dtype in (
            (self._digests[0], (self.n_frames, self.n_residues, 4, self.n_channels), self.dtype),
            (self._digests[1], (self.n_frames, self.n_residues, 3), self.positions_dtype),
        ):
            digest.update(f"{shape}{dtype.str}".encode())
            digest.update(array_digest.digest())
        return digest.hexdigest()[:32]

    def _commit(self, partial: str) -> TokenTrajectory:
        """Move ``partial`` into place under the parent's lock; open the store there.

        Under the lock no other commit of this parent is half-way, so the
        debris of killed ones can go, and the store is opened before another
        writer may replace it.
        """
        target = self.directory
        parent, name = os.path.split(target)
        with _directory_lock(parent) as locked:
            if locked:
                _remove_debris(parent, name)
            if self.if_exists == "keep" and _is_complete(target):
                _remove_tree(partial)  # the same key was committed first by another writer
                return _open_store(target, "r")
            _check_target(target)
            os.remove(os.path.join(partial, _OWNER))  # ownerless under the lock: in its commit
            if os.path.lexists(target) and not os.listdir(target):
                os.rmdir(target)
            aside = None
            if os.path.lexists(target):
                aside = os.path.join(parent, f"{name}.old-{secrets.token_hex(6)}")
                os.rename(target, aside)
                try:
                    _kill_point("mid-commit")
                    os.rename(partial, target)
                except BaseException:
                    os.rename(aside, target)
                    raise
            else:
                _kill_point("mid-commit")
                os.rename(partial, target)
            with contextlib.suppress(FileNotFoundError):  # kept until now for a resume
                os.remove(os.path.join(target, _PROGRESS))
            _fsync(parent)
            tokens = _open_store(target, "r")
        if aside is not None:  # a large old store is deleted without holding up other writers
            _remove_tree(aside)
        return tokens


def _write_json_atomic(path: str, obj: Any, indent: int | None = None) -> None:
    """Write JSON to ``path`` through a temporary file and a rename, fsynced."""
    tmp = f"{path}.tmp-{secrets.token_hex(4)}"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, default=_json_default, indent=indent)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def human_bytes(n_bytes: float) -> str:
    """A byte count as people write it: "3.6 kB", "267 MB", "1.2 GB".

    (Here, not in _utils, so that this module imports nothing of the package:
    tests load it alone in subprocesses.)
    """
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.3g} {unit}"
    return f"{int(n_bytes)} bytes"


def _reserve(path: str, disk_full) -> None:
    """Allocate the blocks of the file at ``path``, so that writing through a memory map
    cannot hit a full disk (which would kill the process with SIGBUS)."""
    if not hasattr(os, "posix_fallocate"):
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise disk_full("the filesystem could not reserve the space") from exc
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    finally:
        os.close(fd)


class RamTokenWriter:
    """In-memory twin of :class:`TokenStoreWriter`, with the same write/checkpoint/finalize protocol.

    For embeddings kept in RAM: the writer the embedder uses when there is
    no store directory.

    Parameters
    ----------
    shape : tuple of int
        ``(n_frames, n_residues)``.
    hidden : int
        Channels H.
    """

    def __init__(self, shape, hidden):
        self.features = np.empty((*shape, 4, hidden), dtype=np.float32)
        self.positions = np.empty((*shape, 3), dtype=np.float32)
        self.n_written = 0
        self.resumed_info = None
        self.existing = None  # as TokenStoreWriter's: never another writer's store here

    def checkpoint(self, info=None):
        """Nothing to commit: frames in RAM do not outlive the process."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, features, positions):
        stop = self.n_written + len(features)
        self.features[self.n_written:stop] = features
        self.positions[self.n_written:stop] = positions
        self.n_written = stop

    def finalize(self, **metadata):
        if self.n_written != len(self.features):
            raise ValueError(
                f"Read {self.n_written} frames, but the trajectory announced {len(self.features)}."
            )
        return TokenTrajectory(self.features, self.positions, **metadata)


def save_tokens(tokens: TokenTrajectory, directory: str | os.PathLike) -> TokenTrajectory:
    """Write a token trajectory to a store, atomically.

    Parameters
    ----------
    tokens : TokenTrajectory
        Tokens to save; may itself be memory-mapped (it is copied in blocks).
    directory : str or path-like
        Store directory. An existing complete store there is replaced only once
        the new one is complete.

    Returns
    -------
    TokenTrajectory
        The saved tokens, memory-mapped read-only from ``directory``.

    See Also
    --------
    load_tokens : Opens a store again.
    GeomEmbedder : Its ``store_dir`` writes stores while embedding.

    Notes
    -----
    A store is a directory holding ``features.npy``, ``positions.npy`` and
    ``meta.json`` (residue metadata, time step, provenance). The arrays go
    into a temporary sibling directory, ``meta.json`` last, and that
    directory is then renamed, so an interrupted write never leaves a store
    that looks complete.

    Examples
    --------
    >>> import os
    >>> import tempfile
    >>> import numpy as np
    >>> from g2v_sklearn import TokenTrajectory, save_tokens
    >>> tokens = TokenTrajectory(np.ones((10, 3, 4, 8), np.float32), np.zeros((10, 3, 3), np.float32),
    ...                          residue_names=["ACE", "ALA", "NME"], chain_ids=["A"] * 3,
    ...                          residue_ids=[1, 2, 3])
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     saved = save_tokens(tokens, os.path.join(tmp, "run0"))
    ...     print(sorted(os.listdir(saved.path)))
    ...     print(saved.path == os.path.join(tmp, "run0"), np.array_equal(saved.features, tokens.features))
    ...     del saved
    ['features.npy', 'meta.json', 'positions.npy']
    True True
    """
    if not isinstance(tokens, TokenTrajectory):
        raise TypeError(f"tokens must be a TokenTrajectory; got {type(tokens).__name__}")
    n = tokens.n_frames
    frame_bytes = tokens.features[:1].nbytes + tokens.positions[:1].nbytes
    block = max(1, _COPY_BLOCK_BYTES // max(1, frame_bytes))
    with TokenStoreWriter(
        directory,
        n_frames=n,
        n_residues=tokens.n_residues,
        n_channels=tokens.n_channels,
        dtype=tokens.dtype,
        positions_dtype=tokens.positions.dtype,
    ) as writer:
        for start in range(0, n, block):
            writer.write(
                tokens.features[start : start + block], tokens.positions[start : start + block]
            )
            writer.checkpoint()  # one checksum per block
        return writer.finalize(
            residue_names=tokens.residue_names,
            chain_ids=tokens.chain_ids,
            residue_ids=tokens.residue_ids,
            timestep=tokens.timestep,
            provenance=tokens.provenance,
        )
