"""Owners and fair sharing: owner names, the round-robin queue, the per-owner cap, and the store migration.

The queue order is checked on the store itself and then end to end: `python -m kdcore submit --owner`
in real processes, real workers training tiny digits runs one at a time (KDCORE_MAX_RUNS=1).
"""

from __future__ import annotations

import os
import signal
import sqlite3

import pytest

from kdcore.errors import ConfigError
from kdcore.owners import OWNER_MAX_CHARS, OwnerLimitError, max_runs_per_owner, validate_owner
from kdcore.runner import Runner, pid_alive
from kdcore.store import SCHEMA_VERSION, Store
from run_helpers import TINY, kdcore, last_json

TINY_SUBMIT = [*TINY, "--set", "student.arch=mlp-tiny", "--set", "teacher.arch=mlp-small"]


@pytest.fixture()
def store(kd_home, monkeypatch):
    monkeypatch.delenv("KDCORE_MAX_RUNS", raising=False)
    monkeypatch.delenv("KDCORE_MAX_RUNS_PER_OWNER", raising=False)
    s = Store(kd_home)
    yield s
    for record in s.list_runs(status=["starting", "running"]):  # never leave a worker behind
        if record.pid and record.pid != os.getpid() and pid_alive(record.pid):
            os.kill(record.pid, signal.SIGKILL)
    s.close()


def occupy_the_only_slot(store: Store) -> str:
    """A run recorded as running under this (live) process: with KDCORE_MAX_RUNS=1 nothing else starts."""
    return store.create_run({}, status="running", pid=os.getpid())


# --- names and the cap's setting --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["alice", "Bob Smith", "élise-2", "x" * OWNER_MAX_CHARS, "a.b_c"])
def test_printable_names_up_to_the_limit_are_owners(name):
    assert validate_owner(name) == name


@pytest.mark.parametrize("name, problem", [
    ("", "non-empty"), (" alice", "leading or trailing"), ("alice\n", "leading or trailing"),
    ("al\nice", "printable"), ("al\x1bice", "printable"), ("x" * (OWNER_MAX_CHARS + 1), "at most 40"),
    (None, "must be a name"), (3, "must be a name"),
])
def test_other_names_are_refused_with_the_reason(name, problem):
    with pytest.raises(ConfigError, match=problem):
        validate_owner(name)


def test_the_per_owner_cap_comes_from_the_environment_else_the_default(monkeypatch):
    monkeypatch.delenv("KDCORE_MAX_RUNS_PER_OWNER", raising=False)
    assert max_runs_per_owner() is None and max_runs_per_owner(default=3) == 3
    monkeypatch.setenv("KDCORE_MAX_RUNS_PER_OWNER", "2")
    assert max_runs_per_owner(default=3) == 2
    for bad in ("0", "-1", "two"):
        monkeypatch.setenv("KDCORE_MAX_RUNS_PER_OWNER", bad)
        with pytest.raises(ConfigError, match="KDCORE_MAX_RUNS_PER_OWNER must be a positive integer"):
            max_runs_per_owner()


# --- the store: fair claims, the cap, the migration ---------------------------------------------------------------


def test_claims_go_round_robin_across_owners_in_submission_order_within_one(store):
    alice = [store.create_run({}, owner="alice") for _ in range(3)]
    bob = [store.create_run({}, owner="bob") for _ in range(2)]
    carol = store.create_run({}, owner="carol")
    order = [store.claim_next(limit=10).id for _ in range(6)]
    assert order == [alice[0], bob[0], carol, alice[1], bob[1], alice[2]]
    assert store.claim_next(limit=10) is None


def test_an_owner_who_just_got_a_slot_goes_behind_everyone_already_waiting(store):
    busy = occupy_the_only_slot(store)
    alice = [store.create_run({}, owner="alice") for _ in range(3)]
    bob = store.create_run({}, owner="bob")
    assert store.claim_next(limit=1) is None  # the slot is taken
    store.finish(busy, "done")
    assert store.claim_next(limit=1).id == alice[0]
    store.finish(alice[0], "done")
    assert store.claim_next(limit=1).id == bob  # waiting since before alice's first run started
    store.finish(bob, "done")
    assert store.claim_next(limit=1).id == alice[1]


def test_an_owner_who_arrives_later_joins_the_end_of_the_round(store):
    alice = [store.create_run({}, owner="alice") for _ in range(3)]
    assert store.claim_next(limit=1).id == alice[0]
    bob = store.create_run({}, owner="bob")  # submitted while alice's first run trains
    store.finish(alice[0], "done")
    assert store.claim_next(limit=1).id == alice[1]  # alice has waited since her run started, bob only since now
    store.finish(alice[1], "done")
    assert store.claim_next(limit=1).id == bob


def test_runs_without_an_owner_queue_as_one_owner(store):
    anonymous = [store.create_run({}) for _ in range(2)]
    alice = store.create_run({}, owner="alice")
    assert [store.claim_next(limit=5).id for _ in range(3)] == [anonymous[0], alice, anonymous[1]]


def test_the_cap_counts_queued_and_running_runs_of_that_owner_only(store):
    first = store.create_run({}, owner="alice", owner_cap=2)
    store.claim_next(limit=5)  # running now: it still counts
    store.create_run({}, owner="alice", owner_cap=2)
    with pytest.raises(OwnerLimitError, match=r"owner 'alice' already has 2 queued or running runs and the cap is 2"):
        store.create_run({}, owner="alice", owner_cap=2)
    store.create_run({}, owner="bob", owner_cap=2)  # another owner is not affected
    store.finish(first, "done")
    store.create_run({}, owner="alice", owner_cap=2)  # a finished run frees a place
    assert len(store.list_runs(owner="alice")) == 3 and store.count_runs(("queued",), owner="alice") == 2


def test_a_version_2_store_gains_owners_and_keeps_its_runs(tmp_path):
    db = sqlite3.connect(tmp_path / "kdcore.db")
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '2');
        CREATE TABLE runs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, name TEXT NOT NULL DEFAULT '',
            config TEXT NOT NULL, status TEXT NOT NULL, created REAL NOT NULL, started REAL, ended REAL, pid INTEGER,
            heartbeat REAL, error TEXT, summary TEXT, progress TEXT, sweep_id TEXT,
            resume INTEGER NOT NULL DEFAULT 0, cancel_requested INTEGER NOT NULL DEFAULT 0);
        INSERT INTO runs (id, config, status, created) VALUES ('run-0000abcd', '{}', 'done', 1.0);
        INSERT INTO runs (id, config, status, created) VALUES ('run-0000abce', '{}', 'queued', 2.0);
    """)
    db.commit()
    db.close()
    store = Store(tmp_path)
    assert store.get_run("run-0000abcd").owner is None and store.get_run("run-0000abcd").to_json()["owner"] is None
    assert store.claim_next(limit=1).id == "run-0000abce"  # the old queue still moves
    assert store._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    store.close()


# --- the command line, with real workers ----------------------------------------------------------------------------


def test_bob_starts_before_alices_third_run_with_one_slot(store, kd_home, monkeypatch):
    monkeypatch.setenv("KDCORE_MAX_RUNS", "1")
    busy = occupy_the_only_slot(store)  # every submission is queued before the first worker starts
    submitted = [(owner, last_json(kdcore(kd_home, "submit", *TINY_SUBMIT, "--set", f"seed={i}", "--owner", owner,
                                          "--json"))["run_id"])
                 for i, owner in enumerate(["alice", "alice", "alice", "bob"])]
    assert [store.get_run(run_id).status for _, run_id in submitted] == ["queued"] * 4
    store.finish(busy, "done")
    records = Runner(store).wait([run_id for _, run_id in submitted], poll_s=0.2, timeout_s=300)
    assert [r.status for r in records] == ["done"] * 4, [r.error for r in records]
    by_start = [owner for _, owner in sorted((r.started, owner) for r, (owner, _) in zip(records, submitted))]
    assert by_start == ["alice", "bob", "alice", "alice"]
    (_, alice_third), (_, bob) = submitted[2], submitted[3]
    assert store.get_run(bob).started < store.get_run(alice_third).started
    status = last_json(kdcore(kd_home, "status", bob, "--json"))
    assert status["owner"] == "bob" and status["status"] == "done"


def test_a_third_queued_run_for_one_owner_is_refused_with_exit_2(store, kd_home, monkeypatch):
    monkeypatch.setenv("KDCORE_MAX_RUNS", "1")
    monkeypatch.setenv("KDCORE_MAX_RUNS_PER_OWNER", "2")
    occupy_the_only_slot(store)  # nothing starts: both of alice's runs stay queued
    for seed in (0, 1):
        assert last_json(kdcore(kd_home, "submit", *TINY, "--set", f"seed={seed}", "--owner", "alice",
                                "--json"))["status"] == "queued"
    refused = kdcore(kd_home, "submit", *TINY, "--owner", "alice")
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip().splitlines() == [
        "kdcore: error: owner 'alice' already has 2 queued or running runs and the cap is 2 "
        "(KDCORE_MAX_RUNS_PER_OWNER); cannot queue another run until one finishes or is cancelled"]
    assert len(store.list_runs(owner="alice")) == 2  # nothing recorded
    assert kdcore(kd_home, "submit", *TINY, "--owner", "bob").returncode == 0
    sweep = kdcore(kd_home, "sweep", *TINY, "--grid", "temperature=2,4", "--owner", "bob")
    assert sweep.returncode == 2 and "cannot queue 2 more runs" in sweep.stderr
    assert len(store.list_runs(owner="bob")) == 1 and store.list_sweeps() == []
    listed = last_json(kdcore(kd_home, "runs", "--owner", "alice", "--json"))["runs"]
    assert {r["owner"] for r in listed} == {"alice"} and len(listed) == 2


def test_a_malformed_owner_is_a_one_line_error_and_records_nothing(store, kd_home):
    result = kdcore(kd_home, "submit", *TINY, "--owner", "x" * 41)
    assert result.returncode == 2
    assert result.stderr.strip() == "kdcore: error: owner must be at most 40 characters, got 41"
    assert store.list_runs() == []
