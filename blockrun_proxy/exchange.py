"""What one request did: the record the access log and the metrics are both written from.

The outermost middleware creates an ``Exchange`` per request; handlers and the error
middleware fill in what only they know (model, cost, bytes, first byte, error code);
the middleware reports it once the response is done. Nothing here holds key material.
"""

from __future__ import annotations

import itertools
import re
import secrets
import time
from dataclasses import dataclass, field

# A client's x-request-id is kept only if it looks like an id: it ends up in log lines
# and in the gateway request, so no spaces, quotes or control characters, bounded size.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
# A handler cancelled before it answered: the client hung up (or the drain ran out).
# 499 is nginx's "client closed request"; no response with it is ever sent.
CLIENT_CLOSED = 499
# Generated ids: a random per-process prefix and a counter, 32 hex digits like a uuid4
# hex. Unique across processes and restarts without a getrandom() syscall per request;
# they name requests, they are not secrets.
_ID_PREFIX = secrets.token_hex(8)
_id_counter = itertools.count(1)


def request_id_from(header: str | None) -> str:
    """The client's request id if it is a sane one, else a fresh one."""
    if header and _REQUEST_ID.fullmatch(header):
        return header
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


@dataclass(slots=True)
class Exchange:
    request_id: str
    method: str
    route: str
    started: float = field(default_factory=time.monotonic)
    status: int = 0
    model: str | None = None
    # Response body bytes sent to the client.
    bytes_out: int = 0
    first_byte_at: float | None = None
    # USDC atomic units this call cost (what was signed, for exact), None when free.
    cost_atomic: int | None = None
    # The most this call's payment may have cost, set as soon as a send of it may have
    # reached the gateway: on a 424 or a client that hung up after paying, this money may
    # be gone even though no cost was ever reported.
    signed_atomic: int | None = None
    # The settlement transaction the gateway reported, if any (for the spend ledger).
    settlement_tx: str | None = None
    # The ``code`` of an error the proxy answered itself (policy, overload, bad input).
    refusal: str | None = None
    # What went wrong on the gateway's side, e.g. ``gateway_timeout``, ``http_503``.
    upstream_error: str | None = None

    def payment_sent(self, amount_atomic: int) -> None:
        """``Gateway.send_chat``'s ``on_sent``: a payment of this much may have reached it."""
        self.signed_atomic = amount_atomic

    def ttfb(self) -> float | None:
        """Seconds from the request's arrival to the first relayed body byte."""
        return None if self.first_byte_at is None else self.first_byte_at - self.started
