"""The fake gateway's Solana mode: SVM ``exact`` quotes, verified by the official verifier.

``SolanaFakeGateway`` quotes ``{scheme: exact, network: solana:..., asset: <USDC mint>,
payTo, extra: {feePayer}}`` and judges each payment with the official ``x402``
package's SVM facilitator (``ExactSvmScheme.verify``), given ``FakeFacilitator`` as its
signer: a fee-payer key of its own, and a "simulation" that checks every signature of
the transaction and that its blockhash came from this gateway's ``FakeSolanaRpc`` and
has not expired. A transaction whose message was already settled is a replay
(``PAYMENT_REPLAY``), whatever else is true of it now, as on EVM.

The mint table is the fake's own (not ``blockrun_proxy.x402.svm``'s), so a mistake in
one is not silently shared by the code it checks. x402 and solders load on first use.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from typing import Any, Literal

from blockrun_proxy.testing._calls import Settlement
from blockrun_proxy.testing._gateway import FakeGateway
from blockrun_proxy.testing._payments import Outcome, Quote, Verdict
from blockrun_proxy.testing._records import PaymentRecord, SettledPayment
from blockrun_proxy.testing._solana_rpc import FakeSolanaRpc
from blockrun_proxy.testing._svm_verify import TOKEN_PROGRAMS, builtin_verify

SOLANA_MAINNET = "solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp"
SOLANA_DEVNET = "solana:EtWTRABZaYq6iMfeYKouRu166VU2xqa1"
SOLANA_USDC = {
    SOLANA_MAINNET: "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v",
    SOLANA_DEVNET: "4zMMC9srt5Ri5X14GAgXhaHii3GnPAEERYPJgZJDncDU",
}
DEFAULT_SOLANA_NETWORK = SOLANA_DEVNET
# A program-derived (off-curve) address: no key exists for it, nothing is lost paying it.
DEFAULT_SOLANA_PAY_TO = "AaCqEH4TrZKLQV6s5t1ZmdUW8CWRC8CgRUnqSVJPsi9d"
RPC_PATH = "/v1/solana/rpc"  # where BlockRun serves its own Solana RPC, under the gateway


class FakeFacilitator:
    """x402's ``FacilitatorSvmSigner`` for the official verifier, without a cluster.

    ``simulate_transaction`` is where a real facilitator would run the transaction;
    here it checks what needs no ledger: every signature verifies against its key,
    and the blockhash is one ``rpc`` issued that has not expired.
    """

    def __init__(self, rpc: FakeSolanaRpc | None = None) -> None:
        from solders.keypair import Keypair

        self._fee_payer = Keypair()
        self._rpc = rpc
        self.sent: list[str] = []  # base58 transaction ids, in order

    @property
    def fee_payer(self) -> str:
        return str(self._fee_payer.pubkey())

    def get_addresses(self) -> list[str]:
        return [self.fee_payer]

    def sign_transaction(self, tx_base64: str, fee_payer: str, network: str) -> str:
        from solders.transaction import VersionedTransaction

        if fee_payer != self.fee_payer:
            raise ValueError(f"no signer for fee payer {fee_payer}")
        tx = _decode(tx_base64)
        signatures = list(tx.signatures)
        signatures[0] = self._fee_payer.sign_message(b"\x80" + bytes(tx.message))
        signed = VersionedTransaction.populate(tx.message, signatures)
        return base64.b64encode(bytes(signed)).decode("ascii")

    def simulate_transaction(self, tx_base64: str, network: str) -> None:
        tx = _decode(tx_base64)
        if not all(tx.verify_with_results()):
            raise RuntimeError("signature verification failed")
        blockhash = str(tx.message.recent_blockhash)
        if not self.blockhash_valid(blockhash):
            raise RuntimeError(f"Blockhash not found: {blockhash}")

    def blockhash_valid(self, blockhash: str) -> bool:
        return self._rpc is None or self._rpc.is_valid(blockhash)

    def send_transaction(self, tx_base64: str, network: str) -> str:
        txid = str(_decode(tx_base64).signatures[0])
        self.sent.append(txid)
        return txid

    def confirm_transaction(self, signature: str, network: str) -> None:
        return None


SvmVerifier = Literal["official", "builtin"]


def official_verifier_available() -> bool:
    """Whether x402's SVM code (the ``dev`` extra's ``x402[svm]``) can be imported."""
    try:
        import x402.mechanisms.svm.exact.facilitator  # noqa: F401
    except ImportError:
        return False
    return True


def verify_svm_payment(
    payment: Mapping[str, Any],
    requirement: Mapping[str, Any],
    facilitator: FakeFacilitator,
    verifier: SvmVerifier = "official",
) -> tuple[bool, str | None, str]:
    """The SVM verifier's judgement: (valid, invalid reason, payer).

    ``official`` is x402's own ``ExactSvmScheme.verify``; ``builtin`` the fake's
    independent rendering (_svm_verify.py), for installs without ``x402[svm]``.
    """
    if verifier == "builtin":
        return builtin_verify(
            payment, requirement, facilitator.get_addresses(), facilitator.blockhash_valid
        )
    from pydantic import ValidationError
    from x402.mechanisms.svm.exact.facilitator import ExactSvmScheme
    from x402.schemas import PaymentPayload, PaymentRequirements

    try:
        payload = PaymentPayload.model_validate(dict(payment))
        requirements = PaymentRequirements.model_validate(dict(requirement))
    except ValidationError as exc:
        return False, f"invalid_payload: {exc.error_count()} validation errors", ""
    try:
        result = ExactSvmScheme(facilitator).verify(payload, requirements)
    except (IndexError, ValueError) as exc:
        # The official verifier indexes accounts without bounds checks: a malformed
        # transaction is invalid, not a crash of the fake.
        return False, f"invalid_exact_svm_payload: {type(exc).__name__}", ""
    reason = result.invalid_reason
    if result.invalid_message:
        reason = f"{reason}: {result.invalid_message}"
    return result.is_valid, reason, result.payer or ""


class SolanaFakeGateway(FakeGateway):
    """The fake gateway quoting and verifying x402 ``exact`` payments on Solana.

    Same routes, knobs and records as ``FakeGateway``: it overrides only the payment
    hooks (``quote``, ``verify_payment``, ``settle``, ``describe_payment``), so every
    paid route, jobs included, is paid in SPL USDC. ``misbehave.extra`` is merged into
    the quote's ``extra`` (e.g. ``{"feePayer": <the payer's own key>}``). The
    gateway's own Solana RPC (``rpc``) is served at ``rpc_url``, as BlockRun serves
    one under ``/api/v1/solana/rpc``. ``svm_verifier`` defaults to the official
    verifier when x402[svm] is installed, else the built-in one.
    """

    def __init__(
        self,
        network: str = DEFAULT_SOLANA_NETWORK,
        pay_to: str = DEFAULT_SOLANA_PAY_TO,
        *,
        rpc: FakeSolanaRpc | None = None,
        svm_verifier: SvmVerifier | None = None,
        **options: Any,
    ) -> None:
        clock = options.get("clock")
        self.rpc = rpc or (FakeSolanaRpc(clock=clock) if clock else FakeSolanaRpc())
        self.facilitator = FakeFacilitator(self.rpc)
        if svm_verifier is None:
            svm_verifier = "official" if official_verifier_available() else "builtin"
        self.svm_verifier: SvmVerifier = svm_verifier
        super().__init__(network, pay_to, **options)
        self.rpc.mount(self.app, f"{self.prefix}{RPC_PATH}")

    @property
    def rpc_url(self) -> str | None:
        return None if self.base_url is None else self.base_url + RPC_PATH

    def _check_terms(self, network: str, pay_to: str) -> None:
        if network not in SOLANA_USDC:
            raise ValueError(f"unknown network {network!r}; known: {', '.join(SOLANA_USDC)}")
        if not _is_pubkey(pay_to):
            raise ValueError(f"pay_to {pay_to!r} is not a Solana address")

    def quote(self, price: int) -> Quote:
        network = self.misbehave.network or self.network
        return self._shape_quote(
            price,
            network,
            SOLANA_USDC.get(network, SOLANA_USDC[self.network]),
            extra={"feePayer": self.facilitator.fee_payer},
        )

    def verify_payment(self, payment: dict[str, Any], quote: Quote) -> Verdict:
        transaction = _transaction_of(payment)
        if transaction is None:
            return Verdict(Outcome.INVALID, "payload.transaction is missing")
        info = _transfer_info(transaction)
        if info is None:
            return Verdict(Outcome.INVALID, "transaction could not be decoded")
        message_hash, amount, payer = info
        # The settled-nonce ledger is shared with Base: (payer, message hash) here.
        if (payer, message_hash) in self._settled_nonces:
            return Verdict(Outcome.REPLAY, "transaction already settled", payer=payer)
        mismatch = _accepted_mismatch(payment.get("accepted"), quote, amount)
        if mismatch is not None:
            return Verdict(Outcome.INVALID, mismatch)
        valid, reason, payer = verify_svm_payment(
            payment, quote.to_json(), self.facilitator, self.svm_verifier
        )
        if not valid:
            return Verdict(Outcome.INVALID, reason)
        return Verdict(
            Outcome.ACCEPTED, None, None, payer, transaction=transaction, message_hash=message_hash
        )

    def settle(self, verdict: Verdict, quote: Quote) -> Settlement:
        """Co-sign as fee payer and "send": the facilitator's ``sent`` lists it."""
        assert verdict.transaction is not None
        signed = self.facilitator.sign_transaction(
            verdict.transaction, self.facilitator.fee_payer, quote.network
        )
        txid = self.facilitator.send_transaction(signed, quote.network)
        info = _transfer_info(verdict.transaction)
        assert info is not None
        message_hash, amount, payer = info
        self._settled_nonces.add((payer, message_hash))
        self.settled.append(SettledPayment(amount, message_hash, txid, payer, quote.network))
        return self._settlement(txid, quote.network, payer, amount)

    def describe_payment(
        self, payment: dict[str, Any] | None, *, accepted: bool, reason: str | None
    ) -> PaymentRecord:
        return svm_payment_record(payment, accepted=accepted, reason=reason)


def svm_payment_record(
    payment: Mapping[str, Any] | None, *, accepted: bool, reason: str | None
) -> PaymentRecord:
    """Best-effort summary of a Solana payment; ``nonce`` is the message hash."""
    accepted_req = (payment or {}).get("accepted")
    accepted_req = accepted_req if isinstance(accepted_req, dict) else {}
    transaction = _transaction_of(payment or {})
    info = _transfer_info(transaction) if transaction else None
    message_hash, amount, payer = info or ("", 0, "")
    signature = ""
    if transaction is not None and info is not None:
        signatures = _decode(transaction).signatures
        signature = str(signatures[1]) if len(signatures) > 1 else ""
    return PaymentRecord(
        nonce=message_hash,
        amount=amount,
        payer=payer,
        pay_to=str(accepted_req.get("payTo", "")),
        network=str(accepted_req.get("network", "")),
        signature=signature,
        accepted=accepted,
        reason=reason,
    )


def _accepted_mismatch(accepted: object, quote: Quote, amount: int) -> str | None:
    """Why the payment's ``accepted`` is not this request's quote, as a reference server
    matches them; None when it is."""
    if not isinstance(accepted, dict):
        return "payment lacks an accepted object"
    for key, want in (
        ("scheme", quote.scheme),
        ("network", quote.network),
        ("asset", quote.asset),
        ("payTo", quote.pay_to),
    ):
        if accepted.get(key) != want:
            return f"accepted.{key} {accepted.get(key)!r} does not match {want!r}"
    if str(accepted.get("amount")) != str(amount):
        return f"the transfer of {amount} does not equal accepted.amount {accepted.get('amount')!r}"
    return None


def _transaction_of(payment: Mapping[str, Any]) -> str | None:
    payload = payment.get("payload")
    tx = payload.get("transaction") if isinstance(payload, dict) else None
    return tx if isinstance(tx, str) and tx else None


def _transfer_info(transaction: str) -> tuple[str, int, str] | None:
    """(message hash hex, amount transferred, token authority) of a payment transaction:
    its first TransferChecked, read as the official ``extract_transaction_info`` does."""
    try:
        tx = _decode(transaction)
    except ValueError:
        return None
    message = tx.message
    keys = [str(k) for k in message.account_keys]
    for ix in message.instructions:
        data, accounts = bytes(ix.data), list(ix.accounts)
        program = keys[ix.program_id_index] if ix.program_id_index < len(keys) else ""
        if program in TOKEN_PROGRAMS and len(accounts) >= 4 and len(data) >= 10 and data[0] == 12:
            if accounts[3] >= len(keys):
                return None
            digest = hashlib.sha256(bytes(message)).hexdigest()
            return digest, int.from_bytes(data[1:9], "little"), keys[accounts[3]]
    return None


def _decode(tx_base64: str) -> Any:
    from solders.transaction import VersionedTransaction

    return VersionedTransaction.from_bytes(base64.b64decode(tx_base64, validate=True))


def _is_pubkey(value: str) -> bool:
    from solders.pubkey import Pubkey

    try:
        return str(Pubkey.from_string(value)) == value
    except ValueError:
        return False
