"""Tests for kdcore.worker: the store-backed callback on a real SQLite store, how a run's end is recorded,
and `python -m kdcore worker RUN_ID` in a real process on a tiny digits run.

The runner's side (spawning workers, the queue, cancel and resume of live workers) is tests/test_runner.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdcore import worker
from kdcore.callbacks import Callback
from kdcore.config import RunConfig
from kdcore.store import Store
from kdcore.worker import StoreCallback, execute

REPO = Path(__file__).resolve().parents[1]
TINY = {"dataset": "digits", "epochs": 2, "batch_size": 64, "student": {"arch": "mlp-tiny"},
        "teacher": {"arch": "mlp-small", "epochs": 1}, "baseline": False}


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A real store; buffered rows are written on count or on an explicit flush only, never because of
    how long a test took (each test that is about the time-based flush sets its own)."""
    monkeypatch.setattr(worker, "FLUSH_SECONDS", 3600.0)
    store = Store(tmp_path / "home")
    yield store
    store.close()


def running(store: Store, config: dict | None = None) -> str:
    return store.create_run(config if config is not None else RunConfig.from_dict(TINY).to_dict(), status="running",
                            pid=os.getpid())


def metrics(store: Store, run_id: str) -> list[tuple]:
    return [(r.stage, r.epoch, r.step, r.name, r.value) for r in store.metrics_since(run_id)[0]]


def messages(store: Store, run_id: str) -> list[str]:
    return [row.message for row in store.logs(run_id)]


# ---------------------------------------------------------------- StoreCallback: batching


def test_metrics_are_buffered_until_the_epoch_ends(store):
    run_id = running(store)
    callback = StoreCallback(store, run_id)
    callback.on_stage_start("student", 2, 3)
    assert messages(store, run_id) == ["student: started (2 epochs × 3 steps)"]
    for step in (1, 2, 3):
        callback.on_metrics("student", 1, step, {"train_loss": 1.0 / step, "train_kd": 0.5})
    assert metrics(store, run_id) == []
    callback.on_epoch_end("student", 1, {"val_acc": 0.5})
    assert metrics(store, run_id) == [("student", 1, step, name, value) for step in (1, 2, 3)
                                      for name, value in (("train_loss", 1.0 / step), ("train_kd", 0.5))]
    progress = store.get_run(run_id).progress
    assert (progress["stage"], progress["epoch"], progress["step"], progress["epochs"]) == ("student", 1, 3, 2)


def test_a_full_buffer_is_written_at_once(store, monkeypatch):
    monkeypatch.setattr(worker, "FLUSH_ROWS", 4)
    run_id = running(store)
    callback = StoreCallback(store, run_id)
    callback.on_metrics("student", 1, 1, {"a": 1.0, "b": 2.0})
    assert metrics(store, run_id) == []
    callback.on_metrics("student", 1, 2, {"a": 3.0, "b": 4.0})
    assert [row[4] for row in metrics(store, run_id)] == [1.0, 2.0, 3.0, 4.0]


def test_buffered_rows_are_written_once_flush_seconds_have_passed(store, monkeypatch):
    monkeypatch.setattr(worker, "FLUSH_SECONDS", 0.0)  # every step is "a while after the last flush"
    run_id = running(store)
    callback = StoreCallback(store, run_id)
    callback.on_metrics("student", 1, 1, {"train_loss": 0.25})
    assert metrics(store, run_id) == [("student", 1, 1, "train_loss", 0.25)]


def test_snapshots_and_log_lines_go_with_the_next_flush(store):
    run_id = running(store)
    callback = StoreCallback(store, run_id)
    callback.on_snapshot("student", 0, {"indices": [3, 1], "student_T": [[0.5, 0.5], [1.0, 0.0]]})
    callback.on_log("a line for the log")
    assert store.snapshots_since(run_id)[0] == [] and messages(store, run_id) == []
    callback.flush()
    (snapshot,), _ = store.snapshots_since(run_id)
    assert (snapshot["stage"], snapshot["epoch"], snapshot["indices"]) == ("student", 0, [3, 1])
    assert messages(store, run_id) == ["a line for the log"]


def test_stage_end_records_its_values_and_a_log_line(store):
    run_id = running(store)
    StoreCallback(store, run_id).on_stage_end("student", {"test_acc": 0.8125, "best_epoch": 2})
    assert store.stage_results(run_id)["student"] == {"test_acc": 0.8125, "best_epoch": 2}
    assert messages(store, run_id) == ["student: finished (test_acc 0.8125, best_epoch 2)"]


# ---------------------------------------------------------------- StoreCallback: stopping


def test_a_cancel_request_is_seen_at_the_next_flush(store):
    run_id = running(store)
    callback = StoreCallback(store, run_id)
    callback.on_metrics("student", 1, 1, {"train_loss": 1.0})
    store.request_cancel(run_id)  # what the runner (or another process) does
    assert not callback.should_stop(), "the store is read when writing, not on every step"
    callback.on_epoch_end("student", 1, {})
    assert callback.should_stop()
    assert store.get_run(run_id).status == "running"  # the worker itself records how the run ended


def test_sigterm_stops_through_the_stop_signal(store):
    callback = StoreCallback(store, running(store))
    assert not callback.should_stop()
    callback.stop_signal.set()  # what the worker's SIGTERM handler does
    assert callback.should_stop()


# ---------------------------------------------------------------- StoreCallback: starting again, resuming


def test_a_stage_started_again_forgets_its_earlier_try_only(store):
    run_id = running(store)
    callback = StoreCallback(store, run_id)
    callback.on_metrics("teacher", 1, 1, {"train_loss": 2.0})
    callback.on_metrics("student", 1, 1, {"train_loss": 1.0})
    callback.flush()
    StoreCallback(store, run_id).on_stage_start("student", 2, 3)  # e.g. a run retried without a checkpoint
    assert metrics(store, run_id) == [("teacher", 1, 1, "train_loss", 2.0)]


def test_resume_drops_what_came_after_the_checkpoint_and_continues_the_stage(store):
    run_id = running(store)
    before = StoreCallback(store, run_id)
    for epoch in (1, 2, 3):
        before.on_metrics("student", epoch, epoch * 10, {"train_loss": float(epoch)})
    before.flush()
    callback = StoreCallback(store, run_id)  # a new worker, resuming after epoch 1
    callback.on_resume("student", 1)
    assert metrics(store, run_id) == [("student", 1, 10, "train_loss", 1.0)]
    callback.on_stage_start("student", 3, 10)
    assert metrics(store, run_id) == [("student", 1, 10, "train_loss", 1.0)], "the resumed stage keeps its epoch 1"
    progress = store.get_run(run_id).progress
    assert (progress["epoch"], progress["step"]) == (1, 10)


# ---------------------------------------------------------------- execute: how a run ends


class StopAtOnce(Callback):
    def should_stop(self) -> bool:
        return True


def test_a_run_stopped_by_the_user_ends_cancelled(store):
    run_id = running(store)
    outcome = execute(store, run_id, RunConfig.from_dict(TINY), extra_callbacks=[StopAtOnce()])
    record = store.get_run(run_id)
    assert outcome == {"run_id": run_id, "status": "cancelled"}
    assert record.status == "cancelled" and record.error == "cancelled by the user" and record.pid is None
    assert any(m.startswith("cancelled: ") for m in messages(store, run_id))


def test_a_user_error_ends_the_run_failed_with_its_message(store, tmp_path):
    missing = tmp_path / "no-such-folder"
    config = RunConfig.from_dict({**TINY, "dataset": f"imagefolder:{missing}"})
    run_id = running(store, config.to_dict())
    outcome = execute(store, run_id, config)
    record = store.get_run(run_id)
    assert outcome["status"] == "failed" and str(missing) in outcome["error"]
    assert record.status == "failed" and record.error == outcome["error"]
    assert f"failed: {outcome['error']}" in messages(store, run_id)


# ---------------------------------------------------------------- python -m kdcore worker RUN_ID


def worker_process(home: Path, run_id: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KDCORE_HOME": str(home), "KDCORE_MAX_RUNS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "kdcore", "worker", run_id], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def worked(tmp_path_factory):
    """One queued tiny run, trained by a worker process started by hand."""
    home = tmp_path_factory.mktemp("worker-home")
    store = Store(home)
    run_id = store.create_run(RunConfig.from_dict(TINY).to_dict())
    result = worker_process(home, run_id)
    yield store, run_id, result
    store.close()


def test_the_worker_process_trains_a_queued_run_to_done(worked):
    store, run_id, result = worked
    assert result.returncode == 0, result.stderr[-2000:]
    record = store.get_run(run_id)
    assert record.status == "done", record.error
    assert record.pid is None and record.summary["run_id"] == run_id and 0 <= record.summary["student_test_acc"] <= 1
    assert (store.run_dir(run_id) / "student.pt").is_file()


def test_the_worker_process_records_every_step_and_stage(worked):
    from kdcore.data import load_dataset

    store, run_id, _ = worked
    steps = [(r.epoch, r.step) for r in store.metrics_since(run_id)[0] if r.stage == "student" and r.name == "train_loss"]
    assert len(steps) == len(set(steps)) == 2 * (len(load_dataset("digits").train_x) // 64)
    log = messages(store, run_id)
    assert "student: started (2 epochs × 20 steps)" in log and any(m.startswith("student: finished") for m in log)
    assert {"teacher", "student"} <= set(store.stage_results(run_id))


def test_the_worker_leaves_a_run_that_is_not_queued_alone(tmp_path):
    store = Store(tmp_path)
    run_id = store.create_run(RunConfig.from_dict(TINY).to_dict())
    store.finish(run_id, "cancelled", error="cancelled before it started", only_if=("queued",))
    result = worker_process(tmp_path, run_id)
    assert result.returncode == 0 and f"run {run_id} is cancelled; nothing to do" in result.stdout
    assert store.get_run(run_id).status == "cancelled" and store.metrics_since(run_id)[0] == []


def test_the_worker_fails_a_run_whose_stored_config_is_invalid(tmp_path):
    store = Store(tmp_path)
    run_id = store.create_run({**TINY, "epochs": -1})  # e.g. written by another version of kdcore
    result = worker_process(tmp_path, run_id)
    record = store.get_run(run_id)
    assert result.returncode == 1 and record.status == "failed"
    assert record.error.startswith("stored config is invalid: ") and "epochs" in record.error
