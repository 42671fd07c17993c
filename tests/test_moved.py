"""Pickles made by earlier layouts load into today's classes (g2v_sklearn._moved).

The flat layout of 0.1.0.dev0, from a committed fixture; modules split or moved since, from
today's pickles with the old module names written in.
"""

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import g2v_sklearn
from g2v_sklearn import (
    GeomEmbedder,
    KMeansDiscretizer,
    MergeSpec,
    SPIBEstimator,
    TokenMerger,
    TokenTrajectory,
    VAMPNetEstimator,
    load_tokens,
    save_tokens,
)
from g2v_sklearn.datasets import load_alanine_dipeptide

# Embeddings compared bit for bit across runs: the same torch threads in every run.
pytestmark = pytest.mark.usefixtures("fixed_threads")

FLAT_PICKLES = Path(__file__).parent / "data" / "flat_layout_pickles.pkl"


def _globals(data: bytes) -> set:
    """(module, name) of every class and function a pickle refers to, as its unpickler asks for them."""
    found = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            found.add((module, name))
            return super().find_class(module, name)

    Recorder(io.BytesIO(data)).load()
    return found


def test_the_fixture_names_the_flat_modules():
    # Without this the test below could pass on a pickle that never needed the aliases.
    modules = {module for module, _ in _globals(FLAT_PICKLES.read_bytes())}
    assert {"g2v_sklearn._vampnet", "g2v_sklearn._merger", "g2v_sklearn._networks",
            "g2v_sklearn._tokens", "g2v_sklearn._embedder", "g2v_sklearn._topology",
            "g2v_sklearn._msm", "g2v_sklearn._spib"} <= modules
    assert ("g2v_sklearn._merger", "MergedTokens") in _globals(FLAT_PICKLES.read_bytes())


def test_flat_layout_pickle_loads_and_gives_the_same_outputs():
    record = pickle.loads(FLAT_PICKLES.read_bytes())
    assert record["version"] == "0.1.0.dev0"  # the flat layout's last version
    steps, probe, expected = record["steps"], record["probe"], record["outputs"]
    vampnet, spib, msm = steps["vampnet"], steps["spib"], steps["msm"]
    assert type(vampnet[0]) is TokenMerger and type(vampnet[-1]) is VAMPNetEstimator
    assert type(spib[-1]) is SPIBEstimator and type(msm[0]) is KMeansDiscretizer
    # parameters added since take the values that reproduce those fits
    assert vampnet[-1].get_params()["mixer"] == spib[-1].get_params()["mixer"] == "invariant"
    assert "VAMPNetEstimator(" in repr(vampnet)
    assert type(steps["tokens"]) is TokenTrajectory
    np.testing.assert_array_equal(np.asarray(steps["tokens"].features), expected["tokens"])
    # The outputs were stored on an AVX2 machine; float32 kernels of other instruction sets
    # (AVX-512, AMX) round differently, by up to ~1e-5 of these unit-spread coordinates (seen
    # 1.3e-5 on an AVX-512 EPYC). A weight lost or mis-mapped in loading changes them at ~1e-1.
    for got, want in zip(vampnet.transform(probe), expected["vampnet"]):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    for got, want in zip(spib.transform(probe), expected["spib"]):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    assert msm.score(vampnet.transform(probe)) == pytest.approx(expected["msm_score"], rel=1e-6)
    # a MergedTokens (the wrapper of 0.1.0.dev0) loads as the token trajectory with its spec
    merged = steps["merged"]
    assert type(merged) is TokenTrajectory and merged.merge_spec.window == 2
    np.testing.assert_array_equal(np.asarray(merged.features), expected["tokens"])
    assert merged[1:3].merge_spec == merged.merge_spec
    # a fitted embedder (backbone, topology layout) gives the tokens it gave then
    embedder = steps["embedder"]
    assert type(embedder) is GeomEmbedder
    frames = load_alanine_dipeptide(stride=2000).trajectories[0]
    np.testing.assert_allclose(embedder.transform([frames])[0].features, expected["embedder"],
                               rtol=1e-5, atol=1e-6)
    # A pickle made today names today's modules, not the stand-ins.
    fresh = {module for module, _ in _globals(pickle.dumps(vampnet))}
    assert not {m for m in fresh if m.startswith("g2v_sklearn.") and m.split(".")[1] in g2v_sklearn._moved.FLAT_LAYOUT}


def test_old_module_names_resolve_to_todays_objects():
    import g2v_sklearn._vampnet as old

    assert old.VAMPNetEstimator is VAMPNetEstimator
    with pytest.raises(AttributeError, match=r"no longer exists: the module moved to g2v_sklearn\.learners\._vampnet.*refit"):
        old.NoSuchThing
    import g2v_sklearn._merger as old_merger  # a name renamed as it moved

    from g2v_sklearn.nn._merger import FRAGMENT_CONVS

    assert old_merger.FragmentConv is FRAGMENT_CONVS


def test_a_store_backed_trajectory_pickled_by_the_flat_layout_reopens(tmp_path):
    # 0.1.0.dev0 pickled a store-backed trajectory as (_from_store, (path, id, frames, meta))
    # with five metadata fields; today's has a sixth, the merge spec.
    from g2v_sklearn._tokens import _from_store  # the name the old pickles call

    record = pickle.loads(FLAT_PICKLES.read_bytes())
    save_tokens(record["probe"][0], tmp_path / "store")
    opened = load_tokens(tmp_path / "store")
    meta = (opened.residue_names, opened.chain_ids, opened.residue_ids, opened.timestep, opened.provenance)
    again = _from_store(str(tmp_path / "store"), opened._store[2], slice(2, 9), meta)
    assert again.path == opened.path and again.merge_spec is None
    np.testing.assert_array_equal(again.features, opened.features[2:9])


def test_the_old_accessors_of_merged_tokens_warn_and_still_answer():
    record = pickle.loads(FLAT_PICKLES.read_bytes())
    merged = record["steps"]["merged"]
    with pytest.warns(FutureWarning, match="TokenTrajectory.spec is deprecated .*use merge_spec"):
        assert merged.spec == merged.merge_spec
    with pytest.warns(FutureWarning, match="TokenTrajectory.tokens is deprecated"):
        assert merged.tokens is merged


# Pickles made while the frozen featurisers sat in g2v_sklearn.nn, and while MergeSpec sat with
# the token trajectories: made here by renaming today's module in a pickle's bytes.


def _named_by(obj, today: str, then: str) -> bytes:
    """``obj`` pickled as a version that kept module ``today``'s code in module ``then``.

    Pickle protocols up to 3 name each class and function as text, "c<module>\\n<name>\\n",
    so a module's name can be changed in the bytes."""
    data = pickle.dumps(obj, protocol=3)
    assert f"c{today}\n".encode() in data
    return data.replace(f"c{today}\n".encode(), f"c{then}\n".encode())


def _backbones_objects():
    from g2v_sklearn.backbones._backbone import BackboneConfig
    from g2v_sklearn.backbones._padded_visnet import padded_forward
    from g2v_sklearn.backbones._pretrained import BACKBONES
    from g2v_sklearn.backbones._torchmd import ExpNormalRBF

    return {
        "_backbone": BackboneConfig(architecture="et", hidden_channels=16, max_num_neighbors=12),
        "_neighbors": g2v_sklearn.RadiusDistance(5.0, max_num_neighbors=8),
        "_padded_visnet": padded_forward,  # functions only: pickled by name as classes are
        "_pretrained": BACKBONES["visnet"],
        "_torchmd": ExpNormalRBF(cutoff=5.0, num_rbf=8),
    }


@pytest.mark.parametrize("name", ["_backbone", "_neighbors", "_padded_visnet", "_pretrained", "_torchmd"])
def test_pickles_naming_the_backbones_home_in_nn_load(name):
    obj = _backbones_objects()[name]
    data = _named_by(obj, f"g2v_sklearn.backbones.{name}", f"g2v_sklearn.nn.{name}")
    assert f"g2v_sklearn.nn.{name}" in {module for module, _ in _globals(data)}
    loaded = pickle.loads(data)
    assert type(loaded) is type(obj)
    if isinstance(obj, torch.nn.Module):
        assert loaded.state_dict().keys() == obj.state_dict().keys()
        for key, value in obj.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    elif callable(obj):
        assert loaded is obj
    else:
        assert loaded == obj


def test_the_backbones_old_module_names_resolve_to_todays_objects():
    import g2v_sklearn.nn._backbone as old_backbone
    import g2v_sklearn.nn._padded_visnet as old_padded
    from g2v_sklearn.backbones import _backbone, _padded_visnet

    assert old_backbone.BackboneConfig is _backbone.BackboneConfig
    assert old_padded.padded_forward is _padded_visnet.padded_forward
    with pytest.raises(AttributeError, match=r"moved to g2v_sklearn\.backbones\._backbone"):
        old_backbone.TokenMergerModule
    # the trainable networks did not move: their modules are the real ones, not stand-ins
    from g2v_sklearn.nn import _merger

    assert not isinstance(_merger, g2v_sklearn._moved._MovedModule)
    assert _merger.TokenMergerModule.__module__ == "g2v_sklearn.nn._merger"


@pytest.mark.parametrize("then", ["g2v_sklearn.tokens._trajectory", "g2v_sklearn.tokens._tokens"])
def test_a_merge_spec_pickled_in_an_earlier_home_loads(then):
    spec = MergeSpec(window=3, operator="rggc", cutoff=8.0, in_channels=8, hidden_channels=8,
                     n_residues=10, n_fragments=4)
    data = _named_by(spec, "g2v_sklearn.tokens._merge_spec", then)
    assert (then, "MergeSpec") in _globals(data)
    loaded = pickle.loads(data)
    assert type(loaded) is MergeSpec and loaded == spec


def test_an_embedder_pickled_while_the_backbones_sat_in_nn_gives_the_same_tokens():
    record = pickle.loads(FLAT_PICKLES.read_bytes())
    data = _named_by(record["steps"]["embedder"], "g2v_sklearn.backbones._neighbors",
                     "g2v_sklearn.nn._neighbors")
    assert ("g2v_sklearn.nn._neighbors", "RadiusDistance") in _globals(data)
    embedder = pickle.loads(data)
    assert type(embedder) is GeomEmbedder
    frames = load_alanine_dipeptide(stride=2000).trajectories[0]
    np.testing.assert_allclose(embedder.transform([frames])[0].features, record["outputs"]["embedder"],
                               rtol=1e-5, atol=1e-6)
    # pickled again, it names today's modules, not the stand-ins
    fresh = {module for module, _ in _globals(pickle.dumps(embedder))}
    assert "g2v_sklearn.backbones._neighbors" in fresh
    assert not {m for m in fresh if m.removeprefix("g2v_sklearn.") in g2v_sklearn._moved.SPLIT}
