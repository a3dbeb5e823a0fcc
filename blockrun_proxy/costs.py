"""What a paid call cost, as the response headers clients read it from.

One place for the proxy's answers and the in-process LiteLLM provider, so both
report the same numbers: ``x-litellm-response-cost`` is what LiteLLM records as
the spend of a call (USD), ``x-blockrun-cost-usd`` says the same for everyone
else, ``x-blockrun-cost-source`` what that figure rests on (``signed``: an exact
payment; ``settled``: the amount an upto payment settled; ``ceiling``: an upto
settlement that did not say, so its ceiling stands in; ``none``: the API-key rail, whose
host reports no cost, so no figure is given at all), ``x-blockrun-ceiling-usd`` the
ceiling an upto payment signed (what exact would have charged), and
``x-blockrun-settlement`` names the settlement transaction.

The transaction is the gateway's word, and goes out as a header after the payment was
sent: only one that looks like a transaction id is named, so a hostile report (a CR/LF,
which aiohttp refuses to send, failing the paid call with a 500; 30 KB, which no client
reads) can never turn a paid answer into an error the client retries, a second charge.
"""

from __future__ import annotations

import re

from blockrun_proxy.upstream import Answer
from blockrun_proxy.x402 import UPTO_SCHEME, usd

COST_HEADER = "x-blockrun-cost-usd"
LITELLM_COST_HEADER = "x-litellm-response-cost"
# What a free call cost, formatted once: every free answer carries it.
FREE_COST = usd(0)
SETTLEMENT_HEADER = "x-blockrun-settlement"
COST_SOURCE_HEADER = "x-blockrun-cost-source"
CEILING_HEADER = "x-blockrun-ceiling-usd"
# An EVM transaction hash (0x + 64 hex digits) or a Solana signature (88 base58 digits),
# with room for other chains' ids; nothing a header or a log field cannot carry.
_TRANSACTION_ID = re.compile(r"[A-Za-z0-9]{1,128}")


def settlement_transaction(answer: Answer) -> str | None:
    """The settlement transaction the gateway reported, if it can be a transaction id."""
    settlement = answer.settlement
    if settlement is None or settlement.transaction is None:
        return None
    if _TRANSACTION_ID.fullmatch(settlement.transaction) is None:
        return None
    return settlement.transaction


def cost_headers(answer: Answer) -> dict[str, str]:
    """The cost headers for ``answer``.

    An unpaid answer (a free model) still says ``x-litellm-response-cost: 0``: without
    it LiteLLM prices the call from its own catalogue by model name, which for a
    BlockRun id it either does not know (no cost recorded) or prices as someone else's.
    """
    if answer.rail_cost_headers is not None:
        # A rail that is not x402 (the API key): what it can say of the cost, and nothing
        # invented (no x-litellm-response-cost when it reports none).
        return dict(answer.rail_cost_headers)
    paid = answer.paid_atomic
    if paid is None:
        return {LITELLM_COST_HEADER: FREE_COST}
    cost = usd(paid)
    headers = {COST_HEADER: cost, LITELLM_COST_HEADER: cost}
    if answer.cost_source is not None:
        headers[COST_SOURCE_HEADER] = answer.cost_source
    payment = answer.payment
    if payment is not None and payment.requirement.scheme == UPTO_SCHEME:
        headers[CEILING_HEADER] = usd(payment.amount)
    transaction = settlement_transaction(answer)
    if transaction is not None:
        headers[SETTLEMENT_HEADER] = transaction
    return headers
