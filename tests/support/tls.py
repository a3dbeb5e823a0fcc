"""TLS on loopback: a throwaway certificate authority, and the fake gateway served over HTTPS.

The CA (trustme) is made per test and trusted only through ``SSL_CERT_FILE`` /
``Settings.ssl_cert_file``, as a cluster's own CA would be; nothing is written outside
the test's temporary directory.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme
from aiohttp import web

from blockrun_proxy.testing import FakeGateway

# The name the certificate is issued for (and the gateway URL uses).
HOST = "localhost"


class TLSGateway:
    """``gateway`` served over HTTPS on loopback with a certificate from a fresh CA."""

    def __init__(self, gateway: FakeGateway, directory: Path) -> None:
        self.gateway = gateway
        self.ca = trustme.CA()
        self.ca_file = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> str:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(HOST, "127.0.0.1").configure_cert(context)
        runner = web.AppRunner(self.gateway.app, access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self._runner = runner
        self.port = runner.addresses[0][1]
        # What FakeGateway.start would have set: the URL clients (the proxy) use.
        self.gateway.base_url = f"https://{HOST}:{self.port}{self.gateway.prefix}"
        return self.gateway.base_url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
