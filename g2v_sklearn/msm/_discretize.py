"""Discretisation: per-frame features to discrete trajectories, by deeptime's k-means.

As everywhere in the package, X is a list of per-trajectory arrays: each
trajectory is one sample.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from deeptime.clustering import KMeans, MiniBatchKMeans, kmeans_plusplus
from joblib import effective_n_jobs
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from .._compat import Interval, StrOptions, _fit_context
from .._utils import PickleVersionMixin, check_generator, keep_parameters
from .._validation import check_feature_trajs

__all__ = ["KMeansDiscretizer"]

# deeptime's k-means takes seeds in [0, 2**32 - 1].
_MAX_KMEANS_SEED = 2**32 - 1
#: n_clusters="auto": this many centres per feature (and one more set for the stationary
#: process), at most AUTO_MAX_CLUSTERS.
AUTO_PER_DIMENSION = 5
AUTO_MAX_CLUSTERS = 100


class KMeansDiscretizer(PickleVersionMixin, TransformerMixin, BaseEstimator):
    """Discretise feature trajectories with deeptime's k-means.

    The frames of all trajectories are clustered together with
    :class:`deeptime.clustering.KMeans` (Lloyd iterations from a k-means++
    start) or :class:`deeptime.clustering.MiniBatchKMeans`; ``transform``
    assigns each frame to its nearest centre, giving one discrete trajectory
    per input trajectory.

    Parameters
    ----------
    n_clusters : int or "auto", default="auto"
        Number of cluster centres (Markov states before connectivity).
        ``"auto"``: ``5 * (n_features + 1)``, at most 100 and at most the
        number of frames; 15 for two learned coordinates. A few states per
        slow process place its barrier; more split the rare basins into
        states visited too seldom for their transitions to be counted well
        (see Notes).
    method : {"kmeans", "minibatch"}, default="kmeans"
        ``"kmeans"``: deeptime's ``KMeans`` on all frames.
        ``"minibatch"``: deeptime's ``MiniBatchKMeans`` updates on random
        batches of ``batch_size`` frames.
    max_iter : int, default=None
        ``"kmeans"``: the most Lloyd iterations; ``"minibatch"``: the most
        passes over the data. ``None`` means deeptime's defaults, 500 and 5.
    tol : float, default=1e-5
        Stop when the relative change of the inertia falls below this.
    batch_size : int, default=1000
        Frames per mini-batch (``method="minibatch"`` only).
    random_state : int, numpy.random.Generator or None, default=None
        Seeds the k-means++ initialisation (deeptime's ``fixed_seed``) and the
        mini-batch order, through a local generator.
    n_jobs : int, default=None
        Threads of deeptime's clustering and assignment; ``None`` is 1, ``-1``
        all cores.

    Attributes
    ----------
    model_ : deeptime.clustering.KMeansModel
        The fitted deeptime model.
    cluster_centers_ : ndarray of shape (n_clusters, n_features)
        The cluster centres.
    inertia_ : float
        Sum of squared distances of the frames to their centres.
    converged_ : bool
        Whether the tolerance was reached within ``max_iter``.
    n_iter_ : int
        Lloyd iterations (``"kmeans"``) or passes over the data
        (``"minibatch"``) run.
    n_features_in_ : int
        Number of features seen in ``fit``.
    n_clusters_ : int
        The number of centres used (``n_clusters``, or what ``"auto"`` chose).

    See Also
    --------
    MSMEstimator : Estimates a Markov state model on the discrete trajectories.
    deeptime.clustering.KMeans, deeptime.clustering.MiniBatchKMeans

    Notes
    -----
    Learned slow coordinates (a VAMPNet's singular functions) are whitened:
    a coordinate that singles out a rare state with population :math:`p`
    takes values near :math:`\\sqrt{(1-p)/p}` there (5.7 for alanine
    dipeptide's alpha_L at 3 %), so squared distances inflate the rare basin
    and k-means spends most centres inside it (19 of 20 centres held 3 % of
    the frames, measured). With 100 centres, those states saw a handful of
    transitions each, and the MSM gained a second timescale three to six times
    the true one and posterior intervals reaching hundreds or thousands of nanoseconds;
    with ``"auto"``'s 15 centres both timescales and their intervals agree
    with a (phi, psi) MSM on two independent data sets and ten seeds (see
    the benchmarks page). Hand-made features of many dimensions get up to
    100 centres; pass a number to choose yourself.

    Bit-for-bit reproducibility with a fixed ``random_state`` needs
    ``n_jobs=1``: deeptime's multithreaded k-means++ and Lloyd steps sum in a
    non-deterministic order, so ``n_jobs > 1`` gives slightly different
    centres from run to run. deeptime's ``KMeans`` has no ``n_init``: one
    k-means++ start is used.

    Examples
    --------
    >>> import numpy as np
    >>> from g2v_sklearn import KMeansDiscretizer
    >>> rng = np.random.default_rng(0)
    >>> X = [rng.normal(size=(500, 2)), rng.normal(size=(300, 2))]
    >>> km = KMeansDiscretizer(n_clusters=10, random_state=0).fit(X)
    >>> dtrajs = km.transform(X)
    >>> [d.shape for d in dtrajs], dtrajs[0].dtype
    ([(500,), (300,)], dtype('int32'))
    """

    _parameter_constraints: dict = {
        "n_clusters": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "method": [StrOptions({"kmeans", "minibatch"})],
        "max_iter": [Interval(Integral, 1, None, closed="left"), None],
        "tol": [Interval(Real, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state", np.random.Generator],
        "n_jobs": [Integral, None],
    }

    def __init__(
        self,
        n_clusters="auto",
        *,
        method="kmeans",
        max_iter=None,
        tol=1e-5,
        batch_size=1000,
        random_state=None,
        n_jobs=None,
    ):
        keep_parameters(self, locals())

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = []  # floats in, int32 states out
        tags.non_deterministic = self.n_jobs not in (None, 1)
        return tags

    def _n_threads(self) -> int:
        if self.n_jobs == 0:
            raise ValueError("n_jobs=0 is not a number of threads; use None (1), -1 (all) or k > 0.")
        return int(effective_n_jobs(self.n_jobs))

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None) -> KMeansDiscretizer:
        """Cluster the frames of all trajectories.

        Parameters
        ----------
        X : list of ndarray of shape (n_frames, n_features), or one such ndarray
            Feature trajectories (one array is one trajectory).
        y : None
            Ignored.

        Returns
        -------
        self : KMeansDiscretizer
        """
        trajs, _ = check_feature_trajs(X, f"{type(self).__name__}.fit")
        data = np.concatenate(trajs) if len(trajs) > 1 else trajs[0]
        if self.n_clusters == "auto":
            n_clusters = min(AUTO_MAX_CLUSTERS, AUTO_PER_DIMENSION * (data.shape[1] + 1), len(data))
        elif self.n_clusters > len(data):
            raise ValueError(
                f"n_clusters={self.n_clusters} is more than the {len(data)} frames given to "
                f"{type(self).__name__}.fit; use fewer clusters or more data."
            )
        else:
            n_clusters = int(self.n_clusters)
        n_threads = self._n_threads()
        rng = check_generator(self.random_state)
        seed = int(rng.integers(0, _MAX_KMEANS_SEED))
        if self.method == "kmeans":
            n_iter = None
            estimator = KMeans(
                n_clusters, max_iter=int(self.max_iter or 500), tolerance=float(self.tol),
                init_strategy="kmeans++", fixed_seed=seed, n_jobs=n_threads,
            )
            model = estimator.fit(data).fetch_model()
        else:
            model, n_iter = self._fit_minibatch(data, n_clusters, rng, seed, n_threads)

        self.model_ = model
        self.cluster_centers_ = np.asarray(model.cluster_centers)
        # deeptime's mini-batch inertia is that of the last batch; report all frames'.
        self.inertia_ = float(
            model.inertia if self.method == "kmeans" else model.score(data, n_jobs=n_threads)
        )
        self.converged_ = bool(model.converged)
        self.n_iter_ = int(len(model.inertias) if n_iter is None else n_iter)
        self.n_features_in_ = int(data.shape[1])
        self.n_clusters_ = n_clusters
        return self

    def _fit_minibatch(self, data, n_clusters, rng, seed, n_threads):
        """deeptime's mini-batch updates, driven in batches drawn from our local generator.

        ``MiniBatchKMeans.fit`` shuffles with NumPy's global generator and
        cannot be seeded, so the epochs are run here: k-means++ centres from
        deeptime with our seed, then ``partial_fit`` on each batch of a local
        permutation, stopping once deeptime reports convergence.
        """
        centers = kmeans_plusplus(data, n_clusters, seed=seed, n_jobs=n_threads)
        estimator = MiniBatchKMeans(
            n_clusters, batch_size=int(self.batch_size), tolerance=float(self.tol),
            n_jobs=n_threads, initial_centers=centers,
        )
        n_batches = max(1, len(data) // int(self.batch_size))
        n_epochs, converged = 0, False
        while n_epochs < int(self.max_iter or 5) and not converged:
            n_epochs += 1
            for batch in np.array_split(rng.permutation(len(data)), n_batches):
                converged = estimator.partial_fit(data[np.sort(batch)]).fetch_model().converged
                if converged:
                    break
        return estimator.fetch_model(), n_epochs

    def transform(self, X) -> list[np.ndarray] | np.ndarray:
        """Assign each frame to its nearest cluster centre.

        Parameters
        ----------
        X : list of ndarray of shape (n_frames, n_features), or one such ndarray
            Feature trajectories.

        Returns
        -------
        dtrajs : list of ndarray of shape (n_frames,) and dtype int32, or one such ndarray
            Discrete trajectories, one per input trajectory (one array when
            ``X`` was one array).
        """
        check_is_fitted(self, "model_")
        trajs, single = check_feature_trajs(X, f"{type(self).__name__}.transform")
        if trajs[0].shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {trajs[0].shape[1]} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input."
            )
        n_threads = self._n_threads()
        dtype = self.cluster_centers_.dtype
        dtrajs = [
            np.asarray(self.model_.transform(t.astype(dtype, copy=False), n_jobs=n_threads),
                       dtype=np.int32)
            for t in trajs
        ]
        return dtrajs[0] if single else dtrajs
