"""Fault injection: embeddings killed with SIGKILL at chosen points, then run again.

A fault hook the test installs in the store's writer (``set_fault_hook``,
called at each of ``FAULT_POINTS``) makes the embedding subprocess kill itself at a named
point of the store write: no timed kills, so every run is the same. The
rerun must finish, resume rather than restart (it counts the frames it
embeds), leave no ``.partial-*`` or ``.old-*`` behind and give tokens
bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import mdtraj as md
import numpy as np
import pytest

from g2v_sklearn import load_tokens

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

# 130 frames in chunks of 50 and batches of 25: writes of 25, 25 | 25, 25 | 25, 5 frames
N_FRAMES, CHUNK, BATCH = 130, 50, 25
# point -> frames the rerun must embed: killed in the second chunk's first batch, the
# first chunk committed; killed after the last chunk, or inside the commit, nothing left
CASES = {"mid-chunk:3": N_FRAMES - CHUNK, "after-last-chunk": 0, "mid-commit": 0}

# One subprocess: it imports once, forks a child per case that kills itself at the
# point (no torch work runs before the forks), then reruns every case itself.
DRIVER = textwrap.dedent("""
    import json, os, signal, sys
    import numpy as np
    from g2v_sklearn import GeomEmbedder
    from g2v_sklearn.embedding import _embedder
    from g2v_sklearn.tokens import _writer

    checkpoint, pdb, xtc, cases, reference = sys.argv[1:6]
    counted = {"frames": 0}
    embed_batch = _embedder._Engine.embed_batch

    def counting(self, pos, *args):
        counted["frames"] += len(pos)
        return embed_batch(self, pos, *args)

    _embedder._Engine.embed_batch = counting

    def kill_at(spec):
        # a fault hook: SIGKILL at "point" (or "point:n", its n-th pass) of a store write
        name, _, nth = spec.partition(":")
        passes = {"n": 0}

        def hook(point):
            if point == name:
                passes["n"] += 1
                if passes["n"] >= int(nth or 1):
                    os.kill(os.getpid(), signal.SIGKILL)
        return hook

    def embed(**where):
        counted["frames"] = 0
        emb = GeomEmbedder(checkpoint, topology=pdb, chunk_size=%d, batch_size=%d,
                           progress=False, **where).fit([xtc])
        return emb.transform([xtc])[0], counted["frames"]

    report = {}
    cases = json.loads(cases)
    for name, mode, root, point in cases:
        pid = os.fork()
        if pid == 0:
            try:
                _writer.set_fault_hook(kill_at(point))
                embed(**{mode: root})
            finally:
                os._exit(3)  # not killed: the test fails on this status
        _, status = os.waitpid(pid, 0)
        left = sorted(os.listdir(root))
        report[name] = {"killed_by": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                        "left": left}
    for name, mode, root, point in cases:
        report[name]["rerun_frames"] = embed(**{mode: root})[1]
    np.save(reference, embed()[0].features)  # the uninterrupted run, in RAM
    print(json.dumps(report))
""" % (CHUNK, BATCH))


def _debris(root):
    return sorted(e for e in os.listdir(root) if ".partial-" in e or ".old-" in e)


def test_killed_embeddings_resume_to_bit_identical_tokens(visnet_checkpoint, ala2_files,
                                                          tmp_path):
    pdb, paths = ala2_files
    xtc = str(tmp_path / "traj.xtc")
    md.load(paths[0], top=pdb)[:N_FRAMES].save_xtc(xtc)
    cases = [[f"{mode} {point}", mode, str(tmp_path / f"{mode}-{point.split(':')[0]}"), point]
             for mode in ("memory", "store_dir") for point in CASES]
    reference = str(tmp_path / "reference.npy")
    env = dict(os.environ, OMP_NUM_THREADS="1", G2V_THREAD_BUDGET="0")  # the same threads always
    run = subprocess.run(
        [sys.executable, "-c", DRIVER, visnet_checkpoint, pdb, xtc, json.dumps(cases), reference],
        env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    expected = np.load(reference)
    assert expected.shape[0] == N_FRAMES
    for name, mode, root, point in cases:
        case = report[name]
        assert case["killed_by"] == signal.SIGKILL, (name, case)
        # what the kill left: a partial directory, and nothing that looks complete
        assert [e for e in case["left"] if ".partial-" in e], (name, case)
        assert [e for e in case["left"] if "." not in e] == [], (name, case)
        assert case["rerun_frames"] == CASES[point], (name, case)  # resumed, not restarted
        assert _debris(root) == [], name
        (entry,) = os.listdir(root)
        assert sorted(os.listdir(os.path.join(root, entry))) == [
            "features.npy", "meta.json", "positions.npy"], name
        tokens = load_tokens(os.path.join(root, entry))  # full verification of the checksums
        np.testing.assert_array_equal(tokens.features, expected, err_msg=name)
        del tokens
