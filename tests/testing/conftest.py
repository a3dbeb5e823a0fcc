"""Fixtures for the fake gateway's tests."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient
from support.gateway_client import Payer

from blockrun_proxy.testing import FakeGateway


@pytest.fixture
def gw() -> FakeGateway:
    return FakeGateway(stream_events=5)


@pytest.fixture
async def client(gw: FakeGateway, aiohttp_client: AiohttpClient) -> TestClient:
    return await aiohttp_client(gw.app)


@pytest.fixture
def payer() -> Payer:
    return Payer()
