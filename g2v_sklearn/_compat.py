"""Every import of a private scikit-learn name lives here.

A scikit-learn release that moves one of them then breaks this file only.
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
    "validate_params",
]
