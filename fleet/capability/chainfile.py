"""Chain files: a subject's certificate chain as text, for `--cert FILE` and FLEET_CERT.

The chain is public (it proves authority only together with the subject's key), so the file
is plain text that can sit in a CI variable: comment lines describing the chain for people,
then the encoded Chain in base64 between BEGIN/END lines. Only the armored part is read.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from fleet.capability.certificate import format_id
from fleet.capability.chain import Chain, certificates_of, iso
from fleet.capability.errors import CapabilityError
from fleet.wire import WireError, decode, encode

BEGIN = "-----BEGIN FLEET CAPABILITY CHAIN-----"
END = "-----END FLEET CAPABILITY CHAIN-----"


class ChainFileError(Exception):
    """A chain file that cannot be read (the message names the file and the problem)."""


def format_chain(chain: Chain) -> str:
    lines = []
    for index, (cert_id, cert) in enumerate(certificates_of(chain), start=1):
        lines.append(
            f"# {index}. {cert.issuer.short()} -> {cert.subject}: "
            f"{','.join(cert.actions)} on {cert.scope.describe()}, "
            f"{iso(cert.not_before)} .. {iso(cert.not_after)}"
            + (", may delegate" if cert.may_delegate else "")
        )
        lines.append(f"#    id {format_id(cert_id)}")
    body = base64.b64encode(encode(chain)).decode("ascii")
    lines.append(BEGIN)
    lines.extend(body[i : i + 64] for i in range(0, len(body), 64))
    lines.append(END)
    return "\n".join(lines) + "\n"


def parse_chain(text: str, source: str = "chain") -> Chain:
    try:
        start = text.index(BEGIN) + len(BEGIN)
        end = text.index(END, start)
    except ValueError:
        raise ChainFileError(f"{source}: no {BEGIN} ... {END} block") from None
    try:
        raw = base64.b64decode("".join(text[start:end].split()), validate=True)
        chain = decode(raw, Chain)
    except (binascii.Error, ValueError) as exc:
        raise ChainFileError(f"{source}: not a valid chain: {exc}") from None
    except WireError as exc:
        raise ChainFileError(f"{source}: not a valid chain: {exc}") from None
    try:
        certificates_of(chain)
    except CapabilityError as exc:
        raise ChainFileError(f"{source}: {exc}") from None
    return chain


def read_chain(path: str | Path) -> Chain:
    try:
        text = Path(path).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ChainFileError(f"cannot read certificate chain {path}: {exc}") from None
    return parse_chain(text, str(path))


def write_chain(path: str | Path, chain: Chain) -> None:
    Path(path).write_text(format_chain(chain), "utf-8")
