"""Shared pytest fixtures. Nix fixtures build on harness/nixlab.py."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleet.nix import NixStore
from harness.nixlab import Builder, FakeSystem, agent_store, fill_cache, serve_directory

# Tests press Ctrl-C (SIGINT) on real fleetctl/demo processes. A shell that starts the suite
# in the background without job control makes SIGINT ignored, and an ignored signal stays
# ignored across exec: the children would never see it. Handled signals reset to the default
# on exec, so handling it here gives every child the default disposition.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True, scope="session")
def _private_state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """fleetctl remembers audit checkpoints under $XDG_STATE_HOME/fleet: in tests, never the
    user's (the CLI processes inherit this environment through harness/cli.py)."""
    before = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("xdg-state"))
    yield
    if before is None:
        os.environ.pop("XDG_STATE_HOME", None)
    else:
        os.environ["XDG_STATE_HOME"] = before


@dataclass(frozen=True)
class Systems:
    v1: FakeSystem
    v2: FakeSystem
    broken: FakeSystem
    unsigned: FakeSystem


@dataclass(frozen=True)
class NixCache:
    url: str
    directory: Path


@pytest.fixture(scope="session")
def nix_builder(tmp_path_factory: pytest.TempPathFactory) -> Builder:
    """One builder store per session: builds are deterministic, so tests can share it."""
    return Builder(tmp_path_factory.mktemp("nix-builder"))


@pytest.fixture(scope="session")
def nix_systems(nix_builder: Builder) -> Systems:
    return Systems(
        v1=nix_builder.build("1"),
        v2=nix_builder.build("2"),
        broken=nix_builder.build("broken", broken=True),
        unsigned=nix_builder.build("unsigned", sign=False),
    )


@pytest.fixture
async def nix_cache(
    tmp_path: Path, nix_builder: Builder, nix_systems: Systems
) -> AsyncIterator[NixCache]:
    """A per-test zstd binary cache with every system, served over HTTP on loopback."""
    directory = tmp_path / "binary-cache"
    await fill_cache(
        nix_builder,
        directory,
        nix_systems.v1,
        nix_systems.v2,
        nix_systems.broken,
        nix_systems.unsigned,
    )
    with serve_directory(directory) as url:
        yield NixCache(url, directory)


@pytest.fixture
def nix_agent(tmp_path: Path) -> NixStore:
    """An empty chroot store + hermetic config for one test agent."""
    return agent_store(tmp_path / "agent")
