import orjson
import pytest

from blockrun_proxy.chatbody import parse_chat_request
from blockrun_proxy.errors import InvalidRequest

MSGS = [{"role": "user", "content": "hi"}]


def parse(raw: bytes):
    return parse_chat_request(raw, default_max_tokens=1024)


def test_body_with_max_tokens_is_forwarded_byte_for_byte():
    raw = (
        b'{ "model" : "m",\n "messages":[{"role":"user","content":"h\\u00e9"}],'
        b' "max_tokens": 7, "x":1.50}'
    )
    chat = parse(raw)
    assert chat.body is raw
    assert chat.max_tokens == 7
    assert chat.model == "m" and chat.stream is False


def test_max_completion_tokens_counts_as_max_tokens():
    chat = parse(orjson.dumps({"model": "m", "messages": MSGS, "max_completion_tokens": 99}))
    assert chat.max_tokens == 99
    assert b"max_tokens" not in chat.body.replace(b"max_completion_tokens", b"")


def test_default_max_tokens_is_spliced_in_and_nothing_else_changes():
    raw = b'  {"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0.10}'
    chat = parse(raw)
    assert chat.max_tokens == 1024
    assert chat.body == raw.replace(b'{"model"', b'{"max_tokens":1024,"model"')
    assert orjson.loads(chat.body) == {**orjson.loads(raw), "max_tokens": 1024}


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"not json", "invalid_json"),
        (b"[1,2]", "invalid_json"),
        (b'{"messages": []}', "missing_model"),
        (b'{"model": "", "messages": [{"role":"user","content":"x"}]}', "missing_model"),
        (b'{"model": "m"}', "missing_messages"),
        (b'{"model": "m", "messages": "hi"}', "missing_messages"),
        (b'{"model": "m", "messages": [{}], "stream": "yes"}', "invalid_stream"),
        (b'{"model": "m", "messages": [{}], "max_tokens": -1}', "invalid_max_tokens"),
        (b'{"model": "m", "messages": [{}], "max_tokens": true}', "invalid_max_tokens"),
    ],
)
def test_bad_requests_are_400_with_a_code(raw, code):
    with pytest.raises(InvalidRequest) as info:
        parse(raw)
    assert info.value.status == 400
    assert info.value.code == code
    error = orjson.loads(info.value.to_json())["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
