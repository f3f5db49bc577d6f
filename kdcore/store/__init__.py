"""The run store: a database plus a folder per run. Only this package knows its layout.

    $KDCORE_HOME/
        kdcore.db            runs, metrics, stage results, snapshots, logs, sweeps, settings (SQLite,
                             the default; with KDCORE_DB=postgresql://... these tables live there instead)
        runs/<run_id>/       progress.pt (per-epoch checkpoint), student.pt, worker.log,
                             artifacts/ (exported and compressed models, deployment reports)
        teachers/<key>.pt    trained teachers shared by every run with the same teacher settings
        studies.db           the tuning studies' search state (Optuna's own tables; see `study_storage_url`)
        uploads/<sha>-<name> checkpoints uploaded in the app, named by their content

With KDCORE_ARTIFACTS set, `runs/`, `teachers/` and `uploads/` live in that folder instead (storage every
node of a cluster mounts); the database and the studies stay where KDCORE_HOME and KDCORE_DB say.

Many processes read and write at once (the app, CLI commands, one worker per run, on one machine or
many). The SQL is written once; a dialect adapts what differs between the backends (`kdcore.store.sqlite`:
WAL, BEGIN IMMEDIATE; `kdcore.store.postgres`: placeholders, types, advisory locks, reconnects). Write
transactions name a lock where their order matters ("queue", a run id): SQLite serialises every writer
anyway, PostgreSQL takes exactly those locks. No torch here: the app reads the store without importing it.
Reads return typed rows (`MetricRow`, `RunMetricRow`, `LogRow`: named tuples, so positional access
keeps working), and the few files a page shows come through methods here, never through paths.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from kdcore.errors import RunNotFound, StoreError
from kdcore.owners import OwnerLimitError, limit_message
from kdcore.store.postgres import ConnectionLost
from kdcore.store.sqlite import SQLite

SCHEMA_VERSION = 4
STATUSES = ("queued", "starting", "running", "done", "failed", "cancelled")
ACTIVE = ("queued", "starting", "running")
FINISHED = ("done", "failed", "cancelled")
_RUN_ID = re.compile(r"^run-[0-9a-f]{8}$")
_SPARE = "spare."  # settings `spare.<pid>` = "<environment fingerprint>|<run id handed to it, or empty>"
_SPARE_KEY = f"setting.{_SPARE}"
_SWEEP_ID = re.compile(r"^sweep-[0-9a-f]{8}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # no folders, no dot-files
HOST = socket.gethostname()  # with a shared PostgreSQL store, workers of many machines: a pid is one of HOST's
WORKER_LOG_TAIL_BYTES = 64 * 1024  # a page shows the last lines of a worker's output, never the whole file

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    seq {serial},
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL DEFAULT '',
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    created {float} NOT NULL,
    started {float},
    ended {float},
    pid INTEGER,
    heartbeat {float},
    error TEXT,
    summary TEXT,
    progress TEXT,
    sweep_id TEXT,
    resume INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    host TEXT
);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status, seq);
CREATE INDEX IF NOT EXISTS runs_owner ON runs(owner, status);
CREATE TABLE IF NOT EXISTS metrics (
    id {serial},
    run_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    step INTEGER NOT NULL,
    name TEXT NOT NULL,
    value {float},
    t {float} NOT NULL
);
CREATE INDEX IF NOT EXISTS metrics_run ON metrics(run_id, id);
CREATE TABLE IF NOT EXISTS stage_results (
    run_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    name TEXT NOT NULL,
    value {any},
    t {float} NOT NULL,
    PRIMARY KEY (run_id, stage, name)
);
CREATE TABLE IF NOT EXISTS snapshots (
    id {serial},
    run_id TEXT NOT NULL,
    stage TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    payload TEXT NOT NULL,
    t {float} NOT NULL
);
CREATE INDEX IF NOT EXISTS snapshots_run ON snapshots(run_id, id);
CREATE TABLE IF NOT EXISTS logs (
    id {serial},
    run_id TEXT NOT NULL,
    t {float} NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_run ON logs(run_id, id);
CREATE TABLE IF NOT EXISTS sweeps (
    id TEXT PRIMARY KEY,
    created {float} NOT NULL,
    spec TEXT NOT NULL
);
"""


def _migrate_1_to_2(db: Any, columns: set[str]) -> None:
    """Version 1 had no sweeps and no cancel flag."""
    if "sweep_id" not in columns:
        db.execute("ALTER TABLE runs ADD COLUMN sweep_id TEXT")
    if "cancel_requested" not in columns:
        db.execute("ALTER TABLE runs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0")


def _migrate_2_to_3(db: Any, columns: set[str]) -> None:
    """Version 2 had no owners: its runs belong to nobody (NULL), which the fair queue treats as one owner."""
    if "owner" not in columns:
        db.execute("ALTER TABLE runs ADD COLUMN owner TEXT")


def _migrate_3_to_4(db: Any, columns: set[str]) -> None:
    """Version 3 did not say on which machine a worker runs: its pids were taken to be this machine's (NULL)."""
    if "host" not in columns:
        db.execute("ALTER TABLE runs ADD COLUMN host TEXT")


_MIGRATIONS = {1: _migrate_1_to_2, 2: _migrate_2_to_3, 3: _migrate_3_to_4}
_TABLES = set(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", _SCHEMA))
# Each migration gets the columns `runs` has (they are only ever added), so it runs on either backend.
# A table added without changing what older code reads (stage_results) is created by _SCHEMA's IF NOT
# EXISTS on open (when a table is missing), with no new version, so a worker of the previous release can
# still open the store. A new index comes with a new version.
# stage_results.value has no declared type in SQLite: an int (best_epoch) stays an int, a float a float
# (PostgreSQL keeps it as JSON text, which does the same).


def default_home() -> Path:
    return Path(os.environ.get("KDCORE_HOME") or "./kd-runs")


def artifacts_root(home: Path) -> Path:
    """KDCORE_ARTIFACTS: the folder of run folders, teachers and uploads (a path every node of a cluster
    mounts); unset, KDCORE_HOME. A URL is refused: the checkpoints are written and read as files."""
    raw = os.environ.get("KDCORE_ARTIFACTS", "").strip()
    if "://" in raw:
        raise StoreError(f"KDCORE_ARTIFACTS must be a folder path, not a URL ({raw.split('://')[0]}://...): mount the "
                         f"object storage (s3fs, gcsfuse, ...) on every node and give the mount's path")
    return Path(raw) if raw else home


def database_url() -> str:
    """KDCORE_DB: a postgresql:// URL, or empty for the SQLite database under KDCORE_HOME."""
    return os.environ.get("KDCORE_DB", "").strip()


def _dialect(home: Path, url: str) -> Any:
    if not url:
        return SQLite(home / "kdcore.db")
    if url.startswith(("postgresql://", "postgres://")):
        from kdcore.store.postgres import PostgreSQL  # psycopg is imported only for a PostgreSQL store
        return PostgreSQL(url)
    raise StoreError("KDCORE_DB must be a postgresql://user@host:port/database URL (unset: SQLite under "
                     f"KDCORE_HOME), not {url.split('://')[0]!r}")


def _retried(write: Callable) -> Callable:
    """Run a write again when the database connection was lost before its COMMIT (the server restarted):
    nothing of it was written, and the next try waits for the server to come back (kdcore.store.postgres).
    SQLite never loses its connection."""
    @functools.wraps(write)
    def again(self: Store, *args: Any, **kwargs: Any) -> Any:
        for _ in range(3):
            try:
                return write(self, *args, **kwargs)
            except ConnectionLost:
                continue
        return write(self, *args, **kwargs)
    return again


class MetricRow(NamedTuple):
    """One metric value of one run, as `Store.metrics_since` returns it (`id` is the read cursor)."""

    id: int
    stage: str
    epoch: int
    step: int
    name: str
    value: float | None
    t: float


class RunMetricRow(NamedTuple):
    """One metric value, as `Store.metrics_for` returns it for several runs at once."""

    run_id: str
    stage: str
    epoch: int
    step: int
    name: str
    value: float | None
    t: float


class ArtifactRow(NamedTuple):
    """One file of a run's artefacts, as `Store.artifacts` lists it."""

    name: str
    bytes: int
    mtime: float


class LogRow(NamedTuple):
    """One line of a run's log."""

    id: int
    t: float
    message: str


def upload_name(filename: str, data: bytes, suffixes: tuple[str, ...] = (".pt", ".pth")) -> str:
    """A safe file name for an uploaded file: no folders, no dot-files, content-addressed, ending in one of
    `suffixes` (the first is added when it ends in none: a checkpoint's `.pt` by default, `.csv` for text data).

    `../../etc/passwd` → `<sha>-passwd.pt`; the hash prefix keeps two users' `teacher.pt` apart
    and makes saving the same upload twice a no-op.
    """
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    stem = _UNSAFE.sub("_", base).strip("._-")[:80] or "upload"
    if not stem.lower().endswith(suffixes):
        stem += suffixes[0]
    return f"{hashlib.sha256(data).hexdigest()[:12]}-{stem}"


@dataclass
class RunRecord:
    """One row of `runs`, decoded."""

    id: str
    seq: int
    name: str
    config: dict[str, Any]
    status: str
    created: float
    started: float | None
    ended: float | None
    pid: int | None
    heartbeat: float | None
    error: str | None
    summary: dict[str, Any] | None
    progress: dict[str, Any] | None
    sweep_id: str | None
    resume: bool
    cancel_requested: bool
    owner: str | None = None  # who submitted it (`submit --owner`, a workshop participant); None: nobody said
    host: str | None = None  # the machine of its worker (`pid` is a process there); None: this one (older stores)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def to_json(self) -> dict[str, Any]:
        """What `status --json` prints: the summary's numbers first-class, beside the run's state."""
        out = {"run_id": self.id, "status": self.status, "name": self.name, "owner": self.owner, "created": self.created,
               "started": self.started, "ended": self.ended, "error": self.error, "sweep_id": self.sweep_id,
               "progress": self.progress, "config": self.config}
        if self.status in ("starting", "running") and self.pid:
            out["pid"], out["host"] = self.pid, self.host
        if self.summary:
            out.update({k: v for k, v in self.summary.items() if k not in ("run_id", "status")})
        return out


def validate_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise RunNotFound(f"malformed run id {run_id!r}: run ids look like run-1a2b3c4d")
    return run_id


class Store:
    """Access to one KDCORE_HOME (run folders) and its database: SQLite in that folder, or the PostgreSQL
    database `db` names (default: KDCORE_DB), with its run folders under `artifacts` (default: KDCORE_ARTIFACTS,
    else `home`). Cheap to create; each instance holds one connection."""

    def __init__(self, home: str | Path | None = None, *, db: str | None = None,
                 artifacts: str | Path | None = None) -> None:
        self.home = Path(home) if home is not None else default_home()
        self.db_url = database_url() if db is None else db.strip()
        self._dialect = _dialect(self.home, self.db_url)
        self.where = str(self.home) if not self.db_url else self._dialect.where  # what messages name
        self.artifacts_root = Path(artifacts) if artifacts is not None else artifacts_root(self.home)
        for folder, variable in ((self.home, "KDCORE_HOME"), (self.artifacts_root, "KDCORE_ARTIFACTS")):
            try:
                folder.mkdir(parents=True, exist_ok=True)
                if folder == self.artifacts_root:
                    (folder / "runs").mkdir(exist_ok=True)
                    (folder / "teachers").mkdir(exist_ok=True)
            except OSError as exc:
                raise StoreError(f"run store folder {folder} ({variable}) cannot be created: "
                                 f"{exc.strerror or exc}") from None
            if not os.access(folder, os.W_OK):
                raise StoreError(f"run store folder {folder} is not writable; set {variable} to a writable folder")
        try:
            self._db = self._dialect.connect()
            self._open_schema()
        except self._dialect.errors as exc:
            raise StoreError(self._dialect.describe(exc)) from None

    # --- schema ----------------------------------------------------------------------------------

    def _open_schema(self) -> None:
        # "schema": two processes opening a new PostgreSQL database at once create its tables once
        with self._transaction(lock="schema") as db:
            tables = self._dialect.tables(db)
            if "meta" not in tables:
                if tables:
                    kind = "an SQLite" if self._dialect.name == "sqlite" else "a PostgreSQL"
                    raise StoreError(f"{self._dialect.where} is {kind} database but not a kdcore run store")
                self._create_tables(db)
                db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                return
            row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            version = int(row[0]) if row else 1
            if version > SCHEMA_VERSION:
                raise StoreError(f"run store {self._dialect.where} was written by a newer kdcore (schema {version}, "
                                 f"this one reads up to {SCHEMA_VERSION}); upgrade kdcore or use another "
                                 f"{'KDCORE_DB' if self.db_url else 'KDCORE_HOME'}")
            if version == SCHEMA_VERSION and not _TABLES - tables:
                return  # the common case: no DDL, which on PostgreSQL would lock tables that others are writing
            while version < SCHEMA_VERSION:
                _MIGRATIONS[version](db, self._dialect.columns(db, "runs"))
                version += 1
            self._create_tables(db)
            db.execute("INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT (key) DO UPDATE SET value=excluded.value",
                       (str(SCHEMA_VERSION),))

    def _create_tables(self, db: Any) -> None:
        for statement in _SCHEMA.format(**self._dialect.types).split(";"):
            if statement.strip():
                db.execute(statement)

    @contextmanager
    def _transaction(self, lock: str | tuple[str, ...] | None = None) -> Iterator[Any]:
        """One write transaction. `lock` names what it must not run beside (or several such names, taken in
        order: "queue" before a sweep's id): writers naming the same lock run one after another (SQLite runs
        every writer one after another anyway; see kdcore.store.postgres)."""
        with self._dialect.transaction(self._db, lock) as db:
            yield db

    def close(self) -> None:
        self._db.close()

    # --- paths -----------------------------------------------------------------------------------

    def run_dir(self, run_id: str) -> Path:
        """The run's folder. The id is validated first, so it can never point outside the store."""
        return self.artifacts_root / "runs" / validate_run_id(run_id)

    def teacher_dir(self) -> Path:
        return self.artifacts_root / "teachers"

    def progress_checkpoint(self, run_id: str) -> Path:
        """The run's per-epoch checkpoint (`kdcore.train.Progress` writes it), which `resume` continues from."""
        return self.run_dir(run_id) / "progress.pt"

    def worker_log_path(self, run_id: str) -> Path:
        """Where a run's worker process writes its standard output and error (the runner opens it)."""
        return self.run_dir(run_id) / "worker.log"

    def worker_log_tail(self, run_id: str, max_lines: int = 30, max_bytes: int = WORKER_LOG_TAIL_BYTES) -> list[str]:
        """The last `max_lines` lines of the run's worker output, read from at most its last `max_bytes`
        (a runaway log is never read whole); [] when the worker wrote nothing."""
        try:
            with open(self.worker_log_path(run_id), "rb") as log:
                size = log.seek(0, os.SEEK_END)
                log.seek(max(size - max_bytes, 0))
                text = log.read(max_bytes).decode("utf-8", errors="replace")
        except FileNotFoundError:
            return []
        lines = text.splitlines()
        if size > max_bytes and lines:
            lines = lines[1:]  # the first line read is cut at its start
        return lines[-max_lines:] if max_lines > 0 else []

    def save_upload(self, filename: str, data: bytes, suffixes: tuple[str, ...] = (".pt", ".pth")) -> Path:
        """Keep an uploaded file (a checkpoint; a CSV with suffixes=(".csv", ".tsv")) under the store and return its
        path. The file is named by its content (`upload_name`), so `filename` never becomes a path and saving it
        again is a no-op."""
        folder = self.artifacts_root / "uploads"
        path = folder / upload_name(filename, data, suffixes)
        if not path.exists():
            folder.mkdir(exist_ok=True)
            partial = path.with_name(f".{path.name}.{os.getpid()}.part")
            partial.write_bytes(data)
            os.replace(partial, path)  # never a half-written file under the final name
        return path

    # --- a finished run's model and its deployment artefacts (kdcore.compress) ----------------------------

    def student_checkpoint(self, run_id: str) -> Path:
        """The final student a finished run saved (the worker passes `run_dir` to the trainer, which writes it)."""
        return self.run_dir(run_id) / "student.pt"

    def artifact_path(self, run_id: str, name: str) -> Path:
        """Where the run's artefact `name` (an exported or compressed model, a report) lives; its folder is
        created. `name` is a plain file name, checked, so it can never point outside the run's folder."""
        path = self._artifact_file(run_id, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _artifact_file(self, run_id: str, name: str) -> Path:
        if not isinstance(name, str) or not _ARTIFACT_NAME.match(name):
            raise StoreError(f"artefact name {name!r} is not a plain file name (letters, digits, '.', '_', '-')")
        return self.run_dir(run_id) / "artifacts" / name

    def write_artifact(self, run_id: str, name: str, data: bytes) -> Path:
        """Write an artefact whole or not at all (a temporary file, then an atomic rename)."""
        path = self.artifact_path(run_id, name)
        partial = path.with_name(f".{name}.{os.getpid()}.part")
        partial.write_bytes(data)
        os.replace(partial, path)
        return path

    def read_artifact(self, run_id: str, name: str) -> bytes | None:
        """An artefact's bytes; None when the run has no artefact of that name."""
        try:
            return self._artifact_file(run_id, name).read_bytes()
        except FileNotFoundError:
            return None

    def artifacts(self, run_id: str) -> list[ArtifactRow]:
        """The run's artefacts (not partial writes), by name."""
        folder = self.run_dir(run_id) / "artifacts"
        if not folder.is_dir():
            return []
        return [ArtifactRow(p.name, p.stat().st_size, p.stat().st_mtime) for p in sorted(folder.iterdir())
                if p.is_file() and _ARTIFACT_NAME.match(p.name)]

    def is_upload(self, path: str | Path) -> bool:
        """True when `path` is a file `save_upload` wrote (so no one typed it)."""
        candidate = Path(path).resolve()
        return candidate.parent == (self.artifacts_root / "uploads").resolve() and candidate.is_file()

    # --- runs ------------------------------------------------------------------------------------

    @_retried
    def create_run(self, config: dict[str, Any], *, name: str = "", status: str = "queued",
                   sweep_id: str | None = None, pid: int | None = None, owner: str | None = None,
                   owner_cap: int | None = None) -> str:
        """Record a run. With `owner_cap`, refuse it (OwnerLimitError) when `owner` already has that many
        queued or running runs; the count and the insert are one transaction, so two submissions at
        once cannot both slip under the cap."""
        with self._transaction(lock="queue" if owner_cap is not None else None) as db:
            self._check_owner_room(db, owner, owner_cap, 1)
            run_id = self._insert_run(db, config, name, status, sweep_id, pid, owner)
        self.run_dir(run_id).mkdir(parents=True, exist_ok=True)
        return run_id

    @_retried
    def create_runs(self, runs: list[tuple[dict[str, Any], str]], *, sweep_id: str | None = None,
                    owner: str | None = None, owner_cap: int | None = None,
                    sweep_change: Callable[[dict[str, Any], list[str]], None] | None = None) -> list[str]:
        """Queue several runs, given as (config, name), in one transaction: no scheduler (this process's, the
        app's, another machine's) sees some of them before the others, so the worker that takes the first finds
        its sweep siblings queued and trains those sharing its teacher together. `sweep_change(spec, run_ids)`
        edits the sweep's spec in the same transaction (a study records its trials there before any of their
        workers can look them up). With `owner_cap`, all are refused (OwnerLimitError) when they would take
        `owner` past it, and nothing is recorded."""
        locks = ("queue",) if owner_cap is not None else ()
        with self._transaction(lock=locks + ((sweep_id,) if sweep_change else ())) as db:
            self._check_owner_room(db, owner, owner_cap, len(runs))
            run_ids = [self._insert_run(db, config, name, "queued", sweep_id, None, owner) for config, name in runs]
            if sweep_change is not None:
                row = db.execute("SELECT spec FROM sweeps WHERE id=?", (sweep_id,)).fetchone()
                if row is None:
                    raise StoreError(f"no sweep {sweep_id} in {self.where}")
                spec = json.loads(row[0])
                sweep_change(spec, run_ids)
                db.execute("UPDATE sweeps SET spec=? WHERE id=?", (json.dumps(spec), sweep_id))
        for run_id in run_ids:
            self.run_dir(run_id).mkdir(parents=True, exist_ok=True)
        return run_ids

    @staticmethod
    def _check_owner_room(db: Any, owner: str | None, owner_cap: int | None, adding: int) -> None:
        if owner is None or owner_cap is None:
            return
        active = db.execute("SELECT COUNT(*) FROM runs WHERE owner=? AND status IN ('queued','starting',"
                            "'running')", (owner,)).fetchone()[0]
        if active + adding > owner_cap:
            raise OwnerLimitError(limit_message(owner, active, owner_cap, adding))

    @staticmethod
    def _insert_run(db: Any, config: dict[str, Any], name: str, status: str, sweep_id: str | None,
                    pid: int | None, owner: str | None) -> str:
        now = time.time()
        while True:
            run_id = f"run-{secrets.token_hex(4)}"
            if not db.execute("SELECT 1 FROM runs WHERE id=?", (run_id,)).fetchone():
                break
        db.execute(
            "INSERT INTO runs (id, name, config, status, created, started, pid, heartbeat, sweep_id, owner, host) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (run_id, name, json.dumps(config, sort_keys=True), status, now,
             now if status == "running" else None, pid, now if status == "running" else None, sweep_id, owner,
             HOST if pid is not None else None),
        )
        return run_id

    def get_run(self, run_id: str) -> RunRecord:
        validate_run_id(run_id)
        row = self._db.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFound(f"no run {run_id} in {self.where}")
        return _record(row)

    def list_runs(self, status: str | list[str] | None = None, *, sweep_id: str | None = None,
                  limit: int | None = None, owner: str | None = None) -> list[RunRecord]:
        """Runs, newest first, optionally filtered by status (one or several), sweep and owner."""
        where, args = [], []
        if status:
            statuses = [status] if isinstance(status, str) else list(status)
            bad = [s for s in statuses if s not in STATUSES]
            if bad:
                raise StoreError(f"unknown status {bad[0]!r}; valid: {', '.join(STATUSES)}")
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            args += statuses
        if sweep_id:
            where.append("sweep_id=?")
            args.append(sweep_id)
        if owner is not None:
            where.append("owner=?")
            args.append(owner)
        sql = f"SELECT {_RUN_COLUMNS} FROM runs" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY seq DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [_record(row) for row in self._db.execute(sql, args)]

    def count_runs(self, statuses: tuple[str, ...], *, owner: str | None = None) -> int:
        sql = f"SELECT COUNT(*) FROM runs WHERE status IN ({','.join('?' * len(statuses))})"
        if owner is not None:
            return self._db.execute(sql + " AND owner=?", (*statuses, owner)).fetchone()[0]
        return self._db.execute(sql, statuses).fetchone()[0]

    @_retried
    def claim_next(self, limit: int) -> RunRecord | None:
        """Atomically move the next queued run to `starting` if fewer than `limit` runs are active.

        The next run is fair across owners (round-robin): it comes from the owner who has waited
        longest, and within an owner in submission order. An owner waits from the later of their
        oldest queued run's submission and their last run's start, so an owner who just got a slot
        goes behind everyone already waiting. Runs without an owner count as one owner.

        Schedulers in several processes (or machines) can call this at once: the "queue" lock runs them
        one after another, so the limit holds; the claim moves the run only if it is still queued (a
        cancel or a worker adopting it may come first), so a run is claimed once.
        """
        next_run = _NEXT_FAIR_RUN.format(greatest=self._dialect.greatest, same=self._dialect.same)
        with self._transaction(lock="queue") as db:
            # A slot is a worker process: the runs of a sweep that one worker trains together share its pid.
            busy = db.execute(f"SELECT {_SLOTS} FROM runs WHERE status IN ('starting','running')").fetchone()[0]
            if busy >= limit:
                return None
            while (row := db.execute(next_run).fetchone()) is not None:
                if db.execute("UPDATE runs SET status='starting', started=?, heartbeat=?, pid=NULL "
                              "WHERE id=? AND status='queued'", (time.time(), time.time(), row[0])).rowcount == 1:
                    break
            if row is None:
                return None
        return self.get_run(row[0])

    @_retried
    def set_pid(self, run_id: str, pid: int) -> None:
        with self._transaction() as db:
            db.execute("UPDATE runs SET pid=?, host=?, heartbeat=? WHERE id=? AND status IN ('starting','running')",
                       (pid, HOST, time.time(), run_id))

    @_retried
    def mark_placed(self, run_id: str, where: str) -> None:
        """A claimed run handed to a cluster scheduler (`kdcore.executors`), which places its worker when the
        resources it asked for are free: no pid yet; `where` says who holds it (the runner's reaper waits longer
        for such a run than for a local worker to announce itself)."""
        with self._transaction() as db:
            db.execute("UPDATE runs SET host=?, heartbeat=? WHERE id=? AND status='starting' AND pid IS NULL",
                       (where, time.time(), run_id))

    @_retried
    def mark_running(self, run_id: str, pid: int) -> bool:
        """The worker takes its run; False if the run is no longer its to take (e.g. cancelled)."""
        with self._transaction() as db:
            cur = db.execute(
                "UPDATE runs SET status='running', pid=?, host=?, heartbeat=?, started=COALESCE(started, ?) "
                "WHERE id=? AND status IN ('starting','queued')", (pid, HOST, time.time(), time.time(), run_id))
            return cur.rowcount == 1

    @_retried
    def adopt(self, run_ids: list[str], pid: int) -> list[str]:
        """Move queued runs to `running` under worker `pid` (which trains them with its own run)."""
        if not run_ids:
            return []
        now = time.time()
        with self._transaction() as db:
            adopted = [r for r in run_ids if db.execute(
                "UPDATE runs SET status='running', pid=?, host=?, started=?, heartbeat=? WHERE id=? AND status='queued' "
                "AND resume=0", (pid, HOST, now, now, r)).rowcount == 1]
        return adopted

    def slots_in_use(self) -> int:
        return self._db.execute(f"SELECT {_SLOTS} FROM runs WHERE status IN ('starting','running')").fetchone()[0]

    @_retried
    def heartbeat(self, run_id: str, progress: dict[str, Any] | None = None) -> bool:
        """Refresh the worker's heartbeat; returns True when a cancel was requested."""
        with self._transaction() as db:
            if progress is None:
                db.execute("UPDATE runs SET heartbeat=? WHERE id=?", (time.time(), run_id))
            else:
                db.execute("UPDATE runs SET heartbeat=?, progress=? WHERE id=?", (time.time(), json.dumps(progress), run_id))
            row = db.execute("SELECT cancel_requested FROM runs WHERE id=?", (run_id,)).fetchone()
        return bool(row and row[0])

    @_retried
    def finish(self, run_id: str, status: str, *, summary: dict[str, Any] | None = None, error: str | None = None,
               only_if: tuple[str, ...] = ACTIVE) -> bool:
        """Move a run to done/failed/cancelled, unless it already left the states in `only_if`."""
        assert status in FINISHED
        with self._transaction() as db:
            cur = db.execute(
                f"UPDATE runs SET status=?, ended=?, summary=COALESCE(?, summary), error=?, pid=NULL, resume=0 "
                f"WHERE id=? AND status IN ({','.join('?' * len(only_if))})",
                (status, time.time(), json.dumps(summary) if summary is not None else None, error, run_id, *only_if))
            return cur.rowcount == 1

    @_retried
    def request_cancel(self, run_id: str, reason: str | None = None) -> RunRecord:
        """Cancel a run no worker has taken yet (queued, or starting: its worker still launching) at once, so the
        worker finds it cancelled and exits; flag a running one (its runner also sends SIGTERM). A `reason` (a
        tuning study's "pruned at epoch 3") becomes the run's error when it ends; by default the user cancelled."""
        self.get_run(run_id)
        with self._transaction() as db:
            db.execute("UPDATE runs SET status='cancelled', ended=?, error=?, pid=NULL, resume=0 "
                       "WHERE id=? AND status IN ('queued','starting')",
                       (time.time(), reason or "cancelled before it started", run_id))
            db.execute("UPDATE runs SET cancel_requested=1, error=COALESCE(?, error) WHERE id=? AND status='running'",
                       (reason, run_id))
        return self.get_run(run_id)

    def cancel_reason(self, run_id: str) -> str:
        """Why a run that was asked to stop stops: the reason given with the request, else the user's cancel."""
        row = self._db.execute("SELECT error, cancel_requested FROM runs WHERE id=?", (run_id,)).fetchone()
        return row[0] if row and row[1] and row[0] else "cancelled by the user"

    @_retried
    def requeue(self, run_id: str, *, resume: bool, only_if: tuple[str, ...] = FINISHED) -> bool:
        """Queue a run again, unless it already left the states in `only_if` (one transaction: of two resumes
        at once, one queues it and the other gets False)."""
        with self._transaction() as db:
            return db.execute(
                f"UPDATE runs SET status='queued', ended=NULL, error=NULL, pid=NULL, cancel_requested=0, resume=?, "
                f"started=NULL WHERE id=? AND status IN ({','.join('?' * len(only_if))})",
                (int(resume), run_id, *only_if)).rowcount == 1

    def delete_run(self, run_id: str) -> None:
        """Delete a run that no worker trains (refused while starting or running) with its rows and files."""
        self.get_run(run_id)
        # the check and the delete are one step: no worker can take it in between (claims hold "queue")
        with self._transaction(lock="queue") as db:
            status = db.execute("SELECT status FROM runs WHERE id=?", (run_id,)).fetchone()
            if status is not None and status[0] in ("starting", "running"):
                raise StoreError(f"run {run_id} is {status[0]}; cancel it before deleting it")
            for table in ("metrics", "stage_results", "snapshots", "logs"):
                db.execute(f"DELETE FROM {table} WHERE run_id=?", (run_id,))
            db.execute("DELETE FROM runs WHERE id=?", (run_id,))
        shutil.rmtree(self.run_dir(run_id), ignore_errors=True)

    # --- metrics, snapshots, logs ------------------------------------------------------------------

    @_retried
    def add_records(self, run_id: str, *, metrics: list[tuple] = (), snapshots: list[tuple] = (),
                    logs: list[tuple] = (), stage_results: list[tuple] = (),
                    progress: dict[str, Any] | None = None) -> bool:
        """Write a batch in one transaction. metrics: (stage, epoch, step, name, value, t);
        snapshots: (stage, epoch, payload dict, t); logs: (t, message); stage_results: (stage, name,
        value, t), what a stage reported when it ended (a later value of the same name replaces it).
        Returns the cancel flag. The run's lock keeps its row ids in commit order (incremental reads)."""
        with self._transaction(lock=run_id) as db:
            if metrics:
                self._dialect.insert_rows(db, "metrics", ("run_id", "stage", "epoch", "step", "name", "value", "t"),
                                          [(run_id, *m) for m in metrics])
            if stage_results:
                db.executemany("INSERT INTO stage_results (run_id, stage, name, value, t) VALUES (?,?,?,?,?) "
                               "ON CONFLICT (run_id, stage, name) DO UPDATE SET value=excluded.value, t=excluded.t",
                               [(run_id, stage, name, self._dialect.encode_any(value), t)
                                for stage, name, value, t in stage_results])
            if snapshots:
                self._dialect.insert_rows(db, "snapshots", ("run_id", "stage", "epoch", "payload", "t"),
                                          [(run_id, s, e, json.dumps(p), t) for s, e, p, t in snapshots])
            if logs:
                self._dialect.insert_rows(db, "logs", ("run_id", "t", "message"), [(run_id, t, m) for t, m in logs])
            now = time.time()
            if progress is not None:
                db.execute("UPDATE runs SET heartbeat=?, progress=? WHERE id=?", (now, json.dumps(progress), run_id))
            else:
                db.execute("UPDATE runs SET heartbeat=? WHERE id=?", (now, run_id))
            row = db.execute("SELECT cancel_requested FROM runs WHERE id=?", (run_id,)).fetchone()
        return bool(row and row[0])

    @_retried
    def drop_records_after(self, run_id: str, stage: str, epoch: int) -> None:
        """Forget what a stage reported after `epoch` (resuming from that epoch's checkpoint), and what it
        reported when it ended: it has not ended any more."""
        with self._transaction() as db:
            db.execute("DELETE FROM metrics WHERE run_id=? AND stage=? AND epoch>?", (run_id, stage, epoch))
            db.execute("DELETE FROM stage_results WHERE run_id=? AND stage=?", (run_id, stage))
            db.execute("DELETE FROM snapshots WHERE run_id=? AND stage=? AND epoch>?", (run_id, stage, epoch))

    def metrics_since(self, run_id: str, cursor: int = 0) -> tuple[list[MetricRow], int]:
        """Metric rows with id > cursor, and the new cursor."""
        rows = self._rows(MetricRow, "SELECT id, stage, epoch, step, name, value, t FROM metrics "
                                     "WHERE run_id=? AND id>? ORDER BY id", (run_id, cursor))
        return rows, (rows[-1].id if rows else cursor)

    def metrics_for(self, run_ids: list[str], names: list[str] | None = None) -> list[RunMetricRow]:
        """The metric rows of several runs at once (only `names`, when given), for comparisons and exports."""
        if not run_ids:
            return []
        sql = f"SELECT run_id, stage, epoch, step, name, value, t FROM metrics WHERE run_id IN ({','.join('?' * len(run_ids))})"
        args: list[Any] = list(run_ids)
        if names:
            sql += f" AND name IN ({','.join('?' * len(names))})"
            args += names
        return self._rows(RunMetricRow, sql + " ORDER BY id", args)

    def series_names(self, run_ids: list[str]) -> list[tuple[str, str]]:
        """The distinct (stage, name) series these runs recorded, sorted."""
        if not run_ids:
            return []
        return [tuple(row) for row in self._db.execute(
            f"SELECT DISTINCT stage, name FROM metrics WHERE run_id IN ({','.join('?' * len(run_ids))}) "
            "ORDER BY stage, name", list(run_ids))]

    def stage_results(self, run_id: str) -> dict[str, dict[str, Any]]:
        """What each stage reported when it ended, by stage then name, e.g.
        `{"soft_labels": {"teacher_val_acc": 0.97}, "student": {"best_epoch": 4, "val_acc": 0.95}}`."""
        out: dict[str, dict[str, Any]] = {}
        for stage, name, value in self._db.execute(
                "SELECT stage, name, value FROM stage_results WHERE run_id=? ORDER BY t, stage, name", (run_id,)):
            out.setdefault(stage, {})[name] = self._dialect.decode_any(value)
        return out

    def _rows(self, row_type: type, sql: str, args: Any) -> list:
        return [row_type(*row) for row in self._db.execute(sql, args).fetchall()]

    def snapshots_since(self, run_id: str, cursor: int = 0) -> tuple[list[dict[str, Any]], int]:
        rows = self._db.execute("SELECT id, stage, epoch, payload, t FROM snapshots WHERE run_id=? AND id>? ORDER BY id",
                                (run_id, cursor)).fetchall()
        out = [{"id": r[0], "stage": r[1], "epoch": r[2], "t": r[4], **json.loads(r[3])} for r in rows]
        return out, (rows[-1][0] if rows else cursor)

    def logs(self, run_id: str, *, tail: int | None = None, since: int = 0) -> list[LogRow]:
        """The run's log lines after `since`, oldest first; with `tail`, only the last `tail` of them."""
        if tail:
            rows = self._rows(LogRow, "SELECT id, t, message FROM logs WHERE run_id=? ORDER BY id DESC LIMIT ?",
                              (run_id, tail))
            return rows[::-1]
        return self._rows(LogRow, "SELECT id, t, message FROM logs WHERE run_id=? AND id>? ORDER BY id", (run_id, since))

    # --- sweeps and settings --------------------------------------------------------------------------

    def create_sweep(self, spec: dict[str, Any]) -> str:
        with self._transaction() as db:
            sweep_id = f"sweep-{secrets.token_hex(4)}"
            db.execute("INSERT INTO sweeps VALUES (?,?,?)", (sweep_id, time.time(), json.dumps(spec)))
        return sweep_id

    def get_sweep(self, sweep_id: str) -> dict[str, Any]:
        if not isinstance(sweep_id, str) or not _SWEEP_ID.match(sweep_id):
            raise RunNotFound(f"malformed sweep id {sweep_id!r}: sweep ids look like sweep-1a2b3c4d")
        row = self._db.execute("SELECT id, created, spec FROM sweeps WHERE id=?", (sweep_id,)).fetchone()
        if row is None:
            raise RunNotFound(f"no sweep {sweep_id} in {self.where}")
        return {"sweep_id": row[0], "created": row[1], **json.loads(row[2])}

    def edit_sweep(self, sweep_id: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Read a sweep's spec, let `change` edit it in place, write it back: one transaction, so two writers
        (a study's driver, a page asking it to stop) never lose each other's edits. Returns the sweep as
        `get_sweep` does."""
        self.get_sweep(sweep_id)
        with self._transaction(lock=sweep_id) as db:
            spec = json.loads(db.execute("SELECT spec FROM sweeps WHERE id=?", (sweep_id,)).fetchone()[0])
            change(spec)
            db.execute("UPDATE sweeps SET spec=? WHERE id=?", (json.dumps(spec), sweep_id))
        return self.get_sweep(sweep_id)

    def study_storage_url(self) -> str:
        """Where tuning studies (`kdcore.tune`) keep their search state: an SQLAlchemy URL for Optuna's RDB
        storage, beside the runs so that a study lives, and moves, with them: a file under KDCORE_HOME, or the
        PostgreSQL database of KDCORE_DB (Optuna's tables beside the store's), which every machine of a cluster
        reaches."""
        if self.db_url:
            return "postgresql+psycopg://" + self.db_url.split("://", 1)[1]  # SQLAlchemy's name for psycopg 3
        return f"sqlite:///{(self.home / 'studies.db').resolve()}"

    def list_sweeps(self) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT id, created, spec FROM sweeps ORDER BY created DESC").fetchall()
        return [{"sweep_id": r[0], "created": r[1], **json.loads(r[2])} for r in rows]

    def get_setting(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (f"setting.{key}",)).fetchone()
        return row[0] if row else None

    def set_setting(self, key: str, value: str) -> None:
        with self._transaction() as db:
            db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value=excluded.value",
                       (f"setting.{key}", value))

    def settings_with_prefix(self, prefix: str) -> dict[str, str]:
        """Every setting whose key starts with `prefix`, by key (e.g. a workshop room's participants)."""
        start = f"setting.{prefix}"
        rows = self._db.execute("SELECT key, value FROM meta WHERE substr(key, 1, ?) = ? ORDER BY key",
                                (len(start), start)).fetchall()
        return {key[len("setting."):]: value for key, value in rows}

    def set_setting_if_absent(self, key: str, value: str) -> bool:
        """Set a setting only if it has no value yet; True when this call set it (one transaction)."""
        with self._transaction() as db:
            return db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                              (f"setting.{key}", value)).rowcount == 1

    # --- spare workers: processes with the training stack imported, waiting to be handed a run ------------

    def offer_spare(self, pid: int, fingerprint: str) -> None:
        """Worker `pid` waits for a run from a runner whose environment has this `fingerprint`."""
        self.set_setting(f"{_SPARE}{pid}", f"{fingerprint}|")

    def claim_spare(self, run_id: str, fingerprint: str, alive: Callable[[int], bool]) -> int | None:
        """Hand `run_id` to a waiting spare worker of this environment; its pid, or None when there is none.
        One transaction: a spare is handed one run, however many runners ask at once. Dead spares are forgotten."""
        with self._transaction(lock="queue") as db:
            for key, value in db.execute("SELECT key, value FROM meta WHERE substr(key, 1, ?) = ? ORDER BY key",
                                         (len(_SPARE_KEY), _SPARE_KEY)).fetchall():
                pid, (offered, _, taken) = int(key[len(_SPARE_KEY):]), value.partition("|")
                if offered != fingerprint:
                    continue  # another environment's, maybe on another machine, where `alive` cannot judge it
                if not alive(pid):
                    db.execute("DELETE FROM meta WHERE key=?", (key,))
                elif not taken:
                    db.execute("UPDATE meta SET value=? WHERE key=?", (f"{offered}|{run_id}", key))
                    return pid
        return None

    def spare_waiting(self, fingerprint: str, alive: Callable[[int], bool]) -> bool:
        """Whether a live spare worker of this environment waits for a run."""
        return any(offered == fingerprint and not taken and alive(int(key[len(_SPARE):]))
                   for key, (offered, _, taken) in ((k, v.partition("|"))
                                                    for k, v in self.settings_with_prefix(_SPARE).items()))

    def spare_run(self, pid: int) -> str | None:
        """The run handed to spare worker `pid`, if any yet."""
        value = self.get_setting(f"{_SPARE}{pid}")
        return (value.partition("|")[2] or None) if value else None

    def withdraw_spare(self, pid: int) -> str | None:
        """Spare worker `pid` stops waiting: its offer is removed. The run it was handed meanwhile, if any."""
        with self._transaction(lock="queue") as db:
            row = db.execute("SELECT value FROM meta WHERE key=?", (f"{_SPARE_KEY}{pid}",)).fetchone()
            db.execute("DELETE FROM meta WHERE key=?", (f"{_SPARE_KEY}{pid}",))
        return (row[0].partition("|")[2] or None) if row else None

    def delete_settings(self, prefix: str) -> int:
        """Forget every setting whose key starts with `prefix`; returns how many were removed."""
        start = f"setting.{prefix}"
        with self._transaction() as db:
            return db.execute("DELETE FROM meta WHERE substr(key, 1, ?) = ?", (len(start), start)).rowcount


_RUN_COLUMNS = ("id, seq, name, config, status, created, started, ended, pid, heartbeat, error, summary, progress, "
                "sweep_id, resume, cancel_requested, owner, host")
# Worker processes busy, each a slot: a pid on its host (the runs of a sweep that one worker trains together
# share it), or the run itself while its worker is being started.
_SLOTS = "COUNT(DISTINCT COALESCE(COALESCE(host, '') || ':' || CAST(pid AS TEXT), id))"

# The fair queue's next run (see `Store.claim_next`). `waiting` ranks owners by how long they have
# waited: since their oldest queued run was submitted, or since their last run started if later.
_NEXT_FAIR_RUN = """
WITH waiting AS (
    SELECT owner, MIN(seq) AS first_seq, MIN(created) AS first_created FROM runs WHERE status='queued' GROUP BY owner
), served AS (
    SELECT owner, MAX(started) AS last_start FROM runs
    WHERE started IS NOT NULL AND status != 'queued' GROUP BY owner
)
SELECT runs.id FROM waiting
JOIN runs ON runs.seq = waiting.first_seq
LEFT JOIN served ON served.owner {same} waiting.owner
ORDER BY {greatest}(waiting.first_created, COALESCE(served.last_start, 0)), waiting.first_seq
LIMIT 1
"""


def _record(row: tuple) -> RunRecord:
    (run_id, seq, name, config, status, created, started, ended, pid, heartbeat, error, summary, progress,
     sweep_id, resume, cancel_requested, owner, host) = row
    return RunRecord(run_id, seq, name, json.loads(config), status, created, started, ended, pid, heartbeat, error,
                     json.loads(summary) if summary else None, json.loads(progress) if progress else None,
                     sweep_id, bool(resume), bool(cancel_requested), owner, host)
