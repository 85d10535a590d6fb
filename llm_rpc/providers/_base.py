"""What the HTTP provider modules share above the transport: ``HttpBackend``, the class each
provider's class extends; the readers of OpenAI-style input that more than one wire format needs;
and ``StreamState`` with ``stream_items``, how an event stream is read whatever its events say.

A provider module keeps only its wire format (constants, wire Structs, ``to_wire``, ``from_wire``,
``parse_error``, stream decoding) and a class that names what differs: its paths, its auth header,
its default headers. Keys stay ``Secret`` until ``HttpBackend._auth`` builds one call's header, and
the pooled client holds none.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Self

import msgspec

from llm_rpc import errors
from llm_rpc._secret import Secret
from llm_rpc._version import __version__
from llm_rpc.providers._client import UpstreamClient, httpx, new_client
from llm_rpc.providers._http import map_transport_errors, sse_events
from llm_rpc.providers.base import ProviderRequest, StreamItem

if TYPE_CHECKING:
    from llm_rpc.config import BackendConfig

__all__ = [
    "DEFAULT_TIMEOUT",
    "DRAIN_EVENTS",
    "USER_AGENT",
    "HttpBackend",
    "StreamState",
    "image_url",
    "plain_text",
    "stream_items",
    "tool_arguments",
]

#: One attempt's HTTP timeout, in seconds, when the backend sets no ``timeout_seconds``.
DEFAULT_TIMEOUT = 120.0
USER_AGENT = f"llm-rpc/{__version__}"
#: After an error event, how many more events are read before giving up on the end of the stream.
#: Leaving a stream early strands httpx2's body generators (trio warns of them) and the connection;
#: the upstream ends the stream right after an error, so reading on costs nothing.
DRAIN_EVENTS = 16

_json_decoder = msgspec.json.Decoder()
_perf = time.perf_counter
_MAX_URLS = 256


# -- reading OpenAI-style input ------------------------------------------------------------------------------


def plain_text(content: str | list[dict[str, Any]] | None) -> str:
    """The text of a message's content, its non-text parts left out (for system prompts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(str(p.get("text", "")) for p in content if p.get("type") == "text")


def image_url(part: dict[str, Any]) -> tuple[str, tuple[str, str] | None]:
    """An ``image_url`` content part's URL and, for a base64 ``data:`` URL, its (media type, data)."""
    image = part.get("image_url")
    url = image.get("url", "") if isinstance(image, dict) else str(image or "")
    if url.startswith("data:") and ";base64," in url:
        media_type, _, data = url[5:].partition(";base64,")
        return url, (media_type, data)
    return url, None


def tool_arguments(arguments: Any, where: str) -> Any:
    """A tool call's arguments (a JSON string) as the object Anthropic's ``input`` and Gemini's ``args`` are.

    Raises:
        BadRequestError: the arguments are not a JSON object; ``where`` is the tool call's path.
    """
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or arguments == "":
        return {}
    try:
        value = _json_decoder.decode(arguments)
    except (msgspec.DecodeError, TypeError):
        value = None
    if not isinstance(value, dict):
        raise errors.BadRequestError(f"{where}.function.arguments: expected a JSON object", path=where)
    return value


# -- reading an event stream ---------------------------------------------------------------------------------


class StreamState:
    """The shared half of a provider's stream decoder: ``_feed`` turns one event into deltas, and a
    typed error it raises (an error event) is kept, the stream read on to its end (at most
    ``DRAIN_EVENTS`` more events), and raised by the subclass's ``finish``."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.failure: errors.ProviderError | None = None
        self.drained = 0

    def feed(self, sse: httpx.ServerSentEvent) -> list[StreamItem]:
        """The deltas one event carries; an error event's typed error is kept for ``finish``."""
        try:
            return self._feed(sse)
        except errors.ProviderError as exc:
            self.failure = exc
            return []

    def drain(self) -> bool:
        """After a failure, read on to the end of the stream (see ``DRAIN_EVENTS``); True: stop now."""
        self.drained += 1
        return self.drained > DRAIN_EVENTS

    def _feed(self, sse: httpx.ServerSentEvent) -> list[StreamItem]:
        raise NotImplementedError


@contextlib.asynccontextmanager
async def stream_items(response: httpx.Response, state: StreamState) -> AsyncIterator[AsyncIterator[list[StreamItem]]]:
    """``async with stream_items(response, state) as batches: async for items in batches: ...``: the
    deltas of each event, until the stream ends or, after a failure, has been drained.

    Raises:
        UpstreamProtocolError: the body is not an event stream.
    """
    try:
        async with sse_events(response) as events:
            yield _Batches(events, state)
    except httpx.SSEError:
        raise errors.UpstreamProtocolError(
            f"{state.backend}: the response is not an event stream", backend=state.backend, status=200
        ) from None


class _Batches:
    """Each event's deltas; a plain iterator, nothing for the GC to close (see ``_http.sse_events``)."""

    def __init__(self, events: AsyncIterator[httpx.ServerSentEvent], state: StreamState) -> None:
        self._events = events
        self._state = state

    def __aiter__(self) -> _Batches:
        return self

    async def __anext__(self) -> list[StreamItem]:
        async for sse in self._events:
            if self._state.failure is None:
                return self._state.feed(sse)
            if self._state.drain():
                break
        raise StopAsyncIteration


# -- the backend class ---------------------------------------------------------------------------------------


class HttpBackend:
    """What every HTTP provider's class shares: its pooled client, its keys, its headers and its calls.

    A provider's class says only what differs: ``provider``, ``default_base_url``, the header that
    carries the key (``auth_header``, ``auth_prefix``), whether it can call without one (``needs_key``),
    the headers it always sends (``default_headers``), its paths and its ``_parse_error``. The client is
    built on first use (so a router can be built outside any event loop) and closed by ``aclose``; it
    holds no key, so each attempt can carry its own (``ProviderRequest.api_key``, ``api_key_envs``).
    """

    provider: str
    default_base_url: ClassVar[str | None] = None
    #: The header that carries the key, and what comes before the key in it (``"Bearer "``).
    auth_header: ClassVar[str]
    auth_prefix: ClassVar[str] = ""
    #: Without key variables, True: every call is an ``AuthError``; False: calls go without a key (local servers).
    needs_key: ClassVar[bool] = True
    #: Sent with every call after content-type and user-agent; the backend's ``headers`` override them
    #: whatever their case, and an empty value there drops one.
    default_headers: tuple[tuple[str, str], ...] = ()

    def __init__(
        self,
        name: str | None = None,
        *,
        base_url: str | None = None,
        key_envs: list[str] | None = None,
        keys: list[Secret] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        max_connections: int | None = None,
    ) -> None:
        """A backend; ``name`` defaults to the provider kind, ``timeout`` (seconds) to ``DEFAULT_TIMEOUT``.

        Raises:
            ConfigError: no ``base_url`` for a provider that has no default.
        """
        self.name = name if name is not None else self.provider
        url = base_url or self.default_base_url
        if not url:
            raise errors.ConfigError(
                f"{self.name}: base_url is required for provider {self.provider} (there is no default)",
                path="base_url",
            )
        self.base_url = url.rstrip("/")
        self.key_envs = list(key_envs or [])
        self._keys: list[Secret] = list(keys or [])
        self._next_key = 0
        merged = {"content-type": "application/json", "user-agent": USER_AGENT}
        for header, value in (*self.default_headers, *(headers or {}).items()):
            merged[header.lower()] = value
        self._headers = {header: value for header, value in merged.items() if value}
        self._timeout = timeout if timeout is not None else DEFAULT_TIMEOUT
        self._max_connections = max_connections
        self._client: UpstreamClient | None = None
        # Each path's whole URL, joined to base_url once: a relative path costs the client two URL
        # parses per request (about half of building one).
        self._urls: dict[str, httpx.URL] = {}

    @classmethod
    def from_config(cls, config: BackendConfig) -> Self:
        """Build from a ``[[backends]]`` entry.

        Raises:
            ConfigError: no ``base_url`` for a provider that has no default.
        """
        return cls(config.backend_name, **cls._config_options(config))

    @classmethod
    def _config_options(cls, config: BackendConfig) -> dict[str, Any]:
        return {
            "base_url": config.base_url,
            "key_envs": config.key_envs,
            "headers": config.headers,
            "timeout": config.timeout_seconds,
            "max_connections": config.max_concurrent,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, provider={self.provider!r}, base_url={self.base_url!r})"

    def _parse_error(self, status: int, headers: Mapping[str, str], body: bytes) -> errors.ProviderError:
        """The provider's error for a non-2xx answer (its module's ``parse_error``)."""
        raise NotImplementedError

    def _key(self) -> Secret | None:
        """The backend's own next key (round-robin over those set, read from the environment until one
        is), or None for a backend without key variables that needs none.

        Raises:
            AuthError: none of the backend's key variables is set (or it has none and needs one).
        """
        if not self._keys and self.key_envs:
            self._keys = [Secret(value) for env in self.key_envs if (value := os.environ.get(env))]
        if not self._keys:
            if not self.key_envs and not self.needs_key:
                return None
            names = ", ".join(self.key_envs) or "(none configured)"
            raise errors.AuthError(
                f"{self.name}: no API key: set the environment variable {names}", backend=self.name, key_env=names
            )
        key = self._keys[self._next_key % len(self._keys)]
        self._next_key += 1
        return key

    def _auth(self, request: ProviderRequest) -> dict[str, str]:
        """This call's auth header: the router's key for the attempt when it chose one, else the backend's
        own. The key is revealed here and nowhere else.

        Raises:
            AuthError: no key for the attempt, and the backend has none (see ``_key``).
        """
        key = request.api_key if request.api_key is not None else self._key()
        return {} if key is None else {self.auth_header: f"{self.auth_prefix}{key.reveal()}"}

    def _http(self) -> UpstreamClient:
        if self._client is None:
            self._client = new_client(
                base_url=self.base_url,
                headers=self._headers,
                timeout=self._timeout,
                max_connections=self._max_connections,
            )
        return self._client

    async def _post(self, path: str, body: bytes, request: ProviderRequest) -> httpx.Response:
        """One plain call with the request's key, its whole answer read.

        Raises:
            ProviderError: ``AuthError`` for a missing key, a transport error (``map_transport_errors``),
                or ``_parse_error``'s error for a non-2xx answer.
        """
        auth = self._auth(request)
        client = self._http()
        url = self._urls.get(path)
        if url is None:
            if len(self._urls) >= _MAX_URLS:  # paths can hold model names: keep the cache bounded
                self._urls.clear()
            # The client's own join of base_url and path, made once.
            url = self._urls[path] = client.build_request("POST", path).url
        with map_transport_errors(self.name):
            started = _perf()
            response = await client.post_bytes(url, body, auth)
            request.upstream_s = _perf() - started
        if not response.is_success:
            raise self._parse_error(response.status_code, response.headers, response.content)
        return response

    @contextlib.asynccontextmanager
    async def _open_stream(
        self, path: str, body: bytes, request: ProviderRequest, params: Mapping[str, str] | None = None
    ) -> AsyncIterator[httpx.Response]:
        """A streamed call with the request's key: the 2xx response, its body not read yet. Transport
        errors while the caller reads it are translated too.

        Raises:
            ProviderError: as ``_post``.
        """
        auth = self._auth(request)
        client = self._http()
        with map_transport_errors(self.name):
            async with client.stream("POST", path, params=params, content=body, headers=auth) as response:
                if not response.is_success:
                    await response.aread()
                    raise self._parse_error(response.status_code, response.headers, response.content)
                yield response

    async def aclose(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
