"""Old module names, so that pickles made by earlier layouts still load.

Up to 0.1.0.dev0 every module sat flat in the package (``g2v_sklearn._vampnet``,
``g2v_sklearn._networks``, ...), and a pickle names the module of every class
and function it holds. Each old name is registered here as a stand-in module
whose attributes are looked up, by name, in the modules that hold that code
today; unpickling (and ``import g2v_sklearn._vampnet``) then finds the classes
of today. Modules split or moved since then are registered the same way
(``g2v_sklearn.tokens._tokens``, which held the token store's four jobs, and
the frozen featurisers that sat in ``g2v_sklearn.nn``).
Nothing else is kept of the old modules: no code lives here.
"""

from __future__ import annotations

import importlib
import sys
import types

# old flat module -> today's modules, searched in order for a name.
FLAT_LAYOUT = {
    "_backbone": ("backbones._backbone",),
    "_callbacks": ("learners._callbacks",),
    "_embedder": ("embedding._embedder", "embedding._reading", "embedding._pooling", "embedding._pretrain",
                  "tokens._trajectory", "tokens._format", "tokens._writer"),
    "_learner": ("learners._learner", "learners._trainer"),
    "_merger": ("learners._merger", "nn._merger", "tokens._merge_spec"),
    "_msm": ("msm._discretize", "msm._estimator", "msm._selection"),
    "_neighbors": ("backbones._neighbors",),
    "_networks": ("nn._lobes",),
    "_padded_visnet": ("backbones._padded_visnet",),
    "_spib": ("learners._spib", "nn._spib"),
    "_tokens": ("tokens._trajectory", "tokens._format", "tokens._writer"),
    "_topology": ("embedding._topology",),
    "_vamp": ("learners._vamp",),
    "_vampnet": ("learners._vampnet",),
}

# a module of a later layout, since split or moved -> today's modules. A module that still
# exists cannot be listed (its stand-in would hide it): it keeps importing the names it gave
# away, as tokens._trajectory does MergeSpec.
SPLIT = {
    "nn._backbone": ("backbones._backbone",),
    "nn._neighbors": ("backbones._neighbors",),
    "nn._padded_visnet": ("backbones._padded_visnet",),
    "nn._pretrained": ("backbones._pretrained",),
    "nn._torchmd": ("backbones._torchmd",),
    "tokens._tokens": ("tokens._trajectory", "tokens._merge_spec", "tokens._format", "tokens._writer"),
}

# (old module, old name) -> today's name, for names that changed as they moved
RENAMED = {
    ("_embedder", "_RamWriter"): "RamTokenWriter",
    ("_embedder", "_Source"): "Source",
    ("_embedder", "_as_sources"): "as_sources",
    ("_learner", "_OPTIMIZERS"): "OPTIMIZERS",
    ("_merger", "FragmentConv"): "FRAGMENT_CONVS",
}


class _MovedModule(types.ModuleType):
    """Stand-in for a module of the flat layout."""

    def __init__(self, package: str, old: str, homes: tuple[str, ...]) -> None:
        super().__init__(f"{package}.{old}", f"Moved: its code now lives in {', '.join(homes)}.")
        self._package, self._old, self._homes = package, old, homes

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        package = self._package
        attr = RENAMED.get((self._old, attr), attr)
        for home in self._homes:
            module = importlib.import_module(f"{package}.{home}")
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(
            f"{self.__name__}.{attr} no longer exists: the module moved to "
            f"{' and '.join(f'{package}.{h}' for h in self._homes)}, which has no {attr!r}. "
            "A pickle that needs it was made by a version this one cannot read; "
            "refit the estimator with this version."
        )


def register(package: str) -> None:
    """Register every old module name under ``package`` (done once, on import)."""
    for old, homes in {**FLAT_LAYOUT, **SPLIT}.items():
        sys.modules.setdefault(f"{package}.{old}", _MovedModule(package, old, homes))
