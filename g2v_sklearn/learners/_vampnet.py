"""VAMPNetEstimator: slow coordinates learned from tokens or features."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from numbers import Integral, Real
from typing import NamedTuple

import numpy as np
from sklearn.base import TransformerMixin
from sklearn.utils.validation import check_is_fitted
from torch import Tensor

from .._compat import Interval, StrOptions, _fit_context
from .._threads import ThreadBudget
from .._utils import keep_parameters, local_torch_seed
from ._distributed import Ranks
from ._forward import Inference
from ._history import History
from ._learner import TorchLearner
from ._network import NetworkSpec, standardise_inputs
from ._series import FitData, pair_arrays
from ._trainer import EpochScores, FitContext, Objective, Trainer, TrainingCollapsed, new_history
from ._vamp import fit_vamp, implied_timescales, koopman_eigenvalues, reduced_vamp_score, vamp_cv_score, vamp_score

__all__ = ["VAMPNetEstimator", "VampObjective"]


class _Run(NamedTuple):
    """What one of ``n_init`` runs ends with (``net`` None when training collapsed)."""

    score: float
    net: object
    history: dict


def _continued(history: History, epoch: dict) -> History:
    """``history`` with a :meth:`~VAMPNetEstimator.partial_fit` epoch (the trainer's record of it)
    appended: the same round goes on, and its last epoch's weights are kept."""
    details = {**history.details, "best_score": epoch["best_score"]}
    for key in ("train_batches", "lr"):
        details[key] = list(details.get(key) or []) + epoch[key]
    train = history.train + epoch["train"]
    return replace(history, train=train, round=history.round + [0] * len(epoch["train"]),
                   best_epochs=[len(train) - 1], best_epoch=len(train) - 1, details=details)


# fewer time-lagged pairs than this per output (components + the constant): a warning
_PAIRS_PER_COMPONENT = 10


def scaled_vamp(x: np.ndarray, y: np.ndarray, w, epsilon: float):
    """(output scale, VAMP decomposition) of paired outputs; None when they are constant.

    VAMP does not care how the outputs are scaled, but epsilon is absolute: every output
    is scaled to unit spread, so that a network whose outputs vary by 1e-3 is decomposed
    like any other instead of having all of its directions cut off as noise.
    """
    both = np.concatenate([x, y])
    spread = both.std(axis=0)
    varies = spread > 1e-5 * np.abs(both).max(axis=0)  # above float32 rounding noise
    if not np.any(varies):
        return None
    scale = np.where(varies, spread, 1.0)
    return scale, fit_vamp(x / scale, y / scale, epsilon=epsilon, weights=w)


@dataclass(frozen=True)
class VampObjective(Objective):
    """VAMPNet's objective: maximise the VAMP score of time-lagged network outputs.

    The network is the lobe of ``spec`` with ``n_components`` outputs; the
    loss is minus the VAMP-2 (or VAMP-E) score of a batch; the epoch scores
    are those :meth:`VAMPNetEstimator.score` would give the weights.
    """

    spec: NetworkSpec
    inference: Inference
    n_components: int
    score_method: str
    epsilon: float
    mode: str
    score_k: int | None

    score_floor = 1.0  # VAMP-2 of outputs without signal: the constant function alone
    remedy = " or a larger epsilon"

    def build(self, data: FitData, rng: np.random.Generator):
        """A freshly initialised network (inputs standardised on the training trajectories)."""
        with local_torch_seed(rng):
            net = self.spec.build(data.series, self.n_components).to(data.device)
        standardise_inputs(net, data.series, data.train, data.device)
        return net

    def loss(self, out_0: Tensor, out_t: Tensor, weights: Tensor | None, ranks: Ranks | None = None) -> Tensor:
        """Minus the VAMP score of the pairs' outputs (on several ranks, of every rank's pairs)."""
        if ranks is not None:  # this rank's pairs; the score is that of every rank's
            return -reduced_vamp_score(out_0, out_t, sum_over_ranks=ranks.sum_with_grad, method=self.score_method,
                                       epsilon=self.epsilon, mode=self.mode, weights=weights)
        return -vamp_score(out_0, out_t, method=self.score_method, epsilon=self.epsilon,
                           mode=self.mode, weights=weights)

    def batch_loss(self, context: FitContext, batch: np.ndarray) -> Tensor:
        local = batch[context.ranks.share(len(batch))]
        out_0, out_t = self.inference.training_pairs(context.forward, context.series, local, context.device)
        weights = context.data.pair_weights(local)
        return self.loss(out_0, out_t, weights, ranks=context.ranks if context.ranks.distributed else None)

    def score_k_of(self, decomposition) -> int:
        return min(self.score_k or self.n_components, len(decomposition.singular_values))

    def epoch_scores(self, context: FitContext) -> EpochScores:
        """The scores :meth:`VAMPNetEstimator.score` would give the end-of-epoch weights.

        Training: VAMP-2 (``score_k`` singular functions) of the decomposition
        fitted on the training pairs, on those pairs. Validation: the
        cross-validated VAMP-2 of that decomposition on the validation pairs.
        """
        x, y, w = self._paired_outputs(context, context.train)
        decomposition = scaled_vamp(x, y, w, self.epsilon)
        if decomposition is None:
            return EpochScores(-np.inf, -np.inf if len(context.val) else None, True)
        scale, model = decomposition
        k = self.score_k_of(model)
        train = float(vamp_cv_score(model, x / scale, y / scale, k=k, epsilon=self.epsilon, weights=w))
        if not len(context.val):
            return EpochScores(train, None, False)
        x, y, w = self._paired_outputs(context, context.val)
        try:
            val = float(vamp_cv_score(model, x / scale, y / scale, k=k, epsilon=self.epsilon, weights=w))
        except ValueError:  # validation outputs without variance (a tiny block): no signal there
            val = self.score_floor
        return EpochScores(train, val, False)

    def _paired_outputs(self, context: FitContext, pairs: np.ndarray):
        """(x, y, w) of ``pairs`` as float64 arrays: the outputs at both ends, the weights or None."""
        out_0, out_t = self.inference.pair_outputs(context.net, context.series, pairs, context.device,
                                                   context.ranks)
        w = context.data.pair_weights(pairs, "cpu")
        return out_0.double().cpu().numpy(), out_t.double().cpu().numpy(), None if w is None else w.numpy()


class VAMPNetEstimator(TransformerMixin, TorchLearner):
    """Slow collective coordinates by maximising the VAMP score (a nonlinear TICA).

    On token trajectories (from :class:`GeomEmbedder`, optionally through a
    :class:`TokenMerger`) the network is: merger (trained end to end) ->
    invariant projection of scalars and vector norms -> transformer token
    mixer (``scaled_dot_product_attention``; FlashAttention kernels on GPU)
    -> pooling -> MLP head with ``n_components`` outputs. On 2-D feature
    arrays it is an MLP: a drop-in, nonlinear replacement for TICA.

    After training, a VAMP decomposition of the network outputs is fitted once
    on the training pairs; :meth:`transform` returns its left singular
    functions, ordered by singular value, like TICA.

    Parameters
    ----------
    lagtime : int, default=1
        Lag time in frames.
    n_components : int, default=2
        Network outputs and returned coordinates.
    score_method : {"VAMP2", "VAMPE"}, default="VAMP2"
        Training loss (negated).
    epsilon : float, default=1e-6
        Eigenvalue cutoff (or regularisation) of the covariance inverses.
    mode : {"regularize", "trunc"}, default="regularize"
        How ``epsilon`` is used in the loss.
    scaling : {None, "kinetic_map"}, default=None
        ``"kinetic_map"`` scales each coordinate by its singular value, like
        TICA's kinetic map.
    score_k : int, default=None
        Singular functions in :meth:`score` (``None``: ``n_components``).
    hidden_layer_sizes : tuple of int, default=(64, 64)
        MLP lobe on 2-D arrays.
    d_model, n_heads, n_layers : int, default=64, 4, 2
        Transformer on tokens.
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
        Dropout rate in the network.
    optimizer : {"adamw", "adam", "sgd"}, default="adamw"
        Optimizer (``"sgd"`` with momentum 0.9).
    lr : float, default=5e-4
        Learning rate.
    weight_decay : float, default=1e-2
        Weight decay of the optimizer.
    batch_size : int, default=256
        Time-lagged pairs per step.
    max_epochs : int, default=30
        Most passes over the training pairs.
    patience : int, default=5
        Epochs without a better monitored score before stopping; ``None``
        never stops early. Whatever ends training, the weights of the best
        epoch are restored.
    validation_fraction : float, default=0.0
        Share of the data held out for validation (see
        ``validation_split``). With 0 (the default) there is no validation
        and the monitored score (best weights, early stopping) is the
        training VAMP-2 of the weights at the end of each epoch. The default
        was chosen by measurement: when the slowest process is rare, a
        held-out block holds few of its events, its VAMP-2 is noise around
        the floor, and early stopping on it kept immature weights (on
        ../shared/data/ala2, seed 0 found no alpha_L state with 0.2 and
        found it with 0; see docs/benchmarks.md). Use validation (and
        :meth:`score` on held-out trajectories in a grid search) to compare
        models.
    validation_split : {"blocks", "trajectories"}, default="blocks"
        ``"blocks"`` holds out the final ``validation_fraction`` of every
        trajectory, after a gap of ``lagtime`` frames; ``"trajectories"``
        holds out whole trajectories (a single trajectory is split into
        blocks). Blocks are the default because with few trajectories a
        held-out trajectory can hold most (or none) of a rare process: in
        the shipped alanine dipeptide one of four trajectories holds about
        three quarters of the alpha_L frames.
    n_init : int, default=1
        Independent initialisations, as in :class:`~sklearn.cluster.KMeans`:
        each is trained, the one with the best monitored score is kept, and
        every run's history is in ``history_["runs"]``.
    lr_schedule : {"cosine", "constant"}, default="cosine"
        Per-step learning rate: cosine decay from ``lr`` to 5 % of it over
        ``max_epochs``, or constant.
    warmup : float, default=0.05
        Share of the planned steps over which the learning rate rises
        linearly from 0 to its schedule; 0 disables the warm-up.
    max_grad_norm : float or None, default=1.0
        Gradients are clipped to this total norm before each step
        (``None``: never).
    memory_budget : "auto" or float, default="auto"
        Bytes that a training step's activations may take. Above it the
        token network recomputes activations in the backward pass (gradient
        checkpointing of the merger, in chunks of frames, and of the
        transformer blocks); below it nothing is recomputed. ``"auto"``:
        half the GPU's memory, or half the memory available on the CPU
        when ``fit`` starts. What was decided is in ``memory_plan_``.
    compile : bool, default=False
        Train the network through ``torch.compile`` (a C++ compiler is
        needed on CPU); if compilation fails, a warning says so and
        training goes on uncompiled.
    callbacks : list of Callback or None, default=None
        Code run at fixed points of training (:class:`EarlyStopping`,
        :class:`LRScheduler`, :class:`SaveBestWeights`,
        :class:`MetricsLog` or your own :class:`Callback`). Callbacks keep
        no state between fits, so clones and grid searches can share them.
    precision : {"float32", "bfloat16"}, default="float32"
        ``"bfloat16"`` runs the network under autocast; covariances and
        scores are always float64.
    device : str or torch.device, default="auto"
        ``"auto"`` is CUDA when available, else CPU.
    progress : bool, default=True
        Show a progress bar over epochs.
    random_state : int, numpy.random.Generator or None, default=None
        Seeds the network initialisation, the validation split and the
        order of the pairs, through local generators.

    Attributes
    ----------
    module_ : torch.nn.Module
        The trained network.
    vamp_ : VampDecomposition
        VAMP decomposition of the network outputs on the training data, each
        output divided by ``output_scale_``.
    output_scale_ : ndarray of shape (n_components,)
        Spread (standard deviation) of each network output on the training
        data. The decomposition works on outputs of unit spread, so that
        ``epsilon`` means the same whatever scale the network learned.
    singular_values_ : ndarray of shape (n_components,)
    timescales_ : ndarray
        Implied timescales -lagtime / ln|lambda_i| from the eigenvalues of the
        Koopman matrix, in frames.
    timestep_ : float or None
        Time between frames (ps), when the input carries it.
    history_ : History
        The record every learner fills (see :class:`History`), with
        ``measure`` ``"VAMP-2"``. Per epoch of the kept run: ``train`` (VAMP-2 of the weights at the
        end of the epoch on the training pairs), ``validation`` (on the
        validation pairs; empty without validation), ``train_batches`` (the
        mean of the batch scores while the weights changed) and ``lr``;
        ``round`` (all 0: VAMPNet trains one round, which
        :meth:`partial_fit` continues); then ``best_epoch`` (the kept
        weights' epoch, 0-based), ``best_epochs`` (the same, as the one
        round's list) and ``best_score`` (the monitored score of the
        kept weights), ``stop_reason``, ``collapsed_epoch`` (the first epoch
        that collapsed; None unless training collapsed), ``rollbacks`` (the
        epochs after which training went back to the best weights at half
        the learning rate, at most two; a third collapse stops it),
        ``best_run`` and ``runs`` (the history of every ``n_init`` run).
    n_iter_ : int
        Epochs run by the kept run.
    memory_plan_ : dict
        For token input: activation bytes per frame and per batch, the
        budget, and whether checkpointing was switched on.
    n_features_in_ : int
        Features of 2-D input.

    See Also
    --------
    deeptime.decomposition.TICA : the linear method this replaces.
    TokenMerger : the merging step trained end to end with this learner.

    Notes
    -----
    The VAMP-2 score of outputs :math:`\\chi` at lag :math:`\\tau` is

    .. math::
        R_2 = 1 + \\lVert C_{00}^{-1/2} C_{0\\tau} C_{\\tau\\tau}^{-1/2} \\rVert_F^2,

    the 1 counting the constant singular function. Scores at different lag
    times are not comparable (the singular values decay with lag); compare
    models at one fixed lag. :meth:`score` is the cross-validated VAMP-2 of Wu
    and Noe: the training model's singular functions evaluated with the test
    data's covariances, with a fixed number ``score_k`` of them.

    References
    ----------
    .. [1] Mardt, Pasquali, Wu, Noe, "VAMPnets for deep learning of molecular
       kinetics", Nat. Commun. 9, 5 (2018).
    .. [2] Wu, Noe, "Variational approach for learning Markov processes from
       time series data", J. Nonlinear Sci. 30, 23 (2020).

    Examples
    --------
    On feature arrays, as a nonlinear TICA (one array is one trajectory):

    >>> import numpy as np
    >>> from g2v_sklearn import VAMPNetEstimator
    >>> rng = np.random.default_rng(0)
    >>> x = np.cumsum(rng.normal(size=(500, 3)), axis=0) * 0.01
    >>> est = VAMPNetEstimator(lagtime=5, n_components=2, max_epochs=3, progress=False,
    ...                        random_state=0).fit(x)
    >>> est.transform(x).shape
    (500, 2)
    >>> est.singular_values_.shape, est.timescales_.shape  # timescales in frames
    ((2,), (2,))

    A list holds one array per trajectory (time-lagged pairs never cross
    from one into the next); ``transform`` then returns a list, and
    ``score`` is the VAMP-2 of held-out trajectories, between 1 and
    ``1 + score_k``:

    >>> trajs = [x[:250], x[250:]]
    >>> est = VAMPNetEstimator(lagtime=5, max_epochs=3, progress=False, random_state=0).fit(trajs[:1])
    >>> [y.shape for y in est.transform(trajs)]
    [(250, 2), (250, 2)]
    >>> bool(1.0 <= est.score(trajs[1:]) <= 3.0)
    True

    On token trajectories the input is the output of :class:`GeomEmbedder`
    or, for the merged network, of :class:`TokenMerger`; the calls are the
    same.
    """

    _HISTORY_MEASURE = "VAMP-2"

    _parameter_constraints: dict = {
        **TorchLearner._common_constraints,
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "score_method": [StrOptions({"VAMP2", "VAMPE"})],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "mode": [StrOptions({"regularize", "trunc"})],
        "scaling": [StrOptions({"kinetic_map"}), None],
        "score_k": [Interval(Integral, 1, None, closed="left"), None],
    }

    def __init__(self, lagtime=1, n_components=2, *, score_method="VAMP2", epsilon=1e-6,
                 mode="regularize", scaling=None, score_k=None, hidden_layer_sizes=(64, 64),
                 d_model=64, n_heads=4, n_layers=2, pooling="cls", mixer="invariant", dropout=0.0,
                 optimizer="adamw", lr=5e-4, weight_decay=1e-2, batch_size=256, max_epochs=30,
                 patience=5, validation_fraction=0.0, validation_split="blocks", n_init=1,
                 lr_schedule="cosine", warmup=0.05, max_grad_norm=1.0, memory_budget="auto",
                 compile=False, callbacks=None, precision="float32", device="auto",
                 progress=True, random_state=None):
        keep_parameters(self, locals())

    # ------------------------------------------------------------------ fit
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, sample_weight=None):
        """Train the network on time-lagged pairs of ``X``.

        Each of the ``n_init`` runs initialises a network and trains it for
        up to ``max_epochs`` epochs (with validation and early stopping as
        the parameters say); the run with the best monitored score is kept.

        Parameters
        ----------
        X : ndarray of shape (n_frames, n_features), list of such arrays, or list of token trajectories
            One array is one trajectory; a list holds one entry per trajectory.
        y : None
            Ignored.
        sample_weight : array-like of shape (n_frames,) or list of such, default=None
            Per-frame weights (e.g. from a biased simulation); a pair is
            weighted by its first frame.

        Returns
        -------
        self : VAMPNetEstimator
        """
        data, rng = self._fit_data(X, sample_weight)
        self._check_fit_data(data)
        runs = []
        with ThreadBudget(device=data.device) as threads:
            for run in range(self.n_init):
                trainer, ctx = self._training(data, rng, self._initialize(data, rng), run=run, threads=threads)
                try:
                    history = trainer.fit(ctx)
                except TrainingCollapsed as exc:
                    runs.append(_Run(-np.inf, None, {**ctx.history, "failed": str(exc)}))
                    continue
                runs.append(_Run(history["best_score"], ctx.net, history))
        records = [History.from_mapping(r.history, measure="VAMP-2") for r in runs]
        if all(r.net is None for r in runs):
            raise ValueError(runs[-1].history["failed"]
                             + (f" (all {self.n_init} initialisations)" if self.n_init > 1 else ""))
        best = int(np.argmax([r.score for r in runs]))
        self.module_ = runs[best].net
        self.history_ = replace(records[best], best_run=best, runs=records)
        self._fitted(data)  # all of X, validation included
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None, sample_weight=None):
        """One epoch over all time-lagged pairs of ``X``, from the current weights.

        The first call (or the first after changing parameters with a
        refit) initialises the network as :meth:`fit` does. Every call then
        runs one epoch over every pair of ``X`` (no validation split, no
        early stopping, no warm-up or schedule: the learning rate is
        ``lr``) and refits the VAMP decomposition and ``output_scale_`` on
        ``X``, so :meth:`transform` and :meth:`score` reflect the new weights.
        Each call builds a new optimizer: Adam's moment estimates start
        afresh, as after a restart. The order of the pairs continues the
        random stream of the fit or first call before it. The epoch's scores
        are appended to ``history_``; callbacks run as in :meth:`fit`.

        Parameters
        ----------
        X : ndarray of shape (n_frames, n_features), list of such arrays, or list of token trajectories
            One array is one trajectory; a list holds one entry per trajectory.
        y : None
            Ignored.
        sample_weight : array-like of shape (n_frames,) or list of such, default=None
            Per-frame weights; a pair is weighted by its first frame.

        Returns
        -------
        self : VAMPNetEstimator

        Examples
        --------
        Training on data that arrives in pieces (each piece one call):

        >>> import numpy as np
        >>> from g2v_sklearn import VAMPNetEstimator
        >>> x = np.cumsum(np.random.default_rng(0).normal(size=(600, 3)), axis=0) * 0.01
        >>> est = VAMPNetEstimator(lagtime=5, progress=False, random_state=0)
        >>> for piece in (x[:300], x[300:]):
        ...     est = est.partial_fit(piece)
        >>> len(est.history_["train"]), est.transform(x).shape
        (2, (600, 2))
        """
        first = not hasattr(self, "module_")
        data, rng = self._fit_data(X, sample_weight, reset=first, split=False)
        self._check_fit_data(data)
        with ThreadBudget(device=data.device) as threads:
            if first:
                self.module_ = self._initialize(data, rng)
            trainer, ctx = self._training(data, self._rng, self.module_.to(data.device), partial=True,
                                          threads=threads)
            history = trainer.fit(ctx)
        self.history_ = _continued(self.history_, history)
        self._fitted(data)
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def training_session(self, X, sample_weight=None) -> tuple[Trainer, FitContext]:
        """The trainer and the run that :meth:`fit` holds before its first step.

        For code that steps training itself (benchmarks that time one
        optimizer step, tests that probe it): ``trainer.step(context, pairs)``
        takes one optimizer step on time-lagged pairs of ``context.train``
        exactly as ``fit`` does (forward pass, loss, backward pass, clipping,
        the optimizer, the schedule); ``trainer.fit(context)`` runs the
        epochs. The estimator itself is not fitted by it.

        Parameters
        ----------
        X, sample_weight
            As in :meth:`fit`.

        Returns
        -------
        trainer : Trainer
        context : FitContext
            The first run's progress (network, optimizer, pairs).
        """
        data, rng = self._fit_data(X, sample_weight)
        self._check_fit_data(data)
        return self._training(data, rng, self._initialize(data, rng))

    def _objective(self) -> VampObjective:
        return VampObjective(self._network_spec(), self._inference(), self.n_components, self.score_method,
                             self.epsilon, self.mode, self.score_k)

    def _initialize(self, data: FitData, rng: np.random.Generator):
        """A freshly initialised network for ``data`` (its memory plan in ``memory_plan_``), a
        fresh ``history_``, and ``rng`` kept for the :meth:`partial_fit` calls that follow."""
        net = self._objective().build(data, rng)
        self._plan_memory(net, data)
        self.history_ = History.from_mapping(new_history(), measure="VAMP-2")
        self._rng = rng
        return net

    def _training(self, data: FitData, rng, net, *, partial: bool = False, run: int = 0,
                  threads=None) -> tuple[Trainer, FitContext]:
        """A trainer for this estimator's objective and a run of it on ``net``; a ``partial``
        run is one epoch at the constant rate ``lr``, without early stopping."""
        config = (self._train_config(max_epochs=1, lr_schedule="constant", warmup=0.0) if partial
                  else self._train_config())
        trainer = Trainer(config, self._objective(), self._callback_list(early_stopping=not partial), owner=self)
        return trainer, trainer.start(net, data, rng, run=run, threads=threads)

    def _fitted(self, data: FitData) -> None:
        """What a fit computes from the trained network: the decomposition on all of ``data``."""
        self.n_iter_ = len(self.history_["train"])
        self.timestep_ = data.series.timestep
        self._fit_decomposition(data.series, data.pairs, data.weights, data.ranks)

    def _check_fit_data(self, data: FitData) -> None:
        self._check_pairs(data.pairs)
        self._check_network_width(data.series)

    def _check_pairs(self, pairs):
        if self.n_components >= len(pairs):
            raise ValueError(
                f"n_components={self.n_components} is larger than allowed: X gives only "
                f"{len(pairs)} time-lagged pairs at lagtime={self.lagtime}, and the covariances "
                f"need more pairs than components."
            )
        if len(pairs) < _PAIRS_PER_COMPONENT * (self.n_components + 1):
            warnings.warn(
                f"X gives only {len(pairs)} time-lagged pairs at lagtime={self.lagtime} for "
                f"n_components={self.n_components} (and the constant function): with so few "
                f"pairs the covariances are fitted exactly, so singular values near 1 and a high "
                f"VAMP score mean nothing. Use at least "
                f"{_PAIRS_PER_COMPONENT * (self.n_components + 1)} pairs, or fewer components.",
                UserWarning, stacklevel=3,
            )

    def _check_network_width(self, series):
        """Refuse more components than the network can give independent outputs.

        The outputs are a linear map of the last hidden layer (of the input
        features, without hidden layers; of ``d_model`` units in the token
        network's head), so they span at most that many functions besides
        the constant: VAMP would return fewer components than asked for.
        """
        if series.kind == "array":
            sizes = tuple(self.hidden_layer_sizes)
            if sizes:
                width = int(sizes[-1])
                what = (f"its last hidden layer has {width} units (hidden_layer_sizes={sizes}), and its "
                        f"outputs are linear combinations of them")
                fix = "or a wider last hidden layer"
            else:
                width = int(series.items[0].shape[1])
                what = (f"with hidden_layer_sizes=() it is linear in X's {width} features, so its outputs "
                        f"are linear combinations of them")
                fix = "or hidden layers, whose nonlinear functions of the features can give more"
        else:
            width = int(self.d_model)
            what = (f"its head ends in d_model={width} units, and its outputs are linear combinations "
                    f"of them")
            fix = "or a larger d_model"
        if self.n_components > width:
            raise ValueError(
                f"n_components={self.n_components} is more than {type(self).__name__}'s network can "
                f"give: {what}, which span at most {width} independent functions. Use "
                f"n_components <= {width}, {fix}."
            )

    def _fit_decomposition(self, series, pairs, weights, ranks=None):
        outputs = self._outputs(self.module_, series, next(self.module_.parameters()).device, ranks=ranks)
        x, y, w = pair_arrays(outputs, pairs, self.lagtime, weights)
        decomposition = scaled_vamp(x, y, w, self.epsilon)
        if decomposition is None:
            raise ValueError(
                f"The trained network's {x.shape[1]} outputs are constant over all "
                f"{len(x)} time-lagged pairs of X, so they hold no slow coordinate (the last "
                f"training scores were {[round(v, 4) for v in self.history_['train'][-3:]]}). "
                f"Training collapsed: try a smaller lr (now {self.lr}) or more data."
            )
        self.output_scale_, self.vamp_ = decomposition
        self.singular_values_ = self.vamp_.singular_values[: self.n_components]
        eigenvalues = koopman_eigenvalues(self.vamp_, dim=self.n_components)
        self.timescales_ = implied_timescales(eigenvalues, self.lagtime)

    # ------------------------------------------------------------------ use
    def _network_outputs(self, X) -> tuple[list[np.ndarray], object]:
        series, net, device = self._fitted_input(X)
        return [o / self.output_scale_ for o in self._outputs(net, series, device)], series

    def transform(self, X):
        """Slow coordinates: the left singular functions, ordered by singular value.

        Parameters
        ----------
        X : ndarray of shape (n_frames, n_features), list of such arrays, or list of token trajectories
            Input like that of :meth:`fit`.

        Returns
        -------
        Y : ndarray of shape (n_frames, n_components), or a list of them
            One array for one array in, a list for a list in.
        """
        outputs, series = self._network_outputs(X)
        coords = [self._coordinates(o) for o in outputs]
        return coords[0] if series.single else coords

    def _coordinates(self, outputs: np.ndarray) -> np.ndarray:
        dim = min(self.n_components, len(self.vamp_.singular_values))
        coords = self.vamp_.transform(outputs, dim=dim)
        if self.scaling == "kinetic_map":
            coords = coords * self.vamp_.singular_values[:dim]
        return coords

    def score(self, X, y=None):
        """Cross-validated VAMP-2 of ``X`` with a fixed number of singular functions.

        The training model's singular functions evaluated with the
        covariances of ``X`` (Wu and Noe), plus 1 for the constant function.
        Only comparable between models at the same lag time.

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
        outputs, series = self._network_outputs(X)
        x, y = self._lagged_values(outputs, series)
        return float(vamp_cv_score(self.vamp_, x, y, k=self._objective().score_k_of(self.vamp_), epsilon=self.epsilon))

    def _koopman_models(self, X, lagtimes):
        from deeptime.decomposition import VAMP

        outputs, _ = self._network_outputs(X)
        return [
            VAMP(lagtime=int(lag), dim=self.n_components, epsilon=self.epsilon).fit(outputs).fetch_model()
            for lag in lagtimes
        ]

    def implied_timescales(self, X, lagtimes, *, n_its: int | None = None):
        """Implied timescales of the learned coordinates at several lag times.

        The network is fixed; a VAMP model of its outputs is estimated with
        deeptime at each lag time.

        Parameters
        ----------
        X : ndarray of shape (n_frames, n_features), list of such arrays, or list of token trajectories
            Input like that of :meth:`fit`.
        lagtimes : sequence of int
            Lag times in frames.
        n_its : int, default=None
            Timescales per lag time (``None``: ``n_components``).

        Returns
        -------
        its : deeptime.util.validation.ImpliedTimescales
        """
        from deeptime.util.validation import implied_timescales

        return implied_timescales(self._koopman_models(X, lagtimes), n_its=n_its or self.n_components)

    def ck_test(self, X, lagtime_multiples=(1, 2, 3, 4, 5), *, n_observables: int | None = None):
        """Chapman-Kolmogorov test of the learned model through deeptime.

        Compares the Koopman model at ``lagtime`` propagated ``n`` times
        with models estimated at ``n * lagtime``, on the network outputs of X.

        Parameters
        ----------
        X : ndarray of shape (n_frames, n_features), list of such arrays, or list of token trajectories
            Input like that of :meth:`fit`.
        lagtime_multiples : sequence of int, default=(1, 2, 3, 4, 5)
            Multiples of ``lagtime`` at which the models are compared.
        n_observables : int, default=None
            Observables (and statistics) tested (``None``: all components).

        Returns
        -------
        test : deeptime.util.validation.ChapmanKolmogorovTest
        """
        models = self._koopman_models(X, [self.lagtime * int(m) for m in lagtime_multiples])
        return models[0].ck_test(models, n_observables=n_observables)

    def timescales(self, unit: str = "frames") -> np.ndarray:
        """Implied timescales in frames, or in the input's time unit (ps) with ``unit="time"``.

        Parameters
        ----------
        unit : {"frames", "time"}, default="frames"
            ``"time"`` multiplies by ``timestep_``, which the training
            tokens must have carried.

        Returns
        -------
        timescales : ndarray of shape (n_components,)
            ``timescales_``, in frames or in picoseconds.
        """
        check_is_fitted(self, "timescales_")
        if unit == "frames":
            return self.timescales_
        if unit != "time":
            raise ValueError(f"unit must be 'frames' or 'time'; got {unit!r}.")
        if self.timestep_ is None:
            raise ValueError("The training input carried no timestep; timescales are known in frames only.")
        return self.timescales_ * self.timestep_

