"""``overhead_us``: llm-rpc's own time per call, present in every result and consistent with a clock
outside it (issue 9). The upstream answers after a fixed 50 ms, so the bounds can be generous: the
overhead must be positive, far below the upstream's latency, and fit in what the caller measured."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from llm_rpc.client import Client
from llm_rpc.config import BackendConfig, Config, RouterSettings
from llm_rpc.core.router import Router
from llm_rpc.server import ServeOptions, serve
from tests.upstreams import openai_wire as wire
from tests.upstreams._server import Reply, Upstream, UpstreamRequest

pytestmark = pytest.mark.anyio

DELAY_S = 0.05
#: Far below the upstream's 50 ms, yet far above llm-rpc's real cost (tens to hundreds of µs):
#: loose enough for a loaded, shared machine.
MAX_OVERHEAD_US = 25_000
KEY_ENV = "LLM_RPC_TEST_CANARY_KEY"


def _answer(request: UpstreamRequest) -> Reply:
    if request.json().get("stream"):
        return Reply.sse(wire.text_stream(), delay=DELAY_S)
    return Reply(body=wire.completion("fine"), delay=DELAY_S)


@pytest.fixture
def upstream(canary_key: str) -> Iterator[Upstream]:
    with Upstream(_answer) as up:
        yield up


@pytest.fixture
def config_file(upstream: Upstream, tmp_path: Path) -> str:
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[router]
retries = 0

[[backends]]
name = "slow"
provider = "openai-compatible"
base_url = "{upstream.url}/v1"
api_key_env = "{KEY_ENV}"
models = ["slow-model"]

[[backends]]
name = "mock"
provider = "mock"
models = ["mock*"]
"""
    )
    return str(path)


@asynccontextmanager
async def tcp_client(config: str) -> AsyncIterator[Client]:
    async with anyio.create_task_group() as tg:
        bound = await tg.start(serve, ServeOptions(tcp=[("127.0.0.1", 0)], config=config))
        ((host, port),) = bound["tcp"]
        async with Client.connect_tcp(host, port) as client:
            yield client
        tg.cancel_scope.cancel()


def check(result: dict[str, Any] | Any, outside_ms: float | None = None, *, upstream: bool = True) -> float:
    """The result's overhead, checked: positive, far below the upstream's delay, inside the outside clock."""
    fields: dict[str, Any] = (
        result if isinstance(result, dict) else {f: getattr(result, f) for f in result.__struct_fields__}
    )
    overhead = fields["overhead_us"]
    assert isinstance(overhead, float)
    assert 0 < overhead < MAX_OVERHEAD_US
    if upstream:
        assert fields["latency_ms"] >= DELAY_S * 1000
        assert overhead < fields["latency_ms"] * 1000
    if outside_ms is not None:
        # What the caller saw holds both the upstream's delay and llm-rpc's own time.
        assert overhead / 1000 + (DELAY_S * 1000 if upstream else 0.0) < outside_ms
    return float(overhead)


async def test_execute_over_tcp_reports_its_overhead(config_file: str) -> None:
    async with tcp_client(config_file) as client:
        for _ in range(3):
            started = time.perf_counter()
            result = await client.call("execute", {"prompt": "hi", "model": "slow-model"})
            check(result, (time.perf_counter() - started) * 1000)


async def test_each_batch_item_reports_its_overhead(config_file: str) -> None:
    async with tcp_client(config_file) as client:
        started = time.perf_counter()
        batch = await client.call(
            "execute_batch", {"items": [{"prompt": f"q{i}", "model": "slow-model"} for i in range(3)]}
        )
        outside_ms = (time.perf_counter() - started) * 1000
    assert [("ok" in item) for item in batch["results"]] == [True] * 3
    for item in batch["results"]:
        check(item["ok"], outside_ms)


async def test_a_stream_reports_its_overhead_in_the_final_result(config_file: str) -> None:
    async with tcp_client(config_file) as client:
        started = time.perf_counter()
        call = await client.call("execute", {"prompt": "hi", "model": "slow-model"}, stream=True)
        deltas = [delta async for delta in call]
        result = call.result
        outside_ms = (time.perf_counter() - started) * 1000
    assert deltas
    assert result["content"] == "Oslo is 4 °C and cloudy."
    check(result, outside_ms)


async def test_the_mock_answered_inline_reports_its_whole_handling_time(config_file: str) -> None:
    async with tcp_client(config_file) as client:
        for _ in range(3):
            started = time.perf_counter()
            result = await client.call("execute", {"prompt": "hi", "model": "mock-1"})
            outside_ms = (time.perf_counter() - started) * 1000
            check(result, outside_ms, upstream=False)


async def _http_exchange(port: int, head: bytes, body: bytes, pause: float = 0.0) -> tuple[dict[str, Any], float]:
    """One POST over a raw socket (the body after ``pause``): the decoded reply and the outside clock, ms."""
    import json

    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        started = time.perf_counter()
        await stream.send(head)
        if pause:
            await anyio.sleep(pause)
        await stream.send(body)
        received = b""
        while b"\r\n\r\n" not in received or len(received.partition(b"\r\n\r\n")[2]) < int(
            received.lower().partition(b"content-length: ")[2].partition(b"\r\n")[0] or -1
        ):
            received += await stream.receive()
        outside_ms = (time.perf_counter() - started) * 1000
    return json.loads(received.partition(b"\r\n\r\n")[2]), outside_ms


async def test_execute_over_http_reports_its_overhead_from_the_whole_request(config_file: str) -> None:
    """Over HTTP too (POST /rpc; llm-connect's /execute answers in its own shape, without the field); it
    starts when the request's last bytes arrive, so a slow upload is not counted."""
    body = b'{"jsonrpc":"2.0","id":1,"method":"execute","params":{"prompt":"hi","model":"slow-model"}}'
    head = b"POST /rpc HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body)
    async with anyio.create_task_group() as tg:
        bound = await tg.start(serve, ServeOptions(http=[("127.0.0.1", 0)], config=config_file))
        ((_host, port),) = bound["http"]
        for pause in (0.0, 0.3):
            reply, outside_ms = await _http_exchange(port, head, body, pause)
            check(reply["result"], outside_ms)  # under 25 ms even when the body came 300 ms after the head
        tg.cancel_scope.cancel()


async def test_in_process_calls_report_their_overhead(upstream: Upstream, canary_key: str) -> None:
    config = Config(
        router=RouterSettings(retries=0),
        backends=[
            BackendConfig(
                provider="openai-compatible",
                name="slow",
                base_url=upstream.url + "/v1",
                api_key_env=KEY_ENV,
                models=["slow-model"],
            )
        ],
    )
    async with Router(config) as router:
        started = time.perf_counter()
        result = await router.execute(prompt="hi", model="slow-model")
        check(result, (time.perf_counter() - started) * 1000)

        deltas: list[Any] = []
        result = await router.execute(
            prompt="hi", model="slow-model", stream=True, on_delta=lambda i, d: deltas.append(d)
        )
        assert deltas
        check(result)

        started = time.perf_counter()
        outcome = await router.execute_batch([{"prompt": "a", "model": "slow-model"}] * 2, concurrency=1)
        outside_ms = (time.perf_counter() - started) * 1000
        for item in outcome.outcomes:
            check(item, outside_ms)


async def test_a_wait_for_a_limit_is_not_counted_as_overhead() -> None:
    # Two calls on a mock allowed one at a time: the second waits about 50 ms for the first's slot.
    config = Config(backends=[BackendConfig(provider="mock", name="m", max_concurrent=1, latency_ms=DELAY_S * 1000)])
    async with Router(config) as router:
        results: list[Any] = []

        async def one() -> None:
            results.append(await router.execute(prompt="hi"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            tg.start_soon(one)
    for result in results:
        check(result)
