"""`fleet ping TARGET`: round trips to a fleet node, and which path (direct or relay) they took."""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import click

from fleet.cli.common import load_key_or_fail, parse_bind_address_or_fail
from fleet.identity import Identity
from fleet.log import setup_logging
from fleet.mesh import ConnectError, Endpoint, MeshError, PathChanged
from fleet.mesh.peer_addr import InvalidPeerAddr, PeerAddr
from fleet.mesh.ping import PING_ALPN, PingClient
from fleet.mesh.reflexive import StunServerStatus
from fleet.netaddr import format_host_port
from fleet.relay.client import relay_client_factory
from fleet.relay.url import InvalidRelayUrl, RelayUrl

STUN_GRACE = 2.0  # seconds a STUN server gets to answer before ping says it did not


@dataclass
class PingReport:
    sent: int = 0
    rtts: list[float] = field(default_factory=list)
    connect_seconds: float | None = None
    direct_after: float | None = None  # seconds from the start of connecting
    direct_addr: str | None = None
    stun: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        rtts_ms = [r * 1000 for r in self.rtts]
        return {
            "event": "summary",
            "sent": self.sent,
            "received": len(self.rtts),
            "connect_ms": _ms(self.connect_seconds),
            "rtt_min_ms": round(min(rtts_ms), 3) if rtts_ms else None,
            "rtt_median_ms": round(statistics.median(rtts_ms), 3) if rtts_ms else None,
            "rtt_max_ms": round(max(rtts_ms), 3) if rtts_ms else None,
            "direct_after_s": round(self.direct_after, 3)
            if self.direct_after is not None
            else None,
            "direct_addr": self.direct_addr,
            "stun": self.stun,
            "warnings": self.warnings,
        }


def _round(seconds: float | None) -> float | None:
    return round(seconds, 3) if seconds is not None else None


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 3) if seconds is not None else None


@click.command("ping")
@click.argument("target")
@click.option("--count", "-c", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--interval", "-i", type=click.FloatRange(min=0.0), default=1.0, show_default=True)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds to connect, and to wait for each reply.",
)
@click.option("--key", type=click.Path(dir_okay=False), help="Key file (default: a fresh key).")
@click.option("--relay", "relay_url", help="Relay URL (fleet-relay://NODEID@HOST:PORT).")
@click.option("--bind", default="0.0.0.0:0", show_default=True, help="Local UDP HOST:PORT.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def ping(
    target: str,
    count: int,
    interval: float,
    timeout: float,
    key: str | None,
    relay_url: str | None,
    bind: str,
    as_json: bool,
) -> None:
    """Ping TARGET (NODEID@HOST:PORT, or NODEID with --relay) over the mesh.

    Prints the path of each ping (direct address or relay) and its round-trip time, and at
    the end when the direct path was established. Exit status 1 if no ping was answered.
    """
    try:
        peer = PeerAddr.parse(target)
    except InvalidPeerAddr as exc:
        raise click.BadParameter(str(exc), param_hint="TARGET") from exc
    relay = None
    if relay_url is not None:
        try:
            relay = RelayUrl.parse(relay_url)
        except InvalidRelayUrl as exc:
            raise click.BadParameter(str(exc), param_hint="--relay") from exc
    if not peer.addrs and relay is None:
        raise click.UsageError("TARGET has no address: give NODEID@HOST:PORT or --relay URL")
    bind_addr = parse_bind_address_or_fail(bind, "--bind")
    setup_logging("error")  # retries (a relay refusing) are not news: the outcome is
    identity = load_key_or_fail(key) if key else Identity.generate()
    report = asyncio.run(_run(identity, peer, relay, bind_addr, count, interval, timeout, as_json))
    if not report.rtts:
        raise SystemExit(1)


def _emit(as_json: bool, record: dict[str, Any], text: str) -> None:
    click.echo(json.dumps(record) if as_json else text)


async def _run(
    identity: Identity,
    peer: PeerAddr,
    relay: RelayUrl | None,
    bind: tuple[str, int],
    count: int,
    interval: float,
    timeout: float,
    as_json: bool,
) -> PingReport:
    report = PingReport()
    start = time.monotonic()

    def on_path(change: PathChanged) -> None:
        new = change.new
        if change.node != peer.node_id or new is None or new.kind != "direct":
            return
        if report.direct_after is None:
            report.direct_after = time.monotonic() - start
            report.direct_addr = f"{new.addr[0]}:{new.addr[1]}" if new.addr else None

    relays = [relay] if relay is not None else []
    try:
        async with Endpoint(
            identity, bind=bind, relay_urls=relays, relay_factory=relay_client_factory
        ) as ep:
            ep.add_path_listener(on_path)
            try:
                conn = await ep.connect(
                    peer.node_id, PING_ALPN, addrs=peer.addrs, relay_url=relay, timeout=timeout
                )
            except ConnectError as exc:
                raise click.ClickException(f"cannot reach {peer.node_id.short()}: {exc}") from exc
            report.connect_seconds = time.monotonic() - start
            path = conn.path_detail
            if path is not None and path.kind == "direct" and report.direct_after is None:
                report.direct_after = report.connect_seconds
                report.direct_addr = f"{path.addr[0]}:{path.addr[1]}" if path.addr else None
            _emit(
                as_json,
                {
                    "event": "connected",
                    "node": str(peer.node_id),
                    "path": str(path),
                    "connect_ms": _ms(report.connect_seconds),
                },
                f"connected to {peer.node_id.short()} in "
                f"{report.connect_seconds * 1000:.1f} ms via {path}",
            )
            client = PingClient(conn)
            for seq in range(1, count + 1):
                report.sent += 1
                try:
                    rtt = await client.ping(timeout)
                except TimeoutError:
                    _emit(
                        as_json,
                        {
                            "event": "ping",
                            "seq": seq,
                            "rtt_ms": None,
                            "path": str(conn.path_detail),
                        },
                        f"ping {seq}: timeout after {timeout:.1f} s",
                    )
                except (MeshError, asyncio.IncompleteReadError) as exc:
                    raise click.ClickException(f"connection lost: {exc}") from exc
                else:
                    report.rtts.append(rtt)
                    path = conn.path_detail
                    _emit(
                        as_json,
                        {
                            "event": "ping",
                            "seq": seq,
                            "rtt_ms": _ms(rtt),
                            "path": path.kind if path else None,
                            "addr": f"{path.addr[0]}:{path.addr[1]}"
                            if path and path.addr
                            else None,
                        },
                        f"ping {seq}: {rtt * 1000:.2f} ms via {path}",
                    )
                if seq < count:
                    await asyncio.sleep(interval)
            await client.close()
            _report_stun(report, relay, await _stun_outcome(ep))
    except OSError as exc:
        raise click.ClickException(f"cannot open a UDP socket on {bind}: {exc}") from exc
    summary = report.summary()
    if as_json:
        click.echo(json.dumps(summary))
    else:
        lost = report.sent - len(report.rtts)
        line = f"{report.sent} sent, {len(report.rtts)} received, {lost} lost"
        if report.rtts:
            line += (
                f"; rtt min/median/max {summary['rtt_min_ms']:.2f}/"
                f"{summary['rtt_median_ms']:.2f}/{summary['rtt_max_ms']:.2f} ms"
            )
        click.echo(line)
        if report.direct_after is not None:
            click.echo(f"direct path {report.direct_addr} after {report.direct_after:.3f} s")
        else:
            click.echo("no direct path: every ping went through the relay")
        for entry in report.stun:
            if entry["mapped"] is not None:
                click.echo(f"public address {entry['mapped']} (STUN answer from {entry['from']})")
        for warning in report.warnings:
            click.echo(f"warning: {warning}")
    return report


async def _stun_outcome(ep: Endpoint) -> list[StunServerStatus]:
    """What the STUN servers said, giving each up to STUN_GRACE seconds to answer."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(STUN_GRACE + 1):
            while True:
                status = ep.stun_status()
                if all(s.mapped is not None or (s.waited or 0) >= STUN_GRACE for s in status):
                    break
                await asyncio.sleep(0.05)
    return ep.stun_status()


def _report_stun(
    report: PingReport, relay: RelayUrl | None, status: list[StunServerStatus]
) -> None:
    """Fill in what STUN told us; no answer at all is a warning people need to read: without
    a public address a node behind NAT cannot punch holes."""
    for entry in status:
        server = format_host_port(*entry.server)
        source = f"relay {server}" if relay is not None else f"STUN server {server}"
        if relay is not None and relay.host != entry.server[0]:
            source = f"relay {format_host_port(relay.host, entry.server[1])} ({server})"
        report.stun.append(
            {
                "server": server,
                "from": source,
                "mapped": format_host_port(*entry.mapped) if entry.mapped else None,
                "waited_s": _round(entry.waited),
            }
        )
    if status and all(entry.mapped is None for entry in status):
        asked = ", ".join(entry["from"] for entry in report.stun)
        port = status[0].server[1]
        waited = max(entry.waited or 0.0 for entry in status)
        report.warnings.append(
            f"no STUN answer from {asked} in {waited:.1f} s: hole punching is off, "
            "so traffic stays on the relay whenever a NAT is in the way; check that the relay "
            f"answers STUN (`fleet relay` does on UDP {port} unless --no-stun; --stun-listen "
            f"moves it) and that UDP {port} to it is open"
        )
