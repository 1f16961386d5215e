"""Session-wide real servers (Mosquitto, PostgreSQL) for the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import Mosquitto, Postgres, start_mosquitto, start_postgres


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[Mosquitto]:
    """One broker for the session. Tests that stop the broker use ``mosquitto_private``."""
    broker = start_mosquitto()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mosquitto_private() -> Iterator[Mosquitto]:
    """A broker of the test's own, free to stop and restart."""
    broker = start_mosquitto()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()
