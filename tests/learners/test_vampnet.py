"""VAMPNetEstimator: dispatch, training contract, score oracle, errors, interpretation."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
from deeptime.decomposition import VAMP
from sklearn.base import clone

from g2v_sklearn import SPIBEstimator, TokenMerger, TokenTrajectory, VAMPNetEstimator
from g2v_sklearn._validation import lagged_pairs
from g2v_sklearn.learners._vampnet import VampObjective
from g2v_sklearn.nn import _lobes
from g2v_sklearn.nn._lobes import attention, attention_backend

# Fits compared bit for bit across runs: the same torch threads in every run.
pytestmark = pytest.mark.usefixtures("fixed_threads")

FAST = dict(max_epochs=3, batch_size=128, hidden_layer_sizes=(16,), progress=False, random_state=0)


def test_input_dispatch(dihedral_features):
    x = dihedral_features[0][:600]
    est = VAMPNetEstimator(lagtime=5, **FAST).fit(x)
    assert est.n_features_in_ == 4
    single = est.transform(x)
    assert isinstance(single, np.ndarray) and single.shape == (600, 2)
    as_list = est.transform([x, x[:100]])
    assert isinstance(as_list, list) and [a.shape for a in as_list] == [(600, 2), (100, 2)]
    np.testing.assert_allclose(as_list[0], single)
    rows = est.transform(x[:50].tolist())  # a list of scalar rows is one trajectory
    assert isinstance(rows, np.ndarray) and rows.shape == (50, 2)


def test_fits_are_repeatable_and_refits_forget(dihedral_features):
    x = [t[:1500] for t in dihedral_features[:2]]
    a = VAMPNetEstimator(lagtime=5, **FAST).fit(x)
    b = VAMPNetEstimator(lagtime=5, **FAST).fit(x)
    np.testing.assert_array_equal(a.transform(x)[0], b.transform(x)[0])
    assert a.history_ == b.history_
    b.set_params(n_components=1).fit(x)
    assert b.transform(x)[0].shape[1] == 1


def test_score_is_deeptime_cross_validated_vamp2(dihedral_features):
    train, test = dihedral_features[:3], dihedral_features[3:]
    est = VAMPNetEstimator(lagtime=5, n_components=2, score_k=2, epsilon=1e-10, **FAST).fit(train)
    with torch.no_grad():
        out = [est.module_(torch.as_tensor(x, dtype=torch.float32)).double().numpy() for x in (*train, *test)]
    model = VAMP(lagtime=5, epsilon=1e-10).fit(out[:3]).fetch_model()
    expected = model.score(r=2, test_model=VAMP(lagtime=5, epsilon=1e-10).fit(out[3:]).fetch_model(), dim=2)
    assert est.score(test) == pytest.approx(expected, rel=1e-6)
    assert 1.0 <= est.score(train) <= 3.0
    np.testing.assert_allclose(est.singular_values_, model.singular_values[:2], rtol=1e-5)


def test_timescales_its_and_ck_test_match_deeptime_on_the_learned_coordinates(dihedral_features):
    """Oracle: deeptime's VAMP on the learned coordinates, an invertible affine map of the
    network outputs, so its timescales and (up to signs) CK test are the same."""
    from deeptime.util.validation import implied_timescales

    est = VAMPNetEstimator(lagtime=5, **FAST).fit(dihedral_features)
    coords = est.transform(dihedral_features)

    def oracle(lags):
        return [VAMP(lagtime=lag, dim=2, epsilon=est.epsilon).fit(coords).fetch_model()
                for lag in lags]

    its = est.implied_timescales(dihedral_features, [2, 5, 10])
    want = implied_timescales(oracle([2, 5, 10]), n_its=2)
    np.testing.assert_array_equal(its.lagtimes, [2, 5, 10])
    for process in (0, 1):
        np.testing.assert_allclose(its.timescales_for_process(process),
                                   want.timescales_for_process(process), rtol=1e-6)
    # the fit's own decomposition at its lag time agrees with deeptime's at lag 5
    np.testing.assert_allclose(est.timescales_, [want.timescales_for_process(p)[1] for p in (0, 1)],
                               rtol=1e-3)
    assert est.timescales_[0] > est.timescales_[1]
    ck = est.ck_test(dihedral_features, [1, 2, 3])
    models = oracle([5, 10, 15])
    expected = models[0].ck_test(models)
    np.testing.assert_array_equal(ck.lagtimes, [0, 5, 10, 15])
    for got, ref in ((ck.estimates, expected.estimates), (ck.predictions, expected.predictions)):
        assert got.shape == ref.shape == (4, 2, 2)
        np.testing.assert_allclose(np.abs(got[1:]), np.abs(ref[1:]), atol=1e-6)  # signs are free
    assert not np.allclose(ck.estimates[2:], ck.predictions[2:], atol=1e-3)  # not a trivial CK
    with pytest.raises(ValueError, match="no timestep"):
        est.timescales(unit="time")


def test_kinetic_map_scaling(dihedral_features):
    x = dihedral_features[0][:800]
    plain = VAMPNetEstimator(lagtime=5, **FAST).fit(x)
    scaled = clone(plain).set_params(scaling="kinetic_map").fit(x)
    np.testing.assert_allclose(scaled.transform(x), plain.transform(x) * plain.singular_values_, rtol=1e-5)


def test_sample_weight(dihedral_features):
    x = [t[:1500] for t in dihedral_features[:2]]
    plain = VAMPNetEstimator(lagtime=5, **FAST).fit(x)
    ones = VAMPNetEstimator(lagtime=5, **FAST).fit(x, sample_weight=[np.ones(len(t)) for t in x])
    np.testing.assert_allclose(ones.transform(x)[0], plain.transform(x)[0], rtol=1e-5, atol=1e-6)
    biased = VAMPNetEstimator(lagtime=5, **FAST).fit(x, sample_weight=[np.linspace(0.1, 2, len(t)) for t in x])
    assert not np.allclose(biased.transform(x)[0], plain.transform(x)[0])
    with pytest.raises(ValueError, match="sample_weight for trajectory 1 has shape \\(3,\\), expected \\(1500,\\)"):
        VAMPNetEstimator(lagtime=5, **FAST).fit(x, sample_weight=[np.ones(1500), np.ones(3)])


def test_pickle_and_clone(dihedral_features):
    est = VAMPNetEstimator(lagtime=5, **FAST).fit(dihedral_features[0][:500])
    restored = pickle.loads(pickle.dumps(est))
    assert all(p.device.type == "cpu" for p in restored.module_.parameters())
    np.testing.assert_array_equal(restored.transform(dihedral_features[1][:50]),
                                  est.transform(dihedral_features[1][:50]))
    assert clone(est).get_params() == est.get_params()


# --------------------------------------------------------------------------- errors
def test_lagtime_errors(dihedral_features):
    short = [dihedral_features[0][:4], dihedral_features[1][:6]]
    with pytest.raises(ValueError, match=r"lagtime=8 frames is not shorter than any trajectory given to VAMPNetEstimator \(lengths: 4, 6 frames\)"):
        VAMPNetEstimator(lagtime=8, **FAST).fit(short)
    with pytest.warns(UserWarning, match=r"VAMPNetEstimator skips 1 trajectory not longer than lagtime=5 frames.*: 0 \(4 frames\)"):
        VAMPNetEstimator(lagtime=5, n_components=1, validation_fraction=0, **{**FAST, "batch_size": 2}).fit(
            [short[0], dihedral_features[1][:40]])
    with pytest.raises(ValueError, match="1 sample"):
        VAMPNetEstimator(**FAST).fit(dihedral_features[0][:1])


def test_input_errors(dihedral_features, rng):
    x = dihedral_features[0][:200]
    bad = x.copy()
    bad[5, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        VAMPNetEstimator(**FAST).fit(bad)
    with pytest.raises(ValueError, match=r"n_components=300 is larger than allowed: X gives only 199"):
        VAMPNetEstimator(n_components=300, **FAST).fit(x)
    fitted = VAMPNetEstimator(**FAST).fit(x)
    with pytest.raises(ValueError, match="X has 3 features, but VAMPNetEstimator is expecting 4 features"):
        fitted.transform(x[:, :3])
    tok = TokenTrajectory(rng.normal(size=(20, 5, 4, 8)).astype(np.float32),
                          rng.normal(size=(20, 5, 3)).astype(np.float32),
                          residue_names=["ALA"] * 5, chain_ids=["A"] * 5, residue_ids=range(5))
    with pytest.raises(TypeError, match="mixes token trajectories with other inputs"):
        VAMPNetEstimator(**FAST).fit([tok, x])
    nan_tok = TokenTrajectory(np.full((20, 5, 4, 8), np.inf, np.float32), tok.positions,
                              residue_names=["ALA"] * 5, chain_ids=["A"] * 5, residue_ids=range(5))
    with pytest.raises(ValueError, match="Token trajectory 1 has NaN or infinite features"):
        VAMPNetEstimator(**FAST).fit([tok, nan_tok])
    other = TokenTrajectory(rng.normal(size=(20, 6, 4, 8)).astype(np.float32),
                            rng.normal(size=(20, 6, 3)).astype(np.float32),
                            residue_names=["ALA"] * 6, chain_ids=["A"] * 6, residue_ids=range(6))
    with pytest.raises(ValueError, match="Token trajectory 1 has 6 residues"):
        VAMPNetEstimator(**FAST).fit([tok, other])


def test_more_components_than_the_network_can_give_are_refused(dihedral_features, rng):
    """A linear map of 8 units spans 8 functions: n_components=10 had returned 8 components,
    silently (and, with no hidden layers, as many as X has features)."""
    x = dihedral_features[0][:600]  # (cos, sin) of (phi, psi): 4 features
    with pytest.raises(ValueError, match=r"n_components=10 is more than VAMPNetEstimator's network can give: "
                                         r"its last hidden layer has 8 units \(hidden_layer_sizes=\(8,\)\).*"
                                         r"at most 8 independent functions. Use n_components <= 8"):
        VAMPNetEstimator(lagtime=2, n_components=10, hidden_layer_sizes=(8,), progress=False).fit(x)
    with pytest.raises(ValueError, match=r"n_components=5 .*: with hidden_layer_sizes=\(\) it is linear in "
                                         r"X's 4 features.*Use n_components <= 4"):
        VAMPNetEstimator(lagtime=2, n_components=5, hidden_layer_sizes=(), progress=False).partial_fit(x)
    tok = TokenTrajectory(rng.normal(size=(60, 5, 4, 8)).astype(np.float32),
                          rng.normal(size=(60, 5, 3)).astype(np.float32),
                          residue_names=["ALA"] * 5, chain_ids=["A"] * 5, residue_ids=range(5))
    with pytest.raises(ValueError, match=r"n_components=9 .*: its head ends in d_model=8 units"):
        VAMPNetEstimator(n_components=9, d_model=8, n_heads=2, progress=False).fit([tok])
    # nonlinear hidden layers may give more components than X has features
    est = VAMPNetEstimator(lagtime=2, n_components=6, hidden_layer_sizes=(16,), max_epochs=1, progress=False,
                           random_state=0).fit(x)
    assert est.transform(x).shape == (600, 6)


@pytest.mark.parametrize("Learner", [VAMPNetEstimator, SPIBEstimator])
def test_list_input_errors_name_the_trajectory(Learner, dihedral_features, ala2_trajs):
    """Issue 11's learner probes: each error says what is wrong, where, in the user's terms."""
    x = dihedral_features[0][:50]
    with pytest.raises(ValueError, match=f"X is an empty list; {Learner.__name__} needs at least one trajectory"):
        Learner(**FAST).fit([])
    with pytest.raises(ValueError, match=r"Trajectory 0 of X is an array of shape \(50,\); .* each a 2-D "
                                         r"array of shape \(n_frames, n_features\) \(for one feature, "
                                         r"x.reshape\(-1, 1\)\)"):
        Learner(**FAST).fit([x[:, 0], x[:, 1]])  # a list of 1-D arrays is not one trajectory
    with pytest.raises(ValueError, match=r"Trajectory 0 of X is an array of shape \(50,\)"):
        Learner(**FAST).fit([x[:, 0], x])
    with pytest.raises(ValueError, match=r"Trajectory 1 of X is an array of shape \(50,\)"):
        Learner(**FAST).fit([x, x[:, 0]])
    with pytest.raises(TypeError, match=r"X\[0\] is an MD trajectory \(mdtraj.Trajectory\): .* not from MD frames. Embed the "
                                        r"frames first.*GeomEmbedder"):
        Learner(**FAST).fit([ala2_trajs[0][:50]])
    with pytest.raises(TypeError, match=r"X\[1\] is a file path"):
        Learner(**FAST).fit([x, "traj.xtc"])
    with pytest.raises(TypeError, match=r"^X is an MD trajectory"):
        Learner(**FAST).fit(ala2_trajs[0][:50])


@pytest.mark.parametrize("Learner", [VAMPNetEstimator, SPIBEstimator])
def test_text_features_are_refused_for_what_they_are(Learner, dihedral_features):
    """Had been NumPy's "could not convert string to float: np.str_('a')"."""
    x = dihedral_features[0][:50]
    labelled = np.column_stack([x, ["a"] * 50])
    expects = f"{Learner.__name__} expects numeric features, a float array of shape \\(n_frames, n_features\\)"
    with pytest.raises(ValueError, match=r"^X holds text, not numbers \('a' is not a number\): " + expects):
        Learner(**FAST).fit(labelled)
    with pytest.raises(ValueError, match=r"^Trajectory 1 of X holds text, not numbers .*one-hot"):
        Learner(**FAST).fit([x, labelled])


@pytest.mark.parametrize("Learner", [VAMPNetEstimator, SPIBEstimator])
def test_constant_features_are_refused_for_what_they_are(Learner):
    constant = np.tile([0.3, -1.0, 2.0], (80, 1))
    for X in (constant, [constant, constant.copy()]):
        with pytest.raises(ValueError, match="X is constant: every feature has one value .* no dynamics"):
            Learner(**FAST).fit(X)


def test_bad_sample_weight_names_trajectory_and_frame(dihedral_features):
    x = [dihedral_features[0][:60], dihedral_features[1][:60]]
    w = [np.ones(60), np.ones(60)]
    w[1][7] = -0.5
    with pytest.raises(ValueError, match=r"sample_weight for trajectory 1 is -0.5 at frame 7 \(frames like it: 1\)"):
        VAMPNetEstimator(**FAST).fit(x, sample_weight=w)
    w[1][7], w[0][3], w[0][9] = 1.0, np.nan, np.nan
    with pytest.raises(ValueError, match=r"trajectory 0 is nan at frame 3 \(frames like it: 2\)"):
        VAMPNetEstimator(**FAST).fit(x, sample_weight=w)


def test_weights_that_count_for_no_pair(dihedral_features):
    x = [dihedral_features[0][:60], dihedral_features[1][:60]]
    w = [np.zeros(60), np.zeros(60)]
    w[0][-5:] = w[1][-5:] = 1.0  # only the last lagtime frames: the later ends of pairs
    with pytest.raises(ValueError, match=r"sample_weight gives a positive weight to 0 time-lagged "
                                         r"pairs.*takes the weight of frame t, so weights on the "
                                         r"last lagtime=5 frames"):
        VAMPNetEstimator(lagtime=5, **FAST).fit(x, sample_weight=w)
    w[1][-6] = 1.0  # one pair counts: still too few
    with pytest.raises(ValueError, match="positive weight to 1 time-lagged pair, "):
        SPIBEstimator(lagtime=5, **FAST).fit(x, sample_weight=w)


def test_too_few_pairs_for_the_components_warns(dihedral_features):
    x = dihedral_features[0][:4]  # 3 pairs at lagtime 1
    with pytest.warns(UserWarning, match=r"only 3 time-lagged pairs at lagtime=1 for "
                                         r"n_components=2.*singular values near 1 .*mean nothing"):
        est = VAMPNetEstimator(lagtime=1, n_components=2, validation_fraction=0,
                               **{**FAST, "batch_size": 2}).fit(x)
    assert np.allclose(est.singular_values_, 1.0, atol=1e-3)  # what the warning is about
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # enough pairs: no warning
        VAMPNetEstimator(lagtime=5, n_components=2, **FAST).fit(dihedral_features[0][:200])


def test_nan_loss_stops_restores_and_advises(dihedral_features, nan_on_fourth_loss):
    record = nan_on_fourth_loss(VampObjective, "loss")
    est = VAMPNetEstimator(lagtime=5, callbacks=[record], **FAST)
    with pytest.raises(FloatingPointError, match="loss became nan .*last good weights were restored.*smaller lr"):
        est.fit(dihedral_features[0][:2000])
    restored = [p.detach() for p in record.net.parameters()]
    assert len(record.steps) == 3 and len(record.steps[-1]) == len(restored)
    for a, b in zip(restored, record.steps[-1]):  # the weights after the last good step
        torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------- attention
def test_attention_dispatch(monkeypatch):
    q, k, v = (torch.randn(2, 3, 5, 4) for _ in range(3))
    assert attention_backend(q) == "math"  # few tokens on CPU: plain matrix products
    out, _ = attention(q, k, v)
    explicit, weights = attention(q, k, v, need_weights=True)
    torch.testing.assert_close(out, explicit)
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v))
    long = torch.randn(2, 3, 40, 4)
    assert attention_backend(long) == "sdpa"
    torch.testing.assert_close(attention(long, long, long)[0], attention(long, long, long, need_weights=True)[0])
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 5))

    class FakeCudaHalf:
        is_cuda = True
        dtype = torch.bfloat16
        shape = (2, 4, 64, 16)  # (batch, heads, tokens, channels a head)

    class Wide(FakeCudaHalf):
        shape = (2, 4, 64, 512)  # wider than flash-attn's heads

    monkeypatch.setattr(_lobes, "_FLASH", False)  # flash-attn not installed
    assert attention_backend(FakeCudaHalf()) == "sdpa"
    monkeypatch.setattr(_lobes, "_FLASH", lambda q, k, v: q)  # flash-attn installed
    assert attention_backend(FakeCudaHalf()) == "flash_attn"
    assert attention_backend(Wide()) == "sdpa"
    assert attention_backend(FakeCudaHalf(), Wide()) == "sdpa"  # values wider than the queries
    assert attention_backend(FakeCudaHalf(), FakeCudaHalf()) == "flash_attn"
    assert attention_backend(long) == "sdpa"  # CPU float32 never goes to flash-attn


def planted_tokens(rng, n_frames=3000, n_res=50, h=8, signal=range(40, 50)):
    """Noise tokens; residues 40-49 carry a slow two-state signal in their scalars."""
    state = np.zeros(n_frames, dtype=int)
    for t in range(1, n_frames):
        state[t] = 1 - state[t - 1] if rng.random() < 0.01 else state[t - 1]
    features = rng.normal(size=(n_frames, n_res, 4, h)).astype(np.float32)
    features[:, list(signal), 0, :] += 1.5 * (2 * state[:, None, None] - 1)
    walk = np.cumsum(rng.normal(size=(n_res, 3)), axis=0) * 2.2
    positions = np.broadcast_to(walk, (n_frames, n_res, 3)).astype(np.float32)
    return TokenTrajectory(features, positions.copy(), residue_names=["ALA"] * n_res,
                           chain_ids=["A"] * n_res, residue_ids=range(n_res))


def test_planted_signal_is_found_by_attention(rng):
    tokens = planted_tokens(rng)
    merged = TokenMerger(window=1, operator="none").fit_transform([tokens])
    est = VAMPNetEstimator(lagtime=1, n_components=1, d_model=16, n_heads=2, n_layers=1,
                           batch_size=256, lr=2e-3, max_epochs=6, validation_fraction=0,
                           progress=False, random_state=0).fit(merged)
    importance = est.attention_importance(merged)
    assert importance.shape == (50,) and np.all(importance >= 0)
    top = set(np.argsort(importance)[-10:])
    assert len(top & set(range(40, 50))) >= 7, sorted(top)


def test_attention_maps_back_through_windows(rng):
    tokens = planted_tokens(rng, n_frames=200, n_res=10, signal=range(8, 10))
    merged = TokenMerger(window=4).fit_transform([tokens])
    est = VAMPNetEstimator(lagtime=1, n_components=1, d_model=8, n_heads=2, n_layers=1,
                           max_epochs=1, validation_fraction=0, progress=False,
                           random_state=0).fit(merged)
    importance = est.attention_importance(merged)
    assert importance.shape == (10,)
    assert importance[0] == importance[3] != importance[4] == importance[7]
    assert importance[8] == importance[9]
    # the class token's attention: to the 3 fragments plus itself sums to 1
    assert 0 < importance[[0, 4, 8]].sum() < 1
    with pytest.raises(ValueError, match="needs token trajectories"):
        VAMPNetEstimator(**FAST).fit(rng.normal(size=(50, 3))).attention_importance(rng.normal(size=(50, 3)))


def test_decomposition_does_not_depend_on_the_output_scale(dihedral_features):
    """epsilon is absolute, so outputs that vary by 1e-4 must not be cut off as noise."""
    est = VAMPNetEstimator(lagtime=5, n_components=2, max_epochs=2, validation_fraction=0,
                           progress=False, random_state=0).fit(dihedral_features)
    before, coords = est.singular_values_.copy(), est.transform(dihedral_features)
    last = est.module_.net[-1]
    with torch.no_grad():  # the same network with outputs 1e-4 times as large (variance 1e-8 < epsilon)
        last.weight.mul_(1e-4)
        last.bias.mul_(1e-4)
    series = est._as_time_series(dihedral_features, reset=False)
    est._fit_decomposition(series, lagged_pairs(series.lengths, 5, "test"), None)
    np.testing.assert_allclose(est.singular_values_, before, rtol=1e-6)
    for a, b in zip(est.transform(dihedral_features), coords):
        np.testing.assert_allclose(np.abs(a), np.abs(b), rtol=1e-4, atol=1e-6)


def test_collapsed_network_is_reported(dihedral_features):
    est = VAMPNetEstimator(lagtime=5, n_components=2, max_epochs=1, validation_fraction=0,
                           progress=False, random_state=0).fit(dihedral_features)
    last = est.module_.net[-1]
    with torch.no_grad():  # constant outputs: what a collapsed training leaves
        last.weight.zero_()
    series = est._as_time_series(dihedral_features, reset=False)
    with pytest.raises(ValueError, match="outputs are constant.*Training collapsed: try a smaller lr"):
        est._fit_decomposition(series, lagged_pairs(series.lengths, 5, "test"), None)
