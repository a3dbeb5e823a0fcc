"""What can go wrong talking HTTP/1.1 to the upstream, split by what it means for a payment.

The split that matters to the caller (upstream.py's one-nonce-per-call rules) is whether
any byte of the request may have reached the server:

- ``ConnectError``: no connection was made (DNS, refused, TLS handshake, the proxy
  refused the tunnel, no pooled connection in time). Nothing was sent.
- everything else was raised after the request was written: the server may have acted
  on it (``ConnectionDropped``, ``RemoteProtocolError``, ``ReadTimeout``).
"""

from __future__ import annotations


class HTTPError(Exception):
    """Any failure of the h1 client."""


class ConnectError(HTTPError):
    """No connection to the server (or through the proxy): the request was not sent."""


class ConnectTimeout(ConnectError, TimeoutError):
    """No connection (or no free pooled one) within the connect timeout: nothing was sent.
    A TimeoutError too, as aiohttp's ConnectionTimeoutError is: callers that answer a
    timeout as such do so for either client."""


class ConnectionDropped(HTTPError):
    """The connection closed or reset after the request was (maybe partly) sent."""


class RemoteProtocolError(HTTPError):
    """The server's bytes are not valid HTTP/1.1 (a bad status line, chunk, or length)."""


class HeadTooLarge(RemoteProtocolError):
    """The answer's status line and headers are longer than the client accepts."""


class ReadTimeout(HTTPError, TimeoutError):
    """No byte from the server for the idle limit while a response was awaited."""
