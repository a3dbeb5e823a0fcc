"""Settings: one frozen value filled from the environment and the CLI flags over it.

``Settings.from_env`` (through the option table, options.py) and the secret readers
here are the only readers of ``os.environ``; every other module takes a ``Settings``.
Defaults are module constants so tests and docs can name them.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlsplit

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4001
DEFAULT_API_URL = "https://blockrun.ai/api"
DEFAULT_NETWORKS = ("eip155:8453",)
# --chain picks the gateway and the networks to pay on; explicit --api-url/--networks win.
CHAINS = ("base", "solana")
DEFAULT_CHAIN = "base"
SOLANA_API_URL = "https://sol.blockrun.ai/api"
SOLANA_NETWORKS = ("solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp",)
CHAIN_DEFAULTS: Mapping[str, tuple[str, tuple[str, ...]]] = MappingProxyType(
    {"base": (DEFAULT_API_URL, DEFAULT_NETWORKS), "solana": (SOLANA_API_URL, SOLANA_NETWORKS)}
)
# The prepaid API-key host: no "/api" segment (it answers /api/v1/... with wrong_host).
DEFAULT_API_KEY_URL = "https://api.blockrun.ai"
# --rail: auto pays with the API key when one is set (as blockrun-llm does), else with the
# wallets; wallet ignores an API key; apikey insists on one.
RAILS = ("auto", "wallet", "apikey")
DEFAULT_RAIL = "auto"
# A per-call ceiling on what the proxy will ever sign. $0.50 covers a long prompt to
# a premium model with the default 1024-token reservation, and stops a broken or
# hostile gateway from quoting dollars per call.
DEFAULT_MAX_PRICE_USD = Decimal("0.50")
DEFAULT_MAX_TOKENS = 1024
# --scheme: which x402 schemes the EVM payer signs. "exact" pays the quote (the gateway
# prices max_tokens); "upto" signs a ceiling and pays what the call actually cost; "auto"
# prefers upto and pays exact when upto cannot be signed (no Permit2 allowance). The
# default stays exact: see the README's "Pay what you use" for why.
SCHEMES = ("exact", "upto", "auto")
DEFAULT_SCHEME = "exact"
SCHEME_PREFERENCE: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"exact": ("exact",), "upto": ("upto",), "auto": ("upto", "exact")}
)
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_MODELS_TTL_SECONDS = 300.0
# Streams have no total timeout (reasoning models think for minutes before the first
# byte); this idle limit between two reads is what ends a dead upstream.
DEFAULT_IDLE_TIMEOUT_SECONDS = 300.0
DEFAULT_CONNECT_TIMEOUT_SECONDS = 10.0
# x402 asks for validBefore = now + maxTimeoutSeconds; a gateway asking for an
# authorization valid for hours gets refused.
DEFAULT_MAX_AUTH_SECONDS = 900
# None: sized at start from the open-files limit (limits.auto_max_concurrent), so a sidecar
# carries thousands of streams without flags; a number pins it.
DEFAULT_MAX_CONCURRENT: int | None = None
# How long a call waits for a free slot before it gets a 429. Long enough that a burst of
# streams (each a few seconds) is served from the queue rather than refused (with 2 s, 400
# two-second streams got 143 429s): a queued call holds one socket and what aiohttp
# buffers of its unread body, and clients' own timeouts (openai: 600 s) are longer still.
DEFAULT_QUEUE_TIMEOUT_SECONDS = 30.0
DEFAULT_GRACE_SECONDS = 30.0
# Client connections (aiohttp sets none of these). A client sends its request headers in one
# write, within milliseconds: 10 s is generous for a slow link and bounds header-dripping
# clients (slowloris). A body gets 30 s from its headers: an 8 MiB body at 2.5 Mbit/s, far
# above what a prompt takes on any link. Idle keep-alive connections are closed after 75 s:
# above every common client's own pool expiry (httpx 5 s, aiohttp 15 s) and a load
# balancer's idle timeout (AWS ALB 60 s), so the client, not the proxy, ends an idle
# connection and never sends a request into one the proxy is closing (nginx's default too).
DEFAULT_HEADERS_TIMEOUT_SECONDS = 10.0
DEFAULT_BODY_TIMEOUT_SECONDS = 30.0
DEFAULT_KEEPALIVE_TIMEOUT_SECONDS = 75.0
# A token that guards a public bind must not be guessable in an afternoon.
MIN_PUBLIC_TOKEN_CHARS = 16
DEFAULT_WORKERS = 1
DEFAULT_BUDGET_WINDOW_SECONDS = 86400.0
# Signing up front: a model's quote is trusted after this many consecutive exact
# predictions of the gateway's 402s, and re-checked with an unpaid probe once its
# last 402 is older than the TTL (so a price cut is noticed within the TTL).
DEFAULT_QUOTE_TRUST = 3
DEFAULT_QUOTE_TTL_SECONDS = 300.0
# The fleet store (--redis-url): every key starts with the prefix, so several fleets (one
# per wallet) can share one Redis. Every Redis call is bounded by the timeout: a hung Redis
# costs a paid call at most this long (then 503, or the fail-open path), never a stall.
DEFAULT_REDIS_PREFIX = "blockrun-proxy"
DEFAULT_REDIS_TIMEOUT_SECONDS = 0.5
# The spend ledger keeps hourly totals this long, and the last LEDGER_RECORDS calls.
DEFAULT_LEDGER_RETENTION_SECONDS = 30 * 86400.0
REDIS_SCHEMES = ("redis", "rediss", "unix")
# The HTTP client that talks to the gateway: "h1" (blockrun_proxy/h1, the relay's own
# HTTP/1.1 client over httptools: the cheaper per relayed chunk and per request) or
# "aiohttp" (its ClientSession). Both keep the same rules (core.py, upstream.py).
UPSTREAM_CLIENTS = ("h1", "aiohttp")
DEFAULT_UPSTREAM_CLIENT = "h1"

ENV_PREFIX = "BLOCKRUN_PROXY_"
WALLET_ENV = "BLOCKRUN_WALLET_KEY"
LEGACY_WALLET_ENV = "BASE_CHAIN_WALLET_KEY"
# The Solana wallet key: base58 of the 64-byte secret key (solana-keygen, Phantom).
SOLANA_KEY_ENV = "BLOCKRUN_SOLANA_KEY"
# blockrun-llm's own name for it, read as BASE_CHAIN_WALLET_KEY is for the EVM key.
SOLANA_KEY_ENV_ALIASES = ("SOLANA_WALLET_KEY",)
# A BlockRun API key (brk_...): calls are paid from prepaid credit, nothing is signed.
API_KEY_ENV = "BLOCKRUN_API_KEY"
API_KEY_PREFIX = "brk_"
# The API-key host. Deliberately not BLOCKRUN_API_URL (blockrun-llm's reasoning): that
# names an x402 gateway, and the key must never follow it to another host.
API_KEY_URL_ENV = "BLOCKRUN_API_KEY_URL"
TOKEN_ENV = "BLOCKRUN_PROXY_TOKEN"
# What ``serve`` removes from its environment once read (keyguard.py).
SECRET_ENVS = (
    WALLET_ENV,
    LEGACY_WALLET_ENV,
    SOLANA_KEY_ENV,
    *SOLANA_KEY_ENV_ALIASES,
    API_KEY_ENV,
    TOKEN_ENV,
)
# Set by the --workers supervisor: the inherited descriptor its secrets arrive on.
SECRETS_FD_ENV = "BLOCKRUN_PROXY_SECRETS_FD"
# Redis: the URL may carry a password, so --workers children get it through the environment,
# never their command line; the password can also be given apart from the URL.
REDIS_URL_ENV = "BLOCKRUN_PROXY_REDIS_URL"
REDIS_PASSWORD_ENV = "BLOCKRUN_PROXY_REDIS_PASSWORD"
# Set by the --workers supervisor for its children: prometheus-client's shared-memory
# directory, which makes /metrics on any worker report the sum over all of them.
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The wallet file blockrun-llm creates and manages (setup_agent_wallet()).
WALLET_FILE = Path.home() / ".blockrun" / ".session"
LEGACY_WALLET_FILE = Path.home() / ".blockrun" / "wallet.key"
# The Solana wallet file blockrun-llm manages (setup_agent_solana_wallet()): one line,
# base58 of the 64-byte secret key (or of a 32-byte seed).
SOLANA_WALLET_FILE = Path.home() / ".blockrun" / ".solana-session"
# Where the proxy keeps what should survive a restart (learned quotes, the local spend
# ledger): beside blockrun-llm's wallet files. An empty --state-dir keeps nothing on disk.
DEFAULT_STATE_DIR = Path.home() / ".blockrun" / "proxy"

USDC_DECIMALS = 6


def usd_to_atomic(usd: Decimal) -> int:
    """USD as a Decimal to USDC atomic units (6 decimals), rounding down."""
    return int(usd.scaleb(USDC_DECIMALS).to_integral_value(rounding="ROUND_FLOOR"))


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    api_url: str = DEFAULT_API_URL
    log_level: str = "info"
    log_format: str = "text"
    networks: tuple[str, ...] = DEFAULT_NETWORKS
    max_price_usd: Decimal = DEFAULT_MAX_PRICE_USD
    default_max_tokens: int = DEFAULT_MAX_TOKENS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    models_ttl_seconds: float = DEFAULT_MODELS_TTL_SECONDS
    idle_timeout_seconds: float = DEFAULT_IDLE_TIMEOUT_SECONDS
    connect_timeout_seconds: float = DEFAULT_CONNECT_TIMEOUT_SECONDS
    max_auth_seconds: int = DEFAULT_MAX_AUTH_SECONDS
    # None: sized from the open-files limit at start (limits.Limits.from_settings).
    max_concurrent: int | None = DEFAULT_MAX_CONCURRENT
    # Calls allowed to wait for a slot; None means "as many as max_concurrent".
    max_queue: int | None = None
    queue_timeout_seconds: float = DEFAULT_QUEUE_TIMEOUT_SECONDS
    # Open client connections per process; None derives it from the admission limits.
    max_connections: int | None = None
    headers_timeout_seconds: float = DEFAULT_HEADERS_TIMEOUT_SECONDS
    body_timeout_seconds: float = DEFAULT_BODY_TIMEOUT_SECONDS
    keepalive_timeout_seconds: float = DEFAULT_KEEPALIVE_TIMEOUT_SECONDS
    # Host names (besides loopback and the bound address) the proxy answers to; "*": any.
    allowed_hosts: tuple[str, ...] = ()
    # Web origins (scheme://host[:port]) allowed to call the proxy from a browser (CORS).
    cors_origins: tuple[str, ...] = ()
    grace_seconds: float = DEFAULT_GRACE_SECONDS
    # Processes sharing the port (SO_REUSEPORT); 1 serves in this process.
    workers: int = DEFAULT_WORKERS
    # Bind with SO_REUSEPORT, so several processes can listen on the same port.
    reuse_port: bool = False
    # prometheus-client multiprocess directory (set for --workers children only).
    metrics_dir: str | None = None
    # Replays of the SAME signed payment after a 5xx, before any byte reached the client.
    paid_replays: int = 2
    # Retries of the unpaid probe after a 5xx (nothing is signed yet, so these are free).
    probe_retries: int = 2
    pay_to: tuple[str, ...] = ()
    # At most this much sent over any rolling budget_window_seconds; None = no budget.
    budget_usd: Decimal | None = None
    budget_window_seconds: float = DEFAULT_BUDGET_WINDOW_SECONDS
    # Sign the first request when the quote model is trusted; 0 tolerance = exact amounts only.
    presign: bool = True
    presign_tolerance_usd: Decimal = Decimal(0)
    # The x402 schemes paid on EVM networks (SCHEMES); upto needs rpc_url (the allowance).
    scheme: str = DEFAULT_SCHEME
    quote_trust: int = DEFAULT_QUOTE_TRUST
    quote_ttl_seconds: float = DEFAULT_QUOTE_TTL_SECONDS
    allow_public: bool = False
    # What survives a restart lives here; None keeps everything in memory only.
    state_dir: Path | None = DEFAULT_STATE_DIR
    # An EVM JSON-RPC endpoint for on-chain reads (balance, Permit2 allowance); None: none.
    # Out of repr(): hosted endpoints carry their API key in the URL.
    rpc_url: str | None = field(default=None, repr=False)
    # With rpc_url: warn once (and flag it) when the wallet's USDC falls below this.
    low_balance_usd: Decimal | None = None
    # What --chain chose (the defaults of api_url and networks were taken from it).
    chain: str = DEFAULT_CHAIN
    # Where Solana blockhashes come from; None: the public RPC of the networks allowed.
    # Out of repr(): providers such as Helius put an API key in the URL.
    solana_rpc_url: str | None = field(default=None, repr=False)
    # Where the Solana key was read from when it came from --solana-keypair.
    solana_keypair: Path | None = None
    # The API-key rail's host (no /api segment).
    api_key_url: str = DEFAULT_API_KEY_URL
    # Which rail pays: "auto" (the API key when set, else the wallets), "wallet", "apikey".
    rail: str = DEFAULT_RAIL
    # "all": every path under /v1/ and /v1beta/ is relayed (the gateway decides what it
    # serves); "table": only the route table's routes (routes.py), anything else is a 404.
    routes: str = "all"
    # The gateway as a cluster reaches it: a CA bundle or directory instead of the system's
    # (SSL_CERT_FILE / SSL_CERT_DIR), and an egress proxy (HTTPS_PROXY, HTTP_PROXY,
    # NO_PROXY). Proxy URLs may carry a password: out of repr().
    ssl_cert_file: str | None = None
    ssl_cert_dir: str | None = None
    https_proxy: str | None = field(default=None, repr=False)
    http_proxy: str | None = field(default=None, repr=False)
    no_proxy: str | None = None
    upstream_client: str = DEFAULT_UPSTREAM_CLIENT
    # The fleet store: the shared budget, learned quotes and the spend ledger live in this
    # Redis (redis://, rediss://, unix://); None keeps them in this process (and state_dir).
    # Kept out of repr(): the URL may carry a password.
    redis_url: str | None = field(default=None, repr=False)
    redis_prefix: str = DEFAULT_REDIS_PREFIX
    redis_timeout_seconds: float = DEFAULT_REDIS_TIMEOUT_SECONDS
    # Redis unreachable: sign anyway under this process's own budget (True), or refuse
    # with 503 budget_store_unavailable (False, the default: the fleet never over-spends).
    budget_fail_open: bool = False
    ledger_retention_seconds: float = DEFAULT_LEDGER_RETENTION_SECONDS
    demo: bool = False
    # Secrets are kept out of repr() so a logged Settings never shows them.
    token: str | None = field(default=None, repr=False)
    wallet_key: str | None = field(default=None, repr=False)
    solana_key: str | None = field(default=None, repr=False)
    api_key: str | None = field(default=None, repr=False)
    redis_password: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], *, secrets: bool = True) -> Settings:
        """Settings from the environment: every variable of the option table (options.py),
        the same ones ``blockrun-proxy serve`` reads under its flags, and (``secrets``) the
        wallet keys, API key and token, from the environment or the wallet files. Checked:
        ValueError (never echoing a secret) for a value that does not parse or cannot work.
        """
        from blockrun_proxy.options import from_env

        settings = from_env(environ, secrets=secrets)
        settings.check()
        return settings

    @property
    def max_amount(self) -> int:
        """The per-call cap in USDC atomic units."""
        return usd_to_atomic(self.max_price_usd)

    @property
    def budget_atomic(self) -> int | None:
        return None if self.budget_usd is None else usd_to_atomic(self.budget_usd)

    @property
    def low_balance_atomic(self) -> int | None:
        return None if self.low_balance_usd is None else usd_to_atomic(self.low_balance_usd)

    @property
    def presign_tolerance_atomic(self) -> int:
        return usd_to_atomic(self.presign_tolerance_usd)

    @property
    def schemes(self) -> tuple[str, ...]:
        """The x402 schemes the EVM payer signs, most preferred first. ``auto`` without
        ``rpc_url`` is exact alone: no allowance can be read, so upto could never be signed
        and every call would only try it to fall back."""
        if self.scheme == "auto" and not self.rpc_url:
            return SCHEME_PREFERENCE["exact"]
        return SCHEME_PREFERENCE[self.scheme]

    @property
    def gateway_host(self) -> str:
        return (urlsplit(self.api_url).hostname or "").lower()

    @property
    def solana_rpc(self) -> str:
        """The Solana RPC to fetch blockhashes from: the configured one, else the public
        RPC of the Solana networks allowed (devnet's when they are all devnet)."""
        if self.solana_rpc_url:
            return self.solana_rpc_url
        from blockrun_proxy.x402.svm.networks import default_rpc_url

        return default_rpc_url(self.networks)

    @property
    def solana_networks(self) -> tuple[str, ...]:
        """The allowed networks that are Solana's (the Solana rail pays on these)."""
        from blockrun_proxy.x402.svm.networks import is_solana_network

        return tuple(n for n in self.networks if is_solana_network(n))

    def check(self) -> None:
        """Raise ValueError for settings that must not start a server."""
        if urlsplit(self.api_url).scheme not in ("http", "https") or not self.gateway_host:
            raise ValueError(f"--api-url must be an http(s) URL, got {self.api_url!r}")
        if self.max_price_usd < 0:
            raise ValueError("--max-price-usd must not be negative")
        if not self.networks:
            raise ValueError("--networks must name at least one CAIP-2 network")
        if self.budget_usd is not None and self.budget_usd < 0:
            raise ValueError("--budget-usd must not be negative")
        if not self.budget_window_seconds > 0:
            raise ValueError("--budget-window must be positive")
        if not 0 <= self.presign_tolerance_usd <= self.max_price_usd:
            raise ValueError("--presign-tolerance-usd must be between 0 and --max-price-usd")
        if self.quote_trust < 1:
            raise ValueError("quote_trust must be at least 1")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ValueError("--max-concurrent must be at least 1")
        if self.max_queue is not None and self.max_queue < 0:
            raise ValueError("--max-queue must not be negative")
        if self.queue_timeout_seconds <= 0:
            raise ValueError("--queue-timeout must be positive")
        if self.grace_seconds < 0:
            raise ValueError("--grace-seconds must not be negative")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError("--max-connections must be at least 1")
        for flag, seconds in (
            ("--headers-timeout", self.headers_timeout_seconds),
            ("--body-timeout", self.body_timeout_seconds),
            ("--keepalive-timeout", self.keepalive_timeout_seconds),
            ("--upstream-idle-timeout", self.idle_timeout_seconds),
        ):
            if not seconds > 0:
                raise ValueError(f"{flag} must be positive")
        for origin in self.cors_origins:
            check_cors_origin(origin)
        if self.workers < 1:
            raise ValueError("--workers must be at least 1")
        if self.workers > 1 and self.port == 0:
            raise ValueError("--workers needs a fixed --port: each worker binds the same one")
        if self.rpc_url is not None and urlsplit(self.rpc_url).scheme not in ("http", "https"):
            # Only the scheme is shown: hosted RPC URLs carry an API key in their path.
            scheme = urlsplit(self.rpc_url).scheme or "none"
            raise ValueError(f"--rpc-url must be an http(s) URL, got scheme {scheme!r}")
        if self.scheme not in SCHEMES:
            raise ValueError(f"--scheme must be one of {', '.join(SCHEMES)}, got {self.scheme!r}")
        if self.scheme == "upto" and not self.rpc_url and not self.demo:
            raise ValueError(
                "--scheme upto needs --rpc-url: an upto payment draws on the wallet's Permit2 "
                "allowance, which is read from the chain (or use --scheme auto, which pays "
                "exact when upto cannot be signed)"
            )
        if self.low_balance_usd is not None and self.low_balance_usd < 0:
            raise ValueError("--low-balance-usd must not be negative")
        if self.chain not in CHAINS:
            raise ValueError(f"--chain must be one of {', '.join(CHAINS)}, got {self.chain!r}")
        if self.solana_rpc_url is not None and not _is_http_url(self.solana_rpc_url):
            # The URL itself is not echoed: it may carry the provider's API key.
            raise ValueError("--solana-rpc-url must be an http(s) URL")
        if self.upstream_client not in UPSTREAM_CLIENTS:
            raise ValueError(
                f"--upstream-client must be one of {', '.join(UPSTREAM_CLIENTS)}, "
                f"got {self.upstream_client!r}"
            )
        if self.routes not in ("all", "table"):
            raise ValueError(f"--routes must be all or table, got {self.routes!r}")
        if self.rail not in RAILS:
            raise ValueError(f"--rail must be one of {', '.join(RAILS)}, got {self.rail!r}")
        if self.rail == "apikey" and not self.api_key and not self.demo:
            raise ValueError(
                f"--rail apikey needs a BlockRun API key: set {API_KEY_ENV}=brk_... "
                "(or use --rail auto to pay from a wallet when none is set)"
            )
        if not _is_http_url(self.api_key_url):
            raise ValueError(f"{API_KEY_URL_ENV} must be an http(s) URL, got {self.api_key_url!r}")
        if self.api_key is not None and not self.api_key.startswith(API_KEY_PREFIX):
            # Never echoed: a mistyped key is still a secret.
            raise ValueError(
                f"{API_KEY_ENV} is not a BlockRun API key (they start with {API_KEY_PREFIX!r}); "
                "correct it or unset it"
            )
        if self.redis_url is not None and urlsplit(self.redis_url).scheme not in REDIS_SCHEMES:
            # The URL is not echoed: it may hold a password.
            raise ValueError("--redis-url must start with redis://, rediss:// or unix://")
        if not self.redis_timeout_seconds > 0:
            raise ValueError("--redis-timeout must be positive")
        if not self.redis_prefix or any(c in self.redis_prefix for c in "{} \t\r\n"):
            raise ValueError("--redis-prefix must be non-empty, without spaces or braces")
        if not self.ledger_retention_seconds >= 3600:
            raise ValueError("--ledger-retention must be at least 1h")
        if not is_loopback(self.host) and not self.token and not self.allow_public:
            raise ValueError(
                f"refusing to listen on {self.host} without a token: anyone who can reach it "
                f"could spend the wallet. Set {TOKEN_ENV}, or pass --allow-public if a network "
                "policy already guards this port."
            )
        if not is_loopback(self.host) and self.token and len(self.token) < MIN_PUBLIC_TOKEN_CHARS:
            raise ValueError(
                f"{TOKEN_ENV} is shorter than {MIN_PUBLIC_TOKEN_CHARS} characters: too easy to "
                f"guess for a proxy listening on {self.host}. Use e.g. `openssl rand -hex 32`."
            )


def _is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def chain_defaults(chain: str) -> tuple[str, tuple[str, ...]]:
    """The gateway URL and networks ``--chain`` stands for; ValueError for another chain."""
    try:
        return CHAIN_DEFAULTS[chain]
    except KeyError:
        raise ValueError(f"--chain must be one of {', '.join(CHAINS)}, got {chain!r}") from None


_DURATION_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)\s*", re.IGNORECASE)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds from ``"24h"``, ``"30m"``, ``"3600s"``, ``"1d"`` or a bare number of seconds."""
    match = _DURATION_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 24h, 30m, 3600s)")
    seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
    if not seconds > 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return seconds


def parse_state_dir(text: str) -> Path | None:
    """``--state-dir``: a directory (``~`` expanded), or None for an empty value."""
    text = text.strip()
    return Path(text).expanduser() if text else None


def check_cors_origin(origin: str) -> None:
    """Raise ValueError unless ``origin`` is one web origin, ``scheme://host[:port]``."""
    parts = urlsplit(origin)
    # Any scheme with a host: http(s) pages, but also e.g. an editor's vscode-webview://.
    if origin in ("*", "null") or not parts.scheme or not parts.hostname:
        raise ValueError(
            f"--cors-origins takes origins like https://app.example, not {origin!r}: every "
            "origin listed can spend the wallet from a browser, so there is no wildcard"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"--cors-origins: {origin!r} is not a bare origin (scheme://host[:port])")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(environ: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    return env.get(TOKEN_ENV) or None


def read_secrets_fd(environ: Mapping[str, str] | None = None) -> int | None:
    env = os.environ if environ is None else environ
    value = env.get(SECRETS_FD_ENV)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{SECRETS_FD_ENV} is not a file descriptor: {value!r}") from None


def read_redis_password(environ: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    return env.get(REDIS_PASSWORD_ENV) or None


def redacted_url(url: str) -> str:
    """``url`` without its password, for log lines and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return parts._replace(netloc=user + host).geturl()


def read_wallet_key(environ: Mapping[str, str] | None = None) -> tuple[str | None, str]:
    """The wallet key and where it came from: env first, then blockrun-llm's wallet files.

    Read directly instead of through blockrun_llm.wallet, whose import pulls in
    eth_account (about a second of startup) for what is a one-line file read.
    """
    env = os.environ if environ is None else environ
    for name in (WALLET_ENV, LEGACY_WALLET_ENV):
        if env.get(name):
            return env[name].strip(), f"${name}"
    for path in (WALLET_FILE, LEGACY_WALLET_FILE):
        try:
            key = path.read_text().strip()
        except OSError:
            continue
        if key:
            return key, str(path)
    return None, "none"


def read_solana_key(
    environ: Mapping[str, str] | None = None, keypair: Path | None = None
) -> tuple[str | None, str]:
    """The Solana wallet key and where it came from: ``BLOCKRUN_SOLANA_KEY`` (or
    blockrun-llm's ``SOLANA_WALLET_KEY``), else the ``--solana-keypair`` file, else the
    wallet file blockrun-llm manages. The key is returned as text, unparsed
    (``x402.svm.SolanaSigner`` reads every form); nothing here formats it.

    A ``--solana-keypair`` that cannot be read is an error (ValueError), not a silent
    fall-through to another wallet: it was asked for by name.
    """
    env = os.environ if environ is None else environ
    for name in (SOLANA_KEY_ENV, *SOLANA_KEY_ENV_ALIASES):
        if env.get(name, "").strip():
            return env[name].strip(), f"${name}"
    if keypair is not None:
        try:
            key = keypair.expanduser().read_text().strip()
        except OSError as exc:
            raise ValueError(
                f"cannot read --solana-keypair {keypair}: {exc.strerror or 'unreadable'}"
            ) from None
        if not key:
            raise ValueError(f"--solana-keypair {keypair} is empty")
        return key, str(keypair)
    try:
        key = SOLANA_WALLET_FILE.read_text().strip()
    except OSError:
        return None, "none"
    return (key, str(SOLANA_WALLET_FILE)) if key else (None, "none")


def read_api_key(environ: Mapping[str, str] | None = None) -> str | None:
    """``BLOCKRUN_API_KEY``; blank is unset (an empty ``.env`` line is not a choice).
    A non-blank value that is not a ``brk_`` key is refused by ``Settings.check``."""
    env = os.environ if environ is None else environ
    return env.get(API_KEY_ENV, "").strip() or None


def read_secrets(
    environ: Mapping[str, str] | None = None, *, keypair: Path | None = None
) -> dict[str, str | None]:
    """The secrets, by Settings field: the wallet keys (from the environment or the wallet
    files), the API key and the proxy token. Nothing is removed from the environment here;
    ``keyguard.take_secrets`` does that for ``serve``."""
    env = os.environ if environ is None else environ
    wallet_key, _ = read_wallet_key(env)
    solana_key, _ = read_solana_key(env, keypair)
    return {
        "wallet_key": wallet_key,
        "solana_key": solana_key,
        "api_key": read_api_key(env),
        "token": read_token(env),
        "redis_password": read_redis_password(env),
    }
