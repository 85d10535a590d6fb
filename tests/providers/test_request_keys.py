"""The key of one attempt: ``ProviderRequest.api_key`` goes in that call's auth header, and only that one.

The router sets ``api_key`` when a backend has several keys (``api_key_envs``, issue 4 item 7); each
HTTP provider must send it instead of its own key for that request, and its own key otherwise, with
nothing of either key in errors or logs. Every provider is run against the loopback upstream.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import pytest

from llm_rpc import errors
from llm_rpc._secret import Secret
from llm_rpc.providers.anthropic import AnthropicProvider
from llm_rpc.providers.base import Provider, ProviderRequest, ProviderResponse
from llm_rpc.providers.gemini import GeminiProvider
from llm_rpc.providers.ollama import OllamaProvider
from llm_rpc.providers.openai import OpenAIProvider
from llm_rpc.types import Message
from tests.upstreams import anthropic_wire, gemini_wire, ollama_wire, openai_wire
from tests.upstreams._server import Reply, Upstream, UpstreamRequest

pytestmark = pytest.mark.anyio

OWN_ENV = "LLM_RPC_TEST_CANARY_KEY"  # set by the ``canary_key`` fixture: the backend's own key
UNSET_ENV = "LLM_RPC_TEST_REQUEST_KEYS_UNSET"
ATTEMPT_KEY = "sk-attempt-canary-7d1e4b9a2c6f8e0a3b5d7f9c1e3a5b7d"
OTHER_KEY = "sk-attempt-canary-2b4d6f8a0c1e3a5b7d9f1b3d5f7a9c0e"


@dataclass(frozen=True)
class Kind:
    """How one provider is built, answers, and carries its key."""

    name: str
    header: str
    bearer: bool
    model: str
    make: Callable[[str, list[str]], Provider]
    ok: Callable[[], Reply]
    streamed: Callable[[], Reply]

    def sent(self, key: str) -> str:
        """The header value that carries ``key``."""
        return f"Bearer {key}" if self.bearer else key


KINDS = [
    Kind(
        "openai",
        "authorization",
        True,
        openai_wire.MODEL,
        lambda url, envs: OpenAIProvider("oa", kind="openai", base_url=url + "/v1", key_envs=envs),
        lambda: Reply.json(openai_wire.completion("fine")),
        lambda: Reply.sse(openai_wire.text_stream(("fi", "ne"))),
    ),
    Kind(
        "anthropic",
        "x-api-key",
        False,
        anthropic_wire.MODEL,
        lambda url, envs: AnthropicProvider("an", base_url=url, key_envs=envs),
        lambda: Reply.json(anthropic_wire.message([anthropic_wire.text("fine")])),
        lambda: Reply.sse(anthropic_wire.text_stream(["fi", "ne"])),
    ),
    Kind(
        "gemini",
        "x-goog-api-key",
        False,
        "gemini-2.5-flash",
        lambda url, envs: GeminiProvider("ge", base_url=url + "/v1beta", key_envs=envs),
        lambda: Reply.json(gemini_wire.response([gemini_wire.text("fine")], usage_=gemini_wire.usage())),
        lambda: Reply.sse(gemini_wire.text_stream(["fi", "ne"])),
    ),
    Kind(
        "ollama",
        "authorization",
        True,
        ollama_wire.MODEL,
        lambda url, envs: OllamaProvider("ol", base_url=url, key_envs=envs),
        lambda: Reply.json(ollama_wire.chat("fine")),
        lambda: Reply.ndjson(ollama_wire.text_stream(("fi", "ne"))),
    ),
]
KEY_HEADERS = ("authorization", "x-api-key", "x-goog-api-key")


@pytest.fixture(params=KINDS, ids=[k.name for k in KINDS])
def kind(request: pytest.FixtureRequest) -> Kind:
    value: Kind = request.param
    return value


@pytest.fixture
def up(canary_key: str, caplog: pytest.LogCaptureFixture) -> Iterator[Upstream]:
    """A loopback upstream; every test also checks that no key reached the logs."""
    caplog.set_level(logging.DEBUG)
    with Upstream() as server:
        yield server
    for key in (canary_key, ATTEMPT_KEY, OTHER_KEY):
        assert key not in caplog.text


@asynccontextmanager
async def opened(provider: Provider) -> AsyncIterator[Provider]:
    try:
        yield provider
    finally:
        await provider.aclose()


def ask(kind: Kind, key: str | None = None, text: str = "Weather in Oslo?") -> ProviderRequest:
    return ProviderRequest(
        model=kind.model,
        messages=[Message(role="user", content=text)],
        api_key=Secret(key) if key is not None else None,
    )


async def run(provider: Provider, request: ProviderRequest, *, stream: bool) -> ProviderResponse:
    if not stream:
        return await provider.complete(request)
    items = [item async for item in provider.stream(request)]
    final = items[-1]
    assert isinstance(final, ProviderResponse)
    return final


def key_headers(request: UpstreamRequest) -> dict[str, str]:
    return {h: v for h, v in request.headers.items() if h in KEY_HEADERS}


def assert_no_key(*texts: object) -> None:
    for text in texts:
        for key in (ATTEMPT_KEY, OTHER_KEY):
            assert key not in str(text)


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_the_attempts_key_is_sent_for_that_call_only_and_the_own_key_otherwise(
    kind: Kind, up: Upstream, canary_key: str, stream: bool
) -> None:
    up.handler = lambda req: kind.streamed() if stream else kind.ok()
    async with opened(kind.make(up.url, [OWN_ENV])) as provider:
        for key in (ATTEMPT_KEY, None, OTHER_KEY, None):
            result = await run(provider, ask(kind, key), stream=stream)
            assert result.content == "fine"
    expected = [ATTEMPT_KEY, canary_key, OTHER_KEY, canary_key]
    assert [key_headers(r) for r in up.requests] == [{kind.header: kind.sent(k)} for k in expected]


async def test_concurrent_calls_on_one_pooled_client_each_send_their_own_key(kind: Kind, up: Upstream) -> None:
    # The upstream holds each answer a while, so the calls overlap on the shared client.
    up.handler = lambda req: Reply(status=200, body=kind.ok().body, delay=0.1)
    keys = [ATTEMPT_KEY, OTHER_KEY] * 3
    async with opened(kind.make(up.url, [OWN_ENV])) as provider:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for i, key in enumerate(keys):
                    tg.start_soon(provider.complete, ask(kind, key, text=f"call {i}"))
    assert up.max_in_flight > 1
    assert len(up.requests) == len(keys)
    for request in up.requests:
        found = re.search(r"call (\d+)", request.body.decode())
        assert found is not None
        i = int(found.group(1))
        assert request.headers[kind.header] == kind.sent(keys[i])


async def test_an_attempts_key_needs_no_own_key_and_without_either_the_call_is_an_auth_error(
    kind: Kind, up: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(UNSET_ENV, raising=False)
    up.handler = lambda req: kind.ok()
    async with opened(kind.make(up.url, [UNSET_ENV])) as provider:
        assert (await provider.complete(ask(kind, ATTEMPT_KEY))).content == "fine"
        with pytest.raises(errors.AuthError) as raised:
            await provider.complete(ask(kind))
    assert UNSET_ENV in raised.value.message
    assert [key_headers(r) for r in up.requests] == [{kind.header: kind.sent(ATTEMPT_KEY)}]


@pytest.mark.parametrize("make", [KINDS[0], KINDS[3]], ids=["openai-compatible", "ollama"])
async def test_a_keyless_backend_sends_an_attempts_key_and_otherwise_none(make: Kind, up: Upstream) -> None:
    up.handler = lambda req: make.ok()
    if make.name == "openai":
        provider: Provider = OpenAIProvider("vllm", kind="openai-compatible", base_url=up.url + "/v1")
    else:
        provider = OllamaProvider("local", base_url=up.url)
    async with opened(provider):
        await provider.complete(ask(make, ATTEMPT_KEY))
        await provider.complete(ask(make))
    assert [key_headers(r) for r in up.requests] == [{"authorization": f"Bearer {ATTEMPT_KEY}"}, {}]


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_an_attempts_key_echoed_by_the_upstream_never_shows_in_the_error(
    kind: Kind, up: Upstream, stream: bool
) -> None:
    def echo(req: UpstreamRequest) -> Reply:
        quoted = req.headers[kind.header]
        return Reply(
            status=429, body=f"rate limited: {quoted}", headers={"retry-after": "30"}, content_type="text/plain"
        )

    up.handler = echo
    async with opened(kind.make(up.url, [OWN_ENV])) as provider:
        request = ask(kind, ATTEMPT_KEY)
        with pytest.raises(errors.RateLimitedError) as raised:
            await run(provider, request, stream=stream)
        err = raised.value
        logging.getLogger("llm_rpc.test").error("failed: %s %r %s %r", err, err, err.to_data(), request)
        assert up.requests[0].headers[kind.header] == kind.sent(ATTEMPT_KEY)
        assert err.data["retry_after"] == 30
        assert "***" in err.data["provider_message"]
        assert_no_key(err, repr(err), err.message, json.dumps(err.to_data()), request, repr(provider), vars(provider))


def test_a_request_shows_its_key_masked() -> None:
    request = ProviderRequest(model="m", messages=[], api_key=Secret(ATTEMPT_KEY))
    assert_no_key(request, repr(request))
    assert "***" in repr(request)
