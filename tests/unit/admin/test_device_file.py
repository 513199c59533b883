"""Device files for `fleetctl devices add --from`: both formats, and every bad line named."""

from __future__ import annotations

import json

import pytest

from fleet.admin.device_file import (
    MAX_BATCH_BYTES,
    DeviceFileError,
    check_batch_size,
    parse_device_file,
)
from fleet.identity import Identity

A, B = (str(Identity.generate().node_id) for _ in range(2))


def test_csv_with_any_column_order_blank_lines_and_tag_prefixes() -> None:
    listed = parse_device_file(f"name,tags,id\n\nkiosk-1,tag:kiosk berlin,{A}\nr-1,,{B}\n")
    assert [(str(e.node_id), e.name, e.tags) for e in listed.entries] == [
        (A, "kiosk-1", ("berlin", "kiosk")),
        (B, "r-1", ()),
    ]
    assert listed.lines == (3, 4)


def test_json_lines_take_a_list_or_a_string_of_tags() -> None:
    text = "\n".join(
        json.dumps(row)
        for row in ({"id": A, "name": "k-1", "tags": ["kiosk"]}, {"id": B, "name": "k-2"})
    )
    listed = parse_device_file(text + "\n")
    assert [(e.name, e.tags) for e in listed.entries] == [("k-1", ("kiosk",)), ("k-2", ())]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (f"id,name\n{A},k-1\n{A[:-1]}x,k-2\n", "f line 3: bad id"),
        (f"id,name\n{A},k-1\n{B},k-1\n", "f line 3: name 'k-1' is already on line 2"),
        (f"id,name\n{A},k-1\n\n{A},k-2\n", "f line 4: id"),
        (f"id,name,owner\n{A},k-1,me\n", "f line 1: unknown column 'owner'"),
        (f"id,tags\n{A},kiosk\n", "f line 1: no name column"),
        (f"id,name,tags\n{A},k-1,bad/tag\n", "f line 2: tag 'bad/tag'"),
        (f"id,name\n{A},k-1,extra\n", "f line 2: 3 columns, the header has 2"),
        (f"id,name\n{A},-bad\n", "f line 2: device name"),
        (f'{{"id": "{A}", "name": "k-1"}}\n[1]\n', "f line 2: not a JSON object"),
        (f'{{"id": "{A}", "name": "k-1"}}\n{{"id": 5}}\n', "f line 2: id must be given as text"),
        (f'{{"id": "{A}", "name": "k-1", "tags": [1]}}\n', "f line 1: tags must be a list"),
        ('{"id": \n', "f line 1: not JSON"),
        ("id,name\n", "f: no devices in it"),
        ("", "f: empty"),
    ],
)
def test_the_first_bad_line_refuses_the_file(text: str, says: str) -> None:
    with pytest.raises(DeviceFileError) as refused:
        parse_device_file(text, "f")
    assert says in str(refused.value)


def test_a_coordinator_refusal_of_entry_n_is_told_as_its_line() -> None:
    listed = parse_device_file(f"id,name\n\n{A},k-1\n\n\n{B},k-2\n", "devices.csv")
    assert listed.explain("entry 2: device x is already registered", "devices.csv") == (
        "devices.csv line 6: device x is already registered"
    )
    assert listed.explain("entry 9: out of range", "f") == "entry 9: out of range"


def test_ten_thousand_devices_fit_one_request_and_a_larger_file_is_refused_before_sending() -> None:
    rows = [
        f"{Identity.generate().node_id},kiosk-berlin-{i:05d},kiosk berlin" for i in range(10_000)
    ]
    check_batch_size(parse_device_file("id,name,tags\n" + "\n".join(rows)))
    long = [
        f"{Identity.generate().node_id},{'k' * 57}{i:05d},kiosk"
        for i in range(MAX_BATCH_BYTES // 90)
    ]
    with pytest.raises(DeviceFileError, match="split it into files of about"):
        check_batch_size(parse_device_file("id,name,tags\n" + "\n".join(long)))
