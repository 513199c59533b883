"""Store path checks: only a plain /nix/store/HASH-NAME path passes."""

from __future__ import annotations

import pytest

from fleet.vocabulary import InvalidStorePath, check_store_path

GOOD = "/nix/store/bfjfx9wh33i70s2zls876qnp1k4d2sn9-nixos-system-test-1"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "--option",
        "/nix/store/bfjfx9wh33i70s2zls876qnp1k4d2sn9",
        GOOD + "/bin/switch-to-configuration",
        GOOD + "\n",
        "/nix/store/efjfx9wh33i70s2zls876qnp1k4d2sn9-e-has-no-e",  # 'e' is not base32 here
        "/nix/store/bfjfx9wh33i70s2zls876qnp1k4d2sn9-.hidden",
        "/etc/passwd",
    ],
)
def test_store_paths_are_validated(bad: str) -> None:
    with pytest.raises(InvalidStorePath):
        check_store_path(bad)
