"""The SSE decoder the in-process provider reads streams with."""

from __future__ import annotations

import pytest

from blockrun_proxy.sse import SSEDecoder

STREAM = b'data: {"a":1}\n\n: keep-alive comment\n\ndata: {"b":2}\n\ndata: [DONE]\n\n'


def decode_in_pieces(raw: bytes, size: int) -> list[str]:
    decoder = SSEDecoder()
    events: list[str] = []
    for i in range(0, len(raw), size):
        events += decoder.feed(raw[i : i + size])
    return events + decoder.close()


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_events_split_anywhere_come_out_whole(size):
    assert decode_in_pieces(STREAM, size) == ['{"a":1}', '{"b":2}', "[DONE]"]


@pytest.mark.parametrize("newline", [b"\r\n", b"\r"])
@pytest.mark.parametrize("size", [1, 5, 1000])
def test_other_line_ends(newline, size):
    assert decode_in_pieces(STREAM.replace(b"\n", newline), size) == [
        '{"a":1}',
        '{"b":2}',
        "[DONE]",
    ]


def test_multi_line_data_and_other_fields():
    raw = b"event: x\nid: 3\ndata: one\ndata:two\nretry: 5\n\n"
    assert decode_in_pieces(raw, 4) == ["one\ntwo"]


def test_an_event_without_its_blank_line_is_kept_at_the_end():
    assert decode_in_pieces(b'data: {"last":true}', 3) == ['{"last":true}']


def test_a_frame_larger_than_any_read():
    big = "x" * 300_000
    assert decode_in_pieces(f"data: {big}\n\n".encode(), 65_536) == [big]


def test_utf8_split_inside_a_character():
    raw = 'data: "héllo ünïcode"\n\n'.encode()
    assert decode_in_pieces(raw, 1) == ['"héllo ünïcode"']
