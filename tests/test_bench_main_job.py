"""benchmarks/bench_main_job.py: the science bounds it checks every run against."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from conftest import REPO


def _in_bounds():
    sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_main_job", REPO / "benchmarks" / "bench_main_job.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.in_bounds


def run(ours, alpha=(1.0, 1.0), ci=((1.27, 0.07), (5.64, 0.14))):
    return {"slowest_its_ns": [ours, 0.07], "reference_its_ns": [2.25, 0.07], "reference_95ci": ci,
            "alpha_L": {"precision": alpha[0], "recall": alpha[1]}}


@pytest.mark.parametrize("ours, alpha, expected", [
    (2.217, (1.0, 0.996), True),
    (0.85 * 2.25, (1.0, 1.0), True),   # the lower bound itself
    (0.84 * 2.25, (1.0, 1.0), False),  # too fast: the coordinate misses the slow process
    (5.64, (1.0, 1.0), True),          # the upper end of the reference's interval
    (5.65, (1.0, 1.0), False),
    (2.217, (0.89, 1.0), False),       # alpha_L found too loosely
    (2.217, (1.0, 0.89), False),
])
def test_a_run_is_in_bounds_only_inside_every_bound(ours, alpha, expected):
    assert _in_bounds()(run(ours, alpha)) is expected


def test_without_an_interval_only_the_lower_bound_applies():
    assert _in_bounds()(run(50.0, ci=None)) is True
    assert _in_bounds()(run(1.0, ci=None)) is False
