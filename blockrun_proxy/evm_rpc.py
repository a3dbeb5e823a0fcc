"""A small async EVM JSON-RPC client: the reads and the one write the wallet needs.

USDC ``balanceOf`` / ``allowance`` / ``nonces`` (EIP-2612) for the balance watcher and
the upto scheme's Permit2 allowance, and what sending one bounded ``approve`` takes
(chain id, account nonce, fees, ``eth_sendRawTransaction``, receipt polling).

Every failure, whatever its cause (connection, timeout, HTTP status, a body that is not
JSON-RPC, a JSON-RPC ``error``, a result of the wrong shape), is one ``RpcError``, so a
caller has exactly one thing to catch, as httpx maps its backends' errors at one boundary.
Every call has a total timeout and a bounded response size. The endpoint URL often
carries an API key in its path or query (Alchemy, Infura...): messages name only its
scheme and host.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from blockrun_proxy.bounded import read_bounded
from blockrun_proxy.x402._abi import address_word

DEFAULT_TIMEOUT_SECONDS = 10.0
# A JSON-RPC answer we ask for is a few hundred bytes; a receipt with logs a few KiB.
MAX_RESPONSE_BYTES = 1024 * 1024
RECEIPT_POLL_SECONDS = 2.0
RECEIPT_TIMEOUT_SECONDS = 120.0

# ERC-20 / EIP-2612 function selectors: the first 4 bytes of keccak256(signature).
SELECTOR_BALANCE_OF = bytes.fromhex("70a08231")  # balanceOf(address)
SELECTOR_ALLOWANCE = bytes.fromhex("dd62ed3e")  # allowance(address,address)
SELECTOR_NONCES = bytes.fromhex("7ecebe00")  # nonces(address)
SELECTOR_APPROVE = bytes.fromhex("095ea7b3")  # approve(address,uint256)


class RpcError(Exception):
    """A JSON-RPC call that gave no usable answer. ``code`` is the JSON-RPC error code, if any."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True, slots=True)
class Receipt:
    """The parts of a transaction receipt the wallet commands read."""

    transaction_hash: str
    status: int  # 1 success, 0 reverted
    block_number: int
    gas_used: int

    @property
    def succeeded(self) -> bool:
        return self.status == 1


def redact_url(url: str) -> str:
    """``scheme://host[:port]`` of an endpoint: never its path or query (API keys live there)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid url>"
    return f"{parts.scheme}://{host}{port}"


class EvmRpc:
    """One endpoint. Pass a shared ``session``, or let the client own (and close) one."""

    def __init__(
        self,
        url: str,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        if urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"RPC URL must be http(s), got {redact_url(url)}")
        self._url = url
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._ids = itertools.count(1)

    @property
    def endpoint(self) -> str:
        """The endpoint as it may be shown: scheme and host only."""
        return redact_url(self._url)

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> EvmRpc:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ transport

    async def request(self, method: str, params: list[Any]) -> Any:
        """The ``result`` of one JSON-RPC call; RpcError for anything else."""
        request_id = next(self._ids)
        body = orjson.dumps(
            {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        )
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(
                self._url,
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=self._timeout,
                allow_redirects=False,  # a redirect could carry the call anywhere
            ) as resp:
                raw = await read_bounded(resp.content, MAX_RESPONSE_BYTES)
                status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            kind = "timed out" if isinstance(exc, asyncio.TimeoutError) else type(exc).__name__
            raise RpcError(f"{method} to {self.endpoint}: {kind}") from None
        if raw is None:
            raise RpcError(f"{method} to {self.endpoint}: answer over {MAX_RESPONSE_BYTES} bytes")
        return self._result(method, request_id, status, raw)

    def _result(self, method: str, request_id: int, status: int, raw: bytes) -> Any:
        try:
            doc = orjson.loads(raw)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
            error = doc["error"]
            code = error.get("code")
            message = str(error.get("message", "error"))[:200]
            raise RpcError(
                f"{method} to {self.endpoint}: {message}",
                code=code if isinstance(code, int) and not isinstance(code, bool) else None,
            )
        if status != 200:
            raise RpcError(f"{method} to {self.endpoint}: HTTP {status}")
        if not isinstance(doc, dict) or doc.get("id") != request_id or "result" not in doc:
            raise RpcError(f"{method} to {self.endpoint}: not a JSON-RPC answer")
        return doc["result"]

    # ---------------------------------------------------------------------- reads

    async def chain_id(self) -> int:
        return _quantity(await self.request("eth_chainId", []), "eth_chainId")

    async def block_number(self) -> int:
        return _quantity(await self.request("eth_blockNumber", []), "eth_blockNumber")

    async def eth_call(self, to: str, data: bytes, block: str = "latest") -> bytes:
        result = await self.request("eth_call", [{"to": to, "data": "0x" + data.hex()}, block])
        return _data(result, "eth_call")

    async def call_uint(self, to: str, data: bytes, what: str) -> int:
        """An ``eth_call`` returning one uint256; an empty answer (no contract) is an error."""
        result = await self.eth_call(to, data)
        if len(result) != 32:
            raise RpcError(f"{what} at {to}: expected one 32-byte word, got {len(result)} bytes")
        return int.from_bytes(result, "big")

    async def balance_of(self, token: str, owner: str) -> int:
        """ERC-20 ``balanceOf(owner)`` in the token's atomic units."""
        return await self.call_uint(token, SELECTOR_BALANCE_OF + address_word(owner), "balanceOf")

    async def allowance(self, token: str, owner: str, spender: str) -> int:
        """ERC-20 ``allowance(owner, spender)``."""
        data = SELECTOR_ALLOWANCE + address_word(owner) + address_word(spender)
        return await self.call_uint(token, data, "allowance")

    async def nonces(self, token: str, owner: str) -> int:
        """EIP-2612 ``nonces(owner)``: the nonce the owner's next permit must carry."""
        return await self.call_uint(token, SELECTOR_NONCES + address_word(owner), "nonces")

    async def native_balance(self, address: str, block: str = "latest") -> int:
        """Wei held by ``address`` (what pays gas)."""
        return _quantity(await self.request("eth_getBalance", [address, block]), "eth_getBalance")

    async def transaction_count(self, address: str, block: str = "pending") -> int:
        """The account nonce of ``address``'s next transaction (pending ones counted)."""
        result = await self.request("eth_getTransactionCount", [address, block])
        return _quantity(result, "eth_getTransactionCount")

    async def gas_price(self) -> int:
        return _quantity(await self.request("eth_gasPrice", []), "eth_gasPrice")

    async def max_priority_fee(self) -> int:
        result = await self.request("eth_maxPriorityFeePerGas", [])
        return _quantity(result, "eth_maxPriorityFeePerGas")

    async def next_base_fee(self) -> int:
        """The base fee per gas of the next block (``eth_feeHistory``'s last entry)."""
        history = await self.request("eth_feeHistory", ["0x1", "latest", []])
        fees = history.get("baseFeePerGas") if isinstance(history, dict) else None
        if not isinstance(fees, list) or not fees:
            raise RpcError(f"eth_feeHistory from {self.endpoint}: no baseFeePerGas")
        return _quantity(fees[-1], "eth_feeHistory")

    async def estimate_gas(self, transaction: dict[str, Any]) -> int:
        return _quantity(await self.request("eth_estimateGas", [transaction]), "eth_estimateGas")

    # ---------------------------------------------------------------------- write

    async def send_raw_transaction(self, raw: bytes) -> str:
        """Broadcast a signed transaction; its hash as the node reports it."""
        result = await self.request("eth_sendRawTransaction", ["0x" + raw.hex()])
        if not _is_hash(result):
            raise RpcError(f"eth_sendRawTransaction to {self.endpoint}: no transaction hash")
        return str(result)

    async def transaction_receipt(self, tx_hash: str) -> Receipt | None:
        """The receipt once mined; None while pending."""
        result = await self.request("eth_getTransactionReceipt", [tx_hash])
        if result is None:
            return None
        if not isinstance(result, dict):
            raise RpcError(f"eth_getTransactionReceipt from {self.endpoint}: not an object")
        what = "eth_getTransactionReceipt"
        return Receipt(
            transaction_hash=str(result.get("transactionHash", tx_hash)),
            status=_quantity(result.get("status"), what),
            block_number=_quantity(result.get("blockNumber"), what),
            gas_used=_quantity(result.get("gasUsed"), what),
        )

    async def wait_for_receipt(
        self,
        tx_hash: str,
        *,
        timeout: float = RECEIPT_TIMEOUT_SECONDS,
        interval: float = RECEIPT_POLL_SECONDS,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> Receipt:
        """Poll until ``tx_hash`` is mined; RpcError after ``timeout`` seconds of polling."""
        polls = max(1, int(timeout / interval) + 1)
        for attempt in range(polls):
            receipt = await self.transaction_receipt(tx_hash)
            if receipt is not None:
                return receipt
            if attempt + 1 < polls:
                await sleep(interval)
        raise RpcError(f"transaction {tx_hash} not mined after {timeout:g} s (still pending?)")


def _quantity(value: object, what: str) -> int:
    """A JSON-RPC QUANTITY: ``0x`` + hex digits, no sign."""
    if isinstance(value, str) and value.startswith("0x") and 2 < len(value) <= 66:
        try:
            return int(value[2:], 16)
        except ValueError:
            pass
    raise RpcError(f"{what}: {str(value)[:80]!r} is not a hex quantity")


def _data(value: object, what: str) -> bytes:
    """JSON-RPC DATA: ``0x`` + an even number of hex digits."""
    if isinstance(value, str) and value.startswith("0x"):
        try:
            return bytes.fromhex(value[2:])
        except ValueError:
            pass
    raise RpcError(f"{what}: {str(value)[:80]!r} is not hex data")


def _is_hash(value: object) -> bool:
    return isinstance(value, str) and len(value) == 66 and value.startswith("0x")
