"""Devices as admins name them (a name, a node id, a short id as tables show it, `tag:NAME`).

One resolver for every command that takes a device: `find_device` for one device (devices
approve/remove), `resolve_targets` for push targets. Resolution happens on the admin's side,
against the coordinator's device list, so that the signed announcement lists exactly the
devices the admin meant: the coordinator cannot widen a push by changing a tag later.

A key with `push` but not `read` is listed only the devices in its scope; when one of its
targets resolves to nothing there, `resolve_push_targets` asks the coordinator (TargetCheck)
whether it names devices outside the scope, so the error says what is true.

A push names its targets to devices in two ways (fleet.protocol.targeting): `tag:NAME`
targets become the signed selector, which each agent checks against its own tags; every other
target becomes an explicit id under the signed Merkle root (`push_targets`).

A short id is a prefix of a node id (tables show the first 10 characters, NodeId.short());
it names a device only when exactly one known device has it. A name wins over a short id
that happens to spell it. Where an id is signed into something that grants authority (a
certificate's subject or scope), only a full node id is accepted (see fleetctl grant).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from fleet.admin.errors import AmbiguousTarget, CoordinatorRefused, TargetError
from fleet.identity import InvalidNodeId, NodeId
from fleet.identity.labels import TAG_PREFIX, normalize_tags
from fleet.identity.nodeid import NODE_ID_TEXT_LEN
from fleet.protocol.messages import DeviceInfo, TargetCheckReply

MIN_SHORT_ID = 4  # fewer characters match too much to mean one device
MAX_CANDIDATES = 8  # listed in an ambiguity error


def _label(device: DeviceInfo) -> str:
    """How a person recognises a device: its name, or its short id while pending."""
    return device.name or device.node_id.short()


def is_short_id(text: str) -> bool:
    """Whether `text` could be the start of a node id (and is long enough to look one up)."""
    if not MIN_SHORT_ID <= len(text) < NODE_ID_TEXT_LEN:
        return False
    try:  # completed with zero digits, a prefix in the node id alphabet parses
        NodeId.parse(text + "a" * (NODE_ID_TEXT_LEN - len(text)))
    except InvalidNodeId:
        return False
    return True


def _by_id(devices: Sequence[DeviceInfo], node_id: NodeId) -> DeviceInfo | None:
    for device in devices:
        if device.node_id == node_id:
            return device
    return None


def _candidates(matches: Sequence[DeviceInfo]) -> str:
    shown = [f"{d.name or '(pending)'} {d.node_id}" for d in matches[:MAX_CANDIDATES]]
    more = len(matches) - len(shown)
    return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


def find_device(text: str, devices: Sequence[DeviceInfo], *, what: str = "device") -> DeviceInfo:
    """The one known device `text` names: by name, full node id or unambiguous short id.

    Raises TargetError (AmbiguousTarget, listing the candidates, for a short id that several
    devices share); `what` starts the message ("device 'x': ...", "target 'x': ...").
    """
    text = text.strip()
    for device in devices:
        if device.name == text:
            return device
    try:
        node_id = NodeId.parse(text)
    except InvalidNodeId:
        node_id = None
    if node_id is not None:
        found = _by_id(devices, node_id)
        if found is None:
            raise TargetError(f"{what} {text!r}: no device with that node id")
        return found
    if is_short_id(text):
        matches = [d for d in devices if str(d.node_id).startswith(text)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise AmbiguousTarget(
                f"{what} {text!r}: short id of {len(matches)} devices, give more of the id "
                f"or the name: {_candidates(matches)}",
                tuple(d.node_id for d in matches),
            )
    raise TargetError(
        f"{what} {text!r}: no device with that name or short id "
        "(`fleetctl devices list` shows names and ids)"
    )


def _resolve_one(target: str, devices: Sequence[DeviceInfo]) -> list[DeviceInfo]:
    if target.startswith(TAG_PREFIX):
        tag = target[len(TAG_PREFIX) :]
        if not tag:
            raise TargetError(f"target {target!r}: empty tag name")
        tagged = [d for d in devices if tag in d.tags]
        approved = [d for d in tagged if d.approved]
        if not approved:
            pending = f" ({len(tagged)} pending approval)" if tagged else ""
            raise TargetError(f"target {target!r}: no approved device has tag {tag!r}{pending}")
        return approved
    device = find_device(target, devices, what="target")
    if not device.approved:
        raise TargetError(
            f"target {target!r}: device {_label(device)} is pending approval "
            f"(fleetctl devices approve {device.node_id})"
        )
    return [device]


def resolve_targets(targets: Iterable[str], devices: Sequence[DeviceInfo]) -> tuple[NodeId, ...]:
    """The node ids of every approved device the targets name, in order, without duplicates.

    Raises TargetError naming the first target that matches nothing (or only pending devices,
    or, as a short id, several devices).
    """
    resolved: list[NodeId] = []
    seen: set[NodeId] = set()
    targets = list(targets)
    if not targets:
        raise TargetError("no target given (--to NAME, NODEID or tag:NAME)")
    for target in targets:
        for device in _resolve_one(target.strip(), devices):
            if device.node_id not in seen:
                seen.add(device.node_id)
                resolved.append(device.node_id)
    return tuple(resolved)


CheckTargets = Callable[[tuple[str, ...]], Awaitable[TargetCheckReply]]


async def resolve_push_targets(
    targets: Sequence[str], devices: Sequence[DeviceInfo], check: CheckTargets
) -> tuple[NodeId, ...]:
    """`resolve_targets`, except that a target naming nothing in `devices` is checked with
    the coordinator (`check`, AdminClient.check_targets): one that names devices outside the
    key's scope is reported as out of scope for this certificate, not as unknown."""
    unresolved = []
    for target in targets:
        try:
            _resolve_one(target.strip(), devices)
        except AmbiguousTarget:
            raise
        except TargetError:
            unresolved.append(target.strip())
    if not unresolved:
        return resolve_targets(targets, devices)
    try:
        reply = await check(tuple(unresolved))
    except CoordinatorRefused:
        reply = None  # a coordinator without TargetCheck: the plain error below
    if reply is not None:
        for target in unresolved:
            if target in reply.outside:
                raise TargetError(
                    f"target {target!r}: out of scope for this certificate "
                    f"(its scope is {reply.scope or 'empty'})"
                )
    return resolve_targets(targets, devices)


@dataclass(frozen=True, slots=True)
class PushTargets:
    """What a push names, as signed (selector, explicit ids) and as resolved now (devices)."""

    typed: tuple[str, ...]  # as the admin typed them, for display and the audit log
    devices: tuple[NodeId, ...]  # every approved device they name now, in order
    explicit: tuple[NodeId, ...]  # named by name, node id or short id
    selector: tuple[str, ...]  # the tags of `tag:NAME` targets, normalized


async def push_targets(
    targets: Sequence[str], devices: Sequence[DeviceInfo], check: CheckTargets
) -> PushTargets:
    """`resolve_push_targets`, split into the selector and the explicit ids it signs."""
    typed = tuple(t.strip() for t in targets)
    resolved = await resolve_push_targets(typed, devices, check)
    named = [t for t in typed if not t.startswith(TAG_PREFIX)]
    return PushTargets(
        typed=typed,
        devices=resolved,
        explicit=resolve_targets(named, devices) if named else (),
        selector=normalize_tags(t for t in typed if t.startswith(TAG_PREFIX)),
    )
