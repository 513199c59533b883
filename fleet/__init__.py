"""fleet: asynchronous, pull-based updates for fleets of NixOS devices over a QUIC mesh."""

__version__ = "0.1.0"
