"""Real molecular data for examples and tests, with nothing downloaded.

- Alanine dipeptide: :func:`simulate_alanine_dipeptide` runs it with OpenMM
  (the ``md`` extra); :func:`load_alanine_dipeptide` reads the compact copy
  shipped with the package, made by that same function.
- Adenylate kinase: :func:`load_adenylate_kinase` reads the transition paths
  and end states that MDAnalysisTests ships, with the CORE/LID/NMP domains.
"""

from ._adk import ADK_DOMAINS, domain_labels, load_adenylate_kinase
from ._alanine import (
    SHIPPED_SETTINGS,
    get_data_home,
    load_alanine_dipeptide,
    simulate_alanine_dipeptide,
)

__all__ = [
    "ADK_DOMAINS",
    "SHIPPED_SETTINGS",
    "domain_labels",
    "get_data_home",
    "load_adenylate_kinase",
    "load_alanine_dipeptide",
    "simulate_alanine_dipeptide",
]
