"""The worker: one process per run, writing everything it learns to the store.

`python -m kdcore worker RUN_ID` (started by `kdcore.runner`) and `python -m kdcore run` (in the
foreground) both go through `execute()`. Reports are batched by count and time so that logging
costs a few percent at most; a heartbeat thread keeps the run visibly alive during long steps.
SIGTERM asks the trainer to stop at its next step; the run is then marked cancelled and keeps its
per-epoch checkpoint, so `resume` can continue it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from typing import Any

from kdcore.callbacks import Callback
from kdcore.config import RunConfig
from kdcore.errors import Cancelled, KDError
from kdcore.store import Store

FLUSH_ROWS = 2000  # metric rows per transaction at most
FLUSH_SECONDS = 1.0  # and at least this often while training, so live views stay live
HEARTBEAT_SECONDS = 5.0


class StoreCallback(Callback):
    """Buffers what the trainer reports and writes it to the store in batches."""

    def __init__(self, store: Store, run_id: str) -> None:
        self.store, self.run_id = store, run_id
        self.metrics: list[tuple] = []
        self.snapshots: list[tuple] = []
        self.logs: list[tuple] = []
        self.progress: dict[str, Any] = {}
        self.last_flush = time.monotonic()
        self.cancel_requested = False
        self.stop_signal = threading.Event()
        self.resumed_stage: str | None = None
        self._lock = threading.Lock()

    # --- trainer hooks -----------------------------------------------------------------------------

    def on_stage_start(self, stage, epochs, steps_per_epoch):
        if stage != self.resumed_stage:  # a stage trained from its start again: forget any earlier partial try
            self.flush()
            self.store.drop_records_after(self.run_id, stage, -1)
        epoch = self.progress.get("epoch", 0) if stage == self.resumed_stage else 0
        self.progress = {"stage": stage, "epochs": epochs, "steps_per_epoch": steps_per_epoch, "epoch": epoch,
                         "step": epoch * steps_per_epoch, "stage_started": time.time()}
        self.logs.append((time.time(), f"{stage}: started ({epochs} epochs × {steps_per_epoch} steps)" if epochs else f"{stage}: started"))
        self.flush()

    def on_metrics(self, stage, epoch, step, values):
        now = time.time()
        self.metrics.extend((stage, epoch, step, name, float(value), now) for name, value in values.items())
        self.progress["step"] = step
        if len(self.metrics) >= FLUSH_ROWS or time.monotonic() - self.last_flush >= FLUSH_SECONDS:
            self.flush()

    def on_epoch_end(self, stage, epoch, values):
        self.progress["epoch"] = epoch
        self.flush()

    def on_snapshot(self, stage, epoch, payload):
        self.snapshots.append((stage, epoch, payload, time.time()))

    def on_stage_end(self, stage, values):
        summary = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
        self.logs.append((time.time(), f"{stage}: finished ({summary})"))
        self.flush()

    def on_resume(self, stage, epoch):
        self.flush()
        self.resumed_stage = stage
        self.progress["epoch"] = epoch
        self.store.drop_records_after(self.run_id, stage, epoch)

    def on_log(self, message):
        self.logs.append((time.time(), message))

    def should_stop(self) -> bool:
        return self.stop_signal.is_set() or self.cancel_requested

    # --- writing -------------------------------------------------------------------------------------

    def flush(self) -> None:
        with self._lock:
            metrics, snapshots, logs = self.metrics, self.snapshots, self.logs
            self.metrics, self.snapshots, self.logs = [], [], []
            self.cancel_requested |= self.store.add_records(self.run_id, metrics=metrics, snapshots=snapshots,
                                                            logs=logs, progress=dict(self.progress) or None)
            self.last_flush = time.monotonic()


def _heartbeat_loop(store_home, run_id: str, callback: StoreCallback, stop: threading.Event) -> None:
    """Refresh the heartbeat from a separate connection while the trainer is busy in a long step."""
    store = Store(store_home)
    try:
        while not stop.wait(HEARTBEAT_SECONDS):
            if store.heartbeat(run_id):
                callback.cancel_requested = True
    finally:
        store.close()


def execute(store: Store, run_id: str, config: RunConfig, *, resume: bool = False,
            extra_callbacks: list[Callback] | None = None, raise_errors: bool = False) -> dict[str, Any]:
    """Train a run that is already marked running, record its outcome, and return its summary."""
    from kdcore.trainer import run_pipeline  # torch is imported here, in the worker, not in the app

    callback = StoreCallback(store, run_id)
    stop_heartbeat = threading.Event()
    beat = threading.Thread(target=_heartbeat_loop, args=(store.home, run_id, callback, stop_heartbeat), daemon=True)
    beat.start()
    previous = signal.signal(signal.SIGTERM, lambda *_: callback.stop_signal.set()) \
        if threading.current_thread() is threading.main_thread() else None
    try:
        summary = run_pipeline(config, [callback, *(extra_callbacks or [])], teacher_cache=store.teacher_dir(),
                               artifacts=store.run_dir(run_id), resume=resume)
        summary = {"run_id": run_id, **summary}
        callback.flush()
        store.finish(run_id, "done", summary=summary)
        return summary
    except Cancelled as exc:
        callback.on_log(f"cancelled: {exc}")
        callback.flush()
        store.finish(run_id, "cancelled", error="cancelled by the user")
        if raise_errors:
            raise
        return {"run_id": run_id, "status": "cancelled"}
    except KDError as exc:
        callback.on_log(f"failed: {exc}")
        callback.flush()
        store.finish(run_id, "failed", error=str(exc))
        if raise_errors:
            raise
        return {"run_id": run_id, "status": "failed", "error": str(exc)}
    except BaseException as exc:  # a bug or an environment failure: keep the traceback in the run's log
        lines = traceback.format_exc().rstrip().splitlines()
        for line in lines[-30:]:
            callback.on_log(line)
        message = f"internal error: {type(exc).__name__}: {exc}".strip()
        try:
            callback.flush()
        finally:
            store.finish(run_id, "failed", error=message[:1000])
        raise
    finally:
        stop_heartbeat.set()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _share_cores(store: Store) -> None:
    """Give each of the concurrent workers its share of the CPU cores: oversubscribed threads make
    small models many times slower than one thread each."""
    from kdcore.runner import max_runs

    if not os.environ.get("OMP_NUM_THREADS"):
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max_runs(store)))


def worker_main(run_id: str) -> int:
    """Entry of `python -m kdcore worker RUN_ID`: take the run, train it, then start the next queued one."""
    from kdcore.runner import Runner

    store = Store()
    record = store.get_run(run_id)
    if not store.mark_running(run_id, os.getpid()):
        print(f"run {run_id} is {record.status}; nothing to do")
        return 0
    try:
        config = RunConfig.from_dict(record.config)
    except KDError as exc:
        store.finish(run_id, "failed", error=f"stored config is invalid: {exc}")
        return 1
    _share_cores(store)
    try:
        execute(store, run_id, config, resume=record.resume)
    finally:
        Runner(store).tick()  # this slot is free now: start the next queued run
    return 0
