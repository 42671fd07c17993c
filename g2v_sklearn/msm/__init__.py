"""Markov state models: discretisation, estimation, scoring, model selection.

Internal layout; the public names are exported from :mod:`g2v_sklearn`.
"""
