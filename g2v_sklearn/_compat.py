"""Every import of a private scikit-learn or deeptime name lives here.

A release that moves one of them then breaks this file only (and so does
every reliance on where scikit-learn runs its fits, see
:func:`inside_model_selection`).
"""

import sys

from sklearn.base import _fit_context  # noqa: F401 - validates parameters once per fit
from sklearn.utils._param_validation import (  # noqa: F401
    Interval,
    Options,
    StrOptions,
    validate_parameter_constraints,
    validate_params,
)

__all__ = [
    "_fit_context",
    "Interval",
    "inside_model_selection",
    "Options",
    "StrOptions",
    "validate_parameter_constraints",
    "transition_matrix_sampler",
    "validate_params",
]


def transition_matrix_sampler():
    """deeptime's transition-matrix sampler class, which takes a seed.

    deeptime does not re-export it (its public ``BayesianMSM.sample`` cannot
    be seeded), so it is imported from its private module here, and only
    when a Bayesian MSM is fitted: a move in deeptime then breaks Bayesian
    fits, with this message, and nothing else.
    """
    try:
        from deeptime.markov.tools.estimation.dense.tmat_sampling.tmatrix_sampler import (
            TransitionMatrixSampler,
        )
    except ImportError as exc:
        raise ImportError(
            "This deeptime release moved its transition-matrix sampler, which Bayesian "
            "MSMEstimator fits use for seeded sampling; install a deeptime release that has it (0.4.4 to 0.5 do)."
        ) from exc
    return TransitionMatrixSampler


#: scikit-learn's private functions that fit the clones of model selection
#: (GridSearchCV, cross_validate, learning_curve, ...), by module.
_MODEL_SELECTION_FITS = {"sklearn.model_selection._validation": {"_fit_and_score", "_fit_and_predict"}}


def inside_model_selection(max_depth: int = 128) -> bool:
    """Whether the caller runs inside scikit-learn's model selection (a fit of GridSearchCV,
    cross_validate and their kin), found by the private function names on the stack.

    A scikit-learn release that renames them makes this say False, which
    only loses a refusal (data-parallel training inside a grid search).
    """
    frame = sys._getframe(1)
    for _ in range(max_depth):
        if frame is None:
            return False
        names = _MODEL_SELECTION_FITS.get(frame.f_globals.get("__name__"))
        if names and frame.f_code.co_name in names:
            return True
        frame = frame.f_back
    return False
