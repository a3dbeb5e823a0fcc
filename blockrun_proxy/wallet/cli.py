"""``blockrun-proxy wallet create | balance | approve-permit2``.

Only click and the settings module at import: the RPC client, the signer and
eth_account load inside the command that needs them, so ``serve`` starts no slower.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, TypeVar

import click

from blockrun_proxy import config

if TYPE_CHECKING:
    from blockrun_proxy.x402 import Network

T = TypeVar("T")


def _network(value: str | None) -> Network:
    """``--network``, else the first of BLOCKRUN_PROXY_NETWORKS, else Base."""
    from blockrun_proxy.x402 import network_for

    if value is None:
        from blockrun_proxy.options import read_environ

        listed = read_environ(os.environ).get("networks", ())
        value = listed[0] if listed else config.DEFAULT_NETWORKS[0]
    network = network_for(value.strip())
    if network is None:
        raise click.BadParameter(f"unknown network {value!r} (eip155:8453 or eip155:84532)")
    return network


network_option = click.option(
    "--network",
    default=None,
    help="CAIP-2 network. [default: the first of BLOCKRUN_PROXY_NETWORKS, else eip155:8453]",
)
rpc_option = click.option(
    "--rpc-url",
    default=None,
    envvar=config.ENV_PREFIX + "RPC_URL",  # the option table's row for --rpc-url
    help="EVM JSON-RPC endpoint. [default: the network's public one, e.g. https://mainnet.base.org]",
)


def _run(coro: Awaitable[T]) -> T:
    """Run one chain conversation; its RpcError becomes a one-line error, never a traceback."""
    from blockrun_proxy.evm_rpc import RpcError

    async def main() -> T:
        return await coro

    try:
        return asyncio.run(main())
    except RpcError as exc:
        raise click.ClickException(exc.message) from None


def _wallet_key() -> tuple[str, str]:
    """The wallet key and its source; a ClickException (never echoing the key) otherwise."""
    from blockrun_proxy.x402 import Signer

    key, source = config.read_wallet_key()
    if not key:
        raise click.ClickException(
            f"no wallet: set {config.WALLET_ENV} or run `blockrun-proxy wallet create`"
        )
    try:
        Signer(key)
    except ValueError as exc:
        raise click.ClickException(f"{exc} (from {source})") from None
    return key, source


@click.group()
def wallet() -> None:
    """The proxy's wallet: create it, read its funds, approve Permit2 for the upto scheme."""


@wallet.command()
def create() -> None:
    """Create a wallet in ~/.blockrun/.session (mode 0600, as blockrun-llm); never overwrites."""
    from blockrun_proxy.wallet.keyfile import WalletExists, create_wallet_file

    path = config.WALLET_FILE
    try:
        address = create_wallet_file(path, guard=(config.LEGACY_WALLET_FILE,))
    except WalletExists as exc:
        raise click.ClickException(
            f"{exc}. `blockrun-proxy address` shows its address; move the file away first "
            "if you really want a new wallet (a funded key cannot be recovered)."
        ) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror}") from None
    click.echo(f"Created a wallet: {address}")
    click.echo(f"Key stored in {path} (readable by you only). Back it up; it is not shown.")
    click.echo(
        "\nFund it: send USDC on Base (eip155:8453) to the address above; for Base Sepolia "
        "test USDC use https://faucet.circle.com. The proxy signs from it on its next start.\n"
        "Check with:  blockrun-proxy wallet balance\n"
        "For the upto scheme (pay only what a call uses), also send a little ETH for gas and run "
        "once:  blockrun-proxy wallet approve-permit2 --amount-usd 20"
    )
    if config.read_wallet_key()[1].startswith("$"):
        click.echo(f"\nNote: {config.WALLET_ENV} is set and takes precedence over this file.")


@wallet.command()
@network_option
@rpc_option
@click.option("--address", default=None, help="Read this address instead of the wallet's.")
def balance(network: str | None, rpc_url: str | None, address: str | None) -> None:
    """Print the wallet's USDC, its Permit2 allowance and its ETH for gas."""
    from blockrun_proxy.evm_rpc import EvmRpc
    from blockrun_proxy.wallet.approve import format_eth
    from blockrun_proxy.wallet.chain import WalletFunds, check_chain, read_funds
    from blockrun_proxy.x402 import Signer, checksum_address, usd

    net = _network(network)
    if address is None:
        address = Signer(_wallet_key()[0]).address
    else:
        try:
            address = checksum_address(address)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--address") from None
    url = _rpc_url(net, rpc_url)
    owner = address

    async def read() -> tuple[str, WalletFunds]:
        async with EvmRpc(url) as rpc:
            await check_chain(rpc, net)
            return rpc.endpoint, await read_funds(rpc, net, owner)

    endpoint, funds = _run(read())
    click.echo(f"{owner} on {net.name} ({net.caip2}), via {endpoint}")
    click.echo(f"  USDC:              {usd(funds.usdc)}")
    click.echo(f"  Permit2 allowance: {usd(funds.permit2_allowance)} USDC (what upto may spend)")
    click.echo(f"  ETH for gas:       {format_eth(funds.eth_wei)}")


@wallet.command("approve-permit2")
@click.option(
    "--amount-usd",
    required=True,
    help="USDC Permit2 may pull for upto payments (replaces the current allowance).",
)
@network_option
@rpc_option
@click.option("--yes", is_flag=True, help="Send without asking for confirmation.")
def approve_permit2(amount_usd: str, network: str | None, rpc_url: str | None, yes: bool) -> None:
    """Send one bounded USDC approve(Permit2, amount): what the upto scheme pays through."""
    from blockrun_proxy.evm_rpc import EvmRpc
    from blockrun_proxy.wallet.approve import (
        ApprovalRefused,
        check_amount,
        format_eth,
        plan_approval,
        send_approval,
    )
    from blockrun_proxy.x402 import PERMIT2_ADDRESS, Signer, usd

    amount = _atomic(amount_usd)
    try:
        check_amount(amount)
    except ApprovalRefused as exc:
        raise click.BadParameter(str(exc), param_hint="--amount-usd") from None
    net = _network(network)
    key, source = _wallet_key()
    owner = Signer(key).address
    url = _rpc_url(net, rpc_url)

    async def approve() -> None:
        async with EvmRpc(url) as rpc:
            try:
                plan = await plan_approval(rpc, net, owner, amount)
            except ApprovalRefused as exc:
                raise click.ClickException(str(exc)) from None
            click.echo(f"Wallet {owner} (from {source}) on {net.name}, via {rpc.endpoint}")
            click.echo(f"  Permit2 allowance now: {usd(plan.current_allowance)} USDC")
            if not plan.needed:
                click.echo("  Already approved for exactly this amount: nothing to send.")
                return
            click.echo(
                f"  approve(Permit2, {usd(amount)} USDC): gas at most "
                f"{format_eth(plan.max_gas_cost_wei)} ETH (wallet holds {format_eth(plan.eth_wei)})"
            )
            if not yes and not click.confirm("Send this transaction?", default=False):
                raise click.ClickException("not sent")
            receipt = await send_approval(rpc, plan, key)
            after = await rpc.allowance(net.usdc, owner, PERMIT2_ADDRESS)
            click.echo(f"  Sent {receipt.transaction_hash}, mined in block {receipt.block_number}")
            click.echo(f"  Permit2 allowance now: {usd(after)} USDC")

    _run(approve())


def _rpc_url(network: Network, configured: str | None) -> str:
    from blockrun_proxy.wallet.chain import rpc_url_for

    try:
        return rpc_url_for(network, configured)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _atomic(amount_usd: str) -> int:
    """``--amount-usd`` as atomic USDC: a plain decimal with at most 6 places."""
    try:
        amount = Decimal(amount_usd.strip())
    except InvalidOperation:
        raise click.BadParameter("not a number", param_hint="--amount-usd") from None
    if not amount.is_finite():
        raise click.BadParameter("not a number", param_hint="--amount-usd")
    # normalize() drops trailing zeros, so "1.500000" is fine and "0.0000001" is not.
    exponent = amount.normalize().as_tuple().exponent
    if isinstance(exponent, int) and exponent < -config.USDC_DECIMALS:
        raise click.BadParameter("USDC has 6 decimal places", param_hint="--amount-usd")
    return config.usd_to_atomic(amount)
