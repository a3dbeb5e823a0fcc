"""Every setting a user can give, as one table: field, flag, environment variable, parser, help.

``Settings.from_env`` reads the environment through this table, ``blockrun-proxy serve``
builds its click options from it and lays the flags over the environment, the
``--workers`` supervisor renders a ``Settings`` back into flags with it, and the README's
Configuration table is generated from it (a test keeps them equal). So a value means the
same thing from a flag and from a variable, by construction: adding a setting is one
``Settings`` field plus one row here.

Values from the environment and from flags go through the row's one parser. A blank
variable is unset (an empty ``.env`` line is not a choice), except where the row says a
blank value means something (``--state-dir ''``: keep nothing on disk). Lists (networks,
``--pay-to``, allowed hosts, origins) are comma- or whitespace-separated in a variable and
in a flag alike; ``--pay-to`` may also be repeated.

The secrets (wallet keys, the API key, the proxy token) have rows for the documentation,
but are read apart (``config.read_secrets``, and ``keyguard.take_secrets`` for ``serve``,
which then removes them from the environment): they are never flags and never rendered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal

from blockrun_proxy import config
from blockrun_proxy.config import Settings
from blockrun_proxy.limits import FDS_PER_SLOT, MAX_AUTO_CONCURRENT

Kind = Literal["value", "flag", "list"]
ROUTE_MODES = ("all", "table")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
LOG_FORMATS = ("text", "json")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True, slots=True)
class Option:
    """One setting. ``flag`` None: environment only; ``env`` empty: flag only."""

    field: str  # the Settings field it fills
    flag: str | None
    env: tuple[str, ...]  # variables read, first set one wins
    help: str
    default: str  # the default as the docs show it
    parse: Callable[[str], Any] = str
    kind: Kind = "value"
    choices: tuple[str, ...] = ()
    # How --workers children get the value back as a flag (the inverse of ``parse``).
    render: Callable[[Any], str] = str
    blank_is_value: bool = False  # a blank value means something (else: unset)
    secret: bool = False  # read apart, never a flag, never rendered
    # May hold a password or a provider's API key (a URL: Redis, an RPC endpoint such as
    # https://base-mainnet.g.alchemy.com/v2/<key>): --workers children get it in their
    # environment, readable only by the same user, since a command line is visible to
    # every user of the machine (ps, /proc/<pid>/cmdline).
    by_environment: bool = False
    documented: bool = True  # in the README's Configuration table

    @property
    def source(self) -> str:
        return self.flag or self.env[0]

    def read(self, text: str, source: str | None = None) -> Any:
        """``text`` parsed; ValueError naming where it came from."""
        try:
            return self.parse(text)
        except (ValueError, ArithmeticError) as exc:
            raise ValueError(f"{source or self.source}: {exc}") from None


# --- parsers ---------------------------------------------------------------------------------


def _split(text: str) -> tuple[str, ...]:
    return tuple(part for part in text.replace(",", " ").split() if part)


def _decimal(text: str) -> Decimal:
    try:
        return Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"not a number: {text!r}") from None


def _int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"not an integer: {text!r}") from None


def _float(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise ValueError(f"not a number: {text!r}") from None


def _at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = _int(text)
        if value < low:
            raise ValueError(f"must be at least {low}, got {value}")
        return value

    return parse


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {text!r}")
        return value

    return parse


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"not a boolean (1/0, true/false, yes/no, on/off): {text!r}")


def _url(text: str) -> str:
    return text.strip().rstrip("/")


def _path(text: str) -> Path:
    return Path(text.strip()).expanduser()


def _render_list(value: Iterable[str]) -> str:
    return ",".join(value)


def _render_state_dir(value: Path | None) -> str:
    return "" if value is None else str(value)


def _duration(text: str) -> float:
    return config.parse_duration(text)


# --- the table -------------------------------------------------------------------------------

_P = config.ENV_PREFIX

OPTIONS: tuple[Option, ...] = (
    Option("host", "--host", (_P + "HOST",), "interface to bind; a non-loopback host needs a "
           "token or `--allow-public`", f"`{config.DEFAULT_HOST}`", str.strip),
    Option("port", "--port", (_P + "PORT",), "port", f"`{config.DEFAULT_PORT}`", _int),
    Option("chain", "--chain", (_P + "CHAIN",), "which BlockRun gateway and networks to pay "
           f"on by default: `base` ({config.DEFAULT_API_URL}) or `solana` "
           f"({config.SOLANA_API_URL}); `--api-url` and `--networks` override it",
           f"`{config.DEFAULT_CHAIN}`", _choice(config.CHAINS), choices=config.CHAINS),
    Option("api_url", "--api-url", ("BLOCKRUN_API_URL",), "the gateway",
           f"per `--chain`: `{config.DEFAULT_API_URL}`", _url),
    Option("log_level", "--log-level", (_P + "LOG_LEVEL",), ", ".join(LOG_LEVELS), "`info`",
           _choice(LOG_LEVELS), choices=LOG_LEVELS),
    Option("log_format", "--log-format", (_P + "LOG_FORMAT",),
           "`text` or `json` (one object per line)", "`text`", _choice(LOG_FORMATS),
           choices=LOG_FORMATS),
    Option("networks", "--networks", (_P + "NETWORKS",), "CAIP-2 networks the payer may sign "
           "on (comma-separated); `eip155:84532` is Base Sepolia",
           f"per `--chain`: `{','.join(config.DEFAULT_NETWORKS)}`", _split,
           render=_render_list),
    Option("max_price_usd", "--max-price-usd", (_P + "MAX_PRICE_USD",),
           "never sign more than this for one call", f"`{config.DEFAULT_MAX_PRICE_USD}`",
           _decimal),
    Option("default_max_tokens", "--default-max-tokens", (_P + "DEFAULT_MAX_TOKENS",),
           "`max_tokens` added to a chat request that sets neither `max_tokens` nor "
           "`max_completion_tokens`", f"`{config.DEFAULT_MAX_TOKENS}`", _at_least(1)),
    Option("pay_to", "--pay-to", (_P + "PAY_TO",), "only pay these addresses (repeatable, or "
           "comma-separated)", "any", _split, kind="list"),
    Option("budget_usd", "--budget-usd", (_P + "BUDGET_USD",), "never send payments worth more "
           "than this in total over `--budget-window` (payments that never reached the "
           "gateway do not count)", "none", _decimal),
    Option("budget_window_seconds", "--budget-window", (_P + "BUDGET_WINDOW",),
           "rolling window of the budget: `24h`, `30m`, `3600s`", "`24h`", _duration,
           render=lambda seconds: f"{seconds!r}s"),
    Option("presign_tolerance_usd", "--presign-tolerance-usd", (_P + "PRESIGN_TOLERANCE_USD",),
           "when signing up front, over-pay at most this per call to skip the probe (counted)",
           "`0`", _decimal),
    Option("scheme", "--scheme", (_P + "SCHEME",), "x402 scheme on Base: `exact` pays the "
           "quote (priced on `max_tokens`); `upto` signs that quote as a ceiling and pays what "
           "the call actually cost (needs `--rpc-url` and a Permit2 allowance, see "
           "[Pay what you use](#pay-what-you-use)); `auto`: upto when it can be signed, else "
           "exact", f"`{config.DEFAULT_SCHEME}`", _choice(config.SCHEMES),
           choices=config.SCHEMES),
    Option("routes", "--routes", (_P + "ROUTES",), "`all`: relay every path under `/v1/` "
           "and `/v1beta/` (the gateway decides what it serves); `table`: only the routes of "
           "[Routes](#routes), anything else is a `404`", "`all`", _choice(ROUTE_MODES),
           choices=ROUTE_MODES),
    Option("max_concurrent", "--max-concurrent", (_P + "MAX_CONCURRENT",), "calls in flight "
           "at once, streams included (sizes the connection pool and backlog); logged at "
           "start", f"from the open-files limit: {FDS_PER_SLOT} descriptors a call, at most "
           f"{MAX_AUTO_CONCURRENT} (about 22 KiB of memory per held stream)", _at_least(1)),
    Option("max_queue", "--max-queue", (_P + "MAX_QUEUE",), "calls that may wait for a slot; "
           "past it, `429` at once", "`--max-concurrent`", _at_least(0)),
    Option("queue_timeout_seconds", "--queue-timeout", (_P + "QUEUE_TIMEOUT",),
           "seconds a call may wait for a slot before its `429`",
           f"`{config.DEFAULT_QUEUE_TIMEOUT_SECONDS:g}`", _float, render=repr),
    Option("max_connections", "--max-connections", (_P + "MAX_CONNECTIONS",), "open client "
           "connections per process; past it, new ones get `503 too_many_connections` and are "
           "closed at once", "2 \u00d7 (`--max-concurrent` + `--max-queue`) + 64, at least 1024 "
           "(sized from the open-files limit: what the gateway sockets leave)",
           _at_least(1)),
    Option("headers_timeout_seconds", "--headers-timeout", (_P + "HEADERS_TIMEOUT",),
           "seconds a connection has to send complete request headers, from connecting or "
           "from the first byte of a later request",
           f"`{config.DEFAULT_HEADERS_TIMEOUT_SECONDS:g}`", _float, render=repr),
    Option("body_timeout_seconds", "--body-timeout", (_P + "BODY_TIMEOUT",), "seconds a "
           "request body has to arrive once the call is admitted; else `408 request_timeout` "
           "and the slot is freed", f"`{config.DEFAULT_BODY_TIMEOUT_SECONDS:g}`", _float,
           render=repr),
    Option("keepalive_timeout_seconds", "--keepalive-timeout", (_P + "KEEPALIVE_TIMEOUT",),
           "seconds an idle keep-alive connection stays open after its last answer",
           f"`{config.DEFAULT_KEEPALIVE_TIMEOUT_SECONDS:g}`", _float, render=repr),
    Option("idle_timeout_seconds", "--upstream-idle-timeout", (_P + "UPSTREAM_IDLE_TIMEOUT",),
           "seconds the gateway may stay silent (before its first byte or mid-stream) before "
           "the call is given up; streams have no total limit",
           f"`{config.DEFAULT_IDLE_TIMEOUT_SECONDS:g}`", _float, render=repr),
    Option("upstream_client", "--upstream-client", (_P + "UPSTREAM_CLIENT",), "the HTTP "
           "client that talks to the gateway: `h1`, the proxy's own HTTP/1.1 client "
           "(httptools; the cheaper relay), or `aiohttp`'s; both keep the same payment "
           "rules, proxy and CA settings", f"`{config.DEFAULT_UPSTREAM_CLIENT}`",
           _choice(config.UPSTREAM_CLIENTS), choices=config.UPSTREAM_CLIENTS),
    Option("grace_seconds", "--grace-seconds", (_P + "GRACE_SECONDS",), "on SIGTERM, how long "
           "in-flight requests may finish", f"`{config.DEFAULT_GRACE_SECONDS:g}`", _float,
           render=repr),
    Option("workers", "--workers", (_P + "WORKERS",), "processes sharing the port (see "
           "[Several cores](#several-cores))", f"`{config.DEFAULT_WORKERS}`", _at_least(1)),
    Option("reuse_port", "--reuse-port", (_P + "REUSE_PORT",), "bind with `SO_REUSEPORT` (for "
           "your own supervisor)", "off", _bool, kind="flag"),
    Option("allow_public", "--allow-public", (_P + "ALLOW_PUBLIC",), "allow a non-loopback "
           "host without a token", "off", _bool, kind="flag"),
    Option("allowed_hosts", "--allowed-hosts", (_P + "ALLOWED_HOSTS",), "`Host` names "
           "answered besides loopback ones and the bound address (comma-separated; `*`: any); "
           "not checked on a public bind with a token", "none", _split, render=_render_list),
    Option("cors_origins", "--cors-origins", (_P + "CORS_ORIGINS",), "web origins "
           "(`https://app.example`, comma-separated) allowed to call the proxy from a browser; "
           "no wildcard", "none", _split, render=_render_list),
    Option("state_dir", "--state-dir", (_P + "STATE_DIR",), "what survives a restart (learned "
           "quotes, the local spend ledger); empty keeps nothing on disk",
           "`~/.blockrun/proxy`", config.parse_state_dir, render=_render_state_dir,
           blank_is_value=True),
    Option("rpc_url", "--rpc-url", (_P + "RPC_URL",), "an EVM JSON-RPC endpoint for on-chain "
           "reads (wallet balance, Permit2 allowance); with a wallet, the balance is read every "
           "minute", "none", str.strip, by_environment=True),
    Option("low_balance_usd", "--low-balance-usd", (_P + "LOW_BALANCE_USD",), "with "
           "`--rpc-url`: when the wallet's USDC falls below this, log one warning and set "
           "`blockrun_proxy_wallet_balance_low` to 1 (shown in `/readyz` and on `/spend` too)",
           "none", _decimal),
    Option("solana_rpc_url", "--solana-rpc-url", (_P + "SOLANA_RPC_URL",), "the Solana "
           "JSON-RPC endpoint recent blockhashes come from", "the public RPC of the Solana "
           "networks allowed", str.strip, by_environment=True),
    Option("solana_keypair", "--solana-keypair", (_P + "SOLANA_KEYPAIR",), "a solana-keygen "
           f"JSON keypair file to pay from, when `{config.SOLANA_KEY_ENV}` is unset",
           "`~/.blockrun/.solana-session`", _path),
    Option("api_key_url", "--api-key-url", (config.API_KEY_URL_ENV,), "the host calls go to "
           f"when `{config.API_KEY_ENV}` is set (prepaid credit, no x402)",
           f"`{config.DEFAULT_API_KEY_URL}`", _url),
    Option("rail", "--rail", (_P + "RAIL",), "what pays: `auto` (the API key when "
           f"`{config.API_KEY_ENV}` is set, else the wallets), `wallet` (ignore the API key), "
           "`apikey` (refuse to start without one; with `--demo`, a fake API host)",
           f"`{config.DEFAULT_RAIL}`", _choice(config.RAILS), choices=config.RAILS),
    Option("redis_url", "--redis-url", (config.REDIS_URL_ENV,), "share the budget, the spend "
           "ledger and learned quotes with other replicas through this Redis (`redis://`, "
           "`rediss://`, `unix://`; see [Running many replicas](#running-many-replicas))",
           "none", str.strip, by_environment=True),
    Option("redis_prefix", "--redis-prefix", (_P + "REDIS_PREFIX",), "prefix of every Redis "
           "key: one per fleet (wallet) sharing a Redis", f"`{config.DEFAULT_REDIS_PREFIX}`",
           str.strip),
    Option("redis_timeout_seconds", "--redis-timeout", (_P + "REDIS_TIMEOUT",), "seconds any "
           "one Redis call may take", f"`{config.DEFAULT_REDIS_TIMEOUT_SECONDS:g}`", _float,
           render=repr),
    Option("budget_fail_open", "--budget-fail-open", (_P + "BUDGET_FAIL_OPEN",), "Redis "
           "unreachable: sign under this process's own budget instead of answering `503`",
           "off", _bool, kind="flag"),
    Option("ledger_retention_seconds", "--ledger-retention", (_P + "LEDGER_RETENTION",),
           "how long the spend ledger keeps its hourly totals", "`30d`", _duration,
           render=lambda seconds: f"{seconds!r}s"),
    Option("demo", "--demo", (), "built-in fake gateway and throwaway wallet, offline: on "
           "Base, on Solana with `--chain solana`, or a fake API key with `--rail apikey`",
           "off", _bool, kind="flag"),
    Option("ssl_cert_file", None, ("SSL_CERT_FILE",), "CA bundle (PEM) the gateway's TLS "
           "certificate is checked against, instead of the system's", "the system's",
           str.strip),
    Option("ssl_cert_dir", None, ("SSL_CERT_DIR",), "a directory of CA certificates "
           "(`c_rehash` layout), instead of the system's", "the system's", str.strip),
    Option("https_proxy", None, ("https_proxy", "HTTPS_PROXY"), "an `http://` proxy the "
           "gateway is reached through (`CONNECT`), as curl reads it", "none", str.strip),
    Option("http_proxy", None, ("http_proxy", "HTTP_PROXY"), "the same, for an `http://` "
           "gateway", "none", str.strip),
    Option("no_proxy", None, ("no_proxy", "NO_PROXY"), "host names reached directly "
           "(comma-separated suffixes, `*`: all)", "none", str.strip),
    Option("metrics_dir", None, (config.METRICS_DIR_ENV,), "prometheus-client's multiprocess "
           "directory; the `--workers` supervisor sets it for its children", "none",
           str.strip, documented=False),
    Option("wallet_key", None, (config.WALLET_ENV, config.LEGACY_WALLET_ENV), "the wallet's "
           f"private key (else `{config.WALLET_FILE.name}` in `~/.blockrun`)", "none",
           secret=True),
    Option("solana_key", None, (config.SOLANA_KEY_ENV, *config.SOLANA_KEY_ENV_ALIASES), "the "
           "Solana wallet's secret key, base58", "none", secret=True),
    Option("api_key", None, (config.API_KEY_ENV,), "a BlockRun API key (`brk_...`): calls "
           "are paid from its prepaid credit, nothing is signed", "none", secret=True),
    Option("token", None, (config.TOKEN_ENV,), "clients must send `Authorization: Bearer "
           "<token>`; at least 16 characters on a non-loopback `--host`", "none", secret=True),
    Option("redis_password", None, (config.REDIS_PASSWORD_ENV,), "Redis's password, kept out "
           "of the URL", "none", secret=True),
)  # fmt: skip

BY_FIELD: Mapping[str, Option] = {option.field: option for option in OPTIONS}
# Chosen by the supervisor for each child, never passed on.
NOT_PASSED_TO_WORKERS = frozenset({"workers", "reuse_port"})
_DEFAULTS = {f.name: f.default for f in fields(Settings)}


# --- reading ---------------------------------------------------------------------------------


def read_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    """The values the environment gives, by Settings field (secrets excluded)."""
    values: dict[str, Any] = {}
    for option in OPTIONS:
        if option.secret:
            continue
        for name in option.env:
            text = environ.get(name)
            if text is None or (not text.strip() and not option.blank_is_value):
                continue
            values[option.field] = option.read(text, f"${name}")
            break
    return values


def read_flags(params: Mapping[str, Any]) -> dict[str, Any]:
    """The values click's parsed flags give (None / () / False-less: not given)."""
    values: dict[str, Any] = {}
    for option in OPTIONS:
        if option.flag is None or option.field not in params:
            continue
        given = params[option.field]
        if given is None or (option.kind == "list" and not given):
            continue
        if option.kind == "flag":
            values[option.field] = bool(given)
        elif option.kind == "list":
            values[option.field] = tuple(a for text in given for a in option.read(text))
        else:
            values[option.field] = option.read(given)
    return values


def build(values: Mapping[str, Any], secrets: Mapping[str, Any] | None = None) -> Settings:
    """Settings from given values; ``--chain`` decides the gateway URL and networks that
    were not given. ValueError for a chain that does not exist."""
    fields_ = dict(values)
    chain = fields_.get("chain", config.DEFAULT_CHAIN)
    api_url, networks = config.chain_defaults(chain)
    fields_.setdefault("api_url", api_url)
    fields_.setdefault("networks", networks)
    return replace(Settings(), **fields_, **(secrets or {}))


def from_env(environ: Mapping[str, str], *, secrets: bool = True) -> Settings:
    """``Settings.from_env``: the table's variables, and (``secrets``) the keys and token
    from the environment or the wallet files, without removing them (``serve`` does that)."""
    values = read_environ(environ)
    found = config.read_secrets(environ, keypair=values.get("solana_keypair")) if secrets else {}
    return build(values, found)


# --- rendering -------------------------------------------------------------------------------


def to_args(settings: Settings) -> list[str]:
    """``settings`` as ``serve`` flags: each value that differs from the default, so that a
    child parsing them (over the same environment) gets exactly these settings. Secrets are
    not options: they travel through a pipe (keyguard.send_secrets)."""
    args: list[str] = []
    for option in OPTIONS:
        if option.flag is None or option.secret or option.by_environment:
            continue
        if option.field in NOT_PASSED_TO_WORKERS:
            continue
        value = getattr(settings, option.field)
        if value == _DEFAULTS[option.field]:
            continue
        if option.kind == "flag":
            args.append(option.flag)
        elif option.kind == "list":
            for item in value:
                args += [option.flag, item]
        else:
            args += [option.flag, option.render(value)]
    return args


def worker_environ(settings: Settings) -> dict[str, str]:
    """What ``--workers`` children get in their environment instead of a flag: values that
    may hold a password (they inherit the rest of the parent's environment)."""
    env: dict[str, str] = {}
    for option in OPTIONS:
        value = getattr(settings, option.field)
        if option.by_environment and value is not None and option.env:
            env[option.env[0]] = option.render(value)
    return env


def markdown_table() -> str:
    """The README's Configuration table."""
    lines = ["| flag | env | default | meaning |", "|---|---|---|---|"]
    for option in OPTIONS:
        if not option.documented:
            continue
        flag = f"`{option.flag}`" if option.flag else ""
        env = ", ".join(f"`{name}`" for name in option.env)
        lines.append(f"| {flag} | {env} | {option.default} | {option.help} |")
    return "\n".join(lines) + "\n"


def help_text(option: Option) -> str:
    """``--help``'s text for a flag: the meaning, the variable, the default."""
    text = option.help if option.help.startswith("`") else option.help[:1].upper() + option.help[1:]
    env = f" [env: {option.env[0]}]" if option.env else ""
    return f"{text}.{env} [default: {option.default}]".replace("`", "")
