"""Relay URLs parse strictly and print back the same text."""

from __future__ import annotations

import pytest

from fleet.identity import Identity
from fleet.relay.url import InvalidRelayUrl, RelayUrl

NODE = Identity.generate().node_id


@pytest.mark.parametrize(
    "text",
    [
        f"fleet-relay://{NODE}@relay.example.org:4433",
        f"fleet-relay://{NODE}@127.0.0.1:1",
        f"fleet-relay://{NODE}@[::1]:65535",
        f"fleet-relay+insecure://{NODE}@127.0.0.1:9000",
    ],
)
def test_round_trip(text: str) -> None:
    url = RelayUrl.parse(text)
    assert str(url) == text
    assert url.node_id == NODE


def test_fields() -> None:
    url = RelayUrl.parse(f"fleet-relay+insecure://{NODE}@[::1]:80")
    assert (url.host, url.port, url.insecure) == ("::1", 80, True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("relay.example.org:4433", "expected fleet-relay://"),
        (f"https://{NODE}@h:1", "unknown scheme"),
        ("fleet-relay://h:4433", "missing the relay's node id"),
        (f"fleet-relay://{str(NODE).upper()}@h:1", "bad relay node id"),
        (f"fleet-relay://{NODE}@h", "expected HOST:PORT"),
        (f"fleet-relay://{NODE}@h:0", "not in 1-65535"),
        (f"fleet-relay://{NODE}@h:99999", "not in 1-65535"),
        (f"fleet-relay://{NODE}@h:x1", "not a number"),
        (f"fleet-relay://{NODE}@h:1/path", "no path"),
        (f"fleet-relay://{NODE}@::1:1", "brackets"),
        (f"fleet-relay://{NODE}@[zz]:1", "not an IPv6"),
        (f"fleet-relay://{NODE}@:1", "expected HOST:PORT"),
    ],
)
def test_strict_errors(text: str, message: str) -> None:
    with pytest.raises(InvalidRelayUrl, match=message):
        RelayUrl.parse(text)
