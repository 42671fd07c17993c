"""Stress the token stores: concurrent writers of one store, in threads and processes.

Usage::

    python benchmarks/stress_stores.py [--threads 4] [--processes 4] [--rounds 20]
        [--frames 50] [--checkpoint PATH] [--json OUT.json]

Two targets, each written by every worker in every round, all workers
released together by a barrier:

* ``save_tokens``: one store directory, the same tokens saved by everyone;
* ``memory=``: one :class:`~g2v_sklearn.GeomEmbedder` cache key (the shipped
  alanine dipeptide's first frames), the entry removed before every other
  round (never after the last), so that half the rounds race to write it and
  half read it.

Every returned token set is pickled in its worker, with a digest of the data
it was given; at the end each is unpickled (which reopens its store) and the
given data, the reopened data and the store left on disk are compared. The script prints, per target,
the exceptions raised (should be 0), the debris left next to the store
(``.old-*`` / ``.partial-*``; should be 0), and the token sets that did not
unpickle or differ from the one on disk (should be 0), and exits with 1 if
any count is not 0. Workers run one torch thread each. This is not a timing
benchmark: it says whether the store's promises hold under contention.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import os
import pickle
import shutil
import sys
import tempfile
import threading
import traceback
from pathlib import Path

import numpy as np

_LOADING = threading.Lock()
BARRIER_TIMEOUT_S = 300.0  # a worker that died breaks the barrier instead of hanging the rest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO.parent / "shared" / "checkpoints" / "visnet_l6_h64_rbf64_r75.pth"


def _tokens_module():
    """g2v_sklearn.tokens._tokens loaded by file: a save_tokens worker needs neither torch nor the package."""
    with _LOADING:  # threads share it: none may see it half-executed
        if "_g2v_tokens" not in sys.modules:  # registered, so that its objects pickle by name
            spec = importlib.util.spec_from_file_location("_g2v_tokens", REPO / "g2v_sklearn" / "tokens" / "_tokens.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules["_g2v_tokens"] = module
            spec.loader.exec_module(module)
        return sys.modules["_g2v_tokens"]


def _toy_tokens(module):
    rng = np.random.default_rng(0)
    return module.TokenTrajectory(
        rng.standard_normal((40, 7, 4, 16)).astype(np.float32),
        rng.uniform(-20, 20, (40, 7, 3)).astype(np.float32),
        residue_names=["ALA"] * 7, chain_ids=["A"] * 7, residue_ids=list(range(1, 8)), timestep=10.0,
    )


def _embedder_and_frames(checkpoint: str, n_frames: int):
    import torch

    torch.set_num_threads(1)
    from g2v_sklearn import GeomEmbedder
    from g2v_sklearn.datasets import load_alanine_dipeptide

    frames = load_alanine_dipeptide(stride=10).trajectories[0][:n_frames]
    return GeomEmbedder(checkpoint, progress=False).fit([frames]), frames


def _worker(target: str, where: str, settings: dict, barrier, results, name: str) -> None:
    """Write ``target`` once per round; put (name, round, pickled result or error) on ``results``."""
    try:
        if target == "save_tokens":
            module = _tokens_module()
            tokens = _toy_tokens(module)
            directory = os.path.join(where, "store")

            def write():
                return module.save_tokens(tokens, directory)
        else:
            embedder, frames = _embedder_and_frames(settings["checkpoint"], settings["frames"])
            embedder.set_params(memory=where)

            def write():
                return embedder.transform([frames])[0]
    except BaseException:  # a worker that cannot start: an error for each of its rounds
        message = traceback.format_exc(limit=3)
        for round_ in range(settings["rounds"]):
            results.put((name, round_, "error", message))
            barrier.wait(BARRIER_TIMEOUT_S)
            barrier.wait(BARRIER_TIMEOUT_S)
        return
    for round_ in range(settings["rounds"]):
        barrier.wait(BARRIER_TIMEOUT_S)  # all workers start the round together
        try:
            tokens = write()
            # what this worker was given, as bytes: the end compares it with the store on disk
            results.put((name, round_, "ok", (pickle.dumps(tokens), _digest(tokens))))
        except BaseException as exc:  # noqa: BLE001 - counting is the point
            results.put((name, round_, "error", f"{type(exc).__name__}: {exc}"))
        barrier.wait(BARRIER_TIMEOUT_S)  # the round is over: the coordinator may clear the cache


def _digest(tokens) -> str:
    import hashlib

    h = hashlib.sha256()
    for array in (tokens.features, tokens.positions):
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def _debris(where: str, target: str) -> list[str]:
    if target == "save_tokens":
        return sorted(e for e in os.listdir(where) if e != "store")
    entries = os.listdir(where)
    keys = [e for e in entries if ".partial-" not in e and ".old-" not in e]
    return sorted(set(entries) - set(keys[:1]))


def stress(target: str, where: str, n_threads: int, n_processes: int, rounds: int,
           frames: int = 50, checkpoint: str = str(DEFAULT_CHECKPOINT)) -> dict:
    """Run ``rounds`` rounds of every worker writing ``target`` in ``where``; return the counts."""
    os.makedirs(where, exist_ok=True)
    settings = {"rounds": rounds, "frames": frames, "checkpoint": checkpoint}
    context = mp.get_context("spawn")  # no forked torch or lock state
    barrier = context.Barrier(n_threads + n_processes + 1)
    results = context.Queue()
    workers = [threading.Thread(target=_worker, args=(target, where, settings, barrier, results, f"thread-{i}"),
                                daemon=True) for i in range(n_threads)]
    workers += [context.Process(target=_worker, args=(target, where, settings, barrier, results, f"process-{i}"))
                for i in range(n_processes)]
    for w in workers:
        w.start()
    for round_ in range(rounds):
        barrier.wait(BARRIER_TIMEOUT_S)
        barrier.wait(BARRIER_TIMEOUT_S)
        if target == "memory" and round_ % 2 == 0 and round_ < rounds - 1:
            for entry in os.listdir(where):  # the next round races to write the entry again
                shutil.rmtree(os.path.join(where, entry), ignore_errors=True)
    records = [results.get(timeout=600) for _ in range(len(workers) * rounds)]
    for w in workers:
        w.join(timeout=600)
    errors = [f"{n} round {r}: {m}" for n, r, status, m in records if status == "error"]
    debris = _debris(where, target)
    bad = []
    if target == "save_tokens":
        winner = _tokens_module().load_tokens(os.path.join(where, "store"))
    else:
        keys = [e for e in os.listdir(where) if ".partial-" not in e and ".old-" not in e]
        from g2v_sklearn import load_tokens

        winner = load_tokens(os.path.join(where, keys[0])) if keys else None
    for name, round_, status, payload in records:
        if status != "ok":
            continue
        blob, given = payload
        try:
            back = pickle.loads(blob)  # reopens the store at its path
            same = winner is not None and given == _digest(winner) == _digest(back)
        except Exception as exc:  # noqa: BLE001
            bad.append(f"{name} round {round_}: {type(exc).__name__}: {exc}")
            continue
        if not same:
            bad.append(f"{name} round {round_}: differs from the store on disk")
    return {"target": target, "threads": n_threads, "processes": n_processes, "rounds": rounds,
            "calls": len(records), "exceptions": errors, "debris": debris, "bad_token_sets": bad}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--checkpoint", default=os.environ.get("G2V_CHECKPOINT", str(DEFAULT_CHECKPOINT)))
    parser.add_argument("--targets", nargs="+", default=["save_tokens", "memory"],
                        choices=["save_tokens", "memory"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    failed = False
    reports = []
    with tempfile.TemporaryDirectory() as tmp:
        for target in args.targets:
            report = stress(target, os.path.join(tmp, target), args.threads, args.processes, args.rounds,
                            args.frames, args.checkpoint)
            reports.append(report)
            counts = {k: len(report[k]) for k in ("exceptions", "debris", "bad_token_sets")}
            print(f"{target:12s}: {report['calls']} calls ({args.threads} threads + {args.processes} "
                  f"processes x {args.rounds} rounds): exceptions {counts['exceptions']}, "
                  f"debris {counts['debris']}, bad token sets {counts['bad_token_sets']}")
            for key in ("exceptions", "debris", "bad_token_sets"):
                for line in report[key][:5]:
                    print(f"    {key}: {line}")
            failed |= any(counts.values())
    if args.json is not None:
        args.json.write_text(json.dumps(reports, indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
