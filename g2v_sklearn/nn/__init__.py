"""Torch modules and their helpers: neighbour search, backbones, lobes, merger.

Internal layout; the public names are exported from :mod:`g2v_sklearn`.
"""
