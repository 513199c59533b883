"""Unit-test fixtures: no test's logging setup leaks into the next one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    """fleetctl's commands, run in-process by click's CliRunner, call setup_logging (its
    default level filters out info): a later test capturing logs would see none of them."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)
