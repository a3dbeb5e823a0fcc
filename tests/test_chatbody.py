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


@pytest.mark.parametrize("key", ["max_tokens", "max_completion_tokens"])
def test_a_null_limit_is_absent_and_replaced_in_place(key):
    raw = (
        b'{"model": "m", "%s" : null, "messages": [{"role": "user", '
        b'"content": "say \\"%s\\": null"}], "x": 1.50}' % (key.encode(), key.encode())
    )
    chat = parse(raw)
    assert chat.max_tokens == 1024
    # The null became the default where it stood; nothing else moved, no duplicate key.
    assert chat.body == raw.replace(b'"%s" : null' % key.encode(), b'"%s":1024' % key.encode())
    assert chat.body.count(b"null") == 1  # the one inside the message text
    assert chat.data[key] == 1024


def test_both_limits_null_get_the_default_and_no_duplicate_keys():
    raw = (
        b'{"max_completion_tokens":null,"model":"m","messages":[{"role":"user"}],"max_tokens":null}'
    )
    chat = parse(raw)
    assert chat.body == (
        b'{"max_completion_tokens":1024,"model":"m","messages":[{"role":"user"}],"max_tokens":1024}'
    )
    assert chat.max_tokens == 1024


def test_a_null_limit_under_an_escaped_key_is_reserialised_without_the_null():
    raw = b'{"model":"m","messages":[{"role":"user"}],"max\\u005ftokens":null}'
    chat = parse(raw)
    assert chat.body == b'{"model":"m","messages":[{"role":"user"}],"max_tokens":1024}'


def test_a_set_limit_beside_a_null_one_is_kept_as_sent():
    raw = b'{"model":"m","messages":[{"role":"user"}],"max_tokens":null,"max_completion_tokens":9}'
    chat = parse(raw)
    assert chat.body is raw
    assert chat.max_tokens == 9


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b'{"model": "m", "messages": [1, 2]}', "invalid_messages"),
        (b'{"model": "m", "messages": [{"content": "no role"}]}', "invalid_messages"),
        (b'{"model": "m", "messages": [{"role": 7}]}', "invalid_messages"),
        (b'{"model": "m", "messages": [{"role": "user"}, null]}', "invalid_messages"),
        pytest.param(
            b'{"model": "%s", "messages": [{"role": "user"}]}' % (b"m" * 257),
            "invalid_model",
            id="257-char-model",
        ),
    ],
)
def test_malformed_messages_and_overlong_models_are_400(raw, code):
    with pytest.raises(InvalidRequest) as info:
        parse(raw)
    assert (info.value.status, info.value.code) == (400, code)


def test_a_model_of_256_characters_is_fine():
    assert parse(orjson.dumps({"model": "m" * 256, "messages": MSGS})).model == "m" * 256
