"""Concurrent writers of one store: the parent directory's lock, and who is writing.

Concurrent writers of one store (threads, processes, joblib or Dask workers)
commit one at a time under an advisory lock (``flock``) on the parent
directory, which readers take shared while they open a store. A writer
fills a sibling ``<directory>.partial-<random>`` directory holding an owner
file (host and process); the lock and the owner file let a writer tell a
live writer from a killed one, whose debris it may remove.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time

# the suffixes the store makes (secrets.token_hex(6)); names like run.old-1 stay the user's
_PARTIAL_RE = re.compile(r"\.partial-[0-9a-f]{12}$")
_OLD_RE = re.compile(r"\.old-[0-9a-f]{12}$")
_OWNER = "writer.json"  # in a partial directory: the host and process writing it
_PROGRESS = "progress.json"  # in a resumable partial directory: its committed chunks
_ORPHAN_AGE_S = 600.0  # a partial directory without an owner file this old is debris
# a writer on another host (not provably alive or dead) is waited for while its partial
# directory changed this recently
_STALE_WRITER_S = 600.0


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
