"""The bench's own arithmetic: wrk parsing, percentiles, verdicts, the raw upstream's framing."""

from __future__ import annotations

import asyncio
import json

from bench.load import lua_string, parse_wrk_output, percentile, render_wrk_lua
from bench.report import added_at_most, at_least, markdown_table, ratio_at_most
from bench.upstream import (
    DONE,
    RawUpstream,
    chunked_sse_response,
    raw_response,
    sse_frame,
    static_sse_response,
)


def test_wrk_json_line_counts_only_2xx_toward_the_rate():
    line = {
        "requests": 1000,
        "duration_us": 2_000_000,
        "bytes": 1,
        "connect": 0,
        "read": 1,
        "write": 0,
        "status": 100,
        "timeout": 2,
        "p50_us": 1500,
        "p99_us": 9000,
    }
    result = parse_wrk_output("noise\nWRK_JSON " + json.dumps(line) + "\n")
    assert result.rps == 450.0
    assert result.errors == 103 and result.non_2xx == 100
    assert (result.p50_ms, result.p99_ms) == (1.5, 9.0)


def test_lua_long_string_cannot_be_closed_by_the_body():
    text = "a]]b]=]c"
    quoted = lua_string(text)
    assert quoted == "[==[" + text + "]==]"
    assert lua_string('{"x":1}') in render_wrk_lua({"x": 1})


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile([3.0], 50) == 3.0
    assert percentile(list(range(1, 1001)), 99) == 990


def test_verdicts_compare_numbers_from_the_same_run():
    assert at_least("r", "m", 30, "req/s", baseline_label="b", baseline=100, min_ratio=0.3).passed
    assert not at_least(
        "r", "m", 29, "req/s", baseline_label="b", baseline=100, min_ratio=0.3
    ).passed
    slow = ratio_at_most("s", "m", 111, "ms", baseline_label="d", baseline=100, max_ratio=1.1)
    assert not slow.passed
    ttfb = added_at_most("t", "m", 2.5, "ms", baseline_label="d", baseline=1.0, max_added=1.0)
    assert ttfb.value == 1.5 and not ttfb.passed
    table = markdown_table([ttfb])
    assert "| t | m | 2.50 ms | d 1.00 | 1.50 | + <= 1 ms | FAIL |" in table


def test_raw_upstream_answer_is_one_chunk_per_event_then_done():
    frame = sse_frame(200)
    assert len(frame) == 200 and frame.startswith(b"data: ") and frame.endswith(b"\n\n")
    raw = chunked_sse_response(frame, 3)
    head, body = raw.split(b"\r\n\r\n", 1)
    assert b"Transfer-Encoding: chunked" in head
    assert body.count(b"%x\r\n" % len(frame)) == 3
    assert body.endswith(b"%x\r\n%s\r\n0\r\n\r\n" % (len(DONE), DONE))


def test_quote_bench_counts_shares_after_the_warm_up_and_over_payment():
    from bench.quotes import FORMULAS, WARM_UP, Row, Run, table

    run = Run(
        latencies_ms=[200.0] * WARM_UP + [50.0, 60.0, 70.0, 400.0],
        round_trips=[2] * WARM_UP + [1, 1, 1, 3],
        overpaid=[0] * WARM_UP + [0, 2, 0, 0],
    )
    assert run.share() == 0.75 and run.p50_ms() == 65.0
    line = table([Row("conversation", FORMULAS[0], run, None)]).splitlines()[-1]
    assert "| 75% (3/4) | - | 65 | 2 uUSDC (2) |" in line


def test_quote_bench_under_upto_reports_what_was_paid_against_the_price():
    from bench.quotes import FORMULAS, WARM_UP, Row, Run, table

    run = Run(
        latencies_ms=[50.0] * (WARM_UP + 2),
        round_trips=[1] * (WARM_UP + 2),
        overpaid=[0] * (WARM_UP + 2),
        paid=[10] * (WARM_UP + 2),
        priced=[40] * (WARM_UP + 2),
    )
    lines = table([Row("tool_loop", FORMULAS[0], run, None)], "upto").splitlines()
    assert "ceiling over the price" in lines[0] and "paid / exact price" in lines[0]
    assert lines[-1].endswith("| 0 uUSDC (0) | 25% |")


def test_upto_bench_prompt_gives_an_answer_of_the_asked_length():
    from bench.upto import prompt_for
    from blockrun_proxy.testing._replies import ECHO_PREFIX, count_tokens

    assert count_tokens(ECHO_PREFIX + prompt_for(150)) == 150


def test_route_bench_compares_each_row_with_its_chat_row():
    from bench.routes import Case, table

    free, paid = Case("chat", "/c", {}, True), Case("chat (paid)", "/c", {}, False)
    gem = Case("gemini (paid)", "/g", {}, False)
    rows = [
        (free, (1.0, 2.0), (3.0, 5.0), 1000.0, 600.0, None),
        (paid, (0.0, 0.0), (4.0, 6.0), 800.0, 700.0, 1.0),
        (gem, (0.0, 0.0), (4.5, 7.0), 400.0, 900.0, 0.5),
    ]
    lines = table(rows, 16).splitlines()
    assert (
        lines[2]
        == "| chat | +2.00 ms added | +0.00 ms | +3.00 ms added | 1,000 | 1.00x | 600 µs | - |"
    )
    assert (
        lines[4] == "| gemini (paid) | 4.50 ms | +0.50 ms | 7.00 ms | 400 | 0.50x | 900 µs | 50% |"
    )


def test_static_upstream_answer_is_the_same_body_in_one_piece():
    frame = sse_frame(200)
    chunked = chunked_sse_response(frame, 3)
    static = static_sse_response(frame, 3)
    head, body = static.split(b"\r\n\r\n", 1)
    assert body == frame * 3 + DONE
    assert b"Content-Length: %d" % len(body) in head
    assert b"Transfer-Encoding" not in head and b"Transfer-Encoding: chunked" in chunked


def test_raw_paid_upstream_answers_402_unless_a_payment_is_attached():
    class Sink(asyncio.Transport):
        def __init__(self) -> None:
            super().__init__()
            self.out: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.out.append(data)

    upstream = RawUpstream(b"CHALLENGE", b"PAID")
    sink = Sink()
    upstream.connection_made(sink)
    post = b"POST /api/v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\n%s\r\n{}"
    upstream.data_received(post % b"")
    upstream.data_received(post % b"PAYMENT-SIGNATURE: eyJ4\r\n")
    assert sink.out == [b"CHALLENGE", b"PAID"]
    reply = raw_response(
        402, "Payment Required", [("Date", "x"), ("PAYMENT-REQUIRED", "e30")], b"{}"
    )
    assert reply == (
        b"HTTP/1.1 402 Payment Required\r\nPAYMENT-REQUIRED: e30\r\nContent-Length: 2\r\n\r\n{}"
    )
