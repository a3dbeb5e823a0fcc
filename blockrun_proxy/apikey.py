"""The API-key rail: calls paid from a BlockRun account's prepaid credit, no x402.

``BLOCKRUN_API_KEY=brk_...`` sends calls to the API host (``https://api.blockrun.ai``,
no ``/api`` segment) with ``Authorization: Bearer``. Nothing is signed on this rail,
and three things differ from x402 (PROTOCOL.md section 8):

- a 402 is a refusal (the account has no credit), never a challenge: ``ApiKeyNoCredit``,
  and no payer is ever asked to sign it;
- 401/403 mean the proxy's key is bad: ``ApiKeyRejected``, the operator's problem;
- every send is billed: there is no free probe and no signature to replay, so a 5xx or
  a dropped connection is answered like a failure after payment (424) and never resent.

The host reports no cost for a call (none is documented), so answers say
``x-blockrun-cost-source: none`` and carry no ``x-litellm-response-cost``: a number we
made up would be booked as the call's spend.

The key is a secret like the wallet key: kept out of repr(), never logged, and redacted
from any gateway text the proxy passes on (a host that echoes its Authorization header
must not hand the key to a client).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from blockrun_proxy.config import API_KEY_ENV, Settings
from blockrun_proxy.costs import COST_SOURCE_HEADER
from blockrun_proxy.errors import ApiKeyNoCredit, ApiKeyRejected, json_object

# How much of the host's own refusal text an error passes on.
MAX_DETAIL_CHARS = 300
REDACTED = "brk_[redacted]"
TOP_UP_URL = "https://user.blockrun.ai/dashboard/credits"


@dataclass(frozen=True, slots=True)
class ApiKeyRail:
    """Where calls go and how they authenticate on the API-key rail."""

    base_url: str
    key: str = field(repr=False)

    # A replay is a second billed call: the rail allows none (the x402 rails replay the
    # same signed payment, which cannot be charged twice).
    paid_replays = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeyRail | None:
        return cls(settings.api_key_url, settings.api_key) if settings.api_key else None

    def url(self, path: str) -> str:
        """The API host's URL for a route such as ``/v1/chat/completions``."""
        return self.base_url + "/" + path.lstrip("/")

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def check_answer(self, status: int, body: bytes) -> None:
        """Raise the rail's error for a refusal (402, 401, 403); anything else passes.

        ``body`` is the host's answer, read whole (refusals are small); its message is
        passed on clipped and with the key redacted.
        """
        if status == 402:
            raise ApiKeyNoCredit(
                "The BlockRun account of the proxy's API key has no credit for this call "
                f"(the API host answered 402). Top up at {TOP_UP_URL}, or use a free "
                f"model. Nothing was charged.{self._detail(body)}"
            )
        if status in (401, 403):
            raise ApiKeyRejected(
                f"The BlockRun API host refused the proxy's {API_KEY_ENV} ({status}): "
                "it is wrong, revoked or not allowed this call. The operator of the proxy "
                f"must fix it; retrying will not help.{self._detail(body)}"
            )

    def cost_headers(self, upstream_headers: Mapping[str, str]) -> dict[str, str]:
        """What a call on this rail cost, as far as anyone can say: the host reports
        nothing, so the answer says so and names no amount."""
        del upstream_headers  # nothing there is documented as a cost; read it here if it is
        return {COST_SOURCE_HEADER: "none"}

    def redact(self, text: bytes) -> bytes:
        """``text`` with every occurrence of the key replaced."""
        return text.replace(self.key.encode("utf-8"), REDACTED.encode("ascii"))

    def redactor(self) -> SecretRedactor:
        """A streaming ``redact`` for one answer body (pipe.BodyFilter)."""
        return SecretRedactor(self.key.encode("utf-8"), REDACTED.encode("ascii"))

    def _detail(self, body: bytes) -> str:
        message = _error_message(self.redact(body))
        if not message:
            return ""
        if len(message) > MAX_DETAIL_CHARS:
            message = message[: MAX_DETAIL_CHARS - 3] + "..."
        return f" The API host said: {message}"


def _error_message(body: bytes) -> str | None:
    """The human text of a refusal: OpenAI's ``error.message``, BlockRun's ``error``."""
    doc = json_object(body)
    error = doc.get("error") if doc is not None else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return error if isinstance(error, str) else None


class SecretRedactor:
    """``ApiKeyRail.redact`` over a body that arrives in chunks: an occurrence of the
    secret split across two chunks is caught too. Only a tail that could be the start of
    the secret is held back until the next chunk (or the end), so a stream's events,
    which end in a blank line, go out as they come."""

    __slots__ = ("_held", "_replacement", "_secret")

    def __init__(self, secret: bytes, replacement: bytes) -> None:
        if not secret:
            raise ValueError("nothing to redact")
        self._secret = secret
        self._replacement = replacement
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        data = (self._held + chunk).replace(self._secret, self._replacement)
        cut = len(data) - self._partial_tail(data)
        self._held = data[cut:]
        return data[:cut]

    def _partial_tail(self, data: bytes) -> int:
        """The length of the longest end of ``data`` that begins the secret (shorter than
        it: whole occurrences are replaced already)."""
        secret = self._secret
        first = secret[:1]
        at = data.find(first, max(0, len(data) - len(secret) + 1))
        while at != -1:
            if secret.startswith(data[at:]):
                return len(data) - at
            at = data.find(first, at + 1)
        return 0

    def flush(self) -> bytes:
        held, self._held = self._held, b""
        return held

    def __repr__(self) -> str:
        return "SecretRedactor()"
