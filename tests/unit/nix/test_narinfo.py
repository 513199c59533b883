"""Narinfo parsing and Nix's signature check (fleet/nix/narinfo.py), against real Nix output."""

from __future__ import annotations

import base64
import contextlib
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.nix.narinfo import (
    NarInfoError,
    UntrustedNarInfo,
    nix32_decode,
    nix32_encode,
    normalize_nar_hash,
    parse_narinfo,
    parse_public_key,
    verify_narinfo,
)
from harness.narinfos import CacheKey, narinfo, store_path

# Written by Nix 2.8 (`nix copy --to file://...` of a harness/nixlab.py system signed with
# `nix store sign`), with its public key: checks our fingerprint against Nix's own.
REAL_KEY = "fleet-test-1:Y3uWsOWnWiIqF+EkgIDz8bogkets/ud6jFY14GDpBjg="
REAL_NARINFO = """\
StorePath: /nix/store/860gjpxp4559md8kgcdxwqcdpjy2y8rk-nixos-system-fleet-test-narinfo-sample
URL: nar/0nfs8fzacx4zh3kdjwyfzj4c0arjpy08yzdljh1a426hdn76lg96.nar.zst
Compression: zstd
FileHash: sha256:0nfs8fzacx4zh3kdjwyfzj4c0arjpy08yzdljh1a426hdn76lg96
FileSize: 433
NarHash: sha256:0agsgd0wqk82sws3b08g0cj2k13sjbrj2bbhpavz13zs5clf17wz
NarSize: 1160
References: 860gjpxp4559md8kgcdxwqcdpjy2y8rk-nixos-system-fleet-test-narinfo-sample \
gi4nc5f75xg2r98cxs1lmcx8b7p5brbd-fleet-test-payload-narinfo-sample
Deriver: a0iljgmf4hkfw8lf8phwfc0dwd3rlzkb-nixos-system-fleet-test-narinfo-sample.drv
Sig: fleet-test-1:W5/oWxn3y00FTAQ3VpmWWkeifbcToqDUIKV5pMAq5bd/Fpd90tNRgTj1aMHFE8Ja\
eamMGHB5+bZLKuHX2cSNCw==
"""
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
EMPTY_SHA256_NIX32 = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"  # nix-hash --to-base32


def test_nix32_matches_nix_hash_and_round_trips() -> None:
    digest = bytes.fromhex(EMPTY_SHA256)
    assert nix32_encode(digest) == EMPTY_SHA256_NIX32
    assert nix32_decode(EMPTY_SHA256_NIX32, 32) == digest
    with pytest.raises(NarInfoError, match="nix32 digit"):
        nix32_decode("e" + EMPTY_SHA256_NIX32[1:], 32)  # 'e' is not in Nix's alphabet
    with pytest.raises(NarInfoError, match="more bits"):
        nix32_decode("z" + EMPTY_SHA256_NIX32[1:], 32)  # 52*5 = 260 bits: top ones must be 0


def test_a_narinfo_written_and_signed_by_nix_parses_and_verifies() -> None:
    info = parse_narinfo(REAL_NARINFO.encode())
    assert info.store_path.endswith("-nixos-system-fleet-test-narinfo-sample")
    assert info.nar_size == 1160
    assert info.compression == "zstd"
    assert info.references == (
        "/nix/store/860gjpxp4559md8kgcdxwqcdpjy2y8rk-nixos-system-fleet-test-narinfo-sample",
        "/nix/store/gi4nc5f75xg2r98cxs1lmcx8b7p5brbd-fleet-test-payload-narinfo-sample",
    )
    assert verify_narinfo(info, [parse_public_key(REAL_KEY)]) == "fleet-test-1"


def test_every_nar_hash_spelling_normalizes_to_the_signed_nix32_form() -> None:
    digest = bytes.fromhex(EMPTY_SHA256)
    expected = "sha256:" + EMPTY_SHA256_NIX32
    assert normalize_nar_hash(expected) == expected
    assert normalize_nar_hash("sha256:" + EMPTY_SHA256) == expected
    assert normalize_nar_hash("sha256:" + base64.b64encode(digest).decode()) == expected
    assert normalize_nar_hash("sha256-" + base64.b64encode(digest).decode()) == expected
    for bad in ("md5:abc", "sha256:xyz", "sha256-AAAA", EMPTY_SHA256):
        with pytest.raises(NarInfoError):
            normalize_nar_hash(bad)


def test_a_narinfo_with_a_hex_nar_hash_verifies_against_the_nix32_fingerprint() -> None:
    key = CacheKey.generate("cache.example.org-1")
    path = store_path("system")
    hex_hash = "sha256:" + EMPTY_SHA256
    text = narinfo(path, key=key, nar_hash=hex_hash, signed_hash="sha256:" + EMPTY_SHA256_NIX32)
    assert verify_narinfo(parse_narinfo(text), [parse_public_key(key.public)]) == key.name


def test_a_signature_by_another_key_names_that_key() -> None:
    mine, theirs = CacheKey.generate("mine-1"), CacheKey.generate("theirs-1")
    info = parse_narinfo(narinfo(store_path("system"), key=theirs))
    with pytest.raises(UntrustedNarInfo, match=r"signed only by theirs-1, not by a trusted key"):
        verify_narinfo(info, [parse_public_key(mine.public)])


def test_a_key_with_the_trusted_name_but_other_bytes_does_not_verify() -> None:
    real, impostor = CacheKey.generate("cache-1"), CacheKey.generate("cache-1")
    info = parse_narinfo(narinfo(store_path("system"), key=impostor))
    with pytest.raises(UntrustedNarInfo, match="does not verify"):
        verify_narinfo(info, [parse_public_key(real.public)])


def test_a_tampered_nar_hash_or_size_or_reference_fails_the_signature() -> None:
    key = CacheKey.generate("cache-1")
    trusted = [parse_public_key(key.public)]
    path, dep = store_path("system"), store_path("dep")
    good = narinfo(path, [dep], key=key)
    assert verify_narinfo(parse_narinfo(good), trusted) == "cache-1"
    other_hash = "sha256:" + nix32_encode(hashlib.sha256(b"evil").digest())
    signed_hash = "sha256:" + nix32_encode(hashlib.sha256(path.encode()).digest())
    tampered = [
        narinfo(path, [dep], key=key, nar_hash=other_hash, signed_hash=signed_hash),
        good.replace("NarSize: 1160", "NarSize: 1161"),
        good.replace(
            dep.removeprefix("/nix/store/"), store_path("evil").removeprefix("/nix/store/")
        ),
    ]
    for text in tampered:
        info = parse_narinfo(text)
        with pytest.raises(UntrustedNarInfo, match="does not verify"):
            verify_narinfo(info, trusted)


def test_a_narinfo_without_sig_says_so() -> None:
    info = parse_narinfo(narinfo(store_path("system")))
    with pytest.raises(UntrustedNarInfo, match="has no signature"):
        verify_narinfo(info, [parse_public_key(CacheKey.generate("k-1").public)])


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda t: t.replace("StorePath: ", "StorePath: /tmp/"), "StorePath: not a store path"),
        (lambda t: t.replace("NarSize: 1160\n", ""), "missing NarSize"),
        (lambda t: t.replace("NarSize: 1160", "NarSize: 0"), "NarSize is 0"),
        (lambda t: t.replace("NarSize: 1160", "NarSize: -1"), "not a size"),
        (lambda t: t.replace("URL: ", "URL:"), "not 'Key: value'"),
        (lambda t: t + "NarSize: 5\n", "given twice"),
        (lambda t: t.replace("References: ", "References: ../etc "), "References"),
        (lambda t: t.replace("NarHash: sha256:", "NarHash: sha1:"), "sha256"),
    ],
)
def test_malformed_narinfos_are_refused_naming_the_field(edit: object, match: str) -> None:
    text = narinfo(store_path("system"), [store_path("dep")])
    assert callable(edit)
    with pytest.raises(NarInfoError, match=match):
        parse_narinfo(edit(text))


def test_unknown_fields_are_ignored_as_nix_ignores_them() -> None:
    info = parse_narinfo(narinfo(store_path("system"), extra="Future: thing\n"))
    assert info.store_path == store_path("system")


@pytest.mark.parametrize(
    "text",
    ["cache-1", "cache-1:", ":AAAA", "cache-1:notbase64!", "cache 1:" + "A" * 43 + "=",
     "cache-1:" + base64.b64encode(b"x" * 31).decode()],
)  # fmt: skip
def test_malformed_public_keys_are_refused(text: str) -> None:
    with pytest.raises(NarInfoError):
        parse_public_key(text)


def test_public_key_round_trips() -> None:
    assert str(parse_public_key(REAL_KEY)) == REAL_KEY


@given(st.binary(max_size=600))
def test_garbage_bytes_raise_only_narinfo_error(data: bytes) -> None:
    with contextlib.suppress(NarInfoError):
        parse_narinfo(data)


_FIELD_NAMES = st.sampled_from(["StorePath", "URL", "NarHash", "NarSize", "References", "Sig"])


@given(st.lists(st.tuples(_FIELD_NAMES, st.text(max_size=80)), max_size=12))
def test_field_shaped_garbage_raises_only_narinfo_error(fields: list[tuple[str, str]]) -> None:
    text = "".join(f"{key}: {value}\n" for key, value in fields)
    try:
        info = parse_narinfo(text)
    except NarInfoError:
        return
    with contextlib.suppress(UntrustedNarInfo):
        verify_narinfo(info, [parse_public_key(REAL_KEY)])


@given(st.text(max_size=120))
def test_garbage_public_keys_raise_only_narinfo_error(text: str) -> None:
    with contextlib.suppress(NarInfoError):
        parse_public_key(text)
