"""Results: one `Check` per measured target, rendered as a markdown table."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Check:
    """One number from a scenario, with what it is compared against and the target.

    `ours` and `baseline` were measured in the same run; `value` is what the
    target applies to (a ratio, a difference or a raw number) and `passed`
    is None for a number that is reported but not judged.
    """

    scenario: str
    metric: str
    ours: float
    unit: str
    target: str = ""
    value: float | None = None
    passed: bool | None = None
    baseline_label: str = ""
    baseline: float | None = None
    note: str = ""


def at_least(
    scenario: str,
    metric: str,
    ours: float,
    unit: str,
    *,
    baseline_label: str,
    baseline: float,
    min_ratio: float,
    note: str = "",
) -> Check:
    """ours / baseline >= min_ratio (a throughput ratio)."""
    ratio = ours / baseline if baseline else math.inf
    return Check(
        scenario,
        metric,
        ours,
        unit,
        target=f"ratio >= {min_ratio:g}",
        value=ratio,
        passed=ratio >= min_ratio,
        baseline_label=baseline_label,
        baseline=baseline,
        note=note,
    )


def ratio_at_most(
    scenario: str,
    metric: str,
    ours: float,
    unit: str,
    *,
    baseline_label: str,
    baseline: float,
    max_ratio: float,
    note: str = "",
) -> Check:
    """ours / baseline <= max_ratio (a latency ratio)."""
    ratio = ours / baseline if baseline else math.inf
    return Check(
        scenario,
        metric,
        ours,
        unit,
        target=f"ratio <= {max_ratio:g}",
        value=ratio,
        passed=ratio <= max_ratio,
        baseline_label=baseline_label,
        baseline=baseline,
        note=note,
    )


def added_at_most(
    scenario: str,
    metric: str,
    ours: float,
    unit: str,
    *,
    baseline_label: str,
    baseline: float,
    max_added: float,
    note: str = "",
) -> Check:
    """ours - baseline <= max_added (an added latency or a memory growth)."""
    added = ours - baseline
    return Check(
        scenario,
        metric,
        ours,
        unit,
        target=f"+ <= {max_added:g} {unit}",
        value=added,
        passed=added <= max_added,
        baseline_label=baseline_label,
        baseline=baseline,
        note=note,
    )


def at_most(
    scenario: str, metric: str, ours: float, unit: str, *, limit: float, note: str = ""
) -> Check:
    """An absolute ceiling (startup seconds, RSS, KiB per stream, errors)."""
    return Check(
        scenario,
        metric,
        ours,
        unit,
        target=f"<= {limit:g} {unit}",
        value=ours,
        passed=ours <= limit,
        note=note,
    )


def info(scenario: str, metric: str, ours: float, unit: str, *, note: str = "") -> Check:
    return Check(scenario, metric, ours, unit, note=note)


def failed(scenario: str, reason: str) -> Check:
    """A scenario that could not produce its numbers (error, time-out)."""
    return Check(scenario, "(scenario)", math.nan, "", target="runs", passed=False, note=reason)


def _num(value: float | None) -> str:
    if value is None:
        return ""
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "inf"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _verdict(check: Check) -> str:
    if check.passed is None:
        return ""
    return "PASS" if check.passed else "FAIL"


def markdown_table(checks: Sequence[Check]) -> str:
    header = (
        "| scenario | metric | ours | baseline | value | target | result | note |\n"
        "|---|---|---:|---:|---:|---|---|---|"
    )
    rows = []
    for c in checks:
        ours = f"{_num(c.ours)} {c.unit}".strip()
        base = f"{c.baseline_label} {_num(c.baseline)}".strip() if c.baseline_label else ""
        rows.append(
            f"| {c.scenario} | {c.metric} | {ours} | {base} | {_num(c.value)} | {c.target} "
            f"| {_verdict(c)} | {c.note.replace('|', '/')} |"
        )
    return "\n".join([header, *rows])


def to_json(checks: Iterable[Check]) -> str:
    def clean(value: object) -> object:
        return None if isinstance(value, float) and not math.isfinite(value) else value

    return json.dumps([{k: clean(v) for k, v in asdict(c).items()} for c in checks], indent=2)
