"""GeomEmbedder's run-time features: cache, parallel embedding, pretraining, stores."""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import mdtraj as md
import numpy as np
import pytest
import torch

from g2v_sklearn import GeomEmbedder
from g2v_sklearn.embedding import _embedder as embedder_module

# Embeddings compared bit for bit across runs: the same torch threads in every run.
pytestmark = pytest.mark.usefixtures("fixed_threads")


@pytest.fixture(scope="module")
def two_short(ala2_trajs):
    return [ala2_trajs[0][:40], ala2_trajs[1][:30]]


@pytest.fixture(scope="module")
def reference(visnet_checkpoint, two_short):
    emb = GeomEmbedder(visnet_checkpoint, progress=False).fit(two_short)
    return emb, emb.transform(two_short)


@pytest.fixture
def count_batches(monkeypatch):
    calls = {"frames": 0}
    original = embedder_module._Engine.embed_batch

    def counting(self, pos, *args):
        calls["frames"] += len(pos)
        return original(self, pos, *args)

    monkeypatch.setattr(embedder_module._Engine, "embed_batch", counting)
    return calls


def test_memory_cache_embeds_each_trajectory_once(visnet_checkpoint, two_short, reference,
                                                  tmp_path, count_batches):
    _, expected = reference
    emb = GeomEmbedder(visnet_checkpoint, memory=str(tmp_path / "cache"), progress=False)
    first = emb.fit_transform(two_short)
    assert count_batches["frames"] == 70
    second = emb.fit_transform(two_short)  # a refit, as in a grid search
    assert count_batches["frames"] == 70
    for a, b, c in zip(first, second, expected):
        np.testing.assert_array_equal(a.features, c.features)
        np.testing.assert_array_equal(b.features, c.features)
        assert b.path is not None and b.path == a.path
    # other parameters, other entry
    emb.set_params(pooling="mean").fit_transform(two_short[:1])
    assert count_batches["frames"] == 110


def test_damaged_cache_entry_is_replaced_with_a_warning(visnet_checkpoint, two_short, reference,
                                                       tmp_path, count_batches):
    _, expected = reference
    cache = tmp_path / "cache"
    emb = GeomEmbedder(visnet_checkpoint, memory=str(cache), progress=False)
    entry = Path(emb.fit_transform(two_short[:1])[0].path)
    (entry / "meta.json").write_text("{ truncated")  # a torn or damaged entry
    with pytest.warns(RuntimeWarning, match=f"cache entry {entry} for trajectory 0 was damaged.*"
                                            "unreadable meta.json.*removed and is embedded again"):
        again = emb.transform(two_short[:1])[0]
    assert count_batches["frames"] == 80  # embedded twice: once before, once after the damage
    np.testing.assert_array_equal(again.features, expected[0].features)
    assert sorted(p.name for p in cache.iterdir()) == [entry.name]


def test_store_dir_reuses_its_finished_stores_and_refuses_damaged_ones(
        visnet_checkpoint, two_short, reference, tmp_path, count_batches):
    from g2v_sklearn import save_tokens

    _, expected = reference
    emb = GeomEmbedder(visnet_checkpoint, store_dir=str(tmp_path), progress=False)
    first = emb.fit_transform(two_short)
    assert count_batches["frames"] == 70
    second = emb.transform(two_short)  # a rerun: the finished stores are used, not embedded again
    assert count_batches["frames"] == 70
    assert [t.path for t in second] == [t.path for t in first]
    assert second[0].provenance["key"] == os.path.basename(first[0].path)
    # a store at that path that did not come from this input (no matching key): embedded again
    path0 = first[0].path
    del first, second
    save_tokens(expected[1][:40], path0)
    third = emb.transform(two_short)
    assert count_batches["frames"] == 110
    np.testing.assert_array_equal(third[0].features, expected[0].features)
    # a damaged store is the user's to remove: an error that says so, naming it
    del third
    os.remove(os.path.join(path0, "positions.npy"))
    with pytest.raises(FileExistsError, match=f"{path0}' exists and is not a complete token store.*Remove it"):
        emb.transform(two_short[:1])


def _zero_frame(store, frame):
    """Zero one frame of a store's features in place (bit rot, a bad disk block)."""
    features = np.load(os.path.join(store, "features.npy"), mmap_mode="r+")
    features[frame] = 0
    features.flush()
    del features


def test_a_zeroed_block_is_caught_and_the_cache_entry_replaced_or_the_store_refused(
        visnet_checkpoint, two_short, reference, tmp_path, count_batches):
    _, expected = reference
    emb = GeomEmbedder(visnet_checkpoint, memory=str(tmp_path / "cache"), chunk_size=16,
                       progress=False)
    entry = emb.fit_transform(two_short[:1])[0].path
    _zero_frame(entry, 20)
    with pytest.warns(RuntimeWarning, match=f"cache entry {entry} for trajectory 0 was damaged.*"
                                            "frames 16-31 of features.npy do not match their "
                                            "checksum.*embedded again"):
        again = emb.transform(two_short[:1])[0]
    assert count_batches["frames"] == 80
    np.testing.assert_array_equal(again.features, expected[0].features)
    del again
    emb = GeomEmbedder(visnet_checkpoint, store_dir=str(tmp_path / "stores"), progress=False)
    path = emb.fit_transform(two_short[:1])[0].path
    _zero_frame(path, 3)
    with pytest.raises(FileExistsError, match=f"{path}' exists and is not a complete token store "
                                              "of trajectory 0: .*do not match their checksum.*"
                                              "Remove it .*and transform again"):
        emb.transform(two_short[:1])
    assert count_batches["frames"] == 120  # nothing embedded for the refused store


def test_a_batch_that_would_not_fit_in_memory_is_split_with_a_warning(
        visnet_checkpoint, two_short, reference, monkeypatch):
    _, expected = reference
    per_frame = embedder_module.pass_bytes_per_frame(10, 64, None)  # 10 heavy atoms
    # a machine on which a pass may take three frames' worth
    monkeypatch.setattr(embedder_module, "_memory_budget_bytes", lambda device: 3.5 * per_frame)
    sizes = []
    original = embedder_module._Engine.embed_batch
    monkeypatch.setattr(embedder_module._Engine, "embed_batch",
                        lambda self, pos, *args: sizes.append(len(pos)) or original(self, pos, *args))
    emb = GeomEmbedder(visnet_checkpoint, batch_size=32, progress=False).fit(two_short[:1])
    with pytest.warns(RuntimeWarning, match=r"batch_size=32 frames of 10 atoms would need about "
                                            r"4.42 MB in one forward pass, more than the 484 kB a "
                                            r"pass may take on this cpu .*embeds 3 frames a pass "
                                            r"instead"):
        tokens = emb.transform(two_short[:1])[0]
    assert set(sizes[:-1]) == {3} and sum(sizes) == 40
    np.testing.assert_allclose(tokens.features, expected[0].features, rtol=1e-5, atol=1e-6)
    # the default never asks for more than a pass of about 2,048 atoms
    sizes.clear()
    GeomEmbedder(visnet_checkpoint, progress=False).fit_transform(two_short[:1])
    assert max(sizes) == 40  # 204 frames of 10 atoms would fit; the trajectory has 40
    # the estimate: adenylate kinase's heavy atoms, measured 250-270 MB a frame
    assert 240e6 < embedder_module.pass_bytes_per_frame(1656, 64, None) < 280e6


def test_concurrent_cache_writers_short_stress(visnet_checkpoint, tmp_path, monkeypatch):
    """The short version of benchmarks/stress_stores.py on one memory= key (2 threads + 1 process)."""
    stress = _stress_module(monkeypatch)
    report = stress.stress("memory", str(tmp_path / "cache"), n_threads=2, n_processes=1, rounds=3,
                           frames=20, checkpoint=visnet_checkpoint)
    assert report["calls"] == 9
    assert report["exceptions"] == [] and report["debris"] == [] and report["bad_token_sets"] == []


# Another process embedding 40 frames of alanine dipeptide into a memory= key, slowly (0.1 s
# a batch of 5): it says "embedding" after its first batch, and its frame count at the end.
OTHER_WRITER = textwrap.dedent("""
    import json, sys, time
    from g2v_sklearn import GeomEmbedder
    from g2v_sklearn.datasets import load_alanine_dipeptide
    from g2v_sklearn.embedding import _embedder

    checkpoint, cache = sys.argv[1:3]
    frames = load_alanine_dipeptide(stride=10).trajectories[0][:40]
    emb = GeomEmbedder(checkpoint, memory=cache, batch_size=5, progress=False).fit([frames])
    counted = {"frames": 0}
    embed_batch = _embedder._Engine.embed_batch

    def slow(self, pos, *args):
        out = embed_batch(self, pos, *args)
        counted["frames"] += len(pos)
        if counted["frames"] == len(pos):
            print("embedding", flush=True)
        time.sleep(0.1)
        return out

    _embedder._Engine.embed_batch = slow
    tokens = emb.transform([frames])[0]
    print(json.dumps({"frames": counted["frames"], "path": tokens.path}), flush=True)
""")


def test_a_second_process_wanting_the_same_cache_key_waits_for_the_first(visnet_checkpoint, tmp_path,
                                                                         count_batches):
    """Two processes on one memory= key (as GridSearchCV(n_jobs=2) over a pipeline that embeds):
    the second, finding the first embedding the key, waits for its entry and reads it instead
    of embedding the trajectory again (it had embedded all 40 frames too)."""
    import json
    import subprocess
    import sys

    from g2v_sklearn.datasets import load_alanine_dipeptide

    cache = str(tmp_path / "cache")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    other = subprocess.Popen([sys.executable, "-c", OTHER_WRITER, visnet_checkpoint, cache], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "embedding", other.stderr.read()[-2000:]
        frames = load_alanine_dipeptide(stride=10).trajectories[0][:40]
        emb = GeomEmbedder(visnet_checkpoint, memory=cache, batch_size=5, progress=False).fit([frames])
        got = emb.transform([frames])[0]
        out, err = other.communicate(timeout=120)
    finally:
        other.kill()
    theirs = json.loads(out.strip().splitlines()[-1])
    assert count_batches["frames"] == 0 and theirs["frames"] == 40  # 40 embedded in all, not 80
    assert got.path == theirs["path"] and os.listdir(cache) == [os.path.basename(got.path)]
    expected = GeomEmbedder(visnet_checkpoint, batch_size=5, progress=False).fit([frames]).transform([frames])[0]
    np.testing.assert_allclose(got.features, expected.features, rtol=1e-5, atol=1e-6)  # threads may differ


def test_the_exception_case_of_the_stress_benchmark_embeds_each_frame_once(visnet_checkpoint, tmp_path,
                                                                          monkeypatch):
    stress = _stress_module(monkeypatch)
    report = stress.exception_case(str(tmp_path / "cache"), frames=40, checkpoint=visnet_checkpoint)
    assert "out of memory" in report["error"]
    assert (report["embedded_before_the_error"], report["embedded_by_the_rerun"]) == (30, 10)
    assert report["same_tokens"] and report["debris"] == []


def _stress_module(monkeypatch):
    import importlib

    from conftest import REPO

    # importable by name, so that its worker function reaches the spawned processes
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    return importlib.import_module("stress_stores")


def test_rewritten_file_is_never_served_stale(visnet_checkpoint, ala2_files, tmp_path,
                                              count_batches):
    pdb, paths = ala2_files
    path = str(tmp_path / "traj.xtc")
    source = md.load(paths[0], top=pdb, stride=5000)  # 20 frames
    source.save_xtc(path)
    emb = GeomEmbedder(visnet_checkpoint, topology=pdb, memory=str(tmp_path / "cache"),
                       progress=False)
    before = emb.fit_transform([path])[0]
    changed = source[:]
    changed.xyz = changed.xyz.copy()
    changed.xyz[:, :, 0] *= 1.02  # stretch: a different conformation
    changed.save_xtc(path)  # same path, new content
    after = emb.transform([path])[0]
    assert count_batches["frames"] == 40
    assert not np.allclose(after.features, before.features)
    fresh = GeomEmbedder(visnet_checkpoint, progress=False).fit_transform([md.load(path, top=pdb)])
    np.testing.assert_allclose(after.features, fresh[0].features, rtol=1e-5, atol=1e-5)


def test_parallel_embedding_with_joblib(visnet_checkpoint, two_short, reference):
    _, expected = reference
    emb = GeomEmbedder(visnet_checkpoint, n_jobs=2, progress=False)
    got = emb.fit_transform(two_short)
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a.features, b.features, rtol=1e-6, atol=1e-6)


def test_parallel_embedding_on_a_dask_cluster(visnet_checkpoint, two_short, reference):
    distributed = pytest.importorskip("distributed", reason="needs the 'dask' extra")
    import joblib

    _, expected = reference
    emb = GeomEmbedder(visnet_checkpoint, n_jobs=2, progress=False).fit(two_short)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client, joblib.parallel_config(backend="dask"), \
            distributed.get_task_stream(client) as stream:
        got = emb.transform(two_short)
    assert len(stream.data) >= 1  # the work went through the cluster
    for a, b in zip(got, expected):
        np.testing.assert_allclose(a.features, b.features, rtol=1e-6, atol=1e-6)


def test_a_cluster_of_worker_processes_embeds_in_parallel_into_shared_stores(
        visnet_checkpoint, ala2_trajs, tmp_path, capsys):
    """The documented call, n_jobs left at None: a LocalCluster of two worker processes (one
    torch thread each) embeds three trajectories into memory-mapped stores in one directory,
    with the same tokens, bit for bit, as this process embedding them one thread at a time."""
    distributed = pytest.importorskip("distributed", reason="needs the 'dask' extra")
    import joblib

    trajs = [t[:60] for t in ala2_trajs[:3]]
    emb = GeomEmbedder(visnet_checkpoint, store_dir=str(tmp_path / "stores")).fit(trajs)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = [t.features.copy() for t in emb.set_params(progress=False).transform(trajs)]
    finally:
        torch.set_num_threads(threads)
    shutil.rmtree(tmp_path / "stores")
    capsys.readouterr()
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client, joblib.parallel_config(backend="dask"), \
            distributed.get_task_stream(client) as stream:
        assert set(client.run(torch.get_num_threads).values()) == {1}
        got = emb.set_params(progress=True).transform(trajs)
    assert len({task["worker"] for task in stream.data}) == 2  # both workers embedded
    progress = capsys.readouterr().err  # the bar here counts finished trajectories
    assert "embedded: 100%" in progress and "3/3" in progress
    for tokens, expected in zip(got, serial):
        assert tokens.path.startswith(str(tmp_path / "stores"))
        np.testing.assert_array_equal(tokens.features, expected)


def test_a_dask_worker_killed_mid_trajectory_leaves_a_store_the_next_run_resumes(
        visnet_checkpoint, ala2_files, tmp_path):
    """Each of two Dask worker processes SIGKILLs itself in the middle of its trajectory's
    second chunk (the store-fault tests' kill point, armed by a worker plugin on the first two
    workers only). Dask reruns the tasks on the restarted workers, which resume the killed
    stores after their committed chunk (the store writer's own resume, seen by a probe in the
    workers): the transform ends with the tokens of an uninterrupted run, and no debris."""
    distributed = pytest.importorskip("distributed", reason="needs the 'dask' extra")
    import joblib

    pdb, paths = ala2_files
    trajs = [md.load(paths[i], top=pdb)[:130] for i in range(2)]
    # chunks of 50 frames in batches of 25: the third write is the second chunk's first batch
    emb = GeomEmbedder(visnet_checkpoint, store_dir=str(tmp_path / "stores"), chunk_size=50, batch_size=25,
                       progress=False).fit(trajs)
    log = tmp_path / "workers.log"

    class ArmFirstWorkers(distributed.WorkerPlugin):
        def setup(self, worker):
            import signal

            from g2v_sklearn.tokens import _writer

            seen = log.read_text().count("started") if log.exists() else 0
            with open(log, "a") as handle:
                handle.write(f"started {os.getpid()}\n")
            if seen < 2:  # the first two workers die; the restarted ones do not
                passes = []

                def kill_at_the_third_chunk(point):  # the store writer's fault hook
                    passes.extend([point] if point == "mid-chunk" else [])
                    if len(passes) >= 3:
                        os.kill(os.getpid(), signal.SIGKILL)

                _writer.set_fault_hook(kill_at_the_third_chunk)
            resume = _writer.TokenStoreWriter._resume

            def logged(writer, progress):
                resumed = resume(writer, progress)
                with open(log, "a") as handle:
                    handle.write(f"resumed {writer.n_written}\n" if resumed else "restarted\n")
                return resumed

            _writer.TokenStoreWriter._resume = logged

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  env={"OMP_NUM_THREADS": "1"}) as cluster, \
            distributed.Client(cluster) as client, joblib.parallel_config(backend="dask"):
        client.register_plugin(ArmFirstWorkers())
        resumed = emb.transform(trajs)
    lines = log.read_text().splitlines()
    assert sum(line.startswith("started") for line in lines) >= 4  # two workers died and were replaced
    # every rerun resumed a killed store after a committed chunk (two kills: at least two resumes; a
    # rerun that landed on the other doomed worker resumed and died again, and was resumed later on)
    reruns = [line for line in lines if not line.startswith("started")]
    assert len(reruns) >= 2 and all(line.startswith("resumed") and int(line.split()[1]) >= 50
                                    for line in reruns), reruns
    assert not [e for e in os.listdir(tmp_path / "stores") if "." in e]  # no .partial-*, no .old-*
    expected = GeomEmbedder(visnet_checkpoint, chunk_size=50, batch_size=25, progress=False).fit(trajs).transform(trajs)
    for got, want in zip(resumed, expected):
        np.testing.assert_array_equal(got.features, want.features)


def test_memory_mapped_store(visnet_checkpoint, two_short, reference, tmp_path):
    _, expected = reference
    emb = GeomEmbedder(visnet_checkpoint, store_dir=str(tmp_path), progress=False)
    got = emb.fit_transform(two_short)
    for a, b in zip(got, expected):
        assert isinstance(a.features, np.memmap)
        assert a.path is not None and a.path.startswith(str(tmp_path))
        np.testing.assert_array_equal(a.features, b.features)
        np.testing.assert_array_equal(a.positions, b.positions)


def test_store_and_memory_together_is_an_error(visnet_checkpoint, two_short, tmp_path):
    with pytest.raises(ValueError, match="either store_dir .* or memory"):
        GeomEmbedder(visnet_checkpoint, store_dir=str(tmp_path), memory=str(tmp_path)).fit(two_short)


def test_denoising_pretraining_learns_and_is_reproducible(two_short, visnet_checkpoint):
    global_state = torch.get_rng_state()
    kw = dict(pretrain="denoise", pretrain_steps=25, pretrain_lr=1e-3, batch_size=8,
              hidden_channels=32, num_layers=2, num_rbf=16, progress=False, random_state=0)
    a = GeomEmbedder(**kw).fit(two_short)
    b = GeomEmbedder(**kw).fit(two_short)
    assert torch.equal(torch.get_rng_state(), global_state)  # no global seeding
    assert len(a.pretrain_history_) == 25
    assert np.isfinite(a.pretrain_history_).all()
    assert a.pretrain_history_ == b.pretrain_history_
    assert a.weights_sha256_ == b.weights_sha256_
    # learning happened: late losses below early ones (unit-variance noise: start near 1)
    assert np.mean(a.pretrain_history_[-5:]) < np.mean(a.pretrain_history_[:5])
    tok = a.transform(two_short[:1])[0]
    assert tok.features.shape == (40, 3, 4, 32)
    # fine-tuning from a checkpoint changes its weights
    tuned = GeomEmbedder(visnet_checkpoint, pretrain="denoise", pretrain_steps=2, batch_size=4,
                         progress=False, random_state=0).fit(two_short)
    plain = GeomEmbedder(visnet_checkpoint, progress=False).fit(two_short)
    assert tuned.weights_sha256_ != plain.weights_sha256_
    assert tuned.checkpoint_sha256_ == plain.checkpoint_sha256_


def test_random_backbone_is_an_explicit_ablation(two_short):
    kw = dict(pretrain="random", hidden_channels=16, num_layers=1, num_rbf=8, progress=False)
    a = GeomEmbedder(random_state=1, **kw).fit(two_short)
    b = GeomEmbedder(random_state=1, **kw).fit(two_short)
    c = GeomEmbedder(random_state=2, **kw).fit(two_short)
    assert a.weights_sha256_ == b.weights_sha256_ != c.weights_sha256_
    assert a.checkpoint_sha256_ is None


def test_stride_and_timestep(visnet_checkpoint, two_short, reference):
    _, expected = reference
    emb = GeomEmbedder(visnet_checkpoint, stride=3, progress=False)
    got = emb.fit_transform(two_short[:1])[0]
    assert len(got) == 14
    np.testing.assert_allclose(got.features, expected[0].features[::3], rtol=1e-5, atol=1e-5)
    assert got.timestep == pytest.approx(60.0)
    assert got.provenance["stride"] == 3


def test_an_embedder_pickled_before_architecture_existed_loads_as_visnet(two_short):
    import pickle
    import warnings

    fitted = GeomEmbedder(pretrain="random", hidden_channels=8, num_layers=1, num_rbf=4,
                          progress=False, random_state=0).fit(two_short)
    state = fitted.__getstate__()
    del state["architecture"], state["_g2v_sklearn_version"]  # as an older version wrote it
    old = GeomEmbedder.__new__(GeomEmbedder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the version warning: this state records none
        old.__setstate__(state)
    assert old.get_params()["architecture"] is None
    restored = pickle.loads(pickle.dumps(old))
    np.testing.assert_array_equal(restored.transform(two_short)[0].features,
                                  fitted.transform(two_short)[0].features)
