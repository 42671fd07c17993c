"""The same fits give the same bits: VAMPNet and SPIB against outputs saved before the trainer redesign.

tests/data/make_learner_reference.py made tests/data/learner_reference.npz (and the
pickles beside it) at one thread with the code before the learners were split
into a trainer and objectives; a change to training that moves a single bit of
a fit fails here.
"""

from __future__ import annotations

import importlib.util
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

DATA = Path(__file__).resolve().parents[1] / "data"

pytestmark = pytest.mark.usefixtures("fixed_threads")


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
    expected = np.load(DATA / "learner_reference.npz")
    got = _maker().compute()
    assert sorted(got) == sorted(expected.files)
    different = [key for key in expected.files if not np.array_equal(got[key], expected[key])]
    assert different == []


def test_pickles_made_before_the_redesign_give_the_same_outputs(one_thread):
    maker = _maker()
    expected = np.load(DATA / "learner_reference.npz")
    estimators = pickle.loads((DATA / "learner_reference.pkl").read_bytes())
    specs = maker.fits()
    assert sorted(estimators) == sorted(specs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, est in estimators.items():
            got = maker.outputs(name, est, specs[name][1])
            for key, value in got.items():
                assert np.array_equal(value, expected[f"{name}/{key}"]), f"{name}/{key}"
