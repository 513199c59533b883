"""What `switch-to-configuration` is asked to do: an announcement carries one of these."""

from __future__ import annotations

import enum


class Action(enum.StrEnum):
    SWITCH = "switch"  # activate now and make it the boot default
    BOOT = "boot"  # boot default only; active after the next reboot
    TEST = "test"  # activate now; the previous default boots next time
    DRY_ACTIVATE = "dry-activate"
