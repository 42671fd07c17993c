"""Stress the token stores: concurrent writers of one store, failures mid-embedding, commits.

Usage::

    python benchmarks/stress_stores.py [--threads 4] [--processes 4] [--rounds 20]
        [--frames 50] [--checkpoint PATH] [--json OUT.json]
        [--targets save_tokens memory exception one-key commits]

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
any count is not 0. Workers run one torch thread each.

Three cases count the frames embedded, which must be the frames needed:

* ``exception``: an embedding into a ``memory=`` key that raises an ordinary
  exception (a ``RuntimeError``, as CUDA running out of memory would) in the
  first batch of its fourth chunk, then the rerun: together they must embed
  each frame once (the three committed chunks are kept), with the tokens of
  an uninterrupted run;
* ``one-key``: two processes (spawned, released by a barrier) transforming
  the same trajectory into one ``memory=`` key: one embeds, the other waits
  for it and reads its store, so the frames embedded in total are the
  trajectory's, not twice as many;
* ``commits``: what a commit costs (the flush of the frames since the last
  one and the record of their checksum, timed inside the writer) when the
  embedder commits after every batch, and so what commits by time
  (``COMMIT_SECONDS``, one a minute) cost: at most one commit's time a
  minute. Alanine dipeptide and 20 frames of adenylate kinase (214
  residues).

This is not a timing benchmark, except for ``commits``: it says whether the
store's promises hold under contention and failure.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import multiprocessing as mp
import os
import pickle
import shutil
import sys
import tempfile
import threading
import time
import traceback
import types
from pathlib import Path

import numpy as np

_LOADING = threading.Lock()
BARRIER_TIMEOUT_S = 300.0  # a worker that died breaks the barrier instead of hanging the rest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO.parent / "shared" / "checkpoints" / "visnet_l6_h64_rbf64_r75.pth"


def _tokens_module():
    """The token store (its trajectory type, save_tokens, load_tokens) without the package's
    __init__ where the package is not imported yet: a save_tokens worker needs neither torch nor
    the rest of the package. A stand-in parent package holds only the tokens subpackage, so the
    store's objects pickle by their real names."""
    with _LOADING:  # threads share it: none may see it half-executed
        if "g2v_sklearn" not in sys.modules:
            root = types.ModuleType("g2v_sklearn")
            root.__path__ = [str(REPO / "g2v_sklearn")]
            sys.modules["g2v_sklearn"] = root
        trajectory = importlib.import_module("g2v_sklearn.tokens._trajectory")
        store = importlib.import_module("g2v_sklearn.tokens._format")
        writer = importlib.import_module("g2v_sklearn.tokens._writer")
        return types.SimpleNamespace(TokenTrajectory=trajectory.TokenTrajectory, load_tokens=store.load_tokens,
                                     save_tokens=writer.save_tokens)


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


# ---------------------------------------------------------------- frames embedded, commits
def _counting(fail_at: int | None = None, delay: float = 0.0) -> dict:
    """Make this process's embedder count the frames it embeds (and raise a RuntimeError
    in batch ``fail_at``; sleep ``delay`` seconds a batch, to widen a race on a fast machine)."""
    from g2v_sklearn.embedding import _embedder

    counts = {"frames": 0, "batches": 0, "fail_at": fail_at}
    embed_batch = _embedder._Engine.embed_batch

    def counted(self, pos, *args):
        counts["batches"] += 1
        if counts["batches"] == counts["fail_at"]:
            raise RuntimeError("CUDA out of memory (injected by stress_stores.py)")
        time.sleep(delay)
        counts["frames"] += len(pos)
        return embed_batch(self, pos, *args)

    _embedder._Engine.embed_batch = counted
    return counts


def exception_case(where: str, frames: int = 400, checkpoint: str = str(DEFAULT_CHECKPOINT),
                   chunk_size: int | None = None, batch_size: int | None = None) -> dict:
    """An ordinary exception in the first batch of the fourth chunk (chunks of a quarter of
    the frames by default, in batches of a quarter of a chunk), then the rerun."""
    from g2v_sklearn.embedding import _embedder

    chunk_size = chunk_size or max(1, frames // 4)
    batch_size = batch_size or max(1, chunk_size // 4)
    if frames <= 3 * chunk_size:
        raise ValueError(f"{frames} frames make no fourth chunk of {chunk_size}")
    embedder, traj = _embedder_and_frames(checkpoint, frames)
    embedder.set_params(chunk_size=chunk_size, batch_size=batch_size)
    reference = _digest(embedder.transform([traj])[0])  # in RAM, uninterrupted
    embedder.set_params(memory=where)
    original = _embedder._Engine.embed_batch
    try:
        counts = _counting(fail_at=3 * -(-chunk_size // batch_size) + 1)
        error = None
        try:
            embedder.transform([traj])
        except RuntimeError as exc:
            error = str(exc)
        before = counts["frames"]
        counts.update(frames=0, fail_at=None)
        tokens = embedder.transform([traj])[0]
        rerun = counts["frames"]
    finally:
        _embedder._Engine.embed_batch = original
    return {"case": "exception", "frames_needed": frames, "chunk_size": chunk_size, "batch_size": batch_size,
            "error": error, "embedded_before_the_error": before, "embedded_by_the_rerun": rerun,
            "frames_embedded": before + rerun, "same_tokens": _digest(tokens) == reference,
            "debris": _debris(where, "memory")}


def _one_key_worker(settings: dict, barrier, results, name: str) -> None:
    try:
        embedder, traj = _embedder_and_frames(settings["checkpoint"], settings["frames"])
        embedder.set_params(memory=settings["where"], batch_size=settings["batch_size"])
        counts = _counting(delay=settings["batch_delay"])
        barrier.wait(BARRIER_TIMEOUT_S)
        clock = time.perf_counter()
        tokens = embedder.transform([traj])[0]
        results.put((name, "ok", counts["frames"], _digest(tokens), time.perf_counter() - clock))
    except BaseException:  # noqa: BLE001 - reported
        results.put((name, "error", 0, traceback.format_exc(limit=3), 0.0))
        with contextlib.suppress(Exception):
            barrier.abort()


def one_key_case(where: str, n_processes: int = 2, frames: int = 400, checkpoint: str = str(DEFAULT_CHECKPOINT),
                 batch_size: int = 25, batch_delay: float = 0.0) -> dict:
    """``n_processes`` processes, released together, transform one trajectory into one key."""
    os.makedirs(where, exist_ok=True)
    settings = {"where": where, "frames": frames, "checkpoint": checkpoint, "batch_size": batch_size,
                "batch_delay": batch_delay}
    context = mp.get_context("spawn")
    barrier = context.Barrier(n_processes)
    results = context.Queue()
    workers = [context.Process(target=_one_key_worker, args=(settings, barrier, results, f"process-{i}"))
               for i in range(n_processes)]
    for w in workers:
        w.start()
    records = sorted(results.get(timeout=600) for _ in workers)
    for w in workers:
        w.join(timeout=600)
    done = [r for r in records if r[1] == "ok"]
    entries = [e for e in os.listdir(where) if ".partial-" not in e and ".old-" not in e]
    return {"case": "one key", "processes": n_processes, "frames_needed": frames,
            "frames_embedded_per_process": [r[2] for r in records], "frames_embedded": sum(r[2] for r in records),
            "seconds_per_process": [round(r[4], 2) for r in done],
            "exceptions": [f"{r[0]}: {r[3]}" for r in records if r[1] != "ok"],
            "same_tokens": len(done) == n_processes and len({r[3] for r in done}) == 1,
            "entries": len(entries), "debris": _debris(where, "memory")}


def _timed_commits() -> list:
    """Time every commit (``TokenStoreWriter.checkpoint``) of this process."""
    from g2v_sklearn.tokens import _writer

    seconds = []
    checkpoint = _writer.TokenStoreWriter.checkpoint

    def timed(self, info=None):
        clock = time.perf_counter()
        checkpoint(self, info)
        seconds.append(time.perf_counter() - clock)

    _writer.TokenStoreWriter.checkpoint = timed
    return seconds


def commits_case(where: str, frames: int = 400, adk_frames: int = 20,
                 checkpoint: str = str(DEFAULT_CHECKPOINT)) -> list[dict]:
    """The cost of one commit, committing after every batch, on alanine dipeptide and on
    adenylate kinase; and the overhead of one commit a minute that it implies."""
    import torch

    from g2v_sklearn import GeomEmbedder
    from g2v_sklearn.embedding import _embedder
    from g2v_sklearn.tokens import _writer

    torch.set_num_threads(1)
    embedder, traj = _embedder_and_frames(checkpoint, frames)
    systems = [("alanine dipeptide", embedder.set_params(batch_size=25), traj)]
    try:
        from g2v_sklearn.datasets import load_adenylate_kinase

        adk = load_adenylate_kinase(n_frames=adk_frames).paths[0]
        systems.append(("adenylate kinase", GeomEmbedder(checkpoint, progress=False).fit([adk]), adk))
    except Exception as exc:  # noqa: BLE001 - MDAnalysisTests is optional
        print(f"commits: adenylate kinase skipped ({type(exc).__name__}: {exc})")
    original = (_writer.TokenStoreWriter.checkpoint, _embedder.COMMIT_SECONDS)
    rows = []
    try:
        for label, emb, data in systems:
            row = {"case": "commits", "system": label, "frames": data.n_frames}
            for every, interval in (("chunk", original[1]), ("batch", 0.0)):
                _embedder.COMMIT_SECONDS = interval
                _writer.TokenStoreWriter.checkpoint = original[0]
                seconds = _timed_commits()
                shutil.rmtree(where, ignore_errors=True)
                clock = time.perf_counter()
                emb.set_params(memory=where).transform([data])
                row[f"seconds_committing_every_{every}"] = round(time.perf_counter() - clock, 3)
                row[f"commits_every_{every}"] = len(seconds)
                if every == "batch":
                    row["seconds_per_commit"] = float(np.median(seconds))
                    row["bytes_per_commit"] = int(emb.n_residues_ * (4 * int(emb.config_["hidden_channels"]) + 3)
                                                  * 4 * data.n_frames / max(len(seconds), 1))
            row["overhead_of_one_commit_a_minute_percent"] = round(100 * row["seconds_per_commit"] / 60.0, 4)
            rows.append(row)
    finally:
        _writer.TokenStoreWriter.checkpoint, _embedder.COMMIT_SECONDS = original
        shutil.rmtree(where, ignore_errors=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--checkpoint", default=os.environ.get("G2V_CHECKPOINT", str(DEFAULT_CHECKPOINT)))
    targets = ["save_tokens", "memory", "exception", "one-key", "commits"]
    parser.add_argument("--targets", nargs="+", default=targets, choices=targets)
    parser.add_argument("--case-frames", type=int, default=400,
                        help="frames of the exception, one-key and commits cases")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    failed = False
    reports = []
    from _common import cpu_model

    print(f"{cpu_model()}, {os.cpu_count()} logical CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        for target in args.targets:
            where = os.path.join(tmp, target)
            if target == "exception":
                report = exception_case(where, args.case_frames, args.checkpoint)
                reports.append(report)
                print(f"exception   : {report['frames_needed']} frames needed, {report['frames_embedded']} "
                      f"embedded in total ({report['embedded_before_the_error']} before the error, "
                      f"{report['embedded_by_the_rerun']} by the rerun); tokens as uninterrupted: "
                      f"{report['same_tokens']}; debris {len(report['debris'])}")
                failed |= (report["frames_embedded"] != report["frames_needed"] or not report["same_tokens"]
                           or bool(report["debris"]) or report["error"] is None)
                continue
            if target == "one-key":
                report = one_key_case(where, 2, args.case_frames, args.checkpoint)
                reports.append(report)
                print(f"one key     : 2 processes, {report['frames_needed']} frames needed, "
                      f"{report['frames_embedded']} embedded in total {report['frames_embedded_per_process']}, "
                      f"seconds {report['seconds_per_process']}; same tokens: {report['same_tokens']}; "
                      f"entries {report['entries']}, debris {len(report['debris'])}, exceptions "
                      f"{len(report['exceptions'])}")
                for line in report["exceptions"][:2]:
                    print(f"    exceptions: {line}")
                failed |= (report["frames_embedded"] != report["frames_needed"] or not report["same_tokens"]
                           or report["entries"] != 1 or bool(report["debris"]) or bool(report["exceptions"]))
                continue
            if target == "commits":
                for row in commits_case(where, args.case_frames, checkpoint=args.checkpoint):
                    reports.append(row)
                    print(f"commits     : {row['system']}, {row['frames']} frames: "
                          f"{row['commits_every_batch']} commits (one a batch) in "
                          f"{row['seconds_committing_every_batch']} s, {row['commits_every_chunk']} "
                          f"(one a chunk) in {row['seconds_committing_every_chunk']} s; one commit "
                          f"{1e3 * row['seconds_per_commit']:.2f} ms (median, {row['bytes_per_commit']} bytes): "
                          f"one a minute costs {row['overhead_of_one_commit_a_minute_percent']:.4f}%")
                    failed |= row["overhead_of_one_commit_a_minute_percent"] >= 2.0
                continue
            report = stress(target, where, args.threads, args.processes, args.rounds,
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
