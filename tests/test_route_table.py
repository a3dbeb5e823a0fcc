"""The route table, the body guards, the job book and the refusal classifier, as units."""

from __future__ import annotations

import orjson
import pytest
from multidict import CIMultiDict

from blockrun_proxy.bodies import guard_body
from blockrun_proxy.errors import InvalidRequest
from blockrun_proxy.jobs import JobBook, job_key, poll_path, poll_url_of, rewrite_poll_url
from blockrun_proxy.routes import BY_NAME, RELAY_ROUTES, ROUTES, Body, Model, Serve, label_of
from blockrun_proxy.upstream import error_code, forwarded_headers, without_credentials

GATEWAY = "https://blockrun.ai"


def test_the_table_is_introspectable_and_its_labels_are_bounded() -> None:
    """An OpenAPI generator (or the README) can read every route from the table."""
    for route in (*ROUTES, *RELAY_ROUTES):
        assert route.template.startswith(("/v1/", "/v1beta/"))
        assert ":" not in route.label.replace(":generateContent", "").replace(
            ":streamGenerateContent", ""
        )
        assert route.paths == (route.template, "/api" + route.template)
    assert [r.name for r in ROUTES if r.default_max_tokens] == ["chat"]
    assert BY_NAME["gemini"].label == "/v1beta/models/{model}:generateContent"
    assert BY_NAME["job_poll"].label == "/v1/{kind}/generations/{job_id}"
    assert BY_NAME["job_poll"].serve is Serve.POLL and BY_NAME["models"].serve is Serve.CATALOGUE
    assert BY_NAME["messages"].body is Body.ANTHROPIC and BY_NAME["gemini"].model is Model.PATH
    assert label_of("/api/v1/messages") == "/v1/messages" and label_of("/metrics") == "/metrics"


def test_anthropic_bodies_need_their_own_max_tokens_and_get_no_default() -> None:
    route = BY_NAME["messages"]
    raw = orjson.dumps({"model": "m", "max_tokens": 9, "messages": [{"role": "user"}]})
    guarded = guard_body(route, raw, {}, default_max_tokens=1024)
    assert guarded.body is raw and (guarded.model, guarded.max_tokens) == ("m", 9)
    features = guarded.features(route)
    assert features is not None and features.key == ("/v1/messages", "m")
    for body, code in [
        ({"model": "m", "messages": [{"role": "user"}]}, "invalid_max_tokens"),
        ({"model": "m", "max_tokens": True, "messages": [{"role": "user"}]}, "invalid_max_tokens"),
        ({"max_tokens": 9, "messages": [{"role": "user"}]}, "missing_model"),
        ({"model": "m", "max_tokens": 9, "messages": []}, "missing_messages"),
        ({"model": "m" * 300, "max_tokens": 9, "messages": [{"role": "u"}]}, "invalid_model"),
    ]:
        with pytest.raises(InvalidRequest) as info:
            guard_body(route, orjson.dumps(body), {}, default_max_tokens=1024)
        assert info.value.code == code


def test_gemini_takes_its_model_from_the_path() -> None:
    route = BY_NAME["gemini"]
    raw = orjson.dumps({"contents": [], "generationConfig": {"maxOutputTokens": 77}})
    guarded = guard_body(route, raw, {"model": "models/google/gemini-x"}, default_max_tokens=1)
    assert (guarded.model, guarded.max_tokens, guarded.body) == ("google/gemini-x", 77, raw)
    features = guarded.features(route)  # measured, to sign up front (measures.py)
    assert features is not None and features.key == (route.label, "google/gemini-x")
    assert (features.max_tokens, features.catalogue) == (77, "google/gemini-x")
    with pytest.raises(InvalidRequest):
        guard_body(route, b"[1]", {"model": "g"}, default_max_tokens=1)


def test_media_models_are_optional_and_search_has_none() -> None:
    assert guard_body(BY_NAME["images"], b'{"prompt": "x"}', {}, default_max_tokens=1).model is None
    assert (
        guard_body(BY_NAME["images"], b'{"model": "a/b"}', {}, default_max_tokens=1).model == "a/b"
    )
    with pytest.raises(InvalidRequest):
        guard_body(BY_NAME["images"], b'{"model": 7}', {}, default_max_tokens=1)
    assert guard_body(BY_NAME["search"], b'{"model": 7}', {}, default_max_tokens=1).model is None
    with pytest.raises(InvalidRequest):
        guard_body(BY_NAME["search"], b"not json", {}, default_max_tokens=1)
    anything = guard_body(BY_NAME["relay"], b"\x00 any bytes", {}, default_max_tokens=1)
    assert anything.body == b"\x00 any bytes" and anything.model is None


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (402, {"error": {"message": "x", "code": "PAYMENT_INVALID"}}, "PAYMENT_INVALID"),  # OpenAI
        (402, {"type": "error", "error": {"type": "payment_error", "code": "PAYMENT_INVALID"}},
         "PAYMENT_INVALID"),  # Anthropic
        (402, {"error": {"code": 402, "status": "FAILED_PRECONDITION",
                         "reason": "PAYMENT_INVALID"}}, "PAYMENT_INVALID"),  # Google
        (402, {"error": "Payment verification failed", "code": "PAYMENT_UNFUNDED"},
         "PAYMENT_UNFUNDED"),  # BlockRun's media and search
        (402, {"error": "Payment verification failed", "details": "insufficient_funds"},
         "PAYMENT_INVALID"),
        (402, {"type": "error", "error": {"type": "payment_error",
               "message": "Payment verification failed: expired"}}, "PAYMENT_INVALID"),
        (409, {"error": "already served", "poll_url": "/api/v1/videos/generations/x"},
         "PAYMENT_REPLAY"),
        (202, {"id": "x", "status": "queued", "poll_url": "/api/v1/videos/generations/x"}, None),
        (500, {"error": {"message": "boom"}}, None),
    ],
)  # fmt: skip
def test_the_refusal_code_is_read_from_every_envelope(status, body, code) -> None:
    assert error_code(orjson.dumps(body), status) == code


def test_credentials_are_dropped_and_everything_else_kept() -> None:
    assert without_credentials("alt=sse&key=secret") == "alt=sse"
    assert without_credentials("KEY=s&model=xai%2Fgrok&duration=8") == "model=xai%2Fgrok&duration=8"
    assert without_credentials("monkey=1&keys=2") == "monkey=1&keys=2"
    headers = forwarded_headers(
        CIMultiDict({"Authorization": "Bearer t", "x-api-key": "k", "x-goog-api-key": "g",
                     "Cookie": "c", "anthropic-version": "2023-06-01", "Accept-Encoding": "gzip"}),
        None,
    )  # fmt: skip
    assert dict(headers) == {"anthropic-version": "2023-06-01", "accept-encoding": "gzip"}


def test_poll_urls_relative_ones_kept_absolute_ones_on_the_gateway_made_relative() -> None:
    relative = "/api/v1/videos/generations/xai%3Avid?model=xai%2Fv&duration=8"
    assert poll_path(relative, GATEWAY) == relative
    assert poll_path(GATEWAY + relative, GATEWAY) == relative
    assert poll_path("https://elsewhere.example" + relative, GATEWAY) is None
    body = orjson.dumps({"id": "x", "poll_url": GATEWAY + relative, "n": 1.50})
    assert poll_url_of(body) == GATEWAY + relative
    rewritten = rewrite_poll_url(body, GATEWAY + relative, relative)
    assert orjson.loads(rewritten) == {"id": "x", "poll_url": relative, "n": 1.5}
    assert rewritten.replace(relative.encode(), b"") == body.replace(
        (GATEWAY + relative).encode(), b""
    )  # every other byte as the gateway sent it
    same = orjson.dumps({"poll_url": relative})
    assert rewrite_poll_url(same, relative, relative) is same


def test_the_job_book_is_bounded_and_forgets() -> None:
    now = [0.0]
    book = JobBook(max_jobs=2, ttl_seconds=10, clock=lambda: now[0])
    book.remember("/api/v1/videos/generations/a%3A1?model=x", "header-a")
    assert book.payment_for("/v1/videos/generations/a:1") == "header-a"  # one spelling
    assert job_key("/api/v1/videos/generations/a%3A1?q=1") == "/v1/videos/generations/a:1"
    book.remember("/v1/videos/generations/b", "header-b")
    book.remember("/v1/videos/generations/c", "header-c")
    assert len(book) == 2 and book.payment_for("/v1/videos/generations/a:1") is None
    now[0] = 11.0
    assert book.payment_for("/v1/videos/generations/c") is None  # expired
