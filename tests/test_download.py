"""stcvq.published.download against a local HTTP server on 127.0.0.1: resume, servers that ignore Range,
dropped connections, 404s, and the release table and cache folder."""

from __future__ import annotations

import fcntl
import http.server
import re
import threading

import numpy as np
import pytest

from stcvq.published.download import RELEASE_ASSETS, DownloadError, cache_dir, download, fetch_release, part_path

PAYLOAD = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()


class Server:
    """Serves ``files`` (URL path -> bytes), honouring ``Range: bytes=N-`` unless told not to.

    ``requests`` records (path, Range header, bytes sent) for every request; ``drop_after``
    closes the connection after that many body bytes of the next response."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.requests: list[tuple[str, str | None, int]] = []
        self.ignore_range = False
        self.drop_after: int | None = None
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = server.files.get(self.path)
                wanted = self.headers.get("Range")
                if body is None:
                    server.requests.append((self.path, wanted, 0))
                    self.send_error(404)
                    return
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", wanted or "")
                if match and not server.ignore_range:
                    start = int(match.group(1))
                    if start >= len(body):
                        server.requests.append((self.path, wanted, 0))
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                chunk = body[start:]
                if server.drop_after is not None:
                    chunk, server.drop_after = chunk[:server.drop_after], None
                self.wfile.write(chunk)
                server.requests.append((self.path, wanted, len(chunk)))

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = Server({"/ckpt.pth": PAYLOAD, "/init/ckpt-bfvr.pth": PAYLOAD[:1000]})
    yield srv
    srv.close()


def test_download_whole_file(server, tmp_path):
    dest = download(f"{server.base}/ckpt.pth", tmp_path / "sub" / "ckpt.pth", progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert not part_path(dest).exists()
    assert server.requests == [("/ckpt.pth", None, len(PAYLOAD))]


def test_partial_file_resumes_with_only_the_remaining_bytes(server, tmp_path):
    dest = tmp_path / "ckpt.pth"
    part_path(dest).write_bytes(PAYLOAD[:123_456])
    download(f"{server.base}/ckpt.pth", dest, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/ckpt.pth", "bytes=123456-", len(PAYLOAD) - 123_456)]


def test_server_that_ignores_range_restarts_from_zero(server, tmp_path):
    dest = tmp_path / "ckpt.pth"
    part_path(dest).write_bytes(b"x" * 5000)  # would corrupt the file if appended to
    server.ignore_range = True
    download(f"{server.base}/ckpt.pth", dest, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/ckpt.pth", "bytes=5000-", len(PAYLOAD))]


def test_dropped_connection_leaves_a_part_and_a_rerun_completes(server, tmp_path):
    dest = tmp_path / "ckpt.pth"
    server.drop_after = 100_000
    with pytest.raises(
        DownloadError, match=r"127\.0\.0\.1.*/ckpt\.pth.*got 100000 of 300000 bytes.*run again to resume"
    ):
        download(f"{server.base}/ckpt.pth", dest, progress=False)
    assert not dest.exists()
    assert part_path(dest).read_bytes() == PAYLOAD[:100_000]
    download(f"{server.base}/ckpt.pth", dest, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[-1] == ("/ckpt.pth", "bytes=100000-", 200_000)


def test_complete_part_gets_416_and_is_kept(server, tmp_path):
    dest = tmp_path / "ckpt.pth"
    part_path(dest).write_bytes(PAYLOAD)
    download(f"{server.base}/ckpt.pth", dest, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/ckpt.pth", f"bytes={len(PAYLOAD)}-", 0)]


def test_part_longer_than_the_file_starts_over(server, tmp_path):
    dest = tmp_path / "ckpt.pth"
    part_path(dest).write_bytes(PAYLOAD + b"stale tail")
    download(f"{server.base}/ckpt.pth", dest, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert [r[1] for r in server.requests] == [f"bytes={len(PAYLOAD) + 10}-", None]


def test_404_is_one_clear_line_and_writes_nothing(server, tmp_path):
    url = f"{server.base}/missing.pth"
    with pytest.raises(DownloadError) as err:
        download(url, tmp_path / "missing.pth", progress=False)
    assert str(err.value) == f"{url}: download failed: HTTP 404 Not Found"
    assert list(tmp_path.iterdir()) == []


def test_unreachable_host_names_the_url(tmp_path):
    srv = Server({})
    url = f"{srv.base}/ckpt.pth"
    srv.close()  # nothing listens on that port any more
    with pytest.raises(DownloadError, match=rf"^{re.escape(url)}: download failed: .*(refused|Connection)") as err:
        download(url, tmp_path / "ckpt.pth", progress=False, timeout=5)
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_second_writer_of_the_same_part_is_refused(server, tmp_path):
    dest = tmp_path / "ckpt.pth"
    with open(part_path(dest), "ab") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(DownloadError, match="another process is downloading"):
            download(f"{server.base}/ckpt.pth", dest, progress=False)
    assert server.requests == [] and not dest.exists()


def test_fetch_release_downloads_once_into_the_cache(server, tmp_path):
    path = fetch_release("bfvr", tmp_path, base_url=f"{server.base}/init/", progress=False)
    assert path == tmp_path / "ckpt-bfvr.pth" and path.read_bytes() == PAYLOAD[:1000]
    assert fetch_release("bfvr", tmp_path, base_url=f"{server.base}/init", progress=False) == path
    assert len(server.requests) == 1  # the second call found the cached file
    with pytest.raises(ValueError, match="denoise.*known"):
        fetch_release("denoise", tmp_path)


def test_release_table_and_cache_folder(monkeypatch, tmp_path):
    assert {t: a.file for t, a in RELEASE_ASSETS.items()} == {
        "bfvr": "ckpt-bfvr.pth", "deflicker": "ckpt-defilcker.pth", "deflicker-pixel": "ckpt-deflickersd.pth"}
    assert RELEASE_ASSETS["deflicker"].url() == "https://github.com/Dixin-Lab/BFVR-STC/releases/download/init/ckpt-defilcker.pth"
    monkeypatch.setenv("STCVQ_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("STCVQ_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "stcvq"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "stcvq"
