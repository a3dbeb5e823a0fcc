"""The payment core, assembled once: ``open_core(settings)``.

Everything that talks to the gateway or decides to pay is built here, in one place, for
the proxy (``app.py`` holds the core under one key) and for the in-process LiteLLM
provider (``inprocess.py``) alike, so the two cannot drift apart again (they had: a
shared cookie jar, another pool size, no quote book, no request-id check):

- the upstream HTTP session (``upstream_session``): pool sized from the limits, no total
  timeout but an idle one, redirects never followed (``Gateway`` passes
  ``allow_redirects=False`` on every request), no cookies kept, no decompression (a byte
  pipe: the client's own Accept-Encoding is forwarded), header fields as large as a
  ``PAYMENT-REQUIRED`` may be, an egress proxy and CA bundle from the environment
  (egress.py);
- the fleet store (``--redis-url``: ``RedisLink``), the budget store (``budget_store``:
  Redis when the fleet shares one, else in memory), the EVM JSON-RPC client the upto
  scheme reads the Permit2 allowance through (``evm_rpc``), the payer (``payer``), the quote
  book (``quote_book``) and its keeper (the catalogue's prices; the book kept in the
  fleet's Redis or a file, ``quote_keeper``),
  the gateway, the models cache, the jobs' payments (``job_payments``: this process,
  and the fleet's Redis), and the spend
  ledger's writer (``Recorder``), which sees every finished request through
  ``PaymentCore.observers``.

Each is one small function so the next rail or store is a few lines here: a Solana or
API-key rail joins in ``payer``, another HTTP client replaces ``upstream_session``,
and anything else that must see every finished request is appended to ``observers``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

import aiohttp

from blockrun_proxy import egress
from blockrun_proxy.budget import BudgetStore, MemoryBudgetStore
from blockrun_proxy.budget_redis import RedisBudgetStore
from blockrun_proxy.config import Settings
from blockrun_proxy.evm_rpc import EvmRpc
from blockrun_proxy.exchange import Exchange
from blockrun_proxy.jobs import JOB_TTL_SECONDS, JobPayments
from blockrun_proxy.limits import Limits
from blockrun_proxy.models import ModelsCache
from blockrun_proxy.payer import Payer, payer_for
from blockrun_proxy.quote_store import QuoteStore, RedisQuoteStore
from blockrun_proxy.quotes import QuoteBook
from blockrun_proxy.quotes.keeper import QuoteKeeper
from blockrun_proxy.quotes.store import QuoteFile
from blockrun_proxy.redis_link import RedisLink
from blockrun_proxy.spend.ledger import open_ledger, replica_name
from blockrun_proxy.spend.recorder import Recorder
from blockrun_proxy.upstream import GATEWAY_MAX_FIELD_SIZE, Gateway
from blockrun_proxy.x402 import UPTO_SCHEME

USER_AGENT = "blockrun-proxy"
# Idle pooled connections to the gateway are closed after this (aiohttp's default is 15 s;
# a busy sidecar reuses them long before).
POOL_KEEPALIVE_SECONDS = 30.0
DNS_CACHE_SECONDS = 300
# Learned quotes in the fleet's Redis: what a replica learned is there within seconds,
# and what the others learned reaches it within half a minute (one small read when
# nothing changed). The file under --state-dir keeps the keeper's slower defaults.
REDIS_QUOTES_SAVE_DELAY = 2.0
REDIS_QUOTES_RELOAD = 30.0


@dataclass(slots=True)
class PaymentCore:
    """What the proxy and the in-process provider share: one per process (or per app)."""

    settings: Settings
    limits: Limits
    session: aiohttp.ClientSession
    budget: BudgetStore | None
    payer: Payer
    quotes: QuoteBook
    gateway: Gateway
    models: ModelsCache
    jobs: JobPayments
    link: RedisLink | None = None  # the fleet store, with --redis-url
    keeper: QuoteKeeper | None = None  # feeds the book the catalogue, saves it in state_dir
    recorder: Recorder | None = None  # the spend ledger's writer
    rpc: EvmRpc | None = None  # --rpc-url, when the payer signs upto (the allowance)
    # Told of every finished request (the app calls them after the access log): the spend
    # ledger's recorder, and whatever joins it. Must not block or raise.
    observers: list[Callable[[Exchange], None]] = field(default_factory=list)

    def gateway_for(self, api_url: str | None = None, wallet_key: str | None = None) -> Gateway:
        """Another gateway on the same session: another gateway URL or another wallet
        (the in-process provider's per-call ``api_base`` and ``api_key``), with the same
        policy, budget and rules. ValueError for settings that cannot work (a bad key,
        never echoed)."""
        settings = self.settings
        if api_url:
            settings = replace(settings, api_url=api_url)
        if wallet_key:
            settings = replace(settings, wallet_key=wallet_key)
        settings.check()
        the_payer = payer(settings, self.budget, self.rpc)
        return gateway(settings, self.session, the_payer, quote_book(settings))


@contextlib.asynccontextmanager
async def open_core(
    settings: Settings, *, limits: Limits | None = None, record_spend: bool = True
) -> AsyncIterator[PaymentCore]:
    """Build the core for ``settings``; everything it opened is closed on exit, the
    session first, then the spend ledger (what is queued is written), then the fleet
    store. ``record_spend``: keep the spend ledger (the proxy; not the in-process
    provider, which has no finished requests to record)."""
    limits = limits or Limits.from_settings(settings)
    link = RedisLink.from_settings(settings)
    budget = budget_store(settings, link)
    rpc = evm_rpc(settings)
    the_payer = payer(settings, budget, rpc)
    quotes = quote_book(settings)
    async with contextlib.AsyncExitStack() as stack:
        if link is not None:
            stack.push_async_callback(link.aclose)
        if rpc is not None:
            stack.push_async_callback(rpc.close)
        if isinstance(budget, RedisBudgetStore):
            stack.push_async_callback(budget.aclose)
        recorder = None
        if record_spend:
            recorder = Recorder(open_ledger(settings, link), replica=replica_name())
            recorder.start()
            stack.push_async_callback(recorder.aclose)
        session = await stack.enter_async_context(upstream_session(settings, limits))
        the_gateway = gateway(settings, session, the_payer, quotes)
        models = ModelsCache(the_gateway.get_models, settings.models_ttl_seconds)
        # After the session: closed (the book saved) before the session goes.
        keeper = quote_keeper(settings, quotes, models, link)
        await keeper.start()
        stack.push_async_callback(keeper.close)
        yield PaymentCore(
            settings=settings,
            limits=limits,
            session=session,
            budget=budget,
            payer=the_payer,
            quotes=quotes,
            gateway=the_gateway,
            models=models,
            jobs=job_payments(link),
            link=link,
            keeper=keeper,
            recorder=recorder,
            rpc=rpc,
            observers=[recorder.observe] if recorder is not None else [],
        )


def job_payments(link: RedisLink | None) -> JobPayments:
    """Where a job's submit payment waits for its polls: this process, and the fleet's
    Redis with ``--redis-url`` (a poll may land on any replica)."""
    if link is None:
        return JobPayments()
    from blockrun_proxy.jobs_redis import RedisJobPayments

    return JobPayments(shared=RedisJobPayments(link, ttl_seconds=JOB_TTL_SECONDS))


def budget_store(settings: Settings, link: RedisLink | None = None) -> BudgetStore | None:
    """The spend budget every rail reserves in (None: no budget): the fleet's, in Redis,
    with ``--redis-url``; else this process's own."""
    if settings.budget_atomic is None:
        return None
    if link is not None:
        return RedisBudgetStore(
            link,
            settings.budget_atomic,
            settings.budget_window_seconds,
            fail_open=settings.budget_fail_open,
        )
    return MemoryBudgetStore(settings.budget_atomic, settings.budget_window_seconds)


def evm_rpc(settings: Settings) -> EvmRpc | None:
    """The JSON-RPC client the upto scheme reads the wallet's Permit2 allowance through:
    with ``--rpc-url`` when upto may be signed (``--scheme upto|auto``), else None. Its
    session is its own (the gateway's carries the egress settings of the gateway's
    origin) and opens on the first read."""
    if not settings.rpc_url or UPTO_SCHEME not in settings.schemes:
        return None
    return EvmRpc(settings.rpc_url)


def payer(settings: Settings, budget: BudgetStore | None, rpc: EvmRpc | None = None) -> Payer:
    """The payer of the configured wallet, under the policy; the other rails (Solana, the
    API key) join here behind the same interface."""
    return payer_for(settings, budget=budget, rpc=rpc)


def quote_book(settings: Settings) -> QuoteBook:
    return QuoteBook(
        trust=settings.quote_trust,
        tolerance_atomic=settings.presign_tolerance_atomic,
        ttl_seconds=settings.quote_ttl_seconds,
        enabled=settings.presign,
    )


def quote_keeper(
    settings: Settings, quotes: QuoteBook, models: ModelsCache, link: RedisLink | None = None
) -> QuoteKeeper:
    """Feeds the book the catalogue's prices (through the models cache: the gateway
    rate-limits it) and keeps it in a store: the fleet's Redis with ``--redis-url`` (saved
    within seconds, others' picked up within half a minute: a new replica signs up front
    from its first call), else a file in ``--state-dir`` (across restarts, and between
    ``--workers`` processes), else nowhere."""

    async def fetch_catalogue() -> bytes:
        body, _ = await models.get()
        return body

    store: QuoteStore | None = None
    timing: dict[str, float] = {}
    if link is not None:
        store = RedisQuoteStore(link, settings.api_url)
        timing = {"save_delay": REDIS_QUOTES_SAVE_DELAY, "reload_interval": REDIS_QUOTES_RELOAD}
    elif settings.state_dir is not None:
        store = QuoteFile(settings.state_dir, settings.api_url)
    return QuoteKeeper(
        quotes, fetch_catalogue=fetch_catalogue, store=store, api_url=settings.api_url, **timing
    )


def gateway(
    settings: Settings, session: aiohttp.ClientSession, payer: Payer, quotes: QuoteBook | None
) -> Gateway:
    return Gateway(
        session,
        settings.api_url,
        payer,
        paid_replays=settings.paid_replays,
        probe_retries=settings.probe_retries,
        quotes=quotes,
        proxy=egress.proxy_for(settings, settings.api_url),
    )


def upstream_session(settings: Settings, limits: Limits) -> aiohttp.ClientSession:
    """The one HTTP session every gateway call goes through (use it with ``async with``)."""
    connector = aiohttp.TCPConnector(
        # Above --max-concurrent (limits.py): an admitted call never waits for a socket.
        limit=limits.pool_size,
        limit_per_host=0,
        ttl_dns_cache=DNS_CACHE_SECONDS,
        keepalive_timeout=POOL_KEEPALIVE_SECONDS,
        # SSL_CERT_FILE / SSL_CERT_DIR when set; else aiohttp's default verifying context.
        ssl=egress.ssl_context(settings) or True,
    )
    timeout = aiohttp.ClientTimeout(
        # Streams have no total limit (reasoning models think for minutes); the idle
        # limit between two reads is what ends a dead upstream.
        total=None,
        connect=settings.connect_timeout_seconds,
        sock_read=settings.idle_timeout_seconds,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,  # a byte pipe: the client decodes what it asked for
        skip_auto_headers=("Accept-Encoding",),  # forward the client's own, or none
        headers={"User-Agent": USER_AGENT},
        # The gateway sets no cookies the proxy should keep, and one jar shared by every
        # client of the proxy would leak one client's cookies to another's calls.
        cookie_jar=aiohttp.DummyCookieJar(),
        max_field_size=GATEWAY_MAX_FIELD_SIZE,
        # The egress proxy is decided per gateway from Settings (egress.py), never from
        # the environment at request time.
        trust_env=False,
    )
