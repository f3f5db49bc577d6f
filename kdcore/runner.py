"""Background runs: submit, schedule, cancel, resume, and notice dead workers.

There is no scheduler daemon. Whoever touches the store schedules: `submit`, every CLI command,
every poll of the app, and each worker as it exits call `Runner.tick()`, which marks dead workers
failed and starts queued runs while slots are free. `Store.claim_next` is one SQLite transaction,
so any number of concurrent schedulers start each run exactly once and never exceed the limit.
No torch here: the app and the CLI's quick commands stay fast.

States: queued → starting (claimed, worker launching) → running (the worker took it) → done | failed |
cancelled. Every move is one conditional update in the store, so a request that races another finds the
state it lost to: two resumes at once queue the run once (the other is refused), a cancel and a worker
taking its run at the same instant end either cancelled-before-start or a running worker told to stop, and
a delete never removes a run a worker holds. What cancel, resume and delete do at each moment is in
README ("Run states and faults"); the worker's side is in `kdcore.worker`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdcore.config import RunConfig
from kdcore.errors import ConfigError, StoreError
from kdcore.executors import RAY_PLACED, executor_from_env
from kdcore.owners import max_runs_per_owner, validate_owner
from kdcore.store import ACTIVE, HOST, RunRecord, Store

HEARTBEAT_STALE_S = 90.0  # a worker refreshes its heartbeat every few seconds, even inside a long step
STARTING_GRACE_S = 30.0  # a claimed run whose worker never announced itself is put back in the queue
RAY_PLACEMENT_GRACE_S = 600.0  # ... and one Ray holds, waiting for a node with its resources (kdcore.executors)


@functools.lru_cache(maxsize=1)
def _probe_gpu_count() -> int:
    """nvidia-smi is far cheaper than importing torch just to count GPUs."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=5)
        return len([line for line in out.stdout.splitlines() if line.startswith("GPU")]) if out.returncode == 0 else 0
    except (OSError, subprocess.SubprocessError):
        return 0


def max_runs(store: Store, default: int | None = None) -> int:
    """KDCORE_MAX_RUNS, else the app's setting, else `default` (the executor's: a Ray cluster's CPUs), else 1
    per GPU (1 on a CPU-only machine)."""
    raw = os.environ.get("KDCORE_MAX_RUNS") or store.get_setting("max_runs")
    if raw:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"KDCORE_MAX_RUNS must be a positive integer, got {raw!r}") from None
        if value <= 0:
            raise ConfigError(f"KDCORE_MAX_RUNS must be a positive integer, got {raw!r}")
        return value
    return default if default is not None else max(1, _probe_gpu_count())


def environment_fingerprint(store: Store) -> str:
    """What a worker inherits from whoever starts it (interpreter, working folder, environment, store): a spare
    worker takes runs only from runners with the same, so a run never trains under another's settings."""
    blob = json.dumps([HOST, sys.executable, os.getcwd(), str(store.home.resolve()), store.db_url,
                       sorted(os.environ.items())])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def checkpoint_damage(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be read, in a few words; None when it is whole or absent. Without torch:
    a torch.save file is a zip archive whose every member carries a CRC, so a truncated or altered file shows."""
    if not path.exists():
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        return f"damaged ({path.name} is truncated or not a checkpoint: {exc})"
    except Exception as exc:  # zlib and struct errors from a mangled archive
        return f"damaged ({path.name}: {type(exc).__name__}: {exc})"
    return f"damaged ({path.name}: {bad} fails its checksum)" if bad else None


def pid_alive(pid: int | None) -> bool:
    """True while `pid` is a live process (a zombie — exited but not yet reaped — counts as dead)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True  # no /proc (macOS): trust kill(0)


class Runner:
    """Submits runs to a store and keeps its queue moving."""

    def __init__(self, store: Store | None = None, *, owner_cap: int | None = None) -> None:
        """owner_cap: the per-owner cap when KDCORE_MAX_RUNS_PER_OWNER is unset (None: no cap; the
        app passes 3 in workshop mode). Workers start where KDCORE_EXECUTOR says (`kdcore.executors`)."""
        self.executor = executor_from_env()
        self.store = store or Store()
        self.default_owner_cap = owner_cap

    def owner_cap(self) -> int | None:
        """How many queued + running runs one owner may have: KDCORE_MAX_RUNS_PER_OWNER, else the default."""
        return max_runs_per_owner(self.default_owner_cap)

    # --- submitting --------------------------------------------------------------------------------

    def submit(self, config: RunConfig, *, name: str | None = None, sweep_id: str | None = None,
               start: bool = True, owner: str | None = None) -> str:
        """Record a queued run and return its id at once; a worker starts when a slot is free.

        With an `owner`, the per-owner cap applies (`OwnerLimitError` when it is reached)."""
        (run_id,) = self.submit_many([(config, name if name is not None else config.name)], sweep_id=sweep_id,
                                     start=start, owner=owner)
        return run_id

    def submit_many(self, runs: list[tuple[RunConfig, str]], *, sweep_id: str | None = None, start: bool = True,
                    owner: str | None = None,
                    sweep_change: Callable[[dict[str, Any], list[str]], None] | None = None) -> list[str]:
        """Queue several runs, given as (config, name), at once (`Store.create_runs`: one transaction, so the
        worker that takes the first finds the others queued and trains those that share its teacher with it);
        returns their ids in order. With an `owner`, the per-owner cap refuses them all or none."""
        self.executor.check(self.store)  # an unreachable cluster is refused before anything is queued
        cap = None
        if owner is not None:
            validate_owner(owner)
            cap = self.owner_cap()
        run_ids = self.store.create_runs([(config.to_dict(), name) for config, name in runs], sweep_id=sweep_id,
                                         owner=owner, owner_cap=cap, sweep_change=sweep_change)
        if start:
            self.tick()
        return run_ids

    def cancel(self, run_id: str) -> RunRecord:
        """Cancel a run, whatever moment it is at (README, "Run states"): queued or starting, it is cancelled at
        once (a starting worker finds it so and exits); running, its worker is asked to stop (SIGTERM, and the
        store's flag) and records `cancelled` itself, keeping its checkpoint. A finished run is left as it is."""
        before = self.store.get_run(run_id)
        record = self.store.request_cancel(run_id)
        pid = record.pid if record.status == "running" else before.pid if before.status == "starting" else None
        if (record.host if record.status == "running" else before.host) not in (None, HOST):
            pid = None  # a worker of another machine (a Ray node): the store's flag reaches it within a second
        shares_worker = pid and any(r.pid == pid and r.id != run_id
                                    for r in self.store.list_runs(status=["starting", "running"]))
        # A worker training several runs of a sweep stops just this one when it sees the flag (within a second).
        if pid and not shares_worker and pid_alive(pid):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        return self.store.get_run(run_id)

    def resume(self, run_id: str) -> RunRecord:
        """Queue a failed or cancelled run again; its worker continues from the last epoch checkpoint. Refused
        (StoreError, one line) for a run in any other state, including one another resume just queued, and for
        a run whose checkpoint is damaged."""
        record = self.store.get_run(run_id)
        if record.status not in ("failed", "cancelled"):
            raise StoreError(f"run {run_id} is {record.status}; only failed or cancelled runs can be resumed")
        RunConfig.from_dict(record.config)  # still valid under this version of kdcore?
        damage = checkpoint_damage(self.store.progress_checkpoint(run_id))
        if damage:
            raise StoreError(f"run {run_id} cannot be resumed: its progress checkpoint is {damage}; submit its config "
                             f"again to train it from the start")
        if not self.store.requeue(run_id, resume=True, only_if=("failed", "cancelled")):
            status = self.store.get_run(run_id).status
            raise StoreError(f"run {run_id} is {status}; only failed or cancelled runs can be resumed")
        self.tick()
        return self.store.get_run(run_id)

    def delete(self, run_id: str) -> None:
        self.reap()
        self.store.delete_run(run_id)

    # --- scheduling ----------------------------------------------------------------------------------

    def tick(self) -> list[str]:
        """Mark dead workers failed, then start queued runs while slots are free. Returns started ids."""
        self.reap()
        started: list[str] = []
        if not self.store.count_runs(("queued",)):
            return started  # nothing to start: no need to ask the executor how many may run
        limit = max_runs(self.store, self.executor.default_max_runs(self.store))
        while (record := self.store.claim_next(limit)) is not None:
            self._spawn(record)
            started.append(record.id)
        return started

    def reap(self) -> list[str]:
        """Find runs whose worker is gone (killed, OOM, reboot) and mark them failed, keeping their data."""
        now, reaped = time.time(), []
        for record in self.store.list_runs(status=["starting", "running"]):
            if record.status == "starting" and record.pid is None:
                grace = RAY_PLACEMENT_GRACE_S if record.host == RAY_PLACED else STARTING_GRACE_S
                if now - (record.started or now) > grace:
                    self.store.requeue(record.id, resume=record.resume, only_if=("starting",))  # its scheduler died
                continue
            stale = record.heartbeat is not None and now - record.heartbeat > HEARTBEAT_STALE_S
            here = record.host in (None, HOST)  # another machine's worker (a shared store) is judged by its heartbeat
            if (here and not pid_alive(record.pid)) or stale:
                reason = (f"worker (pid {record.pid}) stopped without reporting: killed, out of memory, or the machine "
                          f"restarted" if not stale else f"worker (pid {record.pid}) stopped responding "
                          f"(no heartbeat for {now - record.heartbeat:.0f} s)")
                if stale and here and pid_alive(record.pid):
                    try:
                        os.kill(record.pid, signal.SIGKILL)
                    except OSError:
                        pass
                if record.cancel_requested:  # it was asked to stop, and stopped before it could say so
                    status = "cancelled"  # with the reason given with the request (e.g. a pruned trial), if any
                    reason = record.error or f"cancelled by the user (its worker, pid {record.pid}, ended before reporting)"
                else:
                    status = "failed"
                if self.store.finish(record.id, status, error=reason, only_if=("starting", "running")):
                    reaped.append(record.id)
        return reaped

    def _spawn(self, record: RunRecord) -> None:
        """Hand the run to a spare worker of this environment (local executor), or have the executor start
        `python -m kdcore worker RUN_ID` for it (`kdcore.executors`)."""
        if self.executor.uses_spares:
            spare = self.store.claim_spare(record.id, environment_fingerprint(self.store), pid_alive)
            if spare is not None:
                self.store.set_pid(record.id, spare)
                return
        self.executor.start(self.store, record, self._worker_env())

    def _worker_env(self) -> dict[str, str]:
        # the worker opens the same store: this folder, and this database (KDCORE_DB; empty means SQLite there)
        return {**os.environ, "KDCORE_HOME": str(self.store.home.resolve()), "KDCORE_DB": self.store.db_url,
                "KDCORE_ARTIFACTS": str(self.store.artifacts_root.resolve()), "PYTHONUNBUFFERED": "1"}

    def warm_spare(self) -> bool:
        """Start a spare worker unless one of this environment is waiting (or KDCORE_SPARE_WORKER=0); True when
        one was started. A spare imports the training stack (torch and what torch.optim pulls in: seconds) and
        waits for a run, so that a run submitted meanwhile starts training at once. The app warms one while
        the New run form is open; unused, it exits after `kdcore.worker.SPARE_IDLE_S`."""
        if os.environ.get("KDCORE_SPARE_WORKER", "1") == "0" or not self.executor.uses_spares:
            return False
        fingerprint = environment_fingerprint(self.store)
        if self.store.spare_waiting(fingerprint, pid_alive):
            return False
        try:
            proc = subprocess.Popen([sys.executable, "-m", "kdcore", "worker", "--spare"],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    env=self._worker_env(), start_new_session=True, cwd=os.getcwd())
        except OSError:
            return False  # runs then start their own workers, as without spares
        self.store.offer_spare(proc.pid, fingerprint)  # offered now: a Start right away waits only for its imports
        threading.Thread(target=proc.wait, daemon=True, name=f"reap-spare-{proc.pid}").start()
        return True

    # --- waiting ---------------------------------------------------------------------------------------

    def wait(self, run_ids: list[str], *, poll_s: float = 0.5, timeout_s: float | None = None) -> list[RunRecord]:
        """Block until every run has finished, keeping the queue moving meanwhile."""
        deadline = None if timeout_s is None else time.time() + timeout_s
        while True:
            self.tick()
            records = [self.store.get_run(r) for r in run_ids]
            if all(r.status not in ACTIVE for r in records):
                return records
            if deadline is not None and time.time() > deadline:
                return records
            time.sleep(poll_s)

