"""The ``g2v`` command line: fetch, embed, fit, report."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Mapping
from pathlib import Path

import click
import numpy as np

from .._version import __version__
from ..backbones._pretrained import BACKBONES
from ._config import ConfigError, read_config

__all__ = ["main"]


class _Group(click.Group):
    """Failures are one line (``Error: ...``, exit status 1) unless ``--debug`` asks for the traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes a one-line message
            if ctx.params.get("debug"):
                raise
            message = " ".join(str(exc).split())
            raise click.ClickException(f"{type(exc).__name__}: {message} (--debug shows the traceback)") from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="""\b
Example:
  g2v fetch visnet
  g2v embed run0.xtc run1.xtc --topology protein.pdb --out tokens
  g2v fit fit.toml --out fit
  g2v report fit/model.joblib --out report
""")
@click.version_option(__version__, prog_name="g2v")
@click.option("--debug", is_flag=True, help="Show the full traceback of a failure.")
def main(debug):
    """g2v_sklearn's command line: pretrained backbones, token stores, fits and reports.

    Each command's --help ends with a worked example. Usage and configuration
    mistakes exit with status 2, failures with status 1.
    """


@main.command(epilog=f"""\b
Example (on a login node with internet access, before jobs on compute nodes
without it; the cache is then shared through the home folder):
  g2v fetch                                  # all of: {', '.join(BACKBONES)}
  G2V_CACHE=/project/g2v-cache g2v fetch visnet
""")
@click.argument("names", nargs=-1, type=click.Choice(list(BACKBONES)))
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show download progress.")
def fetch(names, progress):
    """Fill the cache with geom2vec's pretrained backbones (all when no NAMES).

    Downloads each file once from geom2vec's repository at a pinned commit
    (or from $G2V_MIRROR), checks its SHA-256, keeps it in the per-user cache
    ($G2V_CACHE) and prints its path. The files are geom2vec's (Pengmei et
    al., J. Chem. Phys. 162, 2025; github.com/dinner-group/geom2vec), MIT
    licence.
    """
    from ..backbones._pretrained import fetch_backbone

    for name in names or list(BACKBONES):
        click.echo(f"{name}\t{fetch_backbone(name, progress=progress)}")


@main.command(epilog="""\b
Example:
  g2v embed run0.xtc run1.xtc --topology protein.pdb --backbone visnet --out tokens
  # then in fit.toml:  [data] stores = ["tokens"]
""")
@click.argument("trajectories", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False))
@click.option("--topology", "-t", type=click.Path(exists=True, dir_okay=False),
              help="Topology of trajectory files that have none (PDB, PSF, PRMTOP, GRO, ...).")
@click.option("--backbone", "-b", default="visnet", show_default=True,
              help=f"A pretrained backbone by name ({', '.join(BACKBONES)}) or a checkpoint path.")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
              help="Folder of the token stores (one per trajectory).")
@click.option("--selection", "-s", default=None,
              help="mdtraj selection of the atoms to embed (default: heavy atoms, no water or ions).")
@click.option("--stride", default=1, show_default=True, type=click.IntRange(min=1),
              help="Embed every stride-th frame.")
@click.option("--n-jobs", "-j", default=None, type=int, help="Trajectories embedded in parallel.")
@click.option("--device", default="auto", show_default=True, help="'auto', 'cpu', 'cuda', 'cuda:1', ...")
def embed(trajectories, topology, backbone, out, selection, stride, n_jobs, device):
    """Embed trajectories into token stores, one per trajectory, with progress bars.

    An interrupted run resumes where it stopped when run again with the same
    arguments; a finished store is reused. Stores are named by a hash of the
    input, parameters and weights; g2v fit reads a folder of them in the
    order of the files they were made from. A backbone by name comes from
    $G2V_MIRROR (a folder or URL) when set, else from geom2vec's repository,
    and is kept in $G2V_CACHE (default: the per-user cache).
    """
    from ..embedding._embedder import GeomEmbedder

    embedder = GeomEmbedder(backbone, topology=topology, selection=selection, stride=stride,
                            n_jobs=n_jobs, device=device, store_dir=out)
    for path, tokens in zip(trajectories, embedder.fit_transform(list(trajectories))):
        click.echo(f"{path} -> {tokens.path} ({tokens.n_frames} frames, {tokens.n_residues} residues)")


_FIT_EXAMPLE = """\b
Example fit.toml (keys are the estimators' own parameters; paths are
relative to the file):
  [data]
  stores = ["tokens"]          # from g2v embed; or trajectories = ["run*.xtc"]
  # [embed]                    # with trajectories: GeomEmbedder's parameters
  # topology = "protein.pdb"   # (checkpoint = "visnet" unless given)
  [merge]                      # TokenMerger (optional)
  window = 4
  [vamp]                       # VAMPNetEstimator, or [spib] SPIBEstimator
  lagtime = 10
  n_components = 2
  random_state = 0
  [cluster]                    # KMeansDiscretizer
  n_clusters = 100
  random_state = 0
  [msm]                        # MSMEstimator
  lagtime = 10
  [grid]                       # optional: GridSearchCV over step__parameter
  merge__window = [1, 4]
  vamp__lr = [1e-3, 5e-3]
  [search]                     # optional: cv = 2, scoring = "learner" or "msm",
  cv = 2                       # n_jobs = 1, random_state = 0 (shuffles the folds)
\b
  g2v fit fit.toml --out fit
  torchrun --nproc-per-node 4 -m g2v_sklearn fit fit.toml --out fit   # without [grid]
"""


@main.command(epilog=_FIT_EXAMPLE)
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--out", "-o", default="g2v-fit", show_default=True, type=click.Path(file_okay=False),
              help="Output folder: model.joblib, history.json, cv_results.csv, run.json.")
def fit(config, out):
    """Fit a pipeline (embed or token stores -> merge -> vamp or spib -> cluster -> msm).

    The steps and an optional grid search come from the TOML file CONFIG.
    Writes the fitted pipeline (model.joblib, for joblib.load), the learner's
    training history (history.json), the grid search's table
    (cv_results.csv) and what was run (run.json, which g2v report reads).
    Under torchrun or srun the learner trains data-parallel on the ranks
    (embed with g2v embed first), and rank 0 writes the files.
    """
    from ..learners._distributed import init_distributed

    config = read_config(config)
    rank, world = init_distributed()
    if world > 1 and config.grid:
        raise config.error("[grid]", f"a grid search cannot run on {world} ranks (its fits would not "
                                     f"run in step); expected no [grid] under torchrun or srun: choose "
                                     f"the parameters on one process, then train them on the ranks")
    try:
        _run_fit(config, Path(out), rank)
    finally:
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


class _LearnerScore:
    """The grid search's scorer: the learner step's own ``score`` (VAMP-2 for VAMPNet) at its lag."""

    def __init__(self, step: str):
        self.step = step

    def __call__(self, estimator, X, y=None):
        names = [name for name, _ in estimator.steps]
        return estimator[: names.index(self.step) + 1].score(X)


def _jsonable(value):
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, Mapping):  # a learner's History
        return dict(value)
    return str(value)


def _load_inputs(inputs: list[str], embeds: bool):
    from ..tokens._format import load_tokens

    return list(inputs) if embeds else [load_tokens(d) for d in inputs]


def _run_fit(config, out: Path, rank: int) -> None:
    import joblib
    from sklearn.model_selection import GridSearchCV, KFold
    from sklearn.pipeline import Pipeline

    from ..reporting import cv_table

    clock = time.perf_counter()
    embedder = None
    X = _load_inputs(config.inputs, config.embeds)
    if config.embeds:
        embedder = config.estimator("embed")
        X = embedder.fit_transform(X)
    pipe = Pipeline([(s, config.estimator(s)) for s in config.steps if s != "embed"])
    search = None
    if config.grid:
        scoring = None if config.search["scoring"] == "msm" else _LearnerScore(config.learner)
        folds = KFold(config.search["cv"], shuffle=True, random_state=config.search["random_state"])
        search = GridSearchCV(pipe, config.grid, cv=folds, scoring=scoring, error_score="raise",
                              n_jobs=config.search["n_jobs"]).fit(X)
        fitted = search.best_estimator_
    else:
        fitted = pipe.fit(X)
    if rank != 0:
        return  # every rank holds the fitted model; one writes it
    model = Pipeline([("embed", embedder)] + fitted.steps) if embedder is not None else fitted
    msm, learner = fitted["msm"], fitted[config.learner]
    timestep = getattr(X[0], "timestep", None)
    run = {
        **config.summary(),
        "version": __version__,
        "frames": [int(x.n_frames) for x in X],
        "timestep_ps": timestep,
        "slowest_timescales_frames": msm.timescales(min(2, msm.n_states_ - 1)).tolist()
        if msm.n_states_ > 1 else [],
        "seconds": time.perf_counter() - clock,
    }
    if search is not None:
        run["grid_search"] = {"candidates": cv_table(search), "chosen": search.best_params_,
                              "best_cv_score": float(search.best_score_),
                              "scoring": config.search["scoring"]}
    out.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, out / "model.joblib")
    (out / "history.json").write_text(json.dumps(learner.history_, indent=1, default=_jsonable) + "\n")
    if search is not None:
        _write_cv_results(search, out / "cv_results.csv")
    (out / "run.json").write_text(json.dumps(run, indent=1, default=_jsonable) + "\n")
    slowest = run["slowest_timescales_frames"]
    scale = f" = {', '.join(f'{t * timestep / 1000:.4g}' for t in slowest)} ns" if timestep else ""
    click.echo(f"fit        : {len(X)} trajectories, {sum(run['frames'])} frames, "
               f"{run['seconds']:.0f} s")
    if search is not None:
        click.echo(f"grid search: chosen {search.best_params_} (CV score {search.best_score_:.4g})")
    click.echo(f"timescales : slowest implied timescales {', '.join(f'{t:.4g}' for t in slowest)} "
               f"frames{scale}" if slowest else "timescales : none (the MSM has a single state)")
    click.echo(f"written    : {out}/ (model.joblib, history.json, "
               f"{'cv_results.csv, ' if search is not None else ''}run.json)")


def _write_cv_results(search, path: Path) -> None:
    results = search.cv_results_
    names = list(results["params"][0])
    columns = sorted(k for k in results if k.endswith(("_score", "_time")) and not k.startswith("param"))
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(names + columns)
        for i, params in enumerate(results["params"]):
            writer.writerow([params[n] for n in names] + [results[c][i] for c in columns])


@main.command(epilog="""\b
Example:
  g2v fit fit.toml --out fit
  g2v report fit/model.joblib --out report
  # report/: implied_timescales.png, ck_test.png, free_energy.png, training.png, summary.json
""")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Report folder.")
@click.option("--lagtimes", default=None,
              help="Lag times (frames) of the implied-timescale plot, e.g. 5,10,20 "
                   "(default: around the MSM's lag time).")
def report(model, out, lagtimes):
    """Figures and summary.json of a model that g2v fit wrote.

    Reads MODEL (model.joblib) and the run.json beside it, which says which
    trajectories or token stores it was fitted on; computes the learned
    coordinates and states of those again, and writes implied timescales
    against lag time, a Chapman-Kolmogorov test, the free energy on the
    learned coordinates, the training history and summary.json.
    """
    import joblib

    from ..reporting import pipeline_report

    run_file = Path(model).with_name("run.json")
    if not run_file.is_file():
        raise ConfigError(f"{model}: no run.json beside it, expected the folder that g2v fit wrote "
                          f"(it says which data the model was fitted on)")
    run = json.loads(run_file.read_text())
    lags = None
    if lagtimes is not None:
        try:
            lags = [int(t) for t in lagtimes.split(",")]
        except ValueError:
            raise ConfigError(f"--lagtimes: {lagtimes!r}, expected integers separated by commas, "
                              f"e.g. 5,10,20") from None
    pipeline = joblib.load(model)
    X = _load_inputs(run["inputs"], "trajectories" in run["data"])
    extra = {"grid_search": run["grid_search"]} if "grid_search" in run else {}
    summary = pipeline_report(pipeline, X, out, timestep=run.get("timestep_ps"), lagtimes=lags,
                              extra=extra)
    key = next(k for k in summary if k.startswith("slowest_timescales_"))
    unit = key.rpartition("_")[2]
    click.echo(f"timescales : slowest implied timescales "
               f"{', '.join(f'{t:.4g}' for t in summary[key]['learned'])} {unit}")
    click.echo(f"report     : {out}/ ({', '.join(summary['figures'])}, summary.json)")
