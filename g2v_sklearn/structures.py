"""Structures of metastable sets: representative frames written as files mdtraj reloads,
and the residues that distinguish each set.

:func:`save_structures` takes a :class:`~g2v_sklearn.KineticModel` and the
trajectories its frames came from (what was given to :class:`GeomEmbedder`:
mdtraj trajectories, file paths with a topology, or MDAnalysis Universes) and
writes, for every set, its most typical frame as a PDB file and frames drawn
by membership as one DCD or XTC file (with a PDB of the first as topology).
Every file is written under a temporary name and renamed when complete, so
an interrupted call never leaves a half-written file.

:func:`state_importance` scores every residue for every set by substitution:
the residue's tokens in frames of the other sets are replaced by its tokens
in frames of the set, and the learned coordinates move by how much that one
residue's change carries. :func:`save_structures` writes the scores into the
B-factor column of each set's typical structure.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import mdtraj as md
import numpy as np

from .embedding import _mdanalysis as mdanalysis

__all__ = ["save_structures", "source_frames", "state_importance"]

_FORMATS = ("xtc", "dcd")
#: Frames per transform call in state_importance: several residues' substitutions at once.
_FRAMES_PER_CALL = 2048


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

    Examples
    --------
    >>> import mdtraj as md
    >>> import numpy as np
    >>> from g2v_sklearn import source_frames
    >>> top = md.Topology()
    >>> _ = top.add_atom("CA", md.element.carbon, top.add_residue("ALA", top.add_chain()))
    >>> trajs = [md.Trajectory(np.arange(30, dtype=np.float32).reshape(10, 1, 3), top)]
    >>> source_frames(trajs, [(0, 1), (0, 4)], stride=2).xyz[:, 0, 0].tolist()  # frames 2 and 8
    [6.0, 24.0]
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
    path = _readable_file(item, index, topology)
    return md.load_frame(path, frame, top=topology)


def _readable_file(item, index: int, topology) -> str:
    """``item``'s path, once it is known to exist and a topology to read it with is given."""
    path = os.fspath(item)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"The frames of trajectory {index} are read from {path!r}, which no longer exists; "
            f"restore the file or pass source= with its new place."
        )
    if topology is None:
        raise ValueError(f"Trajectory {index} is the file {path!r}: pass topology= to read its frames.")
    return path


def _write_atomic(path: Path, save) -> None:
    """``save(temporary_path)`` into a temporary file beside ``path``, renamed to it when complete."""
    handle, temporary = tempfile.mkstemp(suffix=path.suffix, prefix=f".{path.stem}.", dir=path.parent)
    os.close(handle)
    try:
        save(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_structures(model, folder, source=None, *, tokens=None, topology=None, stride=None,
                    n_samples: int = 10, format: str = "xtc", importance=None, random_state=None) -> dict:
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
    importance : ndarray of shape (n_sets, n_residues), optional
        From :func:`state_importance` (needs ``tokens``, whose residues it
        scores): also writes ``set{k}_importance.pdb``, the typical frame
        with each atom's B-factor the importance of its residue, scaled to
        99 for the set's most important residue (PDB files allow below 100).
    random_state : int, numpy.random.Generator or None

    Returns
    -------
    files : dict
        Per set ``k``: ``{"typical": path, "samples": path, "topology": path,
        "frames": ndarray of (trajectory, frame) pairs, typical first}``,
        and ``"importance": path`` when ``importance`` is given.

    Examples
    --------
    >>> import tempfile
    >>> import mdtraj as md
    >>> import numpy as np
    >>> from g2v_sklearn import MSMEstimator, kinetic_model, save_structures
    >>> top = md.Topology()
    >>> _ = top.add_atom("CA", md.element.carbon, top.add_residue("ALA", top.add_chain()))
    >>> dtraj = np.repeat([0, 1] * 20, 25)  # two states, 25 frames per visit
    >>> traj = md.Trajectory(dtraj.astype(np.float32).repeat(3).reshape(-1, 1, 3), top)  # at x=y=z=state
    >>> model = kinetic_model(MSMEstimator(lagtime=1).fit([dtraj]), [dtraj], n_sets=2)
    >>> folder = tempfile.mkdtemp()
    >>> files = save_structures(model, folder, [traj], n_samples=3, random_state=0)
    >>> [md.load(str(files[k]["typical"])).xyz[0, 0, 0] == dtraj[files[k]["frames"][0, 1]] for k in files]
    [np.True_, np.True_]
    """
    if format not in _FORMATS:
        raise ValueError(f"format must be one of {_FORMATS}; got {format!r}.")
    sources = _sources_of(source, tokens)
    if stride is None:
        strides = {int((getattr(t, "provenance", None) or {}).get("stride", 1)) for t in tokens or []}
        stride = strides.pop() if len(strides) == 1 else 1
    if len(sources) != len(model.assignments):
        raise ValueError(
            f"source has {len(sources)} trajectories, but the kinetic model was built from "
            f"{len(model.assignments)}: pass the trajectories given to GeomEmbedder, in their order."
        )
    for index, item in enumerate(sources):  # every file, not only those the draw reads: same error on any seed
        if isinstance(item, (str, os.PathLike)):
            _readable_file(item, index, topology)
    typical = model.typical_frames()
    drawn = model.sample_frames(n_samples, random_state=random_state)
    read = [(source_frames(sources, [typical[k]], topology=topology, stride=stride),
             source_frames(sources, drawn[k], topology=topology, stride=stride)) for k in range(model.n_sets)]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for k, (first, samples) in enumerate(read):
        paths = {"typical": folder / f"set{k}_typical.pdb", "samples": folder / f"set{k}_samples.{format}",
                 "topology": folder / f"set{k}_samples.pdb"}
        for traj, name in ((first, "typical"), (samples[0], "topology"), (samples, "samples")):
            _write_atomic(paths[name], lambda temporary, traj=traj: traj.save(temporary, force_overwrite=True))
        if importance is not None:
            paths["importance"] = folder / f"set{k}_importance.pdb"
            bfactors = _atom_values(first.topology, tokens, np.asarray(importance)[k])
            _write_atomic(paths["importance"],
                          lambda temporary: first.save_pdb(temporary, force_overwrite=True, bfactors=bfactors))
        files[k] = dict(paths, frames=np.vstack([np.asarray(typical[k])[None], drawn[k]]))
    return files


def _atom_values(topology: md.Topology, tokens, values: np.ndarray) -> np.ndarray:
    """Each atom's residue's value (scaled to 100 at the largest), 0 for residues without tokens.

    Residues are matched by chain and sequence number, the chain named as the
    embedder names it (its id, or its index where it has none)."""
    if tokens is None:
        raise ValueError("Writing importance into structures needs tokens= (the residues it scores).")
    template = tokens[0]
    if len(values) != template.n_residues:
        raise ValueError(f"importance has {len(values)} values per set but the tokens have "
                         f"{template.n_residues} residues.")
    # PDB B-factors must lie in (-10, 100): the set's most important residue gets 99, and
    # residues less distinctive than their own fluctuation (negative scores) no less than -9.9
    scaled = np.clip(99.0 * values / max(float(np.max(values)), np.finfo(float).tiny), -9.9, 99.0)
    table = {(str(c), int(r)): v for c, r, v in zip(template.chain_ids, template.residue_ids, scaled)}
    out = np.zeros(topology.n_atoms)
    for atom in topology.atoms:
        chain = atom.residue.chain
        out[atom.index] = table.get((str(getattr(chain, "chain_id", None) or chain.index), atom.residue.resSeq), 0.0)
    return out


def _coordinate_steps(estimator):
    """The part of a fitted pipeline that maps tokens to learned coordinates."""
    steps = list(estimator.steps) if hasattr(estimator, "steps") else [("model", estimator)]
    while steps and (hasattr(steps[-1][1], "cluster_centers_") or hasattr(steps[-1][1], "active_set_")):
        steps.pop()  # the discretiser and the MSM: they see coordinates, not residues
    if not steps:
        raise ValueError("state_importance needs the learner that maps tokens to coordinates; the "
                         "pipeline given has only a discretiser and an MSM.")
    return [step for _, step in steps if step is not None and step != "passthrough"]


def _coordinates(steps, tokens) -> np.ndarray:
    out = tokens
    for step in steps:
        out = step.transform(out)
    out = np.concatenate(out if isinstance(out, list) else [out])
    return out.reshape(len(out), -1)


def _frames_as_tokens(template, features, positions):
    from .tokens._trajectory import TokenTrajectory

    return TokenTrajectory(features, positions, residue_names=template.residue_names,
                           chain_ids=template.chain_ids, residue_ids=template.residue_ids,
                           timestep=template.timestep)


def state_importance(model, estimator, tokens, *, n_frames: int = 100, random_state=None) -> np.ndarray:
    """How much each residue distinguishes each metastable set, by token substitution.

    For set ``k``: ``n_frames`` frames of the other sets are drawn, and for
    every residue ``r`` its tokens are replaced by those of as many frames
    drawn from set ``k``; the importance of ``r`` for ``k`` is the mean
    distance the learned coordinates move, less the distance they move when
    the tokens come from other frames of the other sets instead (the
    residue's own fluctuation). A residue whose tokens do not differ between
    the sets scores about 0, whatever the network; one that changes but that
    the network ignores scores about 0 too. Only ``transform`` is used, so
    any learner and merger work, and the answer is about the fitted model
    over many frames, not a gradient at one point.

    Parameters
    ----------
    model : KineticModel
        Its ``assignments`` say which frame is in which set.
    estimator : Pipeline
        The fitted pipeline the model came from (its discretiser and MSM are
        skipped), or the steps that map tokens to coordinates.
    tokens : list of TokenTrajectory
        The token trajectories the model's frames index.
    n_frames : int, default=100
        Frames drawn per set (with replacement where a set has fewer).
    random_state : int, numpy.random.Generator or None

    Returns
    -------
    importance : ndarray of shape (n_sets, n_residues)
        In the units of the learned coordinates; larger is more distinctive,
        and values near or below 0 mean not distinctive.

    Examples
    --------
    The importance a fitted pipeline gives each residue of alanine
    dipeptide's tokens, for each of two sets (from the guide; needs a fit)::

        model = kinetic_model(pipe, tokens, n_sets=2)      # pipe: merge, vamp, cluster, msm
        importance = state_importance(model, pipe, tokens)  # shape (2, 3)
        plotting.plot_state_importance(importance, residue_ids=tokens[0].residue_ids)
    """
    from ._utils import check_generator

    steps = _coordinate_steps(estimator)
    rng = check_generator(random_state)
    where, sets = model.frame_index, np.concatenate(model.assignments)
    n_res = tokens[0].n_residues
    importance = np.zeros((model.n_sets, n_res))
    for k in range(model.n_sets):
        mine, others = np.flatnonzero(sets == k), np.flatnonzero((sets >= 0) & (sets != k))
        if not len(mine) or not len(others):
            continue
        take = [where[rng.choice(pool, size=n_frames)] for pool in (others, mine, others)]
        base, donor, null = (np.stack([tokens[t].features[f] for t, f in pick]) for pick in take)
        positions = np.stack([tokens[t].positions[f] for t, f in take[0]])
        before = _coordinates(steps, [_frames_as_tokens(tokens[0], base, positions)])
        per_call = max(1, _FRAMES_PER_CALL // n_frames)  # residues substituted per transform call
        for first in range(0, n_res, per_call):
            block = np.arange(first, min(n_res, first + per_call))
            moved = []
            for source in (donor, null):
                swapped = np.repeat(base[None], len(block), axis=0)  # (residues, frames, ...)
                swapped[np.arange(len(block)), :, block] = source[:, block].transpose(1, 0, 2, 3)
                after = _coordinates(steps, [_frames_as_tokens(
                    tokens[0], swapped.reshape(-1, *base.shape[1:]), np.tile(positions, (len(block), 1, 1)))])
                shift = np.linalg.norm(after.reshape(len(block), n_frames, -1) - before[None], axis=2)
                moved.append(shift.mean(axis=1))
            importance[k, block] = moved[0] - moved[1]
    return importance
