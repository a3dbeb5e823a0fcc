"""The quote book: per price key, what the gateway last asked for and whether we can predict it.

A price key is ``(route, model)`` (features.py). For every 402 the proxy sees, the book

1. asks what it would have signed for that request *before* seeing the amount (a
   shadow prediction, out of sample), and keeps a streak of the ones that would have
   been accepted without paying over the tolerance;
2. narrows its formulas with the new 402 (below);
3. stores the requirement the payer policy chose as this key's template (scheme,
   network, asset, payTo, maxTimeoutSeconds, extra, resource, the declared extensions):
   always the one the gateway asked for last. Beside it, the other requirements of that
   402 the policy also accepts at the same amount (``auto``: the exact one next to the
   upto one), so a payment signed up front can fall back as one answering a 402 does.

What it predicts from, in order:

- **the catalogue** (prior.py): formulas with the prices ``/v1/models`` publishes, each
  size measure and per-message overhead, the constant bounded exactly by the 402s.
  Used while at least one explains every 402; from the second 402 on. A key is priced by
  the catalogue id its requests name (``Features.catalogue``: chat's model, the model of an
  Anthropic or Gemini request); keys of routes priced otherwise have none.
- **the learner** (fit.py): formulas fitted from the window of recent 402s alone, for
  models the catalogue does not price or whose 402s refute it; from ``min_observations``
  on when a formula rests on a slope guessed from a least-squares band, else from
  ``pinned_min_observations`` (or the key's own smaller minimum,
  ``Features.min_observations``: routes priced flat or per unit).
- **the prefix bound**: a request that extends a seen one (the same body with messages
  appended, ``max_tokens`` at least as large) costs at least what that one did, under
  any price of input tokens + reservation + fee, however the gateway counts tokens.
  Signed when the formulas cannot decide and the bound has been the exact price on the
  last ``trust`` 402s (a price that does not move with the prompt, say).

A presign (signing the first request, saving the unpaid probe) is offered only when
the streak has reached ``trust``, the template is younger than ``ttl`` (so a price cut
is noticed within the TTL by an ordinary probe), and, without a tolerance, every
formula still consistent with the 402s gives this request the same amount: nothing
consistent with the data makes it an over-payment, and an under-payment is refused as
not used (one more round trip, no money). Where the learned formulas part ways by a
unit (a request beyond the sizes seen), their lowest amount is signed when the round
prices among them (fit.py's lattice) all give it: still over-paying under none of them.
With a user's ``tolerance`` an amount is signed only if it is at most the tolerance
above a lower bound of the price: the exact formulas' lowest amount, or the prefix
bound. Inside that span the least-squares estimate picks the amount, but never lowers
the floor: an estimate is a sample, and a floor from sizes alone (a larger request in
every measure costs at least as much) is not one either, for a gateway that measures
what the features do not see (escapes in re-serialised JSON). With no lower bound, the
request is probed. The most that can be over-paid is counted in ``stats``.

Memory is bounded: ``window`` observations per key, ``max_models`` keys (LRU).
``take_changes``/``restore``/``merge`` turn each price key's state into a small JSON
document and back (entries.py), so a restarted sidecar, or a new replica of a fleet that
shares a store, starts warm (keeper.py).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from blockrun_proxy.quotes.features import CHAT_ROUTE, MEASURE_TOKENS, MEASURES, Features, PriceKey
from blockrun_proxy.quotes.observation import Observation, Quote, span
from blockrun_proxy.quotes.prior import CataloguePrice, Prior
from blockrun_proxy.x402 import UPTO_SCHEME, Requirement
from blockrun_proxy.x402.wire import parse_requirement

if TYPE_CHECKING:
    from blockrun_proxy.quotes.fit import Hypothesis

DEFAULT_WINDOW = 32
# No presign from learned formulas before this many 402s of the key are in the window:
# simple fractions fitted to a handful of points can fit them and be wrong elsewhere.
DEFAULT_MIN_OBSERVATIONS = 16
# Learned formulas with no slope guessed (fit.py's Occam column) need no more 402s than the
# fit does: they hold every formula of their shape that explains the 402s, so where they
# all agree the amount is right whatever their number.
PINNED_MIN_OBSERVATIONS = 6
# Catalogue formulas have their slopes from the catalogue; two 402s bound the constant.
PRIOR_MIN_OBSERVATIONS = 2
# While no exact formula fits (a tokenizer-priced model, say), refits back off
# exponentially up to every this many 402s, so an unlearnable model costs little CPU.
MAX_REFIT_BACKOFF = 32
DEFAULT_MAX_MODELS = 256
# Each miss doubles the streak a key must show before signing again (up to this);
# a key that keeps missing is one whose prices our features do not explain.
MAX_REQUIRED_STREAK = 48
# How often a model the catalogue does not list may ask for a fresh catalogue.
CATALOGUE_RETRY_SECONDS = 60.0
# A price change leaves old 402s in the window: a new catalogue price is tried against
# only the newest this many when the whole window refutes it.
RECENT_FOR_PRICE_CHANGE = 4
# The version of the documents ``take_changes`` gives and ``restore`` reads (entries.py).
SNAPSHOT_FORMAT = 2
# "<model> - 128000 max output tokens": the gateway clamps max_tokens there and
# prices the clamp, so the feature is clamped the same way.
_CEILING_RE = re.compile(r"([0-9][0-9,_]*)\s+max output tokens", re.IGNORECASE)
_UNITS_PER_TOKEN = tuple(int(1 / t) if t < 1 else 1 for t in MEASURE_TOKENS)


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
    refits: int = 0  # learned formulas rebuilt from the window
    overpaid_atomic: int = 0  # at most this much signed above the price (tolerance > 0 only)
    from_catalogue: int = 0  # presigns priced by catalogue formulas
    from_bound: int = 0  # presigns priced by the prefix bound
    refuted: int = 0  # catalogue priors the 402s contradicted


@dataclass(frozen=True, slots=True)
class Template:
    requirement: Requirement
    resource: Mapping[str, Any]
    extensions: Mapping[str, Any] | None
    seen_at: float
    # Requirements of the same 402, in the payer's order of preference, the payer may sign
    # instead of ``requirement`` (same amount: the prediction prices them all).
    alternatives: tuple[Requirement, ...] = ()


@dataclass(frozen=True, slots=True)
class Presign:
    """A requirement to sign before asking: the template with the predicted amount."""

    key: PriceKey
    requirement: Requirement
    resource: Mapping[str, Any]
    extensions: Mapping[str, Any] | None
    overpay: int  # the most this amount can be above the price (0 unless tolerance allows)
    source: str = "learned"  # "catalogue", "learned", "estimate" or "bound"
    alternatives: tuple[Requirement, ...] = ()  # the template's, at the same amount

    @property
    def model(self) -> str:
        return self.key[1]

    @property
    def amount(self) -> int:
        return self.requirement.amount


@dataclass(slots=True)
class _State:
    window: deque[Observation]
    hypotheses: list[Hypothesis] = dataclasses.field(default_factory=list)
    # With a tolerance: the least-squares formula, for requests the exact ones cannot
    # price (a gateway measuring prompts in a way the features do not see).
    approximate: Hypothesis | None = None
    prior: Prior | None = None
    refuted: CataloguePrice | None = None  # the catalogue price the 402s contradicted
    fitted: bool = False  # the learned formulas match the window (skipped while the prior holds)
    refitting: bool = False  # a background refit is on its way
    catalogue_version: int = -1  # the book's catalogue this key last took its price from
    version: int = 0  # refits asked for, to drop one that the window has outrun
    streak: int = 0
    required: int = 0  # streak needed to sign: trust, doubled per miss
    clean: int = 0  # presigns accepted since the last miss
    bound_streak: int = 0  # consecutive 402s priced exactly at the prefix bound
    bound_broken: bool = False  # a 402 cheaper than one it extends: the bound is none here
    ceiling: int | None = None
    template: Template | None = None
    catalogue_id: str | None = None  # whose catalogue prices apply (Features.catalogue)
    backoff: int = 0  # refits skipped after the last one that found no exact formula
    skip: int = 0  # 402s left to skip before the next refit
    # Unix time of the newest 402 this state learned from: which of two replicas' states
    # of one key is fresher (the keeper merges by newest).
    learned_at: float = 0.0
    changed: bool = False  # worth saving since it was last handed to the keeper


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
        pinned_min_observations: int = PINNED_MIN_OBSERVATIONS,
        max_models: int = DEFAULT_MAX_MODELS,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.trust = trust
        self.tolerance = tolerance_atomic
        self.ttl = ttl_seconds
        # Disabled: learn and keep shadow statistics, never offer a presign.
        self.enabled = enabled
        self.stats = QuoteStats()
        self._window = window
        self.min_observations = min_observations
        self.pinned_min_observations = pinned_min_observations
        self._max_models = max_models
        self._clock = clock
        self._wall = wall
        self._models: OrderedDict[PriceKey, _State] = OrderedDict()
        self._catalogue: dict[str, CataloguePrice] = {}
        self._catalogue_at = 0.0  # unix time the catalogue was fetched (0: none)
        self._catalogue_changed = False
        self._catalogue_asked = float("-inf")
        self._catalogue_version = 0
        # Called (synchronously, at most every CATALOGUE_RETRY_SECONDS) when a 402 names a
        # model the catalogue does not price yet: the app fetches /v1/models in the
        # background and hands the result to ``set_catalogue``.
        self.on_catalogue_wanted: Callable[[], None] | None = None
        # Called with (key, window, version) to refit in the background instead of inline;
        # the result comes back through ``refit_done``.
        self.on_refit: Callable[[PriceKey, list[Observation], int], None] | None = None
        # Something worth saving changed since the keeper last took the changes.
        self.dirty = False

    # --- asking ---------------------------------------------------------------------------

    def knows(self, model: str, route: str = CHAT_ROUTE) -> bool:
        """Whether a 402 for this price key has been observed (and is still in the book)."""
        return (route, model) in self._models

    def presign(self, features: Features) -> Presign | None:
        """What to sign up front for this request, or None to probe first."""
        state = self._models.get(features.key)
        if not self.enabled or state is None:
            return None
        self._catch_up(features.key, state)
        if not self._trusted(state):
            return None
        template = state.template
        assert template is not None  # _trusted checked it
        if self._clock() - template.seen_at > self.ttl:
            return None  # re-validate with a probe: prices may have changed
        decision = self._decide(state, features)
        if decision is None:
            return None
        amount, overpay, source = decision
        if overpay > 0 and template.requirement.scheme == UPTO_SCHEME:
            # A ceiling must equal the gateway's own quote (the official server matches it
            # exactly), so one that may lie above the price would only be refused: under
            # upto, --presign-tolerance-usd buys nothing, and the call is probed instead.
            return None
        return Presign(
            features.key,
            _priced(template.requirement, amount),
            template.resource,
            template.extensions,
            overpay=overpay,
            source=source,
            alternatives=tuple(_priced(r, amount) for r in template.alternatives),
        )

    def trusted(self, model: str, route: str = CHAT_ROUTE) -> bool:
        state = self._models.get((route, model))
        return state is not None and self._trusted(state)

    def refitting(self, model: str, route: str = CHAT_ROUTE) -> bool:
        """Whether a background refit of this price key is on its way (nothing is signed
        from its learned formulas until it is back)."""
        state = self._models.get((route, model))
        return state is not None and state.refitting

    def hypotheses(self, model: str, route: str = CHAT_ROUTE) -> list[Hypothesis]:
        state = self._models.get((route, model))
        if state is None:
            return []
        self._ensure_fitted((route, model), state)
        return list(state.hypotheses)

    def prior(self, model: str, route: str = CHAT_ROUTE) -> Prior | None:
        state = self._models.get((route, model))
        if state is None:
            return None
        self._catch_up((route, model), state)
        return state.prior

    # --- outcomes of presigns ---------------------------------------------------------------

    def signed(self, presign: Presign) -> None:
        self.stats.presigned += 1

    def accepted(self, presign: Presign) -> None:
        self.stats.hits += 1
        self.stats.overpaid_atomic += presign.overpay
        if presign.source == "catalogue":
            self.stats.from_catalogue += 1
        elif presign.source == "bound":
            self.stats.from_bound += 1
        state = self._models.get(presign.key)
        if state is not None:
            state.clean += 1
            if state.clean >= self._window:  # a long clean run earns back some slack
                state.required = max(self.trust, state.required // 2)
                state.clean = 0
                self._changed(state)

    def refused(self, presign: Presign) -> None:
        """The gateway did not use the presigned payment: stop trusting until re-earned."""
        self.stats.misses += 1
        state = self._models.get(presign.key)
        if state is not None:
            if presign.source == "bound":
                state.bound_streak = 0
            if presign.source == "estimate":
                state.streak = 0  # an estimate that fell short: see _check
            else:
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
        alternatives: Iterable[Requirement] = (),
    ) -> None:
        """A 402 for this request asked for ``requirement`` (already accepted by the policy).
        ``alternatives``: the 402's other requirements the policy accepts, most preferred
        first; only those at the same amount are kept (a presign prices them alike)."""
        self.stats.probed += 1
        state = self._state(features.key)
        state.learned_at = self._stamp()
        self._changed(state)
        if state.catalogue_id != features.catalogue:
            state.catalogue_id = features.catalogue
            state.catalogue_version = -1  # take that catalogue price (if any) now
        self._catch_up(features.key, state)
        ceiling = _ceiling(resource)
        if ceiling is not None:
            state.ceiling = ceiling
        self._check(state, features, requirement.amount)
        digests = features.prefixes.digests()
        observation = Observation(
            self._clamped(state, features.max_tokens),
            features.messages,
            features.sizes,
            requirement.amount,
            features.extra,
            digest=digests[-1] if digests else None,
            seen_at=self._clock(),
        )
        state.window.append(observation)
        state.fitted = False
        if state.prior is not None:
            state.prior.admit(observation)
            if not state.prior.live:
                # The 402s contradict the catalogue: learn from them alone (and see
                # whether the catalogue has changed since).
                state.refuted, state.prior = state.prior.price, None
                self.stats.refuted += 1
                self._demote(state)
                self._ask_catalogue()
        if state.prior is None:
            self._refit(features.key, state)
        # Only v2 requirements (``amount``) are reused; v1's maxAmountRequired is not rebuilt.
        template_ok = "amount" in requirement.raw
        others = tuple(
            r for r in alternatives if r.amount == requirement.amount and "amount" in r.raw
        )
        state.template = (
            Template(requirement, resource, extensions, self._clock(), others)
            if template_ok
            else None
        )
        if features.catalogue is not None and features.catalogue not in self._catalogue:
            self._ask_catalogue()

    def forget(self, model: str, route: str = CHAT_ROUTE) -> None:
        """The gateway's latest quote was refused by the policy: its old one is no longer
        what it asks for, so nothing is signed up front until a good 402 is seen again."""
        state = self._models.get((route, model))
        if state is not None:
            state.template = None
            state.streak = 0
            state.learned_at = self._stamp()
            self._changed(state)

    # --- the catalogue ------------------------------------------------------------------------

    def set_catalogue(self, prices: Mapping[str, CataloguePrice]) -> None:
        """The models' published prices (chat route): priors for the keys they price."""
        self._catalogue = dict(prices)
        # Each key takes its price when next used (_catch_up): building a prior costs a
        # millisecond or two, too much for every key of a full book at once on the loop.
        self._catalogue_version += 1
        self._catalogue_at = self._stamp()
        self._catalogue_changed = True
        self.dirty = True

    def _catch_up(self, key: PriceKey, state: _State) -> None:
        if state.catalogue_version != self._catalogue_version:
            state.catalogue_version = self._catalogue_version
            if state.catalogue_id is not None:
                self._adopt_price(state, self._catalogue.get(state.catalogue_id))

    @property
    def catalogue(self) -> Mapping[str, CataloguePrice]:
        return self._catalogue

    def _adopt_price(self, state: _State, price: CataloguePrice | None) -> None:
        if price is None or price == state.refuted:
            return
        if state.prior is not None and state.prior.price == price:
            return
        prior = Prior(price, state.window)
        if not prior.live and len(state.window) > RECENT_FOR_PRICE_CHANGE:
            # A new price: the older 402s in the window were asked under the old one.
            prior = Prior(price, list(state.window)[-RECENT_FOR_PRICE_CHANGE:])
        if prior.live:
            state.prior, state.refuted = prior, None
            if state.ceiling is None and price.max_output is not None:
                state.ceiling = price.max_output
        else:
            state.prior, state.refuted = None, price

    def _ask_catalogue(self) -> None:
        if self.on_catalogue_wanted is None:
            return
        now = self._clock()
        if now - self._catalogue_asked >= CATALOGUE_RETRY_SECONDS:
            self._catalogue_asked = now
            self.on_catalogue_wanted()

    # --- internals ----------------------------------------------------------------------------

    def _trusted(self, state: _State) -> bool:
        return state.streak >= max(self.trust, state.required) and state.template is not None

    def _range(self, state: _State, features: Features) -> tuple[Quote, bool] | None:
        """The amounts the formulas in use allow for this request, and whether they are
        exact (every one reproduces every 402), or None if they cannot say."""
        max_tokens = self._clamped(state, features.max_tokens)
        if all(o.extra != features.extra for o in state.window):
            # Tools or a response format never seen with this key: if the gateway prices
            # them, no formula fitted without them knows how.
            return None
        if state.prior is not None:
            if state.prior.seen < PRIOR_MIN_OBSERVATIONS:
                return None
            quote = state.prior.quote(max_tokens, features.sizes, features.messages)
            return None if quote is None else (quote, True)
        needed = self.pinned_min_observations
        if features.min_observations is not None:
            needed = min(needed, features.min_observations)
        if len(state.window) < needed:
            return None
        self._ensure_fitted(features.key, state)
        if not state.fitted:
            return None  # the formulas are being refitted: nothing to sign from yet
        if len(state.window) < self.min_observations and not all(
            h.exact and h.occam_col is None for h in state.hypotheses
        ):
            # A slope chosen among round fractions (Occam) from a few 402s can fit them and
            # be wrong elsewhere; formulas with no such guess are pinned by the 402s alone.
            return None
        pinned = span(
            h.quote(max_tokens, features.sizes, features.messages) for h in state.hypotheses
        )
        if pinned is not None:
            return pinned, all(h.exact for h in state.hypotheses)
        if self.tolerance > 0 and state.approximate is not None:
            quote = state.approximate.quote(max_tokens, features.sizes, features.messages)
            if quote is not None:
                return quote, False
        return None

    def _decide(self, state: _State, features: Features) -> tuple[int, int, str] | None:
        """(amount to sign, the most it can over-pay, where it came from), or None.

        Whatever the mode, the amount is never more than ``tolerance`` above a lower bound
        of the price that holds for every price consistent with what is known:

        - exact formulas (every one reproduces every 402) that pin the amount: it is
          signed, over-paying nothing;
        - without tolerance, nothing else but the prefix bound (``_bound``), signed as it
          is once it has been the price on the last ``trust`` 402s;
        - with tolerance, the top of the exact formulas' joint range if it is within
          ``tolerance`` of their lowest amount (raised to the prefix bound); else, when a
          prefix bound exists, the least-squares estimate picks the amount in
          [bound, bound + tolerance], and only if that reaches the estimate's top (so it
          is likely to be accepted). An estimate is a sample of residuals, never a bound:
          it never lowers the floor, and without a floor nothing is signed from it.
        """
        found = self._range(state, features)
        source = "catalogue" if state.prior is not None else "learned"
        if found is not None:
            quote, exact = found
            if exact and quote.low == quote.high:
                return quote.low, 0, source  # the common case: no need for the bound
            if exact and state.prior is None and self._round_amount(state, features) == quote.low:
                # The formulas part ways, but at round prices they all say the lowest
                # amount: signed, it over-pays under none of them; the round prices only
                # make it likely to be the price (else refused as not used: no money).
                return quote.low, 0, source
        bound = self._bound(state, features)
        # The bound is a floor only while no 402 has contradicted the premise it rests on.
        floor = None if state.bound_broken else bound
        if found is not None:
            quote, exact = found
            if self.tolerance <= 0:
                pass
            elif exact:
                low = quote.low if floor is None else max(quote.low, floor)
                if quote.high - low <= self.tolerance:
                    return quote.high, quote.high - low, source
            elif floor is not None:
                # Allow for half the estimate's band more above its top; sign that much,
                # held inside [floor, floor + tolerance] where every amount is safe.
                margin = max(1, (quote.high - quote.low + 1) // 2)
                amount = min(max(quote.high + margin, floor), floor + self.tolerance)
                if amount >= quote.high:
                    return amount, amount - floor, "estimate"
            if exact and bound is not None and bound < quote.low:
                return None  # the bound is surely below the price: it would be refused
        if floor is not None and state.bound_streak >= self.trust:
            return floor, 0, "bound"
        return None

    def _round_amount(self, state: _State, features: Features) -> int | None:
        """The one amount every learned formula gives this request at round prices
        (fit.py's lattice), or None if they do not agree (or cannot say)."""
        max_tokens = self._clamped(state, features.max_tokens)
        agreed = span(
            h.round_quote(max_tokens, features.sizes, features.messages)
            for h in state.hypotheses
            if not h.unrounded  # no round price fits this one's 402s: it has no say
        )
        return agreed.low if agreed is not None and agreed.low == agreed.high else None

    def _bound(self, state: _State, features: Features) -> int | None:
        """The most a 402 asked, among those seen within the TTL, for a request that this
        one extends: the same body with the same fields (tools, system, ...), more messages
        appended after the same ones, and a ``max_tokens`` at least as large.

        A lower bound on this price under any gateway whose price does not fall when
        messages are appended or the reservation grows, however it measures a prompt
        (its own tokenizer, the JSON re-serialised, per-message overheads): PROTOCOL.md
        section 3's price x (input tokens + reservation) + fee. Sizes alone do not give
        that: a larger prompt in every measure of features.py can be smaller re-serialised
        (``"\\u4e2d"`` is 6 characters, a quote 2). 402s older than the TTL are left out:
        a price may have been cut since. None when no seen request is a prefix of this one.
        """
        max_tokens = self._clamped(state, features.max_tokens)
        now = self._clock()
        if features.sizes_exact:
            return self._dominance_bound(state, features, max_tokens, now)
        digests: tuple[bytes, ...] | None = None
        best: int | None = None
        for o in state.window:
            if (
                o.digest is None
                or o.seen_at is None
                or (best is not None and o.amount <= best)
                or o.messages > features.messages
                or o.max_tokens > max_tokens
                or o.extra != features.extra
                or now - o.seen_at > self.ttl
            ):
                continue
            if digests is None:
                digests = features.prefixes.digests()  # hashed only when a 402 may match
            if o.messages < len(digests) and digests[o.messages] == o.digest:
                best = o.amount
        return best

    def _dominance_bound(
        self, state: _State, features: Features, max_tokens: int, now: float
    ) -> int | None:
        """For keys whose price depends only on what the proxy measures exactly
        (``Features.sizes_exact``: a unit-priced route's count and text): the most a 402
        asked, within the TTL, for a request this one is at least as large as in every
        measure. A price that grows with its inputs, plus a minimum charge (speech's), never
        falls below it."""
        best: int | None = None
        for o in state.window:
            if (
                (best is None or o.amount > best)
                and o.seen_at is not None
                and now - o.seen_at <= self.ttl
                and o.extra == features.extra
                and o.max_tokens <= max_tokens
                and o.messages <= features.messages
                and all(seen <= size for seen, size in zip(o.sizes, features.sizes, strict=True))
            ):
                best = o.amount
        return best

    def _check(self, state: _State, features: Features, amount: int) -> None:
        """Shadow-check the current formulas against a 402 they have not seen yet."""
        decision = self._decide(state, features)
        bound = self._bound(state, features)
        if bound is not None:
            if bound == amount:
                state.bound_streak += 1
            elif bound < amount:
                state.bound_streak = 0
            else:  # cheaper than a request it extends: no floor for this key any more
                state.bound_broken = True
        if state.prior is None and state.hypotheses and state.fitted:
            max_tokens = self._clamped(state, features.max_tokens)
            quotes = [
                h.quote(max_tokens, features.sizes, features.messages) for h in state.hypotheses
            ]
            exact = all(h.exact for h in state.hypotheses)
            if exact and all(q is not None and not q.low <= amount <= q.high for q in quotes):
                # Outside everything the formulas thought possible: a miss even if they
                # would not have signed. Repeated, it means our features do not explain
                # prices.
                self.stats.shadow_checks += 1
                self._demote(state)
                return
        if decision is None:
            return  # too uncertain to sign: neither earns nor costs trust
        self.stats.shadow_checks += 1
        signed = decision[0]
        if signed == amount:
            self.stats.shadow_exact += 1
        # Would that presign have been accepted, without paying over the tolerance?
        if amount <= signed <= amount + self.tolerance:
            state.streak += 1
        elif signed < amount and decision[2] == "estimate":
            # An estimate that fell short: one round trip lost, no money. Expected now and
            # then; it resets the streak without raising the bar.
            state.streak = 0
            self._changed(state)
        else:
            self._demote(state)

    def _demote(self, state: _State) -> None:
        state.streak = 0
        state.clean = 0
        state.required = min(MAX_REQUIRED_STREAK, 2 * max(state.required, self.trust))
        self._changed(state)

    def _stamp(self) -> float:
        """Now, to the millisecond: what stores keep of a stamp (quote_store.py)."""
        return round(self._wall(), 3)

    def _changed(self, state: _State) -> None:
        state.changed = True
        self.dirty = True

    def _ensure_fitted(self, key: PriceKey, state: _State) -> None:
        if not state.fitted and not state.refitting:
            self._refit(key, state, force=True)

    def _refit(self, key: PriceKey, state: _State, *, force: bool = False) -> None:
        """Refit from the whole window. A 402 only arrives on the probe path, which already
        costs a round trip, and a fresh fit can bring in a formula the previous
        candidates missed; while nothing exact fits, refits back off.

        With ``on_refit`` set (the keeper), the fitting (milliseconds of CPU for a long
        window of conversations) runs in a worker thread, and nothing is signed from
        the learned formulas until it is back (``refit_done``)."""
        if state.skip > 0 and not force:
            state.skip -= 1
            state.fitted = True
            return
        if self.on_refit is None:
            self._apply_fit(
                state, compute_fit(list(state.window), self.min_observations, self.tolerance > 0)
            )
            return
        state.fitted, state.refitting = False, True
        state.version += 1
        self.on_refit(key, list(state.window), state.version)

    def refit_done(self, key: PriceKey, version: int, result: FitResult) -> None:
        """A background refit of ``key``'s window as of ``version`` is back."""
        state = self._models.get(key)
        if state is None or state.version != version:
            return  # the window has moved on since: a newer refit is on its way
        self._apply_fit(state, result)

    def _apply_fit(self, state: _State, result: FitResult) -> None:
        state.fitted, state.refitting = True, False
        state.hypotheses = result.hypotheses
        state.approximate = result.approximate
        self.stats.refits += 1
        if result.recent is not None:
            # Fine once for a price change; a key that keeps needing it is one whose
            # prices only look explained over short stretches.
            state.window = deque(list(state.window)[-result.recent :], maxlen=self._window)
            self._demote(state)
        if any(h.exact for h in state.hypotheses):
            state.backoff = 0
        elif len(state.window) >= self.min_observations:
            state.backoff = min(MAX_REFIT_BACKOFF, max(1, 2 * state.backoff))
            state.skip = state.backoff

    def _state(self, key: PriceKey) -> _State:
        state = self._models.get(key)
        if state is None:
            state = _State(deque(maxlen=self._window))
            self._adopt(key, state)
        else:
            self._models.move_to_end(key)
        return state

    def _adopt(self, key: PriceKey, state: _State) -> None:
        self._models[key] = state
        self._models.move_to_end(key)
        while len(self._models) > self._max_models:
            self._models.popitem(last=False)

    @staticmethod
    def _clamped(state: _State, max_tokens: int) -> int:
        return max_tokens if state.ceiling is None else min(max_tokens, state.ceiling)

    # --- keeping it across restarts and replicas ---------------------------------------------

    @property
    def catalogue_at(self) -> float:
        return self._catalogue_at

    def stamps(self) -> dict[PriceKey, float]:
        """Per price key, the unix time of the newest 402 its state learned from."""
        return {key: state.learned_at for key, state in self._models.items()}

    def take_changes(self, *, now: float | None = None) -> BookChanges:
        """What changed since the last call, as JSON-able documents (entries.py stores
        them); the book counts it as saved from here on (``unsaved`` undoes that)."""
        clock = self._clock() if now is None else now
        catalogue = None
        if self._catalogue_changed:
            catalogue = {m: p.to_json() for m, p in self._catalogue.items()}
        keys = [
            (key, state.learned_at, self._key_document(key, state, clock))
            for key, state in self._models.items()
            if state.changed
        ]
        for _, state in self._models.items():
            state.changed = False
        self._catalogue_changed = False
        self.dirty = False
        return BookChanges(catalogue, self._catalogue_at, keys)

    def unsaved(self, changes: BookChanges) -> None:
        """``changes`` could not be stored: offer them again with the next ones."""
        if changes.catalogue is not None:
            self._catalogue_changed = True
        for key, learned_at, _ in changes.keys:
            state = self._models.get(key)
            if state is not None and state.learned_at == learned_at:
                state.changed = True
        self.dirty = True

    @staticmethod
    def _key_document(key: PriceKey, state: _State, clock: float) -> dict[str, Any]:
        template = state.template
        return {
            "route": key[0],
            "model": key[1],
            "learned_at": state.learned_at,
            "ceiling": state.ceiling,
            "window": [
                [o.max_tokens, o.messages, list(o.sizes), o.amount, o.extra] for o in state.window
            ],
            "streak": state.streak,
            "required": state.required,
            "bound_streak": state.bound_streak,
            "bound_broken": state.bound_broken,
            "refuted": None if state.refuted is None else state.refuted.to_json(),
            "catalogue_id": state.catalogue_id,
            # The catalogue price the state's prior holds, for a replica that loads the key
            # before it has a catalogue of its own.
            "price": None if state.prior is None else state.prior.price.to_json(),
            "template": None
            if template is None
            else {
                "requirement": dict(template.requirement.raw),
                "resource": dict(template.resource),
                "extensions": None if template.extensions is None else dict(template.extensions),
                "age": max(0.0, clock - template.seen_at),
                "alternatives": [dict(r.raw) for r in template.alternatives],
            },
        }

    def restore(
        self, entry: Any, catalogue: Mapping[str, CataloguePrice], clock: float
    ) -> tuple[PriceKey, _State] | None:
        """A state from ``_key_document``'s shape, or None if it does not parse (pure:
        safe in a worker thread). ``clock`` is this book's clock at the time the
        document was written, so templates age by the time it spent in the store."""
        if not isinstance(entry, dict):
            return None
        route, model = entry.get("route"), entry.get("model")
        if not isinstance(route, str) or not isinstance(model, str):
            return None
        state = _State(deque(maxlen=self._window))
        window = entry.get("window")
        for row in window if isinstance(window, list) else []:
            observation = _observation(row)
            if observation is None:
                return None
            state.window.append(observation)
        learned_at = entry.get("learned_at")
        if not isinstance(learned_at, int | float) or isinstance(learned_at, bool):
            return None
        state.learned_at = float(learned_at)
        state.ceiling = _nonneg(entry.get("ceiling")) or None
        state.streak = _nonneg(entry.get("streak"))
        state.required = min(MAX_REQUIRED_STREAK, _nonneg(entry.get("required")))
        state.bound_streak = _nonneg(entry.get("bound_streak"))
        state.bound_broken = entry.get("bound_broken") is True
        state.refuted = CataloguePrice.from_json(entry.get("refuted"))
        state.template = _template(entry.get("template"), clock)
        # A document that does not name its catalogue id: chat's is its model.
        catalogue_id = entry.get("catalogue_id", model if route == CHAT_ROUTE else None)
        if catalogue_id is not None and not isinstance(catalogue_id, str):
            return None
        state.catalogue_id = catalogue_id
        if catalogue_id is not None:
            price = catalogue.get(catalogue_id) or CataloguePrice.from_json(entry.get("price"))
            self._adopt_price(state, price)
        if state.prior is None:
            # Not _refit: this runs in a worker thread, away from the stats.
            result = compute_fit(list(state.window), self.min_observations, self.tolerance > 0)
            state.hypotheses, state.approximate = result.hypotheses, result.approximate
            state.fitted = True
        return (route, model), state

    def merge(
        self,
        catalogue: Mapping[str, CataloguePrice],
        catalogue_at: float,
        states: Iterable[tuple[PriceKey, _State]],
    ) -> int:
        """Take restored states (another replica's, or this sidecar's before a restart):
        a key this book lacks is added (as its least recently used), one it holds is
        replaced when the restored state learned from a newer 402. A newer catalogue
        replaces this book's. Nothing taken counts as changed (it came from the store).
        Returns how many keys were taken."""
        if catalogue and catalogue_at > self._catalogue_at:
            self._catalogue = dict(catalogue)
            self._catalogue_at = catalogue_at
            self._catalogue_version += 1
        taken = 0
        for key, state in states:
            local = self._models.get(key)
            if local is None:
                self._adopt(key, state)
                self._models.move_to_end(key, last=False)  # older than anything live
            elif state.learned_at > local.learned_at:
                self._models[key] = state  # keeps its place in the LRU order
            else:
                continue
            taken += 1
        return taken


@dataclass(frozen=True, slots=True)
class BookChanges:
    """What ``QuoteBook.take_changes`` hands the keeper."""

    catalogue: dict[str, Any] | None  # the whole catalogue, when it changed
    catalogue_at: float
    keys: list[tuple[PriceKey, float, dict[str, Any]]]  # (key, learned_at, document)


@dataclass(frozen=True, slots=True)
class FitResult:
    hypotheses: list[Hypothesis]
    approximate: Hypothesis | None  # with a tolerance: the least-squares estimate
    recent: int | None  # only the newest this many 402s still fit: a price change


def compute_fit(window: list[Observation], min_observations: int, tolerance: bool) -> FitResult:
    """The learned formulas for a window of 402s (pure: runs in a worker thread)."""
    # Imported at the first fit (several 402s of one key in), not at startup.
    from blockrun_proxy.quotes.fit import fit, fit_approximate

    hypotheses = fit(window, len(MEASURES), _UNITS_PER_TOKEN)
    approximate = None
    if tolerance:
        inexact = [h for h in hypotheses if not h.exact]
        approximate = inexact[0] if inexact else fit_approximate(window, len(MEASURES))
    if not any(h.exact for h in hypotheses) and len(window) > min_observations:
        # The price may have changed inside the window: if the newest 402s alone fit a
        # formula, the older ones describe another price and are dropped.
        recent = fit(window[-min_observations:], len(MEASURES), _UNITS_PER_TOKEN)
        if any(h.exact for h in recent):
            return FitResult(recent, approximate, min_observations)
    return FitResult(hypotheses, approximate, None)


def _observation(row: Any) -> Observation | None:
    if not isinstance(row, list) or len(row) != 5:
        return None
    max_tokens, messages, sizes, amount, extra = row
    if not isinstance(sizes, list) or len(sizes) != len(MEASURES):
        return None
    values = [max_tokens, messages, amount, extra, *sizes]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        return None
    return Observation(max_tokens, messages, tuple(sizes), amount, extra)


def _template(doc: Any, clock: float) -> Template | None:
    if not isinstance(doc, dict):
        return None
    requirement = parse_requirement(doc.get("requirement"))
    resource, extensions, age = doc.get("resource"), doc.get("extensions"), doc.get("age")
    if requirement is None or "amount" not in requirement.raw or not isinstance(resource, dict):
        return None
    if extensions is not None and not isinstance(extensions, dict):
        return None
    if not isinstance(age, int | float) or isinstance(age, bool) or age < 0:
        return None
    alternatives = []
    raw_alternatives = doc.get("alternatives")
    for raw in raw_alternatives if isinstance(raw_alternatives, list) else []:
        alternative = parse_requirement(raw)
        if alternative is None or alternative.amount != requirement.amount:
            return None
        alternatives.append(alternative)
    return Template(requirement, resource, extensions, clock - float(age), tuple(alternatives))


def _priced(requirement: Requirement, amount: int) -> Requirement:
    """``requirement`` asking for ``amount`` instead (a template's, at the predicted price)."""
    return dataclasses.replace(
        requirement, amount=amount, raw={**requirement.raw, "amount": str(amount)}
    )


def _nonneg(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _ceiling(resource: Mapping[str, Any]) -> int | None:
    description = resource.get("description")
    if not isinstance(description, str):
        return None
    match = _CEILING_RE.search(description)
    if match is None:
        return None
    value = int(match.group(1).replace(",", "").replace("_", ""))
    return value if value > 0 else None
