"""The front-side flags (issue 9) reach Settings from the command line and the environment."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from blockrun_proxy import cli, server
from blockrun_proxy.config import Settings

FLAGS = {
    "--allowed-hosts": ("ALLOWED_HOSTS", "a.internal, b.internal", "allowed_hosts",
                        ("a.internal", "b.internal")),
    "--cors-origins": ("CORS_ORIGINS", "http://localhost:3000", "cors_origins",
                       ("http://localhost:3000",)),
    "--headers-timeout": ("HEADERS_TIMEOUT", "3.5", "headers_timeout_seconds", 3.5),
    "--body-timeout": ("BODY_TIMEOUT", "12", "body_timeout_seconds", 12.0),
    "--keepalive-timeout": ("KEEPALIVE_TIMEOUT", "20", "keepalive_timeout_seconds", 20.0),
    "--max-connections": ("MAX_CONNECTIONS", "99", "max_connections", 99),
    "--upstream-idle-timeout": ("UPSTREAM_IDLE_TIMEOUT", "600", "idle_timeout_seconds", 600.0),
}  # fmt: skip


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """Run `serve` for real up to the point it would start the server."""
    seen: list[Settings] = []

    async def fake_serve(settings: Settings) -> None:
        seen.append(settings)

    monkeypatch.setattr(server, "serve", fake_serve)
    for env, *_ in FLAGS.values():
        monkeypatch.delenv("BLOCKRUN_PROXY_" + env, raising=False)
    monkeypatch.setenv("BLOCKRUN_WALLET_KEY", "")
    return seen


@pytest.mark.parametrize("flag", FLAGS)
def test_flag_and_environment(served: list[Settings], flag: str) -> None:
    env, text, field, value = FLAGS[flag]
    result = CliRunner().invoke(cli.main, ["serve", flag, text])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli.main, ["serve"], env={"BLOCKRUN_PROXY_" + env: text})
    assert result.exit_code == 0, result.output
    assert [getattr(s, field) for s in served] == [value, value]


def test_defaults(served: list[Settings]) -> None:
    result = CliRunner().invoke(cli.main, ["serve"])
    assert result.exit_code == 0, result.output
    (settings,) = served
    assert (settings.allowed_hosts, settings.cors_origins, settings.max_connections) == (
        (),
        (),
        None,
    )
    assert settings.headers_timeout_seconds == 10.0
    assert settings.body_timeout_seconds == 30.0
    assert settings.keepalive_timeout_seconds == 75.0
    assert settings.idle_timeout_seconds == 300.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cors-origins", "*"], "no wildcard"),
        (["--headers-timeout", "0"], "--headers-timeout"),
        (["--body-timeout", "-1"], "--body-timeout"),
        (["--upstream-idle-timeout", "0"], "--upstream-idle-timeout"),
    ],
)
def test_refused_at_start(served: list[Settings], args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli.main, ["serve", *args])
    assert result.exit_code == 2
    assert message in result.output
    assert served == []
