"""A small HTTP/1.1 client for relaying the gateway's answers: httptools' llhttp parser,
a bounded keep-alive pool, TLS, tunnels through an egress proxy, bodies handed over as
received.

Public names: ``Client``, ``Limits``, ``Timeouts``, ``Response``, ``Body`` and the
errors. See ``client.py`` for what it does and leaves out.
"""

from blockrun_proxy.h1.client import Client, Limits, Timeouts
from blockrun_proxy.h1.connection import Body, Response
from blockrun_proxy.h1.errors import (
    ConnectError,
    ConnectionDropped,
    ConnectTimeout,
    HeadTooLarge,
    HTTPError,
    ReadTimeout,
    RemoteProtocolError,
)

__all__ = [
    "Body",
    "Client",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionDropped",
    "HTTPError",
    "HeadTooLarge",
    "Limits",
    "ReadTimeout",
    "RemoteProtocolError",
    "Response",
    "Timeouts",
]
