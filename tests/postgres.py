"""A real PostgreSQL server for the tests marked ``postgres``: ``mcomp auto --storage postgresql://…``
is how workers on several machines share one study, and only a real server shows whether they
duplicate trials or lose them (SQLite serialises writers; PostgreSQL runs them at once).

``postgres_server`` (session) starts a private server from the Debian ``postgresql`` binaries in a
temporary folder: 127.0.0.1 on a free port, a unix socket in that folder, trust authentication, no
fsync. ``postgres_url`` (per test) creates a fresh database on it and gives its URL, so that no test
sees another's studies. Postgres refuses to run as root, so as root the server runs as the
``postgres`` system user. Where no binaries are installed the tests are skipped, except under CI
(env ``CI`` set), where that is a failure: ``.ci/postgres`` installs them.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

NEEDED = ("initdb", "pg_ctl", "postgres", "createdb")
START_TIMEOUT = 600  # a hang guard for pg_ctl -w, not a speed check (a loaded machine is slow)
_databases = itertools.count()


def find_bindir() -> Path | None:
    """The folder holding the server binaries: ``pg_config --bindir`` (where it is the server's, not only
    libpq's), else the newest /usr/lib/postgresql/*/bin, else initdb on PATH."""
    candidates = []
    if shutil.which("pg_config"):
        done = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        candidates.append(done.stdout.strip())
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(versions, key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
                         reverse=True)
    if shutil.which("initdb"):
        candidates.append(str(Path(shutil.which("initdb")).parent))
    for folder in candidates:
        if folder and all(os.access(Path(folder, b), os.X_OK) for b in NEEDED):
            return Path(folder)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One private server; ``start()`` then ``stop()`` (which also removes its folder)."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        # /tmp, not $TMPDIR: the postgres user must reach it, and a unix socket path must be short (107 bytes)
        self.root = Path(tempfile.mkdtemp(prefix="mcomp-pg-", dir="/tmp" if os.path.isdir("/tmp") else None))
        self.data, self.log = self.root / "data", self.root / "server.log"
        self.port = 0
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # initdb and postgres refuse root
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root and there is no 'postgres' user to run the server as") from None
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *argv, server_side: bool = True) -> None:
        command = [*(self.as_user if server_side else []), str(self.bindir / argv[0]), *map(str, argv[1:])]
        done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(command)} exited {done.returncode}\n{done.stdout[-2000:]}"
                               f"{done.stderr[-2000:]}\n--- server log ---\n{log}")

    def start(self) -> None:
        self._run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync",
                  "--no-instructions")
        for attempt in range(3):  # a port found free may be taken before the server binds it
            self.port = _free_port()
            options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"
            try:
                self._run("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", START_TIMEOUT, "-o", options, "start")
                return
            except RuntimeError:
                if attempt == 2:
                    raise

    def create_database(self, name: str) -> str:
        self._run("createdb", "-h", "127.0.0.1", "-p", self.port, "-U", "postgres", name, server_side=False)
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", START_TIMEOUT, "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server():
    bindir = find_bindir()
    if bindir is None:
        reason = "no PostgreSQL server binaries (initdb, pg_ctl); .ci/postgres installs the Debian package"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the postgres tests: {reason}", pytrace=False)
        pytest.skip(reason)
    server = Server(bindir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server):
    """``postgresql://postgres@127.0.0.1:PORT/DB``: a database of its own for each test."""
    return postgres_server.create_database(f"mcomp_test_{next(_databases)}")
