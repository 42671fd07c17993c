"""Where the package's networks run: device, precision, compilation and memory budgets.

One home for the run-time policies that the embedder (a frozen backbone) and
the learners (trained networks) share, so that both answer "which device?",
"bfloat16 here?", "compile, and what if that fails?" and "how much memory
may a batch take?" the same way. Knows nothing of scikit-learn.
"""

from __future__ import annotations

import os
import warnings

import torch

__all__ = [
    "autocast",
    "bfloat16_active",
    "compiled_or_eager",
    "full_precision",
    "inference_memory_budget",
    "resolve_device",
    "supports_bfloat16",
    "training_memory_budget",
    "warn_without_bfloat16",
]


def supports_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively.

    A CPU qualifies with oneDNN and the AVX512-BF16 or AMX instructions
    (elsewhere bfloat16 is emulated, slower than float32); a CUDA device when
    torch says so (compute capability 8.0 and up).
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    # torch's CPU feature probes are private: a release without them means "no"
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def resolve_device(device) -> torch.device:
    """Turn ``"auto"``, a string or a :class:`torch.device` into a usable device.

    ``"auto"`` is CUDA when available, else CPU. Asking for CUDA on a machine
    without it is an error, not a silent fallback.
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"Unknown device {device!r}: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={str(device)!r} was requested, but CUDA is not available on this machine. "
            f"Use device='auto' or 'cpu'."
        )
    return device


# --------------------------------------------------------------------------- precision
def bfloat16_active(precision: str, device: torch.device) -> bool:
    """Whether a network asked to run at ``precision`` runs in bfloat16 on ``device``:
    only where the device computes it natively (elsewhere float32 is faster)."""
    return precision == "bfloat16" and supports_bfloat16(device)


def autocast(precision: str, device: torch.device):
    """The autocast context of ``precision`` on ``device`` (a no-op for float32)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                          enabled=bfloat16_active(precision, device))


def full_precision(out: torch.Tensor) -> torch.Tensor:
    """Outputs of an autocast forward back in float32; float32/float64 outputs as they are."""
    return out.float() if out.dtype in (torch.float16, torch.bfloat16) else out


def warn_without_bfloat16(precision: str, device: torch.device, who: str, *, stacklevel: int = 3) -> None:
    """Say so when bfloat16 was asked for where it would be emulated: ``who`` runs in float32."""
    if precision == "bfloat16" and not supports_bfloat16(device):
        warnings.warn(
            f"precision='bfloat16' was asked for, but this {device.type.upper()} does not compute in "
            f"bfloat16 natively (on a CPU that needs AVX512-BF16 or AMX), where it would be slower "
            f"than float32: {who} trains in float32.", UserWarning, stacklevel=stacklevel + 1,
        )


# --------------------------------------------------------------------------- compilation
def compiled_or_eager(module, who: str, *, compile: bool = True):
    """``module`` as a callable through ``torch.compile``, falling back to ``module`` itself,
    with a warning, the first time compilation (or the compiled call) fails."""
    if not compile:
        return module
    compiled = torch.compile(module)

    def forward(*inputs):
        nonlocal compiled
        if compiled is not None:
            try:
                return compiled(*inputs)
            except Exception as exc:  # noqa: BLE001 - any compiler failure falls back
                warnings.warn(
                    f"torch.compile failed ({type(exc).__name__}: {str(exc)[:200]}); "
                    f"{who} trains the network uncompiled.", UserWarning, stacklevel=2,
                )
                compiled = None
        return module(*inputs)

    return forward


# --------------------------------------------------------------------------- memory
def _meminfo_bytes(field: str) -> float | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024.0
    except OSError:
        pass
    return None


def training_memory_budget(budget, device: torch.device) -> float:
    """Bytes a training step's activations may take: ``budget`` when a number, or for
    ``"auto"`` half the GPU's memory (CUDA) or half the memory available now (CPU;
    4 GB when the system does not say)."""
    if budget != "auto":
        return float(budget)
    if device.type == "cuda":
        return 0.5 * torch.cuda.get_device_properties(device).total_memory
    available = _meminfo_bytes("MemAvailable")
    return 0.5 * available if available is not None else 4e9


def inference_memory_budget(device: torch.device) -> float | None:
    """What one frozen forward pass may take: a quarter of the RAM, or half of a GPU's memory.

    From the totals, not what is free now, so that the same machine always
    batches the same way (resumed embeddings line up with their first run).
    None when the system does not say.
    """
    try:
        if device.type == "cuda":
            return torch.cuda.get_device_properties(device).total_memory / 2
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 4
    except (AttributeError, ValueError, OSError, RuntimeError):
        return None
