"""Learn a model's price formula from the (features -> amount) pairs of its 402s.

The model class follows PROTOCOL.md section 3 (price x (input + output
reservation) + flat fee, charged in whole atomic units)::

    amount = ceil(a*M + b*S + c[N])

with M the max_tokens reservation (clamped at the model's output ceiling), S one
input-size measure (features.py), a and b non-negative rationals, and c[N] one
constant per message count N (any per-message cost and the flat fee). Nothing
here knows a gateway's numbers; everything is recovered from observations, and
every conclusion about amounts is exact (``Fraction``/int; floats only propose).

The *version space* is the set of all (a, b, c[.]) that reproduce every observed
amount through the ceil. The book signs up front only when every formula in it
gives the same amount for the request: then no formula of this shape that fits
the data can make that amount wrong, simpler or not. How it is represented:

- One of M, S (the "exact" column, the less certain one, usually S) is handled
  exactly: for each message count, the pairs (slope, c) consistent with the rows
  form a convex polygon, bounded by two envelopes of lines (convex-hull trick);
  the slope must fit every message count, so its range is the intersection.
- The other ("Occam") column's slope is usually pinned tightly by the data (max
  tokens vary over thousands). Least squares gives an error band; the candidates
  are *all* fractions up to MAX_DENOMINATOR in it (prices are round numbers). If
  there are more than MAX_CANDIDATES, the data is not yet precise enough and no
  exact hypothesis is formed. Each candidate that leaves a non-empty polygon is a
  hypothesis, and all of them must agree.
- A message count never seen gives no prediction (its c is unknown).
- Where the data leave the exact column's slope a range, its round prices (per-million
  dollar figures, ROUND_DENOMINATORS) inside that range are each a hypothesis of their own
  (``Hypothesis.lattice``), checked against every row. Extrapolated to a larger request
  the range parts ways by 1 unit now and then; the round prices usually do not. They only
  forecast: the book signs the lowest amount of the whole version space, and only when
  the round prices agree on it (QuoteBook._decide), so a price that is not round can be
  under-paid (refused, no money) but never over-paid.

When no exact hypothesis exists, a least-squares *approximate* one predicts the
residual range seen so far, which only a user who allowed a bounded
over-payment can sign from.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from blockrun_proxy.quotes.observation import Observation, Quote, span

ROUNDING_SD = 1 / math.sqrt(12)  # sd of ceil's rounding, uniform on [0, 1)
BAND_SDS = 6.0  # the Occam slope is looked for within this many standard errors
MAX_DENOMINATOR = 400  # "round" prices: e.g. $0.1575/M (0.15 + 5%) is 63/400
MAX_CANDIDATES = 8  # more fractions than this in the band: too uncertain to sign
# The round prices per token (the lattice, _on_lattice): per-million-token dollar prices
# with at most 4 decimals ($0.15, $2.50, $0.1575 = 0.15 + 5%) whose denominator is also at
# most MAX_DENOMINATOR: 600 per unit, so a slope range the 402s have narrowed holds few.
ROUND_DENOMINATORS = tuple(q for q in range(1, MAX_DENOMINATOR + 1) if 10_000 % q == 0)
# Observations needed beyond the number of unknowns before fitting at all.
SPARE_OBSERVATIONS = 2
APPROX_DENOMINATOR = 10_000

M_COL, S_COL = 0, 1
# Per-message overheads tried when the message count is a linear term, in tokens.
MAX_PER_MESSAGE = 8
# The one group of a hypothesis linear in the message count.
LINEAR_GROUP = 0


@dataclass(frozen=True, slots=True)
class Group:
    """One message count's slice of the version space: the pairs (e, c) of exact-column
    slope and constant that fit its rows, with e in the range shared by all counts.

    Vertices are kept as integer numerators over one denominator so a query is a
    few integer operations: ``upper`` bounds c from above, so a request's value
    e*E + c is largest at one of them; ``lower`` bounds it from below (strictly:
    every row's bound there is "amount - 1 <"), smallest at one of them. A count
    whose rows all had one E value, with no bound on e from elsewhere, is a strip
    (E0, k_lo, k_hi): e*E0 + c in (k_lo, k_hi], usable only for that same E.
    """

    denominator: int = 1
    upper: tuple[tuple[int, int], ...] = ()  # (e, c) numerators
    lower: tuple[tuple[int, int], ...] = ()
    strip: tuple[int, Fraction, Fraction] | None = None

    def value_range(self, e: int) -> tuple[Fraction, Fraction]:
        den = self.denominator
        hi = max(s * e + c for s, c in self.upper)
        lo = min(s * e + c for s, c in self.lower)
        return Fraction(lo, den), Fraction(hi, den)


@dataclass(frozen=True, slots=True)
class Hypothesis:
    measures: tuple[int, ...]  # the input measure used, and its twins on the fitted data
    exact: bool
    # Linear in the message count: the size column is S + per_message * N (one group);
    # otherwise each message count has a constant of its own (groups by count).
    linear: bool = False
    per_message: int = 0
    fixed: tuple[tuple[int, int], ...] = ()  # columns that never varied: must match
    occam_col: int | None = None
    occam_slope: Fraction = Fraction(0)
    exact_col: int | None = None
    # The exact column's slope, when the 402s leave few enough round prices (the lattice)
    # in its range that each is a hypothesis of its own: that column then adds
    # lattice_slope * x like the Occam one, and the groups hold the constant alone.
    lattice_slope: Fraction | None = None
    # The exact column's slope range shared by all message counts (for inspection).
    slope_range: tuple[Fraction, Fraction | None] = (Fraction(0), None)
    groups: Mapping[int, Group] | None = None
    # The same hypothesis with each round price (fit.py's lattice) its 402s allow on the
    # exact column: None when that column's range is unbounded or holds too many of them
    # to list (then it speaks as itself), () when it holds none.
    lattice: tuple[Hypothesis, ...] | None = None
    # approximate only: amount - (a*M + b*S + d*N) was within [r_min, r_max]
    slopes: tuple[Fraction, Fraction, Fraction] = (Fraction(0), Fraction(0), Fraction(0))
    r_min: Fraction = Fraction(0)
    r_max: Fraction = Fraction(0)

    def quote(self, max_tokens: int, sizes: tuple[int, ...], messages: int) -> Quote | None:
        raw = sizes[self.measures[0]]
        if any(sizes[m] != raw for m in self.measures[1:]):
            return None  # the twins part ways here: their fits might not agree
        size = raw + self.per_message * messages
        x = (max_tokens, size)
        if any(x[col] != value for col, value in self.fixed):
            return None
        if not self.exact:
            a, b, d = self.slopes
            value = a * max_tokens + b * size + d * messages
            return Quote(math.ceil(value + self.r_min), math.floor(value + self.r_max))
        group = (self.groups or {}).get(LINEAR_GROUP if self.linear else messages)
        if group is None:
            return None  # never saw this many messages: its constant is unknown
        base = self.occam_slope * x[self.occam_col] if self.occam_col is not None else 0
        e = x[self.exact_col] if self.exact_col is not None else 0
        if self.lattice_slope is not None:
            base += self.lattice_slope * e
            e = 0
        if group.strip is not None:
            e0, lo, hi = group.strip
            if e != e0:
                return None  # the slope range is unbounded: nothing pins e*(E - E0)
        else:
            lo, hi = group.value_range(e)
        # amount = ceil(base + v) with lo < v <= hi (the upper side taken as closed,
        # which can only widen the range).
        return Quote(math.floor(base + lo) + 1, math.ceil(base + hi))

    @property
    def unrounded(self) -> bool:
        """No round price of the exact column explains this hypothesis's 402s."""
        return self.lattice == ()

    def round_quote(self, max_tokens: int, sizes: tuple[int, ...], messages: int) -> Quote | None:
        """The amounts this hypothesis allows at round prices of its exact column, or
        None if they cannot say (all of its range when it has no lattice)."""
        if self.lattice is None:
            return self.quote(max_tokens, sizes, messages)
        return span(h.quote(max_tokens, sizes, messages) for h in self.lattice)


def fit(
    observations: Sequence[Observation],
    measures: int,
    units_per_token: Sequence[int] | None = None,
) -> list[Hypothesis]:
    """Every exact hypothesis (over all measures) that explains the observations;
    else the single best approximate one; else nothing.

    Measures that coincide on every observation (two token estimates agree on
    ASCII text) are fitted once; the hypothesis then speaks only for requests on
    which they still coincide.

    When the message count varies, the message count is first tried as a linear
    term: a per-message overhead of k tokens (k = 0..MAX_PER_MESSAGE, in the measure's
    units via ``units_per_token``) folded into the size column, which predicts counts
    never seen. Only when no such formula fits does each count get a constant of its
    own (which speaks only for counts already seen).
    """
    distinct: dict[tuple[int, ...], list[int]] = {}
    for m in range(measures):
        distinct.setdefault(tuple(o.sizes[m] for o in observations), []).append(m)
    twins = [tuple(ms) for ms in distinct.values()]
    if units_per_token is not None and len({o.messages for o in observations}) > 1:
        linear = [h for t in twins for h in fit_linear(observations, t, units_per_token[t[0]])]
        if linear:
            return linear
    units = units_per_token or [1] * measures
    exact = [h for t in twins for h in fit_measure(observations, t, unit=units[t[0]])]
    if exact:
        return exact
    best = fit_approximate(observations, measures)
    return [] if best is None else [best]


def fit_approximate(observations: Sequence[Observation], measures: int) -> Hypothesis | None:
    """The least-squares formula (over the measure that leaves the narrowest residual
    band), for a user who allowed a bounded over-payment; None if none can be fitted."""
    distinct: dict[tuple[int, ...], list[int]] = {}
    for m in range(measures):
        distinct.setdefault(tuple(o.sizes[m] for o in observations), []).append(m)
    found = [
        h
        for ms in distinct.values()
        for h in fit_measure(observations, tuple(ms), approximate=True)
    ]
    return min(found, key=lambda h: h.r_max - h.r_min, default=None)


Row = tuple[int, int, int, int]  # (M, S, N, amount)


def fit_measure(
    observations: Sequence[Observation],
    measures: tuple[int, ...],
    *,
    approximate: bool = False,
    unit: int = 1,
) -> list[Hypothesis]:
    """The exact hypotheses for one measure (``measures``: it and its twins on this data,
    ``unit`` of it per token); with ``approximate``, the least-squares one instead."""
    rows: list[Row] = [
        (o.max_tokens, o.sizes[measures[0]], o.messages, o.amount) for o in observations
    ]
    return _fit_rows(rows, measures, approximate=approximate, unit=unit)


def fit_linear(
    observations: Sequence[Observation], measures: tuple[int, ...], unit: int
) -> list[Hypothesis]:
    """The exact hypotheses in which each message adds k tokens (``unit`` measure units per
    token) to the size, for every k from 0 to MAX_PER_MESSAGE that fits."""
    found: list[Hypothesis] = []
    for k in range(MAX_PER_MESSAGE + 1):
        per_message = k * unit
        rows: list[Row] = [
            (o.max_tokens, o.sizes[measures[0]] + per_message * o.messages, LINEAR_GROUP, o.amount)
            for o in observations
        ]
        found += _fit_rows(rows, measures, per_message=per_message, linear=True, unit=unit)
    return found


def _fit_rows(
    rows: list[Row],
    measures: tuple[int, ...],
    *,
    approximate: bool = False,
    per_message: int = 0,
    linear: bool = False,
    unit: int = 1,
) -> list[Hypothesis]:
    """``unit``: measure units per token of the size column (for its lattice of prices)."""
    if not rows:
        return []
    varying = [j for j in (M_COL, S_COL) if any(r[j] != rows[0][j] for r in rows)]
    fixed = tuple((j, rows[0][j]) for j in (M_COL, S_COL) if j not in varying)
    n_varies = any(r[2] != rows[0][2] for r in rows)
    columns = varying + ([2] if n_varies else [])
    if len(rows) < len(columns) + 1 + SPARE_OBSERVATIONS:
        return []
    estimate = least_squares(rows, columns)
    if estimate is None:
        return []  # collinear features: nothing identifiable to learn
    beta, se = estimate
    if approximate:
        return [_approximate(measures, rows, beta, fixed)]

    def space(occam_col: int | None, slope: Fraction, exact_col: int | None) -> list[Hypothesis]:
        h = _exact(
            measures,
            rows,
            fixed,
            occam_col,
            slope,
            exact_col,
            per_message=per_message,
            linear=linear,
        )
        if h is None or exact_col is None:
            return [] if h is None else [h]
        lattice = _on_lattice(h, rows, unit if exact_col == S_COL else 1)
        return [h if lattice is None else dataclasses.replace(h, lattice=tuple(lattice))]

    if not varying:
        return space(None, Fraction(0), None)
    if len(varying) == 1:
        return space(None, Fraction(0), varying[0])
    # Both vary: the column with the narrower band (fewer candidates) is Occam's.
    bands = {
        j: fractions_in(beta[j] - BAND_SDS * se[j], beta[j] + BAND_SDS * se[j]) for j in varying
    }

    def ambiguity(j: int) -> float:
        band = bands[j]
        return math.inf if band is None else len(band)

    occam = min(varying, key=ambiguity)
    candidates = bands[occam]
    if candidates is None:
        return []  # too many fractions fit the error band: not yet precise enough
    exact_col = S_COL if occam == M_COL else M_COL
    return [h for slope in candidates for h in space(occam, slope, exact_col)]


def _on_lattice(h: Hypothesis, rows: list[Row], unit: int) -> list[Hypothesis] | None:
    """``h`` with each round price per token (ROUND_DENOMINATORS; ``unit`` measure units a
    token) inside its exact column's slope range that every row still allows, as a
    hypothesis of its own: empty when the range holds none (the price is not round),
    None when it is not bounded yet or holds too many to list.

    Every round price the 402s allow is listed (the range is exact, not an error band),
    each checked against every row as a catalogue price is. They are a forecast, not a
    licence to over-pay: the book signs from them only the lowest amount of the whole
    version space (QuoteBook._decide), so a price that is not round costs a refused
    presign, never money."""
    lo, hi = h.slope_range
    if hi is None:
        return None
    prices = fractions_in(lo * unit, hi * unit, ROUND_DENOMINATORS)
    if prices is None:
        return None
    found = []
    for price in prices:
        fixed_slope = _exact(
            h.measures,
            rows,
            h.fixed,
            h.occam_col,
            h.occam_slope,
            h.exact_col,
            per_message=h.per_message,
            linear=h.linear,
            lattice_slope=price / unit,
        )
        if fixed_slope is not None:
            found.append(fixed_slope)
    return found


def _exact(
    measures: tuple[int, ...],
    rows: list[Row],
    fixed: tuple[tuple[int, int], ...],
    occam_col: int | None,
    occam_slope: Fraction,
    exact_col: int | None,
    *,
    per_message: int = 0,
    linear: bool = False,
    lattice_slope: Fraction | None = None,
) -> Hypothesis | None:
    """The version space for one Occam slope (and with ``lattice_slope``, one slope of the
    exact column too: then only the constants are left to bound), or None if it is empty.

    Works in integers scaled by the fixed slopes' common denominator q: a row's
    K = q*(amount - slope*O) and the constraint K - q < e'*E + c' <= K, with
    e' = q*e and c' = q*c.
    """
    lattice = Fraction(0) if lattice_slope is None else lattice_slope
    q = math.lcm(occam_slope.denominator, lattice.denominator)
    p, r = int(occam_slope * q), int(lattice * q)
    by_count: dict[int, list[Line]] = {}
    for row in rows:
        k = q * row[3] - (p * row[occam_col] if occam_col is not None else 0)
        e = row[exact_col] if exact_col is not None else 0
        if lattice_slope is not None:
            k, e = k - r * e, 0
        by_count.setdefault(row[2], []).append((k, e))
    # The slope range shared by every message count whose rows pin one (two distinct
    # E values); prices are not negative, so it starts at 0.
    s_lo: Fraction = Fraction(0)
    s_hi: Fraction | None = None
    for lines in by_count.values():
        if len({e for _, e in lines}) < 2:
            continue
        feasible = _feasible_slopes(lines, q)
        if feasible is None:
            return None
        s_lo = max(s_lo, feasible[0])
        s_hi = feasible[1] if s_hi is None else min(s_hi, feasible[1])
    if s_hi is not None and s_lo > s_hi:
        return None
    groups: dict[int, Group] = {}
    for count, lines in by_count.items():
        group = _group(lines, q, s_lo, s_hi)
        if group is None:
            return None
        groups[count] = group
    return Hypothesis(
        measures,
        True,
        linear=linear,
        per_message=per_message,
        fixed=fixed,
        occam_col=occam_col,
        occam_slope=occam_slope,
        exact_col=exact_col,
        lattice_slope=lattice_slope,
        slope_range=(s_lo / q, None if s_hi is None else s_hi / q)
        if lattice_slope is None
        else (lattice, lattice),
        groups=groups,
    )


Line = tuple[int, int]  # c' = K - E*e', as (K, E)
Ratio = tuple[int, int]  # n/d with d > 0


def _hull(lines: list[Line], lowest: bool) -> list[Line]:
    """The lines of the lower (min) or upper (max) envelope of c' = K - E*e', left to right."""
    best: dict[int, int] = {}
    for k, e in lines:
        if e not in best or (k < best[e] if lowest else k > best[e]):
            best[e] = k
    # Left to right, the minimum is held by ascending E, the maximum by descending E.
    hull: list[Line] = []
    for e, k in sorted(best.items(), reverse=not lowest):
        line = (k, e)
        while len(hull) >= 2 and _le(_cross(hull[-2], line), _cross(hull[-2], hull[-1])):
            hull.pop()
        hull.append(line)
    return hull


def _cross(first: Line, second: Line) -> Ratio:
    """The e' where two lines with different E meet."""
    n, d = first[0] - second[0], first[1] - second[1]
    return (n, d) if d > 0 else (-n, -d)


def _le(x: Ratio, y: Ratio) -> bool:
    return x[0] * y[1] <= y[0] * x[1]


def _at(hull: list[Line], x: Ratio, lowest: bool) -> int:
    """The envelope at e' = n/d, as a numerator over d."""
    n, d = x
    values = [k * d - e * n for k, e in hull]
    return min(values) if lowest else max(values)


def _breaks(hull: list[Line]) -> list[Ratio]:
    return [_cross(hull[i], hull[i + 1]) for i in range(len(hull) - 1)]


def _envelopes(lines: list[Line], q: int) -> tuple[list[Line], list[Line]]:
    """Upper bounds c' <= K - E*e' (take the min) and lower bounds c' > K - q - E*e'."""
    return _hull(lines, lowest=True), _hull([(k - q, e) for k, e in lines], lowest=False)


def _feasible_slopes(lines: list[Line], q: int) -> tuple[Fraction, Fraction] | None:
    """The e' for which some c' satisfies every row (at least two distinct E): where the
    (concave) gap between the two envelopes is >= 0, or None if nowhere."""
    upper, lower = _envelopes(lines, q)
    # Two distinct E values give each envelope at least two lines, so breaks exist.
    points = sorted(set(_breaks(upper) + _breaks(lower)), key=lambda r: Fraction(*r))

    def gap(x: Ratio) -> Fraction:
        return Fraction(_at(upper, x, True) - _at(lower, x, False), x[1])

    gaps = [gap(x) for x in points]
    inside = [i for i, g in enumerate(gaps) if g >= 0]
    if not inside:
        return None
    return _root(points, gaps, inside[0], -1, gap), _root(points, gaps, inside[-1], 1, gap)


def _root(
    points: list[Ratio],
    gaps: list[Fraction],
    index: int,
    step: int,
    gap: Callable[[Ratio], Fraction],
) -> Fraction:
    """Where the gap crosses zero, walking from ``points[index]`` (gap >= 0) by ``step``.

    Between breaks the gap is linear; beyond the outermost break both envelopes
    are single lines, so it is linear there too, and falling: two distinct slopes
    send it to minus infinity on both sides."""
    e0, g0 = Fraction(*points[index]), gaps[index]
    nxt = index + step
    if 0 <= nxt < len(points):
        e1, g1 = Fraction(*points[nxt]), gaps[nxt]
    else:
        e1 = e0 + step
        g1 = gap((e1.numerator, e1.denominator))
    return e0 + (e1 - e0) * g0 / (g0 - g1)


def _group(lines: list[Line], q: int, s_lo: Fraction, s_hi: Fraction | None) -> Group | None:
    """This message count's polygon over e' in [s_lo, s_hi], or None if it is empty."""
    slopes = {e for _, e in lines}
    if len(slopes) == 1:
        (e0,) = slopes
        k_lo = max(k for k, _ in lines) - q
        k_hi = min(k for k, _ in lines)
        if k_lo >= k_hi:
            return None
        if s_hi is None:
            return Group(strip=(e0, Fraction(k_lo, q), Fraction(k_hi, q)))
        upper_v = [(s, k_hi - s * e0) for s in (s_lo, s_hi)]
        lower_v = [(s, k_lo - s * e0) for s in (s_lo, s_hi)]
    else:
        assert s_hi is not None  # two distinct E values bound the slope range
        upper, lower = _envelopes(lines, q)

        def vertices(hull: list[Line], lowest: bool) -> list[tuple[Fraction, Fraction]]:
            xs = [(r.numerator, r.denominator) for r in (s_lo, s_hi)]
            xs += [b for b in _breaks(hull) if s_lo < Fraction(*b) < s_hi]
            return [(Fraction(*x), Fraction(_at(hull, x, lowest), x[1])) for x in xs]

        upper_v, lower_v = vertices(upper, True), vertices(lower, False)
    # Back from (e', c') to (e, c) = (e'/q, c'/q), all over one integer denominator.
    den = q * math.lcm(*(v.denominator for pair in upper_v + lower_v for v in pair))

    def scaled(vs: list[tuple[Fraction, Fraction]]) -> tuple[tuple[int, int], ...]:
        return tuple((int(e * den / q), int(c * den / q)) for e, c in vs)

    return Group(den, scaled(upper_v), scaled(lower_v))


def _approximate(
    measures: tuple[int, ...],
    rows: list[Row],
    beta: dict[int, float],
    fixed: tuple[tuple[int, int], ...],
) -> Hypothesis:
    """Least-squares slopes and the residual band they leave; never exact."""
    a, b, d = (Fraction(beta.get(j, 0.0)).limit_denominator(APPROX_DENOMINATOR) for j in range(3))
    den = math.lcm(a.denominator, b.denominator, d.denominator)
    ka, kb, kd = int(a * den), int(b * den), int(d * den)
    scaled = [y * den - ka * m - kb * s - kd * n for m, s, n, y in rows]
    r_min, r_max = Fraction(min(scaled), den), Fraction(max(scaled), den)
    # Widen to at least one unit: these are rounded floats, not a formula.
    r_max = max(r_max, r_min + 1)
    return Hypothesis(measures, False, fixed=fixed, slopes=(a, b, d), r_min=r_min, r_max=r_max)


def least_squares(
    rows: Sequence[Row], columns: Sequence[int]
) -> tuple[dict[int, float], dict[int, float]] | None:
    """OLS slopes (with intercept) and their standard errors under rounding noise.

    Solved on centred data by Gauss-Jordan elimination; None when the columns are
    (numerically) collinear.
    """
    k = len(columns)
    if k == 0:
        return {}, {}
    count = len(rows)
    xs = [[float(r[j]) for j in columns] for r in rows]
    ys = [float(r[3]) for r in rows]
    mean_x = [sum(x[c] for x in xs) / count for c in range(k)]
    mean_y = sum(ys) / count
    cx = [[x[c] - mean_x[c] for c in range(k)] for x in xs]
    cy = [y - mean_y for y in ys]
    gram = [[sum(r[p] * r[q] for r in cx) for q in range(k)] for p in range(k)]
    rhs = [sum(r[p] * y for r, y in zip(cx, cy, strict=True)) for p in range(k)]
    inverse = _invert(gram)
    if inverse is None:
        return None
    beta = {columns[p]: sum(inverse[p][q] * rhs[q] for q in range(k)) for p in range(k)}
    se = {columns[p]: ROUNDING_SD * math.sqrt(max(inverse[p][p], 0.0)) for p in range(k)}
    return beta, se


def _invert(matrix: list[list[float]]) -> list[list[float]] | None:
    k = len(matrix)
    scale = max(abs(matrix[i][i]) for i in range(k)) or 1.0
    aug = [row[:] + [1.0 if i == j else 0.0 for j in range(k)] for i, row in enumerate(matrix)]
    for col in range(k):
        pivot = max(range(col, k), key=lambda r: abs(aug[r][col]))
        if abs(aug[pivot][col]) <= 1e-9 * scale:
            return None
        aug[col], aug[pivot] = aug[pivot], aug[col]
        p = aug[col][col]
        aug[col] = [x / p for x in aug[col]]
        for r in range(k):
            if r != col and aug[r][col] != 0.0:
                f = aug[r][col]
                aug[r] = [x - f * y for x, y in zip(aug[r], aug[col], strict=True)]
    return [row[k:] for row in aug]


def fractions_in(
    lo: float | Fraction, hi: float | Fraction, denominators: Sequence[int] | None = None
) -> list[Fraction] | None:
    """All non-negative fractions with denominator <= MAX_DENOMINATOR in [lo, hi], or
    None if there are more than MAX_CANDIDATES (the band is too wide to choose from).

    Complete by construction: if the true price is a round number inside the
    band, it is in the list, so requiring every listed candidate to agree can
    never leave the truth out.
    """
    flo, fhi = Fraction(max(lo, 0)), Fraction(hi)
    if fhi < flo:
        return []
    ln, ld, hn, hd = flo.numerator, flo.denominator, fhi.numerator, fhi.denominator
    found: set[Fraction] = set()
    for q in range(1, MAX_DENOMINATOR + 1) if denominators is None else denominators:
        first, last = -(-ln * q // ld), hn * q // hd
        if last - first + 1 > MAX_CANDIDATES:
            return None
        for p in range(first, last + 1):
            if math.gcd(p, q) == 1:
                found.add(Fraction(p, q))
                if len(found) > MAX_CANDIDATES:
                    return None
    return sorted(found, key=lambda f: (f.denominator, f))
