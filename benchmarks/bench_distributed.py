"""Training steps per second on 1 and 2 torch.distributed ranks (gloo, CPU), one thread each.

What it measures
----------------
One training step of ``VAMPNetEstimator`` on the tokens of ``bench_train.py``
(a protein-like chain of ``N`` residues, ``H = 64``, ``TokenMerger(window=w)``,
the estimator's default network), taken with the estimator's own step
``trainer.step(ctx, ctx.train)`` on a global batch of ``B`` time-lagged
pairs, in three set-ups:

* ``1 rank, 1 thread``: one process, no process group;
* ``2 ranks, 1 thread each``: two processes (the launcher's environment
  variables set as torchrun sets them, then ``g2v_sklearn.init_distributed()``,
  gloo), each computing its share of the B pairs, summing VAMP's statistics
  and averaging gradients; steps/s is rank 0's;
* ``1 rank, 2 threads``: one process with both cores, what one would run
  without torch.distributed on this machine.

Every set-up runs in fresh processes, one after the other (nothing else
runs beside them); each times ``--steps`` steps after one untimed warm-up
step and reports the median. Ratios are against ``1 rank, 1 thread`` of the
same size, measured in the same invocation.

Usage::

    python benchmarks/bench_distributed.py                  # 214 and 2,645 residues, w=8, B=16
    python benchmarks/bench_distributed.py --sizes 214 --batch 32 --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def run_worker(args) -> None:
    import warnings

    import torch

    warnings.filterwarnings("ignore", message="X gives only")  # B pairs is the point here, not a fit

    sys.path.insert(0, HERE)
    from bench_train import estimator_context, make_tokens

    import g2v_sklearn

    torch.set_num_threads(args.threads)
    rank, world = g2v_sklearn.init_distributed(timeout=300)
    tokens = make_tokens(args.size, 2 * args.batch, seed=0)  # the same tokens on every rank
    est, trainer, ctx = estimator_context(tokens, args.window, args.batch, memory_budget=1e15)
    assert ctx.ranks.world_size == world
    trainer.step(ctx, ctx.train)  # warm-up
    times = []
    for _ in range(args.steps):
        clock = time.perf_counter()
        trainer.step(ctx, ctx.train)
        times.append(time.perf_counter() - clock)
    if rank == 0:
        print(json.dumps({"size": args.size, "window": args.window, "batch": args.batch, "world": world,
                          "threads": args.threads, "step_s": statistics.median(times),
                          "steps": args.steps}), flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(size: int, world: int, threads: int, args) -> dict:
    sys.path.insert(0, HERE)
    from _common import worker_env

    env = worker_env()
    env.update(OMP_NUM_THREADS=str(threads), G2V_THREAD_BUDGET="0")
    command = [sys.executable, __file__, "--worker", "--sizes", str(size), "--window", str(args.window),
               "--batch", str(args.batch), "--steps", str(args.steps), "--threads", str(threads)]
    port = str(_free_port())
    procs = []
    for rank in range(world):
        rank_env = dict(env)
        if world > 1:
            rank_env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                            MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen(command, env=rank_env, stdout=subprocess.PIPE, text=True))
    outputs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a rank failed: return codes {[p.returncode for p in procs]}")
    return json.loads(outputs[0].strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="214,2645", help="residue counts (comma-separated)")
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16, help="global batch of time-lagged pairs")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        args.size = int(args.sizes)
        run_worker(args)
        return
    sys.path.insert(0, HERE)
    from _common import cpu_model

    print(f"# {cpu_model()}, {os.cpu_count()} logical CPUs; w={args.window}, global batch {args.batch} pairs, "
          f"median of {args.steps} steps")
    print("| residues | set-up | s/step | steps/s | vs 1 rank, 1 thread |")
    print("|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        base = None
        for label, world, threads in (("1 rank, 1 thread", 1, 1), ("2 ranks, 1 thread each", 2, 1),
                                      ("1 rank, 2 threads", 1, 2)):
            result = launch(size, world, threads, args)
            base = base or result["step_s"]
            print(f"| {size} | {label} | {result['step_s']:.3f} | {1 / result['step_s']:.2f} | "
                  f"{base / result['step_s']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
