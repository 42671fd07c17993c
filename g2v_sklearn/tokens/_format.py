"""The token store on disk: its format, reading it, and verifying its checksums.

A *store* is a directory holding ``features.npy``, ``positions.npy`` and
``meta.json``. ``meta.json`` is written last, so a directory without it is
no store. A store's ``store_id`` is a digest of its arrays, so a store
replaced by the same data is the same store to objects pickled from it.
Every committed chunk of frames carries a SHA-256 of its bytes in
``meta.json``, checked on load (``verify="full"``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Any

import numpy as np

from ._locks import _PARTIAL_RE, _directory_lock
from ._trajectory import StoreRef, TokenTrajectory, _validate_metadata

__all__ = ["is_complete_store", "load_tokens"]

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


def _abspath(directory: str | os.PathLike) -> str:
    return os.path.abspath(os.path.expanduser(os.fspath(directory)))


def _read_store(directory: str, mmap_mode: str | None,
                verify: str = "header") -> tuple[dict, np.ndarray, np.ndarray]:
    """Open a store; raise FileNotFoundError/ValueError if it is not complete.

    ``verify="full"`` also hashes every chunk against its checksum.
    """
    meta = _read_meta(directory)
    arrays = [_read_array(directory, meta, fname, key, dkey, mmap_mode) for fname, key, dkey in (
        (_FEATURES, "features_shape", "dtype"),
        (_POSITIONS, "positions_shape", "positions_dtype"),
    )]
    try:  # the residue metadata must describe the arrays' residues (what TokenTrajectory checks)
        _validate_metadata(arrays[0].shape[1], meta["residue_names"], meta["chain_ids"],
                           meta["residue_ids"], meta["timestep"], meta["provenance"])
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"token store {directory!r} is corrupt: its {_META} disagrees with its arrays ({exc})"
        ) from exc
    if verify == "full" and meta["format_version"] >= 2:
        _verify_chunks(directory, meta["chunks"], arrays[0], arrays[1])
    return meta, arrays[0], arrays[1]


def _read_meta(directory: str) -> dict:
    """A store's ``meta.json``, checked for format, version and keys; raises as :func:`_read_store`."""
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
    return meta


def _read_array(directory: str, meta: dict, fname: str, key: str, dkey: str, mmap_mode: str | None) -> np.ndarray:
    """One of a store's arrays, checked against the shape and dtype ``meta`` gives it."""
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
    return arr


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
        tokens._store = StoreRef(directory, mmap_mode, meta["store_id"], range(features.shape[0]))
    return tokens
