"""``g2v fit``'s TOML configuration: read, checked, and turned into data, a pipeline and a search.

Every mistake is a :class:`ConfigError` of one line: the file, the key, what
was expected and, for an unknown name, the nearest valid one.
"""

from __future__ import annotations

import difflib
import glob
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import click

from .._compat import validate_parameter_constraints
from ..embedding._embedder import GeomEmbedder
from ..learners._merger import TokenMerger
from ..learners._spib import SPIBEstimator
from ..learners._vampnet import VAMPNetEstimator
from ..msm._discretize import KMeansDiscretizer
from ..msm._estimator import MSMEstimator
from ..backbones._pretrained import BACKBONES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["Config", "ConfigError", "STEPS", "read_config"]

#: Pipeline sections, in pipeline order, with their estimators.
STEPS = {
    "embed": GeomEmbedder,
    "merge": TokenMerger,
    "vamp": VAMPNetEstimator,
    "spib": SPIBEstimator,
    "cluster": KMeansDiscretizer,
    "msm": MSMEstimator,
}
#: The other sections and their keys.
SECTIONS = {
    "data": {"trajectories": "a list of trajectory files (globs allowed)",
             "stores": "a list of token stores, or folders of them (from g2v embed)"},
    "search": {"cv": "an int >= 2 (folds of whole trajectories)",
               "scoring": "'learner' (the learner's own score) or 'msm' (the MSM's VAMP-2)",
               "n_jobs": "an int (fits in parallel)",
               "random_state": "an int (shuffles the folds)"},
    "grid": None,  # keys are step__parameter
}
#: GeomEmbedder parameters that are paths, read relative to the config file.
PATH_PARAMETERS = {"embed": ("checkpoint", "topology", "store_dir", "memory")}
#: Names people write for a parameter, so that a misspelt one still finds it.
ALIASES = {
    "learning_rate": "lr", "lag": "lagtime", "lag_time": "lagtime", "tau": "lagtime",
    "epochs": "max_epochs", "n_epochs": "max_epochs", "num_epochs": "max_epochs",
    "seed": "random_state", "random_seed": "random_state", "clusters": "n_clusters",
    "k": "n_clusters", "states": "n_states", "components": "n_components", "heads": "n_heads",
    "layers": "n_layers", "backbone": "checkpoint", "merge_window": "window",
}


class ConfigError(click.ClickException):
    """A mistake in the configuration: one line, and exit status 2 (a usage error)."""

    exit_code = 2


def nearest(word: str, valid, aliases: dict | None = None) -> str | None:
    """The valid name nearest ``word`` (through ``aliases`` for common synonyms)."""
    valid, aliases = list(valid), aliases or {}
    candidates = valid + [alias for alias, name in aliases.items() if name in valid]
    found = difflib.get_close_matches(word, candidates, n=1, cutoff=0.0)
    if not found:
        return None
    return found[0] if found[0] in valid else aliases[found[0]]


def _suggest(name: str | None, template: str = "{}") -> str:
    return f"; did you mean {template.format(name)!r}?" if name else ""


@dataclass
class Config:
    """A checked configuration."""

    path: Path
    data: dict
    steps: dict  # section -> parameters, in pipeline order
    grid: dict = field(default_factory=dict)
    search: dict = field(default_factory=dict)
    inputs: list = field(default_factory=list)  # the trajectory files, or the store folders

    @property
    def embeds(self) -> bool:
        """Whether the inputs are trajectories to embed (else token stores)."""
        return "trajectories" in self.data

    @property
    def learner(self) -> str:
        return "vamp" if "vamp" in self.steps else "spib"

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key}: {message}")

    def estimator(self, section: str):
        return STEPS[section](**self.steps[section])

    def summary(self) -> dict:
        return {"config": str(self.path.resolve()), "data": self.data, "inputs": self.inputs,
                "steps": self.steps, "grid": self.grid, "search": self.search}


def _is_store(path: Path) -> bool:
    return (path / "meta.json").is_file()


def _store_source(path: Path) -> str:
    try:
        return str(json.loads((path / "meta.json").read_text()).get("provenance", {}).get("source", ""))
    except (OSError, ValueError):
        return ""


def _expand(config: Config, key: str, entries, *, stores: bool) -> list[Path]:
    """Files (or stores) of a [data] list, relative to the config file, in the order given."""
    where = f"[data] {key}"
    if isinstance(entries, str):
        entries = [entries]
    if not isinstance(entries, list) or not entries or not all(isinstance(e, str) for e in entries):
        raise config.error(where, f"expected {SECTIONS['data'][key]}, got {entries!r}")
    found: list[Path] = []
    for entry in entries:
        pattern = config.path.resolve().parent / os.path.expanduser(entry)
        matches = sorted(Path(p) for p in glob.glob(str(pattern)))
        if not matches:
            if glob.has_magic(entry):
                raise config.error(where, f"{entry!r} matches no file (in {pattern.parent}), "
                                          f"expected {SECTIONS['data'][key]}")
            siblings = [p.name for p in pattern.parent.iterdir()] if pattern.parent.is_dir() else []
            raise config.error(where, f"no file {entry!r} (in {pattern.parent}), expected "
                                      f"{SECTIONS['data'][key]}{_suggest(nearest(pattern.name, siblings))}")
        for match in matches:
            if not stores:
                if not match.is_file():
                    raise config.error(where, f"{str(match)!r} is not a file, expected "
                                              f"{SECTIONS['data'][key]}")
                found.append(match)
            elif _is_store(match):
                found.append(match)
            else:
                inside = [p for p in match.iterdir() if _is_store(p)] if match.is_dir() else []
                if not inside:
                    raise config.error(where, f"{str(match)!r} is neither a token store nor a folder "
                                              f"of them, expected {SECTIONS['data'][key]}")
                # a folder of g2v embed's stores: in the order of the files they came from
                found.extend(sorted(inside, key=lambda p: (_store_source(p), p.name)))
    return found


def _expected_from(exc: Exception) -> str:
    match = re.search(r"must be (.+?)\. Got (.+) instead\.?$", str(exc), re.DOTALL)
    return f"expected {match[1]}, got {match[2]}" if match else str(exc)


def _check_values(config: Config, section: str, params: dict, where) -> None:
    """Types and ranges, by the estimator's own constraints (one parameter at a time)."""
    cls = STEPS[section]
    for name, value in params.items():
        try:
            validate_parameter_constraints(cls._parameter_constraints, {name: value},
                                           caller_name=cls.__name__)
        except (ValueError, TypeError) as exc:  # scikit-learn's InvalidParameterError is both
            raise config.error(where(name), _expected_from(exc)) from None


def _step_params(config: Config, section: str, table) -> dict:
    cls = STEPS[section]
    if not isinstance(table, dict):
        raise config.error(f"[{section}]", f"expected a table of {cls.__name__} parameters, "
                                           f"got {table!r}")
    valid = cls().get_params(deep=False)
    for name in table:
        if name not in valid:
            raise config.error(f"[{section}] {name}",
                               f"unknown key, expected a parameter of {cls.__name__}"
                               f"{_suggest(nearest(name, valid, ALIASES))}")
    params = dict(table)
    for name in PATH_PARAMETERS.get(section, ()):
        value = params.get(name)
        if isinstance(value, str) and not (name == "checkpoint" and value in BACKBONES):
            params[name] = str(config.path.resolve().parent / os.path.expanduser(value))
    _check_values(config, section, params, lambda name: f"[{section}] {name}")
    return params


def read_config(path: str | os.PathLike) -> Config:
    """Read and check a ``g2v fit`` configuration.

    Raises
    ------
    ConfigError
        For a missing or unreadable file, invalid TOML, an unknown section or
        key, a value of the wrong type or range, missing data files, or a
        pipeline that cannot work (no learner, no MSM).
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        siblings = [p.name for p in path.parent.glob("*.toml")] if path.parent.is_dir() else []
        raise ConfigError(f"{path}: no such file, expected a TOML configuration"
                          f"{_suggest(nearest(path.name, siblings))}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    config = Config(path=path, data={}, steps={})
    sections = ["data", *STEPS, "grid", "search"]
    for name in raw:
        if name not in sections:
            raise config.error(f"[{name}]", f"unknown section, expected one of "
                                            f"{', '.join(sections)}{_suggest(nearest(name, sections), '[{}]')}")
    for name, keys in SECTIONS.items():
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise config.error(f"[{name}]", f"expected a table, got {table!r}")
        for key in table if keys is not None else ():
            if key not in keys:
                raise config.error(f"[{name}] {key}", f"unknown key, expected one of "
                                                      f"{', '.join(keys)}{_suggest(nearest(key, keys))}")
    config.data = dict(raw.get("data", {}))
    if ("trajectories" in config.data) == ("stores" in config.data):
        raise config.error("[data]", "expected either trajectories (files to embed) or stores "
                                     "(token stores from g2v embed), exactly one of them")
    if config.embeds:
        config.inputs = [str(p) for p in _expand(config, "trajectories", config.data["trajectories"],
                                                 stores=False)]
        embed = raw.get("embed", {})
        if isinstance(embed, dict):  # the command line's backbone by default: geom2vec's ViSNet
            raw["embed"] = {"checkpoint": "visnet", **embed}
    else:
        if "embed" in raw:
            raise config.error("[embed]", "unused: [data] names token stores, which are embedded "
                                          "already; expected [data] trajectories with [embed]")
        config.inputs = [str(p) for p in _expand(config, "stores", config.data["stores"], stores=True)]
    for section in STEPS:
        if section in raw:
            config.steps[section] = _step_params(config, section, raw[section])
    _check_pipeline(config)
    _check_grid(config, raw.get("grid", {}))
    config.search = _check_search(config, raw.get("search", {}))
    return config


def _check_pipeline(config: Config) -> None:
    steps = config.steps
    if ("vamp" in steps) == ("spib" in steps):
        raise config.error("[vamp] or [spib]", "expected exactly one learner section, "
                                               "e.g. [vamp] with lagtime = 10")
    if "msm" not in steps:
        raise config.error("[msm]", "missing, expected a table of MSMEstimator parameters, "
                                    "e.g. lagtime = 10")
    if "cluster" not in steps:
        if "vamp" in steps:
            raise config.error("[cluster]", "missing, expected a table of KMeansDiscretizer "
                                            "parameters (the MSM needs discrete states), e.g. "
                                            "n_clusters = 100")
        if steps["spib"].get("transform_output") != "states":
            raise config.error("[spib] transform_output", "expected 'states' without a [cluster] "
                                                          "section (the MSM needs discrete states)")


def _check_grid(config: Config, grid: dict) -> None:
    searchable = [s for s in config.steps if s != "embed"]
    valid = [f"{s}__{p}" for s in searchable for p in STEPS[s]().get_params(deep=False)]
    for key, values in grid.items():
        section, _, name = key.partition("__")
        if section == "embed":
            raise config.error(f"[grid] {key}", "the embedding runs once, before the search; "
                                                f"expected a parameter of {', '.join(searchable)}")
        if key not in valid:
            guess = None
            if section in searchable:  # the step is right: look among its parameters
                guess = f"{section}__{nearest(name, STEPS[section]().get_params(deep=False), ALIASES)}"
            else:
                guess = nearest(key, valid)
            raise config.error(f"[grid] {key}", f"unknown key, expected step__parameter with a "
                                                f"step of the pipeline ({', '.join(searchable)})"
                                                f"{_suggest(guess)}")
        if not isinstance(values, list) or not values:
            raise config.error(f"[grid] {key}", f"expected a non-empty list of values, got {values!r}")
        for value in values:
            _check_values(config, section, {name: value}, lambda _: f"[grid] {key}")
    config.grid = dict(grid)


def _check_search(config: Config, search: dict) -> dict:
    checks = {
        "cv": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 2,
        "scoring": lambda v: v in ("learner", "msm"),
        "n_jobs": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "random_state": lambda v: isinstance(v, int) and not isinstance(v, bool),
    }
    for key, value in search.items():
        if not checks[key](value):
            raise config.error(f"[search] {key}", f"expected {SECTIONS['search'][key]}, got {value!r}")
    if search and not config.grid:
        raise config.error("[search]", "unused without a [grid]; expected a [grid] table such as "
                                       "vamp__lr = [1e-3, 5e-3]")
    return {"cv": 2, "scoring": "learner", "n_jobs": 1, "random_state": 0, **search}
