"""A throwaway PostgreSQL server for the tests, started from the installed binaries (Debian `postgresql`).

initdb into a temporary folder, then `pg_ctl start` on a free port: TCP on 127.0.0.1 only, the unix socket
inside that folder, durability off (a test database is thrown away). PostgreSQL refuses to run as root,
so under root it runs as the `postgres` system user the Debian package creates. Every test gets its own
database (`new_database`). Logins: `postgres` without a password (trust, 127.0.0.1 only) and `kdlab`
with the password `kdlab-secret`, for the tests of wrong credentials.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from itertools import count
from pathlib import Path

PASSWORD_USER, PASSWORD = "kdlab", "kdlab-secret"


def find_binaries() -> Path | None:
    """The folder holding initdb and pg_ctl: on PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.folder = Path(tempfile.mkdtemp(prefix="kdlab-pg-"))
        self.port = _free_port()
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
            self._as_user = ["runuser", "-u", "postgres", "--"]
        self._names = count(1)
        self._admin = None

    def _pg(self, tool: str, *args: str) -> None:
        result = subprocess.run([*self._as_user, str(self.bin_dir / tool), *args], capture_output=True, text=True,
                                timeout=120)
        if result.returncode != 0:
            log = self.folder / "server.log"
            raise RuntimeError(f"{tool} failed: {result.stderr.strip()}\n{log.read_text() if log.exists() else ''}")

    def start(self) -> PostgresServer:
        data = self.folder / "data"
        self._pg("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8",
                 "--locale=C", "--no-instructions")
        (data / "pg_hba.conf").write_text(
            "local all all trust\n"
            f"host all {PASSWORD_USER} 127.0.0.1/32 scram-sha-256\n"
            "host all all 127.0.0.1/32 trust\n")
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c shared_buffers=32MB -c max_connections=100")
        self._pg("pg_ctl", "-D", str(data), "-l", str(self.folder / "server.log"), "-w", "-t", "60", "-o", options,
                 "start")
        import psycopg
        self._admin = psycopg.connect(self.url("postgres"), autocommit=True)
        self._admin.execute(f"CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD '{PASSWORD}'")
        self._admin.execute("CREATE DATABASE kdlab")
        self._admin.close()
        self._admin = psycopg.connect(self.url(), autocommit=True)
        return self

    def url(self, database: str = "kdlab", user: str = "postgres", schema: str | None = None) -> str:
        url = f"postgresql://{user}@127.0.0.1:{self.port}/{database}"
        return f"{url}?options=-csearch_path%3D{schema}" if schema else url

    def new_database(self) -> str:
        """The URL of a new, empty database of its own: a schema of the database `kdlab`, which the store sees
        as its whole database (its tables are looked up in the current schema). Milliseconds, where CREATE
        DATABASE takes half a second."""
        name = f"test_{next(self._names)}"
        self._admin.execute(f"CREATE SCHEMA {name}")
        return self.url(schema=name)

    def restart(self) -> None:
        """Stop the server at once (sessions cut, as a crash or a failover would) and start it again."""
        self._pg("pg_ctl", "-D", str(self.folder / "data"), "-l", str(self.folder / "server.log"), "-m", "fast",
                 "-w", "-t", "60", "restart")
        import psycopg
        self._admin = psycopg.connect(self.url(), autocommit=True)

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
        try:
            self._pg("pg_ctl", "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def start_for_bench(script: str) -> PostgresServer:
    """A throwaway server for a benchmark (`bench/store.py`, `bench/first_metric.py`), or SystemExit naming
    `script` when the binaries are not installed."""
    bin_dir = find_binaries()
    if bin_dir is None:
        raise SystemExit(f"{script}: PostgreSQL binaries not installed; pass --postgres URL")
    return PostgresServer(bin_dir).start()
