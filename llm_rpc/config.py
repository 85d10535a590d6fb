"""Configuration: the file an operator writes, decoded into msgspec Structs and checked before anything runs.

TOML or YAML by extension (YAML through the optional ``yaml`` extra); a YAML file whose top level holds
``llm:`` is read as the xml-pipeline router's ``organism.yaml``. Every rejection is a ``ConfigError``
whose message and ``data["path"]`` name the key (``backends[0].modles``). API keys come only from the
environment (and ``.env`` files, which never override what is already set): a key written in the file
is rejected, and no message built here ever contains a value that could be a key.

See contracts/config.md for the schema, a full example and the rules.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

import msgspec
from msgspec import Meta, Struct, field

from llm_rpc import errors
from llm_rpc._secret import Secret, redact
from llm_rpc.errors import ConfigError
from llm_rpc.types import Capability, Complexity

if TYPE_CHECKING:
    import msgspec.inspect as mi

__all__ = [
    "USUAL_KEY_ENVS",
    "BackendConfig",
    "BudgetSettings",
    "ComplexitySettings",
    "Config",
    "ConfigSource",
    "ModelPrice",
    "RouteExclude",
    "RouteTarget",
    "RouterSettings",
    "RoutingRule",
    "RoutingSettings",
    "config_summary",
    "default_config",
    "load_config",
    "load_config_with_source",
    "load_env_file",
    "parse_env",
]

ProviderKind = Literal["openai", "anthropic", "gemini", "ollama", "xai", "openrouter", "openai-compatible", "mock"]
Strategy = Literal["failover", "round-robin", "least-loaded", "latency"]

PositiveInt = Annotated[int, Meta(ge=1)]
NonNegative = Annotated[float, Meta(ge=0)]
PositiveFloat = Annotated[float, Meta(gt=0)]
NonEmpty = Annotated[str, Meta(min_length=1)]

#: The provider kinds whose key variable is well known: the no-config defaults look for these, and a
#: backend of one of these kinds that names no key variable uses this one.
USUAL_KEY_ENVS: dict[ProviderKind, str] = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "gemini": "GEMINI_API_KEY",
    "xai": "XAI_API_KEY",
    "openrouter": "OPENROUTER_API_KEY",
}

# No-config defaults: real providers first, the mock last, so `gpt-4o` reaches OpenAI when its key is set.
_DEFAULT_PROVIDER_PRIORITY = 10
_DEFAULT_MOCK_PRIORITY = 1000
_MOCK_ONLY_KEYS = ("latency_ms", "stream_delay_ms", "fail_rate", "fail_type")


class _Cfg(Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class RouterSettings(_Cfg):
    """``[router]``: how a call picks a backend and how long it may take."""

    strategy: Strategy = "failover"
    retries: Annotated[int, Meta(ge=0)] = 3
    retry_base_delay: NonNegative = 1.0
    retry_max_delay: NonNegative = 60.0
    timeout_seconds: PositiveFloat = 120.0
    default_model: NonEmpty | None = None
    #: Consecutive failures (retryable types) after which a backend is skipped for ``cooldown_seconds``.
    cooldown_after_failures: PositiveInt = 5
    cooldown_seconds: NonNegative = 30.0
    #: Under ``latency``, every Nth choice goes to the candidate tried least recently (0: never).
    latency_exploration: Annotated[int, Meta(ge=0)] = 10
    #: How many items of one ``execute_batch`` run at once, unless the call says otherwise.
    batch_concurrency: PositiveInt = 32


class BackendConfig(_Cfg):
    """One ``[[backends]]`` entry. Holds key variable *names*; the keys stay in the environment."""

    provider: ProviderKind
    name: NonEmpty | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    api_key_envs: list[str] | None = None
    models: list[str] | None = None
    priority: int = 100
    rate_limit_tpm: PositiveInt | None = None
    rate_limit_rpm: PositiveInt | None = None
    max_concurrent: PositiveInt | None = None
    timeout_seconds: PositiveFloat | None = None
    headers: dict[str, str] = field(default_factory=dict)
    local: bool = False
    tags: list[str] = field(default_factory=list)
    #: What routing rules may ``require`` of it; default: the provider's (contracts/routing.md). ``local``
    #: is implied by ``local = true``.
    capabilities: list[Capability] | None = None
    # mock-only behaviour (contracts/config.md)
    latency_ms: NonNegative = 0.0
    stream_delay_ms: NonNegative = 0.0
    fail_rate: Annotated[float, Meta(ge=0, le=1)] = 0.0
    fail_type: str = "server_error"

    @property
    def backend_name(self) -> str:
        return self.name or self.provider

    @property
    def key_envs(self) -> list[str]:
        """Every key variable of this backend, ``api_key_env`` first, without repeats."""
        names = [self.api_key_env] if self.api_key_env else []
        names += self.api_key_envs or []
        return list(dict.fromkeys(names))

    def api_keys(self, environ: Mapping[str, str] | None = None) -> list[Secret]:
        """The keys that are set (empty ones skipped), in ``key_envs`` order, each wrapped as a ``Secret``."""
        env = os.environ if environ is None else environ
        return [Secret(value) for name in self.key_envs if (value := env.get(name))]


class ModelPrice(_Cfg):
    """One ``[[models]]`` price entry, in USD per 1M tokens (as providers publish them)."""

    name: NonEmpty
    input: NonNegative
    output: NonNegative


class RouteTarget(_Cfg):
    """A rule's ``prefer`` entry or ``fallback``: a model, on one provider (kind or backend name) or on any
    backend that serves it. The model id is sent exactly as written (decisions.md #5)."""

    model: NonEmpty
    provider: NonEmpty | None = None


class RouteExclude(_Cfg):
    """A rule's ``exclude`` entry: candidates matching every key given are never chosen."""

    provider: NonEmpty | None = None
    model: NonEmpty | None = None
    backend: NonEmpty | None = None
    tag: NonEmpty | None = None


class RoutingRule(_Cfg):
    """One ``[[routing.rules]]`` entry: when it matches, and where it sends the call."""

    name: NonEmpty | None = None
    task_type: NonEmpty | list[NonEmpty] | None = None
    complexity: Complexity | list[Complexity] | None = None
    agent_id: NonEmpty | list[NonEmpty] | None = None
    tags: list[NonEmpty] = field(default_factory=list)
    prefer: list[RouteTarget] = field(default_factory=list)
    fallback: RouteTarget | None = None
    exclude: list[RouteExclude] = field(default_factory=list)
    require: list[Capability] = field(default_factory=list)
    #: USD per 1,000 tokens, the model's input and output prices blended by ``input_output_ratio``.
    max_cost_per_1k: NonNegative | None = None
    #: Input tokens expected per output token (default: ``[routing] input_output_ratio``).
    input_output_ratio: PositiveFloat | None = None
    max_cost_usd: NonNegative | None = None
    max_latency_s: PositiveFloat | None = None


_CRITICAL_WORDS = [
    "deploy", "production", "delete", "drop table", "payment", "credential", "password", "billing", "migrate",
    "rollback", "irreversible", "wire transfer",
]  # fmt: skip
_COMPLEX_WORDS = [
    "research", "analyze", "analyse", "analysis", "design", "security", "audit", "architect", "refactor", "debug",
    "investigate", "optimize", "prove",
]  # fmt: skip
_SIMPLE_WORDS = [
    "summarize", "summarise", "summary", "translate", "define", "definition", "rephrase", "reword", "classify",
    "extract", "spell",
]  # fmt: skip


class ComplexitySettings(_Cfg):
    """``[routing.complexity]``: the task classifier's words (each matches words starting with it) and length."""

    critical: list[NonEmpty] = field(default_factory=lambda: list(_CRITICAL_WORDS))
    complex: list[NonEmpty] = field(default_factory=lambda: list(_COMPLEX_WORDS))
    simple: list[NonEmpty] = field(default_factory=lambda: list(_SIMPLE_WORDS))
    #: A task with none of the words is ``moderate`` from this many characters on, else ``simple``.
    moderate_min_chars: PositiveInt = 200


class RoutingSettings(_Cfg):
    """``[routing]``: rules first, complexity routing when none matches (contracts/routing.md)."""

    prefer_local: bool = True
    allow_cloud_fallback: bool = True
    local_model: NonEmpty | None = None
    cloud_model: NonEmpty | None = None
    #: Below this share of a chain's budget left, routing moves to the cheapest allowed candidates.
    downgrade_below: Annotated[float, Meta(ge=0, le=1)] = 0.2
    input_output_ratio: PositiveFloat = 3.0
    complexity: ComplexitySettings = field(default_factory=ComplexitySettings)
    rules: list[RoutingRule] = field(default_factory=list)


class BudgetSettings(_Cfg):
    """``[budgets]``: where delegation-chain budgets live and how long they last (contracts/budgets.md)."""

    #: ``memory``, ``sqlite:///relative/path``, ``sqlite:////absolute/path`` or ``redis://host:port/db``.
    store: Annotated[str, Meta(pattern=r"^(memory|sqlite:///.+|rediss?://.*|unix://.+)$")] = "memory"
    #: A call's reservation lasts its deadline plus this; a reservation not settled by then is released.
    lease_seconds: PositiveFloat = 30.0
    #: Closed and expired chains are kept this long (``budget.status`` still answers), then forgotten.
    retention_seconds: NonNegative = 86400.0
    #: The ``ttl_s`` of a chain opened without one (null: such chains last until closed).
    default_ttl_seconds: PositiveFloat | None = 7 * 86400.0
    #: Completion tokens held (and sent as ``max_tokens``) for a budgeted call that sets none.
    default_max_tokens: PositiveInt = 1024
    #: A call whose ``chain_id`` has no budget open: ``allow`` runs it without one (the id still groups
    #: routing decisions); ``refuse`` answers ``budget_exceeded`` with ``reason: unknown_chain``.
    unknown_chains: Literal["allow", "refuse"] = "allow"


class Config(_Cfg):
    """The whole config file."""

    router: RouterSettings = field(default_factory=RouterSettings)
    backends: list[BackendConfig] = field(default_factory=list)
    models: list[ModelPrice] = field(default_factory=list)
    routing: RoutingSettings | None = None
    budgets: BudgetSettings = field(default_factory=BudgetSettings)


# The xml-pipeline router's `llm:` section, accepted as written (its own defaults included).
class _OrganismBackend(_Cfg):
    provider: ProviderKind
    name: NonEmpty | None = None
    api_key_env: str | None = None
    priority: int = 1
    rate_limit_tpm: PositiveInt | None = 100_000
    max_concurrent: PositiveInt | None = 20
    base_url: str | None = None
    supported_models: list[str] | None = None
    timeout: PositiveFloat | None = None


class _OrganismLLM(_Cfg):
    strategy: Literal["failover", "round-robin", "least-loaded"] = "failover"
    retries: Annotated[int, Meta(ge=0)] = 3
    retry_base_delay: NonNegative = 1.0
    retry_max_delay: NonNegative = 60.0
    backends: list[_OrganismBackend] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ConfigSource:
    """Where a config came from (``check-config`` prints it)."""

    file: Path | None
    format: Literal["toml", "yaml", "organism.yaml", "defaults"]
    env_file: Path | None = None
    env_loaded: tuple[str, ...] = ()


def default_config(environ: Mapping[str, str] | None = None) -> Config:
    """No config file: a backend per provider whose usual key variable is set, then the mock.

    The mock serves every model name (so llm-connect's default model works) and comes last by priority,
    so a model a real provider serves goes there. OpenRouter takes only ``vendor/model`` ids here: it
    would otherwise serve every name, ``mock`` included.
    """
    env = os.environ if environ is None else environ
    backends = [
        BackendConfig(
            provider=kind,
            api_key_env=var,
            priority=_DEFAULT_PROVIDER_PRIORITY,
            models=["*/*"] if kind == "openrouter" else None,
        )
        for kind, var in USUAL_KEY_ENVS.items()
        if env.get(var)
    ]
    backends.append(BackendConfig(provider="mock", priority=_DEFAULT_MOCK_PRIORITY))
    return Config(backends=backends)


def load_config(
    path: str | os.PathLike[str] | None = None, *, env_file: str | os.PathLike[str] | None = None
) -> Config:
    """Load ``path`` (or ``$LLM_RPC_CONFIG``); with neither, the defaults (``default_config``).

    ``env_file`` is loaded first (so it may set ``LLM_RPC_CONFIG``); without it, a ``.env`` beside the
    config file is loaded if there is one. Neither overrides a variable that is already set.

    Raises:
        ConfigError: the file is missing, unparseable or invalid; ``data.path`` names the key.
    """
    return load_config_with_source(path, env_file=env_file)[0]


def load_config_with_source(
    path: str | os.PathLike[str] | None = None, *, env_file: str | os.PathLike[str] | None = None
) -> tuple[Config, ConfigSource]:
    """``load_config``, also saying which files were read and which variables the env file set.

    Raises:
        ConfigError: as ``load_config``.
    """
    loaded: list[str] = []
    env_path = Path(env_file) if env_file is not None else None
    if env_path is not None:
        loaded += load_env_file(env_path)
    if path is None:
        path = os.environ.get("LLM_RPC_CONFIG") or None
    if path is None:
        return default_config(), ConfigSource(None, "defaults", env_path, tuple(loaded))
    file = Path(path)
    raw = _read(file)
    if env_path is None and (beside := file.parent / ".env").is_file():
        env_path = beside
        loaded += load_env_file(beside)
    config, fmt = _parse(raw, file)
    return config, ConfigSource(file, fmt, env_path, tuple(loaded))


def _read(file: Path) -> bytes:
    suffix = file.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise ConfigError(
            f"{file}: unsupported config file type {suffix or '(none)'!r}: use .toml, .yaml or .yml", file=str(file)
        )
    try:
        return file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read the config file: {exc.strerror}", file=str(file)) from None


def _parse(raw: bytes, file: Path) -> tuple[Config, Literal["toml", "yaml", "organism.yaml"]]:
    if file.suffix.lower() == ".toml":
        try:
            data = msgspec.toml.decode(raw)
        except UnicodeDecodeError:
            raise ConfigError(f"{file}: not valid TOML: the file is not UTF-8", file=str(file)) from None
        except msgspec.DecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {_scrub(str(exc))}", file=str(file)) from None
        return _from_native(data, file), "toml"
    data = _load_yaml(raw, file)
    if isinstance(data, dict) and "llm" in data:
        # Another program's file: only its `llm:` section is ours to read.
        return _from_organism(data["llm"], file), "organism.yaml"
    return _from_native({} if data is None else data, file), "yaml"


# -- YAML ---------------------------------------------------------------------------------------------


def _load_yaml(raw: bytes, file: Path) -> Any:
    try:
        yaml: Any = importlib.import_module("yaml")
    except ImportError:
        raise ConfigError(
            f"{file}: YAML config files need PyYAML: install the yaml extra (pip install 'llm-rpc[yaml]') "
            "or write the config in TOML",
            file=str(file),
        ) from None
    try:
        return yaml.load(raw, Loader=_strict_yaml_loader())
    except yaml.MarkedYAMLError as exc:
        # str(exc) quotes the offending line, which may hold a key: build the message from the parts.
        problem = _scrub(str(exc.problem or exc.context or "syntax error"))
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"{file}: not valid YAML: {problem}{where}", file=str(file)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML ({type(exc).__name__})", file=str(file)) from None


@functools.cache
def _strict_yaml_loader() -> Any:
    """PyYAML's safe loader (C if available) that rejects a key given twice, as TOML does."""
    yaml: Any = importlib.import_module("yaml")
    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    merge_tag = "tag:yaml.org,2002:merge"

    def construct_mapping(self: Any, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == merge_tag:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # unhashable: SafeConstructor reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark
                )
        return base.construct_mapping(self, node, deep=deep)

    return type("_StrictSafeLoader", (base,), {"construct_mapping": construct_mapping})


# -- decoding and checks ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Paths:
    """How the checks name keys: native (``backends[0].models``) or organism (``llm.backends[0].supported_models``)."""

    router: str
    backends: str
    rename: Mapping[str, str]

    def backend(self, index: int, key: str) -> str:
        return f"{self.backends}[{index}].{self.rename.get(key, key)}"


_NATIVE = _Paths("router", "backends", {})
_ORGANISM = _Paths("llm", "llm.backends", {"models": "supported_models", "timeout_seconds": "timeout"})


def _error(file: Path, path: str, text: str, **data: Any) -> ConfigError:
    return ConfigError(f"{file}: {path or '(top level)'}: {text}", path=path, file=str(file), **data)


def _from_native(data: Any, file: Path) -> Config:
    _reject_literal_keys(data, "", file)
    config = _convert(data, Config, "", file)
    # Mock-only keys on a real backend would silently do nothing: say so (presence, not value, counts).
    for i, (raw, backend) in enumerate(zip(data["backends"], config.backends, strict=True) if config.backends else ()):
        if backend.provider != "mock":
            for key in _MOCK_ONLY_KEYS:
                if key in raw:
                    raise _error(file, f"backends[{i}].{key}", 'only a provider = "mock" backend takes this key')
    return _finish(config, file, _NATIVE)


def _from_organism(llm: Any, file: Path) -> Config:
    if isinstance(llm, dict):
        llm = _normalize_organism(llm)
    _reject_literal_keys(llm, "llm", file)
    org = _convert(llm, _OrganismLLM, "llm", file)
    config = Config(
        router=RouterSettings(
            strategy=org.strategy,
            retries=org.retries,
            retry_base_delay=org.retry_base_delay,
            retry_max_delay=org.retry_max_delay,
        ),
        backends=[
            BackendConfig(
                provider=b.provider,
                name=b.name,
                base_url=b.base_url,
                api_key_env=b.api_key_env,
                models=b.supported_models,
                priority=b.priority,
                rate_limit_tpm=b.rate_limit_tpm,
                max_concurrent=b.max_concurrent,
                timeout_seconds=b.timeout,
            )
            for b in org.backends
        ],
    )
    return _finish(config, file, _ORGANISM)


def _normalize_organism(llm: dict[Any, Any]) -> dict[Any, Any]:
    """The spellings xml-pipeline itself accepts: any case, ``round_robin`` for ``round-robin``."""
    out = dict(llm)
    if isinstance(out.get("strategy"), str):
        out["strategy"] = out["strategy"].lower().replace("_", "-")
    if isinstance(out.get("backends"), list):
        out["backends"] = [
            {**b, "provider": b["provider"].lower()}
            if isinstance(b, dict) and isinstance(b.get("provider"), str)
            else b
            for b in out["backends"]
        ]
    return out


def _finish(config: Config, file: Path, paths: _Paths) -> Config:
    """Checks that span fields or need more than a type, then the default key variable per provider."""
    if not config.backends:
        raise _error(
            file, paths.backends, 'no backends configured: add at least one (provider = "mock" for the built-in mock)'
        )
    router = config.router
    if router.retry_base_delay > router.retry_max_delay:
        raise _error(file, f"{paths.router}.retry_max_delay", "must be at least retry_base_delay")
    seen: dict[str, int] = {}
    backends: list[BackendConfig] = []
    for i, backend in enumerate(config.backends):
        name = backend.backend_name
        if name in seen:
            raise _error(
                file,
                paths.backend(i, "name"),
                f"two backends are named {name!r} ({paths.backends}[{seen[name]}] too): give each a distinct name",
            )
        seen[name] = i
        if backend.api_key_env is not None:
            _check_key_env(backend.api_key_env, paths.backend(i, "api_key_env"), file)
        for j, env in enumerate(backend.api_key_envs or []):
            _check_key_env(env, f"{paths.backend(i, 'api_key_envs')}[{j}]", file)
        if backend.base_url is not None:
            _check_base_url(backend.base_url, paths.backend(i, "base_url"), file)
        elif backend.provider == "openai-compatible":
            raise _error(file, paths.backend(i, "base_url"), "required for provider openai-compatible (no default)")
        for header, value in backend.headers.items():
            _check_header(header, value, paths.backend(i, "headers"), file)
        if backend.provider == "mock" and errors.error_class_for_type(backend.fail_type) is None:
            valid = ", ".join(sorted(errors.provider_error_types()))
            raise _error(file, paths.backend(i, "fail_type"), f"not an error type; the upstream ones are: {valid}")
        if not backend.key_envs and backend.provider in USUAL_KEY_ENVS:
            backends.append(msgspec.structs.replace(backend, api_key_env=USUAL_KEY_ENVS[backend.provider]))
        else:
            backends.append(backend)
    prices: dict[str, int] = {}
    for i, price in enumerate(config.models):
        if price.name in prices:
            raise _error(
                file, f"models[{i}].name", f"{price.name!r} is priced twice (models[{prices[price.name]}] too)"
            )
        prices[price.name] = i
    if config.routing is not None:
        _check_routing(config.routing, {b.backend_name for b in config.backends}, file)
    return msgspec.structs.replace(config, backends=backends)


def _check_routing(routing: RoutingSettings, names: set[str], file: Path) -> None:
    known = names | set(get_args(ProviderKind))
    for i, rule in enumerate(routing.rules):
        where = f"routing.rules[{i}]"
        targets = [(f"prefer[{j}]", t) for j, t in enumerate(rule.prefer)]
        targets += [("fallback", rule.fallback)] if rule.fallback is not None else []
        for key, target in targets:
            if target.provider is not None and target.provider not in known:
                raise _error(
                    file, f"{where}.{key}.provider", "neither a provider kind nor a backend name of this config"
                )
        for j, ex in enumerate(rule.exclude):
            if ex.provider is None and ex.model is None and ex.backend is None and ex.tag is None:
                raise _error(file, f"{where}.exclude[{j}]", "give at least one of provider, model, backend, tag")


def _convert(data: Any, type_: type[Any], prefix: str, file: Path) -> Any:
    try:
        return msgspec.convert(data, type_)
    except msgspec.ValidationError as exc:
        raise _validation_error(str(exc), type_, prefix, file) from None


# Regular expressions stay strings until first use (the re module caches them): most runs never need
# the error-path ones, and the CLI's cold start matters.

_AT_KEY = r"(?P<msg>.*) - at `key` in `\$(?P<path>[^`]*)`\Z"
_AT = r"(?P<msg>.*) - at `\$(?P<path>[^`]*)`\Z"
_UNKNOWN = r"Object contains unknown field `(?P<name>[^`]*)`\Z"
_MISSING = r"Object missing required field `(?P<name>[^`]*)`\Z"
_ENUM = r"Invalid enum value (?P<value>.*)\Z"
_EXPECTED = r"Expected `(?P<type>[^`]*)`(?P<rest>.*?)(?:, got `(?P<got>[^`]*)`)?\Z"
_SEGMENT = r"\.([^.\[]+)|\[(\d+|\.\.\.)\]"


def _validation_error(message: str, root: type[Any], prefix: str, file: Path) -> ConfigError:
    """Turn msgspec's message (``... - at `$.backends[0]```) into ours, naming the key path."""
    import msgspec.inspect as mi  # only errors need it

    is_key = False
    if m := re.match(_AT_KEY, message, re.S):
        message, where, is_key = m["msg"], m["path"], True
    elif m := re.match(_AT, message, re.S):
        message, where = m["msg"], m["path"]
    else:
        where = ""
    segments = [name if name else index for name, index in re.findall(_SEGMENT, where)]
    at = _type_at(root, segments)
    path = ".".join(p for p in (prefix, where.lstrip(".")) if p)
    data: dict[str, Any] = {}
    if m := re.match(_UNKNOWN, message):
        path = f"{path}.{m['name']}" if path else m["name"]
        text = "unknown key" + _suggestion(m["name"], at)
    elif m := re.match(_MISSING, message):
        path = f"{path}.{m['name']}" if path else m["name"]
        text = "required key is missing"
    elif m := re.match(_ENUM, message, re.S):
        allowed = [str(v) for v in at.values] if isinstance(at, mi.LiteralType) else []
        value = m["value"].strip("'\"")
        text = f"expected one of: {', '.join(allowed)}" if allowed else "invalid value"
        if not _looks_like_key(value) and len(value) <= 40:
            text += f"; got {value!r}"
        data["expected"] = " | ".join(allowed) or None
    elif m := re.match(_EXPECTED, message, re.S):
        expected = _type_name(m["type"]) + m["rest"]
        text = f"expected {expected}" + (f", got {_type_name(m['got'])}" if m["got"] else "")
        data["expected"] = expected
    else:
        text = _scrub(message)
    if is_key:
        text = f"a key of this table is invalid: {text}"
    return _error(file, path, text, **data)


def _type_name(name: str) -> str:
    # msgspec speaks JSON; config files speak TOML/YAML.
    return name.replace("object", "table").replace("array", "list")


def _type_at(root: type[Any], segments: list[str]) -> mi.Type | None:
    """The type at a msgspec error path, for "did you mean" and the allowed values of a choice."""
    import msgspec.inspect as mi

    t: mi.Type | None = _unwrap(mi.type_info(root))
    for seg in segments:
        if isinstance(t, mi.StructType) and not seg.isdigit() and seg != "...":
            t = next((_unwrap(f.type) for f in t.fields if f.name == seg), None)
        elif isinstance(t, mi.ListType):
            t = _unwrap(t.item_type)
        elif isinstance(t, mi.DictType):
            t = _unwrap(t.value_type)
        else:
            return None
    return t


def _unwrap(t: mi.Type) -> mi.Type:
    import msgspec.inspect as mi

    while True:
        if isinstance(t, mi.Metadata):
            t = t.type
        elif isinstance(t, mi.UnionType) and len(others := [u for u in t.types if not isinstance(u, mi.NoneType)]) == 1:
            t = others[0]
        else:
            return t


def _suggestion(name: str, at: mi.Type | None) -> str:
    import difflib

    import msgspec.inspect as mi

    if not isinstance(at, mi.StructType):
        return ""
    fields = [f.name for f in at.fields]
    close = difflib.get_close_matches(name, fields, n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else f"; known keys: {', '.join(fields)}"


# -- keys belong in the environment -------------------------------------------------------------------

_ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*\Z"
_KEY_PREFIXES = ("sk-", "sk_", "xai-", "AIza", "gsk_", "pplx-", "Bearer ", "bearer ")
_KEY_TOKEN = r"[A-Za-z0-9_\-.]{20,}\Z"
_SCRUB = r"(?:sk-|sk_|xai-|AIza|gsk_|pplx-)[A-Za-z0-9_\-.]*|[A-Za-z0-9_\-]{24,}"
_SECRET_NAMES = frozenset(
    {
        "key",
        "keys",
        "apikey",
        "api_key",
        "api_keys",
        "token",
        "api_token",
        "access_token",
        "auth_token",
        "bearer",
        "bearer_token",
        "secret",
        "api_secret",
        "client_secret",
        "password",
        "passwd",
        "credential",
        "credentials",
        "authorization",
    }
)
_SECRET_SUFFIXES = ("_key", "_token", "_secret", "_password")
_CREDENTIAL_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key", "cookie"}
)
_URL_SECRET_PARAMS = frozenset({"key", "api_key", "apikey", "api-key", "token", "access_token", "auth", "secret"})
_HEADER_NAME = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z"

_KEYS_BELONG = (
    "API keys belong in the environment, never in the config file (which ends up in version control, "
    "backups and logs): set the key in an environment variable or a .env file, and name that variable "
    'with api_key_env = "OPENAI_API_KEY" (or api_key_envs for several)'
)


def _looks_like_key(value: str) -> bool:
    """A provider key's shape: a known prefix, or 32+ letters and digits, both, with no separator.

    Names (``OPENAI_API_KEY``), words (``my-app-2024``) and URLs all have separators; hex and base62
    keys do not.
    """
    value = value.strip()
    if value.startswith(_KEY_PREFIXES):
        return True
    return (
        len(value) >= 32
        and value.isascii()
        and value.isalnum()
        and any(c.isdigit() for c in value)
        and any(c.isalpha() for c in value)
    )


def _scrub(text: str) -> str:
    """Mask anything key-shaped in text that came from a parser (it may quote the file)."""
    return re.sub(_SCRUB, "***", redact(text))


def _is_secret_name(key: str) -> bool:
    norm = key.strip().lower().replace("-", "_")
    return norm in _SECRET_NAMES or norm.endswith(_SECRET_SUFFIXES)


def _walk(data: Any, path: str) -> Iterator[tuple[str, Any, Any]]:
    """Every (path, key, value) of the nested mappings and lists in ``data`` (key None for list items)."""
    if isinstance(data, dict):
        for key, value in data.items():
            sub = f"{path}.{key}" if path else str(key)
            yield sub, key, value
            yield from _walk(value, sub)
    elif isinstance(data, list):
        for i, item in enumerate(data):
            yield f"{path}[{i}]", None, item
            yield from _walk(item, f"{path}[{i}]")


# Key variable names get their own, more helpful, message once they are known to be strings.
_KEY_ENV_PATH = r"(?:^|\.)api_key_envs?(?:\[\d+\])?\Z"


def _reject_literal_keys(data: Any, prefix: str, file: Path) -> None:
    """Before any other check: a key written in the file is refused, saying why, never quoting it."""
    for path, key, value in _walk(data, prefix):
        if isinstance(key, str) and _looks_like_key(key):
            # The path would quote it: name the table instead.
            where = path.rpartition(".")[0] if "." in path else ""
            raise _error(file, where, f"a key of this table looks like an API key. {_KEYS_BELONG}")
        if isinstance(key, str) and _is_secret_name(key):
            raise _error(file, path, f"this looks like an API key or other secret. {_KEYS_BELONG}")
        if (
            isinstance(value, str)
            and value.strip().startswith(_KEY_PREFIXES)
            and re.match(_KEY_TOKEN, value.strip())
            and not re.search(_KEY_ENV_PATH, path)
        ):
            raise _error(file, path, f"this value looks like an API key. {_KEYS_BELONG}")


def _check_key_env(value: str, path: str, file: Path) -> None:
    if _looks_like_key(value):
        raise _error(
            file,
            path,
            "this looks like an API key, not the name of an environment variable. Write the NAME of the variable "
            f"that holds the key (e.g. OPENAI_API_KEY). {_KEYS_BELONG}",
        )
    if not re.match(_ENV_NAME, value):
        raise _error(
            file,
            path,
            "not a valid environment variable name (letters, digits and _, not starting with a digit). Write the "
            "NAME of the variable that holds the key; keys belong in the environment, never in the config file",
        )


def _check_base_url(url: str, path: str, file: Path) -> None:
    from urllib.parse import parse_qsl, urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _error(file, path, "expected an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise _error(file, path, f"credentials in the URL are not allowed. {_KEYS_BELONG}")
    if any(k.lower() in _URL_SECRET_PARAMS for k, _ in parse_qsl(parts.query, keep_blank_values=True)):
        raise _error(file, path, f"a key in the URL's query is not allowed. {_KEYS_BELONG}")


def _check_header(name: str, value: str, path: str, file: Path) -> None:
    where = f"{path}.{name}"
    if not re.match(_HEADER_NAME, name):
        raise _error(file, where, "not a valid HTTP header name")
    if name.lower() in _CREDENTIAL_HEADERS:
        raise _error(file, where, f"this header carries credentials; each provider sets its own. {_KEYS_BELONG}")
    if any(c in value for c in "\r\n\0"):
        raise _error(file, where, "header values must not contain line breaks or NUL")
    if _looks_like_key(value):
        raise _error(file, where, f"this header value looks like an API key. {_KEYS_BELONG}")


# -- .env files ---------------------------------------------------------------------------------------

_ENV_LINE = r"[ \t]*(?:export[ \t]+)?(?P<key>[A-Za-z_][A-Za-z0-9_]*)[ \t]*="
_DQ_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "$": "$"}


def parse_env(text: str) -> dict[str, str]:
    """Parse ``.env`` text: ``KEY=VALUE`` lines, optional ``export``, quotes, ``#`` comments.

    Unquoted values are trimmed and end at a ``#`` preceded by whitespace. ``'single'`` quotes are
    literal; ``"double"`` quotes take ``\\n \\t \\r \\\\ \\" \\$``. Quoted values may span lines. There
    is no ``${VAR}`` expansion. A later line wins over an earlier one.

    Raises:
        ValueError: ``"line N: ..."``; the message never quotes the line (it may hold a key).
    """
    text = text.removeprefix("\ufeff").replace("\r\n", "\n")
    out: dict[str, str] = {}
    i, n, line = 0, len(text), 1
    while i < n:
        eol = text.find("\n", i)
        eol = n if eol == -1 else eol
        stripped = text[i:eol].strip()
        if not stripped or stripped.startswith("#"):
            i, line = eol + 1, line + 1
            continue
        m = re.compile(_ENV_LINE).match(text, i, eol)
        if m is None:
            raise ValueError(f"line {line}: expected KEY=VALUE (KEY: letters, digits and _)")
        start_line, i = line, m.end()
        while i < eol and text[i] in " \t":
            i += 1
        if i < eol and text[i] in "'\"":
            quote, i, buf = text[i], i + 1, []
            while True:
                if i >= n:
                    raise ValueError(f"line {start_line}: the quoted value is never closed")
                c = text[i]
                if c == quote:
                    i += 1
                    break
                if c == "\n":
                    line += 1
                if quote == '"' and c == "\\" and i + 1 < n and text[i + 1] in _DQ_ESCAPES:
                    buf.append(_DQ_ESCAPES[text[i + 1]])
                    i += 2
                    continue
                buf.append(c)
                i += 1
            value = "".join(buf)
            eol = text.find("\n", i)
            eol = n if eol == -1 else eol
            rest = text[i:eol].strip()
            if rest and not rest.startswith("#"):
                raise ValueError(f"line {line}: unexpected text after the closing quote")
        else:
            raw = text[m.end() : eol]
            comment = re.search(r"[ \t]#", raw)
            value = (raw[: comment.start()] if comment else raw).strip()
        out[m["key"]] = value
        i, line = eol + 1, line + 1
    return out


def load_env_file(path: str | os.PathLike[str], environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Set the variables of a ``.env`` file that are not set yet; the names it set.

    Raises:
        ConfigError: the file cannot be read or parsed (``data.file``; the message quotes no value).
    """
    env = os.environ if environ is None else environ
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read the env file: {exc.strerror}", file=str(file)) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: the env file is not UTF-8", file=str(file)) from None
    try:
        values = parse_env(text)
    except ValueError as exc:
        raise ConfigError(f"{file}: {exc}", file=str(file)) from None
    loaded = []
    for key, value in values.items():
        if key not in env:
            env[key] = value
            loaded.append(key)
    return loaded


# -- check-config ---------------------------------------------------------------------------------------


def config_summary(
    config: Config, source: ConfigSource | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The resolved config as JSON-ready data: backends in priority order, each key as set/missing, never a value."""
    env = os.environ if environ is None else environ
    backends = sorted(config.backends, key=lambda b: b.priority)
    summary: dict[str, Any] = {}
    if source is not None:
        summary |= {
            "file": str(source.file) if source.file else None,
            "format": source.format,
            "env_file": str(source.env_file) if source.env_file else None,
            "env_loaded": list(source.env_loaded),
        }
    summary["router"] = msgspec.to_builtins(config.router)
    summary["backends"] = [
        {
            "name": b.backend_name,
            "provider": b.provider,
            "base_url": b.base_url,
            "models": b.models,
            "priority": b.priority,
            "rate_limit_rpm": b.rate_limit_rpm,
            "rate_limit_tpm": b.rate_limit_tpm,
            "max_concurrent": b.max_concurrent,
            "timeout_seconds": b.timeout_seconds,
            "local": b.local,
            "tags": b.tags,
            "capabilities": b.capabilities,
            "headers": sorted(b.headers),
            "keys": [{"env": name, "state": "set" if env.get(name) else "missing"} for name in b.key_envs],
        }
        for b in backends
    ]
    summary["models"] = msgspec.to_builtins(config.models)
    if config.routing is not None:
        summary["routing"] = msgspec.to_builtins(config.routing)
    summary["budgets"] = msgspec.to_builtins(config.budgets)
    return summary
