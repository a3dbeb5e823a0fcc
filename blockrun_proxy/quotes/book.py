"""The quote book: per price key, what the gateway last asked for and whether we can predict it.

A price key is ``(route, model)`` (features.py): chat's and Anthropic's prices for one model
are learned apart.

For every 402 the proxy sees, the book

1. asks its current hypotheses (fit.py) what they would have signed for that
   request *before* seeing the amount (a shadow prediction, out of sample), and
   keeps a streak of the ones that would have been accepted without paying over
   the tolerance;
2. refits the hypotheses from the window of recent 402s;
3. stores the requirement the payer policy chose as this model's template
   (scheme, network, asset, payTo, maxTimeoutSeconds, extra, resource): always
   the one the gateway asked for last.

A presign (signing the first request, saving the unpaid probe) is offered only
when the streak has reached ``trust``, at least ``min_observations`` 402s back
the fit, the template is younger than ``ttl`` (so a price cut is noticed within
the TTL by an ordinary probe), and every hypothesis still consistent with the
data pins the same amount for this request. With a user's ``tolerance`` the top
of their joint range may be signed instead, when the range is that narrow; the
most that can over-pay is counted in ``stats``.

Memory is bounded: ``window`` observations per model, ``max_models`` models (LRU).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from blockrun_proxy.quotes.features import CHAT_ROUTE, MEASURES, Features, PriceKey
from blockrun_proxy.quotes.fit import Hypothesis, Observation, Quote, fit
from blockrun_proxy.x402 import Requirement

DEFAULT_WINDOW = 32
# No presign before this many 402s of the model are in the window: simple
# fractions fitted to a handful of points can fit them and be wrong elsewhere.
DEFAULT_MIN_OBSERVATIONS = 16
# While no exact formula fits (a tokenizer-priced model, say), refits back off
# exponentially up to every this many 402s, so an unlearnable model costs little CPU.
MAX_REFIT_BACKOFF = 32
DEFAULT_MAX_MODELS = 256
# Each miss doubles the streak a model must show before signing again (up to this);
# a model that keeps missing is one whose prices our features do not explain.
MAX_REQUIRED_STREAK = 48
# "<model> - 128000 max output tokens": the gateway clamps max_tokens there and
# prices the clamp, so the feature is clamped the same way.
_CEILING_RE = re.compile(r"([0-9][0-9,_]*)\s+max output tokens", re.IGNORECASE)


@dataclass(slots=True)
class QuoteStats:
    """Plain counters, for logs and for the metrics exporter to read."""

    presigned: int = 0  # payments signed up front (first request)
    hits: int = 0  # ... accepted by the gateway: one round trip
    misses: int = 0  # ... refused as not used: fell back to probe-then-pay
    declined: int = 0  # trusted quote, but the policy or budget would not sign it
    probed: int = 0  # paid calls that went probe-first (cold, stale, or after a miss)
    shadow_checks: int = 0  # 402s compared with the prediction made before seeing them
    shadow_exact: int = 0  # ... where the amount we would have signed was exactly it
    refits: int = 0  # hypotheses rebuilt from the window
    overpaid_atomic: int = 0  # at most this much signed above the price (tolerance > 0 only)


@dataclass(frozen=True, slots=True)
class Template:
    requirement: Requirement
    resource: Mapping[str, Any]
    extensions: Mapping[str, Any] | None
    seen_at: float


@dataclass(frozen=True, slots=True)
class Presign:
    """A requirement to sign before asking: the template with the predicted amount."""

    key: PriceKey
    requirement: Requirement
    resource: Mapping[str, Any]
    extensions: Mapping[str, Any] | None
    overpay: int  # the most this amount can be above the price (0 unless tolerance allows)

    @property
    def model(self) -> str:
        return self.key[1]

    @property
    def amount(self) -> int:
        return self.requirement.amount


@dataclass(slots=True)
class _ModelState:
    window: deque[Observation]
    hypotheses: list[Hypothesis] = dataclasses.field(default_factory=list)
    streak: int = 0
    required: int = 0  # streak needed to sign: trust, doubled per miss
    clean: int = 0  # presigns accepted since the last miss
    ceiling: int | None = None
    template: Template | None = None
    backoff: int = 0  # refits skipped after the last one that found no exact formula
    skip: int = 0  # 402s left to skip before the next refit


class QuoteBook:
    def __init__(
        self,
        *,
        trust: int = 3,
        tolerance_atomic: int = 0,
        ttl_seconds: float = 300.0,
        enabled: bool = True,
        window: int = DEFAULT_WINDOW,
        min_observations: int = DEFAULT_MIN_OBSERVATIONS,
        max_models: int = DEFAULT_MAX_MODELS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.trust = trust
        self.tolerance = tolerance_atomic
        self.ttl = ttl_seconds
        # Disabled: learn and keep shadow statistics, never offer a presign.
        self.enabled = enabled
        self.stats = QuoteStats()
        self._window = window
        self.min_observations = min_observations
        self._max_models = max_models
        self._clock = clock
        self._models: OrderedDict[PriceKey, _ModelState] = OrderedDict()

    # --- asking ---------------------------------------------------------------------------

    def knows(self, model: str, route: str = CHAT_ROUTE) -> bool:
        """Whether a 402 for ``model`` on ``route`` has been observed (and is still here)."""
        return (route, model) in self._models

    def presign(self, features: Features) -> Presign | None:
        """What to sign up front for this request, or None to probe first."""
        state = self._models.get(features.key)
        if not self.enabled or state is None or not self._trusted(state):
            return None
        template = state.template
        assert template is not None  # _trusted checked it
        if self._clock() - template.seen_at > self.ttl:
            return None  # re-validate with a probe: prices may have changed
        decision = self._decide(state, features)
        if decision is None:
            return None
        amount, overpay = decision
        requirement = dataclasses.replace(
            template.requirement,
            amount=amount,
            raw={**template.requirement.raw, "amount": str(amount)},
        )
        return Presign(
            features.key,
            requirement,
            template.resource,
            template.extensions,
            overpay=overpay,
        )

    def trusted(self, model: str, route: str = CHAT_ROUTE) -> bool:
        state = self._models.get((route, model))
        return state is not None and self._trusted(state)

    def hypotheses(self, model: str, route: str = CHAT_ROUTE) -> list[Hypothesis]:
        state = self._models.get((route, model))
        return [] if state is None else list(state.hypotheses)

    # --- outcomes of presigns ---------------------------------------------------------------

    def signed(self, presign: Presign) -> None:
        self.stats.presigned += 1

    def accepted(self, presign: Presign) -> None:
        self.stats.hits += 1
        self.stats.overpaid_atomic += presign.overpay
        state = self._models.get(presign.key)
        if state is not None:
            state.clean += 1
            if state.clean >= self._window:  # a long clean run earns back some slack
                state.required = max(self.trust, state.required // 2)
                state.clean = 0

    def refused(self, presign: Presign) -> None:
        """The gateway did not use the presigned payment: stop trusting until re-earned."""
        self.stats.misses += 1
        state = self._models.get(presign.key)
        if state is not None:
            self._demote(state)

    def declined(self, presign: Presign) -> None:
        self.stats.declined += 1

    # --- learning from 402s ---------------------------------------------------------------

    def observe(
        self,
        features: Features,
        requirement: Requirement,
        resource: Mapping[str, Any],
        extensions: Mapping[str, Any] | None,
    ) -> None:
        """A 402 for this request asked for ``requirement`` (already accepted by the policy)."""
        self.stats.probed += 1
        state = self._state(features.key)
        ceiling = _ceiling(resource)
        if ceiling is not None:
            state.ceiling = ceiling
        self._check(state, features, requirement.amount)
        state.window.append(
            Observation(
                self._clamped(state, features.max_tokens),
                features.messages,
                features.sizes,
                requirement.amount,
            )
        )
        self._refit(state)
        # Only v2 requirements (``amount``) are reused; v1's maxAmountRequired is not rebuilt.
        template_ok = "amount" in requirement.raw
        state.template = (
            Template(requirement, resource, extensions, self._clock()) if template_ok else None
        )

    def forget(self, model: str, route: str = CHAT_ROUTE) -> None:
        """The gateway's latest quote was refused by the policy: its old one is no longer
        what it asks for, so nothing is signed up front until a good 402 is seen again."""
        state = self._models.get((route, model))
        if state is not None:
            state.template = None
            state.streak = 0

    # --- internals ----------------------------------------------------------------------------

    def _trusted(self, state: _ModelState) -> bool:
        return (
            state.streak >= max(self.trust, state.required)
            and state.template is not None
            and bool(state.hypotheses)
            and len(state.window) >= self.min_observations
        )

    def _decide(self, state: _ModelState, features: Features) -> tuple[int, int] | None:
        """(amount to sign, the most it can over-pay) for this request, or None.

        Every hypothesis still consistent with the window must speak for the
        request. Without tolerance all of them must be exact, pin the amount
        (low == high) and agree: the amount is then the prediction, over-paying
        nothing. With tolerance, the top of their joint range is signed if the
        whole range is within ``tolerance``: whatever the price inside it, the
        over-payment is at most high - low, and that is what gets counted.
        """
        quotes: list[Quote] = []
        for h in state.hypotheses:
            quote = h.quote(
                self._clamped(state, features.max_tokens), features.sizes, features.messages
            )
            if quote is None:
                return None
            quotes.append(quote)
        if not quotes:
            return None
        low, high = min(q.low for q in quotes), max(q.high for q in quotes)
        if self.tolerance <= 0:
            exact = all(h.exact for h in state.hypotheses)
            return (low, 0) if exact and low == high else None
        return (high, high - low) if high - low <= self.tolerance else None

    def _check(self, state: _ModelState, features: Features, amount: int) -> None:
        """Shadow-check the current hypotheses against a 402 they have not seen yet."""
        if not state.hypotheses:
            return
        self.stats.shadow_checks += 1
        max_tokens = self._clamped(state, features.max_tokens)
        quotes = [h.quote(max_tokens, features.sizes, features.messages) for h in state.hypotheses]
        exact = all(h.exact for h in state.hypotheses)
        if exact and all(q is not None and not q.low <= amount <= q.high for q in quotes):
            # Outside everything the model thought possible: a miss even if it would
            # not have signed. Repeated, it means our features do not explain prices.
            self._demote(state)
            return
        decision = self._decide(state, features)
        if decision is None:
            return  # too uncertain to sign: neither earns nor costs trust
        signed, _ = decision
        if signed == amount:
            self.stats.shadow_exact += 1
        # Would that presign have been accepted, without paying over the tolerance?
        if amount <= signed <= amount + self.tolerance:
            state.streak += 1
        else:
            self._demote(state)

    def _demote(self, state: _ModelState) -> None:
        state.streak = 0
        state.clean = 0
        state.required = min(MAX_REQUIRED_STREAK, 2 * max(state.required, self.trust))

    def _refit(self, state: _ModelState) -> None:
        """Refit from the whole window. A 402 only arrives on the probe path, which already
        costs a round trip, and a fresh fit can bring in a formula the previous
        candidates missed; while nothing exact fits, refits back off."""
        if state.skip > 0:
            state.skip -= 1
            return
        window = list(state.window)
        state.hypotheses = fit(window, len(MEASURES))
        self.stats.refits += 1
        if not any(h.exact for h in state.hypotheses) and len(window) > self.min_observations:
            # The price may have changed inside the window: if the newest 402s alone fit
            # a formula, the older ones describe another price and are dropped.
            recent = window[-self.min_observations :]
            hypotheses = fit(recent, len(MEASURES))
            if any(h.exact for h in hypotheses):
                state.hypotheses = hypotheses
                state.window = deque(recent, maxlen=self._window)
                # Fine once for a price change; a model that keeps needing it is one
                # whose prices only look explained over short stretches.
                self._demote(state)
        if any(h.exact for h in state.hypotheses):
            state.backoff = 0
        elif len(state.window) >= self.min_observations:
            state.backoff = min(MAX_REFIT_BACKOFF, max(1, 2 * state.backoff))
            state.skip = state.backoff

    def _state(self, key: PriceKey) -> _ModelState:
        state = self._models.get(key)
        if state is None:
            state = _ModelState(deque(maxlen=self._window))
            self._models[key] = state
            while len(self._models) > self._max_models:
                self._models.popitem(last=False)
        else:
            self._models.move_to_end(key)
        return state

    @staticmethod
    def _clamped(state: _ModelState, max_tokens: int) -> int:
        return max_tokens if state.ceiling is None else min(max_tokens, state.ceiling)


def _ceiling(resource: Mapping[str, Any]) -> int | None:
    description = resource.get("description")
    if not isinstance(description, str):
        return None
    match = _CEILING_RE.search(description)
    if match is None:
        return None
    value = int(match.group(1).replace(",", "").replace("_", ""))
    return value if value > 0 else None
