"""The Nix files of the repository: they parse, and the NixOS modules drive the real CLI.

The modules are evaluated with nixpkgs' real module system (lib.evalModules from
tests/vendor/nixpkgs-lib, see tests/integration/nixos_eval.nix), with the NixOS options they touch
declared as plain options and stand-in packages: option types, defaults, priorities and
assertions behave as in `nixos-rebuild`. The settings they generate are then fed to the real
`fleet agent|coordinator|relay` commands (their start-up validation, up to the point where the
daemon would run).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import pytest
from click.testing import CliRunner

import fleet.cli.agent
import fleet.cli.coordinator
import fleet.cli.relay
from fleet.admin.enroll_token_file import write_token_file
from fleet.agent.settings import KNOWN as AGENT_SETTINGS
from fleet.coordinator.settings import KNOWN as COORDINATOR_SETTINGS
from fleet.identity import NodeId, write_new_key
from fleet.protocol.enroll_token import format_token_file, make_enroll_token
from fleet.protocol.messages import EnrollToken
from fleet.relay.settings import KNOWN as RELAY_SETTINGS
from fleet.wire import decode

pytestmark = pytest.mark.nix

REPO = Path(__file__).resolve().parent.parent.parent
EVAL = Path(__file__).resolve().parent / "nixos_eval.nix"
NIXPKGS_LIB = Path(os.environ.get("FLEET_NIXPKGS_LIB") or REPO / "tests" / "vendor" / "nixpkgs-lib")
MODULES = REPO / "nixos-modules"

COORDINATOR_ID = "3nxzva5ads6k2wxloichezh7wc3kfxmx3l5n2rvlou5n6c6hjwba"
RELAY_ID = "w7d7lwqx4q3cksnxvz3c4ca3mxrymm6456o6qbxxsjvr55nh5dea"
ADMIN_ID = "oy3cjyr2cihy6wdpy42tweykrljewe65sz64o43kxle3dcqjvarq"
RELAY_URL = f"fleet-relay://{RELAY_ID}@relay.example.org:4433"
CACHE_KEY = "fleet-vm-test-1:BRBUqTnM6bXs36B64z9FVyKjgmekOd14u7LUrsMAqjY="

KNOWN: dict[str, tuple[str, ...]] = {
    "agent": AGENT_SETTINGS,
    "coordinator": COORDINATOR_SETTINGS,
    "relay": RELAY_SETTINGS,
}

# Settings a module writes for a CLI option that another branch is adding. Each entry fails
# test_pending_settings_are_still_pending as soon as the CLI knows it: then delete it here.
PENDING: dict[str, dict[str, str]] = {}

# Every option of each module set to a non-default value.
FULL: dict[str, dict[str, Any]] = {
    "agent": {
        "enable": True,
        "coordinator": {
            "nodeId": COORDINATOR_ID,
            "addresses": ["203.0.113.10:7443", "[2001:db8::10]:7443"],
        },
        "relays": [RELAY_URL],
        "keyFile": "/var/lib/fleet-agent/node.key",
        "enrollTokenFile": "/run/secrets/fleet-enroll-token",
        "trustRoots": [ADMIN_ID],
        "substituters": ["https://cache.example.org"],
        "trustedPublicKeys": [CACHE_KEY],
        "welcomeTimeout": 45,
        "reconnectSpread": 2.5,
    },
    "coordinator": {
        "enable": True,
        "listenAddress": "::",
        "port": 7443,
        "openFirewall": True,
        "keyFile": "/run/keys/coordinator.key",
        "stateDir": "fleet/coordinator",
        "relays": [RELAY_URL],
        "trustRoots": [ADMIN_ID],
        "maxConnections": 30000,
    },
    "relay": {
        "enable": True,
        "listenAddress": "0.0.0.0",
        "port": 443,
        "stunPort": 3478,
        "openFirewall": True,
        "keyFile": "/run/keys/relay.key",
        "stateDir": "fleet/relay",
    },
}

# The least a user must set for a configuration that passes the assertions.
MINIMAL: dict[str, dict[str, Any]] = {
    "agent": {
        "enable": True,
        "coordinator": {"nodeId": COORDINATOR_ID, "addresses": ["203.0.113.10:7443"]},
        "trustRoots": [ADMIN_ID],
    },
    "coordinator": {"enable": True, "trustRoots": [ADMIN_ID]},
    "relay": {"enable": True},
}


def run_eval(
    role: str,
    options: dict[str, Any],
    settings: dict[str, Any] | None = None,
    openssh: bool = True,
    package: str = "overlay",
) -> subprocess.CompletedProcess[str]:
    user = {"options": options, "settings": settings or {}, "openssh": openssh, "package": package}
    return subprocess.run(
        [
            "nix-instantiate",
            "--eval",
            "--strict",
            "--json",
            str(EVAL),
            "--arg",
            "nixpkgsLib",
            str(NIXPKGS_LIB),
            "--arg",
            "modulePath",
            str(MODULES / f"{role}.nix"),
            "--argstr",
            "role",
            role,
            "--argstr",
            "userJson",
            json.dumps(user),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def evaluate(
    role: str,
    options: dict[str, Any],
    settings: dict[str, Any] | None = None,
    openssh: bool = True,
    package: str = "overlay",
) -> dict[str, Any]:
    done = run_eval(role, options, settings, openssh, package)
    assert done.returncode == 0, f"evaluating nixos-modules/{role}.nix failed:\n{done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def evaluation_error(role: str, options: dict[str, Any], package: str = "overlay") -> str:
    """What `nixos-rebuild` would stop with: evaluation must fail."""
    done = run_eval(role, options, package=package)
    assert done.returncode != 0, f"nixos-modules/{role}.nix accepted {options}: {done.stdout}"
    return " ".join(done.stderr.split())


def toml_value(value: Any) -> str:
    """The TOML of the values the modules write: strings, numbers, booleans, lists of them."""
    if isinstance(value, bool | int | str):
        return json.dumps(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise AssertionError(f"the stub cannot write {value!r} as TOML")


def write_toml(path: Path, settings: dict[str, Any]) -> Path:
    path.write_text("".join(f"{key} = {toml_value(v)}\n" for key, v in settings.items()))
    return path


def nix_files() -> Iterator[Path]:
    """Our .nix files: not the vendored nixpkgs lib, nothing below a dot directory."""
    for path in sorted(REPO.rglob("*.nix")):
        relative = path.relative_to(REPO)
        if relative.parts[:3] == ("tests", "vendor", "nixpkgs-lib"):
            continue
        if not any(part.startswith(".") for part in relative.parts):
            yield path


def test_every_nix_file_parses() -> None:
    files = list(nix_files())
    names = {str(p.relative_to(REPO)) for p in files}
    assert {
        "flake.nix",
        "nix/package.nix",
        "nix/tests/update-chain.nix",
        "nixos-modules/agent.nix",
        "nixos-modules/coordinator.nix",
        "nixos-modules/relay.nix",
        "nixos-modules/default.nix",
        "nixos-modules/types.nix",
        "nixos-modules/package-option.nix",
        "tests/integration/nixos_eval.nix",
    } <= names
    for path in files:
        done = subprocess.run(
            ["nix-instantiate", "--parse", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, f"{path.relative_to(REPO)} does not parse:\n{done.stderr}"


@pytest.mark.parametrize("role", ["agent", "coordinator", "relay"])
def test_every_option_has_a_type_and_a_description(role: str) -> None:
    assert evaluate(role, MINIMAL[role])["undocumentedOptions"] == []


@pytest.mark.parametrize("role", ["agent", "coordinator", "relay"])
@pytest.mark.parametrize("scenario", ["minimal", "full"])
def test_generated_settings_are_known_to_the_cli(role: str, scenario: str) -> None:
    options = (MINIMAL if scenario == "minimal" else FULL)[role]
    result = evaluate(role, options)
    assert result["failedAssertions"] == []
    known = {k.replace("-", "_") for k in KNOWN[role]} | set(PENDING.get(role, {}))
    unknown = sorted(set(result["settings"]) - known)
    assert not unknown, (
        f"nixos-modules/{role}.nix writes settings that `fleet {role}` does not know: {unknown}"
    )


# --- The generated TOML through the real CLI ------------------------------------------------


class Captured:
    """Stands in for the daemon: records what the CLI would run it with."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def record(self, *args: Any) -> str:
        self.calls.append(args)
        return "daemon"

    def run(self, coro: Any) -> None:
        assert coro == "daemon"


def run_cli(
    monkeypatch: pytest.MonkeyPatch,
    module: Any,
    daemon: str,
    command: click.Command,
    config: Path,
) -> tuple[Any, ...]:
    captured = Captured()
    monkeypatch.setattr(module, daemon, captured.record)
    monkeypatch.setattr(module, "asyncio", SimpleNamespace(run=captured.run))
    monkeypatch.setattr(module, "setup_logging", lambda level: None)
    result = CliRunner().invoke(command, ["--config", str(config)])
    assert result.exit_code == 0, f"`fleet {command.name} --config` refused it: {result.output}"
    assert len(captured.calls) == 1
    return captured.calls[0]


def cli_settings(role: str, options: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """The module's settings with the key swapped for a real one and pending keys removed."""
    settings = dict(evaluate(role, options)["settings"])
    for name in PENDING.get(role, {}):
        settings.pop(name, None)
    key = tmp_path / "node.key"
    identity = write_new_key(key)
    settings["key"] = str(key)
    if "enroll_token" in settings:  # a real token file in its place, as for the key
        token = tmp_path / "enroll-token"
        envelope = make_enroll_token(
            identity, NodeId.parse(COORDINATOR_ID), ("kiosk",), lifetime=60, uses=1
        )
        write_token_file(token, format_token_file(envelope, decode(envelope.payload, EnrollToken)))
        settings["enroll_token"] = str(token)
    return settings


def test_agent_settings_start_the_agent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = cli_settings("agent", FULL["agent"], tmp_path)
    config = write_toml(tmp_path / "agent.toml", settings)
    (agent_settings,) = run_cli(
        monkeypatch, fleet.cli.agent, "run_agent", fleet.cli.agent.agent, config
    )
    assert str(agent_settings.coordinator) == (
        f"{COORDINATOR_ID}@203.0.113.10:7443@[2001:db8::10]:7443"
    )
    assert [str(r) for r in agent_settings.relays] == [RELAY_URL]
    assert [str(a) for a in agent_settings.trust_roots] == [ADMIN_ID]
    assert agent_settings.apply.substituters == ("https://cache.example.org",)
    assert agent_settings.apply.trusted_public_keys == (CACHE_KEY,)
    assert agent_settings.state_dir == Path("/var/lib/fleet-agent")
    assert agent_settings.session.welcome_timeout == 45.0
    assert agent_settings.session.reconnect_spread == 2.5
    assert agent_settings.enroll_token is not None  # enrollTokenFile: read, in the Hello


def test_coordinator_settings_start_the_coordinator(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = cli_settings("coordinator", FULL["coordinator"], tmp_path)
    config = write_toml(tmp_path / "coordinator.toml", settings)
    coordinator_settings, _identity = run_cli(
        monkeypatch, fleet.cli.coordinator, "_serve", fleet.cli.coordinator.coordinator, config
    )
    assert coordinator_settings.listen == ("::", 7443)
    assert coordinator_settings.state_dir == Path("/var/lib/fleet/coordinator")
    assert [str(a) for a in coordinator_settings.trust_roots] == [ADMIN_ID]
    assert [str(r) for r in coordinator_settings.relays] == [RELAY_URL]
    assert coordinator_settings.max_connections == 30000


def test_relay_settings_start_the_relay(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = cli_settings("relay", FULL["relay"], tmp_path)
    config = write_toml(tmp_path / "relay.toml", settings)
    _identity, _config, host, port, _metrics, stun_listen = run_cli(
        monkeypatch, fleet.cli.relay, "_serve", fleet.cli.relay.relay, config
    )
    assert (host, port) == ("0.0.0.0", 443)
    assert stun_listen == ("0.0.0.0", 3478)


def test_relay_answers_stun_on_3478_by_default() -> None:
    settings = evaluate("relay", MINIMAL["relay"])["settings"]
    assert settings["stun_listen"] == "0.0.0.0:3478"
    assert "stun" not in settings
    ipv6 = evaluate("relay", {**MINIMAL["relay"], "listenAddress": "::"})["settings"]
    assert ipv6["stun_listen"] == "[::]:3478"


def test_relay_stun_off_maps_to_no_stun() -> None:
    settings = evaluate("relay", {**MINIMAL["relay"], "stunPort": None})["settings"]
    assert settings["stun"] is False
    assert "stun_listen" not in settings


def test_pending_settings_are_still_pending() -> None:
    for role, pending in PENDING.items():
        known = {k.replace("-", "_") for k in KNOWN[role]}
        arrived = sorted(set(pending) & known)
        assert not arrived, (
            f"`fleet {role}` now knows {arrived}: remove them from PENDING in "
            "tests/integration/test_nix_files.py so that they are checked like the others"
        )


# --- What the units and assertions say ------------------------------------------------------


def test_agent_unit() -> None:
    service = evaluate("agent", MINIMAL["agent"])["service"]
    assert service["restartIfChanged"] is False
    assert "network-online.target" in service["after"]
    assert "network-online.target" in service["wants"]
    config = service["serviceConfig"]
    assert config["Restart"] == "on-failure"
    assert config["User"] == "root"
    assert config["StateDirectory"] == "fleet-agent"
    assert config["ExecStart"].split()[1:3] == ["agent", "--config"]


def test_agent_defaults_come_from_nix_settings() -> None:
    settings = evaluate("agent", MINIMAL["agent"])["settings"]
    assert settings["substituter"] == ["https://cache.nixos.org/"]
    assert settings["trusted_public_key"] == [
        "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="
    ]
    assert settings["key"] == "/etc/ssh/ssh_host_ed25519_key"


def failed(role: str, options: dict[str, Any], **overrides: Any) -> str:
    return "\n".join(evaluate(role, {**options, **overrides})["failedAssertions"])


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"coordinator": {}}, "services.fleet.agent.coordinator.nodeId must be set"),
        ({"coordinator": {"nodeId": COORDINATOR_ID}}, "cannot reach its coordinator"),
        ({"trustRoots": []}, "services.fleet.agent.trustRoots is empty"),
        ({"substituters": []}, "services.fleet.agent.substituters is empty"),
        ({"trustedPublicKeys": []}, "services.fleet.agent.trustedPublicKeys is empty"),
        ({"keyFile": "node.key"}, "keyFile must be an absolute path"),
    ],
)
def test_agent_assertions_explain_the_mistake(overrides: dict[str, Any], expected: str) -> None:
    assert expected in failed("agent", MINIMAL["agent"], **overrides)


def test_agent_reached_through_a_relay_alone_is_fine() -> None:
    options = {**MINIMAL["agent"], "coordinator": {"nodeId": COORDINATOR_ID}}
    assert failed("agent", options, relays=[RELAY_URL]) == ""


def test_agent_warns_when_nothing_creates_the_ssh_host_key() -> None:
    warnings = evaluate("agent", MINIMAL["agent"], openssh=False)["warnings"]
    assert any("services.openssh is disabled" in w for w in warnings)
    assert evaluate("agent", MINIMAL["agent"], openssh=True)["warnings"] == []


@pytest.mark.parametrize(
    ("role", "overrides", "expected"),
    [
        ("coordinator", {"trustRoots": []}, "services.fleet.coordinator.trustRoots is empty"),
        ("coordinator", {"stateDir": "/srv/fleet"}, "relative directory name below /var/lib"),
        ("relay", {"stateDir": "../etc"}, "relative directory name below /var/lib"),
        ("relay", {"keyFile": "relay.key"}, "keyFile must be an absolute path"),
    ],
)
def test_server_assertions_explain_the_mistake(
    role: str, overrides: dict[str, Any], expected: str
) -> None:
    assert expected in failed(role, MINIMAL[role], **overrides)


@pytest.mark.parametrize("role", ["agent", "coordinator", "relay"])
def test_a_configuration_error_is_not_restarted_forever(role: str) -> None:
    # The daemons exit 78 (EX_CONFIG) on a wrong setting; a restart loop cannot fix that.
    config = evaluate(role, MINIMAL[role])["service"]["serviceConfig"]
    assert config["Restart"] == "on-failure"
    assert config["RestartPreventExitStatus"] == 78


@pytest.mark.parametrize("role", ["coordinator", "relay"])
def test_server_units_are_hardened(role: str) -> None:
    config = evaluate(role, MINIMAL[role])["service"]["serviceConfig"]
    for setting, value in {
        "DynamicUser": True,
        "ProtectSystem": "strict",
        "ProtectHome": True,
        "NoNewPrivileges": True,
        "PrivateTmp": True,
        "PrivateDevices": True,
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": ["AF_INET", "AF_INET6", "AF_UNIX"],
        "StateDirectory": f"fleet-{role}",
    }.items():
        assert config[setting] == value, setting
    assert config["SystemCallFilter"][0] == "@system-service"
    assert config["ExecStart"].split()[1:3] == [role, "--config"]


@pytest.mark.parametrize("role", ["coordinator", "relay"])
def test_server_key_generated_or_passed_as_credential(role: str) -> None:
    generated = evaluate(role, MINIMAL[role])
    assert generated["settings"]["key"] == f"/var/lib/fleet-{role}/node.key"
    assert generated["service"]["serviceConfig"]["ExecStartPre"] != []
    assert generated["service"]["serviceConfig"]["LoadCredential"] == []

    given = evaluate(role, {**MINIMAL[role], "keyFile": f"/run/keys/{role}.key"})
    assert given["settings"]["key"] == f"/run/credentials/fleet-{role}.service/node.key"
    assert given["service"]["serviceConfig"]["LoadCredential"] == [f"node.key:/run/keys/{role}.key"]
    assert given["service"]["serviceConfig"]["ExecStartPre"] == []


def test_low_relay_port_gets_only_the_bind_capability() -> None:
    config = evaluate("relay", {**MINIMAL["relay"], "port": 443})["service"]["serviceConfig"]
    assert config["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert config["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]


@pytest.mark.parametrize(
    ("role", "options", "tcp", "udp"),
    [
        ("coordinator", {"openFirewall": True}, [], [7443]),
        ("coordinator", {}, [], []),
        ("relay", {"openFirewall": True}, [4433], [3478]),
        ("relay", {"openFirewall": True, "stunPort": 3479}, [4433], [3479]),
        ("relay", {"openFirewall": True, "stunPort": None}, [4433], []),
        ("relay", {}, [], []),
    ],
)
def test_open_firewall(role: str, options: dict[str, Any], tcp: list[int], udp: list[int]) -> None:
    firewall = evaluate(role, {**MINIMAL[role], **options})["firewall"]
    assert firewall["allowedTCPPorts"] == tcp
    assert firewall["allowedUDPPorts"] == udp


def test_user_settings_win_over_generated_ones() -> None:
    settings = evaluate("relay", MINIMAL["relay"], settings={"listen": "127.0.0.1:9000"})
    assert settings["settings"]["listen"] == "127.0.0.1:9000"


# --- Values checked at evaluation time ------------------------------------------------------

AGENT = MINIMAL["agent"]


@pytest.mark.parametrize(
    ("role", "options", "option"),
    [
        (
            "agent",
            {**AGENT, "coordinator": {"nodeId": COORDINATOR_ID[:-1], "addresses": ["h:1"]}},
            "services.fleet.agent.coordinator.nodeId",
        ),
        (
            "agent",
            {**AGENT, "coordinator": {"nodeId": COORDINATOR_ID.upper(), "addresses": ["h:1"]}},
            "services.fleet.agent.coordinator.nodeId",
        ),
        (
            "agent",
            {**AGENT, "coordinator": {"nodeId": COORDINATOR_ID, "addresses": ["203.0.113.10"]}},
            "services.fleet.agent.coordinator.addresses",
        ),
        (
            "agent",
            {**AGENT, "coordinator": {"nodeId": COORDINATOR_ID, "addresses": ["2001:db8::1:7443"]}},
            "services.fleet.agent.coordinator.addresses",
        ),
        (
            "agent",
            {**AGENT, "trustRoots": [ADMIN_ID[:-1] + "b"]},
            "services.fleet.agent.trustRoots",
        ),
        ("agent", {**AGENT, "trustRoots": ["<TRUST-ROOT-ID>"]}, "services.fleet.agent.trustRoots"),
        (
            "agent",
            {**AGENT, "relays": ["https://relay.example.org:4433"]},
            "services.fleet.agent.relays",
        ),
        (
            "agent",
            {**AGENT, "relays": [f"fleet-relay://{RELAY_ID}@relay.example.org"]},
            "services.fleet.agent.relays",
        ),
        (
            "agent",
            {**AGENT, "trustedPublicKeys": ["cache.example.org-1:<BASE64>"]},
            "services.fleet.agent.trustedPublicKeys",
        ),
        (
            "agent",
            {**AGENT, "trustedPublicKeys": [CACHE_KEY.split(":")[1]]},
            "services.fleet.agent.trustedPublicKeys",
        ),
        (
            "agent",
            {**AGENT, "substituters": ["cache.example.org"]},
            "services.fleet.agent.substituters",
        ),
        (
            "coordinator",
            {"enable": True, "trustRoots": ["admin"]},
            "services.fleet.coordinator.trustRoots",
        ),
        (
            "coordinator",
            {**MINIMAL["coordinator"], "relays": [f"fleet-relay://{RELAY_ID}"]},
            "services.fleet.coordinator.relays",
        ),
        ("relay", {"enable": True, "stunPort": 70000}, "services.fleet.relay.stunPort"),
        (
            "coordinator",
            {**MINIMAL["coordinator"], "maxConnections": 0},
            "services.fleet.coordinator.maxConnections",
        ),
        ("agent", {**AGENT, "welcomeTimeout": 0}, "services.fleet.agent.welcomeTimeout"),
        ("agent", {**AGENT, "reconnectSpread": -1}, "services.fleet.agent.reconnectSpread"),
    ],
)
def test_a_wrong_value_fails_evaluation_naming_the_option(
    role: str, options: dict[str, Any], option: str
) -> None:
    error = evaluation_error(role, options)
    assert f"`{option}" in error, error
    assert "is not of type" in error, error


def test_right_values_pass_the_types() -> None:
    """IPv6 with brackets, relay URLs of both schemes, keys of other names, local stores."""
    options = {
        **FULL["agent"],
        "relays": [RELAY_URL, f"fleet-relay+insecure://{RELAY_ID}@127.0.0.1:4433"],
        "trustedPublicKeys": [CACHE_KEY, "nix-community.cachix.org-1:" + CACHE_KEY[-44:]],
        "substituters": ["https://cache.example.org/", "file:///srv/cache", "/srv/store"],
    }
    assert evaluate("agent", options)["failedAssertions"] == []


# One list of samples, checked by the modules' types and by the Python parsers that the
# daemons run at start-up: the two must agree.
TYPE_SAMPLES: dict[str, list[str]] = {
    "nodeId": [
        COORDINATOR_ID,
        RELAY_ID,
        COORDINATOR_ID[:-1] + "b",  # unused bits set
        COORDINATOR_ID[:-1],
        COORDINATOR_ID + "a",
        COORDINATOR_ID.upper(),
        COORDINATOR_ID[:-2] + "1a",
    ],
    "hostPort": [
        "203.0.113.10:7443",
        "relay.example.org:443",
        "[2001:db8::10]:7443",
        "host:65535",
        "host:1",
        "host:0",
        "host:65536",
        "2001:db8::1:80",
        "host",
        ":80",
        "host:port",
        "[2001:db8::1]",
        "a b:80",
        "user@host:80",
    ],
    "relayUrl": [
        RELAY_URL,
        f"fleet-relay+insecure://{RELAY_ID}@127.0.0.1:4433",
        f"fleet-relay://{RELAY_ID}@[2001:db8::1]:443",
        f"https://{RELAY_ID}@relay.example.org:4433",
        f"fleet-relay://{RELAY_ID}@relay.example.org",
        f"fleet-relay://{RELAY_ID}@relay.example.org:4433/",
        "fleet-relay://relay.example.org:4433",
        f"fleet-relay://{RELAY_ID[:-1]}b@relay.example.org:4433",
    ],
    "nixPublicKey": [
        CACHE_KEY,
        "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=",
        "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY",
        "6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=",
        "name:short=",
        "with space:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=",
    ],
    "substituterUrl": [
        "https://cache.nixos.org/",
        "http://10.0.0.1:5000",
        "file:///srv/cache",
        "s3://bucket?region=eu-west-1",
        "ssh-ng://builder",
        "/srv/store",
        "local?root=/srv/x",
        "cache.nixos.org",
        "ftp://cache",
        "https://cache example",
    ],
}


def python_accepts(kind: str, text: str) -> bool:
    from fleet.identity import InvalidNodeId, NodeId
    from fleet.netaddr import InvalidAddress, parse_host_port
    from fleet.nix.fetch import _check_config
    from fleet.relay.url import InvalidRelayUrl, RelayUrl

    try:
        if kind == "nodeId":
            NodeId.parse(text)
        elif kind == "hostPort":
            parse_host_port(text)
        elif kind == "relayUrl":
            RelayUrl.parse(text)
        elif kind == "nixPublicKey":
            _check_config(["https://cache.example.org"], [text])
        elif kind == "substituterUrl":
            _check_config([text], [CACHE_KEY])
        else:
            raise AssertionError(kind)
    except (InvalidNodeId, InvalidAddress, InvalidRelayUrl, ValueError):
        return False
    return True


def test_module_types_agree_with_the_python_parsers() -> None:
    expression = (
        f"let lib = import {json.dumps(str(NIXPKGS_LIB))};"
        f" types = import {json.dumps(str(MODULES / 'types.nix'))} {{ inherit lib; }};"
        f" samples = builtins.fromJSON {json.dumps(json.dumps(TYPE_SAMPLES))};"
        " in builtins.mapAttrs (kind: map (types.${kind}.check)) samples"
    )
    done = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "--expr", expression],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    nix: dict[str, list[bool]] = json.loads(done.stdout)
    disagree = [
        (kind, text, accepted)
        for kind, texts in TYPE_SAMPLES.items()
        for text, accepted in zip(texts, nix[kind], strict=True)
        if accepted != python_accepts(kind, text)
    ]
    assert not disagree, f"Nix type and Python parser disagree (kind, value, Nix says): {disagree}"
    for kind, accepted in nix.items():
        assert True in accepted, f"no {kind} sample is valid"
        assert False in accepted, f"no {kind} sample is invalid"


# --- The package --------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["agent", "coordinator", "relay"])
def test_package_is_nixos_fleet_and_on_the_system_path(role: str) -> None:
    result = evaluate(role, MINIMAL[role])
    assert result["package"].endswith("-nixos-fleet-0.1.0")
    assert result["service"]["serviceConfig"]["ExecStart"].startswith(
        result["package"] + "/bin/fleet "
    )
    # `fleet id KEYFILE` on the host, as the docs tell people to run.
    assert result["systemPackages"] == [result["package"]]


@pytest.mark.parametrize("role", ["agent", "coordinator", "relay"])
def test_without_the_overlay_the_module_says_what_to_add(role: str) -> None:
    """nixpkgs' `fleet` is fleetdm's: it must never become the default."""
    error = evaluation_error(role, MINIMAL[role], package="none")
    assert f"services.fleet.{role}.package" in error
    assert "fleet.overlays.default" in error
    assert "fleetdm" in error
    given = evaluate(role, MINIMAL[role], package="option")
    assert given["package"].endswith("-nixos-fleet-from-option")
    assert "fleetdm" not in json.dumps(given)


def test_disabled_modules_need_no_package() -> None:
    for role in ("agent", "coordinator", "relay"):
        result = evaluate(role, {}, package="none")
        assert result["service"] is None
        assert result["systemPackages"] == []


def test_flake_uses_its_own_attribute_name() -> None:
    flake = (REPO / "flake.nix").read_text()
    assert "nixos-fleet = final.callPackage ./nix/package.nix" in flake
    assert "fleet = final.callPackage" not in flake.replace("nixos-fleet = final", "")
    assert "default = nixos-fleet;" in flake


def test_flake_lock_pins_the_flake_inputs() -> None:
    lock = json.loads((REPO / "flake.lock").read_text())
    assert lock["version"] == 7
    root = lock["nodes"][lock["root"]]
    assert root["inputs"] == {"nixpkgs": "nixpkgs"}
    nixpkgs = lock["nodes"]["nixpkgs"]
    # The lock is stale (and Nix re-locks it) unless `original` is flake.nix's input URL.
    original = nixpkgs["original"]
    url = f"github:{original['owner']}/{original['repo']}/{original['ref']}"
    assert f'inputs.nixpkgs.url = "{url}";' in (REPO / "flake.nix").read_text()
    locked = nixpkgs["locked"]
    assert locked["type"] == "github"
    assert (locked["owner"], locked["repo"]) == (original["owner"], original["repo"])
    assert len(locked["rev"]) == 40
    assert int(locked["rev"], 16) >= 0
    assert locked["narHash"].startswith("sha256-")
    assert len(locked["narHash"]) == len("sha256-") + 44
    assert isinstance(locked["lastModified"], int)


def test_package_installs_completions_that_click_generates() -> None:
    package = (REPO / "nix" / "package.nix").read_text()
    assert "installShellFiles" in package
    assert "for program in fleet fleetctl" in package
    for shell in ("bash", "zsh", "fish"):
        assert f'--{shell} <(env "$variable={shell}_source" "$out/bin/$program")' in package

    # What that loop runs, with this checkout's entry points (installed as `fleet`, `fleetctl`).
    def complete(program: str, **env: str) -> str:
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                f"from fleet.cli.{program} import main; main(prog_name={program!r})",
            ],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=REPO,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    for program in ("fleet", "fleetctl"):
        variable = f"_{program.upper()}_COMPLETE"
        assert f"{program}_completion()" in complete(program, **{variable: "bash_source"})
        assert f"#compdef {program}" in complete(program, **{variable: "zsh_source"})
        assert f"complete --no-files --command {program}" in complete(
            program, **{variable: "fish_source"}
        )
    # The generated bash function asks the program itself; that answer names subcommands.
    words = complete(
        "fleetctl", _FLEETCTL_COMPLETE="bash_complete", COMP_WORDS="fleetctl pu", COMP_CWORD="1"
    )
    assert "plain,push" in words.splitlines(), words
