"""One Redis connection pool for the fleet stores: the shared budget, quotes and the ledger.

redis-py is imported here only, and only when ``--redis-url`` is set: a proxy without
Redis never pays for the import.

Every call is bounded by ``timeout`` as a whole (waiting for a pooled connection,
connecting, sending, reading), so a hung Redis costs a caller at most that long. redis-py's
own retries stay off: a retry loop inside a bounded call only hides where the time went,
and the callers know better (the budget fails closed, commits are retried in the
background). Every failure, whatever redis-py or the socket raised, becomes
``RedisUnavailable``, at this one boundary. A broken connection is dropped by redis-py and
the next call opens a new one, so the link reconnects on its own once Redis is back.

The link remembers whether its last call worked, for ``/readyz`` and the spend page, and
logs the transitions (down, back up) once each instead of once per failed call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from blockrun_proxy.config import Settings, redacted_url

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

log = logging.getLogger(__name__)

T = TypeVar("T")
# Connections per process. Reservations are one short script each, so a few dozen
# connections carry thousands of calls per second; past it callers wait (inside their
# timeout) instead of opening a socket per in-flight call.
MAX_CONNECTIONS = 32


class RedisUnavailable(Exception):
    """Redis did not answer in time, refused the connection, or answered with an error."""


class RedisLink:
    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        prefix: str,
        password: str | None = None,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        from redis.asyncio import BlockingConnectionPool, Redis
        from redis.exceptions import RedisError

        options: dict[str, Any] = {
            "max_connections": max_connections,
            "timeout": timeout,  # waiting for a free pooled connection
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
        }
        if password is not None:
            options["password"] = password
        pool = BlockingConnectionPool.from_url(url, **options)
        self.client: Redis = Redis(connection_pool=pool)
        # What a call may raise when Redis, not our code, is the problem.
        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)
        self.timeout = timeout
        self.prefix = prefix
        self.url = redacted_url(url)
        self.up: bool | None = None  # None until the first call
        self.down_since: float | None = None
        self.failures = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisLink | None:
        if settings.redis_url is None:
            return None
        return cls(
            settings.redis_url,
            timeout=settings.redis_timeout_seconds,
            prefix=settings.redis_prefix,
            password=settings.redis_password,
        )

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def script(self, source: str) -> AsyncScript:
        return self.client.register_script(source)

    async def call(self, operation: Callable[[Redis], Awaitable[T]]) -> T:
        """``operation(client)`` within the timeout; any failure is ``RedisUnavailable``."""
        try:
            result = await asyncio.wait_for(operation(self.client), self.timeout)
        except self._errors as exc:
            self._failed(exc)
            raise RedisUnavailable(f"{type(exc).__name__} talking to Redis at {self.url}") from exc
        if self.up is not True:
            if self.up is False:
                log.warning("Redis at %s answers again", self.url)
            self.up = True
            self.down_since = None
        return result

    def describe(self) -> str:
        """One phrase for /readyz and the spend page."""
        if self.up is None:
            return "redis: not used yet"
        if self.up:
            return "redis: ok"
        assert self.down_since is not None
        return f"redis: unreachable for {time.time() - self.down_since:.0f}s"

    async def aclose(self) -> None:
        await self.client.aclose()

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        if self.up is not False:
            # The exception type only: redis-py's messages can echo connection details
            # (the URL shown is the redacted one). A server error reply (say, a script
            # error or an ACL refusal) is worth reading, and names no secret.
            from redis.exceptions import ResponseError

            detail = str(exc) if isinstance(exc, ResponseError) else type(exc).__name__
            log.warning("Redis at %s is failing (%s)", self.url, detail)
            self.up = False
            self.down_since = time.time()
