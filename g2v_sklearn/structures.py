"""Structures of metastable sets: representative frames written as files mdtraj reloads.

:func:`save_structures` takes a :class:`~g2v_sklearn.KineticModel` and the
trajectories its frames came from (what was given to :class:`GeomEmbedder`:
mdtraj trajectories, file paths with a topology, or MDAnalysis Universes) and
writes, for every set, its most typical frame as a PDB file and frames drawn
by membership as one DCD or XTC file (with a PDB of the first as topology).
Every file is written under a temporary name and renamed when complete, so
an interrupted call never leaves a half-written file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import mdtraj as md
import numpy as np

from .embedding import _mdanalysis as mdanalysis

__all__ = ["save_structures", "source_frames"]

_FORMATS = ("xtc", "dcd")


def _sources_of(source, tokens):
    """The list of trajectories frames are read from; from the token stores' provenance
    (their source file) when ``source`` is None."""
    if source is not None:
        if isinstance(source, (md.Trajectory, str, os.PathLike)) or mdanalysis.is_mdanalysis(source):
            return [source]
        return list(source)
    if tokens is None:
        raise ValueError("save_structures needs source=: the trajectories the frames were embedded from.")
    paths = []
    for i, t in enumerate(tokens):
        origin = (getattr(t, "provenance", None) or {}).get("source")
        if origin is None or Path(str(origin)).suffix not in md.formats.registry.FormatRegistry.loaders:
            raise ValueError(
                f"Token trajectory {i} was embedded from {origin or 'an unknown source'}, which is "
                f"not a file it can be read back from; pass source= (the trajectories given to "
                f"GeomEmbedder) and topology=."
            )
        paths.append(origin)
    return paths


def source_frames(source, frames, *, topology=None, stride: int = 1) -> md.Trajectory:
    """The frames ``(trajectory, frame)`` of ``source`` (all atoms), as one mdtraj.Trajectory.

    Parameters
    ----------
    source : list of mdtraj.Trajectory, trajectory file paths or MDAnalysis Universes
        The trajectories, in the order they were embedded.
    frames : array-like of shape (n, 2)
        ``(trajectory index, frame index)`` pairs, frame indices counted in
        the embedded (strided) frames.
    topology : str, mdtraj.Topology or mdtraj.Trajectory, optional
        Needed for file paths.
    stride : int, default=1
        The embedder's ``stride``: frame ``j`` of the tokens is frame
        ``j * stride`` of the source.

    Returns
    -------
    mdtraj.Trajectory
    """
    frames = np.asarray(frames, dtype=np.int64).reshape(-1, 2)
    pieces = []
    for traj, frame in frames:
        if traj < 0 or traj >= len(source):
            raise IndexError(f"Frame ({traj}, {frame}) names trajectory {traj}, but source has {len(source)}.")
        pieces.append(_one_frame(source[traj], int(frame) * int(stride), traj, topology))
    return pieces[0].join(pieces[1:], check_topology=False) if len(pieces) > 1 else pieces[0]


def _one_frame(item, frame: int, index: int, topology) -> md.Trajectory:
    if isinstance(item, md.Trajectory):
        if frame >= item.n_frames:
            raise IndexError(f"Trajectory {index} has {item.n_frames} frames; frame {frame} was asked for.")
        return item[frame]
    if mdanalysis.is_mdanalysis(item):
        group = getattr(item, "atoms", item)
        group.universe.trajectory[frame]
        top = mdanalysis.mdanalysis_topology(group, False)
        return md.Trajectory(group.positions[None].astype(np.float32) / 10.0, top)
    path = os.fspath(item)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"The frames of trajectory {index} are read from {path!r}, which no longer exists; "
            f"restore the file or pass source= with its new place."
        )
    if topology is None:
        raise ValueError(f"Trajectory {index} is the file {path!r}: pass topology= to read its frames.")
    return md.load_frame(path, frame, top=topology)


def _write_atomic(traj: md.Trajectory, path: Path) -> None:
    handle, temporary = tempfile.mkstemp(suffix=path.suffix, prefix=f".{path.stem}.", dir=path.parent)
    os.close(handle)
    try:
        traj.save(temporary, force_overwrite=True)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_structures(model, folder, source=None, *, tokens=None, topology=None, stride=None,
                    n_samples: int = 10, format: str = "xtc", random_state=None) -> dict:
    """Write every metastable set's typical frame (PDB) and frames drawn by membership.

    Parameters
    ----------
    model : KineticModel
        From :func:`~g2v_sklearn.kinetic_model`.
    folder : str or Path
        Created if missing. Files: ``set{k}_typical.pdb``,
        ``set{k}_samples.{format}`` and ``set{k}_samples.pdb`` (its first
        frame, the topology to load it with).
    source : list, optional
        The trajectories given to :class:`GeomEmbedder` (mdtraj
        trajectories, file paths or MDAnalysis Universes). Without it, the
        source files recorded in ``tokens``' provenance are read.
    tokens : list of TokenTrajectory, optional
        The tokens the model was built from: their provenance gives the
        source files (when ``source`` is None) and the embedder's stride.
    topology : str, mdtraj.Topology or mdtraj.Trajectory, optional
        For sources that are file paths.
    stride : int, optional
        The embedder's stride (default: from ``tokens``' provenance, else 1).
    n_samples : int, default=10
    format : {"xtc", "dcd"}, default="xtc"
    random_state : int, numpy.random.Generator or None

    Returns
    -------
    files : dict
        Per set ``k``: ``{"typical": path, "samples": path, "topology": path,
        "frames": ndarray of (trajectory, frame) pairs, typical first}``.
    """
    if format not in _FORMATS:
        raise ValueError(f"format must be one of {_FORMATS}; got {format!r}.")
    sources = _sources_of(source, tokens)
    if stride is None:
        strides = {int((getattr(t, "provenance", None) or {}).get("stride", 1)) for t in tokens or []}
        stride = strides.pop() if len(strides) == 1 else 1
    typical = model.typical_frames()
    drawn = model.sample_frames(n_samples, random_state=random_state)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for k in range(model.n_sets):
        first = source_frames(sources, [typical[k]], topology=topology, stride=stride)
        samples = source_frames(sources, drawn[k], topology=topology, stride=stride)
        paths = {"typical": folder / f"set{k}_typical.pdb", "samples": folder / f"set{k}_samples.{format}",
                 "topology": folder / f"set{k}_samples.pdb"}
        _write_atomic(first, paths["typical"])
        _write_atomic(samples[0], paths["topology"])
        _write_atomic(samples, paths["samples"])
        files[k] = dict(paths, frames=np.vstack([np.asarray(typical[k])[None], drawn[k]]))
    return files
