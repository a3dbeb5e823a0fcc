"""A recent Solana blockhash, at hand when a payment is signed.

A Solana transaction names a recent blockhash and is valid for about 150 blocks
(60-90 s) after it. Fetching one per payment would put an RPC round trip in every
paid call, so ``BlockhashCache`` fetches ``getLatestBlockhash`` (commitment
``confirmed``, as Solana's docs advise for transaction building) in the background
every ``refresh_seconds`` and signing takes the cached one: once warm, signing never
waits on the RPC. A blockhash older than ``max_age_seconds`` is not used (a payment
needs time left to settle), and when there is no fresher one the RPC has been
unreachable that long: ``SolanaRpcUnreachable`` (503), before anything is signed.

The cache owns a small HTTP session of its own, so a connection pool full of relayed
streams can never starve the refresh; it reaches the RPC through the same egress proxy
and CA bundle as the gateway when they are configured (``proxy``, ``ssl``). The RPC URL
may carry an API key (Helius puts one in the query), so logs and errors name only its
host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl as ssl_
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import orjson

from blockrun_proxy.bounded import read_bounded
from blockrun_proxy.errors import SolanaRpcUnreachable
from blockrun_proxy.x402.svm import is_pubkey

log = logging.getLogger(__name__)

DEFAULT_REFRESH_SECONDS = 10.0
# Fetched at most this long ago to be signed with: leaves 30+ s of the ~60 s validity
# for the gateway to settle, and rides out two failed refreshes unnoticed.
DEFAULT_MAX_AGE_SECONDS = 30.0
DEFAULT_TIMEOUT_SECONDS = 5.0
# After a failed refresh, try again sooner than the regular interval.
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)
MAX_RESPONSE_BYTES = 64 * 1024
_REQUEST = orjson.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "getLatestBlockhash",
        "params": [{"commitment": "confirmed"}],
    }
)


@dataclass(frozen=True, slots=True)
class Blockhash:
    value: str  # base58
    last_valid_block_height: int
    fetched_at: float  # the cache's clock


class RpcFailure(Exception):
    """One failed ``getLatestBlockhash``; the message is ours and names no URL."""


class BlockhashCache:
    """The latest blockhash from ``rpc_url``, refreshed in the background.

    ``start()`` inside the running loop, ``await close()`` at shutdown. ``current()``
    is what signing calls once warm; ``await get()`` also waits out a cold start.
    """

    def __init__(
        self,
        rpc_url: str,
        *,
        refresh_seconds: float = DEFAULT_REFRESH_SECONDS,
        max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        proxy: str | None = None,
        ssl: ssl_.SSLContext | bool = True,
    ) -> None:
        if not 0 < refresh_seconds < max_age_seconds:
            raise ValueError("refresh_seconds must be positive and below max_age_seconds")
        self._url = rpc_url
        self.rpc_host = urlsplit(rpc_url).hostname or "?"
        self.refresh_seconds = refresh_seconds
        self.max_age_seconds = max_age_seconds
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._clock = clock
        self._proxy = proxy  # an egress proxy for the RPC's origin (egress.py)
        self._ssl = ssl
        self._latest: Blockhash | None = None
        self._last_error: str | None = None
        self._inflight: asyncio.Task[Blockhash] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self.fetches = 0
        self.failures = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Begin refreshing in the background (the first fetch starts at once)."""
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(
                self._run(), name="solana-blockhash-refresh"
            )

    async def close(self) -> None:
        self._closed = True  # no fetch after this: it would open a session nobody closes
        for task in (self._loop_task, self._inflight):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._loop_task = self._inflight = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -------------------------------------------------------------------- reading

    def current(self) -> Blockhash:
        """A blockhash fresh enough to sign with, without waiting; else 503."""
        latest = self._latest
        if latest is not None and self._clock() - latest.fetched_at <= self.max_age_seconds:
            return latest
        raise self._unreachable()

    async def get(self) -> Blockhash:
        """``current()``, or (cold, or after an outage) the result of one fetch now."""
        try:
            return self.current()
        except SolanaRpcUnreachable:
            pass
        try:
            return await asyncio.shield(self._refresh())
        except RpcFailure:
            raise self._unreachable() from None

    async def refresh(self) -> Blockhash:
        """Fetch now (joining a fetch already in flight); RpcFailure if it fails."""
        return await asyncio.shield(self._refresh())

    def _refresh(self) -> asyncio.Task[Blockhash]:
        if self._inflight is None or self._inflight.done():
            task = asyncio.get_running_loop().create_task(self._fetch())
            # Every waiter may have been cancelled: the outcome is kept in _last_error,
            # so mark the exception retrieved rather than have asyncio log it.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._inflight = task
        return self._inflight

    def _unreachable(self) -> SolanaRpcUnreachable:
        latest = self._latest
        since = (
            "has not answered yet"
            if latest is None
            else f"has not answered for {self._clock() - latest.fetched_at:.0f}s"
        )
        reason = f" (last error: {self._last_error})" if self._last_error else ""
        return SolanaRpcUnreachable(
            f"cannot pay on Solana: the Solana RPC at {self.rpc_host} {since}{reason}. "
            "Nothing was signed or paid. Check --solana-rpc-url."
        )

    # ------------------------------------------------------------------- fetching

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self.refresh()
            except RpcFailure as exc:
                if failures == 0:
                    log.warning("Solana RPC %s: %s", self.rpc_host, exc)
                failures += 1
                await asyncio.sleep(
                    min(RETRY_DELAYS[min(failures, len(RETRY_DELAYS)) - 1], self.refresh_seconds)
                )
                continue
            if failures:
                log.info("Solana RPC %s answers again", self.rpc_host)
            failures = 0
            await asyncio.sleep(self.refresh_seconds)

    async def _fetch(self) -> Blockhash:
        self.fetches += 1
        try:
            blockhash = await self._request()
        except RpcFailure as exc:
            self.failures += 1
            self._last_error = str(exc)
            raise
        self._latest = blockhash
        self._last_error = None
        return blockhash

    async def _request(self) -> Blockhash:
        if self._closed:
            raise RpcFailure("the blockhash cache is closed")
        session = self._session_for_rpc()
        try:
            async with session.post(
                self._url,
                data=_REQUEST,
                headers={"Content-Type": "application/json", "Accept-Encoding": "identity"},
                allow_redirects=False,
                proxy=self._proxy,
            ) as resp:
                if resp.status != 200:
                    raise RpcFailure(f"HTTP {resp.status}")
                body = await read_bounded(resp.content, MAX_RESPONSE_BYTES)
        except asyncio.TimeoutError:
            raise RpcFailure("timed out") from None
        except aiohttp.ClientError as exc:
            raise RpcFailure(f"unreachable ({type(exc).__name__})") from None
        except ValueError:  # a URL aiohttp cannot use (Settings.check should have said)
            raise RpcFailure("the RPC URL is not usable") from None
        if body is None:
            raise RpcFailure("answer too large")
        return _parse(body, self._clock())

    def _session_for_rpc(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=2, ttl_dns_cache=300, ssl=self._ssl),
                timeout=self._timeout,
                headers={"User-Agent": "blockrun-proxy"},
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session


def _parse(body: bytes, now: float) -> Blockhash:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise RpcFailure("answer is not JSON") from None
    if not isinstance(doc, dict):
        raise RpcFailure("answer is not a JSON-RPC object")
    error = doc.get("error")
    if error is not None:
        code = error.get("code") if isinstance(error, dict) else None
        raise RpcFailure(f"JSON-RPC error {code if isinstance(code, int) else '?'}")
    result = doc.get("result")
    value = result.get("value") if isinstance(result, dict) else None
    blockhash = value.get("blockhash") if isinstance(value, dict) else None
    height = value.get("lastValidBlockHeight") if isinstance(value, dict) else None
    if not is_pubkey(blockhash) or type(height) is not int or height < 0:
        raise RpcFailure("answer holds no blockhash")
    assert isinstance(blockhash, str)
    return Blockhash(blockhash, height, now)
