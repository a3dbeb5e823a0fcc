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

The memory is per process, bounded (``MAX_JOBS``, oldest dropped first) and expiring
(``JOB_TTL_SECONDS``): a poll that lands on another process (``--workers``, replicas) or
after the expiry finds nothing, and is answered ``402 job_payment_unknown`` without
signing anything.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

import orjson

from blockrun_proxy.routes import upstream_path

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


def job_key(path: str) -> str:
    """One spelling per job: decoded, without the ``/api`` prefix or a query."""
    return upstream_path(unquote(path.split("?", 1)[0]))


def poll_url_of(body: bytes) -> str | None:
    """The ``poll_url`` of a 202 job answer, if it is one."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    url = data.get("poll_url") if isinstance(data, dict) else None
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
