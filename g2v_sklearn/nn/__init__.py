"""Trainable networks: the learners' torch modules (lobes and mixers, the token merger, SPIB).

Internal layout; the public names are exported from :mod:`g2v_sklearn`.
"""
