"""What a paid call cost, as the response headers clients read it from.

One place for the proxy's answers and the in-process LiteLLM provider, so both
report the same numbers: ``x-litellm-response-cost`` is what LiteLLM records as
the spend of a call (USD), ``x-blockrun-cost-usd`` says the same for everyone
else, and ``x-blockrun-settlement`` names the settlement transaction.
"""

from __future__ import annotations

from blockrun_proxy.upstream import Answer
from blockrun_proxy.x402 import usd

COST_HEADER = "x-blockrun-cost-usd"
LITELLM_COST_HEADER = "x-litellm-response-cost"
SETTLEMENT_HEADER = "x-blockrun-settlement"


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
        return {LITELLM_COST_HEADER: usd(0)}
    cost = usd(paid)
    headers = {COST_HEADER: cost, LITELLM_COST_HEADER: cost}
    if answer.settlement is not None and answer.settlement.transaction:
        headers[SETTLEMENT_HEADER] = answer.settlement.transaction
    return headers
