"""The budget and presign flags reach Settings from the command line and the environment."""

from __future__ import annotations

from decimal import Decimal

import pytest
from click.testing import CliRunner

from blockrun_proxy import cli, server
from blockrun_proxy.config import Settings


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """Run `serve` for real up to the point it would start the server."""
    seen: list[Settings] = []

    async def fake_serve(settings: Settings) -> None:
        seen.append(settings)

    monkeypatch.setattr(server, "serve", fake_serve)
    for name in ("BUDGET_USD", "BUDGET_WINDOW", "PRESIGN_TOLERANCE_USD"):
        monkeypatch.delenv("BLOCKRUN_PROXY_" + name, raising=False)
    monkeypatch.setenv("BLOCKRUN_WALLET_KEY", "")
    return seen


def test_flags(served: list[Settings]) -> None:
    args = ["serve", "--budget-usd", "5", "--budget-window", "30m"]
    result = CliRunner().invoke(cli.main, [*args, "--presign-tolerance-usd", "0.00001"])
    assert result.exit_code == 0, result.output
    (settings,) = served
    assert settings.budget_atomic == 5_000_000
    assert settings.budget_window_seconds == 1800.0
    assert settings.presign_tolerance_atomic == 10


def test_environment(served: list[Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLOCKRUN_PROXY_BUDGET_USD", "0.25")
    monkeypatch.setenv("BLOCKRUN_PROXY_BUDGET_WINDOW", "3600s")
    monkeypatch.setenv("BLOCKRUN_PROXY_PRESIGN_TOLERANCE_USD", "0.000002")
    assert CliRunner().invoke(cli.main, ["serve"]).exit_code == 0
    (settings,) = served
    assert settings.budget_usd == Decimal("0.25") and settings.budget_window_seconds == 3600.0
    assert settings.presign_tolerance_atomic == 2


def test_defaults_no_budget_exact_presign(served: list[Settings]) -> None:
    assert CliRunner().invoke(cli.main, ["serve"]).exit_code == 0
    (settings,) = served
    assert settings.budget_usd is None and settings.budget_window_seconds == 86400.0
    assert settings.presign and settings.presign_tolerance_atomic == 0


@pytest.mark.parametrize(
    "args",
    [
        ["--budget-window", "1w"],
        ["--budget-usd", "-1"],
        ["--presign-tolerance-usd", "5"],  # above --max-price-usd
    ],
)
def test_bad_values_are_usage_errors(served: list[Settings], args: list[str]) -> None:
    result = CliRunner().invoke(cli.main, ["serve", *args])
    assert result.exit_code == 2
    assert served == []
