"""The transaction the proxy signs says exactly the transfer, and the audit refuses
anything else before the key is used."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
from solders.instruction import AccountMeta, Instruction
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.system_program import TransferParams, transfer
from solders.transaction import VersionedTransaction
from support.svm import (
    MAINNET,
    RESOURCE,
    CountingSigner,
    new_address,
    new_blockhash,
    offer,
    raw_requirement,
)

from blockrun_proxy.x402 import Refusal
from blockrun_proxy.x402.svm import TransferPlan, audit_message, build_message, sign_svm_payment
from blockrun_proxy.x402.svm import transaction as svm_tx
from blockrun_proxy.x402.svm.networks import COMPUTE_BUDGET_PROGRAM, MEMO_PROGRAM, TOKEN_PROGRAM


def plan_for(signer: CountingSigner, **over: Any) -> TransferPlan:
    fields: dict[str, Any] = {
        "network": MAINNET,
        "payer": signer.address,
        "fee_payer": new_address(),
        "pay_to": new_address(),
        "amount": 2500,
        "memo": b"0123456789abcdef0123456789abcdef",
        "blockhash": new_blockhash(),
    }
    fields.update(over)
    return TransferPlan(**fields)


def test_the_signed_transaction_has_the_prescribed_shape() -> None:
    signer = CountingSigner()
    plan = plan_for(signer)
    tx = svm_tx.sign_transfer(signer, plan)
    message = tx.message
    keys = [str(k) for k in message.account_keys]
    source = svm_tx.associated_token_account(signer.address, MAINNET.usdc_mint, TOKEN_PROGRAM)
    destination = svm_tx.associated_token_account(plan.pay_to, MAINNET.usdc_mint, TOKEN_PROGRAM)
    assert keys[:2] == [plan.fee_payer, signer.address]
    writable = {k for i, k in enumerate(keys) if message.is_maybe_writable(i)}
    assert writable == {plan.fee_payer, source, destination}  # never our own key
    assert [message.is_signer(i) for i in range(len(keys))] == [True, True] + [False] * 6
    programs = [keys[ix.program_id_index] for ix in message.instructions]
    assert programs == [COMPUTE_BUDGET_PROGRAM, COMPUTE_BUDGET_PROGRAM, TOKEN_PROGRAM, MEMO_PROGRAM]
    assert tx.signatures[0] == Signature.default()  # the fee payer's slot, left empty
    assert tx.verify_with_results()[1] is True
    assert str(message.recent_blockhash) == plan.blockhash
    assert not tx.uses_durable_nonce()  # valid only until its blockhash expires
    assert signer.signatures == 1


def test_the_402s_blockhash_is_never_used() -> None:
    """extra.recentBlockhash is the gateway's word; the blockhash is ours."""
    signer = CountingSigner()
    theirs, ours = new_blockhash(), new_blockhash()
    raw = raw_requirement(extra={"feePayer": new_address(), "recentBlockhash": theirs})
    payment = sign_svm_payment(signer, offer(raw).accepts[0], MAINNET, RESOURCE, blockhash=ours)
    tx = VersionedTransaction.from_bytes(base64.b64decode(payment.transaction))
    assert str(tx.message.recent_blockhash) == ours == payment.blockhash


def _extra_instruction(plan: TransferPlan) -> list[Instruction]:
    """A second transfer out of our lamports, slipped in after the memo."""
    hostile = transfer(
        TransferParams(
            from_pubkey=Pubkey.from_string(plan.payer),
            to_pubkey=Pubkey.from_string(plan.fee_payer),
            lamports=1,
        )
    )
    return [*ORIGINAL(plan), hostile]


def _second_memo(plan: TransferPlan) -> list[Instruction]:
    return [*ORIGINAL(plan), Instruction(Pubkey.from_string(MEMO_PROGRAM), b"again", [])]


def _writable_mint(plan: TransferPlan) -> list[Instruction]:
    instructions = ORIGINAL(plan)
    transfer_ix = instructions[2]
    accounts = list(transfer_ix.accounts)
    accounts[1] = AccountMeta(accounts[1].pubkey, is_signer=False, is_writable=True)
    instructions[2] = Instruction(transfer_ix.program_id, transfer_ix.data, accounts)
    return instructions


def _more_than_planned(plan: TransferPlan) -> list[Instruction]:
    instructions = ORIGINAL(plan)
    transfer_ix = instructions[2]
    data = bytes((12,)) + (plan.amount + 1).to_bytes(8, "little") + bytes((6,))
    instructions[2] = Instruction(transfer_ix.program_id, data, list(transfer_ix.accounts))
    return instructions


def _no_compute_budget(plan: TransferPlan) -> list[Instruction]:
    return ORIGINAL(plan)[2:]


def _our_key_writable(plan: TransferPlan) -> list[Instruction]:
    instructions = ORIGINAL(plan)
    transfer_ix = instructions[2]
    accounts = list(transfer_ix.accounts)
    accounts[3] = AccountMeta(accounts[3].pubkey, is_signer=True, is_writable=True)
    instructions[2] = Instruction(transfer_ix.program_id, transfer_ix.data, accounts)
    return instructions


ORIGINAL: Callable[[TransferPlan], list[Instruction]] = svm_tx._instructions


@pytest.mark.parametrize(
    "builder",
    [
        _extra_instruction,
        _second_memo,
        _writable_mint,
        _more_than_planned,
        _no_compute_budget,
        _our_key_writable,
    ],
)
def test_the_audit_refuses_a_transaction_beyond_the_plan(
    monkeypatch: pytest.MonkeyPatch, builder: Callable[[TransferPlan], list[Instruction]]
) -> None:
    """Whatever makes the builder go wrong, nothing beyond the plan is ever signed."""
    signer = CountingSigner()
    monkeypatch.setattr(svm_tx, "_instructions", builder)
    with pytest.raises(Refusal) as exc:
        svm_tx.sign_transfer(signer, plan_for(signer))
    assert exc.value.code == "transaction_mismatch"
    assert signer.signatures == 0


@pytest.mark.parametrize(
    "over",
    [
        {"compute_unit_price": 5_000_001},
        {"compute_unit_limit": 0},
        {"compute_unit_limit": 1_400_000},
        {"amount": 0},
        {"amount": 1 << 64},
        {"memo": b"m" * 257},
        {"fee_payer": "0x" + "11" * 20},
        {"blockhash": "not a blockhash"},
        {"payer": new_address()},  # not this signer's account
    ],
)
def test_plans_out_of_bounds_are_refused_before_building(over: dict[str, Any]) -> None:
    signer = CountingSigner()
    with pytest.raises(Refusal) as exc:
        svm_tx.sign_transfer(signer, plan_for(signer, **over))
    assert exc.value.code == "transaction_mismatch"
    assert signer.signatures == 0


def test_the_audit_accepts_the_official_layout_and_refuses_another_plan() -> None:
    signer = CountingSigner()
    plan = plan_for(signer)
    message = build_message(plan)
    audit_message(message, plan)
    for other in (
        TransferPlan(**{**_fields(plan), "memo": b"another memo"}),
        TransferPlan(**{**_fields(plan), "fee_payer": new_address()}),
        TransferPlan(**{**_fields(plan), "blockhash": new_blockhash()}),
        TransferPlan(**{**_fields(plan), "amount": plan.amount - 1}),
        TransferPlan(**{**_fields(plan), "pay_to": new_address()}),
    ):
        with pytest.raises(Refusal):
            audit_message(message, other)


def _fields(plan: TransferPlan) -> dict[str, Any]:
    return {name: getattr(plan, name) for name in TransferPlan.__dataclass_fields__}


def test_a_fee_payer_that_is_one_of_our_accounts_is_caught_by_the_audit() -> None:
    """The policy knows no token account addresses (they need solders); the audit does."""
    signer = CountingSigner()
    source = svm_tx.associated_token_account(signer.address, MAINNET.usdc_mint, TOKEN_PROGRAM)
    pay_to = new_address()
    destination = svm_tx.associated_token_account(pay_to, MAINNET.usdc_mint, TOKEN_PROGRAM)
    for fee_payer in (source, destination, signer.address):
        with pytest.raises(Refusal) as exc:
            svm_tx.sign_transfer(signer, plan_for(signer, fee_payer=fee_payer, pay_to=pay_to))
        assert exc.value.code == "transaction_mismatch"
    assert signer.signatures == 0
