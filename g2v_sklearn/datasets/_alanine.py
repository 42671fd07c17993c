"""Alanine dipeptide: simulate it with OpenMM, or load the compact copy we ship.

Alanine dipeptide (Ace-Ala-Nme, 22 atoms, 10 heavy) is the smallest molecule
with a real slow process: the exchange between the alpha_L region of the
Ramachandran plane (phi > 0) and the rest, which relaxes in a few nanoseconds
and is visited by about 1-2 % of frames. Resolving it takes hundreds of
nanoseconds, so the package ships a compact dataset made by
:func:`simulate_alanine_dipeptide` with the settings in :data:`SHIPPED_SETTINGS`.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from importlib import resources
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch
from tqdm.auto import tqdm

__all__ = ["SHIPPED_SETTINGS", "get_data_home", "load_alanine_dipeptide", "simulate_alanine_dipeptide"]

_FORMAT_VERSION = 1

# The recipe is fixed; only these knobs vary between calls.
_RECIPE = {
    "force_field": ["amber99sbildn.xml", "amber99_obc.xml"],
    "nonbonded": "NoCutoff",
    "constraints": "HBonds",
    "hydrogen_mass_amu": 4.0,
    "timestep_fs": 4.0,
    "temperature_K": 300.0,
    "friction_per_ps": 1.0,
    "integrator": "LangevinMiddleIntegrator",
    "equilibration_ps": 100.0,
}

#: Settings with which the shipped dataset was made (see ``load_alanine_dipeptide``).
SHIPPED_SETTINGS = {
    "n_trajectories": 4,
    "length_ns": 100.0,
    "save_every_ps": 10.0,
    "seed": 2025,
    "heavy_atoms_only": True,
}


def get_data_home(data_home=None) -> Path:
    """Directory in which simulated data are cached.

    Parameters
    ----------
    data_home : str or path-like, default=None
        Explicit directory. ``None`` uses the environment variable
        ``G2V_SKLEARN_DATA``, else ``$XDG_CACHE_HOME/g2v_sklearn``, else
        ``~/.cache/g2v_sklearn``.

    Returns
    -------
    path : pathlib.Path
        The directory (created if missing).

    Examples
    --------
    >>> from g2v_sklearn.datasets import get_data_home
    >>> get_data_home("/tmp/g2v-example-cache").name
    'g2v-example-cache'
    """
    if data_home is None:
        data_home = os.environ.get("G2V_SKLEARN_DATA")
    if data_home is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        data_home = os.path.join(base, "g2v_sklearn")
    path = Path(data_home).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _require_openmm():
    try:
        import openmm  # noqa: F401
        from openmm import app, unit  # noqa: F401
    except ImportError as err:  # pragma: no cover - exercised where OpenMM is absent
        raise ImportError(
            "simulate_alanine_dipeptide needs OpenMM, which is not installed. Install it with "
            "`pip install openmm` (or `pip install g2v_sklearn[md]`), or use "
            "load_alanine_dipeptide(), which reads the dataset shipped with the package."
        ) from err


def _pdb_path() -> str:
    return str(resources.files("g2v_sklearn.datasets").joinpath("_data", "ala2.pdb"))


def _check_positive(name, value, integer=False):
    kind = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kind) or not np.isfinite(value) or value <= 0:
        what = "a positive integer" if integer else "a positive number"
        raise ValueError(f"{name} must be {what}; got {value!r}.")


def _simulate_one(length_ns, save_every_ps, seed, platform, progress, label):
    """Positions (n_frames, 22, 3) in nm of one trajectory."""
    import openmm
    from openmm import app, unit

    pdb = app.PDBFile(_pdb_path())
    forcefield = app.ForceField(*_RECIPE["force_field"])
    system = forcefield.createSystem(
        pdb.topology,
        nonbondedMethod=app.NoCutoff,
        constraints=app.HBonds,
        hydrogenMass=_RECIPE["hydrogen_mass_amu"] * unit.amu,
    )
    integrator = openmm.LangevinMiddleIntegrator(
        _RECIPE["temperature_K"] * unit.kelvin,
        _RECIPE["friction_per_ps"] / unit.picosecond,
        _RECIPE["timestep_fs"] * unit.femtoseconds,
    )
    integrator.setRandomNumberSeed(int(seed))
    simulation = app.Simulation(pdb.topology, system, integrator, openmm.Platform.getPlatformByName(platform))
    simulation.context.setPositions(pdb.positions)
    simulation.minimizeEnergy()
    simulation.context.setVelocitiesToTemperature(_RECIPE["temperature_K"] * unit.kelvin, int(seed))
    steps_per_ps = round(1000.0 / _RECIPE["timestep_fs"])
    simulation.step(round(_RECIPE["equilibration_ps"] * steps_per_ps))

    steps_per_frame = round(save_every_ps * steps_per_ps)
    n_frames = round(length_ns * 1000.0 / save_every_ps)
    out = np.empty((n_frames, pdb.topology.getNumAtoms(), 3), dtype=np.float32)
    for i in tqdm(range(n_frames), desc=label, unit="frame", disable=not progress, leave=False):
        simulation.step(steps_per_frame)
        state = simulation.context.getState(getPositions=True)
        out[i] = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    return out


def _trajectory_seeds(seed, n_trajectories):
    """Independent, reproducible per-trajectory seeds (OpenMM wants 31-bit ints > 0)."""
    children = np.random.SeedSequence(seed).generate_state(n_trajectories)
    return [int(s % (2**31 - 2)) + 1 for s in children]


def _check_simulation(n_trajectories, length_ns, save_every_ps, seed) -> None:
    """The arguments of :func:`simulate_alanine_dipeptide`, each in the user's terms."""
    _check_positive("n_trajectories", n_trajectories, integer=True)
    _check_positive("length_ns", length_ns)
    _check_positive("save_every_ps", save_every_ps)
    steps = save_every_ps * 1000.0 / _RECIPE["timestep_fs"]
    if abs(steps - round(steps)) > 1e-9:
        raise ValueError(
            f"save_every_ps={save_every_ps} is not a whole number of {_RECIPE['timestep_fs']:g}-fs steps."
        )
    if length_ns * 1000.0 < save_every_ps:
        raise ValueError(
            f"length_ns={length_ns} is shorter than one saved frame (save_every_ps={save_every_ps})."
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}.")


def _cached_positions(path: Path | None, settings: dict, simulate) -> np.ndarray:
    """The positions stored at ``path``; else ``simulate()``'s, stored there atomically (when
    ``path`` is not None) with the ``settings`` that made them."""
    if path is not None and path.exists():
        with np.load(path) as stored:
            return stored["xyz"]
    xyz = simulate()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.partial-{secrets.token_hex(4)}.npz")
        try:
            np.savez(tmp, xyz=xyz, settings=json.dumps(settings))
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
    return xyz


def simulate_alanine_dipeptide(
    n_trajectories=1,
    length_ns=1.0,
    *,
    save_every_ps=1.0,
    seed=0,
    heavy_atoms_only=False,
    data_home=None,
    cache=True,
    platform="Reference",
    progress=True,
):
    """Simulate alanine dipeptide in implicit solvent with OpenMM.

    The recipe: amber99sbildn with OpenMM's built-in OBC implicit solvent, no
    cutoff, bonds to hydrogen constrained, hydrogen mass 4 amu, a 4-fs
    ``LangevinMiddleIntegrator`` at 300 K with friction 1/ps, energy
    minimisation and 100 ps of discarded equilibration per trajectory. On a
    laptop core OpenMM's ``Reference`` platform runs this 22-atom system at
    about 7 s per nanosecond, far faster than its ``CPU`` platform.

    Results are cached in :func:`get_data_home`, keyed by every setting, and
    written atomically, so an interrupted call never leaves a partial file
    that a later call would read.

    Parameters
    ----------
    n_trajectories : int, default=1
        Number of independent trajectories.
    length_ns : float, default=1.0
        Length of each trajectory after equilibration, in nanoseconds.
    save_every_ps : float, default=1.0
        Time between saved frames, in picoseconds (a multiple of 4 fs).
    seed : int, default=0
        Seed of the whole set; trajectory ``i`` gets its own seed derived
        from it, so sets with different ``n_trajectories`` share a prefix.
    heavy_atoms_only : bool, default=False
        Keep only the 10 heavy atoms (what :class:`~g2v_sklearn.GeomEmbedder`
        uses by default).
    data_home : str or path-like, default=None
        Cache directory; see :func:`get_data_home`.
    cache : bool, default=True
        Read from and write to the cache.
    platform : str, default="Reference"
        OpenMM platform name.
    progress : bool, default=True
        Show a progress bar.

    Returns
    -------
    data : sklearn.utils.Bunch
        ``trajectories`` (list of ``mdtraj.Trajectory``, times in ps),
        ``timestep_ps`` (time between frames), ``settings`` (dict of the
        recipe and arguments, including each trajectory's seed).

    Raises
    ------
    ImportError
        If OpenMM is not installed, with the command to install it.

    Examples
    --------
    >>> from g2v_sklearn.datasets import simulate_alanine_dipeptide
    >>> data = simulate_alanine_dipeptide(length_ns=0.01, save_every_ps=1.0, seed=1,
    ...                                   cache=False, progress=False)
    >>> data.trajectories[0].n_frames, data.trajectories[0].n_atoms, data.timestep_ps
    (10, 22, 1.0)
    """
    _check_simulation(n_trajectories, length_ns, save_every_ps, seed)
    _require_openmm()
    import mdtraj as md

    seeds = _trajectory_seeds(int(seed), int(n_trajectories))
    settings = dict(
        _RECIPE,
        length_ns=float(length_ns),
        save_every_ps=float(save_every_ps),
        seed=int(seed),
        trajectory_seeds=seeds,
        heavy_atoms_only=bool(heavy_atoms_only),
        platform=str(platform),
        format_version=_FORMAT_VERSION,
    )
    topology = md.load_topology(_pdb_path())
    keep = topology.select("not element H") if heavy_atoms_only else np.arange(topology.n_atoms)
    topology = topology.subset(keep)

    home = get_data_home(data_home) / "alanine_dipeptide" if cache else None
    trajectories = []
    for i, traj_seed in enumerate(seeds):
        per_traj = {k: v for k, v in settings.items() if k != "trajectory_seeds"}
        per_traj["trajectory_seed"] = traj_seed
        key = hashlib.sha256(json.dumps(per_traj, sort_keys=True).encode()).hexdigest()[:16]
        path = home / f"traj-{key}.npz" if home is not None else None
        label = f"alanine dipeptide {i + 1}/{n_trajectories}"
        xyz = _cached_positions(path, per_traj, lambda: _simulate_one(
            length_ns, save_every_ps, traj_seed, platform, progress, label)[:, keep])
        time = save_every_ps * np.arange(1, len(xyz) + 1)
        trajectories.append(md.Trajectory(xyz, topology, time=time))
    return Bunch(trajectories=trajectories, timestep_ps=float(save_every_ps), settings=settings)


def _shipped_dir():
    return resources.files("g2v_sklearn.datasets").joinpath("_data", "alanine_dipeptide")


def load_alanine_dipeptide(stride=1):
    """Load the compact alanine-dipeptide dataset shipped with the package.

    Four independent 100-ns trajectories of the 10 heavy atoms, one frame every
    10 ps (40,000 frames in all), made by :func:`simulate_alanine_dipeptide`
    with :data:`SHIPPED_SETTINGS`. Enough to resolve the alpha_L exchange
    (implied timescale of a few ns) with lag times of 100-200 ps; simulating
    more is one call to :func:`simulate_alanine_dipeptide`.

    Parameters
    ----------
    stride : int, default=1
        Keep every ``stride``-th frame.

    Returns
    -------
    data : sklearn.utils.Bunch
        ``trajectories`` (list of ``mdtraj.Trajectory``), ``timestep_ps``
        (time between the returned frames) and ``settings`` (how the data
        were made, including the seeds).

    Examples
    --------
    >>> from g2v_sklearn.datasets import load_alanine_dipeptide
    >>> data = load_alanine_dipeptide(stride=10)
    >>> len(data.trajectories), data.trajectories[0].n_atoms, data.timestep_ps
    (4, 10, 100.0)
    """
    import mdtraj as md

    _check_positive("stride", stride, integer=True)
    root = _shipped_dir()
    with resources.as_file(root) as folder:
        folder = Path(folder)
        meta_path = folder / "settings.json"
        if not meta_path.exists():
            raise FileNotFoundError(
                f"The shipped alanine-dipeptide dataset is missing from {folder}; the package "
                "install is incomplete. Reinstall g2v_sklearn, or make the data with "
                "simulate_alanine_dipeptide()."
            )
        settings = json.loads(meta_path.read_text())
        top = str(folder / "ala2_heavy.pdb")
        trajectories = [
            md.load(str(folder / name), top=top, stride=stride) for name in settings["files"]
        ]
    return Bunch(
        trajectories=trajectories,
        timestep_ps=float(settings["save_every_ps"]) * stride,
        settings=settings,
    )
