"""Background runs with real worker processes and a real SQLite store.

Each run is tiny (8x8 digits, small models) so a worker lives a few seconds, most of it importing torch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from kdcore.config import RunConfig
from kdcore.errors import StoreError
from kdcore.runner import Runner, pid_alive
from kdcore.store import ACTIVE, Store

ROOT = Path(__file__).resolve().parent.parent
TINY = {"dataset": "digits", "epochs": 2, "batch_size": 64, "student": {"arch": "mlp-tiny"},
        "teacher": {"arch": "mlp-small", "epochs": 1}, "baseline": False}
# A run long enough to interrupt: a CNN student with small batches for 12 epochs (~0.2 s each).
LONG = {**TINY, "epochs": 12, "batch_size": 16, "student": {"arch": "cnn-small"}}


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("KDCORE_HOME", str(tmp_path))
    monkeypatch.delenv("KDCORE_MAX_RUNS", raising=False)
    yield tmp_path
    store = Store(tmp_path)  # never leave a worker behind
    for record in store.list_runs(status=["starting", "running"]):
        if record.pid and pid_alive(record.pid):
            os.kill(record.pid, signal.SIGKILL)
    store.close()


def wait_for(predicate, timeout=120.0, poll=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError("condition not reached in time")


def student_losses(store: Store, run_id: str) -> list[tuple]:
    return [(r[1], r[2], r[3]) for r in store.metrics_since(run_id)[0] if r[4] == "train_loss"]


def test_submit_queues_and_a_tick_from_any_runner_trains_it_in_the_background(home):
    first = Runner()
    run_id = first.submit(RunConfig.from_dict(TINY), start=False)
    second = Runner(Store(home))  # e.g. the app after a restart
    assert second.store.get_run(run_id).status == "queued"
    assert second.tick() == [run_id]
    record = second.store.get_run(run_id)
    assert record.status in ("starting", "running"), "tick() returns while the worker trains"
    assert record.pid and record.pid != os.getpid() and pid_alive(record.pid)
    done = first.wait([run_id], timeout_s=120)[0]
    assert done.status == "done", done.error
    assert done.summary["run_id"] == run_id and 0 <= done.summary["student_test_acc"] <= 1
    assert done.pid is None and second.store.get_run(run_id).summary == done.summary
    steps = [s for s in student_losses(first.store, run_id) if s[0] == "student"]
    assert len(steps) == 2 * (len_train_digits() // 64)
    assert (first.store.run_dir(run_id) / "student.pt").is_file()


def len_train_digits() -> int:
    from kdcore.data import load_dataset

    return len(load_dataset("digits").train_x)


def test_cancel_a_running_run(home):
    runner = Runner()
    run_id = runner.submit(RunConfig.from_dict({**LONG, "epochs": 500}))
    wait_for(lambda: any(r[4] == "train_loss" and r[1] == "student" for r in runner.store.metrics_since(run_id)[0]))
    runner.cancel(run_id)
    record = wait_for(lambda: (r := runner.store.get_run(run_id)).status not in ACTIVE and r, timeout=30)
    assert record.status == "cancelled"
    assert record.progress["epoch"] < 500
    assert (runner.store.run_dir(run_id) / "progress.pt").exists() or record.progress["epoch"] == 0


def test_a_killed_worker_is_marked_failed_keeps_its_metrics_and_resumes_to_done(home):
    runner = Runner()
    run_id = runner.submit(RunConfig.from_dict(LONG))
    record = wait_for(lambda: (r := runner.store.get_run(run_id)).progress
                      and r.progress.get("stage") == "student" and r.progress.get("epoch", 0) >= 3 and r)
    os.kill(record.pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(record.pid), timeout=10)
    rows_before = runner.store.metrics_since(run_id)[0]
    runner.tick()
    failed = runner.store.get_run(run_id)
    assert failed.status == "failed" and "stopped without reporting" in failed.error
    assert runner.store.metrics_since(run_id)[0] == rows_before  # nothing written is lost

    runner.resume(run_id)
    done = runner.wait([run_id], timeout_s=180)[0]
    assert done.status == "done", done.error
    losses = student_losses(runner.store, run_id)
    student = [(e, s) for stage, e, s in losses if stage == "student"]
    assert len(student) == len(set(student)) == 12 * (len_train_digits() // 16)  # every step once
    logs = [m for _, _, m in runner.store.logs(run_id)]
    assert any("resumed after epoch" in m for m in logs)


def test_runs_from_three_processes_share_a_limit_of_two(home, monkeypatch):
    monkeypatch.setenv("KDCORE_MAX_RUNS", "2")
    env = {**os.environ, "KDCORE_HOME": str(home), "KDCORE_MAX_RUNS": "2"}
    submit = ("import sys; from kdcore.runner import Runner; from kdcore.config import RunConfig; import json;"
              "r = Runner(); [print(r.submit(RunConfig.from_dict(json.loads(sys.argv[1])))) for _ in range(2)]")
    import json

    procs = [subprocess.Popen([sys.executable, "-c", submit, json.dumps({**TINY, "seed": i})], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, text=True) for i in range(3)]
    run_ids = [line for p in procs for line in p.communicate(timeout=60)[0].split()]
    assert len(run_ids) == 6
    store = Store(home)
    peak = 0
    deadline = time.time() + 300
    while time.time() < deadline:
        Runner(store).tick()  # any active kdcore process keeps the queue moving
        peak = max(peak, store.count_runs(("starting", "running")))
        if all(store.get_run(r).status not in ACTIVE for r in run_ids):
            break
        time.sleep(0.05)
    records = [store.get_run(r) for r in run_ids]
    assert [r.status for r in records] == ["done"] * 6, [r.error for r in records]
    assert peak == 2
    for run_id in run_ids:  # no metric lost or duplicated
        steps = [(stage, e, s) for stage, e, s in student_losses(store, run_id) if stage == "student"]
        assert len(steps) == len(set(steps)) == 2 * (len_train_digits() // 64)
        names = Counter(r[4] for r in store.metrics_since(run_id)[0] if r[1] == "student")
        assert names["val_acc"] == 2
    trained = [r for r in records if not r.summary["teacher_cached"]]
    assert len(trained) == 1  # one teacher for six runs with the same teacher settings


def test_resume_refuses_a_run_that_is_not_failed_or_cancelled(home):
    runner = Runner()
    run_id = runner.submit(RunConfig.from_dict(TINY), start=False)
    with pytest.raises(StoreError, match=f"run {run_id} is queued; only failed or cancelled runs can be resumed"):
        runner.resume(run_id)


def test_a_stale_claim_whose_scheduler_died_goes_back_to_the_queue(home, monkeypatch):
    import kdcore.runner as runner_module

    store = Store(home)
    run_id = store.create_run(RunConfig.from_dict(TINY).to_dict())
    store.claim_next(limit=1)  # claimed, but the process that claimed it died before spawning a worker
    monkeypatch.setattr(runner_module, "STARTING_GRACE_S", 0.0)
    Runner(store).reap()
    assert store.get_run(run_id).status == "queued"


def test_a_worker_on_another_machine_is_judged_by_its_heartbeat_not_by_a_pid_here(tmp_path):
    """A shared (PostgreSQL) store holds runs trained on other machines: their pids mean nothing here, so the
    reaper neither fails them while they beat nor signals a process of that number here once they stop."""
    store = Store(tmp_path)
    runner = Runner(store)
    bystander = subprocess.Popen(["sleep", "60"])  # a process here whose pid the other machine's workers share
    try:
        beating, silent = store.create_run({}), store.create_run({})
        for run_id in (beating, silent):
            store.mark_running(run_id, pid=bystander.pid)
        store._db.execute("UPDATE runs SET host='gpu-node-7'")
        store._db.execute("UPDATE runs SET heartbeat=? WHERE id=?", (time.time() - 3600, silent))
        assert runner.reap() == [silent]
        assert store.get_run(beating).status == "running" and store.get_run(beating).host == "gpu-node-7"
        assert "no heartbeat for" in store.get_run(silent).error and bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
