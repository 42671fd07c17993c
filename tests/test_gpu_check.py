"""benchmarks/gpu_check.py's dry run: every section at tiny sizes on the CPU, so the GPU script cannot rot."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
from conftest import REPO, SHARED, need


def _gpu_check():
    path = REPO / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_check", module)
    spec.loader.exec_module(module)
    return module


def test_dry_run_runs_every_section_and_writes_its_report(visnet_checkpoint, tmp_path):
    need(SHARED / "anchors" / "geom2vec")
    out = tmp_path / "gpu_check.json"
    report = _gpu_check().main(["--dry-run", "--checkpoint", visnet_checkpoint, "--out", str(out),
                                "--anchors", str(SHARED / "anchors"), "--repeats", "1"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report, default=str))
    assert report["environment"]["device"] == "cpu" and "skipped" in report["tests"]
    embedding = report["embedding"]
    assert {(r["system"], r["variant"]) for r in embedding} == {
        (s, v) for s in ("real", "tiled") for v in ("reference", "ours_fp32", "ours_bf16")}
    for row in embedding:
        assert "error" not in row, row
        assert row["frames_per_s"] > 0 and row["speed_over_reference"] > 0
        if row["variant"] == "ours_fp32":
            assert row["max_abs_error_over_max_token"] < 1e-4  # the same tokens as torch-geometric's block
    tiled = next(r for r in embedding if r["system"] == "tiled")
    assert tiled["atoms"] == 3 * 10 and tiled["residues"] == 3 * 3  # three copies of alanine dipeptide
    rows = report["training"]["rows"]
    assert len(rows) == 2 * 2 * 2 and all("error" not in r and r["step_s"] > 0 for r in rows), rows
    assert "skipped" in report["training"]["flash_attention_step"]  # CUDA only
    assert all(r["geom2vec_over_ours"] > 0 for r in report["side_by_side"]), report["side_by_side"]
    cli = report["command_line"]  # g2v embed and g2v fit, on the CPU here
    assert "error" not in cli, cli
    assert cli["fit_peak_gb"] is None and cli["slowest_timescale_frames"] > 0 and cli["fit_s"] > 0


def test_refuses_to_run_without_cuda_unless_dry(visnet_checkpoint, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit, match="No CUDA device.*--dry-run"):
        _gpu_check().main(["--checkpoint", visnet_checkpoint, "--adk-psf", "x.psf", "--adk-dcd", "x.dcd",
                           "--out", str(tmp_path / "x.json")])
