"""The option table: one reader of the environment, the CLI's flags over it, and the two agree
on every setting (issue 10: ``BLOCKRUN_PROXY_PAY_TO="0xa,0xb"`` was one address for the CLI
and two in-process)."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner
from solders.keypair import Keypair

from blockrun_proxy import cli, config, options
from blockrun_proxy.config import DEFAULT_API_URL, Settings

README = Path(__file__).resolve().parents[1] / "README.md"
A, B = "0x000000000000000000000000000000000000dEaD", "0x000000000000000000000000000000000000bEEF"
# One value per row with a flag and a variable, as a user would write it: every new row
# needs one here, so the CLI and the environment are compared for it too.
SAMPLES = {
    "host": "127.0.0.2",
    "port": "4100",
    "chain": "solana",
    "api_url": "http://127.0.0.1:9/api/",
    "log_level": "WARNING",
    "log_format": "json",
    "networks": "eip155:84532, eip155:8453",
    "max_price_usd": "0.05",
    "default_max_tokens": "256",
    "pay_to": f"{A},{B}",
    "budget_usd": "5",
    "budget_window_seconds": "30m",
    "presign_tolerance_usd": "0.00001",
    "scheme": "auto",
    "routes": "table",
    "max_concurrent": "12",
    "max_queue": "7",
    "queue_timeout_seconds": "1.5",
    "max_connections": "2000",
    "headers_timeout_seconds": "3.5",
    "body_timeout_seconds": "12",
    "keepalive_timeout_seconds": "20",
    "idle_timeout_seconds": "600",
    "upstream_client": "AIOHTTP",
    "grace_seconds": "4",
    "workers": "3",
    "reuse_port": "1",
    "allow_public": "true",
    "allowed_hosts": "a.internal, b.internal",
    "cors_origins": "http://localhost:3000",
    "state_dir": "",
    "rpc_url": "http://127.0.0.1:8545",
    "low_balance_usd": "1.25",
    "solana_rpc_url": "http://127.0.0.1:8899",
    "solana_keypair": "/nonexistent/id.json",
    "api_key_url": "http://127.0.0.1:9/",
    "rail": "WALLET",
    "redis_url": "redis://127.0.0.1:6399/0",
    "redis_prefix": "fleet-a",
    "redis_timeout_seconds": "0.25",
    "budget_fail_open": "yes",
    "ledger_retention_seconds": "72h",
}
BOTH = [o for o in options.OPTIONS if o.flag and o.env and not o.secret]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No setting or key from the developer's environment or home reaches these tests."""
    for option in options.OPTIONS:
        for name in option.env:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(config, "WALLET_FILE", tmp_path / "no-session")
    monkeypatch.setattr(config, "LEGACY_WALLET_FILE", tmp_path / "no-wallet.key")
    monkeypatch.setattr(config, "SOLANA_WALLET_FILE", tmp_path / "no-solana-session")


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch, keypair_file: Path) -> list[Settings]:
    """Run `serve` for real up to the point it would start serving (or supervising)."""
    seen: list[Settings] = []

    def fake_run(settings: Settings, secrets: object) -> int:
        seen.append(settings)
        return 0

    monkeypatch.setattr(cli, "_run", fake_run)
    monkeypatch.setitem(SAMPLES, "solana_keypair", str(keypair_file))
    return seen


@pytest.fixture
def keypair_file(tmp_path: Path) -> Path:
    path = tmp_path / "id.json"
    path.write_text(json.dumps(list(bytes(Keypair()))))
    return path


def from_cli(served: list[Settings], *args: str) -> Settings:
    result = CliRunner().invoke(cli.main, ["serve", *args])
    assert result.exit_code == 0, result.output
    return served.pop()


def test_every_row_has_a_sample() -> None:
    assert {o.field for o in BOTH} == set(SAMPLES)


@pytest.mark.parametrize("option", BOTH, ids=lambda o: o.field)
def test_a_flag_and_its_variable_mean_the_same(served: list[Settings], option) -> None:
    text = SAMPLES[option.field]
    by_env = options.build(options.read_environ({option.env[0]: text}))
    args = (option.flag,) if option.kind == "flag" else (option.flag, text)
    by_flag = from_cli(served, *args)
    assert getattr(by_env, option.field) == getattr(by_flag, option.field)
    assert getattr(by_env, option.field) != getattr(Settings(), option.field)


def test_pay_to_is_two_addresses_everywhere(served: list[Settings]) -> None:
    environ = {"BLOCKRUN_PROXY_PAY_TO": f"{A},{B}"}
    assert Settings.from_env(environ).pay_to == (A, B)
    assert from_cli(served, "--pay-to", f"{A},{B}").pay_to == (A, B)
    assert from_cli(served, "--pay-to", A, "--pay-to", B).pay_to == (A, B)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BLOCKRUN_PROXY_PAY_TO", f"{A} {B}")
        assert from_cli(served).pay_to == (A, B)


def test_a_flag_wins_over_its_variable(served: list[Settings], monkeypatch) -> None:
    monkeypatch.setenv("BLOCKRUN_PROXY_MAX_QUEUE", "7")
    monkeypatch.setenv("BLOCKRUN_PROXY_PORT", "4100")
    settings = from_cli(served, "--max-queue", "3")
    assert (settings.max_queue, settings.port) == (3, 4100)


def test_workers_children_parse_back_the_same_settings(served: list[Settings], monkeypatch) -> None:
    args = [a for o in BOTH if o.field not in options.NOT_PASSED_TO_WORKERS
            for a in ((o.flag,) if o.kind == "flag" else (o.flag, SAMPLES[o.field]))]  # fmt: skip
    parent = from_cli(served, *args)
    rendered = options.to_args(parent)
    # A URL that may hold a password goes to children through their environment.
    assert "--redis-url" not in rendered
    for name, value in options.worker_environ(parent).items():
        monkeypatch.setenv(name, value)
    child = from_cli(served, *rendered)
    assert child == parent
    assert options.to_args(Settings()) == []  # defaults need no flags


def test_blank_variables_are_unset_except_where_blank_means_none() -> None:
    environ = {
        "BLOCKRUN_PROXY_MAX_QUEUE": " ",
        "BLOCKRUN_API_URL": "",
        "BLOCKRUN_PROXY_STATE_DIR": "",
    }
    settings = Settings.from_env(environ)
    assert settings.max_queue is None and settings.api_url == DEFAULT_API_URL
    assert settings.state_dir is None


def test_environment_only_rows() -> None:
    settings = Settings.from_env(
        {
            "SSL_CERT_FILE": "/etc/ca.pem",
            "SSL_CERT_DIR": "/etc/certs",
            "HTTPS_PROXY": "http://upper:3128",
            "https_proxy": "http://lower:3128",
            "NO_PROXY": "localhost,.internal",
        }
    )
    assert (settings.ssl_cert_file, settings.ssl_cert_dir) == ("/etc/ca.pem", "/etc/certs")
    assert settings.https_proxy == "http://lower:3128"  # as curl and urllib: lowercase first
    assert settings.no_proxy == "localhost,.internal"
    assert "lower" not in repr(settings)  # a proxy URL may carry a password


def test_defaults_without_variables() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.api_url == DEFAULT_API_URL and settings.wallet_key is None


def test_secrets_come_from_the_environment_and_never_become_flags() -> None:
    key = "0x" + "11" * 32
    settings = Settings.from_env({"BLOCKRUN_WALLET_KEY": key, "BLOCKRUN_PROXY_TOKEN": "t" * 20})
    assert settings.wallet_key == key and settings.token == "t" * 20
    assert key not in repr(settings)
    assert not any(key in a or "t" * 20 in a for a in options.to_args(settings))
    assert not any(o.flag for o in options.OPTIONS if o.secret)


def test_reads_the_same_variables_as_the_cli() -> None:
    settings = Settings.from_env(
        {
            "BLOCKRUN_API_URL": "http://127.0.0.1:9/api",
            "BLOCKRUN_PROXY_NETWORKS": "eip155:84532, eip155:8453",
            "BLOCKRUN_PROXY_MAX_PRICE_USD": "0.05",
            "BLOCKRUN_PROXY_DEFAULT_MAX_TOKENS": "256",
        }
    )
    assert settings.api_url == "http://127.0.0.1:9/api"
    assert settings.networks == ("eip155:84532", "eip155:8453")
    assert settings.max_price_usd == Decimal("0.05")
    assert settings.default_max_tokens == 256


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BLOCKRUN_PROXY_MAX_PRICE_USD", "cheap"),
        ("BLOCKRUN_PROXY_DEFAULT_MAX_TOKENS", "many"),
        ("BLOCKRUN_API_URL", "ftp://example"),
        ("BLOCKRUN_PROXY_ROUTES", "some"),
        ("BLOCKRUN_PROXY_REUSE_PORT", "maybe"),
    ],
)
def test_bad_values_are_refused_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=re.escape(name) + "|--api-url"):
        Settings.from_env({name: value})


def test_the_readme_configuration_table_is_the_option_table() -> None:
    text = README.read_text()
    found = re.search(r"<!-- options:start -->\n(.*?)<!-- options:end -->", text, re.DOTALL)
    assert found is not None, "README.md lacks the options markers"
    assert found.group(1) == options.markdown_table(), (
        "README.md's Configuration table differs from the option table; regenerate it with "
        'python -c "from blockrun_proxy.options import markdown_table; print(markdown_table())"'
    )
