"""One request budget for every process that uses an API key, kept in Redis.

``BananaClient(rate_limit_url="redis://...")`` builds a
:class:`RedisRateLimiter`: every client, in any process on any machine, that
names the same Redis and the same API key shares one request budget, one
429 pause and one learned limit. Needs the ``redis`` extra
(``pip install 'banana-async[redis]'``); ``import banana_async`` never
imports it.

The design (what a reviewer should check):

* **One hash per key, named by a hash of the key.** Everything shared lives
  in one Redis hash, ``banana_async:rl:<first 32 hex digits of SHA-256 of
  the key>``; the key itself never leaves the process. The hash expires
  after an hour unused, so a learned limit does not outlive
  the batches that learned it by much (the provider may have changed it).
* **A schedule, not a counter.** The budget is a GCRA schedule (the
  "virtual scheduling" form of a token bucket): the hash holds the time at
  which the next request may go, and one Lua script, run atomically by
  Redis on Redis's clock, hands each request the next free slot and moves
  the schedule on by ``1 / rate``. Each process asks for one slot at a
  time, for the request first in its own line (creates before status
  queries, as in-process), sleeps until it, and asks for the next: the
  schedule runs at most one slot per process ahead of now, so a new rate
  applies at once. One round trip per request whose slot is free, two for
  one that waited (after the wait it checks for a pause begun meanwhile),
  no polling, no stampede at
  a window's edge, and requests from all processes go out evenly spaced:
  at most ``rate`` (plus one) in any one second, which is what a
  provider's bucket counts. Processes given different caps
  (``requests_per_second``) all keep to the smallest among those active
  on the key (``ACTIVE_FOR``; a process leaves the key as it closes), from
  the first slot of the process that brings it: the slots handed in the
  second before count as spent at it, each only within its own second, so
  the join holds every process back about a second at most.
  Window counters (the ``limits`` package's strategies) cannot say *when* a
  refused request may go, so every process would poll, and they allow a
  window's whole budget in one burst; see the changelog for the choice.
* **The 429 pause** is a field "paused until" (Redis time) in the same hash,
  only ever moved later by :meth:`RedisRateLimiter.pause`. The acquire
  script never hands out a slot before it, so one process's 429 holds every
  process's next requests; a request that waited for its slot looks at the
  pause once more before it goes.
* **The learned limit** is learned as the in-process limiter learns it
  (:mod:`banana_async.ratelimit`), from the answers of all processes:
  each process adds its accepted answers to a shared count (carried on its
  next acquire, so it costs no round trip) and reports each 429 for a
  request sent after the last cut; the cut script estimates the provider's
  limit from the shared count (since the previous cut, or over the last
  two seconds) and sets the shared rate to 90 % of it, from
  where it climbs back with demand. Before the first 429 creates ramp up
  from 64 a second, doubling with demand (slow start), and status queries
  are not held. A configured ``requests_per_second`` caps the rate on top.
* **The first estimate is only a start.** The first 429 mixes the
  provider's first burst (its full bucket) into what it measures, so it
  lands anywhere from well under the limit to well over it. Until the
  next 429 the shared rate doubles every :data:`QUICK_DOUBLING` seconds
  of demand instead of creeping back, and that 429 measures again: over
  the time between the two (exact when the provider's bucket covered the
  pause in between), or, when the first 429 showed a bucket too small for
  that, over the last two seconds, held to the rate that met the 429. A
  429 for a request sent before the pause that followed a cut reached
  Redis says nothing about the new rate and is not counted, nor is paused
  time taken for demand. (Four processes against a provider allowing 40
  requests a second with a burst of 10 used to start at about 16 a
  second and need some 12 s to get near 40; now the second 429, 3-4 s
  in, sets the rate within a few percent of the limit. See ``nox -s bench
  -- --part redis``.)
* **When Redis goes away** (refused, reset, timed out), the limiter logs
  one WARNING and serves requests from an in-process
  :class:`~banana_async.ratelimit.AdaptiveRateLimiter`, started at this
  process's share: the cap (the smallest on the key, as last heard from
  Redis), learned rate and limit divided by the processes active on the
  key (each heartbeats a field ``m:<id>`` with every slot it asks for;
  ``ACTIVE_FOR``), with nothing saved up. Every few seconds
  (``RETRY_EVERY``) one request tries Redis again; when that works it logs
  one INFO, rejoins the shared budget, and moves the requests queued
  locally back to it. Its first slot counts the requests it sent alone in
  the last second as spent (the processes rejoin a few tenths of a second
  apart, the others still spending their shares meanwhile). Answers to
  requests sent while away are not counted as the shared budget's, and a
  hash that lost its learned limit (Redis restarted empty) gets it back
  from a process that knows it (a limit that 429s taught a process while
  it sent its share is scaled back to the whole key by the processes it
  was a share of). Such a hash gets back the smallest cap on the key too:
  each rejoining process puts back the smallest it last heard, which
  holds until the process that has it is back (or would have gone stale,
  ``ACTIVE_FOR``), so a process with a larger cap that rejoins first
  does not schedule at its own.
* **When Redis cannot be reached at the start** (it never answered), that
  is an error, :exc:`~banana_async.SharedBudgetError`, from :meth:`RedisRateLimiter.aopen`
  (the client calls it as it opens) or from each request, unless
  ``allow_unshared``: running unshared would spend the budget once per
  process.

Creates go before status queries inside each process, not across
processes: the shared schedule serves the processes in the order they ask.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import secrets
from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from banana_async._polling import Clock, SystemClock, check_interval
from banana_async.ratelimit._adaptive import (
    BACKOFF,
    QUERY_PATIENCE,
    SLOW_START_RATE,
    AdaptiveRateLimiter,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from banana_async.errors import SharedBudgetError
    from banana_async.ratelimit import RequestKind


__all__ = [
    "ACTIVE_FOR",
    "IDLE_TTL",
    "INSTALL_HINT",
    "KEY_PREFIX",
    "QUICK_DOUBLING",
    "RETRY_EVERY",
    "WINDOW",
    "RedisRateLimiter",
    "redis_key",
]

logger = logging.getLogger("banana_async")

INSTALL_HINT = "rate_limit_url needs the redis extra: pip install 'banana-async[redis]'"
"""What an ImportError of the extra tells the user."""

KEY_PREFIX = "banana_async:rl:"
"""Every hash this module writes is named this prefix plus a hash of the API key."""

IDLE_TTL = 3600
"""Seconds after its last use that Redis forgets a key's shared state."""

RETRY_EVERY = 5.0
"""Seconds between attempts to reach Redis again while it is away."""

WINDOW = 2.0
"""Seconds of accepted answers that measure the provider's limit at a first 429."""

SOCKET_TIMEOUT = 2.0
"""Seconds a Redis command may take before Redis counts as away."""

QUICK_DOUBLING = 2.0
"""Between the first 429 and the next, the shared rate doubles every this many seconds of demand.

The first 429 measures the provider's limit roughly (its bucket's first
burst is mixed in), often below it; climbing back from there at the
careful pace used later would take ten seconds or more.
"""

ACTIVE_FOR = 30.0
"""Seconds after its last request that a process still counts as sharing the key.

While Redis is away each process sends at its share of the budget: the
budget divided by the processes that asked Redis for a slot this recently.
Its cap holds the others as long (a process that closes leaves at once).
"""

_HASH_CONTEXT = b"banana_async shared rate limit v1\x00"

# The slots handed are counted in bins of 1/_SLOT_BINS s, in a ring of
# _SLOT_RING bins: the last second's and up to 1.35 s ahead (see _ACQUIRE).
_SLOT_BINS = 20
_SLOT_RING = 48

# The scripts run atomically in Redis on Redis's clock (TIME), so every
# process on every machine reads one clock. Numbers go back as strings:
# Redis truncates a Lua number to an integer.
_COMMON = """
local key = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function num(field)
  return tonumber(redis.call('HGET', key, field))
end
local function add_accepted(n)
  if n <= 0 then return end
  local bin = math.floor(now * 4)
  local slot = bin % 8
  if num('i' .. slot) ~= bin then
    redis.call('HSET', key, 'i' .. slot, bin, 'b' .. slot, 0)
  end
  redis.call('HINCRBY', key, 'b' .. slot, n)
  redis.call('HINCRBY', key, 'since_cut', n)
  if not num('first') then redis.call('HSET', key, 'first', now) end
end
"""

# Each process that asks for slots keeps a field 'm:<its id>' = Redis time
# of its last ask, and 'c:<its id>' = its requests_per_second if it has one;
# 'members' counts those asked within ACTIVE_FOR and 'least_cap' is the
# smallest of their caps, and of 'kept_cap' until 'kept_until' (recounted
# when one joins or leaves, and at most once a second, dropping the stale
# ones).
_MEMBERS = """
local function recount(active)
  local fields = redis.call('HGETALL', key)
  local values = {}
  for i = 1, #fields, 2 do values[fields[i]] = fields[i + 1] end
  local members = 0
  local least = nil
  for name, value in pairs(values) do
    if string.sub(name, 1, 2) == 'm:' then
      local other = string.sub(name, 3)
      if tonumber(value) >= now - active then
        members = members + 1
        local c = tonumber(values['c:' .. other])
        if c ~= nil and (least == nil or c < least) then least = c end
      else
        redis.call('HDEL', key, name, 'c:' .. other)
      end
    end
  end
  -- A cap put back by a process rejoining a hash that lost it (see
  -- _ACQUIRE): it holds until its process comes back with it, or until its
  -- process would have gone stale.
  local kept = tonumber(values['kept_cap'])
  if kept ~= nil then
    if (tonumber(values['kept_until']) or 0) < now or (least ~= nil and least <= kept) then
      redis.call('HDEL', key, 'kept_cap', 'kept_until')
    elseif least == nil or kept < least then
      least = kept
    end
  end
  redis.call('HSET', key, 'members', members, 'members_at', now)
  if least == nil then
    redis.call('HDEL', key, 'least_cap')
  else
    redis.call('HSET', key, 'least_cap', least)
  end
  return members
end
local function note_member(id, active, cap)
  local joined = redis.call('HSET', key, 'm:' .. id, now) == 1
  if cap == '' then
    redis.call('HDEL', key, 'c:' .. id)
  else
    redis.call('HSET', key, 'c:' .. id, cap)
  end
  local members = num('members')
  if not joined and members ~= nil and now - (num('members_at') or 0) < 1 then
    return members
  end
  return recount(active)
end
"""

# ARGV: kind, cap ('' for none), most seconds to wait ('' for no limit),
# answers accepted since the last call, idle ttl, this process's id, ACTIVE_FOR,
# requests this process sent on its own in the last second (rejoining),
# the smallest cap this process last heard on the key and how many seconds
# ago ('' and '' unless rejoining).
# Returns {delay, now, members, learned rate, limit, least cap} (the last
# three '' when unset); delay -1 means no slot within the wait.
_ACQUIRE = (
    _COMMON
    + _MEMBERS
    + """
local function acquire()
add_accepted(tonumber(ARGV[4]))
redis.call('EXPIRE', key, ARGV[5])
local start = math.max(now, num('paused') or 0)
local cap = tonumber(ARGV[2])
-- Processes of one key given different caps: the smallest applies to all.
local least = num('least_cap')
if least ~= nil and (cap == nil or least < cap) then cap = least end
local limit = num('limit')
local learned = num('rate')
if learned == nil then learned = 64 end
if learned <= 0 then learned = nil end
if ARGV[1] == 'query' and limit == nil and cap == nil then
  return {tostring(start - now), tostring(now)}
end
local rate = learned
if cap ~= nil and (rate == nil or cap < rate) then rate = cap end
if rate == nil then
  return {tostring(start - now), tostring(now)}
end
local tat = math.max(num('tat') or 0, start)
-- A process rejoining after an outage counts the requests it sent on its
-- own in the last second as slots already spent: the others, still on
-- their shares, and this one must not make that second hold more than the rate.
local alone = tonumber(ARGV[8]) or 0
if alone > 0 then tat = math.max(tat, now) + alone / rate end
-- A cap below the rate the last slot went at (a process given a smaller
-- cap joined): the slots handed just before count as spent at the new
-- rate, so that no second after the join holds more than it. Counting
-- back from the newest, the i-th slot handed holds the next one until i /
-- rate after it, but never past the second it belongs to: at most about
-- one second held back, however many went at the old rate.
local went = num('slot_rate')
if went ~= nil and cap ~= nil and rate == cap and rate < went then
  local bin = math.floor(now * SLOT_BINS)
  local spent = 0
  -- (newest first; those handed for later too: the schedule runs a slot
  -- per process ahead)
  for at = bin + SLOT_RING - SLOT_BINS - 1, bin - SLOT_BINS, -1 do
    local ring = at % SLOT_RING
    if num('si' .. ring) == at then
      spent = spent + (num('sb' .. ring) or 0)
      -- (a bin's slots taken as handed at its end: never less held back)
      tat = math.max(tat, (at + 1) / SLOT_BINS + math.min(spent / rate, 1))
    end
  end
end
local delay = tat - now
local most = tonumber(ARGV[3])
if most ~= nil and delay > most then
  return {'-1', tostring(now)}
end
redis.call('HSET', key, 'tat', tat + 1 / rate, 'slot_rate', rate)
-- Slots handed, by when they go (SLOT_BINS a second), for the check above.
local at = math.floor(tat * SLOT_BINS)
if num('si' .. at % SLOT_RING) ~= at then
  redis.call('HSET', key, 'si' .. at % SLOT_RING, at, 'sb' .. at % SLOT_RING, 0)
end
redis.call('HINCRBY', key, 'sb' .. at % SLOT_RING, 1)
-- Demand queues: let the learned rate climb (slow start, then linear).
local grown = num('grown') or now
local elapsed = math.min(math.max(now - grown, 0), 1)
if delay <= 0 then elapsed = 0 end
-- (Never moved back: a pause sets it to its end, see _PAUSE.)
redis.call('HSET', key, 'grown', math.max(now, grown))
if learned ~= nil and elapsed > 0 and (cap == nil or learned < cap) then
  if limit == nil then
    learned = learned * 2 ^ (elapsed / 0.1)
    if learned >= 100000 then learned = 0 end
  elseif num('quick') == 1 then
    -- The first estimate is rough: double every QUICK_DOUBLING seconds of
    -- demand until the next 429 measures the limit again.
    learned = learned * 2 ^ (elapsed / QUICK_DOUBLING)
    if learned >= 100000 then learned = 0 end
  else
    -- Back to the estimate in RECOVERY (5 s), on slowly for PLATEAU (2 s)
    -- more, then faster and faster (doubling every second): a limit that
    -- was raised is far above (the in-process limiter's shape).
    local pace = 0.1 * limit / 5
    if learned >= limit then
      local above = (num('above') or 0) + elapsed
      redis.call('HSET', key, 'above', above)
      pace = pace * 2 ^ math.max(0, above - 2)
    end
    learned = learned + pace * elapsed
  end
  redis.call('HSET', key, 'rate', learned)
end
return {tostring(delay), tostring(now)}
"""
    + """
end
-- A process rejoining a hash that does not know it (Redis restarted
-- empty) puts back the smallest cap it last heard on the key: the process
-- that had it may rejoin last, and until then the others would keep to
-- their own caps. It holds as long as that process would still count as
-- active (ACTIVE_FOR after it was heard of), or until it is back with it.
local kept = tonumber(ARGV[9])
if kept ~= nil and redis.call('HEXISTS', key, 'm:' .. ARGV[6]) == 0 then
  local untl = now + tonumber(ARGV[7]) - tonumber(ARGV[10])
  local old = num('kept_cap')
  if untl > now and (old == nil or (num('kept_until') or 0) < now or kept < old) then
    redis.call('HSET', key, 'kept_cap', kept, 'kept_until', untl)
    local least = num('least_cap')
    if least == nil or kept < least then redis.call('HSET', key, 'least_cap', kept) end
  end
end
local reply = acquire()
table.insert(reply, tostring(note_member(ARGV[6], tonumber(ARGV[7]), ARGV[2])))
table.insert(reply, tostring(num('rate') or ''))
table.insert(reply, tostring(num('limit') or ''))
table.insert(reply, tostring(num('least_cap') or ''))
return reply
"""
).replace("QUICK_DOUBLING", repr(QUICK_DOUBLING))
_ACQUIRE = _ACQUIRE.replace("SLOT_BINS", str(_SLOT_BINS)).replace("SLOT_RING", str(_SLOT_RING))

# ARGV: the limit and rate to seed, idle ttl. Puts back what the processes
# had learned into a hash that lost it (Redis restarted empty), never above
# it: a hash that has a limit keeps it. Returns {limit}.
_SEED = (
    _COMMON
    + """
redis.call('EXPIRE', key, ARGV[3])
local limit = num('limit')
if limit ~= nil then return {tostring(limit)} end
local rate = tonumber(ARGV[2])
local current = num('rate')
if current ~= nil and current > 0 and current < rate then rate = current end
redis.call('HSET', key, 'limit', ARGV[1], 'rate', rate, 'cut', now, 'since_cut', 0, 'above', 0)
return {ARGV[1]}
"""
)

# ARGV: when the refused request was sent (Redis time), answers accepted
# since the last call, idle ttl. Returns {limit, rate}, or {} for a 429
# that says nothing new (sent before the last cut, or before the pause
# that followed it).
_CUT = (
    _COMMON
    + """
add_accepted(tonumber(ARGV[2]))
redis.call('EXPIRE', key, ARGV[3])
local cut = num('cut') or 0
local turn = tonumber(ARGV[1])
-- Sent before the last cut, or after it but before the pause that followed
-- it reached Redis: nothing new about the rate.
local held = num('held') or 0
local own = ARGV[1] == redis.call('HGET', key, 'held_by')
if turn < cut or (held > cut and turn < held and not own) then return {} end
local current = num('rate')
if current == nil then current = 64 end
if current <= 0 then current = nil end
local previous = num('limit')
local since = num('since_cut') or 0
local cycle = now - cut
local bin = math.floor(now * 4)
local count = 0
for slot = 0, 7 do
  local at = num('i' .. slot)
  if at ~= nil and at > bin - 8 and at <= bin then count = count + (num('b' .. slot) or 0) end
end
local first = num('first') or now
local begin = math.max(now - 2, first)
-- Seconds paused after `from`, of the last two pauses (this 429's own
-- pause may have begun already).
local function paused_since(from)
  local total = 0
  for _, names in ipairs({{'pause_began', 'paused'}, {'pause_began0', 'paused0'}}) do
    local pb, pe = num(names[1]) or 0, num(names[2]) or 0
    total = total + math.max(0, math.min(pe, now) - math.max(pb, from))
  end
  return total
end
local span = math.max(1, now - begin - paused_since(begin))
local window = nil
if count >= 4 then window = count / span end
local over_cycle = since / cycle
local measured = window
if num('quick') == 1 then
  -- The cut after the first (see QUICK_DOUBLING). Between two 429s the
  -- provider accepts its rate times the time between, less what its
  -- bucket could not keep while requests paused: when the first 429
  -- showed a bucket too small to cover the pause, the cycle undercounts
  -- and the window (held to the rate that met the 429) measures better.
  local covered = (num('a1') or 0) - over_cycle * (num('t1') or 0)
  if since >= 4 and covered >= 0.8 * over_cycle * paused_since(cut) then
    measured = over_cycle
  elseif window ~= nil and current ~= nil then
    measured = math.max(over_cycle, math.min(window, current))
  end
elseif cut > 0 and cycle >= 3 and since >= 4
    and (previous == nil or over_cycle <= 1.1 * previous) then
  measured = over_cycle
end
local estimate
if measured ~= nil then
  estimate = measured
  if current ~= nil and current < measured then estimate = current end
else
  estimate = math.max(1, (current or 64) / 2)
end
if previous == nil then
  -- What the first 429 saw, for the next cut to judge the provider's bucket by.
  redis.call('HSET', key, 'quick', 1, 'a1', count, 't1', now - first)
else
  redis.call('HSET', key, 'quick', 0)
end
local new_limit = math.max(0.05, estimate)
local new_rate = math.max(0.05, 0.9 * new_limit)
redis.call('HSET', key, 'limit', new_limit, 'rate', new_rate, 'cut', now, 'since_cut', 0,
  'above', 0)
return {tostring(new_limit), tostring(new_rate)}
"""
)

# ARGV: seconds ('' to decide here), idle ttl, when the request of the 429
# that asked for it was sent ('' if none). Returns {paused until, now}.
_PAUSE = (
    _COMMON
    + """
redis.call('EXPIRE', key, ARGV[2])
local seconds = tonumber(ARGV[1])
if seconds == nil then
  local rate = num('rate')
  if num('limit') == nil or rate == nil or rate <= 0 then
    seconds = 1
  else
    seconds = math.min(1, math.max(0.05, 1 / rate))
  end
end
local paused = num('paused') or 0
local untl = now + seconds
local cut = num('cut')
if cut ~= nil and cut > (num('held') or -1) then
  -- The first pause since the last cut: requests sent before it say
  -- nothing about the rate the cut set, but for the one whose 429 asked
  -- for it, whose cut may come after it (see _CUT).
  redis.call('HSET', key, 'held', now, 'held_by', ARGV[3])
end
if untl > paused then
  if now >= paused then
    -- A new pause; the one before it stays known to the next cut.
    redis.call('HSET', key, 'pause_began0', num('pause_began') or 0, 'paused0', paused,
      'pause_began', now)
  end
  -- A pause is not demand: the climb resumes when requests flow again.
  redis.call('HSET', key, 'paused', untl, 'grown', math.max(num('grown') or 0, untl))
  paused = untl
end
return {tostring(paused), tostring(now)}
"""
)

# ARGV: this process's id, ACTIVE_FOR. A process that closes leaves the key
# at once: the others no longer keep to its cap, nor count it in their
# shares. Returns {members}.
_LEAVE = (
    _COMMON
    + _MEMBERS
    + """
redis.call('HDEL', key, 'm:' .. ARGV[1], 'c:' .. ARGV[1])
if redis.call('EXISTS', key) == 0 then return {'0'} end
return {tostring(recount(tonumber(ARGV[2])))}
"""
)

# Returns {paused until, now}.
_PAUSED = (
    _COMMON
    + """
return {tostring(num('paused') or 0), tostring(now)}
"""
)


def redis_key(api_key: str) -> str:
    """The name of the Redis hash that holds ``api_key``'s shared budget.

    A SHA-256 of the key (under a fixed context string), cut to 128 bits:
    the same in every process, and useless for recovering the key.
    """
    digest = hashlib.sha256(_HASH_CONTEXT + api_key.encode()).hexdigest()
    return KEY_PREFIX + digest[:32]


def _shown(url: str) -> str:
    """``url`` without its password, for logs and messages."""
    parts = urlsplit(url)
    # redis-py also takes the password as a query parameter (unix:// URLs have no other place).
    query = "&".join(
        "password=***" if pair.lower().startswith("password=") else pair
        for pair in parts.query.split("&")
    )
    if parts.password is not None:
        netloc = (f"{parts.username}:***@" if parts.username else ":***@") + (parts.hostname or "")
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    if query == parts.query:
        return url
    # (urlunsplit would turn unix:///path into unix:/path)
    head, _, tail = url.partition("?")
    return f"{head}?{query}{tail[len(parts.query) :]}"


def _where(url: str) -> str:
    """Which Redis ``url`` names, for messages: ``HOST:PORT``, or a socket's path."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    host = parts.hostname or "localhost"
    return f"[{host}]:{parts.port or 6379}" if ":" in host else f"{host}:{parts.port or 6379}"


def _password_trouble(url: str, exc: BaseException) -> str | None:
    """What to tell of a Redis that refused the connection for its password; None if not that."""
    from redis.exceptions import AuthenticationError  # noqa: PLC0415 (the optional extra)

    if not isinstance(exc, AuthenticationError):
        return None
    parts = urlsplit(url)
    if parts.password is None and not any(
        pair.lower().startswith("password=") for pair in parts.query.split("&")
    ):
        # (redis-py's own words are about HELLO or AUTH, whichever it sent first)
        return (
            f"Redis at {_where(url)} asks for a password: put it in the URL, "
            "redis://:PASSWORD@host/..."
        )
    return f"Redis at {_where(url)} refused the user name and password in the URL ({exc})"


def _failures() -> tuple[type[BaseException], ...]:
    from redis.exceptions import RedisError  # noqa: PLC0415 (the optional extra)

    return (RedisError, OSError, TimeoutError)


class _GoLocal:
    """What a waiter is handed when Redis went away: ask the local limiter."""


_GO_LOCAL = _GoLocal()


class _Waiter:
    """A request waiting in this process for its slot."""

    __slots__ = ("deadline", "future", "kind", "since")

    def __init__(
        self,
        future: asyncio.Future[float | _GoLocal | None],
        kind: str,
        since: float,
        deadline: float | None,
    ) -> None:
        self.future = future
        self.kind = kind
        self.since = since
        self.deadline = deadline


async def _close_quietly(connection: Redis) -> None:
    """Close a pool whose server went away (its connections may fail to say goodbye)."""
    with contextlib.suppress(*_failures()):
        await connection.aclose()


class RedisRateLimiter:
    """A request budget shared through Redis by every client of one API key.

    Implements :class:`~banana_async.ratelimit.RateLimiter`. The design is in
    this module's docstring. Usually built by the client
    (``BananaClient(rate_limit_url=...)``); build one yourself to share it
    between clients of one event loop or to tune it.

    Args:
        url: A Redis URL (``redis://``, ``rediss://`` or ``unix://``), with a
            database number and a password if needed.
        api_key: The API key whose budget this is; only a hash of it goes
            into Redis.
        requests_per_second: A hard cap on requests per second of all
            processes together; None for none (the limit is then learned).
            Processes given different caps keep to the smallest.
        clock: Where time is read and sleeping happens.
        local: The in-process limiter used while Redis is away (by default
            an :class:`~banana_async.ratelimit.AdaptiveRateLimiter` with the
            same cap).
        allow_unshared: If Redis has not answered once when it is first
            needed (:meth:`RedisRateLimiter.aopen`, or the first request), go on with the
            local limiter (one WARNING) rather than raise
            :exc:`~banana_async.SharedBudgetError`.

    Raises:
        InvalidRequestError: If the URL is not a Redis URL, or the ``redis``
            extra is not installed.
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str,
        requests_per_second: float | None = None,
        clock: Clock | None = None,
        local: AdaptiveRateLimiter | None = None,
        allow_unshared: bool = False,
    ) -> None:
        from banana_async.errors import InvalidRequestError  # noqa: PLC0415 (kept light)

        scheme = urlsplit(url).scheme if isinstance(url, str) else ""
        if scheme not in ("redis", "rediss", "unix"):
            raise InvalidRequestError(
                f"rate_limit_url must be a redis://, rediss:// or unix:// URL, not {_shown(url)!r}"
                if isinstance(url, str)
                else f"rate_limit_url must be a string, not {type(url).__name__}"
            )
        try:
            import redis.asyncio  # noqa: F401, PLC0415 (the optional extra)
        except ImportError as exc:
            raise InvalidRequestError(INSTALL_HINT) from exc
        self._url = url
        self._key = redis_key(api_key)
        self._cap = (
            None
            if requests_per_second is None
            else check_interval(requests_per_second, "requests_per_second", low=0.001, high=1e6)
        )
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._local = (
            local
            if local is not None
            else AdaptiveRateLimiter(requests_per_second=requests_per_second, clock=self._clock)
        )
        self._redis: Redis | None = None
        self._allow_unshared = allow_unshared
        self._reached = False  # Redis answered once: from then on, an outage falls back
        # Bumped whenever Redis fails: a failure of a command sent on an
        # older connection pool (stale since) says nothing about Redis now.
        self._generation = 0
        self._scripts: dict[str, Any] = {}
        self._accepted = 0  # answers accepted since the last script call
        self._offset = 0.0  # Redis time minus our clock's, as of the last reply
        self._down_since: float | None = None  # our clock, while Redis is away
        self._rejoined = asyncio.Event()  # set when Redis is back after being away
        self._retry_at = -math.inf
        self._trying = False
        self._background: set[asyncio.Task[None]] = set()
        self._limited_turn = ""  # Redis time of the request of the last 429
        self._creates: deque[_Waiter] = deque()
        self._queries: deque[_Waiter] = deque()
        self._dispatcher: asyncio.Task[None] | None = None
        self.shared_limit: float | None = None
        """The provider's limit as last estimated from all processes' answers."""
        # What the last reply of Redis said (see _heard): how many processes
        # share the key, the shared learned rate ('' unset: the slow start),
        # and the limit learned, with when it was last seen.
        self._member = secrets.token_hex(8)
        self._members: int | None = None
        self._least_cap: float | None = None  # the smallest cap of those on the key
        self._least_cap_at = -math.inf  # when Redis last told it (our clock)
        self._rejoining = False  # away since the last acquire that Redis answered
        self._joined = False  # counted among the key's processes (it leaves as it closes)
        self._shared_rate: float | None = None
        self._known_limit: float | None = None
        self._known_at = -math.inf
        self._seed_due = False
        self._limited_when_away = 0
        self._members_when_away = 1  # the processes whose share the local limiter took
        # When this process sent requests on its own limiter (the last
        # second's worth), and whether its next acquire must count them.
        self._alone: deque[float] = deque()
        self._count_alone = False

    def __repr__(self) -> str:
        state = "away" if self._down_since is not None else "shared"
        return f"<RedisRateLimiter {_shown(self._url)!r} {state} cap={self._cap!r}>"

    @property
    def shared(self) -> bool:
        """False while Redis is away and the in-process limiter serves requests."""
        return self._down_since is None

    @property
    def local(self) -> AdaptiveRateLimiter:
        """The in-process limiter that serves requests while Redis is away."""
        return self._local

    # -- the protocol ------------------------------------------------------------

    async def acquire(
        self, kind: Literal["create", "query"], *, timeout: float | None = None
    ) -> float | None:
        """Wait for this request's slot in the shared schedule; None past ``timeout``."""
        clock = self._clock
        deadline = None if timeout is None else clock.time() + timeout
        if self._use_redis():
            future: asyncio.Future[float | _GoLocal | None] = (
                asyncio.get_running_loop().create_future()
            )
            waiter = _Waiter(future, kind, clock.time(), deadline)
            (self._creates if kind == "create" else self._queries).append(waiter)
            if self._dispatcher is None:
                self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())
            try:
                if timeout is not None:
                    # Behind other waiters the dispatcher cannot see this deadline.
                    await asyncio.wait({future}, timeout=max(0.0, timeout))
                    if not future.done():
                        future.cancel()
                        return None
                turn = await future
            except asyncio.CancelledError:
                future.cancel()  # the dispatcher skips it: no slot is spent on it
                raise
            if not isinstance(turn, _GoLocal):
                return turn
        local = await self._local_turn(kind, deadline)
        if local is not None and not isinstance(local, _GoLocal):
            self._alone.append(clock.time())
            self._sent_alone()  # drops those past the second: the deque stays short
            self._count_alone = True
        if isinstance(local, _GoLocal):  # Redis came back: a slot in the shared schedule
            return await self.acquire(
                kind, timeout=None if deadline is None else max(0.0, deadline - clock.time())
            )
        return local

    def record(self, turn: float, *, limited: bool) -> None:
        """Count an answer; a 429 asks Redis to re-estimate the shared limit."""
        self._local.record(turn, limited=limited)
        if not limited:
            # Answers to requests sent while Redis was away are not the
            # shared budget's: counted in, they would all land in the
            # rejoining second and make the limit look many times higher.
            if self.shared:
                self._accepted += 1
            return
        if not self.shared:
            return
        # The pause the client asks for next is this 429's (see _PAUSE).
        self._limited_turn = repr(turn + self._offset)
        self._in_background(self._cut(self._limited_turn))

    async def pause(self, seconds: float | None) -> None:
        """Hold every request of every process for ``seconds`` (None: decided by the rate)."""
        await self._local.pause(seconds)
        if not self._use_redis():
            return
        try:
            until, now = await self._run(
                _PAUSE,
                "" if seconds is None else repr(seconds),
                str(IDLE_TTL),
                self._limited_turn,
            )
        except _failures():
            return
        self._back()
        logger.info("rate limited: every process of this key pauses for %.2f s", until - now)

    async def aopen(self) -> None:
        """Check that Redis answers, before the first request (the client calls it as it opens).

        Raises:
            SharedBudgetError: Redis cannot be reached, and ``allow_unshared``
                is False. (With it, one WARNING, and requests go to the local
                limiter until Redis answers.)
        """
        if self._reached:
            return
        try:
            await self._eval(_PAUSED)
        except _failures() as exc:
            if self._background:  # the dropped pool is closed before anything else
                await asyncio.gather(*self._background, return_exceptions=True)
            if self._must_share():
                raise self._unreachable(exc) from exc
            return
        self._back()

    async def aclose(self) -> None:
        """Wait for pending reports to Redis and close its connections."""
        dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None:
            dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dispatcher
            for left_behind in [*self._creates, *self._queries]:
                self._give(left_behind, _GO_LOCAL)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._joined and self.shared:
            self._joined = False
            # Leave the key, so that its cap stops holding the others at once
            # (not ACTIVE_FOR later); Redis away, the entry just goes stale.
            # (Not through _eval: a failure here is no outage to report.)
            with contextlib.suppress(*_failures()):
                leave = self._connection().register_script(_LEAVE)
                await leave(keys=[self._key], args=[self._member, repr(ACTIVE_FOR)])
        connection, self._redis = self._redis, None
        self._scripts.clear()
        if connection is not None:
            await connection.aclose()

    # -- inside ----------------------------------------------------------------------

    def _next_waiter(self, now: float) -> _Waiter | None:
        """The waiter the next slot goes to (creates first; see the module docstring)."""
        creates, queries = self._creates, self._queries
        while creates and creates[0].future.done():
            creates.popleft()
        while queries and queries[0].future.done():
            queries.popleft()
        if queries and (not creates or now - queries[0].since >= QUERY_PATIENCE):
            return queries[0]
        return creates[0] if creates else None

    def _give(self, waiter: _Waiter, turn: float | _GoLocal | None) -> None:
        (self._creates if waiter.kind == "create" else self._queries).remove(waiter)
        if not waiter.future.done():
            waiter.future.set_result(turn)

    async def _dispatch(self) -> None:
        """Ask Redis for one slot at a time, for the waiter first in line.

        One slot at a time per process keeps the shared schedule at most a
        slot per process ahead of now, so a rate that changes (a 429, a
        climb) applies to the next request of every process at once.
        """
        clock = self._clock
        me = asyncio.current_task()
        try:
            while (waiter := self._next_waiter(clock.time())) is not None:
                if self._down_since is not None and not self._trying:
                    for gone in [*self._creates, *self._queries]:
                        self._give(gone, _GO_LOCAL)
                    break
                left = None if waiter.deadline is None else waiter.deadline - clock.time()
                if left is not None and left <= 0:
                    self._give(waiter, None)
                    continue
                accepted, self._accepted = self._accepted, 0
                alone = self._sent_alone() if self._count_alone else 0
                kept, kept_for = self._cap_to_keep()
                try:
                    delay, now = self._heard(
                        await self._eval(
                            _ACQUIRE,
                            waiter.kind,
                            "" if self._cap is None else repr(self._cap),
                            "" if left is None else repr(left),
                            str(accepted),
                            str(IDLE_TTL),
                            self._member,
                            repr(ACTIVE_FOR),
                            str(alone),
                            kept,
                            kept_for,
                        )
                    )
                    self._back()
                    self._count_alone = False
                    self._rejoining = False
                    if self._seed_due:
                        await self._seed()
                    if delay < 0:
                        self._give(waiter, None)
                        continue
                    if delay > 0:
                        await clock.sleep(delay)
                        # Another process may have met a 429 meanwhile.
                        paused, now = await self._run(_PAUSED)
                        if paused > now:
                            continue
                except _failures() as exc:
                    if self._must_share():
                        self._refuse_all(exc)
                        break
                    if self.shared:  # else they are not the shared budget's (see record)
                        self._accepted += accepted
                    continue
                # The slot goes to whoever is first in line now.
                first = self._next_waiter(clock.time())
                if first is not None:
                    self._give(first, self._turn(now))
        finally:
            if self._dispatcher is me:
                self._dispatcher = None
                # Stopped early (closed): nobody is left waiting for a slot.
                for left_behind in [*self._creates, *self._queries]:
                    self._give(left_behind, _GO_LOCAL)

    async def _local_turn(
        self, kind: RequestKind, deadline: float | None
    ) -> float | _GoLocal | None:
        """A turn from the local limiter, or ``_GO_LOCAL`` if Redis comes back first.

        A request queued locally while Redis was away goes back to the
        shared schedule when Redis returns: served on by the local limiter,
        the requests queued in every process would go out at the local
        rates on top of the shared one.
        """
        left = None if deadline is None else deadline - self._clock.time()
        turn = asyncio.ensure_future(self._local.acquire(kind, timeout=left))
        back = asyncio.ensure_future(self._rejoined.wait())
        try:
            await asyncio.wait({turn, back}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            back.cancel()
            if not turn.done():
                turn.cancel()  # the local limiter spends no turn on it
                await asyncio.wait({turn})
        if turn.cancelled():
            return _GO_LOCAL
        return turn.result()

    def _in_background(self, job: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(job)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _turn(self, redis_now: float) -> float:
        """A token for :meth:`record`: our clock's time of the turn."""
        local_now = self._clock.time()
        self._offset = redis_now - local_now
        return local_now

    def _connection(self) -> Redis:
        if self._redis is None:
            from redis.asyncio import Redis  # noqa: PLC0415 (the optional extra)

            self._redis = Redis.from_url(
                self._url,
                socket_timeout=SOCKET_TIMEOUT,
                socket_connect_timeout=SOCKET_TIMEOUT,
                # Retrying belongs to this class: it falls back instead.
                retry_on_timeout=False,
            )
        return self._redis

    async def _eval(self, script: str, *args: str) -> Any:
        """Run ``script`` on the hash; a failure marks Redis away and is raised."""
        connection, generation = self._connection(), self._generation
        registered = self._scripts.get(script)
        if registered is None:
            # EVALSHA, falling back to EVAL once per connection pool.
            registered = self._scripts[script] = connection.register_script(script)
        try:
            return await registered(keys=[self._key], args=list(args))
        except _failures() as exc:
            self._went_away(exc, generation)
            raise

    async def _run(self, script: str, *args: str) -> tuple[float, float]:
        reply = await self._eval(script, *args)
        first, second = (float(item) for item in reply)
        return first, second

    def _heard(self, reply: Any) -> tuple[float, float]:
        """Note what an acquire's reply says of the shared state; its delay and Redis time."""
        delay, now, members = (float(item) for item in reply[:3])
        rate, limit, least_cap = (float(item) if item else None for item in reply[3:6])
        self._members = max(1, int(members))
        self._shared_rate = rate
        self._least_cap, self._least_cap_at = least_cap, self._clock.time()
        self._joined = True
        if limit is not None:
            self._known_limit, self._known_at = limit, self._clock.time()
        elif self._known_limit is not None and self._clock.time() - self._known_at < IDLE_TTL:
            # The hash lost what was learned (Redis restarted empty) while
            # this process still knows it: put it back before the slow start
            # runs the processes far past the provider's limit.
            self._seed_due = True
        return delay, now

    async def _seed(self) -> None:
        """Put the limit this process knows back into a hash that lost it (never above it)."""
        self._seed_due = False
        limit = self._known_limit
        if limit is None:
            return
        learned = self._local.provider_limit
        if self._local.limited > self._limited_when_away and learned is not None:
            # 429s while Redis was away taught this process its share anew:
            # scaled back to the whole key by the processes it was a share
            # of. (Not by those active now: a hash restarted empty knows
            # only the processes that rejoined so far, often this one.)
            limit = min(limit, learned * self._members_when_away)
        (seeded,) = await self._eval(_SEED, repr(limit), repr(BACKOFF * limit), str(IDLE_TTL))
        self._known_limit, self._known_at = float(seeded), self._clock.time()
        logger.info(
            "the shared rate limit at %s had lost the learned limit: %.3g requests/s put back",
            _shown(self._url),
            float(seeded),
        )

    def _cap_to_keep(self) -> tuple[str, str]:
        """The smallest cap heard on the key and its age, for a rejoining acquire ('' if none).

        A hash restarted empty knows only the caps of the processes back so
        far: the one with the smallest may come back last (see _ACQUIRE).
        """
        least = self._least_cap
        if not self._rejoining or least is None or (self._cap is not None and self._cap <= least):
            return "", ""
        return repr(least), repr(max(0.0, self._clock.time() - self._least_cap_at))

    def _sent_alone(self) -> int:
        """How many requests this process sent on its own limiter in the last second."""
        alone, since = self._alone, self._clock.time() - 1.0
        while alone and alone[0] < since:
            alone.popleft()
        return len(alone)

    def _hand_over(self) -> None:
        """Start the local limiter at this process's share of the shared budget.

        Every process that shared the key falls back at once, each on its
        own limiter: each takes the budget divided by the processes that
        were active on the key, so that together they keep to it.
        """
        members = self._members
        self._limited_when_away = self._local.limited
        self._members_when_away = members or 1
        if members is None:
            return  # never heard from Redis: nothing known to share
        shared_rate = self._shared_rate
        rate = (
            None
            if shared_rate is not None and shared_rate <= 0
            else (SLOW_START_RATE if shared_rate is None else shared_rate) / members
        )
        limit = self._known_limit
        # The smallest cap on the key held every process, this one too: a
        # share of this process's own cap would overrun it.
        caps = [cap for cap in (self._cap, self._least_cap) if cap is not None]
        self._local.take_over(
            rate=rate,
            limit=None if limit is None else limit / members,
            cap=min(caps) / members if caps else None,
        )

    async def _cut(self, turn: str) -> None:
        accepted, self._accepted = self._accepted, 0
        try:
            reply = await self._eval(_CUT, turn, str(accepted), str(IDLE_TTL))
        except _failures():
            return
        if reply:
            limit, rate = (float(item) for item in reply)
            self.shared_limit = limit
            logger.info(
                "rate limited: the provider's limit for this key looks like %.3g requests/s "
                "(all processes); sending %.3g/s",
                limit,
                rate,
            )

    def _must_share(self) -> bool:
        """Whether a failure is the user's to know of: Redis never answered, and no fallback."""
        return not self._reached and not self._allow_unshared

    def _unreachable(self, exc: BaseException) -> SharedBudgetError:
        from banana_async.errors import SharedBudgetError  # noqa: PLC0415 (kept light)

        shown = _shown(self._url)
        password = _password_trouble(self._url, exc)
        if password is not None:
            return SharedBudgetError(
                f"the shared rate limit cannot be used: {password} (rate_limit_url, "
                "$BANANA_RATE_LIMIT_URL; a URL on the command line shows its password to "
                "every user of the machine)",
                url=shown,
            )
        return SharedBudgetError(
            f"the shared rate limit at {shown} cannot be reached ({type(exc).__name__}: "
            f"{exc}): check the URL (rate_limit_url, --rate-limit-url, $BANANA_RATE_LIMIT_URL), or "
            "allow running on this process's own limiter with allow_unshared=True "
            "(--allow-unshared)",
            url=shown,
        )

    def _refuse_all(self, exc: BaseException) -> None:
        """Fail every waiting request: the budget they were to share cannot be reached."""
        for waiter in [*self._creates, *self._queries]:
            (self._creates if waiter.kind == "create" else self._queries).remove(waiter)
            if not waiter.future.done():
                waiter.future.set_exception(self._unreachable(exc))

    def _use_redis(self) -> bool:
        """Whether to ask Redis: it is up, or it is time for one request to try again."""
        if self._down_since is None:
            return True
        if self._trying or self._clock.time() < self._retry_at:
            return False
        self._trying = True
        return True

    def _went_away(self, exc: BaseException, generation: int) -> None:
        if generation != self._generation:
            return  # sent on a pool dropped since: nothing new
        self._generation += 1
        # A fresh pool for the next try: the old one's connections are dead.
        old, self._redis = self._redis, None
        self._scripts.clear()
        if old is not None:
            self._in_background(_close_quietly(old))
        self._trying = False
        if self._must_share():
            return  # not a fallback: the caller raises SharedBudgetError
        self._retry_at = self._clock.time() + RETRY_EVERY
        if self._down_since is None:
            self._down_since = self._clock.time()
            self._rejoined = asyncio.Event()
            self._rejoining = True
            self._hand_over()
            logger.warning(
                "the shared rate limit at %s is unreachable (%s): this process goes on "
                "with its own limiter and tries again every %g s",
                _shown(self._url),
                _password_trouble(self._url, exc) or type(exc).__name__,
                RETRY_EVERY,
            )

    def _back(self) -> None:
        self._trying = False
        self._reached = True
        if self._down_since is not None:
            self._down_since = None
            self._rejoined.set()
            logger.info("the shared rate limit at %s is back: using it again", _shown(self._url))
