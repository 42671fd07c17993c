"""benchmarks/bench_limits.py: its counters, and its quick mode on one training step, so the script cannot rot."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch
from conftest import REPO


def _bench_limits():
    sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_limits", REPO / "benchmarks" / "bench_limits.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_limits", module)
    spec.loader.exec_module(module)
    return module


def test_exponentials_are_counted_once_a_score_forward_and_once_backward():
    q, k, v = (torch.randn(2, 3, 5, 4, requires_grad=True) for _ in range(3))
    k7, v7 = torch.randn(2, 3, 7, 4, requires_grad=True), torch.randn(2, 3, 7, 4, requires_grad=True)

    def step():
        torch.nn.functional.scaled_dot_product_attention(q, k7, v7).sum().backward()

    assert _bench_limits().count_exponentials(step) == 2 * (2 * 3 * 5 * 7)
    with torch.no_grad():
        assert _bench_limits().count_exponentials(
            lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)) == 2 * 3 * 5 * 5


def test_the_binding_limit_is_the_higher_floor():
    limits = {"matmul_square_2048_float32": 100.0, "exp_per_s": 1e9, "memory_gb_per_s": 10.0}
    rows = [{"path": "a", "flops_per_unit": 50e9, "exp_per_unit": 1e8, "units": 1, "seconds": 1.0, "unit": "step"},
            {"path": "b", "flops_per_unit": 1e9, "exp_per_unit": 1e9, "units": 1, "seconds": 2.0, "unit": "step"}]
    _bench_limits().add_fractions(rows, limits)
    assert rows[0]["bound"] == "fp32 matmul" and rows[0]["fraction"] == pytest.approx(0.5)
    assert rows[1]["bound"] == "exp throughput" and rows[1]["fraction"] == pytest.approx(0.5)


def test_quick_mode_writes_its_table(tmp_path, monkeypatch):
    monkeypatch.setenv("G2V_THREAD_BUDGET", "1")  # the script switches the budget off: not for later tests
    import torch

    out = tmp_path / "limits.json"
    threads = torch.get_num_threads()
    try:
        report = _bench_limits().main(["--quick", "--parts", "train", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)  # the script sets its own count
    assert json.loads(out.read_text())["table"] == report["table"]
    assert "| hot path | bound | limit | achieved | fraction |" in report["table"]
    assert all(0 < row["fraction"] for row in report["rows"]) and len(report["rows"]) == 2
