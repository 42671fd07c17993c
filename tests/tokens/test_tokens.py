"""Tests of g2v_sklearn.tokens: token trajectories and the atomic token store."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from g2v_sklearn.tokens import _writer
from g2v_sklearn.tokens._format import is_complete_store, load_tokens
from g2v_sklearn.tokens._trajectory import TokenTrajectory
from g2v_sklearn.tokens._writer import TokenStoreWriter, save_tokens

N_FRAMES, N_RES, H = 12, 5, 3
# One line a child process runs to import the token store as ``mod`` without the package's
# __init__ (torch and the rest): a stand-in parent package that holds only the tokens subpackage.
LEAN_IMPORT = ("import sys, types; root = sys.modules['g2v_sklearn'] = types.ModuleType('g2v_sklearn'); "
               f"root.__path__ = [{os.path.dirname(os.path.dirname(_writer.__file__))!r}]; "
               "from g2v_sklearn.tokens import _writer as mod")


def _arrays(n_frames=N_FRAMES, n_res=N_RES, h=H, seed=0):
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n_frames, n_res, 4, h)).astype(np.float32)
    pos = rng.uniform(-20, 20, (n_frames, n_res, 3)).astype(np.float32)
    return feats, pos


def _meta(n_res=N_RES):
    return dict(
        residue_names=["ALA", "GLY", "SER", "LYS", "ASP"][:n_res],
        chain_ids=["A", "A", "A", 1, 1][:n_res],
        residue_ids=list(range(10, 10 + n_res)),
    )


def _tokens(seed=0, **kw):
    feats, pos = _arrays(seed=seed)
    return TokenTrajectory(
        feats, pos, **_meta(), timestep=kw.pop("timestep", 2.0),
        provenance=kw.pop("provenance", {"model": "toy", "seed": seed}), **kw,
    )


def _siblings(directory):
    parent, name = os.path.split(directory)
    return sorted(e for e in os.listdir(parent) if e.startswith(name))


def _assert_same(a: TokenTrajectory, b: TokenTrajectory):
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.positions, b.positions)
    assert a.residue_names == b.residue_names
    assert a.chain_ids == b.chain_ids
    np.testing.assert_array_equal(a.residue_ids, b.residue_ids)
    assert a.timestep == b.timestep
    assert a.provenance == b.provenance


# --------------------------------------------------------------- construction
def test_construction_does_not_copy_and_reports_shape():
    feats, pos = _arrays()
    tok = TokenTrajectory(feats, pos, **_meta(), timestep=1.5)
    assert tok.features is feats and tok.positions is pos
    assert (tok.n_frames, tok.n_residues, tok.n_channels) == (N_FRAMES, N_RES, H)
    assert tok.shape == feats.shape and len(tok) == N_FRAMES
    assert tok.dtype == np.float32 and tok.path is None
    assert tok.provenance == {}
    assert repr(tok) == (
        f"TokenTrajectory(n_frames={N_FRAMES}, n_residues={N_RES}, n_channels={H}, in RAM)"
    )


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda f, p: (f[:-1], p), "features has 11 frames but positions has 12"),
        (lambda f, p: (f[:, :-1], p), "features has 4 residues but positions has 5"),
        (lambda f, p: (f[:, :, :3], p), r"shape \(n_frames, n_residues, 4, H\).*\(12, 5, 3, 3\)"),
        (lambda f, p: (f[0], p), r"\(n_frames, n_residues, 4, H\)"),
        (lambda f, p: (f, p[..., :2]), r"positions must have shape \(n_frames, n_residues, 3\)"),
        (lambda f, p: (f.astype(np.int32), p), "features must be a floating-point dtype"),
    ],
)
def test_construction_rejects_bad_arrays(change, match):
    feats, pos = change(*_arrays())
    with pytest.raises(ValueError, match=match):
        TokenTrajectory(feats, pos, **_meta())


@pytest.mark.parametrize(
    "override, match",
    [
        ({"residue_names": ["ALA"] * 4}, "residue_names has 4 entries but .* 5 residues"),
        ({"chain_ids": ["A"] * 6}, "chain_ids has 6 entries but the features have 5 residues"),
        ({"residue_ids": [1, 2, 3]}, "residue_ids .* 5 residues"),
        ({"residue_ids": [1.5] * 5}, "residue_ids must be integers"),
        ({"timestep": -1.0}, "timestep must be a positive number"),
        ({"provenance": {"f": object()}}, "provenance must be JSON-serialisable"),
    ],
)
def test_construction_rejects_bad_metadata(override, match):
    feats, pos = _arrays()
    kw = {**_meta(), **override}
    with pytest.raises(ValueError, match=match):
        TokenTrajectory(feats, pos, **kw)


# ----------------------------------------------------------------- save/load
def test_save_load_round_trip_is_memory_mapped_and_read_only(tmp_path):
    tok = _tokens(provenance={"model": "toy", "numpy_scalar": np.float32(0.5)})
    d = tmp_path / "store"
    saved = save_tokens(tok, d)
    loaded = load_tokens(d)
    assert is_complete_store(d)
    assert _siblings(str(d)) == ["store"]  # no partial or old directories left
    for t in (saved, loaded):
        assert t.path == str(d)
        assert isinstance(t.features, np.memmap) and isinstance(t.positions, np.memmap)
        assert not t.features.flags.writeable and not t.positions.flags.writeable
        assert t.provenance == {"model": "toy", "numpy_scalar": 0.5}
        np.testing.assert_array_equal(t.features, tok.features)
        np.testing.assert_array_equal(t.positions, tok.positions)
        assert t.residue_names == tok.residue_names
        assert t.chain_ids == ("A", "A", "A", 1, 1)  # str and int chain ids survive
        np.testing.assert_array_equal(t.residue_ids, tok.residue_ids)
        assert t.timestep == 2.0
    assert repr(loaded).endswith(f"at {str(d)!r})")
    with pytest.raises(ValueError, match="read-only"):
        loaded.features[0, 0, 0, 0] = 1.0
    in_ram = load_tokens(d, mmap_mode=None)
    assert in_ram.path is None and not isinstance(in_ram.features, np.memmap)
    _assert_same(in_ram, tok)


def test_save_replaces_existing_store(tmp_path):
    d = tmp_path / "store"
    save_tokens(_tokens(seed=1), d)
    new = _tokens(seed=2)
    save_tokens(new, d)
    _assert_same(load_tokens(d), new)
    assert _siblings(str(d)) == ["store"]


def test_save_refuses_to_overwrite_non_store(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a complete token store .*refusing to overwrite it. Remove it, or write elsewhere"):
        save_tokens(_tokens(), d)
    assert (d / "precious.txt").read_text() == "keep me"
    assert _siblings(str(d)) == ["data"]


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no token store"):
        load_tokens(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a complete token store"):
        load_tokens(tmp_path / "empty")
    assert not is_complete_store(tmp_path / "empty")
    assert not is_complete_store(tmp_path / "missing")


def test_truncated_array_is_not_complete(tmp_path):
    d = tmp_path / "store"
    save_tokens(_tokens(), d)
    f = d / "features.npy"
    f.write_bytes(f.read_bytes()[:-100])
    assert not is_complete_store(d)
    with pytest.raises(ValueError, match="incomplete"):
        load_tokens(d)


# ------------------------------------------------------------------- writer
def test_streaming_writer_uneven_blocks_equals_full_array(tmp_path):
    feats, pos = _arrays()
    d = tmp_path / "stream"
    with TokenStoreWriter(d, n_frames=N_FRAMES, n_residues=N_RES, n_channels=H) as w:
        start = 0
        for k in (1, 4, 0, 2, 5):
            w.write(feats[start : start + k], pos[start : start + k])
            start += k
        assert start == N_FRAMES
        out = w.finalize(**_meta(), timestep=0.5, provenance={"stride": 5})
    assert out.path == str(d) and isinstance(out.features, np.memmap)
    np.testing.assert_array_equal(out.features, feats)
    np.testing.assert_array_equal(out.positions, pos)
    assert out.timestep == 0.5 and out.provenance == {"stride": 5}
    assert _siblings(str(d)) == ["stream"]


def test_writer_casts_to_requested_dtype(tmp_path):
    feats, pos = _arrays()
    with TokenStoreWriter(
        tmp_path / "s", n_frames=N_FRAMES, n_residues=N_RES, n_channels=H, dtype="float16"
    ) as w:
        w.write(feats.astype(np.float64), pos)
        out = w.finalize(**_meta())
    assert out.dtype == np.float16 and out.positions.dtype == np.float32
    np.testing.assert_array_equal(out.features, feats.astype(np.float16))


@pytest.mark.parametrize("with_old_store", [False, True])
def test_failure_midway_leaves_nothing_and_keeps_old_store(tmp_path, with_old_store):
    d = tmp_path / "store"
    old = _tokens(seed=7)
    if with_old_store:
        save_tokens(old, d)
    feats, pos = _arrays(seed=3)
    seen_partial = []
    with pytest.raises(RuntimeError, match="injected"):
        with TokenStoreWriter(d, n_frames=N_FRAMES, n_residues=N_RES, n_channels=H) as w:
            for start in range(0, N_FRAMES, 3):
                if start == 6:  # fail at frame k=6, after two blocks
                    partial = [e for e in _siblings(str(d)) if ".partial-" in e]
                    assert len(partial) == 1
                    seen_partial.append(tmp_path / partial[0])
                    assert not is_complete_store(seen_partial[0])
                    raise RuntimeError("injected failure")
                w.write(feats[start : start + 3], pos[start : start + 3])
    assert not seen_partial[0].exists()
    if with_old_store:
        assert _siblings(str(d)) == ["store"]
        _assert_same(load_tokens(d), old)
    else:
        assert _siblings(str(d)) == []
        assert not is_complete_store(d)


def test_too_few_frames_then_finalize_leaves_nothing(tmp_path):
    d = tmp_path / "store"
    feats, pos = _arrays()
    with pytest.raises(ValueError, match="only 7 of n_frames=12 frames were written"):
        with TokenStoreWriter(d, n_frames=N_FRAMES, n_residues=N_RES, n_channels=H) as w:
            w.write(feats[:7], pos[:7])
            w.finalize(**_meta())
    assert _siblings(str(d)) == []


def test_too_many_frames_leaves_nothing(tmp_path):
    d = tmp_path / "store"
    feats, pos = _arrays()
    w = TokenStoreWriter(d, n_frames=N_FRAMES - 2, n_residues=N_RES, n_channels=H)
    w.write(feats[:8], pos[:8])
    with pytest.raises(ValueError, match="would exceed n_frames=10"):
        w.write(feats[8:], pos[8:])
    assert _siblings(str(d)) == []
    with pytest.raises(RuntimeError, match="aborted"):
        w.write(feats[:1], pos[:1])


def test_exit_without_finalize_discards_with_warning(tmp_path):
    d = tmp_path / "store"
    feats, pos = _arrays()
    with pytest.warns(RuntimeWarning, match="without finalize"):
        with TokenStoreWriter(d, n_frames=N_FRAMES, n_residues=N_RES, n_channels=H) as w:
            w.write(feats, pos)
    assert _siblings(str(d)) == []


def test_writer_block_shape_errors(tmp_path):
    feats, pos = _arrays()
    w = TokenStoreWriter(tmp_path / "s", n_frames=N_FRAMES, n_residues=N_RES, n_channels=H)
    try:
        with pytest.raises(ValueError, match=r"features block must have shape \(k, 5, 4, 3\)"):
            w.write(feats[:, :4], pos[:, :4])
        with pytest.raises(ValueError, match="features block has 2 frames but positions .* 3"):
            w.write(feats[:2], pos[:3])
    finally:
        w.close()
    assert _siblings(str(tmp_path / "s")) == []
    with pytest.raises(ValueError, match="n_frames must be at least 1"):
        TokenStoreWriter(tmp_path / "s", n_frames=0, n_residues=N_RES, n_channels=H)


# ------------------------------------------------------------------ pickling
def test_memmapped_pickles_by_path(tmp_path):
    d = tmp_path / "store"
    feats, pos = _arrays(n_frames=200, h=16)
    meta = _meta()
    tok = save_tokens(TokenTrajectory(feats, pos, **meta, timestep=1.0), d)
    blob = pickle.dumps(tok)
    assert len(blob) < 2000 < feats.nbytes // 50
    back = pickle.loads(blob)
    assert back.path == str(d) and isinstance(back.features, np.memmap)
    assert not back.features.flags.writeable
    _assert_same(back, tok)
    # a slice of a mapped store also pickles by path and keeps its frames
    sub = tok[150:10:-7]
    sub_back = pickle.loads(pickle.dumps(sub))
    assert len(pickle.dumps(sub)) < 2000
    _assert_same(sub_back, sub)
    twice = tok[::-1][::-1]  # composed slices map back to the same frames
    twice_back = pickle.loads(pickle.dumps(twice))
    np.testing.assert_array_equal(twice_back.features, tok.features)
    assert twice_back.timestep is None  # reversal dropped the time step


def test_pickle_of_replaced_store_fails_clearly(tmp_path):
    d = tmp_path / "store"
    blob = pickle.dumps(save_tokens(_tokens(seed=1), d))
    save_tokens(_tokens(seed=2), d)
    with pytest.raises(ValueError, match="was replaced"):
        pickle.loads(blob)


def test_in_ram_pickles_by_value():
    tok = _tokens()
    blob = pickle.dumps(tok)
    assert len(blob) > tok.features.nbytes
    back = pickle.loads(blob)
    assert back.path is None
    _assert_same(back, tok)


# ------------------------------------------------------------------- slicing
def test_slicing_semantics(tmp_path):
    tok = _tokens(timestep=2.0)
    sub = tok[2:11:3]
    assert len(sub) == 3 and sub.timestep == 6.0
    assert np.shares_memory(sub.features, tok.features)
    assert np.shares_memory(sub.positions, tok.positions)
    np.testing.assert_array_equal(sub.features, tok.features[2:11:3])
    assert tok[:].timestep == 2.0 and tok[5:].timestep == 2.0
    assert tok[::-1].timestep is None  # reversed time is not a trajectory step

    one = tok[-1]
    assert len(one) == 1 and one.timestep is None
    np.testing.assert_array_equal(one.features[0], tok.features[-1])
    assert np.shares_memory(one.features, tok.features)

    picked = tok[np.array([0, 3, 4])]
    assert len(picked) == 3 and picked.timestep is None
    np.testing.assert_array_equal(picked.positions, tok.positions[[0, 3, 4]])
    mask = np.zeros(N_FRAMES, bool)
    mask[[1, 2]] = True
    assert len(tok[mask]) == 2
    assert picked.residue_names == tok.residue_names

    with pytest.raises(IndexError):
        tok[N_FRAMES]
    with pytest.raises(TypeError, match="1-D integer"):
        tok[np.array([0.5])]

    mapped = save_tokens(tok, tmp_path / "s")
    assert mapped[1:5].path == mapped.path  # slices stay views of the store
    assert isinstance(mapped[1:5].features, np.memmap)
    assert mapped[[1, 2]].path is None  # fancy indexing copies into RAM


def test_killed_writer_leaves_nothing_that_looks_complete(tmp_path):
    import subprocess
    import sys
    import textwrap

    d = tmp_path / "store"
    # The child imports the token store alone, so it skips the package's heavy imports.
    code = textwrap.dedent(
        f"""
        import os, signal, sys, numpy as np
        {LEAN_IMPORT}
        w = mod.TokenStoreWriter({str(d)!r}, n_frames=10, n_residues=3, n_channels=2)
        with w:
            w.write(np.ones((4, 3, 4, 2)), np.ones((4, 3, 3)))
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert proc.returncode != 0
    leftovers = _siblings(str(d))
    assert len(leftovers) == 1 and ".partial-" in leftovers[0]  # SIGKILL cannot clean up
    assert not is_complete_store(d)
    assert not is_complete_store(tmp_path / leftovers[0])
    with pytest.raises(FileNotFoundError, match="incomplete, interrupted or ongoing write"):
        load_tokens(d)
    # the next writer of that store removes the dead writer's debris
    save_tokens(_tokens(), d)
    assert _siblings(str(d)) == ["store"]


def test_finished_but_unrenamed_partial_is_not_complete(tmp_path):
    # A crash between writing meta.json and the rename leaves a full partial dir.
    d = tmp_path / "store"
    save_tokens(_tokens(), d)
    partial = tmp_path / "store.partial-0123456789ab"
    os.rename(d, partial)
    assert not is_complete_store(partial)
    with pytest.raises(ValueError, match="unfinished write"):
        load_tokens(partial)


# ----------------------------------------------------------- concurrent writers
def test_equal_data_gives_equal_store_ids_so_a_replaced_store_still_unpickles(tmp_path):
    a = save_tokens(_tokens(seed=1), tmp_path / "a")
    b = save_tokens(_tokens(seed=1)[::1], tmp_path / "b")  # same data, written again elsewhere
    c = save_tokens(_tokens(seed=2), tmp_path / "c")
    assert a._store[2] == b._store[2] != c._store[2]
    blob = pickle.dumps(a)
    save_tokens(_tokens(seed=1), tmp_path / "a")  # replaced by the same data
    _assert_same(pickle.loads(blob), a)


def test_keep_returns_the_store_another_writer_finished_first(tmp_path):
    d = tmp_path / "store"
    feats, pos = _arrays(seed=3)
    with TokenStoreWriter(d, n_frames=N_FRAMES, n_residues=N_RES, n_channels=H, if_exists="keep") as late:
        late.write(feats, pos)
        first = save_tokens(_tokens(seed=3), d)  # finishes while `late` is still writing
        got = late.finalize(**_meta(), timestep=2.0, provenance={"model": "toy", "seed": 3})
    assert got._store[2] == first._store[2]
    _assert_same(got, first)
    assert _siblings(str(d)) == ["store"]  # the late writer's partial store is gone
    with pytest.raises(ValueError, match="if_exists must be 'replace' or 'keep'"):
        TokenStoreWriter(d, n_frames=1, n_residues=1, n_channels=1, if_exists="overwrite")


def test_debris_of_killed_commits_goes_and_live_writers_stay(tmp_path):
    d = tmp_path / "store"
    save_tokens(_tokens(), d)
    (tmp_path / "store.old-0123456789ab").mkdir()  # a commit killed between its two renames
    (tmp_path / "store.old-1").mkdir()  # a name a user chose: not ours to remove
    live = TokenStoreWriter(d, n_frames=N_FRAMES, n_residues=N_RES, n_channels=H)
    live.write(*_arrays(seed=4))  # an ongoing write, in this process
    save_tokens(_tokens(seed=5), d)
    remaining = _siblings(str(d))
    assert "store.old-0123456789ab" not in remaining
    assert remaining[:2] == ["store", "store.old-1"]
    assert len(remaining) == 3 and ".partial-" in remaining[2]  # the live writer's, untouched
    live.finalize(**_meta())
    assert _siblings(str(d)) == ["store", "store.old-1"]
    with pytest.raises(ValueError, match="looks like a temporary directory"):
        save_tokens(_tokens(), tmp_path / "other.old-0123456789ab")


def test_concurrent_writers_short_stress(tmp_path, monkeypatch):
    """The short version of benchmarks/stress_stores.py: save_tokens, 3 threads + 2 processes."""
    import importlib

    from conftest import REPO

    # importable by name, so that its worker function reaches the spawned processes
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    stress = importlib.import_module("stress_stores")
    report = stress.stress("save_tokens", str(tmp_path / "st"), n_threads=3, n_processes=2, rounds=4)
    assert report["calls"] == 20
    assert report["exceptions"] == [] and report["debris"] == [] and report["bad_token_sets"] == []


# ------------------------------------------------------------------ integrity
def _zero_bytes(path, offset, n):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\0" * n)


def test_zeroed_block_is_caught_by_the_default_verification(tmp_path):
    d = tmp_path / "store"
    with TokenStoreWriter(d, n_frames=N_FRAMES, n_residues=N_RES, n_channels=H) as w:
        feats, pos = _arrays()
        for start in range(0, N_FRAMES, 4):  # three chunks of four frames
            w.write(feats[start:start + 4], pos[start:start + 4])
            w.checkpoint()
        w.finalize(**_meta())
    frame_bytes = N_RES * 4 * H * 4
    header = os.path.getsize(d / "features.npy") - N_FRAMES * frame_bytes
    _zero_bytes(d / "features.npy", header + 5 * frame_bytes + 8, 16)  # inside frame 5
    with pytest.raises(ValueError, match=r"is corrupt: frames 4-7 of features.npy do not match "
                                         r"their checksum"):
        load_tokens(d)
    assert not is_complete_store(d)
    # the header level reads nothing but the headers: it serves the damaged data
    assert is_complete_store(d, verify="header")
    served = load_tokens(d, verify="header").features[5].reshape(-1)
    assert (served[2:6] == 0).all() and not (feats[5].reshape(-1)[2:6] == 0).any()
    with pytest.raises(ValueError, match="verify must be 'full' or 'header'"):
        load_tokens(d, verify=True)


def test_header_level_catches_truncation_and_a_zeroed_header(tmp_path):
    d = tmp_path / "store"
    save_tokens(_tokens(), d)
    _zero_bytes(d / "positions.npy", 0, 64)  # the .npy header
    for verify in ("header", "full"):
        with pytest.raises(ValueError, match="cannot read positions.npy"):
            load_tokens(d, verify=verify)
    save_tokens(_tokens(), tmp_path / "other")
    with open(tmp_path / "other" / "features.npy", "r+b") as fh:
        fh.truncate(os.path.getsize(tmp_path / "other" / "features.npy") - 1)
    assert not is_complete_store(tmp_path / "other", verify="header")


def test_a_version_1_store_still_loads_and_a_newer_one_is_refused(tmp_path):
    import json

    d = tmp_path / "store"
    saved = save_tokens(_tokens(), d)
    meta = json.loads((d / "meta.json").read_text())
    del saved
    # exactly what version 1 wrote: no per-chunk checksums
    v1 = {k: v for k, v in meta.items() if k != "chunks"}
    v1["format_version"] = 1
    (d / "meta.json").write_text(json.dumps(v1))
    _assert_same(load_tokens(d), _tokens())
    newer = dict(meta, format_version=3)
    (d / "meta.json").write_text(json.dumps(newer))
    with pytest.raises(ValueError, match="format version 3; this version of g2v_sklearn reads "
                                         "versions 1, 2; it was written by a newer g2v_sklearn: "
                                         "upgrade"):
        load_tokens(d)
    (d / "meta.json").write_text(json.dumps(dict(meta, chunks=[[5, "a", "b"]])))
    with pytest.raises(ValueError, match="corrupt: its checksums cover 5 of 12 frames"):
        load_tokens(d)


# ------------------------------------------------------------------ full disk
def test_full_disk_is_refused_before_writing_and_leaves_nothing(tmp_path, monkeypatch):
    import errno
    import shutil

    tokens_module = _writer

    d = tmp_path / "store"
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(tokens_module.shutil, "disk_usage",
                        lambda path: usage._replace(free=100))
    with pytest.raises(OSError, match=r"Not enough disk space for the token store .*store': it "
                                      r"needs 3.6 kB and 100 bytes are free. Nothing was "
                                      r"written there") as info:
        save_tokens(_tokens(), d)
    assert info.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tokens_module.os, "posix_fallocate", no_space, raising=False)
    with pytest.raises(OSError, match="could not reserve the space"):
        save_tokens(_tokens(), d)
    assert os.listdir(tmp_path) == []


def test_disk_filling_during_the_metadata_keeps_the_old_store(tmp_path, monkeypatch):
    import errno

    tokens_module = _writer

    d = tmp_path / "store"
    save_tokens(_tokens(seed=1), d)
    real = tokens_module._write_json_atomic

    def full(path, obj, indent=None):
        if path.endswith("meta.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, obj, indent)

    monkeypatch.setattr(tokens_module, "_write_json_atomic", full)
    with pytest.raises(OSError, match="the disk filled while its metadata was written"):
        save_tokens(_tokens(seed=2), d)
    assert _siblings(str(d)) == ["store"]
    _assert_same(load_tokens(d), _tokens(seed=1))


# --------------------------------------------------------------------- resume
def _resumable(d, key="k1"):
    return TokenStoreWriter(d, n_frames=N_FRAMES, n_residues=N_RES, n_channels=H, resume_key=key)


def _interrupted(d, n_chunks, key="k1"):
    """A resumable write of ``n_chunks`` committed chunks of 4 frames, interrupted with ^C
    half-way through the next chunk."""
    feats, pos = _arrays()
    with pytest.raises(KeyboardInterrupt), _resumable(d, key) as w:
        for c in range(n_chunks):
            w.write(feats[4 * c:4 * c + 4], pos[4 * c:4 * c + 4])
            w.checkpoint({"chunk": c})
        w.write(feats[4 * n_chunks:4 * n_chunks + 2], pos[4 * n_chunks:4 * n_chunks + 2])
        raise KeyboardInterrupt


def _finish(w):
    feats, pos = _arrays()
    for start in range(w.n_written, N_FRAMES, 4):
        w.write(feats[start:start + 4], pos[start:start + 4])
        w.checkpoint()
    return w.finalize(**_meta(), timestep=2.0, provenance={"model": "toy", "seed": 0})


def test_an_interrupted_resumable_write_is_taken_over_where_it_stopped(tmp_path):
    d = tmp_path / "store"
    _interrupted(d, 2)
    (partial,) = _siblings(str(d))
    assert ".partial-" in partial  # kept for the next writer
    (tmp_path / partial / "progress.json.tmp-0123abcd").write_text("{")  # a write cut short
    with _resumable(d) as w:
        assert (w.n_written, w.resumed_info) == (8, {"chunk": 1})
        resumed = _finish(w)
    assert _siblings(str(d)) == ["store"]
    assert sorted(os.listdir(d)) == ["features.npy", "meta.json", "positions.npy"]
    uninterrupted = save_tokens(_tokens(), tmp_path / "whole")
    _assert_same(resumed, uninterrupted)
    assert resumed._store[2] == uninterrupted._store[2]  # equal data, equal id
    # without a resume key an interruption discards the partial directory, as before
    with pytest.raises(KeyboardInterrupt), TokenStoreWriter(
            tmp_path / "plain", n_frames=N_FRAMES, n_residues=N_RES, n_channels=H) as w:
        w.write(*_arrays())
        w.checkpoint()
        raise KeyboardInterrupt
    assert _siblings(str(tmp_path / "plain")) == []


def test_resume_needs_the_same_key_and_skips_damaged_chunks_and_live_writers(tmp_path):
    d = tmp_path / "store"
    _interrupted(d, 2)
    with _resumable(d, key="another input") as w:  # not ours: its partial is debris
        assert w.n_written == 0
        _finish(w)
    assert _siblings(str(d)) == ["store"]
    _interrupted(tmp_path / "z", 2)
    (partial,) = _siblings(str(tmp_path / "z"))
    frame_bytes = N_RES * 4 * H * 4
    path = tmp_path / partial / "features.npy"
    _zero_bytes(path, os.path.getsize(path) - (N_FRAMES - 5) * frame_bytes, 8)  # frame 5: chunk 1
    with _resumable(tmp_path / "z") as w:
        assert (w.n_written, w.resumed_info) == (4, {"chunk": 0})  # chunk 1 is written again
        _assert_same(_finish(w), _tokens())
    # a partial whose writer is alive (here, in this process) is not taken over
    live = _resumable(tmp_path / "live")
    live.write(*(a[:4] for a in _arrays()))
    live.checkpoint()
    with _resumable(tmp_path / "live") as other:
        assert other.n_written == 0
        other.close()
    assert _finish(live).n_frames == N_FRAMES


def test_a_commit_killed_between_its_renames_is_finished_by_the_next_writer(tmp_path):
    import subprocess
    import sys
    import textwrap

    d = tmp_path / "store"
    save_tokens(_tokens(seed=7), d)  # the store being replaced
    feats, pos = _arrays()
    np.save(tmp_path / "f.npy", feats)
    np.save(tmp_path / "p.npy", pos)
    code = textwrap.dedent(
        f"""
        import os, signal, sys, numpy as np
        {LEAN_IMPORT}
        mod.set_fault_hook(lambda point: point == "mid-commit" and os.kill(os.getpid(), signal.SIGKILL))
        w = mod.TokenStoreWriter({str(d)!r}, n_frames={N_FRAMES}, n_residues={N_RES},
                                 n_channels={H}, resume_key="k1")
        with w:
            w.write(np.load({str(tmp_path / "f.npy")!r}), np.load({str(tmp_path / "p.npy")!r}))
            w.checkpoint()
            w.finalize(residue_names={_meta()["residue_names"]!r}, chain_ids={_meta()["chain_ids"]!r},
                       residue_ids={_meta()["residue_ids"]!r}, timestep=2.0,
                       provenance={{"model": "toy", "seed": 0}})
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert proc.returncode == -9
    left = _siblings(str(d))
    assert len(left) == 2 and ".old-" in left[0] and ".partial-" in left[1]  # nothing at store
    with _resumable(d) as w:
        assert w.n_written == N_FRAMES  # every frame was committed: nothing to write again
        done = w.finalize(**_meta(), timestep=2.0, provenance={"model": "toy", "seed": 0})
    assert _siblings(str(d)) == ["store"]
    _assert_same(done, _tokens())


def test_an_interrupt_while_resuming_or_finishing_keeps_the_committed_chunks(tmp_path, monkeypatch):
    import errno

    tokens_module = _writer

    d = tmp_path / "store"
    _interrupted(d, 2)
    real_digests = tokens_module._chunk_digests

    def interrupted_digests(*args):
        raise KeyboardInterrupt  # ^C while the committed chunks are re-verified

    monkeypatch.setattr(tokens_module, "_chunk_digests", interrupted_digests)
    with pytest.raises(KeyboardInterrupt):
        _resumable(d).__enter__()
    monkeypatch.setattr(tokens_module, "_chunk_digests", real_digests)
    assert len(_siblings(str(d))) == 1  # still there, and claimable
    real_json = tokens_module._write_json_atomic

    def failing_meta(error):
        def write(path, obj, indent=None):
            if path.endswith("meta.json"):
                raise error
            return real_json(path, obj, indent)
        return write

    meta = dict(**_meta(), timestep=2.0, provenance={"model": "toy", "seed": 0})
    for error, match in ((KeyboardInterrupt(), None),
                         (OSError(errno.ENOSPC, "No space left"), "frames written so far are kept")):
        with _resumable(d) as w:
            assert w.n_written in (8, N_FRAMES)
            feats, pos = _arrays()
            w.write(feats[w.n_written:], pos[w.n_written:])
            w.checkpoint()
            monkeypatch.setattr(tokens_module, "_write_json_atomic", failing_meta(error))
            with pytest.raises(type(error), match=match):
                w.finalize(**meta)
            monkeypatch.setattr(tokens_module, "_write_json_atomic", real_json)
        assert len(_siblings(str(d))) == 1 and ".partial-" in _siblings(str(d))[0]
    with _resumable(d) as w:
        assert w.n_written == N_FRAMES  # nothing to embed again
        _assert_same(w.finalize(**meta), _tokens())


def test_verification_does_not_hold_up_other_writers(tmp_path, monkeypatch):
    import threading

    from g2v_sklearn.tokens import _format as tokens_module

    save_tokens(_tokens(), tmp_path / "big")
    real = tokens_module._verify_chunks
    finished = {}

    def slow_verification(*args):
        writer = threading.Thread(target=save_tokens, args=(_tokens(seed=1), tmp_path / "other"))
        writer.start()
        writer.join(timeout=20)  # a commit in the same directory, while this store is hashed
        finished["commit"] = not writer.is_alive()
        return real(*args)

    monkeypatch.setattr(tokens_module, "_verify_chunks", slow_verification)
    load_tokens(tmp_path / "big")
    assert finished == {"commit": True}


def test_trailing_bytes_fail_the_header_check(tmp_path):
    d = tmp_path / "store"
    save_tokens(_tokens(), d)
    with open(d / "positions.npy", "ab") as fh:
        fh.write(b"\0" * 8)
    with pytest.raises(ValueError, match=r"positions.npy has \d+ bytes where its header and "
                                         r"meta.json make \d+"):
        load_tokens(d, verify="header")


def test_a_partial_with_a_garbled_owner_file_is_taken_over(tmp_path):
    d = tmp_path / "store"
    _interrupted(d, 1)
    (partial,) = _siblings(str(d))
    (tmp_path / partial / "writer.json").write_text("")  # its writer died writing it
    with _resumable(d) as w:
        assert w.n_written == 4
        _assert_same(_finish(w), _tokens())
    assert _siblings(str(d)) == ["store"]


def test_a_store_moved_aside_by_a_killed_commit_is_put_back(tmp_path):
    d = tmp_path / "store"
    save_tokens(_tokens(seed=3), d)
    os.rename(d, tmp_path / "store.old-0123456789ab")  # killed between its two renames
    with TokenStoreWriter(d, n_frames=N_FRAMES, n_residues=N_RES, n_channels=H) as w:
        w.close()  # any writer of that name, even one that finishes nothing
    assert _siblings(str(d)) == ["store"]
    _assert_same(load_tokens(d), _tokens(seed=3))


# ------------------------------------------------------ work kept on failure
@pytest.mark.parametrize("where", ["in the block", "in finalize"])
def test_any_exception_keeps_a_resumable_writes_committed_chunks(tmp_path, where):
    """A CUDA out-of-memory error is a RuntimeError, not an interrupt: the chunks committed
    before it are kept for the next writer all the same (they are re-verified on resume)."""
    d = tmp_path / "store"
    feats, pos = _arrays()
    if where == "in the block":
        with pytest.raises(RuntimeError, match="out of memory"), _resumable(d) as w:
            for c in range(2):
                w.write(feats[4 * c:4 * c + 4], pos[4 * c:4 * c + 4])
                w.checkpoint({"chunk": c})
            w.write(feats[8:10], pos[8:10])
            raise RuntimeError("CUDA out of memory (injected)")
        kept = 8
    else:
        with pytest.raises(ValueError, match="residue_names has 1 entries"), _resumable(d) as w:
            _finish_with(w, residue_names=["ALA"])
        kept = N_FRAMES
    (partial,) = _siblings(str(d))
    assert ".partial-" in partial and "writer.json" not in os.listdir(tmp_path / partial)
    with _resumable(d) as w:
        assert w.n_written == kept
        _assert_same(_finish(w), _tokens())
    assert _siblings(str(d)) == ["store"]


def _finish_with(w, **meta):
    feats, pos = _arrays()
    for start in range(w.n_written, N_FRAMES, 4):
        w.write(feats[start:start + 4], pos[start:start + 4])
        w.checkpoint()
    return w.finalize(**{**_meta(), **meta}, timestep=2.0, provenance={"model": "toy", "seed": 0})


def _waiting(d):
    return TokenStoreWriter(d, n_frames=N_FRAMES, n_residues=N_RES, n_channels=H, resume_key="k1",
                            if_exists="keep", if_busy="wait")


def _open_in_thread(writer):
    """Open ``writer`` on a thread; returns the thread and a dict that gets the outcome."""
    import threading

    outcome = {}

    def run():
        try:
            outcome["writer"] = writer.__enter__()
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_a_second_writer_waits_for_a_live_one_and_returns_its_store(tmp_path):
    d = tmp_path / "store"
    first = _waiting(d).__enter__()
    feats, pos = _arrays()
    first.write(feats[:4], pos[:4])
    first.checkpoint()
    second = _waiting(d)
    thread, outcome = _open_in_thread(second)
    thread.join(0.5)
    assert thread.is_alive() and outcome == {}  # waiting: the first writer's process lives
    assert len([e for e in _siblings(str(d)) if ".partial-" in e]) == 1  # no second copy begun
    done = _finish(first)
    thread.join(10)
    assert outcome["writer"] is second and second.existing is not None
    got = second.finalize(**_meta(), timestep=2.0, provenance={"model": "toy", "seed": 0})
    assert got is second.existing and got._store[2] == done._store[2]
    second.__exit__(None, None, None)  # nothing to discard, nothing to warn about
    assert _siblings(str(d)) == ["store"]
    with pytest.raises(ValueError, match="if_busy='wait' .* needs if_exists='keep'"):
        TokenStoreWriter(d, n_frames=1, n_residues=1, n_channels=1, if_busy="wait")
    with pytest.raises(ValueError, match="if_busy must be 'write' or 'wait'; got 'block'"):
        TokenStoreWriter(d, n_frames=1, n_residues=1, n_channels=1, if_exists="keep", if_busy="block")


def test_a_waiting_writer_takes_over_from_one_that_failed_or_died(tmp_path):
    import signal
    import subprocess
    import sys
    import textwrap

    # the writer waited for fails (an exception): its committed chunk is taken over
    d = tmp_path / "failed"
    first = _waiting(d).__enter__()
    feats, pos = _arrays()
    first.write(feats[:4], pos[:4])
    first.checkpoint()
    thread, outcome = _open_in_thread(_waiting(d))
    thread.join(0.3)
    assert thread.is_alive()
    first.__exit__(RuntimeError, RuntimeError("CUDA out of memory"), None)
    thread.join(10)
    with outcome["writer"] as w:
        assert w.n_written == 4 and w.existing is None
        _assert_same(_finish(w), _tokens())
    # the writer waited for is another process, killed with SIGKILL while this one waits
    d = tmp_path / "killed"
    np.save(tmp_path / "f.npy", feats[:4])
    np.save(tmp_path / "p.npy", pos[:4])
    code = textwrap.dedent(f"""
        import sys, time, numpy as np
        {LEAN_IMPORT}
        w = mod.TokenStoreWriter({str(d)!r}, n_frames={N_FRAMES}, n_residues={N_RES}, n_channels={H},
                                 resume_key="k1", if_exists="keep", if_busy="wait").__enter__()
        w.write(np.load({str(tmp_path / "f.npy")!r}), np.load({str(tmp_path / "p.npy")!r}))
        w.checkpoint()
        print("committed", flush=True)
        time.sleep(60)
        """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "committed"
        thread, outcome = _open_in_thread(_waiting(d))
        thread.join(0.3)
        assert thread.is_alive()  # its holder lives
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
        proc.stdout.close()
    thread.join(10)
    with outcome["writer"] as w:
        assert w.n_written == 4  # the dead holder's chunk, taken over
        _assert_same(_finish(w), _tokens())
    assert _siblings(str(d)) == ["killed"]


def test_metadata_that_disagrees_with_the_arrays_names_the_store_and_the_file(tmp_path):
    """Had been "residue_names has 1 entries but the features have 5 residues", naming neither."""
    import json

    d = tmp_path / "store"
    save_tokens(_tokens(), d)
    meta = json.loads((d / "meta.json").read_text())
    meta["residue_names"] = ["ALA"]
    (d / "meta.json").write_text(json.dumps(meta))
    for verify in ("full", "header"):
        with pytest.raises(ValueError, match=rf"token store '{d}' is corrupt: its meta.json disagrees with its "
                                             rf"arrays \(residue_names has 1 entries but the features have 5 "
                                             rf"residues\)"):
            load_tokens(d, verify=verify)
    assert not is_complete_store(d)
