"""How long and how hard each scenario runs: a full run and a --quick one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    wrk_seconds: float
    wrk_rounds: int
    slow_streams: int
    ttfb_samples: int
    slow_reader_seconds: float
    startup_runs: int
    reference_startup: bool
    wrk_connections: int = 32
    relay_events: int = 100
    slow_stream_events: int = 20
    slow_stream_interval_s: float = 0.5
    slow_stream_ramp_s: float = 2.5
    slow_reader_body_mib: int = 50
    slow_reader_rate: int = 1024
    # relay runs two upstream shapes with six relays each: about 10 minutes in a full run.
    scenario_timeout_s: float = 900.0


FULL = Budget(
    wrk_seconds=15.0,
    wrk_rounds=2,
    slow_streams=5000,
    ttfb_samples=1000,
    slow_reader_seconds=20.0,
    startup_runs=5,
    reference_startup=True,
)

QUICK = Budget(
    wrk_seconds=4.0,
    wrk_rounds=1,
    slow_streams=1000,
    ttfb_samples=200,
    slow_reader_seconds=6.0,
    startup_runs=2,
    reference_startup=False,
    slow_stream_ramp_s=1.0,
    scenario_timeout_s=360.0,
)
