"""What a request must be before anything is spent: where it comes from and what it carries.

A loopback bind is not an authentication. A web page in the user's browser can reach
127.0.0.1, and three things let it spend the wallet if the proxy answers everyone:

- a cross-site POST with ``Content-Type: text/plain`` or a form type is a CORS "simple
  request": the browser sends it without asking first. Paid routes (every POST) therefore
  take only ``application/json``, which a page cannot send cross-site without a preflight;
- any cross-site request carries ``Origin`` (and ``Sec-Fetch-Site: cross-site`` in current
  browsers): a present Origin that is not allowed is refused, whatever the content type;
- DNS rebinding makes the page same-origin with the proxy under the attacker's own name,
  so no Origin check fires; but the ``Host`` is that name. A Host must be a loopback name,
  the bound address, or one listed in ``--allowed-hosts``.

Plain clients (curl, SDKs, LiteLLM, langchain) send no Origin, no Sec-Fetch-Site and a
loopback or configured Host: nothing here changes anything for them.

Host checks and public binds: bound to a non-loopback address WITH a token, any Host is
accepted. The token is what protects a public bind (a page does not know it, and browsers
never attach a bearer token on their own), and callers there use names the proxy cannot
know (a Service's DNS name, a pod IP). On a wildcard bind without a token
(``--allow-public``), a Host that is an IP address is accepted too: rebinding needs a DNS
name, so an IP literal means the client addressed this machine directly.

The probes (``/healthz``, ``/readyz``) skip all of this: they spend nothing, say only
whether the process is up, and the kubelet calls them with the pod IP as Host.

CORS is off by default. ``--cors-origins`` lists the origins of a browser app that really
should call the proxy: those get answered preflights and ``Access-Control-Allow-Origin``;
every other Origin still gets 403.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from blockrun_proxy.config import Settings, is_loopback
from blockrun_proxy.errors import Forbidden, UnsupportedMediaType

JSON_TYPE = "application/json"
# Cached by browsers for 10 minutes: short enough that a changed --cors-origins takes effect
# soon, long enough to spare most calls a preflight (Chrome caps it at 2 hours anyway).
PREFLIGHT_MAX_AGE_SECONDS = 600
CORS_METHODS = "GET, POST, OPTIONS"
# Always allowed in a preflight; headers the page's SDK asks for (x-stainless-*, ...) are
# echoed back too, since the origin is one the operator trusts.
CORS_HEADERS = ("Authorization", "Content-Type", "X-Request-Id")
# What a browser app may read from an answer: the request id and what the call cost.
CORS_EXPOSED = (
    "x-request-id, x-blockrun-cost-usd, x-blockrun-cost-source, x-blockrun-ceiling-usd, "
    "x-blockrun-settlement, x-litellm-response-cost, x-should-retry, "
    "x-blockrun-upstream-status, Retry-After"
)
# What local clients send, checked before any address parsing.
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
# RFC 9110 field names: a requested header name is echoed only if it is one.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@dataclass(frozen=True, slots=True)
class Guard:
    # Host names answered besides loopback ones, lowercased; "*" in it turns the check off.
    allowed_hosts: frozenset[str]
    # Public bind with a token: the token protects it, the Host is not checked.
    check_host: bool
    # Wildcard bind: a Host that is an IP address names this machine.
    any_ip_host: bool
    cors_origins: frozenset[str]

    @classmethod
    def from_settings(cls, settings: Settings) -> Guard:
        bound = settings.host.strip("[]").lower()
        wildcard = _is_wildcard(bound)
        hosts = {h.strip().lower().rstrip(".") for h in settings.allowed_hosts if h.strip()}
        if not wildcard:
            hosts.add(bound)
        return cls(
            allowed_hosts=frozenset(hosts),
            check_host="*" not in hosts and not (not is_loopback(bound) and settings.token),
            any_ip_host=wildcard,
            cors_origins=frozenset(_origin_key(o) for o in settings.cors_origins),
        )

    # ------------------------------------------------------------------ checks

    def check_source(self, request: web.Request) -> None:
        """Host, Origin and Sec-Fetch-Site: raise Forbidden for a web page or a foreign name."""
        headers = request.headers
        if self.check_host:
            host = headers.get("Host")
            # No Host at all is not a browser (browsers always send one).
            if host is not None and not self.host_allowed(host_name(host)):
                raise Forbidden(
                    "this proxy does not answer to that Host name (it protects against DNS "
                    "rebinding); add it to --allowed-hosts if clients really use it",
                    code="host_not_allowed",
                )
        origin = headers.get("Origin")
        allowed_origin = origin is not None and self.origin_allowed(origin)
        if origin is not None and not allowed_origin:
            raise Forbidden(
                "requests from web pages are refused: a browser page must not spend this "
                "wallet (list trusted browser apps in --cors-origins)",
                code="origin_not_allowed",
            )
        site = headers.get("Sec-Fetch-Site")
        if site is not None and site.lower() == "cross-site" and not allowed_origin:
            raise Forbidden(
                "cross-site browser requests are refused: a web page must not spend this wallet",
                code="cross_site_request",
            )

    def check_body_type(self, request: web.Request) -> None:
        """Every POST is a paid route: its body must be declared JSON."""
        declared = request.headers.get("Content-Type")
        if declared is None or declared.split(";", 1)[0].strip().lower() != JSON_TYPE:
            raise UnsupportedMediaType(
                f"POST bodies must be sent with Content-Type: {JSON_TYPE} "
                f"(got {'none' if declared is None else _shown(declared)})"
            )

    def host_allowed(self, name: str) -> bool:
        if name in _LOOPBACK_NAMES or name in self.allowed_hosts:
            return True  # the common case, without parsing an address
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            return False
        return address.is_loopback or self.any_ip_host

    def origin_allowed(self, origin: str) -> bool:
        return _origin_key(origin) in self.cors_origins

    # ------------------------------------------------------------------ CORS

    @staticmethod
    def is_preflight(request: web.Request) -> bool:
        headers = request.headers
        return (
            request.method == "OPTIONS"
            and "Origin" in headers
            and "Access-Control-Request-Method" in headers
        )

    def preflight(self, request: web.Request) -> web.Response:
        """The answer to a preflight from an allowed origin (``check_source`` passed)."""
        requested = request.headers.get("Access-Control-Request-Headers", "")
        names = list(CORS_HEADERS)
        known = {n.lower() for n in names}
        for raw in requested.split(","):
            name = raw.strip()
            if name and _TOKEN.fullmatch(name) and name.lower() not in known:
                known.add(name.lower())
                names.append(name)
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": CORS_METHODS,
                "Access-Control-Allow-Headers": ", ".join(names),
                "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_SECONDS),
            },
        )

    def cors_headers(self, request_headers: Mapping[str, str]) -> dict[str, str]:
        """Headers every answer gets when CORS is configured: the page may read it if its
        origin is allowed, and caches key the answer by Origin."""
        if not self.cors_origins:
            return {}
        origin = request_headers.get("Origin")
        if origin is None or not self.origin_allowed(origin):
            return {"Vary": "Origin"}
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Expose-Headers": CORS_EXPOSED,
            "Vary": "Origin",
        }


def host_name(header: str) -> str:
    """The name in a Host header: no port, no IPv6 brackets, lowercase, no trailing dot."""
    value = header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else value
    name, colon, port = value.rpartition(":")
    if colon and (port.isdigit() or not port):
        value = name
    return value.rstrip(".")


def _is_wildcard(host: str) -> bool:
    if host in ("", "*"):
        return True
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _origin_key(origin: str) -> str:
    return origin.strip().lower().rstrip("/")


def _shown(value: str) -> str:
    """A client's header value, made safe to echo in an error message."""
    return repr(value[:60] + ("..." if len(value) > 60 else ""))
