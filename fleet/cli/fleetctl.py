"""`fleetctl`: the admin CLI. Commands arrive with the update chain."""

from __future__ import annotations

import click

from fleet import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fleetctl")
def main() -> None:
    """fleetctl: administer a fleet through its coordinator."""


if __name__ == "__main__":
    main()
