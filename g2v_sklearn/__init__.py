"""g2v_sklearn: learned geometric features for the slow dynamics of biomolecules.

MD frames become residue tokens through a frozen, pretrained equivariant GNN
(:class:`GeomEmbedder`); everything is a scikit-learn estimator, so the steps
compose into Pipelines, clone, grid-search and pickle.
"""

from . import _moved
from ._utils import VersionWarning
from ._version import __version__  # noqa: F401 - the package version
from .backbones._neighbors import RadiusDistance, radius_graph
from .backbones._pretrained import CheckpointWarning, fetch_backbone
from .embedding._embedder import GeomEmbedder
from .learners._callbacks import Callback, EarlyStopping, LRScheduler, MetricsLog, SaveBestWeights
from .learners._distributed import DistributedTrainingError, init_distributed
from .learners._history import History
from .learners._trainer import FitContext, TrainingWarning
from .learners._merger import MergedTokens, TokenMerger
from .learners._spib import SPIBEstimator
from .learners._vampnet import VAMPNetEstimator
from .msm._discretize import KMeansDiscretizer
from .msm._estimator import MSMEstimator
from .msm._kinetics import KineticModel, TransitionPathways, kinetic_model
from .msm._selection import ContiguousSplit, msm_vamp2_scorer, split_trajectory
from .tokens._format import load_tokens
from .tokens._merge_spec import MergeSpec
from .tokens._trajectory import TokenTrajectory
from .tokens._writer import save_tokens
from .structures import save_structures, source_frames, state_importance

_moved.register(__name__)  # pickles made by the flat layout name its modules

__all__ = [
    "Callback",
    "CheckpointWarning",
    "ContiguousSplit",
    "DistributedTrainingError",
    "EarlyStopping",
    "FitContext",
    "History",
    "GeomEmbedder",
    "KMeansDiscretizer",
    "KineticModel",
    "LRScheduler",
    "MSMEstimator",
    "MergeSpec",
    "MergedTokens",
    "MetricsLog",
    "RadiusDistance",
    "SPIBEstimator",
    "SaveBestWeights",
    "TokenMerger",
    "TokenTrajectory",
    "TrainingWarning",
    "TransitionPathways",
    "VAMPNetEstimator",
    "VersionWarning",
    "fetch_backbone",
    "init_distributed",
    "kinetic_model",
    "load_tokens",
    "msm_vamp2_scorer",
    "radius_graph",
    "save_structures",
    "save_tokens",
    "source_frames",
    "split_trajectory",
    "state_importance",
]
