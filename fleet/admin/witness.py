"""fleetctl as an audit witness: the last signed checkpoint it saw, per coordinator.

`fleetctl audit verify` checks the coordinator's log against this checkpoint before it
believes anything else (the log must extend it: fleet.audit.consistency), then remembers the
newest checkpoint of the log it verified. The file lives in fleetctl's state directory
(`$XDG_STATE_HOME/fleet`, default ~/.local/state/fleet, or `state-dir` / FLEET_STATE_DIR /
`--state-dir`), one per coordinator, written atomically (mode 0600). Losing it loses only
this machine's memory; a file that cannot be read stops the verification, since quietly
starting over is exactly what a rewritten log would want.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path

from fleet.audit import BadCheckpoint, open_checkpoint
from fleet.durable import replace_durably
from fleet.identity import NodeId
from fleet.wire import SignedEnvelope, WireError, decode, encode

FORMAT = "fleet-audit-checkpoint/1"
SUBDIR = "audit-checkpoints"


class WitnessFileError(Exception):
    """The remembered checkpoint exists but cannot be used (the message says what to do)."""


class CheckpointMemory:
    def __init__(self, state_dir: Path, coordinator: NodeId) -> None:
        self.coordinator = coordinator
        self.path = state_dir / SUBDIR / f"{coordinator}.json"

    def load(self) -> SignedEnvelope | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise WitnessFileError(f"cannot read {self.path}: {exc}") from None
        try:
            document = json.loads(text)
            if not isinstance(document, dict) or document.get("format") != FORMAT:
                raise ValueError(f"not a {FORMAT} file")
            raw = base64.b64decode(str(document["envelope"]), validate=True)
            envelope = decode(raw, SignedEnvelope)
            open_checkpoint(envelope, self.coordinator)
        except (ValueError, KeyError, binascii.Error, WireError, BadCheckpoint) as exc:
            raise WitnessFileError(
                f"{self.path} is unusable ({exc}); move it away to forget what this machine "
                "saw of the coordinator's audit log"
            ) from None
        return envelope

    def save(self, envelope: SignedEnvelope) -> None:
        checkpoint = open_checkpoint(envelope, self.coordinator)
        document = {
            "format": FORMAT,
            "coordinator": str(self.coordinator),
            "sequence": checkpoint.sequence,
            "head": checkpoint.head.hex(),
            "time": checkpoint.time,
            "envelope": base64.b64encode(encode(envelope)).decode("ascii"),
        }
        data = (json.dumps(document, indent=1, sort_keys=True) + "\n").encode()
        try:
            replace_durably(self.path, data)
        except OSError as exc:
            raise WitnessFileError(f"cannot write {self.path}: {exc.strerror or exc}") from None
