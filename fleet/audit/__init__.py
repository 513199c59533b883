"""The audit trail: hash-chained entries, signed checkpoints, JSON-lines export, verifier."""

from fleet.audit.authority import AuthorityReplay
from fleet.audit.checkpoint import BadCheckpoint, Checkpoint, open_checkpoint, sign_checkpoint
from fleet.audit.consistency import (
    Witnessed,
    check_extends,
    check_prefix,
    check_witnesses,
    newest,
)
from fleet.audit.export import AuditExport, ExportError, entry_json, export_lines, read_export
from fleet.audit.record import (
    GENESIS,
    AuditEntry,
    Outcome,
    encode_detail,
    entry_hash,
    make_entry,
)
from fleet.audit.verifier import (
    AuditReport,
    AuditVerifyError,
    Authorize,
    signed_request,
    verify_log,
    walk_chain,
)

__all__ = [
    "GENESIS",
    "AuditEntry",
    "AuditExport",
    "AuditReport",
    "AuditVerifyError",
    "AuthorityReplay",
    "Authorize",
    "BadCheckpoint",
    "Checkpoint",
    "ExportError",
    "Outcome",
    "Witnessed",
    "check_extends",
    "check_prefix",
    "check_witnesses",
    "encode_detail",
    "entry_hash",
    "entry_json",
    "export_lines",
    "make_entry",
    "newest",
    "open_checkpoint",
    "read_export",
    "sign_checkpoint",
    "signed_request",
    "verify_log",
    "walk_chain",
]
