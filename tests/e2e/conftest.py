"""Fixtures for the real-client tests.

LiteLLM fetches its model price map from the internet at import unless told to use
the copy it ships; these tests have no internet, so that is set here, before any
test module imports litellm (conftest files load first).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from clients_support import CostLog

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_TELEMETRY", "False")


@pytest.fixture
def cost_log() -> Iterator[CostLog]:
    import litellm

    log = CostLog()
    saved = list(litellm.callbacks)
    litellm.callbacks = [*saved, log.callback]
    yield log
    litellm.callbacks = saved
