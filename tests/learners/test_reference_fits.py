"""The same fits give the same bits: VAMPNet and SPIB against outputs saved before the trainer redesign.

tests/data/make_learner_reference.py made tests/data/learner_reference.npz (and the
pickles beside it) at one thread with the code before the learners were split
into a trainer and objectives; a change to training that moves a single bit of
a fit fails here. A deliberate change that moves fits records what it moved in
learner_reference_update.npz, and why in learner_reference.json; the refits are
held to the update, the pickles (which are the old fits) to the reference.

Bits are a property of the kernels as well as of the code: float32 products and
reductions round differently on another vector width (AVX2 against AVX-512),
another maker's processor (MKL's paths differ) or another torch. The reference
records its machine (tests/data/learner_reference.json). On a machine of that kind
the comparison is exact; on any other, every output must agree to 1e-4 of its
scale and every label exactly (with torch's, oneDNN's and MKL's kernels held to
AVX2 on the reference machine, the largest difference was 7e-6 of the scale, in
the token VAMPNet's outputs), and the network weights, which are not outputs, are
not compared.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

DATA = Path(__file__).resolve().parents[1] / "data"

pytestmark = pytest.mark.usefixtures("fixed_threads")


REFERENCE_MACHINE = json.loads((DATA / "learner_reference.json").read_text())
#: Outside the reference's kind of machine: outputs to this fraction of their scale.
FOREIGN_TOLERANCE = 1e-4


def cpu_vendor() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            return next((line.split(":", 1)[1].strip() for line in handle if line.startswith("vendor_id")), "")
    except OSError:
        return ""


def same_kind_of_machine() -> bool:
    """Whether this machine runs the reference's kernels: the same processor maker, vector
    width (as torch picks it) and torch."""
    here = {"cpu_vendor": cpu_vendor(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__}
    return all(REFERENCE_MACHINE[key] == value for key, value in here.items())


def differs(key: str, got, expected, exact: bool) -> bool:
    """Whether ``got`` and ``expected`` disagree beyond what the kernels allow (see the module's docstring)."""
    got, expected = np.asarray(got), np.asarray(expected)
    if exact or expected.dtype.kind not in "fc":
        return not np.array_equal(got, expected)
    if key.endswith("/state"):
        return got.shape != expected.shape
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    return got.shape != expected.shape or not np.allclose(got, expected, rtol=0, atol=FOREIGN_TOLERANCE * scale)


def test_foreign_machines_are_held_to_outputs_and_labels():
    expected = np.array([2.0, -1.0])
    assert not differs("a/transform", expected + 1e-5, expected, exact=False)
    assert differs("a/transform", expected + 1e-3, expected, exact=False)
    assert differs("a/transform", expected + 1e-5, expected, exact=True)
    assert differs("a/predict", np.array([0, 2]), np.array([0, 1]), exact=False)
    assert not differs("a/state", expected + 1.0, expected, exact=False)


def _maker():
    spec = importlib.util.spec_from_file_location("make_learner_reference", DATA / "make_learner_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_fits_match_the_saved_reference_bit_for_bit(one_thread):
    maker = _maker()
    expected = maker.expected_refits()
    got = maker.compute()
    assert sorted(got) == sorted(expected)
    exact = same_kind_of_machine()
    different = [key for key in expected if differs(key, got[key], expected[key], exact)]
    assert different == [], f"exact: {exact} (reference machine {REFERENCE_MACHINE})"


def test_pickles_made_before_the_redesign_give_the_same_outputs(one_thread):
    maker = _maker()
    expected = np.load(DATA / "learner_reference.npz")
    estimators = pickle.loads((DATA / "learner_reference.pkl").read_bytes())
    specs = maker.fits()
    assert sorted(estimators) == sorted(specs)
    exact = same_kind_of_machine()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, est in estimators.items():
            got = maker.outputs(name, est, specs[name][1])
            for key, value in got.items():
                assert not differs(f"{name}/{key}", value, expected[f"{name}/{key}"], exact), f"{name}/{key}"
