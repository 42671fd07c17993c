"""Pickles made by the flat layout (0.1.0.dev0) load into today's classes (g2v_sklearn._moved)."""

import io
import pickle
import pickletools
from pathlib import Path

import numpy as np
import pytest

import g2v_sklearn
from g2v_sklearn import KMeansDiscretizer, SPIBEstimator, TokenMerger, TokenTrajectory, VAMPNetEstimator

FLAT_PICKLES = Path(__file__).parent / "data" / "flat_layout_pickles.pkl"


def _globals(data: bytes) -> set:
    """(module, name) of every class and function a pickle refers to."""
    found, strings, memo = set(), [], {}
    for op, arg, _ in pickletools.genops(io.BytesIO(data)):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "MEMOIZE" and strings:
            memo[len(memo)] = strings[-1]
        elif op.name in ("BINGET", "LONG_BINGET") and arg in memo:
            strings.append(memo[arg])
        elif op.name == "STACK_GLOBAL":
            found.add((strings[-2], strings[-1]))
        elif op.name == "GLOBAL":
            found.add(tuple(arg.split(" ", 1)))
    return found


def test_the_fixture_names_the_flat_modules():
    # Without this the test below could pass on a pickle that never needed the aliases.
    modules = {module for module, _ in _globals(FLAT_PICKLES.read_bytes())}
    assert {"g2v_sklearn._vampnet", "g2v_sklearn._merger", "g2v_sklearn._networks",
            "g2v_sklearn._tokens"} <= modules


def test_flat_layout_pickle_loads_and_gives_the_same_outputs():
    record = pickle.loads(FLAT_PICKLES.read_bytes())
    assert record["version"] == g2v_sklearn.__version__
    steps, probe, expected = record["steps"], record["probe"], record["outputs"]
    vampnet, spib, msm = steps["vampnet"], steps["spib"], steps["msm"]
    assert type(vampnet[0]) is TokenMerger and type(vampnet[-1]) is VAMPNetEstimator
    assert type(spib[-1]) is SPIBEstimator and type(msm[0]) is KMeansDiscretizer
    assert type(steps["tokens"]) is TokenTrajectory
    np.testing.assert_array_equal(np.asarray(steps["tokens"].features), expected["tokens"])
    for got, want in zip(vampnet.transform(probe), expected["vampnet"]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for got, want in zip(spib.transform(probe), expected["spib"]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert msm.score(vampnet.transform(probe)) == pytest.approx(expected["msm_score"], rel=1e-6)
    # A pickle made today names today's modules, not the stand-ins.
    fresh = {module for module, _ in _globals(pickle.dumps(vampnet))}
    assert not {m for m in fresh if m.startswith("g2v_sklearn.") and m.split(".")[1] in g2v_sklearn._moved.FLAT_LAYOUT}


def test_old_module_names_resolve_to_todays_objects():
    import g2v_sklearn._vampnet as old

    assert old.VAMPNetEstimator is VAMPNetEstimator
    with pytest.raises(AttributeError, match=r"no longer exists: the module moved to g2v_sklearn\.learners\._vampnet.*refit"):
        old.NoSuchThing
