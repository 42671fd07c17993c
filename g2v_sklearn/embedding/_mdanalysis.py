"""MDAnalysis input: a Universe or an AtomGroup, read as the embedder reads mdtraj files.

MDAnalysis is optional (the ``mdanalysis`` extra) and never imported here:
an object is recognised as a Universe or an AtomGroup only when the user's
program has imported MDAnalysis already, which it must have to make one.

The group's topology becomes an :class:`mdtraj.Topology` (same atoms, same
order, same residues and bonds), so that selection by default, residue
pooling, the topology checks and the coordinate checks are those of the
mdtraj path; frames are read in chunks from the Universe's trajectory,
in Angstrom as MDAnalysis gives them.
"""

from __future__ import annotations

import hashlib
import os
import sys
from contextlib import contextmanager

import mdtraj as md
import numpy as np

__all__ = ["is_mdanalysis", "mdanalysis_frames", "mdanalysis_selection", "mdanalysis_topology"]

# CHARMM's ion atom names, read as mdtraj's PSF reader reads them (names starting with
# CLA, SOD or POT, and CAL exactly), not from their masses
_CHARMM_ION_PREFIXES = {"CLA": md.element.chlorine, "SOD": md.element.sodium, "POT": md.element.potassium}


def _charmm_ion(name: str):
    upper = name.upper()
    return md.element.calcium if upper == "CAL" else _CHARMM_ION_PREFIXES.get(upper[:3])


def is_mdanalysis(obj) -> bool:
    """Whether ``obj`` is an MDAnalysis Universe or AtomGroup."""
    mda = sys.modules.get("MDAnalysis")
    return mda is not None and isinstance(obj, (mda.Universe, mda.core.groups.AtomGroup))


def describe(group) -> str:
    """A short name of the group's source, for error messages and provenance."""
    traj = group.universe.trajectory
    name = getattr(traj, "filename", None)
    what = "MDAnalysis Universe" if group.n_atoms == group.universe.atoms.n_atoms else "MDAnalysis AtomGroup"
    return f"{what} of {name!r}" if isinstance(name, str) else f"{what} in memory"


def _elements(group, required: bool) -> list:
    """Elements of the group's atoms: the topology's, else from the masses (as mdtraj's PSF
    reader); with neither, an error when ``required`` (no ``atomic_numbers=`` was given),
    else placeholders."""
    if hasattr(group, "elements"):
        out = []
        for symbol in group.elements:
            symbol = str(symbol).strip()
            try:
                out.append(md.element.get_by_symbol(symbol.capitalize()) if symbol else md.element.virtual)
            except KeyError:
                out.append(md.element.virtual)  # reported as "no element" by atomic_numbers_of
        return out
    if not hasattr(group, "masses"):
        if not required:
            return [md.element.virtual] * group.n_atoms
        raise ValueError(
            f"The {describe(group)} has neither elements nor masses, so the atoms' elements are "
            f"unknown; pass atomic_numbers= (one per atom of the group)."
        )
    masses = _unrepartitioned_masses(group)
    out = []
    for atom, name, mass in zip(group, group.names, masses):
        ion = _charmm_ion(str(name))
        if ion is not None:
            out.append(ion)
        elif mass == 0:
            out.append(md.element.virtual)
        else:
            element = md.element.Element.getByMass(float(mass))
            if abs(element.mass - mass) > MASS_TOLERANCE and element.number > 2:
                if not required:  # atomic_numbers= gives them
                    element = md.element.virtual
                else:
                    raise ValueError(_unmatched_mass(group, atom, float(mass), element))
            out.append(element)
    return out


#: The most a heavy atom's mass (its hydrogens' repartitioned mass given back) may differ
#: from its element's standard atomic weight when elements are guessed from masses: force
#: fields round to 0.01 amu; elements near carbon, nitrogen and oxygen are 1-2 amu apart.
MASS_TOLERANCE = 0.1
#: Hydrogens are the atoms lighter than this with one bond (repartitioned to up to 4 amu;
#: a methyl carbon under 4-amu repartitioning weighs 3.0 amu, but has four bonds).
_HYDROGEN_BELOW = 4.5
_HYDROGEN_MASS = 1.008


def _unrepartitioned_masses(group) -> np.ndarray:
    """The group's masses, with the mass that hydrogen mass repartitioning moved onto each
    hydrogen given back to the heavy atom it is bonded to.

    Repartitioning (HMR) makes hydrogens heavier (3.024 or 4.032 amu) by taking
    the difference from their heavy atoms, so a methyl carbon weighs 5.96 amu
    (nearest element: lithium) and an amide nitrogen 11.99 (carbon). A hydrogen
    is an atom of the universe lighter than 4.5 amu with exactly one bond; it
    counts when its bonded atom is in ``group``, inside the group or not. Masses
    are unchanged without bonds, or with hydrogens of ordinary (or deuterium's)
    mass.
    """
    masses = np.asarray(group.masses, dtype=np.float64).copy()
    universe = group.universe
    if not hasattr(universe.atoms, "bonds") or len(universe.bonds) == 0:
        return masses
    all_masses = np.asarray(universe.atoms.masses, dtype=np.float64)
    pairs = np.asarray(universe.bonds.indices, dtype=np.int64).reshape(-1, 2)
    degree = np.bincount(pairs.ravel(), minlength=len(all_masses))
    hydrogen = (degree == 1) & (all_masses > 0) & (all_masses < _HYDROGEN_BELOW)
    excess = np.where(hydrogen & (all_masses > 2.5), all_masses - _HYDROGEN_MASS, 0.0)  # not D (2.014)
    given_back = np.zeros(len(all_masses))
    a, b = pairs[:, 0], pairs[:, 1]
    np.add.at(given_back, a, np.where(hydrogen[a], 0.0, excess[b]))
    np.add.at(given_back, b, np.where(hydrogen[b], 0.0, excess[a]))
    taken = np.where(hydrogen, excess, 0.0)
    where = np.asarray(group.indices, dtype=np.int64)  # the bonds' numbering
    return masses + given_back[where] - taken[where]


def _unmatched_mass(group, atom, mass: float, nearest) -> str:
    return (
        f"Atom {atom.name} of residue {atom.resname}{atom.resid} in the {describe(group)} weighs "
        f"{mass:.3f} amu, which is no element's mass (the nearest, {nearest.symbol}, weighs "
        f"{nearest.mass:.3f}), so its element cannot be guessed from its mass. The topology has no "
        f"elements; its masses look repartitioned (hydrogen mass repartitioning moves mass from "
        f"heavy atoms onto their hydrogens), and the hydrogens that would account for it are not "
        f"bonded to it in the Universe. Give the elements: pass atomic_numbers= (one per atom of "
        f"the group), or load a topology that states them (a PDB with an element column, or add "
        f"them with universe.add_TopologyAttr('elements', ...))."
    )


def mdanalysis_topology(group, elements_required: bool = True) -> md.Topology:
    """The group's atoms, residues, chains and bonds as an mdtraj Topology (same atom order).

    Chains follow the atoms' ``chainIDs`` when the topology has them, else
    their segments. Elements come from the topology's ``elements``; a
    topology without them (a PSF, for one: MDAnalysis 2.x guesses only
    types and masses) gets the element whose mass is nearest each atom's,
    as mdtraj's PSF reader does, after giving each heavy atom back the mass
    that hydrogen mass repartitioning moved onto its bonded hydrogens. A
    heavy atom whose mass is then no element's (repartitioned, with its
    hydrogens absent or unbonded) is an error; the checks of
    :func:`~g2v_sklearn.embedding._topology.atomic_numbers_of` catch the
    other impossible ones (repartitioned hydrogen masses read as helium
    where there are no bonds to tell hydrogens by).
    """
    top = md.Topology()
    chain_of = group.chainIDs if hasattr(group, "chainIDs") else group.segids
    elements = _elements(group, elements_required)
    residues = {}
    chains = {}
    for i, (name, resname, resid, resindex, chain) in enumerate(
            zip(group.names, group.resnames, group.resids, group.resindices, chain_of)):
        if chain not in chains:
            chains[chain] = top.add_chain(chain_id=str(chain))
        residue = residues.get(resindex)
        if residue is None:
            residue = residues[resindex] = top.add_residue(str(resname), chains[chain], resSeq=int(resid),
                                                           segment_id=str(chain))
        top.add_atom(str(name), elements[i], residue)
    if hasattr(group, "bonds"):
        local = {int(a): i for i, a in enumerate(group.indices)}
        atoms = list(top.atoms)
        for a, b in group.bonds.indices:
            if int(a) in local and int(b) in local:
                top.add_bond(atoms[local[int(a)]], atoms[local[int(b)]])
    return top


def mdanalysis_selection(group, selection: str) -> np.ndarray:
    """Indices into ``group`` of the atoms an MDAnalysis selection string picks."""
    try:
        chosen = group.select_atoms(selection)
    except Exception as exc:  # SelectionError, or a parse error of its grammar
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(
            f"Invalid atom selection {selection!r} for an MDAnalysis input: {reason}. With an "
            f"MDAnalysis Universe, selections use MDAnalysis's language, e.g. "
            f"'protein and not type H' or 'resname ALA and name CA'."
        ) from None
    position = {int(ix): i for i, ix in enumerate(group.ix)}  # a group need not be sorted
    outside = [int(ix) for ix in chosen.ix if int(ix) not in position]
    if outside:
        raise ValueError(
            f"The selection {selection!r} picks {len(outside)} atom(s) outside the AtomGroup given "
            f"(a 'global' selection?); select within the group's atoms."
        )
    return np.array([position[int(ix)] for ix in chosen.ix], dtype=np.int64)


def trajectory_files(group) -> list[str]:
    """The files the group's trajectory reads (none for one held in memory)."""
    traj = group.universe.trajectory
    if type(traj).__name__ == "MemoryReader" or getattr(traj, "transformations", None):
        return []  # coordinates in memory (maybe changed since read) or transformed on the fly
    names = getattr(traj, "filenames", None) or [getattr(traj, "filename", None)]
    names = [os.fspath(n) for n in names if isinstance(n, (str, os.PathLike))]
    return names if names and all(os.path.isfile(n) for n in names) else []


@contextmanager
def _frame_kept(traj):
    """Read through ``traj`` inside the block; the user's Universe is then put back at its frame."""
    current = traj.ts.frame
    try:
        yield traj
    finally:
        traj[current]


def frames_digest(group) -> str:
    """SHA-256 of every frame's positions and box (for a trajectory held in memory)."""
    digest = hashlib.sha256()
    with _frame_kept(group.universe.trajectory) as traj:
        for ts in traj:
            digest.update(np.ascontiguousarray(group.positions, dtype=np.float32).tobytes())
            if ts.dimensions is not None:
                digest.update(np.asarray(ts.dimensions, dtype=np.float32).tobytes())
    return digest.hexdigest()


def n_frames_of(group) -> int:
    return len(group.universe.trajectory)


def mdanalysis_frames(group, atom_indices: np.ndarray, topology: md.Topology, *, stride: int,
                      chunk_size: int, first: int = 0):
    """Yield ``chunk_size`` (strided) frames of the selected atoms at a time, as mdtraj
    trajectories in nanometres (the mdtraj path's units), from strided frame ``first``
    (chunks end at multiples of ``chunk_size``, as in ``FrameReader.chunks``).

    The Universe is left at the frame it was on.
    """
    from ._reading import chunk_bounds  # (it imports this module)

    selected = group[atom_indices]
    with _frame_kept(group.universe.trajectory) as traj:
        frames = range(0, len(traj), stride)
        for start, stop in chunk_bounds(first, len(frames), chunk_size):
            block = frames[start:stop]
            xyz = np.empty((len(block), len(selected), 3), dtype=np.float32)
            times = np.empty(len(block))
            boxes = []
            for k, ts in enumerate(traj[block.start:block.stop:block.step]):
                xyz[k] = selected.positions
                times[k] = ts.time
                boxes.append(None if ts.dimensions is None else np.array(ts.dimensions))  # a copy: readers
                # overwrite the timestep's box in place at every frame
            cell = {}
            if all(b is not None and np.all(b[:3] > 0) for b in boxes):
                box = np.asarray(boxes, dtype=np.float32)
                cell = {"unitcell_lengths": box[:, :3] * np.float32(0.1), "unitcell_angles": box[:, 3:]}
            xyz *= np.float32(0.1)  # Angstrom -> nm as mdtraj's readers do it: the same float32 values
            yield md.Trajectory(xyz, topology, time=times, **cell)
