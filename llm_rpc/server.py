"""The composition root: config → Router → method table → transports, in one task group.

All transports of one process share one state (router, budgets, usage, in-flight count).

``python -m llm_rpc.server [--host H] [--port P] [--provider NAME] [--model M]`` is llm-connect's
serve-mode command line: HTTP only, one provider serving every model name (``mock`` by default).
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

__all__ = ["ServeOptions", "main", "parse_host_port", "run", "serve"]

log = logging.getLogger("llm_rpc.server")

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass
class ServeOptions:
    """What ``llm-rpc serve`` was asked to do."""

    stdio: bool = False
    tcp: list[tuple[str, int]] = field(default_factory=list)
    unix: list[str] = field(default_factory=list)
    http: list[tuple[str, int]] = field(default_factory=list)
    config: str | None = None
    env_file: str | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_outbox_bytes: int = 64 * 1024 * 1024
    max_in_flight: int = 1024
    drain_timeout: float = 30.0
    auth_token_env: str | None = None
    backend: str = "asyncio"
    #: ``--loop``: ``uvloop`` runs asyncio on uvloop (``event_loop_options``); else the standard loop.
    loop: str = "asyncio"
    #: ``--budget-store``: overrides the config's ``[budgets] store`` (contracts/budgets.md).
    budget_store: str | None = None
    #: HTTP listeners' limits (contracts/http.md).
    http_max_connections: int = 1024
    http_keepalive_timeout: float = 60.0
    http_header_timeout: float = 10.0
    http_body_timeout: float = 30.0


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

    @property
    def auth_required(self) -> bool:
        return self._token is not None

    def check_token(self, token: str) -> bool:
        if self._token is None:
            return True
        import hmac

        return hmac.compare_digest(token.encode(), self._token)


def _auth_token(options: ServeOptions) -> str | None:
    if options.auth_token_env is None:
        for kind, listeners in (("TCP", options.tcp), ("HTTP", options.http)):
            for host, _ in listeners:
                if not _is_loopback(host):
                    raise ConfigError(
                        f"binding {kind} to {host!r} (not loopback) requires --auth-token-env VAR",
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

    ``task_status`` receives the bound addresses (``{"tcp": [(host, port)], "unix": [path], "http": [(host, port)]}``).
    """
    # The env file first: it may hold the auth token's variable as well as the providers' keys.
    config = None
    if router is None:
        config = load_config(options.config, env_file=options.env_file)
        if options.budget_store is not None:
            import msgspec

            budgets = msgspec.structs.replace(config.budgets, store=options.budget_store)
            config = msgspec.structs.replace(config, budgets=budgets)
    elif options.env_file is not None:
        load_env_file(options.env_file)
    token = _auth_token(options)
    own_router = router is None
    if router is None:
        router = Router(config)
        try:
            await router.budgets.start()  # a budget store that cannot open fails the start (contracts/budgets.md)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await router.aclose()
            raise
    lifecycle = Lifecycle(options.drain_timeout, outbox_limit=options.max_outbox_bytes)
    server = _Server(lifecycle, token)
    dispatcher = Dispatcher(
        build_table(router, server),
        error_mapper=error_mapper,
        max_in_flight=options.max_in_flight,
        auth_required=token is not None,
    )
    server.dispatcher = dispatcher
    stdio = options.stdio or not (options.tcp or options.unix or options.http)
    try:
        async with anyio.create_task_group() as outer:
            outer.start_soon(_watch_signals, lifecycle, outer.cancel_scope)
            async with anyio.create_task_group() as tg:
                from llm_rpc.transports.sockets import serve_tcp, serve_unix

                bound: dict[str, Any] = {"tcp": [], "unix": [], "http": []}
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
                if options.http:
                    bound["http"] = await _start_http(options, dispatcher, lifecycle, tg, router, server)
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


async def _start_http(
    options: ServeOptions,
    dispatcher: Dispatcher,
    lifecycle: Lifecycle,
    tg: anyio.abc.TaskGroup,
    router: Router,
    server: _Server,
) -> list[tuple[str, int]]:
    from llm_rpc.methods.metrics import prometheus_text
    from llm_rpc.transports.http import HttpSettings, HttpStats, serve_http

    stats = HttpStats()
    router.metrics.add_gauge("http_connections", "Open HTTP connections.", lambda: stats.connections)
    router.metrics.add_gauge(
        "http_rejected_connections", "HTTP connections refused over the connection cap.", lambda: stats.rejected
    )
    settings = HttpSettings(
        max_message_bytes=options.max_message_bytes,
        max_connections=options.http_max_connections,
        keepalive_timeout=options.http_keepalive_timeout,
        header_timeout=options.http_header_timeout,
        body_timeout=options.http_body_timeout,
        check_token=server.check_token if server.auth_required else None,
        metrics=partial(prometheus_text, router, server),
    )
    bound = []
    for host, port in options.http:
        serve_one = partial(serve_http, dispatcher, lifecycle, tg, host=host, port=port, settings=settings, stats=stats)
        bound.append(await tg.start(serve_one))
    return bound


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


def event_loop_options(backend: str, loop: str) -> dict[str, Any]:
    """anyio's ``backend_options`` for ``--backend`` and ``--loop``: uvloop is opt-in, asyncio only.
    It measured no faster here (contracts/decisions.md, "Event loop"), so the standard loop stays.

    Raises:
        ConfigError: ``--loop uvloop`` with ``--backend trio``, or without uvloop installed.
    """
    if loop != "uvloop":
        return {}
    import importlib.util

    from llm_rpc.errors import ConfigError

    if backend != "asyncio":
        raise ConfigError("--loop uvloop runs only with --backend asyncio")
    if importlib.util.find_spec("uvloop") is None:
        raise ConfigError("--loop uvloop: uvloop is not installed (pip install 'llm-rpc[uvloop]')")
    return {"use_uvloop": True}


def run(options: ServeOptions) -> int:
    """Run the server to completion; the process's exit status.

    Raises:
        ConfigError: ``--loop`` cannot be honoured (``event_loop_options``).
    """
    anyio.run(
        serve, options, backend=options.backend, backend_options=event_loop_options(options.backend, options.loop)
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """llm-connect's serve mode, flag for flag: HTTP on ``--host``/``--port``, one ``--provider``
    (default ``mock``) serving every model name, ``--model`` the default model."""
    import argparse
    import sys

    import msgspec

    parser = argparse.ArgumentParser(
        prog="python -m llm_rpc.server", description="llm-connect's serve mode over llm-rpc."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind; 0 picks a free one (default 8000)")
    parser.add_argument("--provider", default="mock", help="the provider serving every model (default mock)")
    parser.add_argument("--model", default=None, help="the model used when a request names none")
    parser.add_argument("--config", default=None, help="an llm-rpc config file instead of --provider")
    parser.add_argument("--auth-token-env", default=None, metavar="VAR", help="require Bearer $VAR on every request")
    args = parser.parse_args(argv)
    from llm_rpc._log import configure_logging
    from llm_rpc.config import Config

    configure_logging("warning", "json")
    options = ServeOptions(http=[(args.host, args.port)], auth_token_env=args.auth_token_env)
    try:
        if args.config is not None:
            config = load_config(args.config)
        else:
            settings: dict[str, Any] = {"default_model": args.model} if args.model else {}
            config = msgspec.convert(
                {"backends": [{"provider": args.provider, "models": ["*"]}], "router": settings}, Config
            )
    except (ConfigError, msgspec.ValidationError) as exc:
        print(f"llm_rpc.server: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 2

    async def serve_with_router() -> None:
        async with Router(config) as router:
            await serve(options, router)

    try:
        anyio.run(serve_with_router)
    except ConfigError as exc:
        print(f"llm_rpc.server: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
