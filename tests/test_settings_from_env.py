"""settings_from_env: the CLI's environment variables, for a process without a command line."""

from __future__ import annotations

from decimal import Decimal

import pytest

from blockrun_proxy.config import DEFAULT_API_URL, settings_from_env


def test_defaults_without_variables(tmp_path, monkeypatch):
    monkeypatch.setattr("blockrun_proxy.config.WALLET_FILE", tmp_path / "none")
    monkeypatch.setattr("blockrun_proxy.config.LEGACY_WALLET_FILE", tmp_path / "none2")
    settings = settings_from_env({})
    assert settings.api_url == DEFAULT_API_URL
    assert settings.wallet_key is None


def test_reads_the_same_variables_as_the_cli():
    key = "0x" + "11" * 32
    settings = settings_from_env(
        {
            "BLOCKRUN_API_URL": "http://127.0.0.1:9/api",
            "BLOCKRUN_PROXY_NETWORKS": "eip155:84532, eip155:8453",
            "BLOCKRUN_PROXY_MAX_PRICE_USD": "0.05",
            "BLOCKRUN_PROXY_DEFAULT_MAX_TOKENS": "256",
            "BLOCKRUN_PROXY_PAY_TO": "0x000000000000000000000000000000000000dEaD",
            "BLOCKRUN_WALLET_KEY": key,
        }
    )
    assert settings.api_url == "http://127.0.0.1:9/api"
    assert settings.networks == ("eip155:84532", "eip155:8453")
    assert settings.max_price_usd == Decimal("0.05")
    assert settings.default_max_tokens == 256
    assert settings.pay_to == ("0x000000000000000000000000000000000000dEaD",)
    assert settings.wallet_key == key
    assert key not in repr(settings)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BLOCKRUN_PROXY_MAX_PRICE_USD", "cheap"),
        ("BLOCKRUN_PROXY_DEFAULT_MAX_TOKENS", "many"),
        ("BLOCKRUN_API_URL", "ftp://example"),
    ],
)
def test_bad_values_are_refused(name, value):
    with pytest.raises(ValueError):
        settings_from_env({name: value})
