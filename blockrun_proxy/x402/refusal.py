"""The protocol layer's one error: a requirement this payer will not sign.

The x402 package knows nothing of HTTP. It raises ``Refusal`` with a ``code`` from a
bounded set (``amount_over_cap``, ``network_not_allowed``, ...) and a message written
here, never copied from gateway input unclipped; the payer maps it to the proxy's
``PaymentRefused`` (402) at one boundary, as h11's errors only hint at a status.
"""

from __future__ import annotations


class Refusal(Exception):
    """A requirement the policy or the signer declines; nothing was signed."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
