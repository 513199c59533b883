"""Sending and receiving protocol messages on a stream: one wire frame per message."""

from __future__ import annotations

from typing import TypeVar, overload

from fleet.wire import (
    ByteReader,
    ByteWriter,
    Message,
    TruncatedFrame,
    decode,
    encode,
    read_frame,
    write_frame,
)

M = TypeVar("M", bound=Message)

# Protocol messages are small; a status snapshot of a large fleet is the biggest. Keep the cap
# well above it but far below what would let a peer make us buffer without bound.
MESSAGE_CAP = 8 * 1024 * 1024


async def send_message(writer: ByteWriter, message: Message, *, timeout: float) -> None:
    await write_frame(writer, encode(message), cap=MESSAGE_CAP, timeout=timeout)


@overload
async def recv_message(
    reader: ByteReader, expected: None = None, *, timeout: float | None
) -> Message: ...
@overload
async def recv_message(reader: ByteReader, expected: type[M], *, timeout: float | None) -> M: ...


async def recv_message(
    reader: ByteReader,
    expected: type[Message] | None = None,
    *,
    timeout: float | None,
) -> Message:
    """The next message; EOF between messages raises EOFError, bad input a WireError."""
    frame = await read_frame(reader, cap=MESSAGE_CAP, timeout=timeout)
    if frame is None:
        raise EOFError("stream closed by peer")
    return decode(frame, expected)


__all__ = ["MESSAGE_CAP", "TruncatedFrame", "recv_message", "send_message"]
