"""Shared CLI plumbing: turning the project's typed errors into clean click errors."""

from __future__ import annotations

from pathlib import Path

import click

from fleet.identity import Identity, InvalidNodeId, KeyFileError, NodeId, load_identity


def load_key_or_fail(path: str | Path) -> Identity:
    try:
        return load_identity(path)
    except KeyFileError as exc:
        raise click.ClickException(str(exc)) from exc


def parse_node_id_or_fail(text: str, what: str = "node id") -> NodeId:
    try:
        return NodeId.parse(text)
    except InvalidNodeId as exc:
        raise click.BadParameter(f"{text!r}: {exc}", param_hint=what) from exc
