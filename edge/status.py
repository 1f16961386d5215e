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
    except OSError as exc:  # a directory, or written by the service as another user
        print(f"status file {path} cannot be read: {exc.strerror or exc}")
        return 1
    if not isinstance(data, dict):
        print(f"status file {path} is not an agent's status")
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
    held = data.get("held_uncommitted") or 0
    if held:
        print(f"ALARM {held} message(s) held in memory: the outbox cannot commit (disk full?)")
    rec = data.get("recovery") or {}
    incidents = rec.get("open_incidents") or []
    print(f"open incidents: {len(incidents)}")
    for inc in incidents:
        where = (
            inc.get("charge_point_id") or f"site ({len(inc.get('chargers') or [])} charge points)"
        )
        if inc.get("connector_id") is not None:
            where += f" connector {inc['connector_id']}"
        fault = inc.get("fault") or {}
        steps = (
            ", ".join(f"{s['action']}→{s['result']}" for s in inc.get("steps") or []) or "none yet"
        )
        print(
            f"  {where}: {fault.get('code')} ({fault.get('category')}) since {inc.get('started_at')}"
            f" — {inc.get('outcome')}, {inc.get('window_left_s')}s of window left; steps: {steps}"
        )
    actions = rec.get("recent_actions") or []
    print(f"recent actions: {len(actions)}")
    for a in actions[-10:]:
        print(
            f"  {a.get('at')} {a.get('charge_point_id') or ''} {a.get('action')} → {a.get('result')}"
        )
    if rec.get("maintenance"):
        print(f"in maintenance (never acted on): {', '.join(rec['maintenance'])}")
    uplink = data.get("uplink") or {}
    if uplink:
        state = "connected" if uplink.get("connected") else "NOT connected"
        print(
            f"uplink: {state} to {uplink.get('broker')} (MQTT {uplink.get('protocol')}), "
            f"{uplink.get('queued')} queued, {uplink.get('delivered')} delivered"
            + (f", last error: {uplink['last_error']}" if uplink.get("last_error") else "")
        )
        for alarm in uplink.get("alarms") or []:
            print(f"  ALARM {alarm}")
    off = data.get("offline") or {}
    if off:
        print(
            f"offline mode {off.get('mode')}: {off.get('queued', 0)} messages queued for the CSMS, "
            f"{off.get('parked', 0)} parked"
        )
        for alarm in off.get("alarms") or []:
            print(f"  ALARM {alarm.get('charge_point_id')}: {alarm.get('message')}")
    return 0 if running else 1
