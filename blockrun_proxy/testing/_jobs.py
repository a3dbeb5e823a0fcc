"""Slow media jobs: a paid POST answers ``202`` with a ``poll_url``; a poll settles it.

As BlockRun's video, slow-image and music routes do (docs/PROTOCOL.md section 9.6):
the POST verifies the payment and claims its nonce (one authorization, one job) but
charges nothing; each ``GET poll_url`` must carry a payment signed by the wallet
that submitted the job (the same signature, or a fresh one: the binding is the
wallet) and asks no new price; polls answer ``202`` while the job runs, and the
first poll that sees it completed settles the authorization it carries and answers
``200`` with the result. Polling an already settled job returns the result again,
charging nothing. A poll without a payment gets the job's 402 challenge back.

That is the x402 rails' way (Base and Solana alike, through the gateway's payment
hooks). A rail that admits polls or charges jobs otherwise subclasses ``Jobs`` and
overrides ``_admit``, ``_charge`` and ``_release`` (the API-key host: ``_apikey.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aiohttp import web

from blockrun_proxy.testing._calls import (
    BLOCKRUN,
    FAILED_AFTER_SETTLE,
    JOB_NOT_FOUND,
    REPLAY,
    Call,
    JobPlan,
    Refusal,
    Route,
    Settlement,
    invalid_payment,
    read_payment,
)
from blockrun_proxy.testing._models import usd_string
from blockrun_proxy.testing._payments import Outcome, Verdict

if TYPE_CHECKING:
    from blockrun_proxy.testing._gateway import FakeGateway

JOB_KINDS = ("videos", "images", "audio")
_OBJECT = {
    "videos": "video.generation.job",
    "images": "image.generation.job",
    "audio": "audio.generation.job",
}
_ID_PREFIX = {"videos": "vidjob_fake", "images": "img_fake", "audio": "music_fake"}
_NOT_OWNER = "this payment is not from the wallet that submitted the job"


@dataclass
class Job:
    id: str
    route: Route
    call: Call
    plan: JobPlan
    payer: str | None  # who submitted it (wallet or key); None: a free job, polled freely
    polls_left: int
    fails: bool = False  # ends "failed" (upstream failure, nothing charged)
    charged: bool = False  # the first completed poll charged it; later ones do not
    settlement: Settlement | None = None  # the x402 receipt, once charged by a payment


class Jobs:
    """The gateway's job table and its poll handler."""

    def __init__(self, gateway: FakeGateway, prefix: str) -> None:
        self._gw = gateway
        self._prefix = prefix  # the gateway's API prefix, which poll URLs carry
        self.by_id: dict[str, Job] = {}
        self._claimed: set[tuple[str, str]] = set()

    def __len__(self) -> int:
        return len(self.by_id)

    def claim(self, verdict: Verdict) -> Verdict:
        """``verdict``, or a replay when its authorization already submitted a job."""
        if verdict.nonce_key in self._claimed:
            return Verdict(Outcome.REPLAY, "authorization already submitted a job", verdict.auth)
        self._claimed.add(verdict.nonce_key)
        return verdict

    def submit(
        self, request: web.Request, route: Route, call: Call, *, payer: str | None
    ) -> web.Response:
        gw = self._gw
        plan = call.job
        assert plan is not None
        job_id = _job_id(plan, gw.next_id())
        fails = gw.misbehave.job_fails > 0
        if fails:
            gw.misbehave.job_fails -= 1
        self.by_id[job_id] = Job(job_id, route, call, plan, payer, plan.polls, fails)
        poll_url = f"{self._prefix}/v1/{plan.kind}/generations/{quote(job_id, safe='')}"
        body = plan.submitted(job_id, poll_url + plan.poll_query)
        if payer is not None:
            body["price"] = {"amount": usd_string(call.price), "currency": "USD"}
            body["payment_status"] = "verified"
        else:
            body["payment_status"] = "not_required"
        return gw.reply(202, body)

    async def poll(self, kind: str, request: web.Request) -> web.StreamResponse:
        gw = self._gw
        header, payment, decode_error = read_payment(request)
        if gw.record:
            gw.record_request(request, b"", payment)
        job = self.by_id.get(request.match_info["job_id"])
        if job is None or job.plan.kind != kind:
            return _refuse(job, JOB_NOT_FOUND)
        admitted = self._admit(job, request, header, payment, decode_error)
        if isinstance(admitted, web.StreamResponse):
            return admitted
        if job.polls_left > 0:
            job.polls_left -= 1
            if payment is not None:
                gw.note_payment(payment, accepted=False, reason="job still running: not charged")
            return gw.reply(202, self._head(job, "in_progress"))
        if job.fails:
            self._release(job)
            return gw.reply(200, self._failed(job))
        return self._completed(request, job, payment, admitted)

    # ------------------------------------------- how the x402 rails admit and charge

    def _admit(
        self,
        job: Job,
        request: web.Request,
        header: str | None,
        payment: dict[str, Any] | None,
        decode_error: str | None,
    ) -> Verdict | web.StreamResponse | None:
        """Whether this poll may see the job: the verdict on its payment (None for a free
        job), or the answer that refuses it."""
        if job.payer is None:
            return None
        if header is None:
            return self._gw.challenge(job.route.dialect, request, job.call)
        checked = self._check(job, payment, decode_error)
        return _refuse(job, checked) if isinstance(checked, Refusal) else checked

    def _charge(
        self, job: Job, payment: dict[str, Any] | None, verdict: Verdict | None
    ) -> Settlement | None:
        """Charge a completed job on its first completed poll: settle the poll's payment."""
        gw = self._gw
        if verdict is None or not verdict.settleable:
            return None  # a free job
        settlement = gw.settle(verdict, gw.quote(job.call.price))
        gw.note_payment(payment, accepted=True, reason=None)
        return settlement

    def _release(self, job: Job) -> None:
        """Give back what submitting a failed job held (called on each of its polls):
        nothing on x402, where only the completing poll charges (PROTOCOL.md 9.6)."""

    def _check(
        self, job: Job, payment: dict[str, Any] | None, decode_error: str | None
    ) -> Verdict | Refusal:
        """A running job's poll needs a valid payment from its wallet; a settled one, the wallet."""
        gw = self._gw
        if payment is None:
            gw.note_payment(None, accepted=False, reason=decode_error)
            return invalid_payment(decode_error)
        if job.charged:
            payer = gw.describe_payment(payment, accepted=False, reason=None).payer
            if not _same_wallet(payer, job.payer):
                gw.note_payment(payment, accepted=False, reason=_NOT_OWNER)
                return invalid_payment(_NOT_OWNER)
            return Verdict(Outcome.ACCEPTED, "job already settled: not charged again")
        verdict = gw.verify_payment(payment, gw.quote(job.call.price))
        if verdict.outcome is Outcome.ACCEPTED and not _same_wallet(verdict.payer, job.payer):
            verdict = Verdict(Outcome.INVALID, _NOT_OWNER)
        if verdict.outcome is not Outcome.ACCEPTED:
            gw.note_payment(payment, accepted=False, reason=verdict.reason)
            return REPLAY if verdict.outcome is Outcome.REPLAY else invalid_payment(verdict.reason)
        return verdict

    def _completed(
        self,
        request: web.Request,
        job: Job,
        payment: dict[str, Any] | None,
        verdict: Verdict | None,
    ) -> web.Response:
        gw = self._gw
        settlement: Settlement | None = None
        origin = f"{request.scheme}://{request.host}"
        body = {**job.plan.result(job.id, origin), **self._head(job, "completed")}
        if job.charged:
            if payment is not None:
                gw.note_payment(payment, accepted=False, reason="job already settled: not charged")
            if job.settlement is not None:
                body["payment"] = _payment_field(job.settlement, "already_settled")
        elif job.payer is not None:
            settlement = self._charge(job, payment, verdict)
            job.charged = True
            job.settlement = settlement
            if gw.misbehave.fail_after_settle > 0:
                gw.misbehave.fail_after_settle -= 1
                return job.route.dialect.refuse(FAILED_AFTER_SETTLE)
            if settlement is not None:
                body["payment"] = _payment_field(settlement, "settled")
        return gw.reply(200, body, settlement)

    def _head(self, job: Job, status: str) -> dict[str, Any]:
        head = {
            "id": job.id,
            "object": _OBJECT[job.plan.kind],
            "status": status,
            "model": job.plan.model,
        }
        if status != "completed":
            head["payment_status"] = "verified" if job.payer is not None else "not_required"
        return head

    def _failed(self, job: Job) -> dict[str, Any]:
        return {
            **self._head(job, "failed"),
            "error": "Injected upstream failure",
            "payment_status": "not_charged",
            "note": "Upstream generation failed. No payment was taken.",
        }


def _job_id(plan: JobPlan, n: int) -> str:
    job_id = f"{_ID_PREFIX[plan.kind]}{n:010d}"
    if plan.kind == "videos":
        # BlockRun's video ids are "{provider}:{upstream id}": the ':' must survive
        # being quoted into the poll URL and back.
        return f"{plan.model.split('/', 1)[0]}:{job_id}"
    return job_id


def _same_wallet(payer: str, owner: str | None) -> bool:
    # EVM addresses are compared without their checksum case.
    return owner is not None and payer.lower() == owner.lower()


def _payment_field(settlement: Settlement, status: str) -> dict[str, Any]:
    receipt = settlement.receipt
    return {"status": status, "tx_hash": receipt["transaction"], "network": receipt["network"]}


def _refuse(job: Job | None, refusal: Refusal) -> web.Response:
    dialect = job.route.dialect if job is not None else BLOCKRUN
    return dialect.refuse(refusal)
