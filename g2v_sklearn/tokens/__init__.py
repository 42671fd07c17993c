"""Token trajectories and the atomic on-disk token store.

Internal layout; the public names are exported from :mod:`g2v_sklearn`.
"""
