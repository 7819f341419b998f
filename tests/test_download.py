"""Tests of emseg.download against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import hashlib
import shutil
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from emseg.download import DownloadError, fetch_dataset, read_manifest

REPO = Path(__file__).resolve().parents[1]
REPO_MANIFEST = REPO / "workflow" / "resources" / "isbi2012.sha256"
ISBI = Path("/work/shared/data/isbi2012")
needs_isbi = pytest.mark.skipif(not ISBI.is_dir(), reason="ISBI 2012 data folder not present")


class _Server(ThreadingHTTPServer):
    """Serves ``root`` under /data/; ``plan[path]`` lists one action per request, then "ok"."""

    daemon_threads = True

    def __init__(self, root: Path, plan: dict[str, list[str]], honor_range: bool) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.plan = plan
        self.honor_range = honor_range
        self.requests: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()

    def handle_error(self, request: object, client_address: object) -> None:
        """Stay quiet about clients that hung up (the timeout test does that on purpose)."""


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        """Keep pytest output clean."""

    def do_GET(self) -> None:
        rel = urllib.parse.unquote(self.path).removeprefix("/data/")
        with self.server.lock:
            self.server.requests.append((rel, self.headers.get("Range")))
            queue = self.server.plan.get(rel)
            action = queue.pop(0) if queue else "ok"
        if action == "500":
            self.send_error(500)
            return
        path = self.server.root / rel
        if not path.is_file():
            self.send_error(404)
            return
        body = path.read_bytes()
        if action == "corrupt":
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        start = 0
        asked = self.headers.get("Range")
        if asked and self.server.honor_range:
            start = int(asked.removeprefix("bytes=").rstrip("-"))
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if action in ("drop", "stall"):
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            if action == "stall":
                time.sleep(1.0)
            self.close_connection = True
            return
        self.wfile.write(payload)


@contextmanager
def serve(
    root: Path, plan: dict[str, list[str]] | None = None, honor_range: bool = True
) -> Iterator[tuple[_Server, str]]:
    server = _Server(root, plan or {}, honor_range)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}/data"
    finally:
        server.shutdown()
        server.server_close()


def make_files(root: Path, sizes: dict[str, int], seed: int = 0) -> dict[str, str]:
    """Write random files under ``root/data`` and return their manifest (hashed by hashlib)."""
    rng = np.random.default_rng(seed)
    manifest = {}
    for rel, size in sizes.items():
        body = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        path = root / "data" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        manifest[rel] = hashlib.sha256(body).hexdigest()
    return manifest


def fetch(manifest: dict[str, str], dest: Path, base_url: str, **kwargs: object) -> None:
    options = {"retries": 3, "timeout": 5.0, "backoff": 0.01, "progress": False, **kwargs}
    fetch_dataset(manifest, dest, base_url=base_url, **options)


def assert_same_files(manifest: dict[str, str], dest: Path, source: Path) -> None:
    for rel, expected in manifest.items():
        got = (dest / rel).read_bytes()
        assert got == (source / rel).read_bytes()
        assert hashlib.sha256(got).hexdigest() == expected
    assert not list(dest.rglob("*.part"))


FILES = {"a.bin": 50_000, "sub/b.bin": 120_000}


# --- manifest ---------------------------------------------------------------------------


def test_repo_manifest_lists_the_isbi_layout() -> None:
    manifest = read_manifest(REPO_MANIFEST)
    expected = {
        f"{kind}/{i}.png" for kind in ("train/image", "train/label", "test") for i in range(30)
    }
    assert set(manifest) == expected
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in manifest.values())


@needs_isbi
def test_repo_manifest_agrees_with_data_checksums() -> None:
    reference = {}
    for line in (ISBI / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        reference[name.removeprefix("./")] = digest
    assert read_manifest(REPO_MANIFEST) == reference


def test_read_manifest_accepts_sha256sum_output(tmp_path: Path) -> None:
    digest = "ab" * 32
    path = tmp_path / "m.sha256"
    path.write_text(f"# comment\n\n{digest.upper()}  ./x/y.png\n{digest} *z.png\n")
    assert read_manifest(path) == {"x/y.png": digest, "z.png": digest}


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("abc  x.png", "64 hex"),
        ("a" * 64, "64 hex"),
        ("g" * 64 + "  x.png", "64 hex"),
        ("a" * 64 + "  ../x.png", "stay inside"),
        ("a" * 64 + "  /etc/passwd", "stay inside"),
    ],
)
def test_read_manifest_rejects_bad_lines(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "m.sha256"
    path.write_text("b" * 64 + "  ok.png\n" + line + "\n")
    with pytest.raises(ValueError, match=problem) as info:
        read_manifest(path)
    assert f"{path}:2" in str(info.value)


def test_read_manifest_rejects_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "m.sha256"
    path.write_text("a" * 64 + "  x.png\n" + "b" * 64 + "  ./x.png\n")
    with pytest.raises(ValueError, match="duplicate"):
        read_manifest(path)


# --- HTTP -------------------------------------------------------------------------------


@needs_isbi
def test_clean_fetch_of_real_isbi_files(tmp_path: Path) -> None:
    chosen = ["train/image/0.png", "train/label/0.png", "test/29.png"]
    manifest = {rel: read_manifest(REPO_MANIFEST)[rel] for rel in chosen}
    for rel in chosen:
        (tmp_path / "data" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ISBI / rel, tmp_path / "data" / rel)
    with serve(tmp_path / "data") as (server, url):
        fetch(manifest, tmp_path / "out", url)
    assert_same_files(manifest, tmp_path / "out", ISBI)
    assert [rel for rel, _ in server.requests] == chosen


def test_dropped_connection_is_resumed_with_range(tmp_path: Path) -> None:
    manifest = make_files(tmp_path, FILES)
    with serve(tmp_path / "data", {"sub/b.bin": ["drop"]}) as (server, url):
        fetch(manifest, tmp_path / "out", url)
    assert_same_files(manifest, tmp_path / "out", tmp_path / "data")
    ranges = [header for rel, header in server.requests if rel == "sub/b.bin"]
    assert ranges == [None, f"bytes={FILES['sub/b.bin'] // 2}-"]


def test_server_ignoring_range_restarts_the_file(tmp_path: Path) -> None:
    manifest = make_files(tmp_path, FILES)
    with serve(tmp_path / "data", {"a.bin": ["drop"]}, honor_range=False) as (server, url):
        fetch(manifest, tmp_path / "out", url)
    assert_same_files(manifest, tmp_path / "out", tmp_path / "data")
    assert [rel for rel, _ in server.requests].count("a.bin") == 2


def test_stalled_transfer_times_out_and_resumes(tmp_path: Path) -> None:
    manifest = make_files(tmp_path, {"a.bin": 40_000})
    with serve(tmp_path / "data", {"a.bin": ["stall"]}) as (server, url):
        fetch(manifest, tmp_path / "out", url, timeout=0.2)
    assert_same_files(manifest, tmp_path / "out", tmp_path / "data")
    assert server.requests[1] == ("a.bin", "bytes=20000-")


def test_leftover_part_file_is_resumed(tmp_path: Path) -> None:
    manifest = make_files(tmp_path, {"a.bin": 30_000})
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.bin.part").write_bytes((tmp_path / "data" / "a.bin").read_bytes()[:1000])
    with serve(tmp_path / "data") as (server, url):
        fetch(manifest, out, url)
    assert_same_files(manifest, out, tmp_path / "data")
    assert server.requests == [("a.bin", "bytes=1000-")]


@pytest.mark.parametrize(("extra", "requests"), [(b"", 1), (b"junk", 2)])
def test_part_file_at_or_past_full_length(tmp_path: Path, extra: bytes, requests: int) -> None:
    """A complete .part (crash before the rename) gets 416; the hash then decides."""
    manifest = make_files(tmp_path, {"a.bin": 30_000})
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.bin.part").write_bytes((tmp_path / "data" / "a.bin").read_bytes() + extra)
    with serve(tmp_path / "data") as (server, url):
        fetch(manifest, out, url)
    assert_same_files(manifest, out, tmp_path / "data")
    assert len(server.requests) == requests
    assert server.requests[0][1] == f"bytes={30_000 + len(extra)}-"


def test_corrupted_file_raises_and_leaves_nothing(tmp_path: Path) -> None:
    manifest = make_files(tmp_path, {"a.bin": 20_000})
    actual = hashlib.sha256(
        bytes([(tmp_path / "data" / "a.bin").read_bytes()[0] ^ 0xFF])
        + (tmp_path / "data" / "a.bin").read_bytes()[1:]
    ).hexdigest()
    with (
        serve(tmp_path / "data", {"a.bin": ["corrupt"] * 10}) as (server, url),
        pytest.raises(DownloadError) as info,
    ):
        fetch(manifest, tmp_path / "out", url)
    message = str(info.value)
    assert "a.bin" in message and manifest["a.bin"] in message and actual in message
    assert not (tmp_path / "out" / "a.bin").exists()
    assert not (tmp_path / "out" / "a.bin.part").exists()
    assert len(server.requests) == 2  # one fresh retry after the first mismatch


def test_corruption_once_is_fixed_by_one_fresh_download(tmp_path: Path) -> None:
    manifest = make_files(tmp_path, {"a.bin": 20_000})
    with serve(tmp_path / "data", {"a.bin": ["corrupt"]}) as (server, url):
        fetch(manifest, tmp_path / "out", url)
    assert_same_files(manifest, tmp_path / "out", tmp_path / "data")
    assert server.requests == [("a.bin", None), ("a.bin", None)]


def test_404_fails_fast_with_the_url(tmp_path: Path) -> None:
    manifest = {"missing.bin": "0" * 64}
    with serve(tmp_path / "data") as (server, url), pytest.raises(DownloadError) as info:
        fetch(manifest, tmp_path / "out", url, backoff=5.0)
    assert f"{url}/missing.bin" in str(info.value) and "404" in str(info.value)
    assert len(server.requests) == 1
    assert not list((tmp_path / "out").rglob("*"))


def test_500_then_ok_succeeds_after_a_retry(tmp_path: Path) -> None:
    manifest = make_files(tmp_path, FILES)
    with serve(tmp_path / "data", {"a.bin": ["500"]}) as (server, url):
        fetch(manifest, tmp_path / "out", url)
    assert_same_files(manifest, tmp_path / "out", tmp_path / "data")
    assert [rel for rel, _ in server.requests] == ["a.bin", "a.bin", "sub/b.bin"]


def test_persistent_500_gives_up_after_the_retries(tmp_path: Path) -> None:
    manifest = make_files(tmp_path, {"a.bin": 1000})
    with (
        serve(tmp_path / "data", {"a.bin": ["500"] * 10}) as (server, url),
        pytest.raises(DownloadError, match="500"),
    ):
        fetch(manifest, tmp_path / "out", url, retries=2)
    assert len(server.requests) == 3
    assert not (tmp_path / "out" / "a.bin").exists()


def test_refused_connection_is_retried_then_reported(tmp_path: Path) -> None:
    with serve(tmp_path / "data") as (_, url):
        pass  # the port is closed again once the server is gone
    started = time.monotonic()
    with pytest.raises(DownloadError, match=f"{url}/x.bin: giving up after 3 attempts"):
        fetch({"x.bin": "0" * 64}, tmp_path / "out", url, retries=2, backoff=0.05)
    assert time.monotonic() - started >= 0.05 + 0.1  # backoff 0.05 then 0.1 seconds


def test_rerun_with_all_files_present_makes_no_request(tmp_path: Path) -> None:
    manifest = make_files(tmp_path, FILES)
    with serve(tmp_path / "data") as (server, url):
        fetch(manifest, tmp_path / "out", url)
        server.requests.clear()
        fetch(manifest, tmp_path / "out", url)
        assert server.requests == []


def test_wrong_file_in_place_is_replaced(tmp_path: Path) -> None:
    manifest = make_files(tmp_path, FILES)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.bin").write_bytes(b"stale")
    with serve(tmp_path / "data") as (server, url):
        fetch(manifest, tmp_path / "out", url)
    assert_same_files(manifest, tmp_path / "out", tmp_path / "data")
    assert len(server.requests) == 2


# --- mirror and arguments ---------------------------------------------------------------


def test_mirror_copy_verifies_and_skips_present_files(tmp_path: Path) -> None:
    manifest = make_files(tmp_path, FILES)
    fetch_dataset(manifest, tmp_path / "out", mirror=tmp_path / "data", progress=False)
    assert_same_files(manifest, tmp_path / "out", tmp_path / "data")
    (tmp_path / "data" / "a.bin").unlink()  # present in dest, so the mirror is not needed
    fetch_dataset(manifest, tmp_path / "out", mirror=tmp_path / "data", progress=False)


def test_mirror_with_wrong_hash_is_refused(tmp_path: Path) -> None:
    manifest = make_files(tmp_path, FILES)
    (tmp_path / "data" / "sub" / "b.bin").write_bytes(b"tampered")
    with pytest.raises(DownloadError, match=r"b\.bin") as info:
        fetch_dataset(manifest, tmp_path / "out", mirror=tmp_path / "data", progress=False)
    assert hashlib.sha256(b"tampered").hexdigest() in str(info.value)
    assert not (tmp_path / "out" / "sub" / "b.bin").exists()
    assert not list((tmp_path / "out").rglob("*.part"))


def test_mirror_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="missing"):
        fetch_dataset({"x.bin": "0" * 64}, tmp_path / "out", mirror=tmp_path, progress=False)


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({}, "exactly one"),
        ({"base_url": "http://x", "mirror": Path(".")}, "exactly one"),
        ({"base_url": "http://x", "retries": -1}, "retries"),
        ({"base_url": "http://x", "timeout": 0}, "timeout"),
        ({"base_url": "http://x", "backoff": -1}, "backoff"),
    ],
)
def test_bad_arguments_are_refused(tmp_path: Path, kwargs: dict, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        fetch_dataset({}, tmp_path, **kwargs)


@pytest.mark.parametrize(("rel", "digest"), [("../x", "0" * 64), ("x", "nothex")])
def test_bad_manifest_mapping_is_refused(tmp_path: Path, rel: str, digest: str) -> None:
    with pytest.raises(ValueError, match="manifest"):
        fetch_dataset({rel: digest}, tmp_path, mirror=tmp_path, progress=False)
