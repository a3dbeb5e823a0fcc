"""`python -m bench [--quick] [--only relay,paid,...] [--json out.json]`.

Installs what it needs (nginx and wrk from apt, the reference sidecar in
bench/.work/ref-venv), runs each scenario against fresh processes on loopback
ports, and prints one markdown table whose ratios all come from this run.
Exit status 1 when any check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.budget import FULL, QUICK, Budget
from bench.install import ensure_tools
from bench.machine import code_under_test, describe
from bench.procs import REPO_DIR, raise_nofile_limit
from bench.reference import ensure_reference_venv, reference_installed
from bench.report import Check, failed, markdown_table, to_json
from bench.scenarios import SCENARIOS, Scenario
from bench.stack import repo_env


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter runs, 1,000 slow streams")
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated scenarios out of: {', '.join(SCENARIOS)}",
    )
    parser.add_argument("--json", type=Path, help="also write the checks as JSON here")
    parser.add_argument("--no-install", action="store_true", help="fail instead of installing")
    return parser.parse_args(argv)


def _select(only: str) -> list[Scenario]:
    if not only:
        return list(SCENARIOS.values())
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(
            f"unknown scenario(s): {', '.join(unknown)}; known: {', '.join(SCENARIOS)}"
        )
    return [SCENARIOS[n] for n in names]


async def _run(scenario: Scenario, budget: Budget) -> list[Check]:
    # Other work on this 2-core machine skews every number: say how busy it was.
    load = os.getloadavg()[0]
    print(f"-- {scenario.name} (load average {load:.2f}) ...", file=sys.stderr, flush=True)
    try:
        return await asyncio.wait_for(scenario.run(budget), budget.scenario_timeout_s)
    except asyncio.TimeoutError:
        return [failed(scenario.name, f"timed out after {budget.scenario_timeout_s:.0f} s")]
    except Exception as exc:  # one broken scenario must not hide the others' numbers
        return [failed(scenario.name, f"{type(exc).__name__}: {exc}".splitlines()[0][:200])]


async def _main(scenarios: Sequence[Scenario], budget: Budget) -> list[Check]:
    checks: list[Check] = []
    for scenario in scenarios:
        checks += await _run(scenario, budget)
    return checks


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    scenarios = _select(args.only)
    budget = QUICK if args.quick else FULL
    ensure_tools(
        nginx=any(s.needs_nginx for s in scenarios),
        wrk=any(s.needs_wrk for s in scenarios),
        install=not args.no_install,
    )
    if any(s.needs_reference for s in scenarios):
        if not args.no_install:
            ensure_reference_venv()
        elif not reference_installed():
            raise SystemExit("reference venv missing (run without --no-install)")
    nofile = raise_nofile_limit()
    machine = describe()
    code = code_under_test(REPO_DIR, repo_env())
    print(f"-- {machine}\n-- proxy code: {code}\n-- RLIMIT_NOFILE {nofile}", file=sys.stderr)
    checks = asyncio.run(_main(scenarios, budget))
    print(markdown_table(checks))
    print(
        f"\n{'quick' if args.quick else 'full'} run on {machine}; "
        f"load average after: {os.getloadavg()[0]:.2f}"
    )
    if args.json:
        args.json.write_text(to_json(checks))
    return 1 if any(c.passed is False for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
