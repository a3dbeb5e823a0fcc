"""The ``blockrun-proxy`` command. ``serve``'s flags come from the option table (options.py):
each also has an environment variable, and a flag given wins over its variable."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from blockrun_proxy import config, keyguard, logs, options
from blockrun_proxy.config import Settings
from blockrun_proxy.wallet.cli import wallet


@click.group(invoke_without_command=True)
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
    }


def _run(settings: Settings, secrets: keyguard.Secrets) -> int:
    log = logging.getLogger("blockrun_proxy")
    if settings.workers > 1:
        from blockrun_proxy.workers import supervise

        return supervise(options.to_args(settings), settings.workers, secrets)
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


main.add_command(wallet)
