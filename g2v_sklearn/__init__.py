"""g2v_sklearn: learned geometric features for the slow dynamics of biomolecules.

MD frames become residue tokens through a frozen, pretrained equivariant GNN
(:class:`GeomEmbedder`); everything is a scikit-learn estimator, so the steps
compose into Pipelines, clone, grid-search and pickle.
"""

from ._callbacks import Callback, EarlyStopping, LRScheduler, MetricsLog, SaveBestWeights
from ._embedder import GeomEmbedder
from ._learner import FitContext, TrainingWarning
from ._merger import MergedTokens, TokenMerger
from ._msm import (
    ContiguousSplit,
    KMeansDiscretizer,
    MSMEstimator,
    msm_vamp2_scorer,
    split_trajectory,
)
from ._neighbors import RadiusDistance, radius_graph
from ._spib import SPIBEstimator
from ._tokens import TokenTrajectory, load_tokens, save_tokens
from ._utils import VersionWarning
from ._vampnet import VAMPNetEstimator

__version__ = "0.1.0.dev0"

__all__ = [
    "Callback",
    "ContiguousSplit",
    "EarlyStopping",
    "FitContext",
    "GeomEmbedder",
    "KMeansDiscretizer",
    "LRScheduler",
    "MSMEstimator",
    "MergedTokens",
    "MetricsLog",
    "RadiusDistance",
    "SPIBEstimator",
    "SaveBestWeights",
    "TokenMerger",
    "TokenTrajectory",
    "TrainingWarning",
    "VAMPNetEstimator",
    "VersionWarning",
    "load_tokens",
    "msm_vamp2_scorer",
    "radius_graph",
    "save_tokens",
    "split_trajectory",
]
