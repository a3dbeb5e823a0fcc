"""Switches that make the fake gateway misbehave, for testing the proxy's safety rules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Misbehavior:
    """Mutable knobs, all off by default; tests flip them between calls.

    They apply to every paid route (chat, Anthropic Messages, Gemini, media,
    search), through the one payment path they share. ``GET /v1/models``, job polls
    and hosted media stay well-behaved, so a proxy's model-cache fetch or a poll
    never eats a counter; the exceptions are ``fail_after_settle``, which also hits
    the poll that settles a job, and ``reset_after_events``, which cuts any streamed
    body. The integer counters say how many of the next matching requests are
    affected and are decremented as they are used.
    """

    # Quote shaping: what the 402 asks for.
    price_multiplier: float = 1.0
    network: str | None = None
    asset: str | None = None
    pay_to: str | None = None
    max_timeout_seconds: int | None = None
    resource_url: str | None = None
    scheme: str | None = None
    accepts_copies: int = 1  # the requirement listed this many times in ``accepts``
    required_padding: int = 0  # bytes of junk added to the PAYMENT-REQUIRED JSON
    # Merged into the requirement's extra (Base: the EIP-712 domain; Solana: feePayer).
    extra: dict[str, Any] | None = None

    # Failures.
    fail_unpaid: int = 0  # next N requests without a payment get fail_status
    fail_paid: int = 0  # next N paid requests get fail_status before settling (not consumed)
    fail_status: int = 503
    fail_after_settle: int = 0  # next N accepted payments are settled, then answered 500
    reset_after_events: int | None = None  # drop the connection after K frames or chunks
    delay_seconds: float = 0.0  # sleep before answering
    replay_on_paid: bool = False  # every paid request is told PAYMENT_REPLAY
    rate_limit: int = 0  # next N requests get 429
    retry_after: str | None = None  # Retry-After value on 429s and injected failures
    fresh_challenge_on_invalid: bool = False  # invalid payment -> a usable 402, not PAYMENT_INVALID
    job_fails: int = 0  # next N submitted jobs end "failed" on their last poll (not charged)

    # Lying about payments.
    refuse_paid: int = 0  # next N good payments are refused as not used anyway
    keep_refused: bool = False  # keep refused payments with a good signature (settle_kept)
    # What PAYMENT-RESPONSE claims was settled (atomic units as a string) instead of the
    # amount actually signed and settled, e.g. "999999999" or "0".
    settlement_claim: str | None = None
    # Fields merged into every PAYMENT-RESPONSE receipt, streamed or not (a transaction
    # no header can carry, padding that makes the header huge).
    settlement_report: dict[str, Any] | None = None

    # Redirects: answer ``redirect_status`` with ``Location: redirect_to`` (e.g. another
    # fake gateway's chat URL) instead of handling the request. A client that follows it
    # would carry the payment header (and, on 307/308, the body) to that host.
    redirect_to: str | None = None
    redirect_status: int = 302
    redirect_unpaid: bool = False  # requests without a payment are redirected
    redirect_paid: bool = False  # requests carrying a payment are redirected
