"""geom2vec's pretrained backbones by name: where they come from, their SHA-256, fetching them.

The registry :data:`BACKBONES` names geom2vec's three small pretrained files
(github.com/dinner-group/geom2vec, ``checkpoints/``, MIT licence) with the
SHA-256 of each file and of its key layout. :func:`fetch_backbone` resolves a
name to a verified local file:

* from the folder or URL in ``$G2V_MIRROR`` when it is set (a folder is read
  in place, a URL is downloaded like the default address), else
* from ``https://github.com/dinner-group/geom2vec/raw/<commit>/checkpoints/<file>``
  at the pinned :data:`GEOM2VEC_COMMIT`,

downloaded through pooch into the per-user cache (``$G2V_CACHE``, by default
``~/.cache/g2v_sklearn`` on Linux): to a temporary file in the cache folder,
checked against its SHA-256, then renamed into place, so a download that is
cut off, or that brings other bytes, never leaves a file under the final name,
and two processes fetching at once each end with the verified file. A cached
file is checked again on every use; one whose hash is wrong is removed and
fetched anew.

:func:`check_known_file` is the other half: a local checkpoint whose name or
key layout says it is one of these files, but whose hash is another, gets a
:class:`CheckpointWarning` that names both hashes.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

__all__ = [
    "BACKBONES",
    "CACHE_ENV",
    "CheckpointWarning",
    "GEOM2VEC_COMMIT",
    "MIRROR_ENV",
    "KnownBackbone",
    "backbone_source",
    "cache_dir",
    "check_known_file",
    "fetch_backbone",
    "file_sha256",
    "key_layout_sha256",
    "missing_file_hint",
    "resolve_checkpoint",
]

#: The geom2vec commit whose ``checkpoints/`` files the names resolve to (its ``checkpoints/``
#: holds the three hidden-size-64 files in git itself, not in Git LFS).
GEOM2VEC_COMMIT = "371d642ec1061664f16e49fcac702d07fc8d0b51"
_DEFAULT_BASE = f"https://github.com/dinner-group/geom2vec/raw/{GEOM2VEC_COMMIT}/checkpoints/"
#: A folder or URL (``http://``, ``https://``) that holds the files under their own names.
MIRROR_ENV = "G2V_MIRROR"
#: The folder fetched files are kept in (default: the per-user cache of g2v_sklearn).
CACHE_ENV = "G2V_CACHE"
_TIMEOUT = 60  # seconds without a byte before a download is given up


class CheckpointWarning(UserWarning):
    """A checkpoint looks like one of geom2vec's published files but is not that file.

    Its name or its key layout is that of a file in the registry of named
    backbones, but its SHA-256 is another: a damaged copy (torch does not
    check the zip archive's CRCs, so a few overwritten bytes load and give
    wrong tokens silently) or another training of the same network.

    Examples
    --------
    Refuse such files outright:

    >>> import warnings
    >>> from g2v_sklearn import CheckpointWarning
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("error", CheckpointWarning)
    ...     issubclass(CheckpointWarning, UserWarning)
    True
    """


@dataclass(frozen=True)
class KnownBackbone:
    """One of geom2vec's published checkpoint files."""

    name: str
    filename: str
    sha256: str
    layout_sha256: str  # key_layout_sha256 of its state_dict
    description: str


#: geom2vec's pretrained backbones by the name ``GeomEmbedder`` takes. Hashes computed
#: from the files of commit :data:`GEOM2VEC_COMMIT`.
BACKBONES = {
    "visnet": KnownBackbone(
        "visnet", "visnet_l6_h64_rbf64_r75.pth",
        "b8f1ef9b591c57f7687566bd60d3664800956ac280cf2ae8e64f54196cd8d417",
        "9bdfb026b2bbca66affd93cddb130707e2cdc4851f5b93e2578fef4b27294923",
        "ViSNet, 6 layers, hidden 64, 64 RBFs, 7.5 Angstrom"),
    "et": KnownBackbone(
        "et", "et_l6_h64_rbf64_r75.pth",
        "6ff644be59502177fe3d80c0fee921b1ab7a1b9c7a766ddf21b1b053c9169391",
        "6ca46d780994a31ec13660d78c96be15afbdacecfbccc3a897c9116b03f2c59c",
        "TorchMD-Net equivariant transformer, 6 layers, hidden 64, 64 RBFs, 7.5 Angstrom"),
    "tensornet": KnownBackbone(
        "tensornet", "tensornet_l3_h64_rbf32_r5.pth",
        "f155b0c895047f376794981623c6ede369a09083b0103043c8b427ab36bcf2e6",
        "cff0a963a4ce557045efdc51b642937bcc2e25c3b0143f2324cee61542146489",
        "TensorNet, 3 layers, hidden 64, 32 RBFs, 5 Angstrom"),
}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def key_layout_sha256(state: dict[str, Tensor]) -> str:
    """SHA-256 of a state_dict's keys and shapes (one ``key:shape`` line each, sorted)."""
    lines = "\n".join(f"{key}:{tuple(value.shape)}" for key, value in sorted(state.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def cache_dir() -> Path:
    """The folder fetched backbones are kept in: ``$G2V_CACHE``, else the per-user cache."""
    if os.environ.get(CACHE_ENV):
        return Path(os.path.expanduser(os.environ[CACHE_ENV]))
    import pooch

    return Path(pooch.os_cache("g2v_sklearn"))


def _is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def _known(name: str) -> KnownBackbone:
    try:
        return BACKBONES[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(BACKBONES), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        raise ValueError(
            f"Unknown backbone name {name!r}: the named backbones are "
            f"{', '.join(repr(n) for n in BACKBONES)}{hint} A checkpoint file is given by its path."
        ) from None


def backbone_source(name: str) -> str:
    """Where ``name``'s file comes from: a URL, or a path in the ``$G2V_MIRROR`` folder."""
    known = _known(name)
    mirror = os.environ.get(MIRROR_ENV, "")
    if not mirror:
        return _DEFAULT_BASE + known.filename
    if _is_url(mirror):
        return mirror.rstrip("/") + "/" + known.filename
    return os.path.join(os.path.expanduser(mirror.removeprefix("file://")), known.filename)


def _where(url: str, cache: Path) -> str:
    """The part of every fetch error that says where from, where to, and what to set."""
    mirror = os.environ.get(MIRROR_ENV)
    return (
        f"(URL {url}; cache folder {cache}"
        + (f", from ${CACHE_ENV}" if os.environ.get(CACHE_ENV) else f", set ${CACHE_ENV} to move it")
        + (f"; ${MIRROR_ENV}={mirror}" if mirror else f"; ${MIRROR_ENV} unset")
        + ")"
    )


def fetch_backbone(name: str, *, progress: bool = False) -> str:
    """Path of a verified local copy of one of geom2vec's pretrained backbones.

    The first call downloads the file (through pooch) into the per-user
    cache; later calls find it there, check its SHA-256 and download
    nothing. On a compute node without internet access, fetch on a machine
    with it into a cache both see (``g2v fetch``), or point ``$G2V_MIRROR``
    at a folder or server that holds the files.

    Parameters
    ----------
    name : {"visnet", "et", "tensornet"}
        geom2vec's ViSNet (``visnet_l6_h64_rbf64_r75.pth``), equivariant
        transformer (``et_l6_h64_rbf64_r75.pth``) or TensorNet
        (``tensornet_l3_h64_rbf32_r5.pth``), all of hidden size 64.
    progress : bool, default=False
        Show a progress bar while downloading.

    Returns
    -------
    path : str
        The verified file: in the cache folder (``$G2V_CACHE``, by default
        ``~/.cache/g2v_sklearn`` on Linux), or in the ``$G2V_MIRROR`` folder
        when that is a folder.

    Raises
    ------
    ValueError
        For an unknown name, or a file whose SHA-256 is not the registry's
        (a download is deleted; a file in the mirror folder is left alone).
    ConnectionError
        When the server cannot be reached or the download breaks off
        (nothing is left in the cache).
    PermissionError
        When the cache folder cannot be written.
    FileNotFoundError
        When ``$G2V_MIRROR`` is a folder without the file.

    Notes
    -----
    The files are those of geom2vec (Pengmei et al., J. Chem. Phys. 162,
    2025), github.com/dinner-group/geom2vec, ``checkpoints/`` at commit
    :data:`GEOM2VEC_COMMIT`, under the MIT licence. Every error names the
    URL, the cache folder and the environment variables.

    Examples
    --------
    >>> from g2v_sklearn import fetch_backbone
    >>> path = fetch_backbone("visnet")  # doctest: +SKIP
    >>> path  # doctest: +SKIP
    '/home/me/.cache/g2v_sklearn/visnet_l6_h64_rbf64_r75.pth'
    """
    known = _known(name)
    source = backbone_source(name)
    if not _is_url(source):
        return _from_folder(known, source)
    cache = cache_dir()
    target = cache / known.filename
    if target.is_file():
        found = file_sha256(target)
        if found == known.sha256:
            return str(target)
        warnings.warn(
            f"The cached {known.filename} has SHA-256 {found}, not geom2vec's {known.sha256}: it is "
            f"damaged; it was removed and is fetched again {_where(source, cache)}.",
            CheckpointWarning, stacklevel=2,
        )
        target.unlink(missing_ok=True)
    return _download(known, source, cache, progress)


def _from_folder(known: KnownBackbone, path: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"${MIRROR_ENV} is the folder {os.path.dirname(path)}, which has no {known.filename}: "
            f"copy geom2vec's file there (or fetch it with `g2v fetch {known.name}` on a machine "
            f"with internet access, with {MIRROR_ENV} unset), or unset {MIRROR_ENV} to download it "
            f"from {_DEFAULT_BASE + known.filename} into {cache_dir()}."
        )
    found = file_sha256(path)
    if found != known.sha256:
        raise ValueError(
            f"{path} (from ${MIRROR_ENV}) has SHA-256 {found}, but geom2vec's {known.filename} has "
            f"{known.sha256}: the copy is damaged or another file. It was not used (nor removed: "
            f"the folder is not g2v_sklearn's). Replace it with a good copy, or unset {MIRROR_ENV} "
            f"to download the file from {_DEFAULT_BASE + known.filename} into {cache_dir()}."
        )
    return path


def _download(known: KnownBackbone, url: str, cache: Path, progress: bool) -> str:
    import pooch
    import requests

    where = _where(url, cache)
    try:
        # pooch streams into a temporary file in the cache folder, checks the hash, and
        # renames it into place: the final name only ever holds a verified file
        return pooch.retrieve(
            url, known_hash=f"sha256:{known.sha256}", fname=known.filename, path=cache,
            downloader=pooch.HTTPDownloader(progressbar=progress, timeout=_TIMEOUT),
        )
    except PermissionError as exc:
        raise PermissionError(
            f"Cannot write geom2vec's {known.filename} into the cache folder {cache}: it is "
            f"read-only here ({exc.strerror or exc}). Set {CACHE_ENV} to a writable folder, or "
            f"fill this one where it is writable (`g2v fetch {known.name}`) {where}."
        ) from exc
    except requests.RequestException as exc:
        if isinstance(exc, requests.exceptions.ChunkedEncodingError):
            what = (f"The download of geom2vec's {known.filename} broke off ({exc}); nothing was "
                    f"kept in the cache, so the next try starts over")
        else:
            what = (f"Could not download geom2vec's {known.filename} ({type(exc).__name__}: "
                    f"{exc}); nothing was kept in the cache")
        raise ConnectionError(
            f"{what}. Without internet access here, fetch it where there is (`g2v fetch "
            f"{known.name}`) into a cache this machine sees, or set {MIRROR_ENV} to a folder or "
            f"server holding the file {where}."
        ) from exc
    except ValueError as exc:  # pooch: the hash of the download is not the known one
        got = re.search(r"got ([0-9a-fA-F]{64})", str(exc))
        raise ValueError(
            f"The file served for {known.filename} is not geom2vec's: its SHA-256 is "
            f"{got[1] if got else 'another'}, not {known.sha256}. The download was deleted and "
            f"nothing was kept in the cache; check {MIRROR_ENV} or the server {where}."
        ) from exc
    except OSError as exc:  # a read-only file system, a full disk
        raise PermissionError(
            f"Cannot write geom2vec's {known.filename} into the cache folder {cache} "
            f"({type(exc).__name__}: {exc}). Set {CACHE_ENV} to a writable folder {where}."
        ) from exc


def resolve_checkpoint(checkpoint: str | os.PathLike, *, progress: bool = False) -> str | os.PathLike:
    """A local file for ``checkpoint``: a name of :data:`BACKBONES` is fetched, a path is kept.

    Only the bare names (``"visnet"``, ``"et"``, ``"tensornet"``) are names;
    everything else is a path, read as it always was (a file called ``et``
    in the working folder is ``"./et"``).
    """
    if isinstance(checkpoint, str) and checkpoint in BACKBONES:
        return fetch_backbone(checkpoint, progress=progress)
    return checkpoint


def missing_file_hint(path: str | os.PathLike) -> str:
    """For a checkpoint path that does not exist: the name that fetches it, if it has one."""
    name = os.path.basename(os.fspath(path))
    for known in BACKBONES.values():
        if name == known.filename:
            return (f" GeomEmbedder({known.name!r}) fetches geom2vec's {known.filename} by name "
                    f"(and verifies it).")
    return ""


def check_known_file(path: str | os.PathLike, state: dict[str, Tensor], sha256: str) -> None:
    """Warn when ``path`` is named or laid out as one of :data:`BACKBONES` but is another file.

    Parameters
    ----------
    path : str or path-like
        The checkpoint file.
    state : dict
        Its state_dict, as read.
    sha256 : str
        SHA-256 of the file.
    """
    if any(known.sha256 == sha256 for known in BACKBONES.values()):
        return
    name = os.path.basename(os.fspath(path))
    layout = key_layout_sha256(state)
    for known in BACKBONES.values():
        if name == known.filename:
            why = f"is named as geom2vec's {known.filename}"
        elif layout == known.layout_sha256:
            why = f"has the key layout of geom2vec's {known.filename}"
        else:
            continue
        warnings.warn(
            f"Checkpoint {os.fspath(path)!r} {why} (SHA-256 {known.sha256}), but its SHA-256 is "
            f"{sha256}: it is a damaged copy (a few overwritten bytes load without error and "
            f"change the tokens) or another training of that network. "
            f"GeomEmbedder({known.name!r}) uses the verified file; if this one is your own "
            f"training, silence this with warnings.filterwarnings('ignore', "
            f"category=g2v_sklearn.CheckpointWarning).",
            CheckpointWarning, stacklevel=3,
        )
        return
