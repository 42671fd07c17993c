"""From MD frames to residue tokens: topology, reading, the embedder.

Internal layout; the public names are exported from :mod:`g2v_sklearn`.
"""
