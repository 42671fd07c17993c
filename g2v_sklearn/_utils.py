"""Small helpers shared by the estimators: devices, random generators, hashing."""

from __future__ import annotations

import copy
import hashlib
import os
import re
import warnings
from contextlib import contextmanager
from numbers import Integral

import numpy as np
import torch

from . import _version
from ._runtime import resolve_device, supports_bfloat16  # their home is _runtime

__all__ = [
    "PickleVersionMixin",
    "VersionWarning",
    "check_generator",
    "local_torch_seed",
    "resolve_device",
    "supports_bfloat16",
    "torch_generator",
    "weights_sha256",
]


def check_generator(random_state) -> np.random.Generator:
    """A local NumPy Generator from ``None``, an int, a Generator or a RandomState.

    Never touches NumPy's global state.
    """
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(0, 2**31 - 1))
    if random_state is None or isinstance(random_state, Integral):
        return np.random.default_rng(random_state)
    raise ValueError(f"random_state must be None, an int or a Generator; got {random_state!r}.")


def torch_generator(rng: np.random.Generator, device="cpu") -> torch.Generator:
    """A torch Generator seeded from a NumPy Generator (a local generator, not a global seed)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(rng.integers(0, 2**63 - 1)))
    return generator


@contextmanager
def local_torch_seed(rng: np.random.Generator):
    """Seed torch's CPU generator from ``rng`` for the block, then restore it.

    For code that draws from torch's global generator internally (module
    initialisers): what runs inside is reproducible, and the caller's global
    random state is left exactly as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(rng.integers(0, 2**63 - 1)))
        yield


def weights_sha256(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state (names, shapes, dtypes and values)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


class VersionWarning(UserWarning):
    """An estimator pickled by another version of g2v_sklearn was unpickled.

    Every estimator's pickle records the version that wrote it; a fitted
    state from another version may not work, or may give other results.

    Examples
    --------
    Refuse such pickles outright:

    >>> import warnings
    >>> from g2v_sklearn import VersionWarning
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("error", VersionWarning)
    ...     issubclass(VersionWarning, UserWarning)
    True
    """


def unreadable_checkpoint(path, exc: Exception) -> str:
    """Why torch could not read ``path`` weights-only, in a line, without torch's advice to
    load it with ``weights_only=False`` (which runs whatever code a pickle holds, and cannot
    help a damaged file)."""
    text = str(exc)
    unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if unsafe:
        return (
            f"Checkpoint {os.fspath(path)!r} could not be read as a weights-only torch file: it holds "
            f"Python objects besides tensors (first: {unsafe.group(1)}); only plain state_dicts of "
            f"tensors are read, since unpickling "
            f"anything else can run arbitrary code. If the file is yours, save the weights alone, "
            f"torch.save(model.state_dict(), path), and pass that file."
        )
    reason = text.splitlines()[0].split(". ")[0] if text.strip() else "no detail"
    if "weights_only" in reason or "Weights only load failed" in reason:
        reason = "its pickle is not one torch.save writes"
    return (
        f"Checkpoint {os.fspath(path)!r} could not be read as a weights-only torch file: it is damaged "
        f"or not a torch checkpoint ({type(exc).__name__}: {reason[:200]}), e.g. a download cut short, "
        f"a file overwritten in part, or another kind of file. Use a good copy of the checkpoint."
    )


def keep_parameters(estimator, arguments: dict) -> None:
    """Keep every constructor argument, unchanged, as the estimator's attribute of its name.

    Called as ``keep_parameters(self, locals())`` in ``__init__``: scikit-learn's
    rule for the constructor (no logic, no validation, no renaming: ``get_params``
    and ``clone`` read the attributes back) then holds by construction, however
    many parameters the estimator has.
    """
    for name in estimator._get_param_names():
        setattr(estimator, name, arguments[name])


class PickleVersionMixin:
    """Pickling for the estimators: the package version goes with the state, and a
    fitted torch network is stored on the CPU.

    scikit-learn's ``BaseEstimator.__getstate__`` records ``_sklearn_version``
    and its ``__setstate__`` warns when it differs; this does the same for
    g2v_sklearn's own version (our fitted attributes change between versions
    too), and moves ``module_`` to the CPU so that a model trained on a GPU
    unpickles on a machine without one. Put it before ``BaseEstimator`` in
    the bases.
    """

    def __getstate__(self):
        __version__ = _version.__version__
        state = super().__getstate__()
        if state is self.__dict__:
            state = state.copy()
        if "module_" in state:
            state["module_"] = copy.deepcopy(state["module_"]).to("cpu")
        state["_g2v_sklearn_version"] = __version__
        return state

    def __setstate__(self, state):
        __version__ = _version.__version__
        pickled = state.pop("_g2v_sklearn_version", "before 0.1.0.dev0 (unrecorded)")
        if pickled != __version__:
            warnings.warn(
                f"This {type(self).__name__} was pickled by g2v_sklearn {pickled} and is unpickled "
                f"by g2v_sklearn {__version__}; its fitted state may not work or may give other "
                f"results. Refit it with this version, or load it with the version that made it.",
                VersionWarning, stacklevel=2,
            )
        super().__setstate__(state)
