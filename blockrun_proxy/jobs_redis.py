"""Job payments shared by every replica through Redis (``--redis-url``), so a job's poll
that lands on another replica (or another ``--workers`` process) replays the payment its
submit was made with (jobs.py).

The stored value is the submit's signed ``PAYMENT-SIGNATURE`` header: a bearer credential
for that one job. Whoever reads it from Redis can poll the job (fetch its result) and
present the payment for it, which settles at most once, for the amount already signed
for this job: it can pay for nothing else. It is therefore

- kept for a bounded time (``ttl_seconds``, SET with EX: Redis drops it itself);
- stored under a digest of the job's path, so the job ids are not in key names either
  (``SCAN``, ``MONITOR`` and slow logs show keys);
- never logged: failures are reported by the link with the exception type only
  (redis_link.py), and nothing here formats the value into a message.

Protect the Redis as you protect the budget and the ledger: a password, TLS
(``rediss://``), network policy (deploy/kubernetes/fleet does all three).
"""

from __future__ import annotations

import hashlib

from blockrun_proxy.redis_link import RedisLink

# A signed payment header is about a kilobyte; anything far larger is not ours.
MAX_HEADER_BYTES = 16 * 1024


class RedisJobPayments:
    def __init__(self, link: RedisLink, *, ttl_seconds: float) -> None:
        self._link = link
        self._ttl = max(1, int(ttl_seconds))

    def _key(self, job: str) -> str:
        digest = hashlib.sha256(job.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        return self._link.key("job", digest)

    async def put(self, job: str, header: str) -> None:
        """Keep ``header`` for ``job``; RedisUnavailable when Redis does not take it."""
        key, ttl = self._key(job), self._ttl
        await self._link.call(lambda client: client.set(key, header.encode(), ex=ttl))

    async def get(self, job: str) -> str | None:
        """The header kept for ``job``, or None; RedisUnavailable when Redis cannot say."""
        key = self._key(job)
        value = await self._link.call(lambda client: client.get(key))
        if not isinstance(value, bytes) or not value or len(value) > MAX_HEADER_BYTES:
            return None  # nothing, or not something this proxy wrote
        try:
            return value.decode("ascii")  # base64: anything else is not ours
        except UnicodeDecodeError:
            return None
