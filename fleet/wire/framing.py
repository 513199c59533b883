"""Length-prefixed frames: a 4-byte big-endian length, then that many payload bytes.

Streams (TCP to the relay, QUIC streams) carry a sequence of frames, each one message.
The cap is checked on the header alone, so a peer cannot make us buffer more than the cap
by announcing a huge frame. `FrameDecoder` is the sans-IO core; `read_frame`/`write_frame`
are thin adapters for asyncio streams.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Protocol

from fleet.wire.errors import FrameTooLarge, TruncatedFrame, WireError

MAX_FRAME = 1 << 20  # 1 MiB: default cap on a frame's payload
HEADER_LEN = 4
_HEADER = struct.Struct(">I")


def encode_frame(payload: bytes, cap: int = MAX_FRAME) -> bytes:
    """Header plus payload; refuses payloads the peer would reject anyway."""
    if len(payload) > cap:
        raise FrameTooLarge(f"frame of {len(payload)} bytes exceeds the cap of {cap} bytes")
    return _HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Bytes in, complete frame payloads out. After an error the decoder stays failed."""

    def __init__(self, cap: int = MAX_FRAME) -> None:
        if not 0 <= cap <= 0xFFFFFFFF:
            raise ValueError("frame cap must fit the 4-byte length header")
        self.cap = cap
        self._buf = bytearray()
        self._need: int | None = None  # payload length of the frame being read, once known
        self._error: WireError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet form a complete frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every frame they complete, in order."""
        if self._error is not None:
            raise self._error
        self._buf += data
        frames: list[bytes] = []
        while True:
            if self._need is None:
                if len(self._buf) < HEADER_LEN:
                    return frames
                (length,) = _HEADER.unpack_from(self._buf)
                if length > self.cap:
                    self._error = FrameTooLarge(
                        f"peer announced a frame of {length} bytes; the cap is {self.cap} bytes"
                    )
                    self._buf.clear()
                    raise self._error
                del self._buf[:HEADER_LEN]
                self._need = length
            if len(self._buf) < self._need:
                return frames
            frames.append(bytes(self._buf[: self._need]))
            del self._buf[: self._need]
            self._need = None

    def end_of_input(self) -> None:
        """The stream ended: fine between frames, TruncatedFrame in the middle of one."""
        if self._error is not None:
            raise self._error
        if self._buf or self._need is not None:
            self._error = TruncatedFrame(
                f"stream ended inside a frame ({self._describe_partial()})"
            )
            raise self._error

    def _describe_partial(self) -> str:
        if self._need is None:
            return f"{len(self._buf)} of {HEADER_LEN} header bytes"
        return f"{len(self._buf)} of {self._need} payload bytes"


class ByteReader(Protocol):
    """What read_frame needs: asyncio.StreamReader, or a mesh stream's reader."""

    async def readexactly(self, n: int) -> bytes: ...


class ByteWriter(Protocol):
    """What write_frame needs: asyncio.StreamWriter, or a mesh stream's writer."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...


async def read_frame(
    reader: ByteReader,
    *,
    cap: int = MAX_FRAME,
    timeout: float | None,
) -> bytes | None:
    """The next frame's payload, or None if the stream ended cleanly between frames.

    Raises TruncatedFrame if it ends inside a frame, FrameTooLarge before reading an oversized
    body, TimeoutError if no whole frame arrives in `timeout` seconds. After any error the
    stream is no longer in step with the sender: close it.
    """
    async with asyncio.timeout(timeout):
        try:
            header = await reader.readexactly(HEADER_LEN)
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                return None
            raise TruncatedFrame(
                f"stream ended inside a frame ({len(exc.partial)} of {HEADER_LEN} header bytes)"
            ) from None
        (length,) = _HEADER.unpack(header)
        if length > cap:
            raise FrameTooLarge(
                f"peer announced a frame of {length} bytes; the cap is {cap} bytes", length
            )
        try:
            return await reader.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            raise TruncatedFrame(
                f"stream ended inside a frame ({len(exc.partial)} of {length} payload bytes)"
            ) from None


async def write_frame(
    writer: ByteWriter,
    payload: bytes,
    *,
    cap: int = MAX_FRAME,
    timeout: float | None,
) -> None:
    """Send one frame and wait (at most `timeout` seconds) until the transport takes it."""
    writer.write(encode_frame(payload, cap))
    async with asyncio.timeout(timeout):
        await writer.drain()
