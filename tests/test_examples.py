"""The examples run end to end (at their reduced CI size), so they cannot rot."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name, out, *args):
    """Run an example with its default backbone, the name "visnet" (from $G2V_MIRROR, set in conftest)."""
    env = dict(os.environ, G2V_EXAMPLE_QUICK="1", MPLBACKEND="Agg")
    done = subprocess.run([sys.executable, str(EXAMPLES / name), "--out", str(out), *args], check=False,
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def assert_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    assert path.stat().st_size > 5000, f"{path} is suspiciously small"


def test_alanine_dipeptide_example(visnet_name, tmp_path):
    out = tmp_path / "report"
    stdout = run_example("alanine_dipeptide.py", out, "--seed", "1")  # any seed runs (0 is the default)
    for name in ("implied_timescales.png", "ck_test.png", "free_energy.png", "training.png"):
        assert_png(out / name)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["quick"] is True and summary["seed"] == 1
    candidates = summary["grid_search"]["candidates"]
    assert len(candidates) == 2 and all(np.isfinite(c["mean_cv_vamp2"]) for c in candidates)
    best = max(candidates, key=lambda c: c["mean_cv_vamp2"])
    assert summary["grid_search"]["chosen"]["lr"] == best["lr"]
    # VAMP-2 on two processes lies in [1, 3]
    assert 1.0 <= summary["grid_search"]["best_cv_vamp2"] <= 3.0 + 1e-9
    ours, ref = summary["slowest_timescales_ns"]["learned"], summary["slowest_timescales_ns"]["phi_psi_msm"]
    assert len(ours) == len(ref) == 2 and all(t > 0 for t in ours + ref)
    assert sum(summary["spib"]["populations"]) == pytest.approx(1.0)
    assert 0 <= summary["spib"]["alpha_L_precision"] <= 1 and 0 <= summary["spib"]["alpha_L_recall"] <= 1
    recovery = summary["alpha_L_from_coordinate_1"]
    assert set(recovery) == {"precision", "recall"} and all(0.0 <= v <= 1.0 for v in recovery.values())
    assert "precision" in stdout and "recall" in stdout
    assert "slowest implied timescales" in stdout and "(phi, psi) MSM" in stdout
    report = (out / "report.md").read_text()
    assert "| lr | mean_cv_vamp2 |" in report and "Chosen:" in report
    assert f"precision {recovery['precision']:.3f}, recall {recovery['recall']:.3f}" in report
    # the kinetic model: two sets per MSM, their table printed and saved, structures that reload
    import mdtraj as md

    for name in ("kinetics.png", "state_importance.png"):
        assert_png(out / name)
    kinetics = summary["kinetics"]
    for table in (kinetics["learned"], kinetics["phi_psi_msm"]):
        assert len(table) == 2 and sum(row["population"] for row in table) == pytest.approx(1.0)
        assert all(row["population_95ci"][0] <= row["population"] <= row["population_95ci"][1] for row in table)
    assert "MFPT to set 1" in stdout and "TPT" in stdout and "metastable sets" in report
    assert len(kinetics["importance"]) == 2 and len(kinetics["importance"][0]) == 3
    for files in kinetics["structures"].values():
        samples = md.load(files["samples"], top=files["topology"])
        assert samples.n_frames == 10 and md.load(files["importance"]).n_atoms == samples.n_atoms


def test_adenylate_kinase_example(visnet_name, tmp_path, adk_paths_short, token_cache):
    """Run on the session's token cache, holding (or about to hold) the quick size's 2 x 8 frames."""
    import mdtraj as md
    from conftest import ADK_QUICK_FRAMES

    import g2v_sklearn

    spec = importlib.util.spec_from_file_location("adk_example", EXAMPLES / "adenylate_kinase.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.QUICK_FRAMES == ADK_QUICK_FRAMES == adk_paths_short[0].n_frames
    g2v_sklearn.GeomEmbedder(visnet_name, memory=token_cache, progress=False).fit_transform(adk_paths_short)

    cached = sorted(Path(token_cache).rglob("*"))

    out = tmp_path / "report"
    stdout = run_example("adenylate_kinase.py", out, "--memory", token_cache)
    # the tokens came from the given cache: nothing new in it, no cache of its own
    assert sorted(Path(token_cache).rglob("*")) == cached and not (out / "token-cache").exists()
    assert "transition paths" in stdout and "illustrative" in stdout
    assert_png(out / "importance.png")
    summary = json.loads((out / "summary.json").read_text())
    # the window reported is the one whose cross-validated score is highest, among those searched
    scores = {int(w): s for w, s in summary["windows"].items()}
    assert sorted(scores) == [1, 4, 8] and all(np.isfinite(list(scores.values())))
    assert summary["chosen_window"] == max(scores, key=scores.get)
    assert set(summary["importance_by_domain"]) == {"CORE", "NMP", "LID"}
    # the PDB carries the importance in its B-factor column, scaled to [0, 99]
    bfactors = np.array([float(line[60:66]) for line in (out / "importance.pdb").read_text().splitlines()
                         if line.startswith(("ATOM", "HETATM"))])
    assert bfactors.size == md.load(out / "importance.pdb").n_atoms
    assert bfactors.min() == pytest.approx(0.0) and bfactors.max() == pytest.approx(99.0)
    # its element column is the PSF's (alpha carbons were calcium when the PDB was read alone)
    assert {a.element.symbol for a in md.load(out / "importance.pdb").topology.atoms} == {
        "C", "H", "N", "O", "S"}
    # the kinetic model of the chosen coordinate: two sets, their table, figure and structures
    assert_png(out / "kinetics.png")
    assert len(summary["sets"]) == 2 and sum(row["population"] for row in summary["sets"]) == pytest.approx(1.0)
    assert np.array(summary["set_importance"]).shape == (2, 214)
    for files in summary["structures"].values():
        assert md.load(files["samples"], top=files["topology"]).n_frames == 4
        assert md.load(files["importance"]).n_atoms == adk_paths_short[0].n_atoms
