"""Fixtures for edge tests: a real CSMS (ocpp library) and the proxy in front of it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from chargesight.common.configload import validate_config
from chargesight.common.events import Event
from chargesight.edge.config import EdgeConfig
from chargesight.edge.ocpplog import OcppLog
from chargesight.edge.proxy import Proxy
from tests.peers import TestCsms


def edge_config(tmp_path: Path, upstream: str, **sections: dict[str, Any]) -> EdgeConfig:
    data: dict[str, Any] = {
        "site": {"id": "test-site", "currency": "EUR", "price_per_kwh": 0.5},
        "ocpp": {
            "listen": "127.0.0.1:0",
            "upstream": upstream,
            "reconnect_min_s": 0.05,
            "reconnect_max_s": 0.2,
            "call_timeout_s": 5,
        },
        "mqtt": {"url": "mqtt://127.0.0.1:1"},
        "storage": {"path": str(tmp_path / "edge.sqlite")},
        "recovery": {"window_s": 20},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return validate_config(EdgeConfig, data, environ={})


@pytest.fixture
async def csms() -> AsyncIterator[TestCsms]:
    async with TestCsms() as server:
        yield server


class ProxyFactory:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.proxies: list[Proxy] = []
        self.logs: list[OcppLog] = []
        self.events: list[Event] = []

    async def __call__(self, upstream: str, **sections: dict[str, Any]) -> Proxy:
        config = edge_config(self.tmp_path, upstream, **sections)
        log = OcppLog(config.storage.path)
        await log.open()
        self.logs.append(log)
        proxy = Proxy(config, frame_log=log)
        proxy.subscribe(self.events.append)
        await proxy.start()
        self.proxies.append(proxy)
        return proxy

    async def close(self) -> None:
        for p in self.proxies:
            await p.close()
        for log in self.logs:
            await log.close()


@pytest.fixture
async def make_proxy(tmp_path: Path) -> AsyncIterator[ProxyFactory]:
    factory = ProxyFactory(tmp_path)
    try:
        yield factory
    finally:
        await factory.close()


@pytest.fixture
async def proxy(make_proxy: ProxyFactory, csms: TestCsms) -> Proxy:
    return await make_proxy(csms.url)


def cp_url(proxy: Proxy) -> str:
    return f"ws://127.0.0.1:{proxy.port}/ocpp"


EventFilter = Callable[[Event], bool]
