"""The learners: VAMP math, the training loop, VAMPNet, SPIB, the merger step.

Internal layout; the public names are exported from :mod:`g2v_sklearn`.
"""
