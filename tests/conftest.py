"""Shared fixtures: real molecules (adenylate kinase, alanine dipeptide) and checkpoints.

Tests that need ../shared or MDAnalysisTests skip with the missing path named
on a machine without them, and fail under CI (CI=true), so CI always runs them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("G2V_SHARED", REPO.parent / "shared"))
CHECKPOINTS = SHARED / "checkpoints"
VISNET = CHECKPOINTS / "visnet_l6_h64_rbf64_r75.pth"
ALA2 = SHARED / "data" / "ala2"
# Named backbones ("visnet", "et", "tensornet") come from $G2V_MIRROR: here always the folder
# of geom2vec's files beside the repository (G2V_SHARED moves it), read in place, so that no
# test reaches the network. The tests that download set their own local server.
os.environ["G2V_MIRROR"] = str(CHECKPOINTS)
ADK_QUICK_FRAMES = 8  # frames per path: examples/adenylate_kinase.py's QUICK_FRAMES
ALA2_STRIDE = 20  # 20 ps between frames: 20,000 frames over the four trajectories
SHIPPED_LAG = 2  # frames of the shipped data at stride 5 (50 ps): 100 ps, the main job's lag


@pytest.fixture
def fixed_threads(monkeypatch):
    """Keep torch's thread count fixed for the test (``G2V_THREAD_BUDGET=0``).

    The thread budget resizes torch's team when the machine is busy, and a float32
    reduction split over another number of threads rounds differently (about 1e-6 on
    the tokens): tests that compare two embeddings bit for bit pin the count, so that
    what they check is the batching, not the machine's load."""
    monkeypatch.setenv("G2V_THREAD_BUDGET", "0")


def need(path: Path) -> Path:
    """Return ``path`` if it exists; else skip (fail under CI) naming it."""
    if not path.exists():
        message = f"needs {path}, which does not exist on this machine"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI=true: shared data must be present)")
        pytest.skip(message)
    return path


def _mdanalysis_tests():
    try:
        import MDAnalysisTests.datafiles as datafiles
    except ImportError:
        message = "needs MDAnalysisTests (pip install -e '.[test]')"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return datafiles


@pytest.fixture(scope="session", autouse=True)
def backbone_cache(tmp_path_factory) -> Path:
    """$G2V_CACHE for the session: no test writes into the user's cache of fetched backbones."""
    path = tmp_path_factory.mktemp("backbone-cache")
    os.environ["G2V_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def visnet_checkpoint() -> str:
    return str(need(VISNET))


@pytest.fixture(scope="session")
def visnet_name() -> str:
    """The name "visnet", once the file it resolves to under this session's mirror exists."""
    need(VISNET)
    return "visnet"


@pytest.fixture(scope="session")
def adk_files():
    """(PSF, DCD, DCD2) paths of MDAnalysisTests' adenylate kinase."""
    d = _mdanalysis_tests()
    return d.PSF, d.DCD, d.DCD2


@pytest.fixture(scope="session")
def adk_paths_short(adk_files):
    """The two adenylate-kinase transition paths, 8 frames each: the example's quick size.

    Loaded as ``examples/adenylate_kinase.py --quick`` loads them, so the
    example run in tests/test_examples.py finds their tokens in the session's
    token cache instead of embedding 16 frames of 1,656 atoms again.
    """
    from g2v_sklearn.datasets import load_adenylate_kinase

    return load_adenylate_kinase(n_frames=ADK_QUICK_FRAMES).paths


@pytest.fixture(scope="session")
def adk_traj(adk_files):
    """Four frames of adenylate kinase (3,341 atoms, 214 residues)."""
    import mdtraj as md

    psf, dcd, _ = adk_files
    return md.load(dcd, top=psf)[:4]


@pytest.fixture(scope="session")
def ala2_files():
    pdb = need(ALA2 / "ala2.pdb")
    return str(pdb), [str(need(ALA2 / f"traj_{i}.xtc")) for i in range(4)]


@pytest.fixture(scope="session")
def ala2_trajs(ala2_files):
    """All four alanine dipeptide trajectories at a 20-ps stride (4 x 5,000 frames)."""
    import mdtraj as md

    pdb, paths = ala2_files
    return [md.load(p, top=pdb, stride=ALA2_STRIDE) for p in paths]


@pytest.fixture(scope="session")
def token_cache(tmp_path_factory):
    """A token cache shared by the whole session: each trajectory is embedded once."""
    return str(tmp_path_factory.mktemp("token-cache"))


@pytest.fixture(scope="session")
def ala2_embedder(visnet_checkpoint, ala2_trajs, token_cache):
    from g2v_sklearn import GeomEmbedder

    return GeomEmbedder(visnet_checkpoint, memory=token_cache, progress=False).fit(ala2_trajs)


@pytest.fixture(scope="session")
def ala2_tokens(ala2_embedder, ala2_trajs):
    """The four ala2 trajectories embedded once per session (20,000 frames)."""
    return ala2_embedder.transform(ala2_trajs)


@pytest.fixture(scope="session")
def shipped_ala2(visnet_checkpoint, token_cache):
    """The shipped trajectories at the main job's stride (5: 50 ps a frame, 4 x 2,000 frames), their
    tokens, every frame's (phi, psi) PCCA+ set (alpha_L, the rare one, is 1) and the (phi, psi)
    pipeline (k-means 100, Bayesian MSM at lag 2 = 100 ps) on their features."""
    import mdtraj as md
    from sklearn.pipeline import Pipeline

    from g2v_sklearn import GeomEmbedder, KMeansDiscretizer, MSMEstimator
    from g2v_sklearn.datasets import load_alanine_dipeptide

    trajs = load_alanine_dipeptide(stride=5).trajectories
    tokens = GeomEmbedder(visnet_checkpoint, memory=token_cache, progress=False).fit_transform(trajs)
    feats = []
    for t in trajs:
        phi, psi = md.compute_phi(t)[1][:, 0], md.compute_psi(t)[1][:, 0]
        feats.append(np.stack([np.cos(phi), np.sin(phi), np.cos(psi), np.sin(psi)], 1))
    reference = Pipeline([("cluster", KMeansDiscretizer(100, random_state=0)),
                          ("msm", MSMEstimator(lagtime=SHIPPED_LAG, bayesian=True, n_samples=100,
                                               random_state=0))]).fit(feats)
    msm, dtrajs = reference["msm"], reference["cluster"].transform(feats)
    sets = np.full(100, -1)
    sets[msm.active_set_] = msm.model_.pcca(2).memberships.argmax(axis=1)
    labels = np.concatenate([sets[d] for d in dtrajs])
    if np.sum(labels == 1) > np.sum(labels == 0):
        labels = np.where(labels >= 0, 1 - labels, labels)
    return {"trajs": trajs, "tokens": tokens, "features": feats, "labels": labels, "reference": reference}


@pytest.fixture(scope="session")
def dihedral_features(ala2_trajs):
    """(cos, sin) of (phi, psi) of the four alanine-dipeptide trajectories (4 x 5,000 frames)."""
    import mdtraj as md

    out = []
    for t in ala2_trajs:
        phi, psi = md.compute_phi(t)[1][:, 0], md.compute_psi(t)[1][:, 0]
        out.append(np.stack([np.cos(phi), np.sin(phi), np.cos(psi), np.sin(psi)], 1))
    return out


@pytest.fixture
def rng():
    return np.random.default_rng(20251125)


@pytest.fixture
def nan_on_fourth_loss(monkeypatch):
    """Arm a learner class so that its 4th loss is NaN; returns a callback recording the steps.

    ``arm(cls, loss_method)`` returns a callback (pass it in ``callbacks``)
    whose ``steps`` collects the parameters after every optimizer step and
    whose ``net`` is the network being trained: a test can then check which
    weights the learner kept.
    """
    from g2v_sklearn import Callback

    class Recorder(Callback):
        def __init__(self):
            self.steps, self.net = [], None

        def on_fit_begin(self, learner, context):
            self.net = context.net

        def on_batch_end(self, learner, context):
            self.steps.append([p.detach().clone() for p in context.net.parameters()])

    def arm(cls, loss_method):
        calls = {"n": 0}
        original_loss = getattr(cls, loss_method)

        def exploding(self, *args, **kwargs):
            calls["n"] += 1
            loss = original_loss(self, *args, **kwargs)
            return loss * float("nan") if calls["n"] == 4 else loss

        monkeypatch.setattr(cls, loss_method, exploding)
        return Recorder()

    return arm
