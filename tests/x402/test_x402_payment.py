"""sign_payment builds the PAYMENT-SIGNATURE header the gateway verifies."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from support.eip712 import typed_data

from blockrun_proxy.x402 import (
    NETWORKS,
    Authorization,
    PayerPolicy,
    Refusal,
    SignedPayment,
    Signer,
    encode_header,
    parse_payment_required,
    recover_transfer_signer,
    sign_payment,
)

BASE = NETWORKS["eip155:8453"]
SEPOLIA = NETWORKS["eip155:84532"]
PAY_TO = "0x1111111111111111111111111111111111111111"
NOW = 1_760_000_000
RESOURCE = {
    "url": "https://blockrun.ai/api/v1/chat/completions",
    "description": "openai/gpt-5 - 128000 max output tokens",
    "mimeType": "application/json",
}


def raw_requirement(**over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "scheme": "exact",
        "network": BASE.caip2,
        "amount": "2500",
        "asset": BASE.usdc,
        "payTo": PAY_TO,
        "maxTimeoutSeconds": 300,
        "extra": {"name": "USD Coin", "version": "2"},
    }
    raw.update(over)
    return raw


def parsed(extensions: dict[str, Any] | None = None, **over: Any) -> Any:
    doc: dict[str, Any] = {
        "x402Version": 2,
        "resource": RESOURCE,
        "accepts": [raw_requirement(**over)],
    }
    if extensions is not None:
        doc["extensions"] = extensions
    offer = parse_payment_required(encode_header(doc), None)
    assert offer is not None
    return offer


def decode(payment: SignedPayment) -> dict[str, Any]:
    # Decode with the standard library, as a server in another language would.
    doc = json.loads(base64.b64decode(payment.header, validate=True))
    assert isinstance(doc, dict)
    return doc


def eth_account_recover(network: Any, authorization: dict[str, str], signature: str) -> str:
    auth = Authorization(
        from_=authorization["from"],
        to=authorization["to"],
        value=int(authorization["value"]),
        valid_after=int(authorization["validAfter"]),
        valid_before=int(authorization["validBefore"]),
        nonce=bytes.fromhex(authorization["nonce"][2:]),
    )
    full = typed_data(network, auth)
    return str(Account.recover_message(encode_typed_data(full_message=full), signature=signature))


def test_header_fields() -> None:
    signer = Signer.generate()
    offer = parsed()
    req = offer.accepts[0]
    nonce = bytes(range(32))
    payment = sign_payment(signer, req, BASE, offer.resource, now=NOW, nonce=nonce)
    doc = decode(payment)

    assert set(doc) == {"x402Version", "resource", "accepted", "payload", "extensions"}
    assert doc["x402Version"] == 2
    assert doc["resource"] == RESOURCE
    assert doc["accepted"] == raw_requirement()  # echoed exactly as the gateway sent it
    assert set(doc["payload"]) == {"signature", "authorization"}
    auth = doc["payload"]["authorization"]
    assert auth == {
        "from": signer.address,
        "to": PAY_TO,
        "value": "2500",
        "validAfter": str(NOW - 600),
        "validBefore": str(NOW + 300),
        "nonce": "0x" + nonce.hex(),
    }
    assert all(isinstance(v, str) for v in auth.values())
    assert doc["extensions"] == {"builder-code": {"info": {"s": ["blockrun"]}}}

    sig = doc["payload"]["signature"]
    assert sig.startswith("0x") and len(sig) == 132
    assert eth_account_recover(BASE, auth, sig) == signer.address
    assert recover_transfer_signer(BASE, payment.authorization, sig) == signer.address

    assert payment.amount == 2500
    assert payment.requirement is req
    assert payment.authorization == Authorization(
        from_=signer.address,
        to=PAY_TO,
        value=2500,
        valid_after=NOW - 600,
        valid_before=NOW + 300,
        nonce=nonce,
    )


@pytest.mark.parametrize("timeout", [1, 60, 300, 600])
def test_validity_window(timeout: int) -> None:
    offer = parsed(maxTimeoutSeconds=timeout)
    payment = sign_payment(Signer.generate(), offer.accepts[0], BASE, offer.resource, now=NOW)
    assert payment.authorization.valid_after == NOW - 600
    assert payment.authorization.valid_before == NOW + timeout
    auth = decode(payment)["payload"]["authorization"]
    assert int(auth["validBefore"]) - int(auth["validAfter"]) == 600 + timeout


def test_domain_comes_from_our_network_not_extra() -> None:
    """A 402 whose extra names another domain still gets a Base-domain signature."""
    signer = Signer.generate()
    offer = parsed(extra={"name": "Evil Coin", "version": "666"})
    payment = sign_payment(signer, offer.accepts[0], BASE, offer.resource, now=NOW)
    doc = decode(payment)
    auth, sig = doc["payload"]["authorization"], doc["payload"]["signature"]
    assert eth_account_recover(BASE, auth, sig) == signer.address
    assert doc["accepted"]["extra"] == {"name": "Evil Coin", "version": "666"}  # echoed only


def test_sepolia_payment() -> None:
    signer = Signer.generate()
    offer = parsed(network=SEPOLIA.caip2, asset=SEPOLIA.usdc)
    payment = sign_payment(signer, offer.accepts[0], SEPOLIA, offer.resource, now=NOW)
    doc = decode(payment)
    auth, sig = doc["payload"]["authorization"], doc["payload"]["signature"]
    assert eth_account_recover(SEPOLIA, auth, sig) == signer.address
    assert eth_account_recover(BASE, auth, sig) != signer.address


def test_extensions_merge_keeps_server_entries_and_does_not_mutate() -> None:
    ext = {
        "builder-code": {"info": {"a": "app-code", "s": ["someone-else"]}, "schema": {"x": 1}},
        "bazaar": {"info": {"k": "v"}},
    }
    offer = parsed(extensions=ext)
    assert offer.extensions == ext
    payment = sign_payment(
        Signer.generate(),
        offer.accepts[0],
        BASE,
        offer.resource,
        now=NOW,
        extensions=offer.extensions,
    )
    assert decode(payment)["extensions"] == {
        "builder-code": {
            "info": {"a": "app-code", "s": ["someone-else", "blockrun"]},
            "schema": {"x": 1},
        },
        "bazaar": {"info": {"k": "v"}},
    }
    # The parsed offer is unchanged (it may be cached as a quote and reused).
    assert offer.extensions["builder-code"]["info"]["s"] == ["someone-else"]


def test_extensions_with_odd_builder_code_shape() -> None:
    offer = parsed()
    payment = sign_payment(
        Signer.generate(),
        offer.accepts[0],
        BASE,
        offer.resource,
        now=NOW,
        extensions={"builder-code": "junk"},
    )
    assert decode(payment)["extensions"] == {"builder-code": {"info": {"s": ["blockrun"]}}}


def test_nonces_are_random_and_unique() -> None:
    signer = Signer.generate()
    offer = parsed()
    payments = [
        sign_payment(signer, offer.accepts[0], BASE, offer.resource, now=NOW) for _ in range(200)
    ]
    nonces = {p.authorization.nonce for p in payments}
    assert len(nonces) == 200 and all(len(n) == 32 for n in nonces)
    assert len({p.header for p in payments}) == 200


def test_explicit_nonce_is_deterministic() -> None:
    signer = Signer.generate()
    offer = parsed()
    a, b = (
        sign_payment(signer, offer.accepts[0], BASE, offer.resource, now=NOW, nonce=b"\x07" * 32)
        for _ in range(2)
    )
    assert a.header == b.header
    with pytest.raises(ValueError):
        sign_payment(signer, offer.accepts[0], BASE, offer.resource, now=NOW, nonce=b"\x07")


def test_empty_resource_is_omitted() -> None:
    offer = parsed()
    payment = sign_payment(Signer.generate(), offer.accepts[0], BASE, {}, now=NOW)
    assert "resource" not in decode(payment)


def test_refuses_to_sign_upto_as_exact() -> None:
    offer = parsed(scheme="upto")
    with pytest.raises(Refusal) as exc:
        sign_payment(Signer.generate(), offer.accepts[0], BASE, offer.resource, now=NOW)
    assert exc.value.code == "scheme_not_supported"


def test_refuses_wrong_asset_or_mismatched_network() -> None:
    offer = parsed(asset=SEPOLIA.usdc)
    with pytest.raises(Refusal) as exc:
        sign_payment(Signer.generate(), offer.accepts[0], BASE, offer.resource, now=NOW)
    assert exc.value.code == "asset_mismatch"
    offer = parsed()
    with pytest.raises(ValueError):
        sign_payment(Signer.generate(), offer.accepts[0], SEPOLIA, offer.resource, now=NOW)


def test_v1_slug_network_signs_under_the_same_domain() -> None:
    signer = Signer.generate()
    offer = parsed(network="base")
    payment = sign_payment(signer, offer.accepts[0], BASE, offer.resource, now=NOW)
    doc = decode(payment)
    assert doc["accepted"]["network"] == "base"
    sig = doc["payload"]["signature"]
    assert eth_account_recover(BASE, doc["payload"]["authorization"], sig) == signer.address


def test_end_to_end_402_to_header() -> None:
    """The flow upstream.py runs: parse the 402, select under the policy, sign."""
    signer = Signer.generate()
    doc: dict[str, Any] = {
        "x402Version": 2,
        "resource": RESOURCE,
        "accepts": [
            raw_requirement(scheme="upto", amount="100000"),
            raw_requirement(amount="4321"),
        ],
        "extensions": {"builder-code": {"info": {"a": "x"}}},
    }
    offer = parse_payment_required(encode_header(doc), None)
    assert offer is not None
    policy = PayerPolicy(
        networks=frozenset({BASE.caip2}), max_amount=10_000, gateway_host="blockrun.ai"
    )
    req, network = policy.select(offer)
    payment = sign_payment(
        signer, req, network, offer.resource, now=NOW, extensions=offer.extensions
    )
    sent = decode(payment)
    assert sent["accepted"] == doc["accepts"][1]
    assert sent["payload"]["authorization"]["value"] == "4321"
    assert (
        eth_account_recover(BASE, sent["payload"]["authorization"], sent["payload"]["signature"])
        == signer.address
    )


@pytest.mark.parametrize(
    ("declared", "sent"),
    [
        ("svc_gw", ["svc_gw", "blockrun"]),  # a bare string is a one-entry list
        (["blockrun", "x"], ["blockrun", "x"]),  # already there: not added twice
        ([f"c{i}" for i in range(10)], [f"c{i}" for i in range(10)]),  # full: theirs stay
        (None, ["blockrun"]),
    ],
)
def test_builder_code_service_list_is_echoed_then_ours_appended(declared, sent) -> None:
    info: dict[str, Any] = {"a": "app"}
    if declared is not None:
        info["s"] = declared
    payment = sign_payment(
        Signer.generate(),
        parsed().accepts[0],
        BASE,
        RESOURCE,
        now=NOW,
        extensions={"builder-code": {"info": info}},
    )
    assert decode(payment)["extensions"]["builder-code"]["info"] == {"a": "app", "s": sent}


def test_official_server_accepts_our_builder_code_echo() -> None:
    """The official x402 server's own echo check (the one that answers
    ``extension_echo_mismatch``) passes what we send for a 402 that declared codes."""
    x402 = pytest.importorskip("x402")
    from x402.extensions.builder_code import declare_builder_code_extension
    from x402.schemas import PaymentPayload, PaymentRequired

    declared = {"builder-code": declare_builder_code_extension("bc_app", ["svc_one", "svc_two"])}
    doc = {"x402Version": 2, "resource": RESOURCE, "accepts": [raw_requirement()]}
    offer = parse_payment_required(encode_header({**doc, "extensions": declared}), None)
    assert offer is not None
    payment = sign_payment(
        Signer.generate(),
        offer.accepts[0],
        BASE,
        offer.resource,
        now=NOW,
        extensions=offer.extensions,
    )
    server = x402.x402ResourceServer()
    required = PaymentRequired.model_validate({**doc, "extensions": declared})
    ours = PaymentPayload.model_validate(decode(payment))
    assert server.validate_extensions(required, ours).valid
    assert ours.extensions["builder-code"]["info"]["s"] == ["svc_one", "svc_two", "blockrun"]
    # What the proxy used to send (our code instead of theirs) is what it rejects.
    replaced = ours.model_copy(
        update={"extensions": {"builder-code": {"info": {"a": "bc_app", "s": ["blockrun"]}}}}
    )
    result = server.validate_extensions(required, replaced)
    assert not result.valid and result.invalid_reason == "extension_echo_mismatch"
