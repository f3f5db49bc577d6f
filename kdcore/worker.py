"""The worker: one process per run, writing everything it learns to the store.

`python -m kdcore worker RUN_ID` (started by `kdcore.runner`) and `python -m kdcore run` (in the
foreground) both go through `execute()`. Reports are batched by count and time so that logging
costs a few percent at most; a heartbeat thread keeps the run visibly alive during long steps.
SIGTERM asks the trainer to stop at its next step; the run is then marked cancelled and keeps its
per-epoch checkpoint, so `resume` can continue it.

A stop request is honoured as `cancelled` whenever it arrives (see README, "Run states"):
- before the worker took its run (`starting`): the store records it cancelled at once
  (`Store.request_cancel`) and the worker, finding its run gone, exits;
- before this process could handle SIGTERM at all (the interpreter still starting): the worker dies of
  the signal, and the runner's reaper sees the cancel flag and records `cancelled`, not `failed`;
- from `worker_main`'s first line on, SIGTERM only sets a flag, read before training begins and by
  every step of every stage (teacher, soft labels, student, fine-tuning, baseline);
- while the summary is written: a run asked to stop before it was recorded done ends cancelled (its
  checkpoints stay; `resume` finishes it without training again).

Faults end a run `failed` with a reason that names them, and lose nothing already written: a batch the
store could not take (disk full, database locked for longer than the store retries) is kept and written
with the run's last words; a run folder removed or made unwritable, or a full disk while saving a
checkpoint, fails the run with that message (`kdcore.train.Progress`, `kdcore.checkpoints.save_atomic`),
and the checkpoints saved before stay readable. A heartbeat the store cannot take is retried at the next beat.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from typing import Any

from kdcore.callbacks import Callback, CallbackList
from kdcore.config import RunConfig
from kdcore.errors import Cancelled, KDError, StoreError
from kdcore.store import Store

FLUSH_ROWS = 2000  # metric rows per transaction at most
FLUSH_SECONDS = 1.0  # and at least this often while training, so live views stay live
HEARTBEAT_SECONDS = 5.0
NEXT_RUN_ENV = "KDCORE_WORKER_STARTS_NEXT"  # "0": whoever started this worker starts the next queued run
TEST_PAUSE_ENV = "KDCORE_TEST_PAUSE"  # tests only: "RUN_ID=PHASE,..." makes a worker wait at PHASE (see pause_point)
TEST_PAUSE_MAX_S = 300.0  # a test that failed leaves no worker waiting for long

# Set by SIGTERM from worker_main's first line on, before the trainer's callbacks exist (see _Reporting).
_stop_requested = threading.Event()


def _on_sigterm(*_: Any) -> None:
    _stop_requested.set()


def pause_point(store: Store, run_id: str, phase: str, stopped: Any = lambda: False, before: Any = None) -> None:
    """A hook for the tests of cancel, resume, delete and faults at every moment of a run: when KDCORE_TEST_PAUSE
    names this run (or `*`) with `phase`, create `<run folder>/paused-at-<phase>` and wait until `stopped()`, the
    file is removed (the test lets it go on), or TEST_PAUSE_MAX_S pass. Once per run: a resumed run whose file is
    still there does not wait again. Phases: launch (before SIGTERM is handled), imports (running, torch not yet
    imported), teacher, soft_labels, student, finetune, baseline (during that stage), summary (before the run's
    end is recorded). `before()` runs once the pause is decided, before the file is made (a flush: the test sees
    what the run reported up to here)."""
    spec = os.environ.get(TEST_PAUSE_ENV)
    if not spec:
        return
    wanted = dict(item.split("=", 1) for item in spec.split(",") if "=" in item)
    marker = store.run_dir(run_id) / f"paused-at-{phase}"
    if phase not in (wanted.get(run_id), wanted.get("*")) or marker.exists():
        return
    if before is not None:
        before()
    marker.touch()
    deadline = time.monotonic() + TEST_PAUSE_MAX_S
    while marker.exists() and not stopped() and time.monotonic() < deadline:
        time.sleep(0.05)


class StoreCallback(Callback):
    """Buffers what the trainer reports and writes it to the store in batches."""

    def __init__(self, store: Store, run_id: str) -> None:
        self.store, self.run_id = store, run_id
        self.metrics: list[tuple] = []
        self.snapshots: list[tuple] = []
        self.logs: list[tuple] = []
        self.stage_results: list[tuple] = []
        self.progress: dict[str, Any] = {}
        self.last_flush = time.monotonic()
        self.cancel_requested = False
        self.stop_signal = threading.Event()
        self.resumed_stage: str | None = None
        self.paused: set[str] = set()  # stages whose test pause point was passed
        self._lock = threading.Lock()

    # --- trainer hooks -----------------------------------------------------------------------------

    def on_stage_start(self, stage, epochs, steps_per_epoch):
        if stage != self.resumed_stage:  # a stage trained from its start again: forget any earlier partial try
            self.flush()
            self.store.drop_records_after(self.run_id, stage, -1)
        epoch = self.progress.get("epoch", 0) if stage == self.resumed_stage else 0
        self.progress = {"stage": stage, "epochs": epochs, "steps_per_epoch": steps_per_epoch, "epoch": epoch,
                         "step": epoch * steps_per_epoch, "stage_started": time.time()}
        started = f"{stage}: started ({epochs} epochs × {steps_per_epoch} steps)" if epochs else f"{stage}: started"
        self.logs.append((time.time(), started))
        self.flush()
        if epochs == 0:  # a stage without steps (soft labels): the moment is its start
            self._pause(stage)

    def on_metrics(self, stage, epoch, step, values):
        now = time.time()
        self.metrics.extend((stage, epoch, step, name, float(value), now) for name, value in values.items())
        self.progress["step"] = step
        if len(self.metrics) >= FLUSH_ROWS or time.monotonic() - self.last_flush >= FLUSH_SECONDS:
            self.flush()
        self._pause(stage)

    def on_epoch_end(self, stage, epoch, values):
        self.progress["epoch"] = epoch
        self.flush()

    def on_snapshot(self, stage, epoch, payload):
        self.snapshots.append((stage, epoch, payload, time.time()))

    def on_stage_end(self, stage, values):
        now = time.time()
        summary = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
        self.logs.append((now, f"{stage}: finished ({summary})"))  # for people reading the log
        self.stage_results.extend((stage, name, value, now) for name, value in values.items()
                                  if isinstance(value, (int, float)))  # for pages: recorded values, not log text
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

    def _pause(self, phase: str) -> None:
        if phase not in self.paused:
            self.paused.add(phase)
            # while paused, only reads: a test may hold the database's write lock meanwhile, and the run must go on
            # (and report later) as soon as the file is removed
            pause_point(self.store, self.run_id, phase, before=self.flush, stopped=self._stop_seen)

    def _stop_seen(self) -> bool:
        """should_stop, with the store's cancel flag read (not written: see _pause)."""
        self.cancel_requested |= self.store.get_run(self.run_id).cancel_requested
        return self.should_stop()

    # --- writing -------------------------------------------------------------------------------------

    def flush(self) -> None:
        """Write what is buffered in one transaction. When the store cannot take it (disk full, locked for too
        long), the rows stay buffered for the next flush and a StoreError says why."""
        with self._lock:
            metrics, snapshots, logs, results = self.metrics, self.snapshots, self.logs, self.stage_results
            self.metrics, self.snapshots, self.logs, self.stage_results = [], [], [], []
            try:
                self.cancel_requested |= self.store.add_records(self.run_id, metrics=metrics, snapshots=snapshots,
                                                                logs=logs, stage_results=results,
                                                                progress=dict(self.progress) or None)
            except Exception as exc:  # one transaction: none of the batch was written, so none of it is lost
                self.metrics, self.snapshots = metrics + self.metrics, snapshots + self.snapshots
                self.logs, self.stage_results = logs + self.logs, results + self.stage_results
                raise StoreError(_store_failure(exc)) from exc
            self.last_flush = time.monotonic()


def _store_failure(exc: Exception) -> str:
    text = str(exc) if isinstance(exc, KDError) else f"{type(exc).__name__}: {exc}"
    return text if text.startswith("run store") else f"could not write to the run store: {text}"


def _heartbeat_loop(store_home, callbacks: dict[str, StoreCallback], stop: threading.Event) -> None:
    """Refresh the heartbeats from a separate connection while the trainer is busy in a long step."""
    store = Store(store_home)
    try:
        while not stop.wait(HEARTBEAT_SECONDS):
            for run_id, callback in callbacks.items():
                try:
                    if store.heartbeat(run_id):
                        callback.cancel_requested = True
                except Exception:  # a store busy or full for a moment: the next beat tries again
                    pass
    finally:
        store.close()


class _Reporting:
    """Callbacks, heartbeat and SIGTERM handling around the training of one or several runs; and the
    experiment trackers (`kdcore.tracking`) each run's config asks for, fed by the same hooks."""

    def __init__(self, store: Store, run_ids: list[str], configs: list[RunConfig], *, resume: bool = False) -> None:
        self.store, self.configs, self.resume = store, dict(zip(run_ids, configs)), resume
        self.callbacks = {run_id: StoreCallback(store, run_id) for run_id in run_ids}
        self.trackers: dict[str, list[Any]] = {run_id: [] for run_id in run_ids}
        self._stop = threading.Event()
        self._beat = threading.Thread(target=_heartbeat_loop, args=(store.home, self.callbacks, self._stop), daemon=True)
        self._previous = None

    def __enter__(self) -> _Reporting:
        self._beat.start()
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, lambda *_: self._stop_all())
        if _stop_requested.is_set():  # SIGTERM came while the worker was still starting
            self._stop_all()
            return self
        from kdcore.tracking import callbacks_for  # after the heartbeat and the stop signal: a tracker's server may be slow

        for run_id, config in self.configs.items():
            self.trackers[run_id] = callbacks_for(config, run_id, log=self.callbacks[run_id].on_log,
                                                  checkpoint=self.store.student_checkpoint(run_id), resume=self.resume)
        return self

    def for_run(self, run_id: str) -> Callback:
        """What the trainer reports one run's progress to: its store callback and its trackers."""
        trackers = self.trackers[run_id]
        return CallbackList([self.callbacks[run_id], *trackers]) if trackers else self.callbacks[run_id]

    def finish_trackers(self, run_id: str, status: str, summary: dict[str, Any] | None) -> None:
        """Close the run's trackers (each catches its own failure, as a warning in the run's log)."""
        for tracker in self.trackers[run_id]:
            tracker.finish(status, summary)

    def _stop_all(self) -> None:
        _stop_requested.set()
        for callback in self.callbacks.values():
            callback.stop_signal.set()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        _stop_requested.clear()  # honoured by these runs; a process that runs more (tests, `run`) starts afresh


def _record_outcome(store: Store, run_id: str, reporting: _Reporting, outcome: Any) -> dict[str, Any]:
    """Write how a run ended (to its trackers first, so that a warning of theirs reaches the log); return what
    `execute` returns for it. A run asked to stop before it is recorded done ends cancelled (the user pressed
    Cancel before the run said it had finished); one whose last rows the store cannot take ends failed with
    that reason."""
    callback = reporting.callbacks[run_id]
    if isinstance(outcome, dict):
        pause_point(store, run_id, "summary", lambda: _flush_error(callback) is None and callback.should_stop())
        error = _flush_error(callback)
        if error is not None:
            outcome = error
        elif callback.should_stop():
            outcome = Cancelled("stopped while writing its summary; resume finishes it without training again")
        else:
            summary = {"run_id": run_id, **outcome}
            reporting.finish_trackers(run_id, "done", summary)
            _flush_error(callback)  # a tracker's warning
            store.finish(run_id, "done", summary=summary)
            return summary
    if isinstance(outcome, Cancelled):
        callback.on_log(f"cancelled: {outcome}")
        reporting.finish_trackers(run_id, "cancelled", None)
        _flush_error(callback)
        store.finish(run_id, "cancelled", error=store.cancel_reason(run_id))
        return {"run_id": run_id, "status": "cancelled"}
    callback.on_log(f"failed: {outcome}")
    reporting.finish_trackers(run_id, "failed", None)
    _flush_error(callback)
    store.finish(run_id, "failed", error=str(outcome))
    return {"run_id": run_id, "status": "failed", "error": str(outcome)}


def _flush_error(callback: StoreCallback) -> StoreError | None:
    """Flush (which also reads the cancel flag); the error when the store cannot take the rows now. The run's
    end is recorded all the same: a one-row update may pass where a batch did not."""
    try:
        callback.flush()
    except StoreError as exc:
        return exc
    return None


def _record_crash(store: Store, run_ids: list[str], reporting: _Reporting, exc: BaseException) -> None:
    """A bug or an environment failure: keep the traceback in the runs' logs and mark them failed."""
    lines = traceback.format_exc().rstrip().splitlines()[-30:]
    message = f"internal error: {type(exc).__name__}: {exc}".strip()[:1000]
    for run_id in run_ids:
        callback = reporting.callbacks[run_id]
        for line in lines:
            callback.on_log(line)
        reporting.finish_trackers(run_id, "failed", None)
        _flush_error(callback)
        store.finish(run_id, "failed", error=message)


def execute(store: Store, run_id: str, config: RunConfig, *, resume: bool = False,
            extra_callbacks: list[Callback] | None = None) -> dict[str, Any]:
    """Train a run that is already marked running, record its outcome, and return its summary.

    User errors (bad data, bad checkpoint, divergence) and cancellation end the run and are returned
    as its status; anything else is a bug: the run is marked failed with the traceback, and it raises.
    """
    with _Reporting(store, [run_id], [config], resume=resume) as reporting:
        callback = reporting.callbacks[run_id]
        try:
            if callback.should_stop():  # SIGTERM while the worker was starting: nothing to train or import
                raise Cancelled("stopped before training began")
            from kdcore.trainer import run_pipeline  # torch is imported here, in the worker, not in the app

            outcome: Any = run_pipeline(config, [reporting.for_run(run_id), *(extra_callbacks or [])],
                                        teacher_cache=store.teacher_dir(), artifacts=store.run_dir(run_id), resume=resume)
        except (Cancelled, KDError) as exc:
            outcome = exc
        except BaseException as exc:
            _record_crash(store, [run_id], reporting, exc)
            raise
        return _record_outcome(store, run_id, reporting, outcome)


def execute_group(store: Store, run_ids: list[str], configs: list[RunConfig], *,
                  extra_callbacks: dict[str, list[Callback]] | None = None) -> list[dict[str, Any]]:
    """Train several runs of a sweep together (see `kdcore.group`) and record each one's outcome."""
    from kdcore.group import run_group

    with _Reporting(store, run_ids, configs) as reporting:
        extra = extra_callbacks or {}  # a tuning study's pruning, for its trials
        callbacks = [CallbackList([reporting.for_run(r), *extra[r]]) if extra.get(r) else reporting.for_run(r)
                     for r in run_ids]
        for run_id in run_ids:
            reporting.callbacks[run_id].on_log(f"trained together with {len(run_ids) - 1} other run(s) of its sweep")
        try:
            outcomes = run_group(configs, callbacks, teacher_cache=store.teacher_dir(),
                                 artifacts=[store.run_dir(r) for r in run_ids])
        except (Cancelled, KDError) as exc:
            outcomes = [exc] * len(run_ids)
        except BaseException as exc:
            _record_crash(store, run_ids, reporting, exc)
            raise
        return [_record_outcome(store, r, reporting, o) for r, o in zip(run_ids, outcomes)]


def _share_cores(store: Store) -> None:
    """Give each of the concurrent workers its share of the CPU cores: oversubscribed threads make
    small models many times slower than one thread each."""
    from kdcore.runner import max_runs

    if not os.environ.get("OMP_NUM_THREADS"):
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max_runs(store)))


WORKER_NICE = 10  # training is batch work: on a shared server the app's pages and the CLI answer first


def _yield_cpu() -> None:
    """Lower this worker's CPU priority by KDCORE_WORKER_NICE (default WORKER_NICE; 0 keeps it), so that
    two runs training on a 2-core workshop server do not make a participant's clicks slow. A machine
    with nothing else to run gives the worker all of its CPU anyway."""
    raw = os.environ.get("KDCORE_WORKER_NICE", "").strip()
    try:
        increment = int(raw) if raw else WORKER_NICE
    except ValueError:
        increment = WORKER_NICE
    if increment > 0 and hasattr(os, "nice"):
        try:
            os.nice(increment)
        except OSError:
            pass


def worker_main(run_id: str, *, warmed: bool = False) -> int:
    """Entry of `python -m kdcore worker RUN_ID`: take the run (and runs of its sweep that can train
    with it), train, then start the next queued run. warmed: a spare worker that already shares the cores
    and yields the CPU."""
    from kdcore.errors import RunNotFound
    from kdcore.runner import Runner

    store = Store()
    try:
        pause_point(store, run_id, "launch")
        signal.signal(signal.SIGTERM, _on_sigterm)  # from here on a stop request is a flag, never a lost worker
        if not store.mark_running(run_id, os.getpid()):
            print(f"run {run_id} is {store.get_run(run_id).status}; nothing to do")
            return 0
        record = store.get_run(run_id)
    except RunNotFound:  # deleted while it waited for this worker
        print(f"run {run_id} was deleted; nothing to do")
        return 0
    pause_point(store, run_id, "imports", lambda: _stop_requested.is_set() or store.get_run(run_id).cancel_requested)
    try:
        config = RunConfig.from_dict(record.config)
    except KDError as exc:
        store.finish(run_id, "failed", error=f"stored config is invalid: {exc}")
        return 1
    if not warmed:
        _share_cores(store)
        _yield_cpu()
    try:
        companions = [] if record.resume else _companions(store, record, config)
        extras = _study_callbacks(store, [record] + [r for r, _ in companions])
        if companions:
            run_ids = [run_id] + [r.id for r, _ in companions]
            execute_group(store, run_ids, [config] + [c for _, c in companions], extra_callbacks=extras)
        else:
            execute(store, run_id, config, resume=record.resume, extra_callbacks=extras.get(run_id))
    finally:
        if os.environ.get(NEXT_RUN_ENV) != "0":  # the Ray actor around this worker starts the next run itself
            Runner(store).tick()  # this slot is free now: start the next queued run
    return 0


def _study_callbacks(store: Store, records: list) -> dict[str, list[Callback]]:
    """The pruning callbacks of runs that are trials of a tuning study (`kdcore.tune`); {} for other runs."""
    if not any(r.sweep_id for r in records):
        return {}
    from kdcore.tune.pruning import pruning_callbacks

    return pruning_callbacks(store, records)


SPARE_IDLE_S = 600.0  # a spare worker nobody hands a run exits after this long (KDCORE_SPARE_IDLE_S)
SPARE_POLL_S = 0.02


def spare_main() -> int:
    """Entry of `python -m kdcore worker --spare` (started, and offered in the store to runners of the same
    environment, by `Runner.warm_spare`): import what training needs, then train the first run a runner hands
    it (`Runner._spawn`), as `worker_main` would; with none after SPARE_IDLE_S, exit."""
    signal.signal(signal.SIGTERM, _on_sigterm)  # a run handed over and cancelled at once is not a lost worker
    store = Store()
    pid = os.getpid()
    try:
        _share_cores(store)
        _yield_cpu()
        import torch._dynamo  # noqa: F401  torch.optim imports it on first use: ~1.5 s a run would wait for
        import kdcore.trainer  # noqa: F401
        from kdcore.data import builtin

        builtin.mnist_5k()  # the default dataset, read once for this process
        deadline = time.monotonic() + float(os.environ.get("KDCORE_SPARE_IDLE_S") or SPARE_IDLE_S)
        while store.spare_run(pid) is None and not _stop_requested.is_set() and time.monotonic() < deadline:
            time.sleep(SPARE_POLL_S)
    except Exception:  # a failed warm-up: a run handed over meanwhile still gets its worker (and its error) below
        pass
    run_id = store.withdraw_spare(pid)  # the run it was handed, even in the last instant
    if run_id is None:
        return 0
    try:
        log = os.open(store.worker_log_path(run_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:  # its folder is gone: the run fails saying so at its first checkpoint
        pass
    else:
        os.dup2(log, 1)  # from here on this process is the run's worker, writing its worker.log
        os.dup2(log, 2)
        os.close(log)
    return worker_main(run_id, warmed=True)


def forked_main(run_id: str, env: dict[str, str], log_path: str, cwd: str | None, slot_pid: int) -> None:
    """A run's worker as a fork of a Ray slot's warm fork server (`kdcore.ray_slots`), which has imported torch
    and the trainer already: take on the run's environment and its worker.log, then `worker_main`. A run folder
    that cannot be written fails the run saying so, as a local worker's start does. It dies with its fork server
    or its slot (`slot_pid`), so that a lost slot never leaves a worker training on resources Ray has given to
    another run."""
    import sys

    _die_with_parent()
    _die_with(slot_pid)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])  # a stop request (SIGTERM) must reach it
    os.environ.clear()
    os.environ.update(env)
    if cwd:
        os.chdir(cwd)
    try:
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError as exc:
        store = Store()
        store.finish(run_id, "failed", error=f"could not start a worker: its run folder cannot be written "
                                             f"({exc.strerror or exc}: {exc.filename})")
        store.close()
        return
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True)  # what a killed worker printed stays in its log
    threads = os.environ.get("OMP_NUM_THREADS", "").strip()
    if threads.isdigit() and int(threads) > 0:
        import torch

        torch.set_num_threads(int(threads))  # the server imported torch under its own setting
    sys.exit(worker_main(run_id))


def _die_with(pid: int) -> None:
    """Die (SIGKILL) as soon as process `pid` has: a thread waits on its pidfd (Linux), else polls it."""
    import select

    try:
        handle = os.pidfd_open(pid)
    except ProcessLookupError:
        os.kill(os.getpid(), signal.SIGKILL)
    except (OSError, AttributeError):
        handle = None

    def watch() -> None:
        if handle is not None:
            select.select([handle], [], [])
        else:
            while _pid_exists(pid):
                time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name="die-with-slot").start()


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _die_with_parent() -> None:
    """Die with the process that started this one (Linux: the fork server, whose other clients keep it alive)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _companions(store: Store, record, config: RunConfig) -> list[tuple[Any, RunConfig]]:
    """Queued runs of the same sweep that can train in one group with this one; adopted atomically."""
    from kdcore.group import MAX_GROUP, group_key

    key = group_key(config)
    if record.sweep_id is None or key is None:
        return []
    candidates = {}
    for other in reversed(store.list_runs(status="queued", sweep_id=record.sweep_id)):  # oldest first
        try:
            other_config = RunConfig.from_dict(other.config)
        except KDError:
            continue
        if not other.resume and group_key(other_config) == key and len(candidates) < MAX_GROUP - 1:
            candidates[other.id] = (other, other_config)
    adopted = store.adopt(list(candidates), os.getpid())
    return [candidates[r] for r in adopted]
