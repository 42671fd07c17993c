"""Data-parallel training on torch.distributed: two gloo ranks on this CPU against one process.

One launch of two rank processes (tests/learners/distributed_worker.py, plain
subprocesses with the launcher's environment variables, as torchrun sets
them) and one single-process reference run beside them serve every test
here: the first optimizer step's loss and gradients, short fits, the
refusals, and a rank that dies mid-fit.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from g2v_sklearn import VAMPNetEstimator

WORKER = Path(__file__).with_name("distributed_worker.py")
N_FRAMES = 1500


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(data: Path, out: Path, world: int, port: int) -> list[subprocess.Popen]:
    env = dict(os.environ, OMP_NUM_THREADS="1", G2V_THREAD_BUDGET="0", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port), WORLD_SIZE=str(world))
    procs = []
    for rank in range(world):
        env_rank = dict(env, RANK=str(rank), LOCAL_RANK=str(rank))
        if world == 1:
            for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
                env_rank.pop(name)
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(data), str(out)], env=env_rank,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


@pytest.fixture(scope="module")
def runs(dihedral_features, ala2_tokens, tmp_path_factory):
    """(reference, rank 0, rank 1) results: each a (json report, npz arrays) pair."""
    root = tmp_path_factory.mktemp("distributed")
    rng = np.random.default_rng(0)
    x = [f[:N_FRAMES] for f in dihedral_features[:2]]
    # heavy-tailed per-frame weights: the ranks' shares of a batch weigh differently
    w = [rng.lognormal(0.0, 2.0, N_FRAMES) for _ in range(2)]
    data = root / "data.npz"
    np.savez(data, x0=x[0], x1=x[1], w0=w[0], w1=w[1])
    with open(root / "data-tokens.pkl", "wb") as handle:
        pickle.dump([t[:600] for t in ala2_tokens[:2]], handle)
    (root / "one").mkdir()
    (root / "two").mkdir()
    clock = time.perf_counter()
    procs = _launch(data, root / "one", 1, 0) + _launch(data, root / "two", 2, _free_port())
    outputs = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    results = []
    for out, rank in ((root / "one", 0), (root / "two", 0), (root / "two", 1)):
        report = json.loads((out / f"rank{rank}.json").read_text()) if (out / f"rank{rank}.json").exists() else {}
        arrays = dict(np.load(out / f"rank{rank}.npz")) if (out / f"rank{rank}.npz").exists() else {}
        results.append((report, arrays))
    return {"results": results, "codes": codes, "stderr": [e for _, e in outputs],
            "seconds": time.perf_counter() - clock}


@pytest.mark.parametrize("name", ["vamp2", "vampe", "spib"])
def test_first_step_on_two_ranks_is_the_step_of_one_process_on_their_union(runs, name):
    (ref, ref_arrays), (rep0, arrays0), (rep1, arrays1) = runs["results"]
    assert ref_arrays, runs["stderr"][0][-3000:]
    assert arrays0 and arrays1, runs["stderr"][1][-3000:] + runs["stderr"][2][-3000:]
    # The two shares of the first batch weigh differently: a mean of the ranks' weighted mean losses
    # would be off by (S0 / S - 1/2) (L0 - L1), far above 1e-6 at these imbalances (1.4 % and more).
    share0, share1 = rep0[f"{name}_share_weight"], rep1[f"{name}_share_weight"]
    assert abs(share0 - share1) > 0.01 * (share0 + share1), (share0, share1)
    assert share0 + share1 == pytest.approx(ref[f"{name}_share_weight"], rel=1e-12)
    loss = ref_arrays[f"{name}_loss"]
    grads = ref_arrays[f"{name}_grads"]
    for arrays in (arrays0, arrays1):
        np.testing.assert_allclose(arrays[f"{name}_loss"], loss, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(arrays[f"{name}_grads"], grads, rtol=1e-6, atol=1e-6 * np.abs(grads).max())


@pytest.mark.parametrize("name", ["vampnet_arrays", "spib_arrays", "vampnet_tokens"])
def test_short_fit_on_two_ranks_transforms_like_one_process(runs, name):
    (ref, ref_arrays), (rep0, arrays0), (rep1, arrays1) = runs["results"]
    expected = ref_arrays[f"{name}_transform"]
    # rank 0's fitted estimator is that of one process holding every pair (float32 networks on tokens)
    tolerance = 1e-4 if name.endswith("tokens") else 1e-6
    np.testing.assert_allclose(arrays0[f"{name}_transform"], expected, atol=tolerance * np.abs(expected).max())
    # and the other rank ends with the same weights, to the bit
    np.testing.assert_array_equal(arrays1[f"{name}_transform"], arrays0[f"{name}_transform"])
    assert rep0[f"{name}_epochs"] == rep1[f"{name}_epochs"] == ref[f"{name}_epochs"]
    if name.startswith("spib"):
        np.testing.assert_array_equal(arrays0[f"{name}_labels"], ref_arrays[f"{name}_labels"])
        np.testing.assert_array_equal(arrays1[f"{name}_labels"], arrays0[f"{name}_labels"])


def test_a_preempted_fit_resumes_on_every_rank_from_rank_0s_file(runs):
    (ref, ref_arrays), (rep0, arrays0), (rep1, arrays1) = runs["results"]
    assert rep0["best_files"] and all(name.endswith(".pt") for name in rep0["best_files"])  # no temporaries
    assert rep0["resumed_from_epoch"] == rep1["resumed_from_epoch"] == ref["resumed_from_epoch"] is not None
    assert rep0["resumed_train"] == rep1["resumed_train"]  # rank 1 got rank 0's history, then the same scores
    np.testing.assert_array_equal(arrays1["resumed_transform"], arrays0["resumed_transform"])
    expected = ref_arrays["resumed_transform"]
    np.testing.assert_allclose(arrays0["resumed_transform"], expected, atol=1e-6 * np.abs(expected).max())


def test_grid_search_threads_and_other_data_are_refused_on_every_rank(runs):
    for report, _ in runs["results"][1:]:
        refusals = report["refusals"]
        assert "scikit-learn's model selection" in refusals["grid_search"]
        assert "main thread" in refusals["thread"]
        assert "rank [1] was given other data" in refusals["other_data"]


def test_a_rank_that_dies_ends_the_others_with_an_error_not_a_hang(runs):
    (_, _), (rep0, _), (_, _) = runs["results"]
    assert runs["codes"][2] == 17  # rank 1 died where the test killed it
    dead = rep0["dead_rank"]
    assert dead["error"] is not None and "Training on 2 ranks stopped" in dead["error"]
    assert dead["seconds"] < 30  # well within the 20-s collective timeout plus start-up
    assert runs["codes"][1] == 0


def test_a_launched_process_without_a_process_group_is_refused(monkeypatch, dihedral_features):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    est = VAMPNetEstimator(lagtime=5, hidden_layer_sizes=(8,), max_epochs=1, progress=False)
    with pytest.raises(RuntimeError, match="no torch.distributed process group.*init_distributed"):
        est.fit(dihedral_features[0][:300])


def test_init_distributed_without_a_master_address_says_what_to_set(monkeypatch):
    from g2v_sklearn import init_distributed

    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    with pytest.raises(ValueError, match="rank 0 of 4.*MASTER_ADDR and MASTER_PORT are not set"):
        init_distributed()
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert init_distributed() == (0, 1)  # one task: nothing to join


_LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID",
                     "SLURM_NTASKS", "SLURM_LOCALID", "TORCHELASTIC_USE_AGENT_STORE")


@pytest.fixture
def bare_environment(monkeypatch):
    for name in _LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_partial_or_garbled_launcher_environment_is_an_error_that_names_the_variable(bare_environment):
    from g2v_sklearn import init_distributed

    env = bare_environment
    env.setenv("RANK", "1")  # had trained alone, as rank 0 of 1
    with pytest.raises(ValueError, match=r"RANK=1 is set but WORLD_SIZE is not.*torchrun sets RANK, WORLD_SIZE"):
        init_distributed()
    env.delenv("RANK")
    env.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="WORLD_SIZE=2 is set but RANK is not"):
        init_distributed()
    env.setenv("RANK", "2")
    with pytest.raises(ValueError, match=r"RANK=2 and WORLD_SIZE=2 do not make a rank of a job: RANK must be "
                                         r"at least 0 and less than WORLD_SIZE"):
        init_distributed()
    env.setenv("RANK", "0")
    env.setenv("WORLD_SIZE", "two")  # had been "invalid literal for int() with base 10: 'two'"
    with pytest.raises(ValueError, match=r"The environment variable WORLD_SIZE='two' is not a whole number: a "
                                         r"launcher sets it to the number of ranks"):
        init_distributed()
    est = VAMPNetEstimator(lagtime=5, hidden_layer_sizes=(8,), max_epochs=1, progress=False)
    with pytest.raises(ValueError, match="WORLD_SIZE='two' is not a whole number"):
        est.fit(np.zeros((50, 2)))
    env.delenv("RANK")
    env.delenv("WORLD_SIZE")
    env.setenv("SLURM_PROCID", "0")  # a batch script without --ntasks: one process
    assert init_distributed() == (0, 1)


def test_a_slurm_job_whose_other_rank_never_started_says_so_early(bare_environment):
    """--ntasks=2 with `python` instead of `srun python`: one process with SLURM_NTASKS=2 had
    waited the whole collective timeout (10 minutes), then said '1/2 clients joined'."""
    import torch.distributed as dist

    from g2v_sklearn import DistributedTrainingError, init_distributed

    env = bare_environment
    env.setenv("SLURM_PROCID", "0")
    env.setenv("SLURM_NTASKS", "2")
    env.setenv("MASTER_ADDR", "127.0.0.1")
    env.setenv("MASTER_PORT", str(_free_port()))
    clock = time.perf_counter()
    with pytest.raises(DistributedTrainingError, match=r"only 1 of 2 ranks arrived within 0.5 s \(this is rank 0; "
                                                       r"SLURM_PROCID=0 and SLURM_NTASKS=2\).*`srun python "
                                                       r"script.py`.*join_timeout"):
        init_distributed(join_timeout=0.5)
    assert time.perf_counter() - clock < 10
    assert not dist.is_initialized()
    env.setenv("SLURM_PROCID", "1")  # and a rank whose rank 0 never came
    no_rank_0 = r"rank 1 of 2 .* found no rank 0 at MASTER_ADDR:MASTER_PORT \(127.0.0.1:\d+\) within 0.5 s"
    with pytest.raises(DistributedTrainingError, match=no_rank_0):
        init_distributed(join_timeout=0.5)
    assert not dist.is_initialized()
