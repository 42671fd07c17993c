"""What the learners share: input dispatch, time-lagged pairs, the torch training loop.

VAMPNetEstimator and SPIBEstimator differ in their loss and what they do
after training; everything else lives here, once.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_array, check_is_fitted, validate_data
from torch import Tensor
from tqdm.auto import tqdm

from ._compat import Interval, StrOptions, validate_parameter_constraints
from ._merger import MergedTokens, MergeSpec, check_token_list
from ._networks import MLPLobe, TokenLobe
from ._tokens import TokenTrajectory
from ._utils import check_generator, resolve_device

__all__ = ["TimeSeries", "TorchLearner", "lagged_pairs"]


@dataclass
class TimeSeries:
    """A list of trajectories of one kind, as the learners see them.

    Attributes
    ----------
    kind : {"array", "tokens"}
    items : list
        2-D float arrays, or token trajectories.
    single : bool
        The input was one array (one trajectory): outputs are one array too.
    spec : MergeSpec or None
        The merge specification a TokenMerger attached.
    timestep : float or None
        Time between frames (ps) when the tokens carry it.
    """

    kind: str
    items: list
    single: bool = False
    spec: MergeSpec | None = None
    timestep: float | None = None

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.items]

    def frames(self, traj: int, index: np.ndarray, device) -> tuple[Tensor, ...]:
        """The network inputs of frames ``index`` of trajectory ``traj``."""
        item = self.items[traj]
        if self.kind == "array":
            return (torch.as_tensor(item[index], device=device),)
        # One copy of the frames asked for: read in sorted order (kind to memory maps),
        # put back in the order asked for in torch only when it differs.
        ascending = bool(np.all(index[1:] >= index[:-1]))
        read, inverse = (index, None) if ascending else np.unique(index, return_inverse=True)
        features = torch.as_tensor(np.asarray(item.features[read], dtype=np.float32), device=device)
        positions = torch.as_tensor(np.asarray(item.positions[read], dtype=np.float32), device=device)
        if inverse is not None:
            inverse = torch.as_tensor(inverse.reshape(-1), device=device)
            features, positions = features[inverse], positions[inverse]
        return features, positions


def lagged_pairs(lengths: list[int], lagtime: int, who: str) -> np.ndarray:
    """All (trajectory, t) with t + lagtime inside the trajectory, shape (n_pairs, 2).

    Trajectories too short for one pair are skipped with a warning naming them;
    if none is long enough, a ValueError gives every length.
    """
    short = [i for i, n in enumerate(lengths) if n <= lagtime]
    if len(short) == len(lengths):
        if len(lengths) == 1:
            raise ValueError(
                f"The trajectory has {lengths[0]} sample{'s' if lengths[0] != 1 else ''}, too "
                f"short to form one time-lagged pair at lagtime={lagtime} (n_samples={lengths[0]}); "
                f"{who} needs more than lagtime frames."
            )
        raise ValueError(
            f"lagtime={lagtime} is not shorter than any trajectory (lengths {lengths}); "
            f"{who} cannot form a single time-lagged pair. Use a smaller lagtime."
        )
    if short:
        warnings.warn(
            f"Trajectories {short} (lengths {[lengths[i] for i in short]}) are not longer than "
            f"lagtime={lagtime} and are skipped.",
            UserWarning,
            stacklevel=3,
        )
    return np.concatenate(
        [np.stack([np.full(n - lagtime, i), np.arange(n - lagtime)], axis=1)
         for i, n in enumerate(lengths) if n > lagtime]
    ).astype(np.int64)


def _full_precision(out: Tensor) -> Tensor:
    """Outputs of an autocast forward back in float32; float32/float64 outputs as they are."""
    return out.float() if out.dtype in (torch.float16, torch.bfloat16) else out


class TorchLearner(BaseEstimator):
    """Base class of the torch learners (not public).

    Subclasses define ``_n_outputs()``, ``_loss(out_0, out_t, weights)`` (a
    scalar tensor to minimise) and ``_validation_score(out_0, out_t, weights)``
    (a float, higher is better), and call :meth:`_train`.
    """

    _common_constraints: dict = {
        "lagtime": [Interval(Integral, 1, None, closed="left")],
        "hidden_layer_sizes": [tuple, list],
        "d_model": [Interval(Integral, 1, None, closed="left")],
        "n_heads": [Interval(Integral, 1, None, closed="left")],
        "n_layers": [Interval(Integral, 0, None, closed="left")],
        "pooling": [StrOptions({"cls", "mean"})],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "optimizer": [StrOptions({"adamw", "adam", "sgd"})],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 2, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "patience": [Interval(Integral, 1, None, closed="left"), None],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "precision": [StrOptions({"float32", "bfloat16"})],
        "device": [str, torch.device],
        "progress": ["boolean"],
        "random_state": ["random_state", np.random.Generator],
    }

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False  # CPU fits with a random_state are repeatable
        tags.input_tags.allow_nan = False
        return tags

    # ------------------------------------------------------------------ input dispatch
    def _as_time_series(self, X, *, reset: bool) -> TimeSeries:
        who = type(self).__name__
        is_list = isinstance(X, (list, tuple)) and len(X) > 0
        if isinstance(X, (TokenTrajectory, MergedTokens)) or (
            is_list and isinstance(X[0], (TokenTrajectory, MergedTokens))
        ):
            if is_list and not all(isinstance(x, (TokenTrajectory, MergedTokens)) for x in X):
                raise TypeError(f"X mixes token trajectories with other inputs; {who} takes one kind.")
            items = check_token_list(X, who)
            specs = {x.spec if isinstance(x, MergedTokens) else None for x in items}
            if len(specs) > 1:
                raise ValueError("X mixes token trajectories with different merge specifications.")
            for i, item in enumerate(items):
                data = item.tokens if isinstance(item, MergedTokens) else item
                if not np.isfinite(data.features).all():  # streams through memory maps
                    raise ValueError(f"Token trajectory {i} has NaN or infinite features.")
            series = TimeSeries("tokens", items, spec=specs.pop(), timestep=items[0].timestep)
            shape = (series.items[0].n_residues, series.items[0].n_channels)
            if reset:
                self.input_shape_ = shape
            elif getattr(self, "input_shape_", None) != shape:
                raise ValueError(
                    f"X has {shape[0]} residues with {shape[1]} channels, but {who} was fitted "
                    f"on {self._describe_input()}."
                )
            return series
        if is_list and isinstance(X[0], np.ndarray) and X[0].ndim == 2:
            if not all(isinstance(x, np.ndarray) for x in X):
                raise TypeError(f"X mixes arrays with other inputs; {who} takes one kind.")
            items = [check_array(x, dtype=[np.float32, np.float64]) for x in X]
            widths = {x.shape[1] for x in items}
            if len(widths) > 1:
                raise ValueError(f"The trajectories in X have different numbers of features: {sorted(widths)}.")
            width = widths.pop()
            if reset:
                self.n_features_in_ = width
                self.input_shape_ = (width,)
            elif getattr(self, "input_shape_", None) != (width,):
                raise ValueError(
                    f"X has {width} features, but {who} is expecting {self._describe_input()} as input."
                )
            return TimeSeries("array", [x.astype(np.float64, copy=False) for x in items])
        array = validate_data(self, X, reset=reset, dtype=[np.float64, np.float32])
        if reset:
            self.input_shape_ = (array.shape[1],)
        return TimeSeries("array", [array.astype(np.float64, copy=False)], single=True)

    def _describe_input(self) -> str:
        shape = getattr(self, "input_shape_", None)
        if shape is None:
            return "nothing yet"
        if len(shape) == 1:
            return f"{shape[0]} features"
        return f"token trajectories of {shape[0]} residues with {shape[1]} channels"

    @staticmethod
    def _sample_weights(sample_weight, series: TimeSeries) -> list[np.ndarray] | None:
        if sample_weight is None:
            return None
        weights = [sample_weight] if series.single else list(sample_weight)
        if len(weights) != len(series.items):
            raise ValueError(
                f"sample_weight has {len(weights)} entries, but X has {len(series.items)} trajectories."
            )
        out = []
        if all(np.all(np.asarray(w) == 0) for w in weights):
            raise ValueError("All sample_weight values are zero: no time-lagged pair would count.")
        for i, (w, n) in enumerate(zip(weights, series.lengths)):
            w = np.asarray(w, dtype=np.float64)
            if w.shape != (n,):
                raise ValueError(
                    f"sample_weight for trajectory {i} has shape {w.shape}, expected ({n},): one "
                    f"weight per frame."
                )
            if not np.isfinite(w).all() or (w < 0).any():
                raise ValueError("sample_weight must be finite and non-negative.")
            out.append(w)
        return out

    # ------------------------------------------------------------------ networks
    def _build_network(self, series: TimeSeries, n_outputs: int):
        if series.kind == "array":
            # Feature MLPs are small: float64 makes transform independent of batch composition.
            return MLPLobe(series.items[0].shape[1], tuple(self.hidden_layer_sizes), n_outputs,
                           self.dropout).double()
        first = series.items[0]
        return TokenLobe(
            in_channels=first.n_channels, n_tokens=first.n_residues, merge=series.spec,
            d_model=self.d_model, n_heads=self.n_heads, n_layers=self.n_layers,
            pooling=self.pooling, n_outputs=n_outputs, dropout=self.dropout,
        )

    def _autocast(self, device: torch.device):
        enabled = self.precision == "bfloat16"
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)

    def _forward_pairs(self, net, series, pairs, device, *, lag: int | None = None):
        """Network outputs at t and t + lag for the given pairs, in pair order."""
        lag = self.lagtime if lag is None else lag
        chunks_0, chunks_t, order = [], [], []
        for traj in np.unique(pairs[:, 0]):
            rows = np.flatnonzero(pairs[:, 0] == traj)
            t = pairs[rows, 1]
            # each frame once, in ascending order, even when it is both a t and a t + lag
            frames, where = np.unique(np.concatenate([t, t + lag]), return_inverse=True)
            with self._autocast(device):
                out = _full_precision(net(*series.frames(int(traj), frames, device)))
            out = out[torch.as_tensor(where.reshape(-1), device=device)]
            chunks_0.append(out[: len(t)])
            chunks_t.append(out[len(t):])
            order.append(rows)
        order = np.concatenate(order)
        inverse = torch.as_tensor(np.argsort(order), device=device)
        out_0 = torch.cat(chunks_0)[inverse]
        out_t = torch.cat(chunks_t)[inverse]
        return out_0, out_t

    def _outputs(self, net, series, device, batch_size: int | None = None) -> list[np.ndarray]:
        """Network outputs of every frame of every trajectory (eval mode, no grad)."""
        batch_size = batch_size or self.batch_size
        net.eval()
        results = []
        with torch.no_grad():
            for traj, n in enumerate(series.lengths):
                chunks = []
                for start in range(0, n, batch_size):
                    index = np.arange(start, min(n, start + batch_size))
                    with self._autocast(device):
                        chunks.append(_full_precision(net(*series.frames(traj, index, device))).cpu())
                results.append(torch.cat(chunks).numpy().astype(np.float64) if chunks else np.zeros((0, 0)))
        return results

    # ------------------------------------------------------------------ training
    def _split(self, series: TimeSeries, pairs: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
        """Hold out whole trajectories (or, for one trajectory, its final block)."""
        if self.validation_fraction == 0:
            return pairs, pairs[:0]
        used = np.unique(pairs[:, 0])
        if len(used) > 1:
            n_val = min(len(used) - 1, max(1, round(self.validation_fraction * len(used))))
            val_trajs = rng.choice(used, size=n_val, replace=False)
            is_val = np.isin(pairs[:, 0], val_trajs)
            return pairs[~is_val], pairs[is_val]
        # one trajectory: a contiguous final block, with a gap of lagtime so no frame is shared
        n = len(pairs)
        n_val = int(round(self.validation_fraction * n))
        cut = n - n_val
        if n_val < 2 or cut - self.lagtime < 2:
            return pairs, pairs[:0]
        return pairs[: cut - self.lagtime], pairs[cut:]

    def _make_optimizer(self, net):
        if self.optimizer == "sgd":
            return torch.optim.SGD(net.parameters(), lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)
        cls = torch.optim.AdamW if self.optimizer == "adamw" else torch.optim.Adam
        return cls(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def _pair_weights(self, weights, pairs, device):
        if weights is None:
            return None
        return torch.as_tensor(np.array([weights[i][t] for i, t in pairs]), device=device)

    def _evaluate(self, net, series, pairs, weights, device) -> float:
        net.eval()
        with torch.no_grad():
            outs_0, outs_t = [], []
            for start in range(0, len(pairs), self.batch_size):
                o0, ot = self._forward_pairs(net, series, pairs[start:start + self.batch_size], device)
                outs_0.append(o0)
                outs_t.append(ot)
            return float(self._validation_score(torch.cat(outs_0), torch.cat(outs_t),
                                                self._pair_weights(weights, pairs, device)))

    def _batch_loss(self, net, series, batch, weights, device) -> Tensor:
        """The loss of one batch of pairs (a hook: SPIB's loss needs labels and a prior)."""
        out_0, out_t = self._forward_pairs(net, series, batch, device)
        return self._loss(out_0, out_t, self._pair_weights(weights, batch, device))

    def _train(self, net, series, train, val, weights, device, rng, *, epochs=None, history=None,
               tolerance: float = 0.0, monitor_train: bool = False):
        """Mini-batch training with early stopping that restores the best weights.

        Returns the history dict (``train``, ``validation`` score per epoch,
        ``best_epoch``). Without validation pairs the final weights are kept,
        unless ``monitor_train``: then the training score stops early and
        picks the best weights. An epoch resets the patience only when it
        beats the best score by more than ``tolerance`` times its magnitude.
        """
        epochs = epochs or self.max_epochs
        history = history if history is not None else {"train": [], "validation": [], "best_epoch": None}
        optimizer = self._make_optimizer(net)
        best_score, best_state, stale = -np.inf, None, 0
        bar = tqdm(range(epochs), desc=type(self).__name__, disable=not self.progress, leave=False)
        for epoch in bar:
            net.train()
            epoch_start = {k: v.detach().clone() for k, v in net.state_dict().items()}
            order = rng.permutation(len(train))
            scores = []
            for start in range(0, len(order) - 1, self.batch_size):
                batch = train[order[start:start + self.batch_size]]
                if len(batch) < 2:
                    continue
                loss = self._batch_loss(net, series, batch, weights, device)
                if not torch.isfinite(loss):
                    # A non-finite loss updates nothing: finite weights are the last good
                    # ones; weights that went non-finite fall back to the epoch's start.
                    if not all(torch.isfinite(p).all() for p in net.parameters()):
                        net.load_state_dict(epoch_start)
                    raise FloatingPointError(
                        f"{type(self).__name__}: the loss became {loss.item()} in epoch {epoch}; "
                        f"training stopped and the last good weights were restored. Try a smaller "
                        f"lr (now {self.lr}){' or a larger epsilon' if hasattr(self, 'epsilon') else ''}."
                    )
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scores.append(-loss.item())
            history["train"].append(float(np.mean(scores)) if scores else float("nan"))
            if len(val):
                score = self._evaluate(net, series, val, weights, device)
                history["validation"].append(score)
                bar.set_postfix(validation=f"{score:.4f}")
            elif monitor_train:
                score = history["train"][-1]
            else:
                continue
            threshold = best_score + tolerance * abs(best_score) if np.isfinite(best_score) else best_score
            improved = score > threshold
            if score > best_score:
                best_score = score
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                history["best_epoch"] = epoch
            if improved:
                stale = 0
            else:
                stale += 1
                if self.patience is not None and stale >= self.patience:
                    break
        if best_state is not None:
            net.load_state_dict(best_state)
        else:
            history["best_epoch"] = len(history["train"]) - 1
        net.eval()
        return history

    def _setup(self, X, sample_weight):
        """Validate parameters and data; return what every fit needs."""
        validate_parameter_constraints(
            self._parameter_constraints, self.get_params(deep=False), caller_name=type(self).__name__,
        )
        series = self._as_time_series(X, reset=True)
        weights = self._sample_weights(sample_weight, series)
        pairs = lagged_pairs(series.lengths, self.lagtime, type(self).__name__)
        rng = check_generator(self.random_state)
        device = resolve_device(self.device)
        return series, weights, pairs, rng, device

    def __getstate__(self):
        state = self.__dict__.copy()
        if "module_" in state:  # unpickles on a CPU-only machine whatever it trained on
            state["module_"] = copy.deepcopy(state["module_"]).to("cpu")
        return state

    def _net(self):
        """The fitted network on the device asked for now."""
        device = resolve_device(self.device)
        return self.module_.to(device), device

    def attention_importance(self, X, *, batch_size: int | None = None) -> np.ndarray:
        """Per-residue importance from the token mixer's attention.

        Attention weights are read out batch by batch and averaged over
        frames, heads and layers: with ``pooling="cls"`` the attention the
        class token pays to each fragment, with ``"mean"`` the attention each
        fragment receives. Fragments map back to residues through the window
        boundaries (every residue of a fragment gets its importance).

        Parameters
        ----------
        X : list of token trajectories
            Frames to average over (the training data, typically).
        batch_size : int, default=None
            Frames per forward pass (``None``: the estimator's ``batch_size``).

        Returns
        -------
        importance : ndarray of shape (n_residues,)
            Non-negative, one value per residue; plot it along the sequence
            or write it into a PDB's B-factor column.
        """
        check_is_fitted(self, "module_")
        series = self._as_time_series(X, reset=False)
        if series.kind != "tokens":
            raise ValueError("attention_importance needs token trajectories, not feature arrays.")
        net, device = self._net()
        lobe = net if isinstance(net, TokenLobe) else net.lobe
        if not lobe.blocks:
            raise ValueError("The network has no attention layers (n_layers=0).")
        net.eval()
        batch_size = batch_size or self.batch_size
        total, count = 0.0, 0
        with torch.no_grad():
            for traj, n in enumerate(series.lengths):
                for start in range(0, n, batch_size):
                    index = np.arange(start, min(n, start + batch_size))
                    with self._autocast(device):
                        _, maps = lobe(*series.frames(traj, index, device), return_attention=True)
                    weights = torch.stack(maps).float()  # (layers, frames, heads, L, L)
                    if lobe.cls is not None:
                        received = weights[..., 0, 1:]  # what the class token reads
                    else:
                        received = weights.mean(dim=-2)  # what each token is read, on average
                    total = total + received.mean(dim=(0, 2)).sum(dim=0).double().cpu()
                    count += len(index)
        fragments = (total / count).numpy()
        n_residues = series.items[0].n_residues
        window = series.spec.window if series.spec is not None else 1
        return fragments[np.arange(n_residues) // window]

