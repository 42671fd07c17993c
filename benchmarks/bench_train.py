"""Training-step time and peak memory of VAMPNetEstimator on tokens, against the merge window.

What it measures
----------------
One *training step* is what :class:`g2v_sklearn.VAMPNetEstimator` does for one
mini-batch of ``B`` time-lagged pairs, done with the estimator's own code:

* the estimator is ``VAMPNetEstimator(lagtime=B, batch_size=B, ...)`` on the
  output of ``TokenMerger(window=w)`` (default operator ``"graphconv"``, cutoff
  8 A), so its defaults apply: ``d_model=64, n_heads=4, n_layers=2,
  pooling="cls"``, two outputs. ``window=1`` still goes through the merging
  module, as the paper's w=1 does;
* ``est.training_session(X)`` sets up what ``fit`` sets up before its first
  step (network, memory plan, optimizer, schedule), and every timed step is
  ``trainer.step(ctx, batch)``, the step ``fit`` takes: the 2B frames read
  once and pushed through the network in one pass (autocast when
  ``precision="bfloat16"``), VAMP-2 loss, finite-loss check, ``backward``,
  gradient clipping, the fused AdamW ``step``. The estimator's
  ``memory_budget`` is infinite by default here (``--memory-budget``), so
  that no activation is recomputed, as in the paper's figures; the memory
  plan is in the result.

The token sets are shaped like the paper's four systems: ``N`` = 128, 214, 592
and 2,645 residues, ``H = 64`` channels, features ``(2B, N, 4, 64)`` float32
standard normal. Positions are shaped like a protein: one compact chain per
system, a self-avoiding random walk of 3.8 A steps confined to a sphere of
protein density (about 135 A^3 per residue), plus 0.5 A of independent noise
per frame, so the 8 A residue graph has a realistic 10-20 neighbours per
residue (the mean is printed).

How
---
Every configuration (system size, window, device, precision) runs in its own
fresh interpreter (this file, ``--worker``), so its peak memory is its own. A
worker builds the data, the network and the optimizer, records a baseline,
runs one warm-up step (not timed, but inside the memory window) and then
times ``--steps`` steps with ``time.perf_counter`` (CUDA is synchronised
around them). It prints one JSON line that the parent collects.

Peak memory is the increase over the baseline taken just before the first
(warm-up) step:

* CPU: ``getrusage(RUSAGE_SELF).ru_maxrss`` (KiB) after the steps, minus the
  resident set size (``/proc/self/statm``) just before the warm-up step, taken
  after ``gc.collect()`` and glibc's ``malloc_trim(0)`` so that memory freed
  during set-up cannot hide what the step uses. This is whole-process RSS, so
  it also counts one-time library set-up (oneDNN, OpenMP thread pools) and
  the optimizer's state: it over-estimates what the step itself needs.
  Workers run with glibc's mmap threshold fixed (see ``worker_env``), so
  memory freed during the step is returned to the system instead of staying
  cached in the heap and inflating the peak.
* CUDA: ``torch.cuda.max_memory_allocated()`` over the steps minus
  ``torch.cuda.memory_allocated()`` before them (the network's weights; the
  token arrays stay on the host and each batch is copied over, as in
  training).

**Scaling to the paper's "1,000-sample minibatch".** A VAMPnet sample is a
time-lagged pair (two frames). The measured increase is scaled linearly from
the ``B`` pairs that ran to 1,000 pairs, i.e. 2,000 frames::

    GB per 1,000 pairs = peak_increase_bytes / B * 1000 / 1e9

Decimal gigabytes and a linear scaling of a peak that includes fixed
overheads (weights, optimizer state, library set-up, allocator caching) both
err on the large side, so "at or below paper" is a conservative verdict. The
paper's figure (per 1,000-sample minibatch, GPU, digitised) gives 302 GB
(w=1, could not run), 25 GB (w=4) and 11.3 GB (w=8) at 2,645 residues and
16.6 GB (w=1) and 4.0 GB (w=8) at 214 residues; each row where the paper has a
point gets ``ok`` = yes/no.

``B`` defaults to 16 pairs on CPU (so that 2,645 residues at w=1 stays
feasible on a small machine) and 256 on CUDA (the estimator's default
``batch_size``). A configuration that runs out of memory (a clean
``MemoryError``/allocator error, a CUDA OOM, or the worker killed) is retried
with ``B`` halved, down to 3 (the estimator needs more pairs than its two
outputs); the ``B`` that fitted is reported. On CPU the
worker caps its address space (``RLIMIT_AS``) at its size after start-up plus
``--mem-limit-gb`` (default: 80% of the memory available when the run
starts), so running out of memory is a clean error and not the kernel's OOM
killer.

Attention goes through ``g2v_sklearn.nn._lobes.attention``: torch's
``scaled_dot_product_attention`` (whose CPU and CUDA kernels are
FlashAttention-style, memory-efficient: the N x N score matrix is never
stored), or the flash-attn package for half precision on CUDA when it is
installed. The backend each row used is recorded in the JSON. With CUDA, every
configuration is also run under bfloat16 autocast (``precision="bfloat16"``),
and then one more step runs under
``torch.nn.attention.sdpa_kernel(SDPBackend.FLASH_ATTENTION)``, which raises
unless every attention call can use the FlashAttention kernel: the JSON's
``flash_attention_only_step`` is then ``true``.

Reading the numbers
-------------------
Absolute times depend on the machine and on whatever else runs on it. The
``vs w=1`` column compares seconds per pair of a window against ``w=1`` of the
same system, device and precision within one run (equal to the ratio of
seconds per step when both ran with the same ``B``); that ratio is the number
to read. Nothing here asserts on timings. Workers use one intra-op thread by
default (``--threads 0``: torch's default): on a shared machine, OpenMP
threads competing with other processes make CPU timings erratic (ten times
slower steps were seen on 2 busy cores).

``saved MiB/pair`` is a diagnostic independent of the allocator: the bytes of
the distinct storages autograd saved for backward during the warm-up step
(``torch.autograd.graph.saved_tensors_hooks``), per pair. It is what a
training step must hold at the end of its forward pass; the peak adds the
gradients and temporaries of the backward pass on top.

Usage::

    python benchmarks/bench_train.py                         # 4 sizes x 4 windows, ~5 min on 2 cores
    python benchmarks/bench_train.py --sizes 214,2645 --windows 1,4,8   # the paper's points only
    python benchmarks/bench_train.py --device cuda --batch-size 128 --steps 5
    python benchmarks/bench_train.py --precisions float32,bfloat16   # bf16 autocast on CPU too

Results are written as JSON to ``benchmarks/results/train.json`` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

from _common import cpu_model, max_rss_mib, worker_env  # benchmarks/_common.py

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "train.json"
RESULT_TAG = "BENCH_TRAIN_RESULT "  # prefix of the worker's JSON line on stdout
OOM_EXIT = 3  # worker exit status: out of memory, retry with a smaller batch

H = 64  # token channels
CUTOFF = 8.0  # residue-graph cutoff of TokenMerger's default, Angstrom
BOND = 3.8  # C-alpha to C-alpha distance, Angstrom
VOLUME_PER_RESIDUE = 135.0  # A^3: protein density ~1.35 g/cm^3 at ~110 Da per residue

PAPER_SYSTEMS = (128, 214, 592, 2645)
DEFAULT_SIZES = PAPER_SYSTEMS
DEFAULT_WINDOWS = (1, 2, 4, 8)

# The paper's figure: GB per 1,000-sample minibatch on GPU (digitised), (N, window) -> GB.
PAPER_GB = {
    (2645, 1): 302.0,
    (2645, 4): 25.0,
    (2645, 8): 11.3,
    (214, 1): 16.6,
    (214, 8): 4.0,
}


# ----------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------

def protein_like_chain(n: int, rng) -> np.ndarray:
    """C-alpha-like coordinates (n, 3) of one compact chain, Angstrom.

    A random walk of ``BOND`` steps inside a sphere holding ``n`` residues at
    protein density. Each step tries 64 random directions and takes the first
    that stays in the sphere, keeps 4 A from every earlier residue and 4.5 A
    from the one two back (a chain-like bend); when none does, it takes the
    candidate farthest from the others (in-sphere candidates first).
    """
    import numpy as np

    radius = (3.0 * n * VOLUME_PER_RESIDUE / (4.0 * math.pi)) ** (1.0 / 3.0)
    pos = np.zeros((n, 3))
    direction = rng.normal(size=3)
    pos[0] = direction / np.linalg.norm(direction) * rng.uniform(0, 0.5 * radius)
    for i in range(1, n):
        steps = rng.normal(size=(64, 3))
        steps *= BOND / np.linalg.norm(steps, axis=1, keepdims=True)
        cand = pos[i - 1] + steps
        inside = np.linalg.norm(cand, axis=1) <= radius
        nearest = np.full(len(cand), np.inf)
        chosen = None
        for lo in range(0, len(cand), 8):  # most steps succeed in the first few candidates
            block = slice(lo, lo + 8)
            if i >= 3:
                d = np.sqrt(((cand[block, None, :] - pos[None, : i - 1]) ** 2).sum(-1))
                nearest[block] = d.min(axis=1)
                ok = inside[block] & (nearest[block] >= 4.0) & (d[:, i - 2] >= 4.5)
            else:
                ok = inside[block]
            if ok.any():
                chosen = lo + int(np.flatnonzero(ok)[0])
                break
        if chosen is None:
            score = np.where(inside, nearest, nearest - 1e6)  # prefer the sphere, then room
            chosen = int(np.argmax(score))
        pos[i] = cand[chosen]
    return pos


def make_tokens(n_residues: int, n_frames: int, seed: int):
    """A TokenTrajectory of ``n_frames`` frames of random features on a protein-like chain."""
    import numpy as np

    from g2v_sklearn import TokenTrajectory

    rng = np.random.default_rng(seed)
    chain = protein_like_chain(n_residues, rng)
    positions = (chain[None] + rng.normal(scale=0.5, size=(n_frames, n_residues, 3))).astype(np.float32)
    features = rng.standard_normal((n_frames, n_residues, 4, H), dtype=np.float32)
    return TokenTrajectory(features, positions, residue_names=["ALA"] * n_residues,
                           chain_ids=["A"] * n_residues, residue_ids=range(1, n_residues + 1))


#: The network of ../shared/anchors/side_by_side.py, pinned for every comparison with geom2vec's
#: Lobe (hidden 64 is the tokens' width, as geom2vec's hidden_channels).
ANCHOR_NETWORK = dict(d_model=64, n_heads=8, n_layers=4)


def estimator_context(tokens, w: int, b: int, *, operator: str = "graphconv", **params):
    """``(est, trainer, ctx)``: ``VAMPNetEstimator(lagtime=B, batch_size=B, **params)`` on ``tokens``' 2B
    frames after ``TokenMerger(window=w, operator=operator)``, and the context of its own
    training step (fit's seams): ``trainer.step(ctx, ctx.train)`` is one step on all B pairs."""
    from g2v_sklearn import TokenMerger, VAMPNetEstimator

    merged = TokenMerger(window=w, operator=operator).fit_transform([tokens])
    est = VAMPNetEstimator(lagtime=b, batch_size=b, **{"progress": False, "random_state": 0, **params})
    return (est, *est.training_session(merged))


def geom2vec_step(lobe, tokens, b: int, device="cpu"):
    """One training step of geom2vec's ``Lobe`` as its own code takes it, on ``tokens``' 2B frames:
    forward, VAMP-2 of the first B frames against the last B, backward, ``torch.optim.AdamW``."""
    import numpy as np
    import torch

    from g2v_sklearn.learners._vamp import vamp_loss

    features = torch.as_tensor(np.asarray(tokens.features), device=device)
    positions = torch.as_tensor(np.asarray(tokens.positions), device=device)
    optimizer = torch.optim.AdamW(lobe.parameters(), lr=1e-4)

    def step():
        lobe.train()
        out = lobe((features, positions))
        loss = vamp_loss(out[:b], out[b:], method="VAMP2", epsilon=1e-6, mode="regularize")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def mean_neighbours(positions) -> float:
    """Mean number of residues within CUTOFF of a residue (self excluded), one frame."""
    import torch

    from g2v_sklearn.backbones._neighbors import radius_graph

    pos = torch.as_tensor(positions)
    return radius_graph(pos, CUTOFF, loop=False).shape[1] / len(pos)


# ----------------------------------------------------------------------------------
# worker: one configuration, one fresh process
# ----------------------------------------------------------------------------------
def rss_now_mib() -> float:
    with open("/proc/self/statm") as handle:
        resident_pages = int(handle.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def release_free_heap() -> None:
    """Collect garbage and hand glibc's cached free heap back to the OS (best effort)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def cap_address_space(extra_gb: float) -> None:
    """RLIMIT_AS = the current virtual size + ``extra_gb``: running out is then a clean error."""
    import resource

    with open("/proc/self/statm") as handle:
        virtual = int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = virtual + int(extra_gb * 1e9)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _layout_nbytes(tensor) -> int:
    """Bytes held by a tensor without a plain storage (sparse COO/CSR, ...), best effort."""
    import torch

    parts = []
    if tensor.layout == torch.sparse_coo:
        parts = [tensor._indices(), tensor._values()]
    elif tensor.layout in (torch.sparse_csr, torch.sparse_bsr):
        parts = [tensor.crow_indices(), tensor.col_indices(), tensor.values()]
    elif tensor.layout in (torch.sparse_csc, torch.sparse_bsc):
        parts = [tensor.ccol_indices(), tensor.row_indices(), tensor.values()]
    try:
        return sum(p.nelement() * p.element_size() for p in parts) if parts else (
            tensor.nelement() * tensor.element_size())
    except Exception:  # noqa: BLE001 - a diagnostic, never worth failing the run
        return 0


def _is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("out of memory", "can't allocate memory", "cannot allocate memory",
                            "std::bad_alloc", "failed to allocate"))


def run_worker(args) -> None:
    import numpy as np
    import torch

    from g2v_sklearn.nn._lobes import attention_backend

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if not cuda and args.mem_limit_gb:
        cap_address_space(args.mem_limit_gb)
    n, w, b = args.n_residues, args.window, args.batch_size

    try:
        # ---- set-up: the estimator's own training context (fit's seams); 2B frames, B pairs
        tokens = make_tokens(n, 2 * b, args.seed)
        est, trainer, ctx = estimator_context(tokens, w, b, precision=args.precision, device=str(device),
                                     memory_budget=args.memory_budget, random_state=args.seed)
        spec = ctx.series.spec
        rng = np.random.default_rng(args.seed)
        pairs = ctx.train  # (0, t), (0, t + B)
        assert len(pairs) == b
        neighbours = mean_neighbours(tokens.positions[0])
        n_params = sum(p.numel() for p in ctx.net.parameters())
        q_dtype = torch.bfloat16 if args.precision == "bfloat16" else torch.float32
        probe = torch.zeros(1, 1, 8, H // est.n_heads, device=device, dtype=q_dtype)
        backend = attention_backend(probe)
        if backend == "sdpa":
            try:
                from torch.nn.attention import SDPBackend

                backend = f"sdpa ({SDPBackend(torch._fused_sdp_choice(probe, probe, probe)).name})"
            except Exception:  # private API; the name is only a label
                pass
        state = {"score": None}

        def step() -> None:
            """One optimizer step, exactly as fit takes it (the trainer's step)."""
            state["score"] = -trainer.step(ctx, pairs[rng.permutation(len(pairs))])

        # ---- baseline, warm-up, timed steps
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            baseline_mib = torch.cuda.memory_allocated(device) / 2**20
        else:
            release_free_heap()  # so that a step re-using set-up's freed memory still shows
            baseline_mib = rss_now_mib()
        baseline_maxrss_mib = max_rss_mib()
        saved: dict = {}  # storages autograd keeps for backward in the warm-up step

        def pack(tensor):
            try:
                storage = tensor.untyped_storage()
                saved[(storage.device.type, storage.data_ptr())] = storage.nbytes()
            except (NotImplementedError, RuntimeError):  # sparse and other storage-less layouts
                saved[("tensor", id(tensor))] = _layout_nbytes(tensor)
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            step()  # warm-up, not timed
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        if cuda:
            torch.cuda.synchronize(device)
        seconds = (time.perf_counter() - start) / args.steps
        if cuda:
            peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
            reserved_mib = torch.cuda.max_memory_reserved(device) / 2**20
        else:
            peak_mib = max_rss_mib()
            reserved_mib = None
        # Proof of the FlashAttention kernel: with every other SDPA backend
        # disabled, a step that cannot use it raises instead of falling back.
        flash_only_step = None
        if cuda and args.precision == "bfloat16" and backend.startswith("sdpa"):
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                step()
            flash_only_step = True
    except Exception as exc:
        if _is_oom(exc):
            print(f"out of memory at B={b}: {type(exc).__name__}: {str(exc)[:300]}",
                  file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(OOM_EXIT)
        raise

    increase_mib = max(peak_mib - baseline_mib, 0.0)
    result = {
        "n_residues": n,
        "window": w,
        "n_fragments": spec.n_fragments,
        "operator": spec.operator,
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if cuda else None,
        "precision": args.precision,
        "attention": backend,
        "flash_attention_only_step": flash_only_step,
        "batch_pairs": b,
        "frames_per_step": 2 * b,
        "steps": args.steps,
        "seconds_per_step": seconds,
        "steps_per_s": 1.0 / seconds,
        "seconds_per_pair": seconds / b,
        "memory": "cuda max_memory_allocated" if cuda else "ru_maxrss - rss before warm-up",
        "baseline_mib": baseline_mib,
        "baseline_maxrss_mib": None if cuda else baseline_maxrss_mib,
        "peak_mib": peak_mib,
        "peak_reserved_mib": reserved_mib,
        "peak_increase_mib": increase_mib,
        "gb_per_1000_pairs": increase_mib * 2**20 / b * 1000 / 1e9,
        "saved_for_backward_mib_per_pair": sum(saved.values()) / 2**20 / b,
        "mean_neighbours": neighbours,
        "n_parameters": n_params,
        "memory_plan": est.memory_plan_,
        "final_score": state["score"],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    sys.stdout.flush()
    print(RESULT_TAG + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------------
# parent
# ----------------------------------------------------------------------------------
def mem_available_gb() -> float | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return None


MIN_PAIRS = 3  # the estimator needs more time-lagged pairs than its 2 outputs


def spawn(config: dict, args) -> dict:
    """Run one configuration in fresh interpreters, halving B on out-of-memory; the result."""
    b = config["batch_size"]
    failures = []
    while True:
        command = [
            sys.executable, str(Path(__file__).resolve()), "--worker",
            "--n-residues", str(config["n_residues"]), "--window", str(config["window"]),
            "--device", config["device"], "--precision", config["precision"],
            "--batch-size", str(b), "--steps", str(args.steps), "--seed", str(args.seed),
        ]
        command += ["--threads", str(args.threads), "--memory-budget", str(args.memory_budget)]
        if config["device"] == "cpu" and args.mem_limit_gb:
            command += ["--mem-limit-gb", str(args.mem_limit_gb)]
        proc = subprocess.run(command, capture_output=True, text=True, env=worker_env())
        lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
        if proc.returncode == 0 and lines:
            result = json.loads(lines[-1][len(RESULT_TAG):])
            result["oom_retries"] = failures
            return result
        killed = proc.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL)
        if proc.returncode == OOM_EXIT or killed:
            why = "out of memory" if proc.returncode == OOM_EXIT else "killed (likely OOM)"
            failures.append({"batch_pairs": b, "why": why})
            if b // 2 < MIN_PAIRS:
                return {**config, "batch_pairs": None, "failed": why, "oom_retries": failures}
            b //= 2
            print(f"    {why}; retrying with B={b}", file=sys.stderr, flush=True)
            continue
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"configuration {config} failed (exit status {proc.returncode}).")


def add_comparisons(results: list[dict]) -> None:
    """Per-pair time against w=1 of the same system/device/precision, and the paper's points."""
    ones = {(r["n_residues"], r["device"], r["precision"]): r for r in results
            if r["window"] == 1 and not r.get("failed")}
    for r in results:
        ref = ones.get((r["n_residues"], r["device"], r["precision"]))
        if ref is not None and not r.get("failed"):
            r["time_vs_w1"] = r["seconds_per_pair"] / ref["seconds_per_pair"]
        paper = PAPER_GB.get((r["n_residues"], r["window"]))
        r["paper_gb_per_1000"] = paper
        if paper is not None:
            r["at_or_below_paper"] = bool(not r.get("failed") and r["gb_per_1000_pairs"] <= paper)


def format_table(results: list[dict]) -> str:
    header = ("N", "window", "fragments", "device", "B", "s/step", "steps/s", "vs w=1",
              "peak MiB", "GB/1k pairs", "paper GB", "ok", "saved MiB/pair")
    rows = []
    for r in results:
        device = r["device"] + ("" if r["precision"] == "float32" else "/bf16")
        failed = r.get("failed")
        paper = r.get("paper_gb_per_1000")
        ok = "-" if paper is None else ("yes" if r.get("at_or_below_paper") else "no")
        rows.append((
            r["n_residues"], r["window"], r.get("n_fragments", math.ceil(r["n_residues"] / r["window"])),
            device,
            r["batch_pairs"] if not failed else "OOM",
            "n/a" if failed else f"{r['seconds_per_step']:.3f}",
            "n/a" if failed else f"{r['steps_per_s']:.2f}",
            f"{r['time_vs_w1']:.2f}x" if "time_vs_w1" in r else "n/a",
            "n/a" if failed else f"{r['peak_increase_mib']:.0f}",
            "n/a" if failed else f"{r['gb_per_1000_pairs']:.2f}",
            "-" if paper is None else f"{paper:g}",
            ok,
            "n/a" if failed else f"{r['saved_for_backward_mib_per_pair']:.1f}",
        ))
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def fmt(row):
        return "  ".join(str(x).rjust(wd) for x, wd in zip(row, widths))

    return "\n".join([fmt(header), fmt(["-" * wd for wd in widths]), *map(fmt, rows)])


def run_parent(args) -> None:
    import torch

    started = time.perf_counter()
    configs = []
    for device in args.devices:
        for precision in args.precision_list[device]:
            for n in args.sizes:
                for w in args.windows:
                    if w > n:
                        continue
                    configs.append({"n_residues": n, "window": w, "device": device,
                                    "precision": precision,
                                    "batch_size": args.batch_size or (256 if device == "cuda" else 16)})
    results = []
    for i, config in enumerate(configs, 1):
        t0 = time.perf_counter()
        print(f"[{i}/{len(configs)}] N={config['n_residues']} window={config['window']} "
              f"{config['device']}/{config['precision']} B={config['batch_size']} ...",
              file=sys.stderr, flush=True)
        results.append(spawn(config, args))
        print(f"    done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    add_comparisons(results)

    ok = [r for r in results if r.get("paper_gb_per_1000") is not None]
    biggest_w1 = [r for r in results if r["n_residues"] == 2645 and r["window"] == 1]
    neighbours = {r["n_residues"]: r["mean_neighbours"] for r in results if "mean_neighbours" in r}
    machine = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": args.threads or torch.get_num_threads(),
        "gpu": next((r["device_name"] for r in results if r.get("device_name")), None),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    total = time.perf_counter() - started

    print(f"CPU: {machine['cpu']} ({machine['logical_cpus']} logical CPUs); "
          f"GPU: {machine['gpu'] or 'none used'}")
    print(f"torch {machine['torch']}, {machine['torch_threads']} threads, "
          f"Python {machine['python']}")
    print(f"VAMPNetEstimator defaults (d_model=64, n_heads=4, n_layers=2, cls pooling), "
          f"TokenMerger(window=w, operator='graphconv', cutoff={CUTOFF:g}); H={H}; "
          f"1 warm-up + {args.steps} timed steps; each row a fresh process")
    print("mean 8 A neighbours per residue: "
          + (", ".join(f"N={k}: {v:.1f}" for k, v in sorted(neighbours.items())) or "n/a"))
    print()
    print(format_table(results))
    print()
    print("B = time-lagged pairs per step (2B frames). vs w=1 = seconds per pair against w=1 of "
          "the same N/device.")
    print("peak MiB = peak memory increase over the baseline before the first step (CPU: "
          "ru_maxrss - RSS, whole process,")
    print("incl. allocator caching and one-time set-up, an over-estimate; CUDA: "
          "max_memory_allocated - allocated).")
    print("GB/1k pairs = peak MiB * 2^20 / B * 1000 / 1e9: scaled linearly to 1,000 pairs "
          "(2,000 frames), the paper's")
    print("1,000-sample minibatch read as 1,000 pairs; paper GB = the paper's GPU figure "
          "(digitised); ok = at or below paper.")
    if ok:
        met = sum(bool(r.get("at_or_below_paper")) for r in ok)
        print(f"paper points met: {met}/{len(ok)}")
    for r in biggest_w1:
        tag = f"{r['device']}/{r['precision']}"
        if r.get("failed"):
            print(f"2,645 residues at w=1 ({tag}): NOT trainable here ({r['failed']} at B=1)")
        else:
            print(f"2,645 residues at w=1 ({tag}): trainable, B={r['batch_pairs']} pairs, "
                  f"{r['seconds_per_step']:.2f} s/step, attention {r['attention']}")
    print(f"total time {total:.0f} s")

    report = {
        "machine": machine,
        "settings": {"sizes": args.sizes, "windows": args.windows, "devices": args.devices,
                     "precisions": args.precision_list, "steps": args.steps,
                     "batch_size": args.batch_size, "threads": args.threads,
                     "mem_limit_gb": args.mem_limit_gb, "seed": args.seed, "H": H,
                     "cutoff": CUTOFF},
        "scaling": "gb_per_1000_pairs = peak_increase_bytes / batch_pairs * 1000 / 1e9 "
                   "(1,000 time-lagged pairs = 2,000 frames)",
        "paper_gb_per_1000": {f"{n},{w}": v for (n, w), v in PAPER_GB.items()},
        "results": results,
        "total_seconds": total,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {out}")


# ----------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------
def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers; got {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers; got {text!r}")
    return values


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Training-step time and peak memory of VAMPNetEstimator on token sets shaped "
                    "like the paper's systems, against the TokenMerger window (each "
                    "configuration in its own process).")
    parser.add_argument("--sizes", type=_int_list, default=list(DEFAULT_SIZES),
                        help="residues per system, comma-separated (default: %(default)s; the "
                             "paper's four: 128,214,592,2645)")
    parser.add_argument("--windows", type=_int_list, default=list(DEFAULT_WINDOWS),
                        help="merge windows, comma-separated (default: %(default)s; all: 1,2,4,8)")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto",
                        help="cpu, cuda, or auto: CPU always, plus CUDA when available "
                             "(default: auto)")
    parser.add_argument("--precisions", default="auto",
                        help="comma-separated float32,bfloat16 for every device, or auto: "
                             "float32 on CPU, float32 and bfloat16 on CUDA (default)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up (default 3)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="time-lagged pairs per step (default: 16 on CPU, 256 on CUDA); "
                             "halved on out-of-memory")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads in the workers; 0 keeps torch's default "
                             "(default 1: see the module docstring)")
    parser.add_argument("--mem-limit-gb", type=float, default=None,
                        help="CPU workers' address-space allowance beyond start-up, GB (default: "
                             "80%% of MemAvailable; 0 disables the cap)")
    parser.add_argument("--seed", type=int, default=0, help="data and weight seed (default 0)")
    parser.add_argument("--memory-budget", default="inf",
                        help="the estimator's memory_budget: 'inf' (default) never recomputes activations, "
                             "as the paper's figures do not; 'auto' or bytes as the estimator takes it")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="JSON results file (default: %(default)s)")
    # worker-only
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--n-residues", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--window", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="float32", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_budget != "auto":  # 'inf': a budget no batch reaches (the estimator takes finite floats)
        args.memory_budget = min(float(args.memory_budget), 1e30)
    if args.steps < 1 or (args.batch_size is not None and args.batch_size < MIN_PAIRS) or args.threads < 0:
        parser.error(f"--steps must be >= 1, --batch-size >= {MIN_PAIRS} (more pairs than the network's 2 "
                     f"outputs), --threads >= 0.")
    if args.worker:
        if args.n_residues is None or args.window is None or args.batch_size is None:
            parser.error("--worker needs --n-residues, --window and --batch-size.")
        if args.device not in ("cpu", "cuda"):
            parser.error("--worker needs --device cpu or cuda.")
        return args

    import torch

    has_cuda = torch.cuda.is_available()
    if args.device == "cuda" and not has_cuda:
        parser.error("--device cuda: CUDA is not available on this machine.")
    args.devices = {"cpu": ["cpu"], "cuda": ["cuda"],
                    "auto": ["cpu", "cuda"] if has_cuda else ["cpu"]}[args.device]
    if args.precisions == "auto":
        args.precision_list = {d: ["float32"] + (["bfloat16"] if d == "cuda" else [])
                               for d in args.devices}
    else:
        chosen = [p.strip() for p in args.precisions.split(",") if p.strip()]
        if not chosen or any(p not in ("float32", "bfloat16") for p in chosen):
            parser.error("--precisions takes float32 and/or bfloat16, or auto.")
        args.precision_list = {d: chosen for d in args.devices}
    if args.mem_limit_gb is None:
        available = mem_available_gb()
        args.mem_limit_gb = round(0.8 * available, 1) if available else 0
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
    else:
        run_parent(args)


if __name__ == "__main__":
    main()
