"""The providers' HTTP transport on its own, over real loopback sockets, on both anyio backends.

On asyncio the bytes go through aiohttp (``providers/_aiohttp.py``), on trio through httpx2's pool
(``_client.ShardedTransport``); every test here runs on both and expects the same httpx2 behaviour
from each: the exception type of each timeout and failure, connections given back however a
response ends, keep-alive, content-encoding, large bodies both ways, the request's headers as sent.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import pytest

from llm_rpc.providers._client import UpstreamClient, httpx, new_client
from llm_rpc.providers._http import discard_body
from tests.upstreams import Reply, Upstream

pytestmark = pytest.mark.anyio

FAST = httpx.Timeout(5.0, connect=5.0)


@pytest.fixture(scope="module")
def server() -> Iterator[Upstream]:
    with Upstream() as up:
        yield up


@pytest.fixture
def up(server: Upstream) -> Upstream:
    server.handler = lambda req: Reply.json({})
    server.requests.clear()
    server.client_disconnects = 0
    return server


class _Echo(ThreadingHTTPServer):
    """Counts the connections it accepts; answers each request with its body's length and digest,
    its headers as received (names in their case, repeats kept), and any ``size`` bytes asked for."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        self.connections = 0

    def get_request(self) -> tuple[socket.socket, Any]:
        self.connections += 1
        return super().get_request()


class _EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while size := int(self.rfile.readline().strip(), 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
        size = int(self.path.rpartition("size=")[2] or 0) if "size=" in self.path else 0
        head = (
            f'{{"length":{len(body)},"sha256":"{hashlib.sha256(body).hexdigest()}",'
            f'"headers":{_json_pairs(self.headers.items())},"pad":"'
        ).encode()
        tail = b'"}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(head) + size + len(tail)))
        self.end_headers()
        self.wfile.write(head + b"x" * size + tail)

    do_GET = do_POST


def _json_pairs(items: Any) -> str:
    import json

    return json.dumps([[k, v] for k, v in items])


@pytest.fixture(scope="module")
def echo() -> Iterator[_Echo]:
    server = _Echo()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    c = new_client(base_url="http://127.0.0.1", timeout=5.0)
    try:
        yield c
    finally:
        await c.aclose()


def _url(server: Upstream | _Echo, path: str = "/v1/x") -> str:
    port = server.port if isinstance(server, Upstream) else server.server_address[1]
    return f"http://127.0.0.1:{port}{path}"


# -- timeouts and failures, each as httpx2's exception -------------------------------------------------------


async def test_connect_timeout(client: httpx.AsyncClient) -> None:
    """A listener whose backlog is full drops the SYN: the connect times out."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(4)]
        try:
            for s in fillers:
                s.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    s.connect(("127.0.0.1", port))
            with anyio.fail_after(5), pytest.raises(httpx.ConnectTimeout):
                await client.get(f"http://127.0.0.1:{port}/", timeout=httpx.Timeout(5.0, connect=0.2))
        finally:
            for s in fillers:
                s.close()


async def test_connection_refused_is_a_connect_error(client: httpx.AsyncClient) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(httpx.ConnectError):
        await client.get(f"http://127.0.0.1:{port}/")


async def test_read_timeout_before_the_head(client: httpx.AsyncClient, up: Upstream) -> None:
    up.handler = lambda req: Reply(hang=5)
    with anyio.fail_after(5), pytest.raises(httpx.ReadTimeout):
        await client.post(_url(up), content=b"{}", timeout=httpx.Timeout(5.0, read=0.2))


async def test_read_timeout_inside_the_body(client: httpx.AsyncClient, up: Upstream) -> None:
    up.handler = lambda req: Reply.sse(["data: 1", "data: 2"], chunk_delay=1.0)
    with anyio.fail_after(5):
        async with client.stream("POST", _url(up), content=b"{}", timeout=httpx.Timeout(5.0, read=0.3)) as r:
            assert r.status_code == 200
            with pytest.raises(httpx.ReadTimeout):
                await r.aread()


async def test_write_timeout(client: httpx.AsyncClient) -> None:
    """A peer that accepts and never reads: the body fills both socket buffers, the write times out."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        body = b"x" * (64 * 1024 * 1024)
        with anyio.fail_after(10), pytest.raises(httpx.WriteTimeout):
            await client.post(f"http://127.0.0.1:{port}/", content=body, timeout=httpx.Timeout(5.0, write=0.3))


async def test_pool_timeout(up: Upstream) -> None:
    up.handler = lambda req: Reply.sse(["data: 1"] * 3, chunk_delay=0.3)
    client = new_client(base_url=up.url, max_connections=1)
    try:
        async with client.stream("POST", "/v1/x", content=b"{}") as held:
            assert held.status_code == 200
            with anyio.fail_after(5), pytest.raises(httpx.PoolTimeout):
                await client.post("/v1/x", content=b"{}", timeout=httpx.Timeout(5.0, pool=0.2))
            await held.aread()
    finally:
        await client.aclose()


async def test_peer_closing_mid_body_is_a_protocol_error(client: httpx.AsyncClient, up: Upstream) -> None:
    up.handler = lambda req: Reply.sse(["data: 1", "data: 2", "data: 3"], cut_after=1)
    with anyio.fail_after(5), pytest.raises(httpx.RemoteProtocolError):
        await client.post(_url(up), content=b"{}")


async def test_peer_closing_before_the_head(client: httpx.AsyncClient, up: Upstream) -> None:
    """A reset with no answer: httpx2 and this transport both raise the same network-level error."""
    up.handler = lambda req: Reply(reset=True)
    with anyio.fail_after(5), pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        await client.post(_url(up), content=b"{}")


# -- connections given back -----------------------------------------------------------------------------------


async def test_an_abandoned_stream_gives_its_connection_back(up: Upstream) -> None:
    up.handler = lambda req: Reply.sse([f"data: {i}" for i in range(50)], chunk_delay=0.01)
    client = new_client(base_url=up.url, max_connections=1)
    try:
        for _ in range(3):
            async with client.stream("POST", "/v1/x", content=b"{}") as r:
                parts = r.aiter_bytes()
                assert await anext(parts)
                await discard_body(parts)  # stop after the first piece, as the providers do
        up.handler = lambda req: Reply.json({"ok": True})
        r = await client.post("/v1/x", content=b"{}", timeout=httpx.Timeout(5.0, pool=1.0))
        assert r.json() == {"ok": True}
    finally:
        await client.aclose()


async def test_cancelling_a_call_gives_its_connection_back(up: Upstream) -> None:
    up.handler = lambda req: Reply(hang=5)
    client = new_client(base_url=up.url, max_connections=1)
    try:
        with anyio.move_on_after(0.2) as scope:
            await client.post("/v1/x", content=b"{}")
        assert scope.cancelled_caught
        with anyio.fail_after(3):
            while up.client_disconnects == 0:  # the upstream sees the connection closed
                await anyio.sleep(0.01)
        up.handler = lambda req: Reply.json({"ok": True})
        r = await client.post("/v1/x", content=b"{}", timeout=httpx.Timeout(5.0, pool=1.0))
        assert r.json() == {"ok": True}
    finally:
        await client.aclose()


async def test_cancelling_a_stream_mid_body_gives_its_connection_back(up: Upstream) -> None:
    up.handler = lambda req: Reply.sse([f"data: {i}" for i in range(50)], chunk_delay=0.05)
    client = new_client(base_url=up.url, max_connections=1)
    try:
        with anyio.move_on_after(0.3):
            async with client.stream("POST", "/v1/x", content=b"{}") as r:
                async for _ in r.aiter_bytes():
                    pass
        up.handler = lambda req: Reply.json({"ok": True})
        r = await client.post("/v1/x", content=b"{}", timeout=httpx.Timeout(5.0, pool=1.0))
        assert r.json() == {"ok": True}
    finally:
        await client.aclose()


async def test_keep_alive_reuses_one_connection(echo: _Echo) -> None:
    client = new_client(base_url=_url(echo, ""), max_connections=1)
    try:
        before = echo.connections
        for _ in range(5):
            r = await client.post("/echo", content=b"hello")
            assert r.json()["length"] == 5
        assert echo.connections - before == 1
    finally:
        await client.aclose()


# -- what goes over the wire ----------------------------------------------------------------------------------


async def test_gzip_is_decoded_once_by_httpx(client: httpx.AsyncClient, up: Upstream) -> None:
    payload = b'{"text": "' + b"abc" * 1000 + b'"}'
    up.handler = lambda req: Reply(body=gzip.compress(payload), headers={"content-encoding": "gzip"})
    r = await client.post(_url(up), content=b"{}")
    assert r.headers["content-encoding"] == "gzip"
    assert r.content == payload
    assert r.json()["text"] == "abc" * 1000


async def test_a_big_response_arrives_in_pieces(client: httpx.AsyncClient, echo: _Echo) -> None:
    size = 8 * 1024 * 1024
    pieces = 0
    total = 0
    async with client.stream("POST", _url(echo, f"/echo?size={size}"), content=b"") as r:
        async for part in r.aiter_bytes():
            pieces += 1
            total += len(part)
    assert pieces > 1
    assert total > size


async def test_big_request_bodies_bytes_and_streamed(client: httpx.AsyncClient, echo: _Echo) -> None:
    body = bytes(range(256)) * (4 * 4096)  # 4 MiB

    async def parts() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 100_000):
            yield body[i : i + 100_000]

    digest = hashlib.sha256(body).hexdigest()
    r = await client.post(_url(echo, "/echo"), content=body)
    assert (r.json()["length"], r.json()["sha256"]) == (len(body), digest)
    r = await client.post(_url(echo, "/echo"), content=parts())
    assert (r.json()["length"], r.json()["sha256"]) == (len(body), digest)
    headers = {k.lower(): v for k, v in r.json()["headers"]}
    assert headers["transfer-encoding"] == "chunked"


async def test_the_request_headers_go_as_httpx_built_them(client: httpx.AsyncClient, echo: _Echo) -> None:
    """Nothing added (no aiohttp defaults, no cookies from an earlier answer), repeats kept, names as written."""
    headers = [("X-Repeat", "1"), ("X-Repeat", "2"), ("X-Camel-Case", "v"), ("content-type", "application/json")]
    r = await client.post(_url(echo, "/echo"), content=b"{}", headers=headers)
    seen = r.json()["headers"]
    names = sorted(k.lower() for k, _ in seen)
    expected = ["accept", "accept-encoding", "connection", "content-length", "content-type", "host", "user-agent"]
    assert names == sorted([*expected, "x-camel-case", "x-repeat", "x-repeat"])
    assert [v for k, v in seen if k == "X-Repeat"] == ["1", "2"]
    assert "X-Camel-Case" in [k for k, _ in seen]


async def test_no_cookie_jar_below_httpx(up: Upstream) -> None:
    """httpx's client keeps cookies (on both backends alike); the transport under it keeps none."""
    transport = new_client(base_url=up.url)._transport
    try:
        up.handler = lambda req: Reply.json({}, headers={"set-cookie": "session=abc; Path=/"})
        for _ in range(2):
            request = httpx.Request("POST", up.url + "/v1/x", content=b"{}")
            response = await transport.handle_async_request(request)
            await response.aread()
        assert "cookie" not in up.requests[-1].headers
    finally:
        await transport.aclose()


def test_one_client_across_two_event_loops(up: Upstream) -> None:
    """A client kept between two ``asyncio`` runs gets a fresh connection pool on the second loop,
    and the first one's connections are closed without a warning."""
    client = new_client(base_url=up.url)

    async def call() -> None:
        r = await client.post("/v1/x", content=b"{}")
        assert r.status_code == 200

    anyio.run(call)
    anyio.run(call)
    anyio.run(client.aclose)


# -- UpstreamClient.post_bytes: the providers' shortcut, the same request and answer as post -----------------


@contextlib.asynccontextmanager
async def _new_client(**options: Any) -> AsyncIterator[UpstreamClient]:
    client = new_client(**options)
    try:
        yield client
    finally:
        await client.aclose()


async def test_post_bytes_sends_what_post_sends(echo: _Echo) -> None:
    async with _new_client(
        base_url=_url(echo, ""), headers={"content-type": "application/json", "x-backend": "b"}
    ) as client:
        url = client.build_request("POST", "/echo").url
        auth = {"authorization": "Bearer canary-not-a-key"}
        by_post = await client.post(url, content=b'{"a":1}', headers=auth)
        by_bytes = await client.post_bytes(url, b'{"a":1}', auth)
        assert by_bytes.status_code == by_post.status_code == 200
        assert by_bytes.json()["headers"] == by_post.json()["headers"]  # names, order, values
        assert by_bytes.json()["sha256"] == by_post.json()["sha256"]
        assert by_bytes.request.url == url
        assert by_bytes.is_closed
        assert by_bytes.text == by_bytes.content.decode()


async def test_post_bytes_honours_the_clients_timeout(up: Upstream) -> None:
    up.handler = lambda req: Reply(hang=5)
    async with _new_client(base_url=up.url, timeout=0.3) as client:
        with anyio.fail_after(5), pytest.raises(httpx.ReadTimeout):
            await client.post_bytes(client.build_request("POST", "/v1/x").url, b"{}", {})


async def test_post_bytes_keeps_and_sends_cookies_like_post(up: Upstream) -> None:
    """A cookie set by an answer is kept, and from then on the call goes through ``post`` (which sends it)."""
    async with _new_client(base_url=up.url) as client:
        url = client.build_request("POST", "/v1/x").url
        up.handler = lambda req: Reply.json({}, headers={"set-cookie": "session=abc; Path=/"})
        await client.post_bytes(url, b"{}", {})
        assert client.cookies.get("session") == "abc"
        up.handler = lambda req: Reply.json({})
        await client.post_bytes(url, b"{}", {})
        assert up.requests[-1].headers.get("cookie") == "session=abc"


async def test_post_bytes_lets_a_call_header_replace_the_clients(echo: _Echo) -> None:
    async with _new_client(base_url=_url(echo, ""), headers={"authorization": "Bearer default"}) as client:
        r = await client.post_bytes(client.build_request("POST", "/echo").url, b"{}", {"Authorization": "Bearer call"})
        values = [v for k, v in r.json()["headers"] if k.lower() == "authorization"]
        assert values == ["Bearer call"]


async def test_sequential_calls_reuse_one_connection_with_the_default_pool(echo: _Echo) -> None:
    """Light traffic stays on one kept-alive connection (on trio the pools are filled in order, not
    taken in turn, which would open a connection per pool)."""
    async with _new_client(base_url=_url(echo, "")) as client:
        before = echo.connections
        for _ in range(12):
            r = await client.post("/echo", content=b"hello")
            assert r.json()["length"] == 5
        assert echo.connections - before == 1


async def test_the_trio_pools_fill_in_order_and_spread_under_concurrency(up: Upstream) -> None:
    from llm_rpc.providers._client import ShardedTransport

    up.handler = lambda req: Reply(delay=0.2)
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    transport = ShardedTransport(limits=limits, shards=8, fill=4)
    client = httpx.AsyncClient(base_url=up.url, transport=transport)
    try:

        async def one() -> None:
            response = await client.post("/v1/x", content=b"{}")
            assert response.status_code == 200

        await one()
        assert [pool is not None for pool in transport._pools] == [True] + [False] * 7
        async with anyio.create_task_group() as tg:
            for _ in range(12):
                tg.start_soon(one)
        # 12 at once, 4 per pool: the first three pools and no more.
        assert [pool is not None for pool in transport._pools] == [True] * 3 + [False] * 5
        assert transport._busy == [0] * 8
    finally:
        await client.aclose()


async def test_a_small_connection_limit_is_used_whole(up: Upstream) -> None:
    """Two connections allowed, two calls at once: both go out together (one per pool), neither queues."""
    up.handler = lambda req: Reply(delay=0.3)
    async with _new_client(base_url=up.url, max_connections=2) as client:

        async def one() -> None:
            assert (await client.post("/v1/x", content=b"{}")).status_code == 200

        started = anyio.current_time()
        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(one)
        assert anyio.current_time() - started < 0.55


async def test_a_stream_being_read_keeps_its_pool_counted(up: Upstream) -> None:
    """With two connections, a call made while a stream holds the first one goes out on the second."""
    up.handler = lambda req: Reply.sse(["data: 1", "data: 2"], chunk_delay=0.5) if req.path.endswith("s") else Reply()
    async with (
        _new_client(base_url=up.url, max_connections=2) as client,
        client.stream("POST", "/v1/s", content=b"{}") as held,
    ):
        assert held.status_code == 200
        with anyio.fail_after(0.4):  # the stream needs a second more: this call must not wait for it
            assert (await client.post("/v1/x", content=b"{}")).status_code == 200
        await held.aread()
