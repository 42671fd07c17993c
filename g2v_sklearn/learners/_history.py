"""The training history of a learner: one typed record with the same layout for every learner."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["History"]

#: The keys every history has, in the order they are read (``details`` follows).
_FIELDS = ("measure", "train", "validation", "round", "best_epochs", "best_epoch", "rollbacks", "best_run", "runs")


@dataclass(frozen=True, eq=False)
class History(Mapping):
    """What a learner's fit recorded, per epoch, per training round and per run: ``history_``.

    Every learner fills the same layout. Training goes in rounds: SPIB's end
    in a relabelling of the states (its :meth:`~SPIBEstimator.partial_fit`
    calls are a round each), VAMPNet trains one round (its
    :meth:`~VAMPNetEstimator.partial_fit` calls continue it). The record is
    read by attribute or, like the dict it replaced, by key
    (``history_["train"]``); its keys are the fields below, then those of
    ``details``. It compares equal to a mapping with the same items, so it
    survives a round trip through JSON (``json.dumps(dict(history))``).

    Parameters
    ----------
    measure : str or None
        What the scores are: ``"VAMP-2"`` (VAMPNet) or ``"SPIB"`` (minus
        the SPIB loss); None when unknown.
    train, validation : list of float
        Per epoch, over all rounds: the score (higher is better) of the
        weights at the end of the epoch on the training and on the
        validation pairs (``validation`` is empty without validation).
    round : list of int
        Per epoch: the training round it belongs to.
    best_epochs : list of int or None
        Per round trained (a restarted or refused SPIB round included):
        its best epoch, counted within the round, as
        :class:`SaveBestWeights` files record it; None where a round
        ended without one (a collapsed run).
    best_epoch : int or None
        The epoch whose weights were kept, counted over the whole history
        (0-based): the best epoch of the last round, or, after a refused
        SPIB refinement, of the round before it.
    rollbacks : list of int
        Epochs after which training went back to the best weights at half
        the learning rate.
    best_run : int or None
        Of ``n_init`` runs, the one kept (None in a run's own history).
    runs : list of History
        The history of every ``n_init`` run (empty in a run's own history).
    details : dict
        What one learner or callback records besides (VAMPNet's
        ``best_score``, ``lr``, ``train_batches``, ``stop_reason``,
        ``collapsed_epoch``; SPIB's ``n_states``, ``states_score``,
        ``restarts``, ``refused_round``; :class:`SaveBestWeights`'
        ``best_weights_file``), as each documents it.

    Examples
    --------
    >>> from g2v_sklearn import History
    >>> h = History.from_mapping({"train": [1.0, 1.5, 1.4], "validation": [], "best_epoch": 1})
    >>> h.best_epoch, h["round"], h.best_epochs_overall()
    (1, [0, 0, 0], [1])
    """

    measure: str | None = None
    train: list = field(default_factory=list)
    validation: list = field(default_factory=list)
    round: list = field(default_factory=list)
    best_epochs: list = field(default_factory=list)
    best_epoch: int | None = None
    rollbacks: list = field(default_factory=list)
    best_run: int | None = None
    runs: list = field(default_factory=list)
    details: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ the mapping
    def __getitem__(self, key: str) -> Any:
        if key in _FIELDS:
            return getattr(self, key)
        return self.details[key]

    def __iter__(self) -> Iterator[str]:
        yield from _FIELDS
        yield from (key for key in self.details if key not in _FIELDS)

    def __len__(self) -> int:
        return len(_FIELDS) + sum(key not in _FIELDS for key in self.details)

    # ------------------------------------------------------------------ reading
    def round_starts(self) -> list[int]:
        """The first epoch of every round trained, one per entry of ``best_epochs``.

        A round starts where ``round`` changes, and where a SPIB first round
        started again with fresh weights (``details["restarts"]``).
        """
        starts = {0} if self.round else set()
        starts |= {i for i in range(1, len(self.round)) if self.round[i] != self.round[i - 1]}
        starts |= {i for i in self.details.get("restarts") or () if i < len(self.round)}
        return sorted(starts)

    def best_epochs_overall(self) -> list[int]:
        """The best epoch of every round that has one, counted over the whole history."""
        return [start + best for start, best in zip(self.round_starts(), self.best_epochs) if best is not None]

    def progress(self) -> dict:
        """The run's record as a dict of fresh lists, to train more rounds into (SPIB's ``partial_fit``)."""
        skip = ("measure", "best_epoch", "best_run", "runs")
        return {key: list(value) if isinstance(value, list) else value for key, value in self.items()
                if key not in skip}

    # ------------------------------------------------------------------ making one
    @classmethod
    def from_mapping(cls, record: Mapping, *, measure: str | None = None) -> History:
        """The record of ``record``: a trainer's or a learner's history as a dict.

        Reads the layout of today (``best_epochs`` per round) and the two of
        the learners' ``history_`` dicts before this record, which pickles
        and ``history.json`` files made by earlier versions hold: VAMPNet's
        (``best_epoch`` an int, no rounds) and SPIB's (``best_epoch`` a list
        per round). A record is returned as it is.
        """
        if isinstance(record, cls):
            return record
        d = dict(record)
        train = list(d.pop("train", []))
        rounds = d.pop("round", None)
        best = d.pop("best_epoch", None)
        if "best_epochs" in d:
            best_epochs = list(d.pop("best_epochs"))
        elif isinstance(best, (list, tuple)):  # SPIB's layout before the record
            best_epochs, best, measure = list(best), None, measure or "SPIB"
        else:  # VAMPNet's (and the trainer's): one round
            best_epochs = [best] if train else []
        history = cls(
            measure=d.pop("measure", None) or measure,
            train=train,
            validation=list(d.pop("validation", None) or []),
            round=[0] * len(train) if rounds is None else list(rounds),
            best_epochs=best_epochs,
            rollbacks=list(d.pop("rollbacks", None) or []),
            best_run=d.pop("best_run", None),
            runs=[cls.from_mapping(run, measure=measure) for run in d.pop("runs", None) or ()],
            details=d,
        )
        return replace(history, best_epoch=history._kept_epoch() if best is None else int(best))

    def _kept_epoch(self) -> int | None:
        """The best epoch of the last round trained (of the one before, after a refused refinement)."""
        overall = self.best_epochs_overall()
        back = 2 if self.details.get("refused_round") is not None else 1
        return overall[-back] if len(overall) >= back else None
