"""The wheel carries everything the package reads at run time, and the ``g2v`` console script.

The wheel is built from a copy of what a clone holds (pyproject.toml, README.md and
the package) and unpacked, as pip installs a pure-Python wheel. Package data is read
through ``importlib.resources.files("g2v_sklearn.datasets")`` only, so pointing that at
the unpacked wheel and running the loaders opens exactly the files the code needs from
the wheel: one it lacks is a FileNotFoundError here. tools/check_wheel.sh installs the
wheel in a fresh virtual environment and runs the main job from an empty folder.
"""

from __future__ import annotations

import configparser
import importlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, Path]:
    """(the wheel, the folder it was unpacked into)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source)
    shutil.copytree(REPO / "g2v_sklearn", source / "g2v_sklearn",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--wheel-dir", str(root / "dist"), str(source)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (built,) = (root / "dist").glob("g2v_sklearn-*.whl")
    with zipfile.ZipFile(built) as archive:
        archive.extractall(root / "site")
    return built, root / "site"


def test_the_wheel_holds_every_file_of_the_package(wheel):
    built, _ = wheel
    names = set(zipfile.ZipFile(built).namelist())
    package = {str(p.relative_to(REPO)) for p in (REPO / "g2v_sklearn").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert package - names == set()
    assert {"g2v_sklearn/datasets/_data/alanine_dipeptide/traj_0.xtc", "g2v_sklearn/cli/_config.py"} <= names


def test_what_the_code_opens_is_in_the_wheel(wheel, monkeypatch):
    _, site = wheel
    alanine = importlib.import_module("g2v_sklearn.datasets._alanine")
    asked = []

    def files(package: str):
        asked.append(package)
        return site.joinpath(*package.split("."))

    monkeypatch.setattr(alanine.resources, "files", files)
    data = alanine.load_alanine_dipeptide(stride=1000)  # settings.json, the topology, four trajectories
    assert len(data.trajectories) == 4 and data.trajectories[0].n_frames == 10
    assert Path(alanine._pdb_path()).is_file()  # simulate_alanine_dipeptide's starting structure
    assert asked and set(asked) == {"g2v_sklearn.datasets"}


def test_the_wheel_installs_the_g2v_command_and_its_dependencies(wheel):
    built, _ = wheel
    with zipfile.ZipFile(built) as archive:
        info = next(n.split("/")[0] for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        entry_points = configparser.ConfigParser()
        entry_points.read_string(archive.read(f"{info}/entry_points.txt").decode())
        metadata = archive.read(f"{info}/METADATA").decode()
    assert dict(entry_points["console_scripts"]) == {"g2v": "g2v_sklearn.cli:main"}
    module, _, name = entry_points["console_scripts"]["g2v"].partition(":")
    assert getattr(importlib.import_module(module), name).name == "main"  # the click group
    requires = [line.split(" ")[1].split(">")[0] for line in metadata.splitlines()
                if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert {"pooch", "click", "torch", "mdtraj"} <= set(requires)
