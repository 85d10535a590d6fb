"""Every streaming backend, abandoned after its first delta, leaves nothing behind.

A caller that stops reading (a cancelled request, a client gone) closes the provider's stream
early; the HTTP response and every generator under it must be closed then, on both anyio backends,
and the backend must stay usable. An abandoned async generator shows up at garbage collection as a
warning, which ``filterwarnings = error`` turns into a failure.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest

from llm_rpc.config import BackendConfig
from llm_rpc.providers import ProviderRequest, TextDelta, provider_class
from llm_rpc.types import Message
from tests.upstreams import Reply, Upstream, anthropic_wire, gemini_wire, ollama_wire, openai_wire

pytestmark = pytest.mark.anyio

KEY_ENV = "LLM_RPC_TEST_CANARY_KEY"
PIECES = [f"piece {i} " for i in range(200)]


def _openai() -> Reply:
    return Reply.sse(openai_wire.text_stream(tuple(PIECES)), chunk_delay=0.005)


def _anthropic() -> Reply:
    return Reply.sse(anthropic_wire.text_stream(PIECES), chunk_delay=0.005)


def _gemini() -> Reply:
    return Reply.sse(gemini_wire.text_stream(PIECES), chunk_delay=0.005)


def _ollama() -> Reply:
    return Reply.ndjson(ollama_wire.text_stream(tuple(PIECES)), chunk_delay=0.005)


CASES: dict[str, tuple[Callable[[], Reply], str]] = {
    "openai": (_openai, "/v1"),
    "anthropic": (_anthropic, ""),
    "gemini": (_gemini, "/v1beta"),
    "ollama": (_ollama, ""),
}


@pytest.fixture(scope="module")
def server() -> Iterator[Upstream]:
    with Upstream() as up:
        yield up


@pytest.mark.parametrize("kind", sorted(CASES))
async def test_a_stream_abandoned_after_its_first_delta_is_closed_cleanly(
    server: Upstream, canary_key: str, kind: str
) -> None:
    reply, path = CASES[kind]
    server.handler = lambda req: reply()
    config = BackendConfig(provider=kind, base_url=server.url + path, api_key_env=KEY_ENV)  # type: ignore[arg-type]
    provider: Any = provider_class(kind).from_config(config)
    request = ProviderRequest(model="some-model", messages=[Message(role="user", content="go on")])
    try:
        with anyio.fail_after(10):
            async with contextlib.aclosing(provider.stream(request)) as items:
                async for item in items:
                    assert isinstance(item, TextDelta)
                    break
            gc.collect()
            # Still usable afterwards: a second stream runs to its end.
            seen = [item async for item in provider.stream(request)]
            assert len([i for i in seen if isinstance(i, TextDelta)]) == len(PIECES)
    finally:
        await provider.aclose()
    gc.collect()
