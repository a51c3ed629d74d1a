"""Stage 6, the model's pretrained weights: downloaded once, verified, kept in one cache folder.

:func:`fetch` turns a ``model.weights`` URL (``http://``, ``https://`` or ``detectron2://``) into
a verified local file:

* ``detectron2://X`` (and every URL under detectron2's own base) is read from
  ``$DETLIT_WEIGHTS_URL`` when that is set (a mirror: an internal server holding the model zoo's
  files under the same paths), else from https://dl.fbaipublicfiles.com/detectron2/;
* files are kept in ``$DETLIT_WEIGHTS_DIR`` (default ``$DETLIT_CACHE_DIR/weights``, see
  :func:`detlit.data.headers.cache_dir`), detectron2's under ``detectron2/<its path>``, others
  under ``<host>/<path>``; a cached file is used without any network call;
* a download goes to ``<file>.part`` and is renamed into place only when it is whole: its size is
  the one the server announced, and it is not an HTML page; a broken connection is resumed where
  it stopped (an HTTP Range request; a server that ignores Range sends the file again from its
  start), within one run and in the next one, which finds the partial file;
* detectron2 publishes no checksums (the six hex digits in its file names are a commit, not a
  hash), so the sha256 of each download is recorded beside it (``<file>.sha256``) and checked at
  every later use; a URL may pin the sha256 itself, as pip does (``...pkl#sha256=<64 hex digits>``);
* a response that announces, or sends, more than :data:`~detlit.common.ranges.MAX_WEIGHTS_DOWNLOAD`
  bytes is refused; each connection and read waits at most :data:`TIMEOUT_S` seconds.

Every failure is one :class:`~detlit.errors.WeightsError` sentence naming the URL; without a
network, it says which file to download and where to place it. Processes that ask for one file at
once (the ranks of a DDP run) take turns on a lock beside it: the first downloads, the others find
it cached. The file is then read by the safe readers of :mod:`detlit.model.weights`.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from detlit import __version__
from detlit.common.outputs import write_text
from detlit.common.ranges import MAX_WEIGHTS_DOWNLOAD
from detlit.data.headers import cache_dir
from detlit.errors import ConfigError, WeightsError

log = logging.getLogger(__name__)

DETECTRON2_SCHEME = "detectron2://"
DETECTRON2_URL = "https://dl.fbaipublicfiles.com/detectron2/"
REMOTE_PREFIXES = ("http://", "https://", DETECTRON2_SCHEME)
MIRROR_ENV = "DETLIT_WEIGHTS_URL"
FOLDER_ENV = "DETLIT_WEIGHTS_DIR"
TIMEOUT_S = 60.0
"""Seconds a connection, and each read from it, may wait for the server."""
ATTEMPTS = 3
"""Connections tried per download: a broken one is resumed where it stopped, twice at most."""
CHUNK = 2**20
PROGRESS_STEP = 0.1  # a progress line at every tenth of the file ...
PROGRESS_S = 10.0  # ... or every 10 seconds, whichever comes first
SHA256 = re.compile(r"sha256=([0-9a-fA-F]{64})")
HTML_STARTS = (b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")
MB = 1e6
# What a broken or stalled connection raises while the body is read (timeouts and resets are OSErrors).
BROKEN = (http.client.HTTPException, OSError)


def is_remote(source: str) -> bool:
    """Whether ``model.weights`` names a download rather than a file."""
    return source.startswith(REMOTE_PREFIXES)


def weights_folder() -> Path:
    """The folder downloaded weights are kept in.

    Raises:
        ConfigError: ``DETLIT_CACHE_DIR=off`` and no ``DETLIT_WEIGHTS_DIR`` (one sentence).
    """
    configured = os.environ.get(FOLDER_ENV)
    if configured:
        return Path(configured).expanduser()
    folder = cache_dir()
    if folder is None:
        raise ConfigError(
            f"DETLIT_CACHE_DIR is off, and downloaded weights need a folder: set {FOLDER_ENV} to one, or download "
            "the file yourself and set model.weights to its path"
        )
    return folder / "weights"


def download_url(source: str) -> str:
    """The URL ``source`` is downloaded from: detectron2's files from the mirror when one is set."""
    url, _, _ = source.partition("#")
    relative = _detectron2_path(url)
    if relative is None:
        return url
    return _mirror().rstrip("/") + "/" + relative


def _mirror() -> str:
    """detectron2's base URL, or the mirror ``$DETLIT_WEIGHTS_URL`` names."""
    base = os.environ.get(MIRROR_ENV) or DETECTRON2_URL
    if not base.startswith(("http://", "https://")):
        raise ConfigError(
            f"{MIRROR_ENV} is {base!r}; give the http:// or https:// URL of a mirror of {DETECTRON2_URL} (the same "
            "paths below it), or unset it"
        )
    return base


def cache_file(source: str) -> Path:
    """Where the download of ``source`` is kept (the same file whichever mirror it came from)."""
    url, _, _ = source.partition("#")
    relative = _detectron2_path(url)
    if relative is not None:
        parts, query = ["detectron2", *relative.split("?", 1)[0].split("/")], ""
    else:
        parsed = urllib.parse.urlsplit(url)
        parts, query = [parsed.netloc, *parsed.path.split("/")], parsed.query
    names = [_safe_name(part) for part in parts if part]
    if len(names) < 2:
        raise WeightsError(f"model.weights {source} names no file; give the URL of a .pkl/.pth/.ckpt file")
    if query:  # the same path with another query is another file; the suffix stays the format's
        stem, dot, suffix = names[-1].rpartition(".")
        tag = hashlib.sha256(query.encode()).hexdigest()[:12]
        names[-1] = f"{stem}-{tag}.{suffix}" if dot else f"{suffix}-{tag}"
    return weights_folder().joinpath(*names)


def _detectron2_path(url: str) -> str | None:
    """The path of a detectron2 model-zoo file below detectron2's base URL, or None."""
    for prefix in (DETECTRON2_SCHEME, DETECTRON2_URL):
        if url.startswith(prefix):
            return url[len(prefix) :].lstrip("/")
    return None


def _safe_name(part: str) -> str:
    """One path component, kept inside the cache folder whatever the URL says."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", urllib.parse.unquote(part))
    return "_" if name in (".", "..") else name[:200]


def fetch(source: str, limit: int = MAX_WEIGHTS_DOWNLOAD, timeout: float = TIMEOUT_S) -> Path:
    """The verified local file of the URL ``source``, downloaded only when the cache lacks it.

    Raises:
        WeightsError: the server cannot be reached, answers with an error or a page, sends a file
            of another size or more than ``limit`` bytes, or the cached file changed (one sentence).
    """
    target = cache_file(source)
    pinned = _pinned(source)
    if target.is_file():  # no network, and no lock, for a file already there
        return _verified(target, source, pinned)
    url = download_url(source)
    with _turn(target):
        if target.is_file():  # another process downloaded it meanwhile
            return _verified(target, source, pinned)
        _download(url, source, target, limit, timeout)
        digest = _sha256(target.with_name(target.name + ".part"))
        if pinned and digest != pinned:
            target.with_name(target.name + ".part").unlink()
            raise WeightsError(
                f"weights downloaded from {url} have sha256 {digest}, not the {pinned} that model.weights pins; "
                "check the URL and its sha256 (the download was deleted)"
            )
        # The record first: a download renamed into place always has its sha256 beside it.
        write_text(_record(target), f"{digest}  {target.name}\n")
        os.replace(target.with_name(target.name + ".part"), target)
        log.info("weights from %s kept in %s (sha256 %s)", url, target, digest)
        return target


def _pinned(source: str) -> str | None:
    """The sha256 a URL's fragment pins (``#sha256=...``), lower case, or None."""
    _, _, fragment = source.partition("#")
    found = SHA256.fullmatch(fragment) if fragment else None
    if fragment and found is None:
        raise WeightsError(
            f"model.weights {source} ends in #{fragment}; the only fragment detlit reads is #sha256= and the file's "
            "64 hexadecimal digits"
        )
    return found.group(1).lower() if found else None


def _record(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _verified(target: Path, source: str, pinned: str | None) -> Path:
    """``target`` when its sha256 is the one recorded (or pinned); the first use of a file placed
    there by hand records it."""
    digest = _sha256(target)
    record = _record(target)
    expected = pinned
    if expected is None and record.is_file():
        expected = record.read_text(encoding="utf-8", errors="replace").split(" ", 1)[0].strip().lower()
    if expected is None:
        write_text(record, f"{digest}  {target.name}\n")
        log.info("weights %s have no recorded sha256: recorded %s, checked at every later use", target, digest)
    elif digest != expected:
        raise WeightsError(
            f"weights file {target} (cached for {source}) has changed since it was downloaded (sha256 {digest}, "
            f"expected {expected}); delete it and run again to download it afresh"
        )
    log.info("weights for %s found in the cache: %s (sha256 %s)", source, target, digest)
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def _turn(target: Path) -> Iterator[None]:
    """Hold ``<target>.lock``, waiting while another process downloads the same file; folders made
    for a download that left nothing in them are removed again."""
    created = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    path = target.with_name(target.name + ".lock")
    while True:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise WeightsError(
                f"cannot write into the weights folder {target.parent} ({err.strerror or err}); set {FOLDER_ENV} to "
                "a folder you can write"
            ) from err
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        try:
            same = os.fstat(descriptor).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(descriptor)  # the holder before removed this lock file: take the new one
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # removed while held: a waiter sees it gone and opens a new one
        os.close(descriptor)
        for made in created:  # deepest first; a folder that holds something stays
            try:
                made.rmdir()
            except OSError:
                break


def _download(url: str, source: str, target: Path, limit: int, timeout: float) -> None:
    """Write the whole file at ``url`` to ``<target>.part``, resuming a partial one."""
    partial = target.with_name(target.name + ".part")
    for attempt in range(1, ATTEMPTS + 1):
        have = partial.stat().st_size if partial.is_file() else 0
        try:
            _transfer(url, source, target, partial, have, limit, timeout)
            return
        except _Broken as broken:
            now = partial.stat().st_size if partial.is_file() else 0
            if attempt == ATTEMPTS:
                raise WeightsError(
                    f"could not download weights {source}: the connection to {url} broke at {now / MB:.1f} MB "
                    f"({broken.reason}), {ATTEMPTS} times; run again to resume from {partial}, or download it "
                    f"yourself and place it at {target}"
                ) from broken
            log.warning("the download of %s broke at %.1f MB (%s); resuming", url, now / MB, broken.reason)


class _Broken(Exception):
    """A connection that broke after the download began: worth resuming."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _transfer(url: str, source: str, target: Path, partial: Path, have: int, limit: int, timeout: float) -> None:
    """One connection: ask for the bytes after ``have``, check the answer, append to ``partial``."""
    request = urllib.request.Request(url, headers={"User-Agent": f"detlit/{__version__}"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # http(s) only: is_remote, _mirror
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the partial file is not a start of this file
            partial.unlink()
            raise _Broken("the server refused to resume the partial file, which was deleted") from err
        raise WeightsError(
            f"could not download weights {source}: {url} answered HTTP {err.code} ({err.reason}); check the URL "
            f"(model.weights, {MIRROR_ENV}), or download the file yourself and place it at {target}"
        ) from err
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", None) or err
        raise WeightsError(
            f"could not download weights {source} from {url} ({reason}); download it once with network access, or "
            f"place it at {target}"
        ) from err
    with response:
        total, start = _expected(response, url, source, partial, have, limit)
        if start == 0 and have:
            log.info("%s sent the whole file again (it ignores Range requests): the download starts afresh", url)
        _receive(response, url, source, partial, start, total, limit)


def _expected(
    response: http.client.HTTPResponse, url: str, source: str, partial: Path, have: int, limit: int
) -> tuple[int | None, int]:
    """The whole file's size (None: not announced) and where this response's bytes start."""
    kind = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if kind in ("text/html", "application/xhtml+xml"):
        raise WeightsError(
            f"could not download weights {source}: {url} answered with an HTML page (HTTP {response.status}, "
            f"{kind}), not a weights file; check the URL (a login or error page?) or download the file yourself"
        )
    length = response.headers.get("Content-Length")
    size = int(length) if length and length.isdigit() else None
    start, total = 0, size
    if response.status == 206:
        found = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", (response.headers.get("Content-Range") or "").strip())
        if found is None or int(found.group(1)) != have:
            partial.unlink()  # the next connection asks for the whole file
            raise _Broken(f"the server answered the Range request with {response.headers.get('Content-Range')!r}")
        start = have
        total = int(found.group(3)) if found.group(3) != "*" else None
    if total is not None and total > limit:
        raise WeightsError(
            f"could not download weights {source}: {url} announces {total / MB:,.1f} MB, more than the "
            f"{limit / MB:,.0f} MB a weights download may have; check the URL, or download the file yourself"
        )
    log.info(
        "downloading %s (%s)%s",
        url,
        f"{total / MB:.1f} MB" if total is not None else "size not announced",
        f", resuming at {start / MB:.1f} MB" if start else "",
    )
    return total, start


def _receive(
    response: http.client.HTTPResponse, url: str, source: str, partial: Path, start: int, total: int | None, limit: int
) -> None:
    """Append the response's body to ``partial`` (truncated to ``start`` first), logging progress."""
    done, began, shown, shown_at = start, time.monotonic(), start, time.monotonic()
    with _opened(partial, start) as out:
        while True:
            try:
                block = response.read(CHUNK)
            except BROKEN as err:
                raise _Broken(f"{type(err).__name__}: {err}") from err
            if not block:
                break
            if done == 0 and block.lstrip()[:16].lower().startswith(HTML_STARTS):
                out.close()
                partial.unlink()
                raise WeightsError(
                    f"could not download weights {source}: {url} answered with an HTML page, not a weights file; "
                    "check the URL (a login or error page?) or download the file yourself"
                )
            done += len(block)
            if done > limit:
                out.close()
                partial.unlink()
                raise WeightsError(
                    f"could not download weights {source}: {url} sent more than the {limit / MB:,.0f} MB a weights "
                    "download may have (the partial file was deleted); check the URL, or download the file yourself"
                )
            out.write(block)
            now = time.monotonic()
            step = total is not None and total > 0 and (done - shown) >= PROGRESS_STEP * total
            if step or now - shown_at >= PROGRESS_S:
                _progress(url, done, total, done - start, now - began)
                shown, shown_at = done, now
    if total is not None and done != total:
        raise _Broken(f"it ended at {done:,} of the {total:,} bytes announced")
    _progress(url, done, total, done - start, time.monotonic() - began)


@contextmanager
def _opened(partial: Path, start: int) -> Iterator[BinaryIO]:
    """``partial`` open for appending after its first ``start`` bytes."""
    with partial.open("r+b" if partial.exists() else "wb") as out:
        out.truncate(start)
        out.seek(start)
        yield out


def _progress(url: str, done: int, total: int | None, received: int, seconds: float) -> None:
    share = f" ({100 * done / total:.0f}%)" if total else ""
    of = f" of {total / MB:.1f}" if total is not None else ""
    rate = received / MB / seconds if seconds > 0 else 0.0
    log.info("downloading %s: %.1f%s MB%s, %.1f MB/s", url.rsplit("/", 1)[-1], done / MB, of, share, rate)
