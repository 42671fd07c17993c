"""Frozen featurisers: the pretrained equivariant GNN backbones and what they need.

Neighbour search, the backbones and their checkpoints, geom2vec's published
files, and the fast forward passes the embedder runs them with. Nothing here
is trained by a learner. Internal layout; the public names are exported from
:mod:`g2v_sklearn`.
"""
