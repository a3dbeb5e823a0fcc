"""The ``blockrun-proxy`` command. Every ``serve`` flag also reads an environment variable."""

from __future__ import annotations

import asyncio
import logging
import os
from decimal import Decimal
from pathlib import Path

import click

from blockrun_proxy import config, keyguard, logs
from blockrun_proxy.config import Settings
from blockrun_proxy.wallet.cli import wallet

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
# Options whose value may hold a secret (a password in a URL): a command line is visible
# to every user of the machine (ps), so --workers hands these to children by environment.
SECRET_OPTIONS = frozenset({"redis_url"})


def _env(name: str) -> str:
    return config.ENV_PREFIX + name


@click.group(invoke_without_command=True)
@click.version_option(package_name="blockrun-proxy")
@click.pass_context
def main(ctx: click.Context) -> None:
    """An OpenAI-compatible sidecar that pays BlockRun's x402 gateway per call."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(serve)


@main.command()
@click.option(
    "--host",
    default=config.DEFAULT_HOST,
    show_default=True,
    envvar=_env("HOST"),
    help="Interface to bind. Non-loopback needs BLOCKRUN_PROXY_TOKEN or --allow-public.",
)
@click.option(
    "--port", default=config.DEFAULT_PORT, show_default=True, type=int, envvar=_env("PORT")
)
@click.option(
    "--chain",
    default=config.DEFAULT_CHAIN,
    show_default=True,
    envvar=_env("CHAIN"),
    type=click.Choice(config.CHAINS),
    help="Which BlockRun gateway and networks to pay on by default: base "
    f"({config.DEFAULT_API_URL}) or solana ({config.SOLANA_API_URL}). "
    "--api-url and --networks override it.",
)
@click.option(
    "--api-url",
    default=None,
    envvar="BLOCKRUN_API_URL",
    help="The BlockRun gateway base URL. [default: per --chain]",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    envvar=_env("LOG_LEVEL"),
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
)
@click.option(
    "--log-format",
    default="text",
    show_default=True,
    envvar=_env("LOG_FORMAT"),
    type=click.Choice(("text", "json")),
)
@click.option(
    "--networks",
    default=None,
    envvar=_env("NETWORKS"),
    help="Comma-separated CAIP-2 networks the payer may sign on. [default: per --chain: "
    f"{','.join(config.DEFAULT_NETWORKS)} or {','.join(config.SOLANA_NETWORKS)}]",
)
@click.option(
    "--max-price-usd",
    default=str(config.DEFAULT_MAX_PRICE_USD),
    show_default=True,
    envvar=_env("MAX_PRICE_USD"),
    type=Decimal,
    help="Never sign more than this for one call.",
)
@click.option(
    "--default-max-tokens",
    default=config.DEFAULT_MAX_TOKENS,
    show_default=True,
    type=int,
    envvar=_env("DEFAULT_MAX_TOKENS"),
    help="max_tokens added to requests that set neither max_tokens nor max_completion_tokens.",
)
@click.option(
    "--pay-to",
    multiple=True,
    envvar=_env("PAY_TO"),
    help="Only pay these addresses (repeatable). Default: any address the gateway names.",
)
@click.option(
    "--budget-usd",
    default=None,
    envvar=_env("BUDGET_USD"),
    type=Decimal,
    help="Never send payments worth more than this in total over --budget-window (held "
    "from before signing; payments that never reached the gateway are not counted). "
    "Default: no budget.",
)
@click.option(
    "--budget-window",
    default="24h",
    show_default=True,
    envvar=_env("BUDGET_WINDOW"),
    callback=lambda _ctx, _param, value: _duration(value),
    help="The rolling window of --budget-usd: e.g. 24h, 30m, 3600s.",
)
@click.option(
    "--presign-tolerance-usd",
    default="0",
    show_default=True,
    envvar=_env("PRESIGN_TOLERANCE_USD"),
    type=Decimal,
    help="When signing up front from a learned quote, over-pay at most this much per call "
    "to save the extra round trip (0: only exact amounts; over-payment is counted).",
)
@click.option(
    "--max-concurrent",
    default=config.DEFAULT_MAX_CONCURRENT,
    show_default=True,
    type=int,
    envvar=_env("MAX_CONCURRENT"),
    help="In-flight upstream calls at most (streams included); sizes the connection pool.",
)
@click.option(
    "--max-queue",
    default=None,
    type=click.IntRange(min=0),
    envvar=_env("MAX_QUEUE"),
    help="Calls that may wait for a free slot; past it, 429 at once. [default: --max-concurrent]",
)
@click.option(
    "--queue-timeout",
    default=config.DEFAULT_QUEUE_TIMEOUT_SECONDS,
    show_default=True,
    type=float,
    envvar=_env("QUEUE_TIMEOUT"),
    help="Seconds a call may wait for a free slot before it gets a 429.",
)
@click.option(
    "--max-connections",
    default=None,
    type=click.IntRange(min=1),
    envvar=_env("MAX_CONNECTIONS"),
    help="Open client connections per process; past it, new ones get a 503 and are closed at "
    "once. [default: 2 x (--max-concurrent + --max-queue) + 64, at least 1024]",
)
@click.option(
    "--headers-timeout",
    default=config.DEFAULT_HEADERS_TIMEOUT_SECONDS,
    show_default=True,
    type=float,
    envvar=_env("HEADERS_TIMEOUT"),
    help="Seconds a connection has to send complete request headers (from connecting, or "
    "from the first byte of a later request).",
)
@click.option(
    "--body-timeout",
    default=config.DEFAULT_BODY_TIMEOUT_SECONDS,
    show_default=True,
    type=float,
    envvar=_env("BODY_TIMEOUT"),
    help="Seconds a request body has to arrive once admitted; a stalled one gets a 408 and "
    "frees its slot.",
)
@click.option(
    "--keepalive-timeout",
    default=config.DEFAULT_KEEPALIVE_TIMEOUT_SECONDS,
    show_default=True,
    type=float,
    envvar=_env("KEEPALIVE_TIMEOUT"),
    help="Seconds an idle keep-alive connection stays open after its last response.",
)
@click.option(
    "--upstream-idle-timeout",
    default=config.DEFAULT_IDLE_TIMEOUT_SECONDS,
    show_default=True,
    type=float,
    envvar=_env("UPSTREAM_IDLE_TIMEOUT"),
    help="Seconds the gateway may stay silent mid-answer (or before its first byte) before "
    "the call is given up; streams have no total limit.",
)
@click.option(
    "--workers",
    default=config.DEFAULT_WORKERS,
    show_default=True,
    type=click.IntRange(min=1),
    envvar=_env("WORKERS"),
    help="Processes serving the port together (SO_REUSEPORT); each gets the limits above.",
)
@click.option(
    "--reuse-port",
    is_flag=True,
    envvar=_env("REUSE_PORT"),
    help="Bind with SO_REUSEPORT, for running several processes on one port yourself.",
)
@click.option(
    "--grace-seconds",
    default=config.DEFAULT_GRACE_SECONDS,
    show_default=True,
    type=float,
    envvar=_env("GRACE_SECONDS"),
    help="On SIGTERM, how long in-flight requests may finish.",
)
@click.option(
    "--allow-public",
    is_flag=True,
    envvar=_env("ALLOW_PUBLIC"),
    help="Allow a non-loopback --host without BLOCKRUN_PROXY_TOKEN.",
)
@click.option(
    "--allowed-hosts",
    default="",
    envvar=_env("ALLOWED_HOSTS"),
    help="Comma-separated Host names to answer besides loopback ones and the bound address "
    "(DNS rebinding protection; '*' turns the check off). Not checked on a public bind with "
    "a token.",
)
@click.option(
    "--cors-origins",
    default="",
    envvar=_env("CORS_ORIGINS"),
    help="Comma-separated web origins (https://app.example) allowed to call the proxy from a "
    "browser. Default: none; every page is refused.",
)
@click.option(
    "--state-dir",
    default=str(config.DEFAULT_STATE_DIR),
    show_default=True,
    envvar=_env("STATE_DIR"),
    help="Where learned quotes and the local spend ledger survive restarts ('' keeps none).",
)
@click.option(
    "--rpc-url",
    default=None,
    envvar=_env("RPC_URL"),
    help="An EVM JSON-RPC endpoint for on-chain reads (wallet balance, Permit2 allowance).",
)
@click.option(
    "--low-balance-usd",
    default=None,
    envvar=_env("LOW_BALANCE_USD"),
    type=Decimal,
    help="With --rpc-url: warn once when the wallet's USDC balance falls below this.",
)
@click.option(
    "--solana-rpc-url",
    default=None,
    envvar=_env("SOLANA_RPC_URL"),
    help="The Solana JSON-RPC endpoint recent blockhashes come from. [default: the public "
    "RPC of the Solana networks allowed: mainnet, or devnet when they are all devnet]",
)
@click.option(
    "--solana-keypair",
    default=None,
    envvar=_env("SOLANA_KEYPAIR"),
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"A solana-keygen JSON keypair file to pay from, when {config.SOLANA_KEY_ENV} is unset. "
    f"[default: {config.SOLANA_WALLET_FILE}]",
)
@click.option(
    "--api-key-url",
    default=config.DEFAULT_API_KEY_URL,
    show_default=True,
    envvar=config.API_KEY_URL_ENV,
    help=f"The host calls go to when {config.API_KEY_ENV} is set (prepaid credit, no x402).",
)
@click.option(
    "--redis-url",
    default=None,
    envvar=config.REDIS_URL_ENV,
    help="Share the budget, learned quotes and the spend ledger with other replicas through "
    "this Redis (redis://, rediss://, unix://). Password: in the URL or "
    f"{config.REDIS_PASSWORD_ENV}.",
)
@click.option(
    "--redis-prefix",
    default=config.DEFAULT_REDIS_PREFIX,
    show_default=True,
    envvar=_env("REDIS_PREFIX"),
    help="Prefix of every Redis key: one per fleet (wallet) sharing a Redis.",
)
@click.option(
    "--redis-timeout",
    default=config.DEFAULT_REDIS_TIMEOUT_SECONDS,
    show_default=True,
    type=float,
    envvar=_env("REDIS_TIMEOUT"),
    help="Seconds any one Redis call may take before it counts as failed.",
)
@click.option(
    "--budget-fail-open",
    is_flag=True,
    envvar=_env("BUDGET_FAIL_OPEN"),
    help="When Redis does not answer, sign under this process's own budget instead of "
    "refusing with 503 (the fleet may then sign up to N x --budget-usd).",
)
@click.option(
    "--ledger-retention",
    default="30d",
    show_default=True,
    envvar=_env("LEDGER_RETENTION"),
    callback=lambda _ctx, _param, value: _duration(value),
    help="How long the spend ledger keeps its hourly totals: e.g. 30d, 72h.",
)
@click.option(
    "--demo",
    is_flag=True,
    help="Start a built-in fake x402 gateway and a throwaway wallet (no network needed).",
)
def serve(
    host: str,
    port: int,
    chain: str,
    api_url: str | None,
    log_level: str,
    log_format: str,
    networks: str | None,
    max_price_usd: Decimal,
    default_max_tokens: int,
    pay_to: tuple[str, ...],
    budget_usd: Decimal | None,
    budget_window: float,
    presign_tolerance_usd: Decimal,
    max_concurrent: int,
    max_queue: int | None,
    queue_timeout: float,
    max_connections: int | None,
    headers_timeout: float,
    body_timeout: float,
    keepalive_timeout: float,
    upstream_idle_timeout: float,
    workers: int,
    reuse_port: bool,
    grace_seconds: float,
    allow_public: bool,
    allowed_hosts: str,
    cors_origins: str,
    state_dir: str,
    rpc_url: str | None,
    low_balance_usd: Decimal | None,
    solana_rpc_url: str | None,
    solana_keypair: Path | None,
    api_key_url: str,
    redis_url: str | None,
    redis_prefix: str,
    redis_timeout: float,
    budget_fail_open: bool,
    ledger_retention: float,
    demo: bool,
) -> None:
    """Run the proxy (the default command)."""
    try:
        # First: out of the environment before anything else runs.
        secrets = keyguard.take_secrets(solana_keypair=solana_keypair)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    chain_api_url, chain_networks = config.chain_defaults(chain)
    settings = Settings(
        host=host,
        port=port,
        chain=chain,
        api_url=api_url or chain_api_url,
        log_level=log_level.lower(),
        log_format=log_format,
        networks=(
            tuple(n.strip() for n in networks.split(",") if n.strip())
            if networks is not None
            else chain_networks
        ),
        max_price_usd=max_price_usd,
        default_max_tokens=default_max_tokens,
        pay_to=pay_to,
        budget_usd=budget_usd,
        budget_window_seconds=budget_window,
        presign_tolerance_usd=presign_tolerance_usd,
        max_concurrent=max_concurrent,
        max_queue=max_queue,
        queue_timeout_seconds=queue_timeout,
        max_connections=max_connections,
        headers_timeout_seconds=headers_timeout,
        body_timeout_seconds=body_timeout,
        keepalive_timeout_seconds=keepalive_timeout,
        idle_timeout_seconds=upstream_idle_timeout,
        workers=workers,
        reuse_port=reuse_port,
        metrics_dir=config.read_metrics_dir(),
        grace_seconds=grace_seconds,
        allow_public=allow_public,
        allowed_hosts=_comma_list(allowed_hosts),
        cors_origins=_comma_list(cors_origins),
        state_dir=config.parse_state_dir(state_dir),
        rpc_url=rpc_url or None,
        redis_url=redis_url or None,
        redis_prefix=redis_prefix,
        redis_timeout_seconds=redis_timeout,
        budget_fail_open=budget_fail_open,
        ledger_retention_seconds=ledger_retention,
        low_balance_usd=low_balance_usd,
        solana_rpc_url=solana_rpc_url or None,
        solana_keypair=solana_keypair,
        api_key_url=api_key_url.rstrip("/"),
        demo=demo,
        token=secrets.token,
        wallet_key=None if demo else secrets.wallet_key,
        solana_key=None if demo else secrets.solana_key,
        api_key=None if demo else secrets.api_key,
        redis_password=config.read_redis_password(),
    )
    try:
        settings.check()
        _check_wallet(settings)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    stop_logging = logs.setup(settings.log_level, settings.log_format)
    try:
        code = _run(settings, secrets)
    finally:
        flushed = stop_logging()
    if not flushed:
        # The log sink is stalled and the writer thread is blocked in a write on it: a
        # normal exit flushes stderr at interpreter shutdown and would wait on it forever.
        os._exit(code)
    if code:
        raise SystemExit(code)


def _run(settings: Settings, secrets: keyguard.Secrets) -> int:
    log = logging.getLogger("blockrun_proxy")
    if settings.workers > 1:
        from blockrun_proxy.workers import supervise

        # The Redis URL may carry a password: children get it in their environment.
        extra_env = {config.REDIS_URL_ENV: settings.redis_url} if settings.redis_url else {}
        return supervise(
            _worker_options(click.get_current_context()),
            settings.workers,
            secrets,
            extra_env=extra_env,
        )
    if settings.redis_url:
        log.info(
            "fleet store: %s (budget, quotes and spend ledger shared)",
            config.redacted_url(settings.redis_url),
        )
    if settings.demo:
        log.info("demo mode: fake gateway and throwaway wallet")
    elif settings.wallet_key:
        log.info("wallet loaded from %s", secrets.wallet_source)
    else:
        log.warning(
            "no wallet: serving free models only (set %s to pay for others)", config.WALLET_ENV
        )
    from blockrun_proxy.server import serve as run

    asyncio.run(run(settings))
    return 0


def _worker_options(ctx: click.Context) -> list[str]:
    """The parsed ``serve`` options as command-line flags again, for --workers children.

    Values that came from the environment become explicit flags (same values). Secrets
    are not options: each child gets them through a pipe (keyguard.send_secrets).
    """
    args: list[str] = []
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or not param.expose_value:
            continue
        if param.name in ("workers", "reuse_port"):
            continue  # the supervisor sets these for its children
        if param.name in SECRET_OPTIONS:
            continue  # passed in the environment, never on a command line
        value = ctx.params.get(param.name or "")
        flag = max(param.opts, key=len)
        if value is None:
            continue
        if param.is_flag:
            if value:
                args.append(flag)
        elif param.multiple:
            for item in value:
                args += [flag, str(item)]
        else:
            args += [flag, str(value)]
    return args


def _comma_list(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _duration(value: str) -> float:
    try:
        return config.parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _check_wallet(settings: Settings) -> None:
    if settings.wallet_key:
        from blockrun_proxy.x402 import Signer

        Signer(settings.wallet_key)  # raises ValueError without echoing the key
    if settings.solana_key:
        from blockrun_proxy.x402.svm import solana_secret

        solana_secret(settings.solana_key)  # the same: shape errors only, never the key


@main.command()
@click.option(
    "--solana-keypair",
    default=None,
    envvar=_env("SOLANA_KEYPAIR"),
    type=click.Path(dir_okay=False, path_type=Path),
    help="A solana-keygen JSON keypair file, as for serve.",
)
def address(solana_keypair: Path | None) -> None:
    """Print the addresses the proxy would pay from, Base and Solana (never a key)."""
    lines = []
    key, source = config.read_wallet_key()
    if key:
        from blockrun_proxy.x402 import Signer

        try:
            lines.append(f"base    {Signer(key).address}  (from {source})")
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    try:
        solana_key, solana_source = config.read_solana_key(keypair=solana_keypair)
        if solana_key:
            from blockrun_proxy.x402.svm import SolanaSigner

            lines.append(f"solana  {SolanaSigner(solana_key).address}  (from {solana_source})")
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if config.read_api_key():
        lines.append(f"api key set (${config.API_KEY_ENV}): calls are paid from prepaid credit")
    if not lines:
        raise click.ClickException(
            f"no wallet: set {config.WALLET_ENV} or create {config.WALLET_FILE} (Base), "
            f"or set {config.SOLANA_KEY_ENV} or create {config.SOLANA_WALLET_FILE} (Solana)"
        )
    click.echo("\n".join(lines))


main.add_command(wallet)


@main.command()
@click.option(
    "--redis-url",
    default=None,
    envvar=config.REDIS_URL_ENV,
    help="Read the fleet's ledger from this Redis (as `serve --redis-url`).",
)
@click.option(
    "--redis-prefix",
    default=config.DEFAULT_REDIS_PREFIX,
    show_default=True,
    envvar=_env("REDIS_PREFIX"),
)
@click.option(
    "--redis-timeout",
    default=2.0,
    show_default=True,
    type=float,
    envvar=_env("REDIS_TIMEOUT"),
)
@click.option(
    "--state-dir",
    default=str(config.DEFAULT_STATE_DIR),
    show_default=True,
    envvar=_env("STATE_DIR"),
    help="Without --redis-url: the directory holding the local ledger (spend.sqlite3).",
)
@click.option(
    "--budget-usd",
    default=None,
    envvar=_env("BUDGET_USD"),
    type=Decimal,
    help="Show the budget used and left (as `serve --budget-usd`).",
)
@click.option(
    "--budget-window",
    default="24h",
    show_default=True,
    envvar=_env("BUDGET_WINDOW"),
    callback=lambda _ctx, _param, value: _duration(value),
)
@click.option("--hours", default=24, show_default=True, type=click.IntRange(1, 24 * 31))
@click.option("--last", default=20, show_default=True, type=click.IntRange(0, 500))
@click.option("--json", "as_json", is_flag=True, help="Print the /v1/spend JSON document.")
def spend(
    redis_url: str | None,
    redis_prefix: str,
    redis_timeout: float,
    state_dir: str,
    budget_usd: Decimal | None,
    budget_window: float,
    hours: int,
    last: int,
    as_json: bool,
) -> None:
    """Print where the money went: spend per model and hour, the budget, the last calls."""
    settings = Settings(
        redis_url=redis_url or None,
        redis_prefix=redis_prefix,
        redis_timeout_seconds=redis_timeout,
        redis_password=config.read_redis_password(),
        state_dir=config.parse_state_dir(state_dir),
        budget_usd=budget_usd,
        budget_window_seconds=budget_window,
    )
    try:
        settings.check()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    from blockrun_proxy.spend.report import NoLedger, read_report

    try:
        doc = asyncio.run(read_report(settings, hours=hours, last=last))
    except NoLedger as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        import orjson

        click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    else:
        from blockrun_proxy.spend.summary import render_text

        click.echo(render_text(doc), nl=False)
