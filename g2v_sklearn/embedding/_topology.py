"""Topology handling: which atoms are embedded, their elements, their residues.

Pure functions on :class:`mdtraj.Topology` objects and NumPy arrays; nothing
here knows about torch or scikit-learn.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import mdtraj as md
import numpy as np

__all__ = [
    "PRETRAINING_ELEMENTS",
    "ResidueLayout",
    "atomic_numbers_of",
    "default_selection",
    "residue_layout",
    "select_atoms",
    "topology_signature",
    "unusual_elements",
]

# Monatomic ions as they appear in common force fields (residue names).
_ION_RESIDUES = frozenset(
    "NA NA+ SOD K K+ POT CL CL- CLA MG MG2 CA2 CAL ZN ZN2 CS CES LI LIT RB F BR IOD I "
    "CU CU1 CU2 FE FE2 FE3 MN MN2 CO CD BA SR NI".split()
)
# Elements that cannot occur in a biomolecule; they show up when a topology
# (mdtraj's PSF reader, for one) assigns elements from masses and the masses
# were repartitioned (hydrogen mass repartitioning turns H into He).
_NOBLE_GASES = frozenset({2, 10, 18, 36, 54, 86})
_STANDARD_RESIDUES = frozenset(
    "ALA ARG ASN ASP CYS GLN GLU GLY HIS ILE LEU LYS MET PHE PRO SER THR TRP TYR VAL "
    "HID HIE HIP HSD HSE HSP CYX ASH GLH LYN ACE NME NMA NH2 "
    "DA DC DG DT A C G U RA RC RG RU".split()
)
_COMMON_ORGANIC = {"H": 1, "C": 6, "N": 7, "O": 8, "P": 15, "S": 16}
#: Elements of the OrbNet Denali set that geom2vec's backbones were pretrained on (H, Li, B,
#: C, N, O, F, Na, Mg, Si, P, S, Cl, K, Ca, Br, I). In the shipped checkpoints these are the
#: rows of the atom-type embedding that training moved from their initialisation: the
#: embedding of any other element is untrained.
PRETRAINING_ELEMENTS = frozenset({1, 3, 5, 6, 7, 8, 9, 11, 12, 14, 15, 16, 17, 19, 20, 35, 53})
#: Pretrained on, but rare as heavy atoms of a biomolecular topology, and what guessing
#: elements from hydrogen-mass-repartitioned masses gives (a methyl carbon weighs 5.96 amu,
#: nearest lithium; a C-H carbon 9.99, nearest boron).
_UNUSUAL_IN_BIOMOLECULES = frozenset({3, 4, 5})


def atomic_numbers_of(topology: md.Topology, override=None) -> np.ndarray:
    """Atomic numbers of every atom, validated.

    Parameters
    ----------
    topology : mdtraj.Topology
        The topology.
    override : array-like of int of shape (n_atoms,), optional
        Atomic numbers to use instead of the topology's elements.

    Returns
    -------
    numbers : ndarray of shape (n_atoms,), dtype int64

    Raises
    ------
    ValueError
        If an atom has no element (a virtual site), or an element that
        cannot occur in a biomolecule (a noble gas, or in a standard residue
        an element that disagrees with the atom's name): the signature of a
        topology whose elements were guessed from repartitioned masses.
    """
    if override is not None:
        numbers = np.asarray(override)
        if numbers.shape != (topology.n_atoms,) or not np.issubdtype(numbers.dtype, np.integer):
            raise ValueError(
                f"atomic_numbers must be an integer array of shape ({topology.n_atoms},), one "
                f"per atom of the topology; got shape {numbers.shape} and dtype {numbers.dtype}."
            )
        if (numbers < 1).any():
            bad = int(np.flatnonzero(numbers < 1)[0])
            raise ValueError(
                f"atomic_numbers[{bad}] is {numbers[bad]}; atomic numbers start at 1."
            )
        return numbers.astype(np.int64)

    numbers = np.empty(topology.n_atoms, dtype=np.int64)
    for atom in topology.atoms:
        element = atom.element
        number = getattr(element, "number", 0) or 0
        if number <= 0:
            raise ValueError(
                f"Atom {atom} has no element (a virtual site or dummy atom?). Exclude it "
                f"with `selection` or give `atomic_numbers`."
            )
        name_element = _element_from_name(atom)
        impossible = number in _NOBLE_GASES or (
            name_element is not None and name_element != number
        )
        if impossible:
            raise ValueError(
                f"Atom {atom} is assigned the element {element.symbol} ({element.name}), which "
                f"cannot be right for an atom of that name in a biomolecule: the elements were "
                f"guessed, not read. mdtraj guesses them from atom names where a PDB file has "
                f"no element column (CA becomes calcium, HG mercury) and from masses in a PSF, "
                f"where hydrogen mass repartitioning turns H into He. Load a topology that "
                f"states its elements (e.g. the PSF or a PDB with an element column), or pass "
                f"atomic_numbers=."
            )
        numbers[atom.index] = number
    return numbers


def unusual_elements(topology: md.Topology, atom_indices: np.ndarray, numbers: np.ndarray,
                     pretrained: bool, given: bool = False) -> str | None:
    """A warning naming the embedded atoms whose elements deserve a second look, or None.

    Heavy atoms of lithium, beryllium or boron are rare in biomolecules and
    are what elements guessed from repartitioned masses look like (unless the
    user ``given`` the atomic numbers); with a pretrained backbone
    (``pretrained``), an element outside :data:`PRETRAINING_ELEMENTS` gets an
    untrained embedding.
    """
    flagged: dict[int, list] = {}
    for index in atom_indices:
        z = int(numbers[index])
        if (z in _UNUSUAL_IN_BIOMOLECULES and not given) or (pretrained and z not in PRETRAINING_ELEMENTS):
            flagged.setdefault(z, []).append(topology.atom(int(index)))
    if not flagged:
        return None
    parts = []
    for z, atoms in sorted(flagged.items()):
        symbol = md.element.Element.getByAtomicNumber(z).symbol
        shown = ", ".join(str(a) for a in atoms[:5]) + (f" and {len(atoms) - 5} more" if len(atoms) > 5 else "")
        parts.append(f"{symbol} ({len(atoms)} atom{'s' if len(atoms) > 1 else ''}: {shown})")
    reasons = []
    if not given and any(z in _UNUSUAL_IN_BIOMOLECULES for z in flagged):
        reasons.append(
            "Li, Be and B are rare in biomolecules, and are what elements guessed from masses "
            "give when the masses were repartitioned (a methyl carbon under hydrogen mass "
            "repartitioning weighs 5.96 amu, nearest lithium)")
    if pretrained and any(z not in PRETRAINING_ELEMENTS for z in flagged):
        reasons.append(
            "the pretrained backbone never saw an element outside H, Li, B, C, N, O, F, Na, Mg, Si, "
            "P, S, Cl, K, Ca, Br and I, so its atom embedding for one is untrained")
    return (f"The embedded atoms include {'; '.join(parts)}: " + "; and ".join(reasons)
            + ". If these elements are wrong, pass atomic_numbers= or a topology that states its "
              "elements; if they are right, exclude the atoms with selection= where their tokens "
              "would mislead.")


def _element_from_name(atom: md.core.topology.Atom) -> int | None:
    """The element an atom's name implies, for standard residues only."""
    if atom.residue.name not in _STANDARD_RESIDUES:
        return None
    letters = atom.name.lstrip("0123456789")
    if not letters:
        return None
    return _COMMON_ORGANIC.get(letters[0].upper())


def default_selection(topology: md.Topology, numbers: np.ndarray) -> np.ndarray:
    """Heavy atoms of everything but water and monatomic ions.

    Parameters
    ----------
    topology : mdtraj.Topology
    numbers : ndarray of shape (n_atoms,)
        Validated atomic numbers.

    Returns
    -------
    atom_indices : ndarray of int64, sorted
    """
    keep = numbers != 1
    for residue in topology.residues:
        if residue.is_water or (residue.n_atoms == 1 and residue.name.upper() in _ION_RESIDUES):
            for atom in residue.atoms:
                keep[atom.index] = False
    return np.flatnonzero(keep).astype(np.int64)


def select_atoms(topology: md.Topology, selection: str | None, numbers: np.ndarray) -> np.ndarray:
    """Resolve a selection to sorted atom indices.

    Parameters
    ----------
    topology : mdtraj.Topology
    selection : str or None
        An mdtraj selection string, or None for :func:`default_selection`.
    numbers : ndarray of shape (n_atoms,)

    Returns
    -------
    atom_indices : ndarray of int64

    Raises
    ------
    ValueError
        If the selection is not valid or selects no atom.
    """
    if selection is None:
        indices = default_selection(topology, numbers)
        what = "The default selection (heavy atoms, no water or ions)"
    else:
        try:
            indices = np.asarray(topology.select(selection), dtype=np.int64)
        except Exception as exc:
            raise ValueError(_selection_error(selection, exc)) from None  # not pyparsing's grammar
        what = f"The selection {selection!r}"
    if indices.size == 0:
        raise ValueError(f"{what} selects no atom of the topology ({topology}).")
    return np.sort(indices)


def _selection_error(selection: str, exc: Exception) -> str:
    """What is wrong with an mdtraj selection, in a line (mdtraj's own message can be
    kilobytes of the grammar it expected)."""
    parse = exc if hasattr(exc, "loc") else exc.__context__
    loc = getattr(parse, "loc", None)
    reason = str(getattr(parse, "msg", exc)).splitlines()[0]
    if isinstance(loc, int):
        if reason.startswith("Expected {"):  # a whole grammar: say what was missing instead
            reason = "a term (such as name CA, resname ALA, protein) was expected"
        where = ("at its end" if loc >= len(selection)
                 else f"at character {loc + 1} ({selection[loc:]!r})")
        detail = f"{reason} {where}"
    else:
        detail = reason if len(reason) <= 200 else reason[:200] + " ..."
    return (f"Invalid atom selection {selection!r}: {detail}. Selections use mdtraj's language, "
            f"e.g. 'protein and not element H' or 'resname ALA and name CA'.")


@dataclass(frozen=True)
class ResidueLayout:
    """How selected atoms group into residue tokens.

    Attributes
    ----------
    atom_to_residue : ndarray of shape (n_selected,)
        Token index of each selected atom (0 .. n_residues - 1, in sequence order).
    counts : ndarray of shape (n_residues,)
        Number of selected atoms per token.
    ca_local : ndarray of shape (n_residues,)
        Local index (into the selection) of each residue's C-alpha, or -1.
    residue_names, chain_ids : list of str
    residue_ids : ndarray of int (resSeq)
    """

    atom_to_residue: np.ndarray
    counts: np.ndarray
    ca_local: np.ndarray
    residue_names: list
    chain_ids: list
    residue_ids: np.ndarray

    @property
    def n_residues(self) -> int:
        return len(self.counts)


def residue_layout(topology: md.Topology, atom_indices: np.ndarray) -> ResidueLayout:
    """Group the selected atoms by residue, in topology (sequence) order."""
    residue_of = np.array([topology.atom(int(i)).residue.index for i in atom_indices])
    residues, atom_to_residue, counts = np.unique(
        residue_of, return_inverse=True, return_counts=True
    )
    ca_local = np.full(len(residues), -1, dtype=np.int64)
    for local, index in enumerate(atom_indices):
        atom = topology.atom(int(index))
        if atom.name == "CA" and atom.element is not None and atom.element.symbol == "C":
            ca_local[atom_to_residue[local]] = local
    names, chains, ids = [], [], []
    for r in residues:
        residue = topology.residue(int(r))
        names.append(residue.name)
        chain = residue.chain
        chains.append(str(getattr(chain, "chain_id", None) or chain.index))
        ids.append(residue.resSeq)
    return ResidueLayout(
        atom_to_residue=atom_to_residue.astype(np.int64),
        counts=counts.astype(np.int64),
        ca_local=ca_local,
        residue_names=names,
        chain_ids=chains,
        residue_ids=np.asarray(ids, dtype=np.int64),
    )


def topology_signature(topology: md.Topology, atom_indices: np.ndarray, numbers: np.ndarray) -> str:
    """A short hash of what the embedding depends on in a topology.

    Atom names, residue names and numbers, chains and atomic numbers of the
    selected atoms, plus the total atom count.
    """
    digest = hashlib.sha256(f"{topology.n_atoms}".encode())
    for i in atom_indices:
        atom = topology.atom(int(i))
        residue = atom.residue
        digest.update(
            f"|{atom.name}:{residue.name}:{residue.resSeq}:{residue.chain.index}:{numbers[i]}".encode()
        )
    return digest.hexdigest()[:16]


def first_difference(topology: md.Topology, fitted: md.Topology, atom_indices: np.ndarray,
                     numbers: np.ndarray, fitted_numbers: np.ndarray) -> str:
    """The first way ``topology`` differs from ``fitted`` that the embedding depends on."""
    if topology.n_atoms != fitted.n_atoms:
        return f"it has {topology.n_atoms} atoms, the fitted one {fitted.n_atoms}"
    for i in atom_indices:
        here, there = topology.atom(int(i)), fitted.atom(int(i))
        for what, a, b in (
            ("residue name", here.residue.name, there.residue.name),
            ("residue number", here.residue.resSeq, there.residue.resSeq),
            ("chain", here.residue.chain.index, there.residue.chain.index),
            ("atom name", here.name, there.name),
            ("atomic number", int(numbers[i]), int(fitted_numbers[i])),
        ):
            if a != b:
                return (f"atom {int(i)} ({there} when fitted) has {what} {a!r} in this topology and "
                        f"{b!r} in the fitted one")
    return "its selected atoms differ"


def describe_topology(topology: md.Topology) -> str:
    """A one-line description used in error messages."""
    return f"{topology.n_atoms} atoms in {topology.n_residues} residues"
