"""The routing policy: which model, on which backend, a call goes to when it names none, and why.

One decision, in order (contracts/routing.md has the operator's version):

1. **Classify** the task text (``task``, or an ``execute``'s last user message) as simple, moderate,
   complex or critical by the ``[routing.complexity]`` words and length. Within one ``chain_id`` the
   tier is sticky and only moves up.
2. **Match** the ``[[routing.rules]]`` in order by ``task_type`` (and ``complexity``, ``agent_id``,
   ``tags`` when the rule gives them). A rule with ``prefer``/``fallback`` offers those models, in
   that order; a rule without them only adds its constraints to complexity routing.
3. **Complexity routing** (no rule matched, or a constraints-only rule): the models the config knows
   (``local_model``, ``cloud_model``, backends' plain ``models`` entries, priced models a backend
   serves) ranked for the tier: simple and moderate → the cheapest capable local model (with
   ``prefer_local``), complex and critical → ``cloud_model``, else the strongest allowed (the highest
   price stands for strength).
4. **Check** each candidate: the rule's ``exclude`` and ``require`` (plus what the request implies:
   ``tools``, a ``response_format``, images), ``max_cost_per_1k``, the per-request caps
   (``max_cost_usd``, estimated from the tokens the call may spend), the chain's remaining budget,
   ``max_latency_s`` against the observed latency, cooldowns. The first candidate that passes wins;
   below ``downgrade_below`` of the chain's budget, the cheapest that passes. None passes: ``no_route``
   with every candidate's reason, before anything is sent upstream.

``RoutingPolicy.decide(inputs, state)`` is pure: the same config, ``RouteInputs`` and ``RouteState``
(chain tier, budget left, backends' latencies and cooldowns) always give the same ``RouteDecision``.
That is what makes a decision log replayable (``llm-rpc route --replay``).
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, get_args

import msgspec

from llm_rpc import errors
from llm_rpc.config import (
    BackendConfig,
    ComplexitySettings,
    Config,
    ProviderKind,
    RouteExclude,
    RouteTarget,
    RoutingRule,
    RoutingSettings,
)
from llm_rpc.core.pricing import Price, PriceTable, blended_per_1k, round_usd, shipped_prices
from llm_rpc.core.ratelimit import DEFAULT_COMPLETION_TOKENS
from llm_rpc.types import Capability, Complexity, ExecuteParams, RouteCandidate, RouteDecision

__all__ = [
    "DEFAULT_CAPABILITIES",
    "TIERS",
    "BackendState",
    "BudgetState",
    "ChainBudgets",
    "DecisionLog",
    "ReplayResult",
    "RouteInputs",
    "RouteState",
    "RoutingPolicy",
    "capabilities_of",
    "classify",
    "inputs_from_execute",
    "replay",
    "wire_model",
]

TIERS: tuple[Complexity, ...] = ("simple", "moderate", "complex", "critical")
_RANK: dict[str | None, int] = {None: -1, **{t: i for i, t in enumerate(TIERS)}}

#: Tokens assumed for the answer when a call sets no ``max_tokens`` (the router's estimate's).
DEFAULT_OUTPUT_TOKENS = DEFAULT_COMPLETION_TOKENS
_CHAIN_TIERS_MAX = 65_536  # chain ids are client input: bound the sticky-tier memory

# -- which backend serves which model -------------------------------------------------------------------

#: A provider's own model-name rules, used when a backend lists no ``models`` globs.
NAMING_RULES: dict[str, tuple[str, ...]] = {
    "openai": ("gpt-*", "o1*", "o3*", "o4*", "chatgpt-*", "text-embedding-*"),
    "anthropic": ("claude-*",),
    "gemini": ("gemini-*",),
    "xai": ("grok-*",),
}
SERVES_ANY = frozenset({"mock", "ollama", "openai-compatible", "openrouter"})


def wire_model(config: BackendConfig, model: str) -> str | None:
    """The model name to send a backend for ``model``, or None if it does not serve it.

    An explicit ``kind/model`` prefix naming the backend's provider is stripped (``openai/gpt-4o``
    → ``gpt-4o``), and then the rest must match ``models`` when it is given.
    """
    kind = config.provider
    globs = config.models
    prefix, sep, rest = model.partition("/")
    if sep and prefix == kind and rest and (not globs or any(fnmatch.fnmatchcase(rest, g) for g in globs)):
        return rest
    if globs:
        return model if any(fnmatch.fnmatchcase(model, g) for g in globs) else None
    if kind in SERVES_ANY or any(fnmatch.fnmatchcase(model, g) for g in NAMING_RULES.get(kind, ())):
        return model
    return None


# -- capabilities ---------------------------------------------------------------------------------------

_REMOTE: tuple[Capability, ...] = ("tools", "json_schema", "vision", "long_context")
#: What a backend can do when its config gives no ``capabilities`` (``local`` comes from ``local = true``).
DEFAULT_CAPABILITIES: dict[str, tuple[Capability, ...]] = {
    "openai": _REMOTE,
    "anthropic": _REMOTE,
    "gemini": _REMOTE,
    "xai": _REMOTE,
    "openrouter": _REMOTE,
    "mock": _REMOTE,
    "ollama": ("tools", "json_schema"),
    "openai-compatible": ("tools", "json_schema"),
}
_BIT: dict[str, int] = {c: 1 << i for i, c in enumerate(get_args(Capability))}


def capabilities_of(config: BackendConfig) -> frozenset[Capability]:
    """The backend's capabilities: its ``capabilities`` (else its provider's), plus ``local``."""
    caps = set(config.capabilities if config.capabilities is not None else DEFAULT_CAPABILITIES[config.provider])
    if config.local:
        caps.add("local")
    return frozenset(caps)


def _bits(caps: Sequence[str] | frozenset[str] | None) -> int:
    out = 0
    for c in caps or ():
        out |= _BIT[c]
    return out


def _cap_names(bits: int) -> str:
    return ", ".join(c for c, b in _BIT.items() if bits & b)


# -- the classifier -------------------------------------------------------------------------------------


class _Classifier:
    __slots__ = ("complex", "critical", "moderate_min_chars", "simple")

    def __init__(self, settings: ComplexitySettings) -> None:
        self.critical = _words(settings.critical)
        self.complex = _words(settings.complex)
        self.simple = _words(settings.simple)
        self.moderate_min_chars = settings.moderate_min_chars

    def __call__(self, text: str) -> Complexity:
        if self.critical is not None and self.critical.search(text):
            return "critical"
        if self.complex is not None and self.complex.search(text):
            return "complex"
        if self.simple is not None and self.simple.search(text):
            return "simple"
        return "moderate" if len(text) >= self.moderate_min_chars else "simple"


def _words(words: Sequence[str]) -> re.Pattern[str] | None:
    """One pattern for a word list: each entry matches at a word start (``deploy`` matches ``deployment``)."""
    if not words:
        return None
    parts = sorted((r"\s+".join(re.escape(p) for p in w.split()) for w in words), key=len, reverse=True)
    return re.compile(r"\b(?:" + "|".join(parts) + ")", re.IGNORECASE)


_DEFAULT_CLASSIFIER: _Classifier | None = None


def classify(text: str, settings: ComplexitySettings | None = None) -> Complexity:
    """The complexity tier of ``text``: the first of critical, complex, simple whose words it contains,
    else ``moderate`` from ``moderate_min_chars`` characters on, else ``simple``."""
    global _DEFAULT_CLASSIFIER
    if settings is not None:
        return _Classifier(settings)(text)
    if _DEFAULT_CLASSIFIER is None:
        _DEFAULT_CLASSIFIER = _Classifier(ComplexitySettings())
    return _DEFAULT_CLASSIFIER(text)


# -- inputs, observed state and the budget seam ----------------------------------------------------------


class _Rec(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    pass


class BudgetState(_Rec):
    """What a chain has left (``None``: no such limit), as the budget store reports it."""

    remaining_usd: float | None = None
    total_usd: float | None = None
    remaining_tokens: int | None = None
    total_tokens: int | None = None

    def fraction(self) -> float | None:
        """The smallest share left over the limits the chain has (None when it has none)."""
        shares = []
        if self.remaining_usd is not None and self.total_usd:
            shares.append(self.remaining_usd / self.total_usd)
        if self.remaining_tokens is not None and self.total_tokens:
            shares.append(self.remaining_tokens / self.total_tokens)
        return min(shares) if shares else None


class ChainBudgets(Protocol):
    """The seam to the budget store: a chain's remaining budget, read before the decision.

    The router calls it for a routed call that carries a ``chain_id`` (``Router.chain_budgets``);
    the answer is part of the decision's recorded state, so replay needs no store.
    """

    async def chain_state(self, chain_id: str) -> BudgetState | None: ...


class BackendState(_Rec):
    """One backend as routing observed it: latency (moving average) and whether it is cooling down."""

    latency_ms: float | None = None
    cooling_down: bool = False


class RouteInputs(_Rec):
    """What the request says; everything routing reads from it."""

    task_type: str | None = None
    task: str | None = None
    model: str | None = None
    #: Tokens the call may spend in all; split into input and output by ``max_tokens`` or the ratio.
    estimated_tokens: int | None = None
    #: The prompt's estimated tokens, when known (an ``execute``); the answer is then ``max_tokens``.
    input_tokens: int | None = None
    max_tokens: int | None = None
    chain_id: str | None = None
    agent_id: str | None = None
    tags: list[str] | None = None
    max_cost_usd: float | None = None
    require: list[Capability] | None = None


class RouteState(_Rec):
    """What routing observed when it decided: the chain's tier so far, its budget, backends' health."""

    chain_tier: Complexity | None = None
    budget: BudgetState | None = None
    backends: dict[str, BackendState] = msgspec.field(default_factory=dict)


def inputs_from_execute(params: ExecuteParams, model: str | None, input_tokens: int) -> RouteInputs:
    """The routing inputs of an ``execute`` call (``input_tokens``: its prompt's estimate)."""
    require: list[Capability] = []
    if params.tools:
        require.append("tools")
    if params.response_format is not None:
        require.append("json_schema")
    messages = params.chat_messages()
    task: str | None = params.prompt
    for m in reversed(messages):
        if m.role == "user" and task is None:
            task = _text(m.content)
        if isinstance(m.content, list) and any(_is_image(p) for p in m.content):
            require.append("vision")
            break
    cfg = params.config
    return RouteInputs(
        task_type=params.task_type,
        task=task,
        model=model,
        input_tokens=input_tokens,
        max_tokens=cfg.max_tokens if cfg is not None else None,
        chain_id=params.chain_id,
        agent_id=params.agent_id,
        tags=params.tags,
        max_cost_usd=params.max_cost_usd,
        require=require or None,
    )


def _text(content: str | list[dict[str, Any]] | None) -> str:
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))


def _is_image(part: object) -> bool:
    return isinstance(part, dict) and part.get("type") in ("image_url", "image", "input_image")


# -- compiled config ------------------------------------------------------------------------------------


class _Option:
    """One model on one backend: a candidate."""

    __slots__ = ("backend", "caps", "index", "local", "model", "out_backend", "price", "provider", "tags", "wire")

    def __init__(self, cfg: BackendConfig, model: str, wire: str, price: Price | None, index: int) -> None:
        self.backend = cfg.backend_name
        self.out_backend: str | None = self.backend
        self.provider: str = cfg.provider
        self.model = model
        self.wire = wire
        self.price = price
        caps = capabilities_of(cfg)
        self.caps = _bits(caps)
        self.local = "local" in caps
        self.tags = frozenset(cfg.tags)
        self.index = index


#: (option, reason fixed by the config, USD per 1k at the rule's ratio)
_Entry = tuple[_Option, str | None, float | None]


class _Rule(msgspec.Struct, kw_only=True):
    # A Struct, not a dataclass: the class is built at import, and cold start matters.
    name: str
    task_types: frozenset[str] | None
    complexities: frozenset[str] | None
    agents: frozenset[str] | None
    tags: frozenset[str]
    ratio: float
    max_cost_usd: float | None
    max_latency_ms: float | None
    require: int
    #: prefer then fallback entries (empty: a constraints-only rule); ``fallback_at``: index of the fallback.
    entries: tuple[_Entry, ...]
    fallback_at: int
    #: for a constraints-only rule: the catalog's static reasons under this rule, by catalog index
    catalog: tuple[str | None, ...] | None
    exclude: tuple[RouteExclude, ...]
    max_cost_per_1k: float | None


def _as_set(value: str | Sequence[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    return frozenset([value] if isinstance(value, str) else value)


def _num(x: float) -> str:
    return f"{x:.6g}"


def _excluded(excludes: Sequence[RouteExclude], opt: _Option) -> str | None:
    for ex in excludes:
        if ex.provider is not None and ex.provider not in (opt.provider, opt.backend):
            continue
        if ex.model is not None and not fnmatch.fnmatchcase(opt.model, ex.model):
            continue
        if ex.backend is not None and ex.backend != opt.backend:
            continue
        if ex.tag is not None and ex.tag not in opt.tags:
            continue
        keys = (("provider", ex.provider), ("model", ex.model), ("backend", ex.backend), ("tag", ex.tag))
        said = [f"{k} {v}" for k, v in keys if v is not None]
        return "excluded (" + ", ".join(said) + ")"
    return None


class _Ctx:
    """One decision's request-dependent limits, checked per candidate."""

    __slots__ = (
        "cooling",
        "inp",
        "local_only",
        "max_latency_ms",
        "max_usd",
        "out",
        "remaining_tokens",
        "remaining_usd",
        "require",
        "states",
        "want_plan",
    )

    def __init__(self) -> None:
        self.want_plan = True
        self.cooling: frozenset[str] = frozenset()
        self.inp = 0
        self.out = 0
        self.require = 0
        self.max_usd: float | None = None
        self.max_latency_ms: float | None = None
        self.remaining_usd: float | None = None
        self.remaining_tokens: int | None = None
        self.local_only = False
        self.states: Mapping[str, BackendState] = {}


# -- the policy -------------------------------------------------------------------------------------------


class RoutingPolicy:
    """Rules, complexity routing and cost caps: where a call that names no model goes, and why.

    From a config (``RoutingPolicy.from_config(config)``, what the router uses) or from Python, with
    the rules as the same dicts a config's ``[[routing.rules]]`` holds::

        policy = RoutingPolicy(rules=[{
            "task_type": "triage",
            "prefer": [{"provider": "openrouter", "model": "claude-haiku-4-5"}],
            "max_cost_per_1k": 0.5,
            "fallback": {"provider": "gemini", "model": "gemini-flash-1.5"},
            "exclude": [{"tag": "auto_apply"}],
        }])
        decision = policy.resolve(task_type="triage")   # decision.provider, .model, .reason, .candidates

    Without a config, each provider the rules name is one backend of that kind with its default
    capabilities. Keyword settings are those of ``[routing]`` (``prefer_local``, ``cloud_model``, ...).

    Raises:
        ConfigError: a rule or setting is invalid (``data.path`` names it).
    """

    def __init__(
        self,
        rules: Sequence[Mapping[str, Any] | RoutingRule] | None = None,
        *,
        config: Config | None = None,
        default_model: str | None = None,
        **settings: Any,
    ) -> None:
        config = config if config is not None else Config()
        routing = config.routing if config.routing is not None else RoutingSettings()
        if settings or rules is not None:
            raw = msgspec.to_builtins(routing)
            raw.update(settings)
            if rules is not None:
                raw["rules"] = [msgspec.to_builtins(r) if isinstance(r, RoutingRule) else r for r in rules]
            routing = _convert(raw)
        backends = sorted(config.backends, key=lambda b: b.priority) or _virtual_backends(routing)
        self.settings = routing
        self.backends: tuple[BackendConfig, ...] = tuple(backends)
        self.prices = PriceTable(config.models)
        self._config_priced = [m.name for m in config.models]
        self.default_model = default_model or config.router.default_model or "mock"
        self._classify = _Classifier(routing.complexity)
        self._tiers: dict[str, Complexity] = {}
        self._model_options: dict[str, tuple[_Option, ...]] = {}
        self._entries: dict[tuple[int, str], list[_Entry]] = {}
        self._catalog = self._build_catalog()
        self._compile()

    @classmethod
    def from_config(cls, config: Config) -> RoutingPolicy:
        """The policy of a config's ``[routing]`` (its defaults when the config has none)."""
        return cls(config=config)

    # -- building --------------------------------------------------------------------------------------

    def _option(self, cfg: BackendConfig, model: str, wire: str, index: int) -> _Option:
        price = self.prices.option_price(model, provider=cfg.provider, local=cfg.local)
        return _Option(cfg, model, wire, price, index)

    def _build_catalog(self) -> tuple[_Option, ...]:
        """Every model complexity routing may choose, backend by backend in priority order."""
        routing = self.settings
        special = [m for m in (routing.local_model, routing.cloud_model) if m]
        priced = list(dict.fromkeys([*self._config_priced, *shipped_prices()]))
        pairs: list[tuple[BackendConfig, str, str]] = []
        for cfg in self.backends:
            names = list(special)
            names += [g for g in cfg.models or () if not any(ch in g for ch in "*?[")]
            if cfg.models or cfg.provider not in SERVES_ANY:
                names += priced
            for name in dict.fromkeys(names):
                wire = wire_model(cfg, name)
                if wire is not None:
                    pairs.append((cfg, name, wire))
        if not pairs:  # nothing known: the router's default model is the last resort
            pairs = [
                (cfg, self.default_model, wire)
                for cfg in self.backends
                if (wire := wire_model(cfg, self.default_model)) is not None
            ]
        return tuple(self._option(cfg, name, wire, i) for i, (cfg, name, wire) in enumerate(pairs))

    def _compile(self) -> None:
        routing = self.settings
        ratio = routing.input_output_ratio
        catalog = self._catalog

        def key_cost(o: _Option) -> float:
            return blended_per_1k(o.price, ratio) if o.price is not None else math.inf

        def strength(o: _Option) -> float:
            return -blended_per_1k(o.price, ratio) if o.price is not None else 1.0

        cheapest = sorted(catalog, key=lambda o: (key_cost(o), o.index))
        local_first = sorted(catalog, key=lambda o: (not o.local, o.model != routing.local_model, key_cost(o), o.index))
        strongest = sorted(
            catalog,
            key=lambda o: (o.model != routing.cloud_model, strength(o), o.model != routing.local_model, o.index),
        )
        self._orders = {"cheapest": cheapest, "local_first": local_first, "strongest": strongest}
        rules: list[_Rule] = []
        for i, rule in enumerate(routing.rules):
            rules.append(self._compile_rule(i, rule))
        self._rules = tuple(rules)
        self._default_rule = _Rule(
            name="",
            task_types=None,
            complexities=None,
            agents=None,
            tags=frozenset(),
            ratio=ratio,
            max_cost_usd=None,
            max_latency_ms=None,
            require=0,
            entries=(),
            fallback_at=0,
            catalog=tuple(None for _ in catalog),
            exclude=(),
            max_cost_per_1k=None,
        )
        wild = tuple(r for r in self._rules if r.task_types is None)
        by_task: dict[str, tuple[_Rule, ...]] = {}
        for r in self._rules:
            for t in r.task_types or ():
                by_task[t] = tuple(x for x in self._rules if x.task_types is None or t in x.task_types)
        self._wild = wild
        self._by_task = by_task

    def _compile_rule(self, i: int, rule: RoutingRule) -> _Rule:
        routing = self.settings
        ratio = rule.input_output_ratio or routing.input_output_ratio
        require = _bits(rule.require)
        excludes = tuple(rule.exclude)

        def static(opt: _Option) -> tuple[str | None, float | None]:
            c1k = blended_per_1k(opt.price, ratio) if opt.price is not None else None
            reason = _excluded(excludes, opt)
            if reason is None and require & ~opt.caps:
                reason = f"lacks {_cap_names(require & ~opt.caps)}"
            if reason is None and rule.max_cost_per_1k is not None:
                if c1k is None:
                    reason = "no price, so max_cost_per_1k cannot be checked"
                elif c1k > rule.max_cost_per_1k:
                    reason = f"cost {_num(c1k)}/1k over max_cost_per_1k {_num(rule.max_cost_per_1k)}"
            return reason, round_usd(c1k) if c1k is not None else None

        entries: list[_Entry] = []
        targets = [*rule.prefer, *([rule.fallback] if rule.fallback is not None else [])]
        fallback_at = -1
        for t_index, target in enumerate(targets):
            if t_index == len(rule.prefer):
                fallback_at = len(entries)
            options = self._target_options(target)
            if not options:
                entries.append((_ghost(target), "no backend serves it", None))
            for opt in options:
                reason, c1k = static(opt)
                entries.append((opt, reason, c1k))
        if fallback_at < 0:
            fallback_at = len(entries)
        catalog = None
        if not targets:
            catalog = tuple(static(opt)[0] for opt in self._catalog)
        return _Rule(
            name=rule.name or f"rules[{i}]",
            task_types=_as_set(rule.task_type),
            complexities=_as_set(rule.complexity),
            agents=_as_set(rule.agent_id),
            tags=frozenset(rule.tags),
            ratio=ratio,
            max_cost_usd=rule.max_cost_usd,
            max_latency_ms=rule.max_latency_s * 1000 if rule.max_latency_s is not None else None,
            require=require,
            entries=tuple(entries),
            fallback_at=fallback_at,
            catalog=catalog,
            exclude=excludes,
            max_cost_per_1k=rule.max_cost_per_1k,
        )

    def _target_options(self, target: RouteTarget) -> list[_Option]:
        """The backends a ``prefer``/``fallback`` entry names: by provider kind or backend name (the model
        sent exactly as written), or every backend serving the model."""
        out = []
        for index, cfg in enumerate(self.backends):
            if target.provider is not None:
                if target.provider in (cfg.provider, cfg.backend_name):
                    out.append(self._option(cfg, target.model, target.model, index))
            elif (wire := wire_model(cfg, target.model)) is not None:
                out.append(self._option(cfg, target.model, wire, index))
        return out

    def _options_for_model(self, model: str) -> tuple[_Option, ...]:
        options = self._model_options.get(model)
        if options is None:
            options = tuple(
                self._option(cfg, model, wire, i)
                for i, cfg in enumerate(self.backends)
                if (wire := wire_model(cfg, model)) is not None
            )
            if len(self._model_options) >= 4096:
                self._model_options.clear()
            self._model_options[model] = options
        return options

    # -- state ------------------------------------------------------------------------------------------

    def chain_tier(self, chain_id: str | None) -> Complexity | None:
        """The highest tier decided so far for ``chain_id`` (sticky: it only moves up)."""
        return self._tiers.get(chain_id) if chain_id is not None else None

    def commit(self, chain_id: str | None, tier: Complexity | None) -> None:
        """Remember a decision's tier for its chain (a dry run does not call this)."""
        if chain_id is None or tier is None:
            return
        tiers = self._tiers
        if _RANK[tier] > _RANK[tiers.get(chain_id)]:
            if chain_id not in tiers and len(tiers) >= _CHAIN_TIERS_MAX:
                del tiers[next(iter(tiers))]
            tiers[chain_id] = tier

    # -- deciding ----------------------------------------------------------------------------------------

    def decide(self, inputs: RouteInputs, state: RouteState | None = None) -> RouteDecision:
        """The decision for ``inputs`` given the observed ``state``; pure and deterministic.

        Raises:
            NoRouteError: no candidate passes; ``data`` has ``reason``, ``rule``, ``complexity`` and
                every ``candidates`` entry with its ``rejected_because``.
        """
        return self._run(inputs, state or RouteState(), False)[0]

    def plan(self, inputs: RouteInputs, state: RouteState) -> tuple[RouteDecision, list[tuple[str, str]]]:
        """The decision, and the (backend, wire model) pairs to try in order (the chosen one first).

        Raises:
            NoRouteError: as ``decide``.
        """
        return self._run(inputs, state, True)

    def _run(
        self, inputs: RouteInputs, state: RouteState, want_plan: bool
    ) -> tuple[RouteDecision, list[tuple[str, str]]]:
        ctx = _Ctx()
        ctx.want_plan = want_plan
        ctx.require = _bits(inputs.require)
        ctx.states = state.backends
        if state.backends:
            ctx.cooling = frozenset(name for name, seen in state.backends.items() if seen.cooling_down)
        budget = state.budget
        downgrade = False
        if budget is not None:
            ctx.remaining_usd = budget.remaining_usd
            ctx.remaining_tokens = budget.remaining_tokens
            share = budget.fraction()
            downgrade = share is not None and share < self.settings.downgrade_below
        if inputs.model is not None:
            return self._decide_model(inputs, ctx, downgrade)
        tier = self._classify(inputs.task or "")
        sticky = state.chain_tier is not None and _RANK[state.chain_tier] > _RANK[tier]
        if sticky and state.chain_tier is not None:
            tier = state.chain_tier
        rule = self._match(inputs, tier)
        r = rule or self._default_rule
        self._limits(ctx, inputs, r)
        if rule is not None and rule.entries:
            return self._choose(rule.entries, ctx, downgrade, rule, tier, f"rule {rule.name}")
        entries, mode = self._complexity_entries(r, tier, ctx, downgrade)
        head = f"{tier} task" + (f" (sticky for chain {inputs.chain_id})" if sticky else "")
        if rule is not None:
            head = f"rule {rule.name} (constraints only), {head}"
        return self._choose(entries, ctx, downgrade, rule, tier, head, mode)

    def _match(self, inputs: RouteInputs, tier: str) -> _Rule | None:
        task_type = inputs.task_type
        rules = self._by_task.get(task_type, self._wild) if task_type is not None else self._wild
        for r in rules:
            if r.complexities is not None and tier not in r.complexities:
                continue
            if r.agents is not None and inputs.agent_id not in r.agents:
                continue
            if r.tags and not (inputs.tags and r.tags.issubset(inputs.tags)):
                continue
            return r
        return None

    def _limits(self, ctx: _Ctx, inputs: RouteInputs, rule: _Rule) -> None:
        ctx.require |= rule.require
        caps = [c for c in (inputs.max_cost_usd, rule.max_cost_usd) if c is not None]
        ctx.max_usd = min(caps) if caps else None
        ctx.max_latency_ms = rule.max_latency_ms
        ctx.inp, ctx.out = _split(inputs, rule.ratio)

    def _complexity_entries(
        self, rule: _Rule, tier: Complexity, ctx: _Ctx, downgrade: bool
    ) -> tuple[list[_Entry], str]:
        routing = self.settings
        low = _RANK[tier] <= _RANK["moderate"]
        if routing.prefer_local and not routing.allow_cloud_fallback:
            ctx.local_only = True
        if downgrade:
            mode = "downgrade"
        elif low:
            mode = "local_first" if routing.prefer_local else "cheapest"
        else:
            mode = "strongest"
        key = (id(rule), mode)
        entries = self._entries.get(key)
        if entries is None:  # fixed by the config: built once per rule and ranking
            order = self._orders["cheapest" if mode == "downgrade" else mode]
            static = rule.catalog or ()
            entries = self._entries[key] = [
                (o, static[o.index] if static else None, _c1k(o, rule.ratio)) for o in order
            ]
        return entries, mode

    def _decide_model(
        self, inputs: RouteInputs, ctx: _Ctx, downgrade: bool
    ) -> tuple[RouteDecision, list[tuple[str, str]]]:
        model = inputs.model or ""
        self._limits(ctx, inputs, self._default_rule)
        ratio = self.settings.input_output_ratio
        entries = [(o, None, _c1k(o, ratio)) for o in self._options_for_model(model)]
        if not entries:
            raise errors.NoRouteError(
                f"no backend serves model {model!r}", model=model, backends=[b.backend_name for b in self.backends]
            )
        return self._choose(entries, ctx, False, None, None, f"model {model} requested")

    def _check(self, opt: _Option, est: float | None, ctx: _Ctx) -> str | None:
        missing = ctx.require & ~opt.caps
        if missing:
            return f"lacks {_cap_names(missing)}"
        if ctx.local_only and not opt.local:
            return "not local, and allow_cloud_fallback = false"
        if ctx.max_usd is not None:
            if est is None:
                return "no price, so max_cost_usd cannot be checked"
            if est > ctx.max_usd:
                return f"estimated ${_num(est)} over max_cost_usd {_num(ctx.max_usd)}"
        if ctx.remaining_usd is not None and est is not None and est > ctx.remaining_usd:
            return f"estimated ${_num(est)} over the chain's remaining ${_num(ctx.remaining_usd)}"
        if ctx.remaining_tokens is not None and ctx.inp + ctx.out > ctx.remaining_tokens:
            return f"estimated {ctx.inp + ctx.out} tokens over the chain's remaining {ctx.remaining_tokens}"
        if ctx.max_latency_ms is not None:
            seen = ctx.states.get(opt.backend)
            if seen is not None and seen.latency_ms is not None and seen.latency_ms > ctx.max_latency_ms:
                return f"latency {_num(seen.latency_ms)} ms over max_latency_s {_num(ctx.max_latency_ms / 1000)}"
        return None

    def _choose(
        self,
        entries: Sequence[_Entry],
        ctx: _Ctx,
        downgrade: bool,
        rule: _Rule | None,
        tier: Complexity | None,
        head: str,
        mode: str | None = None,
    ) -> tuple[RouteDecision, list[tuple[str, str]]]:
        inp, out = ctx.inp, ctx.out
        states = ctx.states
        n = len(entries)
        reasons: list[str | None] = [None] * n
        ests: list[float | None] = [None] * n
        ok: list[int] = []
        chosen = -1
        # The hot loop: estimate only when a check or the ranking needs it, check only what applies.
        need_est = downgrade or ctx.max_usd is not None or ctx.remaining_usd is not None
        dynamic = need_est or bool(ctx.require) or ctx.local_only or ctx.remaining_tokens is not None
        dynamic = dynamic or ctx.max_latency_ms is not None
        check = self._check
        for k in range(n):
            opt, static, _ = entries[k]
            if static is not None:
                reasons[k] = static
                continue
            est = None
            if need_est and (price := opt.price) is not None:
                est = ests[k] = round_usd((inp * price.input + out * price.output) / 1_000_000)
            if dynamic and (reason := check(opt, est, ctx)) is not None:
                reasons[k] = reason
                continue
            ok.append(k)
        if ok:
            if downgrade:
                ok.sort(key=lambda k: (ests[k] if ests[k] is not None else math.inf, k))
            cool = [k for k in ok if entries[k][0].backend in ctx.cooling] if ctx.cooling else None
            warm = [k for k in ok if k not in cool] if cool else ok
            if warm:
                chosen = warm[0]
                for k in cool or ():
                    reasons[k] = "cooling down"
                ok = warm
            else:
                chosen = ok[0]
        candidates = [
            RouteCandidate(
                provider=opt.provider,
                model=opt.model,
                backend=opt.out_backend,
                cost_per_1k=c1k,
                latency_ms=seen.latency_ms if (seen := states.get(opt.backend)) is not None else None,
                rejected_because=reasons[k],
            )
            for k, (opt, _, c1k) in enumerate(entries)
        ]
        rule_name = rule.name if rule is not None else None
        if chosen < 0:
            why = f"{head}: no candidate passes"
            raise errors.NoRouteError(
                f"no route: {why}" + _summary(candidates),
                reason=why,
                rule=rule_name,
                complexity=tier,
                candidates=[msgspec.to_builtins(c) for c in candidates],
            )
        opt = entries[chosen][0]
        if not need_est and (price := opt.price) is not None:
            ests[chosen] = round_usd((inp * price.input + out * price.output) / 1_000_000)
        reason = head
        if rule is not None and rule.entries:
            if chosen >= rule.fallback_at:
                reason += f": fallback {opt.backend}/{opt.model}, no preferred candidate passes"
            elif any(reasons[k] is not None for k in range(chosen)):
                reason += f": preferred {opt.backend}/{opt.model}, earlier preferences rejected"
            else:
                reason += f": preferred {opt.backend}/{opt.model}"
            if downgrade:
                reason += " (chain budget low: cheapest allowed)"
        else:
            reason += f": {self._how(mode, opt)}{opt.backend}/{opt.model}"
        decision = RouteDecision(
            provider=opt.provider,
            model=opt.model,
            backend=opt.backend if opt.index >= 0 else None,
            rule=rule_name,
            complexity=tier,
            reason=reason,
            estimated_cost_usd=ests[chosen],
            estimated_tokens=inp + out,
            candidates=candidates,
        )
        if not ctx.want_plan:
            return decision, []
        plan = [(opt.backend, opt.wire)] + [
            (entries[k][0].backend, entries[k][0].wire) for k in ok if k != chosen and entries[k][0].index >= 0
        ]
        return decision, plan

    def _how(self, mode: str | None, opt: _Option) -> str:
        routing = self.settings
        if mode == "downgrade":
            return "chain budget below downgrade_below, cheapest allowed "
        if mode == "local_first":
            return "cheapest capable local model " if opt.local else "no local model passes, cheapest capable "
        if mode == "cheapest":
            return "cheapest capable model "
        if mode == "strongest":
            if routing.cloud_model is not None and opt.model == routing.cloud_model:
                return "cloud_model "
            return "strongest allowed model " + ("(cloud_model does not pass) " if routing.cloud_model else "")
        return ""

    # -- the Python API --------------------------------------------------------------------------------

    def inputs(
        self,
        task_type: str | None = None,
        *,
        task: str | None = None,
        model: str | None = None,
        estimated_tokens: int | None = None,
        max_tokens: int | None = None,
        chain_id: str | None = None,
        agent_id: str | None = None,
        tags: Sequence[str] | None = None,
        max_cost_usd: float | None = None,
        require: Sequence[Capability] | None = None,
    ) -> RouteInputs:
        """``RouteInputs`` from a dry run's fields; a ``task`` without ``estimated_tokens`` is estimated
        as its characters / 4 + 4 (as the router estimates a prompt)."""
        input_tokens = len(task) // 4 + 4 if task is not None and estimated_tokens is None else None
        return RouteInputs(
            task_type=task_type,
            task=task,
            model=model,
            estimated_tokens=estimated_tokens,
            input_tokens=input_tokens,
            max_tokens=max_tokens,
            chain_id=chain_id,
            agent_id=agent_id,
            tags=list(tags) if tags is not None else None,
            max_cost_usd=max_cost_usd,
            require=list(require) if require else None,
        )

    def resolve(
        self,
        task_type: str | None = None,
        *,
        budget: BudgetState | None = None,
        backends: Mapping[str, BackendState] | None = None,
        commit: bool = True,
        **fields: Any,
    ) -> RouteDecision:
        """Decide for one call: ``task_type`` and any field of ``resolve_route`` (``task``, ``model``,
        ``estimated_tokens``, ``chain_id``, ``tags``, ``agent_id``, ``max_tokens``, ``max_cost_usd``,
        ``require``), with the observed ``budget`` and ``backends`` state when known. With ``commit``
        (the default) the chain's sticky tier is updated.

        Raises:
            NoRouteError: no candidate passes (``data.candidates`` says why each was rejected).
        """
        inputs = self.inputs(task_type, **fields)
        state = RouteState(chain_tier=self.chain_tier(inputs.chain_id), budget=budget, backends=dict(backends or {}))
        decision = self.decide(inputs, state)
        if commit:
            self.commit(inputs.chain_id, decision.complexity)
        return decision


def _split(inputs: RouteInputs, ratio: float) -> tuple[int, int]:
    """The call's (input, output) tokens: the prompt's estimate and ``max_tokens`` when known, else
    ``estimated_tokens`` split by ``max_tokens`` or by the input:output ratio."""
    if inputs.input_tokens is not None:
        return inputs.input_tokens, inputs.max_tokens or DEFAULT_OUTPUT_TOKENS
    total = inputs.estimated_tokens
    if total is None:
        return 0, inputs.max_tokens or DEFAULT_OUTPUT_TOKENS
    if inputs.max_tokens is not None and inputs.max_tokens <= total:
        return total - inputs.max_tokens, inputs.max_tokens
    out = round(total / (ratio + 1.0))
    return total - out, out


def _c1k(opt: _Option, ratio: float) -> float | None:
    """The option's blended USD per 1k, rounded as decisions show it."""
    return round_usd(blended_per_1k(opt.price, ratio)) if opt.price is not None else None


def _ghost(target: RouteTarget) -> _Option:
    """A rule's target that no backend serves: listed as a rejected candidate."""
    opt = _Option.__new__(_Option)
    opt.backend = ""
    opt.out_backend = None
    opt.provider = target.provider or ""
    opt.model = target.model
    opt.wire = target.model
    opt.price = None
    opt.caps = 0
    opt.local = False
    opt.tags = frozenset()
    opt.index = -1
    return opt


def _summary(candidates: list[RouteCandidate]) -> str:
    said = [f"{c.provider}/{c.model}: {c.rejected_because}" for c in candidates[:4] if c.rejected_because]
    more = len(candidates) - 4
    return (" (" + "; ".join(said) + (f"; {more} more" if more > 0 else "") + ")") if said else ""


def _convert(raw: dict[str, Any]) -> RoutingSettings:
    try:
        return msgspec.convert(raw, RoutingSettings)
    except msgspec.ValidationError as exc:
        text = str(exc)
        m = re.search(r" - at `\$(?P<path>[^`]*)`\Z", text)
        path = "routing" + (m["path"] if m else "")
        raise errors.ConfigError(f"{path}: {text.rsplit(' - at ', 1)[0]}", path=path) from None


def _virtual_backends(routing: RoutingSettings) -> list[BackendConfig]:
    """Without a config: one backend per provider kind the rules name or whose model names they use."""
    kinds: list[ProviderKind] = []
    valid: dict[str, ProviderKind] = {k: k for k in get_args(ProviderKind)}
    targets = [t for r in routing.rules for t in (*r.prefer, *([r.fallback] if r.fallback else []))]
    models = [t.model for t in targets] + [m for m in (routing.local_model, routing.cloud_model) if m]
    for t in targets:
        if t.provider is not None:
            if t.provider not in valid:
                raise errors.ConfigError(
                    f"routing: provider {t.provider!r} is not a provider kind; pass a config with a backend of "
                    "that name",
                    path="routing.rules",
                )
            kinds.append(valid[t.provider])
    for kind, globs in NAMING_RULES.items():
        if any(fnmatch.fnmatchcase(m, g) for m in models for g in globs):
            kinds.append(valid[kind])
    return [BackendConfig(provider=k) for k in dict.fromkeys(kinds)]


# -- the decision log and its replay ------------------------------------------------------------------------


class _Outcome(_Rec):
    decision: RouteDecision | None = None
    no_route: dict[str, Any] | None = None


class _LogLine(msgspec.Struct, kw_only=True, omit_defaults=True):
    ts: float = 0.0
    dry_run: bool = False
    inputs: RouteInputs
    state: RouteState
    outcome: _Outcome


_line_encoder = msgspec.json.Encoder()
_line_decoder = msgspec.json.Decoder(_LogLine)


class DecisionLog:
    """``--decision-log PATH``: one JSON line per decision, its inputs, observed state and outcome.

    The file is opened for append (mode 0600: it holds task texts) and each line is one ``write`` of
    a few hundred bytes to a local file, so it stays on the event loop; O_APPEND keeps concurrent
    writers' lines whole.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def write(
        self,
        inputs: RouteInputs,
        state: RouteState,
        decision: RouteDecision | None,
        refusal: errors.NoRouteError | None = None,
        *,
        dry_run: bool = False,
    ) -> None:
        outcome = _Outcome(decision=decision, no_route=refusal.to_data() if refusal is not None else None)
        line = _LogLine(ts=round(time.time(), 3), dry_run=dry_run, inputs=inputs, state=state, outcome=outcome)
        os.write(self._fd, _line_encoder.encode(line) + b"\n")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class ReplayResult(msgspec.Struct, frozen=True):
    """One logged decision, recomputed: ``recorded`` and ``recomputed`` differ when ``same`` is false."""

    line: int
    same: bool
    recorded: dict[str, Any]
    recomputed: dict[str, Any]


def replay(path: str | os.PathLike[str], policy: RoutingPolicy) -> Iterator[ReplayResult]:
    """Recompute every decision of a decision log under ``policy``.

    Raises:
        ValueError: a line is not a decision-log record (``"line N: ..."``).
    """
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                line = _line_decoder.decode(raw)
            except msgspec.DecodeError as exc:
                raise ValueError(f"line {n}: not a decision-log record: {exc}") from None
            recorded = msgspec.to_builtins(line.outcome)
            try:
                got = _Outcome(decision=policy.decide(line.inputs, line.state))
            except errors.NoRouteError as exc:
                got = _Outcome(no_route=exc.to_data())
            recomputed = msgspec.json.decode(_line_encoder.encode(got))
            yield ReplayResult(n, recorded == recomputed, recorded, recomputed)
