"""The ``g2v`` command line (``g2v fetch | embed | fit | report``), a console script.

``python -m g2v_sklearn`` runs it too (under ``torchrun -m g2v_sklearn``, say).
"""

from ._commands import main

__all__ = ["main"]
