"""Writing token stores: atomically, crash-safe, by concurrent writers.

Data go to a sibling ``<directory>.partial-<random>`` directory,
``meta.json`` is written last, and the directory is then renamed to its
final name (under the parent's lock, :mod:`._locks`), so an interrupted
write never leaves anything at ``directory`` that looks complete. A writer
given a ``resume_key`` also records its committed chunks in the partial
directory, so that a writer killed mid-way, or ended by any exception, can
be resumed by the next one with the same key. A cache's writer
(``if_busy="wait"``) that finds a live writer filling the same store waits
for it, by the same liveness check, instead of writing a second copy.

Tests kill a writer at named points (:data:`FAULT_POINTS`) through a hook
they install with :func:`set_fault_hook`; without one nothing happens there.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import shutil
import time
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ._format import (_FEATURES, _FORMAT, _FORMAT_VERSION, _META, _POSITIONS, _abspath, _check_chunk_list,
                      _chunk_digests, _is_complete, _open_store)
from ._locks import (_OLD_RE, _OWNER, _PARTIAL_RE, _PROGRESS, _directory_lock, _listdir, _owner_record,
                     _writer_is_busy, _writer_is_gone)
from ._trajectory import (
    TokenTrajectory,
    _check_count,
    _float_dtype,
    _json_default,
    _Metadata,
    _validate_metadata,
)

__all__ = ["FAULT_POINTS", "RamTokenWriter", "TokenStoreWriter", "human_bytes", "save_tokens", "set_fault_hook"]

_WAIT_POLL_S = (0.05, 1.0)  # first and longest pause between looks at a busy store
_COPY_BLOCK_BYTES = 64 * 2**20  # frames copied per block by save_tokens

#: The points of a store write a fault hook is called at, by name.
FAULT_POINTS = ("mid-chunk", "after-last-chunk", "mid-commit")
_fault_hook: Callable[[str], None] | None = None


def set_fault_hook(hook: Callable[[str], None] | None) -> Callable[[str], None] | None:
    """Install ``hook``, called with the name of each of :data:`FAULT_POINTS` a write passes.

    For tests: a hook that kills the process at a point shows what a crash
    there leaves behind. None removes it. Returns the hook it replaces.
    """
    global _fault_hook
    previous, _fault_hook = _fault_hook, hook
    return previous


def _fault_point(point: str) -> None:
    if _fault_hook is not None:
        _fault_hook(point)


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
        _fault_point("mid-chunk")

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
            metadata = _validate_metadata(
                self.n_residues, residue_names, chain_ids, residue_ids, timestep, provenance
            )
            if (self._chunks[-1][0] if self._chunks else 0) != self.n_written:
                self._chunks.append([self.n_written, *(d.hexdigest() for d in self._chunk_digests)])
            _fault_point("after-last-chunk")
            self._features.flush()
            self._positions.flush()
            self._features = self._positions = None
            partial = self._partial
            for fname in (_FEATURES, _POSITIONS):
                _fsync(os.path.join(partial, fname))
            self._write_meta(partial, metadata)
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

    def _write_meta(self, partial: str, metadata: _Metadata) -> None:
        """``meta.json`` of the store, last of its files, fsynced with the directory."""
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
            "residue_names": list(metadata.residue_names),
            "chain_ids": list(metadata.chain_ids),
            "residue_ids": metadata.residue_ids.tolist(),
            "timestep": metadata.timestep,
            "provenance": metadata.provenance,
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
                    _fault_point("mid-commit")
                    os.rename(partial, target)
                except BaseException:
                    os.rename(aside, target)
                    raise
            else:
                _fault_point("mid-commit")
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
