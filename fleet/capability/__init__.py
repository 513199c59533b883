"""Capabilities: delegated, scoped, expiring authority from an organization's trust roots.

See fleet.capability.chain for the rules a chain must follow, fleet.capability.revocation
for who may revoke what, and docs/security.md for the model as a whole.
"""

from fleet.capability.certificate import (
    ALL_PERMISSIONS,
    Certificate,
    Permission,
    Scope,
    certificate_id,
    format_id,
    parse_id,
    parse_permissions,
    sign_certificate,
)
from fleet.capability.chain import (
    EMPTY_CHAIN,
    MAX_CHAIN,
    Authority,
    Chain,
    authority_of,
    certificates_of,
    is_root,
    issue,
    verify_chain,
)
from fleet.capability.chainfile import (
    ChainFileError,
    format_chain,
    parse_chain,
    read_chain,
    write_chain,
)
from fleet.capability.errors import (
    ActionNotAllowed,
    BadRevocation,
    BrokenLink,
    CapabilityError,
    Expired,
    NotDelegable,
    NotSubject,
    OutOfScope,
    Revoked,
    UnknownRoot,
    Widened,
)
from fleet.capability.revocation import (
    Revocation,
    RevocationList,
    SignedRevocation,
    revoke,
    verify_revocation,
)

__all__ = [
    "ALL_PERMISSIONS",
    "EMPTY_CHAIN",
    "MAX_CHAIN",
    "ActionNotAllowed",
    "Authority",
    "BadRevocation",
    "BrokenLink",
    "CapabilityError",
    "Certificate",
    "Chain",
    "ChainFileError",
    "Expired",
    "NotDelegable",
    "NotSubject",
    "OutOfScope",
    "Permission",
    "Revocation",
    "RevocationList",
    "Revoked",
    "Scope",
    "SignedRevocation",
    "UnknownRoot",
    "Widened",
    "authority_of",
    "certificate_id",
    "certificates_of",
    "format_chain",
    "format_id",
    "is_root",
    "issue",
    "parse_chain",
    "parse_id",
    "parse_permissions",
    "read_chain",
    "revoke",
    "sign_certificate",
    "verify_chain",
    "verify_revocation",
    "write_chain",
]
