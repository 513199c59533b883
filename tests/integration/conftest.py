"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from harness.fleetlab import FleetLab
from harness.nixlab import Builder
from tests.conftest import NixCache


@pytest.fixture
async def lab(tmp_path: Path, nix_builder: Builder, nix_cache: NixCache) -> AsyncIterator[FleetLab]:
    """A started fleet (relay, coordinator) whose agents fetch from the test binary cache."""
    lab = FleetLab(
        tmp_path / "lab", substituter=nix_cache.url, trusted_key=nix_builder.key.public_key
    )
    try:
        await lab.start()
        yield lab
    finally:
        print(await lab.close())  # shown by pytest when the test fails
