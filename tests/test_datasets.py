"""g2v_sklearn.datasets: the shipped alanine dipeptide, its simulation recipe, and AdK."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mdtraj as md
import numpy as np
import pytest

from g2v_sklearn.datasets import (
    ADK_DOMAINS,
    SHIPPED_SETTINGS,
    _alanine,
    domain_labels,
    get_data_home,
    load_adenylate_kinase,
    load_alanine_dipeptide,
    simulate_alanine_dipeptide,
)


@pytest.fixture(scope="module")
def shipped():
    return load_alanine_dipeptide()


def test_shipped_dataset_is_what_its_settings_say(shipped):
    s = SHIPPED_SETTINGS
    assert len(shipped.trajectories) == s["n_trajectories"] == 4
    frames = round(s["length_ns"] * 1000 / s["save_every_ps"])
    for t in shipped.trajectories:
        assert t.n_frames == frames
        assert t.n_atoms == 10 and t.n_residues == 3
        assert all(a.element.symbol != "H" for a in t.topology.atoms)
    assert shipped.timestep_ps == s["save_every_ps"]
    for key, value in s.items():
        assert shipped.settings[key] == value
    assert shipped.settings["trajectory_seeds"] == _alanine._trajectory_seeds(s["seed"], s["n_trajectories"])


def test_shipped_dataset_is_small():
    folder = Path(_alanine._shipped_dir())
    total = sum(p.stat().st_size for p in folder.iterdir())
    assert total <= 15 * 2**20, f"{total / 2**20:.1f} MB shipped"


def test_shipped_dataset_resolves_the_slow_process(shipped):
    """alpha_L (phi > 0) is rare but visited, and left again, in the shipped data."""
    phi = np.concatenate([md.compute_phi(t)[1][:, 0] for t in shipped.trajectories])
    fraction = np.mean(phi > 0)
    assert 0.002 < fraction < 0.1
    crossings = np.sum(np.diff((phi > 0).astype(int)) != 0)
    assert crossings >= 10


def test_stride_keeps_every_nth_frame(shipped):
    strided = load_alanine_dipeptide(stride=5)
    assert strided.timestep_ps == 5 * shipped.timestep_ps
    np.testing.assert_array_equal(strided.trajectories[1].xyz, shipped.trajectories[1].xyz[::5])


@pytest.mark.parametrize("stride", [0, -1, 1.5, True])
def test_bad_stride_is_refused(stride):
    with pytest.raises(ValueError, match="stride must be a positive integer"):
        load_alanine_dipeptide(stride=stride)


def test_the_shipped_data_came_from_simulate_alanine_dipeptide(shipped, tmp_path):
    """Re-running the recipe with the shipped seed reproduces the first frames (XTC precision).

    The first frame lies thousands of Langevin steps in: molecular dynamics is chaotic, so a
    last-bit difference in the maths library's exp or sqrt (another C library, processor
    architecture or OpenMM build) grows to tenths of a nanometre by then. The coordinates are
    compared on the kind of platform the data were made on (x86-64 Linux, glibc's routines,
    OpenMM's Reference platform), the recipe's times and sizes everywhere."""
    import platform

    pytest.importorskip("openmm")
    s = SHIPPED_SETTINGS
    again = simulate_alanine_dipeptide(1, 0.03, save_every_ps=s["save_every_ps"], seed=s["seed"],
                                       heavy_atoms_only=True, cache=False, progress=False)
    (traj,) = again.trajectories
    assert traj.n_frames == 3 and traj.n_atoms == shipped.trajectories[0].n_atoms
    np.testing.assert_allclose(traj.time, shipped.trajectories[0].time[:3])
    if sys.platform == "linux" and platform.machine() == "x86_64" and platform.libc_ver()[0] == "glibc":
        np.testing.assert_allclose(traj.xyz, shipped.trajectories[0].xyz[:3], atol=1.5e-3)


def test_simulation_is_cached_and_reproducible(tmp_path, monkeypatch):
    pytest.importorskip("openmm")
    first = simulate_alanine_dipeptide(2, 0.004, save_every_ps=1.0, seed=3, data_home=tmp_path, progress=False)
    assert [t.n_frames for t in first.trajectories] == [4, 4]
    assert first.trajectories[0].n_atoms == 22
    assert not np.allclose(first.trajectories[0].xyz, first.trajectories[1].xyz)  # own seed each
    assert first.settings["timestep_fs"] == 4.0 and first.settings["seed"] == 3
    cached = sorted((tmp_path / "alanine_dipeptide").glob("*.npz"))
    assert len(cached) == 2

    def no_simulation(*args, **kwargs):
        raise AssertionError("simulated although the cache holds the result")

    monkeypatch.setattr(_alanine, "_simulate_one", no_simulation)
    second = simulate_alanine_dipeptide(2, 0.004, save_every_ps=1.0, seed=3, data_home=tmp_path, progress=False)
    for a, b in zip(first.trajectories, second.trajectories):
        np.testing.assert_array_equal(a.xyz, b.xyz)


def test_interrupted_cache_write_leaves_nothing(tmp_path, monkeypatch):
    pytest.importorskip("openmm")

    def failing_savez(path, **arrays):
        Path(path).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(_alanine.np, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        simulate_alanine_dipeptide(1, 0.002, seed=1, data_home=tmp_path, progress=False)
    assert list((tmp_path / "alanine_dipeptide").iterdir()) == []


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n_trajectories": 0}, "n_trajectories must be a positive integer"),
    ({"length_ns": -1.0}, "length_ns must be a positive number"),
    ({"save_every_ps": 0.006}, "not a whole number of 4-fs steps"),
    ({"length_ns": 0.0001, "save_every_ps": 1.0}, "shorter than one saved frame"),
    ({"seed": -2}, "seed must be a non-negative integer"),
])
def test_bad_simulation_settings_are_refused(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        simulate_alanine_dipeptide(**{"data_home": tmp_path, "progress": False, **kwargs})


def test_missing_openmm_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "openmm", None)
    with pytest.raises(ImportError, match=r"pip install openmm.*load_alanine_dipeptide"):
        simulate_alanine_dipeptide(data_home=tmp_path, progress=False)


def test_data_home_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("G2V_SKLEARN_DATA", str(tmp_path / "here"))
    assert get_data_home() == tmp_path / "here" and (tmp_path / "here").is_dir()
    assert get_data_home(tmp_path / "explicit") == tmp_path / "explicit"


def test_adenylate_kinase_paths_go_from_closed_to_open():
    adk = load_adenylate_kinase()
    assert [p.n_frames for p in adk.paths] == [98, 102]
    ca = adk.closed.topology.select("name CA")
    for path in adk.paths:
        assert path.n_residues == 214 and path.n_atoms == adk.closed.n_atoms == adk.open.n_atoms
        to_closed = md.rmsd(path, adk.closed, atom_indices=ca)
        to_open = md.rmsd(path, adk.open, atom_indices=ca)
        assert to_closed[0] < 0.1 < to_open[0]  # nm
        assert to_open[-1] < 0.1 < to_closed[-1]


def test_adenylate_kinase_domains_partition_the_protein():
    adk = load_adenylate_kinase(n_frames=2)
    assert [p.n_frames for p in adk.paths] == [2, 2]
    counts = {name: int(np.sum(adk.residue_domain == name)) for name in ADK_DOMAINS}
    assert counts == {"CORE": 29 + 62 + 55, "NMP": 30, "LID": 38}
    assert sum(counts.values()) == 214
    assert adk.residue_domain[121] == "LID" and adk.residue_domain[120] == "CORE"  # residue 122, 121


def test_domain_labels_with_own_domains():
    labels = domain_labels([5, 6, 7, 20], {"a": [(5, 6)], "b": [(7, 7)]})
    assert labels.tolist() == ["a", "a", "b", ""]


@pytest.mark.parametrize("n_frames", [0, -3, 2.5, True])
def test_bad_n_frames_is_refused(n_frames):
    with pytest.raises(ValueError, match="n_frames must be a positive integer"):
        load_adenylate_kinase(n_frames=n_frames)


def test_missing_mdanalysistests_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "MDAnalysisTests", None)
    monkeypatch.setitem(sys.modules, "MDAnalysisTests.datafiles", None)
    with pytest.raises(ImportError, match="pip install MDAnalysisTests"):
        load_adenylate_kinase()


def test_shipped_settings_file_matches_the_package_constant():
    meta = json.loads((Path(_alanine._shipped_dir()) / "settings.json").read_text())
    assert {k: meta[k] for k in SHIPPED_SETTINGS} == SHIPPED_SETTINGS
    assert meta["timestep_fs"] == 4.0 and meta["hydrogen_mass_amu"] == 4.0 and meta["temperature_K"] == 300.0


def test_adenylate_kinase_end_states_carry_the_real_elements_and_loading_is_quiet(capfd):
    import collections

    adk = load_adenylate_kinase(n_frames=2)
    elements = collections.Counter(a.element.symbol for a in adk.paths[0].topology.atoms)
    assert set(elements) == {"C", "H", "N", "O", "S"}
    for structure in (adk.closed, adk.open):
        # read alone, these PDBs gave calcium for CA and mercury for HG
        assert collections.Counter(a.element.symbol for a in structure.topology.atoms) == elements
        assert structure.topology.atom(int(structure.topology.select("name CA")[0])).element.symbol == "C"
    out, err = capfd.readouterr()
    assert "DCD header claims" not in out + err and "dcdplugin" not in out + err
