"""The CUDA paths: skipped without a GPU, run by benchmarks/gpu_check.py on one.

Tokens on CUDA equal the CPU's; learners fit on CUDA; estimators trained on
a GPU unpickle in a process that has none and give the CPU's outputs.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from g2v_sklearn import GeomEmbedder, SPIBEstimator, TokenMerger, VAMPNetEstimator
from g2v_sklearn.datasets import load_alanine_dipeptide

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

FAST = dict(max_epochs=2, batch_size=128, progress=False, random_state=0)


@pytest.fixture(scope="module")
def frames():
    return [t[:400] for t in load_alanine_dipeptide(stride=5).trajectories[:2]]


@pytest.fixture(scope="module")
def cuda_embedder(visnet_checkpoint, frames):
    return GeomEmbedder(visnet_checkpoint, device="auto", progress=False).fit(frames)


def test_tokens_on_cuda_equal_the_cpus_in_float32(visnet_checkpoint, frames, cuda_embedder):
    gpu = cuda_embedder.transform(frames)
    assert next(cuda_embedder.module_.parameters()).is_cuda  # the backbone moves to the device to embed
    cpu = GeomEmbedder(visnet_checkpoint, device="cpu", progress=False).fit_transform(frames)
    for g, c in zip(gpu, cpu):
        scale = float(np.abs(c.features).max())
        np.testing.assert_allclose(g.features, c.features, rtol=0, atol=1e-5 * scale)
        np.testing.assert_allclose(g.positions, c.positions, rtol=0, atol=1e-5)


def test_learners_fit_on_cuda(cuda_embedder, frames):
    tokens = TokenMerger(window=1).fit_transform(cuda_embedder.transform(frames))
    vamp = VAMPNetEstimator(lagtime=2, device="cuda", **FAST).fit(tokens)
    assert next(vamp.module_.parameters()).is_cuda
    assert np.isfinite(vamp.score(tokens)) and vamp.transform(tokens)[0].shape == (400, 2)
    spib = SPIBEstimator(lagtime=2, n_states=4, device="cuda", **FAST).fit(tokens)
    assert next(spib.module_.parameters()).is_cuda and spib.predict(tokens)[0].shape == (400,)


_CHILD = """
import pickle, sys
import numpy as np
import torch
assert not torch.cuda.is_available()
with open(sys.argv[1], "rb") as f:
    estimators, inputs = pickle.load(f)
outputs = {name: est.transform(inputs[name]) for name, est in estimators.items()}
with open(sys.argv[2], "wb") as f:
    pickle.dump({k: [np.asarray(getattr(o, "features", o)) for o in v] for k, v in outputs.items()}, f)
"""


def test_gpu_trained_estimators_unpickle_without_a_gpu(cuda_embedder, frames, tmp_path):
    tokens = TokenMerger(window=1).fit_transform(cuda_embedder.transform(frames))
    estimators = {"embedder": cuda_embedder,
                  "vampnet": VAMPNetEstimator(lagtime=2, device="auto", **FAST).fit(tokens),
                  "spib": SPIBEstimator(lagtime=2, n_states=4, device="auto", **FAST).fit(tokens)}
    inputs = {"embedder": frames, "vampnet": tokens, "spib": tokens}
    on_gpu = {name: [np.asarray(getattr(o, "features", o)) for o in est.transform(inputs[name])]
              for name, est in estimators.items()}
    (tmp_path / "in.pkl").write_bytes(pickle.dumps((estimators, inputs)))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "in.pkl"), str(tmp_path / "out.pkl")],
                   env=env, check=True, timeout=600)
    on_cpu = pickle.loads((tmp_path / "out.pkl").read_bytes())
    for name in estimators:
        for g, c in zip(on_gpu[name], on_cpu[name]):
            scale = max(float(np.abs(g).max()), 1.0)
            np.testing.assert_allclose(c, g, rtol=0, atol=1e-4 * scale, err_msg=name)
