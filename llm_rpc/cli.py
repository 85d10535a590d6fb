"""The ``llm-rpc`` command: ``serve``, ``call``, ``openrpc``, ``check-config`` and ``route --replay``.

Imports are lazy: ``serve --stdio`` on the mock must start fast (shell scripts start it per call).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _size(text: str) -> int:
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    factor = units.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in units else text
    value = int(float(number) * factor)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-rpc", description="JSON-RPC 2.0 gateway to LLM providers.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")

    serve = sub.add_parser("serve", help="serve JSON-RPC on stdio, TCP, Unix sockets and/or HTTP")
    serve.add_argument("--stdio", action="store_true", help="serve stdin/stdout (the default)")
    serve.add_argument("--tcp", action="append", default=[], metavar="HOST:PORT", help="listen on TCP (port 0: any)")
    serve.add_argument(
        "--unix", action="append", default=[], metavar="PATH", help="listen on a Unix socket (mode 0600)"
    )
    serve.add_argument(
        "--http", action="append", default=[], metavar="HOST:PORT", help="serve HTTP (contracts/http.md; port 0: any)"
    )
    serve.add_argument("--http-max-connections", type=int, default=1024, help="open HTTP connections at most (1024)")
    serve.add_argument(
        "--http-header-timeout", type=float, default=10.0, help="seconds to receive a request's head (10)"
    )
    serve.add_argument("--http-body-timeout", type=float, default=30.0, help="seconds to receive a request's body (30)")
    serve.add_argument(
        "--http-keepalive-timeout", type=float, default=60.0, help="seconds an idle HTTP connection is kept (60)"
    )
    serve.add_argument("--config", default=None, help="config file (default: $LLM_RPC_CONFIG, else the mock)")
    serve.add_argument(
        "--env-file", default=None, metavar="PATH", help="load this .env (default: .env beside the config)"
    )
    serve.add_argument("--max-message-bytes", type=_size, default=16 * 1024 * 1024, help="largest message (16MiB)")
    serve.add_argument(
        "--max-outbox-bytes", type=_size, default=64 * 1024 * 1024, help="replies buffered for a slow reader (64MiB)"
    )
    serve.add_argument("--max-in-flight", type=int, default=1024, help="per-connection in-flight cap (1024)")
    serve.add_argument("--drain-timeout", type=float, default=30.0, help="seconds to finish in-flight requests at stop")
    serve.add_argument(
        "--auth-token-env", default=None, metavar="VAR", help="require `auth` (HTTP: Bearer) with the token in $VAR"
    )
    serve.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio", help="anyio event loop")
    serve.add_argument(
        "--loop",
        choices=["asyncio", "uvloop"],
        default="asyncio",
        help="asyncio's loop: the standard one, or uvloop (the uvloop extra; no faster here)",
    )
    serve.add_argument(
        "--budget-store",
        default=None,
        metavar="URL",
        help="where chain budgets live: memory, sqlite:///path or redis://host:port/db (default: the config's)",
    )
    serve.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", default="json", choices=["json", "text"])
    serve.add_argument(
        "--decision-log", default=None, metavar="PATH", help="append each routing decision to PATH (JSON lines)"
    )

    call = sub.add_parser("call", help="call one method and print its result as JSON")
    call.add_argument("method")
    call.add_argument("params", nargs="?", default=None, help="params as JSON, or - to read them from stdin")
    call.add_argument("--tcp", default=None, metavar="HOST:PORT", help="call a running server over TCP")
    call.add_argument("--unix", default=None, metavar="PATH", help="call a running server over a Unix socket")
    call.add_argument("--config", default=None, help="config file for an in-process call")
    call.add_argument("--auth-token-env", default=None, metavar="VAR", help="authenticate with the token in $VAR")

    sub.add_parser("openrpc", help="print the OpenRPC document (contracts/openrpc.json)")

    route = sub.add_parser("route", help="recompute the decisions of a --decision-log and report any that differ")
    route.add_argument("--replay", required=True, metavar="PATH", help="the decision log to replay")
    route.add_argument("--config", default=None, help="config file (default: $LLM_RPC_CONFIG, else the defaults)")
    route.add_argument(
        "--env-file", default=None, metavar="PATH", help="load this .env (default: .env beside the config)"
    )

    check = sub.add_parser("check-config", help="validate a config file and print the resolved backends")
    check.add_argument(
        "path", nargs="?", default=None, help="config file (default: $LLM_RPC_CONFIG, else the built-in defaults)"
    )
    check.add_argument(
        "--env-file", default=None, metavar="PATH", help="load this .env (default: .env beside the config)"
    )
    check.add_argument("--json", action="store_true", help="print the resolved config as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        from llm_rpc._version import __version__

        print(__version__)
        return EXIT_OK
    if args.command == "serve":
        return _serve(args)
    if args.command == "call":
        return _call(args, parser)
    if args.command == "openrpc":
        return _openrpc()
    if args.command == "check-config":
        return _check_config(args)
    if args.command == "route":
        return _route(args)
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def _serve(args: argparse.Namespace) -> int:
    from llm_rpc._log import configure_logging
    from llm_rpc.errors import ConfigError
    from llm_rpc.server import ServeOptions, parse_host_port, run

    configure_logging(args.log_level, args.log_format)
    if args.decision_log:
        os.environ["LLM_RPC_DECISION_LOG"] = args.decision_log  # the router opens it (contracts/routing.md)
    try:
        tcp = [parse_host_port(t) for t in args.tcp]
        http = [parse_host_port(h) for h in args.http]
    except ValueError as exc:
        print(f"llm-rpc serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    options = ServeOptions(
        stdio=args.stdio,
        tcp=tcp,
        unix=args.unix,
        http=http,
        config=args.config,
        env_file=args.env_file,
        max_message_bytes=args.max_message_bytes,
        max_outbox_bytes=args.max_outbox_bytes,
        max_in_flight=args.max_in_flight,
        drain_timeout=args.drain_timeout,
        auth_token_env=args.auth_token_env,
        backend=args.backend,
        loop=args.loop,
        budget_store=args.budget_store,
        http_max_connections=args.http_max_connections,
        http_keepalive_timeout=args.http_keepalive_timeout,
        http_header_timeout=args.http_header_timeout,
        http_body_timeout=args.http_body_timeout,
    )
    try:
        return run(options)
    except ConfigError as exc:
        print(f"llm-rpc serve: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _call(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import msgspec

    raw = args.params
    if raw == "-":
        raw = sys.stdin.read()
    params: Any = None
    if raw is not None and raw.strip():
        try:
            params = msgspec.json.decode(raw)
        except msgspec.DecodeError as exc:
            print(f"llm-rpc call: PARAMS_JSON is not valid JSON: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.tcp and args.unix:
        print("llm-rpc call: give --tcp or --unix, not both", file=sys.stderr)
        return EXIT_USAGE

    import anyio

    from llm_rpc.client import Client, error_from_wire

    async def remote() -> Any:
        if args.tcp:
            from llm_rpc.server import parse_host_port

            host, port = parse_host_port(args.tcp)
            ctx = Client.connect_tcp(host, port)
        else:
            ctx = Client.connect_unix(args.unix)
        async with ctx as client:
            if args.auth_token_env:
                await client.call("auth", {"token": os.environ.get(args.auth_token_env, "")})
            return await client.call(args.method, params)

    async def local() -> Any:
        from llm_rpc._inprocess import call_in_process

        reply = await call_in_process(args.method, params, config=args.config)
        if "error" in reply:
            raise error_from_wire(reply["error"])
        return reply.get("result")

    try:
        result = anyio.run(remote if (args.tcp or args.unix) else local)
    except OSError as exc:
        print(f"llm-rpc call: cannot reach the server: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:
        code = getattr(exc, "code", None)
        data = getattr(exc, "data", None)
        message = getattr(exc, "message", None)
        if code is None or message is None:
            raise
        error = {"code": code, "message": message, "data": data}
        sys.stderr.write(msgspec.json.encode(error).decode() + "\n")
        return EXIT_ERROR
    sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
    return EXIT_OK


def _openrpc() -> int:
    import msgspec

    from llm_rpc._inprocess import openrpc

    sys.stdout.write(msgspec.json.format(msgspec.json.encode(openrpc()), indent=2).decode() + "\n")
    return EXIT_OK


def _check_config(args: argparse.Namespace) -> int:
    """Validate without building any provider: keys are reported as set or missing, never shown."""
    import msgspec

    from llm_rpc.config import config_summary, load_config_with_source
    from llm_rpc.errors import ConfigError

    try:
        config, source = load_config_with_source(args.path, env_file=args.env_file)
    except ConfigError as exc:
        print(f"llm-rpc check-config: {exc.message}", file=sys.stderr)
        return EXIT_ERROR
    summary = config_summary(config, source)
    if args.json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(summary), indent=2).decode() + "\n")
        return EXIT_OK

    def num(value: float) -> str:
        return f"{value:g}"

    out: list[str] = []
    if source.file is None:
        out.append("config: none (defaults: the mock, plus each provider whose usual key variable is set)")
    else:
        out.append(f"config: {source.file} ({source.format})")
    if source.env_file is not None:
        names = ", ".join(source.env_loaded)
        out.append(f"env file: {source.env_file} ({f'set {names}' if names else 'set nothing: all were already set'})")
    r = config.router
    out.append(
        f"router: strategy {r.strategy}, retries {r.retries}, retry delay {num(r.retry_base_delay)}s"
        f"..{num(r.retry_max_delay)}s, timeout {num(r.timeout_seconds)}s, default model {r.default_model or 'mock'}"
    )
    out.append("backends, in priority order:")
    missing = 0
    for b in summary["backends"]:
        out.append(f"  {b['name']}: provider {b['provider']}, priority {b['priority']}")
        if b["provider"] != "mock":
            out.append(f"    base_url: {b['base_url'] or '(provider default)'}")
        models = b["models"]
        if models:
            out.append(f"    models:   {', '.join(models)}")
        elif b["provider"] in ("mock", "ollama", "openai-compatible", "openrouter"):
            out.append("    models:   (any model)")
        else:
            out.append("    models:   (the provider's own model names)")
        limits = [
            f"{label} {b[key]}"
            for label, key in (("rpm", "rate_limit_rpm"), ("tpm", "rate_limit_tpm"), ("concurrent", "max_concurrent"))
            if b[key] is not None
        ]
        if b["timeout_seconds"] is not None:
            limits.append(f"timeout {num(b['timeout_seconds'])}s")
        out.append(f"    limits:   {', '.join(limits) or 'none'}")
        keys = [f"{k['env']} {k['state']}" for k in b["keys"]]
        missing += sum(k["state"] == "missing" for k in b["keys"])
        out.append(f"    keys:     {', '.join(keys) or '(none needed)'}")
        extras = ["local"] if b["local"] else []
        if b["tags"]:
            extras.append(f"tags {', '.join(b['tags'])}")
        if b["headers"]:
            extras.append(f"headers {', '.join(b['headers'])}")
        if extras:
            out.append(f"    other:    {'; '.join(extras)}")
    if config.models:
        prices = ", ".join(f"{m.name} {num(m.input)}/{num(m.output)}" for m in config.models)
        out.append(f"prices (USD per 1M tokens, input/output): {prices}")
    if config.routing is not None:
        rt = config.routing
        names = ", ".join(r.name or f"rules[{i}]" for i, r in enumerate(rt.rules)) or "none"
        out.append(
            f"routing: rules {names}; prefer_local {str(rt.prefer_local).lower()}, local_model "
            f"{rt.local_model or '(cheapest local)'}, cloud_model {rt.cloud_model or '(strongest allowed)'}"
        )
    verdict = f"valid: {len(config.backends)} backend(s)"
    if missing:
        verdict += f"; {missing} key variable(s) not set"
    out.append(verdict)
    sys.stdout.write("\n".join(out) + "\n")
    return EXIT_OK


def _route(args: argparse.Namespace) -> int:
    """Exit 0 when every logged decision is recomputed the same, 1 when any differs (decisions.md #10)."""
    import msgspec

    from llm_rpc.config import load_config
    from llm_rpc.core.policy import RoutingPolicy, replay
    from llm_rpc.errors import ConfigError

    try:
        policy = RoutingPolicy.from_config(load_config(args.config, env_file=args.env_file))
        differ = total = 0
        for outcome in replay(args.replay, policy):
            total += 1
            if not outcome.same:
                differ += 1
                line = {"line": outcome.line, "recorded": outcome.recorded, "recomputed": outcome.recomputed}
                sys.stdout.write(msgspec.json.encode(line).decode() + "\n")
    except ConfigError as exc:
        print(f"llm-rpc route: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, ValueError) as exc:
        print(f"llm-rpc route: {args.replay}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"llm-rpc route: replayed {total} decision(s), {differ} differ", file=sys.stderr)
    return EXIT_ERROR if differ else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
