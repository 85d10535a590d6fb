"""The Redis budget store: chains shared by every llm-rpc process pointed at one Redis (``redis://host:port/db``).

Every operation is done by one Lua script, ``llm_rpc_budget_v1`` (``SCRIPT``), so each
check-and-reserve is atomic on the Redis server: a reservation is checked and taken on every level
of the chain at once, all or nothing. Operations a process has waiting go to Redis together, as
one call of the script that applies them one after the other (each atomic, and the call too).
Leases, expiry and retention run on the Redis server's clock (``TIME``), never a process's. Nothing
is cached here: one process or N, every check reads Redis.

The script mirrors ``_ledger.refuse`` and the ``Ledger`` operations rule for rule; the budgets test
suite runs against all three stores to keep them equal. Its version is its first line, hence in its
SHA-1: a changed script is a new version, so old and new llm-rpc processes can share one Redis during
an upgrade (each calls its own script by SHA; the key layout ``llm_rpc:budget:v1:`` stays).

The client is the standard ``redis`` package's synchronous one, called on worker threads, so it
works the same under asyncio and trio.

Keys (prefix ``llm_rpc:budget:v1:``): ``c:ID`` a chain (hash), ``l:ID`` the leases counting against a
chain (zset: hold id → lease end), ``k:ID`` its children (set), ``r:ID`` a reservation (hash), ``due``
every active lease (zset), ``all`` every chain (zset, scored by when it may be forgotten).
"""

from __future__ import annotations

import json
import math
from typing import Any

import anyio
import anyio.to_thread
import msgspec

from llm_rpc.core.budgets._batch import Batcher, Pending
from llm_rpc.core.budgets._ledger import (
    MAX_DEPTH,
    TOMBSTONE_SECONDS,
    BudgetRequestError,
    BudgetSpendResult,
    BudgetStatus,
    Chain,
    OpenSpec,
    Refusal,
    Reservation,
    Settlement,
    State,
    conflict,
    from_nusd,
    new_id,
    status_of,
    to_nusd,
)
from llm_rpc.errors import LLMBudgetExceededError

__all__ = ["PREFIX", "SCRIPT", "SCRIPT_NAME", "RedisBudgetStore"]

SCRIPT_NAME = "llm_rpc_budget_v1"
PREFIX = "llm_rpc:budget:v1:"

SCRIPT = """-- llm_rpc_budget_v1: every budget operation of llm-rpc, atomically (llm_rpc/core/budgets/_redis.py)
-- ARGV: skew_ms, retention_ms, tombstone_ms, then operations: name, argument count, arguments...
-- Returns one JSON reply per operation, in order; each operation is atomic (and so is the call).
local P = KEYS[1]
local tm = redis.call('TIME')
local now = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000) + tonumber(ARGV[1])
local retention = tonumber(ARGV[2])
local tomb = tonumber(ARGV[3])

local function fmt(n) return string.format('%d', n) end
local function nz(v)
  if v == nil or v == false or v == '' then return nil end
  return tonumber(v)
end
local function enc(t) return cjson.encode(t) end

local function purge_at(c)
  local e = nz(c.cl)
  local ex = nz(c.ex)
  if ex and (not e or ex < e) then e = ex end
  if e then return e + retention end
  return nil
end

local function load(id)
  local r = redis.call('HGETALL', P .. 'c:' .. id)
  if #r == 0 then return nil end
  local c = {id = id}
  for i = 1, #r, 2 do c[r[i]] = r[i + 1] end
  local pa = purge_at(c)
  if pa and pa <= now then return nil end
  return c
end

local function add(c, field, n)
  if n == 0 then return end
  redis.call('HINCRBY', P .. 'c:' .. c.id, field, fmt(n))
  c[field] = fmt(tonumber(c[field]) + n)
end

local function touch(c)
  local pa = purge_at(c)
  if pa then
    redis.call('PEXPIREAT', P .. 'c:' .. c.id, pa)
    redis.call('PEXPIREAT', P .. 'l:' .. c.id, pa)
    redis.call('PEXPIREAT', P .. 'k:' .. c.id, pa)
    redis.call('ZADD', P .. 'all', pa, c.id)
  else
    redis.call('ZADD', P .. 'all', '+inf', c.id)
  end
end

local function levels_of(id)
  local c = load(id)
  if not c then return nil end
  local out = {c}
  local path = cjson.decode(c.path)
  for i = 2, #path do
    local a = load(path[i])
    if a then out[#out + 1] = a end
  end
  return out
end

local function hold_load(rid)
  local r = redis.call('HGETALL', P .. 'r:' .. rid)
  if #r == 0 then return nil end
  local h = {id = rid}
  for i = 1, #r, 2 do h[r[i]] = r[i + 1] end
  if h.state ~= 'active' and nz(h.done) and nz(h.done) + tomb <= now then return nil end
  return h
end

local function drop_hold(h, state)
  for _, id in ipairs(cjson.decode(h.path)) do
    local k = P .. 'c:' .. id
    if redis.call('EXISTS', k) == 1 then
      redis.call('HINCRBY', k, 'rt', fmt(-tonumber(h.t)))
      redis.call('HINCRBY', k, 'ru', fmt(-tonumber(h.u)))
    end
    redis.call('ZREM', P .. 'l:' .. id, h.id)
  end
  redis.call('ZREM', P .. 'due', h.id)
  redis.call('HSET', P .. 'r:' .. h.id, 'state', state, 'done', fmt(now))
  redis.call('PEXPIREAT', P .. 'r:' .. h.id, now + tomb)
  h.state = state
end

local function remaining(levels)
  local rt, ru = nil, nil
  for _, c in ipairs(levels) do
    local tt, tu = nz(c.tt), nz(c.tu)
    if tt then
      local l = math.max(0, tt - tonumber(c.st) - tonumber(c.rt))
      if not rt or l < rt then rt = l end
    end
    if tu then
      local l = math.max(0, tu - tonumber(c.su) - tonumber(c.ru))
      if not ru or l < ru then ru = l end
    end
  end
  return rt, ru
end

local function exhausted(levels)
  for _, c in ipairs(levels) do
    local tt, tu = nz(c.tt), nz(c.tu)
    if (tt and tonumber(c.st) >= tt) or (tu and tonumber(c.su) >= tu) then return true end
  end
  return false
end

local function left(levels)
  if not levels then return nil, nil end
  local rt, ru = remaining(levels)
  return rt and fmt(rt) or nil, ru and fmt(ru) or nil
end

local function earliest(id)
  local e = redis.call('ZRANGE', P .. 'l:' .. id, 0, 0, 'WITHSCORES')
  if #e == 0 then return nil end
  return tonumber(e[2])
end

local function refusal(reason, c, limit, req, retry)
  local total, spent, held
  if limit == 'total_tokens' then
    total, spent, held = tonumber(c.tt), tonumber(c.st), tonumber(c.rt)
  else
    total, spent, held = tonumber(c.tu), tonumber(c.su), tonumber(c.ru)
  end
  local r = {reason = reason, chain_id = c.id, limit = limit, remaining = fmt(math.max(0, total - spent - held)),
             requested = fmt(req), reserved = fmt(held)}
  if retry then r.retry_ms = fmt(retry) end
  return r
end

local function check(levels, tokens, nusd, force)
  for _, c in ipairs(levels) do
    if nz(c.cl) then return {reason = 'closed', chain_id = c.id} end
    local ex = nz(c.ex)
    if ex and now >= ex then return {reason = 'expired', chain_id = c.id} end
  end
  if nusd == nil then
    for _, c in ipairs(levels) do
      if nz(c.tu) and c.au ~= '1' then return {reason = 'unpriced_model', chain_id = c.id, limit = 'total_usd'} end
    end
    nusd = 0
  end
  if force then return nil end
  for _, c in ipairs(levels) do
    local tt, tu = nz(c.tt), nz(c.tu)
    if tt and tokens > tt - tonumber(c.st) then return refusal('exceeds_budget', c, 'total_tokens', tokens) end
    if tu and nusd > tu - tonumber(c.su) then return refusal('exceeds_budget', c, 'total_usd', nusd) end
  end
  for _, c in ipairs(levels) do
    local tt, tu = nz(c.tt), nz(c.tu)
    if tt and tokens > tt - tonumber(c.st) - tonumber(c.rt) then
      local e = earliest(c.id)
      return refusal('in_flight', c, 'total_tokens', tokens, e and math.max(0, e - now) or 0)
    end
    if tu and nusd > tu - tonumber(c.su) - tonumber(c.ru) then
      local e = earliest(c.id)
      return refusal('in_flight', c, 'total_usd', nusd, e and math.max(0, e - now) or 0)
    end
  end
  return nil
end

local function kids(id)
  local out = {}
  for _, k in ipairs(redis.call('SMEMBERS', P .. 'k:' .. id)) do
    if load(k) then out[#out + 1] = k end
  end
  return out
end

local function view(levels)
  local id = levels[1].id
  return {levels = levels, children = kids(id), in_flight = fmt(redis.call('ZCARD', P .. 'l:' .. id)), now = fmt(now)}
end

local OPS = {}

function OPS.open(a)
  local id, spec, parent = a[1], a[2], a[3]
  local existing = levels_of(id)
  if existing then
    if existing[1].spec ~= spec then return {error = 'conflict', existing = existing[1].spec} end
    return view(existing)
  end
  local tt, tu = nz(a[4]), nz(a[5])
  local ttl, dttl = nz(a[6]), nz(a[7])
  local au = a[9]
  local ex = nil
  if ttl then ex = now + ttl end
  local path = {id}
  if parent == '' then
    if not tt and not tu then return {error = 'no_totals'} end
    if not ex and dttl then ex = now + dttl end
    if au == '' then au = '0' end
  else
    local ps = levels_of(parent)
    if not ps then return {error = 'unknown_parent', chain_id = parent} end
    for _, p in ipairs(ps) do
      if nz(p.cl) then return {error = 'parent_closed', chain_id = p.id} end
      local pex = nz(p.ex)
      if pex and now >= pex then return {error = 'parent_expired', chain_id = p.id} end
    end
    if #ps >= tonumber(a[11]) then return {error = 'too_deep'} end
    local lt, lu = remaining(ps)
    if tt and lt and tt > lt then
      return {error = 'exceeds_parent', limit = 'total_tokens', remaining = fmt(lt), chain_id = parent}
    end
    if tu and lu and tu > lu then
      return {error = 'exceeds_parent', limit = 'total_usd', remaining = fmt(lu), chain_id = parent}
    end
    if not tt then tt = lt end
    if not tu then tu = lu end
    if au == '' then au = ps[1].au end
    local pex = nz(ps[1].ex)
    if pex and (not ex or pex < ex) then ex = pex end
    for _, anc in ipairs(cjson.decode(ps[1].path)) do path[#path + 1] = anc end
  end
  redis.call('DEL', P .. 'c:' .. id, P .. 'l:' .. id, P .. 'k:' .. id)
  redis.call('HSET', P .. 'c:' .. id, 'parent', parent, 'path', cjson.encode(path),
    'tt', tt and fmt(tt) or '', 'tu', tu and fmt(tu) or '', 'au', au, 'cr', fmt(now), 'ex', ex and fmt(ex) or '',
    'ttl', a[10], 'meta', a[8], 'spec', spec, 'st', '0', 'su', '0', 'rt', '0', 'ru', '0', 'ot', '0',
    'ou', '0', 'cl', '')
  if parent ~= '' then
    redis.call('SADD', P .. 'k:' .. parent, id)
    touch(load(parent))
  end
  local levels = levels_of(id)
  touch(levels[1])
  return view(levels)
end

function OPS.reserve(a)
  local id, tokens, nusd = a[1], tonumber(a[2]), nz(a[3])
  local levels = levels_of(id)
  if not levels then return {refused = {reason = 'unknown_chain', chain_id = id}} end
  local r = check(levels, tokens, nusd, false)
  if r then return {refused = r, levels = levels} end
  nusd = nusd or 0
  local rid, lease = a[5], now + tonumber(a[4])
  local path = {}
  for _, c in ipairs(levels) do
    add(c, 'rt', tokens)
    add(c, 'ru', nusd)
    local lk = P .. 'l:' .. c.id
    redis.call('ZADD', lk, lease, rid)
    local pa = purge_at(c)
    if pa then redis.call('PEXPIREAT', lk, pa) end
    path[#path + 1] = c.id
  end
  redis.call('HSET', P .. 'r:' .. rid, 'chain', id, 'path', cjson.encode(path), 't', fmt(tokens), 'u', fmt(nusd),
    'lease', fmt(lease), 'state', 'active', 'done', '', 'st', '0', 'su', '0', 'ot', '0', 'ou', '0')
  redis.call('ZADD', P .. 'due', lease, rid)
  return {rid = rid, lease = fmt(lease)}
end

function OPS.spend(a)
  local id, tokens, nusd = a[1], tonumber(a[2]), tonumber(a[3])
  local levels = levels_of(id)
  if not levels then return {refused = {reason = 'unknown_chain', chain_id = id}} end
  local r = check(levels, tokens, nusd, a[4] == '1')
  if r then return {refused = r, levels = levels} end
  local lt, lu = remaining(levels)
  local ot = lt and math.max(0, tokens - lt) or 0
  local ou = lu and math.max(0, nusd - lu) or 0
  for _, c in ipairs(levels) do
    add(c, 'st', tokens)
    add(c, 'su', nusd)
    add(c, 'ot', ot)
    add(c, 'ou', ou)
  end
  local rt, ru = left(levels)
  return {ot = fmt(ot), ou = fmt(ou), rt = rt, ru = ru, exhausted = exhausted(levels)}
end

local function outcome(h, levels)
  local rt, ru = left(levels)
  return {state = h.state, chain = h.chain, st = h.st, su = h.su, ot = h.ot, ou = h.ou, rt = rt, ru = ru}
end

function OPS.settle(a)
  local rid = a[1]
  local h = hold_load(rid)
  if not h then return {state = 'unknown'} end
  if h.state ~= 'active' and h.state ~= 'expired' then return outcome(h, levels_of(h.chain)) end
  local late = h.state == 'expired'
  local t, u = tonumber(a[2]), tonumber(a[3])
  local ht, hu = tonumber(h.t), tonumber(h.u)
  local ot, ou = math.max(0, t - ht), math.max(0, u - hu)
  local levels = {}
  for i, lid in ipairs(cjson.decode(h.path)) do
    local c = load(lid)
    if c then
      if not late then
        add(c, 'rt', -ht)
        add(c, 'ru', -hu)
      end
      add(c, 'st', t)
      add(c, 'su', u)
      add(c, 'ot', ot)
      add(c, 'ou', ou)
      if levels then levels[#levels + 1] = c end
    elseif i == 1 then
      levels = nil
    end
    if not late then redis.call('ZREM', P .. 'l:' .. lid, rid) end
  end
  h.st, h.su, h.ot, h.ou = fmt(t), fmt(u), fmt(ot), fmt(ou)
  local key = P .. 'r:' .. rid
  if late then
    h.state = 'settled_late'
    redis.call('HSET', key, 'st', h.st, 'su', h.su, 'ot', h.ot, 'ou', h.ou, 'state', h.state)
  else
    h.state = 'settled'
    redis.call('HSET', key, 'st', h.st, 'su', h.su, 'ot', h.ot, 'ou', h.ou, 'state', h.state, 'done', fmt(now))
    redis.call('ZREM', P .. 'due', rid)
    redis.call('PEXPIREAT', key, now + tomb)
  end
  return outcome(h, levels)
end

function OPS.release(a)
  local h = hold_load(a[1])
  if not h then return {state = 'unknown'} end
  if h.state == 'active' then drop_hold(h, 'released') end
  return outcome(h, levels_of(h.chain))
end

function OPS.status(a)
  local levels = levels_of(a[1])
  if not levels then return {error = 'unknown_chain'} end
  return view(levels)
end

function OPS.close(a)
  local id = a[1]
  if not levels_of(id) then return {error = 'unknown_chain'} end
  local stack = {id}
  while #stack > 0 do
    local c = load(table.remove(stack))
    if c then
      if c.cl == '' then
        redis.call('HSET', P .. 'c:' .. c.id, 'cl', fmt(now))
        c.cl = fmt(now)
        touch(c)
      end
      for _, k in ipairs(kids(c.id)) do stack[#stack + 1] = k end
    end
  end
  return view(levels_of(id))
end

function OPS.list(a)
  local ids
  if a[1] == '' then ids = redis.call('ZRANGE', P .. 'all', 0, -1) else ids = kids(a[1]) end
  local items = {}
  for _, cid in ipairs(ids) do
    local levels = levels_of(cid)
    if levels then items[#items + 1] = view(levels) end
  end
  return {items = items, now = fmt(now)}
end

-- Leases that ran out are released, and chains past retention leave the index, on every call.
for _, rid in ipairs(redis.call('ZRANGEBYSCORE', P .. 'due', '-inf', now, 'LIMIT', 0, 256)) do
  local h = hold_load(rid)
  if h and h.state == 'active' then drop_hold(h, 'expired') else redis.call('ZREM', P .. 'due', rid) end
end
for _, cid in ipairs(redis.call('ZRANGEBYSCORE', P .. 'all', '-inf', now, 'LIMIT', 0, 64)) do
  if not load(cid) then redis.call('ZREM', P .. 'all', cid) end
end

local replies = {}
local i = 4
while i <= #ARGV do
  local name, n = ARGV[i], tonumber(ARGV[i + 1])
  local a = {}
  for j = 1, n do a[j] = ARGV[i + 1 + j] end
  i = i + 2 + n
  local fn = OPS[name]
  local ok, reply = false, 'unknown operation'
  if fn then ok, reply = pcall(fn, a) end
  if ok then
    replies[#replies + 1] = enc(reply)
  else
    replies[#replies + 1] = enc({script_error = tostring(reply)})
  end
end
return replies
"""


def _int(value: Any) -> int | None:
    return int(value) if value not in (None, "") else None


def _ms(value: Any) -> float | None:
    return int(value) / 1000 if value not in (None, "") else None


def _row(d: dict[str, Any]) -> Chain:
    meta = d.get("meta") or ""
    ttl = d.get("ttl") or ""
    return Chain(
        id=d["id"],
        parent_id=d.get("parent") or None,
        path=tuple(json.loads(d["path"])),
        total_tokens=_int(d.get("tt")),
        total_nusd=_int(d.get("tu")),
        allow_unpriced=d.get("au") == "1",
        created_at=int(d["cr"]) / 1000,
        expires_at=_ms(d.get("ex")),
        ttl_s=float(ttl) if ttl else None,
        metadata=json.loads(meta) if meta else None,
        spec=d["spec"],
        spent_tokens=int(d["st"]),
        spent_nusd=int(d["su"]),
        reserved_tokens=int(d["rt"]),
        reserved_nusd=int(d["ru"]),
        overrun_tokens=int(d["ot"]),
        overrun_nusd=int(d["ou"]),
        closed_at=_ms(d.get("cl")),
    )


def _levels(reply: dict[str, Any]) -> list[Chain]:
    levels = reply.get("levels") or []
    return [_row(d) for d in levels] if isinstance(levels, list) else []


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else []  # cjson encodes an empty table as {}


def _view(reply: dict[str, Any]) -> BudgetStatus:
    now = int(reply["now"]) / 1000
    return status_of(_levels(reply), _list(reply.get("children")), int(reply.get("in_flight", 0)), now)


def _unavailable(store: str) -> LLMBudgetExceededError:
    return LLMBudgetExceededError(
        f"the budget store ({store}) cannot be reached: nothing was sent upstream",
        reason="store_unavailable",
        retry_after=1.0,
    )


class RedisBudgetStore:
    """Budgets in Redis, shared by every process that points at it (``redis://host:port/db``).

    Operations that arrive while a script call is in flight go together in the next call (``_batch``):
    one round trip and one thread hop for all of them, each still checked and applied atomically by
    the script on the server.
    """

    kind = "redis"
    inline = False

    def __init__(
        self,
        url: str,
        *,
        retention: float = 86400.0,
        default_ttl: float | None = None,
        prefix: str = PREFIX,
        max_batch: int = 64,
    ) -> None:
        import redis

        self.url = url
        self._prefix = prefix
        self._retention_ms = math.ceil(retention * 1000)
        self._tomb_ms = math.ceil(TOMBSTONE_SECONDS * 1000)
        self._default_ttl_ms = str(math.ceil(default_ttl * 1000)) if default_ttl is not None else ""
        self._skew_ms = 0
        self._pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=4, timeout=10, socket_timeout=10, socket_connect_timeout=5
        )
        self._client = redis.Redis(connection_pool=self._pool)
        self._script = self._client.register_script(SCRIPT)
        self._errors: tuple[type[BaseException], ...] = (redis.ConnectionError, redis.TimeoutError)
        self._batcher = Batcher(self.run, max_batch)

    @property
    def location(self) -> str:
        kw = self._pool.connection_kwargs
        if "path" in kw:
            return f"unix:{kw['path']}"
        return f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"

    def advance(self, seconds: float) -> None:
        """Move this process's view of the Redis clock forward (tests of leases and expiry)."""
        self._skew_ms += math.ceil(seconds * 1000)

    def health(self) -> dict[str, int | float]:
        return {}

    def run(self, batch: list[Pending]) -> None:
        """One script call for ``batch`` (blocking: a worker thread calls this); sets each outcome."""
        args: list[str | int] = [self._skew_ms, self._retention_ms, self._tomb_ms]
        for item in batch:
            args += item.op
        try:
            replies = self._script(keys=[self._prefix], args=args)
        except self._errors:
            for item in batch:
                item.error = _unavailable(f"redis at {self.location}")
            return
        for item, raw in zip(batch, replies, strict=True):
            reply: dict[str, Any] = msgspec.json.decode(raw)
            if "script_error" in reply:
                item.error = RuntimeError(f"{SCRIPT_NAME}: {reply['script_error']}")
            else:
                item.result = reply

    async def _call(self, name: str, *args: str | int) -> dict[str, Any]:
        reply: dict[str, Any] = await self._batcher.submit([name, len(args), *args])
        return reply

    async def open(self, spec: OpenSpec) -> BudgetStatus:
        reply = await self._call(
            "open",
            spec.chain_id,
            spec.canonical(),
            spec.parent_id or "",
            spec.total_tokens if spec.total_tokens is not None else "",
            to_nusd(spec.total_usd) if spec.total_usd is not None else "",
            math.ceil(spec.ttl_s * 1000) if spec.ttl_s is not None else "",
            self._default_ttl_ms,
            json.dumps(spec.metadata) if spec.metadata is not None else "",
            "" if spec.allow_unpriced is None else ("1" if spec.allow_unpriced else "0"),
            repr(spec.ttl_s) if spec.ttl_s is not None else "",
            MAX_DEPTH,
        )
        error = reply.get("error")
        if error is not None:
            raise _open_error(error, reply, spec)
        return _view(reply)

    async def reserve(
        self, chain_id: str, tokens: int, nusd: int | None, lease_s: float, *, model: str | None = None
    ) -> Reservation:
        rid = new_id()
        reply = await self._call(
            "reserve", chain_id, tokens, nusd if nusd is not None else "", math.ceil(lease_s * 1000), rid
        )
        if "refused" in reply:
            raise _refused(reply, chain_id, model)
        return Reservation(rid, chain_id, tokens, nusd or 0, int(reply["lease"]) / 1000)

    async def settle(self, reservation_id: str, tokens: int, nusd: int) -> Settlement:
        return _settlement(reservation_id, await self._call("settle", reservation_id, tokens, nusd))

    async def release(self, reservation_id: str) -> Settlement:
        return _settlement(reservation_id, await self._call("release", reservation_id))

    async def spend(self, chain_id: str, tokens: int, nusd: int, *, force: bool = False) -> BudgetSpendResult:
        reply = await self._call("spend", chain_id, tokens, nusd, "1" if force else "0")
        if "refused" in reply:
            raise _refused(reply, chain_id, None)
        left_nusd = _int(reply.get("ru"))
        return BudgetSpendResult(
            chain_id=chain_id,
            tokens=tokens,
            usd=from_nusd(nusd),
            forced=force,
            exhausted=bool(reply["exhausted"]),
            remaining_tokens=_int(reply.get("rt")),
            remaining_usd=from_nusd(left_nusd) if left_nusd is not None else None,
            overrun_tokens=int(reply["ot"]),
            overrun_usd=from_nusd(int(reply["ou"])),
        )

    async def status(self, chain_id: str) -> BudgetStatus:
        return self._status(chain_id, await self._call("status", chain_id))

    async def close(self, chain_id: str) -> BudgetStatus:
        return self._status(chain_id, await self._call("close", chain_id))

    @staticmethod
    def _status(chain_id: str, reply: dict[str, Any]) -> BudgetStatus:
        if reply.get("error"):
            raise BudgetRequestError(
                f"no budget is open for chain {chain_id!r}",
                reason="unknown_chain",
                chain_id=chain_id,
                path="params.chain_id",
            )
        return _view(reply)

    async def list_chains(
        self, parent_id: str | None = None, state: State | None = None, limit: int = 1000
    ) -> list[BudgetStatus]:
        reply = await self._call("list", parent_id or "")
        items = [_view(item) for item in _list(reply.get("items"))]
        items.sort(key=lambda s: (s.created_at, s.chain_id))
        return [s for s in items if state is None or s.state == state][:limit]

    async def start(self) -> None:
        return None  # connections are made on first use; an unreachable Redis refuses calls, retryably

    async def aclose(self) -> None:
        pool = self._pool

        def close() -> None:
            pool.disconnect()

        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(close)


def _refused(reply: dict[str, Any], chain_id: str, model: str | None) -> LLMBudgetExceededError:
    r = reply["refused"]
    retry_ms = _int(r.get("retry_ms"))
    refusal = Refusal(
        r["reason"],
        r["chain_id"],
        r.get("limit"),
        _int(r.get("remaining")),
        _int(r.get("requested")),
        _int(r.get("reserved")),
        round(retry_ms / 1000, 3) if retry_ms is not None else None,
        model if r["reason"] == "unpriced_model" else None,
    )
    levels = _levels(reply)
    overrun = (levels[0].overrun_tokens, levels[0].overrun_nusd) if levels else (0, 0)
    return refusal.error(chain_id, overrun)


def _settlement(rid: str, reply: dict[str, Any]) -> Settlement:
    if reply["state"] == "unknown":
        return Settlement(rid, "unknown")
    return Settlement(
        rid,
        reply["state"],
        reply.get("chain"),
        int(reply["st"]),
        int(reply["su"]),
        int(reply["ot"]),
        int(reply["ou"]),
        _int(reply.get("rt")),
        _int(reply.get("ru")),
    )


def _open_error(error: str, reply: dict[str, Any], spec: OpenSpec) -> BudgetRequestError:
    if error == "conflict":
        return conflict(reply["existing"], spec)
    if error == "no_totals":
        return BudgetRequestError(
            "a chain without a parent needs total_tokens or total_usd", reason="no_totals", path="params"
        )
    if error == "unknown_parent":
        return BudgetRequestError(
            f"no budget is open for parent {spec.parent_id!r}",
            reason="unknown_parent",
            chain_id=spec.parent_id,
            path="params.parent_id",
        )
    if error in ("parent_closed", "parent_expired"):
        return BudgetRequestError(
            f"chain {reply['chain_id']!r} is {error.removeprefix('parent_')}: no child can be opened under it",
            reason=error,
            chain_id=reply["chain_id"],
            path="params.parent_id",
        )
    if error == "too_deep":
        return BudgetRequestError(f"chains nest at most {MAX_DEPTH} deep", reason="too_deep", path="params.parent_id")
    limit = reply["limit"]
    left = int(reply["remaining"])
    shown: float | int = from_nusd(left) if limit == "total_usd" else left
    return BudgetRequestError(
        f"a child's {limit} may not exceed its parent's remaining ({shown})",
        reason="exceeds_parent",
        chain_id=spec.parent_id,
        limit=limit,
        remaining=shown,
        path=f"params.{limit}",
    )
