"""Slow jobs (video, music, slow images): the submit's payment, remembered for its polls.

A paid submit answers ``202`` with a ``poll_url`` (docs/PROTOCOL.md section 9.6), and every
poll must carry a payment from the wallet that submitted the job. A job is one call
(section 5, rule 7), so its polls replay the submit's own signed ``PAYMENT-SIGNATURE``:
the proxy remembers it per job and never signs anew for a poll. The gateway settles a
job at most once, on the poll that sees it completed.

``poll_url`` is relative and starts with ``/api`` (``/api/v1/videos/generations/<id>``):
a client resolves it against the proxy, which answers ``/api/v1/...`` as ``/v1/...``, so
the body goes through unchanged. A ``poll_url`` naming the gateway's own origin would send
the client to the gateway directly, without the payment it cannot make: that one is
rewritten to the same path on the proxy (``rewrite_poll_url``). That rewrite is the one
place the proxy changes an answer's body.

Where the payments are kept (``JobPayments``, the core's ``jobs``):

- in this process's memory (``JobBook``): bounded (``MAX_JOBS``, oldest dropped first) and
  expiring (``JOB_TTL_SECONDS``);
- with ``--redis-url``, in Redis as well (jobs_redis.py, same TTL), so a poll that lands
  on another replica or ``--workers`` process finds it. The submit's ``202`` goes out
  once Redis has it (one bounded round trip), so a poll sent anywhere after it finds it.

A poll nobody holds a payment for (submitted through another process without Redis, or
expired) is answered ``402 job_payment_unknown`` without signing anything; one that
cannot be looked up because Redis does not answer gets ``503 job_store_unavailable``
(retry). Without Redis, ``--workers N`` shares nothing: the kernel hands each new
connection to any worker, so a poll reaches the submitting worker only on the submit's
own keep-alive connection or by chance (README, "Several cores").
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import orjson

from blockrun_proxy.errors import ProxyError, json_object
from blockrun_proxy.redis_link import RedisUnavailable
from blockrun_proxy.routes import upstream_path

if TYPE_CHECKING:
    from blockrun_proxy.jobs_redis import RedisJobPayments

log = logging.getLogger(__name__)

MAX_JOBS = 4096
# Longer than the authorization a submit signs can live (--max-auth caps it at 15 min):
# past that the gateway refuses it anyway, and a poll is answered without it.
JOB_TTL_SECONDS = 3600.0
# A 202 job answer is a small JSON object; anything larger is relayed unread.
MAX_JOB_ANSWER_BYTES = 64 * 1024


class JobBook:
    """Per job (its poll path), the payment header its submit was paid with."""

    def __init__(
        self,
        *,
        max_jobs: int = MAX_JOBS,
        ttl_seconds: float = JOB_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_jobs = max_jobs
        self._ttl = ttl_seconds
        self._clock = clock
        self._jobs: OrderedDict[str, tuple[float, str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._jobs)

    def remember(self, poll_path: str, payment_header: str) -> None:
        key = job_key(poll_path)
        self._jobs[key] = (self._clock() + self._ttl, payment_header)
        self._jobs.move_to_end(key)
        while len(self._jobs) > self._max_jobs:
            self._jobs.popitem(last=False)

    def payment_for(self, poll_path: str) -> str | None:
        key = job_key(poll_path)
        entry = self._jobs.get(key)
        if entry is None:
            return None
        expires, header = entry
        if self._clock() >= expires:
            del self._jobs[key]
            return None
        return header


class JobStoreUnavailable(ProxyError):
    """The job payments' shared store (Redis) did not answer: the poll cannot be paid now,
    and nothing was signed. Safe to retry."""

    status = 503
    type = "server_error"
    code = "job_store_unavailable"


class JobPayments:
    """The core's job payments: this process's ``JobBook``, and the fleet's Redis when
    there is one (``shared``)."""

    def __init__(self, local: JobBook | None = None, shared: RedisJobPayments | None = None):
        self.local = local or JobBook()
        self.shared = shared

    def __len__(self) -> int:
        return len(self.local)

    async def remember(self, poll_path: str, payment_header: str) -> None:
        """Keep the submit's payment for its polls. Never raises: the job is paid for and
        its ``202`` must reach the client; should Redis not take it, this process still
        answers the job's polls (logged, without the header)."""
        self.local.remember(poll_path, payment_header)
        if self.shared is None:
            return
        try:
            await self.shared.put(job_key(poll_path), payment_header)
        except RedisUnavailable as exc:
            log.warning("a job's payment is held by this process only: %s", exc)

    async def payment_for(self, poll_path: str) -> str | None:
        """The payment to replay on a poll, or None when nobody holds one.
        JobStoreUnavailable when the shared store cannot say."""
        header = self.local.payment_for(poll_path)
        if header is not None or self.shared is None:
            return header
        try:
            header = await self.shared.get(job_key(poll_path))
        except RedisUnavailable:
            raise JobStoreUnavailable(
                "this job's payment is kept in the shared store (Redis), which did not "
                "answer; nothing was signed, retry shortly",
                headers={"Retry-After": "1"},
            ) from None
        if header is not None:
            self.local.remember(poll_path, header)  # its next polls stay on this process
        return header


def job_key(path: str) -> str:
    """One spelling per job: decoded, without the ``/api`` prefix or a query."""
    return upstream_path(unquote(path.split("?", 1)[0]))


def poll_url_of(body: bytes) -> str | None:
    """The ``poll_url`` of a 202 job answer, if it is one."""
    data = json_object(body)
    url = data.get("poll_url") if data is not None else None
    return url if isinstance(url, str) and url else None


def poll_path(poll_url: str, gateway_origin: str) -> str | None:
    """The path (and query) a client polls at through the proxy, or None when the URL
    points somewhere else (another host's URL is passed on as it is, and not remembered)."""
    parts = urlsplit(poll_url)
    absolute = bool(parts.scheme or parts.netloc)
    if absolute and f"{parts.scheme}://{parts.netloc}".lower() != gateway_origin.lower():
        return None
    if not parts.path.startswith("/"):
        return None
    return parts.path + (f"?{parts.query}" if parts.query else "")


def rewrite_poll_url(body: bytes, poll_url: str, path: str) -> bytes:
    """``body`` with an absolute ``poll_url`` on the gateway's origin made relative (the
    same path, on the proxy); the body unchanged when it already is."""
    if poll_url == path:
        return body
    # Spliced where it stands when the gateway spelled it plainly: every other byte stays.
    spelled = orjson.dumps(poll_url)
    if body.count(spelled) == 1:
        return body.replace(spelled, orjson.dumps(path))
    data = orjson.loads(body)
    data["poll_url"] = path
    return orjson.dumps(data)
