"""NixStore: the arguments and local paths of the system store, a chroot store and a cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.nix import NixStore
from fleet.vocabulary import check_store_path

GOOD = "/nix/store/bfjfx9wh33i70s2zls876qnp1k4d2sn9-nixos-system-test-1"


def test_store_descriptions(tmp_path: Path) -> None:
    assert check_store_path(GOOD) == GOOD
    system = NixStore()
    assert system.store_args() == []
    assert str(system.real_path(GOOD)) == GOOD
    assert str(system.system_profile) == "/nix/var/nix/profiles/system"
    chroot = NixStore.chroot(tmp_path)
    assert chroot.store_args() == ["--store", str(tmp_path)]
    assert chroot.real_path(GOOD) == tmp_path / GOOD.lstrip("/")
    assert chroot.system_profile == tmp_path / "nix/var/nix/profiles/system"
    cache = NixStore.at_uri("http://127.0.0.1:1")
    assert cache.store_args() == ["--store", "http://127.0.0.1:1"]
    with pytest.raises(ValueError, match="no local files"):
        cache.real_path(GOOD)
