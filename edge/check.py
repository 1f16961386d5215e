"""``chargesight edge check``: can this gateway do its job with this config?

The config was already validated when it was loaded (bad keys exit 2 before
we get here). This checks the world around it and says, in words an installer
can act on, what is wrong: the OCPP port is free, the storage directory is
writable with room to spare, the CSMS answers a WebSocket handshake with our
subprotocols, the MQTT broker accepts a connection. Exit 0 only when all is well.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from chargesight.common.configload import parse_host_port
from chargesight.edge.config import EdgeConfig

MIN_FREE_BYTES = 200 * 1024 * 1024

Check = Callable[[EdgeConfig], Awaitable[str]]


class CheckFailed(Exception):
    """What is wrong and what to do about it."""


async def check_listen(config: EdgeConfig) -> str:
    host, port = parse_host_port(config.ocpp.listen)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise CheckFailed(
                f"ocpp.listen {config.ocpp.listen}: cannot listen there ({exc.strerror}); "
                "is another agent already running, or is the address not on this machine?"
            ) from exc
    return f"ocpp.listen {config.ocpp.listen} is free"


async def check_storage(config: EdgeConfig) -> str:
    directory = config.storage.path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckFailed(
            f"storage.path: cannot create {directory} ({exc.strerror}); create it and give the "
            "agent's user write access"
        ) from exc
    if not os.access(directory, os.W_OK):
        raise CheckFailed(f"storage.path: {directory} is not writable by this user")
    free = shutil.disk_usage(directory).free
    if free < MIN_FREE_BYTES:
        raise CheckFailed(
            f"storage.path: only {free // 2**20} MiB free on {directory}; the agent needs at "
            f"least {MIN_FREE_BYTES // 2**20} MiB for its OCPP log and queues"
        )
    return f"storage {config.storage.path} is writable ({free // 2**30} GiB free)"


async def check_csms(config: EdgeConfig) -> str:
    url = config.ocpp.upstream.replace("{charge_point_id}", "chargesight-check")
    ctx: ssl.SSLContext | None = None
    if url.startswith("wss://"):
        tls = config.ocpp.upstream_tls
        ctx = ssl.create_default_context(cafile=str(tls.cafile) if tls and tls.cafile else None)
    try:
        async with connect(
            url,
            subprotocols=[Subprotocol(s) for s in config.ocpp.subprotocols],
            open_timeout=config.ocpp.open_timeout_s,
            ssl=ctx,
            compression=None,
        ) as ws:
            chosen = ws.subprotocol
    except InvalidStatus as exc:
        code = exc.response.status_code
        if code in (401, 403):
            return (
                f"CSMS at {urlsplit(url).netloc} is reachable (it refused the test id with "
                f"HTTP {code}, as it should for an unknown charge point)"
            )
        if code == 404:
            return f"CSMS at {urlsplit(url).netloc} is reachable (HTTP 404 for the test id)"
        raise CheckFailed(
            f"ocpp.upstream: the CSMS answered HTTP {code}; check the URL path"
        ) from exc
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        raise CheckFailed(
            f"ocpp.upstream: cannot reach the CSMS at {urlsplit(url).netloc} "
            f"({exc or type(exc).__name__}); check the address, the port and the firewall"
        ) from exc
    if chosen is None:
        raise CheckFailed(
            f"ocpp.upstream: the CSMS accepted the connection but none of {list(config.ocpp.subprotocols)}"
        )
    return f"CSMS at {urlsplit(url).netloc} answers and speaks {chosen}"


async def check_broker(config: EdgeConfig) -> str:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    parts = urlsplit(config.mqtt.url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    done = threading.Event()
    result: dict[str, object] = {}

    def on_connect(
        client: mqtt.Client, userdata: object, flags: object, reason: object, props: object = None
    ) -> None:
        result["reason"] = reason
        done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"chargesight-check-{os.getpid()}")
    if config.mqtt.username:
        client.username_pw_set(config.mqtt.username, config.mqtt.password)
    if parts.scheme == "mqtts":
        client.tls_set(ca_certs=str(config.mqtt.cafile) if config.mqtt.cafile else None)
    client.on_connect = on_connect

    def attempt() -> None:
        try:
            client.connect(host, port, keepalive=10)
        except OSError as exc:
            result["error"] = exc
            done.set()
            return
        client.loop_start()
        done.wait(5)
        client.disconnect()
        client.loop_stop()

    await asyncio.to_thread(attempt)
    if "error" in result:
        raise CheckFailed(
            f"mqtt.url: cannot reach the broker at {host}:{port} ({result['error']}); "
            "escalations will queue locally until it is reachable"
        )
    reason = result.get("reason")
    if reason is None:
        raise CheckFailed(f"mqtt.url: the broker at {host}:{port} did not answer within 5 s")
    if getattr(reason, "is_failure", False):
        raise CheckFailed(
            f"mqtt.url: the broker at {host}:{port} refused us: {reason}; check username/password"
        )
    return f"MQTT broker at {host}:{port} accepts the agent"


CHECKS: list[tuple[str, Check]] = [
    ("listen", check_listen),
    ("storage", check_storage),
    ("csms", check_csms),
    ("broker", check_broker),
]


async def check(config: EdgeConfig) -> int:
    print(f"config for site {config.site.id} is valid")
    if config.site.price_per_kwh == 0:  # not a failure: the site works, its costs read 0
        print(
            "warn  site.price_per_kwh is 0: the cloud prices outages at the tariff this agent"
            " sends, so every revenue figure for this site will be 0"
        )
    uplink = config.uplink
    if uplink.configuration_keys and "configuration_change" not in uplink.allowed_requests:
        print(
            "warn  uplink.configuration_keys is set but uplink.allowed_requests does not"
            ' include "configuration_change": the cloud cannot change any charger setting'
        )
    ok = True
    for _name, fn in CHECKS:
        try:
            message = await fn(config)
        except CheckFailed as exc:
            ok = False
            print(f"FAIL  {exc}")
        except Exception as exc:  # a check that crashes is a failed check, said plainly
            ok = False
            print(f"FAIL  {_name}: unexpected error {exc!r}")
        else:
            print(f"ok    {message}")
    print("all checks passed" if ok else "some checks failed: fix the lines marked FAIL")
    return 0 if ok else 1
