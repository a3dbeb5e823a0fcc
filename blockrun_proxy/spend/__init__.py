"""Where the money went: the spend ledger, ``GET /v1/spend``, the ``/spend`` page.

- ``records``: one ledger line per paid (or refused) call, made from its Exchange;
- ``ledger``: the store interface, and which store the settings choose;
- ``sqlite_ledger`` / ``redis_ledger``: a local file (or memory), or the fleet's Redis;
- ``recorder``: takes records from the request path without waiting, writes in batches;
- ``summary``: totals per model and hour, the JSON document and the terminal table;
- ``routes``: the JSON route, the page and its static files (``static/``).
"""
