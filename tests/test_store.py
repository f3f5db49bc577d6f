"""The run store on both backends, real SQLite files and a real PostgreSQL server: layout, ids, schema
versions, incremental reads, concurrency. The tests of SQLite files themselves (corrupt, foreign, migrated)
and of PostgreSQL's own failures (unreachable, wrong password) are one backend's."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import sqlite3
import threading
import time

import psycopg
import pytest
from postgres_server import PASSWORD_USER
from run_helpers import TINY, kdcore, last_json

from kdcore.config import RunConfig
from kdcore.errors import RunNotFound, StoreError
from kdcore.owners import OwnerLimitError
from kdcore.store import SCHEMA_VERSION, LogRow, MetricRow, RunMetricRow, Store, upload_name


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request) -> str:
    """KDCORE_DB for one test: empty (SQLite under its KDCORE_HOME), or a new database on the test server."""
    return "" if request.param == "sqlite" else request.getfixturevalue("postgres_server").new_database()


@pytest.fixture()
def store(tmp_path, database):
    s = Store(tmp_path / "home", db=database)
    yield s
    s.close()


def test_create_and_read_back_a_run(store):
    config = RunConfig().to_dict()
    run_id = store.create_run(config, name="first")
    record = store.get_run(run_id)
    assert record.status == "queued" and record.name == "first" and record.config == config
    assert store.run_dir(run_id).is_dir()
    assert [r.id for r in store.list_runs()] == [run_id]
    assert store.list_runs(status="done") == []


@pytest.mark.parametrize("bad", ["../etc", "run-../../x", "", "run-1234", "RUN-1a2b3c4d", "run-1a2b3c4d/..", "/tmp"])
def test_malformed_run_ids_are_refused_before_any_path_is_built(store, bad):
    with pytest.raises(RunNotFound, match="malformed run id"):
        store.get_run(bad)
    with pytest.raises(RunNotFound):
        store.run_dir(bad)


def test_unknown_run_id_names_the_store(store):
    with pytest.raises(RunNotFound, match="no run run-00000000"):
        store.get_run("run-00000000")


def test_incremental_metric_reads_return_only_new_rows(store):
    run_id = store.create_run({})
    store.add_records(run_id, metrics=[("student", 1, s, "train_loss", float(s), time.time()) for s in range(1, 4)])
    rows, cursor = store.metrics_since(run_id, 0)
    assert [r[3] for r in rows] == [1, 2, 3]
    assert store.metrics_since(run_id, cursor) == ([], cursor)
    store.add_records(run_id, metrics=[("student", 1, 4, "train_loss", 4.0, time.time())])
    rows, cursor2 = store.metrics_since(run_id, cursor)
    assert [r[3] for r in rows] == [4] and cursor2 > cursor


def test_snapshots_and_logs_round_trip(store):
    run_id = store.create_run({})
    store.add_records(run_id, snapshots=[("student", 2, {"student_T": [[0.5, 0.5]]}, 1.0)], logs=[(1.0, "hello")])
    snaps, _ = store.snapshots_since(run_id)
    assert snaps[0]["epoch"] == 2 and snaps[0]["student_T"] == [[0.5, 0.5]]
    assert [m for _, _, m in store.logs(run_id)] == ["hello"]


def test_resume_drops_what_was_reported_after_the_checkpoint(store):
    run_id = store.create_run({})
    rows = [("student", e, e * 10, "val_acc", 0.5, 0.0) for e in (1, 2, 3)] + [("teacher", 5, 50, "val_acc", 0.9, 0.0)]
    store.add_records(run_id, metrics=rows)
    store.drop_records_after(run_id, "student", 1)
    left = [(r[1], r[2]) for r in store.metrics_since(run_id)[0]]
    assert left == [("student", 1), ("teacher", 5)]


def test_rows_are_typed_and_still_unpack_by_position(store):
    run_id = store.create_run({})
    store.add_records(run_id, metrics=[("student", 1, 7, "train_tckd", 0.25, 5.0)], logs=[(6.0, "hello")])
    (row,), cursor = store.metrics_since(run_id)
    assert isinstance(row, MetricRow) and (row.stage, row.epoch, row.step, row.name, row.value) == \
        ("student", 1, 7, "train_tckd", 0.25)
    assert row.id == cursor and tuple(row)[1:] == ("student", 1, 7, "train_tckd", 0.25, 5.0)
    (other,) = store.metrics_for([run_id], ["train_tckd"])
    assert isinstance(other, RunMetricRow) and other.run_id == run_id and other[5] == 0.25
    (log,) = store.logs(run_id)
    assert isinstance(log, LogRow) and log.message == "hello" and log.t == 6.0
    assert store.logs(run_id, tail=1) == [log]
    assert store.series_names([run_id]) == [("student", "train_tckd")] and store.series_names([]) == []


def test_stage_results_are_recorded_values(store):
    run_id = store.create_run({})
    assert store.stage_results(run_id) == {}
    store.add_records(run_id, stage_results=[("soft_labels", "teacher_val_acc", 0.9731, 1.0),
                                             ("student", "best_epoch", 4, 2.0), ("student", "val_acc", 0.5, 2.0)])
    store.add_records(run_id, stage_results=[("student", "val_acc", 0.95, 3.0)])  # the same stage ending again
    results = store.stage_results(run_id)
    assert results == {"soft_labels": {"teacher_val_acc": 0.9731}, "student": {"best_epoch": 4, "val_acc": 0.95}}
    assert isinstance(results["student"]["best_epoch"], int)
    store.drop_records_after(run_id, "student", 2)  # resumed: the student has not ended any more
    assert store.stage_results(run_id) == {"soft_labels": {"teacher_val_acc": 0.9731}}


def test_the_worker_callback_records_what_a_stage_ends_with(store):
    from kdcore.worker import StoreCallback

    run_id = store.create_run({})
    callback = StoreCallback(store, run_id)
    callback.on_stage_end("soft_labels", {"teacher_val_acc": 0.97})
    callback.on_stage_end("student", {"best_epoch": 2, "val_acc": 0.9})
    assert store.stage_results(run_id) == {"soft_labels": {"teacher_val_acc": 0.97},
                                           "student": {"best_epoch": 2, "val_acc": 0.9}}
    assert [log.message for log in store.logs(run_id)][-1] == "student: finished (best_epoch 2, val_acc 0.9000)"


def test_worker_log_tail_reads_only_the_end_of_the_file(store):
    run_id = store.create_run({})
    assert store.worker_log_tail(run_id) == []  # the worker wrote nothing (or never started)
    path = store.worker_log_path(run_id)
    assert path.parent == store.run_dir(run_id)
    path.write_bytes(b"".join(b"line %d\n" % i for i in range(100_000)) + b"bad \xff byte\n")
    tail = store.worker_log_tail(run_id, max_lines=3, max_bytes=4096)
    assert tail == ["line 99998", "line 99999", "bad \ufffd byte"]
    assert all(line.startswith(("line", "bad")) for line in store.worker_log_tail(run_id, 10_000, 4096))
    with pytest.raises(RunNotFound):
        store.worker_log_tail("../../etc")


@pytest.mark.parametrize("filename", ["../../etc/passwd", "..\\..\\boot.ini", "/abs/path/teacher.pt", ".hidden.pt",
                                      "we!rd name$.pth", "", "...."])
def test_upload_names_cannot_escape_the_uploads_folder(filename: str) -> None:
    name = upload_name(filename, b"weights")
    assert "/" not in name and "\\" not in name and not name.startswith(".")
    assert name.endswith((".pt", ".pth"))
    assert name.split("-", 1)[0] == hashlib.sha256(b"weights").hexdigest()[:12]


def test_save_upload_stores_a_file_once_under_the_store(store):
    path = store.save_upload("../../my teacher.pt", b"weights")
    assert path.parent == store.home / "uploads" and path.name.endswith("-my_teacher.pt")
    assert path.read_bytes() == b"weights"
    assert store.save_upload("other/name/my teacher.pt", b"weights").name == path.name  # same content, same file
    assert store.save_upload("my teacher.pt", b"other weights") != path
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".")) == []  # no partial files left


def test_claim_respects_the_limit_and_submission_order(store):
    ids = [store.create_run({}) for _ in range(3)]
    first = store.claim_next(limit=2)
    second = store.claim_next(limit=2)
    assert [first.id, second.id] == ids[:2]
    assert store.claim_next(limit=2) is None
    store.finish(ids[0], "done", summary={"x": 1})
    assert store.claim_next(limit=2).id == ids[2]


def test_a_batch_of_runs_is_queued_and_named_in_its_sweep_at_once(store):
    """create_runs: another connection (the app's scheduler, a worker looking for its sweep siblings) sees none
    of a batch or all of it, and the sweep's spec names them in the same instant; over an owner's cap, none."""
    sweep_id = store.create_sweep({"name": "batch", "size": 0, "trials": {}})
    seen: set[tuple[int, int]] = set()
    stop = threading.Event()

    def watch() -> None:
        other = Store(store.home, db=store.db_url)
        while not stop.is_set():
            with other._transaction() as db:  # one statement: one snapshot on either backend
                queued, spec = db.execute("SELECT (SELECT COUNT(*) FROM runs WHERE sweep_id=?), (SELECT spec FROM "
                                          "sweeps WHERE id=?)", (sweep_id, sweep_id)).fetchone()
            seen.add((queued, len(json.loads(spec)["trials"])))
        other.close()

    watcher = threading.Thread(target=watch)
    watcher.start()
    time.sleep(0.2)

    def name_them(spec, run_ids):
        time.sleep(0.2)  # a slow edit: the runs inserted before it must stay unseen meanwhile
        spec["trials"].update({run_id: i for i, run_id in enumerate(run_ids)})
        spec["size"] = len(run_ids)

    ids = store.create_runs([({"n": i}, f"run {i}") for i in range(6)], sweep_id=sweep_id, sweep_change=name_them)
    time.sleep(0.2)
    stop.set()
    watcher.join()
    assert seen == {(0, 0), (6, 6)}
    assert [r.name for r in sorted(store.list_runs(sweep_id=sweep_id), key=lambda r: ids.index(r.id))] == [
        f"run {i}" for i in range(6)]
    assert store.get_sweep(sweep_id)["trials"] == {run_id: i for i, run_id in enumerate(ids)}
    assert all(store.run_dir(run_id).is_dir() for run_id in ids)

    store.create_run({}, owner="ada")
    with pytest.raises(OwnerLimitError, match="cannot queue 3 more runs"):
        store.create_runs([({}, "a"), ({}, "b"), ({}, "c")], owner="ada", owner_cap=3, sweep_id=sweep_id,
                          sweep_change=name_them)
    assert len(store.list_runs(owner="ada")) == 1 and store.get_sweep(sweep_id)["size"] == 6


def test_delete_refuses_a_running_run_and_removes_a_finished_one(store):
    run_id = store.create_run({})
    store.claim_next(limit=1)
    store.mark_running(run_id, pid=12345)
    with pytest.raises(StoreError, match="cancel it before deleting"):
        store.delete_run(run_id)
    store.finish(run_id, "cancelled")
    store.add_records(run_id, metrics=[("student", 1, 1, "train_loss", 1.0, 0.0)],
                      stage_results=[("student", "val_acc", 0.5, 0.0)])
    store.delete_run(run_id)
    assert not store.run_dir(run_id).exists()
    assert store.metrics_since(run_id) == ([], 0) and store.stage_results(run_id) == {}
    with pytest.raises(RunNotFound):
        store.get_run(run_id)


def test_cancel_of_a_queued_run_is_immediate(store):
    run_id = store.create_run({})
    assert store.request_cancel(run_id).status == "cancelled"


def test_a_newer_schema_is_refused_with_the_file_named(tmp_path):
    Store(tmp_path).close()
    db = sqlite3.connect(tmp_path / "kdcore.db")
    db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=r"kdcore\.db was written by a newer kdcore"):
        Store(tmp_path)


def test_a_version_1_store_is_migrated_and_keeps_its_runs(tmp_path):
    db = sqlite3.connect(tmp_path / "kdcore.db")
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1');
        CREATE TABLE runs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, name TEXT NOT NULL DEFAULT '',
            config TEXT NOT NULL, status TEXT NOT NULL, created REAL NOT NULL, started REAL, ended REAL, pid INTEGER,
            heartbeat REAL, error TEXT, summary TEXT, progress TEXT, resume INTEGER NOT NULL DEFAULT 0);
        INSERT INTO runs (id, config, status, created) VALUES ('run-0000abcd', '{}', 'done', 1.0);
    """)
    db.commit()
    db.close()
    store = Store(tmp_path)
    record = store.get_run("run-0000abcd")
    assert record.status == "done" and record.sweep_id is None and record.cancel_requested is False
    assert store._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)


def test_a_corrupt_database_is_a_clear_error(tmp_path):
    (tmp_path / "kdcore.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="kdcore.db is unreadable"):
        Store(tmp_path)


def test_a_foreign_sqlite_file_is_not_taken_over(tmp_path):
    db = sqlite3.connect(tmp_path / "kdcore.db")
    db.execute("CREATE TABLE other (x)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="not a kdcore run store"):
        Store(tmp_path)


def test_a_store_folder_that_cannot_be_created_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot be created"):
        Store(blocker / "home")


def _claim_many(home: str, database: str, results) -> None:
    store = Store(home, db=database)
    claimed = []
    for _ in range(20):
        record = store.claim_next(limit=3)
        if record:
            claimed.append(record.id)
        time.sleep(0.001)
    results.put(claimed)


def test_concurrent_claims_from_several_processes_never_double_start(tmp_path, database):
    store = Store(tmp_path, db=database)
    ids = [store.create_run({}) for _ in range(10)]
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_claim_many, args=(str(tmp_path), database, results)) for _ in range(4)]
    for p in procs:
        p.start()
    claimed = [run for _ in procs for run in results.get(timeout=60)]
    for p in procs:
        p.join(timeout=60)
    assert len(claimed) == len(set(claimed)) == 3  # the limit, each run once
    assert set(claimed) <= set(ids)


def test_concurrent_writers_lose_nothing_and_live_reads_miss_nothing(tmp_path, database):
    """Four processes write one run's metrics in batches while this one reads them incrementally, as a live
    page does: every row arrives once, none is skipped (PostgreSQL: a batch committed after a later one)."""
    store = Store(tmp_path, db=database)
    run_id = store.create_run({})
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(str(tmp_path), database, run_id, w)) for w in range(4)]
    for p in procs:
        p.start()
    seen, cursor = [], 0
    while any(p.is_alive() for p in procs) or not seen:
        rows, cursor = store.metrics_since(run_id, cursor)
        seen += rows
        time.sleep(0.005)
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    seen += store.metrics_since(run_id, cursor)[0]
    every = {(r.epoch, r.step) for r in store.metrics_since(run_id)[0]}
    assert len(every) == 4 * 50 * 20  # nothing lost, nothing written twice
    assert len(seen) == len({r.id for r in seen}) and {(r.epoch, r.step) for r in seen} == every


def _write_many(home: str, database: str, run_id: str, worker: int, batches: int = 50, size: int = 20) -> None:
    store = Store(home, db=database)
    for batch in range(batches):
        store.add_records(run_id, metrics=[("student", worker, batch * size + i, "m", 1.0, 0.0) for i in range(size)])


# --- PostgreSQL's own: its failures, its migrations, a whole sweep through the CLI ------------------------------


def test_postgresql_that_cannot_be_used_is_one_clear_line(tmp_path, postgres_server):
    with pytest.raises(StoreError, match=r"postgresql://nobody@127\.0\.0\.1:1/x cannot be reached: .*refused") as refused:
        Store(tmp_path, db="postgresql://nobody@127.0.0.1:1/x")
    assert "\n" not in str(refused.value)
    wrong = postgres_server.url(user=PASSWORD_USER).replace("@", ":not-the-password@")
    with pytest.raises(StoreError, match="password authentication failed") as denied:
        Store(tmp_path, db=wrong)
    assert "not-the-password" not in str(denied.value) and ":***@" in str(denied.value)
    with pytest.raises(StoreError, match="KDCORE_DB must be a postgresql://"):
        Store(tmp_path, db="mysql://root@localhost/kd")


def test_a_postgresql_database_of_another_application_is_not_taken_over(tmp_path, postgres_server):
    database = postgres_server.new_database()
    with psycopg.connect(database, autocommit=True) as db:
        db.execute("CREATE TABLE invoices (id INTEGER)")
    with pytest.raises(StoreError, match="is a PostgreSQL database but not a kdcore run store"):
        Store(tmp_path, db=database)


def test_postgresql_stores_are_migrated_and_versioned_like_sqlite_ones(tmp_path, postgres_server):
    database = postgres_server.new_database()
    with psycopg.connect(database, autocommit=True) as db:  # version 1: no sweeps, no cancel flag, no owners
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        db.execute("CREATE TABLE runs (seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, id TEXT NOT NULL UNIQUE, "
                   "name TEXT NOT NULL DEFAULT '', config TEXT NOT NULL, status TEXT NOT NULL, created DOUBLE PRECISION "
                   "NOT NULL, started DOUBLE PRECISION, ended DOUBLE PRECISION, pid INTEGER, heartbeat DOUBLE PRECISION, "
                   "error TEXT, summary TEXT, progress TEXT, resume INTEGER NOT NULL DEFAULT 0)")
        db.execute("INSERT INTO runs (id, config, status, created) VALUES ('run-0000abcd', '{}', 'done', 1.0)")
    store = Store(tmp_path, db=database)
    record = store.get_run("run-0000abcd")
    assert record.status == "done" and record.sweep_id is None and record.owner is None and not record.cancel_requested
    store.add_records(record.id, metrics=[("student", 1, 1, "m", 0.5, 1.0)])  # the tables added since exist
    store.close()
    with psycopg.connect(database, autocommit=True) as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
        db.execute("UPDATE meta SET value=%s WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StoreError, match=r"was written by a newer kdcore .* use another KDCORE_DB"):
        Store(tmp_path, db=database)


def test_a_postgresql_restart_while_a_worker_writes_loses_and_doubles_nothing(tmp_path, postgres_server):
    database = postgres_server.new_database()
    store = Store(tmp_path, db=database)
    run_id = store.create_run({})
    # big batches: the restart most likely cuts a transaction short, which the store then writes again
    writer = multiprocessing.get_context("spawn").Process(target=_write_many,
                                                          args=(str(tmp_path), database, run_id, 0, 20, 1000))
    writer.start()
    while not store.metrics_since(run_id)[0]:
        time.sleep(0.02)
    postgres_server.restart()  # every connection is cut, the writer's included
    assert writer.is_alive(), "the writer should still be writing when the server restarts"
    store.close()
    writer.join(timeout=120)
    assert writer.exitcode == 0
    store = Store(tmp_path, db=database)
    rows = store.metrics_since(run_id)[0]
    assert sorted(r.step for r in rows) == list(range(20 * 1000))
    assert store.heartbeat(run_id) is False  # this process's new connection works as well


@pytest.mark.slow
def test_a_sweep_through_the_cli_on_postgresql(tmp_path, postgres_server, monkeypatch):
    """The issue's check without Ray: a sweep queued, trained by a worker and listed, all through KDCORE_DB;
    its rows are in PostgreSQL and no SQLite file appears. An unreachable KDCORE_DB is one line, exit 2."""
    monkeypatch.setenv("KDCORE_DB", "postgresql://nobody@127.0.0.1:1/x")
    refused = kdcore(tmp_path, "runs")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1 and "cannot be reached" in refused.stderr
    database = postgres_server.new_database()
    monkeypatch.setenv("KDCORE_DB", database)
    sweep = last_json(kdcore(tmp_path, "sweep", "--grid", "temperature=1,4", *TINY, "--wait", "--json"))
    listed = last_json(kdcore(tmp_path, "runs", "--json"))
    run_ids = sorted(run["run_id"] for run in listed["runs"])
    assert len(run_ids) == 2 and {run["status"] for run in listed["runs"]} == {"done"}, listed
    assert sorted(sweep["runs"]) == run_ids
    with psycopg.connect(database, autocommit=True) as db:
        per_run = dict(db.execute("SELECT run_id, COUNT(*) FROM metrics GROUP BY run_id").fetchall())
    assert sorted(per_run) == run_ids and min(per_run.values()) > 0
    assert not (tmp_path / "kdcore.db").exists()
