"""Garbage into the endpoint's datagram handlers never crashes it."""

from __future__ import annotations

import asyncio
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.identity import Identity
from fleet.mesh import Endpoint, disco
from tests.mesh_fakes import FakeRelayHub

ALPN = "fleet/test/1"
RELAY = "fleet-relay://fake"


def _garbage(cids: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=1500),
        st.binary(max_size=300).map(lambda b: disco.MAGIC + b),
        st.binary(min_size=1200, max_size=1300).map(lambda b: b"\xc0\x00\x00\x00\x01" + b),
        st.tuples(st.sampled_from(cids), st.binary(max_size=200)).map(
            lambda t: b"\x40" + t[0] + t[1]
        ),
    )


def test_garbage_datagrams_and_relay_packets_never_crash_the_endpoint() -> None:
    async def scenario() -> None:
        hub = FakeRelayHub()
        alice, bob = Identity.generate(), Identity.generate()
        kwargs = {"alpns": [ALPN], "relay_urls": [RELAY], "relay_factory": hub.factory}
        async with (
            Endpoint(alice, bind=("127.0.0.1", 0), **kwargs) as ea,  # type: ignore[arg-type]
            Endpoint(bob, bind=("127.0.0.1", 0), **kwargs) as eb,  # type: ignore[arg-type]
        ):
            conn = await ea.connect(bob.node_id, ALPN, addrs=[eb.bound_address], timeout=10)
            server = await eb.accept(ALPN, timeout=10)
            cids = sorted(server.cids) or [b"\x00" * 8]
            # A genuine ping from another node maps its address, so garbage reaches QUIC too.
            stranger = Identity.generate()
            ping = disco.encode(stranger, bob.node_id, disco.Ping.new(), time.time())
            eb._on_datagrams([(ping, ("127.0.0.1", 9))])
            relay = hub.clients[bob.node_id]

            @settings(
                max_examples=300,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(_garbage(cids), st.sampled_from(["stranger", "alice", "relay"]))
            def feed(data: bytes, source: str) -> None:
                if source == "stranger":
                    eb._on_datagrams([(data, ("127.0.0.1", 9))])
                elif source == "alice":
                    eb._on_datagrams([(data, ea.bound_address)])
                else:
                    eb._on_relay_packet(relay, stranger.node_id, data)

            feed()
            # Still serving: the existing connection works and a new one can be made.
            writer = await conn.open_uni()
            writer.write(b"still here")
            writer.write_eof()
            reader = await server.accept_uni(timeout=10)
            assert await asyncio.wait_for(reader.read(), 10) == b"still here"
            again = await ea.connect(bob.node_id, ALPN, addrs=[eb.bound_address], timeout=10)
            assert again.remote_id == bob.node_id

    asyncio.run(scenario())
