"""Every import of a private scikit-learn or deeptime name lives here.

A release that moves one of them then breaks this file only.
"""

from sklearn.utils._param_validation import (  # noqa: F401
    Interval,
    Options,
    StrOptions,
    validate_parameter_constraints,
    validate_params,
)

__all__ = [
    "Interval",
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
