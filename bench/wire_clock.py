"""An outside clock for ``overhead_us`` over a transport: the packets on the loopback interface.

``overhead_us`` is llm-rpc's own time from a request's arrival to its reply, less the upstream
exchange (contracts/execute.md). A clock in the calling process cannot see that span alone: its
round trip also holds the hop into the server (the kernel, the server's wake-up, the caller's own
encode and decode), and subtracting a bare echo server's round trip only estimates that hop. The
kernel's timestamps on ``lo`` see the span itself, without touching the server: for one call at a
time on one connection, from the request's packet to the reply's. That span also holds what no
server clock can see (the wake-up after the packet arrives, the read and write system calls), so
``bench/overhead.py`` sets it beside a bare echo server's span measured the same way, call for call.

Needs a raw ``AF_PACKET`` socket (root, or ``CAP_NET_RAW``); :func:`available` says whether this
process has one. Only loopback is read, and nothing is sent.
"""

from __future__ import annotations

import multiprocessing
import socket
import struct
from dataclasses import dataclass
from typing import Any

_ETH_P_ALL = 0x0003
_SO_TIMESTAMPNS = 35
_PACKET_OUTGOING = 4  # on lo every packet is seen twice: once outgoing, once incoming; keep one
_ETH_HEADER = 14


def available() -> bool:
    try:
        probe = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
    except (AttributeError, OSError):
        return False
    probe.close()
    return True


@dataclass
class Packet:
    ns: int
    source: int
    destination: int
    payload: int


class Capture:
    """TCP segments with a payload to or from ``ports`` on ``lo``, with the kernel's timestamps.

    The capture runs in a process of its own: a thread in the measuring process would take the GIL
    at every packet and slow the very calls it times."""

    def __init__(self, ports: frozenset[int]) -> None:
        self.ports = ports
        self.packets: list[Packet] = []
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._ready = context.Event()
        self._receiver, sender = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_capture, args=(sorted(ports), self._stop, self._ready, sender), daemon=True
        )

    def __enter__(self) -> Capture:
        self._process.start()
        if not self._ready.wait(30):
            raise RuntimeError("the capture process did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        rows = self._receiver.recv()
        self._process.join(10)
        self.packets = [Packet(*row) for row in rows]


def _capture(ports: list[int], stop: Any, ready: Any, sender: Any) -> None:
    watched = frozenset(ports)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind(("lo", 0))
    sock.settimeout(0.1)
    rows: list[tuple[int, int, int, int]] = []
    ready.set()
    while not stop.is_set():
        try:
            data, ancillary, _flags, address = sock.recvmsg(65536, 64)
        except TimeoutError:
            continue
        if address[2] != _PACKET_OUTGOING or len(data) < _ETH_HEADER + 40:
            continue
        ip = data[_ETH_HEADER:]
        if ip[0] >> 4 != 4 or ip[9] != 6:  # IPv4, TCP
            continue
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        source, destination = struct.unpack_from("!HH", ip, ihl)
        if source not in watched and destination not in watched:
            continue
        payload = total - ihl - (ip[ihl + 12] >> 4) * 4
        if payload <= 0:
            continue
        ns = 0
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS:
                seconds, nanoseconds = struct.unpack("@ll", value[:16])
                ns = seconds * 1_000_000_000 + nanoseconds
        rows.append((ns, source, destination, payload))
    sock.close()
    sender.send(rows)


def server_spans_us(packets: list[Packet], server_port: int) -> list[float]:
    """The wire span of each call to ``server_port``, in order, for calls made one at a time on
    one connection: from the request's first segment to the reply's last before the next request."""
    spans: list[float] = []
    request: int | None = None
    reply_last: int | None = None
    for packet in sorted(packets, key=lambda p: p.ns):
        if packet.destination == server_port and (request is None or reply_last is not None):
            if request is not None and reply_last is not None:
                spans.append((reply_last - request) / 1000)
            request, reply_last = packet.ns, None
        elif packet.source == server_port and request is not None:
            reply_last = packet.ns
    if request is not None and reply_last is not None:
        spans.append((reply_last - request) / 1000)
    return spans
