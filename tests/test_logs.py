"""Access lines, request ids, log formats, and a log writer that never blocks the loop."""

from __future__ import annotations

import asyncio
import io
import logging
import queue
import re
import sys
import threading
import time
from collections.abc import Iterator

import aiohttp
import orjson
import pytest
from support.calls import FRACTIONAL_MODEL, FREE_MODEL, JSON, PRICED_MODEL
from support.payments import warm_body, warm_up
from support.servers import until

from blockrun_proxy import logs
from blockrun_proxy.exchange import Exchange, request_id_from
from blockrun_proxy.x402 import usd

CHAT = {
    "model": FRACTIONAL_MODEL,
    "stream": True,
    "messages": [{"role": "user", "content": "hello"}],
}
GENERATED_ID = re.compile(r"[0-9a-f]{32}")


def access_records(caplog: pytest.LogCaptureFixture) -> list[dict]:
    return [r.fields for r in caplog.records if r.name == logs.ACCESS_LOGGER]


@pytest.fixture
def access(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger=logs.ACCESS_LOGGER)
    return caplog


async def test_one_access_line_per_request_with_id_model_status_timings_and_cost(
    proxy, gateway, access, wallet_key
):
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            proxy.base_url + "/chat/completions",
            data=orjson.dumps(CHAT),
            headers={"x-request-id": "req-7", **JSON},
        ) as resp,
    ):
        raw = await resp.read()
    await until(lambda: len(access_records(access)) == 1)
    (line,) = access_records(access)
    assert line["request_id"] == resp.headers["x-request-id"] == "req-7"
    assert gateway.chat_requests[-1].headers["x-request-id"] == "req-7"
    assert line["method"] == "POST"
    assert line["route"] == "/v1/chat/completions"
    assert line["model"] == FRACTIONAL_MODEL
    assert line["status"] == 200
    assert line["bytes"] == len(raw)
    assert 0 <= line["ttfb_ms"] <= line["latency_ms"]
    assert line["cost_usd"] == resp.headers["x-blockrun-cost-usd"]
    assert line["error"] is None
    for formatter in (logs.JsonFormatter(), logs.TextFormatter()):
        for record in access.records:
            assert wallet_key.lower().removeprefix("0x") not in formatter.format(record).lower()


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/healthz", 200),
        ("GET", "/readyz", 200),
        ("GET", "/metrics", 200),
        ("GET", "/nowhere", 404),
        ("POST", "/v1/chat/completions", 415),  # no body, so no JSON Content-Type
        ("DELETE", "/v1/models", 405),
    ],
)
async def test_every_answer_carries_a_request_id(proxy, access, method, path, status):
    async with aiohttp.ClientSession() as s:
        async with s.request(method, proxy.url + path) as resp:
            assert resp.status == status
            generated = resp.headers["x-request-id"]
        async with s.request(method, proxy.url + path, headers={"x-request-id": "abc"}) as resp:
            assert resp.headers["x-request-id"] == "abc"
    assert GENERATED_ID.fullmatch(generated)
    await until(lambda: len(access_records(access)) == 2)
    assert [line["request_id"] for line in access_records(access)] == [generated, "abc"]
    assert {line["status"] for line in access_records(access)} == {status}


async def test_refusals_are_logged_with_their_code(start_proxy, access):
    proxy = await start_proxy(token="t0k")
    async with aiohttp.ClientSession() as s, s.get(proxy.base_url + "/models") as resp:
        assert resp.status == 401
    await until(lambda: len(access_records(access)) == 1)
    assert access_records(access)[0]["error"] == "invalid_proxy_token"


@pytest.mark.parametrize("given", ["has space", "x" * 129, 'quote"d', "", None])
def test_an_unusable_request_id_is_replaced(given):
    assert GENERATED_ID.fullmatch(request_id_from(given))


@pytest.mark.parametrize("given", ["req-42", "0HN5:00000001", "a/b+c=@d.e_f", "x" * 128])
def test_a_usable_request_id_is_kept(given):
    assert request_id_from(given) == given


def sample_exchange() -> Exchange:
    exchange = Exchange("rid-1", "POST", "/v1/chat/completions", started=100.0)
    exchange.status, exchange.model, exchange.bytes_out = 200, FRACTIONAL_MODEL, 512
    exchange.first_byte_at, exchange.cost_atomic = 100.25, 1616
    return exchange


@pytest.fixture
def root_logger() -> Iterator[None]:
    """``logs.setup`` configures the process's root logger: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_the_fields_as_keys(root_logger):
    out = io.StringIO()
    stop = logs.setup("info", "json", stream=out)
    try:
        logs.log_access(sample_exchange(), now=101.0)
        logging.getLogger("blockrun_proxy").warning("plain %s", "message")
    finally:
        stop()
    first, second = (orjson.loads(line) for line in out.getvalue().splitlines())
    assert first["logger"] == "blockrun_proxy.access"
    assert first["msg"] == "POST /v1/chat/completions 200"
    assert first["request_id"] == "rid-1"
    assert (first["latency_ms"], first["ttfb_ms"]) == (1000.0, 250.0)
    assert (first["bytes"], first["cost_usd"], first["model"]) == (
        512,
        "0.001616",
        FRACTIONAL_MODEL,
    )
    assert {"ts", "level", "pid"} <= set(first)
    assert (second["level"], second["msg"]) == ("warning", "plain message")


def test_text_lines_append_key_values_once(root_logger):
    out = io.StringIO()
    stop = logs.setup("info", "text", stream=out)
    try:
        logs.log_access(sample_exchange(), now=101.0)
    finally:
        stop()
    line = out.getvalue().strip()
    assert line.endswith(
        "INFO blockrun_proxy.access: POST /v1/chat/completions 200 request_id=rid-1 "
        f"model={FRACTIONAL_MODEL} latency_ms=1000.0 ttfb_ms=250.0 bytes=512 cost_usd=0.001616"
    )


def test_a_full_log_queue_drops_lines_instead_of_blocking():
    handler = logs.DroppingQueueHandler(queue.Queue(maxsize=2))
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    for _ in range(5):
        handler.emit(record)  # would block forever on a plain bounded queue.put
    assert handler.dropped == 3


def test_exception_text_is_baked_before_the_writer_thread_formats_it():
    handler = logs.DroppingQueueHandler(queue.Queue())
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed %d", (1,), None)
        record.exc_info = sys.exc_info()
    prepared = handler.prepare(record)
    assert prepared.msg == "failed 1" and prepared.exc_info is None
    assert "ValueError: boom" in (prepared.exc_text or "")
    assert "ValueError: boom" in orjson.loads(logs.JsonFormatter().format(prepared))["exc"]


async def test_a_failure_after_payment_logs_the_amount_that_may_be_gone(
    start_proxy, gateway, access
):
    proxy = await start_proxy(paid_replays=0)
    gateway.misbehave.fail_paid = 1
    body = {**CHAT, "stream": False, "max_tokens": 64}
    async with (
        aiohttp.ClientSession() as s,
        s.post(proxy.base_url + "/chat/completions", data=orjson.dumps(body), headers=JSON) as resp,
    ):
        assert resp.status == 424
    await until(lambda: len(access_records(access)) == 1)
    (line,) = access_records(access)
    assert line["status"] == 424 and line["cost_usd"] is None
    assert line["signed_usd"] == usd(gateway.price_for(body))
    assert "signed_usd=" in logs.TextFormatter().format(access.records[-1])


async def test_a_client_that_hangs_up_after_the_paid_send_logs_the_amount(
    start_proxy, gateway, access
):
    proxy = await start_proxy()
    await warm_up(proxy)  # so the first request carries the payment
    access.clear()
    gateway.misbehave.delay_seconds = 5.0  # the gateway has the payment and thinks a while
    body = warm_body(PRICED_MODEL, stream=False)
    timeout = aiohttp.ClientTimeout(total=0.5)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        with pytest.raises(asyncio.TimeoutError):
            await s.post(
                proxy.base_url + "/chat/completions", data=orjson.dumps(body), headers=JSON
            )
    await until(lambda: len(access_records(access)) == 1)
    (line,) = access_records(access)
    assert line["status"] == 499 and line["cost_usd"] is None
    (paid,) = [r for r in gateway.requests[-1:] if r.payment is not None]
    assert line["signed_usd"] == usd(int(paid.payment["payload"]["authorization"]["value"]))


async def test_unpaid_calls_log_no_signed_amount(proxy, access):
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            proxy.base_url + "/chat/completions",
            data=orjson.dumps({**CHAT, "model": FREE_MODEL}),
            headers=JSON,
        ) as resp,
    ):
        await resp.read()
    await until(lambda: len(access_records(access)) == 1)
    assert access_records(access)[0]["signed_usd"] is None


# --------------------------------------------------------------------------- forging, size

FORGED_TAIL = " request_id=FORGED status=200 cost_usd=999.000000"
FORGED_MODEL = (
    "openai/gpt-5.5\n2026-01-01 12:00:00,000 INFO blockrun_proxy.access: "
    "POST /v1/chat/completions 200" + FORGED_TAIL
)
_LOGFMT_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def logfmt_fields(line: str) -> list[tuple[str, str]]:
    return _LOGFMT_PAIR.findall(line.split(": ", 1)[1])


def written(log_format: str, exchange: Exchange) -> str:
    out = io.StringIO()
    stop = logs.setup("info", log_format, stream=out)
    try:
        logs.log_access(exchange, now=101.0)
    finally:
        stop()
    return out.getvalue()


@pytest.mark.parametrize(
    "model", [FORGED_MODEL, "gpt" + FORGED_TAIL, 'gpt" request_id="FORGED', "a\r\x1b[2Jb\u2028c"]
)
def test_a_client_model_cannot_forge_a_text_line_or_a_field(root_logger, model):
    exchange = sample_exchange()
    exchange.model = model
    text = written("text", exchange)
    assert text.count("\n") == 1, text  # one record, one line
    fields = logfmt_fields(text)
    keys = [key for key, _ in fields]
    assert keys == ["request_id", "model", "latency_ms", "ttfb_ms", "bytes", "cost_usd"]
    values = dict(fields)
    assert (values["request_id"], values["cost_usd"]) == ("rid-1", "0.001616")
    assert values["model"].startswith('"') and "\n" not in values["model"]
    assert not any(c in values["model"] for c in "\r\x1b\u2028")


def test_a_client_model_cannot_forge_a_json_line_or_a_field(root_logger):
    exchange = sample_exchange()
    exchange.model = FORGED_MODEL.replace("request_id=FORGED", '", "request_id": "FORGED')
    text = written("json", exchange)
    assert text.count("\n") == 1
    line = orjson.loads(text)
    assert (line["request_id"], line["cost_usd"]) == ("rid-1", "0.001616")
    assert line["model"] == exchange.model


def test_long_fields_are_cut_with_a_marker(root_logger):
    exchange = sample_exchange()
    exchange.model = "m" * (4 * 1024 * 1024)
    for log_format in ("text", "json"):
        text = written(log_format, exchange)
        assert len(text) < 2000
        marker = f"{'m' * logs.MAX_FIELD_CHARS}...[+{4 * 1024 * 1024 - logs.MAX_FIELD_CHARS}]"
        assert marker in text
    exchange.model = "bad \udcff surrogate"  # from a client's undecodable bytes
    assert "surrogate" in orjson.loads(written("json", exchange))["model"]


class StalledSink(io.TextIOBase):
    """A log destination whose write blocks until released: a stalled stderr pipe."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        self.release.wait()
        self.lines.append(text)
        return len(text)


@pytest.fixture
def stalled(root_logger) -> Iterator[StalledSink]:
    sink = StalledSink()
    stop = logs.setup("info", "text", stream=sink)
    yield sink
    sink.release.set()
    stop()


def queue_handler() -> logs.DroppingQueueHandler:
    (handler,) = [
        h for h in logging.getLogger().handlers if isinstance(h, logs.DroppingQueueHandler)
    ]
    return handler


def test_a_stalled_sink_holds_no_client_text_beyond_the_cut(stalled):
    exchange = sample_exchange()
    exchange.model = "m" * (4 * 1024 * 1024)
    for _ in range(300):
        logs.log_access(exchange, now=101.0)
    handler = queue_handler()
    # 300 lines of 4 MB models would be 1.2 GB; cut, each line costs about 2 KB.
    assert 0 < handler.queued_bytes < 300 * 3000


def test_the_queue_is_bounded_in_bytes_and_drops_are_counted():
    handler = logs.DroppingQueueHandler(queue.Queue(), max_bytes=64 * 1024)
    for _ in range(1000):
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "m" * 3000, None, None)
        handler.emit(record)
    assert handler.queued_bytes <= 64 * 1024
    assert handler.queue.qsize() < 1000
    assert handler.dropped == 1000 - handler.queue.qsize()
    while not handler.queue.empty():
        handler.taken(handler.queue.get_nowait())
    assert handler.queued_bytes == 0


async def test_calls_with_a_4mb_model_against_a_stalled_sink(start_proxy, gateway, stalled):
    # 50 calls over HTTP (the guard's 400); test_a_stalled_sink_holds_no_client_text_beyond_
    # the_cut sends the 300 lines of the report straight to the log (1.2 GB of uploads
    # would take the suite 10 s for the same proof).
    proxy = await start_proxy(max_body_bytes=5 * 1024 * 1024)
    body = orjson.dumps({"model": "m" * (4 * 1024 * 1024), "messages": [{"role": "user"}]})
    async with aiohttp.ClientSession() as session:
        for _ in range(50):
            url = proxy.base_url + "/chat/completions"
            async with session.post(url, data=body, headers=JSON) as resp:
                assert resp.status == 400
                assert (await resp.json())["error"]["code"] == "invalid_model"
    assert gateway.requests == []
    assert queue_handler().queued_bytes < 50 * 3000


def test_stopping_gives_up_on_a_stalled_sink(root_logger):
    sink = StalledSink()
    stop = logs.setup("info", "text", stream=sink)
    logging.getLogger("blockrun_proxy").warning("stuck in the pipe")
    started = time.monotonic()
    try:
        assert stop() is False  # the writer is stuck in a write: said, not waited for
        assert time.monotonic() - started < logs.FLUSH_SECONDS + 0.5
    finally:
        sink.release.set()
