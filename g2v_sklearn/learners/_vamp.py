r"""The variational approach for Markov processes (VAMP): pure math, no state.

Two halves share one set of conventions:

* a **torch** half (:func:`covariances`, :func:`sym_inverse_sqrt`,
  :func:`koopman_matrix`, :func:`vamp_score`, :func:`vamp_loss`) that is
  differentiable and is what a VAMPnet is trained on. Every computation runs in
  float64 (inputs are cast with ``.double()``), so TF32 matmul settings cannot
  change the result;
* a **NumPy** float64 half (:class:`VampDecomposition`, :func:`fit_vamp`,
  :func:`vamp_cv_score`, :func:`koopman_eigenvalues`,
  :func:`implied_timescales`) for the decomposition that a fitted model uses to
  transform and score data after training.

Notation. For pairs :math:`(x_t, y_t) = (\chi(\mathbf{x}_t),
\chi(\mathbf{x}_{t+\tau}))` of instantaneous and time-lagged features with
pair weights :math:`w_t` (all ones by default), the means are
:math:`\mu_0 = \sum_t w_t x_t / W`, :math:`\mu_t = \sum_t w_t y_t / W` with
:math:`W = \sum_t w_t`, and the covariances are

.. math::

    C_{00} = \frac{1}{N} \sum_t w_t (x_t - \mu_0)(x_t - \mu_0)^\top, \quad
    C_{0t} = \frac{1}{N} \sum_t w_t (x_t - \mu_0)(y_t - \mu_t)^\top, \quad
    C_{tt} = \frac{1}{N} \sum_t w_t (y_t - \mu_t)(y_t - \mu_t)^\top.

The half-weighted Koopman matrix :math:`\bar K = C_{00}^{-1/2} C_{0t}
C_{tt}^{-1/2}` has the singular value decomposition :math:`\bar K = A \Sigma
B^\top`; the left and right singular functions are :math:`\psi(x) = U^\top (x -
\mu_0)` and :math:`\phi(y) = V^\top (y - \mu_t)` with :math:`U = C_{00}^{-1/2}
A`, :math:`V = C_{tt}^{-1/2} B` (Wu & Noé, J. Nonlinear Sci. 30, 23-66, 2020).
Removing the means removes the constant singular function
(:math:`\sigma_0 = 1`), so every score adds :math:`+1` for it, exactly as
deeptime does.

The normaliser :math:`N` differs between the halves, and none of the scores
depend on it (except through where ``epsilon`` cuts):

* torch half: :math:`N = n - 1` without weights, as in deeptime's
  ``deeptime.decomposition.deep.covariances``; with weights the unbiased
  *reliability-weight* normaliser :math:`N = W - \sum_t w_t^2 / W`, which equals
  :math:`n - 1` for any constant weights and does not depend on the scale of the
  weights;
* NumPy half: :math:`N = W` (:math:`= n` without weights), as deeptime's
  ``VAMP`` estimator (``Covariance(bessels_correction=False)``), so that
  singular functions, transforms and cross-validated scores equal deeptime's.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

__all__ = [
    "VampDecomposition",
    "covariances",
    "fit_vamp",
    "implied_timescales",
    "koopman_eigenvalues",
    "koopman_matrix",
    "sym_inverse_sqrt",
    "vamp_cv_score",
    "vamp_loss",
    "vamp_score",
]

_MODES = ("trunc", "regularize", "clamp")
_METHODS = ("VAMP1", "VAMP2", "VAMPE")


# ---------------------------------------------------------------------------
# torch half
# ---------------------------------------------------------------------------


def _check_epsilon(epsilon: float) -> float:
    if not isinstance(epsilon, numbers.Real) or not np.isfinite(epsilon) or epsilon < 0:
        raise ValueError(f"epsilon must be a finite, non-negative number; got {epsilon!r}.")
    return float(epsilon)


def _check_mode(mode: str) -> str:
    if mode not in _MODES:
        raise ValueError(f"Unknown mode {mode!r}; expected one of {_MODES}.")
    return mode


def _check_method(method: str) -> str:
    normalized = method.upper() if isinstance(method, str) else method
    if normalized not in _METHODS:
        raise ValueError(f"Unknown method {method!r}; expected one of {_METHODS}.")
    return normalized


def _check_pairs_torch(x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None):
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError(
            f"x and y must be torch tensors; got {type(x).__name__} and {type(y).__name__}."
        )
    if x.ndim != 2 or y.ndim != 2:
        raise ValueError(
            f"x and y must be 2-D (n_pairs, n_features); got shapes {tuple(x.shape)} "
            f"and {tuple(y.shape)}."
        )
    if x.shape != y.shape:
        raise ValueError(
            f"x and y must have the same shape; got {tuple(x.shape)} and {tuple(y.shape)}."
        )
    if x.shape[0] < 2:
        raise ValueError(f"At least 2 pairs are needed; got {x.shape[0]}.")
    if x.shape[1] < 1:
        raise ValueError("x and y must have at least one feature column.")
    x = x.double()
    y = y.to(device=x.device).double()
    if weights is not None:
        weights = torch.as_tensor(weights, device=x.device).double()
        if weights.ndim != 1 or weights.shape[0] != x.shape[0]:
            raise ValueError(
                f"weights must have shape ({x.shape[0]},), one per pair; got {tuple(weights.shape)}."
            )
    return x, y, weights


def covariances(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    remove_mean: bool = True,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Instantaneous and time-lagged covariance matrices, differentiable, in float64.

    .. math::

        C_{00} = \tfrac{1}{N} \bar X^\top W \bar X, \quad
        C_{0t} = \tfrac{1}{N} \bar X^\top W \bar Y, \quad
        C_{tt} = \tfrac{1}{N} \bar Y^\top W \bar Y,

    where :math:`\bar X = X - \mathbf{1}\mu_0^\top`, :math:`\bar Y = Y -
    \mathbf{1}\mu_t^\top` (weighted means; no centring if ``remove_mean`` is
    False) and :math:`W = \mathrm{diag}(w)`. Without weights :math:`N = n - 1`,
    as in ``deeptime.decomposition.deep.covariances``. With weights

    .. math::

        N = \sum_t w_t - \frac{\sum_t w_t^2}{\sum_t w_t},

    the unbiased normaliser for reliability weights: it reduces to :math:`n - 1`
    for constant weights of any size, and scaling all weights by a constant
    leaves the covariances unchanged. Integer weights give the same means as
    duplicating pairs and covariances proportional to those (so the Koopman
    matrix and the scores are the same).

    Parameters
    ----------
    x : torch.Tensor of shape (n_pairs, k)
        Instantaneous outputs.
    y : torch.Tensor of shape (n_pairs, k)
        Time-lagged outputs.
    remove_mean : bool, default=True
        Whether to subtract the (weighted) means of ``x`` and ``y``.
    weights : torch.Tensor of shape (n_pairs,), optional
        Non-negative per-pair weights (e.g. reweighting factors of a biased
        simulation); None means uniform. At least two must be positive.

    Returns
    -------
    c00, c0t, ctt : torch.Tensor of shape (k, k), float64
        :math:`C_{00}`, :math:`C_{0t}` and :math:`C_{tt}`.

    Raises
    ------
    ValueError
        If the shapes differ or are not 2-D, there are fewer than two pairs, or
        the weights are malformed (wrong shape, negative, or fewer than two
        positive entries).
    """
    x, y, weights = _check_pairs_torch(x, y, weights)
    if weights is None:
        if remove_mean:
            x = x - x.mean(dim=0, keepdim=True)
            y = y - y.mean(dim=0, keepdim=True)
        norm = x.shape[0] - 1.0
        xw = x
    else:
        if bool(torch.any(weights < 0)) or not bool(torch.all(torch.isfinite(weights))):
            raise ValueError("weights must be finite and non-negative.")
        total = weights.sum()
        norm = total - (weights * weights).sum() / total if bool(total > 0) else total
        if not bool(norm > 0) or int((weights > 0).sum()) < 2:
            raise ValueError("weights must have at least two positive entries.")
        if remove_mean:
            x = x - (weights[:, None] * x).sum(dim=0, keepdim=True) / total
            y = y - (weights[:, None] * y).sum(dim=0, keepdim=True) / total
        xw = weights[:, None] * x
    c00 = xw.T @ x / norm
    c0t = xw.T @ y / norm
    if weights is None:
        ctt = y.T @ y / norm
    else:
        ctt = (weights[:, None] * y).T @ y / norm
    return c00, c0t, ctt


def sym_inverse_sqrt(mat: torch.Tensor, *, epsilon: float = 1e-6, mode: str = "trunc") -> torch.Tensor:
    r"""Inverse square root of a symmetric matrix that may be rank deficient.

    With the eigendecomposition :math:`M = Q \Lambda Q^\top`,

    .. math:: M^{-1/2} = Q_{\mathcal I}\, \Lambda_{\mathcal I}^{-1/2}\, Q_{\mathcal I}^\top,

    where the retained set :math:`\mathcal I` and the eigenvalues used depend on
    ``mode`` (the conventions of deeptime's ``sym_inverse(..., return_sqrt=True)``):

    * ``"trunc"``: keep only eigenvalues :math:`\lambda_i > \epsilon`;
    * ``"regularize"``: decompose :math:`M + \epsilon I` and use :math:`|\lambda_i|`;
    * ``"clamp"``: use :math:`\max(\lambda_i, \epsilon)`.

    The result has the shape of ``mat`` (a truncated inverse is a zero map on the
    discarded eigenvectors). Computed in float64 and differentiable.

    Parameters
    ----------
    mat : torch.Tensor of shape (k, k)
        Symmetric matrix, e.g. a covariance matrix.
    epsilon : float, default=1e-6
        Eigenvalue cutoff or regulariser, see ``mode``.
    mode : {"trunc", "regularize", "clamp"}, default="trunc"
        How small eigenvalues are handled.

    Returns
    -------
    torch.Tensor of shape (k, k), float64

    Raises
    ------
    ValueError
        For a non-square matrix, a negative epsilon or an unknown mode.
    """
    epsilon = _check_epsilon(epsilon)
    _check_mode(mode)
    if not isinstance(mat, torch.Tensor) or mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
        shape = tuple(mat.shape) if hasattr(mat, "shape") else type(mat).__name__
        raise ValueError(f"mat must be a square 2-D tensor; got {shape}.")
    mat = mat.double()
    if mode == "regularize":
        mat = mat + epsilon * torch.eye(mat.shape[0], dtype=mat.dtype, device=mat.device)
    eigval, eigvec = torch.linalg.eigh(mat)
    if mode == "trunc":
        keep = eigval > epsilon
        eigval = eigval[keep]
        eigvec = eigvec[:, keep]
    elif mode == "regularize":
        eigval = torch.abs(eigval)
    else:  # clamp
        eigval = torch.clamp_min(eigval, epsilon)
    return (eigvec * torch.rsqrt(eigval)[None, :]) @ eigvec.T


def _whitened(x, y, epsilon, mode, weights):
    """The time-lagged covariance and the inverse square roots of the two instantaneous ones."""
    c00, c0t, ctt = covariances(x, y, remove_mean=True, weights=weights)
    c00_isqrt = sym_inverse_sqrt(c00, epsilon=epsilon, mode=mode)
    ctt_isqrt = sym_inverse_sqrt(ctt, epsilon=epsilon, mode=mode)
    return c0t, c00_isqrt, ctt_isqrt


def koopman_matrix(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epsilon: float = 1e-6,
    mode: str = "trunc",
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""The (transposed) half-weighted Koopman matrix of mean-free outputs.

    .. math:: \bar K^\top = \left(C_{00}^{-1/2} C_{0t} C_{tt}^{-1/2}\right)^\top

    The transpose is deeptime's convention
    (``deeptime.decomposition.deep.koopman_matrix``); the singular values, and so
    all VAMP scores, are those of :math:`\bar K`.

    Parameters
    ----------
    x, y : torch.Tensor of shape (n_pairs, k)
        Instantaneous and time-lagged outputs.
    epsilon : float, default=1e-6
        Eigenvalue cutoff / regulariser for the inverse square roots.
    mode : {"trunc", "regularize", "clamp"}, default="trunc"
        See :func:`sym_inverse_sqrt`.
    weights : torch.Tensor of shape (n_pairs,), optional
        Per-pair weights, see :func:`covariances`.

    Returns
    -------
    torch.Tensor of shape (k, k), float64
    """
    c0t, c00_isqrt, ctt_isqrt = _whitened(x, y, epsilon, mode, weights)
    return (c00_isqrt @ c0t @ ctt_isqrt).T


def vamp_score(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    method: str = "VAMP2",
    epsilon: float = 1e-6,
    mode: str = "trunc",
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Differentiable VAMP score of a batch of instantaneous/lagged outputs.

    With :math:`\bar K = C_{00}^{-1/2} C_{0t} C_{tt}^{-1/2}` and singular values
    :math:`\sigma_i`:

    .. math::

        \mathrm{VAMP1} = 1 + \sum_i \sigma_i = 1 + \|\bar K\|_*, \qquad
        \mathrm{VAMP2} = 1 + \sum_i \sigma_i^2 = 1 + \|\bar K\|_F^2,

    and, with the SVD :math:`\bar K = A \Sigma B^\top` restricted to
    :math:`\sigma_i > \epsilon`, :math:`U = C_{00}^{-1/2} A`,
    :math:`V = C_{tt}^{-1/2} B` (Wu & Noé 2020, eq. 30),

    .. math::

        \mathrm{VAMPE} = 1 + \operatorname{tr}\left(2\,\Sigma U^\top C_{0t} V
        - \Sigma U^\top C_{00} U \Sigma V^\top C_{tt} V\right).

    The :math:`+1` is the constant singular function removed with the means, as
    in ``deeptime.decomposition.deep.vamp_score``. VAMP1 and VAMP2 equal
    deeptime's. VAMPE follows the paper: :math:`U` comes from the *left*
    singular vectors of :math:`\bar K` and :math:`V` from the right ones, so on
    the data it was estimated from VAMPE equals VAMP2 (up to ``epsilon``
    effects), as the theory says and as deeptime's NumPy
    ``CovarianceKoopmanModel.score(r="E")`` gives. (deeptime 0.4.5's torch
    VAMPE takes the SVD of :math:`\bar K^\top` and so swaps the two sides; it
    agrees with this function only when :math:`\bar K` is symmetric, e.g. for
    time-reversal-symmetrised data.)

    Parameters
    ----------
    x, y : torch.Tensor of shape (n_pairs, k)
        Instantaneous and time-lagged outputs (any float dtype; cast to float64).
    method : {"VAMP1", "VAMP2", "VAMPE"}, default="VAMP2"
        The score.
    epsilon : float, default=1e-6
        Eigenvalue cutoff / regulariser for the inverse square roots, and the
        singular value cutoff of VAMPE.
    mode : {"trunc", "regularize", "clamp"}, default="trunc"
        See :func:`sym_inverse_sqrt`.
    weights : torch.Tensor of shape (n_pairs,), optional
        Per-pair weights, see :func:`covariances`.

    Returns
    -------
    torch.Tensor
        0-d float64 tensor, differentiable with respect to ``x`` and ``y``.

    Raises
    ------
    ValueError
        For an unknown method or mode, or invalid inputs (see :func:`covariances`).
    """
    method = _check_method(method)
    return _score_of_covariances(*covariances(x, y, remove_mean=True, weights=weights), method=method,
                                 epsilon=epsilon, mode=mode)


def _score_of_covariances(c00, c0t, ctt, *, method: str, epsilon: float, mode: str) -> torch.Tensor:
    """:func:`vamp_score` from the covariances (a single process's, or the sums of several)."""
    c00_isqrt = sym_inverse_sqrt(c00, epsilon=epsilon, mode=mode)
    ctt_isqrt = sym_inverse_sqrt(ctt, epsilon=epsilon, mode=mode)
    kbar = c00_isqrt @ c0t @ ctt_isqrt
    if method == "VAMP1":
        score = torch.linalg.matrix_norm(kbar, ord="nuc")
    elif method == "VAMP2":
        score = torch.sum(kbar * kbar)
    else:
        a, s, bh = torch.linalg.svd(kbar, full_matrices=False)
        keep = s > epsilon
        s = s[keep]
        u = c00_isqrt @ a[:, keep]
        v = ctt_isqrt @ bh[keep, :].T
        sigma = torch.diag(s)
        score = torch.trace(
            2.0 * sigma @ u.T @ c0t @ v - sigma @ u.T @ c00 @ u @ sigma @ v.T @ ctt @ v
        )
    return 1.0 + score


def reduced_covariances(x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None, sum_over_ranks):
    """:func:`covariances` (mean-free) of the pairs of all ranks, each holding some of them.

    ``sum_over_ranks`` adds a tensor up over the ranks, with gradients (the
    identity on one process). Two sums: the weights and weighted sums give
    the global means; each rank centres its pairs on them, and the centred
    second moments are summed. Centring before summing keeps float64's
    precision when the outputs' offsets are large against their spread;
    every rank ends with the same covariances, those of one process holding
    every pair. A rank may hold a single pair (or more).
    """
    x, y = x.double(), y.to(device=x.device).double()
    k = x.shape[1]
    w = torch.ones(len(x), dtype=x.dtype, device=x.device) if weights is None else \
        torch.as_tensor(weights, device=x.device).double()
    first = sum_over_ranks(torch.cat([torch.stack([w.sum(), (w * w).sum(), (w > 0).sum().double()]),
                                      w @ x, w @ y]))
    total, total_sq, positive = first[0], first[1], first[2]
    norm = total - total_sq / total
    if int(positive.item()) < 2 or not bool(norm > 0):
        raise ValueError("weights must have at least two positive entries over all ranks' pairs.")
    x = x - first[3:3 + k] / total
    y = y - first[3 + k:] / total
    xw = w[:, None] * x
    second = sum_over_ranks(torch.cat([(xw.T @ x).reshape(-1), (xw.T @ y).reshape(-1),
                                       ((w[:, None] * y).T @ y).reshape(-1)]))
    c00, c0t, ctt = (part.reshape(k, k) / norm for part in second.split(k * k))
    return c00, c0t, ctt


def reduced_vamp_score(x, y, *, sum_over_ranks, method: str = "VAMP2", epsilon: float = 1e-6,
                       mode: str = "trunc", weights=None) -> torch.Tensor:
    """:func:`vamp_score` of the pairs of all ranks, each holding some (see :func:`reduced_covariances`)."""
    method = _check_method(method)
    return _score_of_covariances(*reduced_covariances(x, y, weights, sum_over_ranks), method=method,
                                 epsilon=epsilon, mode=mode)


def vamp_loss(x: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
    r"""The VAMPnet training loss, :math:`-\mathrm{score}`; see :func:`vamp_score`.

    Parameters
    ----------
    x, y : torch.Tensor of shape (n_pairs, k)
        Instantaneous and time-lagged outputs.
    **kwargs
        ``method``, ``epsilon``, ``mode`` and ``weights`` of :func:`vamp_score`.

    Returns
    -------
    torch.Tensor
        0-d float64 tensor.
    """
    return -vamp_score(x, y, **kwargs)


# ---------------------------------------------------------------------------
# NumPy half
# ---------------------------------------------------------------------------


def _check_pairs_numpy(x, y, weights, *, name: str = ""):
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2:
        raise ValueError(
            f"x{name} and y{name} must be 2-D (n_pairs, n_features); got shapes {x.shape} and {y.shape}."
        )
    if x.shape != y.shape:
        raise ValueError(f"x{name} and y{name} must have the same shape; got {x.shape} and {y.shape}.")
    if x.shape[0] < 2:
        raise ValueError(f"At least 2 pairs are needed; got {x.shape[0]}.")
    if x.shape[1] < 1:
        raise ValueError(f"x{name} and y{name} must have at least one feature column.")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError(f"x{name} and y{name} must be finite (no NaN or inf).")
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (x.shape[0],):
            raise ValueError(
                f"weights must have shape ({x.shape[0]},), one per pair; got {weights.shape}."
            )
        if not np.all(np.isfinite(weights)) or np.any(weights < 0):
            raise ValueError("weights must be finite and non-negative.")
        if np.count_nonzero(weights) < 2:
            raise ValueError("weights must have at least two positive entries.")
    return x, y, weights


class _Moments(NamedTuple):
    """Weighted means of the instantaneous and time-lagged data, and their covariances."""

    mean_0: np.ndarray
    mean_t: np.ndarray
    c00: np.ndarray
    c0t: np.ndarray
    ctt: np.ndarray


def _np_moments(x: np.ndarray, y: np.ndarray, weights: np.ndarray | None) -> _Moments:
    """Weighted means and 1/W-normalised mean-free covariances (deeptime's VAMP)."""
    if weights is None:
        weights = np.ones(x.shape[0])
    total = weights.sum()
    mean_0 = weights @ x / total
    mean_t = weights @ y / total
    xc = x - mean_0
    yc = y - mean_t
    xw = xc * weights[:, None]
    c00 = xw.T @ xc / total
    c0t = xw.T @ yc / total
    ctt = (yc * weights[:, None]).T @ yc / total
    c00 = 0.5 * (c00 + c00.T)
    ctt = 0.5 * (ctt + ctt.T)
    return _Moments(mean_0, mean_t, c00, c0t, ctt)


def _np_spd_eig(mat: np.ndarray, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs of an s.p.(semi)d. matrix with eigenvalues >= epsilon, descending.

    Follows deeptime's ``spd_eig``: if the smallest eigenvalue is negative, the
    cutoff is raised above its magnitude, so that numerical noise of that size
    is discarded as well.
    """
    evals, evecs = np.linalg.eigh(0.5 * (mat + mat.T))
    order = np.argsort(np.abs(evals))[::-1]
    evals, evecs = evals[order], evecs[:, order]
    cutoff = epsilon
    if evals.min() < 0:
        cutoff = max(cutoff, -evals.min() + 1e-16)
    keep = (evals >= cutoff) & (evals > 0)
    if not np.any(keep):
        raise ValueError(
            f"All eigenvalues of the covariance matrix are below {cutoff:g}; the outputs are "
            f"(numerically) constant, so there is nothing to decompose."
        )
    return evals[keep], evecs[:, keep]


def _np_inv_split(mat: np.ndarray, epsilon: float) -> np.ndarray:
    r""":math:`L` with :math:`L L^\top = M^{+}` on the retained eigenspace, shape (k, rank)."""
    evals, evecs = _np_spd_eig(mat, epsilon)
    return evecs / np.sqrt(evals)[None, :]


def _np_inv_sqrt(mat: np.ndarray, epsilon: float) -> np.ndarray:
    r"""Truncated :math:`M^{-1/2}` of shape (k, k)."""
    evals, evecs = _np_spd_eig(mat, epsilon)
    return (evecs / np.sqrt(evals)[None, :]) @ evecs.T


def _readonly(array) -> np.ndarray:
    array = np.array(array, dtype=np.float64, copy=True)
    array.flags.writeable = False
    return array


@dataclass(frozen=True, eq=False)
class VampDecomposition:
    r"""Result of :func:`fit_vamp`: means, singular values and singular functions.

    The left and right singular functions of the estimated Koopman operator
    are

    .. math::

        \psi(x) = U^\top (x - \mu_0), \qquad \phi(y) = V^\top (y - \mu_t),

    with :math:`U` = ``left`` and :math:`V` = ``right``; on the training data
    they are uncorrelated with unit variance, :math:`U^\top C_{00} U = I =
    V^\top C_{tt} V`, and :math:`U^\top C_{0t} V = \mathrm{diag}(\sigma)`.

    Parameters
    ----------
    mean_0 : ndarray of shape (k,)
        (Weighted) mean of the instantaneous outputs.
    mean_t : ndarray of shape (k,)
        (Weighted) mean of the time-lagged outputs.
    singular_values : ndarray of shape (r,)
        Singular values :math:`\sigma_1 \ge \dots \ge \sigma_r \ge 0` of the
        half-weighted Koopman matrix, r the retained rank.
    left : ndarray of shape (k, r)
        :math:`U`, maps mean-free instantaneous outputs to :math:`\psi`.
    right : ndarray of shape (k, r)
        :math:`V`, maps mean-free lagged outputs to :math:`\phi`.
    koopman : ndarray of shape (r, r)
        The rank-r Koopman matrix that propagates in the singular-function
        basis (the matrix deeptime's ``CovarianceKoopmanModel.expectation``
        raises to powers for multiples of the lag time),

        .. math:: P = \mathrm{diag}(\sigma)\, U^\top C_{tt} V,
                  \qquad P_{ij} = \sigma_i \langle \psi_i, \phi_j \rangle_{\rho_1},

        where :math:`\rho_1` is the distribution of the lagged frames. Its
        eigenvalues are the Koopman eigenvalues of the rank-r model (the
        constant function adds the eigenvalue 1, which is left out here). It
        assumes that the instantaneous and lagged outputs come from the same
        feature map (a shared VAMPnet lobe).

    Notes
    -----
    The arrays are stored as read-only float64 copies. Each singular pair
    :math:`(U_{:,i}, V_{:,i})` is fixed up to a common sign; :func:`fit_vamp`
    makes the entry of largest magnitude of each column of :math:`U` positive.
    """

    mean_0: np.ndarray
    mean_t: np.ndarray
    singular_values: np.ndarray
    left: np.ndarray
    right: np.ndarray
    koopman: np.ndarray

    def __post_init__(self):
        for field in ("mean_0", "mean_t", "singular_values", "left", "right", "koopman"):
            object.__setattr__(self, field, _readonly(getattr(self, field)))
        k, r = self.mean_0.shape[0], self.singular_values.shape[0]
        expected = {
            "mean_0": (k,),
            "mean_t": (k,),
            "singular_values": (r,),
            "left": (k, r),
            "right": (k, r),
            "koopman": (r, r),
        }
        for field, shape in expected.items():
            if getattr(self, field).shape != shape:
                raise ValueError(
                    f"VampDecomposition.{field} must have shape {shape}; got {getattr(self, field).shape}."
                )

    @property
    def n_features(self) -> int:
        """Number of input features k."""
        return int(self.mean_0.shape[0])

    @property
    def n_components(self) -> int:
        """Number of retained singular components r."""
        return int(self.singular_values.shape[0])

    def transform(self, x, *, side: str = "instantaneous", dim: int | None = None) -> np.ndarray:
        r"""Evaluate the singular functions on outputs ``x``.

        .. math::

            \psi(x) = (x - \mu_0)\, U_{:, :d} \quad (\text{instantaneous}), \qquad
            \phi(x) = (x - \mu_t)\, V_{:, :d} \quad (\text{lagged}).

        Parameters
        ----------
        x : array-like of shape (n, k)
            Outputs of the feature map.
        side : {"instantaneous", "lagged"}, default="instantaneous"
            Left singular functions :math:`\psi` (what deeptime's
            ``VAMP.transform`` returns) or right ones :math:`\phi`.
        dim : int, optional
            Number of leading components d; None means all r.

        Returns
        -------
        ndarray of shape (n, d), float64
        """
        if side not in ("instantaneous", "lagged"):
            raise ValueError(f"side must be 'instantaneous' or 'lagged'; got {side!r}.")
        dim = _check_dim(dim, self.n_components)
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(
                f"x must have shape (n, {self.n_features}); got {x.shape}."
            )
        if side == "instantaneous":
            return (x - self.mean_0) @ self.left[:, :dim]
        return (x - self.mean_t) @ self.right[:, :dim]


def _check_dim(dim, n_components: int, *, name: str = "dim") -> int:
    if dim is None:
        return n_components
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1:
        raise ValueError(f"{name} must be a positive integer or None; got {dim!r}.")
    return int(min(dim, n_components))


def fit_vamp(
    x,
    y,
    *,
    epsilon: float = 1e-6,
    weights=None,
    dim: int | None = None,
) -> VampDecomposition:
    r"""Estimate the VAMP decomposition of paired instantaneous/lagged outputs.

    With the covariances of the module docstring (normalised by :math:`W`, the
    total weight), the whitening factors :math:`L_0 L_0^\top = C_{00}^{+}` and
    :math:`L_t L_t^\top = C_{tt}^{+}` that keep the eigenvalues
    :math:`\ge \epsilon` (the retained ranks), and the SVD

    .. math:: L_0^\top C_{0t} L_t = A \Sigma B^\top,

    the coefficients are :math:`U = L_0 A`, :math:`V = L_t B`. This is
    deeptime's ``VAMP`` estimator (``scaling=None``): the singular values equal
    its model's ``singular_values``, and :meth:`VampDecomposition.transform`
    equals its ``transform`` up to the sign of each component.

    Parameters
    ----------
    x, y : array-like of shape (n_pairs, k)
        Instantaneous and time-lagged outputs; pairs from several trajectories
        may be concatenated by the caller.
    epsilon : float, default=1e-6
        Eigenvalues of :math:`C_{00}` and :math:`C_{tt}` below this are
        discarded (deeptime's convention, including raising the cutoff above
        the magnitude of a negative eigenvalue).
    weights : array-like of shape (n_pairs,), optional
        Non-negative per-pair weights; None means uniform. Scaling them by a
        constant changes nothing, and integer weights equal duplicated pairs.
    dim : int, optional
        Keep at most this many leading components; None keeps
        :math:`r = \min(\mathrm{rank}\, C_{00}, \mathrm{rank}\, C_{tt})`.

    Returns
    -------
    VampDecomposition

    Raises
    ------
    ValueError
        For mismatched or non-2-D shapes, fewer than two pairs, non-finite data,
        invalid weights or dim, or constant outputs (rank zero).
    """
    epsilon = _check_epsilon(epsilon)
    x, y, weights = _check_pairs_numpy(x, y, weights)
    mean_0, mean_t, c00, c0t, ctt = _np_moments(x, y, weights)
    l0 = _np_inv_split(c00, epsilon)
    lt = _np_inv_split(ctt, epsilon)
    a, s, bh = np.linalg.svd(l0.T @ c0t @ lt, full_matrices=False)
    r = _check_dim(dim, s.shape[0])
    s = s[:r]
    u = l0 @ a[:, :r]
    v = lt @ bh[:r].T
    # deterministic signs: the largest-magnitude entry of each left column is positive
    pivot = np.argmax(np.abs(u), axis=0)
    signs = np.sign(u[pivot, np.arange(r)])
    signs[signs == 0] = 1.0
    u = u * signs
    v = v * signs
    koopman = s[:, None] * (u.T @ ctt @ v)
    return VampDecomposition(
        mean_0=mean_0, mean_t=mean_t, singular_values=s, left=u, right=v, koopman=koopman
    )


def _parse_r(r) -> float | str:
    if isinstance(r, str):
        key = r.upper().removeprefix("VAMP")
        if key == "E":
            return "E"
        try:
            value = float(key)
        except ValueError:
            raise ValueError(
                f"Unknown score r={r!r}; expected a number >= 1, 'VAMP1', 'VAMP2' or 'E'/'VAMPE'."
            ) from None
    elif isinstance(r, numbers.Real) and not isinstance(r, bool):
        value = float(r)
    else:
        raise ValueError(f"Unknown score r={r!r}; expected a number >= 1, 'VAMP1', 'VAMP2' or 'E'/'VAMPE'.")
    if not np.isfinite(value) or value < 1:
        raise ValueError(f"The VAMP-r score needs r >= 1; got {r!r}.")
    return value


def vamp_cv_score(
    model: VampDecomposition,
    x_test,
    y_test,
    *,
    k: int,
    r: float | str = 2,
    epsilon: float = 1e-6,
    weights=None,
) -> float:
    r"""Cross-validated VAMP score of a fitted decomposition on test pairs.

    The first :math:`k` training singular functions (coefficients
    :math:`U_k`, :math:`V_k`, singular values :math:`\Sigma_k`) are scored with
    the covariances :math:`C^{\mathrm{test}}` of the test pairs, which are made
    mean-free with the *test* means and normalised by the test weight
    (deeptime's convention: its test model is a VAMP fit of the test data).
    Following Wu & Noé (2020), eqs. 33 and 30:

    .. math::

        \mathrm{VAMP}\text{-}r = 1 + \left\| (U_k^\top C_{00}^{\mathrm{test}} U_k)^{-1/2}\,
            U_k^\top C_{0t}^{\mathrm{test}} V_k\,
            (V_k^\top C_{tt}^{\mathrm{test}} V_k)^{-1/2} \right\|_r^r,

    with :math:`\|\cdot\|_r` the Schatten r-norm and the inverse square roots
    truncated at ``epsilon``, and

    .. math::

        \mathrm{VAMPE} = 1 + \operatorname{tr}\left(2\,\Sigma_k U_k^\top C_{0t}^{\mathrm{test}} V_k
            - \Sigma_k U_k^\top C_{00}^{\mathrm{test}} U_k \Sigma_k
              V_k^\top C_{tt}^{\mathrm{test}} V_k\right).

    The :math:`+1` is the constant singular function. The value equals
    deeptime's ``CovarianceKoopmanModel.score(r, test_model=VAMP().fit(test)
    .fetch_model(), epsilon=epsilon, dim=k)``.

    Parameters
    ----------
    model : VampDecomposition
        Decomposition fitted on the training pairs.
    x_test, y_test : array-like of shape (n_pairs, k_features)
        Test pairs (the same feature map as for the training pairs).
    k : int
        Number of leading singular functions to score; values above the
        model's rank are clipped to it (as deeptime does).
    r : float or {"VAMP1", "VAMP2", "E", "VAMPE"}, default=2
        The score: Schatten order r >= 1, or "E" for VAMP-E.
    epsilon : float, default=1e-6
        Eigenvalue cutoff of the inverse square roots in the VAMP-r score.
    weights : array-like of shape (n_pairs,), optional
        Non-negative per-pair weights of the test pairs.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        For invalid inputs, a k below 1, an unknown r, or test data whose
        projected covariance has rank zero.
    """
    if not isinstance(model, VampDecomposition):
        raise ValueError(f"model must be a VampDecomposition; got {type(model).__name__}.")
    r = _parse_r(r)
    epsilon = _check_epsilon(epsilon)
    k = _check_dim(k, model.n_components, name="k")
    x_test, y_test, weights = _check_pairs_numpy(x_test, y_test, weights, name="_test")
    if x_test.shape[1] != model.n_features:
        raise ValueError(
            f"The test data have {x_test.shape[1]} features but the model was fitted on {model.n_features}."
        )
    moments = _np_moments(x_test, y_test, weights)
    c00, c0t, ctt = moments.c00, moments.c0t, moments.ctt
    u = model.left[:, :k]
    v = model.right[:, :k]
    if r == "E":
        sigma = np.diag(model.singular_values[:k])
        score = np.trace(
            2.0 * sigma @ u.T @ c0t @ v - sigma @ u.T @ c00 @ u @ sigma @ v.T @ ctt @ v
        )
    else:
        a = _np_inv_sqrt(u.T @ c00 @ u, epsilon)
        c = _np_inv_sqrt(v.T @ ctt @ v, epsilon)
        s = np.linalg.svd(a @ (u.T @ c0t @ v) @ c, compute_uv=False)
        score = np.sum(s**r)
    return float(score + 1.0)


def koopman_eigenvalues(model: VampDecomposition, dim: int | None = None) -> np.ndarray:
    r"""Eigenvalues of the rank-``dim`` Koopman matrix, sorted by modulus, descending.

    These are the eigenvalues of :math:`P_{:d,:d}` with
    :math:`P = \mathrm{diag}(\sigma) U^\top C_{tt} V` (:attr:`VampDecomposition.koopman`);
    the constant function's eigenvalue 1 is not included. At full rank they
    equal the eigenvalues of :math:`C_{00}^{-1} C_{0t}`. For reversible
    (time-reversal-symmetrised) estimates :math:`|\lambda_i| = \sigma_i`, so the
    implied timescales coincide with deeptime's
    ``CovarianceKoopmanModel.timescales()``, which uses the singular values; for
    non-reversible estimates they differ, and these eigenvalues are the ones
    that describe the decay of the model's dynamics.

    Parameters
    ----------
    model : VampDecomposition
        A fitted decomposition.
    dim : int, optional
        Number of leading singular components of the model; None means all.

    Returns
    -------
    ndarray of shape (d,)
        Real dtype if all eigenvalues are real, else complex. Ties in modulus
        (complex-conjugate pairs) put the positive imaginary part first.
    """
    if not isinstance(model, VampDecomposition):
        raise ValueError(f"model must be a VampDecomposition; got {type(model).__name__}.")
    dim = _check_dim(dim, model.n_components)
    evals = np.linalg.eigvals(model.koopman[:dim, :dim])
    order = np.lexsort((-np.imag(evals), -np.abs(evals)))
    evals = evals[order]
    if np.iscomplexobj(evals) and np.all(np.imag(evals) == 0):
        evals = np.real(evals)
    return evals


def implied_timescales(eigenvalues, lagtime: float) -> np.ndarray:
    r"""Implied timescales of Koopman eigenvalues.

    .. math:: t_i = -\frac{\tau}{\ln |\lambda_i|}

    Parameters
    ----------
    eigenvalues : array-like of shape (m,)
        Real or complex eigenvalues (or singular values).
    lagtime : float
        The lag time :math:`\tau` (in frames or physical time units); the
        timescales come out in the same unit.

    Returns
    -------
    ndarray of shape (m,), float64
        :math:`|\lambda| = 0` gives 0; :math:`|\lambda| \ge 1` has no finite
        decay time and gives ``inf``.
    """
    if not isinstance(lagtime, numbers.Real) or isinstance(lagtime, bool) or not lagtime > 0:
        raise ValueError(f"lagtime must be a positive number; got {lagtime!r}.")
    modulus = np.abs(np.asarray(eigenvalues))
    if modulus.ndim != 1:
        raise ValueError(f"eigenvalues must be 1-D; got shape {modulus.shape}.")
    with np.errstate(divide="ignore"):
        timescales = -float(lagtime) / np.log(modulus)
    timescales = np.where(modulus >= 1.0, np.inf, timescales)
    return timescales.astype(np.float64)
