"""What the ledger says about a period: totals per model and per hour, the last calls.

One shape for ``GET /v1/spend``, the page that reads it and ``blockrun-proxy spend``:
``spend_json`` builds the JSON document, ``render_text`` prints it as the terminal table.
Every amount is an integer of USDC atomic units (micro-USDC); the readers format them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from blockrun_proxy.budget import BudgetUsage, format_duration
from blockrun_proxy.spend.records import FAILED_AFTER_PAYMENT, REFUSED, SpendRecord
from blockrun_proxy.x402 import usd

HOUR = 3600
DEFAULT_HOURS = 24
MAX_HOURS = 24 * 31
DEFAULT_LAST = 50
MAX_LAST = 500


@dataclass(slots=True)
class Totals:
    calls: int = 0
    signed: int = 0
    settled: int = 0
    failed_after_payment: int = 0
    refused: int = 0

    def add_record(self, record: SpendRecord) -> None:
        self.calls += 1
        self.signed += record.signed
        self.settled += record.settled or 0
        self.failed_after_payment += record.outcome == FAILED_AFTER_PAYMENT
        self.refused += record.outcome == REFUSED

    def add(self, other: Totals) -> None:
        self.calls += other.calls
        self.signed += other.signed
        self.settled += other.settled
        self.failed_after_payment += other.failed_after_payment
        self.refused += other.refused


# What a ledger aggregates: per (hour start, model), the totals of the calls in it.
HourRow = tuple[int, str, Totals]


@dataclass(slots=True)
class SpendSummary:
    since: int  # first hour shown (unix seconds, a multiple of 3600)
    until: float
    totals: Totals = field(default_factory=Totals)
    per_model: dict[str, Totals] = field(default_factory=dict)
    per_hour: dict[int, Totals] = field(default_factory=dict)
    last: list[SpendRecord] = field(default_factory=list)


def hour_of(ts: float) -> int:
    return int(ts // HOUR) * HOUR


def first_hour(now: float, hours: int) -> int:
    """The start of the oldest of the ``hours`` hours ending with the current one."""
    return hour_of(now) - (hours - 1) * HOUR


def summarize(
    rows: Iterable[HourRow], last: Sequence[SpendRecord], *, since: int, until: float
) -> SpendSummary:
    summary = SpendSummary(since=since, until=until, last=list(last))
    for hour in range(since, hour_of(until) + HOUR, HOUR):
        summary.per_hour[hour] = Totals()
    for hour, model, totals in rows:
        if hour not in summary.per_hour:
            continue
        summary.per_hour[hour].add(totals)
        summary.per_model.setdefault(model, Totals()).add(totals)
        summary.totals.add(totals)
    return summary


def budget_json(usage: BudgetUsage | None, *, shared: bool) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {
        "limit": usage.limit,
        "window_seconds": usage.window_seconds,
        "spent": usage.spent,
        "left": max(0, usage.limit - usage.spent),
        "shared": shared,
    }


def spend_json(
    summary: SpendSummary,
    *,
    hours: int,
    budget: dict[str, Any] | None,
    wallet: dict[str, Any],
    ledger: dict[str, Any],
) -> dict[str, Any]:
    per_model = sorted(summary.per_model.items(), key=lambda item: (-item[1].signed, item[0]))
    return {
        "unit": "micro-USDC",
        "generated_at": summary.until,
        "hours": hours,
        "since": summary.since,
        "totals": asdict(summary.totals),
        "per_model": [{"model": model, **asdict(totals)} for model, totals in per_model],
        "per_hour": [{"hour": hour, **asdict(t)} for hour, t in sorted(summary.per_hour.items())],
        "budget": budget,
        "wallet": wallet,
        "last_calls": [record.to_dict() for record in summary.last],
        "ledger": ledger,
    }


# --- the terminal table -----------------------------------------------------------------------


def render_text(doc: dict[str, Any]) -> str:
    """``blockrun-proxy spend``: the figures of ``spend_json`` as plain text tables."""
    lines: list[str] = []
    totals = doc["totals"]
    lines.append(
        f"Spend over the last {doc['hours']}h (USD): signed {usd(totals['signed'])}, "
        f"settled {usd(totals['settled'])}, {totals['calls']} paid calls, "
        f"{totals['failed_after_payment']} failed after payment, {totals['refused']} refused"
    )
    budget = doc.get("budget")
    if budget is not None and "limit" in budget:
        share = budget["spent"] / budget["limit"] if budget["limit"] else 1.0
        lines.append(
            f"Budget: {usd(budget['spent'])} of {usd(budget['limit'])} used "
            f"({math.floor(share * 100)}%), {usd(budget['left'])} left "
            f"per {format_duration(budget['window_seconds'])}"
            + (" (shared by the fleet)" if budget.get("shared") else "")
        )
    elif budget is not None:
        lines.append(f"Budget: {budget.get('error', 'unknown')}")
    wallet = doc.get("wallet") or {}
    balance = wallet.get("balance")
    low = " (below --low-balance-usd)" if wallet.get("low") else ""
    lines.append(f"Wallet balance: {'unknown' if balance is None else usd(balance) + ' USDC'}{low}")
    lines.append("")
    lines += _table(
        ("model", "calls", "signed", "settled", "failed", "refused"),
        [
            (
                row["model"] or "-",
                str(row["calls"]),
                usd(row["signed"]),
                usd(row["settled"]),
                str(row["failed_after_payment"]),
                str(row["refused"]),
            )
            for row in doc["per_model"]
        ],
    )
    lines.append("")
    lines += _table(
        ("hour (UTC)", "calls", "signed", "settled", "failed"),
        [
            (
                _time(row["hour"], "%Y-%m-%d %H:00"),
                str(row["calls"]),
                usd(row["signed"]),
                usd(row["settled"]),
                str(row["failed_after_payment"]),
            )
            for row in doc["per_hour"]
            if row["calls"]
        ],
    )
    lines.append("")
    lines += _table(
        ("time (UTC)", "model", "outcome", "signed", "settled", "status", "request id"),
        [
            (
                _time(call["ts"], "%m-%d %H:%M:%S"),
                call["model"] or "-",
                call["outcome"].upper()
                if call["outcome"] == FAILED_AFTER_PAYMENT
                else call["outcome"],
                usd(call["signed"]),
                "-" if call["settled"] is None else usd(call["settled"]),
                str(call["status"]),
                call["request_id"],
            )
            for call in doc["last_calls"]
        ],
    )
    return "\n".join(lines) + "\n"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    if not rows:
        return [f"{header[0]}: none"]
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        # Text left, figures right: the first column and the text-like ones.
        out = []
        for i, cell in enumerate(cells):
            numeric = i > 0 and cell.replace(".", "").replace("-", "").isdigit()
            out.append(cell.rjust(widths[i]) if numeric else cell.ljust(widths[i]))
        return "  ".join(out).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)]


def _time(ts: float, fmt: str) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime(fmt)
