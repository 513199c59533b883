"""No command ever shows a traceback: bad input or an unreachable peer gets one clear line.

Every command and subcommand of `fleet` and `fleetctl` is found by walking the click groups,
so a new command is covered the day it is added, and each is run as a real process:

- against an unreachable coordinator (or, for `fleet ping`, an unreachable node): a random
  node id at a closed UDP port on loopback, with a short timeout;
- with each of its parameters malformed in turn (bad node id, bad path, bad duration, a
  missing file, a garbage TOML file, a key file that is not a key, ...), every other
  parameter valid; the error must come from the check of that value, before any network;
- the daemons with a broken environment (a port in use, an unwritable state directory).

What "one clear line" means, for every failure: stderr ends with exactly one `Error: ...`
line, the only one that starts with `Error:`. Before it there may be click's `Usage:` and
`Try ...` lines (usage errors, exit 2) or a notice the command documents (NOTICES). Never
"Traceback", "ExceptionGroup" or our last-resort "internal error".

A parameter the tables below do not know fails the test, naming it: give it malformed
values in BAD, or list it in FREE_TEXT if any text is acceptable.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

import click
import pytest

from fleet.cli.common import EXIT_CONFIG
from fleet.cli.fleet import main as fleet_group
from fleet.cli.fleetctl import main as fleetctl_group
from fleet.identity import Identity
from harness.cli import cli_env, fleet_argv, fleetctl_argv, run_fleet

CONCURRENCY = 4
TIMEOUT = 0.5  # seconds fleetctl and ping wait for the unreachable peer
PROCESS_TIMEOUT = 30.0  # a daemon still running by then did not refuse its bad setting

NODE = str(Identity.generate().node_id)
STORE_PATH = "/nix/store/" + "a" * 32 + "-nixos-system"
CERT_ID = "ab" * 32
NIX_KEY = "cache.example.org-1:" + "A" * 43 + "="

Command = tuple[str, ...]  # ("fleetctl", "audit", "verify")


def walk(group: click.Group, path: Command) -> Iterator[tuple[Command, click.Command]]:
    """Every command that runs something: leaves, and groups that run without a subcommand."""
    for name in sorted(group.commands):
        command = group.commands[name]
        if not isinstance(command, click.Group) or command.invoke_without_command:
            yield (*path, name), command
        if isinstance(command, click.Group):
            yield from walk(command, (*path, name))


COMMANDS = dict([*walk(fleet_group, ("fleet",)), *walk(fleetctl_group, ("fleetctl",))])

# Commands that never contact a peer, and why (every other one is run against an unreachable
# coordinator or node).
OFFLINE = {
    ("fleet", "keygen"): "writes a key file",
    ("fleet", "id"): "reads a key file",
    ("fleet", "relay"): "a server: waits for peers",
    ("fleet", "coordinator"): "a server: waits for peers",
    ("fleet", "agent"): "a daemon: retries an unreachable coordinator by design",
    ("fleetctl", "org", "init"): "writes the trust root key",
    ("fleetctl", "enroll-token", "create"): "signs a token file; nothing is sent",
}

DAEMONS = {("fleet", "relay"), ("fleet", "coordinator"), ("fleet", "agent")}


def is_log_event(line: str) -> bool:
    """A daemon's structured log line (JSON here: stderr is a pipe): allowed before the error."""
    try:
        event = json.loads(line)
    except ValueError:
        return False
    return isinstance(event, dict) and "event" in event


# Lines a command documents on stderr before its error.
NOTICES: dict[Command, tuple[str, ...]] = {
    ("fleetctl", "grant"): ("granted ",),  # the chain was written before recording failed
    ("fleetctl", "push"): ("warning: no binary cache configured",),  # docs/fleetctl.md
}

# Parameters that take any text: nothing can be malformed about them locally.
FREE_TEXT = {
    "name",  # a device name (devices add --name, devices remove NAME)
    "tags",  # devices add --tag
    "tag",  # agent --tag
    "targets",  # push --to: resolved against the coordinator's device list
    "device",  # devices approve/remove: a name, node id or short id, resolved likewise
    "reason",  # revoke --reason
    "actor",  # audit --actor: a filter by node id prefix
    "nix_store",  # agent --nix-store: Nix creates a chroot store that does not exist yet
    "profile",  # agent --profile: created by the first switch
}


@dataclass(frozen=True)
class Files:
    root: Path
    key: Path  # a valid fleet key
    not_a_key: Path
    garbage_toml: Path
    missing: Path
    no_dir: Path  # a directory that does not exist
    unreachable: str  # NODEID@127.0.0.1:PORT, nobody listening
    chain: Path  # a valid certificate chain issued by `key` (for record-grant)
    env: dict[str, str]  # of the processes
    fresh: Iterator[int] = field(default_factory=count)

    def new_path(self) -> str:
        return str(self.root / f"new-{next(self.fresh)}")


def bad_values(files: Files) -> dict[str, list[str]]:
    """Malformed values by parameter name (or `command.param` where the name is ambiguous)."""
    key_files = [str(files.not_a_key), str(files.missing)]
    return {
        "keygen.path": [str(files.key), str(files.no_dir / "node.key")],
        "id.path": [*key_files, str(files.root)],  # and a directory
        "key": key_files,
        "cert": [str(files.garbage_toml), str(files.missing)],
        "config_file": [str(files.garbage_toml), str(files.missing)],
        "coordinator": ["not-a-node-id", f"{NODE}@no-port"],
        "relay": ["https://relay.example.org"],
        "relays": ["https://relay.example.org"],
        "relay_url": ["https://relay.example.org"],
        "listen": ["nowhere"],
        "metrics_listen": ["nowhere"],
        "stun_listen": ["nowhere"],
        "bind": ["nowhere"],
        "max_clients": ["-1"],
        "rate_limit": ["-1"],
        "rate_burst": ["-1"],
        "handshake_timeout": ["-1"],
        "ping_interval": ["-1"],
        "ping_timeout": ["-1"],
        "checkpoint_interval": ["0"],
        "max_connections": ["0", "many"],
        "welcome_timeout": ["0", "soon"],
        "reconnect_spread": ["-1"],
        "state_dir": [str(files.not_a_key)],  # a file, not a directory
        "trust_root": ["not-a-node-id"],
        "trust_roots": ["not-a-node-id"],
        "substituter": ["cache.example.org"],
        "substituters": ["cache.example.org"],
        "trusted_public_key": ["cache.example.org-1"],
        "caches": ["cache.example.org", "s3://bucket"],  # push --cache: no scheme; no check
        "trusted_public_keys": ["cache.example.org-1"],
        "target": ["not-a-node-id@127.0.0.1:1", NODE],  # the second has no address, no relay
        "count": ["0"],
        "interval": ["-1"],
        "timeout": ["0"],
        "wait_timeout": ["0"],
        "node_id": ["not-a-node-id"],
        "subject": ["not-a-node-id"],
        "store_path": ["/tmp/not-in-the-store", "/nix/store/short-name"],
        "valid_for": ["soon"],
        "status_of": ["0", "seven"],  # push --status SEQ
        "expires": ["soon"],
        "since": ["the day before yesterday"],
        "allow": ["fly"],
        "scope": ["somewhere"],
        "out": [str(files.no_dir / "out")],
        "cert_id": ["not-hex"],
        "chain_file": [str(files.garbage_toml), str(files.missing)],
        "export_file": [str(files.garbage_toml), str(files.missing)],
        "from_file": [str(files.garbage_toml), str(files.missing), str(files.root)],
        "enroll_token": [str(files.garbage_toml), str(files.missing)],
        "uses": ["0"],
        "token": ["not-a-token", "ab" * 8],  # enroll-token revoke: neither a file nor an id
        "create.tags": ["bad/tag"],
        "against_file": [str(files.garbage_toml), str(files.missing)],
    }


def valid_values(files: Files, command: Command) -> dict[str, str]:
    """What each parameter gets when another one is under test (and required ones always)."""
    values = {
        "path": str(files.key),
        "key": str(files.key),
        "node_id": NODE,
        "subject": NODE,
        "name": "kiosk-1",
        "store_path": STORE_PATH,
        "targets": "kiosk-1",
        "allow": "push",
        "scope": "*",
        "cert_id": CERT_ID,
        "target": files.unreachable,
        "timeout": str(TIMEOUT),
        "count": "1",
        "coordinator": files.unreachable,
        "trust_root": NODE,
        "trust_roots": NODE,
        "substituter": "http://127.0.0.1:1",
        "trusted_public_key": NIX_KEY,
        "caches": "http://127.0.0.1:1",
        "trusted_public_keys": NIX_KEY,
        "device": NODE,
        "token": "ab" * 16,
        "chain_file": str(files.chain),
        "listen": "127.0.0.1:0",
        "bind": "127.0.0.1:0",
    }
    if command[-1] == "create":  # enroll-token create
        values.update(tags="kiosk", expires="1d")
    if command[-1] in ("keygen", "init", "grant", "create"):
        values["out"] = values["path"] = files.new_path()
    if command[-1] in ("coordinator", "agent"):
        values["state_dir"] = files.new_path()
    return values


# Parameters given even though click does not require them: the daemons' required settings
# (flag or config file), and what makes the parameter under test the only problem.
CONTEXT: dict[Command, tuple[str, ...]] = {
    ("fleet", "relay"): ("listen", "key"),
    ("fleet", "coordinator"): ("key", "listen", "state_dir", "trust_root"),
    ("fleet", "agent"): (
        "key",
        "coordinator",
        "trust_root",
        "substituter",
        "trusted_public_key",
        "state_dir",
        "listen",
    ),
    ("fleet", "ping"): ("timeout", "count", "bind"),
    ("fleetctl", "audit", "verify"): ("trust_roots",),
    ("fleetctl", "push"): ("store_path", "targets"),  # not required with --status SEQ
    ("fleetctl", "devices", "add"): ("node_id", "name"),  # or --from FILE
}

FLEETCTL_GLOBALS = ("coordinator", "key", "timeout")


@dataclass(frozen=True)
class Case:
    label: str
    argv: list[str]
    offline_error: bool  # the error must come before any network use
    must_say: str = ""  # text the error line must contain
    exit_codes: tuple[int, ...] = ()  # the statuses it may exit with (empty: any but 0)


@dataclass(frozen=True)
class Outcome:
    case: Case
    code: int | None
    stdout: str
    stderr: str

    def problems(self, command: Command) -> list[str]:
        found = []
        text = self.stdout + self.stderr
        if self.code is None:
            return [f"still running after {PROCESS_TIMEOUT:g} s"]
        if self.code == 0:
            found.append("exit status 0")
        if self.code < 0:
            found.append(f"killed by signal {-self.code}")
        for word in ("Traceback", "ExceptionGroup", "internal error"):
            if word in text:
                found.append(f"{word!r} in the output")
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("Error:")]
        if len(errors) != 1 or lines[-1] != errors[0]:
            found.append("stderr does not end with exactly one 'Error:' line")
        allowed = NOTICES.get(command, ())
        if self.code == 2:
            allowed = (*allowed, "Usage:", "Try ")
        extra = [
            line
            for line in lines[:-1]
            if not line.startswith(allowed) and not (command in DAEMONS and is_log_event(line))
        ]
        if extra:
            found.append(f"{len(extra)} more stderr lines, the first {extra[0]!r}")
        if self.case.offline_error and "cannot reach" in self.stderr:
            found.append("the bad value was not checked before contacting a peer")
        if self.case.exit_codes and self.code not in self.case.exit_codes:
            found.append(f"exit status {self.code}, expected one of {self.case.exit_codes}")
        if errors and self.case.must_say not in errors[0]:
            found.append(f"the error does not say {self.case.must_say!r}")
        return found


def option_argv(param: click.Parameter, value: str) -> list[str]:
    if isinstance(param, click.Argument):
        return [value]
    longest = max(param.opts, key=len)
    return [longest, value]


def checked_params(command: click.Command) -> list[click.Parameter]:
    """Parameters whose values we check ourselves (flags and click.Choice are click's)."""
    return [
        p
        for p in command.params
        if not (isinstance(p, click.Option) and (p.is_flag or p.hidden))
        and not isinstance(p.type, click.Choice)
        and p.name not in ("help", "version")
    ]


def build_argv(
    files: Files,
    command: Command,
    under_test: tuple[click.Parameter, str] | None = None,
    global_under_test: tuple[click.Parameter, str] | None = None,
) -> list[str]:
    program, *path = command
    values = valid_values(files, command)
    argv: list[str] = []
    if program == "fleetctl":
        for param in fleetctl_group.params:
            if global_under_test is not None and param is global_under_test[0]:
                argv += option_argv(param, global_under_test[1])
            elif param.name in FLEETCTL_GLOBALS:
                argv += option_argv(param, values[str(param.name)])
    argv += path
    target = COMMANDS[command]
    for param in target.params:
        name = str(param.name)
        if under_test is not None and param is under_test[0]:
            argv += option_argv(param, under_test[1])
        elif param.required or name in CONTEXT.get(command, ()):
            if name not in values:
                raise AssertionError(f"{' '.join(command)}: no valid value for {name!r}")
            argv += option_argv(param, values[name])
    full = fleet_argv(*argv) if program == "fleet" else fleetctl_argv(*argv)
    return full


def lookup_bad(bad: dict[str, list[str]], command: Command, name: str) -> list[str] | None:
    return bad.get(f"{command[-1]}.{name}", bad.get(name))


def run(case: Case, env: dict[str, str]) -> Outcome:
    try:
        result = subprocess.run(
            case.argv,
            capture_output=True,
            text=True,
            env=env,
            stdin=subprocess.DEVNULL,
            timeout=PROCESS_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return Outcome(case, None, out, err)
    return Outcome(case, result.returncode, result.stdout, result.stderr)


def child_env(pycache: Path) -> dict[str, str]:
    """Over a hundred short processes: let them share compiled bytecode (in a directory of
    their own, so the source tree stays clean) instead of each compiling every module again.
    """
    env = cli_env({"JOURNAL_STREAM": "", "PYTHONPYCACHEPREFIX": str(pycache)})
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run_all(files: Files, cases: list[tuple[Command, Case]]) -> None:
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        outcomes = list(pool.map(lambda case: run(case, files.env), [c for _, c in cases]))
    report = []
    for (command, case), outcome in zip(cases, outcomes, strict=True):
        problems = outcome.problems(command)
        if problems:
            report.append(
                f"{case.label}: {'; '.join(problems)}\n    argv: {' '.join(case.argv[2:])}\n"
                f"    exit {outcome.code}, stderr:\n      "
                + "\n      ".join(outcome.stderr.splitlines()[-12:])
            )
    assert not report, f"{len(report)} of {len(cases)} runs failed:\n" + "\n".join(report)


def closed_port(kind: socket.SocketKind) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def closed_udp_port() -> int:
    return closed_port(socket.SOCK_DGRAM)


def closed_tcp_port() -> int:
    return closed_port(socket.SOCK_STREAM)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    root = tmp_path_factory.mktemp("no-traceback")
    key = root / "admin.key"
    assert run_fleet("keygen", str(key)).returncode == 0
    not_a_key = root / "not-a-key"
    not_a_key.write_text("this is not a key\n")
    garbage = root / "garbage.toml"
    garbage.write_bytes(b"[[[ = not toml \x00\xff\n")
    chain = root / "granted.chain"
    granted = subprocess.run(
        fleetctl_argv(
            *("--key", str(key), "grant", NODE, "--allow", "push", "--scope", "*"),
            *("--expires", "1d", "--out", str(chain), "--no-record"),
        ),
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=60,
        check=False,
    )
    assert granted.returncode == 0, granted.stderr
    return Files(
        root=root,
        key=key,
        not_a_key=not_a_key,
        garbage_toml=garbage,
        missing=root / "missing",
        no_dir=root / "no-such-dir",
        unreachable=f"{Identity.generate().node_id}@127.0.0.1:{closed_udp_port()}",
        env=child_env(root / "pycache"),
        chain=chain,
    )


def test_every_command_is_found() -> None:
    # The walk must see the commands users know, or everything below would pass vacuously.
    for known in [
        ("fleet", "ping"),
        ("fleet", "agent"),
        ("fleetctl", "push"),
        ("fleetctl", "devices", "add"),
        ("fleetctl", "audit"),
        ("fleetctl", "audit", "verify"),
    ]:
        assert known in COMMANDS
    for command in OFFLINE:
        assert command in COMMANDS, f"OFFLINE lists {command}, which no longer exists"


# Some hundred short processes: about a minute on an idle 2-core machine, more under load.
@pytest.mark.timeout(600)
def test_an_unreachable_peer_is_one_line(files: Files) -> None:
    cases = [
        (
            command,
            Case(
                " ".join(command) + " (unreachable)",
                build_argv(files, command),
                offline_error=False,
                must_say="cannot reach",
            ),
        )
        for command in COMMANDS
        if command not in OFFLINE
    ]
    # Through a relay that refuses connections (the relay client retries: not news to users).
    relay = f"fleet-relay+insecure://{Identity.generate().node_id}@127.0.0.1:{closed_tcp_port()}"
    node = files.unreachable.partition("@")[0]
    through_relay = [
        (
            ("fleetctl", "status"),
            fleetctl_argv(
                *("--coordinator", node, "--relay", relay, "--key", str(files.key)),
                *("--timeout", str(TIMEOUT), "status"),
            ),
        ),
        (
            ("fleet", "ping"),
            fleet_argv(
                *("ping", node, "--relay", relay, "--timeout", str(TIMEOUT)),
                *("--count", "1", "--bind", "127.0.0.1:0"),
            ),
        ),
    ]
    # The bulk add, from a valid file: the same one line.
    devices = files.root / "devices.csv"
    devices.write_text(f"id,name,tags\n{NODE},kiosk-1,kiosk\n")
    bulk = fleetctl_argv(
        *("--coordinator", files.unreachable, "--key", str(files.key)),
        *("--timeout", str(TIMEOUT), "devices", "add", "--from", str(devices)),
    )
    cases.append(
        (
            ("fleetctl", "devices", "add"),
            Case("fleetctl devices add --from (unreachable)", bulk, False, "cannot reach"),
        )
    )
    for command, argv in through_relay:
        label = " ".join(command) + " (unreachable relay)"
        cases.append((command, Case(label, argv, offline_error=False, must_say="cannot reach")))
    run_all(files, cases)


# Some hundred short processes: about a minute on an idle 2-core machine, more under load.
@pytest.mark.timeout(600)
def test_each_malformed_value_is_one_line(files: Files) -> None:
    bad = bad_values(files)
    cases: list[tuple[Command, Case]] = []
    unknown = []
    for command, target in COMMANDS.items():
        for param in checked_params(target):
            name = str(param.name)
            values = lookup_bad(bad, command, name)
            if values is None:
                if name not in FREE_TEXT:
                    unknown.append(f"{' '.join(command)}: {name}")
                continue
            # A daemon's bad setting exits EX_CONFIG (click's own type checks: 2); a key file
            # exits 1, as it may yet appear (docs/operations.md, exit codes).
            codes = ((1,) if name == "key" else (2, EXIT_CONFIG)) if command in DAEMONS else ()
            for value in values:
                argv = build_argv(files, command, under_test=(param, value))
                label = f"{' '.join(command)} {name}={value!r}"
                cases.append((command, Case(label, argv, True, exit_codes=codes)))
    assert not unknown, "add malformed values to BAD (or the name to FREE_TEXT): " + ", ".join(
        unknown
    )
    # fleetctl's global options, through a command that connects (and the key and its
    # chain also through one that signs without connecting first).
    for param in checked_params(fleetctl_group):
        name = str(param.name)
        values = lookup_bad(bad, ("fleetctl",), name)
        assert values is not None, f"fleetctl --{name}: add malformed values to BAD"
        through: list[Command] = [("fleetctl", "status")]
        if name in ("key", "cert"):
            through.append(("fleetctl", "grant"))
        for command in through:
            for value in values:
                argv = build_argv(files, command, global_under_test=(param, value))
                cases.append(
                    (command, Case(f"fleetctl --{name}={value!r} {command[-1]}", argv, True))
                )
    run_all(files, cases)


def param_of(command: Command, name: str) -> click.Parameter:
    return next(p for p in COMMANDS[command].params if p.name == name)


def test_daemons_in_a_broken_environment_exit_with_one_line(files: Files) -> None:
    relay: Command = ("fleet", "relay")
    coordinator: Command = ("fleet", "coordinator")
    agent: Command = ("fleet", "agent")
    in_proc = "/proc/fleet-state"  # even root cannot create a directory here
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
    ):
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        udp.bind(("127.0.0.1", 0))
        tcp_busy = f"127.0.0.1:{tcp.getsockname()[1]}"
        udp_busy = f"127.0.0.1:{udp.getsockname()[1]}"
        # A port in use may be free after a restart (1); a state directory that cannot be
        # created is a setting to fix (EX_CONFIG).
        plan = [
            (relay, "listen", tcp_busy, "127.0.0.1", 1),
            (relay, "metrics_listen", tcp_busy, "127.0.0.1", 1),
            (coordinator, "listen", udp_busy, "127.0.0.1", 1),
            (coordinator, "state_dir", in_proc, in_proc, EXIT_CONFIG),
            (agent, "listen", udp_busy, "127.0.0.1", 1),
            (agent, "state_dir", in_proc, in_proc, EXIT_CONFIG),
        ]
        cases: list[tuple[Command, Case]] = [
            (
                command,
                Case(
                    f"{' '.join(command)} {name}={value}",
                    build_argv(files, command, under_test=(param_of(command, name), value)),
                    offline_error=True,
                    must_say=says,
                    exit_codes=(code,),
                ),
            )
            for command, name, value, says, code in plan
        ]
        run_all(files, cases)
