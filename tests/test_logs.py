"""Access lines, request ids, log formats, and a log writer that never blocks the loop."""

from __future__ import annotations

import io
import logging
import queue
import re
import sys
from collections.abc import Iterator

import aiohttp
import orjson
import pytest
from ops_support import until

from blockrun_proxy import logs
from blockrun_proxy.exchange import Exchange, request_id_from

PAID = "openai/gpt-4o-mini"
FREE = "nvidia/deepseek-v4-flash"
CHAT = {"model": PAID, "stream": True, "messages": [{"role": "user", "content": "hello"}]}
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
            headers={"x-request-id": "req-7"},
        ) as resp,
    ):
        raw = await resp.read()
    await until(lambda: len(access_records(access)) == 1)
    (line,) = access_records(access)
    assert line["request_id"] == resp.headers["x-request-id"] == "req-7"
    assert gateway.chat_requests[-1].headers["x-request-id"] == "req-7"
    assert line["method"] == "POST"
    assert line["route"] == "/v1/chat/completions"
    assert line["model"] == PAID
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
        ("POST", "/v1/chat/completions", 400),  # empty body
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
    exchange.status, exchange.model, exchange.bytes_out = 200, PAID, 512
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
    assert (first["bytes"], first["cost_usd"], first["model"]) == (512, "0.001616", PAID)
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
        f"model={PAID} latency_ms=1000.0 ttfb_ms=250.0 bytes=512 cost_usd=0.001616"
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
