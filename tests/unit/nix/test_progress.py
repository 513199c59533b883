"""ProgressParser and the error classifier, fed lines recorded from Nix 2.8."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.nix.errors import (
    CacheUnreachable,
    HashMismatch,
    NixError,
    PathNotFound,
    ProfileError,
    SignatureError,
    classify,
)
from fleet.nix.progress import FetchProgress, ProgressParser

P_DEP = "/nix/store/sax3hgycxvsz169wmydba2gbyibji4z2-fleet-test-dep-1"
P_TOP = "/nix/store/bfjfx9wh33i70s2zls876qnp1k4d2sn9-nixos-system-test-1"
URL = "http://127.0.0.1:18765"

# A trimmed `nix-store --realise --log-format internal-json` run (ids shortened).
RECORDED = [
    '@nix {"action":"start","fields":["' + URL + '/nix-cache-info"],"id":1,"type":101}',
    '@nix {"action":"result","fields":[21,21,0,0],"id":1,"type":105}',
    '@nix {"action":"stop","id":1}',
    '@nix {"action":"msg","level":3,"msg":"these 2 paths will be fetched (0.00 MiB download)"}',
    '@nix {"action":"start","id":2,"level":0,"text":"","type":102}',
    '@nix {"action":"start","id":3,"level":0,"text":"","type":103}',
    '@nix {"action":"result","fields":[0,2,0,0],"id":3,"type":105}',
    '@nix {"action":"result","fields":[101,442],"id":2,"type":106}',
    '@nix {"action":"result","fields":[100,992],"id":2,"type":106}',
    '@nix {"action":"start","fields":["' + P_DEP + '","' + URL + '","local"],"id":4,"type":100}',
    '@nix {"action":"start","fields":["' + URL + '/nar/1g.nar.zst"],"id":5,"type":101}',
    '@nix {"action":"result","fields":[40,90,0,0],"id":5,"type":105}',
    '@nix {"action":"result","fields":[90,90,0,0],"id":5,"type":105}',
    '@nix {"action":"stop","id":5}',
    '@nix {"action":"stop","id":4}',
    '@nix {"action":"result","fields":[1,2,0,0],"id":3,"type":105}',
    '@nix {"action":"start","fields":["' + URL + '/bf.narinfo"],"id":6,"type":101}',
    '@nix {"action":"result","fields":[611,611,0,0],"id":6,"type":105}',
    '@nix {"action":"stop","id":6}',
    '@nix {"action":"start","fields":["' + P_TOP + '","' + URL + '","local"],"id":7,"type":100}',
    '@nix {"action":"start","fields":["' + URL + '/nar/0s.nar.zst"],"id":8,"type":101}',
    '@nix {"action":"result","fields":[352,352,0,0],"id":8,"type":105}',
    '@nix {"action":"stop","id":8}',
    '@nix {"action":"stop","id":7}',
    '@nix {"action":"result","fields":[2,2,0,0],"id":3,"type":105}',
    '@nix {"action":"stop","id":3}',
]


def test_recorded_run_gives_paths_and_bytes() -> None:
    parser = ProgressParser()
    snaps = [s for line in RECORDED if (s := parser.feed(line)) is not None]
    assert snaps[-1] == FetchProgress(2, 2, 442, 442, 992)
    # narinfo and nix-cache-info downloads never count as payload bytes
    assert all(s.bytes_done <= 442 for s in snaps)
    assert FetchProgress(0, 2, 40, 442, 992, (P_DEP,)) in snaps
    assert any(s.paths_done == 1 and s.copying == (P_TOP,) for s in snaps)
    assert [s.bytes_done for s in snaps] == sorted(s.bytes_done for s in snaps)
    assert "these 2 paths will be fetched (0.00 MiB download)" in parser.messages


def test_unchanged_state_emits_nothing() -> None:
    parser = ProgressParser()
    for line in RECORDED:
        parser.feed(line)
    assert parser.feed(RECORDED[-1]) is None
    assert parser.feed("") is None


@given(st.lists(st.text(max_size=200), max_size=30))
def test_garbage_never_crashes(lines: list[str]) -> None:
    parser = ProgressParser()
    for line in lines:
        parser.feed(line)
        parser.feed("@nix " + line)
    snap = parser.snapshot()
    assert snap.paths_done >= 0


@pytest.mark.parametrize(
    ("lines", "expected", "reason"),
    [
        (
            [
                "\x1b[35;1mwarning:\x1b[0m the substitute for '/nix/store/x' from 'http://c' "
                "is not signed by any of the keys in 'trusted-public-keys'",
                "\x1b[31;1merror:\x1b[0m build of '/nix/store/x' failed",
            ],
            SignatureError,
            "is not signed by any of the keys",
        ),
        (
            ["error: cannot add path '/nix/store/x' because it lacks a valid signature"],
            SignatureError,
            "lacks a valid signature",
        ),
        (
            ["error: hash mismatch importing path '/nix/store/x';", "  specified: sha256:1"],
            HashMismatch,
            "hash mismatch importing path",
        ),
        (
            [
                "warning: unable to download 'http://127.0.0.1:1/nix-cache-info': "
                "Couldn't connect to server (7)",
                "don't know how to build these paths:",
                "error: build of '/nix/store/x' failed",
            ],
            CacheUnreachable,
            "Couldn't connect to server",
        ),
        (
            ["don't know how to build these paths:", "error: build of '/nix/store/x' failed"],
            PathNotFound,
            "don't know how to build",
        ),
        (
            ["error: profile version 7 does not exist"],
            ProfileError,
            "profile version 7",
        ),
        (["error: something new"], NixError, "error: something new"),
        ([], NixError, "without a message"),
    ],
)
def test_classify(lines: list[str], expected: type[NixError], reason: str) -> None:
    error = classify(lines, command=["nix-store"], returncode=1)
    assert type(error) is expected
    assert reason in error.reason
    assert "\x1b" not in error.reason
    assert error.returncode == 1
    assert len(error.stderr_tail) == len(lines)


def test_path_info_json_of_old_and_new_nix() -> None:
    from fleet.nix.closure import PathInfo, _entries

    info = {"narHash": "sha256-x", "narSize": 872, "references": [P_DEP], "signatures": ["k:s"]}
    old = _entries([{"path": P_TOP, **info}, {"path": P_DEP, "valid": False}])
    new = _entries({P_TOP: info, P_DEP: None})
    assert old == new
    assert PathInfo.from_json(new[0]) == PathInfo(P_TOP, "sha256-x", 872, (P_DEP,), ("k:s",))
