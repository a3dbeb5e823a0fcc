"""The benchmark scenarios, by name. Each one starts its own processes and returns checks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bench.budget import Budget
from bench.report import Check
from bench.scenarios.latency import slow_streams, ttfb_added
from bench.scenarios.memory import slow_reader, startup
from bench.scenarios.throughput import paid_throughput, relay_throughput

ScenarioFn = Callable[[Budget], Awaitable[list[Check]]]


@dataclass(frozen=True)
class Scenario:
    name: str
    run: ScenarioFn
    needs_reference: bool = False
    needs_nginx: bool = False
    needs_wrk: bool = False


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("startup", startup, needs_reference=True),
        Scenario("ttfb", ttfb_added, needs_nginx=True),
        Scenario("relay", relay_throughput, needs_reference=True, needs_nginx=True, needs_wrk=True),
        Scenario("paid", paid_throughput, needs_reference=True, needs_wrk=True),
        Scenario("slow_reader", slow_reader),
        Scenario("slow_streams", slow_streams),
    )
}
