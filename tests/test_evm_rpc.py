"""The JSON-RPC client against the fake node: reads, one write, and every failure as RpcError."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from eth_account import Account

from blockrun_proxy.evm_rpc import SELECTOR_APPROVE, EvmRpc, RpcError, redact_url
from blockrun_proxy.testing._ledger import PERMIT2_ADDRESS, UsdcLedger
from blockrun_proxy.testing._rpc import FakeRpc
from blockrun_proxy.x402._abi import address_word, uint_word

OWNER = "0x1111111111111111111111111111111111111111"
SECRET_PATH = "v2/s3cr3t-api-key"


@pytest.fixture
async def node() -> AsyncIterator[FakeRpc]:
    async with FakeRpc(UsdcLedger("eip155:84532")) as fake:
        yield fake


@pytest.fixture
async def rpc(node: FakeRpc) -> AsyncIterator[EvmRpc]:
    assert node.url is not None
    async with EvmRpc(node.url + SECRET_PATH, timeout=2.0) as client:
        yield client


async def test_reads_the_usdc_ledger(node: FakeRpc, rpc: EvmRpc) -> None:
    ledger = node.ledger
    ledger.fund(OWNER, usdc=12_345_678, eth=10**15)
    ledger.approve(OWNER, PERMIT2_ADDRESS, 500)
    ledger.permit_nonces[OWNER.lower()] = 4
    assert await rpc.chain_id() == 84532
    assert await rpc.balance_of(ledger.usdc, OWNER) == 12_345_678
    assert await rpc.allowance(ledger.usdc, OWNER, PERMIT2_ADDRESS) == 500
    assert await rpc.nonces(ledger.usdc, OWNER) == 4
    assert await rpc.native_balance(OWNER) == 10**15
    assert await rpc.transaction_count(OWNER) == 0
    assert await rpc.gas_price() == node.gas_price
    assert await rpc.max_priority_fee() == node.priority_fee
    assert await rpc.next_base_fee() == node.gas_price - node.priority_fee
    assert await rpc.block_number() == ledger.block
    assert [m for m, _ in node.calls][:2] == ["eth_chainId", "eth_call"]


async def test_no_contract_at_the_address_is_an_error(rpc: EvmRpc) -> None:
    with pytest.raises(RpcError, match="32-byte"):
        await rpc.balance_of("0x" + "ab" * 20, OWNER)


async def test_a_signed_approve_is_applied_and_its_receipt_polled(
    node: FakeRpc, rpc: EvmRpc
) -> None:
    account = Account.from_key("0x" + secrets.token_hex(32))
    node.ledger.fund(account.address, eth=10**16)
    node.misbehave.pending_polls = 2
    data = SELECTOR_APPROVE + address_word(PERMIT2_ADDRESS) + uint_word(7_000_000)
    tx = {
        "type": 2,
        "chainId": await rpc.chain_id(),
        "nonce": await rpc.transaction_count(account.address),
        "to": node.ledger.usdc,
        "value": 0,
        "data": data,
        "gas": 70_000,
        "maxFeePerGas": 2 * node.gas_price,
        "maxPriorityFeePerGas": node.priority_fee,
    }
    signed = account.sign_transaction(tx)
    tx_hash = await rpc.send_raw_transaction(bytes(signed.raw_transaction))
    assert tx_hash == "0x" + bytes(signed.hash).hex()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    receipt = await rpc.wait_for_receipt(tx_hash, interval=0.5, sleep=sleep)
    assert receipt.succeeded and receipt.transaction_hash == tx_hash
    assert slept == [0.5, 0.5]
    assert await rpc.allowance(node.ledger.usdc, account.address, PERMIT2_ADDRESS) == 7_000_000
    assert await rpc.transaction_count(account.address) == 1
    # The same transaction again: the node refuses the spent nonce.
    with pytest.raises(RpcError, match="nonce too low") as exc:
        await rpc.send_raw_transaction(bytes(signed.raw_transaction))
    assert exc.value.code == -32000


async def test_a_receipt_that_never_comes_times_out(node: FakeRpc, rpc: EvmRpc) -> None:
    node.misbehave.pending_polls = 100

    async def sleep(seconds: float) -> None:
        return None

    with pytest.raises(RpcError, match="not mined"):
        await rpc.wait_for_receipt("0x" + "00" * 32, timeout=4, interval=1, sleep=sleep)
    assert sum(1 for m, _ in node.calls if m == "eth_getTransactionReceipt") == 5


@pytest.mark.parametrize(
    ("knob", "match"),
    [
        ("error_next", "injected failure"),
        ("http_error_next", "HTTP 503"),
        ("garbage_next", "not a JSON-RPC answer"),
    ],
)
async def test_failures_are_one_exception_without_the_url_secret(
    node: FakeRpc, rpc: EvmRpc, knob: str, match: str
) -> None:
    setattr(node.misbehave, knob, 1)
    with pytest.raises(RpcError, match=match) as exc:
        await rpc.chain_id()
    assert SECRET_PATH not in str(exc.value)
    assert await rpc.chain_id() == 84532  # the next call is fine


async def test_a_stalled_node_times_out(node: FakeRpc) -> None:
    node.misbehave.delay_seconds = 1.0
    assert node.url is not None
    async with EvmRpc(node.url + SECRET_PATH, timeout=0.1) as rpc:
        with pytest.raises(RpcError, match="timed out") as exc:
            await rpc.chain_id()
    assert SECRET_PATH not in str(exc.value)


async def test_a_refused_connection_is_an_rpc_error() -> None:
    async with EvmRpc("http://127.0.0.1:9/" + SECRET_PATH, timeout=1.0) as rpc:
        with pytest.raises(RpcError) as exc:
            await rpc.chain_id()
    assert SECRET_PATH not in str(exc.value)


async def test_redirects_are_not_followed(aiohttp_server: object) -> None:
    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("http://127.0.0.1:9/elsewhere")

    app = web.Application()
    app.router.add_post("/", moved)
    server = await aiohttp_server(app)  # type: ignore[operator]
    async with EvmRpc(str(server.make_url("/"))) as rpc:
        with pytest.raises(RpcError, match="HTTP 307"):
            await rpc.chain_id()


async def test_an_oversized_answer_is_refused(aiohttp_server: object) -> None:
    async def huge(request: web.Request) -> web.Response:
        return web.Response(body=b'{"jsonrpc":"2.0","id":1,"result":"0x' + b"0" * 2_000_000 + b'"}')

    app = web.Application()
    app.router.add_post("/", huge)
    server = await aiohttp_server(app)  # type: ignore[operator]
    async with EvmRpc(str(server.make_url("/"))) as rpc:
        with pytest.raises(RpcError, match="bytes"):
            await rpc.chain_id()


async def test_a_shared_session_is_not_closed(node: FakeRpc) -> None:
    assert node.url is not None
    async with aiohttp.ClientSession() as session:
        async with EvmRpc(node.url, session=session) as rpc:
            assert await rpc.chain_id() == 84532
        assert not session.closed


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://base-mainnet.g.alchemy.com/v2/KEY", "https://base-mainnet.g.alchemy.com"),
        ("https://user:pw@rpc.example:8545/?key=1", "https://rpc.example:8545"),
        ("http://[::1]:8545/x", "http://::1:8545"),
    ],
)
def test_redact_url_keeps_only_scheme_and_host(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_only_http_urls() -> None:
    with pytest.raises(ValueError):
        EvmRpc("ws://rpc.example/KEY")
