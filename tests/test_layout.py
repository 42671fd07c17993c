"""The package's layers (see "How the package is built" in the guide): no folder imports one above it.

Read from the source with ``ast`` (every import, also those inside
functions), so a lazy import cannot hide a cycle in the design.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "g2v_sklearn"

# lowest first; a layer may import itself and the layers before it
BASE = {"_compat", "_validation", "_utils", "_threads", "_version", "_moved", "_runtime"}
ORDER = ["base", "tokens", "backbones", "nn", "embedding", "learners"]
ALLOWED = {layer: set(ORDER[: i + 1]) for i, layer in enumerate(ORDER)}
ALLOWED["embedding"] -= {"nn"}  # the embedder runs frozen featurisers; trainable networks are the learners'
ALLOWED["msm"] = {"base", "tokens", "msm"}  # the MSM end knows only trajectories
ALLOWED["learners"] |= {"msm"}  # SPIB starts from k-means states
ALLOWED["top"] = set(ORDER) | {"msm", "top"}  # __init__, plotting, reporting, structures, datasets, the command line


def layer_of(module: str) -> str:
    parts = module.split(".")
    assert parts[0] == "g2v_sklearn"
    top = ("plotting", "_plotting_kinetics", "datasets", "reporting", "structures", "cli", "__main__")
    if len(parts) == 1 or parts[1] in top:
        return "top"
    if parts[1] in BASE:
        return "base"
    if parts[1] in ORDER or parts[1] == "msm":
        return parts[1]
    raise AssertionError(f"{module} belongs to no layer: add it to the layout (and the guide)")


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        yield name, path


def imports_of(name: str, path: Path):
    """(package-internal modules, third-party top-level names) that ``path`` imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    internal, external = set(), set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                (internal if alias.name.startswith("g2v_sklearn") else external).add(
                    alias.name if alias.name.startswith("g2v_sklearn") else alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            if target.startswith("g2v_sklearn"):
                if node.module is None:  # "from . import _version": the names are modules
                    internal.update(f"{target}.{a.name}" for a in node.names)
                else:
                    internal.add(target)
            else:
                external.add(target.split(".")[0])
    return internal, external


GRAPH = {name: imports_of(name, path) for name, path in modules()}


def known(module: str) -> str:
    """The module of the graph that ``module`` is, or is in (for "from pkg import name")."""
    while module not in GRAPH:
        module = module.rpartition(".")[0]
    return module


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_no_module_imports_a_layer_above_its_own(name):
    layer = layer_of(name)
    internal, _ = GRAPH[name]
    above = sorted(m for m in internal if layer_of(known(m)) not in ALLOWED[layer])
    assert not above, f"{name} ({layer}) imports from a layer above it: {above}"


@pytest.mark.parametrize("room", ["backbones", "nn"])
def test_the_torch_rooms_do_not_import_scikit_learn_even_indirectly(room):
    closure, todo = set(), [n for n in GRAPH if layer_of(n) == room]
    while todo:
        module = known(todo.pop())
        if module not in closure:
            closure.add(module)
            todo.extend(GRAPH[module][0])
    offenders = sorted(m for m in closure if "sklearn" in GRAPH[m][1])
    assert not offenders, f"{room}/ reaches scikit-learn through {offenders}"
    assert all(layer_of(m) in ALLOWED[room] for m in closure)


def test_the_layering_test_sees_real_imports():
    # A parser that missed relative imports would pass everything above.
    internal, external = GRAPH["g2v_sklearn.learners._spib"]
    assert "g2v_sklearn.msm._discretize" in internal and "g2v_sklearn.nn._spib" in internal
    assert "sklearn" in external and "torch" in external
    assert layer_of(known("g2v_sklearn.embedding._embedder")) == "embedding"
    # the frozen featurisers and the trainable networks are two rooms, the second above the first
    assert "g2v_sklearn.backbones._neighbors" in GRAPH["g2v_sklearn.nn._merger"][0]
    assert layer_of(known("g2v_sklearn.backbones._backbone")) == "backbones"
    assert "nn" not in ALLOWED["backbones"] and "nn" not in ALLOWED["embedding"]
    with pytest.raises(AssertionError, match="belongs to no layer"):
        layer_of("g2v_sklearn._somewhere_new")


def test_torch_geometric_is_imported_only_to_build_a_visnet():
    """torch-geometric is most of the import time: the package, its command line and a
    learner's fit (what joblib's workers run in a grid search) do without it."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, g2v_sklearn, g2v_sklearn.cli\n"
        "from g2v_sklearn import TokenMerger, VAMPNetEstimator\n"
        "from g2v_sklearn.backbones._backbone import BackboneConfig, build_backbone\n"
        "x = [np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32)]\n"
        "VAMPNetEstimator(lagtime=1, n_components=1, max_epochs=1, hidden_layer_sizes=(4,), progress=False,\n"
        "                 random_state=0).fit(x)\n"
        "build_backbone(BackboneConfig(architecture='et'))\n"
        "print('torch_geometric' in sys.modules)\n"
        "build_backbone(BackboneConfig(architecture='visnet'))\n"
        "print('torch_geometric' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]
