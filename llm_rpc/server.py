"""The composition root: config → Router → method table → transports, in one task group.

All transports of one process share one state (router, budgets, usage, in-flight count).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import anyio.abc

from llm_rpc.config import load_config, load_env_file
from llm_rpc.core.router import Router
from llm_rpc.errors import ConfigError
from llm_rpc.methods import build_table, error_mapper
from llm_rpc.protocol import Dispatcher
from llm_rpc.transports import Lifecycle

__all__ = ["ServeOptions", "parse_host_port", "run", "serve"]

log = logging.getLogger("llm_rpc.server")

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass
class ServeOptions:
    """What ``llm-rpc serve`` was asked to do."""

    stdio: bool = False
    tcp: list[tuple[str, int]] = field(default_factory=list)
    unix: list[str] = field(default_factory=list)
    config: str | None = None
    env_file: str | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_outbox_bytes: int = 64 * 1024 * 1024
    max_in_flight: int = 1024
    drain_timeout: float = 30.0
    auth_token_env: str | None = None
    backend: str = "asyncio"


def parse_host_port(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``PORT``, ``:PORT``, ``HOST:PORT`` or ``[V6]:PORT``; the host defaults to loopback."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or default_host
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"invalid port in {text!r}")
    return host, int(port)


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Server:
    """The running server as the methods layer sees it (``ServerHooks``)."""

    def __init__(self, lifecycle: Lifecycle, token: str | None) -> None:
        self.started_at = time.monotonic()
        self.lifecycle = lifecycle
        self.dispatcher: Dispatcher | None = None
        self._token = token.encode() if token is not None else None

    def in_flight(self) -> int:
        return self.dispatcher.in_flight if self.dispatcher is not None else 0

    def draining(self) -> bool:
        return self.lifecycle.stopping.is_set()

    def request_stop(self, reason: str) -> None:
        self.lifecycle.request_stop(reason)

    def check_token(self, token: str) -> bool:
        if self._token is None:
            return True
        import hmac

        return hmac.compare_digest(token.encode(), self._token)


def _auth_token(options: ServeOptions) -> str | None:
    if options.auth_token_env is None:
        for host, _ in options.tcp:
            if not _is_loopback(host):
                raise ConfigError(
                    f"binding TCP to {host!r} (not loopback) requires --auth-token-env VAR",
                    option="--auth-token-env",
                )
        return None
    token = os.environ.get(options.auth_token_env)
    if not token:
        raise ConfigError(
            f"--auth-token-env names {options.auth_token_env!r}, which is not set or empty",
            option="--auth-token-env",
        )
    return token


async def serve(
    options: ServeOptions,
    router: Router | None = None,
    *,
    task_status: anyio.abc.TaskStatus[dict[str, Any]] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until every transport has stopped (stdin EOF, ``shutdown``, SIGTERM or SIGINT).

    ``task_status`` receives the bound addresses (``{"tcp": [(host, port)], "unix": [path]}``).
    """
    # The env file first: it may hold the auth token's variable as well as the providers' keys.
    config = None
    if router is None:
        config = load_config(options.config, env_file=options.env_file)
    elif options.env_file is not None:
        load_env_file(options.env_file)
    token = _auth_token(options)
    own_router = router is None
    if router is None:
        router = Router(config)
    lifecycle = Lifecycle(options.drain_timeout, outbox_limit=options.max_outbox_bytes)
    server = _Server(lifecycle, token)
    dispatcher = Dispatcher(
        build_table(router, server),
        error_mapper=error_mapper,
        max_in_flight=options.max_in_flight,
        auth_required=token is not None,
    )
    server.dispatcher = dispatcher
    stdio = options.stdio or not (options.tcp or options.unix)
    try:
        async with anyio.create_task_group() as outer:
            outer.start_soon(_watch_signals, lifecycle, outer.cancel_scope)
            async with anyio.create_task_group() as tg:
                from llm_rpc.transports.sockets import serve_tcp, serve_unix

                bound: dict[str, Any] = {"tcp": [], "unix": []}
                for host, port in options.tcp:
                    serve_one_tcp = partial(
                        serve_tcp,
                        dispatcher,
                        lifecycle,
                        tg,
                        host=host,
                        port=port,
                        max_message_bytes=options.max_message_bytes,
                    )
                    bound["tcp"].append(await tg.start(serve_one_tcp))
                for path in options.unix:
                    serve_one_unix = partial(
                        serve_unix,
                        dispatcher,
                        lifecycle,
                        tg,
                        path=path,
                        max_message_bytes=options.max_message_bytes,
                    )
                    bound["unix"].append(await tg.start(serve_one_unix))
                if stdio:
                    from llm_rpc.transports.stdio import serve_stdio

                    tg.start_soon(
                        partial(serve_stdio, dispatcher, lifecycle, max_message_bytes=options.max_message_bytes)
                    )
                task_status.started(bound)
            outer.cancel_scope.cancel()
    finally:
        if own_router:
            with anyio.CancelScope(shield=True):
                await router.aclose()


async def _watch_signals(lifecycle: Lifecycle, scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        count = 0
        async for signum in signals:
            count += 1
            if count == 1:
                lifecycle.request_stop(signal.Signals(signum).name)
            else:
                log.warning("second signal: stopping now")
                scope.cancel()
                return


def run(options: ServeOptions) -> int:
    """Run the server to completion; the process's exit status."""
    anyio.run(serve, options, backend=options.backend)
    return 0
