"""``FakeRpc``: an EVM JSON-RPC endpoint on loopback, over an in-memory USDC ledger.

It answers what the proxy's RPC client asks (chain id, USDC ``balanceOf`` /
``allowance`` / ``nonces`` through ``eth_call``, account nonce, fees, ETH balance,
receipts) and applies a signed raw ``approve`` transaction, checking it as a node and
the token would: its signature (recovered with eth_account, the independent
implementation), chain id, account nonce, gas funds, target and calldata. Knobs make it
fail, stall or keep a transaction pending, for the client's error paths.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from blockrun_proxy.testing._ledger import LedgerReceipt, UsdcLedger
from blockrun_proxy.testing._serving import serve

APPROVE_SELECTOR = "095ea7b3"
SELECTORS = {
    "70a08231": "balanceOf",
    "dd62ed3e": "allowance",
    "7ecebe00": "nonces",
    "313ce567": "decimals",
}
DEFAULT_GAS_PRICE = 10_000_000  # 0.01 gwei, Base's usual order of magnitude
DEFAULT_PRIORITY_FEE = 1_000_000
APPROVE_GAS_USED = 46_000
MIN_APPROVE_GAS = 30_000


@dataclass
class RpcMisbehavior:
    """Mutable knobs, all off by default; counters are used up call by call."""

    error_next: int = 0  # next N calls answer a JSON-RPC error
    http_error_next: int = 0  # next N calls answer HTTP 503 with a non-JSON body
    garbage_next: int = 0  # next N calls answer 200 with a body that is not JSON-RPC
    delay_seconds: float = 0.0
    pending_polls: int = 0  # eth_getTransactionReceipt answers null this many times
    revert_next_tx: bool = False  # the next transaction is mined with status 0
    chain_id: int | None = None  # report another chain id


class RpcFailure(Exception):
    """A JSON-RPC error answer: ``code`` and ``message`` as a node sends them."""

    def __init__(self, message: str, code: int = -32000) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class FakeRpc:
    """Serve ``ledger`` as JSON-RPC on any path (so URLs may carry a fake API key)."""

    def __init__(
        self,
        ledger: UsdcLedger | None = None,
        *,
        gas_price: int = DEFAULT_GAS_PRICE,
        priority_fee: int = DEFAULT_PRIORITY_FEE,
    ) -> None:
        self.ledger = ledger or UsdcLedger()
        self.gas_price = gas_price
        self.priority_fee = priority_fee
        self.misbehave = RpcMisbehavior()
        self.calls: list[tuple[str, list[Any]]] = []
        self.transactions: list[dict[str, Any]] = []  # decoded raw transactions accepted
        self.url: str | None = None
        self._runner: web.AppRunner | None = None
        self.app = web.Application(client_max_size=1024 * 1024)
        self.app.router.add_post("/{tail:.*}", self._handle)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner, origin = await serve(self.app, host, port)
        self.url = f"{origin}/"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeRpc:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ dispatch

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        mb = self.misbehave
        if mb.delay_seconds > 0:
            await asyncio.sleep(mb.delay_seconds)
        if mb.http_error_next > 0:
            mb.http_error_next -= 1
            return web.Response(status=503, text="upstream unavailable")
        if mb.garbage_next > 0:
            mb.garbage_next -= 1
            return web.Response(status=200, text="<html>not json</html>")
        try:
            doc = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _answer(None, error=RpcFailure("parse error", -32700))
        if not isinstance(doc, dict) or not isinstance(doc.get("method"), str):
            return _answer(None, error=RpcFailure("invalid request", -32600))
        request_id, method = doc.get("id"), str(doc["method"])
        raw_params = doc.get("params")
        params: list[Any] = raw_params if isinstance(raw_params, list) else []
        self.calls.append((method, params))
        if mb.error_next > 0:
            mb.error_next -= 1
            return _answer(request_id, error=RpcFailure("injected failure", -32603))
        handler = getattr(self, "_rpc_" + method, None)
        if handler is None:
            return _answer(request_id, error=RpcFailure(f"method {method} not found", -32601))
        try:
            return _answer(request_id, result=handler(params))
        except RpcFailure as failure:
            return _answer(request_id, error=failure)
        except (IndexError, KeyError, TypeError, ValueError) as exc:
            return _answer(request_id, error=RpcFailure(f"invalid params: {exc}", -32602))

    # ------------------------------------------------------------------- methods

    def _rpc_eth_chainId(self, params: list[Any]) -> str:
        chain_id = self.misbehave.chain_id or self.ledger.chain_id
        return hex(chain_id)

    def _rpc_eth_blockNumber(self, params: list[Any]) -> str:
        return hex(self.ledger.block)

    def _rpc_eth_gasPrice(self, params: list[Any]) -> str:
        return hex(self.gas_price)

    def _rpc_eth_maxPriorityFeePerGas(self, params: list[Any]) -> str:
        return hex(self.priority_fee)

    def _rpc_eth_feeHistory(self, params: list[Any]) -> dict[str, Any]:
        base = self.gas_price - self.priority_fee
        return {"oldestBlock": hex(self.ledger.block), "baseFeePerGas": [hex(base), hex(base)]}

    def _rpc_eth_getBalance(self, params: list[Any]) -> str:
        return hex(self.ledger.eth_balance(params[0]))

    def _rpc_eth_getTransactionCount(self, params: list[Any]) -> str:
        return hex(self.ledger.account_nonce(params[0]))

    def _rpc_eth_estimateGas(self, params: list[Any]) -> str:
        return hex(APPROVE_GAS_USED)

    def _rpc_eth_call(self, params: list[Any]) -> str:
        call = params[0]
        to, data = str(call["to"]).lower(), str(call.get("data") or call.get("input") or "0x")
        if to != self.ledger.usdc.lower():
            return "0x"  # no contract there: an empty return, as a node gives
        selector, args = data[2:10], data[10:]
        words = [args[i : i + 64] for i in range(0, len(args), 64)]
        name = SELECTORS.get(selector)
        if name == "balanceOf":
            value = self.ledger.balance_of(_address(words[0]))
        elif name == "allowance":
            value = self.ledger.allowance(_address(words[0]), _address(words[1]))
        elif name == "nonces":
            value = self.ledger.permit_nonce(_address(words[0]))
        elif name == "decimals":
            value = 6
        else:
            raise RpcFailure("execution reverted", 3)
        return "0x" + value.to_bytes(32, "big").hex()

    def _rpc_eth_sendRawTransaction(self, params: list[Any]) -> str:
        raw = bytes.fromhex(str(params[0]).removeprefix("0x"))
        tx, sender = _decode_transaction(raw)
        ledger = self.ledger
        if tx["chainId"] != ledger.chain_id:
            raise RpcFailure(f"invalid chain id {tx['chainId']}")
        expected = ledger.account_nonce(sender)
        if tx["nonce"] != expected:
            too = "low" if tx["nonce"] < expected else "high"
            raise RpcFailure(f"nonce too {too}: next nonce {expected}, tx nonce {tx['nonce']}")
        if tx["gas"] * tx["maxFeePerGas"] > ledger.eth_balance(sender):
            raise RpcFailure("insufficient funds for gas * price + value")
        to = tx["to"]
        if to is None or to.lower() != ledger.usdc.lower() or tx["value"] != 0:
            raise RpcFailure("this fake node only accepts USDC approve transactions")
        data = tx["data"].hex()
        if data[:8] != APPROVE_SELECTOR or len(data) != 8 + 128:
            raise RpcFailure("this fake node only accepts approve(address,uint256)")
        if tx["gas"] < MIN_APPROVE_GAS:
            raise RpcFailure("intrinsic gas too low")
        spender, value = _address(data[8:72]), int(data[72:136], 16)
        reverted = self.misbehave.revert_next_tx
        self.misbehave.revert_next_tx = False
        if not reverted:
            ledger.approve(sender, spender, value)
        tx_hash = "0x" + _keccak(raw).hex()
        ledger.record_transaction(
            sender,
            f"approve {spender} {value}",
            status=0 if reverted else 1,
            gas_used=APPROVE_GAS_USED,
            tx_hash=tx_hash,
        )
        with ledger.lock:
            ledger.eth[sender.lower()] -= APPROVE_GAS_USED * self.gas_price
        self.transactions.append({**tx, "from": sender, "hash": tx_hash})
        return tx_hash

    def _rpc_eth_getTransactionReceipt(self, params: list[Any]) -> dict[str, Any] | None:
        if self.misbehave.pending_polls > 0:
            self.misbehave.pending_polls -= 1
            return None
        receipt = self.ledger.receipts.get(str(params[0]).lower())
        return None if receipt is None else _receipt_json(receipt)

    def _rpc_eth_getCode(self, params: list[Any]) -> str:
        return "0x6080" if str(params[0]).lower() == self.ledger.usdc.lower() else "0x"


def _answer(
    request_id: object, *, result: object = None, error: RpcFailure | None = None
) -> web.Response:
    doc: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id}
    if error is not None:
        doc["error"] = {"code": error.code, "message": error.message}
    else:
        doc["result"] = result
    return web.Response(body=orjson.dumps(doc), content_type="application/json")


def _address(word: str) -> str:
    if len(word) != 64 or int(word[:24] or "0", 16) != 0:
        raise ValueError("not an ABI-encoded address")
    return "0x" + word[24:]


def _decode_transaction(raw: bytes) -> tuple[dict[str, Any], str]:
    """The fields of a signed EIP-1559 transaction and its recovered sender."""
    from eth_account import Account
    from eth_account.typed_transactions.typed_transaction import TypedTransaction
    from hexbytes import HexBytes

    if not raw or raw[0] != 2:
        raise RpcFailure("only EIP-1559 (type 2) transactions are accepted")
    try:
        fields = TypedTransaction.from_bytes(HexBytes(raw)).as_dict()
        sender = str(Account.recover_transaction(raw))
    except Exception as exc:  # eth_account raises several unrelated types for bad input
        raise RpcFailure(f"invalid transaction: {type(exc).__name__}") from None
    to = fields.get("to")
    tx = {
        "chainId": int(fields["chainId"]),
        "nonce": int(fields["nonce"]),
        "to": "0x" + bytes(to).hex() if to else None,
        "value": int(fields["value"]),
        "data": bytes(fields["data"]),
        "gas": int(fields["gas"]),
        "maxFeePerGas": int(fields["maxFeePerGas"]),
        "maxPriorityFeePerGas": int(fields["maxPriorityFeePerGas"]),
    }
    return tx, sender


def _receipt_json(receipt: LedgerReceipt) -> dict[str, Any]:
    return {
        "transactionHash": receipt.transaction_hash,
        "blockNumber": hex(receipt.block_number),
        "status": hex(receipt.status),
        "gasUsed": hex(receipt.gas_used),
        "from": receipt.sender,
    }


def _keccak(data: bytes) -> bytes:
    from Crypto.Hash import keccak

    return bytes(keccak.new(digest_bits=256, data=data).digest())
