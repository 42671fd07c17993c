"""SPIB's states: how well they resolve the slow dynamics, and the decoder's probabilities of them.

Knows nothing of scikit-learn.
"""

from __future__ import annotations

import numpy as np
import torch

from ._series import pair_arrays
from ._vamp import fit_vamp

__all__ = ["decode_means", "states_score"]


def states_score(lagtime: int, score_k: int, labels, pairs, weights) -> float:
    """VAMP-2 of the states on ``pairs`` (``score_k`` singular values of their indicator
    functions, plus 1): how much of the slow dynamics the states resolve; 1 for one state."""
    n_states = int(max(l.max() for l in labels)) + 1
    if n_states < 2:
        return 1.0
    indicators = [np.eye(n_states)[l] for l in labels]
    x, y, w = pair_arrays(indicators, pairs, lagtime, weights)
    try:
        singular_values = fit_vamp(x, y, weights=w).singular_values
    except ValueError:  # no pair leaves or enters a state's frames: nothing resolved
        return 1.0
    return 1.0 + float(np.sum(singular_values[: score_k] ** 2))


def decode_means(net, means: np.ndarray, device, chunk: int = 65536) -> np.ndarray:
    """The decoder's state probabilities at latent ``means`` (chunks of ``chunk`` frames)."""
    with torch.no_grad():
        out = [net.decode(torch.as_tensor(means[s:s + chunk], dtype=torch.float32, device=device))
               .double().exp().cpu().numpy() for s in range(0, len(means), chunk)]
    return np.concatenate(out) if out else np.zeros((0, net.n_states))
