"""``wallet create``: blockrun-llm's file and format, mode 0600, never an overwrite."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
from blockrun_llm import wallet as llm_wallet
from click.testing import CliRunner

from blockrun_proxy import config
from blockrun_proxy.cli import main
from blockrun_proxy.wallet.keyfile import WalletExists, create_wallet_file
from blockrun_proxy.x402 import Signer


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """blockrun-llm's wallet paths, moved under a temporary home."""
    session, legacy = tmp_path / ".blockrun" / ".session", tmp_path / ".blockrun" / "wallet.key"
    monkeypatch.setattr(config, "WALLET_FILE", session)
    monkeypatch.setattr(config, "LEGACY_WALLET_FILE", legacy)
    monkeypatch.setattr(llm_wallet, "WALLET_FILE", session)
    monkeypatch.setattr(llm_wallet, "WALLET_DIR", session.parent)
    for name in (config.WALLET_ENV, "BASE_CHAIN_WALLET_KEY"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_creates_a_private_key_file_blockrun_llm_reads(home: Path) -> None:
    path = home / ".blockrun" / ".session"
    address = create_wallet_file(path)
    key = path.read_text()
    assert re.fullmatch(r"0x[0-9a-f]{64}", key)
    assert Signer(key).address == address
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert llm_wallet.load_wallet() == key  # the SDK's own loader reads it
    assert config.read_wallet_key() == (key, str(path))


def test_refuses_to_overwrite(home: Path) -> None:
    path = home / ".blockrun" / ".session"
    create_wallet_file(path)
    before = path.read_text()
    with pytest.raises(WalletExists):
        create_wallet_file(path)
    assert path.read_text() == before


def test_refuses_to_shadow_a_legacy_wallet(home: Path) -> None:
    legacy = home / ".blockrun" / "wallet.key"
    legacy.parent.mkdir()
    legacy.write_text("0x" + "11" * 32)
    with pytest.raises(WalletExists):
        create_wallet_file(home / ".blockrun" / ".session", guard=(legacy,))
    assert not (home / ".blockrun" / ".session").exists()


def test_keys_differ() -> None:
    from blockrun_proxy.wallet.keyfile import new_secret

    assert len({new_secret() for _ in range(32)}) == 32


def test_cli_prints_the_address_and_how_to_fund_it_never_the_key(home: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["wallet", "create"])
    assert result.exit_code == 0, result.output
    key = config.WALLET_FILE.read_text()
    assert Signer(key).address in result.output
    assert key not in result.output and key[2:] not in result.output
    assert "USDC" in result.output and "wallet balance" in result.output
    assert "approve-permit2" in result.output

    again = runner.invoke(main, ["wallet", "create"])
    assert again.exit_code != 0
    assert "refusing to overwrite" in again.output
    assert config.WALLET_FILE.read_text() == key


def test_cli_notes_that_the_environment_key_wins(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(config.WALLET_ENV, "0x" + "22" * 32)
    result = CliRunner().invoke(main, ["wallet", "create"])
    assert result.exit_code == 0
    assert "takes precedence" in result.output
