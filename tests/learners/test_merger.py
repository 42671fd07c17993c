"""The TokenMerger step (g2v_sklearn.learners._merger) and the merge spec it attaches to tokens.

The torch module it sets up is tested in tests/nn/test_merger_module.py."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.utils._param_validation import InvalidParameterError

from g2v_sklearn import MergedTokens, TokenMerger, TokenTrajectory, load_tokens, save_tokens


def synthetic_tokens(rng, n_frames=6, n_res=10, h=8):
    features = rng.normal(size=(n_frames, n_res, 4, h)).astype(np.float32)
    positions = (np.cumsum(rng.normal(size=(n_frames, n_res, 3)), axis=1) * 3.8 / np.sqrt(3)).astype(np.float32)
    return TokenTrajectory(features, positions, residue_names=["ALA"] * n_res,
                           chain_ids=["A"] * n_res, residue_ids=np.arange(n_res))


def test_step_attaches_spec_without_copying(rng):
    tok = synthetic_tokens(rng)
    merger = TokenMerger(window=4)
    merged = merger.fit_transform([tok, tok[2:]])
    assert merger.n_fragments_ == 3 == merged[0].merge_spec.n_fragments
    assert all(type(m) is TokenTrajectory and m.merge_spec is merger.spec_ for m in merged)
    assert merged[0].features is tok.features  # no copy of the token arrays
    assert np.shares_memory(merged[1].features, tok.features)
    assert tok.merge_spec is None  # the input is not changed
    assert merged[0][1:3].merge_spec is merger.spec_ and len(merged[0][1:3]) == 2
    assert merged[0][[0, 2]].merge_spec is merger.spec_
    assert "merged by window=4 (graphconv)" in repr(merged[0])
    # a second merger replaces the specification; it does not stack
    again = TokenMerger(window=2).fit_transform(merged)
    assert again[0].merge_spec.window == 2 and again[0].features is tok.features
    # residue metadata passes through, e.g. for plotting importance along the sequence
    assert list(merged[0].residue_ids) == list(tok.residue_ids)
    assert list(merged[0].chain_ids) == list(tok.chain_ids)
    restored = pickle.loads(pickle.dumps(merger))
    assert restored.spec_ == merger.spec_
    assert clone(merger).get_params() == merger.get_params()


def test_merge_spec_travels_with_pickles_but_not_into_stores(rng, tmp_path):
    tok = synthetic_tokens(rng)
    merged = TokenMerger(window=4).fit_transform([tok])[0]
    assert pickle.loads(pickle.dumps(merged)).merge_spec == merged.merge_spec
    save_tokens(merged, tmp_path / "store")  # a fitted step's attachment is not data
    loaded = load_tokens(tmp_path / "store")
    assert loaded.merge_spec is None
    assert "merge" not in (tmp_path / "store" / "meta.json").read_text()
    np.testing.assert_array_equal(loaded.features, tok.features)
    # a store-backed trajectory keeps its attachment through a pickle by path
    attached = loaded.with_merge_spec(merged.merge_spec)
    assert attached.path == loaded.path
    restored = pickle.loads(pickle.dumps(attached[1:4]))
    assert restored.path == loaded.path and restored.merge_spec == merged.merge_spec
    assert restored.with_merge_spec(None).merge_spec is None


def test_merge_spec_errors(rng):
    tok = synthetic_tokens(rng)
    spec = TokenMerger(window=4).fit([tok]).spec_
    with pytest.raises(TypeError, match="merge_spec must be a MergeSpec .* got dict"):
        tok.with_merge_spec({"window": 4})
    with pytest.raises(ValueError, match="made for 10 residues with 8 channels, but these tokens have 6"):
        TokenTrajectory(tok.features[:, :6], tok.positions[:, :6], residue_names=["ALA"] * 6,
                        chain_ids=["A"] * 6, residue_ids=range(6), merge_spec=spec)


def test_merged_tokens_is_a_deprecated_alias(rng):
    tok = synthetic_tokens(rng)
    spec = TokenMerger(window=4).fit([tok]).spec_
    with pytest.warns(FutureWarning, match=r"MergedTokens is deprecated .*tokens\.with_merge_spec\(spec\)"):
        old = MergedTokens(tok, spec)
    assert type(old) is TokenTrajectory and old.merge_spec is spec and old.features is tok.features
    assert isinstance(old, MergedTokens) and not isinstance(tok, MergedTokens)
    with pytest.warns(FutureWarning), pytest.raises(TypeError, match="must be a TokenTrajectory"):
        MergedTokens(tok.features, spec)


def test_step_errors(rng):
    tok = synthetic_tokens(rng)
    with pytest.raises(ValueError, match="window=11 is larger than the number of residues \\(10\\)"):
        TokenMerger(window=11).fit([tok])
    with pytest.raises(InvalidParameterError, match="'window' parameter of TokenMerger must be an int in the range \\[1, inf\\). Got 0 instead."):
        TokenMerger(window=0).fit([tok])
    other = synthetic_tokens(rng, n_res=12)
    with pytest.raises(ValueError, match="Token trajectory 1 has 12 residues .* token trajectory 0 has 10"):
        TokenMerger(window=2).fit([tok, other])
    fitted = TokenMerger(window=2).fit([tok])
    with pytest.raises(ValueError, match="TokenMerger was fitted on 10 residues"):
        fitted.transform([other])
    with pytest.raises(TypeError, match="Wrap it in a list"):
        fitted.transform(tok)
    with pytest.raises(ValueError, match="empty list"):
        fitted.transform([])


