"""The router: which backend serves a request, and the one place where calls to backends are made.

``Router.execute`` is the whole in-process API (``await router.execute(prompt=..., model=...)``);
the JSON-RPC ``execute`` method is a thin wrapper over it. One call goes:

1. **route**: the candidates for the model (``models`` globs, else the provider's naming rules, or an
   explicit ``kind/model`` prefix), cached per model name;
2. **choose** by the strategy among the candidates that are usable now (not cooling down, no probe
   in flight, not yet tried in this round), preferring one whose limits let it start at once;
3. **limits**: a ``max_concurrent`` slot (FIFO), then the minute windows (FIFO, wait known up front:
   a wait that would outlast the deadline is refused at once, ``rate_limited`` with
   ``scope: "local"``);
4. **attempt**, bounded by the backend's ``timeout_seconds`` and the request's deadline;
5. on a retryable failure, **retry**: another key of the same backend after a 429 when it has one,
   else the next untried candidate at once, else, when every candidate has been tried, a backoff
   (full jitter, never shorter than a Retry-After the backend asked for) and a new round; never a
   wait that cannot end before the deadline.

The deadline is one ``CancelScope`` around all of it; when it expires the call answers ``timeout``.
A call that stops retrying answers its attempt's own error, or ``backend_error`` listing every
attempt when there were several (contracts/decisions.md #1).

Backends' health: a Retry-After, or ``cooldown_after_failures`` consecutive failures, puts a backend
(or, for a 429, just the key that got it) in cooldown; when the cooldown ends exactly one request
probes it, and its outcome decides. The ``mock`` is exempt: its failures are a function of the
request (decisions.md #8), so it is never cooled down and never sent the same request twice.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import msgspec

from llm_rpc import errors
from llm_rpc._secret import Secret
from llm_rpc.config import BackendConfig, Config, load_config
from llm_rpc.core._retry import Attempt, backoff_delay, final_error
from llm_rpc.core._strategies import Route, pick
from llm_rpc.core.batch import BatchOutcome, run_batch
from llm_rpc.core.budgets import Ask, Budgets, BudgetTracker, CallBudget, ask_for
from llm_rpc.core.metrics import Metrics
from llm_rpc.core.policy import (
    BackendState,
    BudgetState,
    ChainBudgets,
    DecisionLog,
    RouteInputs,
    RouteState,
    RoutingPolicy,
    inputs_from_execute,
    wire_model,
)
from llm_rpc.core.pricing import PriceTable
from llm_rpc.core.ratelimit import MinuteWindow, Slots, estimate_tokens
from llm_rpc.core.usage import UsageTracker
from llm_rpc.providers import Provider, ProviderRequest, ProviderResponse, TextDelta, provider_class
from llm_rpc.types import AgentUsage, BackendHealth, ExecuteParams, ExecuteResult, ResolveRouteParams, RouteDecision

__all__ = ["Backend", "Router"]

_ERROR_ALPHA = 0.1  # error_rate: about the last 10 calls
_LATENCY_ALPHA = 0.3  # latency: a few calls, so a recovery shows soon
_ROUTE_CACHE_MAX = 4096  # model names are client input: bound the cache


class _Key:
    """One API key of a backend with several (``api_key_envs``), and how long a 429 blocks it."""

    __slots__ = ("blocked_until", "secret")

    def __init__(self, secret: Secret) -> None:
        self.secret = secret
        self.blocked_until = 0.0


class Backend:
    """One configured backend and its live state: limits, health, latency, keys."""

    __slots__ = (
        "blocked_until",
        "capacity",
        "config",
        "deterministic",
        "error_rate",
        "failures",
        "in_flight",
        "key_cursor",
        "keys",
        "last_tried",
        "latency",
        "limited",
        "name",
        "needs_probe",
        "probe",
        "provider",
        "respond_nowait",
        "rpm",
        "slots",
        "timeout",
        "tpm",
    )

    def __init__(self, config: BackendConfig, provider: Provider, keys: list[Secret] | None = None) -> None:
        self.config = config
        self.provider = provider
        self.name = config.backend_name
        self.in_flight = 0
        # The mock answers as a function of the request: retrying it, or cooling it down, is pointless.
        self.deterministic = getattr(provider, "provider", None) == "mock"
        self.respond_nowait = getattr(provider, "respond_nowait", None)
        self.timeout = config.timeout_seconds
        self.slots = Slots(config.max_concurrent) if config.max_concurrent else None
        self.rpm = MinuteWindow(config.rate_limit_rpm) if config.rate_limit_rpm else None
        self.tpm = MinuteWindow(config.rate_limit_tpm) if config.rate_limit_tpm else None
        self.limited = self.slots is not None or self.rpm is not None or self.tpm is not None
        self.capacity = float(config.max_concurrent or 1)
        # Only a backend with several keys gets one chosen per attempt; with one, the provider's own is it.
        self.keys = [_Key(k) for k in keys] if keys and len(keys) > 1 else []
        self.key_cursor = 0
        self.blocked_until = 0.0  # no request before this (cooldown, Retry-After)
        self.needs_probe = False  # the next request is a probe that decides health
        self.probe: anyio.Event | None = None  # set while the probe is in flight
        self.failures = 0  # consecutive failures of retryable types
        self.error_rate = 0.0
        self.latency: float | None = None  # seconds, moving average of successful calls
        self.last_tried = -1

    def wire_model(self, model: str) -> str | None:
        """The model name to send this backend for ``model``, or None if it does not serve it.

        An explicit ``kind/model`` prefix naming this backend's provider is stripped (``openai/gpt-4o``
        → ``gpt-4o``), and then the rest must match ``models`` when it is given (core/policy.py).
        """
        return wire_model(self.config, model)

    def serves(self, model: str) -> bool:
        return self.wire_model(model) is not None

    def key_state(self) -> str:
        names = self.config.key_envs
        if not names:
            return "not_needed"
        return "set" if any(os.environ.get(name) for name in names) else "missing"

    def state(self, now: float) -> str:
        if self.blocked_until > now:
            return "cooling_down"
        return "probing" if self.needs_probe else "healthy"


class _Route(Route[Backend]):
    __slots__ = ("limited",)

    def __init__(self, backends: list[Backend], models: list[str]) -> None:
        super().__init__(backends, models)
        self.limited = any(b.limited for b in backends)


#: Receives each streamed piece: ``(index, {"content": str} | {"tool_call": {...}})``.
DeltaSink = Callable[[int, dict[str, Any]], None]


def _ignore_delta(index: int, delta: dict[str, Any]) -> None:
    return None


class _Call:
    """The state of one ``execute`` call across its attempts."""

    __slots__ = (
        "agent",
        "attempts",
        "backoffs",
        "current",
        "deadline",
        "decision",
        "est",
        "excluded",
        "exhausted",
        "force",
        "hold",
        "keys_tried",
        "model",
        "params",
        "queued",
        "refusal",
        "request",
        "route",
        "routing",
        "sent",
        "sink",
        "sink_s",
        "skip",
        "strategy",
        "timeout",
        "tried",
        "upstream_s",
        "waiting",
    )

    def __init__(
        self, params: ExecuteParams, model: str, route: _Route, request: ProviderRequest, strategy: str, timeout: float
    ) -> None:
        self.params = params
        self.agent = params.agent_id
        self.model = model
        self.route = route
        self.request = request
        self.strategy = strategy
        self.timeout = timeout
        self.deadline = math.inf
        self.decision: RouteDecision | None = None  # when the routing policy chose the model
        self.attempts: list[Attempt] = []
        self.backoffs = 0
        self.est = -1
        # Bit masks over route.backends: tried in this round; never again (the mock); refused locally.
        self.tried = 0
        self.exhausted = 0
        self.skip = 0
        self.force = -1  # the next attempt goes to this backend (another key after a 429)
        self.keys_tried: dict[int, set[int]] | None = None
        self.refusal: errors.RateLimitedError | None = None
        self.waiting: str | None = None
        self.current: str | None = None
        # Streaming: where deltas go, and how many have gone (after the first, no failover).
        self.sink: DeltaSink | None = None
        self.sent = 0
        self.sink_s = 0.0  # seconds spent handing deltas on (llm-rpc's work inside a stream's attempt)
        # What overhead_us leaves out, in real seconds (perf_counter): the upstream exchanges of every
        # attempt, and the waits made on purpose (limits, cooldowns, probes, backoffs).
        self.excluded = 0.0
        # Where the time goes (metrics): seconds routing, queueing for limits, in upstream calls.
        self.routing = 0.0
        self.queued = 0.0
        self.upstream_s = 0.0
        # The chain's reservation for this call (contracts/budgets.md), from before it is sent to its end.
        self.hold: CallBudget | None = None

    def estimate(self) -> int:
        if self.est < 0:
            self.est = estimate_tokens(self.request.messages, self.request.max_tokens)
        return self.est


def _build_provider(config: BackendConfig) -> Provider:
    cls = provider_class(config.provider)
    provider: Provider = cls.from_config(config)
    return provider


class Router:
    """Routes ``execute`` calls to configured backends; keeps their limits, health and usage."""

    def __init__(
        self,
        config: Config | None = None,
        *,
        providers: dict[str, Provider] | None = None,
        seed: int | None = None,
        decision_log: str | os.PathLike[str] | None = None,
    ) -> None:
        self.config = config if config is not None else load_config(None)
        providers = providers or {}
        self.backends: list[Backend] = []
        seen: set[str] = set()
        for bc in self.config.backends:
            name = bc.backend_name
            if name in seen:
                raise errors.ConfigError(f"two backends are named {name!r}", path=f"backends.{name}")
            seen.add(name)
            provider = providers.get(name) or _build_provider(bc)
            self.backends.append(Backend(bc, provider, bc.api_keys()))
        self.backends.sort(key=lambda b: b.config.priority)
        self.prices = PriceTable(self.config.models)
        # Delegation-chain budgets (contracts/budgets.md): every call with a chain_id is held on its chain.
        self.budgets = Budgets(self.config.budgets)
        # Routing policy (contracts/routing.md): a call without a model is routed by it when the config
        # has [routing]; built on first use. The budget store, when one is wired, is read before deciding.
        self._routing = self.config.routing is not None
        self._policy: RoutingPolicy | None = None
        self.chain_budgets: ChainBudgets | None = self.budgets
        log_path = decision_log or os.environ.get("LLM_RPC_DECISION_LOG") or None
        self.decision_log = DecisionLog(log_path) if log_path else None
        self._settings = self.config.router
        self._routes: dict[str, _Route] = {}
        self._rng = random.Random(seed)
        self._seq = 0  # choices made, for the latency strategy's "least recently tried"
        # The inline path reads the clock only once something can depend on it (limits, a cooldown).
        self._needs_clock = any(b.limited for b in self.backends)
        self.usage = UsageTracker()
        self.metrics = Metrics()

    @classmethod
    def from_config(cls, path: str | os.PathLike[str] | None = None) -> Router:
        """A router for the config file at ``path`` (or ``$LLM_RPC_CONFIG``, or the defaults)."""
        return cls(load_config(path))

    @property
    def default_model(self) -> str:
        if self._settings.default_model:
            return self._settings.default_model
        return "mock"

    def candidates(self, model: str) -> list[Backend]:
        """Backends able to serve ``model``, in preference order (``priority``, then file order)."""
        route = self._route(model)
        return list(route.backends) if route is not None else []

    def _route(self, model: str) -> _Route | None:
        route = self._routes.get(model)
        if route is None:
            backends: list[Backend] = []
            models: list[str] = []
            for b in self.backends:
                wire = b.wire_model(model)
                if wire is not None:
                    backends.append(b)
                    models.append(wire)
            if not backends:
                return None
            if len(self._routes) >= _ROUTE_CACHE_MAX:
                self._routes.clear()
            route = self._routes[model] = _Route(backends, models)
        return route

    # -- one call ---------------------------------------------------------------------------------------

    def _routed(self, params: ExecuteParams) -> bool:
        """The routing policy chooses: no model named and ``[routing]`` configured, or a cost cap to check."""
        return params.max_cost_usd is not None or (self._routing and params.requested_model() is None)

    def _call(self, params: ExecuteParams, budget: BudgetState | None = None) -> _Call:
        decision: RouteDecision | None = None
        if self._routed(params):
            decision, route = self._decide(params, budget)
            model = decision.model
            strategy = "failover"  # the policy ordered the candidates
        else:
            model = params.requested_model() or self.default_model
            found = self._route(model)
            if found is None:
                self.usage.failure(params.agent_id, model, [])
                raise errors.NoRouteError(
                    f"no backend serves model {model!r}",
                    model=model,
                    backends=[b.name for b in self.backends],
                )
            route = found
            strategy = params.strategy or self._settings.strategy
        cfg = params.config
        timeout = (cfg.timeout_seconds if cfg is not None else None) or self._settings.timeout_seconds
        request = ProviderRequest(
            model=model,
            messages=params.chat_messages(),
            max_tokens=cfg.max_tokens if cfg is not None else None,
            temperature=cfg.temperature if cfg is not None else None,
            tools=params.tools,
            tool_choice=params.tool_choice,
            response_format=params.response_format,
            stop=params.stop,
            include_raw=params.include_raw,
            timeout=timeout,
            mock=params.mock,
        )
        call = _Call(params, model, route, request, strategy, timeout)
        call.decision = decision
        return call

    # -- routing policy ---------------------------------------------------------------------------------

    @property
    def policy(self) -> RoutingPolicy:
        """The ``[routing]`` policy of this router's config (its defaults when there is none)."""
        if self._policy is None:
            self._policy = RoutingPolicy(config=self.config, default_model=self.default_model)
        return self._policy

    def route_state(self, chain_id: str | None, budget: BudgetState | None) -> RouteState:
        """What routing observes now: the chain's sticky tier, its budget, backends' latency and cooldowns."""
        now = _now()
        backends = {
            b.name: BackendState(
                latency_ms=round(b.latency * 1000, 3) if b.latency is not None else None,
                cooling_down=b.blocked_until > now or b.probe is not None,
            )
            for b in self.backends
            if b.latency is not None or b.blocked_until > now or b.probe is not None
        }
        return RouteState(chain_tier=self.policy.chain_tier(chain_id), budget=budget, backends=backends)

    def _decide(self, params: ExecuteParams, budget: BudgetState | None) -> tuple[RouteDecision, _Route]:
        """The policy's decision for an ``execute`` and the route it plans (logged; the chain's tier kept)."""
        policy = self.policy
        inputs = inputs_from_execute(params, params.requested_model(), estimate_tokens(params.chat_messages(), 0))
        state = self.route_state(params.chain_id, budget)
        try:
            decision, plan = policy.plan(inputs, state)
        except errors.NoRouteError as exc:
            if self.decision_log is not None:
                self.decision_log.write(inputs, state, None, exc)
            self.usage.failure(params.agent_id, inputs.model or "(no route)", [])
            raise
        if self.decision_log is not None:
            self.decision_log.write(inputs, state, decision)
        policy.commit(params.chain_id, decision.complexity)
        by_name = {b.name: b for b in self.backends}
        return decision, _Route([by_name[name] for name, _ in plan], [wire for _, wire in plan])

    async def _budget(self, chain_id: str | None) -> BudgetState | None:
        hook = self.chain_budgets
        return await hook.chain_state(chain_id) if hook is not None and chain_id is not None else None

    async def resolve_route(self, params: ResolveRouteParams | None = None, /, **kwargs: Any) -> RouteDecision:
        """A dry run: where a call with these inputs would go now, and why; nothing is sent or kept
        (the chain's sticky tier is not moved). Accepts a ``ResolveRouteParams`` or its fields.

        Raises:
            NoRouteError: no candidate passes; ``data.candidates`` gives each one's reason.
        """
        if params is None:
            params = msgspec.convert(kwargs, ResolveRouteParams)
        return self._dry_run(params, await self._budget(params.chain_id))

    def resolve_route_nowait(self, params: ResolveRouteParams) -> RouteDecision | None:
        """``resolve_route`` without awaiting, or None when it must read a chain's budget first.

        Raises:
            NoRouteError: as ``resolve_route``.
        """
        if self.chain_budgets is not None and params.chain_id is not None:
            return None
        return self._dry_run(params, None)

    def _dry_run(self, params: ResolveRouteParams, budget: BudgetState | None) -> RouteDecision:
        policy = self.policy
        inputs: RouteInputs = policy.inputs(
            params.task_type,
            task=params.task,
            model=params.model,
            estimated_tokens=params.estimated_tokens,
            max_tokens=params.max_tokens,
            chain_id=params.chain_id,
            agent_id=params.agent_id,
            tags=params.tags,
            max_cost_usd=params.max_cost_usd,
            require=params.require,
        )
        state = self.route_state(params.chain_id, budget)
        try:
            decision = policy.decide(inputs, state)
        except errors.NoRouteError as exc:
            if self.decision_log is not None:
                self.decision_log.write(inputs, state, None, exc, dry_run=True)
            raise
        if self.decision_log is not None:
            self.decision_log.write(inputs, state, decision, dry_run=True)
        return decision

    async def execute(
        self,
        params: ExecuteParams | None = None,
        /,
        *,
        on_delta: DeltaSink | None = None,
        budget: BudgetTracker | None = None,
        arrived: float | None = None,
        **kwargs: Any,
    ) -> ExecuteResult:
        """Run one call. Accepts an ``ExecuteParams`` or its fields as keywords.

        With ``stream: true`` the provider's stream is read and each piece is handed to
        ``on_delta(index, delta)`` as it arrives (``delta``: ``{"content": str}`` or ``{"tool_call":
        {...}}``); the result is the same whole result. Until the first delta has been handed over a
        failing upstream still fails over; after it, an error ends the call (never a short answer).

        With a ``chain_id`` (or ``budget``, a ``BudgetTracker`` shared with other calls) the call is
        held on that chain's budget before it is sent, and settled at its real usage after; the
        result's ``budget`` says what the chain has left.

        The result's ``overhead_us`` is the time spent in llm-rpc from ``arrived`` (a
        ``time.perf_counter()`` value: when a server read the request; default: this call) to the
        result, less the upstream exchanges and the waits for limits, cooldowns and backoffs
        (contracts/execute.md).

        Raises:
            LLMBudgetExceededError: the chain's budget refused the call; nothing was sent.
            NoRouteError: no backend serves the model.
            RequestTimeoutError: the request's deadline expired.
            RateLimitedError: with ``data.scope == "local"``: no backend could take the call before
                its deadline (limits or cooldowns); nothing was sent.
            ProviderError: the one attempt made failed (its own type).
            BackendError: two or more attempts failed; ``data.attempts`` lists them.
        """
        if arrived is None:
            arrived = time.perf_counter()
        if params is None:
            try:
                params = msgspec.convert(kwargs, ExecuteParams)
            except msgspec.ValidationError as exc:
                raise TypeError(f"invalid execute arguments: {exc}") from None
        chain_state = None
        if self.chain_budgets is not None and self._routed(params):
            chain_state = await self._budget(params.chain_id)
        t0 = time.perf_counter()
        call = self._call(params, chain_state)
        call.routing = time.perf_counter() - t0
        if params.stream:
            call.sink = on_delta if on_delta is not None else _ignore_delta
        now: float | None = anyio.current_time()  # each read of the loop's clock costs a microsecond or two
        assert now is not None
        call.deadline = now + call.timeout
        result: ExecuteResult | None = None
        with anyio.CancelScope(deadline=call.deadline):
            try:
                if budget is not None or params.chain_id is not None:
                    store = budget.store if budget is not None else None
                    call.hold = await self.budgets.hold(self._budget_ask(call, budget), store)
                    now = None  # time has passed
                result = await self._run(call, now)
            except errors.LLMError:
                self.usage.failure(call.agent, call.model, [a.backend for a in call.attempts])
                raise
            finally:
                if call.hold is not None:
                    await self.budgets.finish(call.hold, result)  # shielded: settles even when cancelled
                self.metrics.call_stages(call.routing, call.queued, call.upstream_s)
        if result is None:
            data: dict[str, Any] = {"timeout_seconds": call.timeout, "backend": call.current}
            if call.waiting is not None:
                data["waiting_for"] = call.waiting
            if call.attempts:
                data["attempts"] = [a.to_data() for a in call.attempts]
            self.usage.failure(call.agent, call.model, [a.backend for a in call.attempts])
            raise errors.RequestTimeoutError(f"request deadline of {call.timeout:g}s expired", **data)
        result.overhead_us = round((time.perf_counter() - arrived - call.excluded) * 1e6, 3)
        return result

    def _budget_ask(self, call: _Call, tracker: BudgetTracker | None) -> Ask:
        """What a budgeted call holds: its prompt (estimated) + ``max_tokens``, at the dearest price among
        the backends that may serve it. A budgeted call always sends a ``max_tokens`` (the config's
        ``[budgets] default_max_tokens`` when it set none), so no answer can outgrow its hold."""
        request = call.request
        if request.max_tokens is None:
            request.max_tokens = self.budgets.default_max_tokens
            call.est = -1
        route = call.route
        prices = [
            self.prices.option_price(model, provider=b.config.provider, local=b.config.local)
            for b, model in zip(route.backends, route.models, strict=True)
        ]
        chain_id = tracker.chain_id if tracker is not None else call.params.chain_id
        assert chain_id is not None
        return ask_for(
            chain_id,
            prompt_tokens=estimate_tokens(request.messages, 0),
            max_tokens=request.max_tokens,
            prices=prices,
            lease_s=self.budgets.lease_for(call.timeout),
            model=call.model,
        )

    async def _run(self, call: _Call, first: float | None = None) -> ExecuteResult:
        """The attempts of a call; ``first``: the loop's clock, when the caller has just read it."""
        settings = self._settings
        max_attempts = settings.retries + 1
        while True:
            now = first if first is not None else anyio.current_time()
            first = None
            i = call.force
            if i >= 0:
                call.force = -1
            else:
                t0 = time.perf_counter()
                i = self._choose(call, now)
                call.routing += time.perf_counter() - t0
            if i < 0:
                # Nothing usable at once: wait for the earliest backend (a backoff when retrying).
                best, at, probe = self._earliest(call, now)
                if best < 0:
                    if probe is not None:
                        call.waiting = "probe"
                        waited = time.perf_counter()
                        await probe.wait()
                        call.excluded += time.perf_counter() - waited
                        call.waiting = None
                        call.queued += anyio.current_time() - now
                        continue
                    raise self._stop(call, -1, 0.0)
                retrying = bool(call.attempts)
                if retrying:
                    delay = backoff_delay(
                        call.backoffs + 1, settings.retry_base_delay, settings.retry_max_delay, self._rng
                    )
                    at = max(at, now + delay)
                if at >= call.deadline:
                    raise self._stop(call, best, at - now)
                if retrying:
                    call.backoffs += 1
                if at > now:
                    call.waiting = "backoff" if retrying else "cooldown"
                    waited = time.perf_counter()
                    await anyio.sleep(at - now)
                    call.excluded += time.perf_counter() - waited
                    call.waiting = None
                    call.queued += at - now
                call.tried = 0  # a new round
                continue
            made = len(call.attempts)
            result = await self._attempt(call, i, now)
            if result is not None:
                return result
            if len(call.attempts) > made:
                error = call.attempts[-1].error
                if not (isinstance(error, errors.ProviderError) and error.is_retryable) or made + 1 >= max_attempts:
                    raise final_error(call.attempts)

    def _choose(self, call: _Call, now: float) -> int:
        """The strategy's pick among backends usable now, preferring one whose limits let it start at once.

        The plain pick comes first: when it can start at once it is also the best of those that can
        (they are a subset), so the limits are asked again only when it cannot.
        """
        route = call.route
        excluded = call.tried | call.exhausted | call.skip
        explore = self._settings.latency_exploration
        i = pick(call.strategy, route, excluded, now, None, explore)
        if i < 0 or not route.limited:
            return i
        backends = route.backends
        if not backends[i].limited or self._fits(backends[i], call, now):
            return i

        def free(j: int) -> bool:
            b = backends[j]
            return not b.limited or self._fits(b, call, now)

        j = pick(call.strategy, route, excluded, now, free, explore)
        return j if j >= 0 else i

    def _fits(self, b: Backend, call: _Call, now: float) -> bool:
        """``b``'s limits let this call start now, without waiting."""
        if b.slots is not None and not b.slots.free():
            return False
        if b.rpm is not None and not b.rpm.fits_now(1, now):
            return False
        return b.tpm is None or b.tpm.fits_now(call.estimate(), now)

    def _earliest(self, call: _Call, now: float) -> tuple[int, float, anyio.Event | None]:
        """The backend usable soonest (and when), or a probe in flight to wait for."""
        excluded = call.exhausted | call.skip
        best, best_at = -1, math.inf
        probe: anyio.Event | None = None
        for i, b in enumerate(call.route.backends):
            if (excluded >> i) & 1:
                continue
            if b.probe is not None:
                probe = probe or b.probe
                continue
            at = b.blocked_until if b.blocked_until > now else now
            if at < best_at:
                best, best_at = i, at
        return best, best_at, probe

    def _stop(self, call: _Call, best: int, wait: float) -> errors.LLMError:
        """The error of a call that cannot make another attempt before its deadline."""
        if call.attempts:
            return final_error(call.attempts)
        if call.refusal is not None:
            return call.refusal
        name = call.route.backends[best].name if best >= 0 else None
        return errors.RateLimitedError(
            f"no backend for {call.model!r} is available before the request's deadline (cooling down)",
            backend=name,
            retry_after=round(wait, 3) if best >= 0 else None,
            scope="local",
            reason="cooling_down",
        )

    async def _attempt(self, call: _Call, i: int, now: float) -> ExecuteResult | None:
        """One attempt on ``route.backends[i]``: limits, then the call. None: failed or refused locally."""
        route = call.route
        b = route.backends[i]
        call.current = b.name
        slots = b.slots
        waited = False
        if slots is not None and not slots.try_acquire():
            call.waiting = "max_concurrent"
            waited_from = time.perf_counter()
            await slots.acquire()
            call.excluded += time.perf_counter() - waited_from
            call.waiting = None
            queued_at, now = now, anyio.current_time()
            call.queued += now - queued_at
            waited = True
        try:
            rpm_entry = tpm_entry = None
            if b.rpm is not None or b.tpm is not None:
                at, limit = now, ""
                if b.rpm is not None and (t := b.rpm.fit_time(1, now)) > at:
                    at, limit = t, "rate_limit_rpm"
                if b.tpm is not None and (t := b.tpm.fit_time(call.estimate(), now)) > at:
                    at, limit = t, "rate_limit_tpm"
                if at >= call.deadline:
                    call.skip |= 1 << i
                    call.refusal = errors.RateLimitedError(
                        f"{b.name}: {limit} would hold this call past its deadline",
                        backend=b.name,
                        retry_after=round(at - now, 3),
                        scope="local",
                        limit=limit,
                    )
                    return None
                if b.rpm is not None:
                    rpm_entry = b.rpm.reserve(1, at)
                if b.tpm is not None:
                    tpm_entry = b.tpm.reserve(call.estimate(), at)
                if at > now:
                    call.waiting = limit
                    waited_from = time.perf_counter()
                    try:
                        await anyio.sleep(at - now)
                    except BaseException:
                        if rpm_entry is not None and b.rpm is not None:
                            b.rpm.correct(rpm_entry, 0, at)
                        if tpm_entry is not None and b.tpm is not None:
                            b.tpm.correct(tpm_entry, 0, at)
                        raise
                    call.excluded += time.perf_counter() - waited_from
                    call.waiting = None
                    call.queued += at - now
                    waited = True
            if waited:
                now = anyio.current_time()
                if b.blocked_until > now or b.probe is not None:
                    # It began cooling down, or its probe went out, while this call queued: choose again.
                    if rpm_entry is not None and b.rpm is not None:
                        b.rpm.correct(rpm_entry, 0, now)
                    if tpm_entry is not None and b.tpm is not None:
                        b.tpm.correct(tpm_entry, 0, now)
                    return None
            return await self._send(call, i, b, tpm_entry, now)
        finally:
            if slots is not None:
                slots.release()

    async def _send(
        self, call: _Call, i: int, b: Backend, tpm_entry: list[float] | None, started: float
    ) -> ExecuteResult | None:
        """The attempt itself; ``started``: the loop's clock, read since the last wait."""
        route = call.route
        request = call.request
        request.model = route.models[i]
        key = -1
        if b.keys:
            key = self._pick_key(b, call, i)
            request.api_key = b.keys[key].secret
        else:
            request.api_key = None
        probe = b.needs_probe
        if probe:
            b.probe = anyio.Event()
        route.chose(i, self._seq)
        self._seq += 1
        call.tried |= 1 << i
        limit = b.timeout
        remaining = call.deadline - started
        request.timeout = limit if limit is not None and limit < remaining else remaining
        hold = call.hold
        if hold is not None:
            hold.sent = True  # from here, a call cut off has paid for its prompt
        request.upstream_s = None
        sink_before = call.sink_s
        attempt_started = time.perf_counter()
        b.in_flight += 1
        try:
            if limit is not None and limit < remaining:
                with anyio.move_on_after(limit) as scope:
                    response = await self._complete(call, b, request)
                if scope.cancelled_caught:
                    raise errors.UpstreamTimeoutError(f"{b.name}: no answer within {limit:g}s", backend=b.name)
            else:
                response = await self._complete(call, b, request)
        except errors.ProviderError as exc:
            if hold is not None:
                hold.sent = False  # the provider answered with an error: nothing to pay
            ended = anyio.current_time()
            call.upstream_s += ended - started
            call.excluded += _upstream_seconds(call, request, attempt_started, sink_before)
            self.metrics.upstream_call(b.name, request.model, exc.type, ended - started)
            self._failed(call, i, b, key, exc, ended, ended - started, probe)
            return None
        except BaseException:
            # Cancelled (the deadline, or the client) or a bug: the backend's health is unknown.
            ended = anyio.current_time()
            call.upstream_s += ended - started
            self.metrics.upstream_call(b.name, request.model, "cancelled", ended - started)
            if ended >= call.deadline:
                cut = errors.UpstreamTimeoutError(f"{b.name}: cut by the request's deadline", backend=b.name)
                call.attempts.append(Attempt(b.name, cut, (ended - started) * 1000))
            if probe:
                self._end_probe(b, healthy=None)
            raise
        finally:
            b.in_flight -= 1
        ended = anyio.current_time()
        latency = ended - started
        call.upstream_s += latency
        call.excluded += _upstream_seconds(call, request, attempt_started, sink_before)
        self.metrics.upstream_call(b.name, request.model, "ok", latency)
        self._succeeded(b, latency, probe)
        if tpm_entry is not None and b.tpm is not None:
            b.tpm.correct(tpm_entry, response.usage.total_tokens or call.estimate(), ended)
        return self._finish(call, b, response, latency * 1000)

    async def _complete(self, call: _Call, b: Backend, request: ProviderRequest) -> ProviderResponse:
        """One upstream call: the whole answer, or (streaming) its pieces to the sink, then the answer."""
        sink = call.sink
        if sink is None:
            return await b.provider.complete(request)
        cfg = call.params.config
        first_token = cfg.first_token_timeout_seconds if cfg is not None else None
        final: ProviderResponse | None = None
        try:
            async with contextlib.aclosing(b.provider.stream(request)) as items:  # type: ignore[type-var]
                iterator = aiter(items)
                while True:
                    if call.sent == 0 and first_token is not None:
                        with anyio.move_on_after(first_token) as scope:
                            item = await anext(iterator, None)
                        if scope.cancelled_caught:
                            raise errors.UpstreamTimeoutError(
                                f"{b.name}: nothing streamed within {first_token:g}s",
                                backend=b.name,
                                limit="first_token_timeout_seconds",
                            )
                    else:
                        item = await anext(iterator, None)
                    if item is None:
                        break
                    if isinstance(item, ProviderResponse):
                        final = item
                    elif isinstance(item, TextDelta):
                        if item.content:
                            handed = time.perf_counter()
                            sink(call.sent, {"content": item.content})
                            call.sink_s += time.perf_counter() - handed
                            call.sent += 1
                    else:
                        tool_call: dict[str, Any] = {"index": item.index, "arguments": item.arguments}
                        if item.id is not None:
                            tool_call["id"] = item.id
                        if item.name is not None:
                            tool_call["name"] = item.name
                        handed = time.perf_counter()
                        sink(call.sent, {"tool_call": tool_call})
                        call.sink_s += time.perf_counter() - handed
                        call.sent += 1
        except errors.ProviderError as exc:
            if call.sent:
                exc.should_retry = False  # deltas already went out: failing over would repeat them
            raise
        if final is None:
            raise errors.UpstreamProtocolError(
                f"{b.name}: the stream ended without a final response", backend=b.name, status=200
            )
        return final

    def _pick_key(self, b: Backend, call: _Call, i: int) -> int:
        """The next key of ``b`` not blocked by a Retry-After (and not tried by this call, if one is left)."""
        keys = b.keys
        n = len(keys)
        now = anyio.current_time()
        avoid = call.keys_tried.get(i) if call.keys_tried is not None else None
        chosen = -1
        for avoiding in (True, False):
            for k in range(n):
                j = (b.key_cursor + k) % n
                if keys[j].blocked_until <= now and not (avoiding and avoid and j in avoid):
                    chosen = j
                    break
            if chosen >= 0:
                break
        if chosen < 0:
            chosen = min(range(n), key=lambda j: keys[j].blocked_until)
        b.key_cursor = chosen + 1
        if call.keys_tried is None:
            call.keys_tried = {}
        call.keys_tried.setdefault(i, set()).add(chosen)
        return chosen

    def _has_fresh_key(self, b: Backend, call: _Call, i: int, now: float) -> bool:
        tried = call.keys_tried.get(i, set()) if call.keys_tried is not None else set()
        return any(j not in tried and k.blocked_until <= now for j, k in enumerate(b.keys))

    # -- health -----------------------------------------------------------------------------------------

    def _succeeded(self, b: Backend, latency: float, probe: bool) -> None:
        b.failures = 0
        b.error_rate -= _ERROR_ALPHA * b.error_rate
        b.latency = latency if b.latency is None else b.latency + _LATENCY_ALPHA * (latency - b.latency)
        if probe:
            self._end_probe(b, healthy=True)

    def _failed(
        self,
        call: _Call,
        i: int,
        b: Backend,
        key: int,
        exc: errors.ProviderError,
        now: float,
        elapsed: float,
        probe: bool,
    ) -> None:
        call.attempts.append(Attempt(b.name, exc, elapsed * 1000))
        b.error_rate += _ERROR_ALPHA * (1.0 - b.error_rate)
        if b.deterministic:
            call.exhausted |= 1 << i
            return
        settings = self._settings
        retry_after = exc.retry_after
        fault = exc.retryable  # the backend's own trouble (whatever x-should-retry says about retrying)
        if retry_after is not None and retry_after > 0:
            if key >= 0 and exc.type == "rate_limited":
                self._block_key(b, key, now + retry_after, now)
            else:
                self._cool(b, now + retry_after)
        if fault:
            b.failures += 1
            if probe or b.failures >= settings.cooldown_after_failures:
                self._cool(b, now + settings.cooldown_seconds)
        else:
            b.failures = 0
        if probe:
            self._end_probe(b, healthy=not (fault or b.blocked_until > now))
        if key >= 0 and exc.type == "rate_limited" and b.blocked_until <= now and self._has_fresh_key(b, call, i, now):
            call.force = i  # per-key limits: another key of this backend before the next backend

    def _cool(self, b: Backend, until: float) -> None:
        b.blocked_until = max(b.blocked_until, until)
        b.needs_probe = True
        self._needs_clock = True

    def _block_key(self, b: Backend, key: int, until: float, now: float) -> None:
        """A 429 with Retry-After blocks that key; when every key is blocked, the backend cools down."""
        k = b.keys[key]
        k.blocked_until = max(k.blocked_until, until)
        self._needs_clock = True
        soonest = min(k.blocked_until for k in b.keys)
        if soonest > now:
            self._cool(b, soonest)

    def _end_probe(self, b: Backend, healthy: bool | None) -> None:
        """The probe finished: healthy, failed (already cooled down again), or unknown (cancelled)."""
        if healthy:
            b.needs_probe = False
        event = b.probe
        b.probe = None
        if event is not None:
            event.set()

    # -- the inline path --------------------------------------------------------------------------------

    async def execute_batch(
        self,
        items: Sequence[ExecuteParams | dict[str, Any]],
        *,
        concurrency: int | None = None,
        chain_id: str | None = None,
        fail_fast: bool = False,
        budget: BudgetTracker | None = None,
        arrived: float | None = None,
    ) -> BatchOutcome:
        """Run many calls at once; each item's result or error comes back in input order.

        ``budget`` (a ``BudgetTracker``) holds every item on that budget, as ``execute(budget=...)``.
        Each result's ``overhead_us`` counts from ``arrived`` (default: this call), less the item's
        wait for a ``concurrency`` slot, its upstream exchanges and its waits for limits.

        Raises:
            TypeError: an item is not valid ``execute`` params.
        """
        parsed = []
        for item in items:
            if isinstance(item, ExecuteParams):
                parsed.append(item)
                continue
            try:
                parsed.append(msgspec.convert(item, ExecuteParams))
            except msgspec.ValidationError as exc:
                raise TypeError(f"invalid execute_batch item: {exc}") from None
        return await run_batch(
            self.execute if budget is None else functools.partial(self.execute, budget=budget),
            parsed,
            concurrency=concurrency or self.config.router.batch_concurrency,
            chain_id=chain_id,
            fail_fast=fail_fast,
            arrived=arrived,
        )

    def execute_nowait(self, params: ExecuteParams, arrived: float | None = None) -> ExecuteResult | None:
        """The result, if it can be had without waiting for anything (the mock with no latency).

        None means "use ``execute``". Same routing, limits, result and errors as ``execute``: the
        choice, the limits (non-blocking only) and the accounting are the same code; this only saves
        the task and the deadline scope that a call which never waits does not need. Anything that
        would wait (a full limit, a probe, a retry) gives way before any state has changed.
        """
        if params.stream or self._routed(params):
            return None  # a routed call decides (and logs its decision) once, on the task path
        if params.chain_id is not None and not self.budgets.inline:
            return None  # the budget store must be awaited
        t0 = time.perf_counter()
        if arrived is None:
            arrived = t0
        call = self._call(params)
        now = anyio.current_time() if self._needs_clock else 0.0
        i = self._choose(call, now)
        if i < 0:
            return None
        route = call.route
        b = route.backends[i]
        respond = b.respond_nowait
        if respond is None or b.keys or b.needs_probe:
            return None
        ask = self._budget_ask(call, None) if params.chain_id is not None else None
        if b.limited and not self._fits(b, call, now):
            return None
        hold: CallBudget | None = None
        if ask is not None:
            try:
                hold = self.budgets.hold_nowait(ask)
            except errors.LLMError:
                self.usage.failure(call.agent, call.model, [])
                raise
        rpm_entry = tpm_entry = None
        if b.limited:
            if b.slots is not None:
                b.slots.try_acquire()
            if b.rpm is not None:
                rpm_entry = b.rpm.reserve(1, now)
            if b.tpm is not None:
                tpm_entry = b.tpm.reserve(call.estimate(), now)
        request = call.request
        request.model = route.models[i]
        request.api_key = None
        b.in_flight += 1
        started = time.perf_counter()
        try:
            response: ProviderResponse | None = respond(request)
        except errors.ProviderError as exc:
            if hold is not None:
                self.budgets.finish_nowait(hold, None)
            if exc.is_retryable and self._settings.retries > 0 and (len(route.backends) > 1 or not b.deterministic):
                self._undo(b, now, rpm_entry, tpm_entry)
                return None  # a retry follows: the task path makes this attempt again, and the rest
            elapsed = time.perf_counter() - started
            self.metrics.upstream_call(b.name, request.model, exc.type, elapsed)
            self.metrics.call_stages(started - t0, 0.0, elapsed)
            route.chose(i, self._seq)
            self._seq += 1
            fail_now = anyio.current_time() if not b.deterministic else now
            self._failed(call, i, b, -1, exc, fail_now, elapsed, False)
            if b.slots is not None:
                b.slots.release()
            self.usage.failure(call.agent, call.model, [b.name])
            raise
        finally:
            b.in_flight -= 1
        if response is None:
            self._undo(b, now, rpm_entry, tpm_entry)
            if hold is not None:
                self.budgets.finish_nowait(hold, None)
            return None
        latency = time.perf_counter() - started
        metrics = self.metrics
        metrics.upstream_call(b.name, request.model, "ok", latency)
        metrics.call_stages(started - t0, 0.0, latency)
        route.chose(i, self._seq)
        self._seq += 1
        if b.slots is not None:
            b.slots.release()
        self._succeeded(b, latency, False)
        if tpm_entry is not None and b.tpm is not None:
            b.tpm.correct(tpm_entry, response.usage.total_tokens or call.estimate(), now)
        result = self._finish(call, b, response, latency * 1000)
        if hold is not None:
            self.budgets.finish_nowait(hold, result)
        # An answer had without waiting has no upstream exchange: all of its time is llm-rpc's.
        result.overhead_us = round((time.perf_counter() - arrived) * 1e6, 3)
        return result

    @staticmethod
    def _undo(b: Backend, now: float, rpm_entry: list[float] | None, tpm_entry: list[float] | None) -> None:
        if b.slots is not None:
            b.slots.release()
        if rpm_entry is not None and b.rpm is not None:
            b.rpm.correct(rpm_entry, 0, now)
        if tpm_entry is not None and b.tpm is not None:
            b.tpm.correct(tpm_entry, 0, now)

    # -- results, usage, health ----------------------------------------------------------------------------

    def _finish(self, call: _Call, backend: Backend, response: ProviderResponse, latency_ms: float) -> ExecuteResult:
        cost = self.cost_usd(backend, response, call.request.model)
        attempts = call.attempts
        self.usage.success(
            call.agent,
            call.model,
            backend.name,
            response.usage,
            cost,
            [a.backend for a in attempts] if attempts else None,
        )
        return ExecuteResult(
            content=response.content,
            model=response.model,
            provider=backend.provider.provider,
            backend=backend.name,
            usage=response.usage,
            finish_reason=response.finish_reason,  # type: ignore[arg-type]
            latency_ms=round(latency_ms, 3),
            cost_usd=cost,
            metadata=call.params.metadata or {},
            tool_calls=response.tool_calls,
            native_finish_reason=response.native_finish_reason,
            id=response.id,
            attempts=len(attempts) + 1,
            raw=msgspec.Raw(response.raw) if response.raw is not None else None,
            route=call.decision,
        )

    def cost_usd(self, backend: Backend, response: ProviderResponse, sent_as: str | None = None) -> float | None:
        """USD for this response (core/pricing.py): priced by the id sent, then the id reported; the mock
        is free; a model without a price → None, with one warning."""
        cfg = backend.config
        return self.prices.cost_usd(response.usage, sent_as, response.model, provider=cfg.provider, local=cfg.local)

    def get_agent_usage(self, agent_id: str | None) -> AgentUsage:
        """What ``agent_id`` (None: ``"anonymous"``) has spent since start or its last reset."""
        return self.usage.get(agent_id)

    def get_all_usage(self) -> dict[str, AgentUsage]:
        """Every agent's usage, by agent id."""
        return self.usage.all()

    def reset_agent_usage(self, agent_id: str | None = None) -> list[str]:
        """Clear one agent's counters, or everyone's (None); returns the agents cleared."""
        return self.usage.reset(agent_id)

    def health(self) -> list[BackendHealth]:
        now = _now()
        out = []
        for b in self.backends:
            state = b.state(now)
            out.append(
                BackendHealth(
                    name=b.name,
                    provider=b.config.provider,
                    state=state,  # type: ignore[arg-type]
                    in_flight=b.in_flight,
                    key=b.key_state(),  # type: ignore[arg-type]
                    error_rate=round(b.error_rate, 3),
                    latency_ms=round(b.latency * 1000, 3) if b.latency is not None else None,
                    cooldown_s=round(b.blocked_until - now, 3) if state == "cooling_down" else None,
                )
            )
        return out

    async def aclose(self) -> None:
        """Close every backend's connection pool (and the decision log)."""
        if self.decision_log is not None:
            self.decision_log.close()
        for backend in self.backends:
            with anyio.CancelScope(shield=True):
                await backend.provider.aclose()
        await self.budgets.aclose()

    async def __aenter__(self) -> Router:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _upstream_seconds(call: _Call, request: ProviderRequest, started: float, sink_before: float) -> float:
    """The upstream part of an attempt begun at ``started`` (perf_counter): what the provider measured
    of its exchange, else the whole attempt less the time spent handing deltas on."""
    measured = request.upstream_s
    if measured is not None:
        return measured
    return time.perf_counter() - started - (call.sink_s - sink_before)


def _now() -> float:
    """The event loop's clock (a test's mock clock included); the monotonic clock outside a loop."""
    try:
        return anyio.current_time()
    except Exception:
        return time.monotonic()
