"""`fleet`: key management and the long-running daemons (relay; coordinator and agent later)."""

from __future__ import annotations

import click

from fleet import __version__
from fleet.cli.agent import agent as agent_command
from fleet.cli.common import FleetGroup, load_key_or_fail
from fleet.cli.coordinator import coordinator as coordinator_command
from fleet.cli.ping import ping as ping_command
from fleet.cli.relay import relay as relay_command
from fleet.identity import KeyFileError, write_new_key


@click.group(cls=FleetGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fleet")
def main() -> None:
    """fleet: NixOS fleet management over a peer-to-peer QUIC mesh."""


@main.command()
@click.argument("path", type=click.Path(dir_okay=False))
def keygen(path: str) -> None:
    """Write a new Ed25519 key to PATH (mode 0600) and print its node id."""
    try:
        identity = write_new_key(path)
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(str(identity.node_id))


@main.command(name="id")
@click.argument("path", type=click.Path(dir_okay=False))
def id_(path: str) -> None:
    """Print the node id of a fleet key file or an OpenSSH ed25519 private key."""
    click.echo(str(load_key_or_fail(path).node_id))


main.add_command(relay_command)
main.add_command(coordinator_command)
main.add_command(agent_command)
main.add_command(ping_command)
