"""The wallet's life outside a payment: its key file, its funds on chain, its Permit2 approval.

Signing payments is the payer's (payer.py); this package creates the key
(``keyfile``), reads the wallet's USDC, Permit2 allowance and ETH (``chain``), watches
the balance while serving (``watcher``), and sends the one bounded approval the upto
scheme needs (``approve``). ``cli`` is the ``blockrun-proxy wallet`` command group.

Nothing is imported here: ``blockrun-proxy`` loads ``wallet.cli`` at startup, and the RPC
client (aiohttp) should load only in the command that talks to a chain.
"""
