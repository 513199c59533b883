"""`HOST:PORT` text (IPv6 in brackets), parsed strictly in one place for every address we accept."""

from __future__ import annotations

import ipaddress


class InvalidAddress(ValueError):
    """Text that is not HOST:PORT; the message names what is wrong."""


def parse_host_port(
    text: object, *, any_port: bool = False, ip_only: bool = False
) -> tuple[str, int]:
    """HOST:PORT or [IPV6]:PORT; settings may hold anything, so `text` is checked to be text.

    With `any_port` (an address to bind) port 0 is allowed; with `ip_only` (a UDP socket binds
    to an address, not a name) the host must be an IP address.
    """
    expected = "IP:PORT" if ip_only else "HOST:PORT"
    if not isinstance(text, str):
        raise InvalidAddress(f"expected {expected}, got {text!r}")
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
            raise InvalidAddress(f"{text!r}: expected {expected}")
        if ":" in host:
            raise InvalidAddress(f"{text!r}: write IPv6 addresses in brackets")
    try:
        check_host(host)
    except InvalidAddress as exc:
        raise InvalidAddress(f"{text!r}: {exc}") from None
    if ip_only and not _is_ip(host):
        raise InvalidAddress(f"{text!r}: {host!r} is not an IP address (expected IP:PORT)")
    if not port_text.isdigit() or not port_text.isascii():
        raise InvalidAddress(f"{text!r}: port {port_text!r} is not a number")
    port = int(port_text)
    try:
        check_port(port, any_port=any_port)
    except InvalidAddress as exc:
        raise InvalidAddress(f"{text!r}: {exc}") from None
    return host, port


def check_host(host: str) -> None:
    """A host name or address as it may stand in HOST:PORT (IPv6 without its brackets)."""
    if not host or any(c in host for c in "/@?#[] "):
        raise InvalidAddress(f"{host!r} is not a host name or address")


def check_port(port: int, *, any_port: bool = False) -> None:
    lowest = 0 if any_port else 1
    if not lowest <= port < 65536:
        raise InvalidAddress(f"port {port} is not in {lowest}-65535")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def format_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
