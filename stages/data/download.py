"""Fetching and unpacking data archives without trusting the network or the archive.

Downloads go to ``<name>.part`` and continue from its length with an HTTP Range request after
an interruption (a server that ignores Range restarts the file); transient failures are retried
with exponential backoff. The file gets its final name only after its MD5 checks out, so an
archive under its final name is always complete: finding one with the right checksum (or any
one, when no checksum is configured) costs no request. Extraction refuses any member that would
land outside the target folder and unpacks into a temporary sibling renamed when complete.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import Mapping

from stages.errors import InputError
from stages.runtime.progress import progress_bar

CHUNK = 1 << 20
# HTTP statuses worth another try; any other HTTP error (404, 403, ...) fails at once.
RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}


class DownloadError(RuntimeError):
    pass


class UnsafeArchiveError(ValueError):
    pass


def md5_of(path: str | os.PathLike) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def archive_filename(url: str) -> str:
    """The file name a URL's path ends with (query strings such as ``?dl=1`` dropped)."""
    name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    if not name:
        raise InputError(f"{url}: URL path has no file name")
    return name


def _transfer(url: str, part: Path, timeout: float, progress: bool) -> None:
    """Append the rest of ``url`` to ``part``; raise if the server stops early."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # Range beyond the end: the part is already whole if the server's total says so.
            total = (exc.headers.get("Content-Range") or "").rpartition("/")[2]
            if total.isdigit() and int(total) == offset:
                return
            part.unlink()
        raise
    with response:
        if offset and response.status != 206:
            offset = 0  # Range ignored: the body is the whole file
        elif offset and not (response.headers.get("Content-Range") or "").startswith(f"bytes {offset}-"):
            part.unlink()
            raise http.client.HTTPException(f"{url}: server resumed at the wrong offset "
                                            f"({response.headers.get('Content-Range')}); starting over")
        length = response.headers.get("Content-Length")
        expected = offset + int(length) if length is not None else None
        with open(part, "ab" if offset else "wb") as f, progress_bar(
                total=expected, initial=offset, unit="B", unit_scale=True,
                desc=part.name, disable=not progress) as bar:
            for block in iter(lambda: response.read(CHUNK), b""):
                f.write(block)
                bar.update(len(block))
    received = part.stat().st_size
    if expected is not None and received < expected:
        raise http.client.IncompleteRead(b"", expected - received)


def fetch(url: str, dest: str | os.PathLike, md5: str | None, retries: int, *,
          backoff_s: float = 2.0, timeout_s: float = 60.0, progress: bool = True) -> Path:
    """Make ``dest`` a complete, checksum-verified copy of ``url``; return its path."""
    dest = Path(dest)
    if dest.exists():
        if md5 is None:
            return dest
        actual = md5_of(dest)
        if actual == md5:
            return dest
        raise DownloadError(f"{dest}: MD5 {actual} does not match the configured {md5} "
                            "(delete the file to download it again, or fix the checksum)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, timeout_s, progress)
            break
        except urllib.error.HTTPError as exc:
            if exc.code not in RETRYABLE_STATUS and exc.code != 416:
                raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
            failure: Exception = exc
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            failure = exc
        if attempt == retries:
            raise DownloadError(f"{url}: download failed after {retries + 1} attempt(s) ({failure}); "
                                f"the partial file {part} is kept and resumed next time") from failure
        time.sleep(backoff_s * 2 ** attempt)
    if md5 is not None:
        actual = md5_of(part)
        if actual != md5:
            part.unlink()
            raise DownloadError(f"{url}: MD5 of the download is {actual}, expected {md5}; "
                                f"the file was deleted ({dest})")
    os.replace(part, dest)
    return dest


def _member_target(target: Path, name: str, archive: Path) -> Path:
    """Where a member lands, refusing absolute names, drive letters and ``..``."""
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or (pure.parts and ":" in pure.parts[0]):
        raise UnsafeArchiveError(f"{archive}: member {name!r} would be written outside the extraction folder")
    resolved = (target / pure).resolve()
    if resolved != target.resolve() and target.resolve() not in resolved.parents:
        raise UnsafeArchiveError(f"{archive}: member {name!r} would be written outside the extraction folder")
    return resolved


def _extract_into(archive: Path, target: Path) -> None:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _member_target(target, info.filename, archive)
            zf.extractall(target)
        return
    if not tarfile.is_tarfile(archive):
        raise InputError(f"{archive}: neither a tar nor a zip archive")
    with tarfile.open(archive) as tf:
        for member in tf.getmembers():
            _member_target(target, member.name, archive)
        try:
            tf.extractall(target, filter="data")
        except tarfile.FilterError as exc:
            raise UnsafeArchiveError(f"{archive}: {exc}") from exc


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Unpack ``archive`` into ``target`` (skipped when ``target`` exists: it is only ever complete)."""
    archive, target = Path(archive), Path(target)
    if target.exists():
        return target
    partial = target.with_name(f".{target.name}.partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    try:
        _extract_into(archive, partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    os.replace(partial, target)
    return target


def fetch_and_extract(archives: Mapping[str, Mapping[str, str | None]], download_dir: str | os.PathLike,
                      target: str | os.PathLike, retries: int, progress: bool = True) -> dict[str, Path]:
    """Fetch every ``{name: {"url", "md5"}}`` archive into ``download_dir`` and unpack it into
    ``target/<name>``; name -> that folder. Each step is skipped when already complete."""
    extracted = {}
    for name, spec in archives.items():
        url = str(spec["url"])
        archive = fetch(url, Path(download_dir) / archive_filename(url), spec.get("md5"), retries,
                        progress=progress)
        extracted[name] = safe_extract(archive, Path(target) / name)
    return extracted
