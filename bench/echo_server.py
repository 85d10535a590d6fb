"""The floor: a bare anyio + msgspec JSON-RPC echo server over stdio or TCP.

``--mode inline`` answers inside the read loop; ``--mode task`` starts one anyio task per request
(what a server must do to run requests concurrently). Replies are coalesced by one writer, as in
llm-rpc, so the comparison isolates what llm-rpc adds on top: validation, routing, the mock, the
result, its bookkeeping.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import anyio
import anyio.abc
import msgspec


class Envelope(msgspec.Struct):
    jsonrpc: str
    method: str
    id: msgspec.Raw = msgspec.Raw()
    params: msgspec.Raw = msgspec.Raw()


decoder = msgspec.json.Decoder(Envelope)


class Channel:
    def __init__(self, receive: Any, send: Any) -> None:
        self.receive = receive
        self.send = send


async def serve(channel: Channel, mode: str) -> None:
    out: list[bytes] = []
    ready = anyio.Event()

    def reply(env: Envelope) -> None:
        out.append(b'{"jsonrpc":"2.0","id":' + bytes(env.id) + b',"result":' + bytes(env.params) + b"}\n")
        ready.set()

    async def handle(env: Envelope) -> None:
        reply(env)

    async def writer() -> None:
        nonlocal ready
        while True:
            if not out:
                ready = anyio.Event()
                await ready.wait()
                continue
            data = b"".join(out)
            out.clear()
            await channel.send(data)

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        pending = b""
        while True:
            try:
                data = await channel.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                break
            if not data:
                break
            data = pending + data
            *lines, pending = data.split(b"\n")
            for line in lines:
                if not line:
                    continue
                env = decoder.decode(line)
                if mode == "inline":
                    reply(env)
                else:
                    tg.start_soon(handle, env)
        while out:
            await anyio.sleep(0.001)
        tg.cancel_scope.cancel()


async def serve_stdio(mode: str) -> None:
    os.set_blocking(0, False)
    os.set_blocking(1, False)

    async def receive() -> bytes:
        while True:
            try:
                data = os.read(0, 65536)
            except BlockingIOError:
                await anyio.wait_readable(0)
                continue
            await anyio.lowlevel.checkpoint()
            return data

    async def send(data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(1, view) :]
            except BlockingIOError:
                await anyio.wait_writable(1)

    await serve(Channel(receive, send), mode)


async def serve_tcp(mode: str) -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    sys.stderr.write(msgspec.json.encode({"event": "listening", "port": port}).decode() + "\n")
    sys.stderr.flush()

    async def handler(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await serve(Channel(stream.receive, stream.send), mode)

    await listener.serve(handler)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["inline", "task"], default="task")
    parser.add_argument("--transport", choices=["stdio", "tcp"], default="stdio")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args()
    target = serve_stdio if args.transport == "stdio" else serve_tcp
    anyio.run(target, args.mode, backend=args.backend)


if __name__ == "__main__":
    main()
