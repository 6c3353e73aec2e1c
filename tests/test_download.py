"""Downloads against a real HTTP server on 127.0.0.1 (with Range support written here), and
extraction of archives whose members try to leave the target folder."""
from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from stages.data.download import DownloadError, UnsafeArchiveError, archive_filename, fetch, safe_extract

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, not a multiple of the client's read size
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


class RangeHandler(BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range: bytes=N-`` unless told not to; can cut a
    response off halfway (``server.drops_left`` times) after announcing its full length."""

    def do_GET(self) -> None:
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start, status = 0, 200
        requested = self.headers.get("Range")
        if requested and srv.honour_range:
            start = int(requested.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.drops_left > 0:
            srv.drops_left -= 1
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    srv.files = {"/data/archive.tar": PAYLOAD}
    srv.requests = []
    srv.drops_left = 0
    srv.honour_range = True
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/data/archive.tar"
    yield srv
    srv.shutdown()
    srv.server_close()


def _fetch(server, dest: Path, md5: str | None = PAYLOAD_MD5, retries: int = 3) -> Path:
    return fetch(server.url, dest, md5, retries, backoff_s=0.0, timeout_s=10.0, progress=False)


def test_plain_download(server, tmp_path: Path) -> None:
    dest = _fetch(server, tmp_path / "archive.tar")
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/data/archive.tar", None)]
    assert not (tmp_path / "archive.tar.part").exists()


def test_checksum_mismatch_leaves_nothing_that_looks_complete(server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="MD5"):
        _fetch(server, tmp_path / "archive.tar", md5="0" * 32)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_transfer_resumes_with_range(server, tmp_path: Path) -> None:
    server.drops_left = 1
    dest = _fetch(server, tmp_path / "archive.tar")
    assert dest.read_bytes() == PAYLOAD
    assert len(server.requests) == 2
    assert server.requests[1][1] == f"bytes={len(PAYLOAD) // 2}-"


def test_server_ignoring_range_restarts_the_file(server, tmp_path: Path) -> None:
    server.drops_left, server.honour_range = 1, False
    assert _fetch(server, tmp_path / "archive.tar").read_bytes() == PAYLOAD


def test_gave_up_download_keeps_part_and_resumes_next_run(server, tmp_path: Path) -> None:
    server.drops_left = 5
    with pytest.raises(DownloadError, match="2 attempt"):
        _fetch(server, tmp_path / "archive.tar", retries=1)
    part = tmp_path / "archive.tar.part"
    assert not (tmp_path / "archive.tar").exists()
    assert 0 < part.stat().st_size < len(PAYLOAD)
    server.drops_left = 0
    assert _fetch(server, tmp_path / "archive.tar").read_bytes() == PAYLOAD


def test_complete_part_is_finished_without_a_body(server, tmp_path: Path) -> None:
    (tmp_path / "archive.tar.part").write_bytes(PAYLOAD)
    assert _fetch(server, tmp_path / "archive.tar").read_bytes() == PAYLOAD
    assert [status for _, status in server.requests] == [f"bytes={len(PAYLOAD)}-"]


def test_present_archive_with_good_checksum_needs_no_request(server, tmp_path: Path) -> None:
    (tmp_path / "archive.tar").write_bytes(PAYLOAD)
    assert _fetch(server, tmp_path / "archive.tar").read_bytes() == PAYLOAD
    assert _fetch(server, tmp_path / "archive.tar", md5=None).read_bytes() == PAYLOAD
    assert server.requests == []


def test_present_archive_with_bad_checksum_is_an_error(server, tmp_path: Path) -> None:
    (tmp_path / "archive.tar").write_bytes(b"not the archive")
    with pytest.raises(DownloadError, match="archive.tar"):
        _fetch(server, tmp_path / "archive.tar")
    assert server.requests == []


def test_missing_file_fails_without_retrying(server, tmp_path: Path) -> None:
    server.url = server.url.replace("archive.tar", "missing.tar")
    with pytest.raises(DownloadError, match="404"):
        _fetch(server, tmp_path / "missing.tar")
    assert len(server.requests) == 1


def test_archive_filename_drops_the_query() -> None:
    assert archive_filename("https://host/s/x/SegmentationClassAug.zip?dl=1") == "SegmentationClassAug.zip"
    with pytest.raises(ValueError):
        archive_filename("https://host/")


def _tar(path: Path, members: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w") as tf:
        for info in members:
            data = b"payload" if info.isfile() else None
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _zip(path: Path, names: list[str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name in names:
            zf.writestr(zipfile.ZipInfo(name), b"payload")
    return path


def test_good_archives_extract(tmp_path: Path) -> None:
    tar = _tar(tmp_path / "good.tar", [tarfile.TarInfo("VOCdevkit/VOC2012/a.txt")])
    zp = _zip(tmp_path / "good.zip", ["SegmentationClassAug/a.png"])
    assert (safe_extract(tar, tmp_path / "t") / "VOCdevkit/VOC2012/a.txt").read_bytes() == b"payload"
    assert (safe_extract(zp, tmp_path / "z") / "SegmentationClassAug/a.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.tar", "good.zip", "t", "z"]


@pytest.mark.parametrize("name", ["../evil.txt", "ok/../../evil.txt", "/tmp/evil_abs.txt"])
def test_tar_member_escaping_is_refused(tmp_path: Path, name: str) -> None:
    tar = _tar(tmp_path / "bad.tar", [tarfile.TarInfo("fine.txt"), tarfile.TarInfo(name)])
    target = tmp_path / "out" / "target"
    with pytest.raises(UnsafeArchiveError, match="outside"):
        safe_extract(tar, target)
    assert not target.exists() and not (tmp_path / "out" / "evil.txt").exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_tar_link_pointing_outside_is_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("inside/link")
    link.type, link.linkname = tarfile.SYMTYPE, "../../../outside"
    tar = _tar(tmp_path / "link.tar", [link])
    with pytest.raises(UnsafeArchiveError):
        safe_extract(tar, tmp_path / "target")
    assert not (tmp_path / "target").exists()


@pytest.mark.parametrize("name", ["../evil.txt", "a/../../evil.txt", "/evil_abs.txt", "C:/evil.txt"])
def test_zip_member_escaping_is_refused(tmp_path: Path, name: str) -> None:
    zp = _zip(tmp_path / "bad.zip", ["fine.txt", name])
    with pytest.raises(UnsafeArchiveError, match="outside"):
        safe_extract(zp, tmp_path / "target")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.zip"]


def test_not_an_archive_is_an_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"plain text, no archive")
    with pytest.raises(ValueError, match="neither a tar nor a zip"):
        safe_extract(junk, tmp_path / "target")
