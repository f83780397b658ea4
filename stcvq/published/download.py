"""The paper's published Stage II checkpoints: where they are, and a resumable download.

    path = fetch_release("bfvr")              # ~/.cache/stcvq/ckpt-bfvr.pth, downloaded once
    path = download(url, Path("x.pth"))       # any URL: resumes x.pth.part, renames when complete

A download streams into ``<dest>.part`` and renames it to ``dest`` only when every byte is
there (checked against Content-Length when the server gives one), so ``dest`` is always
complete. A rerun after a dropped connection asks for the missing bytes only (HTTP Range);
a server that ignores Range (200 instead of 206) gets the whole file again from byte 0.
Only the standard library's urllib is used.
"""

from __future__ import annotations

import dataclasses
import fcntl
import http.client
import logging
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

log = logging.getLogger(__name__)

RELEASE_BASE_URL = "https://github.com/Dixin-Lab/BFVR-STC/releases/download/init/"
USER_AGENT = "stcvq-download"


@dataclasses.dataclass(frozen=True)
class ReleaseAsset:
    task: str
    file: str

    def url(self, base_url: str = RELEASE_BASE_URL) -> str:
        return base_url.rstrip("/") + "/" + self.file


# ckpt-defilcker.pth is spelled that way in the release
RELEASE_ASSETS: dict[str, ReleaseAsset] = {
    asset.task: asset
    for asset in (
        ReleaseAsset("bfvr", "ckpt-bfvr.pth"),
        ReleaseAsset("deflicker", "ckpt-defilcker.pth"),
        ReleaseAsset("deflicker-pixel", "ckpt-deflickersd.pth"),
    )
}


class DownloadError(RuntimeError):
    """A download failed; the one-line message names the URL and what is left on disk."""


def cache_dir() -> Path:
    """``$STCVQ_CACHE``, else ``$XDG_CACHE_HOME/stcvq``, else ``~/.cache/stcvq``."""
    if os.environ.get("STCVQ_CACHE"):
        return Path(os.environ["STCVQ_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "stcvq"
    return Path.home() / ".cache" / "stcvq"


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def fetch_release(task: str, cache: Path | None = None, *, base_url: str = RELEASE_BASE_URL,
                  progress: bool = True) -> Path:
    """The cached release checkpoint of ``task``, downloaded first if it is not there yet."""
    if task not in RELEASE_ASSETS:
        raise ValueError(f"no published checkpoint for task {task!r}; known: {sorted(RELEASE_ASSETS)}")
    asset = RELEASE_ASSETS[task]
    dest = Path(cache if cache is not None else cache_dir()) / asset.file
    if dest.is_file():
        log.info("%s: cached, not downloaded again", dest)
        return dest
    return download(asset.url(base_url), dest, progress=progress)


def download(url: str, dest: str | os.PathLike, *, timeout: float = 60.0, chunk_size: int = 1 << 20,
             progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` (replacing it), resuming ``<dest>.part`` when a previous run
    left one; :func:`fetch_release` is the entry point that reuses a cached file.

    ``timeout`` is per socket operation (connect, each read), not for the whole file."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    with open(part, "ab") as out:
        try:
            # one writer per .part: a second process would interleave its bytes with ours
            fcntl.flock(out.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DownloadError(f"{url}: another process is downloading into {part}") from None
        try:
            _fetch_into(url, out, part, timeout=timeout, chunk_size=chunk_size, progress=progress)
        except BaseException:
            if out.tell() == 0:  # nothing to resume from: leave no empty .part behind
                part.unlink(missing_ok=True)
            raise
        out.flush()
        os.fsync(out.fileno())
        os.replace(part, dest)
    log.info("downloaded %s -> %s (%d bytes)", url, dest, dest.stat().st_size)
    return dest


def _fetch_into(url: str, out: BinaryIO, part: Path, *, timeout: float, chunk_size: int, progress: bool) -> None:
    offset = out.seek(0, os.SEEK_END)
    headers = {"User-Agent": USER_AGENT, **({"Range": f"bytes={offset}-"} if offset else {})}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            _resolve_416(url, out, part, offset, err.headers.get("Content-Range"))
            if out.tell():  # the .part was already complete
                return
            return _fetch_into(url, out, part, timeout=timeout, chunk_size=chunk_size, progress=progress)
        raise DownloadError(f"{url}: download failed: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        raise DownloadError(f"{url}: download failed: {_reason(err)}{_kept(part, offset)}") from None

    with response:
        start, total = _range_of(response, offset)
        if start != offset:
            log.warning("%s: the server ignored the range request (HTTP %d); downloading from byte 0",
                        url, response.status)
            out.truncate(0)
            out.seek(0)
        bar = tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=part.name.removesuffix(".part"), disable=not progress)
        try:
            while chunk := response.read(chunk_size):
                out.write(chunk)
                bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as err:
            out.flush()
            raise DownloadError(f"{url}: download failed: {_reason(err)}{_kept(part, out.tell())}") from None
        finally:
            bar.close()
    out.flush()
    if total is not None and out.tell() != total:
        raise DownloadError(f"{url}: download failed: got {out.tell()} of {total} bytes{_kept(part, out.tell())}")


def _range_of(response: http.client.HTTPResponse, offset: int) -> tuple[int, int | None]:
    """(first byte of the body, total size or None) from a 200 or 206 response."""
    length = response.headers.get("Content-Length")
    if response.status == 206:
        match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", response.headers.get("Content-Range") or "")
        if not match:
            raise DownloadError(f"{response.url}: download failed: 206 without a usable Content-Range "
                                f"({response.headers.get('Content-Range')!r})")
        start = int(match.group(1))
        if start != offset:
            raise DownloadError(f"{response.url}: download failed: asked for bytes from {offset}, "
                                f"got them from {start}")
        total = int(match.group(3)) if match.group(3) != "*" else None
        if total is None and length is not None:
            total = start + int(length)
        return start, total
    return 0, int(length) if length is not None else None


def _resolve_416(url: str, out: BinaryIO, part: Path, offset: int, content_range: str | None) -> None:
    """416: the .part starts at or past the end. Complete when its size is the file's; else it is
    not a prefix of this file (the file changed on the server), so start over."""
    match = re.fullmatch(r"\s*bytes\s+\*/(\d+)\s*", content_range or "")
    if match and int(match.group(1)) == offset:
        log.info("%s: %s already holds all %d bytes", url, part, offset)
        return
    log.warning("%s: %s (%d bytes) does not fit the file on the server (416, %s); downloading from byte 0",
                url, part, offset, content_range)
    out.truncate(0)
    out.seek(0)


def _reason(err: BaseException) -> str:
    if isinstance(err, urllib.error.URLError) and not isinstance(err, urllib.error.HTTPError):
        err = err.reason if isinstance(err.reason, BaseException) else err
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _kept(part: Path, size: int) -> str:
    return f"; {part} keeps {size} bytes, run again to resume" if size else ""
