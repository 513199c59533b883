"""`python -m fleet ...` runs the `fleet` CLI (tests use this to start real processes)."""

from fleet.cli.fleet import main

main()
