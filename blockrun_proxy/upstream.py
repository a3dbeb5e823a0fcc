"""Talking to the gateway: send, pay, resend, and the rules that keep a payer safe.

``Gateway.send`` returns an open upstream response ready to be piped, having done
the x402 exchange when the gateway asked for payment, for any route: an
``Outgoing`` says what to send (method, path and query, body, the client's headers
that may go upstream) and its price key (route, model). With a warm quote model
(quotes/) the first request already carries ``PAYMENT-SIGNATURE``: one round trip
per paid call instead of two. ``Gateway.replay`` sends a job's poll with the payment
its submit was paid with, and never signs. The rules (PROTOCOL.md section 5):

- an unpaid probe that fails with a 5xx or a dropped connection is retried
  unpaid, a bounded number of times (nothing is signed yet, so this is free);
- one signature per call: after it has been sent, a 5xx or a dropped connection
  replays the SAME signed header a bounded number of times, never a new one;
- a timeout after the paid send is surfaced (the gateway may be serving it);
- ``PAYMENT_REPLAY`` (the authorization was used and charged) is surfaced, never
  answered with a new signature;
- redirects are never followed (aiohttp follows them by default, and would carry
  ``PAYMENT-SIGNATURE``, and on 307/308 the body, to whatever host ``Location``
  names, whose own 402 would then be signed): a 3xx is the gateway's failure,
  ``gateway_redirect``;
- the one exception: a payment signed *up front* that the gateway refuses as
  not used (PAYMENT_INVALID / PAYMENT_UNFUNDED / a fresh 402) charged nothing,
  so the call falls back to probe-then-pay: ask unpaid for a fresh challenge,
  sign it once, send. A refusal of that second payment is surfaced;
- except on Solana, where a refused transaction stays valid (and settleable)
  until its blockhash expires: a refusal after the send is a ``424`` like any
  failure after a payment (``OptimisticPaymentRefused``), and the call never
  signs again, up front or not (``rails.settles_optimistically``).

One payment per call: every signature of a call is made through its
``rails.RailsCall``, which keeps the call on one rail. On EVM (``payer.CallPayment``)
it signs them all under one nonce (EIP-3009 for exact, Permit2 for upto, never both),
so even a gateway that kept the refused first payment can settle at most one; on
Solana it signs one transaction (``solana_payer.SolanaCallPayment``), which replays
resend unchanged. The call is told whenever a send may have reached the gateway
(everything but a connection that was never made), which is what the budget and the
sent metrics count, and what became of each payment (``settled``, ``not_used``), which
books or frees an upto payment's hold on the Permit2 allowance. The API-key rail signs
nothing and sends each call once (apikey_gateway.py).

Every error after a paid send is a ``PaidCallFailed``: answered ``424`` with
``x-should-retry: false``, a status that client libraries which retry on their
own (408, 409, 429, 5xx) leave alone, so one failure does not become several
charges. That includes a replay that cannot connect once an earlier send of the
same signature reached the gateway: that send may have been charged.
"""

from __future__ import annotations

import asyncio
import logging
import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import orjson
from aiohttp import (
    ClientConnectorError,
    ClientError,
    ClientResponse,
    ClientResponseError,
    ClientSession,
    ConnectionTimeoutError,
)
from multidict import CIMultiDict
from yarl import URL

from blockrun_proxy import h1
from blockrun_proxy.bounded import read_bounded, read_prefix
from blockrun_proxy.chatbody import ChatRequest
from blockrun_proxy.errors import (
    GatewayAnswer,
    OptimisticPaymentRefused,
    PaidCallFailed,
    PaymentNotAccepted,
    PaymentRefused,
    UpstreamError,
    UpstreamTimeout,
)
from blockrun_proxy.payer import OnSent
from blockrun_proxy.pipe import BodyFilter
from blockrun_proxy.quotes import (
    CHAT_ROUTE,
    Features,
    Presign,
    QuoteBook,
    features_from_body,
    request_features,
)
from blockrun_proxy.rails import Payment, Rails, RailsCall, settles_optimistically
from blockrun_proxy.x402 import (
    PaymentRequired,
    PaymentResponse,
    parse_payment_required,
    parse_payment_response,
    reason_code,
    refusal_reason,
)
from blockrun_proxy.x402.wire import MAX_HEADER_CHARS

log = logging.getLogger(__name__)

PAYMENT_SIGNATURE = "PAYMENT-SIGNATURE"
PAYMENT_REQUIRED = "PAYMENT-REQUIRED"
PAYMENT_RESPONSE = "PAYMENT-RESPONSE"
# Gateway answers that are read whole to classify them (402s, refusals) are small;
# anything longer is cut here rather than buffered.
MAX_CLASSIFIED_BODY = 64 * 1024
# The model catalogue is read whole (it is cached and served to clients). BlockRun's is
# some hundred KiB; a gateway sending more is not sending a catalogue.
MAX_MODELS_BODY = 8 * 1024 * 1024
RETRY_DELAYS = (0.05, 0.25, 1.0)
# PAYMENT-REQUIRED carries a whole offer in one header field, over aiohttp's default
# limit of 8190 bytes for a few requirements. The gateway session reads fields up to
# this size; a larger one fails the answer, reported as bad_payment_requirement.
# Every ClientSession that talks to the gateway passes it as ``max_field_size``.
GATEWAY_MAX_FIELD_SIZE = MAX_HEADER_CHARS
# The client's headers that mean something to the gateway: an allowlist, so credentials
# meant for the proxy or for another API (Authorization, x-api-key, x-goog-api-key) never
# go upstream. Anthropic's version and beta headers select the API's behaviour.
FORWARDED_REQUEST_HEADERS = ("accept", "accept-encoding", "anthropic-version", "anthropic-beta")
# Query parameters that carry a client's API key (Google's ?key=): dropped like its headers.
CREDENTIAL_PARAMETERS = frozenset({"key"})
# Parsed gateway URLs kept per path (the route table's fixed paths are few; the cache is
# bounded anyway): aiohttp would otherwise parse the URL string on every call.
MAX_CACHED_URLS = 256
JSON_TYPE = "application/json"
USED_CODES = frozenset({"PAYMENT_REPLAY"})
NOT_USED_CODES = frozenset({"PAYMENT_INVALID", "PAYMENT_UNFUNDED"})
# Failures that prove a send never reached the gateway: no connection was ever made
# (refused, unresolvable, TLS handshake failed, or no connection within the connect
# timeout). Only these leave a signature unsent; anything later may have delivered it.
NEVER_CONNECTED = (ClientConnectorError, ConnectionTimeoutError, h1.ConnectError)
# Answered, in a form that cannot be read (bad status line or headers): asking again gets
# the same, and a paid send that got one was delivered.
UNREADABLE = (ClientResponseError, h1.RemoteProtocolError)
# Every failure of either HTTP client (timeouts are TimeoutErrors, caught before these).
CLIENT_FAILED = (ClientError, h1.HTTPError)
# The HTTP client the gateway is reached through (core.upstream_client: --upstream-client),
# and its open answers: both offer status, headers, content (readany, read, at_eof,
# total_bytes), content_length, release and ``async with``.
UpstreamClient = ClientSession | h1.Client
UpstreamResponse = ClientResponse | h1.Response
# A PAYMENT-RESPONSE passed on to the client: base64 of a small JSON object, nothing else.
_HEADER_B64 = re.compile(r"[A-Za-z0-9+/_=-]{1,4096}")


@dataclass(slots=True)
class Outgoing:
    """One request for the gateway: what to send, and under which price key it is learned."""

    method: str
    url: URL
    body: bytes | None
    headers: CIMultiDict[str]
    route: str = CHAT_ROUTE  # the price key's route (a route template)
    model: str | None = None  # the price key's model; None: not signed up front
    # What the quote model measures of the request, computed only when it is asked for
    # (free calls never are); None: the request is probed first.
    measure: Callable[[], Features | None] | None = field(default=None, repr=False)


@dataclass(slots=True)
class Answer:
    """An open gateway response and what was paid for it. Release ``response`` when done."""

    response: UpstreamResponse
    payment: Payment | None = None
    settlement: PaymentResponse | None = None
    presigned: bool = False  # paid on the first request, from a learned quote
    # What the call cost (atomic USDC): the signed amount, or less where the scheme
    # settles at most what was signed; never the gateway's unverifiable claim above it.
    cost_atomic: int | None = None
    # What ``cost_atomic`` rests on: "signed" (exact), "settled" (upto: the amount the
    # gateway reports) or "ceiling" (upto: it did not say, so the ceiling stands in).
    cost_source: str | None = None
    # A rail that is not x402 (the API key) says what it knows of the cost itself; these
    # headers then replace the x402 cost headers (costs.py).
    rail_cost_headers: Mapping[str, str] | None = None
    # A rail whose answers could echo a secret (the API key): every body byte relayed to
    # the client goes through a fresh one of these first (relay.py).
    redactor: Callable[[], BodyFilter] | None = field(default=None, repr=False)

    @property
    def paid_atomic(self) -> int | None:
        """What this call cost, None when it was not paid."""
        return self.cost_atomic if self.payment is not None else None


class Gateway:
    def __init__(
        self,
        session: UpstreamClient,
        api_url: str,
        payer: Rails,
        *,
        paid_replays: int = 2,
        probe_retries: int = 2,
        quotes: QuoteBook | None = None,
        proxy: str | None = None,
    ) -> None:
        self._session = session
        self._base = api_url.rstrip("/")
        self.origin = _origin(self._base)
        self._urls: dict[str, URL] = {}
        self._models_url = self.url("/v1/models")
        self._payer = payer
        self._paid_replays = paid_replays
        self._probe_retries = probe_retries
        self._proxy = proxy  # an egress proxy for this gateway's origin (egress.py)
        self.quotes = quotes
        # Payments the gateway refused, by reason (a bounded set of labels; see
        # refusal_label), for the metrics exporter to read.
        self.payment_refusals: dict[str, int] = {}

    def url(self, path: str, query: str = "") -> URL:
        """The gateway URL of a (raw, percent-encoded) path and query string."""
        if query:
            return URL(f"{self._base}{path}?{query}", encoded=True)
        url = self._urls.get(path)
        if url is None:
            url = URL(self._base + path, encoded=True)
            if len(self._urls) < MAX_CACHED_URLS:
                self._urls[path] = url
        return url

    def outgoing(
        self,
        method: str,
        path: str,
        query: str,
        body: bytes | None,
        client_headers: Mapping[str, str],
        *,
        content_type: str | None = JSON_TYPE,
        route: str = CHAT_ROUTE,
        model: str | None = None,
        measure: Callable[[], Features | None] | None = None,
    ) -> Outgoing:
        """A request for ``path`` (relative to the gateway base) with the client's
        headers that may go upstream, and its query without credential parameters."""
        headers = forwarded_headers(client_headers, content_type)
        url = self.url(path, without_credentials(query))
        return Outgoing(method, url, body, headers, route, model, measure)

    async def get_models(self) -> tuple[int, bytes]:
        try:
            response = await self._request(Outgoing("GET", self._models_url, None, CIMultiDict()))
            async with response:
                if is_redirect(response.status):
                    raise redirect_error(response)
                return response.status, await read_models_body(response)
        except asyncio.TimeoutError as exc:
            raise UpstreamTimeout("the gateway did not answer /v1/models in time") from exc
        except CLIENT_FAILED as exc:
            raise UpstreamError(f"cannot reach the gateway: {type(exc).__name__}") from exc

    async def send_chat(
        self,
        body: bytes,
        client_headers: Mapping[str, str],
        request_id: str,
        *,
        chat: ChatRequest | None = None,
        on_sent: OnSent | None = None,
    ) -> Answer:
        """Send a chat request, paying if asked (``send`` for the chat route). ``chat``
        (the parsed request) lets the quote model price it without parsing it again."""
        if chat is not None:
            request = chat

            def measure() -> Features | None:
                return request_features(request.model, request.max_tokens, request.data)

        else:

            def measure() -> Features | None:
                return features_from_body(body)

        out = self.outgoing(
            "POST",
            CHAT_ROUTE,
            "",
            body,
            client_headers,
            model=chat.model if chat is not None else None,
            measure=measure,
        )
        return await self.send(out, request_id, on_sent=on_sent)

    async def send(
        self, out: Outgoing, request_id: str, *, on_sent: OnSent | None = None
    ) -> Answer:
        """Send ``out``, paying if the gateway asks: one ``CallPayment`` (one nonce) for
        the whole call. ``on_sent`` is told the amount as soon as a payment may have
        reached the gateway."""
        out.headers["x-request-id"] = request_id
        call = self._payer.begin_call(request_id, on_sent=on_sent)
        try:
            return await self._send(call, out)
        finally:
            await call.finish()

    async def replay(self, out: Outgoing, payment_header: str | None) -> Answer:
        """A job poll: ``out`` with its submit's payment header (or none), never a new
        signature (docs/PROTOCOL.md section 5, rule 7). A poll carries no new payment, so
        failures are retried like the unpaid probe's and passed on free to retry; a 402
        (the gateway wants a payment the proxy does not have, or refused the one it has)
        is answered without signing."""
        if payment_header is not None:
            out.headers[PAYMENT_SIGNATURE] = payment_header
        response = await self._send_unpaid(out)
        if response.status != 402:
            return Answer(response)
        response.release()
        if payment_header is None:
            raise PaymentRefused(
                "this job's poll needs the payment it was submitted with, and this proxy "
                "process holds none for it (submitted elsewhere, or too long ago); polls are "
                "never signed anew, so nothing was signed",
                code="job_payment_unknown",
            )
        raise PaymentRefused(
            "the gateway refused the payment this job was submitted with (it may have "
            "expired); polls are never signed anew, so nothing more was signed",
            code="job_payment_refused",
        )

    async def _send(self, call: RailsCall, out: Outgoing) -> Answer:
        features: Features | None = None
        presigned = None
        if self._may_presign(out):
            features = self._features(out)
            presigned = await self._presign(call, features)
        if presigned is not None:
            quote, payment = presigned
            try:
                answer = await self._send_paid(call, out, payment)
            except PaymentNotAccepted as refusal:
                # Not used, nothing charged. The refusal is not a challenge to trust
                # (PAYMENT_INVALID carries none), so ask afresh and pay that, once, under
                # the same nonce: whatever the gateway does with the first, one settles.
                self._quotes_refused(quote, refusal.reason)
                del out.headers[PAYMENT_SIGNATURE]
                return await self._probe_after_refusal(call, out, features)
            except OptimisticPaymentRefused as refusal:
                # Refused, but it may still land (Solana): never signed again, the call
                # ends here (424), and the book goes back to probing first.
                self._quotes_refused(quote, refusal.reason, final=True)
                raise
            else:
                self._quotes_accepted(quote)
                answer.presigned = True
                return answer
        return await self._probe_then_pay(call, out, features)

    async def _probe_after_refusal(
        self, call: RailsCall, out: Outgoing, features: Features | None
    ) -> Answer:
        """Ask afresh after the gateway refused a payment signed up front.

        That payment was delivered. A gateway that calls it "not used" and keeps it can
        still settle it, so however the rest of this call fails, the answer must not invite
        a retry: each client retry is a new call with a new nonce, so one more payment.
        """
        try:
            answer = await self._probe_then_pay(call, out, features)
        except PaidCallFailed:
            raise
        except UpstreamError as failure:
            raise PaidCallFailed(
                f"{failure.message}; this came after the gateway refused a payment signed "
                "up front, which it may still settle. Not retried.",
                code=failure.code,
                upstream_status=failure.code,
            ) from failure
        status = answer.response.status
        if answer.payment is None and invites_retry(status):
            answer.response.release()
            raise PaidCallFailed(
                f"the gateway refused a payment signed up front, then answered {status} "
                "when asked afresh; the refused payment may still settle. Not retried.",
                code="paid_call_failed",
                upstream_status=status,
            )
        return answer

    async def _probe_then_pay(
        self, call: RailsCall, out: Outgoing, features: Features | None
    ) -> Answer:
        response = await self._send_unpaid(out)
        if response.status != 402:
            return Answer(response)
        if features is None:
            # Measured only now that the call turned out to be paid: free calls and keys
            # the book has never seen priced skip the walk over every message.
            features = self._features(out)
        offer = await read_offer(response)
        if offer is None:
            raise UpstreamError(
                "the gateway asked for payment (402) without a usable payment requirement",
                code="bad_payment_requirement",
            )
        try:
            choices = self._payer.choices(offer)
        except PaymentRefused:
            if self.quotes is not None and features is not None:
                # What it asked for last is not payable.
                self.quotes.forget(features.model, features.route)
            raise
        if self.quotes is not None and features is not None:
            others = [requirement for requirement, _ in choices[1:]]
            self.quotes.observe(features, choices[0][0], offer.resource, offer.extensions, others)
        # The preferred scheme, or (auto) exact when upto's allowance cannot take it.
        payment = await call.sign_first(choices, offer.resource, offer.extensions)
        return await self._send_paid(call, out, payment)

    def _may_presign(self, out: Outgoing) -> bool:
        """Whether the quote book could sign this up front (it has seen its key priced)."""
        if self.quotes is None or out.measure is None:
            return False
        return out.model is None or self.quotes.knows(out.model, out.route)

    def _features(self, out: Outgoing) -> Features | None:
        if self.quotes is None or out.measure is None:
            return None
        return out.measure()

    async def _presign(
        self, call: RailsCall, features: Features | None
    ) -> tuple[Presign, Payment] | None:
        """A payment signed from a trusted quote, through the same policy and budget
        checks as any other; None to probe first."""
        if self.quotes is None or features is None or not self._payer.can_sign:
            return None
        quote = self.quotes.presign(features)
        if quote is None:
            return None
        if not self._payer.may_presign(quote):
            self.quotes.declined(quote)
            return None
        try:
            payment = await call.pay_requirement(
                quote.requirement, quote.resource, quote.extensions, quote.alternatives
            )
        except PaymentRefused as refusal:
            # Probe instead: the gateway's own quote decides, and refusing *that* is final.
            self.quotes.declined(quote)
            log.info("not signing %s up front: %s", features.model, refusal.code)
            return None
        self.quotes.signed(quote)
        return quote, payment

    def _quotes_accepted(self, quote: Presign) -> None:
        if self.quotes is not None:
            self.quotes.accepted(quote)

    def _quotes_refused(self, quote: Presign, reason: str | None, *, final: bool = False) -> None:
        log.info(
            "payment signed up front for %s was not accepted (%s); %s",
            quote.model,
            reason or "no reason given",
            "not signed again (it may still settle)" if final else "re-asking",
        )
        if self.quotes is not None:
            self.quotes.refused(quote)

    async def _send_unpaid(self, out: Outgoing) -> UpstreamResponse:
        for attempt in range(self._probe_retries + 1):
            last = attempt == self._probe_retries
            try:
                response = await self._request(out)
            except asyncio.TimeoutError as exc:
                raise UpstreamTimeout("the gateway did not answer in time") from exc
            except UNREADABLE as exc:
                raise malformed_answer(exc) from exc  # answered: asking again gets the same
            except CLIENT_FAILED as exc:
                if last:
                    raise UpstreamError(f"cannot reach the gateway: {type(exc).__name__}") from exc
                await asyncio.sleep(RETRY_DELAYS[attempt])
                continue
            if is_redirect(response.status):
                response.release()
                raise redirect_error(response)
            if response.status < 500 or last:
                return response
            response.release()
            await asyncio.sleep(RETRY_DELAYS[attempt])
        raise AssertionError("unreachable")

    async def _send_paid(self, call: RailsCall, out: Outgoing, payment: Payment) -> Answer:
        out.headers[PAYMENT_SIGNATURE] = payment.header
        # What the gateway did with the last send that reached it ("503", "dropped"). Once
        # set, the signature may have been used, so no way this call ends may invite a retry.
        delivered: str | None = None
        for attempt in range(self._paid_replays + 1):
            last = attempt == self._paid_replays
            try:
                response = await self._post_paid(call, payment, out)
            except NEVER_CONNECTED as exc:  # before TimeoutError: a connect timeout is one
                # Never connected, so this send cannot have used the signature: replay it.
                if not last:
                    await asyncio.sleep(RETRY_DELAYS[attempt])
                    continue
                if delivered is None:  # no send ever reached the gateway: nothing was charged
                    raise UpstreamError(f"cannot reach the gateway: {type(exc).__name__}") from exc
                raise PaidCallFailed(
                    f"the gateway failed after the payment was sent ({delivered}), then could "
                    "not be reached to replay it; it may have been charged. Not retried.",
                    code="paid_call_unreachable",
                    upstream_status=delivered,
                ) from exc
            except asyncio.TimeoutError as exc:
                raise PaidCallFailed(
                    "the gateway timed out after the payment was sent; it may have been "
                    "charged. Not retried automatically.",
                    code="paid_call_timeout",
                    upstream_status="timeout",
                ) from exc
            except UNREADABLE as exc:
                # Answered (so delivered), in a form that cannot be read: not replayed.
                failure = malformed_answer(exc)
                raise PaidCallFailed(
                    f"{failure.message}, after the payment was sent; it may have been "
                    "charged. Not retried.",
                    code=failure.code,
                    upstream_status="malformed",
                ) from exc
            except CLIENT_FAILED as exc:
                # Sent, then dropped: replaying the SAME authorization is safe (one nonce).
                if last:
                    raise PaidCallFailed(
                        "the gateway dropped the connection after the payment was sent; "
                        "it may have been charged. Not retried.",
                        code="paid_call_dropped",
                        upstream_status="dropped",
                    ) from exc
                delivered = "dropped"
                await asyncio.sleep(RETRY_DELAYS[attempt])
                continue
            if response.status >= 500 and not last:
                delivered = str(response.status)
                response.release()
                await asyncio.sleep(RETRY_DELAYS[attempt])
                continue
            if is_redirect(response.status):
                response.release()
                raise PaidCallFailed(
                    f"the gateway answered the paid send with a redirect ({response.status}); "
                    "redirects are never followed, so the payment went nowhere else, but the "
                    "gateway may have used it. Not retried.",
                    code="gateway_redirect",
                    upstream_status=response.status,
                )
            if response.status < 400:
                settlement = parse_payment_response(response.headers.get(PAYMENT_RESPONSE))
                cost = call.settled(payment, settlement)
                return Answer(
                    response, payment, settlement, cost_atomic=cost, cost_source=call.cost_source
                )
            error = await classify_paid_error(response)
            self._note_refusal(error, out.headers.get("x-request-id"))
            if isinstance(error, PaymentNotAccepted):
                if settles_optimistically(payment):
                    raise OptimisticPaymentRefused(error, upstream_status=response.status)
                call.not_used(payment)
            raise error
        raise AssertionError("unreachable")

    def _note_refusal(
        self, error: PaymentNotAccepted | GatewayAnswer, request_id: str | None
    ) -> None:
        """Count and log a payment the gateway refused, with its reason."""
        label = refusal_label(error)
        if label is None:
            return
        self.payment_refusals[label] = self.payment_refusals.get(label, 0) + 1
        log.info(
            "the gateway refused a signed payment: %s (request %s)",
            error.reason or "no reason given",
            request_id,
            extra={"fields": {"reason": label}},
        )

    async def _post_paid(
        self, call: RailsCall, payment: Payment, out: Outgoing
    ) -> UpstreamResponse:
        """One send of ``payment``, telling ``call`` whenever it may have reached the
        gateway: always, except when no connection was ever made. A timeout, a drop or a
        cancellation mid-send may have delivered it, so it counts as sent."""
        try:
            response = await self._request(out)
        except NEVER_CONNECTED:
            raise
        except BaseException:
            call.sent(payment)
            raise
        call.sent(payment)
        return response

    async def _request(self, out: Outgoing) -> UpstreamResponse:
        session = self._session
        if isinstance(session, h1.Client):
            # It never follows redirects, and takes the egress proxy per origin (core.py).
            return await session.request(out.method, out.url, out.headers, out.body)
        # Never follow a redirect: the payment header would go wherever it points.
        return await session.request(
            out.method,
            out.url,
            data=out.body,
            headers=out.headers,
            allow_redirects=False,
            proxy=self._proxy,
        )


def is_redirect(status: int) -> bool:
    return 300 <= status < 400


def malformed_answer(exc: ClientResponseError | h1.RemoteProtocolError) -> UpstreamError:
    """A gateway answer the HTTP client could not read (raised while parsing the status
    line and headers)."""
    # aiohttp's LineTooLong: "Got more than N bytes when reading ...", h1's HeadTooLarge. A
    # 402 carries its offer in PAYMENT-REQUIRED, the one header that grows, so this is an
    # offer too large.
    too_large = isinstance(exc, h1.HeadTooLarge) or (
        isinstance(exc, ClientResponseError) and exc.message.startswith("Got more than")
    )
    if too_large:
        return UpstreamError(
            f"the gateway's answer carries a header over {GATEWAY_MAX_FIELD_SIZE} bytes "
            "(a PAYMENT-REQUIRED this large is not a usable payment requirement)",
            code="bad_payment_requirement",
        )
    return UpstreamError(
        "the gateway's answer is not readable HTTP (bad status line or headers)",
        code="bad_gateway_answer",
    )


def invites_retry(status: int) -> bool:
    """Whether common clients retry this status on their own (the openai and anthropic
    SDKs retry 408, 409, 429 and every 5xx)."""
    return status in (408, 409, 429) or status >= 500


def redirect_error(response: UpstreamResponse) -> UpstreamError:
    """A 3xx before any payment was sent: nothing was paid, and nothing is followed."""
    return UpstreamError(
        f"the gateway answered with a redirect ({response.status}); the proxy never follows "
        "redirects from the gateway (a payment would travel to another host)",
        code="gateway_redirect",
    )


def forwarded_headers(
    client_headers: Mapping[str, str], content_type: str | None = JSON_TYPE
) -> CIMultiDict[str]:
    headers: CIMultiDict[str] = CIMultiDict()
    if content_type is not None:
        headers["Content-Type"] = content_type
    for name in FORWARDED_REQUEST_HEADERS:
        value = client_headers.get(name)
        if value is not None:
            headers[name] = value
    return headers


def without_credentials(query: str) -> str:
    """A raw query string without the parameters that carry a client's key (``?key=``);
    every other byte kept as it came (Gemini's ``alt=sse``, a job's ``model``)."""
    if not query or "key" not in query.lower():
        return query
    kept = [
        part
        for part in query.split("&")
        if unquote(part.split("=", 1)[0]).lower() not in CREDENTIAL_PARAMETERS
    ]
    return "&".join(kept)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


async def read_small_body(response: UpstreamResponse) -> bytes:
    """Read at most MAX_CLASSIFIED_BODY bytes, decoded if the gateway compressed them."""
    async with response:
        data = await read_prefix(response.content, MAX_CLASSIFIED_BODY)
    encoding = response.headers.get("Content-Encoding", "").lower()
    if encoding in ("gzip", "deflate"):
        try:
            data = zlib.decompressobj(wbits=47).decompress(data, MAX_CLASSIFIED_BODY)
        except zlib.error:
            return b""
    return data


async def read_models_body(response: UpstreamResponse) -> bytes:
    """The whole catalogue answer, refused past MAX_MODELS_BODY (never buffered beyond)."""
    body = await read_bounded(response.content, MAX_MODELS_BODY)
    if body is None:
        raise UpstreamError(
            f"the gateway's /v1/models answer is larger than {MAX_MODELS_BODY} bytes",
            code="bad_gateway_answer",
        )
    return body


async def read_offer(response: UpstreamResponse) -> PaymentRequired | None:
    header = response.headers.get(PAYMENT_REQUIRED)
    body = await read_small_body(response)
    return parse_payment_required(header, body)


def error_code(body: bytes, status: int = 400) -> str | None:
    """The refusal code of a gateway error answer, wherever its route's envelope puts it
    (docs/PROTOCOL.md section 10): ``error.code`` (OpenAI, Anthropic), ``error.reason``
    (Google), a top-level ``code`` (BlockRun's media and search routes); else
    ``PAYMENT_INVALID`` for a "Payment verification failed" text in any of them.

    BlockRun's "already served" shape (a body with ``recoverable``, ``poll_url`` or
    ``job_id``) means ``PAYMENT_REPLAY`` on an error status only: a ``202`` job answer
    carries ``poll_url`` too, and is a success.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    if status >= 400 and any(k in data for k in ("recoverable", "poll_url", "job_id")):
        return "PAYMENT_REPLAY"
    error = data.get("error")
    texts = [data.get("message"), data.get("details")]
    if isinstance(error, dict):
        for key in ("code", "reason"):
            if isinstance(error.get(key), str):
                return str(error[key])
        texts.append(error.get("message"))
    else:
        texts.append(error)
    if isinstance(data.get("code"), str):
        return str(data["code"])
    if any(isinstance(t, str) and "payment verification failed" in t.lower() for t in texts):
        return "PAYMENT_INVALID"
    return None


async def classify_paid_error(
    response: UpstreamResponse,
) -> PaymentNotAccepted | GatewayAnswer:
    """Turn an error answer to a paid send into what the client gets; never signs.

    The gateway's reason (x402/reasons.py) goes into the message, and its known x402 code
    into the ``code``; a failed ``PAYMENT-RESPONSE`` is passed on. The gateway's
    ``Retry-After`` is not: it would invite the retry that a payment already sent makes
    costly.
    """
    status = response.status
    challenge = response.headers.get(PAYMENT_REQUIRED)
    body = await read_small_body(response)
    code = error_code(body, status)
    reason = refusal_reason(status, response.headers, body)
    known = reason_code(reason)
    relayed = relayed_settlement(response.headers.get(PAYMENT_RESPONSE))
    if code in NOT_USED_CODES or (status == 402 and parse_payment_required(challenge, body)):
        return PaymentNotAccepted(
            f"the gateway refused the signed payment ({reason or code or 'fresh 402'}); "
            "nothing was charged and the proxy did not sign again.",
            reason=reason,
            code=known,
            headers=relayed,
        )
    if code in USED_CODES:
        return GatewayAnswer(status, body, code="payment_replay", reason=reason, headers=relayed)
    return GatewayAnswer(
        status, body, code=known or "paid_call_failed", reason=reason, headers=relayed
    )


def relayed_settlement(value: str | None) -> dict[str, str]:
    """The gateway's PAYMENT-RESPONSE to pass on with an error, if it is a sane header."""
    if value is None or not _HEADER_B64.fullmatch(value):
        return {}
    return {PAYMENT_RESPONSE: value}


def refusal_label(error: PaymentNotAccepted | GatewayAnswer) -> str | None:
    """The metric label of a payment the gateway refused (bounded: a known x402 reason,
    ``other`` or ``unspecified``), or None when the error was not a refusal of the payment
    (a 5xx after settling, say)."""
    settlement_failed = PAYMENT_RESPONSE in error.headers
    if not isinstance(error, PaymentNotAccepted) and not settlement_failed:
        return None
    if error.reason is None:
        return "unspecified"
    return reason_code(error.reason) or "other"
