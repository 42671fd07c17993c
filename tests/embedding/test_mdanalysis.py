"""MDAnalysis input (g2v_sklearn.embedding._mdanalysis): a Universe embeds as the same files read by mdtraj."""

import warnings

import numpy as np
import pytest

from g2v_sklearn import GeomEmbedder

mda = pytest.importorskip("MDAnalysis")
datafiles = pytest.importorskip("MDAnalysisTests.datafiles")

STRIDE = 33  # 3 of the 98 frames of a transition path: enough to compare two readers


@pytest.fixture(scope="module")
def adk_universe():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MDAnalysis's DCD deprecation notice
        return mda.Universe(datafiles.PSF, datafiles.DCD)


@pytest.fixture(scope="module")
def both_readers(visnet_checkpoint, adk_universe):
    through_mdtraj = GeomEmbedder(visnet_checkpoint, topology=datafiles.PSF, stride=STRIDE, progress=False)
    through_mda = GeomEmbedder(visnet_checkpoint, stride=STRIDE, progress=False)
    return (through_mdtraj, through_mdtraj.fit_transform([datafiles.DCD])[0],
            through_mda, through_mda.fit_transform([adk_universe])[0])


def test_a_universe_gives_the_tokens_of_its_files_read_by_mdtraj(both_readers, adk_universe):
    emb_md, ours_md, emb_mda, ours_mda = both_readers
    assert np.array_equal(emb_md.atom_indices_, emb_mda.atom_indices_)  # 1,656 heavy atoms
    assert np.array_equal(emb_md.atomic_numbers_, emb_mda.atomic_numbers_)  # from the PSF's masses
    assert ours_mda.shape == ours_md.shape == (3, 214, 4, 64)
    scale = np.linalg.norm(ours_md.features)
    assert np.linalg.norm(ours_mda.features - ours_md.features) / scale < 1e-6  # float32 nm: identical here
    np.testing.assert_allclose(ours_mda.positions, ours_md.positions, atol=1e-4)  # Angstrom
    # residue names are the topology's own: CHARMM's HSD, which mdtraj's PSF reader renames HIS
    renamed = [("HIS" if name == "HSD" else name) for name in ours_mda.residue_names]
    assert renamed == list(ours_md.residue_names) and "HSD" in ours_mda.residue_names
    assert list(ours_mda.residue_ids) == list(ours_md.residue_ids)
    assert ours_mda.provenance["source"].startswith("MDAnalysis Universe of ")
    assert adk_universe.trajectory.ts.frame == 0  # reading left the user's Universe where it was


def test_selections_and_groups_use_mdanalysis_language(visnet_checkpoint, adk_universe, both_readers):
    emb_md = both_readers[0]
    # an MDAnalysis selection string on a Universe picks the same atoms as mdtraj's does
    calpha = GeomEmbedder(visnet_checkpoint, selection="name CA", stride=STRIDE, progress=False)
    tokens = calpha.fit_transform([adk_universe])[0]
    reference = GeomEmbedder(visnet_checkpoint, topology=datafiles.PSF, selection="name CA", stride=STRIDE,
                             progress=False).fit_transform([datafiles.DCD])[0]
    assert tokens.shape == (3, 214, 4, 64)
    assert np.linalg.norm(tokens.features - reference.features) / np.linalg.norm(reference.features) < 1e-6
    # an AtomGroup is a system of its own: its atoms, the default selection within them
    lid = adk_universe.select_atoms("resid 122:159")
    emb = GeomEmbedder(visnet_checkpoint, stride=STRIDE, progress=False).fit([lid])
    assert emb.n_residues_ == 38 and len(emb.atom_indices_) == int((lid.masses > 1.5).sum())
    with pytest.raises(ValueError, match=r"Invalid atom selection 'name CA and' for an MDAnalysis input.*"
                                         r"MDAnalysis's language"):
        GeomEmbedder(visnet_checkpoint, selection="name CA and").fit([adk_universe])
    with pytest.raises(ValueError, match="selects no atom"):
        GeomEmbedder(visnet_checkpoint, selection="resname XYZ").fit([adk_universe])
    with pytest.raises(TypeError, match="X is a single Universe; .*Wrap it in a list"):
        GeomEmbedder(visnet_checkpoint).fit(adk_universe)
    # a transform on another system's Universe is refused, as with mdtraj inputs
    with pytest.raises(ValueError, match="differs from the one GeomEmbedder was fitted on"):
        emb_md.transform([lid])


def test_elements_come_from_the_topology_or_its_masses_and_can_be_given(visnet_checkpoint):
    # a Universe with elements, without masses: its elements are used
    u = mda.Universe.empty(3, n_residues=1, atom_resindex=[0, 0, 0], trajectory=True)
    u.add_TopologyAttr("names", ["C1", "N1", "O1"])
    u.add_TopologyAttr("resnames", ["LIG"])
    u.add_TopologyAttr("resids", [1])
    u.add_TopologyAttr("segids", ["A"])
    u.add_TopologyAttr("elements", ["C", "N", "O"])
    u.atoms.positions = np.array([[0.0, 0.0, 0.0], [1.4, 0.0, 0.0], [0.0, 1.3, 0.0]])
    emb = GeomEmbedder(visnet_checkpoint, progress=False).fit([u])
    assert emb.atomic_numbers_.tolist() == [6, 7, 8]
    # neither elements nor masses: unknown elements, in the user's terms
    bare = mda.Universe.empty(2, n_residues=1, atom_resindex=[0, 0], trajectory=True)
    for attr, values in (("names", ["X1", "X2"]), ("resnames", ["LIG"]), ("resids", [1]), ("segids", ["A"])):
        bare.add_TopologyAttr(attr, values)
    with pytest.raises(ValueError, match="has neither elements nor masses.*atomic_numbers="):
        GeomEmbedder(visnet_checkpoint).fit([bare])
    bare.atoms.positions = np.array([[0.0, 0.0, 0.0], [1.5, 0.0, 0.0]])
    given = GeomEmbedder(visnet_checkpoint, atomic_numbers=[6, 6], progress=False).fit([bare])
    assert given.atomic_numbers_.tolist() == [6, 6]
    # repartitioned hydrogen masses read as helium are caught, as on the mdtraj path
    heavy_h = mda.Universe.empty(2, n_residues=1, atom_resindex=[0, 0], trajectory=True)
    for attr, values in (("names", ["CA", "HA"]), ("resnames", ["ALA"]), ("resids", [1]), ("segids", ["A"]),
                         ("masses", [12.011, 4.03])):
        heavy_h.add_TopologyAttr(attr, values)
    with pytest.raises(ValueError, match="assigned the element He .*atomic_numbers="):
        GeomEmbedder(visnet_checkpoint).fit([heavy_h])


def test_the_memory_cache_keys_a_universe_by_its_files_or_frames(visnet_checkpoint, adk_universe, tmp_path):
    adk_universe.trajectory[7]  # reading must leave the Universe where the user had it
    emb = GeomEmbedder(visnet_checkpoint, selection="name CA", stride=STRIDE, memory=str(tmp_path / "cache"),
                       progress=False)
    first = emb.fit_transform([adk_universe])[0]
    assert adk_universe.trajectory.ts.frame == 7
    second = emb.fit_transform([adk_universe])[0]
    assert first.path is not None and second.path == first.path  # the same entry, reused
    other = emb.set_params(stride=STRIDE + 1).fit_transform([adk_universe])[0]
    assert other.path != first.path and other.n_frames == 3
    # a trajectory held in memory is keyed by its frames, which may differ from its file's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        moved = mda.Universe(datafiles.PSF, datafiles.DCD, in_memory=True)
    emb.set_params(stride=STRIDE)
    same = emb.fit_transform([moved])[0]
    moved.trajectory.coordinate_array[:] += 1.5  # e.g. aligned in memory
    shifted = emb.fit_transform([moved])[0]
    assert same.path != shifted.path
    np.testing.assert_allclose(shifted.positions, same.positions + 1.5, atol=1e-3)


def test_groups_in_any_order_and_boxes_that_change(visnet_checkpoint, adk_universe, tmp_path):
    from g2v_sklearn.embedding._mdanalysis import mdanalysis_frames, mdanalysis_topology

    # an AtomGroup need not be sorted: selections map to its own order
    backwards = adk_universe.select_atoms("resid 2") + adk_universe.select_atoms("resid 1")
    emb = GeomEmbedder(visnet_checkpoint, selection="name CA", progress=False).fit([backwards])
    assert list(backwards[emb.atom_indices_].names) == ["CA", "CA"]
    assert list(backwards[emb.atom_indices_].resids) == [2, 1]
    with pytest.raises(ValueError, match="holds some atoms more than once"):
        GeomEmbedder(visnet_checkpoint).fit([backwards + backwards[:3]])
    with pytest.raises(ValueError, match="outside the AtomGroup given"):
        GeomEmbedder(visnet_checkpoint, selection="global name CA").fit([backwards])
    # a box that changes from frame to frame (NPT) reaches every frame's chunk as its own
    from g2v_sklearn.datasets import load_alanine_dipeptide

    ala = load_alanine_dipeptide(stride=2000).trajectories[0]  # 5 frames
    pdb, dcd = tmp_path / "ala.pdb", tmp_path / "ala.xtc"  # XTC: its reader reuses one timestep
    ala[0].save_pdb(str(pdb))
    u = mda.Universe(str(pdb))
    with mda.Writer(str(dcd), u.atoms.n_atoms) as writer:
        for k, frame in enumerate(ala.xyz):
            u.atoms.positions = frame * 10.0
            u.dimensions = [30.0 + k, 30.0 + k, 30.0 + k, 90.0, 90.0, 90.0]
            writer.write(u.atoms)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        npt = mda.Universe(str(pdb), str(dcd))
    topology = mdanalysis_topology(npt.atoms)
    chunk = next(mdanalysis_frames(npt.atoms, np.arange(10), topology, stride=1, chunk_size=5))
    np.testing.assert_allclose(chunk.unitcell_lengths[:, 0], [3.0, 3.1, 3.2, 3.3, 3.4], rtol=1e-5)
    # resumed inside a chunk (a commit by time), the chunks still end where a full run's do
    resumed = mdanalysis_frames(npt.atoms, np.arange(10), topology, stride=1, chunk_size=2, first=1)
    assert [c.n_frames for c in resumed] == [1, 2, 1]


def _repartitioned(ala2_files, hydrogen_mass, hydrogens=True):
    """Alanine dipeptide as an MDAnalysis Universe without elements, its masses hydrogen-mass
    repartitioned (each hydrogen at ``hydrogen_mass``, the difference taken from its heavy
    atom), with bonds; or, without ``hydrogens``, its heavy atoms alone and no bonds."""
    import mdtraj as md

    traj = md.load(ala2_files[0])
    top = traj.topology
    masses = np.array([a.element.mass for a in top.atoms])
    for a, b in top.bonds:
        for h, heavy in ((a, b), (b, a)):
            if h.element.number == 1:
                masses[heavy.index] -= hydrogen_mass - 1.008
                masses[h.index] = hydrogen_mass
    atoms = [a for a in top.atoms if hydrogens or a.element.number != 1]
    local = {a.index: i for i, a in enumerate(atoms)}
    u = mda.Universe.empty(len(atoms), n_residues=top.n_residues, atom_resindex=[a.residue.index for a in atoms],
                           trajectory=True)
    for attr, values in (("names", [a.name for a in atoms]), ("resnames", [r.name for r in top.residues]),
                         ("resids", [r.resSeq for r in top.residues]), ("segids", ["A"]),
                         ("masses", [masses[a.index] for a in atoms])):
        u.add_TopologyAttr(attr, values)
    if hydrogens:
        u.add_TopologyAttr("bonds", [(local[a.index], local[b.index]) for a, b in top.bonds])
    u.atoms.positions = traj.xyz[0][[a.index for a in atoms]] * 10.0
    return u, np.array([a.element.number for a in atoms])


@pytest.mark.parametrize("hydrogen_mass", [3.024, 4.032])
def test_repartitioned_masses_give_the_right_elements_or_an_error(visnet_checkpoint, ala2_files, hydrogen_mass):
    """Guessing elements from masses gives each heavy atom back the mass its hydrogens took
    (once [3, 6, 8, 6, 5, 3, 6, 8, 6, 3]: lithium, boron, an amide nitrogen read as carbon)."""
    heavy_numbers = [6, 6, 8, 7, 6, 6, 6, 8, 7, 6]
    u, numbers = _repartitioned(ala2_files, hydrogen_mass)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no unusual element left to warn about
        whole = GeomEmbedder(visnet_checkpoint, progress=False).fit([u])
        assert whole.atomic_numbers_.tolist() == heavy_numbers
        # a group of the heavy atoms: their hydrogens, outside it, still count
        heavy = GeomEmbedder(visnet_checkpoint, progress=False).fit([u.select_atoms("not name H*")])
    assert heavy.atomic_numbers_.tolist() == heavy_numbers
    # the heavy atoms alone, no hydrogens to account for their masses: refused, not guessed
    alone, _ = _repartitioned(ala2_files, hydrogen_mass, hydrogens=False)
    with pytest.raises(ValueError, match=r"Atom \w+ of residue \w+ .* weighs \d+\.\d{3} amu, which is no "
                                         r"element's mass \(the nearest, \w+, weighs .*atomic_numbers="):
        GeomEmbedder(visnet_checkpoint).fit([alone])
    given = GeomEmbedder(visnet_checkpoint, atomic_numbers=heavy_numbers, progress=False).fit([alone])
    assert given.atomic_numbers_.tolist() == heavy_numbers
