"""Prometheus metrics: one ``Metrics`` per app, exposed on ``GET /metrics``.

Each app owns its ``CollectorRegistry`` (never prometheus-client's global one), so
several apps in one process, as in the tests, never share or collide.

The protocol code does not import prometheus: the payer (and the quote model) keep
plain ``int`` counters, and ``watch_*`` registers them here. ``sync()`` turns their
growth into counter increments before every scrape, and in multiprocess mode
(``--workers``) also after every request, since there only real metric objects, written
to shared files, reach the other workers' scrapes.

The hot path pays only for what a scrape cannot compute: the request counter and the two
latency histograms. Gauges of state that exists anyway (admission slots, open streams,
client connections) and the relayed bytes are read when scraped, in one process; only in
multiprocess mode are they written as they change (a profile of the free relay put the
per-request gauge writes, locks included, and the per-request syncs at ~15% of the
proxy's own instructions).

With ``--workers N`` the supervisor gives every worker the same
``PROMETHEUS_MULTIPROC_DIR``: values then live in small shared-memory files and any
worker's ``/metrics`` reports the sum over all of them, so a scrape that lands on a
random worker still sees monotonic counters.

No label ever carries request content, a header or key material: labels are route
templates, status codes and the proxy's own error codes, all bounded sets.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from blockrun_proxy.exchange import Exchange

PREFIX = "blockrun_proxy"
# How --workers' values of one gauge combine (prometheus-client's multiprocess modes).
GaugeMode = Literal["livesum", "livemin", "livemax", "livemostrecent"]
# Proxy overhead is milliseconds; LLM calls take seconds to minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class AdmissionState(Protocol):
    """What the admission gate shows (limits.Admission)."""

    max_concurrent: int
    active: int

    @property
    def queued(self) -> int: ...


OnAdmissionChange = Callable[[int, int], None]


class BalanceReader(Protocol):
    """What the wallet's balance watcher shows (wallet/watcher.py BalanceWatcher)."""

    low: bool
    failures: int

    @property
    def latest_atomic(self) -> int | None: ...

    def age(self) -> float | None: ...


class QuoteStats(Protocol):
    """What the quote model counts (plain ints), exported as ``*_quote_*_total``."""

    hits: int
    misses: int
    overpaid_atomic: int


@dataclass(slots=True)
class _Synced:
    """A counter that follows a plain int owned by someone else."""

    counter: Counter
    read: Callable[[], int | None]
    last: int = 0

    def sync(self) -> None:
        value = self.read()
        if value is None:
            return
        if value > self.last:
            self.counter.inc(value - self.last)
        # A smaller value means the source was replaced; follow it from here.
        self.last = value


class Metrics:
    def __init__(self, *, multiprocess_dir: str | None = None) -> None:
        self._multiprocess_dir = multiprocess_dir
        # Written as they change only where scrapes read other processes' files.
        self.multiprocess = multiprocess_dir is not None
        self._open_streams = 0
        self._relayed_bytes = 0
        self.registry = CollectorRegistry()
        self._synced: list[_Synced] = []
        # Labelled children by label values: ``labels()`` validates and locks on every
        # call, and the label sets here are small and bounded (routes x statuses).
        self._request_children: dict[tuple[str, int], Counter] = {}
        self._route_children: dict[str, tuple[Histogram, Histogram]] = {}
        self.requests = self._counter(
            "requests",
            "Requests answered, by route and HTTP status (499: the client hung up first).",
            ("route", "status"),
        )
        self.latency = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time from request arrival to the end of the response, by route.",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttfb = Histogram(
            f"{PREFIX}_time_to_first_byte_seconds",
            "Time from request arrival to the first relayed body byte, by route.",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.open_streams = self._gauge("open_streams", "Responses being relayed right now.")
        self.upstream_inflight = self._gauge(
            "upstream_inflight", "Calls (any route) holding an admission slot."
        )
        self.admission_queue = self._gauge(
            "admission_queue", "Calls (any route) waiting for an admission slot."
        )
        self.max_concurrent = self._gauge(
            "max_concurrent", "The admission limit (summed over --workers)."
        )
        self.relayed_bytes = self._counter(
            "relayed_bytes", "Upstream response body bytes relayed to clients."
        )
        self.payments_sent = self._counter(
            "payments_sent",
            "Paid calls whose payment may have reached the gateway (answered or not), one "
            "per call however often it was re-signed or replayed. Signatures that never "
            "left the proxy are not counted.",
        )
        self.sent_micro_usdc = self._counter(
            "sent_micro_usdc",
            "USDC those calls may have cost, in atomic units (1e-6 USDC): per call, the "
            "largest amount sent (all of a call's authorizations share one nonce, so at "
            "most one can settle).",
        )
        self.payments_settled = self._counter(
            "payments_settled", "Paid calls the gateway accepted and answered."
        )
        self.settled_micro_usdc = self._counter(
            "settled_micro_usdc",
            "What the accepted calls cost, in atomic units (1e-6 USDC): the signed amount "
            "(exact), the settled amount up to the signed ceiling (upto), never a different "
            "amount the gateway claims (see gateway_anomalies).",
        )
        self.upto_fallbacks = self._counter(
            "upto_fallbacks",
            "Calls paid exact under --scheme auto because the Permit2 allowance could not take "
            "the upto ceiling (short, busy with a permit, or unreadable).",
        )
        self.gateway_anomalies = self._counter(
            "gateway_anomalies",
            "Gateway answers that cannot be true, by kind: settled_above_signed, "
            "settled_below_signed (a settlement report claiming another amount than the "
            "exact one signed). Logged as warnings with the request id; never a cost.",
            ("kind",),
        )
        self.refusals = self._counter(
            "refusals",
            "Requests the proxy answered with its own error (policy, overload, draining, "
            "bad input), by reason.",
            ("reason",),
        )
        self.upstream_errors = self._counter(
            "upstream_errors",
            "Gateway failures seen by clients (unreachable, timeout, error status, broken "
            "stream), by kind.",
            ("kind",),
        )
        self.payment_refusals = self._counter(
            "payment_refusals",
            "Signed payments the gateway refused (not used, or not settled), by the reason it "
            "gave: a known x402 reason code, 'other' or 'unspecified'.",
            ("reason",),
        )
        self._refusal_sources: list[Callable[[], Mapping[str, int] | None]] = []
        self._refusals_seen: dict[str, int] = {}
        self.log_lines_dropped = self._counter(
            "log_lines_dropped", "Log lines dropped because the log writer fell behind."
        )
        self.client_connections = self._gauge("client_connections", "Client connections open now.")
        self.connections_refused = self._counter(
            "connections_refused",
            "Client connections closed at once because --max-connections were open.",
        )
        self.connections_timed_out = self._counter(
            "connections_timed_out",
            "Client connections closed because their request headers were not complete "
            "within --headers-timeout.",
        )
        self._gauge_sources: list[tuple[Gauge, Callable[[], float | None]]] = []
        self.ledger_records_dropped = self._counter(
            "ledger_records_dropped",
            "Spend ledger records dropped because the ledger writer fell behind or failed.",
        )
        if not self.multiprocess:
            self.open_streams.set_function(lambda: self._open_streams)
            self.watch(self.relayed_bytes, lambda: self._relayed_bytes)

    # ----------------------------------------------------------------- sources

    def watch_payer(self, payer: Any) -> None:
        """Follow ``payer.payments_sent``, ``payer.sent_atomic``, ``payer.upto_fallbacks``
        (plain ints) and
        ``payer.anomalies`` (a dict of plain ints by kind, a fixed set of keys)."""
        self.watch(self.payments_sent, lambda: getattr(payer, "payments_sent", None))
        self.watch(self.sent_micro_usdc, lambda: getattr(payer, "sent_atomic", None))
        self.watch(self.upto_fallbacks, lambda: getattr(payer, "upto_fallbacks", None))
        anomalies = getattr(payer, "anomalies", None)
        if isinstance(anomalies, dict):
            for kind in anomalies:
                self.watch(self.gateway_anomalies.labels(kind), _reader(anomalies, kind))

    def watch_quotes(self, stats: Callable[[], QuoteStats | None]) -> None:
        """Export the quote model's hit/miss counters.

        The hook for the quote model: ``metrics.watch_quotes(lambda: quotes.stats)`` in
        ``create_app``. The series exist only once a quote model is watched.
        """
        hits = self._counter("quote_hits", "Paid calls signed up front from a cached quote.")
        misses = self._counter("quote_misses", "Paid calls that needed a 402 round trip.")
        refused = self._counter(
            "quote_refused", "Payments signed up front that the gateway refused as not used."
        )
        overpaid = self._counter(
            "quote_overpaid_micro_usdc",
            "USDC signed above the gateway's price by quoted calls, in atomic units.",
        )
        self.watch(hits, lambda: _field(stats(), "hits"))
        # The quote book's "misses" are refused up-front payments; every call that went
        # probe-first (cold, stale, or after a refusal) is what "miss" means here.
        self.watch(misses, lambda: _field(stats(), "probed"))
        self.watch(refused, lambda: _field(stats(), "misses"))
        self.watch(overpaid, lambda: _field(stats(), "overpaid_atomic"))

    def watch_quote_store(self, keeper: Any) -> None:
        """Follow the quote keeper's store counters (quotes/keeper.py QuoteKeeper)."""
        for field, name, doc in (
            (
                "entries_loaded",
                "quote_store_keys_loaded",
                "Price keys taken from the quote store (at start, and other replicas' since).",
            ),
            (
                "load_failures",
                "quote_store_load_failures",
                "Quote store loads that failed (at start: the replica started cold).",
            ),
            (
                "save_failures",
                "quote_store_save_failures",
                "Quote store saves that failed (what changed is offered again next time).",
            ),
        ):
            self.watch(self._counter(name, doc), _attribute_reader(keeper, field))

    def watch_payment_refusals(self, read: Callable[[], Mapping[str, int] | None]) -> None:
        """Follow a ``{reason label: count}`` mapping (the gateway's ``payment_refusals``);
        its labels are a bounded set, so they are safe as label values."""
        self._refusal_sources.append(read)

    def watch_connections(self, connections: Any) -> None:
        """Follow a ``ClientConnections``' plain ints (open, refused, timed_out)."""
        self.watch(self.connections_refused, lambda: connections.refused)
        self.watch(self.connections_timed_out, lambda: connections.timed_out)
        if self.multiprocess:
            self._gauge_sources.append((self.client_connections, lambda: connections.open))
        else:
            self.client_connections.set_function(lambda: connections.open)

    def watch_admission(self, admission: AdmissionState) -> OnAdmissionChange | None:
        """Export the admission gauges; returns the ``on_change`` hook the gate must call
        (None in one process: the gauges read ``admission`` when scraped)."""
        self.max_concurrent.set(admission.max_concurrent)
        if self.multiprocess:
            return self.admission_changed
        self.upstream_inflight.set_function(lambda: admission.active)
        self.admission_queue.set_function(lambda: admission.queued)
        return None

    def watch_budget_store(self, stats: Any) -> None:
        """Export the shared budget store's counters (budget_redis.BudgetStoreStats)."""
        for field, name, doc in (
            (
                "unavailable",
                "budget_store_unavailable",
                "Paid calls refused (503) because the shared budget store did not answer.",
            ),
            (
                "fail_open",
                "budget_fail_open",
                "Reservations granted without the shared budget store (--budget-fail-open).",
            ),
            (
                "settle_failed",
                "budget_settle_failures",
                "Commits/releases that never reached the budget store (counted in full).",
            ),
            (
                "settle_dropped",
                "budget_settle_dropped",
                "Commits/releases dropped because too many were pending (counted in full).",
            ),
        ):
            self.watch(self._counter(name, doc), _attribute_reader(stats, field))

    def watch_balance(self, watcher: BalanceReader) -> None:
        """Export the wallet's balance as the watcher last read it (``--rpc-url``). The
        series exist only then; NaN until the first good reading (unknown, not zero)."""
        balance = self._gauge(
            "wallet_balance_micro_usdc",
            "The wallet's USDC balance as last read, in atomic units (1e-6 USDC); NaN "
            "until the first reading.",
            mode="livemostrecent",
        )
        age = self._gauge(
            "wallet_balance_age_seconds",
            "Seconds since that reading (it grows while reads fail); NaN before the first.",
            mode="livemin",
        )
        low = self._gauge(
            "wallet_balance_low",
            "1 while the last reading is below --low-balance-usd, else 0.",
            mode="livemax",
        )
        failures = self._counter(
            "wallet_balance_read_failures", "Balance reads that failed (the RPC endpoint)."
        )
        self._gauge_sources += [
            (balance, lambda: watcher.latest_atomic),
            (age, watcher.age),
            (low, lambda: int(watcher.low)),
        ]
        self.watch(failures, lambda: watcher.failures)
        self.sync()

    def watch(self, counter: Counter, read: Callable[[], int | None]) -> None:
        """Make ``counter`` follow an int someone else increments."""
        synced = _Synced(counter, read)
        synced.sync()
        self._synced.append(synced)

    def sync(self) -> None:
        for synced in self._synced:
            synced.sync()
        for gauge, read in self._gauge_sources:
            value = read()
            gauge.set(math.nan if value is None else value)
        for source in self._refusal_sources:
            for label, count in (source() or {}).items():
                seen = self._refusals_seen.get(label, 0)
                if count > seen:
                    self.payment_refusals.labels(label).inc(count - seen)
                self._refusals_seen[label] = count

    # ----------------------------------------------------------------- events

    def admission_changed(self, active: int, queued: int) -> None:
        self.upstream_inflight.set(active)
        self.admission_queue.set(queued)

    def stream_opened(self) -> None:
        self._open_streams += 1
        if self.multiprocess:
            self.open_streams.inc()

    def stream_closed(self, relayed_bytes: int) -> None:
        self._open_streams -= 1
        self._relayed_bytes += relayed_bytes
        if self.multiprocess:
            self.open_streams.dec()
            self.relayed_bytes.inc(relayed_bytes)

    def settled(self, amount_atomic: int) -> None:
        self.payments_settled.inc()
        self.settled_micro_usdc.inc(amount_atomic)

    def observe(self, exchange: Exchange, *, now: float | None = None) -> None:
        """Count a finished request."""
        end = time.monotonic() if now is None else now
        route = exchange.route
        key = (route, exchange.status)
        requests = self._request_children.get(key)
        if requests is None:
            requests = self._request_children[key] = self.requests.labels(route, str(key[1]))
        requests.inc()
        timings = self._route_children.get(route)
        if timings is None:
            timings = self._route_children[route] = (
                self.latency.labels(route),
                self.ttfb.labels(route),
            )
        timings[0].observe(end - exchange.started)
        if exchange.first_byte_at is not None:
            timings[1].observe(exchange.first_byte_at - exchange.started)
        if exchange.refusal is not None:
            self.refusals.labels(exchange.refusal).inc()
        if exchange.upstream_error is not None:
            self.upstream_errors.labels(exchange.upstream_error).inc()
        if self.multiprocess:
            self.sync()

    # ----------------------------------------------------------------- exposition

    async def render(self) -> tuple[bytes, str]:
        """The text exposition and its content type."""
        self.sync()
        if self._multiprocess_dir is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        # Reading every worker's files is blocking I/O: keep it off the event loop.
        body = await asyncio.get_running_loop().run_in_executor(None, self._render_all_workers)
        return body, CONTENT_TYPE_LATEST

    def _render_all_workers(self) -> bytes:
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self._multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    # ----------------------------------------------------------------- helpers

    def _counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(f"{PREFIX}_{name}", doc, labels, registry=self.registry)

    def _gauge(self, name: str, doc: str, mode: GaugeMode = "livesum") -> Gauge:
        # livesum: with --workers, the sum over the workers still running (a wallet's
        # balance is not a sum: every worker reads the same one).
        return Gauge(f"{PREFIX}_{name}", doc, registry=self.registry, multiprocess_mode=mode)


def _reader(counts: dict[str, int], key: str) -> Callable[[], int | None]:
    return lambda: counts.get(key)


def _attribute_reader(stats: object, name: str) -> Callable[[], int | None]:
    return lambda: _field(stats, name)


def _field(stats: object | None, name: str) -> int | None:
    value = getattr(stats, name, None)
    return value if isinstance(value, int) else None
