"""Sphinx configuration of the g2v_sklearn documentation.

Build (no network access needed; warnings are errors):

    python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

from __future__ import annotations

import os
import sys

# Import the package from this checkout (an editable install works as well).
sys.path.insert(0, os.path.abspath(".."))

import g2v_sklearn  # noqa: E402

project = "g2v_sklearn"
author = "the g2v_sklearn developers"
copyright = "2025-2026, the g2v_sklearn developers"
release = g2v_sklearn.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# -- autodoc / autosummary ---------------------------------------------------
autosummary_generate = True  # stub pages under docs/generated/, rebuilt every time
autosummary_imported_members = True
autodoc_typehints = "none"  # types are written in the numpydoc docstrings
autodoc_member_order = "groupwise"
autodoc_inherit_docstrings = False

# -- numpydoc ----------------------------------------------------------------
numpydoc_show_class_members = False  # the class template lists the members
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True
numpydoc_xref_param_type = False
# Checked on every documented object; a failure is a warning, hence an error
# under -W: unknown sections (GL06), sections out of order (GL07), no
# docstring (GL08), no Examples section (EX01). Methods and properties
# (``Class.member``) and module-level data need no Examples of their own.
numpydoc_validation_checks = {"GL06", "GL07", "GL08", "EX01"}
numpydoc_validation_exclude = {
    r"^g2v_sklearn\.(datasets\.|plotting\.)?[A-Z]\w*\.\w+$",  # Class.member
    r"^g2v_sklearn\.datasets\.[A-Z_]+$",  # ADK_DOMAINS, SHIPPED_SETTINGS
}

# -- MyST (the Markdown pages) -----------------------------------------------
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3

# -- No network: nothing is fetched at build time ----------------------------
# intersphinx is deliberately not enabled, so references to numpy, torch,
# scikit-learn or deeptime stay plain text. MathJax is loaded by the reader's
# browser when a page is viewed, not at build time.

# -- HTML ----------------------------------------------------------------------
html_theme = "alabaster"
html_title = f"g2v_sklearn {release}"
html_static_path: list[str] = []
html_theme_options = {
    "description": "Learned geometric features for the slow dynamics of biomolecules",
    "fixed_sidebar": True,
}


# -- Every public name is in the API reference ----------------------------------
# A name in the ``__all__`` of a documented module that api.rst does not list
# is a warning, hence an error under -W: new public names cannot go undocumented.
_DOCUMENTED_MODULES = ["g2v_sklearn", "g2v_sklearn.datasets", "g2v_sklearn.plotting"]


def _check_api_coverage(app):
    import importlib
    import re

    from sphinx.util import logging

    logger = logging.getLogger("g2v_sklearn.docs")
    with open(os.path.join(app.srcdir, "api.rst"), encoding="utf-8") as handle:
        listed = set(re.findall(r"^\s{3}~?([A-Za-z_][\w.]*)\s*$", handle.read(), flags=re.M))
    for module_name in _DOCUMENTED_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            logger.warning("API reference: cannot import %s (%s)", module_name, err)
            continue
        for name in getattr(module, "__all__", []):
            if name not in listed:
                logger.warning(
                    "API reference: %s.%s is public (in __all__) but docs/api.rst does not list it",
                    module_name, name,
                )


def setup(app):
    app.connect("builder-inited", _check_api_coverage)
