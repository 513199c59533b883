"""`HOST:PORT` text (IPv6 in brackets), parsed strictly in one place for every address we accept."""

from __future__ import annotations

import ipaddress


class InvalidAddress(ValueError):
    """Text that is not HOST:PORT; the message names what is wrong."""


def parse_host_port(text: str, *, any_port: bool = False) -> tuple[str, int]:
    """HOST:PORT or [IPV6]:PORT; with `any_port` (an address to bind) port 0 is allowed."""
    if text.startswith("["):
        host, close, port_part = text[1:].partition("]")
        if not close or not port_part.startswith(":"):
            raise InvalidAddress(f"{text!r}: expected [IPV6]:PORT")
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise InvalidAddress(f"{text!r}: {host!r} is not an IPv6 address") from exc
        port_text = port_part[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon or not host:
            raise InvalidAddress(f"{text!r}: expected HOST:PORT")
        if ":" in host:
            raise InvalidAddress(f"{text!r}: write IPv6 addresses in brackets")
    if any(c in host for c in "/@?#[] "):
        raise InvalidAddress(f"{text!r}: {host!r} is not a host name or address")
    if not port_text.isdigit() or not port_text.isascii():
        raise InvalidAddress(f"{text!r}: port {port_text!r} is not a number")
    port = int(port_text)
    lowest = 0 if any_port else 1
    if not lowest <= port < 65536:
        raise InvalidAddress(f"{text!r}: port {port} is not in {lowest}-65535")
    return host, port


def format_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
