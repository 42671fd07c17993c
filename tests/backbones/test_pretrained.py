"""Named backbones (g2v_sklearn.backbones._pretrained): fetched, verified, cached; known files checked.

Every download here comes from a server on 127.0.0.1 that serves the files of
../shared/checkpoints under ``/good/``, and misbehaves under other prefixes:
``/cut/`` stops half-way through the promised length, ``/wrong/`` sends the
right length with 64 bytes zeroed, ``/slow/`` sends in eight pieces with a
pause between them; a closed port refuses. None reaches the internet.
"""

from __future__ import annotations

import http.server
import multiprocessing
import os
import pickle
import shutil
import socket
import stat
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pooch  # noqa: F401 - imported before the forks below, which must import nothing
import pytest
import requests  # noqa: F401 - likewise
from conftest import CHECKPOINTS, need

from g2v_sklearn import CheckpointWarning, GeomEmbedder, fetch_backbone
from g2v_sklearn.datasets import load_alanine_dipeptide
from g2v_sklearn.backbones._backbone import load_checkpoint
from g2v_sklearn.backbones._pretrained import BACKBONES, CACHE_ENV, MIRROR_ENV

# Embeddings compared bit for bit across runs: the same torch threads in every run.
pytestmark = pytest.mark.usefixtures("fixed_threads")

VISNET = BACKBONES["visnet"]


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        server = self.server
        mode, _, name = self.path.strip("/").partition("/")
        server.requests.append(self.path)
        path = CHECKPOINTS / name
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        if mode == "wrong":
            middle = len(data) // 2
            data = data[:middle] + bytes(64) + data[middle + 64:]
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if mode == "cut":
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
        elif mode == "slow":
            with server.lock:
                server.active += 1
                server.peak = max(server.peak, server.active)
            try:
                if server.together is not None:  # hold each download until the others have started
                    server.together.wait()
                for piece in np.array_split(np.frombuffer(data, np.uint8), 8):
                    self.wfile.write(piece.tobytes())
                    self.wfile.flush()
                    time.sleep(0.05)
            finally:
                with server.lock:
                    server.active -= 1
        else:
            self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    need(CHECKPOINTS / VISNET.filename)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.requests, httpd.lock, httpd.active, httpd.peak, httpd.together = [], threading.Lock(), 0, 0, None
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def url(server, mode: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/{mode}/"


def refusing_url() -> str:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(path))
    return path


def assert_names_where(message: str, source: str, cache: Path):
    """Every fetch error names the URL, the cache folder and the variables."""
    assert source + VISNET.filename in message, message
    assert str(cache) in message and MIRROR_ENV in message and CACHE_ENV in message, message


def test_a_name_is_downloaded_once_verified_and_then_read_from_the_cache(server, cache, monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, url(server, "good"))
    before = len(server.requests)
    path = fetch_backbone("visnet")
    assert Path(path) == cache / VISNET.filename
    assert Path(path).read_bytes() == (CHECKPOINTS / VISNET.filename).read_bytes()
    assert fetch_backbone("visnet") == path
    assert len(server.requests) == before + 1  # the second call downloaded nothing
    assert sorted(os.listdir(cache)) == [VISNET.filename]  # no temporaries left


def test_no_network_is_an_error_that_says_where_from_where_to_and_what_to_set(cache, monkeypatch):
    source = refusing_url()
    monkeypatch.setenv(MIRROR_ENV, source)
    with pytest.raises(ConnectionError, match=r"Could not download geom2vec's visnet_l6_h64_rbf64_r75\.pth "
                                              r"\(ConnectionError.*g2v fetch visnet") as caught:
        fetch_backbone("visnet")
    assert_names_where(str(caught.value), source, cache)
    assert not cache.exists() or not os.listdir(cache)


def test_a_download_cut_off_leaves_nothing_under_the_name(server, cache, monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, url(server, "cut"))
    with pytest.raises(ConnectionError, match=r"The download of geom2vec's visnet_l6_h64_rbf64_r75\.pth broke "
                                              r"off .*IncompleteRead.*nothing was kept in the cache") as caught:
        fetch_backbone("visnet")
    assert_names_where(str(caught.value), url(server, "cut"), cache)
    assert os.listdir(cache) == []  # neither the half file nor its temporary
    monkeypatch.setenv(MIRROR_ENV, url(server, "good"))  # the next try starts over
    assert Path(fetch_backbone("visnet")).read_bytes() == (CHECKPOINTS / VISNET.filename).read_bytes()


def test_other_bytes_are_refused_and_removed(server, cache, monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, url(server, "wrong"))
    with pytest.raises(ValueError, match=f"is not geom2vec's: its SHA-256 is [0-9a-f]{{64}}, not "
                                         f"{VISNET.sha256}. The download was deleted") as caught:
        fetch_backbone("visnet")
    assert_names_where(str(caught.value), url(server, "wrong"), cache)
    assert os.listdir(cache) == []


def test_a_damaged_cached_file_is_removed_and_fetched_again(server, cache, monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, url(server, "good"))
    cache.mkdir()
    damaged = bytearray((CHECKPOINTS / VISNET.filename).read_bytes())
    damaged[1000:1064] = bytes(64)
    (cache / VISNET.filename).write_bytes(damaged)
    with pytest.warns(CheckpointWarning, match=f"cached visnet_l6_h64_rbf64_r75.pth has SHA-256 [0-9a-f]{{64}}, "
                                               f"not geom2vec's {VISNET.sha256}: it is damaged; it was removed"):
        path = fetch_backbone("visnet")
    assert Path(path).read_bytes() == (CHECKPOINTS / VISNET.filename).read_bytes()


def _fetch_in_child(barrier, results):
    barrier.wait()  # both start together
    try:
        results.put(("ok", fetch_backbone("visnet")))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def test_two_processes_fetching_at_once_both_end_with_the_verified_file(server, cache, monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, url(server, "slow"))
    context = multiprocessing.get_context("fork")  # no re-import: starts in milliseconds
    barrier, results = context.Barrier(2), context.Queue()
    children = [context.Process(target=_fetch_in_child, args=(barrier, results)) for _ in range(2)]
    server.peak = 0
    # both downloads in flight at once, however late the second process starts (a loaded
    # machine): neither sends a byte before the other has asked
    monkeypatch.setattr(server, "together", threading.Barrier(2, timeout=60))
    for child in children:
        child.start()
    # meanwhile, whatever is under the final name is the whole verified file
    target, expected = cache / VISNET.filename, (CHECKPOINTS / VISNET.filename).read_bytes()
    while any(child.is_alive() for child in children):
        if target.exists():
            assert target.read_bytes() == expected
        time.sleep(0.01)
    outcomes = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=60)
    assert server.peak == 2  # the two downloads overlapped
    assert outcomes == [("ok", str(cache / VISNET.filename))] * 2, outcomes
    assert (cache / VISNET.filename).read_bytes() == (CHECKPOINTS / VISNET.filename).read_bytes()
    assert os.listdir(cache) == [VISNET.filename]


def _fetch_without_write_permission(results):
    if os.geteuid() == 0:  # root writes into read-only folders: become nobody
        os.setgid(65534)
        os.setuid(65534)
    for folder in os.environ["TRY_CACHES"].split(os.pathsep):
        os.environ[CACHE_ENV] = folder
        try:
            results.put(("ok", fetch_backbone("visnet")))
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            results.put((type(exc).__name__, str(exc)))


def test_a_read_only_cache_folder_is_an_error_that_says_what_to_set(server, monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, url(server, "good"))
    root = Path(tempfile.mkdtemp())  # not under pytest's private tmp folder: nobody must reach it
    try:
        empty, filled = root / "empty", root / "filled"
        empty.mkdir()
        filled.mkdir()
        shutil.copy(CHECKPOINTS / VISNET.filename, filled)
        for folder in (empty, filled):
            folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        root.chmod(0o755)
        (filled / VISNET.filename).chmod(0o444)
        monkeypatch.setenv("TRY_CACHES", f"{empty}{os.pathsep}{filled}")
        context = multiprocessing.get_context("fork")
        results = context.Queue()
        child = context.Process(target=_fetch_without_write_permission, args=(results,))
        child.start()
        (kind, message), found = results.get(timeout=60), results.get(timeout=60)
        child.join(timeout=60)
    finally:
        for folder in (root / "empty", root / "filled"):
            folder.chmod(0o755)
        shutil.rmtree(root)
    assert kind == "PermissionError", message
    assert "Cannot write geom2vec's visnet_l6_h64_rbf64_r75.pth into the cache folder" in message
    assert "Set G2V_CACHE to a writable folder" in message
    assert_names_where(message, url(server, "good"), empty)
    # a read-only cache that holds the verified file serves it
    assert found == ("ok", str(filled / VISNET.filename))


def test_a_mirror_folder_is_read_in_place_and_a_bad_copy_there_is_refused(cache, monkeypatch, tmp_path):
    need(CHECKPOINTS / VISNET.filename)
    monkeypatch.setenv(MIRROR_ENV, str(CHECKPOINTS))
    assert fetch_backbone("visnet") == str(CHECKPOINTS / VISNET.filename)
    assert not cache.exists()  # nothing copied
    folder = tmp_path / "mirror"
    folder.mkdir()
    monkeypatch.setenv(MIRROR_ENV, str(folder))
    with pytest.raises(FileNotFoundError, match=r"G2V_MIRROR is the folder .*mirror, which has no "
                                                r"visnet_l6_h64_rbf64_r75\.pth"):
        fetch_backbone("visnet")
    (folder / VISNET.filename).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=f"has SHA-256 [0-9a-f]{{64}}, but geom2vec's "
                                         f"visnet_l6_h64_rbf64_r75.pth has {VISNET.sha256}"):
        fetch_backbone("visnet")
    assert (folder / VISNET.filename).exists()  # not ours to remove


def test_an_unknown_name_suggests_the_nearest():
    with pytest.raises(ValueError, match=r"Unknown backbone name 'visnt'.*did you mean 'visnet'\?"):
        fetch_backbone("visnt")


@pytest.fixture(scope="module")
def two_frames():
    return [load_alanine_dipeptide(stride=100).trajectories[0][:2]]


def test_an_embedder_made_from_a_name_records_the_hash_and_refits_from_the_cache_after_pickling(
        server, cache, monkeypatch, two_frames):
    monkeypatch.setenv(MIRROR_ENV, url(server, "good"))
    embedder = GeomEmbedder("visnet", progress=False)
    tokens = embedder.fit_transform(two_frames)[0].features
    assert embedder.checkpoint == "visnet" and embedder.checkpoint_sha256_ == VISNET.sha256
    by_path = GeomEmbedder(str(CHECKPOINTS / VISNET.filename), progress=False).fit(two_frames)
    np.testing.assert_array_equal(by_path.transform(two_frames)[0].features, tokens)
    # another machine: the file is in its cache, and the network is out of reach
    monkeypatch.setenv(MIRROR_ENV, refusing_url())
    again = pickle.loads(pickle.dumps(embedder))
    np.testing.assert_array_equal(again.fit_transform(two_frames)[0].features, tokens)


def damaged_copy(tmp_path: Path, name: str) -> Path:
    data = bytearray((CHECKPOINTS / VISNET.filename).read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)  # loads without error: torch does not check the CRCs
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_a_damaged_copy_of_a_known_file_warns_with_both_hashes(tmp_path, two_frames):
    need(CHECKPOINTS / VISNET.filename)
    damaged = damaged_copy(tmp_path, VISNET.filename)
    with pytest.warns(CheckpointWarning, match=f"is named as geom2vec's visnet_l6_h64_rbf64_r75.pth "
                                               f"\\(SHA-256 {VISNET.sha256}\\), but its SHA-256 is "
                                               f"[0-9a-f]{{64}}: it is a damaged copy"):
        embedder = GeomEmbedder(str(damaged), progress=False).fit(two_frames)
    assert embedder.checkpoint_sha256_ != VISNET.sha256
    # renamed, it is still recognised by its keys and shapes
    renamed = damaged.rename(tmp_path / "mine.pth")
    with pytest.warns(CheckpointWarning, match="has the key layout of geom2vec's visnet_l6_h64_rbf64_r75.pth"):
        load_checkpoint(renamed)
    # the intact file under any name is silent
    intact = shutil.copy(CHECKPOINTS / VISNET.filename, tmp_path / "renamed.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)
        load_checkpoint(intact)


def test_a_missing_file_named_as_a_known_one_points_to_the_name(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist\. GeomEmbedder\('visnet'\) fetches"):
        load_checkpoint(tmp_path / VISNET.filename)
