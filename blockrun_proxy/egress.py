"""How the gateway is reached from where the proxy runs: an egress proxy, a CA bundle.

Sidecars in company clusters often reach the internet through an HTTP proxy
(``HTTPS_PROXY``, with ``NO_PROXY`` for what stays inside) and trust a company CA
(``SSL_CERT_FILE`` / ``SSL_CERT_DIR``). ``config``/``options`` read those variables
(the only readers of the environment); this module turns them into what the upstream
session uses:

- ``proxy_for(url)``: the proxy for one origin, decided once per gateway, not per
  request (aiohttp's ``trust_env`` would rescan the whole environment on every call);
  ``https://`` origins go through a ``CONNECT`` tunnel, so the proxy sees only the host
  name, never a payment header. ``NO_PROXY`` follows urllib's and curl's rules:
  comma-separated host names matched exactly or as a domain suffix, a leading dot
  ignored, ``name:port`` only on that port, ``*`` for every host;
- ``ssl_context(settings)``: a verifying context on the configured CA bundle or
  directory, or None for the default (the system's, which aiohttp has already built:
  loading a CA bundle costs startup time, so it is done only when asked for);
  ``ssl_context_factory(settings)`` builds it later, at the h1 client's first https
  connection.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Callable
from urllib.parse import urlsplit

from blockrun_proxy.config import Settings


def proxy_for(settings: Settings, url: str) -> str | None:
    """The proxy URL to reach ``url`` through, or None to connect directly."""
    parts = urlsplit(url)
    proxy = settings.https_proxy if parts.scheme == "https" else settings.http_proxy
    if not proxy:
        return None
    host = (parts.hostname or "").lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if settings.no_proxy and bypasses(settings.no_proxy, host, port):
        return None
    return proxy if "://" in proxy else "http://" + proxy  # "proxy:3128", as curl takes it


def bypasses(no_proxy: str, host: str, port: int) -> bool:
    """Whether ``NO_PROXY`` names ``host`` (on ``port``)."""
    if no_proxy.strip() == "*":
        return True
    host = host.lower().strip("[]")
    for entry in no_proxy.split(","):
        name = entry.strip().lower().lstrip(".")
        if not name:
            continue
        only_port = ""
        head, sep, tail = name.rpartition(":")
        if sep and tail.isdigit() and (head.endswith("]") or ":" not in head):
            name, only_port = head, tail
        if only_port and only_port != str(port):
            continue
        name = name.strip("[]")
        if host == name or host.endswith("." + name):
            return True
    return False


def ssl_context_factory(settings: Settings) -> Callable[[], ssl.SSLContext] | None:
    """``ssl_context`` to build when it is first needed (the h1 client's first https
    connection): loading a CA bundle takes ~20 ms, which is startup time when built with
    the app. None: the default context."""
    if not settings.ssl_cert_file and not settings.ssl_cert_dir:
        return None
    return functools.partial(_context_on, settings.ssl_cert_file, settings.ssl_cert_dir)


def _context_on(cafile: str | None, capath: str | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cafile or None, capath=capath or None)


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """A verifying context on ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``; None: the default one."""
    if not settings.ssl_cert_file and not settings.ssl_cert_dir:
        return None
    return ssl.create_default_context(
        cafile=settings.ssl_cert_file or None, capath=settings.ssl_cert_dir or None
    )
