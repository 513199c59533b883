"""The Endpoint's one UDP socket, read in batches, written with segmentation offload.

Python pays per callback and per system call, not per byte: reading every ready datagram in
one callback (until EAGAIN, up to a limit) and letting the Endpoint flush once per batch
roughly doubles QUIC throughput compared with one datagram per loop turn
(notes/quic-ice-python.md). On Linux the socket also uses UDP segmentation offload: a run of
same-size datagrams to one address leaves in one `sendmsg` (UDP_SEGMENT, "GSO"), and the
kernel may hand us a run from one sender as one buffer (UDP_GRO), which we split again. Each
datagram on the wire is exactly what it would be without offload.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from fleet.log import get_logger
from fleet.mesh.disco import Addr

log = get_logger(__name__)

SOL_UDP = 17
UDP_SEGMENT = 103  # linux/udp.h: cut this send into datagrams of the given size
UDP_GRO = 104  # linux/udp.h: deliver a run of same-size datagrams as one buffer
MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS
MAX_SEND = 65507  # the largest UDP payload one send may carry (IPv4)
# A failed GSO send with one of these means "not here" (no offload on the route's device,
# old kernel): send datagram by datagram from then on. EINVAL (the route's MTU is below
# the segment size) only rules out GSO towards that address.
MAX_REFUSED = 1024
_NO_GSO_ERRNOS = frozenset({errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.ENOTSUP})


@dataclass
class SocketStats:
    received: int = 0
    sent: int = 0
    send_errors: int = 0
    dropped_by_blackhole: int = 0
    sent_to: dict[Addr, int] = field(default_factory=dict)
    gso_sends: int = 0  # sendmsg calls that carried more than one datagram
    gro_buffers: int = 0  # received buffers that carried more than one datagram
    truncated: int = 0  # received buffers cut off by the kernel (dropped, counted as loss)


class UdpSocket:
    """Non-blocking UDP socket with batched reads and a test hook to blackhole addresses."""

    def __init__(self, bind: Addr, *, buffer_size: int = 4 << 20, offload: bool = True) -> None:
        family = socket.AF_INET6 if ":" in bind[0] else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):  # capped by the kernel: not fatal
                self._sock.setsockopt(socket.SOL_SOCKET, opt, buffer_size)
        self._sock.bind(bind)
        self.stats = SocketStats()
        self.blackhole: set[Addr] = set()  # test hook: drop everything to/from these
        self._loop: asyncio.AbstractEventLoop | None = None
        self.gso = offload and sys.platform == "linux"
        self._gso_refused: set[Addr] = set()
        self.gro = False
        if offload and sys.platform == "linux":
            try:
                self._sock.setsockopt(SOL_UDP, UDP_GRO, 1)
                self.gro = True
            except OSError:
                pass

    @property
    def address(self) -> Addr:
        host, port = self._sock.getsockname()[:2]
        return (host, port)

    def start(self, on_batch: Callable[[list[tuple[bytes, Addr]]], None], batch: int) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        sock = self._sock
        stats = self.stats
        gro = self.gro
        recvfrom = sock.recvfrom
        recvmsg = sock.recvmsg
        cmsg_size = socket.CMSG_SPACE(4)

        def readable() -> None:
            datagrams: list[tuple[bytes, Addr]] = []
            blackhole = self.blackhole
            while len(datagrams) < batch:
                try:
                    if gro:
                        data, ancdata, flags, addr = recvmsg(65535, cmsg_size)
                        if flags & socket.MSG_TRUNC:
                            # Never split a cut-off buffer into datagrams: count it as loss.
                            stats.truncated += 1
                            continue
                    else:
                        data, addr = recvfrom(65535)
                        ancdata = None
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:  # e.g. ICMP port unreachable surfaced on Linux
                    log.debug("udp_recv_error", error=str(exc))
                    continue
                source = (addr[0], addr[1])
                if blackhole and source in blackhole:
                    stats.dropped_by_blackhole += 1
                    continue
                if ancdata:
                    size = _gro_segment_size(ancdata)
                    if size and len(data) > size:
                        stats.gro_buffers += 1
                        datagrams.extend(
                            (data[i : i + size], source) for i in range(0, len(data), size)
                        )
                        continue
                datagrams.append((data, source))
            if datagrams:
                stats.received += len(datagrams)
                on_batch(datagrams)

        loop.add_reader(sock.fileno(), readable)

    def sendto(self, data: bytes, addr: Addr) -> None:
        if self.blackhole and addr in self.blackhole:
            self.stats.dropped_by_blackhole += 1
            return
        try:
            self._sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError, OSError):
            # UDP: a full buffer or unreachable address is packet loss; QUIC recovers.
            self.stats.send_errors += 1
            return
        self._count(addr, 1)

    def send_many(self, datagrams: Sequence[bytes], addr: Addr) -> None:
        """Send datagrams to one address, runs of equal size in one system call each."""
        if self.blackhole and addr in self.blackhole:
            self.stats.dropped_by_blackhole += len(datagrams)
            return
        if not self.gso or len(datagrams) < 2 or addr in self._gso_refused:
            for data in datagrams:
                self.sendto(data, addr)
            return
        sendmsg = self._sock.sendmsg
        n = len(datagrams)
        start = 0
        while start < n:
            size = len(datagrams[start])
            limit = min(n, start + min(MAX_SEGMENTS, MAX_SEND // size))
            end = start + 1
            while end < limit and len(datagrams[end]) == size:
                end += 1
            if end < limit and len(datagrams[end]) < size:
                end += 1  # a shorter datagram may close a run
            if end - start == 1:
                self.sendto(datagrams[start], addr)
                start = end
                continue
            group = datagrams[start:end]
            try:
                sendmsg(group, [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))], 0, addr)
            except (BlockingIOError, InterruptedError):
                self.stats.send_errors += end - start  # a full buffer: packet loss
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.stats.send_errors += end - start
                    start = end
                    continue
                self._gso_failed(addr, exc)
                for data in group:
                    self.sendto(data, addr)
            else:
                self.stats.gso_sends += 1
                self._count(addr, end - start)
            start = end

    def _gso_failed(self, addr: Addr, exc: OSError) -> None:
        if exc.errno in _NO_GSO_ERRNOS:
            self.gso = False
            log.info("udp_gso_disabled", error=str(exc))
        else:
            if len(self._gso_refused) >= MAX_REFUSED:
                self._gso_refused.clear()
            self._gso_refused.add(addr)
            log.debug("udp_gso_refused", addr=addr, error=str(exc))

    def _count(self, addr: Addr, count: int) -> None:
        stats = self.stats
        stats.sent += count
        stats.sent_to[addr] = stats.sent_to.get(addr, 0) + count

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._loop = None
        self._sock.close()


def _gro_segment_size(ancdata: list[tuple[int, int, bytes]]) -> int:
    for level, kind, value in ancdata:
        if level == SOL_UDP and kind == UDP_GRO and len(value) >= 4:
            return int.from_bytes(value[:4], sys.byteorder)
    return 0
