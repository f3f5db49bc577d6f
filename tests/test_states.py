"""Run states at every moment, and faults that must lose nothing, with real worker processes.

Workers wait at a named moment through the test pause point (`kdcore.worker.pause_point`, KDCORE_TEST_PAUSE):
each writes `<run folder>/paused-at-<moment>` and waits until it is stopped or the file is removed. All the
workers of this module start together in one fixture, so their ~3 s of importing torch overlap.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
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
# Every stage of the pipeline, each as short as it gets: 1 epoch of 20 steps on 8x8 digits.
FULL = {"dataset": "digits", "epochs": 1, "batch_size": 64, "student": {"arch": "mlp-tiny"},
        "teacher": {"arch": "mlp-small", "epochs": 1}, "baseline": True, "finetune_epochs": 1}
MOMENTS = ["launch", "imports", "teacher", "soft_labels", "student", "finetune", "baseline", "summary"]


def config(**overrides) -> RunConfig:
    return RunConfig.from_dict(FULL).replace(**overrides)


def wait_for(predicate, timeout=120.0, poll=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError("condition not reached in time")


def paused(store: Store, run_id: str, moment: str) -> Path:
    marker = store.run_dir(run_id) / f"paused-at-{moment}"
    wait_for(marker.exists)
    return marker


def finished(store: Store, run_id: str, timeout: float = 120.0):
    return wait_for(lambda: (r := store.get_run(run_id)).status not in ACTIVE and r, timeout=timeout)


def worker(home: Path, run_id: str, pause: str) -> subprocess.Popen:
    """`python -m kdcore worker RUN_ID` started by hand (as a runner would), waiting at `pause`."""
    env = {**os.environ, "KDCORE_HOME": str(home), "OMP_NUM_THREADS": "1", "KDCORE_WORKER_NICE": "0",
           "KDCORE_TEST_PAUSE": pause}
    return subprocess.Popen([sys.executable, "-m", "kdcore", "worker", run_id], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def stage_steps(store: Store, run_id: str) -> Counter:
    return Counter((r.stage, r.epoch, r.step, r.name) for r in store.metrics_since(run_id)[0])


def integrity(store: Store) -> str:
    """SQLite's own check of every page of the store's database ("ok"); PostgreSQL (KDCORE_DB) checks its own."""
    if store.db_url:
        return "ok"
    with sqlite3.connect(store.home / "kdcore.db") as db:
        return db.execute("PRAGMA integrity_check").fetchone()[0]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Every worker of this module, started at once:
    - `moments`: one run per moment, started by a runner's tick (so a `launch` run is still `starting`), each
      waiting at its moment; teachers differ by seed so no run waits for another's teacher lock;
    - `folder`: a run waiting in its student stage, whose folder a test removes;
    - `group`: two runs of a sweep trained stacked by one worker, the first waiting in their shared teacher;
    - `locked`: a run in its own store waiting in the student stage while a test locks the database."""
    home, group_home, lock_home = (tmp_path_factory.mktemp(name) for name in ("states", "group", "locked"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDCORE_HOME", str(home))
        mp.setenv("KDCORE_MAX_RUNS", "20")
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.setenv("KDCORE_WORKER_NICE", "0")  # the test waits for these workers: they need not yield to it
        runner = Runner(Store(home))
        moments = {m: runner.submit(config(**{"teacher.seed": i}), start=False) for i, m in enumerate(MOMENTS)}
        folder = runner.submit(config(**{"teacher.seed": 50}), start=False)
        mp.setenv("KDCORE_TEST_PAUSE", ",".join([f"{r}={m}" for m, r in moments.items()] + [f"{folder}=student"]))
        runner.tick()

        group_store = Store(group_home)
        sweep = group_store.create_sweep({"grid": {"temperature": [2, 4]}})
        group = [group_store.create_run(config(temperature=t, baseline=False, finetune_epochs=0,
                                               **{"teacher.seed": 77}).to_dict(), sweep_id=sweep) for t in (2, 4)]
        lock_store = Store(lock_home)
        locked = lock_store.create_run(config(baseline=False, finetune_epochs=0, epochs=3).to_dict())
        procs = [worker(group_home, group[0], f"{group[0]}=teacher"), worker(lock_home, locked, f"{locked}=student")]
        yield {"runner": runner, "moments": moments, "folder": folder, "group": (Runner(group_store), group),
               "locked": (lock_store, locked, procs[1])}
        for store in (runner.store, group_store, lock_store):
            for record in store.list_runs(status=["starting", "running"]):
                if record.pid and pid_alive(record.pid):
                    os.kill(record.pid, signal.SIGKILL)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


# ---------------------------------------------------------------- cancel, resume, delete at every moment


def test_cancel_while_queued_is_immediate_and_no_worker_ever_takes_it(lab):
    runner = lab["runner"]
    run_id = runner.submit(config(), start=False)
    record = runner.cancel(run_id)
    assert (record.status, record.error, record.pid) == ("cancelled", "cancelled before it started", None)
    assert runner.store.claim_next(limit=100) is None or runner.store.get_run(run_id).status == "cancelled"
    runner.delete(run_id)  # a run no worker trains may be deleted


@pytest.mark.parametrize("moment", MOMENTS)
def test_cancel_at_each_moment_ends_cancelled_and_delete_and_resume_are_refused_before(lab, moment):
    runner, run_id = lab["runner"], lab["moments"][moment]
    paused(runner.store, run_id, moment)
    record = wait_for(lambda: (r := runner.store.get_run(run_id)).pid and r, timeout=10)  # the runner set its pid
    assert record.status == ("starting" if moment == "launch" else "running")
    if moment in ("teacher", "soft_labels", "student", "finetune", "baseline"):
        assert record.progress["stage"] == moment
    with pytest.raises(StoreError, match=f"run {run_id} is {record.status}; cancel it before deleting it"):
        runner.delete(run_id)
    with pytest.raises(StoreError, match="only failed or cancelled runs can be resumed"):
        runner.resume(run_id)

    runner.cancel(run_id)
    ended = finished(runner.store, run_id, timeout=60)
    assert ended.status == "cancelled", ended.error
    assert ended.pid is None and ended.error in ("cancelled by the user", "cancelled before it started")
    if record.pid:  # the worker is gone, and noticing that changes nothing
        wait_for(lambda: not pid_alive(record.pid), timeout=30)
    runner.reap()
    assert runner.store.get_run(run_id).status == "cancelled"
    if moment == "summary":
        assert (runner.store.run_dir(run_id) / "student.pt").is_file(), "what was trained is kept"


def test_resuming_twice_at_once_starts_one_worker_and_finishes_without_training_again(lab):
    runner, run_id = lab["runner"], lab["moments"]["summary"]
    if runner.store.get_run(run_id).status in ACTIVE:  # this test alone: cancel it while it writes its summary
        paused(runner.store, run_id, "summary")
        runner.cancel(run_id)
        finished(runner.store, run_id)
    trained = stage_steps(runner.store, run_id)
    env = {**os.environ, "KDCORE_HOME": str(runner.store.home)}
    env.pop("KDCORE_TEST_PAUSE", None)
    procs = [subprocess.Popen([sys.executable, "-m", "kdcore", "resume", run_id], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [(p.wait(timeout=60), *p.communicate()) for p in procs]
    assert sorted(rc for rc, _, _ in results) == [0, 2, 2], results
    for rc, _, err in results:
        if rc == 2:
            assert len(err.strip().splitlines()) == 1 and "only failed or cancelled runs can be resumed" in err
    done = finished(runner.store, run_id)
    assert done.status == "done", done.error
    workers = [m for _, _, m in runner.store.logs(run_id) if m.startswith("device ")]
    assert len(workers) == 2, "the first worker, then one resumed worker"
    after = stage_steps(runner.store, run_id)
    assert after == trained and set(after.values()) == {1}, "no stage trained again, no row twice"


def test_cancelling_one_run_of_a_stacked_group_stops_that_run_alone(lab):
    """Even while the teacher they share trains: it goes on for the other run."""
    runner, (first, second) = lab["group"]
    paused(runner.store, first, "teacher")
    assert runner.store.get_run(second).pid == runner.store.get_run(first).pid, "one worker trains both"
    runner.cancel(first)
    assert runner.store.get_run(second).status == "running", "the shared worker got no SIGTERM"
    stopped, kept = finished(runner.store, first), finished(runner.store, second)
    assert stopped.status == "cancelled"
    assert kept.status == "done" and kept.summary["group_size"] == 2, kept.error
    assert not kept.summary["teacher_cached"] and "teacher" in runner.store.stage_results(second)


def test_a_stop_request_before_the_worker_could_handle_it_still_ends_cancelled(tmp_path):
    """The reaper's side of the reported bug: a worker killed by the SIGTERM of a cancel (the interpreter was
    still starting) is recorded cancelled, not "stopped without reporting"."""
    store = Store(tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    run_id = store.create_run(config().to_dict(), status="running", pid=gone.pid)
    store.request_cancel(run_id)
    assert Runner(store).reap() == [run_id]
    record = store.get_run(run_id)
    assert record.status == "cancelled" and record.error.startswith("cancelled by the user")
    other = store.create_run(config().to_dict(), status="running", pid=gone.pid)  # no cancel asked: a lost worker
    Runner(store).reap()
    assert store.get_run(other).status == "failed" and "stopped without reporting" in store.get_run(other).error


def test_a_requeue_happens_once_and_a_starting_run_cancels_at_once(tmp_path):
    store = Store(tmp_path)
    run_id = store.create_run(config().to_dict())
    store.finish(run_id, "failed", error="x")
    assert store.requeue(run_id, resume=True) is True
    assert store.requeue(run_id, resume=True) is False, "a second resume finds it queued already"
    assert store.claim_next(limit=1).id == run_id
    assert store.request_cancel(run_id).status == "cancelled"
    assert store.mark_running(run_id, os.getpid()) is False, "its worker, still launching, finds it cancelled"


# ---------------------------------------------------------------- faults


def test_a_database_locked_by_another_process_makes_writers_wait_and_loses_nothing(lab):
    store, run_id, proc = lab["locked"]
    if store.db_url:
        pytest.skip("this is SQLite's write lock; the store here is PostgreSQL (KDCORE_DB)")
    marker = paused(store, run_id, "student")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time; db = sqlite3.connect(sys.argv[1], isolation_level=None); "
        "db.execute('BEGIN IMMEDIATE'); db.execute(\"INSERT INTO meta VALUES ('setting.lock-test', 'held')\"); "
        "print('locked', time.time(), flush=True); time.sleep(3); db.execute('COMMIT'); print(time.time(), flush=True)"),
        str(store.home / "kdcore.db")], stdout=subprocess.PIPE, text=True)
    word, locked_at = holder.stdout.readline().split()
    assert word == "locked"
    marker.unlink()  # the worker trains on and tries to write while the lock is held
    released = float(holder.stdout.readline())
    holder.wait(timeout=10)
    record = finished(store, run_id)
    out, _ = proc.communicate(timeout=30)
    assert record.status == "done", (record.error, out[-2000:])
    assert record.ended > released, "the run could only finish once the lock was gone"
    produced = [r.t for r in store.metrics_since(run_id)[0] if r.stage == "student"]
    assert any(float(locked_at) < t < released for t in produced), "metrics came while the lock was held"
    assert "locked" not in out and "Traceback" not in out
    steps = stage_steps(store, run_id)
    assert set(steps.values()) == {1}, "no metric written twice"
    student = sorted({step for stage, _, step, name in steps if stage == "student" and name == "train_loss"})
    assert student == list(range(1, student[-1] + 1)) and len(student) == 3 * 20, "no metric lost"
    assert store.get_setting("lock-test") == "held" and integrity(store) == "ok"


def test_a_run_folder_removed_under_a_running_worker_fails_the_run_saying_so(lab):
    runner, run_id = lab["runner"], lab["folder"]
    paused(runner.store, run_id, "student")
    before = stage_steps(runner.store, run_id)
    shutil.rmtree(runner.store.run_dir(run_id))  # the pause ends with its file
    record = finished(runner.store, run_id)
    assert record.status == "failed" and record.pid is None
    assert record.error.startswith(f"run folder {runner.store.run_dir(run_id)} was removed while the run trained")
    assert not runner.store.run_dir(run_id).exists(), "not made again, empty"
    assert set(stage_steps(runner.store, run_id).values()) == {1} and before.keys() <= stage_steps(runner.store, run_id).keys()
    runner.reap()
    assert runner.store.get_run(run_id).status == "failed" and integrity(runner.store) == "ok"
    runner.delete(run_id)  # and the store lets it go cleanly


def test_a_queued_run_whose_folder_was_removed_fails_to_start_saying_so(tmp_path, monkeypatch):
    monkeypatch.setenv("KDCORE_HOME", str(tmp_path))
    store = Store(tmp_path)
    run_id = Runner(store).submit(config(), start=False)
    shutil.rmtree(store.run_dir(run_id))
    assert Runner(store).tick() == [run_id]  # the scheduler itself does not fail
    record = store.get_run(run_id)
    assert record.status == "failed" and record.pid is None
    assert record.error.startswith("could not start a worker: its run folder cannot be written (No such file")


def _progress_checkpoint_bytes(tmp_path: Path) -> bytes:
    import torch

    torch.save({"stage": "student", "epoch": 1, "model": {"w": torch.ones(64, 10)}}, tmp_path / "p.pt")
    return (tmp_path / "p.pt").read_bytes()


@pytest.mark.parametrize("damage", ["truncated", "altered"])
def test_resume_refuses_a_damaged_progress_checkpoint_in_one_line(tmp_path, damage):
    home = tmp_path / "home"
    store = Store(home)
    run_id = store.create_run(config().to_dict(), status="running", pid=os.getpid())
    store.finish(run_id, "cancelled", error="cancelled by the user")
    good = _progress_checkpoint_bytes(tmp_path)
    bad = good[: len(good) // 2] if damage == "truncated" else good[:700] + bytes(b ^ 0xFF for b in good[700:900]) + good[900:]
    store.progress_checkpoint(run_id).write_bytes(bad)
    env = {**os.environ, "KDCORE_HOME": str(home)}
    result = subprocess.run([sys.executable, "-m", "kdcore", "resume", run_id], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f"run {run_id} cannot be resumed: its progress checkpoint is damaged" in line
    assert store.get_run(run_id).status == "cancelled"


def test_a_readable_checkpoint_of_another_shape_fails_the_resumed_run_in_one_line(tmp_path):
    from kdcore.worker import execute

    store = Store(tmp_path / "home")
    run_id = store.create_run(config(baseline=False, finetune_epochs=0).to_dict(), status="running", pid=os.getpid())
    store.progress_checkpoint(run_id).write_bytes(_progress_checkpoint_bytes(tmp_path))
    outcome = execute(store, run_id, config(baseline=False, finetune_epochs=0), resume=True)
    assert outcome["status"] == "failed" and "\n" not in outcome["error"]
    assert outcome["error"].startswith("progress checkpoint does not fit this run's student stage")


@pytest.mark.parametrize("fault", ["full disk", "unwritable folder"])
def test_a_checkpoint_the_disk_refuses_fails_the_run_and_keeps_the_last_one(tmp_path, monkeypatch, fault):
    """The second epoch's progress checkpoint meets a full disk (half written, then ENOSPC) or a run folder made
    unwritable (EACCES: injected, since root may write anywhere)."""
    import errno

    from kdcore import checkpoints
    from kdcore.worker import execute

    real_save, real_mkstemp, saves = checkpoints.torch.save, checkpoints.tempfile.mkstemp, []

    def save_until_the_disk_is_full(obj, fh, *args, **kwargs):
        progress = isinstance(obj, dict) and "optimizer" in obj  # a progress checkpoint, not a teacher or a cache
        if progress and saves and fault == "full disk":
            fh.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, fh, *args, **kwargs)
        if progress:
            saves.append(obj["epoch"])

    def mkstemp_until_unwritable(*args, prefix="", **kwargs):
        if prefix.startswith("progress.pt") and saves and fault == "unwritable folder":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_mkstemp(*args, prefix=prefix, **kwargs)

    monkeypatch.setattr(checkpoints.torch, "save", save_until_the_disk_is_full)
    monkeypatch.setattr(checkpoints.tempfile, "mkstemp", mkstemp_until_unwritable)
    store = Store(tmp_path / "home")
    run = config(baseline=False, finetune_epochs=0, epochs=3)
    run_id = store.create_run(run.to_dict(), status="running", pid=os.getpid())
    outcome = execute(store, run_id, run)
    monkeypatch.undo()
    path = store.progress_checkpoint(run_id)
    reason = "No space left on device" if fault == "full disk" else "Permission denied"
    assert outcome == {"run_id": run_id, "status": "failed", "error": f"cannot write {path}: {reason}"}
    assert store.get_run(run_id).status == "failed"
    assert checkpoints.load(path)["epoch"] == 1, "the checkpoint before stays whole"
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
    assert integrity(store) == "ok"


def test_a_database_write_that_fails_keeps_its_rows_and_fails_the_run_with_the_reason(tmp_path):
    from kdcore.worker import execute

    store = Store(tmp_path / "home")
    run = config(baseline=False, finetune_epochs=0)
    run_id = store.create_run(run.to_dict(), status="running", pid=os.getpid())
    real, failed = store.add_records, []

    def disk_full_once(run_id, **rows):  # the first batch of student metrics meets a full disk
        if not failed and any(m[0] == "student" for m in rows.get("metrics", ())):
            failed.append(len(rows["metrics"]))
            raise sqlite3.OperationalError("database or disk is full")
        return real(run_id, **rows)

    store.add_records = disk_full_once
    outcome = execute(store, run_id, run)
    assert outcome["status"] == "failed"
    assert outcome["error"] == "could not write to the run store: OperationalError: database or disk is full"
    steps = stage_steps(store, run_id)
    assert set(steps.values()) == {1}, "nothing written twice"
    student = sorted({s for stage, _, s, name in steps if stage == "student" and name == "train_loss"})
    assert failed and student == list(range(1, student[-1] + 1)), "the batch that failed was written later"
    assert store.get_run(run_id).status == "failed" and integrity(store) == "ok"


# ---------------------------------------------------------------- the app restarted under its runs


@pytest.mark.browser
@pytest.mark.slow
def test_a_streamlit_restart_leaves_runs_training_and_the_new_server_shows_them(tmp_path, monkeypatch):
    """A run started by one server (its page's tick spawns the worker) trains on after that server is stopped,
    and a new server on the same store shows it live, then finished."""
    from playwright.sync_api import sync_playwright

    from app_helpers import exceptions_on, launch_chromium, require_chromium, running_app

    chromium = require_chromium(os.environ.get("KDLAB_BROWSER_TESTS") == "1")
    home = tmp_path / "home"
    store = Store(home)
    run_id = store.create_run(config(baseline=False, finetune_epochs=0, epochs=2).to_dict())
    monkeypatch.setenv("KDCORE_TEST_PAUSE", f"{run_id}=student")  # the workers the servers start inherit it
    monkeypatch.setenv("KDCORE_WORKER_NICE", "0")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    def body(page) -> str:
        return page.inner_text("body")

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, chromium)
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.set_default_timeout(60_000)
        with running_app(home, tmp_path / "first.log", keep_runs=True) as base:
            page.goto(f"{base}/live?run={run_id}")  # the page's tick starts the worker, a child of this server
            marker = paused(store, run_id, "student")
            pid = store.get_run(run_id).pid
        assert pid_alive(pid) and store.get_run(run_id).status == "running", "the worker outlived the server"

        with running_app(home, tmp_path / "second.log") as base:
            page.goto(f"{base}/live?run={run_id}")
            wait_for(lambda: "Student · step" in body(page), timeout=60, poll=0.2)
            marker.unlink()  # it trains on, watched by the new server's page
            record = finished(store, run_id)
            assert record.status == "done" and record.pid is None, record.error
            wait_for(lambda: "Student test acc" in body(page), timeout=60, poll=0.2)
            assert exceptions_on(page) == []
        browser.close()
    student = sorted({s for stage, _, s, name in stage_steps(store, run_id) if stage == "student" and name == "train_loss"})
    assert student == list(range(1, 2 * 20 + 1)), "every step recorded once across the restart"
