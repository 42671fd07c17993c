"""The token-merging step: the scikit-learn half of the token-merging module (TMM).

:class:`TokenMerger` validates token trajectories and attaches its
:class:`~g2v_sklearn.MergeSpec` to them (without copying any array);
the learner that follows in the pipeline builds the torch module
(:class:`g2v_sklearn.nn._merger.TokenMergerModule`) from it, owns it and
trains it end to end. A downstream ``fit`` therefore never mutates this step.

The merger's other two files: ``tokens/_merge_spec.py`` (what a merge is)
and ``nn/_merger.py`` (the module that merges).
"""

from __future__ import annotations

import math
import warnings
from numbers import Integral, Real

from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from .._compat import Interval, StrOptions, _fit_context
from .._utils import PickleVersionMixin, keep_parameters
from ..nn._merger import FRAGMENT_CONVS
from ..tokens._merge_spec import MergeSpec
from ..tokens._trajectory import TokenTrajectory, check_token_list

__all__ = ["MergedTokens", "TokenMerger"]


class _AttachedSpec(type):
    def __instancecheck__(cls, obj) -> bool:
        return isinstance(obj, TokenTrajectory) and obj.merge_spec is not None


class MergedTokens(metaclass=_AttachedSpec):
    """Deprecated: a token trajectory with a merge specification attached.

    .. deprecated:: 0.1.0
        :class:`TokenMerger` now returns :class:`TokenTrajectory` objects
        whose :attr:`~TokenTrajectory.merge_spec` is set; this name goes in
        0.2. ``MergedTokens(tokens, spec)`` warns and returns
        ``tokens.with_merge_spec(spec)``, and ``isinstance(x, MergedTokens)``
        is true for token trajectories that carry a merge specification.

    Parameters
    ----------
    tokens : TokenTrajectory
        The residue tokens.
    spec : MergeSpec
        The merge specification of a fitted :class:`TokenMerger`.

    Examples
    --------
    >>> import warnings
    >>> import numpy as np
    >>> from g2v_sklearn import MergedTokens, TokenMerger, TokenTrajectory
    >>> tokens = TokenTrajectory(np.zeros((5, 10, 4, 8), np.float32), np.zeros((5, 10, 3), np.float32),
    ...                          residue_names=["ALA"] * 10, chain_ids=["A"] * 10,
    ...                          residue_ids=range(1, 11))
    >>> merged = TokenMerger(window=4).fit_transform([tokens])[0]
    >>> type(merged).__name__, isinstance(merged, MergedTokens)
    ('TokenTrajectory', True)
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     old_style = MergedTokens(tokens, merged.merge_spec)
    >>> caught[0].category.__name__, old_style.merge_spec == merged.merge_spec
    ('FutureWarning', True)
    """

    def __new__(cls, tokens: TokenTrajectory | None = None, spec: MergeSpec | None = None):
        if tokens is None and spec is None:  # unpickling one made by 0.1.0.dev0
            return object.__new__(_PickledMergedTokens)
        warnings.warn(
            "MergedTokens is deprecated and will be removed in 0.2: TokenMerger now returns "
            "TokenTrajectory objects with merge_spec set. Use tokens.with_merge_spec(spec).",
            FutureWarning,
            stacklevel=2,
        )
        if not isinstance(tokens, TokenTrajectory):
            raise TypeError(f"tokens must be a TokenTrajectory; got {type(tokens).__name__}")
        return tokens.with_merge_spec(spec)


class _PickledMergedTokens:
    """What a MergedTokens pickled by 0.1.0.dev0 loads into: its ``__setstate__``
    turns it into the token trajectory it wrapped, with the spec attached."""

    def __setstate__(self, state: dict) -> None:
        tokens, spec = state["tokens"], state["spec"]
        self.__class__ = TokenTrajectory
        self.__dict__.update(tokens.with_merge_spec(spec).__dict__)


# --------------------------------------------------------------------------- the pipeline step
class TokenMerger(PickleVersionMixin, TransformerMixin, BaseEstimator):
    """Pipeline step that sets up the token-merging module for the learner after it.

    Residue tokens go through one fragment-graph convolution on the residue
    graph (edges between residues closer than ``cutoff``), then an MLP merges
    windows of ``window`` consecutive residues into one fragment token
    (``ceil(n_residues / window)`` fragments; a short last window is padded
    and the padding masked), then a sinusoidal encoding of the fragment index
    is added. The module's weights are trained end to end by the learner that
    follows (:class:`VAMPNetEstimator`, :class:`SPIBEstimator`): this step
    only validates the tokens and attaches its :class:`MergeSpec`, so its
    ``transform`` copies no array and no downstream ``fit`` ever changes it.

    Parameters
    ----------
    window : int, default=4
        Residues per fragment; 1 means no merging.
    operator : {"graphconv", "rggc", "none"}, default="graphconv"
        Fragment-graph convolution.
    cutoff : float, default=8.0
        Residue-graph cutoff in Angstrom.
    hidden_channels : int, default=None
        Width of the fragment tokens; ``None`` keeps the input's.
    positional_encoding : bool, default=True
        Add a sinusoidal encoding of the fragment index.

    Attributes
    ----------
    spec_ : MergeSpec
        What the learner builds the merging module from.
    n_residues_ : int
        Residues per frame of the input.
    n_fragments_ : int
        Fragment tokens per frame, ``ceil(n_residues_ / window)``.
    n_channels_in_ : int
        Channels H of the input tokens.

    See Also
    --------
    VAMPNetEstimator : a learner that trains the merger end to end.
    SPIBEstimator : another learner that trains the merger end to end.

    Examples
    --------
    Ten residues in windows of four give three fragments (the last window
    holds two residues and is padded):

    >>> import numpy as np
    >>> from g2v_sklearn import TokenMerger, TokenTrajectory
    >>> tok = TokenTrajectory(np.zeros((5, 10, 4, 8), np.float32), np.zeros((5, 10, 3), np.float32),
    ...                       residue_names=["ALA"] * 10, chain_ids=["A"] * 10, residue_ids=range(10))
    >>> merger = TokenMerger(window=4).fit([tok])
    >>> merger.n_residues_, merger.n_fragments_
    (10, 3)
    >>> merger.spec_.fragment_of_residue()
    array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    >>> merged = merger.transform([tok])  # the tokens, with the specification attached
    >>> merged[0].merge_spec is merger.spec_, merged[0].features is tok.features
    (True, True)

    In a pipeline the learner that follows builds the merging module from
    this specification and trains it:
    ``Pipeline([("merge", TokenMerger(window=4)), ("vamp", VAMPNetEstimator(lagtime=10))])``.
    """

    _parameter_constraints: dict = {
        "window": [Interval(Integral, 1, None, closed="left")],
        "operator": [StrOptions(set(FRAGMENT_CONVS))],
        "cutoff": [Interval(Real, 0, None, closed="neither")],
        "hidden_channels": [Interval(Integral, 1, None, closed="left"), None],
        "positional_encoding": ["boolean"],
    }

    def __init__(self, window=4, *, operator="graphconv", cutoff=8.0, hidden_channels=None,
                 positional_encoding=True):
        keep_parameters(self, locals())

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.requires_fit = True
        return tags

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Validate the token trajectories and fix the merge specification.

        Parameters
        ----------
        X : list of TokenTrajectory
            Residue tokens of one system, one entry per trajectory (the
            output of :class:`GeomEmbedder`).
        y : None
            Ignored.

        Returns
        -------
        self : TokenMerger
        """
        items = check_token_list(X, "TokenMerger")
        n_res, h = items[0].n_residues, items[0].n_channels
        if self.window > n_res:
            raise ValueError(
                f"window={self.window} is larger than the number of residues ({n_res}); "
                f"use a window between 1 and {n_res}."
            )
        self.n_residues_ = n_res
        self.n_channels_in_ = h
        self.n_fragments_ = math.ceil(n_res / self.window)
        self.spec_ = MergeSpec(
            window=int(self.window), operator=self.operator, cutoff=float(self.cutoff),
            in_channels=h, hidden_channels=int(self.hidden_channels or h), n_residues=n_res,
            n_fragments=self.n_fragments_, positional_encoding=bool(self.positional_encoding),
        )
        return self

    def transform(self, X):
        """Attach the merge specification (no copy of the token arrays).

        Parameters
        ----------
        X : list of TokenTrajectory
            Residue tokens with the residues and channels seen in :meth:`fit`.

        Returns
        -------
        merged : list of TokenTrajectory
            The same tokens (no copy of any array), each with ``spec_`` as
            its ``merge_spec``.
        """
        check_is_fitted(self, "spec_")
        items = check_token_list(X, "TokenMerger")
        for i, item in enumerate(items):
            if (item.n_residues, item.n_channels) != (self.n_residues_, self.n_channels_in_):
                raise ValueError(
                    f"Token trajectory {i} has {item.n_residues} residues and {item.n_channels} "
                    f"channels, but TokenMerger was fitted on {self.n_residues_} residues and "
                    f"{self.n_channels_in_} channels."
                )
        return [t.with_merge_spec(self.spec_) for t in items]
