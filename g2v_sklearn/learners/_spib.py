"""SPIBEstimator: metastable states by the state predictive information bottleneck."""

from __future__ import annotations

import copy
import itertools
import math
import warnings
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import TransformerMixin

from .._compat import Interval, StrOptions, _fit_context
from .._threads import ThreadBudget
from .._utils import keep_parameters, torch_generator
from .._validation import with_lagged_pair
from ..msm._discretize import KMeansDiscretizer
from ..nn._spib import SPIBModule
from ._learner import TorchLearner
from ._series import FitData, TimeSeries, pair_arrays
from ._spib_states import decode_means, states_score
from ._spib_objective import SpibObjective
from ._history import History
from ._trainer import Trainer
from ._vamp import fit_vamp, vamp_cv_score

__all__ = ["SPIBEstimator"]


# --------------------------------------------------------------------------- fit-time state
def _run_history() -> dict:
    """The history of one SPIB run, before its first round."""
    return {"train": [], "validation": [], "round": [], "best_epochs": [], "n_states": [], "rollbacks": [],
            "states_score": [], "restarts": [], "refused_round": None}


def _offsets(series: TimeSeries) -> np.ndarray:
    """Where each trajectory starts among all frames, trajectories concatenated."""
    return np.concatenate([[0], np.cumsum(series.lengths)[:-1]]).astype(np.int64)


@dataclass(eq=False)
class _RunProgress:
    """One SPIB run (of ``n_init``) between its training rounds, and what it ends with."""

    objective: SpibObjective  # the current labels, the prior's representatives, the noise
    net: SPIBModule
    means: list  # latent means of every frame under ``net``
    labels: list  # the labels the next round trains on (the last refinement's)
    score: float  # VAMP-2 of the labels' states on the training pairs (``states_score``)
    epochs_left: int
    history: dict
    labels_history: list  # the labels before the first round and after each accepted refinement
    previous: tuple | None = None  # (network, latent means) whose decoder gave ``labels``, after a refinement
    converged: bool = False
    round_: int = 0


def accept_refinement(run: _RunProgress, keep: np.ndarray, labels: list, score: float) -> None:
    """A refinement taken: empty states dropped, the new labels and their score recorded."""
    if len(keep) < run.net.n_states:
        run.net.keep_states(keep)
    run.converged = all(np.array_equal(a, b) for a, b in zip(run.labels, labels))
    run.labels, run.score = labels, score
    run.labels_history.append(labels)
    run.history["states_score"].append(score)


def record_round(history: dict, rounds: dict, round_: int, n_states: int) -> None:
    """Append one training round's epochs to the run's history."""
    history["rollbacks"] += [len(history["train"]) + epoch for epoch in rounds["rollbacks"]]
    history["train"] += rounds["train"]
    history["validation"] += rounds["validation"]
    history["round"] += [round_] * len(rounds["train"])
    history["best_epochs"].append(rounds["best_epoch"])
    history["n_states"].append(n_states)
    for key in ("best_weights_file", "resumed_from_epoch"):  # what SaveBestWeights records, per round
        history.setdefault(key, []).append(rounds.get(key))


def _pooled_invariants(series: TimeSeries, chunk: int = 4096) -> list[np.ndarray]:
    """Per-frame invariant summaries for the initial k-means, one array per trajectory.

    Arrays: the features themselves. Tokens: the mean over residues of the
    scalar row concatenated with the norms of the vector channels, (n, 2 H).
    """
    if series.kind == "array":
        return [np.asarray(x, dtype=np.float64) for x in series.items]
    out = []
    for item in series.items:
        rows = []
        for start in range(0, len(item), chunk):
            block = np.asarray(item.features[start:start + chunk], dtype=np.float64)  # (n, R, 4, H)
            norms = np.sqrt((block[:, :, 1:] ** 2).sum(axis=2))
            rows.append(np.concatenate([block[:, :, 0], norms], axis=-1).mean(axis=1))
        out.append(np.concatenate(rows))
    return out


def _integer_labels(labels: np.ndarray, name: str) -> np.ndarray:
    """``labels`` as int64 when they are integers (of any dtype, object included)."""
    values = labels
    if labels.dtype.kind in "fO":
        try:
            values = labels.astype(np.float64)
        except (TypeError, ValueError):
            values = None
        if values is not None and not (np.all(np.isfinite(values)) and np.all(values == np.round(values))):
            values = None
    if values is None or values.dtype.kind not in "iubf":
        raise ValueError(
            f"Unknown label type: {name} must hold integer state labels; got dtype {labels.dtype}"
            f"{' with non-integer values' if labels.dtype.kind in 'fO' else ''}."
        )
    return values.astype(np.int64)


@dataclass(frozen=True)
class InitialLabels:
    """Where a fit's first labels come from: ``y``, or k-means into ``n_states`` clusters of the
    leading ``init_components`` TICA components (at ``lagtime``) of the pooled invariants."""

    n_states: int
    init_components: int | None
    lagtime: int
    who: str

    def initial(self, series: TimeSeries, y, rng) -> list[np.ndarray]:
        """Initial state labels 0..K-1 per trajectory, from ``y`` or k-means."""
        who = self.who
        lengths = series.lengths
        if y is None:
            features = self.features(series)
            n_clusters = min(int(self.n_states), sum(lengths))
            kmeans = KMeansDiscretizer(n_clusters, random_state=int(rng.integers(0, 2**31 - 1)))
            raw = [np.asarray(d, dtype=np.int64) for d in kmeans.fit(features).transform(features)]
            source = f"k-means with n_states={self.n_states} found"
        else:
            raw = self.check(y, series)
            source = "y has"
        values, inverse = np.unique(np.concatenate(raw), return_inverse=True)
        if len(values) < 2:
            raise ValueError(
                f"{who} needs at least two initial states, but {source} only {len(values)} distinct "
                f"state{'s' if len(values) != 1 else ''} (are all frames alike?)."
            )
        return np.split(inverse.astype(np.int64), np.cumsum(lengths)[:-1])

    def features(self, series: TimeSeries) -> list[np.ndarray]:
        """Standardised pooled invariants, projected on their leading TICA components."""
        from deeptime.decomposition import TICA
        from deeptime.numeric import ZeroRankError

        features = _pooled_invariants(series)
        stacked = np.concatenate(features)
        mean, std = stacked.mean(axis=0), stacked.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        features = [(f - mean) / std for f in features]
        if self.init_components is None:
            return features
        # fit has warned already about the trajectories this skips
        long_enough = [features[i] for i in with_lagged_pair([len(f) for f in features], self.lagtime)]
        try:
            tica = TICA(lagtime=int(self.lagtime), dim=int(self.init_components)).fit(long_enough)
        except ZeroRankError:
            return features  # constant features: k-means then finds one state, and fit says so
        model = tica.fetch_model()
        return [model.transform(f) for f in features]

    def check(self, y, series: TimeSeries) -> list[np.ndarray]:
        """``y`` as int64 label arrays, one per trajectory, after checking their shapes and type."""
        who = self.who
        lengths = series.lengths
        if series.single:
            ys = [y]
        elif isinstance(y, (list, tuple)):
            ys = list(y)
        else:
            raise TypeError(
                f"y must be a list of integer label arrays, one per trajectory; got {type(y).__name__}."
            )
        if len(ys) != len(lengths):
            raise ValueError(
                f"y has {len(ys)} label arrays, but X has {len(lengths)} trajectories; {who} needs one "
                f"label per frame of every trajectory."
            )
        out = []
        for i, (labels, n) in enumerate(zip(ys, lengths)):
            labels = np.asarray(labels)
            name = "y" if series.single else f"y[{i}]"
            if labels.ndim != 1 or len(labels) != n:
                raise ValueError(
                    f"{name} has shape {labels.shape}, but trajectory {i} has {n} frames; {who} needs "
                    f"one label per frame, shape ({n},)."
                )
            out.append(_integer_labels(labels, name))
        return out


#: A refinement is refused when its states keep less than this share of the slow singular values
#: (squared, ``score_k`` of them) that the states before it resolved.
_KEEP_SLOW = 0.5
#: ... when those states resolve anything slower than the lag time: an indicator whose process
#: relaxes in one lag time has singular value exp(-1), so exp(-2) squared.
_SLOW_FLOOR = math.exp(-2.0)
#: Fresh starts of a run whose first round learned nothing (its refinement refused).
_MAX_RESTARTS = 2


# --------------------------------------------------------------------------- estimator
class SPIBEstimator(TransformerMixin, TorchLearner):
    """Metastable states and a low-dimensional latent by the State Predictive Information Bottleneck.

    An encoder maps each frame :math:`x_t` to a Gaussian latent
    :math:`q(z \\mid x_t)` of dimension ``z_dim``; a linear decoder predicts
    from the latent the state label at :math:`t + \\tau` (``lagtime``); the
    latent is regularised towards a VampPrior. The labels themselves are
    learned: starting from k-means clusters of the input's slow (TICA)
    directions (or from ``y``), every frame is relabelled, whenever training
    has settled, by the decoder's most likely
    state at its latent mean, and training continues on the new labels. States
    left empty are dropped, so the number of metastable states found
    (``n_states_``) is an outcome, not an input.

    The encoder is the network family of :class:`VAMPNetEstimator`: on token
    trajectories (from :class:`GeomEmbedder`, optionally through a
    :class:`TokenMerger`, whose merging module is trained end to end) the
    merger -> invariant projection -> transformer token mixer -> pooling ->
    MLP head; on 2-D feature arrays an MLP. Its head has ``2 * z_dim``
    outputs, the latent mean and log-variance.

    Parameters
    ----------
    lagtime : int, default=1
        Lag time :math:`\\tau` in frames: the decoder predicts the state
        ``lagtime`` frames ahead.
    z_dim : int, default=2
        Latent dimension.
    n_states : int, default=10
        Initial k-means clusters when ``y`` is not given (at most the number
        of frames). Refinement merges them into fewer metastable states.
    init_components : int or None, default=4
        The initial k-means runs on this many leading TICA components (at
        ``lagtime``) of the standardised pooled invariant features: for
        tokens, the mean over residues of the scalar row and the vector
        norms; for arrays, the features. ``None`` clusters the standardised
        pooled features themselves.
    beta : float, default=1e-3
        Weight of the KL term (the information bottleneck).
    refinements : int, default=10
        Label refinements: after the first training round, training
        continues on refined labels at most this many times; it stops earlier
        once a refinement changes no label. The reported states are always
        the final decoder's.
    tolerance : float, default=5e-3
        A training round has settled once its loss has not improved by more
        than this fraction of its best value for ``patience`` epochs; then
        the labels are refined.
    transform_output : {"latent", "states"}, default="latent"
        What :meth:`transform` returns: the latent means, or the state
        trajectories of :meth:`predict` (to feed an MSM in a Pipeline).
    score_k : int, default=1
        Singular functions (besides the constant one) in :meth:`score`.
    hidden_layer_sizes : tuple of int, default=(64, 64)
        MLP encoder on 2-D arrays.
    d_model, n_heads, n_layers : int, default=64, 4, 2
        Transformer encoder on tokens.
    pooling : {"cls", "mean"}, default="cls"
        How the transformer's fragment tokens become one vector per frame:
        a learned class token, or the mean over tokens.
    mixer : {"invariant", "equivariant"}, default="invariant"
        The transformer over tokens. ``"invariant"`` mixes invariant
        embeddings (scalars and vector norms); ``"equivariant"`` carries the
        vector channels through attention (weights from invariants, vectors
        mixed only by them) and a gated feed-forward, so that it sees how
        tokens are oriented relative to one another, which per-token
        invariants cannot show. Both pool scalars at the end; ignored for
        feature arrays.
    dropout : float, default=0.0
        Dropout rate in the encoder.
    optimizer : {"adamw", "adam", "sgd"}, default="adamw"
        Optimizer (``"sgd"`` with momentum 0.9).
    lr : float, default=1e-3
        Learning rate.
    weight_decay : float, default=0.0
        Weight decay of the optimizer.
    batch_size : int, default=256
        Time-lagged pairs per step.
    max_epochs : int, default=50
        Most epochs of one run (of ``n_init``), over every training round
        and restart: when they are spent, the labels are refined one last
        time and the run ends.
    patience : int, default=5
        Epochs without an improvement (see ``tolerance``) of the validation
        loss, or of the training loss without validation, that end a
        training round; the round's best weights are restored. ``None``
        never settles: one round uses all ``max_epochs``.
    validation_fraction : float, default=0.0
        Share of the data held out for validation (see
        ``validation_split``). With 0 (the default), training rounds are
        judged by the loss of the weights at the end of each epoch on the
        training pairs. A rare state is visited a handful of times: a
        held-out block holds few or none of its frames, its loss is
        dominated by the common states, and ending a round on it kept
        the weights of the first epoch, whose decoder had not yet learned
        the rare state, so the refinement merged it away (on
        ../shared/data/ala2 at 10 ps a frame, seeds 0 and 1 ended with one
        state with 0.2; see docs/benchmarks.md).
    validation_split : {"blocks", "trajectories"}, default="blocks"
        The final block of every trajectory (after a gap of ``lagtime``
        frames) or whole trajectories, as in :class:`VAMPNetEstimator`.
    n_init : int, default=1
        Independent initialisations (initial k-means, network, data
        order), as in :class:`~sklearn.cluster.KMeans`: each is trained
        with its refinements, and the one whose final states have the
        highest VAMP-2 on the training pairs (``score_k`` singular values
        of the states' indicator functions) is kept; every run's history
        is in ``history_["runs"]``.
    lr_schedule : {"constant", "cosine"}, default="constant"
        Learning rate within each training round (every round starts a new
        optimizer).
    warmup : float, default=0.0
        Share of a round's planned steps of linear warm-up.
    max_grad_norm : float or None, default=None
        Gradient-norm clipping (``None``: none).
    memory_budget : "auto" or float, default="auto"
        Bytes a step's activations may take before gradient checkpointing
        is switched on, as in :class:`VAMPNetEstimator`.
    compile : bool, default=False
        Train the encoder through ``torch.compile`` (falls back with a
        warning).
    callbacks : list of Callback or None, default=None
        Training callbacks; they run in every training round
        (``context.run`` numbers the rounds trained, restarts and ``n_init``
        runs included, in order, so that :class:`SaveBestWeights` keeps a
        file for each).
    precision : {"float32", "bfloat16"}, default="float32"
        ``"bfloat16"`` runs the network under autocast where the device
        computes it natively (else float32, with a warning); the loss is
        always float64.
    device : str or torch.device, default="auto"
        ``"auto"`` is CUDA when available, else CPU.
    progress : bool, default=True
        Show a progress bar over epochs.
    random_state : int, numpy.random.Generator or None, default=None
        Drives the initial k-means, the network initialisation, the data
        order and the latent samples, through local generators.

    Attributes
    ----------
    module_ : SPIBModule
        The trained encoder (``module_.lobe``), decoder and prior weights.
    n_states_ : int
        Metastable states found.
    labels_ : ndarray of shape (n_frames,) of int32, or a list of them
        Final state of every training frame (equal to ``predict(X)``).
    labels_history_ : list
        The labels (like ``labels_``) before the first training round and
        after each round: ``labels_history_[0]`` are the initial labels.
    n_refinements_ : int
        Training rounds run (each ended in a relabelling).
    converged_ : bool
        Whether the last relabelling changed no label.
    representatives_ : ndarray of shape (``n_states_``, 2)
        (trajectory, frame) of each state's prior representative: the
        training frame nearest the state's mean latent.
    state_weights_ : ndarray of shape (``n_states_``,)
        Learned mixture weights of the prior.
    vamp_ : VampDecomposition or None
        VAMP decomposition of the state probabilities on the training pairs,
        for :meth:`score` (None when a single state was found).
    history_ : History
        The record every learner fills (see :class:`History`), with
        ``measure`` ``"SPIB"``: ``train`` and ``validation`` scores (minus
        the loss) per epoch, ``round`` (the training round of each epoch),
        ``best_epochs`` (per round trained, counted within the round; a
        restarted first round and a refused round have entries too),
        ``best_epoch`` (the kept weights' epoch, counted over all rounds:
        the last round's best, or the best of the round before a refused
        one); then ``n_states`` (before each round trained),
        ``rollbacks`` (epochs, counted over all rounds, after which a
        non-finite loss sent training back to the best weights at half the
        learning rate), ``states_score`` (the VAMP-2 of the initial states
        and of the states after each accepted refinement, as in
        ``n_init``), ``restarts`` (the epochs, counted over the run, at which
        a first round that learned nothing started again with fresh
        weights), ``refused_round`` (the round whose refinement was refused,
        or None), ``best_run`` and ``runs`` (the history of every
        ``n_init`` run), all of the kept run. With :class:`SaveBestWeights`,
        ``best_weights_file`` lists the file of each round trained (every
        round saves its own best weights), and, when a round resumed from its
        file, ``resumed_from_epoch`` lists the epoch each round resumed
        after (None for a round that started afresh).
    timestep_ : float or None
        Time between frames (ps), when the input carries it.
    n_features_in_ : int
        Features of 2-D input.

    See Also
    --------
    VAMPNetEstimator : slow coordinates from the same network family.
    MSMEstimator : a Markov state model on the states of :meth:`predict`.
    TokenMerger : the merging step trained end to end with this learner.

    Notes
    -----
    With labels :math:`y`, encoder :math:`q(z \\mid x) = \\mathcal N(\\mu(x),
    \\mathrm{diag}\\,\\sigma^2(x))`, decoder :math:`q(y \\mid z)` and the VampPrior
    :math:`r(z) = \\sum_k \\omega_k\\, q(z \\mid u_k)` over one representative
    frame :math:`u_k` per state, the loss minimised over time-lagged pairs is

    .. math::
        \\mathcal L = \\frac{1}{\\sum_t w_t} \\sum_t w_t \\left(
            -\\log q(y_{t+\\tau} \\mid z_t)
            + \\beta \\left[\\log q(z_t \\mid x_t) - \\log r(z_t)\\right]\\right),
        \\qquad z_t = \\mu(x_t) + \\sigma(x_t) \\odot \\epsilon_t,

    with :math:`w_t` the frame weights (``sample_weight``, all ones by
    default) and the KL divergence estimated with the one sampled
    :math:`z_t`. The representatives are frames, not free parameters (a token
    frame's fragment graph comes from its positions): at the start of every
    round, each state's is the training frame nearest (in the latent) to the
    state's mean latent, and the mixture weights restart from the state
    populations. The representatives' encoder Gaussians enter the prior
    without gradient: the prior is a target for the frames' latents, learned
    only through its weights. (A gradient through representative frames lets
    the KL term drag a rare state's frames, with its representative, into a
    common state before the decoder has learned to tell them apart; on
    alanine dipeptide that collapsed the few-percent alpha_L basin for some
    seeds.) Relabelling sets :math:`y_t = \\arg\\max_k q(k \\mid \\mu(x_t))`;
    one training round lasts until the loss has settled (``tolerance``,
    ``patience``), and all rounds together at most ``max_epochs`` epochs.

    Relabelling merges states that the decoder cannot tell apart, which is
    what it is for, but a round whose training went wrong (a fresh optimizer
    can throw a trained network off) leaves a decoder that predicts little
    more than the state populations, and its relabelling would merge a rare
    metastable state into a common one. So every refinement is checked: the
    new states must keep at least half of the slow
    dynamics that the states before them resolved (when those resolve a
    process slower than the lag time, :math:`\\sum_{i \\le k} \\sigma_i^2(\\text{old}) > e^{-2}`),

    .. math::
        \\sum_{i \\le k} \\sigma_i^2(\\text{new}) \\ge \\tfrac12 \\sum_{i \\le k}
        \\sigma_i^2(\\text{old}),

    with :math:`\\sigma_i` the singular values of the VAMP decomposition of
    the states' indicator functions at ``lagtime`` on the training pairs and
    :math:`k` = ``score_k``. Merging states that interconvert fast removes
    small singular values and passes; merging a metastable state away
    removes a large one and is refused: the fit then ends with the previous
    round's network and states (``history_["refused_round"]``). A refusal
    after the first round means the network has learned nothing yet (its
    decoder predicts the state populations: a rare state's few frames in a
    batch can leave its gradient too weak to leave that plateau), and the
    first round starts again with fresh weights, at most twice and within
    ``max_epochs`` (``history_["restarts"]``). On alanine dipeptide
    without these checks, one run in ten on the shipped data and three in
    ten on independent trajectories at 10 ps a frame lost the alpha_L state
    (1-3 % of the frames); with them, none of ten on either (see
    docs/benchmarks.md).

    The initial k-means runs on the leading ``init_components`` TICA
    components of the pooled invariants because k-means on the raw features
    spends its clusters on the largest (fast) fluctuations: labels that
    nothing predicts at the lag time, which the first refinement merges
    into a single state. A rare metastable state needs its own initial
    cluster(s) to survive refinement.

    :meth:`score` is a cross-validated VAMP-2 of the state probabilities
    :math:`q(k \\mid \\mu(x_t))` (:meth:`predict_proba`) at ``lagtime``: the
    singular functions of a VAMP decomposition fitted on the training
    probabilities, evaluated with the covariances of ``X`` (Wu and Noe), with
    ``score_k`` of them (capped at the rank, ``n_states_ - 1``), plus 1 for
    the constant function. A fixed ``score_k`` keeps models with different
    numbers of states comparable; compare at one lag time only.

    References
    ----------
    .. [1] Wang, Tiwary, "State predictive information bottleneck",
       J. Chem. Phys. 154, 134111 (2021).
    .. [2] Tomczak, Welling, "VAE with a VampPrior", AISTATS (2018).
    .. [3] Wu, Noe, "Variational approach for learning Markov processes from
       time series data", J. Nonlinear Sci. 30, 23 (2020).

    Examples
    --------
    >>> import numpy as np
    >>> from g2v_sklearn import SPIBEstimator
    >>> rng = np.random.default_rng(0)
    >>> side = np.repeat(rng.integers(0, 2, size=20), 25)  # a slow two-state switch
    >>> x = rng.normal(size=(500, 3)) * 0.3 + side[:, None]
    >>> est = SPIBEstimator(lagtime=5, n_states=4, max_epochs=5, progress=False,
    ...                     random_state=0).fit(x)
    >>> est.transform(x).shape, est.predict(x).shape
    ((500, 2), (500,))
    >>> est.predict_proba(x).shape == (500, est.n_states_)
    True
    """

    _HISTORY_MEASURE = "SPIB"

    _parameter_constraints: dict = {
        **TorchLearner._common_constraints,
        "z_dim": [Interval(Integral, 1, None, closed="left")],
        "n_states": [Interval(Integral, 2, None, closed="left")],
        "beta": [Interval(Real, 0, None, closed="left")],
        "refinements": [Interval(Integral, 0, None, closed="left")],
        "tolerance": [Interval(Real, 0, None, closed="left")],
        "init_components": [Interval(Integral, 1, None, closed="left"), None],
        "transform_output": [StrOptions({"latent", "states"})],
        "score_k": [Interval(Integral, 1, None, closed="left")],
    }

    #: SPIB has ``n_init`` since 0.1.0.dev0: a pickle made without it unpickles with one run.
    _ADDED_PARAMETERS = {**TorchLearner._ADDED_PARAMETERS, "n_init": 1}

    def __init__(self, lagtime=1, *, z_dim=2, n_states=10, init_components=4, beta=1e-3, refinements=10,
                 tolerance=5e-3, transform_output="latent", score_k=1, hidden_layer_sizes=(64, 64),
                 d_model=64, n_heads=4, n_layers=2, pooling="cls", mixer="invariant", dropout=0.0, optimizer="adamw", lr=1e-3,
                 weight_decay=0.0, batch_size=256, max_epochs=50, patience=5, validation_fraction=0.0,
                 validation_split="blocks", n_init=1, lr_schedule="constant", warmup=0.0, max_grad_norm=None,
                 memory_budget="auto", compile=False, callbacks=None, precision="float32", device="auto",
                 progress=True, random_state=None):
        keep_parameters(self, locals())

    # ------------------------------------------------------------------ fit
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, sample_weight=None):
        """Learn the latent, the decoder and the metastable states of ``X``.

        Each of the ``n_init`` runs initialises labels and a network, then
        trains rounds, each followed by a label refinement (see Notes); the
        run whose final states resolve the most slow dynamics is kept.

        Parameters
        ----------
        X : ndarray of shape (n_frames, n_features), list of such arrays, or list of token trajectories
            One array is one trajectory; a list holds one entry per trajectory.
        y : array-like of shape (n_frames,) of int, list of such, or None, default=None
            Initial state labels, one per frame (one array per trajectory);
            ``None`` clusters the frames with k-means into ``n_states``.
        sample_weight : array-like of shape (n_frames,) or list of such, default=None
            Per-frame weights (e.g. from a biased simulation); a pair is
            weighted by its first frame.

        Returns
        -------
        self : SPIBEstimator
        """
        # with given labels, constant features are a legitimate one-state answer (reported as such)
        data, rng = self._fit_data(X, sample_weight, constant_is_an_error=y is None)
        best, histories = None, []
        attempts = itertools.count()  # every training round of every run, numbered in order
        with ThreadBudget(device=data.device) as threads:
            for run in range(self.n_init):
                outcome = self._initialize(data, y, rng)
                while outcome.round_ <= self.refinements:
                    if not self._train_round(outcome, data, rng, threads, attempts):
                        break
                self._end_run(outcome, data)
                histories.append(outcome.history)
                if best is None or outcome.score > best.score:
                    best, best_run = outcome, run
        self._rng = rng
        self._keep_run(best, data, History.from_mapping({**best.history, "best_run": best_run, "runs": histories},
                                                        measure="SPIB"))
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None, sample_weight=None):
        """One epoch over all time-lagged pairs of ``X``, then one label refinement.

        The first call (or the first after a refit) initialises labels and
        network as :meth:`fit` does, from ``y`` or k-means on ``X``. Every
        call then trains one epoch on every pair of ``X`` (no validation
        split, no early stopping, a constant learning rate ``lr``, a new
        optimizer) against the labels the decoder gave ``X`` before the
        epoch (the initial labels on the first call), with the prior's
        representatives and weights taken from ``X``; then it refines the
        labels once: ``labels_`` are the decoder's states of ``X`` after the
        epoch, and the next call trains against its own ``X``'s states under
        the decoder. States that no frame of ``X`` falls into are dropped,
        as in :meth:`fit`'s refinements, so each piece should visit every
        state. Refinements are not checked against the states before them
        (no restarts, no refusals: those compare rounds of one fit).
        ``n_refinements_`` counts the calls; the epoch is appended to
        ``history_`` as a round of its own.

        Parameters
        ----------
        X : ndarray of shape (n_frames, n_features), list of such arrays, or list of token trajectories
            One array is one trajectory; a list holds one entry per trajectory.
        y : array-like of shape (n_frames,) of int, list of such, or None, default=None
            Initial state labels of the first call (ignored after it).
        sample_weight : array-like of shape (n_frames,) or list of such, default=None
            Per-frame weights; a pair is weighted by its first frame.

        Returns
        -------
        self : SPIBEstimator

        Examples
        --------
        >>> import numpy as np
        >>> from g2v_sklearn import SPIBEstimator
        >>> rng = np.random.default_rng(0)
        >>> side = np.repeat(rng.integers(0, 2, size=40), 25)  # a slow two-state switch
        >>> x = rng.normal(size=(1000, 3)) * 0.3 + side[:, None]
        >>> est = SPIBEstimator(lagtime=5, n_states=4, progress=False, random_state=0)
        >>> for piece in (x[:500], x[500:]):
        ...     est = est.partial_fit(piece)
        >>> est.n_refinements_, est.predict(x).shape
        (2, (1000,))
        """
        first = not hasattr(self, "module_")
        data, rng = self._fit_data(X, sample_weight, reset=first, split=False,
                                   constant_is_an_error=first and y is None)
        refinements = 0 if first else self.n_refinements_
        history = {} if first else self.history_.progress()
        if first:
            self._rng = rng
        run = self._initialize(data, y, rng, epochs=1) if first else self._continued_run(data, history)
        with ThreadBudget(device=data.device) as threads:
            self._partial_round(run, data, threads)
        self._end_run(run, data)
        self._keep_run(run, data, History.from_mapping({**run.history, "best_run": 0, "runs": [run.history]},
                                                       measure="SPIB"))
        self.n_refinements_ = refinements + 1
        return self

    def _initialize(self, data: FitData, y, rng, *, epochs: int | None = None) -> _RunProgress:
        """A run's start: initial labels (``y`` or k-means), the objective's noise, a fresh network."""
        labels = data.ranks.broadcast_object(self._labelling().initial(data.series, y, rng))  # rank 0's, to the frame
        objective = SpibObjective(self._network_spec(), self._inference(), self.z_dim, self.beta, self.batch_size,
                                  offsets=_offsets(data.series), generator=torch_generator(rng, data.device),
                                  validation_seed=int(rng.integers(0, 2**63 - 1)))
        objective.set_labels(labels, data.device)
        score = data.ranks.broadcast_object(states_score(self.lagtime, self.score_k, labels, data.train, data.weights))  # alike on every rank
        net, means = self._new_network(objective, data, rng)
        run = _RunProgress(objective, net, means, labels, score, int(epochs or self.max_epochs),
                           history=_run_history(), labels_history=[labels])
        run.history["states_score"].append(score)
        return run

    def _continued_run(self, data: FitData, history: dict) -> _RunProgress:
        """A warm :meth:`partial_fit`'s start: ``X``'s states under the current decoder."""
        net = self.module_.to(data.device)
        means = self._latent_means(net, data.series, data.device, data.ranks)
        keep, labels = self._relabelled(net, means, data.device)
        if len(keep) < net.n_states:
            net.keep_states(keep)
        objective = SpibObjective(self._network_spec(), self._inference(), self.z_dim, self.beta, self.batch_size,
                                  offsets=_offsets(data.series), generator=torch_generator(self._rng, data.device),
                                  validation_seed=int(self._rng.integers(0, 2**63 - 1)))
        objective.set_labels(labels, data.device)
        score = data.ranks.broadcast_object(states_score(self.lagtime, self.score_k, labels, data.train, data.weights))
        return _RunProgress(objective, net, means, labels, score, 1, history=history, labels_history=[labels])

    def _train_round(self, run: _RunProgress, data: FitData, rng, threads, attempts) -> bool:
        """One training round of a run and its checked refinement; whether another round follows.

        Every refinement is checked (:func:`~g2v_sklearn.learners._spib_states.states_score`): one that loses the
        slow processes the states before it resolved is refused. After the
        first round that means the network learned nothing yet (its decoder
        predicts the populations), and the round starts again with fresh
        weights, at most ``_MAX_RESTARTS`` times while epochs are left;
        after a later round, the run ends with the network and the labels of
        the round before, whose decoder gave those labels. Each round trained
        takes the next number of ``attempts`` as its ``context.run``.
        """
        self._reset_prior(run, data)
        run.objective.set_labels(run.labels, data.device)
        trainer = Trainer(self._train_config(), run.objective, self._callback_list(), owner=self)
        rounds = trainer.fit(trainer.start(run.net, data, rng, max_epochs=run.epochs_left, run=next(attempts),
                                           threads=threads))
        record_round(run.history, rounds, run.round_, run.net.n_states)
        run.epochs_left -= len(rounds["train"])
        run.means = self._latent_means(run.net, data.series, data.device, data.ranks)  # alike on every rank
        keep, new_labels = self._relabelled(run.net, run.means, data.device)
        new_score = data.ranks.broadcast_object(states_score(self.lagtime, self.score_k, new_labels, data.train, data.weights))
        if run.score - 1.0 > _SLOW_FLOOR and new_score - 1.0 < _KEEP_SLOW * (run.score - 1.0):
            if run.previous is not None:
                run.net, run.means = run.previous
                run.history["refused_round"] = run.round_
                return False
            if len(run.history["restarts"]) < _MAX_RESTARTS and run.epochs_left >= 1:
                run.history["restarts"].append(len(run.history["train"]))
                run.net, run.means = self._new_network(run.objective, data, rng)
                return True
        accept_refinement(run, keep, new_labels, new_score)
        if run.converged or run.epochs_left < 1:
            return False
        run.previous = (copy.deepcopy(run.net), run.means)
        run.round_ += 1
        return True

    def _partial_round(self, run: _RunProgress, data: FitData, threads) -> None:
        """:meth:`partial_fit`'s epoch and its (unchecked) refinement."""
        self._reset_prior(run, data)
        run.objective.set_labels(run.labels, data.device)
        config = self._train_config(max_epochs=1, lr_schedule="constant", warmup=0.0)
        trainer = Trainer(config, run.objective, self._callback_list(early_stopping=False), owner=self)
        rounds = trainer.fit(trainer.start(run.net, data, self._rng, max_epochs=1, threads=threads))
        record_round(run.history, rounds, len(run.history["best_epochs"]), run.net.n_states)
        run.means = self._latent_means(run.net, data.series, data.device, data.ranks)
        keep, new_labels = self._relabelled(run.net, run.means, data.device)
        accept_refinement(run, keep, new_labels, states_score(self.lagtime, self.score_k, new_labels, data.train, data.weights))

    def _end_run(self, run: _RunProgress, data: FitData) -> None:
        """The final states' representatives; SaveBestWeights' records only where it said something."""
        self._reset_prior(run, data, weights_too=False)
        for key in ("best_weights_file", "resumed_from_epoch"):
            if key in run.history and not any(value is not None for value in run.history[key]):
                del run.history[key]

    def _keep_run(self, run: _RunProgress, data: FitData, history: History) -> None:
        """The fitted attributes from the run kept."""
        net = run.net
        net.eval()
        self.module_ = net
        self.n_states_ = net.n_states
        self.converged_ = bool(run.converged)
        self.n_refinements_ = len(run.labels_history) - 1
        self.history_ = history
        self.representatives_ = run.objective.representatives
        with torch.no_grad():
            self.state_weights_ = net.prior_log_weights().exp().double().cpu().numpy()
        self.timestep_ = data.series.timestep
        unpack = (lambda ls: ls[0].astype(np.int32)) if data.series.single else (
            lambda ls: [l.astype(np.int32) for l in ls])
        self.labels_history_ = [unpack(ls) for ls in run.labels_history]
        self.labels_ = self.labels_history_[-1]
        if self.n_states_ < 2:
            runs = f" in all {self.n_init} initialisations" if self.n_init > 1 else ""
            warnings.warn(
                f"{type(self).__name__} merged everything into a single state{runs}; try a shorter "
                f"lagtime, a smaller beta, more initial states or n_init > 1.", UserWarning, stacklevel=3,
            )
        self._fit_score_model(data.series, data.pairs, run.means, data.weights, data.device)

    def _labelling(self) -> InitialLabels:
        return InitialLabels(self.n_states, self.init_components, self.lagtime, type(self).__name__)

    def _new_network(self, objective: SpibObjective, data: FitData, rng) -> tuple[SPIBModule, list[np.ndarray]]:
        """A freshly initialised network for the objective's states, and its latent means."""
        net = objective.build(data, rng)
        self._plan_memory(net, data)
        return net, self._latent_means(net, data.series, data.device, data.ranks)

    def _reset_prior(self, run: _RunProgress, data: FitData, *, weights_too: bool = True) -> None:
        """Representatives: per state, the training frame nearest the state's mean latent; and
        (``weights_too``) the prior's weights from the states' populations."""
        net, labels, offsets = run.net, run.labels, run.objective.offsets
        flat_means = np.concatenate(run.means)
        flat_labels = np.concatenate(labels)
        candidates = np.zeros(len(flat_labels), dtype=bool)  # training frames may represent states
        candidates[offsets[data.train[:, 0]] + data.train[:, 1]] = True
        frame_weights = np.concatenate(data.weights) if data.weights is not None else np.ones(len(flat_labels))
        traj_of = np.repeat(np.arange(len(labels)), [len(l) for l in labels])
        reps = np.zeros((net.n_states, 2), dtype=np.int64)
        populations = np.zeros(net.n_states)
        for k in range(net.n_states):
            members = flat_labels == k
            w = frame_weights[members]
            populations[k] = w.sum()
            center = np.average(flat_means[members], axis=0, weights=w if w.sum() > 0 else None)
            pool = np.flatnonzero(members & candidates)
            if len(pool) == 0:
                pool = np.flatnonzero(members)
            best = pool[np.argmin(((flat_means[pool] - center) ** 2).sum(axis=1))]
            reps[k] = traj_of[best], best - offsets[traj_of[best]]
        run.objective.representatives = reps
        if weights_too:
            populations = np.maximum(populations / max(populations.sum(), 1e-300), 1e-6)
            with torch.no_grad():
                net.prior_logits.copy_(torch.as_tensor(np.log(populations), dtype=net.prior_logits.dtype))

    def _latent_means(self, net, series, device, ranks=None) -> list[np.ndarray]:
        return [o[:, : self.z_dim] for o in self._outputs(net, series, device, ranks=ranks)]

    def _relabelled(self, net, means, device) -> tuple[np.ndarray, list[np.ndarray]]:
        """(the states that keep frames, every frame's most likely state at its latent mean
        among them, renumbered 0..len(keep)-1)."""
        raw = [decode_means(net, m, device).argmax(axis=1) for m in means]
        counts = np.bincount(np.concatenate(raw), minlength=net.n_states)
        keep = np.flatnonzero(counts > 0)
        remap = np.full(len(counts), -1, dtype=np.int64)
        remap[keep] = np.arange(len(keep))
        return keep, [remap[r] for r in raw]

    def _fit_score_model(self, series, pairs, means, weights, device):
        """VAMP decomposition of the training state probabilities, for :meth:`score`."""
        self.vamp_ = None
        if self.n_states_ < 2:
            return
        probs = [decode_means(self.module_, m, device) for m in means]
        x, y, w = pair_arrays(probs, pairs, self.lagtime, weights)
        try:
            self.vamp_ = fit_vamp(x, y, weights=w)
        except ValueError:  # (numerically) constant probabilities: nothing to score
            self.vamp_ = None

    # ------------------------------------------------------------------ use
    def _probabilities(self, X) -> tuple[list[np.ndarray], list[np.ndarray], TimeSeries]:
        series, net, device = self._fitted_input(X)
        means = self._latent_means(net, series, device)
        return means, [decode_means(net, m, device) for m in means], series

    def predict_proba(self, X):
        """Probabilities of the states ``lagtime`` frames ahead, at each frame's latent mean.

        Parameters
        ----------
        X : ndarray of shape (n_frames, n_features), list of such arrays, or list of token trajectories
            Input like that of :meth:`fit`.

        Returns
        -------
        P : ndarray of shape (n_frames, ``n_states_``), or a list of them
            One array for one array in, a list for a list in; rows sum to 1.
        """
        _, probs, series = self._probabilities(X)
        return probs[0] if series.single else probs

    def predict(self, X):
        """Metastable-state trajectories: the most likely state at each frame's latent mean.

        Parameters
        ----------
        X : ndarray of shape (n_frames, n_features), list of such arrays, or list of token trajectories
            Input like that of :meth:`fit`.

        Returns
        -------
        states : ndarray of shape (n_frames,) of int32, or a list of them
            States numbered 0 .. ``n_states_`` - 1; feed them to
            :class:`MSMEstimator`.
        """
        _, probs, series = self._probabilities(X)
        states = [p.argmax(axis=1).astype(np.int32) for p in probs]
        return states[0] if series.single else states

    def transform(self, X):
        """Latent means, or the state trajectories with ``transform_output="states"``.

        Parameters
        ----------
        X : ndarray of shape (n_frames, n_features), list of such arrays, or list of token trajectories
            Input like that of :meth:`fit`.

        Returns
        -------
        Y : ndarray of shape (n_frames, z_dim) or (n_frames,) of int32, or a list of them
            One array for one array in, a list for a list in.
        """
        if self.transform_output == "states":
            return self.predict(X)
        series, net, device = self._fitted_input(X)
        means = self._latent_means(net, series, device)
        return means[0] if series.single else means

    def score(self, X, y=None):
        """Cross-validated VAMP-2 of the state probabilities of ``X`` at ``lagtime``.

        The training model's singular functions of the state probabilities,
        evaluated with the covariances of ``X`` (Wu and Noe), ``score_k`` of
        them (at most ``n_states_ - 1``), plus 1 for the constant function.
        Higher is better; only comparable between models at the same lag
        time. A model with a single state scores 1.

        Parameters
        ----------
        X : ndarray of shape (n_frames, n_features), list of such arrays, or list of token trajectories
            Input like that of :meth:`fit`.
        y : None
            Ignored.

        Returns
        -------
        score : float
        """
        _, probs, series = self._probabilities(X)
        if self.vamp_ is None:
            return 1.0
        x, y = self._lagged_values(probs, series)
        k = min(self.score_k, self.vamp_.n_components)
        return float(vamp_cv_score(self.vamp_, x, y, k=k))
