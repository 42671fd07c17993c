"""What a merge is: :class:`MergeSpec`, the window, operator and sizes of one.

This is the first of the token merger's three files, one per layer; the
torch module that merges is in ``nn/_merger.py`` and the scikit-learn step
that makes a spec and attaches it is in ``learners/_merger.py`` (see "How the
package is built" in the guide).
The spec sits in the lowest layer because token trajectories carry it
(``TokenTrajectory.merge_spec``); NumPy and the standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MergeSpec"]


@dataclass(frozen=True)
class MergeSpec:
    """What a learner needs to build the merging module.

    A fitted :class:`TokenMerger` makes one (its ``spec_``) and attaches it
    to the token trajectories it transforms (:attr:`TokenTrajectory.merge_spec`);
    the learner after it builds and trains the torch module from it. Frozen:
    a specification is a value, compared and hashed by its fields.

    Attributes
    ----------
    window : int
        Residues per fragment; 1 means no merging.
    operator : str
        Fragment-graph convolution: ``"graphconv"``, ``"rggc"`` or ``"none"``.
    cutoff : float
        Residue-graph cutoff in Angstrom.
    in_channels, hidden_channels : int
        Token width in and out.
    n_residues, n_fragments : int
        Sequence length before and after merging.
    positional_encoding : bool
        Whether a sinusoidal encoding of the fragment index is added.

    Examples
    --------
    >>> import numpy as np
    >>> from g2v_sklearn import TokenMerger, TokenTrajectory
    >>> tokens = TokenTrajectory(np.zeros((5, 10, 4, 8), np.float32), np.zeros((5, 10, 3), np.float32),
    ...                          residue_names=["ALA"] * 10, chain_ids=["A"] * 10,
    ...                          residue_ids=range(1, 11))
    >>> spec = TokenMerger(window=4).fit([tokens]).spec_
    >>> spec.window, spec.n_residues, spec.n_fragments, spec.in_channels
    (4, 10, 3, 8)
    """

    window: int
    operator: str
    cutoff: float
    in_channels: int
    hidden_channels: int
    n_residues: int
    n_fragments: int
    positional_encoding: bool = True

    def fragment_of_residue(self) -> np.ndarray:
        """Fragment index of every residue, shape (n_residues,).

        Returns
        -------
        fragments : ndarray of shape (n_residues,)

        Examples
        --------
        >>> from g2v_sklearn import MergeSpec
        >>> spec = MergeSpec(window=4, operator="graphconv", cutoff=8.0, in_channels=8,
        ...                  hidden_channels=8, n_residues=10, n_fragments=3)
        >>> spec.fragment_of_residue()
        array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
        """
        return np.arange(self.n_residues) // self.window
