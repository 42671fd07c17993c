"""Every error GeomEmbedder promises, in the user's terms, and nothing half-written."""

from __future__ import annotations

import os

import mdtraj as md
import numpy as np
import pytest
import torch
from sklearn.utils._param_validation import InvalidParameterError

from g2v_sklearn import GeomEmbedder
from g2v_sklearn.embedding import _embedder as embedder_module

# Embeddings compared bit for bit across runs: the same torch threads in every run.
pytestmark = pytest.mark.usefixtures("fixed_threads")


@pytest.fixture(scope="module")
def small_ala2(ala2_trajs):
    return ala2_trajs[0][:6]


@pytest.fixture(scope="module")
def fitted(visnet_checkpoint, small_ala2):
    return GeomEmbedder(visnet_checkpoint, progress=False).fit([small_ala2])


def test_empty_list(visnet_checkpoint):
    with pytest.raises(ValueError, match="empty list"):
        GeomEmbedder(visnet_checkpoint).fit([])


def test_bare_trajectory_is_rejected(visnet_checkpoint, small_ala2, fitted):
    with pytest.raises(TypeError, match=r"wrap it in a list|Wrap it in a list"):
        GeomEmbedder(visnet_checkpoint).fit(small_ala2)
    with pytest.raises(TypeError, match="Wrap it in a list"):
        fitted.transform(small_ala2)


def test_other_topology_is_rejected(fitted, adk_traj):
    with pytest.raises(ValueError, match="differs from the one GeomEmbedder was fitted on"):
        fitted.transform([adk_traj[:1]])


def test_a_renamed_residue_is_named(fitted, small_ala2):
    renamed = small_ala2[:]
    renamed.topology = small_ala2.topology.copy()
    renamed.topology.residue(1).name = "GLY"  # same atoms, same count
    with pytest.raises(ValueError, match=r"\(22 atoms in 3 residues\) that differs .*: atom 6 "
                                         r"\(ALA2-N when fitted\) has residue name 'GLY' in this "
                                         r"topology and 'ALA' in the fitted one"):
        fitted.transform([renamed])


@pytest.mark.parametrize("atoms", [8, 27])
def test_a_file_with_other_atoms_than_the_topology(visnet_checkpoint, ala2_files, tmp_path, atoms):
    pdb, paths = ala2_files
    traj = md.load(paths[0], top=pdb)[:5]
    xyz = np.concatenate([traj.xyz, traj.xyz[:, :5] + 0.5], axis=1)[:, :atoms]
    path = str(tmp_path / "other.xtc")
    with md.open(path, "w") as fh:
        fh.write(xyz)
    emb = GeomEmbedder(visnet_checkpoint, topology=pdb, progress=False).fit([path])
    # fewer atoms: mdtraj's own error is about indices; more: it would slice them silently
    with pytest.raises(ValueError, match=f"Trajectory 0 .*other.xtc'.* holds {atoms} atoms per "
                                         f"frame but the topology has 22: give the topology this "
                                         f"file was written with"):
        emb.transform([path])


def test_bad_selection_syntax_is_one_line(visnet_checkpoint, small_ala2):
    with pytest.raises(ValueError, match=r"Invalid atom selection 'resname ALA and': a term "
                                         r"\(such as .*\) was expected at its end") as info:
        GeomEmbedder(visnet_checkpoint, selection="resname ALA and").fit([small_ala2])
    assert len(str(info.value)) < 300 and info.value.__suppress_context__  # no grammar dump
    with pytest.raises(ValueError, match=r"Expected end of text at character 5 \('bar'\)"):
        GeomEmbedder(visnet_checkpoint, selection="foo bar").fit([small_ala2])


def test_elements_guessed_from_pdb_atom_names(visnet_checkpoint):
    from g2v_sklearn.datasets import load_adenylate_kinase

    adk = load_adenylate_kinase(n_frames=1)
    closed = md.load(adk.files["closed"])  # no element column
    with pytest.raises(ValueError, match=r"element Ca \(calcium\).*guessed, not read.*a PDB "
                                         r"file has no element column \(CA becomes calcium"):
        GeomEmbedder(visnet_checkpoint).fit([closed])
    # the loader's end states carry the PSF's elements: the embedder takes them as they are
    emb = GeomEmbedder(visnet_checkpoint).fit([adk.closed])
    assert len(emb.atom_indices_) == 1656 and emb.layout_.n_residues == 214


def test_element_without_embedding(visnet_checkpoint, small_ala2):
    numbers = np.array([a.element.number for a in small_ala2.topology.atoms])
    numbers[4] = 101  # a heavy atom of ALA
    with pytest.raises(ValueError, match="atomic number 101.*below 100"):
        GeomEmbedder(visnet_checkpoint, atomic_numbers=numbers).fit([small_ala2])


def _repartitioned(traj):
    """The topology a mass-based reader builds with hydrogen mass repartitioning (H -> He)."""
    broken = traj[:]
    broken.topology = traj.topology.copy()
    for atom in broken.topology.atoms:
        if atom.element.symbol == "H":
            atom.element = md.element.helium
    return broken


def test_impossible_elements_from_masses(visnet_checkpoint, small_ala2, fitted):
    broken = _repartitioned(small_ala2)
    with pytest.raises(ValueError, match=r"element He .*repartition.*atomic_numbers="):
        GeomEmbedder(visnet_checkpoint).fit([broken])
    # the documented way out gives the same tokens as the correct topology
    numbers = np.array([a.element.number for a in small_ala2.topology.atoms])
    fixed = GeomEmbedder(visnet_checkpoint, atomic_numbers=numbers, progress=False)
    np.testing.assert_array_equal(
        fixed.fit_transform([broken])[0].features, fitted.transform([small_ala2])[0].features
    )


def test_heavy_atom_turned_into_lighter_element(visnet_checkpoint, small_ala2):
    broken = small_ala2[:]
    broken.topology = small_ala2.topology.copy()
    atom = next(a for a in broken.topology.atoms if a.name == "N" and a.residue.name == "ALA")
    atom.element = md.element.carbon  # N with one H moved onto it weighs like C
    with pytest.raises(ValueError, match="element C .*cannot be right"):
        GeomEmbedder(visnet_checkpoint).fit([broken])


def test_non_finite_coordinates(fitted, small_ala2):
    bad = small_ala2[:]
    bad.xyz = bad.xyz.copy()
    bad.xyz[3, 5, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite coordinates at frame 3"):
        fitted.transform([bad])
    bad.xyz[3, 5, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        fitted.transform([bad])


def test_selection_that_selects_nothing(visnet_checkpoint, small_ala2):
    with pytest.raises(ValueError, match="selects no atom"):
        GeomEmbedder(visnet_checkpoint, selection="resname XYZ").fit([small_ala2])
    with pytest.raises(ValueError, match="Invalid atom selection"):
        GeomEmbedder(visnet_checkpoint, selection="resname and and").fit([small_ala2])


def test_missing_paths(visnet_checkpoint, ala2_files, tmp_path):
    pdb, _ = ala2_files
    missing = str(tmp_path / "nope.xtc")
    with pytest.raises(FileNotFoundError, match="nope.xtc.*does not exist"):
        GeomEmbedder(visnet_checkpoint, topology=pdb).fit([missing])
    with pytest.raises(FileNotFoundError, match="Checkpoint file .*does not exist"):
        GeomEmbedder(str(tmp_path / "none.pth"), topology=pdb).fit([ala2_files[1][0]])
    with pytest.raises(ValueError, match="needs topology="):
        GeomEmbedder(visnet_checkpoint).fit([ala2_files[1][0]])


def test_an_architecture_the_checkpoint_contradicts(small_ala2, visnet_checkpoint):
    et = os.path.join(os.path.dirname(visnet_checkpoint), "et_l6_h64_rbf64_r75.pth")
    if not os.path.exists(et):
        pytest.skip(f"needs {et}")
    with pytest.raises(ValueError, match="has architecture=et, which conflicts with the explicit "
                                         "parameter architecture=visnet"):
        GeomEmbedder(et, architecture="visnet").fit([small_ala2])
    with pytest.raises(ValueError, match="lmax=2 applies to ViSNet only"):
        GeomEmbedder(et, lmax=2).fit([small_ala2])
    with pytest.raises(ValueError, match="lmax=2 applies to ViSNet only"):
        GeomEmbedder(architecture="tensornet", pretrain="random", lmax=2).fit([small_ala2])


def test_a_bad_checkpoint_fails_fit_with_the_loaders_message(small_ala2, visnet_checkpoint, tmp_path):
    # Every kind of bad file is tested on the loader itself (tests/backbones/test_backbone.py);
    # here only that its message reaches the user of GeomEmbedder, on the real checkpoint.
    state = torch.load(visnet_checkpoint, map_location="cpu", weights_only=True)
    partial = dict(state)
    del partial["representation_model.vis_mp_layers.2.q_proj.weight"]
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"missing keys \['vis_mp_layers.2.q_proj.weight'\]"):
        GeomEmbedder(str(tmp_path / "partial.pth")).fit([small_ala2])


def test_explicit_parameters_that_conflict_with_the_checkpoint(visnet_checkpoint, small_ala2):
    with pytest.raises(ValueError, match="hidden_channels=64, which conflicts .*hidden_channels=128"):
        GeomEmbedder(visnet_checkpoint, hidden_channels=128).fit([small_ala2])
    with pytest.raises(ValueError, match="cutoff=7.5, which conflicts"):
        GeomEmbedder(visnet_checkpoint, cutoff=5.0).fit([small_ala2])
    # agreeing values are fine
    GeomEmbedder(visnet_checkpoint, hidden_channels=64, cutoff=7.5, num_layers=6,
                 progress=False).fit([small_ala2])


def test_neither_checkpoint_nor_pretraining(small_ala2):
    with pytest.raises(ValueError, match=r"checkpoint=.*pretrain='denoise'"):
        GeomEmbedder().fit([small_ala2])
    with pytest.raises(ValueError, match="pretrain='random'.*checkpoint"):
        GeomEmbedder("x.pth", pretrain="random").fit([small_ala2])


def test_parameter_validation(visnet_checkpoint, small_ala2):
    with pytest.raises(InvalidParameterError, match="'pooling' parameter of GeomEmbedder"):
        GeomEmbedder(visnet_checkpoint, pooling="max").fit([small_ala2])
    with pytest.raises(InvalidParameterError, match="'batch_size' parameter"):
        GeomEmbedder(visnet_checkpoint, batch_size=0).fit([small_ala2])


def test_transform_before_fit(small_ala2):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        GeomEmbedder("x.pth").transform([small_ala2])


def test_broken_molecule_is_reported(fitted, small_ala2):
    broken = small_ala2[:]
    broken.xyz = broken.xyz.copy()
    nme = [a.index for a in broken.topology.residue(2).atoms]
    broken.xyz[:, nme, 0] += 3.0  # NME moved 30 Angstrom away, no unit cell to fix it
    broken.unitcell_vectors = None
    with pytest.raises(ValueError, match="longer than any covalent bond"):
        fitted.transform([broken])


def test_molecules_made_whole_across_periodic_boundaries(fitted, small_ala2):
    expected = fitted.transform([small_ala2])[0]
    wrapped = small_ala2[:]
    wrapped.xyz = wrapped.xyz.copy()
    nme = [a.index for a in wrapped.topology.residue(2).atoms]
    wrapped.xyz[:, nme, 0] += 3.0  # one box length
    wrapped.unitcell_vectors = np.tile(np.eye(3, dtype=np.float32) * 3.0, (len(wrapped), 1, 1))
    got = fitted.transform([wrapped])[0]
    np.testing.assert_allclose(got.features, expected.features, rtol=1e-4, atol=1e-4)


def test_interrupted_store_leaves_nothing_complete(fitted, small_ala2, tmp_path, monkeypatch):
    store = tmp_path / "store"
    emb = fitted.set_params(store_dir=str(store), batch_size=2)
    calls = {"n": 0}
    original = embedder_module._Engine.embed_batch

    def failing(self, pos, *args):
        calls["n"] += 1
        if calls["n"] == 2:  # fail at frame k = 2
            raise RuntimeError("injected failure at frame 2")
        return original(self, pos, *args)

    monkeypatch.setattr(embedder_module._Engine, "embed_batch", failing)
    with pytest.raises(RuntimeError, match="injected failure"):
        emb.transform([small_ala2])
    leftovers = list(store.iterdir()) if store.exists() else []
    assert leftovers == []
    monkeypatch.setattr(embedder_module._Engine, "embed_batch", original)
    tok = emb.transform([small_ala2])[0]
    assert tok.path is not None and os.path.dirname(tok.path) == str(store)
    fitted.set_params(store_dir=None, batch_size=32)


def test_bond_errors_say_what_a_unit_mix_up_looks_like(fitted, small_ala2):
    """xyz scaled by 10 or 1e6 was reported as a broken molecule, without a word on units."""
    def scaled(factor):
        frames = small_ala2[:2]
        frames.xyz = small_ala2.xyz[:2] * factor
        return frames

    with pytest.raises(ValueError, match=r"longer than any covalent bond: .* or the coordinates are in another "
                                         r"unit. Every bond in that frame is about 10 times its usual length: "
                                         r"coordinates in Angstrom where nanometres belong: .*divide it by 10"):
        fitted.transform([scaled(10.0)])
    with pytest.raises(ValueError, match=r"about 1e\+06 times its usual length: the coordinates are 1e\+06 times "
                                         r"too large for their unit: multiply them by 1e-06"):
        fitted.transform([scaled(1e6)])
    with pytest.raises(ValueError, match=r"outside the .* Angstrom a bond .* about 0.1 times its usual length: "
                                         r"coordinates in nanometres where Angstrom belong .*multiply them by 10"):
        fitted.transform([scaled(0.1)])
    # a molecule broken otherwise says what a unit mix-up would look like, and that this is not one
    zeros = small_ala2[:1]
    zeros.xyz = np.zeros_like(small_ala2.xyz[:1])
    with pytest.raises(ValueError, match=r"A mix-up of units makes every bond about the same factor too long or "
                                         r"too short: 10 times .*placeholder coordinates, not another unit"):
        fitted.transform([zeros])
    stretched = small_ala2[:1]
    stretched.xyz = small_ala2.xyz[:1].copy()
    stretched.xyz[0, 8] += 0.3  # one atom 3 Angstrom away: its bonds only
    with pytest.raises(ValueError, match=r"longer than any covalent bond.*A mix-up of units makes every bond.*"
                                         r"here they are .* times their usual length, so it is not that"):
        fitted.transform([stretched])


def _failing_at_batch(monkeypatch, n):
    """Make the n-th batch embedded raise a RuntimeError (as CUDA running out of memory
    would); returns the counter of frames embedded, which the rerun reads."""
    calls = {"batches": 0, "frames": 0, "fail_at": n}
    original = embedder_module._Engine.embed_batch

    def failing(self, pos, *args):
        calls["batches"] += 1
        if calls["batches"] == calls["fail_at"]:
            raise RuntimeError("CUDA out of memory (injected)")
        calls["frames"] += len(pos)
        return original(self, pos, *args)

    monkeypatch.setattr(embedder_module._Engine, "embed_batch", failing)
    return calls


@pytest.mark.parametrize("mode", ["memory", "store_dir"])
def test_an_error_mid_embedding_keeps_the_committed_chunks(fitted, ala2_trajs, tmp_path, monkeypatch,
                                                            mode):
    """Three chunks of ten frames committed, then an ordinary exception: the rerun embeds the
    last ten frames only, and the tokens are those of an uninterrupted run."""
    frames = ala2_trajs[0][:40]
    expected = fitted.set_params(chunk_size=10, batch_size=5).transform([frames])[0]
    emb = fitted.set_params(**{mode: str(tmp_path / mode)})
    try:
        calls = _failing_at_batch(monkeypatch, 7)  # the first batch of the fourth chunk
        with pytest.raises(RuntimeError, match="out of memory"):
            emb.transform([frames])
        calls["fail_at"], calls["frames"] = None, 0  # no more failures; count the rerun
        got = emb.transform([frames])[0]
        assert calls["frames"] == 10  # 30 committed frames kept (40 embedded again before)
        np.testing.assert_array_equal(got.features, expected.features)
        assert sorted(os.listdir(tmp_path / mode)) == [os.path.basename(got.path)]  # no debris
        del got
    finally:
        fitted.set_params(**{mode: None}, chunk_size=1000, batch_size="auto")


def test_commits_by_time_let_a_short_trajectory_resume(fitted, ala2_trajs, tmp_path, monkeypatch):
    """A trajectory shorter than chunk_size is one chunk: without commits by time, an error
    in it lost every frame. With a commit after every batch (COMMIT_SECONDS=0), the rerun
    embeds from the last batch committed, batched as the uninterrupted run was."""
    frames = ala2_trajs[0][:20]
    expected = fitted.set_params(chunk_size=8, batch_size=3).transform([frames])[0]
    emb = fitted.set_params(memory=str(tmp_path / "cache"))
    try:
        calls = _failing_at_batch(monkeypatch, 3)  # frames 6-7, the first chunk's last batch
        with pytest.raises(RuntimeError):
            emb.transform([frames])  # the default commits only at the chunk's end: nothing kept
        assert os.listdir(tmp_path / "cache") == []
        monkeypatch.setattr(embedder_module, "COMMIT_SECONDS", 0.0)
        calls["batches"] = 0
        with pytest.raises(RuntimeError):
            emb.transform([frames])  # committed by time after frames 0-2 and 3-5
        calls["fail_at"], calls["frames"] = None, 0
        got = emb.transform([frames])[0]
        assert calls["frames"] == 14
        np.testing.assert_array_equal(got.features, expected.features)
        assert len(os.listdir(tmp_path / "cache")) == 1
        del got
    finally:
        fitted.set_params(memory=None, chunk_size=1000, batch_size="auto")


def test_coordinates_that_are_not_the_molecule_are_refused(fitted, small_ala2):
    """Bond lengths by element pair: the checks behind issue 11's silent wrong results."""
    zeros = small_ala2[:]
    zeros.xyz = np.zeros_like(small_ala2.xyz)
    with pytest.raises(ValueError, match=r"frame 0, the bond .* is 0.00 Angstrom long, outside the "
                                         r"\d.\d\d-\d.\d\d Angstrom .* not this topology's molecule"):
        fitted.transform([zeros])
    reversed_order = small_ala2[:]
    heavy = np.array([a.index for a in small_ala2.topology.atoms if a.element.symbol != "H"])
    reversed_order.xyz = small_ala2.xyz.copy()
    reversed_order.xyz[:, heavy] = small_ala2.xyz[:, heavy[::-1]]  # the embedded atoms, in reverse order
    # (no bond longer than 2.7 Angstrom, so only the element-pair ranges can tell)
    with pytest.raises(ValueError, match="outside the .* a bond between these elements can have"):
        fitted.transform([reversed_order])
    squeezed = small_ala2[:]
    squeezed.xyz = small_ala2.xyz.copy()
    squeezed.xyz[3] *= 0.5  # one frame in other units: every bond half as long
    with pytest.raises(ValueError, match=r"trajectory 0, frame 3, the bond"):
        fitted.transform([squeezed])
    fitted.transform([small_ala2])  # the real molecule passes


def _ligand_with(small_ala2, element):
    """The first frame with the alanine as a ligand 'LIG' (whose atom names are not checked
    against elements, as a standard residue's are) and its C-alpha made ``element``."""
    ligand = small_ala2[:1]
    ligand.topology = small_ala2.topology.copy()
    ligand.topology.residue(1).name = "LIG"
    ligand.topology.atom(8).element = element  # LIG2-CA
    return ligand


def test_elements_rare_in_biomolecules_or_unseen_in_pretraining_are_named(visnet_checkpoint, small_ala2):
    with pytest.warns(UserWarning, match=r"include B \(1 atom: LIG2-CA\): Li, Be and B are rare in "
                                         r"biomolecules.*repartitioned.*atomic_numbers="):
        GeomEmbedder(visnet_checkpoint, progress=False).fit([_ligand_with(small_ala2, md.element.boron)])
    with pytest.warns(UserWarning, match=r"include Se \(1 atom: LIG2-CA\): the pretrained backbone never "
                                         r"saw .* untrained"):
        GeomEmbedder(visnet_checkpoint, progress=False).fit([_ligand_with(small_ala2, md.element.selenium)])
    # numbers the user gave are not second-guessed as mass artefacts
    numbers = np.array([a.element.number for a in small_ala2.topology.atoms])
    numbers[8] = 5
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GeomEmbedder(visnet_checkpoint, atomic_numbers=numbers, progress=False).fit([small_ala2])
