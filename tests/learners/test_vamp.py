"""VAMP math against deeptime as the oracle, plus properties deeptime does not cover.

Synthetic data on purpose: the point is a numerical comparison with an
independent implementation on the same pairs, not a physical claim.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from deeptime.covariance import Covariance, CovarianceModel
from deeptime.decomposition import VAMP
from deeptime.decomposition import deep as dt_deep

from g2v_sklearn.learners._vamp import (
    VampDecomposition,
    covariances,
    fit_vamp,
    implied_timescales,
    koopman_eigenvalues,
    koopman_matrix,
    sym_inverse_sqrt,
    vamp_cv_score,
    vamp_loss,
    vamp_score,
)

MODES = ("trunc", "regularize")
METHODS = ("VAMP1", "VAMP2", "VAMPE")


# --------------------------------------------------------------------------- data


def _ar_pairs(seed: int = 0, n: int = 3000, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (x_t, x_{t+1}) of a stable, non-reversible linear AR(1) process."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(k, k))
    a *= 0.9 / np.abs(np.linalg.eigvals(a)).max()
    x = np.zeros((n + 1, k))
    noise = rng.normal(size=(n, k))
    for t in range(n):
        x[t + 1] = x[t] @ a.T + noise[t]
    return x[:-1], x[1:]


def _hmm_trajectory(seed: int = 1, n: int = 6000, dim: int = 5) -> np.ndarray:
    """A 3-state hidden Markov chain (cyclic, non-reversible) with Gaussian emissions in 5-D."""
    rng = np.random.default_rng(seed)
    transition = np.array([[0.97, 0.02, 0.01], [0.01, 0.97, 0.02], [0.02, 0.01, 0.97]])
    means = rng.normal(scale=2.0, size=(3, dim))
    states = np.empty(n, dtype=int)
    states[0] = 0
    u = rng.random(n)
    cumulative = np.cumsum(transition, axis=1)
    for t in range(1, n):
        states[t] = min(int(np.searchsorted(cumulative[states[t - 1]], u[t])), 2)
    return means[states] + 0.7 * rng.normal(size=(n, dim))


def _pairs(traj: np.ndarray, lag: int = 1) -> tuple[np.ndarray, np.ndarray]:
    return traj[:-lag], traj[lag:]


def _symmetrized(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Time-reversal symmetrised pairs: C00 = Ctt and C0t symmetric."""
    return np.vstack([x, y]), np.vstack([y, x])


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


def _deeptime_model(x, y):
    return VAMP(lagtime=1, epsilon=1e-6).fit((x, y)).fetch_model()


def _deeptime_weighted_model(x, y, weights):
    """deeptime VAMP from weighted covariances (its estimator refuses weights with C_tt).

    C00, C0t and the means come from deeptime's weighted Covariance estimator on (x, y);
    Ctt from the same estimator on (y, y), whose C0t is the weighted covariance of y.
    """

    def estimate(a, b):
        cov = Covariance(
            lagtime=1, compute_c00=True, compute_c0t=True, remove_data_mean=True, bessels_correction=False
        )
        # copies: deeptime marks an input passed twice as read-only
        return cov.partial_fit((a.copy(), b.copy()), weights=weights).fetch_model()

    xy, yy = estimate(x, y), estimate(y, y)
    model = CovarianceModel(
        cov_00=xy.cov_00, cov_0t=xy.cov_0t, cov_tt=yy.cov_0t, mean_0=xy.mean_0, mean_t=yy.mean_0,
        bessels_correction=False, lagtime=1, data_mean_removed=True,
    )
    return VAMP(epsilon=1e-6).fit_from_covariances(model).fetch_model()


def _sign_align(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """Per-column signs d such that ours * d best matches theirs."""
    signs = np.sign(np.sum(ours * theirs, axis=0))
    signs[signs == 0] = 1.0
    return signs


# --------------------------------------------------------------------------- torch half


@pytest.mark.parametrize("remove_mean", [True, False])
def test_covariances_match_deeptime(remove_mean):
    x, y = _ar_pairs()
    ours = covariances(_t(x), _t(y), remove_mean=remove_mean)
    theirs = dt_deep.covariances(_t(x), _t(y), remove_mean=remove_mean)
    for a, b in zip(ours, theirs):
        assert a.dtype == torch.float64
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["trunc", "regularize", "clamp"])
def test_sym_inverse_sqrt_matches_deeptime(mode):
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    for spectrum in ([3.0, 1.0, 0.5, 0.1, 0.02], [2.0, 1.0, 0.3, 1e-9, 0.0]):  # full rank, rank 3
        mat = _t(q @ np.diag(spectrum) @ q.T)
        ours = sym_inverse_sqrt(mat, epsilon=1e-6, mode=mode)
        theirs = dt_deep.sym_inverse(mat, epsilon=1e-6, return_sqrt=True, mode=mode)
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-9, atol=1e-9)


def test_sym_inverse_sqrt_is_inverse_sqrt_for_spd():
    rng = np.random.default_rng(4)
    b = rng.normal(size=(6, 4))
    mat = _t(b.T @ b + 0.1 * np.eye(4))
    isqrt = sym_inverse_sqrt(mat).numpy()
    np.testing.assert_allclose(isqrt @ mat.numpy() @ isqrt, np.eye(4), atol=1e-10)


@pytest.mark.parametrize("mode", MODES)
def test_koopman_matrix_matches_deeptime(mode):
    x, y = _ar_pairs()
    ours = koopman_matrix(_t(x), _t(y), mode=mode)
    theirs = dt_deep.koopman_matrix(_t(x), _t(y), mode=mode)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", ["VAMP1", "VAMP2"])
def test_vamp_r_scores_match_deeptime(method, mode):
    x, y = _ar_pairs()
    ours = vamp_score(_t(x), _t(y), method=method, mode=mode)
    theirs = dt_deep.vamp_score(_t(x), _t(y), method=method, mode=mode)
    assert ours.ndim == 0 and ours.dtype == torch.float64
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", METHODS)
def test_scores_match_deeptime_on_symmetrized_data(method, mode):
    # With a symmetric half-weighted Koopman matrix deeptime's torch VAMPE is
    # also the paper's formula, so all three scores must agree.
    x, y = _symmetrized(*_pairs(_hmm_trajectory(n=3000)))
    ours = vamp_score(_t(x), _t(y), method=method, mode=mode)
    theirs = dt_deep.vamp_score(_t(x), _t(y), method=method, mode=mode)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_scores_match_deeptime_numpy_vamp(method):
    # Independent oracle: deeptime's NumPy CovarianceKoopmanModel.score on the same pairs.
    # For VAMPE this is the paper's formula on non-reversible data (where deeptime's torch
    # VAMPE swaps the singular vector sides).
    x, y = _ar_pairs()
    r = {"VAMP1": 1, "VAMP2": 2, "VAMPE": "E"}[method]
    expected = _deeptime_model(x, y).score(r=r, epsilon=1e-6)
    ours = vamp_score(_t(x), _t(y), method=method)
    assert ours.item() == pytest.approx(expected, rel=1e-9)


def test_vampe_equals_vamp2_on_training_data():
    x, y = _pairs(_hmm_trajectory(n=3000))
    vampe = vamp_score(_t(x), _t(y), method="VAMPE").item()
    vamp2 = vamp_score(_t(x), _t(y), method="VAMP2").item()
    assert vampe == pytest.approx(vamp2, rel=1e-10)


def test_scores_are_at_least_one_and_ordered():
    x, y = _ar_pairs()
    s = {m: vamp_score(_t(x), _t(y), method=m).item() for m in METHODS}
    singular = torch.linalg.svdvals(koopman_matrix(_t(x), _t(y))).numpy()
    assert s["VAMP1"] == pytest.approx(1 + singular.sum(), rel=1e-12)
    assert s["VAMP2"] == pytest.approx(1 + (singular**2).sum(), rel=1e-12)
    # singular values in (0, 1): VAMP-1 > VAMP-2 > 1, and VAMP-E of the data's own model is VAMP-2
    assert np.all((singular > 0) & (singular < 1))
    assert s["VAMP1"] > s["VAMP2"] > 1
    assert s["VAMPE"] == pytest.approx(s["VAMP2"], rel=1e-8)


def test_rank_deficient_outputs_match_deeptime():
    x, y = _ar_pairs(n=1000, k=3)
    # a duplicated and a constant column: C00 and Ctt have rank 3 out of 5
    x = np.hstack([x, x[:, :1], np.ones((len(x), 1))])
    y = np.hstack([y, y[:, :1], np.ones((len(y), 1))])
    for method in METHODS:
        ours = vamp_score(_t(x), _t(y), method=method, mode="trunc").item()
        reference = vamp_score(_t(x[:, :3]), _t(y[:, :3]), method=method, mode="trunc").item()
        assert ours == pytest.approx(reference, rel=1e-8)
        if method != "VAMPE":
            theirs = dt_deep.vamp_score(_t(x), _t(y), method=method, mode="trunc").item()
            assert ours == pytest.approx(theirs, rel=1e-8)


def test_float32_inputs_are_computed_in_float64():
    x, y = _ar_pairs(n=1000)
    x32, y32 = _t(x).float(), _t(y).float()
    score = vamp_score(x32, y32)
    assert score.dtype == torch.float64
    expected = vamp_score(x32.double(), y32.double())
    assert score.item() == expected.item()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", METHODS)
def test_loss_gradients_are_finite(method, mode):
    x, y = _pairs(_hmm_trajectory(n=800))
    lobe = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    rng = np.random.default_rng(8)
    with torch.no_grad():  # deterministic init without touching torch's global seed
        for p in lobe.parameters():
            p.copy_(torch.from_numpy(rng.normal(scale=0.5, size=tuple(p.shape))))
    out_x = lobe(_t(x).float())
    out_y = lobe(_t(y).float())
    loss = vamp_loss(out_x, out_y, method=method, mode=mode)
    loss.backward()
    grads = [p.grad for p in lobe.parameters()]
    assert all(g is not None and torch.all(torch.isfinite(g)) for g in grads)
    assert any(torch.any(g != 0) for g in grads)
    assert loss.item() == pytest.approx(-vamp_score(out_x, out_y, method=method, mode=mode).item())


@pytest.mark.parametrize("method", ["VAMP1", "VAMP2"])
def test_gradients_match_deeptime(method):
    x, y = _ar_pairs(n=500)
    xa, ya = _t(x).requires_grad_(True), _t(y).requires_grad_(True)
    vamp_loss(xa, ya, method=method).backward()
    xb, yb = _t(x).requires_grad_(True), _t(y).requires_grad_(True)
    dt_deep.vampnet_loss(xb, yb, method=method).backward()
    np.testing.assert_allclose(xa.grad.numpy(), xb.grad.numpy(), rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(ya.grad.numpy(), yb.grad.numpy(), rtol=1e-7, atol=1e-12)


def test_vampe_gradient_is_finite_on_raw_inputs():
    x, y = _ar_pairs(n=500)
    xa, ya = _t(x).requires_grad_(True), _t(y).requires_grad_(True)
    vamp_loss(xa, ya, method="VAMPE").backward()
    assert torch.all(torch.isfinite(xa.grad)) and torch.all(torch.isfinite(ya.grad))


# --------------------------------------------------------------------------- weights (torch)


@pytest.mark.parametrize("constant", [1.0, 0.01, 37.0])
def test_uniform_weights_equal_no_weights(constant):
    x, y = _ar_pairs(n=800)
    w = torch.full((len(x),), constant, dtype=torch.float64)
    for a, b in zip(covariances(_t(x), _t(y), weights=w), covariances(_t(x), _t(y))):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-13)
    for method in METHODS:
        assert vamp_score(_t(x), _t(y), method=method, weights=w).item() == pytest.approx(
            vamp_score(_t(x), _t(y), method=method).item(), rel=1e-12
        )


def test_integer_weights_equal_duplicated_pairs():
    rng = np.random.default_rng(7)
    x, y = _ar_pairs(n=600)
    counts = rng.integers(0, 4, size=len(x))
    xd, yd = np.repeat(x, counts, axis=0), np.repeat(y, counts, axis=0)
    w = _t(counts.astype(float))
    weighted = covariances(_t(x), _t(y), weights=w)
    duplicated = covariances(_t(xd), _t(yd))
    # reliability normaliser vs n_dup - 1: the scatter matrices agree exactly
    total = counts.sum()
    norm_weighted = total - (counts**2).sum() / total
    for a, b in zip(weighted, duplicated):
        np.testing.assert_allclose(a.numpy() * norm_weighted, b.numpy() * (total - 1), rtol=1e-10)
    # ... so scale-invariant quantities agree exactly
    np.testing.assert_allclose(
        koopman_matrix(_t(x), _t(y), weights=w).numpy(),
        koopman_matrix(_t(xd), _t(yd)).numpy(),
        rtol=1e-9,
        atol=1e-11,
    )
    for method in METHODS:
        assert vamp_score(_t(x), _t(y), method=method, weights=w).item() == pytest.approx(
            vamp_score(_t(xd), _t(yd), method=method).item(), rel=1e-10
        )


def test_weights_are_differentiable_inputs_and_scale_free():
    x, y = _ar_pairs(n=500)
    w = np.random.default_rng(2).random(len(x)) + 0.1
    s1 = vamp_score(_t(x), _t(y), weights=_t(w)).item()
    s2 = vamp_score(_t(x), _t(y), weights=_t(1e-3 * w)).item()
    assert s1 == pytest.approx(s2, rel=1e-12)
    xa = _t(x).requires_grad_(True)
    vamp_loss(xa, _t(y), weights=_t(w), method="VAMPE").backward()
    assert torch.all(torch.isfinite(xa.grad))


# --------------------------------------------------------------------------- numpy half


@pytest.fixture(scope="module")
def hmm_split():
    traj = _hmm_trajectory(n=6000)
    train, test = traj[:4000], traj[4000:]
    return _pairs(train), _pairs(test)


def test_fit_vamp_matches_deeptime(hmm_split):
    (x, y), _ = hmm_split
    model = fit_vamp(x, y)
    reference = _deeptime_model(x, y)
    np.testing.assert_allclose(model.singular_values, reference.singular_values, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.mean_0, reference.mean_0, rtol=1e-12)
    np.testing.assert_allclose(model.mean_t, reference.mean_t, rtol=1e-12)
    # transforms equal up to one sign per component (left and right share it)
    ours, theirs = model.transform(x), reference.transform(x)
    signs = _sign_align(ours, theirs)
    np.testing.assert_allclose(ours * signs, theirs, rtol=1e-8, atol=1e-8)
    ours_lagged = model.transform(y, side="lagged")
    np.testing.assert_allclose(ours_lagged * signs, reference.timelagged_obs(y), rtol=1e-8, atol=1e-8)


def test_fit_vamp_whitens_and_diagonalizes(hmm_split):
    (x, y), _ = hmm_split
    model = fit_vamp(x, y)
    psi, phi = model.transform(x), model.transform(y, side="lagged")
    n = len(x)
    np.testing.assert_allclose(psi.mean(0), 0.0, atol=1e-10)
    np.testing.assert_allclose(psi.T @ psi / n, np.eye(model.n_components), atol=1e-9)
    np.testing.assert_allclose(phi.T @ phi / n, np.eye(model.n_components), atol=1e-9)
    np.testing.assert_allclose(psi.T @ phi / n, np.diag(model.singular_values), atol=1e-9)
    assert np.all(np.diff(model.singular_values) <= 0)


def test_fit_vamp_dim_truncates(hmm_split):
    (x, y), _ = hmm_split
    full, reduced = fit_vamp(x, y), fit_vamp(x, y, dim=2)
    assert reduced.n_components == 2 and reduced.left.shape == (5, 2)
    np.testing.assert_allclose(reduced.singular_values, full.singular_values[:2])
    np.testing.assert_allclose(reduced.transform(x), full.transform(x, dim=2))
    np.testing.assert_allclose(reduced.koopman, full.koopman[:2, :2])
    assert fit_vamp(x, y, dim=50).n_components == full.n_components


def test_fit_vamp_weights_match_deeptime(hmm_split):
    (x, y), _ = hmm_split
    w = np.random.default_rng(5).random(len(x)) + 0.2
    model = fit_vamp(x, y, weights=w)
    reference = _deeptime_weighted_model(x, y, w)
    np.testing.assert_allclose(model.singular_values, reference.singular_values, rtol=1e-10)
    np.testing.assert_allclose(model.mean_0, reference.mean_0, rtol=1e-12)
    np.testing.assert_allclose(model.mean_t, reference.mean_t, rtol=1e-12)
    assert not np.allclose(model.mean_0, fit_vamp(x, y).mean_0, rtol=1e-6)  # weights mattered
    ours, theirs = model.transform(x), reference.transform(x)
    np.testing.assert_allclose(ours * _sign_align(ours, theirs), theirs, rtol=1e-8, atol=1e-8)


def test_fit_vamp_integer_weights_equal_duplicates_and_scale_free(hmm_split):
    (x, y), _ = hmm_split
    counts = np.random.default_rng(6).integers(0, 3, size=len(x))
    weighted = fit_vamp(x, y, weights=counts)
    duplicated = fit_vamp(np.repeat(x, counts, axis=0), np.repeat(y, counts, axis=0))
    scaled = fit_vamp(x, y, weights=0.001 * counts)
    for other in (duplicated, scaled):
        np.testing.assert_allclose(weighted.singular_values, other.singular_values, rtol=1e-10)
        np.testing.assert_allclose(weighted.transform(x), other.transform(x), rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(weighted.koopman, other.koopman, rtol=1e-7, atol=1e-9)


def test_fit_vamp_matches_torch_scores(hmm_split):
    (x, y), _ = hmm_split
    model = fit_vamp(x, y)
    vamp2 = vamp_score(_t(x), _t(y), method="VAMP2").item()
    assert 1 + np.sum(model.singular_values**2) == pytest.approx(vamp2, rel=1e-10)


@pytest.mark.parametrize("r", [1, 2, "E"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_cv_score_matches_deeptime(hmm_split, k, r):
    (x, y), (x_test, y_test) = hmm_split
    model = fit_vamp(x, y)
    train_reference = _deeptime_model(x, y)
    test_reference = _deeptime_model(x_test, y_test)
    expected = train_reference.score(r=r, test_model=test_reference, epsilon=1e-6, dim=k)
    ours = vamp_cv_score(model, x_test, y_test, k=k, r=r, epsilon=1e-6)
    assert isinstance(ours, float)
    assert ours == pytest.approx(expected, rel=1e-9)


def test_cv_score_string_r_and_clipping(hmm_split):
    (x, y), (x_test, y_test) = hmm_split
    model = fit_vamp(x, y)
    assert vamp_cv_score(model, x_test, y_test, k=2, r="VAMP2") == vamp_cv_score(
        model, x_test, y_test, k=2, r=2
    )
    assert vamp_cv_score(model, x_test, y_test, k=2, r="VAMPE") == vamp_cv_score(
        model, x_test, y_test, k=2, r="E"
    )
    assert vamp_cv_score(model, x_test, y_test, k=99) == vamp_cv_score(
        model, x_test, y_test, k=model.n_components
    )


def test_cv_score_on_training_data_is_training_score(hmm_split):
    (x, y), _ = hmm_split
    model = fit_vamp(x, y)
    for k in (1, 3):
        expected = 1 + np.sum(model.singular_values[:k] ** 2)
        assert vamp_cv_score(model, x, y, k=k, r=2) == pytest.approx(expected, rel=1e-9)
        assert vamp_cv_score(model, x, y, k=k, r="E") == pytest.approx(expected, rel=1e-9)


def test_koopman_matrix_matches_deeptime_propagator():
    # deeptime's expectation(lag_multiple=2) with its own singular functions as observables
    # returns diag(s) U^T Ctt V diag(s); our koopman is diag(s) U^T Ctt V.
    x, y = _ar_pairs()
    model = fit_vamp(x, y)
    reference = _deeptime_model(x, y)
    s = reference.singular_values
    two_step = reference.expectation(
        observables=reference.singular_vectors_right,
        statistics=reference.singular_vectors_left,
        lag_multiple=2,
        observables_mean_free=True,
        statistics_mean_free=True,
    )
    theirs = two_step / s[None, :]
    signs = _sign_align(model.transform(x), reference.transform(x))
    np.testing.assert_allclose(model.koopman, signs[:, None] * theirs * signs[None, :], rtol=1e-8, atol=1e-10)


def test_koopman_eigenvalues_nonreversible_full_rank():
    x, y = _ar_pairs()
    model = fit_vamp(x, y)
    ev = koopman_eigenvalues(model)
    xc, yc = x - x.mean(0), y - y.mean(0)
    expected = np.linalg.eigvals(np.linalg.solve(xc.T @ xc, xc.T @ yc))
    assert np.iscomplexobj(ev)  # this AR matrix has a complex pair
    np.testing.assert_allclose(np.sort_complex(ev), np.sort_complex(expected), rtol=1e-9, atol=1e-12)
    assert np.all(np.diff(np.abs(ev)) <= 1e-15)


def test_koopman_eigenvalues_and_timescales_match_deeptime_reversible():
    x, y = _symmetrized(*_pairs(_hmm_trajectory(n=4000), lag=2))
    model = fit_vamp(x, y)
    reference = _deeptime_model(x, y)
    ev = koopman_eigenvalues(model)
    assert not np.iscomplexobj(ev)
    np.testing.assert_allclose(np.abs(ev), reference.singular_values, rtol=1e-8, atol=1e-12)
    lag = 2
    its = implied_timescales(ev, lag)
    np.testing.assert_allclose(its, reference.timescales(lagtime=lag), rtol=1e-7)
    # slowest process of a chain with 3% leaving probability per step: order 10-20 steps
    assert 5 < its[0] < 50
    np.testing.assert_allclose(koopman_eigenvalues(model, dim=2), ev[:2], rtol=1e-8)


def test_implied_timescales_values():
    its = implied_timescales(np.array([0.5, -0.5, 1.0, 1.2, 0.0, 0.6j]), 10)
    np.testing.assert_allclose(its[:2], -10 / np.log(0.5))
    assert np.isinf(its[2]) and np.isinf(its[3]) and its[4] == 0.0
    assert its[5] == pytest.approx(-10 / np.log(0.6))


def test_decomposition_is_immutable(hmm_split):
    (x, y), _ = hmm_split
    model = fit_vamp(x, y)
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.left = None
    with pytest.raises(ValueError, match="read-only"):
        model.left[0, 0] = 1.0
    with pytest.raises(ValueError, match="must have shape"):
        VampDecomposition(
            mean_0=np.zeros(3), mean_t=np.zeros(3), singular_values=np.ones(2),
            left=np.zeros((3, 2)), right=np.zeros((3, 3)), koopman=np.eye(2),
        )


# --------------------------------------------------------------------------- errors


def test_torch_errors():
    x, y = _t(np.zeros((10, 3))), _t(np.zeros((10, 2)))
    with pytest.raises(ValueError, match="same shape"):
        vamp_score(x, y)
    with pytest.raises(ValueError, match="same shape"):
        covariances(_t(np.zeros((10, 3))), _t(np.zeros((9, 3))))
    with pytest.raises(ValueError, match="At least 2 pairs"):
        vamp_score(_t(np.ones((1, 3))), _t(np.ones((1, 3))))
    with pytest.raises(ValueError, match="2-D"):
        covariances(_t(np.ones(5)), _t(np.ones(5)))
    good_x, good_y = (_t(a) for a in _ar_pairs(n=50))
    with pytest.raises(ValueError, match="Unknown method"):
        vamp_score(good_x, good_y, method="VAMP3")
    with pytest.raises(ValueError, match="Unknown mode"):
        vamp_score(good_x, good_y, mode="pinv")
    with pytest.raises(ValueError, match="Unknown mode"):
        sym_inverse_sqrt(torch.eye(2), mode="pinv")
    with pytest.raises(ValueError, match="epsilon"):
        koopman_matrix(good_x, good_y, epsilon=-1.0)
    with pytest.raises(ValueError, match="square"):
        sym_inverse_sqrt(torch.ones(2, 3))
    with pytest.raises(ValueError, match="weights must have shape"):
        vamp_score(good_x, good_y, weights=torch.ones(3))
    with pytest.raises(ValueError, match="non-negative"):
        vamp_score(good_x, good_y, weights=-torch.ones(len(good_x)))
    with pytest.raises(ValueError, match="two positive"):
        vamp_score(good_x, good_y, weights=torch.eye(len(good_x))[0])


def test_numpy_errors(hmm_split):
    (x, y), (x_test, y_test) = hmm_split
    with pytest.raises(ValueError, match="same shape"):
        fit_vamp(x, y[:-1])
    with pytest.raises(ValueError, match="At least 2 pairs"):
        fit_vamp(x[:1], y[:1])
    with pytest.raises(ValueError, match="finite"):
        fit_vamp(np.full((5, 2), np.nan), np.ones((5, 2)))
    with pytest.raises(ValueError, match="constant"):
        fit_vamp(np.ones((20, 2)), np.ones((20, 2)))
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        fit_vamp(x, y, dim=0)
    with pytest.raises(ValueError, match="weights must have shape"):
        fit_vamp(x, y, weights=np.ones(3))
    model = fit_vamp(x, y)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        vamp_cv_score(model, x_test, y_test, k=0)
    with pytest.raises(ValueError, match="Unknown score"):
        vamp_cv_score(model, x_test, y_test, k=2, r="VAMPX")
    with pytest.raises(ValueError, match="r >= 1"):
        vamp_cv_score(model, x_test, y_test, k=2, r=0.5)
    with pytest.raises(ValueError, match="features"):
        vamp_cv_score(model, x_test[:, :3], y_test[:, :3], k=2)
    with pytest.raises(ValueError, match="side"):
        model.transform(x, side="future")
    with pytest.raises(ValueError, match="shape"):
        model.transform(x[:, :2])
    with pytest.raises(ValueError, match="lagtime"):
        implied_timescales(np.array([0.5]), 0)
