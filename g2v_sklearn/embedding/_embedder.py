"""GeomEmbedder: MD frames in, equivariant residue tokens out."""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from contextlib import nullcontext
from numbers import Integral, Real

import mdtraj as md
import numpy as np
import torch
from joblib import Parallel, delayed, effective_n_jobs
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from .._compat import Interval, Options, StrOptions, _fit_context
from .._runtime import inference_memory_budget
from .._threads import ThreadBudget
from .._utils import (
    PickleVersionMixin,
    check_generator,
    keep_parameters,
    local_torch_seed,
    resolve_device,
    supports_bfloat16,
    torch_generator,
    weights_sha256,
)
from ..backbones._backbone import (
    ARCHITECTURES,
    BackboneConfig,
    DenoisingHead,
    build_backbone,
    file_sha256,
    load_checkpoint,
)
from ..backbones._neighbors import radius_graph
from ..backbones._padded_visnet import padded_forward, supports_padded
from ..backbones._pretrained import resolve_checkpoint
from ..tokens._format import _discard_damaged, load_tokens
from ..tokens._trajectory import TokenTrajectory
from ..tokens._writer import RamTokenWriter, TokenStoreWriter, human_bytes
from ._pooling import RESIDUE_POOLINGS, RESIDUE_POSITIONS, pool_residues
from ._pretrain import denoising_pretrain
from . import _mdanalysis as mdanalysis
from ._reading import FrameReader, Source, as_sources, select_source_atoms, topology_of
from ._topology import (
    atomic_numbers_of,
    describe_topology,
    first_difference,
    residue_layout,
    topology_signature,
    unusual_elements,
)

__all__ = ["GeomEmbedder"]

# Atoms per forward pass with batch_size="auto" (see the benchmark in benchmarks/).
ATOMS_PER_BATCH = 2048

#: With ``compile="auto"``, a trajectory is embedded through ``torch.compile`` on a CPU
#: when its neighbour pairs summed over its frames reach this many. Measured on adenylate
#: kinase (``benchmarks/bench_compile.py``, 2-core AVX-512 EPYC, empty inductor cache):
#: compiling cost 28-40 s once per process and saved 0.4-4.0 microseconds per pair, so
#: it repaid itself from 1e7 to 1e8 pair-frames (ViSNet uncapped and at 32 neighbours,
#: TensorNet likewise); 1e8 never loses, and is about 900 frames of that protein's 1,656
#: heavy atoms with every neighbour within 7.5 Angstrom. Backbones whose eager pass is as
#: fast as the compiled one (``compiles_faster = False``: the equivariant transformer)
#: are never compiled automatically.
COMPILE_EDGE_FRAMES = 1e8

#: A store being written commits its frames at the end of every chunk of ``chunk_size``
#: frames and, within a chunk, after the first batch that ends this many seconds after the
#: last commit: a killed or failed embedding loses at most about this much work, however
#: large the chunks and however slow the machine. A commit flushes the frames written
#: since the last one and records their checksum (``benchmarks/stress_stores.py`` times it).
COMMIT_SECONDS = 60.0


def pass_bytes_per_frame(n_atoms: int, hidden: int, max_num_neighbors: int | None) -> float:
    """Memory one frame adds to a forward pass of the padded ViSNet, in bytes (an estimate).

    The per-edge tensors dominate: about six live (n_atoms x neighbours x hidden)
    float32 arrays. Proteins' heavy atoms have about 105 neighbours within 7.5
    Angstrom. Measured on adenylate kinase (1,656 heavy atoms, hidden 64, no
    neighbour cap): 250-270 MB a frame; this gives 267 MB.
    """
    neighbours = min(n_atoms - 1, 105 if max_num_neighbors is None else max_num_neighbors)
    return 6.0 * 4 * n_atoms * max(neighbours, 1) * hidden


#: What one forward pass may take (the policy's home is g2v_sklearn._runtime).
_memory_budget_bytes = inference_memory_budget


class _Engine:
    """Everything needed to embed one trajectory; picklable, so joblib workers get a copy.

    Knows nothing of scikit-learn: the estimator builds it from its fitted state.
    """

    def __init__(self, *, module, atomic_numbers, reader: FrameReader, layout,
                 pooling, residue_position, batch_size, dtype, device,
                 compile, progress, provenance, batch_request="auto"):
        self.module = module
        self.atomic_numbers = atomic_numbers
        self.reader = reader
        self.layout = layout
        self.pooling = pooling
        self.residue_position = residue_position
        self.batch_size = batch_size
        self.batch_request = batch_request  # what the user asked for ("auto" or an int)
        self.chunk_size = reader.chunk_size
        self.dtype = dtype
        self.device = device
        self.compile = compile  # True, False or "auto"; False after a failed compilation
        self.progress = progress
        self.provenance = provenance

    # -- embedding ---------------------------------------------------------------------
    def forward(self, z: torch.Tensor, pos: torch.Tensor, batch: torch.Tensor,
                compile: bool = False):
        """Atom scalars and vectors: the backbone on a padded neighbour table when it applies.

        With ``compile`` (the trajectory's :meth:`worth_compiling`), the forward
        pass goes through ``torch.compile``; if compilation fails (no C++
        compiler, an unsupported platform), a warning says so and this engine
        goes on without it.
        """
        if not supports_padded(self.module):
            return self.module(z, pos, batch)
        if compile and self.compile:
            try:
                return padded_forward(self.module, z, pos, batch, compile=True)
            except Exception as exc:  # noqa: BLE001 - any compiler failure falls back
                warnings.warn(
                    f"torch.compile failed ({type(exc).__name__}: {exc}); GeomEmbedder embeds "
                    f"without compilation.", RuntimeWarning, stacklevel=2,
                )
                self.compile = False
        return padded_forward(self.module, z, pos, batch)

    def worth_compiling(self, frame: np.ndarray, n_frames: int) -> bool:
        """Whether to compile for a trajectory of ``n_frames`` frames like ``frame`` (Angstrom).

        ``compile=True`` or ``False`` decide alone. ``"auto"`` compiles on a
        CPU when the trajectory's neighbour pairs (those of ``frame``, self
        pairs included, times ``n_frames``) reach :data:`COMPILE_EDGE_FRAMES`:
        the work above which compiling has repaid its cost in the measurements
        of ``docs/benchmarks.md``. It does not compile on other devices, where
        that trade was not measured.
        """
        if self.compile != "auto":
            return bool(self.compile)
        if (torch.device(self.device).type != "cpu" or not supports_padded(self.module)
                or not getattr(self.module, "compiles_faster", True)):
            return False
        distance = self.module.distance
        edges = radius_graph(torch.from_numpy(np.ascontiguousarray(frame)), distance.cutoff,
                             loop=True, max_num_neighbors=distance.max_num_neighbors).size(1)
        return edges * n_frames >= COMPILE_EDGE_FRAMES

    def embed_batch(self, pos: np.ndarray, compile: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Tokens (b, n_residues, 4, H) and residue positions (b, n_residues, 3) of a batch."""
        device = self.device
        n_frames, n_atoms, _ = pos.shape
        pos_t = torch.from_numpy(pos).to(device)
        z = self.atomic_numbers.to(device).repeat(n_frames)
        batch = torch.arange(n_frames, device=device).repeat_interleave(n_atoms)
        autocast = (
            torch.autocast(device_type=device.type, dtype=torch.bfloat16)
            if self.dtype == "bfloat16"
            else nullcontext()
        )
        with torch.inference_mode(), autocast:
            x, vec = self.forward(z, pos_t.reshape(-1, 3), batch, compile)
        hidden = x.shape[-1]
        atoms = torch.cat([x.float().unsqueeze(1), vec[:, :3].float()], dim=1)
        atoms = atoms.view(n_frames, n_atoms, 4, hidden)
        tokens, positions = pool_residues(atoms, pos_t, self.layout, pooling=self.pooling,
                                          residue_position=self.residue_position)
        return tokens.cpu().numpy(), positions.cpu().numpy()

    def embed(self, source: Source, directory: str | None, key: str | None = None,
              if_exists: str = "replace") -> TokenTrajectory:
        """Embed one trajectory, into RAM or into a memory-mapped store at ``directory``.

        ``key`` (the cache key) goes into the store's provenance; ``if_exists``
        is the store writer's (a cache keeps a store another worker finished first).
        A cache (``if_exists="keep"``) entry that another thread or process is
        embedding is waited for and read, not embedded a second time.
        """
        self.module.to(self.device).eval()
        reader = self.reader
        reader.check_atom_count(source)  # a file's atoms must be the topology's
        n_frames = reader.n_frames(source)
        layout = self.layout
        hidden = int(self.module.hidden_channels)
        shape = (n_frames, layout.n_residues)
        if directory is None:
            writer = RamTokenWriter(shape, hidden)
        else:
            # A killed or interrupted embedding of this key is resumed from its last
            # committed chunk. Batches start at chunk starts, so the resumed ones line up
            # with an uninterrupted run's for the same chunk and batch sizes; the device
            # kind is part of the key, since a GPU's rounding is not a CPU's.
            resume_key = None if key is None else (
                f"{key}/chunk_size={self.chunk_size}/batch_size={self.batch_request}/"
                f"device={torch.device(self.device).type}")
            writer = TokenStoreWriter(
                directory, n_frames=n_frames, n_residues=layout.n_residues,
                n_channels=hidden, dtype="float32", if_exists=if_exists, resume_key=resume_key,
                if_busy="wait" if if_exists == "keep" else "write",
            )
        bar = tqdm(total=n_frames, unit="frame", desc=f"embedding {source.label}",
                   disable=not self.progress, leave=False)
        # torch threads sized to the free cores (see _threads): a busy neighbour must not
        # leave a two-thread team spin-waiting at every kernel
        with writer, bar, ThreadBudget(device=torch.device(self.device)) as threads:
            if writer.existing is not None:  # another worker embedded this cache entry
                return writer.existing
            done = writer.n_written  # frames an interrupted run committed
            timestep = (writer.resumed_info or {}).get("timestep")
            bar.update(done)
            # decided on the first frame read, for this trajectory only (an engine is
            # shared by the trajectories that threads embed at once)
            compiling = None
            last_commit = time.monotonic()
            for chunk in reader.chunks(source, done):
                if timestep is None and chunk.n_frames > 1:
                    timestep = float(chunk.timestep)
                xyz = reader.coordinates(chunk, source, done)
                if compiling is None and len(xyz):
                    compiling = self.worth_compiling(xyz[0], n_frames - done)
                for start in range(0, len(xyz), self.batch_size):
                    tokens, positions = self.embed_batch(xyz[start:start + self.batch_size],
                                                         compiling)
                    writer.write(tokens, positions)
                    bar.update(len(tokens))
                    threads.refresh()
                    if (time.monotonic() - last_commit >= COMMIT_SECONDS
                            and start + self.batch_size < len(xyz)):
                        # by time, inside the chunk: a resumed run reads from this batch's
                        # end to the chunk's end, so its batches stay those of this run
                        writer.checkpoint({"timestep": timestep})
                        last_commit = time.monotonic()
                done += len(xyz)
                writer.checkpoint({"timestep": timestep})
                last_commit = time.monotonic()
            if timestep is None and source.traj is not None and source.traj.n_frames > 1:
                timestep = float(source.traj.timestep) * reader.stride
            provenance = dict(self.provenance, source=source.description)
            if key is not None:
                provenance["key"] = key
            return writer.finalize(
                residue_names=layout.residue_names, chain_ids=layout.chain_ids,
                residue_ids=layout.residue_ids, timestep=timestep, provenance=provenance,
            )


def _embed_indexed(index: int, engine: _Engine, source: Source, directory: str | None,
                   key: str | None, if_exists: str) -> tuple[int, TokenTrajectory]:
    """``engine.embed``, with the trajectory's place in ``X`` (parallel results arrive in
    any order)."""
    return index, engine.embed(source, directory, key, if_exists)


class GeomEmbedder(PickleVersionMixin, TransformerMixin, BaseEstimator):
    """Embed MD frames into equivariant residue tokens with a frozen pretrained GNN.

    Each frame's selected atoms (by default the heavy atoms of everything
    but water and ions) go through a pretrained equivariant network (ViSNet,
    TorchMD-Net's equivariant transformer or TensorNet); the per-atom scalar
    and vector features are pooled per residue into tokens of shape
    (n_residues, 4, H): row 0 the scalars, rows 1-3 the x, y and z
    components of the vector channels, which turn with the molecule.

    Parameters
    ----------
    checkpoint : {"visnet", "et", "tensornet"}, str or path-like, default=None
        A pretrained backbone: one of geom2vec's published files by name
        (``"visnet"``, ``"et"``, ``"tensornet"``: fetched once into the
        per-user cache and verified by SHA-256, see :func:`fetch_backbone`),
        or the path of a geom2vec-format checkpoint file, read with
        ``weights_only=True`` and strict key checking. A file's architecture
        is read from its keys, not from its name; a file named or laid out
        as one of the published files but with another SHA-256 gets a
        :class:`CheckpointWarning`.
    architecture : {"visnet", "et", "tensornet"}, default=None
        The backbone: ViSNet, TorchMD-Net's equivariant transformer, or
        TensorNet. ``None`` reads it from the checkpoint (ViSNet without
        one); an explicit value the checkpoint contradicts is an error.
        TensorNet's features are 3 x 3 tensors per channel: its tokens hold
        its scalar output and the axial vector of the tensors' antisymmetric
        part, as geom2vec's do (see ``docs/guide.md``).
    topology : str, path-like, mdtraj.Topology or mdtraj.Trajectory, default=None
        Topology for trajectories given as file paths.
    selection : str, default=None
        Selection string of the atoms to embed, in mdtraj's language, or in
        MDAnalysis's when ``fit`` is given MDAnalysis Universes; ``None``
        selects the heavy atoms of everything but water and monatomic ions.
    atomic_numbers : array-like of int of shape (n_atoms,), default=None
        Atomic numbers of every topology atom, overriding its elements (for
        topologies whose elements are unreliable). Without it, an MDAnalysis
        topology's elements are its ``elements``, or when it has none (a
        PSF) the elements nearest its atoms' masses.
    pretrain : {"denoise", "random"}, default=None
        ``"denoise"`` learns (or, with a checkpoint, fine-tunes) the backbone
        in ``fit`` by coordinate denoising on the frames given. ``"random"``
        uses an untrained backbone, as an ablation only.
    hidden_channels, num_layers, num_rbf : int, default=None
        Architecture; ``None`` reads them from the checkpoint (or uses
        geom2vec's 64, 6, 64 without one). An explicit value that disagrees
        with the checkpoint is an error.
    cutoff : float, default=None
        Interaction cutoff in Angstrom; ``None`` reads it from the checkpoint
        (7.5 without one).
    lmax : {1, 2}, default=None
        Highest spherical-harmonic degree (``None``: 1).
    max_num_neighbors : int, default=None
        Keep only this many nearest neighbours per atom; ``None`` keeps every
        atom within the cutoff. (geom2vec builds its networks with a cap of
        32 in torch-cluster's search order, which is not the nearest 32.)
    pooling : {"sum", "mean"}, default="sum"
        How atom features are pooled per residue.
    residue_position : {"centroid", "ca"}, default="centroid"
        Residue positions: centroid of the selected atoms, or the C-alpha
        (the centroid for residues without one).
    stride : int, default=1
        Embed every ``stride``-th frame.
    batch_size : int or "auto", default="auto"
        Frames per forward pass. ``"auto"`` batches about
        ``ATOMS_PER_BATCH`` (2,048) atoms: many frames of a small molecule,
        one frame of a protein, whose edge tensors alone take hundreds of MB
        a frame (batching large frames on a CPU costs memory and no speed).
        A ``batch_size`` whose pass would take more than a quarter of the
        RAM (half of a GPU's memory) is reduced to what fits, with a warning.
    chunk_size : int, default=1000
        Frames read at a time from trajectory files. With ``store_dir`` or
        ``memory``, also the frames committed at a time (flushed to disk with
        their checksum, kept for a rerun if the embedding is killed or fails),
        with a commit at least every ``COMMIT_SECONDS`` (60) seconds within a
        chunk.
    dtype : {"float32", "bfloat16"}, default="float32"
        Precision of the backbone's forward pass; tokens are stored in float32.
        ``"bfloat16"`` runs the forward pass under autocast where the device
        computes in bfloat16 natively, and falls back to float32 with a
        warning where it does not.
    device : str or torch.device, default="auto"
        ``"auto"`` is CUDA when available, else CPU.
    compile : bool or "auto", default="auto"
        Run the backbone through ``torch.compile`` (needs a C++ compiler on
        CPU). Compiling costs tens of seconds once per process; afterwards
        frames embed faster (ViSNet and TensorNet 1.1-1.5x on a CPU, see
        ``docs/benchmarks.md``).
        ``"auto"`` compiles a trajectory on a CPU when it is large enough to
        repay that (:data:`COMPILE_EDGE_FRAMES` neighbour pairs over its
        frames: about 900 frames of a 1,656-atom protein), except with the
        equivariant transformer, whose eager pass was as fast, and never on
        a GPU, where the trade was not measured (pass ``True`` there). If
        compilation fails, a warning says so and embedding goes on without it.
    store_dir : str or path-like, default=None
        Write tokens into memory-mapped files under this directory instead
        of RAM (one sub-directory per trajectory, named by a hash of its
        input and written atomically; ``tokens[i].path`` gives it). A
        complete store there from the same input, parameters and weights is
        reused; a damaged one is an error that names it.
    memory : str or path-like, default=None
        Directory of a token cache keyed by the coordinates, the topology,
        the parameters and the backbone weights: identical inputs are never
        embedded twice. Cached tokens are memory-mapped. Of concurrent
        writers of one key (threads, processes, as under
        ``GridSearchCV(n_jobs=2)``), one embeds and the others wait for its
        entry and read it (one whose writer died takes its work over); a
        damaged entry is embedded again, with a warning.
    n_jobs : int, default=None
        Trajectories embedded in parallel through joblib. ``None`` leaves it
        to an active ``joblib.parallel_config`` (so under
        ``joblib.parallel_config(backend="dask")`` the trajectories go to the
        cluster's workers, each with its own progress bar there, and a bar
        here counts finished trajectories), and embeds one at a time without
        one. ``1`` always embeds here, one at a time.
    noise_std : float, default=0.2
        Standard deviation, in Angstrom, of the denoising noise.
    pretrain_steps : int, default=1000
        Optimizer steps of denoising pretraining.
    pretrain_lr : float, default=1e-4
        Learning rate of denoising pretraining.
    progress : bool, default=True
        Show progress bars.
    random_state : int, numpy.random.Generator or None, default=None
        Seeds the local generators of pretraining and random initialisation.

    Attributes
    ----------
    module_ : torch.nn.Module
        The backbone (torch-geometric's ViSNetBlock, or this package's
        EquivariantTransformer or TensorNet), in eval mode.
    config_ : dict
        Its architecture.
    checkpoint_sha256_ : str or None
        SHA-256 of the checkpoint file (of the fetched file for a name).
    weights_sha256_ : str
        SHA-256 of the backbone weights actually used.
    atom_indices_ : ndarray of shape (n_selected,)
        Embedded atoms (topology indices).
    atomic_numbers_ : ndarray of shape (n_selected,)
    residue_names_ : list of str of length n_residues
    n_residues_ : int
    pretrain_history_ : list of float
        Denoising loss per step (empty without pretraining).

    See Also
    --------
    TokenTrajectory : what ``transform`` returns, one per trajectory.

    Notes
    -----
    Positions go into the network in Angstrom (mdtraj gives nm). Tokens are
    rotation-equivariant: rotating a frame by :math:`R` leaves row 0 unchanged
    and maps rows 1-3, as 3-vectors per channel, to :math:`R v`.

    References
    ----------
    .. [1] Pengmei, Lorpaiboon, Guo, Weare, Dinner, "Using pretrained graph
       neural networks with token mixers as geometric featurizers for
       conformational dynamics", J. Chem. Phys. 162 (2025).
    .. [2] Pengmei, Guo, Lorpaiboon, Dinner, "Hierarchical geometric deep
       learning enables scalable analysis of molecular dynamics" (2025).

    Examples
    --------
    Real use loads geom2vec's pretrained weights by name, e.g.
    ``GeomEmbedder("visnet")``, and gives tokens with H = 64 channels. So
    that this example runs anywhere without a checkpoint file (or network
    access), it embeds 50 frames of two alanine-dipeptide
    trajectories with a small untrained backbone (``pretrain="random"``, an
    ablation setting: the shapes are those of real use, the features are not
    meaningful).

    >>> from g2v_sklearn import GeomEmbedder
    >>> from g2v_sklearn.datasets import load_alanine_dipeptide
    >>> trajs = [t[:50] for t in load_alanine_dipeptide(stride=10).trajectories[:2]]
    >>> embedder = GeomEmbedder(pretrain="random", hidden_channels=16, num_layers=2,
    ...                         num_rbf=16, progress=False, random_state=0)
    >>> tokens = embedder.fit_transform(trajs)  # one TokenTrajectory per trajectory
    >>> tokens[0]
    TokenTrajectory(n_frames=50, n_residues=3, n_channels=16, in RAM)
    >>> tokens[0].features.shape, tokens[0].positions.shape
    ((50, 3, 4, 16), (50, 3, 3))
    >>> embedder.residue_names_, tokens[0].timestep
    (['ACE', 'ALA', 'NME'], 100.0)

    With ``store_dir`` the tokens are written to memory-mapped files instead
    of RAM, one store per trajectory (reopen one with :func:`load_tokens`):

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     stored = embedder.set_params(store_dir=tmp).transform(trajs)
    ...     print(type(stored[0].features).__name__, stored[0].path.startswith(tmp))
    ...     del stored  # close the memory maps before the directory goes
    memmap True
    """

    _parameter_constraints: dict = {
        "checkpoint": [str, os.PathLike, None],
        "architecture": [StrOptions(set(ARCHITECTURES)), None],
        "topology": [str, os.PathLike, md.Topology, md.Trajectory, None],
        "selection": [str, None],
        "atomic_numbers": ["array-like", None],
        "pretrain": [StrOptions({"denoise", "random"}), None],
        "hidden_channels": [Interval(Integral, 1, None, closed="left"), None],
        "num_layers": [Interval(Integral, 1, None, closed="left"), None],
        "num_rbf": [Interval(Integral, 1, None, closed="left"), None],
        "cutoff": [Interval(Real, 0, None, closed="neither"), None],
        "lmax": [Options(Integral, {1, 2}), None],
        "max_num_neighbors": [Interval(Integral, 1, None, closed="left"), None],
        "pooling": [StrOptions(set(RESIDUE_POOLINGS))],
        "residue_position": [StrOptions(set(RESIDUE_POSITIONS))],
        "stride": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "chunk_size": [Interval(Integral, 1, None, closed="left")],
        "dtype": [StrOptions({"float32", "bfloat16"})],
        "device": [str, torch.device],
        "compile": ["boolean", StrOptions({"auto"})],
        "store_dir": [str, os.PathLike, None],
        "memory": [str, os.PathLike, None],
        "n_jobs": [Integral, None],
        "noise_std": [Interval(Real, 0, None, closed="neither")],
        "pretrain_steps": [Interval(Integral, 1, None, closed="left")],
        "pretrain_lr": [Interval(Real, 0, None, closed="neither")],
        "progress": ["boolean"],
        "random_state": ["random_state", np.random.Generator],
    }

    def __init__(
        self,
        checkpoint=None,
        *,
        architecture=None,
        topology=None,
        selection=None,
        atomic_numbers=None,
        pretrain=None,
        hidden_channels=None,
        num_layers=None,
        num_rbf=None,
        cutoff=None,
        lmax=None,
        max_num_neighbors=None,
        pooling="sum",
        residue_position="centroid",
        stride=1,
        batch_size="auto",
        chunk_size=1000,
        dtype="float32",
        device="auto",
        compile="auto",
        store_dir=None,
        memory=None,
        n_jobs=None,
        noise_std=0.2,
        pretrain_steps=1000,
        pretrain_lr=1e-4,
        progress=True,
        random_state=None,
    ):
        keep_parameters(self, locals())

    #: Parameters added since 0.1.0.dev0, with the value that reproduces the embedders
    #: made before: a pickle made without them unpickles with them.
    _ADDED_PARAMETERS = {"architecture": None}

    def __setstate__(self, state):
        for name, value in self._ADDED_PARAMETERS.items():
            state.setdefault(name, value)
        super().__setstate__(state)

    # -- scikit-learn plumbing ---------------------------------------------------------
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.requires_fit = True
        tags.non_deterministic = self.pretrain == "denoise" and self.device != "cpu"
        return tags

    # -- fitting -----------------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Load (or pretrain) the backbone and record the topology.

        Parameters
        ----------
        X : list of mdtraj.Trajectory, str, or MDAnalysis Universe or AtomGroup
            Trajectories, file paths read with ``topology``, or MDAnalysis
            Universes (an AtomGroup is a system of its own atoms). Only their
            topology is used, unless ``pretrain="denoise"``.
        y : None
            Ignored.

        Returns
        -------
        self : GeomEmbedder
        """
        if self.store_dir is not None and self.memory is not None:
            raise ValueError(
                "Set either store_dir (memory-mapped outputs) or memory (a cache, whose "
                "outputs are memory-mapped in the cache directory), not both."
            )
        sources = as_sources(X)
        given = self.atomic_numbers is not None
        topology = topology_of(sources[0], self.topology, elements_given=given)
        numbers = atomic_numbers_of(topology, self.atomic_numbers)
        atom_indices = select_source_atoms(sources[0], topology, self.selection, numbers)
        module, config, head_state = self._make_backbone()
        too_heavy = numbers[atom_indices] >= config.max_z
        if too_heavy.any():
            atom = topology.atom(int(atom_indices[np.flatnonzero(too_heavy)[0]]))
            raise ValueError(
                f"Atom {atom} has atomic number {numbers[atom.index]}, but the backbone has "
                f"embeddings for atomic numbers below {config.max_z} only. Exclude it with "
                f"`selection`."
            )

        unusual = unusual_elements(topology, atom_indices, numbers, pretrained=self.checkpoint is not None,
                                   given=given)
        if unusual is not None:
            warnings.warn(unusual, UserWarning, stacklevel=3)  # fit's caller, past _fit_context

        self.topology_ = topology
        self.atom_indices_ = atom_indices
        self.atomic_numbers_ = numbers[atom_indices]
        self.layout_ = residue_layout(topology, atom_indices)
        self.residue_names_ = list(self.layout_.residue_names)
        self.n_residues_ = self.layout_.n_residues
        self.topology_signature_ = topology_signature(topology, atom_indices, numbers)
        self.config_ = config.as_dict()
        self.pretrain_history_ = []
        if self.pretrain == "denoise":
            self.pretrain_history_ = self._pretrain(module, head_state, config, sources)
        self.module_ = module.eval().requires_grad_(False)
        self.weights_sha256_ = weights_sha256(self.module_)
        return self

    def _make_backbone(self):
        explicit = {
            "architecture": self.architecture,
            "hidden_channels": self.hidden_channels,
            "num_layers": self.num_layers,
            "num_rbf": self.num_rbf,
            "cutoff": self.cutoff,
            "lmax": self.lmax,
            "max_num_neighbors": self.max_num_neighbors,
        }
        if self.checkpoint is not None:
            if self.pretrain == "random":
                raise ValueError(
                    "pretrain='random' asks for an untrained backbone, but a checkpoint was "
                    "given; drop one of them."
                )
            path = resolve_checkpoint(self.checkpoint, progress=bool(self.progress))
            sha256 = file_sha256(path) if os.path.isfile(path) else None  # else the loader says why
            module, config, head_state = load_checkpoint(path, explicit, sha256=sha256)
            self.checkpoint_sha256_ = sha256
            return module, config, head_state
        if self.pretrain is None:
            raise ValueError(
                "GeomEmbedder has no weights: pass checkpoint= (a pretrained backbone by name, "
                "'visnet', 'et' or 'tensornet', or a geom2vec-format file such as "
                "'visnet_l6_h64_rbf64_r75.pth'), or pretrain='denoise' to learn the backbone "
                "by coordinate denoising on the frames given to fit. (pretrain='random' gives "
                "an untrained backbone, for ablations only.)"
            )
        self.checkpoint_sha256_ = None
        config = BackboneConfig(**{k: v for k, v in explicit.items() if v is not None})
        with local_torch_seed(check_generator(self.random_state)):
            module = build_backbone(config)
        return module, config, {}

    def _pretrain(self, module, head_state, config, sources) -> list[float]:
        """Coordinate denoising: predict Gaussian noise added to the positions."""
        rng = check_generator(self.random_state)
        device = resolve_device(self.device)
        generator = torch_generator(rng, device=device)
        engine = self._engine(module, device)
        reader = engine.reader
        frames = np.concatenate(
            [np.concatenate([reader.coordinates(c, s, 0) for c in reader.chunks(s)])
             for s in sources]
        )
        with local_torch_seed(rng):
            head = DenoisingHead(config.hidden_channels)
        if head_state:
            head.load_state_dict(head_state, strict=True)
        return denoising_pretrain(
            module, head, frames, self.atomic_numbers_, steps=self.pretrain_steps,
            lr=self.pretrain_lr, noise_std=self.noise_std, batch_size=engine.batch_size,
            rng=rng, generator=generator, device=device, progress=bool(self.progress),
        )

    # -- transforming ------------------------------------------------------------------
    def _engine(self, module, device) -> _Engine:
        local = {a: i for i, a in enumerate(self.atom_indices_)}
        bonds = np.array(
            [[local[a.index], local[b.index]] for a, b in self.topology_.bonds
             if a.index in local and b.index in local],
            dtype=np.int64,
        ).reshape(-1, 2)
        dtype = self.dtype
        if dtype == "bfloat16" and not supports_bfloat16(device):
            warnings.warn(
                f"dtype='bfloat16' was requested, but {device} has no native bfloat16 "
                f"arithmetic (on a CPU: AVX512-BF16 or AMX with oneDNN), where it would be "
                f"slower than float32; embedding in float32.", RuntimeWarning, stacklevel=3,
            )
            dtype = "float32"
        provenance = {
            "checkpoint_sha256": getattr(self, "checkpoint_sha256_", None),
            "weights_sha256": getattr(self, "weights_sha256_", None),
            "selection": self.selection,
            "stride": int(self.stride),
            "pooling": self.pooling,
            "residue_position": self.residue_position,
            "dtype": dtype,
            "n_atoms": int(len(self.atom_indices_)),
            "backbone": {k: v for k, v in self.config_.items()} if hasattr(self, "config_") else None,
        }
        reader = FrameReader(
            topology=self.topology_, atom_indices=self.atom_indices_,
            atomic_numbers=self.atomic_numbers_, bonds=bonds, stride=int(self.stride),
            chunk_size=int(self.chunk_size),
        )
        return _Engine(
            module=module, atomic_numbers=torch.as_tensor(self.atomic_numbers_), reader=reader,
            layout=self.layout_, pooling=self.pooling, residue_position=self.residue_position,
            batch_size=self._frames_per_batch(device, int(module.hidden_channels)), dtype=dtype,
            device=device, compile=self.compile, progress=bool(self.progress), provenance=provenance,
            batch_request=str(self.batch_size),
        )

    def _frames_per_batch(self, device: torch.device, hidden: int) -> int:
        """Frames per forward pass: ``batch_size``, unless a pass would not fit in memory."""
        n_atoms = len(self.atom_indices_)
        if self.batch_size == "auto":
            return max(1, ATOMS_PER_BATCH // n_atoms)
        wanted = int(self.batch_size)
        per_frame = pass_bytes_per_frame(n_atoms, hidden, self.max_num_neighbors)
        budget = _memory_budget_bytes(device)
        if budget is None or wanted * per_frame <= budget:
            return wanted
        fits = max(1, int(budget // per_frame))
        warnings.warn(
            f"batch_size={wanted} frames of {n_atoms} atoms would need about "
            f"{human_bytes(wanted * per_frame)} in one forward pass, more than the "
            f"{human_bytes(budget)} a pass may take on this {device.type} (a quarter of its "
            f"memory on a CPU, half on a GPU); GeomEmbedder embeds {fits} frame"
            f"{'s' if fits != 1 else ''} a pass instead (the same tokens, to rounding). "
            f"batch_size='auto' chooses for you.",
            RuntimeWarning, stacklevel=3,
        )
        return fits

    def _check_topology(self, source: Source) -> None:
        topology = topology_of(source, self.topology, elements_given=self.atomic_numbers is not None)
        if topology is self.topology_:
            return
        same = topology.n_atoms == self.topology_.n_atoms
        numbers = None
        if same:
            numbers = atomic_numbers_of(topology, self.atomic_numbers)
            same = topology_signature(topology, self.atom_indices_, numbers) == self.topology_signature_
        if not same:
            difference = first_difference(
                topology, self.topology_, self.atom_indices_, numbers,
                atomic_numbers_of(self.topology_, self.atomic_numbers))
            raise ValueError(
                f"{source.label.capitalize()} has a topology ({describe_topology(topology)}) "
                f"that differs from the one GeomEmbedder was fitted on "
                f"({describe_topology(self.topology_)}): {difference}. Fit one embedder per "
                f"system."
            )

    def _cache_key(self, source: Source) -> str:
        digest = hashlib.sha256()
        if source.traj is not None:
            digest.update(np.ascontiguousarray(source.traj.xyz).tobytes())
            if source.traj.unitcell_vectors is not None:
                digest.update(np.ascontiguousarray(source.traj.unitcell_vectors).tobytes())
            digest.update(np.ascontiguousarray(source.traj.time).tobytes())
        elif source.group is not None:  # its files, or its frames when it has none
            files = mdanalysis.trajectory_files(source.group)
            for name in files:
                digest.update(file_sha256(name).encode())
            if not files:
                digest.update(mdanalysis.frames_digest(source.group).encode())
            digest.update(np.ascontiguousarray(source.group.indices).tobytes())  # which atoms
        else:
            digest.update(file_sha256(source.path).encode())
        params = {
            k: v for k, v in self.get_params(deep=False).items()
            if k in ("selection", "pooling", "residue_position", "stride", "dtype",
                     "max_num_neighbors")
        }
        digest.update(json.dumps(params, sort_keys=True).encode())
        digest.update(self.topology_signature_.encode())
        digest.update(self.weights_sha256_.encode())
        return digest.hexdigest()[:32]

    def transform(self, X):
        """Embed each trajectory into residue tokens.

        Parameters
        ----------
        X : list of mdtraj.Trajectory, str, or MDAnalysis Universe or AtomGroup
            Trajectories with the topology seen in ``fit``; MDAnalysis
            trajectories are read in chunks and left at the frame they were on.

        Returns
        -------
        tokens : list of TokenTrajectory
            One per trajectory: ``features`` of shape
            (n_frames, n_residues, 4, H) and ``positions`` of shape
            (n_frames, n_residues, 3), in Angstrom.
        """
        check_is_fitted(self, "module_")
        sources = as_sources(X)
        for source in sources:
            self._check_topology(source)
        device = resolve_device(self.device)
        engine = self._engine(self.module_, device)
        cache = self.memory is not None
        root = self.memory if cache else self.store_dir
        if_exists = "keep" if cache else "replace"
        results: list[TokenTrajectory | None] = [None] * len(sources)
        todo = []
        for source in sources:
            directory = key = None
            if root is not None:
                key = self._cache_key(source)
                directory = os.path.join(os.fspath(root), key)
                reused = self._reuse_store(directory, key, source)
                if reused is not None:
                    results[source.index] = reused
                    continue
            todo.append((source, directory, key))
        if len(todo) == 1 or self.n_jobs == 1:
            for source, directory, key in todo:
                results[source.index] = engine.embed(source, directory, key, if_exists)
        elif todo:
            # n_jobs=None leaves the choice to an active joblib.parallel_config (a Dask
            # cluster's workers, say), and is serial without one
            parallel = Parallel(n_jobs=self.n_jobs, return_as="generator_unordered")
            bar = tqdm(total=len(todo), unit="trajectory", desc="embedded",
                       disable=not self.progress or effective_n_jobs(self.n_jobs) == 1)
            with bar:
                for index, tokens in parallel(
                    delayed(_embed_indexed)(source.index, engine, source, directory, key, if_exists)
                    for source, directory, key in todo
                ):
                    results[index] = tokens
                    bar.update()
        return results

    def _reuse_store(self, directory: str, key: str, source: Source) -> TokenTrajectory | None:
        """The finished store of ``source`` at ``directory``, or None to embed it.

        Stores are opened with full verification (every chunk against its
        checksum). A cache (``memory``) entry is named by its key, so a
        complete one is used; a damaged one is replaced, with a warning
        naming it. A ``store_dir`` store is used when its provenance records
        the same key (same input, parameters and weights); stores of other
        inputs, or from before keys were recorded, are embedded again and
        replaced. A damaged ``store_dir`` store is an error that says what
        to do: it may be the only copy of days of work.
        """
        try:
            tokens = load_tokens(directory)  # one read: the common case is a complete store
        except FileNotFoundError:
            return None  # nothing there yet
        except (OSError, ValueError, KeyError, TypeError) as problem:
            if self.memory is not None:
                # _discard_damaged looks again under the lock (an empty directory is not damaged)
                if _discard_damaged(directory):
                    warnings.warn(
                        f"The token cache entry {directory} for {source.label} was damaged or "
                        f"incomplete ({problem}); it was removed and is embedded again.",
                        RuntimeWarning, stacklevel=3,
                    )
                return None
            if os.path.isdir(directory) and not os.listdir(directory):
                return None  # an empty directory: the writer fills it
            raise FileExistsError(
                f"{directory!r} exists and is not a complete token store of {source.label}: "
                f"{problem}. It may hold the only copy of finished work, so it is not "
                f"overwritten. Remove it (or move it away) and transform again to embed "
                f"that trajectory anew, or set store_dir to another directory."
            ) from problem
        if self.memory is not None or tokens.provenance.get("key") == key:
            return tokens
        return None

    def fit_transform(self, X, y=None):
        """Fit, then embed ``X``; see :meth:`fit` and :meth:`transform`.

        Parameters
        ----------
        X : list of mdtraj.Trajectory, str, or MDAnalysis Universe or AtomGroup
            Trajectories, file paths read with ``topology``, or MDAnalysis
            Universes or AtomGroups.
        y : None
            Ignored.

        Returns
        -------
        tokens : list of TokenTrajectory
            One per trajectory.
        """
        return self.fit(X, y).transform(X)
