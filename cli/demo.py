"""``chargesight demo``: a whole simulated network, understood, on one machine.

This is orchestration only (the one place, with :mod:`.main`, that imports
every part). Everything it starts is the production code path, as separate
processes, as on real sites:

1. a private Mosquitto broker (the system's ``mosquitto`` binary);
2. months of history from the fleet simulator, imported into the cloud
   collector's private PostgreSQL (``[database] url = "embedded"``), so that
   baselines, fleet statistics and recurring problems exist;
3. the cloud collector and API (``chargesight cloud run``);
4. one edge agent per live site (``chargesight edge run``), in front of a
   local CSMS built on the ``ocpp`` library;
5. the simulator's charge points for the live sites, connected through their
   site's agent, with the scenario's faults going on and a few more injected.

Recovery windows are shortened (``--window``, stated in the output); nothing
else differs from production. At the end it prints what was found — the
line ``self-resolved: N``, one line per escalated issue containing the word
``escalated``, the network view — and a scorecard against the simulator's
ground truth. With ``--serve`` the API stays up until Ctrl-C. Ctrl-C at any
point stops every process and removes the temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
from rich.console import Console
from rich.live import Live
from rich.table import Table

from chargesight.sim import Csms, Simulation, generate_history, load_scenario
from chargesight.sim.cli import finite_positive
from chargesight.sim.scenario import Scenario, ScenarioError

console = Console(highlight=False)

# What the live phase injects on top of the scenario's own faults: (kind, how many units).
# Transient and stuck faults are the everyday ones a reset fixes.
LIVE_INJECTIONS: tuple[tuple[str, int], ...] = (("transient", 3), ("stuck", 2))


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_mosquitto() -> str:
    for candidate in (
        shutil.which("mosquitto"),
        "/usr/sbin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ):
        if candidate and os.path.exists(candidate):
            return candidate
    raise DemoError(
        "the demo needs the Mosquitto MQTT broker: `make demo` installs it "
        "(or: apt-get install mosquitto)"
    )


class DemoError(Exception):
    pass


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


@dataclass
class Children:
    """Every process the demo starts; stopped in reverse order, always."""

    items: list[Child] = field(default_factory=list)

    def start(
        self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None
    ) -> Child:
        out = log.open("wb")
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # Ctrl-C reaches the demo, which stops them in order
        )
        out.close()
        child = Child(name, proc, log)
        self.items.append(child)
        return child

    def stop(self, child: Child, timeout: float = 10.0) -> None:
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
            try:
                child.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait(5)

    def stop_all(self) -> None:
        for child in reversed(self.items):
            with contextlib.suppress(Exception):
                self.stop(child)
        self.items.clear()

    def pids(self) -> list[int]:
        return [c.proc.pid for c in self.items if c.alive()]


async def wait_port(port: int, child: Child, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            raise DemoError(f"{child.name} exited early:\n{child.tail()}")
        try:
            _r, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise DemoError(f"{child.name} did not open port {port} within {timeout:.0f}s:\n{child.tail()}")


def rss_kib(pids: Sequence[int]) -> int:
    """Resident memory of these processes and their children (Linux /proc)."""
    total = 0
    seen: set[int] = set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        with contextlib.suppress(OSError):
            for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
                todo.append(int(child))
    return total


# ---------------------------------------------------------------- options


@dataclass
class Options:
    scenario: str = "demo"
    history_days: float = 60.0
    duration_s: float = 120.0
    speed: float = 30.0
    window_s: float = 30.0
    live_sites: int = 6
    serve: bool = False
    seed: int | None = None
    keep: bool = False
    quiet: bool = False


def parse_args(argv: Sequence[str]) -> Options:
    p = argparse.ArgumentParser(
        prog="chargesight demo",
        description="Run a simulated charging network through real edge agents and the cloud.",
    )
    p.add_argument("--scenario", default="demo", help="small | demo | a scenario TOML file")
    p.add_argument(
        "--history-days", type=finite_positive, default=60.0, help="days of back-filled history"
    )
    p.add_argument("--duration", type=float, default=120.0, help="live run, seconds of wall time")
    p.add_argument("--speed", type=float, default=30.0, help="simulated seconds per real second")
    p.add_argument("--window", type=float, default=30.0, help="recovery window, seconds (>= 20)")
    p.add_argument("--live-sites", type=int, default=6, help="sites run live, one agent each")
    p.add_argument("--serve", action="store_true", help="keep the API up at the end until Ctrl-C")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--keep", action="store_true", help="keep the working directory")
    p.add_argument("--quiet", action="store_true", help="no live table (for logs and tests)")
    a = p.parse_args(list(argv))
    if a.window < 20:
        p.error("--window must be >= 20 (recovery.window_s)")
    if a.duration <= 0 or a.speed <= 0 or a.history_days <= 0 or a.live_sites < 1:
        p.error("--duration, --speed, --history-days and --live-sites must be positive")
    return Options(
        a.scenario,
        a.history_days,
        a.duration,
        a.speed,
        a.window,
        a.live_sites,
        a.serve,
        a.seed,
        a.keep,
        a.quiet,
    )


# ---------------------------------------------------------------- the demo


def chargesight_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "chargesight.cli.main", *args]


def pick_live_sites(scenario: Scenario, n: int) -> list[str]:
    """The sites whose faults tell the story first, then the biggest others."""
    data = scenario.data
    score: dict[str, float] = {}
    network = scenario.network()
    by_cp = {c.id: s.id for s in network.sites for c in s.chargers}
    for f in data.faults:
        site = getattr(f, "site", None)
        targets = [site] if site else []
        for cp in [getattr(f, "charge_point", None), *(getattr(f, "charge_points", None) or [])]:
            if cp and cp in by_cp:
                targets.append(by_cp[cp])
        model = getattr(f, "model", None)
        if model:
            targets += [s.id for s in network.sites if any(c.hw.key == model for c in s.chargers)][
                :1
            ]
        for t in targets:
            score[t] = score.get(t, 0.0) + 3
    for s in network.sites:
        score[s.id] = score.get(s.id, 0.0) + len(s.chargers) / 100
    return sorted(score, key=lambda sid: -score[sid])[:n]


def merge_truth(history_file: Path, live: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The live run's faults, with what each already cost during the history added in.

    A fault the live run carried over from the history has the same ``fault_id``
    in both; its revenue lost is the sum of the two periods. The history's other
    faults follow, marked ``history_only``.
    """
    past: dict[str, dict[str, Any]] = {}
    with contextlib.suppress(OSError), history_file.open("rb") as f:
        for line in f:
            rec = orjson.loads(line)
            past[rec["fault_id"]] = rec
    out = []
    for rec in live:
        before = past.pop(rec.get("fault_id", ""), None)
        if before is not None:
            amount = float((before.get("revenue_lost") or {}).get("amount") or 0) + float(
                (rec.get("revenue_lost") or {}).get("amount") or 0
            )
            rec = {**rec, "revenue_lost": {**(rec.get("revenue_lost") or {}), "amount": amount}}
        out.append(rec)
    # faults of sites that only have a history (not live): issues about them are real too
    out.extend({**rec, "history_only": True} for rec in past.values())
    return out


@dataclass
class DemoRun:
    opts: Options
    workdir: Path
    children: Children = field(default_factory=Children)
    token: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    api_url: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    peak_rss_kib: int = 0
    agents: dict[str, Path] = field(default_factory=dict)  # site → status file
    first_escalation_s: float | None = None
    baseline_issue_ids: set[str] = field(default_factory=set)  # issues the history alone made
    sim_now: datetime | None = None  # the simulation's clock when the live run ended
    t0: float = field(default_factory=time.monotonic)

    def say(self, text: str) -> None:
        console.print(text)

    def mark(self, name: str) -> None:
        self.timings[name] = time.monotonic() - self.t0

    def sample_rss(self) -> None:
        self.peak_rss_kib = max(self.peak_rss_kib, rss_kib([os.getpid(), *self.children.pids()]))

    # ------------------------------------------------------------ set-up

    def start_broker(self) -> int:
        port = free_port()
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_queued_messages 100000\n"
        )
        self.broker = self.children.start(
            "mosquitto", [find_mosquitto(), "-c", str(conf)], self.workdir / "mosquitto.log"
        )
        return port

    def write_cloud_config(self, mqtt_port: int) -> tuple[Path, int]:
        api_port = free_port()
        cfg = self.workdir / "cloud.toml"
        cfg.write_text(
            f"""
[database]
url = "embedded"
path = "{self.workdir / "pg"}"

[mqtt]
url = "mqtt://127.0.0.1:{mqtt_port}"

[api]
listen = "127.0.0.1:{api_port}"
tokens = [{{ token = "{self.token}", role = "operator", name = "demo" }}]

[analysis]
recurring_min_incidents = 20
recurring_window_s = 604800
recurring_min_ratio_to_fleet = 5.0

[logging]
format = "json"
"""
        )
        return cfg, api_port

    def split_history(self, hist_dir: Path, sites: set[str]) -> dict[str, Path]:
        """This site's past digests for each live agent (``foresight.warm_from``)."""
        files = {sid: self.workdir / f"digests-{sid}.jsonl" for sid in sites}
        handles = {sid: p.open("wb") for sid, p in files.items()}
        try:
            with (hist_dir / "digests.jsonl").open("rb") as f:
                for line in f:
                    sid = orjson.loads(line).get("site_id")
                    if sid in handles:
                        handles[sid].write(line)
        finally:
            for h in handles.values():
                h.close()
        return files

    def write_edge_config(
        self, site: Any, csms_port: int, mqtt_port: int, warm_from: Path | None = None
    ) -> tuple[Path, int]:
        port = free_port()
        cfg = self.workdir / f"edge-{site.id}.toml"
        cfg.write_text(
            f"""
[site]
id = "{site.id}"
currency = "{site.spec.currency}"
price_per_kwh = {site.spec.price_per_kwh}

[ocpp]
listen = "127.0.0.1:{port}"
upstream = "ws://127.0.0.1:{csms_port}/csms/{{charge_point_id}}"
reconnect_min_s = 0.5
reconnect_max_s = 5

[mqtt]
url = "mqtt://127.0.0.1:{mqtt_port}"

[storage]
path = "{self.workdir / "edge" / site.id / "edge.sqlite"}"

[recovery]
window_s = {self.opts.window_s}
digest_interval_s = 15
max_resets_per_day = 6
flap_period_s = 20

[foresight]
{f'warm_from = "{warm_from}"' if warm_from else ""}

[logging]
format = "json"
"""
        )
        return cfg, port

    async def run(self) -> int:
        opts = self.opts
        scenario = load_scenario(opts.scenario)
        network = scenario.network()
        live_sites = pick_live_sites(scenario, opts.live_sites)
        live = [s for s in network.sites if s.id in live_sites]
        n_live_cps = sum(len(s.chargers) for s in live)
        self.say(
            f"[bold]chargesight demo[/]: scenario [cyan]{opts.scenario}[/] — "
            f"{len(network.sites)} sites, {sum(len(s.chargers) for s in network.sites)} charge points; "
            f"{opts.history_days:g} days of history, then {len(live)} sites ({n_live_cps} charge points) "
            f"live for {opts.duration_s:g}s at {opts.speed:g}x"
        )
        self.say(f"working directory: {self.workdir}")
        self.say(
            f"recovery window shortened to [bold]{opts.window_s:g}s[/] for the demo (production: 600s); "
            "everything else is the production code path"
        )

        # 1. broker
        mqtt_port = self.start_broker()
        await wait_port(mqtt_port, self.broker)
        self.mark("broker")

        # 2. history → cloud database
        t_live = datetime.now(UTC).replace(microsecond=0)
        history_start = t_live - timedelta(days=opts.history_days)
        hist_dir = self.workdir / "history"
        with console.status("simulating history…"):
            summary = await asyncio.to_thread(
                generate_history,
                scenario,
                opts.history_days,
                hist_dir,
                seed=opts.seed,
                start=history_start,
                window_s=opts.window_s,
            )
        self.say(
            f"history: {summary.sessions:,} sessions, {summary.faults} faults, "
            f"{summary.digests:,} digests, {summary.escalations} escalations "
            f"({history_start:%Y-%m-%d} → {t_live:%Y-%m-%d})"
        )
        cloud_cfg, api_port = self.write_cloud_config(mqtt_port)
        with console.status("starting PostgreSQL and importing the history…"):
            imp = await asyncio.to_thread(
                subprocess.run,
                chargesight_cmd(
                    "cloud", "import", "--config", str(cloud_cfg), "--dir", str(hist_dir)
                ),
                capture_output=True,
                text=True,
                timeout=600,
            )
        if imp.returncode != 0:
            raise DemoError(f"history import failed:\n{imp.stdout[-2000:]}\n{imp.stderr[-2000:]}")
        self.mark("history")

        # 3. cloud collector + API
        cloud = self.children.start(
            "cloud",
            chargesight_cmd("cloud", "run", "--config", str(cloud_cfg)),
            self.workdir / "cloud.log",
        )
        await wait_port(api_port, cloud, timeout=120)
        self.api_url = f"http://127.0.0.1:{api_port}"
        async with httpx.AsyncClient() as client:
            for _ in range(60):
                try:
                    data = await self.api(client, "/issues", status="open", limit=500)
                    break
                except httpx.HTTPError:
                    await asyncio.sleep(0.5)
            else:
                raise DemoError(f"the cloud API does not answer:\n{cloud.tail()}")
        self.baseline_issue_ids = {i["id"] for i in data["issues"]}
        self.say(
            f"cloud collector up; the history alone gave {len(self.baseline_issue_ids)} open issues"
        )
        self.mark("cloud")

        # 4. CSMS + one agent per live site
        csms_port = free_port()
        async with Csms("127.0.0.1", csms_port) as _csms:
            urls: dict[str, str] = {}
            warm = await asyncio.to_thread(self.split_history, hist_dir, {s.id for s in live})
            for site in live:
                cfg, port = self.write_edge_config(site, csms_port, mqtt_port, warm[site.id])
                child = self.children.start(
                    f"agent {site.id}",
                    chargesight_cmd("edge", "run", "--config", str(cfg)),
                    self.workdir / f"edge-{site.id}.log",
                )
                urls[site.id] = f"ws://127.0.0.1:{port}/ocpp"
                self.agents[site.id] = cfg.parent / "edge" / site.id / "edge.sqlite.status.json"
                await wait_port(port, child)
            self.mark("agents")
            self.say(f"{len(live)} edge agents up: {', '.join(s.id for s in live)}")

            # 5. the live network
            only = [c.id for s in live for c in s.chargers]
            async with Simulation(
                scenario,
                urls,
                speed=opts.speed,
                seed=opts.seed,
                start=history_start,
                offset_h=opts.history_days * 24,
                drivers=True,
                scheduled_faults=True,
                only=only,
            ) as sim:
                await sim.wait_connected(timeout=60)
                self.mark("connected")
                injected = self.inject_everyday_faults(sim, live)
                self.say(
                    f"{len(only)} charge points connected; injected {len(injected)} everyday faults "
                    "(transient, stuck) on top of the scenario's"
                )
                await self.watch(sim, opts.duration_s, len(only))
                # Let every open incident finish its window and reach the cloud.
                await self.settle(timeout=opts.window_s + 45)
                truth = merge_truth(hist_dir / "ground_truth.jsonl", sim.ground_truth())
                self.sim_now = sim.clock.now()
            self.mark("live")
            report = await self.fetch_report(live)
            self.print_report(report, truth, live, summary)
            if opts.serve:
                # The simulated chargers are gone: stop their agents too, or they would rightly
                # report the whole site as lost. The cloud, its database and the API stay up.
                for child in list(self.children.items):
                    if child.name.startswith("agent "):
                        self.children.stop(child)
                self.say(
                    f"\n[bold]console[/] {self.api_url}/console#token={self.token}"
                    f"\n[bold]API[/] {self.api_url}/api/v1  token: [bold]{self.token}[/]  "
                    f"(try: curl -H 'Authorization: Bearer {self.token}' {self.api_url}/api/v1/issues)\n"
                    "Ctrl-C to stop."
                )
                await asyncio.Event().wait()
        return 0

    def inject_everyday_faults(self, sim: Simulation, live: list[Any]) -> list[str]:
        done: list[str] = []
        busy = {cp for f in sim.faults for cp in f.charge_points}
        candidates = [c.id for s in live for c in s.chargers if c.id not in busy]
        i = 0
        for kind, count in LIVE_INJECTIONS:
            for _ in range(count):
                if i >= len(candidates):
                    break
                sim.inject(candidates[i], kind)  # type: ignore[arg-type]
                done.append(f"{kind}@{candidates[i]}")
                i += 1
        return done

    # ------------------------------------------------------------ watching

    def agent_status(self) -> list[dict[str, Any]]:
        out = []
        for path in self.agents.values():
            with contextlib.suppress(OSError, orjson.JSONDecodeError):
                out.append(orjson.loads(path.read_bytes()))
        return out

    async def api(self, client: httpx.AsyncClient, path: str, **params: Any) -> Any:
        r = await client.get(
            f"{self.api_url}/api/v1{path}",
            params=params,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=30,
        )
        r.raise_for_status()
        return r.json()

    def counts(self, statuses: list[dict[str, Any]]) -> tuple[int, int, int, int]:
        connected = open_ = selfres = escalated = 0
        for st in statuses:
            connected += len(st.get("ocpp", {}).get("connected", []))
            rec = st.get("recovery", {})
            open_ += len(rec.get("open_incidents", []))
            for o in [*rec.get("recent_outcomes", []), *rec.get("open_incidents", [])]:
                if o.get("outcome") == "self_resolved":
                    selfres += 1
                elif o.get("outcome") in ("escalated", "cleared"):
                    escalated += 1
            open_ -= sum(1 for i in rec.get("open_incidents", []) if i.get("outcome") != "running")
        return connected, open_, selfres, escalated

    async def watch(self, sim: Simulation, duration: float, total: int) -> None:
        deadline = time.monotonic() + duration
        async with httpx.AsyncClient() as client:

            def table(issues: int) -> Table:
                connected, open_, selfres, escalated = self.counts(self.agent_status())
                t = Table(title=f"live network — {max(0, deadline - time.monotonic()):.0f}s left")
                for col in (
                    "sites",
                    "charge points",
                    "open incidents",
                    "self-resolved",
                    "escalated",
                    "cloud issues",
                ):
                    t.add_column(col, justify="right")
                t.add_row(
                    str(len(self.agents)),
                    f"{connected}/{total}",
                    str(open_),
                    str(selfres),
                    str(escalated),
                    str(issues),
                )
                return t

            issues = 0
            live_cm: contextlib.AbstractContextManager[Live | None] = (
                Live(table(0), console=console, refresh_per_second=2, transient=False)
                if not self.opts.quiet
                else contextlib.nullcontext()
            )
            with live_cm as live:
                while time.monotonic() < deadline:
                    for child in self.children.items:
                        if not child.alive():
                            raise DemoError(f"{child.name} stopped unexpectedly:\n{child.tail()}")
                    with contextlib.suppress(httpx.HTTPError):
                        data = await self.api(client, "/issues", status="open", limit=500)
                        live_issues = [i for i in data["issues"] if self._is_live(i)]
                        issues = len(data["issues"])
                        if live_issues and self.first_escalation_s is None:
                            self.first_escalation_s = (
                                time.monotonic() - self.t0 - self.timings.get("agents", 0)
                            )
                    self.sample_rss()
                    if live is not None:
                        live.update(table(issues))
                    elif int(time.monotonic()) % 15 == 0:
                        c = self.counts(self.agent_status())
                        console.print(
                            f"  connected {c[0]}/{total}, open incidents {c[1]}, self-resolved {c[2]}, "
                            f"escalated {c[3]}, cloud issues {issues}"
                        )
                    await asyncio.sleep(1)

    def _is_live(self, issue: dict[str, Any]) -> bool:
        """An issue the live run created (not one the imported history already had)."""
        return issue.get("id") not in self.baseline_issue_ids

    async def settle(self, timeout: float) -> None:
        """Wait until no agent has an incident inside its window and every outbox is empty."""
        deadline = time.monotonic() + timeout
        with console.status("letting open incidents finish their recovery window…"):
            while time.monotonic() < deadline:
                statuses = self.agent_status()
                running = sum(
                    1
                    for st in statuses
                    for i in st.get("recovery", {}).get("open_incidents", [])
                    if i.get("outcome") == "running"
                )
                queued = sum(int(st.get("uplink", {}).get("queued", 0) or 0) for st in statuses)
                if running == 0 and queued == 0:
                    break
                self.sample_rss()
                await asyncio.sleep(1)
        await asyncio.sleep(3)  # the collector's batch writer

    # ------------------------------------------------------------ report

    async def fetch_report(self, live: list[Any]) -> dict[str, Any]:
        async with httpx.AsyncClient() as client:
            issues = (await self.api(client, "/issues", status="open", limit=500))["issues"]
            sites = {}
            for s in live:
                with contextlib.suppress(httpx.HTTPError):
                    sites[s.id] = await self.api(client, f"/sites/{s.id}")
            fleet: Any = {}
            with contextlib.suppress(httpx.HTTPError):
                fleet = await self.api(client, "/fleet/models")
        return {"issues": issues, "sites": sites, "fleet": fleet, "agents": self.agent_status()}

    def print_report(
        self, report: dict[str, Any], truth: list[dict[str, Any]], live: list[Any], summary: Any
    ) -> None:
        console.rule("[bold]what chargesight found")
        # Self-resolved, from the agents (they never reached anyone).
        fixed_by: Counter[str] = Counter()
        selfres = 0
        for st in report["agents"]:
            rec = st.get("recovery", {})
            for o in [*rec.get("recent_outcomes", []), *rec.get("open_incidents", [])]:
                if o.get("outcome") == "self_resolved":
                    selfres += 1
                    steps = o.get("steps") or []
                    last = steps[-1]["action"] if steps else None
                    fixed_by[o.get("fixed_by") or last or "itself"] += 1
        how = ", ".join(f"{n} by {a}" for a, n in fixed_by.most_common()) or "none"
        console.print(f"self-resolved: {selfres}  ({how}; fixed at the edge, nobody paged)")

        issues = sorted(report["issues"], key=lambda i: -float(i.get("priority") or 0))
        console.print(
            f"\nescalated issues open in the cloud: {len(issues)} (highest priority first)"
        )
        for i in issues:
            where = (
                i.get("charge_point_id") or f"site ({len(i.get('chargers') or [])} charge points)"
            )
            if i.get("connector_id") is not None:
                where += f" connector {i['connector_id']}"
            rev = i.get("revenue_lost") or {}
            related = i.get("related") or []
            fault = i.get("fault") or {}
            tag = "new, live" if self._is_live(i) else "from history"
            console.print(
                f"  escalated [{float(i.get('priority') or 0):.2f}] {i.get('site_id')} / {where} — "
                f"{i.get('scope')} {fault.get('code')}"
                f"{' (' + str(fault.get('vendor_code')) + ')' if fault.get('vendor_code') else ''} → "
                f"[bold]{i.get('recommended_action')}[/], revenue lost {float(rev.get('amount') or 0):.2f} "
                f"{rev.get('currency') or ''}, {len(related)} related unit(s) [{tag}]"
            )
            if i.get("diagnosis"):
                console.print(f"      {i['diagnosis']}", style="dim")
            for r in related[:3]:
                console.print(
                    f"      related: {r.get('charge_point_id')} at {r.get('site_id')} — {r.get('reason')}",
                    style="dim",
                )

        early = [i for i in issues if i.get("kind") == "predictive"]
        if early:
            console.print("\nearly warnings (no fault yet; the edge's ONNX models flagged them):")
            for i in early:
                console.print(
                    f"  {i.get('site_id')} / {i.get('charge_point_id')}: "
                    f"{(i.get('fault') or {}).get('code')} since {str(i.get('started_at'))[:16]} → "
                    f"{i.get('recommended_action')}, {len(i.get('related') or [])} related unit(s)"
                )

        site_issues = [i for i in issues if i.get("scope") == "site"]
        if site_issues:
            console.print("\nsite-wide problems (many small incidents adding up):")
            for i in site_issues:
                rev = i.get("revenue_lost") or {}
                console.print(
                    f"  {i.get('site_id')}: {i.get('fault', {}).get('category')} → {i.get('recommended_action')}, "
                    f"costing {float(rev.get('amount') or 0):.2f} {rev.get('currency') or ''}"
                )

        fleet = report.get("fleet") or {}
        models = fleet.get("models") if isinstance(fleet, dict) else None
        if models:
            console.print(
                "\nfleet: failures per 1,000 charger-days by hardware model and firmware (95% CI)"
            )
            ranked = sorted(
                models, key=lambda m: -float(m.get("failure_rate_per_1000_charger_days") or 0)
            )
            for m in ranked[:8]:
                ci = m.get("failure_rate_ci95") or (None, None)
                ci_text = f"{ci[0]:.1f}–{ci[1]:.1f}" if ci and ci[0] is not None else "n/a"
                console.print(
                    f"  {m.get('vendor') or ''} {m.get('model')} fw {m.get('firmware') or '*'}: "
                    f"{float(m.get('failure_rate_per_1000_charger_days') or 0):.2f} ({ci_text}), "
                    f"{m.get('failures', 0)} failures over {float(m.get('charger_days') or 0):.0f} charger-days"
                    f" — {m.get('verdict', '')}"
                )

        degradation = fleet.get("degradation") if isinstance(fleet, dict) else None
        if degradation and degradation.get("faster_than_peers"):
            console.print("\nhardware that degrades faster than its peers (early symptoms):")
            for evidence in degradation["faster_than_peers"]:
                console.print(f"  {evidence}")

        if report["sites"]:
            console.print(
                "\navailability per live site (trailing 30 days; NEVI monthly, 23 CFR 680.116(b))"
            )
            for sid, s_ in report["sites"].items():
                avail = s_.get("availability") or {}
                nevi = avail.get("nevi_monthly") or []
                latest = nevi[0] if isinstance(nevi, list) and nevi else {}  # newest first
                nevi_text = (
                    f", NEVI trailing year {latest.get('uptime_pct')}%"
                    if isinstance(latest, dict) and latest
                    else ""
                )
                console.print(
                    f"  {sid}: {avail.get('trailing_30d_pct')}%{nevi_text} "
                    f"({len(s_.get('chargers') or [])} charge points)"
                )

        if report["sites"]:
            console.print(
                "\nhealth per live site (0–100; the charge point's score is its worst connector's)"
            )
            for sid, s_ in report["sites"].items():
                h = s_.get("health") or {}
                bands = ", ".join(f"{n} {b}" for b, n in (h.get("by_band") or {}).items() if n)
                console.print(
                    f"  {sid}: lowest {h.get('min_score')}, mean {h.get('mean_score')} ({bands})"
                )
                for w in (h.get("worst") or [])[:2]:
                    why = w.get("explanation")
                    why = "; ".join(why) if isinstance(why, list) else why
                    console.print(
                        f"      {w.get('charge_point_id')} {w.get('score')} ({w.get('band')}): {why}",
                        style="dim",
                    )

        self.print_scorecard(report, truth)
        wall = time.monotonic() - self.t0
        console.rule()
        console.print(
            f"demo wall time {wall:.0f}s; first new issue in the cloud "
            f"{self.first_escalation_s:.0f}s after the agents started"
            if self.first_escalation_s is not None
            else f"demo wall time {wall:.0f}s"
        )
        console.print(f"peak memory of all demo processes: {self.peak_rss_kib / 1024:.0f} MiB")

    def print_scorecard(self, report: dict[str, Any], everything: list[dict[str, Any]]) -> None:
        """Faults the simulator had going during the live run vs what the system did with them."""
        issues = report["issues"]
        truth = [t for t in everything if not t.get("history_only")]
        history_only = [t for t in everything if t.get("history_only") and not t.get("background")]
        console.print(
            "\nscorecard against the simulator's ground truth (faults still present at the end)"
        )
        now = self.sim_now or datetime.now(UTC)

        def past(value: Any) -> bool:  # the truth also holds planned, future times
            if not value:
                return False
            return datetime.fromisoformat(str(value).replace("Z", "+00:00")) <= now

        active = [t for t in truth if not past(t.get("ended_at"))]
        # A PSU that only degrades has not failed: that is foresight's job, scored apart.
        early = [
            t for t in active if t.get("kind") == "psu_degradation" and not past(t.get("failed_at"))
        ]
        needs_person = [
            t for t in active if t.get("kind") not in ("transient", "stuck") and t not in early
        ]
        fixable = [t for t in truth if t.get("kind") in ("transient", "stuck")]

        def cps(t: dict[str, Any]) -> set[str]:
            return set(t.get("charge_points") or [t.get("charge_point_id")])

        def same_problem(i: dict[str, Any], t: dict[str, Any]) -> bool:
            if t.get("scope") == "site":
                return i.get("scope") == "site"
            if t.get("kind") == "psu_degradation" and i.get("kind") in ("predictive", "repeat"):
                return True  # early warnings: the model's, or the PSU's trips repeating
            code = (i.get("fault") or {}).get("code")
            # OCPP 2.0.1 stations report a bare "Faulted" when no NotifyEvent named the problem
            return code == t.get("code") or code in ("Faulted", "OtherError")

        def matches(t: dict[str, Any]) -> list[dict[str, Any]]:
            return [
                i
                for i in issues
                if same_problem(i, t)
                and (
                    i.get("charge_point_id") in cps(t)
                    or cps(t) & set(i.get("chargers") or [])
                    or (t.get("scope") == "site" and i.get("site_id") == t.get("site_id"))
                )
            ]

        detected = [t for t in needs_person if matches(t)]
        missed = [t for t in needs_person if not matches(t)]
        # an issue about a fault that has ended since (e.g. a firmware update stopped a
        # repeating fault a few days ago) is about a real fault, not a false one
        ended = [
            t
            for t in truth
            if past(t.get("ended_at")) and t.get("kind") not in ("transient", "stuck")
        ]
        used = {i["id"] for t in [*needs_person, *early, *ended, *history_only] for i in matches(t)}
        false = [i for i in issues if i["id"] not in used]
        scope_ok = sum(
            1 for t in detected if any(i.get("scope") == t.get("scope") for i in matches(t))
        )
        action_ok = sum(
            1
            for t in detected
            if any(i.get("recommended_action") == t.get("fix") for i in matches(t))
        )
        escalated_fixable = [
            t
            for t in fixable
            if any(
                self._is_live(i) and (i.get("fault") or {}).get("code") == t.get("code")
                for i in matches(t)
            )
        ]
        errors: list[float] = []
        details: list[str] = []
        for t in detected:
            want = float((t.get("revenue_lost") or {}).get("amount") or 0)
            got = max(float((i.get("revenue_lost") or {}).get("amount") or 0) for i in matches(t))
            if want > 0:
                errors.append(abs(got - want) / want)
                details.append(
                    f"  revenue {t.get('kind')} on {', '.join(sorted(cps(t)))}: estimated "
                    f"{got:.2f}, simulated {want:.2f}"
                )
        n = len(detected) or 1
        console.print(
            f"  faults needing a person: {len(needs_person)} — became issues: {len(detected)}, "
            f"missed: {len(missed)}; issues matching no injected fault: {len(false)}"
        )
        console.print(
            f"  scope right: {scope_ok}/{len(detected)} ({100 * scope_ok / n:.0f}%), "
            f"recommended action right: {action_ok}/{len(detected)} ({100 * action_ok / n:.0f}%)"
        )
        console.print(
            f"  faults a reset fixes: {len(fixable)} — escalated anyway: {len(escalated_fixable)}"
        )
        if errors:
            errors.sort()
            console.print(
                f"  revenue estimate error (median over {len(errors)} faults with a cost so far): "
                f"{100 * errors[len(errors) // 2]:.0f}%"
            )
        for line in details:
            console.print(line, style="dim")
        if early:
            flagged = [t for t in early if matches(t)]
            console.print(
                f"  degrading PSUs not failed yet: {len(early)} — flagged early: {len(flagged)}"
            )
        for t in missed:
            console.print(f"  missed: {t.get('kind')} on {', '.join(sorted(cps(t)))}", style="dim")
        for i in false:
            console.print(
                f"  no injected fault behind: {i.get('site_id')} {i.get('charge_point_id') or ''} "
                f"{(i.get('fault') or {}).get('code')}",
                style="dim",
            )


async def _main(opts: Options) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="chargesight-demo-"))
    # As root, the private PostgreSQL runs as an unprivileged user, who must reach its directory.
    os.chmod(workdir, 0o711)
    run = DemoRun(opts, workdir)
    try:
        return await run.run()
    except ScenarioError as exc:  # the user's --scenario: a usage error
        console.print(f"[red]demo:[/] {exc}")
        return 2
    except DemoError as exc:
        console.print(f"[red]demo failed:[/] {exc}")
        return 1
    finally:
        run.children.stop_all()
        if opts.keep:
            console.print(f"working directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: Sequence[str]) -> int:
    opts = parse_args(argv)
    try:
        return asyncio.run(_main(opts))
    except KeyboardInterrupt:
        console.print("stopped; every process has been shut down")
        return 130
