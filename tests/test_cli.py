"""The ``g2v`` command line: one-line config mistakes, --help examples, and the command-line
route (``g2v embed``, ``g2v fit``, ``g2v report``) against the same pipeline written in Python,
on one process and on two torchrun-style gloo ranks.

Tiny on purpose: two trajectories of the shipped alanine dipeptide at a 500-ps stride
(200 frames each), a one-layer mixer trained two epochs. Importing g2v_sklearn costs a new
interpreter about 5 s, so the three commands of the route run one after another in one
subprocess (through the console script's own entry point, ``main``), beside the two ranks;
tools/check_wheel.sh runs each as its own ``g2v`` process in a fresh environment.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import Pipeline

import g2v_sklearn.datasets
from g2v_sklearn import GeomEmbedder, KMeansDiscretizer, MSMEstimator, TokenMerger, VAMPNetEstimator
from g2v_sklearn.cli import main

DATA = Path(g2v_sklearn.datasets.__file__).parent / "_data" / "alanine_dipeptide"
TRAJECTORIES = [str(DATA / "traj_0.xtc"), str(DATA / "traj_1.xtc")]
TOPOLOGY = str(DATA / "ala2_heavy.pdb")
STRIDE = 50
VAMP = dict(lagtime=2, n_components=2, d_model=16, n_heads=2, n_layers=1, batch_size=128, max_epochs=2,
            progress=False, random_state=0)
STEPS = """\
[merge]
window = 1
operator = "none"
[vamp]
lagtime = 2
n_components = 2
d_model = 16
n_heads = 2
n_layers = 1
batch_size = 128
max_epochs = 2
progress = false
random_state = 0
{lr}
[cluster]
n_clusters = 10
random_state = 0
[msm]
lagtime = 2
"""
# the route: token stores from g2v embed, a grid over the learning rate
ROUTE = '[data]\nstores = ["tokens"]\n' + STEPS.format(lr="") + "[grid]\nvamp__lr = [1e-3, 5e-3]\n"
# the ranks: they embed the trajectories themselves (into RAM), at one learning rate
RANKS = (f"[data]\ntrajectories = {TRAJECTORIES!r}\n[embed]\ntopology = {TOPOLOGY!r}\nstride = {STRIDE}\n"
         f"progress = false\n" + STEPS.format(lr="lr = 5e-3"))
RUN_COMMANDS = ("import shlex, sys\nfrom g2v_sklearn.cli import main\n"
                "for command in sys.argv[1:]:\n    main(shlex.split(command), prog_name='g2v', standalone_mode=False)\n")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _python(args, cwd, **env) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", G2V_THREAD_BUDGET="0", MPLBACKEND="Agg", **env)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(g2v_sklearn.__file__).parents[1]), env.get("PYTHONPATH", "")])
    return subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, visnet_name):
    """The command-line route and the two ranks, started together, and the Python route meanwhile."""
    root = tmp_path_factory.mktemp("cli")
    (root / "fit.toml").write_text(ROUTE)
    (root / "ranks.toml").write_text(RANKS)
    route = _python(["-c", RUN_COMMANDS,
                     f"embed {' '.join(TRAJECTORIES)} --topology {TOPOLOGY} --backbone {visnet_name} "
                     f"--stride {STRIDE} --out tokens",
                     "fit fit.toml --out fit", "report fit/model.joblib --out report --lagtimes 1,2"], root)
    launcher = dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2")
    ranks = [_python(["-m", "g2v_sklearn", "fit", "ranks.toml", "--out", "ranks"], root,
                     RANK=str(r), LOCAL_RANK=str(r), **launcher) for r in range(2)]

    # meanwhile, the Python route: the same steps and search, written as a user would
    tokens = GeomEmbedder(visnet_name, topology=TOPOLOGY, stride=STRIDE, progress=False).fit_transform(
        TRAJECTORIES)
    pipe = Pipeline([("merge", TokenMerger(window=1, operator="none")), ("vamp", VAMPNetEstimator(**VAMP)),
                     ("cluster", KMeansDiscretizer(10, random_state=0)), ("msm", MSMEstimator(lagtime=2))])
    search = GridSearchCV(pipe, {"vamp__lr": [1e-3, 5e-3]}, cv=KFold(2, shuffle=True, random_state=0),
                          scoring=lambda est, X, y=None: est[:2].score(X)).fit(tokens)
    one_process = VAMPNetEstimator(**VAMP, lr=5e-3).fit(TokenMerger(window=1, operator="none").fit_transform(tokens))

    outputs = [process.communicate(timeout=300) for process in [route, *ranks]]
    codes = [process.returncode for process in [route, *ranks]]
    return {"root": root, "tokens": tokens, "search": search, "one_process": one_process,
            "codes": codes, "stdout": [o for o, _ in outputs], "stderr": [e for _, e in outputs]}


def test_the_command_line_gives_the_slowest_timescale_of_the_python_route(runs):
    assert runs["codes"][0] == 0, runs["stdout"][0][-3000:] + runs["stderr"][0][-3000:]
    root, search = runs["root"], runs["search"]
    summary = json.loads((root / "report" / "summary.json").read_text())
    run = json.loads((root / "fit" / "run.json").read_text())
    python_ns = search.best_estimator_["msm"].timescales(2) * runs["tokens"][0].timestep / 1000
    assert run["grid_search"]["chosen"] == search.best_params_
    np.testing.assert_allclose(summary["slowest_timescales_ns"]["learned"], python_ns, rtol=1e-6)
    assert summary["data"] == {"trajectories": 2, "frames": [200, 200], "timestep_ps": 500.0,
                               "lag_frames": 2, "lag_ps": 1000.0}
    for name in ("implied_timescales.png", "ck_test.png", "free_energy.png", "training.png"):
        assert (root / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert joblib.load(root / "fit" / "model.joblib")["vamp"].history_ == json.loads(
        (root / "fit" / "history.json").read_text())
    header = (root / "fit" / "cv_results.csv").read_text().splitlines()[0].split(",")
    assert header[0] == "vamp__lr" and "mean_test_score" in header and "split1_test_score" in header
    # what each command printed
    stdout = runs["stdout"][0]
    assert stdout.count("(200 frames, 3 residues)") == 2  # g2v embed, one line per trajectory
    assert "grid search: chosen {'vamp__lr'" in stdout and "report     : report/" in stdout


def test_g2v_fit_on_two_gloo_ranks_fits_the_model_of_one_process(runs):
    """Ranks launched as tests/learners/test_distributed.py launches them: the launcher's variables."""
    assert runs["codes"][1:] == [0, 0], runs["stderr"][1][-3000:] + runs["stderr"][2][-3000:]
    assert "written" in runs["stdout"][1] and runs["stdout"][2] == ""  # rank 0 writes, rank 1 says nothing
    ranks = joblib.load(runs["root"] / "ranks" / "model.joblib")
    assert ranks.steps[0][0] == "embed" and ranks["embed"].checkpoint == "visnet"
    merged = TokenMerger(window=1, operator="none").fit_transform(runs["tokens"])
    expected = np.concatenate(runs["one_process"].transform(merged))
    # the distributed tests' tolerance for float32 networks on tokens
    np.testing.assert_allclose(np.concatenate(ranks["vamp"].transform(merged)), expected,
                               atol=1e-4 * np.abs(expected).max())
    assert len(ranks["vamp"].history_["train"]) == len(runs["one_process"].history_["train"])


# -- mistakes ------------------------------------------------------------------------------------
def run_fit_config(tmp_path, text: str):
    config = tmp_path / "fit.toml"
    config.write_text(text)
    result = CliRunner().invoke(main, ["fit", str(config), "--out", str(tmp_path / "out")])
    return config, result


def one_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


TRAJ_CONFIG = f"""\
[data]
trajectories = [{str(DATA / 'traj_0.xtc')!r}]
[embed]
topology = {TOPOLOGY!r}
[vamp]
lagtime = 2
[cluster]
n_clusters = 5
[msm]
lagtime = 2
"""


@pytest.mark.parametrize("change, message", [
    ("[grid]\nvamp__lerning_rate = [1e-3]\n",
     "[grid] vamp__lerning_rate: unknown key, expected step__parameter with a step of the pipeline "
     "(vamp, cluster, msm); did you mean 'vamp__lr'?"),
    ("[search]\nfolds = 3\n",
     "[search] folds: unknown key, expected one of cv, scoring, n_jobs, random_state; did you mean "),
    ("[vampnet]\nlagtime = 2\n", "[vampnet]: unknown section, expected one of data, embed, merge, "),
])
def test_an_unknown_key_is_one_line_with_the_nearest_valid_one(tmp_path, change, message):
    config, result = run_fit_config(tmp_path, TRAJ_CONFIG + change)
    assert result.exit_code == 2
    assert one_line(result).startswith(f"Error: {config}: {message}")


def test_an_unknown_parameter_of_a_step_suggests_its_nearest(tmp_path):
    config, result = run_fit_config(tmp_path, TRAJ_CONFIG.replace("lagtime = 2\n[cluster]",
                                                                  "lagtime = 2\nlerning_rate = 0.1\n[cluster]"))
    assert result.exit_code == 2
    assert one_line(result) == (f"Error: {config}: [vamp] lerning_rate: unknown key, expected a parameter "
                                f"of VAMPNetEstimator; did you mean 'lr'?")


@pytest.mark.parametrize("change, message", [
    ('lr = "fast"', "[vamp] lr: expected a float in the range (0.0, inf), got 'fast'"),
    ("max_epochs = 0", "[vamp] max_epochs: expected an int in the range [1, inf), got 0"),
])
def test_a_wrong_type_or_range_is_one_line_with_what_was_expected(tmp_path, change, message):
    config, result = run_fit_config(tmp_path, TRAJ_CONFIG.replace("lagtime = 2\n[cluster]",
                                                                  f"lagtime = 2\n{change}\n[cluster]"))
    assert result.exit_code == 2
    assert one_line(result).startswith(f"Error: {config}: {message}"), one_line(result)


def test_a_missing_file_is_one_line_with_the_nearest_file(tmp_path):
    missing = str(DATA / "traj1.xtc")
    config, result = run_fit_config(tmp_path, TRAJ_CONFIG.replace(str(DATA / "traj_0.xtc"), missing))
    assert result.exit_code == 2
    assert one_line(result) == (
        f"Error: {config}: [data] trajectories: no file {missing!r} (in {DATA}), expected a list of "
        f"trajectory files (globs allowed); did you mean 'traj_1.xtc'?")
    result = CliRunner().invoke(main, ["fit", str(tmp_path / "fti.toml")])
    assert result.exit_code == 2
    assert one_line(result) == (f"Error: {tmp_path / 'fti.toml'}: no such file, expected a TOML "
                                f"configuration; did you mean 'fit.toml'?")


def test_a_failure_is_one_line_with_exit_status_1(tmp_path, monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("G2V_MIRROR", f"http://127.0.0.1:{port}/")
    monkeypatch.setenv("G2V_CACHE", str(tmp_path))
    result = CliRunner().invoke(main, ["fetch", "visnet", "--no-progress"])
    assert result.exit_code == 1
    *said, error = result.output.strip().splitlines()
    # pooch's "Downloading data from ..." comes first where its logger writes to this stderr
    assert all(line.startswith("Downloading data from 'http://127.0.0.1") for line in said)
    assert error.startswith("Error: ConnectionError: Could not download geom2vec's visnet_l6_h64_rbf64_r75.pth")


@pytest.mark.parametrize("command", [[], ["fetch"], ["embed"], ["fit"], ["report"]])
def test_every_help_ends_with_a_worked_example(command):
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0
    text = result.output.rstrip()
    assert "Example" in text.rsplit("Options:", 1)[-1]
    assert text.splitlines()[-1].strip().startswith(("g2v ", "torchrun ", "# ", "G2V_CACHE="))
