"""The spend budget shared by every replica, held in Redis (``--redis-url``).

N proxies with ``--budget-usd 5`` sign at most $5 together over any rolling window, under
any interleaving: each reservation is ONE Lua script, run atomically by Redis, that prunes
the window, sums what is committed and held, and adds the new hold only if the sum stays
within the limit. Time is Redis's own clock (``TIME``), so replicas whose clocks disagree
still share one window.

What Redis holds (keys share one hash tag, so the script also runs on a cluster node):

- ``total``: committed + held atomic USDC in the window (kept by the script, so a
  reservation costs O(1) however busy the window was);
- ``buckets`` / ``bucket_index``: committed amounts summed per ``window / BUCKETS`` of
  time, as budget.SpendBudget does in memory: at most ``BUCKETS + 1`` entries however
  many calls. A bucket leaves only once its last instant is out of the window, so the sum
  can over-count by one bucket's width of spending, never under-count;
- ``holds`` / ``hold_amounts``: reservations neither committed nor released yet, by id;
- ``tombstones``: ids released before their reservation was seen (a reservation that
  timed out on our side and is released in the background may still arrive later over
  another connection: it must then hold nothing).

Held entries have a TTL, ``HOLD_SECONDS``: a hold not settled by then belonged to a proxy
that crashed or lost Redis mid-call. It may have sent the payment, so it is then counted
as committed at its full amount (never dropped: dropping it could let the fleet sign past
the budget), and it leaves with the window like any spend. A crashed replica can so cost
the fleet at most its in-flight reservations, and only until they leave the window. Every
key expires once the window and the hold TTL have passed without a write, and the script
prunes what left the window on every call: memory in Redis stays bounded.

Redis down or slow: every call is bounded (redis_link.py). ``reserve`` then fails closed
(``BudgetStoreUnavailable``, 503, nothing signed), or with ``--budget-fail-open`` reserves
from this process's own in-memory budget (the fleet may then sign up to N x the budget
while Redis is away; counted). ``commit`` and ``release`` never wait for Redis: they are
retried in the background, so a hung Redis never delays a stream that is already paid. A
settlement that never reaches Redis leaves the hold to its TTL: counted in full, the safe
way to be wrong.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
from dataclasses import dataclass

from blockrun_proxy.budget import (
    BUCKETS,
    BudgetUsage,
    MemoryBudgetStore,
    Reservation,
    budget_exceeded,
    check_budget_terms,
)
from blockrun_proxy.errors import BudgetStoreUnavailable
from blockrun_proxy.redis_link import RedisLink, RedisUnavailable

log = logging.getLogger(__name__)

# A reservation not committed or released within this many seconds is counted as spent
# (see the module docstring). Generous: a call commits when the gateway's answer headers
# arrive, and the gateway may think for minutes first (the proxy's idle limit is 300 s).
HOLD_SECONDS = 900.0
# Commits and releases in flight to Redis at once; past it they are dropped (and counted):
# the hold then counts in full until its TTL, which over-counts and never over-spends.
MAX_PENDING_SETTLEMENTS = 10_000
# Pauses between the attempts of a background commit or release (each attempt bounded by
# the link's timeout): a Redis restart of a few seconds loses no settlement.
SETTLE_DELAYS = (0.1, 0.5, 2.0, 5.0)
# Ids of reservations made under --budget-fail-open, without Redis.
LOCAL_ID_PREFIX = "local-"
# Work per script run is bounded too: at most this many expired holds or buckets are
# handled per call (the rest the next call), so one script never stalls Redis.
PRUNE_LIMIT = 1000

BUDGET_SCRIPT = """
local total_key, buckets, bucket_index, holds, hold_amounts, tombstones =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local op = ARGV[1]
local window_ms = tonumber(ARGV[2])
local width_ms = tonumber(ARGV[3])
local hold_ms = tonumber(ARGV[4])
local ttl_ms = tonumber(ARGV[5])
local limit_n = tonumber(ARGV[6])
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local horizon = now_ms - window_ms
local total = tonumber(redis.call('GET', total_key) or '0')
local changed = false
-- Numbers go to Redis as integer strings: Lua would write large ones as 1e+15.
local function int(n) return string.format('%d', n) end

-- Holds past their TTL: counted as committed, in full, in the bucket of their time.
local expired = redis.call('ZRANGEBYSCORE', holds, '-inf', int(now_ms - hold_ms),
  'WITHSCORES', 'LIMIT', 0, limit_n)
for i = 1, #expired, 2 do
  local id, at = expired[i], tonumber(expired[i + 1])
  local amount = tonumber(redis.call('HGET', hold_amounts, id) or '0')
  local b = int(math.floor(at / width_ms))
  redis.call('ZREM', holds, id)
  redis.call('HDEL', hold_amounts, id)
  redis.call('HINCRBY', buckets, b, int(amount))
  redis.call('ZADD', bucket_index, b, b)
  changed = true
end

-- Buckets wholly outside the window: bucket b spans [b*w, (b+1)*w), out once
-- (b+1)*w <= horizon.
local old = redis.call('ZRANGEBYSCORE', bucket_index, '-inf',
  int(math.floor(horizon / width_ms) - 1), 'LIMIT', 0, limit_n)
for _, b in ipairs(old) do
  total = total - tonumber(redis.call('HGET', buckets, b) or '0')
  redis.call('HDEL', buckets, b)
  redis.call('ZREM', bucket_index, b)
  changed = true
end
redis.call('ZREMRANGEBYSCORE', tombstones, '-inf', int(now_ms))

local granted = 1
if op == 'reserve' then
  local limit, amount, id = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9]
  if redis.call('ZSCORE', tombstones, id) or total + amount > limit then
    granted = 0
  elseif not redis.call('ZSCORE', holds, id) then
    redis.call('ZADD', holds, int(now_ms), id)
    redis.call('HSET', hold_amounts, id, int(amount))
    total = total + amount
    changed = true
  end
elseif op == 'commit' or op == 'release' then
  local id = ARGV[7]
  local at = redis.call('ZSCORE', holds, id)
  if at then
    local amount = tonumber(redis.call('HGET', hold_amounts, id) or '0')
    redis.call('ZREM', holds, id)
    redis.call('HDEL', hold_amounts, id)
    local spent = 0
    if op == 'commit' then
      spent = tonumber(ARGV[8])
      if spent < 0 or spent > amount then spent = amount end
      local b = int(math.floor(tonumber(at) / width_ms))
      redis.call('HINCRBY', buckets, b, int(spent))
      redis.call('ZADD', bucket_index, b, b)
    end
    total = total - amount + spent
    changed = true
  elseif op == 'release' then
    -- Released before its reservation arrived (or twice): refuse it if it comes later.
    redis.call('ZADD', tombstones, int(now_ms + hold_ms), id)
    changed = true
  end
end

if changed then
  redis.call('SET', total_key, int(total), 'PX', int(ttl_ms))
  for _, key in ipairs({buckets, bucket_index, holds, hold_amounts, tombstones}) do
    redis.call('PEXPIRE', key, int(ttl_ms))
  end
end
return {granted, int(total), int(now_ms)}
"""


@dataclass(slots=True)
class BudgetStoreStats:
    """Plain counters, exported by metrics.py."""

    reserved: int = 0  # holds granted by Redis
    refused: int = 0  # budget_exceeded
    unavailable: int = 0  # reservations refused because Redis did not answer (fail closed)
    fail_open: int = 0  # reservations granted without Redis (--budget-fail-open)
    settle_failed: int = 0  # commits/releases that never reached Redis (held in full)
    settle_dropped: int = 0  # commits/releases dropped: too many pending


class RedisBudgetStore:
    """``BudgetStore`` (budget.py) for a fleet: one budget in Redis for every replica."""

    def __init__(
        self,
        link: RedisLink,
        limit: int,
        window_seconds: float,
        *,
        fail_open: bool = False,
        hold_seconds: float = HOLD_SECONDS,
    ) -> None:
        check_budget_terms(limit, window_seconds)
        self.limit = limit
        self.window_seconds = window_seconds
        self.fail_open = fail_open
        self.stats = BudgetStoreStats()
        self._link = link
        window_ms = max(1, round(window_seconds * 1000))
        # Integer milliseconds keep the script's arithmetic exact.
        self._args = (
            window_ms,
            max(1, math.ceil(window_ms / BUCKETS)),
            min(window_ms, max(1, round(hold_seconds * 1000))),
            # Keys outlive the last write by the window and the hold TTL, then vanish.
            window_ms + round(hold_seconds * 1000) + 60_000,
            PRUNE_LIMIT,
        )
        # Named after the window: replicas configured with another window keep apart
        # (their buckets would not line up) instead of corrupting each other's sums.
        tag = "{" + link.key("budget", f"{window_ms}ms") + "}"
        self._keys = [
            f"{tag}:{name}"
            for name in ("total", "buckets", "bucket_index", "holds", "hold_amounts", "tombstones")
        ]
        self._script = link.script(BUDGET_SCRIPT)
        # Under --budget-fail-open, what this process signs while Redis is away.
        self._local = MemoryBudgetStore(limit, window_seconds)
        self._pending: set[asyncio.Task[None]] = set()
        # The last settlement queued per reservation: a later one for the same id waits
        # for it, so a commit and a release reach Redis in the order they were made
        # (two pooled connections would otherwise race, and a retry would reorder them).
        self._tails: dict[str, asyncio.Task[None]] = {}

    @property
    def link(self) -> RedisLink:
        return self._link

    # ------------------------------------------------------------- BudgetStore

    async def reserve(self, amount: int) -> Reservation:
        reservation_id = secrets.token_hex(8)
        try:
            granted, total, now_ms = await self._run("reserve", self.limit, amount, reservation_id)
        except RedisUnavailable:
            # The script may still run later (the request was sent, the answer is what
            # timed out): release the id, which also refuses it should it arrive late.
            self._settle("release", reservation_id, None)
            return await self._unavailable(amount)
        except asyncio.CancelledError:
            # The client hung up mid-reservation: whether or not Redis holds it, nothing
            # will be signed for it.
            self._settle("release", reservation_id, None)
            raise
        if not granted:
            self.stats.refused += 1
            raise budget_exceeded(self.limit, self.window_seconds, total, amount)
        self.stats.reserved += 1
        return Reservation(reservation_id, amount, now_ms / 1000)

    async def commit(self, reservation: Reservation, spent: int | None = None) -> None:
        """Counts; never waits for Redis (the relay goes on, Redis gets it in the background)."""
        if reservation.id.startswith(LOCAL_ID_PREFIX):
            await self._local.commit(_unprefixed(reservation), spent)
            return
        self._settle("commit", reservation.id, reservation.amount if spent is None else spent)

    async def release(self, reservation: Reservation) -> None:
        if reservation.id.startswith(LOCAL_ID_PREFIX):
            await self._local.release(_unprefixed(reservation))
            return
        self._settle("release", reservation.id, None)

    async def usage(self) -> BudgetUsage:
        try:
            _, total, _ = await self._run("usage")
        except RedisUnavailable as exc:
            raise BudgetStoreUnavailable(
                "the shared budget store (Redis) did not answer", headers={"Retry-After": "1"}
            ) from exc
        return BudgetUsage(self.limit, self.window_seconds, total)

    # ------------------------------------------------------------- lifecycle

    async def flush(self, timeout: float | None = None) -> None:
        """Wait for the background commits and releases (at most ``timeout`` seconds)."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout)

    async def aclose(self, timeout: float = 2.0) -> None:
        """Give pending settlements a bounded chance, then stop them (their holds expire)."""
        await self.flush(timeout)
        for task in list(self._pending):
            task.cancel()
        if self._pending:
            await asyncio.wait(set(self._pending))

    # ------------------------------------------------------------- internals

    async def _run(self, op: str, *args: int | str) -> tuple[int, int, int]:
        keys, script = self._keys, self._script
        reply = await self._link.call(
            lambda client: script(keys=keys, args=[op, *self._args, *args], client=client)
        )
        granted, total, now_ms = (int(x) for x in reply)
        return granted, total, now_ms

    async def _unavailable(self, amount: int) -> Reservation:
        if not self.fail_open:
            self.stats.unavailable += 1
            raise BudgetStoreUnavailable(
                "the shared budget store (Redis) did not answer, so nothing was signed; "
                "retry shortly (or run the proxy with --budget-fail-open)",
                headers={"Retry-After": "1"},
            )
        local = await self._local.reserve(amount)  # this process's own cap (402 past it)
        self.stats.fail_open += 1
        return Reservation(LOCAL_ID_PREFIX + local.id, local.amount, local.at)

    def _settle(self, op: str, reservation_id: str, spent: int | None) -> None:
        if len(self._pending) >= MAX_PENDING_SETTLEMENTS:
            self.stats.settle_dropped += 1
            return
        before = self._tails.get(reservation_id)
        task = asyncio.get_running_loop().create_task(
            self._settle_soon(op, reservation_id, spent, after=before)
        )
        self._pending.add(task)
        self._tails[reservation_id] = task
        task.add_done_callback(lambda done: self._settled(reservation_id, done))

    def _settled(self, reservation_id: str, task: asyncio.Task[None]) -> None:
        self._pending.discard(task)
        if self._tails.get(reservation_id) is task:
            del self._tails[reservation_id]

    async def _settle_soon(
        self,
        op: str,
        reservation_id: str,
        spent: int | None,
        *,
        after: asyncio.Task[None] | None = None,
    ) -> None:
        if after is not None:
            await asyncio.wait({after})  # its outcome is its own; only the order matters here
        args: tuple[int | str, ...] = (
            (reservation_id,) if spent is None else (reservation_id, spent)
        )
        for delay in (*SETTLE_DELAYS, None):
            try:
                await self._run(op, *args)
                return
            except RedisUnavailable:
                if delay is None:
                    break
                await asyncio.sleep(delay)
        self.stats.settle_failed += 1
        log.warning(
            "budget %s of reservation %s never reached Redis; it counts in full until it "
            "expires (%gs), then until it leaves the window",
            op,
            reservation_id,
            HOLD_SECONDS,
        )


def _unprefixed(reservation: Reservation) -> Reservation:
    """The local (fail-open) store's own reservation behind one of ours."""
    return Reservation(reservation.id[len(LOCAL_ID_PREFIX) :], reservation.amount, reservation.at)
