"""Random chains: verify_chain accepts exactly the chains an independent rule check accepts,
and no bit flip turns a valid chain into another valid one."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fleet.capability import (
    EMPTY_CHAIN,
    Authority,
    CapabilityError,
    Certificate,
    Chain,
    Permission,
    Scope,
    sign_certificate,
    verify_chain,
)
from fleet.identity import Identity
from fleet.wire import Tag, WireError, decode, encode, sign_envelope
from tests.capability_kit import NOW

KEYS = [Identity.generate() for _ in range(4)]
ROOT = KEYS[0]
TAGS = ["a", "b", "c"]
TIMES = [NOW - 300.0, NOW - 200.0, NOW - 100.0, NOW + 100.0, NOW + 200.0, NOW + 300.0]


@dataclass(frozen=True)
class Link:
    issuer: int
    signer: int
    subject: int
    actions: frozenset[Permission]
    scope: Scope
    start: float
    end: float
    delegate: bool


scopes = st.one_of(
    st.just(Scope.everything()),
    st.sets(st.sampled_from(TAGS), min_size=1).map(lambda tags: Scope.of(tags=tags)),
)


@st.composite
def links(draw: st.DrawFn) -> list[Link]:
    """Mostly well-formed chains, each link possibly broken in one random way."""
    count = draw(st.integers(1, 4))
    out: list[Link] = []
    holder = 0
    actions = frozenset(Permission)
    scope = Scope.everything()
    start, end = TIMES[0], TIMES[-1]
    for _ in range(count):
        careful = draw(st.integers(0, 9)) < 7
        issuer = holder if draw(st.integers(0, 19)) < 19 else draw(st.integers(0, 3))
        signer = issuer if draw(st.integers(0, 19)) < 19 else draw(st.integers(0, 3))
        pool = sorted(actions) if careful else list(Permission)
        new_actions = frozenset(draw(st.sets(st.sampled_from(pool), min_size=1)))
        if careful and Permission.GRANT in actions and draw(st.integers(0, 3)) > 0:
            new_actions |= {Permission.GRANT}
        if careful and not scope.all:
            new_scope = Scope.of(tags=draw(st.sets(st.sampled_from(list(scope.tags)), min_size=1)))
        else:
            new_scope = draw(scopes)
        times = [t for t in TIMES if start <= t <= end] if careful else TIMES
        if len(times) < 2:
            times = TIMES
        if careful and draw(st.integers(0, 3)) > 0:
            before = [t for t in times if t < NOW] or times
            after = [t for t in times if t > NOW] or times
            new_start, new_end = draw(st.sampled_from(before)), draw(st.sampled_from(after))
        else:
            new_start, new_end = sorted(
                draw(st.lists(st.sampled_from(times), min_size=2, max_size=2, unique=True))
            )
        if new_end <= new_start:
            new_end = new_start + 50.0
        subject = draw(st.integers(1, 3))
        delegate = draw(st.integers(0, 3)) > 0
        out.append(
            Link(issuer, signer, subject, new_actions, new_scope, new_start, new_end, delegate)
        )
        holder, actions, scope, start, end = subject, new_actions, new_scope, new_start, new_end
    return out


def build(chain_links: list[Link]) -> Chain:
    envelopes = []
    for link in chain_links:
        envelope = sign_certificate(
            KEYS[link.signer],
            KEYS[link.subject].node_id,
            link.actions,
            link.scope,
            not_before=link.start,
            not_after=link.end,
            may_delegate=link.delegate,
        )
        if link.signer != link.issuer:
            # a certificate naming `issuer` but signed by another key
            cert = decode(envelope.payload, Certificate)
            cert = Certificate(
                issuer=KEYS[link.issuer].node_id,
                subject=cert.subject,
                actions=cert.actions,
                scope=cert.scope,
                not_before=cert.not_before,
                not_after=cert.not_after,
                may_delegate=cert.may_delegate,
                serial=cert.serial,
            )
            envelope = sign_envelope(KEYS[link.signer], Tag.CAPABILITY, cert)
        envelopes.append(envelope)
    return Chain(certificates=tuple(envelopes))


def oracle(chain_links: list[Link]) -> bool:
    """The rules, written out plainly: is this chain valid now for root KEYS[0]?"""
    actions = frozenset(Permission)
    scope_all, tags = True, set(TAGS)
    start, end = float("-inf"), float("inf")
    holder, delegate = 0, True
    for link in chain_links:
        if link.signer != link.issuer or link.issuer != holder:
            return False
        if not delegate or Permission.GRANT not in actions:
            return False
        if not link.actions <= actions:
            return False
        if not scope_all and (link.scope.all or not set(link.scope.tags) <= tags):
            return False
        if link.start < start or link.end > end:
            return False
        if not link.start <= NOW <= link.end:
            return False
        actions, holder, delegate = link.actions, link.subject, link.delegate
        scope_all, tags = link.scope.all, set(link.scope.tags)
        start, end = link.start, link.end
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(links())
def test_random_chains_verify_exactly_when_built_by_the_rules(chain_links: list[Link]) -> None:
    chain = build(chain_links)
    event(f"valid={oracle(chain_links)} links={len(chain_links)}")
    try:
        authority: Authority | None = verify_chain(chain, {ROOT.node_id}, NOW)
    except CapabilityError:
        authority = None
    assert (authority is not None) == oracle(chain_links)
    if authority is not None:
        last = chain_links[-1]
        assert authority.holder == KEYS[last.subject].node_id
        assert authority.actions == last.actions
        assert authority.scope == last.scope


VALID = build(
    [
        Link(0, 0, 1, frozenset(Permission), Scope.everything(), NOW - 300, NOW + 300, True),
        Link(
            1, 1, 2, frozenset({Permission.PUSH}), Scope.of(tags=["a"]), NOW - 200, NOW + 200, False
        ),
    ]
)
VALID_BYTES = encode(VALID)


@settings(max_examples=400, deadline=None)
@given(st.integers(0, len(VALID_BYTES) - 1), st.integers(1, 255))
def test_no_byte_change_yields_a_chain_that_verifies(index: int, delta: int) -> None:
    verify_chain(VALID, {ROOT.node_id}, NOW)
    data = bytearray(VALID_BYTES)
    data[index] = (data[index] + delta) % 256
    try:
        chain = decode(bytes(data), Chain)
    except (WireError, ValueError):
        return
    try:
        verify_chain(chain, {ROOT.node_id}, NOW)
    except CapabilityError:
        return
    raise AssertionError(f"changed byte {index} and the chain still verifies")


def test_empty_chain_is_not_a_valid_chain() -> None:
    try:
        verify_chain(EMPTY_CHAIN, {ROOT.node_id}, NOW)
    except CapabilityError:
        return
    raise AssertionError("an empty chain verified")
