"""What `fleetctl push` accepts as the system: store paths and links to them (./result)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleet.admin.store_path import NotASystemPath, resolve_system_path

SYSTEM = "/nix/store/" + "a" * 32 + "-nixos-system-kiosk-24.05"
DRV = "/nix/store/" + "b" * 32 + "-nixos-system-kiosk-24.05.drv"


def test_a_store_path_is_taken_as_it_is_even_when_not_on_this_machine() -> None:
    assert resolve_system_path(SYSTEM) == SYSTEM


def test_a_result_link_resolves_to_its_store_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    os.symlink(SYSTEM, tmp_path / "result")  # a chroot store's link: the target is not here
    monkeypatch.chdir(tmp_path)
    assert resolve_system_path("./result") == SYSTEM
    assert resolve_system_path("result") == SYSTEM
    assert resolve_system_path(str(tmp_path / "result")) == SYSTEM


def test_chains_of_relative_and_absolute_links_are_followed(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    os.symlink(SYSTEM, tmp_path / "sub" / "result")
    os.symlink("sub/result", tmp_path / "relative")
    os.symlink(tmp_path / "relative", tmp_path / "absolute")
    os.symlink("../absolute", tmp_path / "sub" / "up")
    for name in ("relative", "absolute", "sub/up"):
        assert resolve_system_path(str(tmp_path / name)) == SYSTEM


def test_a_path_inside_a_store_path_suggests_the_top_level_one(tmp_path: Path) -> None:
    with pytest.raises(NotASystemPath, match=f"is inside the store path {SYSTEM}; pass that"):
        resolve_system_path(SYSTEM + "/bin/switch-to-configuration")
    os.symlink(SYSTEM, tmp_path / "result")
    with pytest.raises(NotASystemPath, match=f"-> {SYSTEM}/bin.*inside the store path {SYSTEM}"):
        resolve_system_path(str(tmp_path / "result" / "bin"))


def test_a_derivation_is_refused_with_build_it_first(tmp_path: Path) -> None:
    with pytest.raises(NotASystemPath, match=r"is a derivation, not a system: build it first"):
        resolve_system_path(DRV)
    os.symlink(DRV, tmp_path / "drv-link")
    with pytest.raises(NotASystemPath, match=r"-> .*\.drv\) is a derivation"):
        resolve_system_path(str(tmp_path / "drv-link"))


def test_anything_else_says_what_to_pass(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    os.symlink(tmp_path / "file", tmp_path / "link")
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    cases = {
        str(tmp_path / "missing"): "not a store path, and no such file; pass the system's",
        str(tmp_path / "file"): "not a store path \\(not in /nix/store\\); pass the system's",
        str(tmp_path / "link"): "-> .*file\\): not a store path",
        str(tmp_path / "loop"): "too many levels of symbolic links",
        "/nix/store/short-name": "not a store path; pass the system's",
        "/nix/store": "not a store path",
    }
    for text, match in cases.items():
        with pytest.raises(NotASystemPath, match=match):
            resolve_system_path(text)
