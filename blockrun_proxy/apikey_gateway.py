"""The API-key rail's gateway: every route to the API host, billed to the key, no x402.

``ApiKeyGateway`` is a ``Gateway`` (the same outgoing requests, upstream client (h1 or
aiohttp, ``--upstream-client``), egress proxy and redirect rule: ``Gateway._request``
sends every request, the catalogue's included) whose ``send`` does no
x402 at all (PROTOCOL.md section 8, apikey.py):

- each request carries ``Authorization: Bearer <key>`` and nothing x402; the client's
  own ``Authorization`` never goes upstream (the allowlist of ``forwarded_headers``);
- there is no unpaid probe and no signed resend: the first send is the billed one, so
  it is sent once. A connection that was never made is a ``502`` (nothing reached the
  host); a timeout, a dropped connection, a redirect or a ``5xx`` after it may have
  been billed, and is answered ``424`` with ``x-should-retry: false``, never resent;
- ``401``/``403`` (the key is wrong or revoked) and ``402`` (no credit left) are read
  first and answered with the rail's own errors (``ApiKeyRejected``,
  ``ApiKeyNoCredit``): a ``402`` here is never a challenge, nothing is parsed or signed;
- the answer reports no cost (``x-blockrun-cost-source: none``, no
  ``x-litellm-response-cost``), and every byte the host sends back goes through the
  key's redaction first, so a host that echoes its ``Authorization`` header cannot hand
  the key to a client. The client's ``Accept-Encoding`` is not forwarded here: a
  compressed body could not be redacted.

A job's poll is sent the same way, with the key (the job belongs to the key) and no
payment header; polls are not billed (the job is charged once, on the poll that sees it
complete), so their failures pass on like the x402 polls', free to retry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from multidict import CIMultiDict

from blockrun_proxy.apikey import ApiKeyRail
from blockrun_proxy.errors import GatewayAnswer, PaidCallFailed, UpstreamError, UpstreamTimeout
from blockrun_proxy.payer import OnSent
from blockrun_proxy.rails import Rails
from blockrun_proxy.upstream import (
    CLIENT_FAILED,
    NEVER_CONNECTED,
    UNREADABLE,
    Answer,
    Gateway,
    Outgoing,
    UpstreamClient,
    UpstreamResponse,
    is_redirect,
    malformed_answer,
    read_models_body,
    read_small_body,
    redirect_error,
)

# Answers read whole and judged by the rail before anything is relayed.
REFUSALS = frozenset({401, 402, 403})


class ApiKeyGateway(Gateway):
    def __init__(
        self,
        session: UpstreamClient,
        rail: ApiKeyRail,
        payer: Rails,
        *,
        proxy: str | None = None,
    ) -> None:
        # Every send is billed: nothing may be sent twice, probe or "replay".
        super().__init__(
            session,
            rail.base_url,
            payer,
            paid_replays=rail.paid_replays,
            probe_retries=0,
            quotes=None,
            proxy=proxy,
        )
        self.rail = rail

    async def get_models(self) -> tuple[int, bytes]:
        """The catalogue, asked with the key (as BlockRun's own clients ask it)."""
        out = Outgoing("GET", self._models_url, None, CIMultiDict(self.rail.auth_headers()))
        try:
            response = await self._request(out)
            async with response:
                if is_redirect(response.status):
                    raise redirect_error(response)
                return response.status, self.rail.redact(await read_models_body(response))
        except asyncio.TimeoutError as exc:
            raise UpstreamTimeout("the API host did not answer /v1/models in time") from exc
        except CLIENT_FAILED as exc:
            raise UpstreamError(f"cannot reach the API host: {type(exc).__name__}") from exc

    async def send(
        self, out: Outgoing, request_id: str, *, on_sent: OnSent | None = None
    ) -> Answer:
        """Send ``out`` once, billed to the key; ``on_sent`` is never told an amount (the
        host quotes none)."""
        del on_sent
        out.headers["x-request-id"] = request_id
        self._authorize(out)
        try:
            response = await self._request(out)
        except NEVER_CONNECTED as exc:  # before TimeoutError: a connect timeout is one
            raise UpstreamError(
                f"cannot reach the API host: {type(exc).__name__}; nothing was sent or billed"
            ) from exc
        except asyncio.TimeoutError as exc:
            raise PaidCallFailed(
                "the API host timed out after the call was sent; it may have been billed to "
                "the API key's credit. Not retried automatically.",
                code="paid_call_timeout",
                upstream_status="timeout",
            ) from exc
        except UNREADABLE as exc:
            failure = malformed_answer(exc)
            raise PaidCallFailed(
                f"{failure.message}, after the call was sent; it may have been billed. "
                "Not retried.",
                code=failure.code,
                upstream_status="malformed",
            ) from exc
        except CLIENT_FAILED as exc:
            raise PaidCallFailed(
                "the API host dropped the connection after the call was sent; it may have "
                "been billed. Not retried.",
                code="paid_call_dropped",
                upstream_status="dropped",
            ) from exc
        if is_redirect(response.status):
            response.release()
            raise PaidCallFailed(
                f"the API host answered with a redirect ({response.status}); redirects are "
                "never followed (the key would travel along), but the call may have been "
                "billed. Not retried.",
                code="gateway_redirect",
                upstream_status=response.status,
            )
        await self._refused(response)
        if response.status >= 500:
            body = self.rail.redact(await read_small_body(response))
            raise GatewayAnswer(
                response.status,
                body,
                code="paid_call_failed",
                message=(
                    f"the API host failed after the call was sent (status {response.status}); "
                    "it may have been billed to the API key's credit. Not retried."
                ),
            )
        return self._answer(response)

    async def replay(self, out: Outgoing, payment_header: str | None) -> Answer:
        """A job's poll, with the key and never a payment header; not billed, so its
        failures pass on (retried like an unpaid probe: here, not at all)."""
        del payment_header  # nothing x402 goes to the API host
        self._authorize(out)
        response = await self._send_unpaid(out)
        await self._refused(response)
        return self._answer(response)

    def _authorize(self, out: Outgoing) -> None:
        out.headers.update(self.rail.auth_headers())
        # Bodies are redacted on their way back, which a compressed body would defeat.
        out.headers.popall("accept-encoding", None)

    async def _refused(self, response: UpstreamResponse) -> None:
        """The rail's error for a refusal (no credit, a bad key); nothing else is read."""
        if response.status in REFUSALS:
            self.rail.check_answer(response.status, await read_small_body(response))

    def _answer(self, response: UpstreamResponse) -> Answer:
        headers: Mapping[str, str] = response.headers
        return Answer(
            response,
            rail_cost_headers=self.rail.cost_headers(headers),
            redactor=self.rail.redactor,
        )
