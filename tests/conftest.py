"""Fixtures shared by every test: a real nats-server per test, on a free port, controlled by the test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from modelbus.config import NatsSettings
from modelbus.runtime.embedded_nats import EmbeddedNats
from modelbus.runtime.logging import configure_logging
from modelbus.runtime.nats_client import connected


def pytest_configure(config: pytest.Config) -> None:
    configure_logging("debug", "json")


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[EmbeddedNats]:
    """A real nats-server with JetStream on a free loopback port; tests may stop, kill and restart it."""
    async with EmbeddedNats(tmp_path / "nats") as server:
        yield server


@pytest.fixture
async def nc(nats_server: EmbeddedNats) -> AsyncIterator[Client]:
    async with connected(NatsSettings(), nats_server.url, name="test") as client:
        yield client
