"""Fetch a dataset described by a SHA-256 manifest, from a local mirror or over HTTP(S).

Every file is verified against the manifest before it appears under its final name, so a
crashed or interrupted run never leaves a file that later steps would trust by mistake.
Only the standard library does the transfer (urllib.request) to keep the workflow's
dependencies small.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from emseg.io import sha256_file
from emseg.progress import progress as progress_bar

__all__ = ["DownloadError", "fetch_dataset", "read_manifest"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 16


class DownloadError(RuntimeError):
    """A file could not be fetched or did not match its manifest hash."""


class _Transient(Exception):
    """A failure worth retrying (network trouble, 5xx, truncated body)."""


def read_manifest(path: Path) -> dict[str, str]:
    """Parse ``sha256sum``-style lines ("<sha256>  <relative path>") into path -> hash.

    Blank lines and ``#`` comments are ignored; a leading "./" or a binary-mode "*" before the
    path is accepted so the output of ``sha256sum`` can be used as is.
    """
    manifest: dict[str, str] = {}
    text = Path(path).read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parts = stripped.split(maxsplit=1)
        where = f"{path}:{number}"
        if len(parts) != 2 or not _SHA256.fullmatch(parts[0].lower()):
            raise ValueError(f"{where}: expected '<64 hex sha256>  <path>', got {line!r}")
        rel = _check_relpath(parts[1].removeprefix("*"), where)
        if rel in manifest:
            raise ValueError(f"{where}: duplicate entry for {rel!r}")
        manifest[rel] = parts[0].lower()
    return manifest


def _check_relpath(rel: str, where: str) -> str:
    """Normalise a manifest path and refuse anything that could escape the destination."""
    pure = PurePosixPath(rel.strip())
    if pure.is_absolute() or ".." in pure.parts or str(pure) in ("", "."):
        raise ValueError(f"{where}: path {rel!r} must be relative and stay inside the dataset")
    return str(pure)


def fetch_dataset(
    manifest: Mapping[str, str],
    dest: Path,
    *,
    base_url: str | None = None,
    mirror: Path | None = None,
    retries: int = 5,
    timeout: float = 30.0,
    backoff: float = 1.0,
    progress: bool = True,
) -> None:
    """Make ``dest/<path>`` hold every manifest file with its expected hash.

    Files already present with the right hash are left alone, so reruns cost no transfer.
    ``retries`` is the number of extra attempts after a transient failure; the wait before
    retry k (k = 0, 1, ...) is ``backoff * 2**k`` seconds.
    """
    if (base_url is None) == (mirror is None):
        raise ValueError("fetch_dataset: give exactly one of base_url or mirror")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0, got {timeout}")
    if backoff < 0:
        raise ValueError(f"backoff must be >= 0, got {backoff}")
    entries = {_check_relpath(rel, "manifest"): _check_hash(rel, h) for rel, h in manifest.items()}
    dest = Path(dest)
    files = progress_bar(entries.items(), desc="fetch", unit="file", disable=not progress)
    for rel, expected in files:
        final = dest / rel
        if final.is_file() and sha256_file(final) == expected:
            continue
        final.parent.mkdir(parents=True, exist_ok=True)
        if base_url is not None:
            url = base_url.rstrip("/") + "/" + urllib.parse.quote(rel)
            _download(url, final, expected, retries=retries, timeout=timeout, backoff=backoff)
        else:
            _copy_from_mirror(Path(mirror) / rel, final, expected)


def _check_hash(rel: str, expected: str) -> str:
    """Refuse manifest hashes that could never match, before any transfer starts."""
    if not _SHA256.fullmatch(expected.lower()):
        raise ValueError(f"manifest: hash for {rel!r} is not a 64-digit hex sha256: {expected!r}")
    return expected.lower()


def _part_path(final: Path) -> Path:
    return final.with_name(final.name + ".part")


def _copy_from_mirror(source: Path, final: Path, expected: str) -> None:
    """Copy one file from a local mirror; a wrong hash there is a broken mirror, not bad luck."""
    if not source.is_file():
        raise DownloadError(f"mirror file {source} is missing")
    part = _part_path(final)
    shutil.copyfile(source, part)
    actual = sha256_file(part)
    if actual != expected:
        part.unlink()
        raise DownloadError(f"mirror file {source}: sha256 {actual}, expected {expected}")
    os.replace(part, final)


def _download(
    url: str, final: Path, expected: str, *, retries: int, timeout: float, backoff: float
) -> None:
    """Download with resume and retries; rename into place only after the hash verifies."""
    part = _part_path(final)
    failures = 0
    restarted_after_mismatch = False
    while True:
        try:
            _transfer(url, part, timeout)
        except _Transient as error:
            if failures >= retries:
                message = f"{url}: giving up after {failures + 1} attempts: {error}"
                raise DownloadError(message) from error
            time.sleep(backoff * 2**failures)
            failures += 1
            continue
        actual = sha256_file(part)
        if actual == expected:
            os.replace(part, final)
            return
        part.unlink()
        if restarted_after_mismatch:
            raise DownloadError(f"{final.name} from {url}: sha256 {actual}, expected {expected}")
        restarted_after_mismatch = True


def _transfer(url: str, part: Path, timeout: float) -> None:
    """One HTTP attempt that completes ``part``, resuming from its current size if possible.

    Raises _Transient for failures worth retrying and DownloadError for the rest.
    """
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            start = _resume_offset(response, offset, part)
            _write_body(response, part, start)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            # The part already holds the whole body (or more): let the hash decide; a bad
            # one is deleted by the caller and fetched again from scratch.
            return
        if error.code >= 500:
            raise _Transient(f"HTTP {error.code} {error.reason}") from error
        raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from error
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        raise _Transient(f"{type(error).__name__}: {error}") from error


def _resume_offset(response: http.client.HTTPResponse, offset: int, part: Path) -> int:
    """Where the body starts in the file: ``offset`` for a matching 206, else 0 (restart)."""
    if response.status != 206:
        return 0
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    if match is None or int(match.group(1)) != offset:
        part.unlink()  # the next attempt starts from scratch instead of asking again
        raise _Transient(f"unusable Content-Range {response.headers.get('Content-Range')!r}")
    return offset


def _write_body(response: http.client.HTTPResponse, part: Path, start: int) -> None:
    """Stream the body into ``part`` from byte ``start``; a short body is a transient error."""
    length = response.headers.get("Content-Length")
    received = 0
    with open(part, "r+b" if start else "wb") as handle:
        handle.seek(start)
        handle.truncate()
        while chunk := response.read1(_CHUNK):
            handle.write(chunk)
            received += len(chunk)
    if length is not None and received < int(length):
        raise _Transient(f"truncated body: {received} of {length} bytes")
