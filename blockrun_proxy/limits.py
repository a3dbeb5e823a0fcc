"""Admission control: who may start an upstream call, and how every limit derives from one knob.

The knob, ``--max-concurrent``, is sized at start from the open-files limit when it is not
given (``auto_max_concurrent``): a sidecar should carry thousands of streams without flags,
and what bounds them is the descriptors (and the memory: about 22 KiB per held stream in
the bench, so the ceiling of 8,192 holds some 180 MiB).

``Admission`` lets at most ``max_concurrent`` calls (of any route) talk to the gateway at once.
Callers beyond that wait in a bounded FIFO for at most ``queue_timeout`` seconds; when
the queue is full, or the wait runs out, they get ``Overloaded`` (429 with
``Retry-After``) rather than an ever-growing pile of parked requests. Draining
(SIGTERM) refuses everyone new with ``ShuttingDown`` while the admitted finish.

Why not ``asyncio.Semaphore``: it has no queue bound, no queue-wait timeout and no
way to count waiters, and those three are what keep a burst of 10x the limit from
wedging the process. A slot freed by ``release`` is handed straight to the oldest
waiter, so a newcomer can never overtake the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from blockrun_proxy.config import Settings
from blockrun_proxy.errors import Overloaded, ShuttingDown

log = logging.getLogger(__name__)

# The models catalogue fetch is the only other user of the upstream pool (one at a
# time, single-flight), so an admitted chat call never waits for a pooled connection.
POOL_HEADROOM = 2
# How long an overloaded client should wait before trying again.
RETRY_AFTER_SECONDS = 1
MIN_BACKLOG = 1024
# Client connections besides those of admitted and queued calls: probes, scrapes, /v1/models.
CONNECTION_HEADROOM = 64
# Never fewer: a burst past a small --max-concurrent should get the proxy's own 429s, not
# refused connections. A thousand idle connections cost some 30 MiB and as many descriptors.
MIN_CONNECTIONS = 1024
# Descriptors the process needs besides calls and connections: logs, the listener, DNS,
# the fleet store, the RPC clients.
FD_MARGIN = 64
# What one slot of an unset --max-concurrent costs in descriptors: its call's gateway and
# client sockets, the client socket of one call queued for it (the queue is as long as
# the limit), and one idle keep-alive client connection.
FDS_PER_SLOT = 4
# The bounds of the automatic --max-concurrent. The ceiling keeps memory predictable where
# the open-files limit is huge (containers often get 1,048,576); the floor still serves
# something under a tiny limit (the fd warning at start then says what to raise).
MIN_AUTO_CONCURRENT = 16
MAX_AUTO_CONCURRENT = 8192


@dataclass(frozen=True, slots=True)
class Limits:
    """Every size that must agree with ``--max-concurrent``, computed in one place."""

    max_concurrent: int
    max_queue: int
    queue_timeout: float
    # TCPConnector(limit=...): >= max_concurrent, so admission is the only place anyone waits.
    pool_size: int
    # listen() backlog: room for a whole burst of connections to be accepted and answered
    # (served, queued or refused) instead of being dropped by the kernel.
    backlog: int
    # Open client connections per process; past it, new ones are refused at once. Twice the
    # calls that can be running or waiting (clients' idle pooled connections fit too), plus
    # headroom, and at least MIN_CONNECTIONS; when the limits are sized from the open-files
    # limit, no more than the descriptors the gateway sockets leave.
    max_connections: int
    # Where max_concurrent came from, for the line said at start.
    sized_from: str = "set by --max-concurrent"

    @classmethod
    def from_settings(cls, settings: Settings, *, open_files: int | None = None) -> Limits:
        """The limits of ``settings``. An unset ``max_concurrent`` is sized from
        ``open_files`` (default: this process's soft RLIMIT_NOFILE now, so call it after
        ``raise_fd_limit``); ``server`` does that once and fixes the result in the settings,
        so every later call agrees with the number it logged."""
        concurrent = settings.max_concurrent
        files: int | None = None
        sized_from = "set by --max-concurrent"
        if concurrent is None:
            files = open_files_limit() if open_files is None else open_files
            concurrent = auto_max_concurrent(files, settings.max_queue)
            sized_from = (
                f"sized from the open-files limit {files}"
                if files >= 0
                else "no open-files limit: the ceiling"
            )
        queue = concurrent if settings.max_queue is None else settings.max_queue
        pool_size = concurrent + POOL_HEADROOM
        connections = settings.max_connections or max(
            MIN_CONNECTIONS, 2 * (concurrent + queue) + CONNECTION_HEADROOM
        )
        if files is not None and files >= 0 and settings.max_connections is None:
            # What the gateway's sockets leave, but room for every admitted and queued call.
            connections = max(concurrent + queue, min(connections, files - pool_size - FD_MARGIN))
        return cls(
            max_concurrent=concurrent,
            max_queue=queue,
            queue_timeout=settings.queue_timeout_seconds,
            pool_size=pool_size,
            backlog=max(MIN_BACKLOG, 2 * (concurrent + queue)),
            max_connections=connections,
            sized_from=sized_from,
        )

    @property
    def fds_needed(self) -> int:
        """Descriptors for every client connection and gateway socket at once, plus the margin."""
        return self.max_connections + self.pool_size + FD_MARGIN


def auto_max_concurrent(open_files: int, max_queue: int | None = None) -> int:
    """The ``--max-concurrent`` for an open-files limit (negative: none or unknown).

    As many slots as the descriptors hold at FDS_PER_SLOT each (three with a ``max_queue``
    given, which is then counted apart), within [MIN_AUTO_CONCURRENT, MAX_AUTO_CONCURRENT]:
    20,000 files give 4,967; 1,048,576 the ceiling; 1,024 give 223.
    """
    if open_files < 0:
        return MAX_AUTO_CONCURRENT
    fixed = FD_MARGIN + POOL_HEADROOM + CONNECTION_HEADROOM
    if max_queue is None:
        fitting = (open_files - fixed) // FDS_PER_SLOT
    else:
        fitting = (open_files - fixed - max_queue) // (FDS_PER_SLOT - 1)
    return max(MIN_AUTO_CONCURRENT, min(MAX_AUTO_CONCURRENT, fitting))


def open_files_limit() -> int:
    """This process's soft RLIMIT_NOFILE; -1 when unlimited or unknown (not POSIX)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return -1
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return -1 if soft == resource.RLIM_INFINITY else soft


class _QueueTimeout(Exception):
    """Set on a waiter's future when its queue wait runs out."""


OnChange = Callable[[int, int], None]


class Admission:
    """Concurrency gate with a bounded FIFO wait queue and a draining switch.

    Use ``async with admission.slot(): ...`` around the upstream call and the pipe.
    Cancellation-safe: a caller cancelled while queued leaves the queue; one cancelled
    at the instant it was handed a slot passes the slot on.
    """

    def __init__(
        self,
        max_concurrent: int,
        max_queue: int,
        queue_timeout: float,
        *,
        on_change: OnChange | None = None,
    ) -> None:
        if max_concurrent < 1 or max_queue < 0 or queue_timeout <= 0:
            raise ValueError("need max_concurrent >= 1, max_queue >= 0, queue_timeout > 0")
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.active = 0
        # Requests of any route being handled now (the drain waits for them to finish).
        self.requests = 0
        self._no_requests: asyncio.Event | None = None  # made by the first idle() call
        self.draining = False
        self._waiters: deque[asyncio.Future[None]] = deque()
        # Told (active, queued) on every change; None when nobody needs pushing to.
        self.on_change = on_change

    @classmethod
    def from_limits(cls, limits: Limits, *, on_change: OnChange | None = None) -> Admission:
        return cls(
            limits.max_concurrent, limits.max_queue, limits.queue_timeout, on_change=on_change
        )

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def start_draining(self) -> None:
        """Refuse every new caller from now on; the admitted and the queued go on."""
        self.draining = True

    def request_started(self) -> None:
        self.requests += 1

    def request_finished(self) -> None:
        self.requests -= 1
        if not self.requests and self._no_requests is not None:
            self._no_requests.set()

    async def idle(self) -> None:
        """Return once no request is being handled (the drain waits for this)."""
        if self._no_requests is None:
            self._no_requests = asyncio.Event()
        while self.requests:
            self._no_requests.clear()
            await self._no_requests.wait()

    def slot(self) -> _Slot:
        """``async with admission.slot():`` holds one slot for the block."""
        return _Slot(self)

    async def acquire(self) -> None:
        if self.draining:
            raise ShuttingDown("the proxy is shutting down; send this request elsewhere")
        if self.active < self.max_concurrent and not self._waiters:
            self.active += 1
            self._changed()
            return
        if len(self._waiters) >= self.max_queue:
            raise self._overloaded(
                "proxy_overloaded",
                f"the proxy is at its limit of {self.max_concurrent} concurrent calls and "
                f"{self.max_queue} waiting; nothing was sent or paid",
            )
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        self._changed()
        timer = loop.call_later(self.queue_timeout, _expire, waiter)
        try:
            await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Handed a slot in the same loop turn as we were cancelled: pass it on.
                self.release()
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)  # O(queue), and the queue is bounded
                self._changed()
            if isinstance(exc, _QueueTimeout):
                raise self._overloaded(
                    "proxy_queue_timeout",
                    f"no free slot within {self.queue_timeout:g}s (limit "
                    f"{self.max_concurrent} concurrent calls); nothing was sent or paid",
                ) from None
            raise
        finally:
            timer.cancel()

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves to the waiter: ``active`` unchanged
                self._changed()
                return
        self.active -= 1
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self.active, len(self._waiters))

    def _overloaded(self, code: str, message: str) -> Overloaded:
        return Overloaded(message, code=code, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


class _Slot:
    """The context manager of ``Admission.slot``: a class, not ``asynccontextmanager``,
    because it runs on every chat call and a generator-based one costs an async
    generator, its frames and a wrapper object each time."""

    __slots__ = ("_admission",)

    def __init__(self, admission: Admission) -> None:
        self._admission = admission

    async def __aenter__(self) -> None:
        await self._admission.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self._admission.release()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(_QueueTimeout())


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft open-files limit to the hard one; returns (soft, hard) afterwards.

    Each relayed stream holds two sockets (client and gateway); container runtimes often
    start processes with a soft limit of 1024, which a few hundred streams exhaust.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return (-1, -1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            log.debug("could not raise RLIMIT_NOFILE from %d", soft)
    return soft, hard
