"""Framing: frames survive any split; oversized or truncated frames are caught early, on TCP too."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from fleet.wire import (
    FrameDecoder,
    FrameTooLarge,
    TruncatedFrame,
    encode_frame,
    read_frame,
    write_frame,
)

FRAMES = [b"", b"a", b"hello world", bytes(range(256)) * 3]
STREAM = b"".join(encode_frame(f) for f in FRAMES)


def test_encode_frame_layout() -> None:
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode_frame(b"") == b"\x00\x00\x00\x00"


def test_encode_frame_refuses_oversize() -> None:
    assert encode_frame(b"x" * 10, cap=10)[4:] == b"x" * 10
    with pytest.raises(FrameTooLarge, match="frame of 11 bytes exceeds the cap of 10 bytes"):
        encode_frame(b"x" * 11, cap=10)


def test_whole_stream_at_once() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(STREAM) == FRAMES
    assert decoder.buffered == 0
    decoder.end_of_input()


def test_split_at_every_byte_boundary() -> None:
    for split in range(len(STREAM) + 1):
        decoder = FrameDecoder()
        frames = decoder.feed(STREAM[:split]) + decoder.feed(STREAM[split:])
        assert frames == FRAMES, split
        decoder.end_of_input()


def test_one_byte_at_a_time() -> None:
    decoder = FrameDecoder()
    frames: list[bytes] = []
    for i in range(len(STREAM)):
        frames += decoder.feed(STREAM[i : i + 1])
    assert frames == FRAMES


def test_oversize_header_rejected_before_its_data() -> None:
    decoder = FrameDecoder(cap=100)
    assert decoder.feed(encode_frame(b"ok")) == [b"ok"]
    assert decoder.feed(struct.pack(">I", 101)[:3]) == []
    with pytest.raises(FrameTooLarge, match="announced a frame of 101 bytes; the cap is 100"):
        decoder.feed(struct.pack(">I", 101)[3:])  # the header alone; no payload sent yet
    assert decoder.buffered == 0
    with pytest.raises(FrameTooLarge):  # a failed decoder stays failed
        decoder.feed(b"more")


def test_largest_allowed_frame() -> None:
    decoder = FrameDecoder(cap=1000)
    assert decoder.feed(encode_frame(b"y" * 1000, cap=1000)) == [b"y" * 1000]
    with pytest.raises(FrameTooLarge):
        FrameDecoder(cap=1000).feed(struct.pack(">I", 0xFFFFFFFF))


@pytest.mark.parametrize(
    ("tail", "text"),
    [
        (b"\x00\x00", "2 of 4 header bytes"),
        (b"\x00\x00\x00\x05ab", "2 of 5 payload bytes"),
        (b"\x00\x00\x00\x05", "0 of 5 payload bytes"),
    ],
)
def test_end_inside_a_frame_is_truncation(tail: bytes, text: str) -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(b"done") + tail) == [b"done"]
    with pytest.raises(TruncatedFrame, match=text):
        decoder.end_of_input()


# --- asyncio over real loopback TCP -----------------------------------------------------------

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@asynccontextmanager
async def tcp_pair() -> AsyncIterator[tuple[Streams, Streams]]:
    """A connected (client, server) pair of stream pairs over 127.0.0.1."""
    accepted: asyncio.Future[Streams] = asyncio.get_running_loop().create_future()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result((reader, writer))

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    peer = await asyncio.wait_for(accepted, 5)
    try:
        yield client, peer
    finally:
        for _, writer in (client, peer):
            writer.close()
        async with asyncio.timeout(5):
            for _, writer in (client, peer):
                await writer.wait_closed()
            server.close()
            await server.wait_closed()


async def test_frames_over_tcp() -> None:
    big = bytes(range(256)) * 4096  # exactly 1 MiB, the default cap
    async with tcp_pair() as ((reader, _), (_, writer)):

        async def send() -> None:
            for frame in [*FRAMES, big]:
                await write_frame(writer, frame, timeout=10)
            writer.write_eof()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(send())
            received = [await read_frame(reader, timeout=10) for _ in range(len(FRAMES) + 1)]
            assert await read_frame(reader, timeout=10) is None  # clean end between frames
    assert received == [*FRAMES, big]


async def test_write_frame_refuses_oversize() -> None:
    async with tcp_pair() as (_, (_, writer)):
        with pytest.raises(FrameTooLarge):
            await write_frame(writer, b"x" * 11, cap=10, timeout=5)


@pytest.mark.parametrize(
    ("sent", "text"),
    [(b"\x00\x00\x00", "3 of 4 header bytes"), (b"\x00\x00\x00\x09abc", "3 of 9 payload bytes")],
)
async def test_truncated_frame_over_tcp(sent: bytes, text: str) -> None:
    async with tcp_pair() as ((reader, _), (_, writer)):
        writer.write(encode_frame(b"first") + sent)
        writer.write_eof()
        assert await read_frame(reader, timeout=5) == b"first"
        with pytest.raises(TruncatedFrame, match=text):
            await read_frame(reader, timeout=5)


async def test_oversize_header_over_tcp_fails_without_waiting_for_data() -> None:
    async with tcp_pair() as ((reader, _), (_, writer)):
        writer.write(struct.pack(">I", 2000))  # then silence, connection left open
        await writer.drain()
        with pytest.raises(FrameTooLarge, match="2000 bytes; the cap is 1000"):
            await read_frame(reader, cap=1000, timeout=10)


@pytest.mark.parametrize("sent", [b"", b"\x00\x00\x00\x05ab"])
async def test_read_frame_times_out(sent: bytes) -> None:
    async with tcp_pair() as ((reader, _), (_, writer)):
        writer.write(sent)
        await writer.drain()
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(TimeoutError):
            await read_frame(reader, timeout=0.2)
        assert loop.time() - start < 5
