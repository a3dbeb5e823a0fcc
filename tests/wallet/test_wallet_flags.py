"""--low-balance-usd and --rpc-url reach Settings; a bad value stops serve before it starts."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from blockrun_proxy import cli, server
from blockrun_proxy.config import Settings


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    seen: list[Settings] = []

    async def fake_serve(settings: Settings) -> None:
        seen.append(settings)

    monkeypatch.setattr(server, "serve", fake_serve)
    for name in ("LOW_BALANCE_USD", "RPC_URL"):
        monkeypatch.delenv("BLOCKRUN_PROXY_" + name, raising=False)
    monkeypatch.setenv("BLOCKRUN_WALLET_KEY", "")
    return seen


def test_low_balance_and_rpc_url(served: list[Settings]) -> None:
    args = ["serve", "--low-balance-usd", "2.5", "--rpc-url", "https://rpc.example/v2/KEY"]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    (settings,) = served
    assert settings.low_balance_atomic == 2_500_000
    assert settings.rpc_url == "https://rpc.example/v2/KEY"
    assert "KEY" not in repr(settings)  # hosted RPC URLs carry their API key


def test_from_the_environment(served: list[Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLOCKRUN_PROXY_LOW_BALANCE_USD", "1")
    assert CliRunner().invoke(cli.main, ["serve"]).exit_code == 0
    assert served[0].low_balance_atomic == 1_000_000


def test_default_is_no_threshold(served: list[Settings]) -> None:
    assert CliRunner().invoke(cli.main, ["serve"]).exit_code == 0
    assert served[0].low_balance_usd is None and served[0].low_balance_atomic is None


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (["--low-balance-usd", "-1"], "must not be negative"),
        (["--rpc-url", "ws://rpc.example/v2/KEY"], "http(s)"),
    ],
)
def test_bad_values_refuse_to_start(served: list[Settings], args: list[str], shown: str) -> None:
    result = CliRunner().invoke(cli.main, ["serve", *args])
    assert result.exit_code == 2 and shown in result.output
    assert "KEY" not in result.output
    assert served == []
