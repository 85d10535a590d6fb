"""The floor: a bare anyio + msgspec JSON-RPC echo server over stdio, TCP or HTTP.

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


async def serve_http(mode: str) -> None:
    """JSON-RPC over HTTP/1.1 keep-alive (``POST`` with a Content-Length body; the path is not
    looked at), the reply as ``application/json``: the floor for ``llm-rpc serve --http``."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    sys.stderr.write(msgspec.json.encode({"event": "listening", "port": port}).decode() + "\n")
    sys.stderr.flush()

    def response(env: Envelope) -> bytes:
        body = b'{"jsonrpc":"2.0","id":' + bytes(env.id) + b',"result":' + bytes(env.params) + b"}"
        return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
            len(body),
            body,
        )

    async def handler(stream: anyio.abc.SocketStream) -> None:
        async with stream, anyio.create_task_group() as tg:
            buffer = b""

            async def answer(env: Envelope) -> None:
                await stream.send(response(env))

            while True:
                head_end = buffer.find(b"\r\n\r\n")
                if head_end < 0:
                    try:
                        data = await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        return
                    buffer += data
                    continue
                head = buffer[:head_end].lower()
                at = head.find(b"content-length:")
                length = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
                while len(buffer) < head_end + 4 + length:
                    try:
                        buffer += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        return
                env = decoder.decode(buffer[head_end + 4 : head_end + 4 + length])
                buffer = buffer[head_end + 4 + length :]
                if mode == "inline":
                    await stream.send(response(env))
                else:
                    # One task per request, as llm-rpc's server runs a request; HTTP/1.1 answers one
                    # request at a time per connection, so the next is read once this one is answered.
                    tg.start_soon(answer, env)

    await listener.serve(handler)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["inline", "task"], default="task")
    parser.add_argument("--transport", choices=["stdio", "tcp", "http"], default="stdio")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args()
    target = {"stdio": serve_stdio, "tcp": serve_tcp, "http": serve_http}[args.transport]
    anyio.run(target, args.mode, backend=args.backend)


if __name__ == "__main__":
    main()
