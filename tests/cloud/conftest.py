"""Fixtures for the cloud tests: a fresh database per test, a running collector, an API client."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import psycopg
import pytest

from chargesight.cloud.collector import Collector
from chargesight.cloud.config import CloudConfig
from chargesight.cloud.db import Database, open_database
from tests.cloud.helpers import Publisher
from tests.servers import Mosquitto, Postgres

OPERATOR = "operator-token-123"
VIEWER = "viewer-token-456"


@pytest.fixture
def fresh_db(postgres: Postgres) -> Iterator[str]:
    """A new, empty database on the session's PostgreSQL server; dropped afterwards."""
    name = f"cs_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield postgres.url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(postgres.url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def make_config(db_url: str, mqtt_url: str, **analysis: object) -> CloudConfig:
    return CloudConfig.model_validate(
        {
            "database": {"url": db_url},
            "mqtt": {"url": mqtt_url, "shared_group": f"g{uuid.uuid4().hex[:6]}"},
            "api": {
                "listen": "127.0.0.1:0",
                "tokens": [
                    {"token": OPERATOR, "role": "operator", "name": "olga"},
                    {"token": VIEWER, "role": "viewer"},
                ],
            },
            "analysis": {"refresh_interval_s": 3600, "running_total_every_s": 0, **analysis},
            "ingest": {"batch_delay_s": 0.01},
        }
    )


@pytest.fixture
async def database(fresh_db: str) -> AsyncIterator[Database]:
    db = await open_database(fresh_db, max_size=4)
    try:
        yield db
    finally:
        await db.close()


@dataclass
class Running:
    collector: Collector
    api: httpx.AsyncClient
    publisher: Publisher
    config: CloudConfig

    def headers(self, token: str = VIEWER) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def get(self, path: str, token: str = VIEWER) -> httpx.Response:
        return await self.api.get(f"/api/v1{path}", headers=self.headers(token))


async def start_collector(
    config: CloudConfig, db: Database
) -> tuple[Collector, asyncio.Task[None]]:
    collector = Collector(config, db)
    ready = asyncio.Event()
    task = asyncio.create_task(collector.serve(ready))
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        waiter.cancel()
        if task.done():
            task.result()
        raise TimeoutError("collector did not become ready")
    return collector, task


@pytest.fixture
async def running(database: Database, mosquitto: Mosquitto) -> AsyncIterator[Running]:
    config = make_config(database.url, mosquitto.url, recurring_min_incidents=20)
    collector, task = await start_collector(config, database)
    pub = await asyncio.to_thread(Publisher, mosquitto.url)
    api = httpx.AsyncClient(base_url=f"http://127.0.0.1:{collector.api_port}", timeout=10)
    try:
        yield Running(collector, api, pub, config)
    finally:
        await api.aclose()
        await asyncio.to_thread(pub.close)
        collector.stop()
        await asyncio.wait_for(task, 20)
