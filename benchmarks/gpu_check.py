"""Every CUDA path of the package, run for real on one GPU, in one short prepared run.

What it checks and measures
---------------------------
Section by section, writing the JSON after each one (a run cut short still
reports what it finished), skipping what is left when ``--budget-s`` runs low:

``environment``
    GPU name, driver, CUDA and torch versions, the package's version.
``tests``
    The test suite's CUDA tests (``pytest -m cuda``: the embedder on CUDA
    equals the CPU's tokens; learners fit on CUDA; GPU-trained estimators
    unpickled in a child process without a GPU give the CPU's outputs).
``embedding``
    Frames/s and peak GPU memory of adenylate kinase (real frames) and of a
    system of about 20,000 heavy atoms (copies of adenylate kinase side by
    side, at least 12 Angstrom apart, in one frame), for ``GeomEmbedder`` in
    float32 and bfloat16, with and without ``compile=True``, against
    torch-geometric's own ViSNet block (geom2vec's weights, all-pairs edges)
    on the same device and frames; each variant's token error against it.
``training``
    One VAMPNet training step (forward of the 2B frames of B pairs, VAMP-2,
    backward, AdamW) after ``TokenMerger(window=w)``: time and peak memory for
    w in 1, 2, 4, 8 at 214 and 2,645 residues, float32 and bfloat16, B = 32
    and 128 pairs (64 and 256 frames), also per 1,000 frames; then one
    bfloat16 step inside ``sdpa_kernel(SDPBackend.FLASH_ATTENTION)``, which
    fails unless the mixer really runs on the FlashAttention kernel.
    The paper's points for comparison: 2,645 residues about 302 GB at w=1,
    25 GB at w=4, 11.3 GB at w=8 per 1,000-sample minibatch and 0.32 s a step
    at w=8 without graph convolution; 214 residues 16.6 GB at w=1, 4.0 GB at w=8.
``side_by_side``
    The same step against geom2vec v1.0's ``Lobe`` (standard-transformer
    mixer, imported from ../shared/anchors), with the settings of
    ../shared/anchors/side_by_side.py (hidden 64, 4 mixer layers, 8 heads).
``command_line``
    ``g2v embed`` then ``g2v fit`` on the device (one small case: two shipped
    alanine-dipeptide trajectories, every 50th frame, into token stores;
    merge, VAMPNet on the device, k-means, MSM): seconds for each, where
    the fitted network lives, and the MSM's slowest implied timescale.

The sizes are fixed lists (no search for the largest batch that fits); a
configuration that runs out of memory is recorded as such.

``--dry-run`` runs every section at tiny sizes on the CPU (the test suite does,
so the script cannot rot): alanine dipeptide instead of adenylate kinase,
3 and 20 residues, B = 2.

Usage::

    python benchmarks/gpu_check.py --checkpoint CKPT --adk-psf adk.psf --adk-dcd adk.dcd \\
        [--anchors ../shared/anchors] [--budget-s 230] [--out benchmarks/results/gpu_check.json]
    python benchmarks/gpu_check.py --dry-run --checkpoint CKPT --out /tmp/gpu_dry.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

PAPER = {"2645": {"w1_gb_per_1000": 302, "w4_gb_per_1000": 25, "w8_gb_per_1000": 11.3,
                  "w8_step_s_per_1000_no_conv": 0.32},
         "214": {"w1_gb_per_1000": 16.6, "w8_gb_per_1000": 4.0}}


class Budget:
    def __init__(self, seconds: float) -> None:
        self.start, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


# ------------------------------------------------------------------------------ sections
def environment(device) -> dict:
    import torch

    import g2v_sklearn

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "g2v_sklearn": g2v_sklearn.__version__, "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gb"] = torch.cuda.get_device_properties(device).total_memory / 1e9
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            info["driver"] = smi.stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    try:
        import flash_attn

        info["flash_attn"] = flash_attn.__version__
    except Exception:  # noqa: BLE001 - optional
        info["flash_attn"] = None
    return info


def run_tests(args, budget: Budget) -> dict:
    if args.dry_run:
        return {"skipped": "dry run (the CUDA tests skip without a GPU)"}
    # the tests find the checkpoint as <G2V_SHARED>/checkpoints/<name>
    # CI=true: a missing checkpoint fails the tests instead of skipping them
    env = {**os.environ, "G2V_SHARED": str(Path(args.checkpoint).resolve().parents[1]), "CI": "true"}
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider",
                               str(REPO / "tests" / "test_cuda.py")], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=max(30, budget.left() - 150))
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        return {"returncode": None, "summary": "timed out", "output_tail": out[-3000:]}
    tail = done.stdout.strip().splitlines()
    summary = tail[-1] if tail else ""
    return {"returncode": done.returncode, "summary": summary,
            "all_ran": done.returncode == 0 and "skipped" not in summary, "output_tail": done.stdout[-3000:]}


def load_frames(args):
    """(name, mdtraj trajectory, heavy-atom indices) of the real and the tiled system."""
    import mdtraj as md
    import numpy as np

    if args.dry_run:
        from g2v_sklearn.datasets import load_alanine_dipeptide

        small = load_alanine_dipeptide().trajectories[0][:4]
        copies = 3
    else:
        small = md.load(args.adk_dcd, top=args.adk_psf)[: args.frames]
        copies = args.copies
    small = small.atom_slice(small.topology.select("not element H"))
    # copies side by side along x, each box as wide as the molecule plus a 1.2 nm gap
    width = float(np.ptp(small.xyz[0, :, 0])) + 1.2
    tiled = small[:1]
    for i in range(1, copies):
        shifted = small[:1]
        shifted.xyz = shifted.xyz + np.array([i * width, 0.0, 0.0], dtype=np.float32)
        tiled = tiled.stack(shifted)
    return [("real", small), ("tiled", tiled)]


def embedding(args, device, budget: Budget, report: dict) -> list:
    import numpy as np

    import bench_embed

    rows = []
    settings = SimpleNamespace(checkpoint=args.checkpoint, backbone="visnet", batch_size="auto",
                               max_neighbors=32,
                               device=str(device))
    variants = ["reference", "ours_fp32", "ours_bf16", "ours_fp32_compile", "ours_bf16_compile"]
    if args.dry_run:
        variants = ["reference", "ours_fp32", "ours_bf16"]
    for system, traj in load_frames(args):
        heavy = np.arange(traj.n_atoms)
        reference = None
        for name in variants:
            if budget.left() < 60:
                rows.append({"system": system, "variant": name, "skipped": "time budget"})
                continue
            row = {"system": system, "variant": name, "atoms": int(traj.n_atoms),
                   "residues": int(traj.n_residues), "frames": int(traj.n_frames)}
            try:
                embed = bench_embed.VARIANTS[name](settings)
                embed(traj[:1], heavy)  # warm-up (and compilation)
                _sync(device)
                _reset_peak(device)
                start = time.perf_counter()
                tokens = embed(traj, heavy)
                _sync(device)
                seconds = time.perf_counter() - start
                row.update(frames_per_s=traj.n_frames / seconds, peak_gb=_peak_gb(device))
                if name == "reference":
                    reference = tokens
                elif reference is not None:
                    scale = float(np.abs(reference).max())
                    row["max_abs_error_over_max_token"] = float(np.abs(tokens - reference).max()) / scale
            except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
                row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                row["oom"] = _is_oom(exc)
            rows.append(row)
            report["embedding"] = rows
            write(args, report)
        ref = next((r for r in rows if r["system"] == system and r["variant"] == "reference"
                    and "frames_per_s" in r), None)
        for row in rows:
            if ref is not None and row["system"] == system and "frames_per_s" in row:
                row["speed_over_reference"] = row["frames_per_s"] / ref["frames_per_s"]
    return rows


def _training_setup(n: int, w: int, b: int, precision: str, device, operator: str = "graphconv"):
    """The estimator, its own training step (fit's seams) on B pairs of 2B frames, and the tokens."""
    from bench_train import ANCHOR_NETWORK, estimator_context, make_tokens

    tokens = make_tokens(n, 2 * b, 0)
    est, trainer, ctx = estimator_context(tokens, w, b, operator=operator, precision=precision,
                                          device=str(device), **ANCHOR_NETWORK)

    def step() -> None:
        """One optimizer step on all B pairs, as fit takes it."""
        trainer.step(ctx, ctx.train)

    return est, step, tokens


def _time_steps(step, device, repeats: int) -> float:
    import numpy as np

    step()  # warm-up
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def training(args, device, budget: Budget, report: dict) -> dict:
    sizes = (3, 20) if args.dry_run else (214, 2645)
    batches = (4,) if args.dry_run else (32, 128)  # more pairs than the 2 components
    windows = (1, 2) if args.dry_run else (1, 2, 4, 8)
    precisions = ("float32", "bfloat16") if device.type == "cuda" or args.dry_run else ("float32",)
    rows = []
    out = {"rows": rows, "paper": PAPER}
    report["training"] = out
    for n in sizes:
        for precision in precisions:
            for w in windows:
                for b in batches:
                    row = {"n_residues": n, "window": w, "batch_pairs": b, "frames": 2 * b, "precision": precision}
                    if budget.left() < 45:
                        rows.append({**row, "skipped": "time budget"})
                        continue
                    try:
                        _reset_peak(device)
                        est, step, _ = _training_setup(n, w, b, precision, device)
                        seconds = _time_steps(step, device, args.repeats)
                        peak = _peak_gb(device)
                        row.update(step_s=seconds, step_s_per_1000_frames=seconds * 1000 / (2 * b),
                                   peak_gb=peak, peak_gb_per_1000_frames=None if peak is None
                                   else peak * 1000 / (2 * b), memory_plan=est.memory_plan_)
                    except Exception as exc:  # noqa: BLE001
                        row.update(error=f"{type(exc).__name__}: {str(exc)[:300]}", oom=_is_oom(exc))
                    finally:
                        est = step = None
                    rows.append(row)
                    write(args, report)
    # proof of the FlashAttention kernel: SDPA restricted to it must still run the step
    flash = {"n_residues": sizes[-1], "window": windows[-1], "batch_pairs": batches[0]}
    if device.type != "cuda":
        flash["skipped"] = "needs CUDA (FlashAttention kernels are CUDA-only)"
    else:
        import torch
        from torch.nn.attention import SDPBackend, sdpa_kernel

        try:
            est, step, _ = _training_setup(sizes[-1], windows[-1], batches[0], "bfloat16", device)
            from g2v_sklearn.nn._lobes import attention_backend

            probe = torch.zeros(1, 8, 64, 8, device=device, dtype=torch.bfloat16)
            flash["attention_backend"] = attention_backend(probe)  # "flash_attn" bypasses SDPA
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                flash["step_s"] = _time_steps(step, device, 1)
            flash["ran_on_flash_attention"] = True
        except Exception as exc:  # noqa: BLE001
            flash.update(ran_on_flash_attention=False, error=f"{type(exc).__name__}: {str(exc)[:300]}")
    out["flash_attention_step"] = flash
    return out


def side_by_side(args, device, budget: Budget, report: dict) -> list:
    import torch

    anchors = Path(args.anchors)
    rows = []
    report["side_by_side"] = rows
    if not (anchors / "geom2vec").is_dir():
        rows.append({"skipped": f"no geom2vec source in {anchors}"})
        return rows
    sys.path[:0] = [str(anchors / "shims"), str(anchors)]
    import sitecustomize  # noqa: F401 - the shims' radius_graph for torch-geometric
    from geom2vec.models.downstream import lobe as g2v_lobe

    configs = [(3, 1, 4), (20, 4, 4)] if args.dry_run else [(214, 1, 16), (214, 8, 16), (2645, 8, 16)]
    for n, w, b in configs:
        row = {"n_residues": n, "window": w, "batch_pairs": b}
        if budget.left() < 30:
            rows.append({**row, "skipped": "time budget"})
            continue
        try:
            est, step, tokens = _training_setup(n, w, b, "float32", device)
            torch.manual_seed(0)
            lobe = g2v_lobe.Lobe(output_channels=2, input_channels=64, hidden_channels=64, num_tokens=n,
                                 merger=w > 1, merger_window=w, equi_rep=False, num_mixer_layers=4, nhead=8,
                                 dropout=0.0, device=device)
            from bench_train import geom2vec_step

            g2v_step = geom2vec_step(lobe, tokens, b, device)
            row["ours_s"] = _time_steps(step, device, args.repeats)
            row["geom2vec_s"] = _time_steps(g2v_step, device, args.repeats)
            row["geom2vec_over_ours"] = row["geom2vec_s"] / row["ours_s"]
        except Exception as exc:  # noqa: BLE001
            row.update(error=f"{type(exc).__name__}: {str(exc)[:300]}", oom=_is_oom(exc))
        rows.append(row)
        write(args, report)
    return rows


# ------------------------------------------------------------------------------ driver
def command_line(args, device, budget: Budget, report: dict) -> dict:
    """``g2v embed`` then ``g2v fit`` on the device, one small case: two shipped alanine-dipeptide
    trajectories (every 50th frame), token stores, merge, VAMPNet, k-means and an MSM."""
    import tempfile
    from pathlib import Path

    import joblib

    import g2v_sklearn.datasets
    from g2v_sklearn.cli import main as g2v

    data = Path(g2v_sklearn.datasets.__file__).parent / "_data" / "alanine_dipeptide"
    trajectories = [str(data / "traj_0.xtc"), str(data / "traj_1.xtc")]
    config = (f'[data]\nstores = ["tokens"]\n[merge]\nwindow = 1\n[vamp]\nlagtime = 2\nn_components = 2\n'
              f'max_epochs = 2\nprogress = false\nrandom_state = 0\ndevice = "{device.type}"\n'
              f'[cluster]\nn_clusters = 10\nrandom_state = 0\n[msm]\nlagtime = 2\n')
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "fit.toml").write_text(config)
        start = time.perf_counter()
        g2v(["embed", *trajectories, "--topology", str(data / "ala2_heavy.pdb"), "--backbone", args.checkpoint,
             "--out", str(root / "tokens"), "--stride", "50", "--device", device.type],
            prog_name="g2v", standalone_mode=False)
        embedded = time.perf_counter()
        _reset_peak(device)
        # the config names its stores relative to itself
        g2v(["fit", str(root / "fit.toml"), "--out", str(root / "fit")], prog_name="g2v", standalone_mode=False)
        model = joblib.load(root / "fit" / "model.joblib")  # the fitted pipeline (pickles hold CPU weights)
        return {"embed_s": embedded - start, "fit_s": time.perf_counter() - embedded,
                "fit_peak_gb": _peak_gb(device),  # None on the CPU; above 0 when the fit used the GPU
                "slowest_timescale_frames": float(model["msm"].timescales_[0])}


def write(args, report: dict) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str) + "\n")
    tmp.replace(out)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=os.environ.get("G2V_CHECKPOINT",
                        str(REPO.parent / "shared" / "checkpoints" / "visnet_l6_h64_rbf64_r75.pth")))
    parser.add_argument("--adk-psf", default=None, help="adenylate kinase topology (MDAnalysisTests' adk.psf)")
    parser.add_argument("--adk-dcd", default=None, help="adenylate kinase frames (MDAnalysisTests' adk_dims.dcd)")
    parser.add_argument("--anchors", default=str(REPO.parent / "shared" / "anchors"))
    parser.add_argument("--frames", type=int, default=98, help="real ADK frames to embed (default: all 98)")
    parser.add_argument("--copies", type=int, default=12, help="ADK copies in the tiled frame (12: 19,872 atoms)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=230.0)
    parser.add_argument("--out", default=str(HERE / "results" / "gpu_check.json"))
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--sections", default="environment,tests,embedding,training,side_by_side,command_line")
    args = parser.parse_args(argv)
    if not args.dry_run and not (args.adk_psf and args.adk_dcd):
        try:
            from MDAnalysisTests.datafiles import DCD, PSF
        except ImportError:
            parser.error("--adk-psf and --adk-dcd are needed where MDAnalysisTests is not installed")
        args.adk_psf, args.adk_dcd = args.adk_psf or PSF, args.adk_dcd or DCD
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("No CUDA device: run on a GPU machine, or pass --dry-run.")
    device = torch.device("cpu" if args.dry_run else "cuda")
    budget = Budget(args.budget_s)
    sections = args.sections.split(",")
    report = {"dry_run": bool(args.dry_run), "budget_s": args.budget_s}
    steps = {"environment": lambda: environment(device), "tests": lambda: run_tests(args, budget),
             "embedding": lambda: embedding(args, device, budget, report),
             "training": lambda: training(args, device, budget, report),
             "side_by_side": lambda: side_by_side(args, device, budget, report),
             "command_line": lambda: command_line(args, device, budget, report)}
    for name in sections:
        start = time.perf_counter()
        try:
            report[name] = steps[name]()
        except Exception as exc:  # noqa: BLE001 - one section's failure does not lose the others
            report[name] = {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}
        report.setdefault("seconds", {})[name] = time.perf_counter() - start
        write(args, report)
        print(f"{name}: {report['seconds'][name]:.1f} s", flush=True)
    print(f"written to {args.out} in {time.perf_counter() - budget.start:.0f} s")
    return report


if __name__ == "__main__":
    main()
