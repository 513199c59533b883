"""Reading narinfo files from binary caches for the cache check: http(s):// and file://.

A system closure is hundreds to thousands of paths, each one small GET. Each worker thread
keeps one HTTP/1.1 connection per cache alive (a TLS handshake per cache and thread, not
per path); `CONCURRENCY` threads ask at once, every request within `timeout` seconds. With
an http(s) proxy configured in the environment (`https_proxy`, `no_proxy`, ...) and for
redirects, urllib does the request instead, which knows both. The stdlib is enough: no new
dependency for a few thousand GETs.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import lzma
import os
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

from fleet import __version__
from fleet.admin.cache_check import CONCURRENCY, CacheUnavailable
from fleet.nix.narinfo import MAX_NARINFO_BYTES

_MISSING_STATUS = (403, 404, 410)  # Nix, too, reads 403 (S3 without listing) as "not there"
_REDIRECT_STATUS = (301, 302, 303, 307, 308)
_HEADERS = {"User-Agent": f"fleetctl/{__version__}", "Accept": "text/x-nix-narinfo, */*"}
_DECODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.decompress,
    "x-gzip": gzip.decompress,
    "xz": lzma.decompress,
    "deflate": zlib.decompress,
}


def narinfo_url(cache: str, hash_part: str) -> str:
    """CACHE/HASH.narinfo; store parameters of the URL (`?priority=10`) are not part of it."""
    parts = urllib.parse.urlsplit(cache)
    path = parts.path.rstrip("/") + f"/{hash_part}.narinfo"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _read_file(cache: str, hash_part: str) -> bytes | None:
    path = urllib.parse.unquote(urllib.parse.urlsplit(narinfo_url(cache, hash_part)).path)
    try:
        with open(path, "rb") as f:
            return f.read(MAX_NARINFO_BYTES + 1)
    except FileNotFoundError:
        if not os.path.isdir(os.path.dirname(path)):
            raise CacheUnavailable(
                f"cannot read the cache {cache}: {os.path.dirname(path)} is not a directory"
            ) from None
        return None
    except OSError as exc:
        raise CacheUnavailable(f"cannot read the cache {cache}: {exc.strerror}") from None


def _decoded(cache: str, url: str, body: bytes, encoding: str | None) -> bytes:
    encoding = (encoding or "identity").strip().lower()
    if encoding in ("identity", ""):
        return body
    decode = _DECODERS.get(encoding)
    if decode is None:
        raise CacheUnavailable(f"the cache {cache} sent {url} with Content-Encoding {encoding}")
    try:
        return decode(body)
    except (OSError, EOFError, lzma.LZMAError, zlib.error):
        raise CacheUnavailable(f"the cache {cache} sent a corrupt {encoding} body") from None


def _status(cache: str, url: str, status: int) -> None:
    """Raise for a status that is neither 200 nor "not there" (those the caller handles)."""
    if status != 200 and status not in _MISSING_STATUS:
        raise CacheUnavailable(f"the cache {cache} answered HTTP {status} for {url}")


def _urllib_get(cache: str, url: str, timeout: float) -> bytes | None:
    request = urllib.request.Request(url, headers=_HEADERS)  # noqa: S310 (http/https only)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            body: bytes = response.read(MAX_NARINFO_BYTES + 1)
            encoding = response.headers.get("Content-Encoding")
    except urllib.error.HTTPError as exc:
        if exc.code in _MISSING_STATUS:
            return None
        raise CacheUnavailable(f"the cache {cache} answered HTTP {exc.code} for {url}") from None
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise CacheUnavailable(f"cannot reach the cache {cache}: {reason}") from None
    return _decoded(cache, url, body, encoding)


class _Connections:
    """One kept-alive connection per worker thread and cache; all closed at the end."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[http.client.HTTPConnection] = []

    def get(self, parts: urllib.parse.SplitResult, timeout: float) -> http.client.HTTPConnection:
        mine: dict[str, http.client.HTTPConnection] = self._local.__dict__.setdefault("by", {})
        connection = mine.get(parts.netloc + parts.scheme)
        if connection is None:
            host, port = parts.hostname or "", parts.port
            if parts.scheme == "https":
                context = ssl.create_default_context()
                connection = http.client.HTTPSConnection(
                    host, port, timeout=timeout, context=context
                )
            else:
                connection = http.client.HTTPConnection(host, port, timeout=timeout)
            mine[parts.netloc + parts.scheme] = connection
            with self._lock:
                self._all.append(connection)
        return connection

    def drop(self, parts: urllib.parse.SplitResult) -> None:
        connection = self._local.__dict__.get("by", {}).pop(parts.netloc + parts.scheme, None)
        if connection is not None:
            connection.close()

    def close_all(self) -> None:
        with self._lock:
            connections, self._all = self._all, []
        for connection in connections:
            connection.close()

    def get_narinfo(self, cache: str, url: str, timeout: float) -> bytes | None:
        parts = urllib.parse.urlsplit(url)
        for attempt in (1, 2):  # a kept connection the server closed meanwhile: once more
            connection = self.get(parts, timeout)
            try:
                connection.request("GET", parts.path, headers=_HEADERS)
                response = connection.getresponse()
                body = response.read(MAX_NARINFO_BYTES + 1)
                status, encoding = response.status, response.getheader("Content-Encoding")
                if response.will_close or not response.isclosed():
                    self.drop(parts)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.drop(parts)
                if attempt == 2:
                    raise CacheUnavailable(f"cannot reach the cache {cache}: {exc}") from None
                continue
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self.drop(parts)
                reason = getattr(exc, "strerror", None) or exc
                raise CacheUnavailable(f"cannot reach the cache {cache}: {reason}") from None
            if status in _REDIRECT_STATUS:
                return _urllib_get(cache, url, timeout)
            _status(cache, url, status)
            return None if status in _MISSING_STATUS else _decoded(cache, url, body, encoding)
        raise AssertionError("unreachable: the second attempt returns or raises")

    def read(self, cache: str, hash_part: str, timeout: float) -> bytes | None:
        """The narinfo's bytes, None when the cache does not have it; CacheUnavailable else."""
        parts = urllib.parse.urlsplit(cache)
        if parts.scheme == "file":
            return _read_file(cache, hash_part)
        url = narinfo_url(cache, hash_part)
        if parts.scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(
            parts.hostname or ""
        ):
            return _urllib_get(cache, url, timeout)  # urllib speaks to proxies
        return self.get_narinfo(cache, url, timeout)


class CacheReader:
    """The cache check's `NarinfoSource`: narinfo reads in `concurrency` threads, each call
    bounded by `timeout` (a thread still running when a walk is cancelled ends by the same
    socket timeout)."""

    def __init__(self, *, timeout: float, concurrency: int = CONCURRENCY) -> None:
        self.timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="narinfo")
        self._connections = _Connections()

    async def __aenter__(self) -> CacheReader:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._connections.close_all()  # a request still running in a thread fails now

    async def narinfo(self, cache: str, hash_part: str) -> bytes | None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout * 2):  # connect, then the answer
                return await loop.run_in_executor(
                    self._pool, self._connections.read, cache, hash_part, self.timeout
                )
        except TimeoutError:
            raise CacheUnavailable(
                f"the cache {cache} did not answer within {self.timeout:.0f}s"
            ) from None
