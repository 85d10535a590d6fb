"""A JSON-RPC load generator: keeps N requests in flight on one connection and times each reply.

It runs in its own process (asyncio, raw streams) so that it does not share a core's event loop
with the server it measures.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

import msgspec

_reply = msgspec.json.Decoder(dict[str, Any])


@dataclass
class LoadResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    #: Median of the ``overhead_us`` the results reported (calls started in the window), or None
    #: when no result carried one (a server that does not fill it in yet).
    overhead_us_p50: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "rps": round(self.rps, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "errors": self.errors,
            "overhead_us_p50": None if self.overhead_us_p50 is None else round(self.overhead_us_p50, 1),
        }


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def drive(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    body: bytes,
    *,
    in_flight: int,
    duration: float,
    warmup: float = 0.3,
) -> LoadResult:
    """``body`` is a request template containing ``"id":0``, replaced per request."""
    head, _, tail = body.partition(b'"id":0')
    # One round trip before the clock starts: the server has started and answers.
    writer.write(head + b'"id":0' + tail + b"\n")
    await writer.drain()
    if not await reader.readline():
        raise RuntimeError("server closed the connection")
    sent: dict[int, float] = {}
    latencies: list[float] = []
    overheads: list[float] = []
    errors = 0
    next_id = 1
    measuring_from = time.perf_counter() + warmup
    stop_at = measuring_from + duration
    counted = 0

    def send_one() -> None:
        nonlocal next_id
        sent[next_id] = time.perf_counter()
        writer.write(head + b'"id":' + str(next_id).encode() + tail + b"\n")
        next_id += 1

    for _ in range(in_flight):
        send_one()
    await writer.drain()
    stopping = False
    while sent:
        line = await reader.readline()
        if not line:
            raise RuntimeError("server closed the connection")
        now = time.perf_counter()
        reply = _reply.decode(line)
        started = sent.pop(reply["id"])
        if "error" in reply:
            errors += 1
        if measuring_from <= started < stop_at:
            latencies.append(now - started)
            counted += 1
            result = reply.get("result")
            if isinstance(result, dict):
                overhead = result.get("overhead_us")
                if isinstance(overhead, int | float):
                    overheads.append(float(overhead))
        if now < stop_at:
            send_one()
            if reader._buffer.find(b"\n") < 0:  # type: ignore[attr-defined]
                await writer.drain()
        elif not stopping:
            stopping = True
            await writer.drain()
    # Calls started inside the window, over the window's length: the same rule as the direct
    # client's measurement, so neither side is charged for the drain after the window closes.
    elapsed = duration
    return LoadResult(
        requests=counted,
        seconds=elapsed,
        rps=counted / elapsed if elapsed > 0 else 0.0,
        p50_ms=statistics.median(latencies) * 1000 if latencies else float("nan"),
        p99_ms=_percentile(latencies, 0.99) * 1000,
        errors=errors,
        overhead_us_p50=statistics.median(overheads) if overheads else None,
    )


async def _stdio_target(argv: list[str], body: bytes, in_flight: int, duration: float) -> LoadResult:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 24
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        return await drive(proc.stdout, proc.stdin, body, in_flight=in_flight, duration=duration)
    finally:
        proc.stdin.close()
        await proc.wait()


async def _tcp_target(argv: list[str], body: bytes, in_flight: int, duration: float) -> LoadResult:
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    try:
        while True:
            line = await asyncio.wait_for(proc.stderr.readline(), 30)
            if not line:
                raise RuntimeError("server exited before listening")
            if b'"listening"' in line:
                port = json.loads(line)["port"]
                break
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
        try:
            return await drive(reader, writer, body, in_flight=in_flight, duration=duration)
        finally:
            writer.close()
    finally:
        proc.terminate()
        await proc.wait()


def run(transport: str, argv: list[str], body: bytes, in_flight: int, duration: float) -> LoadResult:
    target = _stdio_target if transport == "stdio" else _tcp_target
    return asyncio.run(target(argv, body, in_flight, duration))


if __name__ == "__main__":
    # python bench/loadgen.py stdio|tcp IN_FLIGHT DURATION BODY -- server argv...
    transport, in_flight, duration, body = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    argv = sys.argv[sys.argv.index("--") + 1 :]
    result = run(transport, argv, body.encode(), in_flight, duration)
    sys.stdout.write(json.dumps(result.as_dict()) + "\n")
    os._exit(0)
