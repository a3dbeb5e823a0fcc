"""Where a request goes: straight to the origin, or through an ``http://`` proxy.

Which proxy an origin uses (HTTPS_PROXY, HTTP_PROXY, NO_PROXY) is the caller's decision,
given to the client as a function of the origin (the proxy's own ``egress.proxy_for``):
this module only turns the proxy URL it answers into where to connect and what
credentials to send. ``https://`` origins go through a ``CONNECT`` tunnel (the proxy
sees only the host name), ``http://`` origins are sent to the proxy in absolute form.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

# The proxy URL for an origin (``scheme://host:port``), or None to connect directly.
ProxyFor = Callable[[str], "str | None"]


@dataclass(frozen=True, slots=True)
class Proxy:
    """An ``http://`` proxy: where to connect, and the credentials it wants, if any."""

    host: str
    port: int
    authorization: str | None = None  # the Proxy-Authorization value

    @classmethod
    def parse(cls, url: str) -> Proxy:
        if "://" not in url:
            url = "http://" + url  # "proxy:3128", as curl accepts it
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"only http:// proxies are supported, got {parts.scheme}://")
        authorization = None
        if parts.username is not None:
            user_pass = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            authorization = "Basic " + base64.b64encode(user_pass.encode()).decode("ascii")
        return cls(parts.hostname, parts.port or 80, authorization)


def authority(host: str, port: int) -> str:
    """``host:port``, an IPv6 host in brackets (as CONNECT and URLs want it)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


def origin_url(scheme: str, host: str, port: int) -> str:
    """``scheme://host:port``, an IPv6 host in brackets."""
    return f"{scheme}://{authority(host, port)}"
