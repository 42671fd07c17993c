"""Reading MD frames for the embedder, and checking that they are the topology's molecule.

:func:`as_sources` turns the user's X (trajectories or file paths) into
:class:`Source` objects, with errors in the user's terms; a
:class:`FrameReader` reads a source's selected atoms chunk by chunk (from a
given frame, for resumed embeddings) and checks every chunk's coordinates:
finite, molecules whole, and every covalent bond within the lengths its two
elements allow. Knows nothing of torch or scikit-learn.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import mdtraj as md
import numpy as np

from . import _mdanalysis as mdanalysis
from ._topology import select_atoms

__all__ = ["FrameReader", "Source", "as_sources", "bond_length_ranges", "select_source_atoms", "topology_of"]

NM_TO_ANGSTROM = 10.0
# No covalent bond is longer than this (S-S is about 2.05 Angstrom); a longer
# one means a molecule split by periodic boundaries or a wrong topology.
MAX_BOND_ANGSTROM = 3.0
# Covalent radii in Angstrom (Cordero et al., Dalton Trans. 2008; C sp3). A bond
# between elements a and b must lie in [0.68, 1.25] x (r_a + r_b) (+ 0.1): triple
# bonds reach down to about 0.77 x the sum (C#N 1.16 against 1.47, N#N 1.10 against
# 1.42), leaving room for vibration; the upper end is far above thermal stretching
# (the shipped alanine dipeptide and adenylate kinase stay within 0.85 of it, and
# 1.05 of the lower end with 0.75). Elements not listed are not checked.
COVALENT_RADIUS = {
    1: 0.31, 5: 0.84, 6: 0.76, 7: 0.71, 8: 0.66, 9: 0.57, 11: 1.66, 12: 1.41, 14: 1.11,
    15: 1.07, 16: 1.05, 17: 1.02, 19: 2.03, 20: 1.76, 25: 1.39, 26: 1.32, 27: 1.26,
    28: 1.24, 29: 1.32, 30: 1.22, 34: 1.20, 35: 1.20, 53: 1.39,
}


def bond_length_ranges(numbers: np.ndarray, bonds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest plausible length (Angstrom) of each bond; NaN where not checked."""
    total = typical_bond_lengths(numbers, bonds)
    return 0.68 * total, np.minimum(1.25 * total + 0.1, MAX_BOND_ANGSTROM)


def typical_bond_lengths(numbers: np.ndarray, bonds: np.ndarray) -> np.ndarray:
    """The sum of the two atoms' covalent radii (Angstrom) of each bond; NaN where unknown."""
    radius = np.array([COVALENT_RADIUS.get(int(z), np.nan) for z in numbers], dtype=np.float64)
    return radius[bonds[:, 0]] + radius[bonds[:, 1]]


def units_hint(lengths: np.ndarray, typical: np.ndarray) -> str:
    """What the bond lengths of one frame (Angstrom) say about the coordinates' unit.

    When (nearly) every bond is the same factor away from its typical length,
    the coordinates are in another unit (a power of ten) or scaled, and the
    hint says by what and what to do; otherwise it says what a unit mix-up
    would look like, and that this is not one.
    """
    known = np.isfinite(typical) & (typical > 0)
    ratios = lengths[known] / typical[known]
    generic = ("(A mix-up of units makes every bond about the same factor too long or too short: 10 "
               "times for coordinates in Angstrom where nanometres belong, 0.1 times the other way")
    if not ratios.size:
        return generic + ".)"
    factor = float(np.median(ratios))
    if not factor > 0:
        return generic + "; here the bonds have no length: placeholder coordinates, not another unit.)"
    together = np.mean(np.abs(ratios / factor - 1.0) < 0.3) >= 0.8
    if not together or 0.67 < factor < 1.5:
        return (f"{generic}; here they are {ratios.min():.2g} to {ratios.max():.2g} times their usual "
                f"length, so it is not that.)")
    power = 10.0 ** round(np.log10(factor))
    if abs(factor / power - 1.0) > 0.25:
        return (f"Every bond in that frame is about {factor:.2g} times its usual length: the coordinates "
                f"were scaled by about {factor:.2g}, or are in another unit.")
    if power == 10:
        what = ("coordinates in Angstrom where nanometres belong: an mdtraj.Trajectory's xyz is in "
                "nanometres, so divide it by 10 (or load the file with mdtraj, which converts its units)")
    elif power == 0.1:
        what = ("coordinates in nanometres where Angstrom belong (an MDAnalysis Universe's positions are "
                "in Angstrom), or an mdtraj.Trajectory's xyz divided by 10 once too often: multiply them "
                "by 10")
    else:
        what = (f"the coordinates are {power:g} times too {'large' if power > 1 else 'small'} for their "
                f"unit: multiply them by {1 / power:g}")
    return f"Every bond in that frame is about {power:g} times its usual length: {what}."


def chunk_bounds(first: int, n_frames: int, chunk_size: int):
    """(start, stop) of the chunks of ``n_frames`` frames from frame ``first``, each ending
    at a multiple of ``chunk_size`` (or at ``n_frames``)."""
    start = first
    while start < n_frames:
        stop = min(n_frames, (start // chunk_size + 1) * chunk_size)
        yield start, stop
        start = stop


@dataclass
class Source:
    """One input trajectory: an in-memory mdtraj.Trajectory, a file path, or an
    MDAnalysis AtomGroup (a Universe's ``atoms``, or a group the user chose)."""

    index: int
    traj: md.Trajectory | None = None
    path: str | None = None
    group: object | None = None  # MDAnalysis AtomGroup
    _topology: md.Topology | None = field(default=None, repr=False, compare=False)

    @property
    def label(self) -> str:
        if self.group is not None:
            return f"trajectory {self.index} ({mdanalysis.describe(self.group)})"
        return f"trajectory {self.index}" + (f" ({self.path!r})" if self.path else "")

    @property
    def description(self) -> str:
        """What the tokens' provenance records as their source."""
        if self.group is not None:
            return mdanalysis.describe(self.group)
        return self.path or "mdtraj.Trajectory"


def as_sources(X) -> list[Source]:
    if mdanalysis.is_mdanalysis(X):
        raise TypeError(
            f"X is a single {type(X).__name__}; GeomEmbedder expects a list of trajectories "
            f"(each one a sample, so cross-validation splits whole trajectories). Wrap it in a "
            f"list: embedder.fit_transform([universe])."
        )
    if isinstance(X, md.Trajectory):
        raise TypeError(
            "X is a single mdtraj.Trajectory; GeomEmbedder expects a list of trajectories "
            "(each one a sample, so cross-validation splits whole trajectories). Wrap it in "
            "a list: embedder.fit_transform([traj])."
        )
    if isinstance(X, (str, os.PathLike)):
        raise TypeError(
            f"X is a single path {os.fspath(X)!r}; GeomEmbedder expects a list of trajectories. "
            f"Wrap it in a list: [{os.fspath(X)!r}]."
        )
    try:
        items = list(X)
    except TypeError:
        raise TypeError(
            f"X must be a list of mdtraj.Trajectory objects, trajectory file paths or "
            f"MDAnalysis Universes; got {type(X).__name__}."
        ) from None
    if not items:
        raise ValueError("X is an empty list; GeomEmbedder needs at least one trajectory.")
    sources = []
    for index, item in enumerate(items):
        if isinstance(item, md.Trajectory):
            if item.n_frames == 0:
                raise ValueError(f"Trajectory {index} has no frames.")
            sources.append(Source(index, traj=item))
        elif isinstance(item, (str, os.PathLike)):
            path = os.fspath(item)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"Trajectory file {path!r} (X[{index}]) does not exist.")
            sources.append(Source(index, path=path))
        elif mdanalysis.is_mdanalysis(item):
            group = getattr(item, "atoms", item)  # a Universe's atoms, or the AtomGroup itself
            if group.n_atoms == 0:
                raise ValueError(f"X[{index}] is an empty MDAnalysis AtomGroup.")
            if np.unique(group.ix).size != group.n_atoms:
                raise ValueError(
                    f"X[{index}] is an MDAnalysis AtomGroup that holds some atoms more than once; "
                    f"embed each atom once (group.unique)."
                )
            if mdanalysis.n_frames_of(group) == 0:
                raise ValueError(f"Trajectory {index} ({mdanalysis.describe(group)}) has no frames.")
            sources.append(Source(index, group=group))
        else:
            raise TypeError(
                f"X[{index}] is a {type(item).__name__}; each trajectory must be an "
                f"mdtraj.Trajectory, a file path or an MDAnalysis Universe or AtomGroup."
            )
    return sources


def topology_of(source: Source, topology, *, elements_given: bool = False) -> md.Topology:
    """The topology of ``source``: its own for an mdtraj.Trajectory, else ``topology``
    (the embedder's parameter: a file, an mdtraj.Topology or an mdtraj.Trajectory); for
    an MDAnalysis group, its own, as an mdtraj.Topology (which needs elements unless
    ``elements_given``: the user passed ``atomic_numbers=``)."""
    if source.traj is not None:
        return source.traj.topology
    if source.group is not None:
        if source._topology is None:
            source._topology = mdanalysis.mdanalysis_topology(source.group, not elements_given)
        return source._topology
    if topology is None:
        raise ValueError(
            f"X[{source.index}] is a file path ({source.path!r}), so GeomEmbedder needs "
            f"topology= (a PDB/PSF/GRO file, an mdtraj.Topology or an mdtraj.Trajectory)."
        )
    if isinstance(topology, md.Trajectory):
        return topology.topology
    if isinstance(topology, md.Topology):
        return topology
    if not os.path.isfile(topology):
        raise FileNotFoundError(f"Topology file {os.fspath(topology)!r} does not exist.")
    return md.load_topology(os.fspath(topology))


def select_source_atoms(source: Source, topology: md.Topology, selection: str | None,
                        numbers: np.ndarray) -> np.ndarray:
    """Indices of the atoms to embed: :func:`~g2v_sklearn.embedding._topology.select_atoms`
    (mdtraj's selection language), or for an MDAnalysis group MDAnalysis's language."""
    if source.group is not None and selection is not None:
        indices = mdanalysis.mdanalysis_selection(source.group, selection)
        if indices.size == 0:
            raise ValueError(f"The selection {selection!r} selects no atom of the {source.label}.")
        return np.sort(indices)
    return select_atoms(topology, selection, numbers)


class FrameReader:
    """Reads the selected atoms of a source in chunks of frames, and checks their coordinates.

    Parameters
    ----------
    topology : mdtraj.Topology
        The fitted topology (all atoms).
    atom_indices : ndarray of int
        The selected atoms.
    atomic_numbers : ndarray of int
        Atomic number of each selected atom (what the bond checks go by).
    bonds : ndarray of shape (n_bonds, 2)
        Bonds between selected atoms, as indices into ``atom_indices``.
    stride, chunk_size : int
        Every ``stride``-th frame is read, ``chunk_size`` (strided) frames at a time.
    """

    def __init__(self, *, topology: md.Topology, atom_indices: np.ndarray, atomic_numbers: np.ndarray,
                 bonds: np.ndarray, stride: int, chunk_size: int) -> None:
        self.topology = topology
        self.atom_indices = atom_indices
        self.bonds = bonds
        self.bond_ranges = bond_length_ranges(np.asarray(atomic_numbers), bonds)
        self.typical_bonds = typical_bond_lengths(np.asarray(atomic_numbers), bonds)
        self.stride = stride
        self.chunk_size = chunk_size
        self._selected_topology = None

    @property
    def selected_topology(self) -> md.Topology:
        """The topology of the selected atoms (what every chunk carries)."""
        if self._selected_topology is None:
            self._selected_topology = self.topology.subset(self.atom_indices)
        return self._selected_topology

    def n_frames(self, source: Source) -> int:
        if source.traj is not None:
            total = source.traj.n_frames
        elif source.group is not None:
            total = mdanalysis.n_frames_of(source.group)
        else:
            with md.open(source.path) as handle:
                total = len(handle)
        return -(-total // self.stride)

    def check_atom_count(self, source: Source) -> None:
        """A file must hold the topology's atoms: mdtraj would slice a larger one silently
        and fail on a smaller one with an error about indices. (Trajectories in memory and
        MDAnalysis groups carry their own topology.)"""
        if source.path is None:
            return
        try:
            with md.open(source.path) as handle:
                first = handle.read(n_frames=1)
            xyz = first[0] if isinstance(first, tuple) else first
            n_atoms = int(np.shape(xyz)[1])
        except Exception:  # noqa: BLE001 - a format without this reader: mdtraj checks it
            return
        if n_atoms != self.topology.n_atoms:
            raise ValueError(
                f"{source.label.capitalize()} holds {n_atoms} atoms per frame but the topology "
                f"has {self.topology.n_atoms}: give the topology this file was written with "
                f"(the same atoms in the same order)."
            )

    def chunks(self, source: Source, first: int = 0):
        """Yield the selected atoms of ``chunk_size`` (strided) frames at a time, from frame
        ``first`` (a resumed embedding's first new frame).

        Chunks always end at multiples of ``chunk_size``: from a ``first`` inside a
        chunk (a commit made by time), the first chunk yielded is the rest of that one,
        so a resumed run reads (and batches) the frames as the run it resumes did.
        """
        if source.traj is not None:
            frames = np.arange(0, source.traj.n_frames, self.stride)
            for start, stop in chunk_bounds(first, len(frames), self.chunk_size):
                chunk = source.traj[frames[start:stop]]
                yield chunk.atom_slice(self.atom_indices)
            return
        if source.group is not None:
            yield from mdanalysis.mdanalysis_frames(
                source.group, self.atom_indices, self.selected_topology, stride=self.stride,
                chunk_size=self.chunk_size, first=first)
            return
        # From the start of the file even when resuming: mdtraj's ``skip`` is ignored for
        # some formats (PDB) and loops forever with ``stride`` on others (XTC), and
        # reading is cheap next to embedding.
        seen = 0
        for chunk in md.iterload(source.path, top=self.topology, chunk=self.chunk_size,
                                 stride=self.stride, atom_indices=self.atom_indices):
            seen += chunk.n_frames
            if seen > first:
                yield chunk[max(0, chunk.n_frames - (seen - first)):]

    def coordinates(self, chunk: md.Trajectory, source: Source, first_frame: int) -> np.ndarray:
        """Validated positions in Angstrom, molecules made whole when there is a unit cell."""
        if not np.isfinite(chunk.xyz).all():
            bad = int(np.flatnonzero(~np.isfinite(chunk.xyz).all(axis=(1, 2)))[0])
            raise ValueError(
                f"{source.label.capitalize()} has NaN or infinite coordinates at frame "
                f"{(first_frame + bad) * self.stride}."
            )
        if chunk.unitcell_vectors is not None and len(self.bonds):
            chunk.make_molecules_whole(inplace=True)
        xyz = chunk.xyz.astype(np.float32) * np.float32(NM_TO_ANGSTROM)
        if len(self.bonds):
            lengths = np.linalg.norm(xyz[:, self.bonds[:, 0]] - xyz[:, self.bonds[:, 1]], axis=-1)
            if lengths.max() > MAX_BOND_ANGSTROM:
                frame, bond = np.unravel_index(int(lengths.argmax()), lengths.shape)
                raise self._bond_error(
                    source, first_frame, frame, bond, f"{lengths[frame, bond]:.1f}",
                    "longer than any covalent bond: the molecule is broken (split across periodic "
                    "boundaries with no unit cell to make it whole), the topology does not match "
                    "the trajectory, or the coordinates are in another unit. "
                    + units_hint(lengths[frame], self.typical_bonds),
                )
            self._check_bond_ranges(lengths, source, first_frame)
        return xyz

    def _check_bond_ranges(self, lengths: np.ndarray, source: Source, first_frame: int) -> None:
        """Every bond within its element pair's range, or an error naming the first that is not."""
        low, high = self.bond_ranges
        with np.errstate(invalid="ignore"):
            outside = (lengths < low) | (lengths > high)  # NaN ranges (unlisted elements) compare False
        if not outside.any():
            return
        frame, bond = np.argwhere(outside)[0]
        raise self._bond_error(
            source, first_frame, frame, bond, f"{lengths[frame, bond]:.2f}",
            f"outside the {low[bond]:.2f}-{high[bond]:.2f} Angstrom a bond between these elements "
            f"can have ({int(outside[frame].sum())} of {outside.shape[1]} bonds in that frame "
            f"are): these coordinates are not this topology's molecule (atoms in another order, "
            f"a different molecule, placeholder zeros, or units other than the file format's). "
            + units_hint(lengths[frame], self.typical_bonds),
        )

    def _bond_error(self, source, first_frame, frame, bond, length: str, why: str) -> ValueError:
        """The error for bond ``bond`` in ``frame`` of a chunk: where it is, how long, and why."""
        a, b = (self.topology.atom(int(self.atom_indices[i])) for i in self.bonds[bond])
        return ValueError(
            f"In {source.label}, frame {(first_frame + frame) * self.stride}, the bond {a}-{b} is "
            f"{length} Angstrom long, {why}"
        )
