"""The payment core, assembled once: ``open_core(settings)``.

Everything that talks to the gateway or decides to pay is built here, in one place, for
the proxy (``app.py`` holds the core under one key) and for the in-process LiteLLM
provider (``inprocess.py``) alike, so the two cannot drift apart again (they had: a
shared cookie jar, another pool size, no quote book, no request-id check):

- the upstream HTTP client (``upstream_client``, ``--upstream-client``): the proxy's own
  HTTP/1.1 client (``h1``, the default: the cheaper relay) or aiohttp's session
  (``upstream_session``), built alike: pool sized from the limits, no total timeout but
  an idle one, redirects never followed (h1 never does; ``Gateway`` passes
  ``allow_redirects=False`` to aiohttp), no cookies kept, no decompression (a byte pipe:
  the client's own Accept-Encoding is forwarded), header fields as large as a
  ``PAYMENT-REQUIRED`` may be, an egress proxy and CA bundle from the environment
  (egress.py). Every gateway call goes through it, on every rail: the x402 gateway's
  (EVM and Solana payments alike) and the API host's (``ApiKeyGateway``, catalogue
  included). The chain RPCs are not gateway calls and keep small aiohttp sessions of
  their own (``EvmRpc``, ``BlockhashCache``): a few JSON-RPC posts a minute, not the
  relay path, and their URLs, timeouts and proxy rules are the RPCs', not the gateway's;
- the fleet store (``--redis-url``: ``RedisLink``), the budget store (``budget_store``:
  Redis when the fleet shares one, else in memory), the EVM JSON-RPC client the upto
  scheme reads the Permit2 allowance through (``evm_rpc``), the payer (``payer``), the quote
  book (``quote_book``) and its keeper (the catalogue's prices; the book kept in the
  fleet's Redis or a file, ``quote_keeper``),
  the gateway, the models cache, the jobs' payments (``job_payments``: this process,
  and the fleet's Redis), and the spend
  ledger's writer (``Recorder``), which sees every finished request through
  ``PaymentCore.observers``.

The rails (``rail_of``): with ``BLOCKRUN_API_KEY`` set (and ``--rail`` not ``wallet``)
the key wins, as in blockrun-llm: ``gateway`` builds an ``ApiKeyGateway`` on the API
host and nothing is signed. Otherwise the payer is ``rails.Rails``: the EVM wallet, and
the Solana one when Solana networks are allowed, with the ``BlockhashCache`` Solana
signing needs (``blockhash_cache``: built here, started by ``start_background`` once
the port is open, closed with the core). Every rail shares the one budget, quote book,
gateway rules and metrics.

Each is one small function so the next rail or store is a few lines here: another
HTTP client joins ``upstream_client``, and anything else that must see every
finished request is appended to ``observers``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, TypeGuard

import aiohttp

from blockrun_proxy import egress, h1
from blockrun_proxy.apikey import ApiKeyRail
from blockrun_proxy.budget import BudgetStore, MemoryBudgetStore
from blockrun_proxy.config import API_KEY_PREFIX, Settings
from blockrun_proxy.exchange import Exchange
from blockrun_proxy.jobs import JOB_TTL_SECONDS, JobPayments
from blockrun_proxy.limits import Limits
from blockrun_proxy.models import ModelsCache
from blockrun_proxy.payer import payer_for
from blockrun_proxy.quote_store import QuoteStore, RedisQuoteStore
from blockrun_proxy.quotes import QuoteBook
from blockrun_proxy.quotes.keeper import QuoteKeeper
from blockrun_proxy.quotes.store import QuoteFile
from blockrun_proxy.rails import BASE, SOLANA, Rails
from blockrun_proxy.redis_link import RedisLink
from blockrun_proxy.spend.ledger import open_ledger, replica_name
from blockrun_proxy.spend.recorder import Recorder
from blockrun_proxy.upstream import GATEWAY_MAX_FIELD_SIZE, Gateway, UpstreamClient
from blockrun_proxy.x402 import UPTO_SCHEME

if TYPE_CHECKING:
    # Each is imported where its option is known to be set (Solana networks, --redis-url,
    # --rpc-url with upto): startup is measured, and most proxies use none of them.
    from blockrun_proxy.blockhash import BlockhashCache
    from blockrun_proxy.budget_redis import RedisBudgetStore
    from blockrun_proxy.evm_rpc import EvmRpc

log = logging.getLogger(__name__)

USER_AGENT = "blockrun-proxy"
API_KEY_RAIL = "apikey"
# Idle pooled connections to the gateway are closed after this (aiohttp's default is 15 s;
# a busy sidecar reuses them long before).
POOL_KEEPALIVE_SECONDS = 30.0
DNS_CACHE_SECONDS = 300
# h1 bounds a whole answer head, aiohttp each header field: room for the largest field
# aiohttp takes (a PAYMENT-REQUIRED) and the gateway's other headers.
MAX_HEAD_BYTES = GATEWAY_MAX_FIELD_SIZE + 16 * 1024
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
    session: UpstreamClient  # the upstream HTTP client, of either kind
    budget: BudgetStore | None
    payer: Rails
    quotes: QuoteBook
    gateway: Gateway
    models: ModelsCache
    jobs: JobPayments
    link: RedisLink | None = None  # the fleet store, with --redis-url
    keeper: QuoteKeeper | None = None  # feeds the book the catalogue, saves it in state_dir
    recorder: Recorder | None = None  # the spend ledger's writer
    # Solana's recent blockhashes, when the Solana rail can sign.
    blockhashes: BlockhashCache | None = None
    rpc: EvmRpc | None = None  # --rpc-url, when the payer signs upto (the allowance)
    # Told of every finished request (the app calls them after the access log): the spend
    # ledger's recorder, and whatever joins it. Must not block or raise.
    observers: list[Callable[[Exchange], None]] = field(default_factory=list)

    @property
    def rail(self) -> str:
        """What calls are paid with: ``apikey``, ``base`` or ``solana`` (rail_of)."""
        return rail_of(self.settings)

    def start_background(self) -> None:
        """Start what refreshes in the background (Solana's blockhashes). The proxy calls it
        once its port is open, so it costs no startup time; idempotent."""
        if self.blockhashes is not None:
            self.blockhashes.start()

    def gateway_for(self, api_url: str | None = None, wallet_key: str | None = None) -> Gateway:
        """Another gateway on the same session: another gateway URL or another wallet
        (the in-process provider's per-call ``api_base`` and ``api_key``), with the same
        policy, budget and rules. A ``brk_`` key puts the call on the API-key rail, any
        other key on its wallet's (an explicit wallet wins over ``BLOCKRUN_API_KEY``, as in
        blockrun-llm). ValueError for settings that cannot work (a bad key, never echoed)."""
        settings = self.settings
        if api_url:
            settings = replace(settings, api_url=api_url, api_key_url=api_url)
        if wallet_key and wallet_key.strip().startswith(API_KEY_PREFIX):
            settings = replace(settings, api_key=wallet_key.strip(), rail="auto")
        elif wallet_key:
            settings = replace(settings, wallet_key=wallet_key, api_key=None)
        settings.check()
        the_payer = payer(settings, self.budget, self.rpc, self.blockhashes)
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
    blockhashes = blockhash_cache(settings)
    the_payer = payer(settings, budget, rpc, blockhashes)
    if blockhashes is not None and (the_payer.solana is None or not the_payer.solana.can_sign):
        blockhashes = None  # nothing will sign on Solana: never ask its RPC
    quotes = quote_book(settings)
    async with contextlib.AsyncExitStack() as stack:
        if link is not None:
            stack.push_async_callback(link.aclose)
        if blockhashes is not None:
            stack.push_async_callback(blockhashes.close)
        if rpc is not None:
            stack.push_async_callback(rpc.close)
        if shared_budget(budget):
            stack.push_async_callback(budget.aclose)
        recorder = None
        if record_spend:
            recorder = Recorder(open_ledger(settings, link), replica=replica_name())
            recorder.start()
            stack.push_async_callback(recorder.aclose)
        session = upstream_client(settings, limits)
        stack.push_async_callback(session.close)
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
            blockhashes=blockhashes,
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
        from blockrun_proxy.budget_redis import RedisBudgetStore  # --redis-url only: startup

        return RedisBudgetStore(
            link,
            settings.budget_atomic,
            settings.budget_window_seconds,
            fail_open=settings.budget_fail_open,
        )
    return MemoryBudgetStore(settings.budget_atomic, settings.budget_window_seconds)


def shared_budget(budget: BudgetStore | None) -> TypeGuard[RedisBudgetStore]:
    """Whether ``budget`` is the fleet's, in Redis. Its module is imported only with
    ``--redis-url`` (budget_store): when it was not, nothing can be one."""
    module = sys.modules.get("blockrun_proxy.budget_redis")
    return module is not None and isinstance(budget, module.RedisBudgetStore)


def rail_of(settings: Settings) -> str:
    """The rail calls are paid on: the API key when one is set (unless ``--rail wallet``),
    else the wallets, the one ``--chain`` names first."""
    if settings.api_key and settings.rail != "wallet":
        return API_KEY_RAIL
    return SOLANA if settings.chain == SOLANA else BASE


def evm_rpc(settings: Settings) -> EvmRpc | None:
    """The JSON-RPC client the upto scheme reads the wallet's Permit2 allowance through:
    with ``--rpc-url`` when upto may be signed (``--scheme upto|auto``), else None. Its
    session is its own (the gateway's carries the egress settings of the gateway's
    origin) and opens on the first read."""
    if not settings.rpc_url or UPTO_SCHEME not in settings.schemes:
        return None
    from blockrun_proxy.evm_rpc import EvmRpc  # upto with --rpc-url only: startup

    return EvmRpc(settings.rpc_url)


def blockhash_cache(settings: Settings) -> BlockhashCache | None:
    """Solana's recent blockhashes (from ``--solana-rpc-url``, through the egress proxy),
    when Solana networks are allowed; not started (``PaymentCore.start_background``)."""
    if not settings.solana_networks or rail_of(settings) == API_KEY_RAIL:
        return None
    from blockrun_proxy.blockhash import BlockhashCache  # Solana only: startup

    rpc = settings.solana_rpc
    return BlockhashCache(
        rpc, proxy=egress.proxy_for(settings, rpc), ssl=egress.ssl_context(settings) or True
    )


def payer(
    settings: Settings,
    budget: BudgetStore | None,
    rpc: EvmRpc | None = None,
    blockhashes: BlockhashCache | None = None,
) -> Rails:
    """The payers of the configured wallets, each under its rail's policy, sharing the
    budget and the anomaly counts: EVM always (``rpc`` for upto's allowance), Solana with
    a blockhash cache."""
    evm = payer_for(settings, budget=budget, rpc=rpc)
    solana = None
    if blockhashes is not None:
        # Imported here: a proxy paying only on Base never loads Solana's signing code.
        from blockrun_proxy.solana_payer import solana_payer_for

        solana = solana_payer_for(settings, blockhashes, budget, anomalies=evm.anomalies)
    return Rails(evm, solana, prefer=SOLANA if settings.chain == SOLANA else BASE)


def log_rail(settings: Settings, rails: Rails) -> None:
    """One line saying what calls will be paid with (addresses, never keys).

    Not part of ``open_core``: a wallet's address is a Keccak hash, and Keccak's import
    (pycryptodome through ctypes) is startup time. The proxy logs this once its port is
    open and signing is warmed up (server.py); the in-process provider once it opens."""
    if rail_of(settings) == API_KEY_RAIL:
        log.info(
            "payment rail: BlockRun API key (prepaid credit at %s); no wallet is used",
            settings.api_key_url,
        )
        if settings.budget_usd is not None:
            log.warning(
                "--budget-usd and --max-price-usd do not apply on the API-key rail: the host "
                "bills the key's credit and quotes no price before a call"
            )
        return
    wallets = ", ".join(f"{rail} {address}" for rail, address in rails.addresses.items())
    log.info(
        "payment rail: %s first (%s); networks %s",
        rails.prefer,
        wallets or "no wallet: free models only",
        ",".join(settings.networks),
    )


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
    settings: Settings, session: UpstreamClient, payer: Rails, quotes: QuoteBook | None
) -> Gateway:
    """The gateway calls are sent to: the API host on the API-key rail (no x402), else
    the x402 gateway, paid through ``payer``."""
    rail = ApiKeyRail.from_settings(settings) if rail_of(settings) == API_KEY_RAIL else None
    if rail is not None:
        from blockrun_proxy.apikey_gateway import ApiKeyGateway

        return ApiKeyGateway(
            session, rail, payer, proxy=egress.proxy_for(settings, settings.api_key_url)
        )
    return Gateway(
        session,
        settings.api_url,
        payer,
        paid_replays=settings.paid_replays,
        probe_retries=settings.probe_retries,
        quotes=quotes,
        proxy=egress.proxy_for(settings, settings.api_url),
    )


def upstream_client(settings: Settings, limits: Limits) -> UpstreamClient:
    """The one HTTP client every gateway call goes through, of the kind
    ``--upstream-client`` names (``close()`` it when done)."""
    if settings.upstream_client == "aiohttp":
        return upstream_session(settings, limits)
    return upstream_h1(settings, limits)


def upstream_h1(settings: Settings, limits: Limits) -> h1.Client:
    """The proxy's own HTTP/1.1 client, with the session's pool, timeouts and proxy rules."""
    return h1.Client(
        # Above --max-concurrent (limits.py): an admitted call never waits for a socket.
        h1.Limits(max_connections=limits.pool_size, keepalive_expiry=POOL_KEEPALIVE_SECONDS),
        h1.Timeouts(connect=settings.connect_timeout_seconds, read=settings.idle_timeout_seconds),
        # Per origin, as egress decides it (HTTPS_PROXY, NO_PROXY), once per origin.
        proxy_for=functools.partial(egress.proxy_for, settings),
        # SSL_CERT_FILE / SSL_CERT_DIR when set; else the default verifying context.
        # Either is built at the first https connection, not at startup.
        ssl_context=egress.ssl_context_factory(settings),
        user_agent=USER_AGENT,
        max_head_bytes=MAX_HEAD_BYTES,
    )


def upstream_session(settings: Settings, limits: Limits) -> aiohttp.ClientSession:
    """aiohttp's session for the gateway (``--upstream-client aiohttp``)."""
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
