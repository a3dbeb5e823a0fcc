"""An x402 client for testing the fake gateway directly: an eth_account payer, the routes'
bodies, small decoders.

The payer signs with eth_account's own EIP-712 path, not with anything in
blockrun_proxy, so these tests check the fake against the reference library.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount

from support.calls import FRACTIONAL_MODEL

CHAT = "/api/v1/chat/completions"
MODELS = "/api/v1/models"

_TRANSFER_TYPES = [
    {"name": "from", "type": "address"},
    {"name": "to", "type": "address"},
    {"name": "value", "type": "uint256"},
    {"name": "validAfter", "type": "uint256"},
    {"name": "validBefore", "type": "uint256"},
    {"name": "nonce", "type": "bytes32"},
]
_DOMAIN_TYPES = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]


def chat_body(text: str = "hello", model: str = FRACTIONAL_MODEL, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


ANTHROPIC_BODY = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "hi"}],
}
GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}

# Every paid route: (route name, path under the API prefix, a body it prices, the
# dialect its errors use). Shared by the tests that run something over every route,
# on every rail.
PAID_ROUTES = [
    ("chat", "/v1/chat/completions", chat_body(), "openai"),
    ("messages", "/v1/messages", ANTHROPIC_BODY, "anthropic"),
    ("gemini", "/v1beta/models/gemini-2.5-flash:generateContent", GEMINI_BODY, "google"),
    ("images", "/v1/images/generations", {"prompt": "a cat"}, "blockrun"),
    ("image2image", "/v1/images/image2image", {"prompt": "x", "image": "data:,"}, "blockrun"),
    ("speech", "/v1/audio/speech", {"input": "hello"}, "blockrun"),
    ("sound_effects", "/v1/audio/sound-effects", {"text": "rain"}, "blockrun"),
    ("music", "/v1/audio/generations", {"prompt": "synthwave"}, "blockrun"),
    ("videos", "/v1/videos/generations", {"prompt": "an apple"}, "blockrun"),
    ("search", "/v1/search", {"query": "x402"}, "blockrun"),
    ("exa", "/v1/exa/search", {"query": "x402"}, "blockrun"),
]
JOB_ROUTES = {"music", "videos"}  # those answer 202 and settle on a poll
ROUTE_IDS = [name for name, *_ in PAID_ROUTES]


def b64json(value: str) -> dict[str, Any]:
    decoded = json.loads(base64.b64decode(value, validate=True))
    assert isinstance(decoded, dict)
    return decoded


@dataclass
class Payer:
    """A throwaway wallet (fresh random key per test; no key is ever written down)."""

    account: LocalAccount = field(default_factory=Account.create)

    @property
    def address(self) -> str:
        return str(self.account.address)

    def pay(
        self,
        requirement: dict[str, Any],
        *,
        value: int | None = None,
        accepted_amount: int | None = None,
        to: str | None = None,
        valid_after: int | None = None,
        valid_before: int | None = None,
        nonce: str | None = None,
        signer: LocalAccount | None = None,
    ) -> str:
        """A PAYMENT-SIGNATURE value for ``requirement`` (an ``accepts`` entry).

        Keyword overrides build the wrong payments the gateway must refuse.
        """
        now = int(time.time())
        amount = int(requirement["amount"]) if value is None else value
        authorization = {
            "from": self.address,
            "to": to or requirement["payTo"],
            "value": str(amount),
            "validAfter": str(now - 600 if valid_after is None else valid_after),
            "validBefore": str(
                now + requirement["maxTimeoutSeconds"] if valid_before is None else valid_before
            ),
            "nonce": nonce or "0x" + secrets.token_hex(32),
        }
        signature = sign_authorization(signer or self.account, requirement, authorization)
        accepted = dict(requirement)
        accepted["amount"] = str(amount if accepted_amount is None else accepted_amount)
        payload = {
            "x402Version": 2,
            "resource": {"url": "http://x/api/v1/chat/completions"},
            "accepted": accepted,
            "payload": {"signature": signature, "authorization": authorization},
            "extensions": {"builder-code": {"info": {"s": ["blockrun"]}}},
        }
        return base64.b64encode(json.dumps(payload).encode()).decode()


def sign_authorization(
    account: LocalAccount, requirement: dict[str, Any], authorization: dict[str, str]
) -> str:
    full_message = {
        "types": {"EIP712Domain": _DOMAIN_TYPES, "TransferWithAuthorization": _TRANSFER_TYPES},
        "primaryType": "TransferWithAuthorization",
        "domain": {
            "name": requirement["extra"]["name"],
            "version": requirement["extra"]["version"],
            "chainId": int(requirement["network"].split(":")[1]),
            "verifyingContract": requirement["asset"],
        },
        "message": {
            "from": authorization["from"],
            "to": authorization["to"],
            "value": int(authorization["value"]),
            "validAfter": int(authorization["validAfter"]),
            "validBefore": int(authorization["validBefore"]),
            "nonce": bytes.fromhex(authorization["nonce"][2:]),
        },
    }
    signed = account.sign_message(encode_typed_data(full_message=full_message))
    raw = signed.signature.hex()
    return raw if raw.startswith("0x") else "0x" + raw


def requirement_of(response_header: str) -> dict[str, Any]:
    """The first ``accepts`` entry of a PAYMENT-REQUIRED header."""
    required = b64json(response_header)
    accepts = required["accepts"]
    assert isinstance(accepts, list)
    first = accepts[0]
    assert isinstance(first, dict)
    return first


async def pay(client: TestClient, path: str, body: dict[str, Any], payer: Payer) -> str:
    """Probe ``path`` unpaid, check it asks for payment, and sign what it asks for."""
    resp = await client.post(path, json=body)
    assert resp.status == 402, await resp.text()
    return payer.pay(requirement_of(resp.headers["PAYMENT-REQUIRED"]))


async def paid_post(
    client: TestClient, path: str, body: dict[str, Any], payer: Payer
) -> ClientResponse:
    """``path`` called the way an x402 client calls it: 402 first, then paid."""
    header = await pay(client, path, body, payer)
    return await client.post(path, json=body, headers={"PAYMENT-SIGNATURE": header})


def sse_events(raw: bytes) -> list[tuple[str | None, Any]]:
    """(event name, decoded data) per SSE frame; frames may end in LF LF or CRLF CRLF."""
    events: list[tuple[str | None, Any]] = []
    for frame in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        if not frame.strip():
            continue
        name = None
        data: list[bytes] = []
        for line in frame.split(b"\n"):
            if line.startswith(b"event: "):
                name = line[len(b"event: ") :].decode()
            elif line.startswith(b"data: "):
                data.append(line[len(b"data: ") :])
        events.append((name, json.loads(b"\n".join(data))))
    return events
