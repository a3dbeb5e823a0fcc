"""--chain, the Solana wallet and RPC, and the API key, from the command line and the
environment; and `blockrun-proxy address` showing both wallets, never a key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from solders.keypair import Keypair

from blockrun_proxy import cli, config, server
from blockrun_proxy.config import Settings, read_solana_key
from blockrun_proxy.x402 import Signer
from blockrun_proxy.x402.svm._base58 import b58encode

SOLANA_MAINNET = "solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp"
SOLANA_DEVNET = "solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1"
SECRET_ENV = (
    "BLOCKRUN_WALLET_KEY",
    "BASE_CHAIN_WALLET_KEY",
    "BLOCKRUN_SOLANA_KEY",
    "SOLANA_WALLET_KEY",
    "BLOCKRUN_API_KEY",
    "BLOCKRUN_API_KEY_URL",
    "BLOCKRUN_API_URL",
)


@pytest.fixture(autouse=True)
def no_wallets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No key from the developer's environment or home directory reaches these tests."""
    for name in SECRET_ENV:
        monkeypatch.delenv(name, raising=False)
    for name in ("CHAIN", "NETWORKS", "SOLANA_RPC_URL", "SOLANA_KEYPAIR"):
        monkeypatch.delenv("BLOCKRUN_PROXY_" + name, raising=False)
    monkeypatch.setattr(config, "WALLET_FILE", tmp_path / "no-session")
    monkeypatch.setattr(config, "LEGACY_WALLET_FILE", tmp_path / "no-wallet.key")
    monkeypatch.setattr(config, "SOLANA_WALLET_FILE", tmp_path / "no-solana-session")


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """Run `serve` for real up to the point it would start the server."""
    seen: list[Settings] = []

    async def fake_serve(settings: Settings) -> None:
        seen.append(settings)

    monkeypatch.setattr(server, "serve", fake_serve)
    return seen


def solana_key() -> tuple[str, str]:
    keypair = Keypair()
    return b58encode(bytes(keypair)), str(keypair.pubkey())


def serve(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli.main, ["serve", *args], env=env)
    return result.exit_code, result.output


def test_chain_solana_picks_the_solana_gateway_and_network(served: list[Settings]) -> None:
    assert serve("--chain", "solana")[0] == 0
    (settings,) = served
    assert settings.chain == "solana"
    assert settings.api_url == "https://sol.blockrun.ai/api"
    assert settings.networks == (SOLANA_MAINNET,)
    assert settings.solana_rpc == "https://api.mainnet-beta.solana.com"


def test_explicit_flags_win_over_the_chain(served: list[Settings]) -> None:
    code, output = serve(
        "--chain", "solana", "--api-url", "http://127.0.0.1:9/api", "--networks", SOLANA_DEVNET
    )
    assert code == 0, output
    (settings,) = served
    assert settings.api_url == "http://127.0.0.1:9/api"
    assert settings.networks == (SOLANA_DEVNET,)
    assert settings.solana_rpc == "https://api.devnet.solana.com"  # devnet's, by default


def test_the_chain_and_rpc_come_from_the_environment(served: list[Settings]) -> None:
    env = {
        "BLOCKRUN_PROXY_CHAIN": "solana",
        "BLOCKRUN_PROXY_SOLANA_RPC_URL": "https://rpc.example/?api-key=SECRET",
    }
    assert serve(env=env)[0] == 0
    (settings,) = served
    assert settings.networks == (SOLANA_MAINNET,)
    assert settings.solana_rpc == "https://rpc.example/?api-key=SECRET"
    assert "SECRET" not in repr(settings)


def test_base_stays_the_default(served: list[Settings]) -> None:
    assert serve()[0] == 0
    (settings,) = served
    assert (settings.chain, settings.api_url) == ("base", "https://blockrun.ai/api")
    assert settings.networks == ("eip155:8453",)
    assert settings.api_key is None and settings.solana_key is None


def test_an_unknown_chain_is_refused() -> None:
    code, output = serve("--chain", "ethereum")
    assert code == 2 and "ethereum" in output


def test_the_solana_key_is_read_from_the_environment(served: list[Settings]) -> None:
    key, _address = solana_key()
    assert serve(env={"BLOCKRUN_SOLANA_KEY": key})[0] == 0
    (settings,) = served
    assert settings.solana_key == key
    assert key not in repr(settings)


def test_solana_key_sources_in_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env_key, _ = solana_key()
    alias_key, _ = solana_key()
    file_key, _ = solana_key()
    keypair = Keypair()
    keypair_file = tmp_path / "id.json"
    keypair_file.write_text(json.dumps(list(bytes(keypair))))
    session = tmp_path / ".solana-session"
    session.write_text(file_key + "\n")
    monkeypatch.setattr(config, "SOLANA_WALLET_FILE", session)

    both = {"BLOCKRUN_SOLANA_KEY": env_key, "SOLANA_WALLET_KEY": alias_key}
    assert read_solana_key(both, keypair_file) == (env_key, "$BLOCKRUN_SOLANA_KEY")
    assert read_solana_key({"SOLANA_WALLET_KEY": alias_key}, None)[0] == alias_key
    key, source = read_solana_key({}, keypair_file)
    assert source == str(keypair_file) and json.loads(key) == list(bytes(keypair))
    assert read_solana_key({}, None) == (file_key, str(session))
    session.unlink()
    assert read_solana_key({}, None) == (None, "none")
    with pytest.raises(ValueError, match="cannot read --solana-keypair"):
        read_solana_key({}, tmp_path / "missing.json")


def test_a_bad_solana_key_is_refused_without_echoing_it() -> None:
    bad = "[" + ", ".join(["7"] * 64) + "]"  # 64 bytes whose public half is not its own
    code, output = serve(env={"BLOCKRUN_SOLANA_KEY": bad})
    assert code == 2 and "public half" in output
    assert bad not in output and "7, 7, 7" not in output
    code, output = serve(env={"BLOCKRUN_SOLANA_KEY": "0x" + "ab" * 32})
    assert code == 2 and "hex" in output and "abab" not in output


def test_an_unreadable_keypair_file_is_refused(tmp_path: Path) -> None:
    code, output = serve("--solana-keypair", str(tmp_path / "missing.json"))
    assert code == 2 and "cannot read --solana-keypair" in output


def test_the_api_key_is_a_secret(served: list[Settings]) -> None:
    key = "brk_live_" + "x" * 32
    env = {"BLOCKRUN_API_KEY": key, "BLOCKRUN_API_KEY_URL": "http://127.0.0.1:9/"}
    assert serve(env=env)[0] == 0
    (settings,) = served
    assert settings.api_key == key and settings.api_key_url == "http://127.0.0.1:9"
    assert key not in repr(settings)


def test_the_api_key_host_defaults_to_api_blockrun_ai(served: list[Settings]) -> None:
    assert serve(env={"BLOCKRUN_API_KEY": "brk_test_1"})[0] == 0
    assert served[0].api_key_url == "https://api.blockrun.ai"


def test_a_key_that_is_not_an_api_key_is_refused_without_echoing_it() -> None:
    not_a_key = "sk-" + "q" * 40
    code, output = serve(env={"BLOCKRUN_API_KEY": not_a_key})
    assert code == 2 and "brk_" in output and "qqqq" not in output


def test_a_bad_solana_rpc_url_is_refused_without_echoing_it() -> None:
    code, output = serve("--solana-rpc-url", "ftp://rpc.example/?api-key=SECRET")
    assert code == 2 and "--solana-rpc-url" in output and "SECRET" not in output


def test_address_prints_both_wallets_and_never_a_key(tmp_path: Path) -> None:
    base_key = "0x" + "5a" * 32
    sol_key, sol_address = solana_key()
    env = {"BLOCKRUN_WALLET_KEY": base_key, "BLOCKRUN_SOLANA_KEY": sol_key}
    result = CliRunner().invoke(cli.main, ["address"], env=env)
    assert result.exit_code == 0, result.output
    assert Signer(base_key).address in result.output
    assert sol_address in result.output
    assert base_key[2:] not in result.output and sol_key not in result.output


def test_address_with_a_keypair_file_and_an_api_key(tmp_path: Path) -> None:
    keypair = Keypair()
    path = tmp_path / "id.json"
    path.write_text(json.dumps(list(bytes(keypair))))
    api_key = "brk_live_" + "z" * 20
    result = CliRunner().invoke(
        cli.main, ["address", "--solana-keypair", str(path)], env={"BLOCKRUN_API_KEY": api_key}
    )
    assert result.exit_code == 0, result.output
    assert str(keypair.pubkey()) in result.output
    assert "api key set" in result.output and api_key not in result.output
    assert "base " not in result.output


def test_address_without_any_wallet_says_how_to_get_one() -> None:
    result = CliRunner().invoke(cli.main, ["address"], env={})
    assert result.exit_code != 0
    assert "BLOCKRUN_SOLANA_KEY" in result.output and "BLOCKRUN_WALLET_KEY" in result.output


def test_settings_from_env_reads_the_same_variables(tmp_path: Path) -> None:
    key, _ = solana_key()
    settings = Settings.from_env(
        {
            "BLOCKRUN_PROXY_CHAIN": "solana",
            "BLOCKRUN_SOLANA_KEY": key,
            "BLOCKRUN_PROXY_SOLANA_RPC_URL": "http://127.0.0.1:8899",
            "BLOCKRUN_API_KEY": "brk_test_abc",
            "BLOCKRUN_API_KEY_URL": "http://127.0.0.1:9",
        }
    )
    assert settings.chain == "solana" and settings.api_url == "https://sol.blockrun.ai/api"
    assert settings.networks == (SOLANA_MAINNET,)
    assert settings.solana_key == key and settings.solana_rpc == "http://127.0.0.1:8899"
    assert settings.api_key == "brk_test_abc" and settings.api_key_url == "http://127.0.0.1:9"
    assert settings.solana_networks == (SOLANA_MAINNET,)
    keypair_file = tmp_path / "id.json"
    keypair_file.write_text(json.dumps(list(bytes(Keypair()))))
    from_file = Settings.from_env({"BLOCKRUN_PROXY_SOLANA_KEYPAIR": str(keypair_file)})
    assert from_file.solana_keypair == keypair_file and from_file.solana_key
    assert from_file.chain == "base" and from_file.networks == ("eip155:8453",)


def test_the_rail_flag_picks_who_pays(served: list[Settings]) -> None:
    from blockrun_proxy.core import rail_of

    key = "brk_live_" + "r" * 20
    assert serve(env={"BLOCKRUN_API_KEY": key})[0] == 0
    assert rail_of(served.pop()) == "apikey"  # a key wins, as in blockrun-llm
    assert serve("--rail", "wallet", env={"BLOCKRUN_API_KEY": key})[0] == 0
    assert rail_of(served.pop()) == "base"  # the wallets pay; the key is not used
    assert serve("--chain", "solana", env={"BLOCKRUN_PROXY_RAIL": "wallet"})[0] == 0
    assert rail_of(served.pop()) == "solana"
    code, output = serve("--rail", "apikey")
    assert code == 2 and "--rail apikey needs a BlockRun API key" in output
    assert serve("--rail", "apikey", "--demo")[0] == 0  # the demo brings its own key
