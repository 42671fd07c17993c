"""Adenylate kinase: the transition paths and end states shipped by MDAnalysisTests."""

from __future__ import annotations

import contextlib
import os
import sys

import numpy as np
from sklearn.utils import Bunch

from ._alanine import _check_positive

__all__ = ["ADK_DOMAINS", "domain_labels", "load_adenylate_kinase"]

#: The usual domain definition of E. coli adenylate kinase (residue numbers,
#: inclusive ranges): the rigid CORE, the ATP-binding LID and the AMP-binding
#: NMP domain, which close over the substrates (Beckstein et al., J. Mol.
#: Biol. 394, 160, 2009).
ADK_DOMAINS = {
    "CORE": [(1, 29), (60, 121), (160, 214)],
    "NMP": [(30, 59)],
    "LID": [(122, 159)],
}


def domain_labels(residue_ids, domains=None):
    """Name the domain of every residue.

    Parameters
    ----------
    residue_ids : array-like of int
        Residue numbers (``resSeq``), e.g. ``[r.resSeq for r in top.residues]``.
    domains : dict, default=None
        Mapping domain name -> list of inclusive ``(first, last)`` ranges;
        ``None`` uses :data:`ADK_DOMAINS`.

    Returns
    -------
    labels : ndarray of str, shape (n_residues,)
        Domain of each residue; ``""`` for a residue in no domain.

    Examples
    --------
    >>> from g2v_sklearn.datasets import domain_labels
    >>> domain_labels([1, 30, 122, 214]).tolist()
    ['CORE', 'NMP', 'LID', 'CORE']
    """
    domains = ADK_DOMAINS if domains is None else domains
    ids = np.asarray(residue_ids)
    labels = np.full(ids.shape, "", dtype=object)
    for name, ranges in domains.items():
        for first, last in ranges:
            labels[(ids >= first) & (ids <= last)] = name
    return labels.astype(str)


def load_adenylate_kinase(n_frames=None):
    """Load adenylate kinase (AdK, 214 residues, 3,341 atoms) from MDAnalysisTests.

    Two closed -> open transition paths made with dynamic importance sampling
    (DIMS; 98 and 102 frames) and the crystal-like closed and open end
    states. The paths are transition paths, not equilibrium dynamics: any
    kinetics learned from them are illustrative only.

    Parameters
    ----------
    n_frames : int, default=None
        Keep only the first ``n_frames`` frames of each path (for quick runs).

    Returns
    -------
    data : sklearn.utils.Bunch
        ``paths`` (list of two ``mdtraj.Trajectory``), ``closed`` and
        ``open`` (one-frame ``mdtraj.Trajectory``), ``domains``
        (:data:`ADK_DOMAINS`), ``residue_domain`` (ndarray of str, the domain
        of each of the 214 residues) and ``files`` (the source paths).

    Raises
    ------
    ImportError
        If MDAnalysisTests is not installed, with the command to install it.

    Examples
    --------
    >>> from g2v_sklearn.datasets import load_adenylate_kinase
    >>> adk = load_adenylate_kinase(n_frames=3)
    >>> [p.n_frames for p in adk.paths], adk.paths[0].n_residues
    ([3, 3], 214)
    >>> sorted(set(adk.residue_domain.tolist()))
    ['CORE', 'LID', 'NMP']
    """
    if n_frames is not None:
        _check_positive("n_frames", n_frames, integer=True)
    try:
        import MDAnalysisTests.datafiles as files
    except ImportError as err:
        raise ImportError(
            "load_adenylate_kinase reads the files shipped by MDAnalysisTests, which is not "
            "installed. Install it with `pip install MDAnalysisTests` (about 100 MB)."
        ) from err
    import mdtraj as md

    sources = {"topology": files.PSF, "path_1": files.DCD, "path_2": files.DCD2,
               "closed": files.PDB_closed, "open": files.PDB_small}
    stop = None if n_frames is None else int(n_frames)
    with _quiet_c_output():  # the DCD reader's chatter about a header it corrects itself
        paths = [md.load(sources[k], top=files.PSF)[:stop] for k in ("path_1", "path_2")]
    residue_ids = [r.resSeq for r in paths[0].topology.residues]
    return Bunch(
        paths=paths,
        closed=_with_topology(md.load(sources["closed"]), paths[0].topology, sources["closed"]),
        open=_with_topology(md.load(sources["open"]), paths[0].topology, sources["open"]),
        domains={k: list(v) for k, v in ADK_DOMAINS.items()},
        residue_domain=domain_labels(residue_ids),
        files=sources,
    )


def _with_topology(structure, topology, path):
    """``structure`` with the PSF's topology: read alone, these PDBs' element columns are
    empty and mdtraj guesses from atom names (CA as calcium, HG as mercury)."""
    pairs = list(zip(structure.topology.atoms, topology.atoms))
    # a few hydrogens are named differently (H/HN, HB3/HB1); everything else must agree
    if structure.n_atoms != topology.n_atoms or any(
            a.residue.name != b.residue.name or (a.name != b.name and not (
                a.name.startswith("H") and b.name.startswith("H"))) for a, b in pairs):
        raise ValueError(f"{path} does not list the PSF's atoms in the PSF's order")
    structure.topology = topology.copy()
    return structure


@contextlib.contextmanager
def _quiet_c_output():
    """Send what C code prints to stdout and stderr to /dev/null meanwhile.

    mdtraj's DCD plugin prints its diagnostics from C (MDAnalysisTests' DCD
    header claims 500 frames and the plugin reads the 98 there are), which
    no Python warning filter can silence. Python exceptions still propagate.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:  # no file descriptors 1 and 2 (some embedded interpreters)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)
