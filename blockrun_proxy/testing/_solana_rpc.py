"""``FakeSolanaRpc``: the few Solana JSON-RPC methods the proxy and the fake facilitator use.

``getLatestBlockhash`` hands out a blockhash that changes every ``rotate_seconds``,
with ``lastValidBlockHeight`` = its height + 150 as on the real cluster; block height
advances one per ``slot_seconds`` of the injected clock. The fake facilitator asks
``is_valid`` whether a transaction's blockhash was issued here and has not expired,
as the cluster's simulation would. It can be told to fail, for the proxy's
unreachable-RPC handling.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from blockrun_proxy.testing._replies import json_response
from blockrun_proxy.testing._serving import serve

# A blockhash is usable for 150 blocks after its own (solana-sdk MAX_PROCESSING_AGE).
BLOCKHASH_VALID_BLOCKS = 150
SLOT_SECONDS = 0.4
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


@dataclass
class SolanaRpcMisbehavior:
    """Knobs, off by default: the next ``fail`` calls answer HTTP ``fail_status``;
    ``rpc_error`` makes every call a JSON-RPC error; ``delay_seconds`` stalls each."""

    fail: int = 0
    fail_status: int = 503
    rpc_error: bool = False
    delay_seconds: float = 0.0


class FakeSolanaRpc:
    """A JSON-RPC endpoint for ``getLatestBlockhash`` / ``getBlockHeight`` / ``getHealth``."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        rotate_seconds: float = 2.0,
        slot_seconds: float = SLOT_SECONDS,
    ) -> None:
        self._clock = clock
        self._epoch = clock()
        self._salt = secrets.token_bytes(16)  # blockhashes differ between instances
        self.rotate_seconds = rotate_seconds
        self.slot_seconds = slot_seconds
        self.misbehave = SolanaRpcMisbehavior()
        self.calls: list[str] = []  # method names, in order
        # Every blockhash handed out, with its last valid block height.
        self.issued: dict[str, int] = {}
        self.url: str | None = None
        self._runner: web.AppRunner | None = None

    # --------------------------------------------------------------------- chain

    def block_height(self) -> int:
        return int((self._clock() - self._epoch) / self.slot_seconds)

    def latest_blockhash(self) -> tuple[str, int]:
        """The current blockhash and its last valid block height."""
        period = int((self._clock() - self._epoch) / self.rotate_seconds)
        height = int(period * self.rotate_seconds / self.slot_seconds)
        digest = hashlib.sha256(self._salt + period.to_bytes(8, "big")).digest()
        blockhash = _b58encode(digest)
        last_valid = height + BLOCKHASH_VALID_BLOCKS
        self.issued[blockhash] = last_valid
        return blockhash, last_valid

    def is_valid(self, blockhash: str) -> bool:
        """Issued here and not yet expired: what the cluster checks before executing."""
        last_valid = self.issued.get(blockhash)
        return last_valid is not None and self.block_height() <= last_valid

    # ------------------------------------------------------------------ serving

    def mount(self, app: web.Application, path: str) -> None:
        app.router.add_post(path, self.handle)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application()
        self.mount(app, "/")
        self._runner, origin = await serve(app, host, port)
        self.url = f"{origin}/"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def handle(self, request: web.Request) -> web.Response:
        mb = self.misbehave
        if mb.delay_seconds > 0:
            await asyncio.sleep(mb.delay_seconds)
        try:
            call = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _rpc_error(None, -32700, "Parse error")
        if not isinstance(call, dict) or not isinstance(call.get("method"), str):
            return _rpc_error(None, -32600, "Invalid request")
        method, call_id = call["method"], call.get("id")
        self.calls.append(method)
        if mb.fail > 0:
            mb.fail -= 1
            return web.Response(status=mb.fail_status, text="fake RPC failure")
        if mb.rpc_error:
            return _rpc_error(call_id, -32005, "Node is behind")
        result = self._result(method)
        if result is None:
            return _rpc_error(call_id, -32601, "Method not found")
        return json_response(200, {"jsonrpc": "2.0", "id": call_id, "result": result})

    def _result(self, method: str) -> Any:
        if method == "getLatestBlockhash":
            blockhash, last_valid = self.latest_blockhash()
            return {
                "context": {"slot": self.block_height()},
                "value": {"blockhash": blockhash, "lastValidBlockHeight": last_valid},
            }
        if method == "getBlockHeight":
            return self.block_height()
        if method == "getHealth":
            return "ok"
        return None


def _rpc_error(call_id: object, code: int, message: str) -> web.Response:
    body = {"jsonrpc": "2.0", "id": call_id, "error": {"code": code, "message": message}}
    return json_response(200, body)


def _b58encode(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    digits = []
    while number:
        number, digit = divmod(number, 58)
        digits.append(_B58[digit])
    return "1" * (len(data) - len(data.lstrip(b"\x00"))) + "".join(reversed(digits))
