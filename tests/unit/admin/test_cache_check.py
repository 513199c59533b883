"""The closure walk of fleetctl's cache check (fleet/admin/cache_check.py) and its reader."""

from __future__ import annotations

import asyncio
import gzip
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fleet.admin.cache_check import CacheCheckFailed, CacheUnavailable, check_closure
from fleet.admin.cache_reader import CacheReader
from fleet.nix.keys import NixPublicKey
from fleet.nix.narinfo import parse_public_key
from harness.narinfos import CacheKey, narinfo, store_path, write_narinfo
from harness.nixlab import serve_directory, unreachable_url

KEY = CacheKey.generate("cache.example.org-1")
OTHER = CacheKey.generate("other-1")
TRUSTED: list[NixPublicKey] = [parse_public_key(KEY.public)]
ROOT, LIB, DATA = store_path("nixos-system-kiosk"), store_path("glibc"), store_path("data")


@dataclass
class MemoryCaches:
    """Narinfo files by cache URL and hash part; counts requests and concurrency."""

    files: dict[str, dict[str, str]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0

    def put(self, cache: str, path: str, text: str) -> None:
        self.files.setdefault(cache, {})[path.removeprefix("/nix/store/")[:32]] = text

    async def narinfo(self, cache: str, hash_part: str) -> bytes | None:
        self.requests.append((cache, hash_part))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.001)
            text = self.files.get(cache, {}).get(hash_part)
            return text.encode() if text is not None else None
        finally:
            self.in_flight -= 1


def closure(caches: MemoryCaches, cache: str = "https://cache.example.org") -> None:
    """ROOT -> (ROOT, LIB, DATA), LIB -> (LIB), DATA -> (): all signed by KEY."""
    caches.put(cache, ROOT, narinfo(ROOT, [ROOT, LIB, DATA], key=KEY))
    caches.put(cache, LIB, narinfo(LIB, [LIB], key=KEY))
    caches.put(cache, DATA, narinfo(DATA, key=KEY))


async def test_a_complete_signed_closure_passes_asking_each_path_once() -> None:
    caches = MemoryCaches()
    closure(caches)
    report = await check_closure(ROOT, ["https://cache.example.org"], TRUSTED, caches)
    assert (report.paths, report.signers) == (3, ("cache.example.org-1",))
    assert sorted(h for _, h in caches.requests) == sorted(
        p.removeprefix("/nix/store/")[:32] for p in (ROOT, LIB, DATA)
    )


async def test_a_missing_dependency_is_named_with_the_root() -> None:
    caches = MemoryCaches()
    closure(caches)
    del caches.files["https://cache.example.org"][LIB.removeprefix("/nix/store/")[:32]]
    with pytest.raises(CacheCheckFailed) as failed:
        await check_closure(ROOT, ["https://cache.example.org"], TRUSTED, caches)
    message = str(failed.value)
    assert message.startswith(f"{LIB} (in the closure of {ROOT}) is not in the binary cache")
    assert "could not fetch it" in message


async def test_a_missing_root_suggests_an_upload_or_a_typo() -> None:
    with pytest.raises(CacheCheckFailed, match=r"upload its closure first .* or check the path"):
        await check_closure(ROOT, ["https://cache.example.org"], TRUSTED, MemoryCaches())


async def test_paths_may_come_from_different_caches_in_order() -> None:
    caches = MemoryCaches()
    closure(caches, "https://cache.nixos.org")
    caches.put("https://ours", ROOT, narinfo(ROOT, [ROOT, LIB, DATA], key=KEY))
    caches.put("https://ours", LIB, narinfo(LIB, [LIB], key=OTHER))  # not trusted here
    report = await check_closure(ROOT, ["https://ours", "https://cache.nixos.org"], TRUSTED, caches)
    assert report.paths == 3
    # the root was found in the first cache: the second was never asked for it
    assert ("https://cache.nixos.org", ROOT.removeprefix("/nix/store/")[:32]) not in (
        caches.requests
    )


async def test_a_path_signed_only_by_another_key_is_refused_naming_cache_and_key() -> None:
    caches = MemoryCaches()
    caches.put("https://ours", ROOT, narinfo(ROOT, key=OTHER))
    with pytest.raises(CacheCheckFailed) as failed:
        await check_closure(ROOT, ["https://ours"], TRUSTED, caches)
    assert str(failed.value) == (
        f"{ROOT}: https://ours has it, but it is signed only by other-1, not by a trusted key "
        "(cache.example.org-1)"
    )


async def test_a_narinfo_for_another_path_is_refused() -> None:
    caches = MemoryCaches()
    impostor = ROOT.replace("nixos-system-kiosk", "nixos-system-evil")
    caches.put("https://ours", ROOT, narinfo(impostor, key=KEY))
    with pytest.raises(CacheCheckFailed, match=f"broken narinfo for it .*describes {impostor}"):
        await check_closure(ROOT, ["https://ours"], TRUSTED, caches)


async def test_uncheckable_cache_urls_are_refused_before_any_request() -> None:
    caches = MemoryCaches()
    closure(caches)
    with pytest.raises(CacheUnavailable, match=r"s3://bucket.*--no-cache-check"):
        await check_closure(ROOT, ["https://cache.example.org", "s3://bucket"], TRUSTED, caches)
    assert caches.requests == []


@pytest.mark.parametrize(
    "url", ["http://host:port", "https://", "file://host/dir", "http://a b", "http:///x"]
)
async def test_malformed_cache_urls_are_refused_before_any_request(url: str) -> None:
    caches = MemoryCaches()
    with pytest.raises(CacheUnavailable, match="not a cache URL"):
        await check_closure(ROOT, [url], TRUSTED, caches)
    assert caches.requests == []


async def test_the_walk_is_bounded_in_size_and_concurrency() -> None:
    caches = MemoryCaches()
    leaves = [store_path(f"leaf-{i}") for i in range(60)]
    caches.put("https://c", ROOT, narinfo(ROOT, leaves, key=KEY))
    for leaf in leaves:
        caches.put("https://c", leaf, narinfo(leaf, key=KEY))
    report = await check_closure(ROOT, ["https://c"], TRUSTED, caches, concurrency=4)
    assert report.paths == 61
    assert 1 < caches.most_in_flight <= 4
    with pytest.raises(CacheCheckFailed, match="more than 50 paths"):
        await check_closure(ROOT, ["https://c"], TRUSTED, caches, max_paths=50)


async def test_a_cache_that_never_answers_ends_at_the_deadline() -> None:
    class Silent:
        async def narinfo(self, cache: str, hash_part: str) -> bytes | None:
            await asyncio.sleep(3600)
            return None

    with pytest.raises(CacheCheckFailed, match=r"took longer than 0s"):
        await check_closure(ROOT, ["https://c"], TRUSTED, Silent(), deadline=0.2)


# ---------------------------------------------------------------- reading over HTTP and files


class _Failing(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_error(503)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def failing_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def test_the_reader_serves_the_walk_from_http_and_file_caches(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    write_narinfo(directory, ROOT, narinfo(ROOT, [ROOT, LIB], key=KEY))
    write_narinfo(directory, LIB, narinfo(LIB, key=KEY))
    async with CacheReader(timeout=5) as reader:
        with serve_directory(directory) as url:
            report = await check_closure(ROOT, [url + "/?priority=10"], TRUSTED, reader)
            assert report.paths == 2
            assert await reader.narinfo(url, "0" * 32) is None  # 404: not there
        report = await check_closure(ROOT, [f"file://{directory}"], TRUSTED, reader)
        assert report.paths == 2
        assert await reader.narinfo(f"file://{directory}", "0" * 32) is None


async def test_the_reader_reports_unreachable_and_failing_caches(
    tmp_path: Path, failing_server: str
) -> None:
    async with CacheReader(timeout=5) as reader:
        nowhere = unreachable_url()
        with pytest.raises(CacheUnavailable, match=f"cannot reach the cache {nowhere}"):
            await reader.narinfo(nowhere, "0" * 32)
        with pytest.raises(CacheUnavailable, match="answered HTTP 503"):
            await reader.narinfo(failing_server, "0" * 32)
        with pytest.raises(CacheUnavailable, match="is not a directory"):
            await reader.narinfo(f"file://{tmp_path}/no-such-cache", "0" * 32)


class _KeepAlive(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive: narinfos from `files`, `/moved/...` redirects, `/gz/...`
    gzip-encoded; records each connection's client address."""

    protocol_version = "HTTP/1.1"
    files: dict[str, bytes] = {}
    clients: set[tuple[str, int]] = set()

    def do_GET(self) -> None:
        self.clients.add(self.client_address)
        if self.path.startswith("/moved/"):
            self.send_response(302)
            self.send_header("Location", self.path.removeprefix("/moved"))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        gz = self.path.startswith("/gz/")
        body = self.files.get(self.path.removeprefix("/gz").lstrip("/"))
        if body is None:
            self.send_error(404)
            return
        if gz:
            body = gzip.compress(body)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        if gz:
            self.send_header("Content-Encoding", "gzip")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def keep_alive_server() -> Iterator[tuple[str, type[_KeepAlive]]]:
    handler = type("Handler", (_KeepAlive,), {"files": {}, "clients": set()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def test_the_reader_keeps_connections_alive_follows_redirects_and_decodes_gzip(
    keep_alive_server: tuple[str, type[_KeepAlive]],
) -> None:
    url, handler = keep_alive_server
    leaves = [store_path(f"leaf-{i}") for i in range(40)]
    handler.files[f"{ROOT.removeprefix('/nix/store/')[:32]}.narinfo"] = narinfo(
        ROOT, leaves, key=KEY
    ).encode()
    for leaf in leaves:
        handler.files[f"{leaf.removeprefix('/nix/store/')[:32]}.narinfo"] = narinfo(
            leaf, key=KEY
        ).encode()
    async with CacheReader(timeout=5, concurrency=3) as reader:
        report = await check_closure(ROOT, [url], TRUSTED, reader, concurrency=3)
        assert report.paths == 41
        assert len(handler.clients) <= 3  # 41 requests over at most one connection a thread
        for prefix in ("/moved", "/gz"):
            report = await check_closure(ROOT, [url + prefix], TRUSTED, reader)
            assert report.paths == 41
