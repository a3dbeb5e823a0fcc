"""Paid data routes: ``POST /v1/search`` and ``POST /v1/exa/{op}`` (PROTOCOL.md 9.7).

Neither names a model: search is priced per source asked for (``max_results``),
Exa per call (per URL for ``contents``). The 402's price object says how, as
BlockRun's search 402 does (``perSourceCost``, ``maxResults``).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from aiohttp import web

from blockrun_proxy.testing._calls import (
    BLOCKRUN,
    Call,
    Incoming,
    Refusal,
    Route,
    Settlement,
    bad,
    parse_object,
)
from blockrun_proxy.testing._replies import ECHO_PREFIX

if TYPE_CHECKING:
    from blockrun_proxy.testing._gateway import FakeGateway

# $0.025 per source + 5 %, in atomic USDC.
SEARCH_PER_SOURCE = 26_250
SEARCH_DEFAULT_RESULTS = 10
SEARCH_MAX_RESULTS = 50
SEARCH_MODEL = "xai/grok-3-mini"
EXA_CALL = 11_000  # $0.011 per search, find-similar or answer
EXA_PER_URL = 2_000  # contents: $0.002 per URL ...
EXA_PER_REQUEST = 1_000  # ... plus $0.001 per request
EXA_OPS = ("search", "find-similar", "answer", "contents")


def search_routes(gw: FakeGateway) -> list[Route]:
    return [
        Route("search", "/v1/search", BLOCKRUN, partial(_prepare_search, gw)),
        Route("exa", "/v1/exa/{op}", BLOCKRUN, partial(_prepare_exa, gw)),
    ]


def _prepare_search(gw: FakeGateway, incoming: Incoming) -> Call | Refusal:
    body = parse_object(incoming.raw)
    if isinstance(body, Refusal):
        return body
    query = body.get("query")
    if not isinstance(query, str) or not 1 <= len(query) <= 1000:
        return bad("query must be 1 to 1000 characters", "query")
    results = body.get("max_results", SEARCH_DEFAULT_RESULTS)
    if type(results) is not int or not 1 <= results <= SEARCH_MAX_RESULTS:
        return bad(f"max_results must be an integer from 1 to {SEARCH_MAX_RESULTS}", "max_results")
    sources = body.get("sources", ["web"])
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        return bad("sources must be a list such as ['web', 'news']", "sources")

    async def serve(request: web.Request, paid: Settlement | None) -> web.StreamResponse:
        kinds = sources or ["web"]
        citations = [
            {
                "url": f"https://example.com/{kinds[i % len(kinds)]}/{i}",
                "title": f"Result {i + 1} for {query}",
                "source": kinds[i % len(kinds)],
            }
            for i in range(min(results, 3))
        ]
        answer = {
            "query": query,
            "summary": ECHO_PREFIX + query,
            "citations": citations,
            "sources_used": results,
            "model": SEARCH_MODEL,
        }
        return gw.reply(200, answer, paid)

    details = {"perSourceCost": SEARCH_PER_SOURCE / 1_000_000, "maxResults": results}
    price = gw.scaled(SEARCH_PER_SOURCE * results)
    return Call(price, f"Live search - {results} sources", serve, price_details=details)


def _prepare_exa(gw: FakeGateway, incoming: Incoming) -> Call | Refusal:
    op = incoming.params["op"]
    if op not in EXA_OPS:
        return Refusal(404, f"Unknown Exa endpoint: {op}", code="not_found")
    body = parse_object(incoming.raw)
    if isinstance(body, Refusal):
        return body
    if op == "contents":
        urls = body.get("urls")
        if not isinstance(urls, list) or not 1 <= len(urls) <= 100:
            return bad("urls must be a list of 1 to 100 URLs", "urls")
        if not all(isinstance(u, str) for u in urls):
            return bad("urls must be strings", "urls")
        price = EXA_PER_URL * len(urls) + EXA_PER_REQUEST
    else:
        key = "url" if op == "find-similar" else "query"
        if not isinstance(body.get(key), str) or not body[key]:
            return bad(f"{key} is required", key)
        price = EXA_CALL

    async def serve(request: web.Request, paid: Settlement | None) -> web.StreamResponse:
        return gw.reply(200, {"data": _exa_answer(op, body, gw.next_id())}, paid)

    return Call(gw.scaled(price), f"Exa {op}", serve)


def _exa_answer(op: str, body: dict[str, Any], n: int) -> dict[str, Any]:
    request_id = f"fake{n:012d}"
    if op == "answer":
        citation = {
            "id": "https://example.com/a",
            "title": "A source",
            "url": "https://example.com/a",
        }
        return {
            "requestId": request_id,
            "answer": ECHO_PREFIX + body["query"],
            "citations": [citation],
        }
    if op == "contents":
        results = [
            {
                "id": url,
                "url": url,
                "title": f"Page {i + 1}",
                "text": f"Text of {url}",
                "author": None,
            }
            for i, url in enumerate(body["urls"])
        ]
        return {"results": results, "costDollars": {"total": 0.002 * len(results)}}
    results = [
        {
            "id": f"https://example.com/{i}",
            "title": f"Result {i + 1}",
            "url": f"https://example.com/{i}",
            "publishedDate": "2026-01-01T00:00:00.000Z",
            "score": round(1 - i / 10, 2),
        }
        for i in range(3)
    ]
    return {
        "requestId": request_id,
        "resolvedSearchType": "neural",
        "results": results,
        "searchTime": 1,
        "costDollars": {"total": 0.007},
    }
