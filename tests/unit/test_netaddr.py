"""The one HOST:PORT parser: what peer addresses, relay URLs, bind addresses and the
coordinator's listen address all accept and refuse, with messages that say what is wrong."""

from __future__ import annotations

import pytest

from fleet.netaddr import InvalidAddress, format_host_port, parse_host_port


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("127.0.0.1:4433", ("127.0.0.1", 4433)),
        ("relay.example.org:1", ("relay.example.org", 1)),
        ("localhost:65535", ("localhost", 65535)),
        ("[::1]:9", ("::1", 9)),
        ("[2001:db8::10]:7443", ("2001:db8::10", 7443)),
    ],
)
def test_addresses_parse_and_print_back(text: str, parsed: tuple[str, int]) -> None:
    assert parse_host_port(text) == parsed
    assert format_host_port(*parsed) == text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1.2.3.4", "expected HOST:PORT"),
        (":80", "expected HOST:PORT"),
        ("", "expected HOST:PORT"),
        ("host:", "not a number"),
        ("host:x1", "not a number"),
        ("host:-1", "not a number"),
        ("host:١٢", "not a number"),  # Arabic-Indic digits: isdigit() but not a port
        ("host:0", "not in 1-65535"),
        ("host:65536", "not in 1-65535"),
        ("host:99999", "not in 1-65535"),
        ("::1:5", "brackets"),
        ("2001:db8::1:80", "brackets"),
        ("[zz]:5", "not an IPv6"),
        ("[1.2.3.4]:5", "not an IPv6"),
        ("[::1]", r"expected \[IPV6\]:PORT"),
        ("[::1:5", r"expected \[IPV6\]:PORT"),
        ("[::1]5", r"expected \[IPV6\]:PORT"),
        ("a b:5", "not a host name or address"),
        ("user@host:5", "not a host name or address"),
        ("host/path:5", "not a host name or address"),
    ],
)
def test_malformed_text_is_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(InvalidAddress, match=message):
        parse_host_port(text)


def test_port_zero_only_where_any_port_will_do() -> None:
    assert parse_host_port("0.0.0.0:0", any_port=True) == ("0.0.0.0", 0)
    assert parse_host_port("[::]:0", any_port=True) == ("::", 0)
    with pytest.raises(InvalidAddress, match="not in 0-65535"):
        parse_host_port("0.0.0.0:65536", any_port=True)
    with pytest.raises(InvalidAddress, match="not in 1-65535"):
        parse_host_port("0.0.0.0:0")


def test_ip_only_refuses_host_names() -> None:
    assert parse_host_port("[::1]:7000", ip_only=True) == ("::1", 7000)
    assert parse_host_port("10.0.0.1:7000", ip_only=True) == ("10.0.0.1", 7000)
    with pytest.raises(InvalidAddress, match=r"not an IP address .*IP:PORT"):
        parse_host_port("example.org:7000", ip_only=True)
    with pytest.raises(InvalidAddress, match="expected IP:PORT"):
        parse_host_port("10.0.0.1", ip_only=True)


@pytest.mark.parametrize("value", [7000, None, ["127.0.0.1:1"], b"127.0.0.1:1"])
def test_settings_that_are_not_text_are_refused(value: object) -> None:
    with pytest.raises(InvalidAddress, match="expected HOST:PORT, got"):
        parse_host_port(value)
