"""The ``blockrun-proxy`` command. ``serve``'s flags come from the option table (options.py):
each also has an environment variable, and a flag given wins over its variable."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import click

from blockrun_proxy import config, keyguard, logs, options
from blockrun_proxy.config import Settings


class _Commands(click.Group):
    """``main``'s subcommands, with ``wallet`` imported only when it is named (or the help
    lists it): ``serve`` never uses it, and startup is measured."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), "wallet"})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "wallet":
            from blockrun_proxy.wallet.cli import wallet

            return wallet
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Commands, invoke_without_command=True)
@click.version_option(package_name="blockrun-proxy")
@click.pass_context
def main(ctx: click.Context) -> None:
    """An OpenAI-compatible sidecar that pays BlockRun's x402 gateway per call."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(serve)


def _serve_options(command: Callable[..., None]) -> Callable[..., None]:
    """One click option per flag row of the option table (options.py): no default and no
    envvar of click's own, so an absent flag is None and the environment is read once, by
    the table, under the flags."""
    for option in reversed(options.OPTIONS):
        if option.flag is None:
            continue
        kwargs: dict[str, Any] = {"default": None, "help": options.help_text(option)}
        if option.kind == "flag":
            kwargs["is_flag"] = True
        elif option.kind == "list":
            kwargs["multiple"] = True
        if option.choices:
            kwargs["type"] = click.Choice(option.choices, case_sensitive=False)
        command = click.option(option.flag, option.field, **kwargs)(command)
    return command


@main.command()
@_serve_options
def serve(**flags: object) -> None:
    """Run the proxy (the default command)."""
    try:
        values = {**options.read_environ(os.environ), **options.read_flags(flags)}
        # First thing after parsing: the secrets out of the environment, before anything runs.
        secrets = keyguard.take_secrets(solana_keypair=values.get("solana_keypair"))
        settings = options.build(values, _secret_fields(secrets, demo=values.get("demo", False)))
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


def _secret_fields(secrets: keyguard.Secrets, *, demo: bool) -> dict[str, str | None]:
    """The Settings fields of ``secrets``; --demo pays from a throwaway wallet only."""
    return {
        "token": secrets.token,
        "wallet_key": None if demo else secrets.wallet_key,
        "solana_key": None if demo else secrets.solana_key,
        "api_key": None if demo else secrets.api_key,
        # Not a key to the wallet: it stays in the environment, which children inherit.
        "redis_password": config.read_redis_password(),
    }


def _run(settings: Settings, secrets: keyguard.Secrets) -> int:
    log = logging.getLogger("blockrun_proxy")
    if settings.workers > 1:
        from blockrun_proxy.workers import supervise, worker_settings

        return supervise(
            options.to_args(worker_settings(settings)),
            settings.workers,
            secrets,
            extra_env=options.worker_environ(settings),
        )
    if settings.redis_url:
        log.info(
            "fleet store: %s (budget, quotes and spend ledger shared)",
            config.redacted_url(settings.redis_url),
        )
    if settings.demo:
        log.info("demo mode: fake gateway and throwaway wallet")
    elif settings.api_key and settings.rail != "wallet":
        log.info("paying with the API key from $%s", config.API_KEY_ENV)
    elif settings.wallet_key or settings.solana_key:
        if settings.wallet_key:
            log.info("wallet loaded from %s", secrets.wallet_source)
    else:
        log.warning(
            "no wallet: serving free models only (set %s, %s or %s to pay for others)",
            config.WALLET_ENV,
            config.SOLANA_KEY_ENV,
            config.API_KEY_ENV,
        )
    from blockrun_proxy.server import serve as run

    asyncio.run(run(settings))
    return 0


def _env_of(field: str) -> str:
    """The variable of a setting's row in the option table (for commands besides serve)."""
    return options.BY_FIELD[field].env[0]


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
    envvar=options.BY_FIELD["solana_keypair"].env[0],
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


@main.command()
@click.option(
    "--redis-url",
    default=None,
    envvar=_env_of("redis_url"),
    help="Read the fleet's ledger from this Redis (as `serve --redis-url`).",
)
@click.option(
    "--redis-prefix",
    default=config.DEFAULT_REDIS_PREFIX,
    show_default=True,
    envvar=_env_of("redis_prefix"),
)
@click.option(
    "--redis-timeout",
    default=2.0,
    show_default=True,
    type=float,
    envvar=_env_of("redis_timeout_seconds"),
)
@click.option(
    "--state-dir",
    default=str(config.DEFAULT_STATE_DIR),
    show_default=True,
    envvar=_env_of("state_dir"),
    help="Without --redis-url: the directory holding the local ledger (spend.sqlite3).",
)
@click.option(
    "--budget-usd",
    default=None,
    envvar=_env_of("budget_usd"),
    type=Decimal,
    help="Show the budget used and left (as `serve --budget-usd`).",
)
@click.option(
    "--budget-window",
    default="24h",
    show_default=True,
    envvar=_env_of("budget_window_seconds"),
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
