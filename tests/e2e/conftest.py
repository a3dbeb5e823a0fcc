"""Fixtures for the real-client tests.

LiteLLM fetches its model price map from the internet at import unless told to use
the copy it ships; these tests have no internet, so that is set here, before any
test module imports litellm (conftest files load first).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from support.clients import CostLog

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_TELEMETRY", "False")


@pytest.fixture(scope="session")
def _session_cost_log() -> CostLog:
    # Installed once: LiteLLM copies litellm.callbacks into its own lists on first use,
    # so swapping the list per test would leave stale recorders behind.
    import litellm

    log = CostLog()
    litellm.callbacks = [*litellm.callbacks, log.callback]
    return log


@pytest.fixture
def cost_log(_session_cost_log: CostLog) -> Iterator[CostLog]:
    """The costs LiteLLM records for the calls of this test."""
    log = _session_cost_log
    log.costs.clear()
    log.armed = True
    yield log
    log.armed = False
    log.costs.clear()
