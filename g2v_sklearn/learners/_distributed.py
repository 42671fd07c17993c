"""Data-parallel training on the ranks of a torch.distributed process group.

How it is switched on
---------------------
A learner trains data-parallel when, as ``fit`` starts, the process has an
initialised default process group of more than one rank (what
:func:`init_distributed` makes from a launcher's environment: ``torchrun``,
or SLURM's ``srun``). Nothing else changes: every rank calls ``fit`` with
the same data (the same memory-mapped token stores) and the same parameters;
each takes its share of every batch of time-lagged pairs; the ranks end with
the same fitted estimator.

What is reduced
---------------
The VAMP score is not a mean over pairs, so averaging the ranks' losses (what
DistributedDataParallel does) would optimise the mean of small-batch scores,
a different objective. Instead the ranks add up the sufficient statistics of
the global batch (weighted sums, then centred second moments, in float64)
with an all-reduce that gradients flow through; every rank then computes the
same loss from the same totals. SPIB's loss, a weighted mean over pairs, is
reduced as its numerator and its total weight. The adjoint of a sum over
ranks is a sum over ranks, so each rank's backward pass leaves it ``R`` times
its own share of the gradient (every rank back-propagates the same loss);
the gradients are then averaged over ranks (a sum divided by ``R``), which is
exactly the gradient of the single-process loss on the union of the shares.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import threading
import time
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist

from .._compat import inside_model_selection

__all__ = ["DistributedTrainingError", "Ranks", "init_distributed"]

#: Environment variables a launcher sets for every rank (torchrun sets all four).
LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

#: What each launcher variable holds, for messages about a bad value.
_ENV_MEANING = {
    "RANK": "this process's rank, from 0 to WORLD_SIZE - 1",
    "WORLD_SIZE": "the number of ranks",
    "LOCAL_RANK": "this process's rank on its node",
    "SLURM_PROCID": "this task's rank, from 0 to SLURM_NTASKS - 1",
    "SLURM_NTASKS": "the number of tasks",
    "SLURM_LOCALID": "this task's rank on its node",
    "MASTER_PORT": "the TCP port rank 0 listens on",
}
_ARRIVED_KEY = "g2v_sklearn/arrived"  # the counter every rank adds itself to when it joins


class DistributedTrainingError(RuntimeError):
    """Training on several ranks failed in a collective: a rank died, hung past the
    process group's timeout, or the ranks disagreed about the data or parameters.

    Examples
    --------
    >>> from g2v_sklearn import DistributedTrainingError
    >>> issubclass(DistributedTrainingError, RuntimeError)
    True
    """


def _env_int(*names: str) -> int | None:
    """The first of the environment variables ``names`` that is set, as an int; ValueError
    naming the variable when it is not a whole number."""
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise ValueError(
                    f"The environment variable {name}={value!r} is not a whole number: a launcher "
                    f"sets it to {_ENV_MEANING.get(name, 'a number')}. Correct it, or unset it to "
                    f"train on one process."
                ) from None
    return None


def _launcher() -> tuple[int, int, str] | None:
    """(rank, world size, the variables they came from) of this process's launcher, or None.

    torchrun's ``RANK`` and ``WORLD_SIZE`` come as a pair: one without the other
    is an error naming the missing one. Under SLURM, ``SLURM_PROCID`` without
    ``SLURM_NTASKS`` is a batch script run without ``--ntasks``: one process.
    """
    given = [name for name in ("RANK", "WORLD_SIZE") if os.environ.get(name) not in (None, "")]
    if len(given) == 1:
        (name,) = given
        missing = "WORLD_SIZE" if name == "RANK" else "RANK"
        raise ValueError(
            f"init_distributed: {name}={os.environ[name]} is set but {missing} is not, so this "
            f"process cannot tell its place among the ranks. A launcher sets both (torchrun sets "
            f"RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT for every rank): start "
            f"the script with torchrun or srun, set {missing} too, or unset {name} to train on "
            f"one process."
        )
    if given:
        rank, world, names = _env_int("RANK"), _env_int("WORLD_SIZE"), ("RANK", "WORLD_SIZE")
    else:
        rank, world, names = _env_int("SLURM_PROCID"), _env_int("SLURM_NTASKS"), ("SLURM_PROCID", "SLURM_NTASKS")
        if rank is None or world is None:
            return None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(
            f"init_distributed: {names[0]}={rank} and {names[1]}={world} do not make a rank of a job: "
            f"{names[0]} must be at least 0 and less than {names[1]}, which must be at least 1."
        )
    return rank, world, " and ".join(f"{n}={v}" for n, v in zip(names, (rank, world)))


def _join(address: str, port: int, rank: int, world: int, described: str, join_timeout: float,
          timeout: float):
    """The ranks' rendezvous store (rank 0 serves it), once all ``world`` ranks have joined.

    Every rank adds itself to a counter in the store and waits at most
    ``join_timeout`` seconds for the counter to reach ``world``, so that a job
    whose other ranks were never started (a SLURM script that runs ``python``
    instead of ``srun python``) says so early, instead of waiting for the
    collective ``timeout`` (what torch's own rendezvous does, and then reports
    "1/2 clients joined"). The store then gets the collective timeout.
    """
    where = f"MASTER_ADDR:MASTER_PORT ({address}:{port})"
    try:
        store = dist.TCPStore(address, port, world, rank == 0, timeout=datetime.timedelta(seconds=join_timeout),
                              wait_for_workers=False)
    except Exception as exc:  # noqa: BLE001 - a port in use, or nobody listening
        if rank == 0:
            raise DistributedTrainingError(
                f"init_distributed: rank 0 of {world} could not listen on {where} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200]}). Choose a free MASTER_PORT."
            ) from exc
        raise DistributedTrainingError(
            f"init_distributed: rank {rank} of {world} ({described}) found no rank 0 at {where} within "
            f"{join_timeout:g} s. Rank 0 was never started (under SLURM, start the ranks with `srun python "
            f"script.py`, or use torchrun), or it listens elsewhere: every rank must get the same "
            f"MASTER_ADDR and MASTER_PORT, and this host must reach it. (init_distributed's join_timeout "
            f"sets how long to wait.)"
        ) from exc
    deadline = time.monotonic() + join_timeout
    try:
        arrived = store.add(_ARRIVED_KEY, 1)
    except Exception as exc:  # noqa: BLE001 - rank 0 gave up (and exited) as this rank arrived
        raise DistributedTrainingError(
            f"init_distributed: rank {rank} of {world} lost rank 0 at {where} while the ranks were "
            f"arriving ({type(exc).__name__}); rank 0's own log says why (most often: it waited "
            f"join_timeout={join_timeout:g} s for ranks that were started too late, or not at all)."
        ) from exc
    pause = 0.01
    while arrived < world:
        if time.monotonic() >= deadline:
            raise DistributedTrainingError(
                f"init_distributed: only {arrived} of {world} ranks arrived within {join_timeout:g} s "
                f"(this is rank {rank}; {described}). The other ranks were never started, or cannot "
                f"reach {where}. Under SLURM, a batch script with --ntasks={world} must start the "
                f"script with `srun python script.py`: a plain `python script.py` runs once, as a "
                f"single rank. Or start the ranks with torchrun (--nproc-per-node). To wait longer for "
                f"slow starts, pass a larger join_timeout."
            )
        time.sleep(pause)
        pause = min(2 * pause, 0.5)
        try:
            arrived = store.add(_ARRIVED_KEY, 0)
        except Exception as exc:  # noqa: BLE001 - as above
            raise DistributedTrainingError(
                f"init_distributed: rank {rank} of {world} lost rank 0 at {where} while the ranks were "
                f"arriving ({type(exc).__name__}); rank 0's own log says why (most often: it waited "
                f"join_timeout={join_timeout:g} s for ranks that were started too late, or not at all)."
            ) from exc
    store.set_timeout(datetime.timedelta(seconds=float(timeout)))
    return store


def init_distributed(backend: str | None = None, *, timeout: float = 600.0,
                     join_timeout: float = 120.0) -> tuple[int, int]:
    """Join this process to the ranks of a training job, from its launcher's environment.

    Reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (set by ``torchrun``) or, when
    those are missing, ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``
    (set by ``srun``); ``MASTER_ADDR`` and ``MASTER_PORT`` must be set either
    way (under SLURM, export them in the batch script: the first node of
    ``$SLURM_JOB_NODELIST`` and a free port). With CUDA, each rank takes GPU
    ``LOCAL_RANK``. Call it once, at the top of the training script; the
    learners then train data-parallel (see the guide's "Training on several
    GPUs or nodes").

    Parameters
    ----------
    backend : {"nccl", "gloo"} or None, default=None
        ``None``: NCCL when CUDA is available, else gloo.
    timeout : float, default=600
        Seconds a collective waits for the other ranks before failing: the
        longest a dead or stuck rank can hold the others up. It must exceed
        the longest stretch one rank computes alone (an epoch's scores are
        shared, so that is about one evaluation pass).
    join_timeout : float, default=120
        Seconds every rank waits, here, for all the ranks to arrive. A job
        whose other ranks were never started (a SLURM script with
        ``--ntasks=2`` that runs ``python`` instead of ``srun python``) ends
        then with an error that says how many arrived and how to start the
        rest. (Under torchrun, whose agent starts every rank and serves their
        rendezvous, torch's own rendezvous is used.)

    Returns
    -------
    rank, world_size : int
        This process's rank and the number of ranks (``(0, 1)`` when the
        environment names no launcher: nothing is initialised then).

    Raises
    ------
    ValueError
        When the environment names a rank but not ``MASTER_ADDR``/``MASTER_PORT``,
        sets ``RANK`` without ``WORLD_SIZE`` (or the reverse), or holds a
        launcher variable that is not a whole number or not a rank of the job.
    DistributedTrainingError
        When not every rank arrives within ``join_timeout``.

    Examples
    --------
    Outside a launcher there is nothing to join, and fits train on this process:

    >>> import g2v_sklearn
    >>> g2v_sklearn.init_distributed()  # doctest: +SKIP
    (0, 1)
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    launched = _launcher()
    if launched is None or launched[1] < 2:
        return 0, 1
    rank, world, described = launched
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise ValueError(
            f"init_distributed: this process is rank {rank} of {world}, but {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set. torchrun sets them; under SLURM export "
            f"MASTER_ADDR (the first host of $SLURM_JOB_NODELIST) and MASTER_PORT (a free port) in the "
            f"batch script."
        )
    local = _env_int("LOCAL_RANK", "SLURM_LOCALID") or 0
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local)
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":  # torchrun's agent serves the store
        dist.init_process_group(backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=float(timeout)))
        return rank, world
    port = _env_int("MASTER_PORT")
    store = _join(os.environ["MASTER_ADDR"], port, rank, world, described, float(join_timeout), float(timeout))
    dist.init_process_group(backend, store=store, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=float(timeout)))
    return rank, world


@contextmanager
def _collective(what: str, ranks: Ranks):
    """Turn a failed collective into a DistributedTrainingError that says what happened."""
    try:
        yield
    except DistributedTrainingError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure of a collective means the same here
        raise DistributedTrainingError(
            f"Training on {ranks.world_size} ranks stopped: rank {ranks.rank} could not {what} "
            f"({type(exc).__name__}: {str(exc)[:300]}). Another rank probably died or stopped "
            f"answering within the process group's timeout; its own log says why."
        ) from exc


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) with autograd: the backward pass sums the ranks' gradients too."""

    @staticmethod
    def forward(ctx, tensor, ranks):
        ctx.ranks = ranks
        return ranks.sum(tensor)

    @staticmethod
    def backward(ctx, grad):
        return ctx.ranks.sum(grad), None


class Ranks:
    """The processes one fit trains on: this one alone (``world_size == 1``,
    every method a no-op), or the ranks of the default process group.

    Every method that talks to the other ranks is a collective: all ranks
    must call it, in the same order.
    """

    def __init__(self, world_size: int = 1, rank: int = 0, device: torch.device | None = None):
        self.world_size = world_size
        self.rank = rank
        self.device = device or torch.device("cpu")  # where collectives' tensors live

    @classmethod
    def detect(cls, who: str) -> Ranks:
        """The ranks of this fit: the initialised default process group, or this process alone.

        Refuses, with an error that says why, the fits that cannot take part
        in the ranks' training: one in a process a launcher started without a
        process group (a joblib worker of a rank, or a script that did not
        call :func:`init_distributed`), one on a thread other than the main
        thread, and one inside scikit-learn's model selection (GridSearchCV),
        whose fits the ranks would not run in step.
        """
        initialised = dist.is_available() and dist.is_initialized()
        if not initialised:
            world = _env_int("WORLD_SIZE")
            if world is not None and world > 1:
                raise RuntimeError(
                    f"{who}.fit runs in a process started for rank {os.environ.get('RANK', '?')} of "
                    f"{world} (WORLD_SIZE={world} is set), but this process has no torch.distributed "
                    f"process group. Either the training script did not call "
                    f"g2v_sklearn.init_distributed() before fitting, or this fit runs in a joblib "
                    f"worker (GridSearchCV or cross_validate with n_jobs > 1) of a rank, which cannot "
                    f"take part in the ranks' training. Fit in the ranks' own processes, or unset "
                    f"WORLD_SIZE to train on one process."
                )
            return cls()
        world = dist.get_world_size()
        if world < 2:
            return cls()
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError(
                f"{who}.fit was called on a thread of a {world}-rank torch.distributed job; the "
                f"ranks' collectives must run in step, so fit on the main thread (no joblib threads, "
                f"no n_jobs > 1) when training on several ranks."
            )
        if inside_model_selection():
            raise RuntimeError(
                f"{who}.fit was called by scikit-learn's model selection (GridSearchCV, "
                f"cross_validate) in a {world}-rank torch.distributed job. Data-parallel training "
                f"needs every rank to run the same fits in step, which model selection does not "
                f"promise; choose parameters on one process, then train the chosen model on the ranks."
            )
        backend = dist.get_backend()
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        return cls(world, dist.get_rank(), device)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    # ---------------------------------------------------------------- shares
    def share(self, n: int) -> np.ndarray:
        """Rows of a global batch of ``n`` that this rank takes (contiguous, sizes within one)."""
        if not self.distributed:
            return np.arange(n)
        return np.array_split(np.arange(n), self.world_size)[self.rank]

    # ---------------------------------------------------------------- collectives
    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of ``tensor`` over ranks (no autograd), on ``tensor``'s device."""
        if not self.distributed:
            return tensor
        out = tensor.detach().to(self.device, copy=True).contiguous()
        with _collective("add up a tensor with the other ranks", self):
            dist.all_reduce(out)
        return out.to(tensor.device)

    def sum_with_grad(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks that gradients flow through (their backward pass sums over ranks too)."""
        return _SumOverRanks.apply(tensor, self) if self.distributed else tensor

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank."""
        if not self.distributed:
            return bool(flag)
        return bool(self.sum(torch.tensor([float(bool(flag))], dtype=torch.float64)).item() > 0)

    def average_gradients(self, parameters) -> None:
        """Replace every gradient by its mean over ranks, in one flat all-reduce."""
        if not self.distributed:
            return
        # parameters without a gradient (unused by the loss) have none on any rank: the optimizer
        # skips them, as on one process
        params = [p for p in parameters if p.requires_grad and p.grad is not None]
        grads = [p.grad for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads]) if grads else torch.zeros(0)
        flat = self.sum(flat) / self.world_size
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset:offset + g.numel()].view_as(g).to(g.dtype)
            offset += g.numel()

    def broadcast_object(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        with _collective("receive rank 0's state", self):
            dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def broadcast_module(self, module: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers into ``module`` on every rank."""
        if not self.distributed:
            return
        with torch.no_grad():
            for tensor in list(module.parameters()) + list(module.buffers()):
                moved = tensor.detach().to(self.device, copy=True).contiguous()
                with _collective("receive rank 0's weights", self):
                    dist.broadcast(moved, src=0)
                tensor.copy_(moved.to(tensor.device))

    def gather_rows(self, local: torch.Tensor, n: int) -> torch.Tensor:
        """The rows every rank computed for its :meth:`share` of ``n``, in order, on every rank."""
        if not self.distributed:
            return local
        sizes = [len(part) for part in np.array_split(np.arange(n), self.world_size)]
        width = max(sizes)
        padded = torch.zeros((width,) + tuple(local.shape[1:]), dtype=local.dtype, device=self.device)
        padded[: len(local)] = local.to(self.device)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        with _collective("gather the other ranks' outputs", self):
            dist.all_gather(parts, padded)
        return torch.cat([part[:size] for part, size in zip(parts, sizes)]).to(local.device)

    def check_same(self, what: str, description: str, who: str) -> None:
        """Raise on every rank when ``what`` (a string) differs between the ranks."""
        if not self.distributed:
            return
        digest = hashlib.sha256(what.encode()).digest()[:8]
        mine = torch.tensor(np.frombuffer(digest, dtype=np.int64).copy(), device=self.device)
        parts = [torch.empty_like(mine) for _ in range(self.world_size)]
        with _collective("compare its data with the other ranks'", self):
            dist.all_gather(parts, mine)
        differ = [r for r, part in enumerate(parts) if not torch.equal(part, parts[0])]
        if differ:
            raise DistributedTrainingError(
                f"{who}.fit on {self.world_size} ranks: rank{'s' if len(differ) > 1 else ''} "
                f"{differ} {'were' if len(differ) > 1 else 'was'} given other {description} than "
                f"rank 0. Every rank must call fit with the same data (the same token stores, in the "
                f"same order), the same sample weights and the same parameters."
            )

    def progress(self, enabled: bool) -> bool:
        """Whether this rank shows progress bars (rank 0 only)."""
        return bool(enabled) and self.rank == 0

