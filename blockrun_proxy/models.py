"""The /v1/models catalogue, cached: the gateway rate-limits it (about 100 an hour per IP).

One fetch at a time (callers arriving during a fetch wait for its result), a TTL,
and the last good answer served stale when the gateway is down or refuses.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from blockrun_proxy.errors import ProxyError, UpstreamError

Fetch = Callable[[], Awaitable[tuple[int, bytes]]]


class ModelsCache:
    def __init__(self, fetch: Fetch, ttl: float, *, clock: Callable[[], float] = time.monotonic):
        self._fetch = fetch
        self._ttl = ttl
        self._clock = clock
        self._body: bytes | None = None
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def get(self) -> tuple[bytes, str]:
        """The catalogue body and how it was served: ``fresh``, ``cached`` or ``stale``."""
        if self._is_fresh():
            return self._body_or_raise(), "cached"
        async with self._lock:
            if self._is_fresh():  # another caller refreshed it while we waited
                return self._body_or_raise(), "cached"
            try:
                status, body = await self._fetch()
            except ProxyError:
                if self._body is not None:
                    return self._body, "stale"
                raise
            if status == 200:
                self._body, self._fetched_at = body, self._clock()
                return body, "fresh"
            if self._body is not None:
                return self._body, "stale"
            raise UpstreamError(
                f"the gateway answered {status} for /v1/models", code="models_unavailable"
            )

    def _is_fresh(self) -> bool:
        return self._body is not None and self._clock() - self._fetched_at < self._ttl

    def _body_or_raise(self) -> bytes:
        assert self._body is not None
        return self._body
