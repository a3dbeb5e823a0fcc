"""Helpers shared by the tests: one module per concern, one ``post()``, one name per model.

- ``calls``: the test network and models, request bodies, ``post``/``get`` (one ``Reply``);
- ``payments``: what was signed and sent (nonces per call), warming the quote model up;
- ``servers``: gateway stand-ins, waiting on shared state, free ports, subprocess env;
- ``process``: the proxy as a real ``python -m blockrun_proxy serve`` process;
- ``clients``: the README's snippets, LiteLLM's cost log, a proxy stack on its own loop;
- ``gateway_client``: an x402 client built on eth_account, to test the fake gateway directly;
- ``tls``, ``connect_proxy``: a certificate authority and a CONNECT proxy on loopback;
- ``solana``, ``svm``, ``eip712``, ``redis_server``: the rails' and the fleet's references.
"""
