"""``chargesight edge status``: what the running agent is doing, from its status snapshot."""

from __future__ import annotations

import time

import orjson

from chargesight.edge.agent import status_path
from chargesight.edge.config import EdgeConfig


def status(config: EdgeConfig) -> int:
    path = status_path(config)
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        print(f"no status at {path}: is the agent running (chargesight edge run)?")
        return 1
    except orjson.JSONDecodeError:
        print(f"status file {path} is unreadable; try again in a moment")
        return 1
    age = time.time() - float(data.get("updated_at", 0))
    running = data.get("running", False) and age < 30
    print(
        f"site {data.get('site_id')}: agent {'running' if running else 'NOT running'}"
        f" (pid {data.get('pid')}, status {age:.0f}s old)"
    )
    ocpp = data.get("ocpp", {})
    connected = ocpp.get("connected", [])
    print(f"charge points connected: {len(connected)} (listen {ocpp.get('listen')})")
    for cp in connected:
        up = "CSMS connected" if cp.get("upstream_connected") else "CSMS UNREACHABLE"
        print(f"  {cp['charge_point_id']:<24} OCPP {cp['ocpp']:<6} {up}")
    for section in ("recovery", "uplink", "offline"):
        if section in data:
            print(f"{section}: {orjson.dumps(data[section]).decode()}")
    return 0 if running else 1
