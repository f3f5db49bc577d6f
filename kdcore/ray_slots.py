"""Ray slots: long-lived actors that run workers on the nodes of a Ray cluster (`KDCORE_EXECUTOR=ray`).

Starting each run's worker from nothing costs two process starts on its node (a Ray worker importing ray,
then `python -m kdcore worker` importing torch): many seconds a run. Instead a node keeps *slots*. A slot
is a Ray actor that holds one run's resources (`num_cpus`, `num_gpus`) and, beside it, a warm fork server:
a process that has already imported torch and the trainer. A run's worker is a fork of that server
(`kdcore.worker.forked_main`), so it starts training at once, and it is still a process of its own:

- a worker killed on its node (SIGKILL, the kernel's OOM killer) is seen by its slot, which marks its runs
  failed with the signal that ended them, keeping what they wrote, and stays ready for the next run;
- cancel reaches the worker as it does a local one (the store's flag, read within a second; SIGTERM too when
  the runner shares the machine); `resume` is a run like any other, on whichever slot is free;
- a slot's own death (killed, its node lost) takes its worker with it (the worker watches its slot's pid);
  the dispatcher then marks the run failed, as does the runner's reaper, or a silent heartbeat after 90 s.

One detached dispatcher actor (`kdcore-slots`, no resources) owns the slots: a runner hands it a claimed run
and returns; it gives the run to an idle slot of the run's shape or creates one, which Ray places on a node
with those resources free (should a slot of the run's shape become idle first, the run goes there instead:
it could otherwise wait for the very CPUs that idle slot holds). A slot that has ended its run says so, then
starts the next queued run itself
(already connected: its runner's claim goes back through the dispatcher to this, now idle, slot). Idle
slots are given back to Ray after SLOT_IDLE_S (KDCORE_RAY_SLOT_IDLE_S), and at once when a run of another
shape needs their room.
The slots are the dispatcher's children: should it die, they die with it, and their workers with them.

Ray is imported only in these actors and by the Ray executor (`kdcore.executors`); the forked worker never
touches it.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from typing import Any

from kdcore.store import HOST, Store

DISPATCHER = "kdcore-slots"
SLOT_IDLE_S = 300.0  # an idle slot holds its CPUs (and GPUs) from other users of the cluster this long at most
SLOT_IDLE_ENV = "KDCORE_RAY_SLOT_IDLE_S"  # ... or this long, as the submitter of its last run set it
CHECK_S = 2.0  # how often the dispatcher looks for dead slots and idle ones to give back
WARM_MODULES = ["kdcore.worker", "kdcore.trainer", "kdcore.data.builtin", "torch._dynamo", "sklearn.datasets"]


def dispatcher(ray: Any, namespace: str) -> Any:
    """The cluster's dispatcher actor, created by whoever needs it first (one per cluster: it is named)."""
    return ray.remote(SlotDispatcher).options(name=DISPATCHER, namespace=namespace, get_if_exists=True,
                                              lifetime="detached", num_cpus=0, max_concurrency=8,
                                              max_restarts=-1).remote()


@dataclasses.dataclass
class _Slot:
    number: int
    shape: tuple[float, float]  # (num_cpus, num_gpus)
    actor: Any
    run_id: str | None = None
    job: tuple | None = None  # the arguments of its run call: (run_id, env, log_path, cwd) of the run it was given last
    call: Any = None  # the ObjectRef of its current run call: an error there means the slot died
    placed: bool = False  # Ray has placed it (its first run call began)
    idle_since: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def env(self) -> dict[str, str] | None:  # the store and settings of the run it was given last
        return self.job[1] if self.job else None


class SlotDispatcher:
    """Gives claimed runs to idle slots of their shape, creating slots as needed; gives idle ones back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: list[_Slot] = []
        self._numbers = iter(range(1, 1 << 62))
        threading.Thread(target=self._housekeeping, daemon=True, name="kdcore-slots").start()

    def start(self, run_id: str, env: dict[str, str], log_path: str, cwd: str, resources: dict[str, float]) -> int:
        """Start `run_id`'s worker on a slot; returns the slot's number at once (the slot may still be waiting
        for Ray to place it)."""
        import ray

        shape = (float(resources["num_cpus"]), float(resources["num_gpus"]))
        with self._lock:
            slot = next((s for s in self._slots if s.shape == shape and s.run_id is None), None)
            if slot is None:
                self._make_room(shape)
                me = ray.get_runtime_context().current_actor
                number = next(self._numbers)
                actor = ray.remote(RaySlot).options(num_cpus=shape[0], num_gpus=shape[1], max_restarts=0,
                                                    max_concurrency=1).remote(me, number)
                slot = _Slot(number, shape, actor)
                self._slots.append(slot)
            self._give(slot, (run_id, env, log_path, cwd))
            return slot.number

    def placed(self, number: int, run_id: str) -> bool:
        """Slot `number` begins its run call for `run_id`: whether the run is still its to train (a run that
        waited for Ray to place a new slot goes to one of its shape that became idle meanwhile)."""
        with self._lock:
            slot = next((s for s in self._slots if s.number == number), None)
            if slot is None or slot.run_id != run_id:
                return False
            slot.placed = True
            return True

    def finished(self, number: int) -> None:
        """Slot `number` has ended its run (and recorded how); it takes the next one."""
        with self._lock:
            for slot in self._slots:
                if slot.number == number:
                    slot.run_id, slot.idle_since = None, time.monotonic()
            self._rebalance()

    def _give(self, slot: _Slot, job: tuple) -> None:
        slot.run_id, slot.job = job[0], job
        slot.call = slot.actor.run.remote(*job)

    def _rebalance(self) -> None:
        """A run waiting for Ray to place its new slot goes to an idle slot of its shape instead (the new slot's
        placement is cancelled): otherwise it could wait for the very CPUs that idle slot holds. Idle slots of
        other shapes are given back while a run still waits."""
        for waiting in [s for s in self._slots if s.run_id is not None and not s.placed]:
            idle = next((s for s in self._slots if s.run_id is None and s.shape == waiting.shape), None)
            if idle is not None:
                self._retire(waiting)
                self._give(idle, waiting.job)
        if any(s.run_id is not None and not s.placed for s in self._slots):
            for slot in [s for s in self._slots if s.run_id is None]:
                self._retire(slot)

    def slots(self) -> list[dict[str, Any]]:
        """The slots, for tests and benchmarks: number, shape, the run each trains (None when idle)."""
        with self._lock:
            return [{"number": s.number, "shape": list(s.shape), "run_id": s.run_id} for s in self._slots]

    def _make_room(self, shape: tuple[float, float]) -> None:
        """Give back idle slots of other shapes when the cluster lacks the room for a new slot of `shape`."""
        import ray

        free = ray.available_resources()
        if free.get("CPU", 0.0) >= shape[0] and free.get("GPU", 0.0) >= shape[1]:
            return
        for slot in [s for s in self._slots if s.run_id is None and s.shape != shape]:
            self._retire(slot)

    def _retire(self, slot: _Slot) -> None:
        import ray

        self._slots.remove(slot)
        ray.kill(slot.actor, no_restart=True)

    def _housekeeping(self) -> None:
        while True:
            time.sleep(CHECK_S)
            try:
                with self._lock:
                    lost = self._forget_dead()
                    self._rebalance()
                    now = time.monotonic()
                    for slot in [s for s in self._slots if s.run_id is None and now - s.idle_since > _idle_limit(s)]:
                        self._retire(slot)
                for run_id, env, reason in lost:
                    _slot_lost(run_id, env, reason)
            except Exception:  # a moment's trouble reaching Ray: the next round tries again
                pass

    def _forget_dead(self) -> list[tuple[str, dict[str, str], str]]:
        """Drop slots whose actor died; the run one was given is queued again when its worker never took it,
        else marked failed with the reason (unless its worker recorded its end): returns them, for the caller to
        do so without the lock (starting a run calls `start`)."""
        import ray

        calls = [s.call for s in self._slots if s.call is not None]
        done, _ = ray.wait(calls, num_returns=len(calls), timeout=0) if calls else ([], [])
        lost = []
        for slot in [s for s in self._slots if s.call in done]:
            try:
                ray.get(slot.call)
                slot.call = None
            except Exception as exc:
                self._slots.remove(slot)
                if slot.run_id is not None and slot.env is not None:
                    lost.append((slot.run_id, slot.env, f"its Ray slot actor died ({type(exc).__name__})"))
        return lost


def _idle_limit(slot: _Slot) -> float:
    try:
        return float((slot.env or {}).get(SLOT_IDLE_ENV) or SLOT_IDLE_S)
    except ValueError:
        return SLOT_IDLE_S


def _slot_lost(run_id: str, env: dict[str, str], reason: str) -> None:
    with _run_environment(env):
        store = _store(env)
        try:
            record = store.get_run(run_id)
            if record.status == "starting" and record.pid is None:
                store.requeue(run_id, resume=record.resume, only_if=("starting",))
                _start_next(env)
            elif record.pid is not None:  # its worker died with the slot, on whichever node that was
                record_lost_worker(store, run_id, record.pid, reason, host=record.host)
        except Exception:  # deleted, or the store unreachable: the runners' reaper judges it later
            pass
        finally:
            store.close()


class RaySlot:
    """One slot: runs one worker at a time, each a fork of this slot's warm fork server."""

    def __init__(self, dispatcher: Any, number: int) -> None:
        import multiprocessing

        self.dispatcher, self.number = dispatcher, number
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(WARM_MODULES)
        # Warm it now, in the background: the first run's fork then waits only for what is left of its imports.
        threading.Thread(target=_ensure_fork_server, daemon=True, name="kdcore-warm").start()

    def run(self, run_id: str, env: dict[str, str], log_path: str, cwd: str) -> None:
        """Fork the run's worker and wait for it; record a worker that ended without saying how; say this slot is
        idle; start the next queued run."""
        import ray

        from kdcore.worker import NEXT_RUN_ENV

        if not ray.get(self.dispatcher.placed.remote(self.number, run_id)):
            return  # given to another slot while this one waited for Ray to place it
        node_env = {key: value for key, value in os.environ.items() if not key.startswith("KDCORE_")}
        worker_env = {**node_env, **env, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, NEXT_RUN_ENV: "0"}
        try:
            _run_worker(self.context, run_id, worker_env, log_path, cwd if os.path.isdir(cwd) else None)
        finally:
            ray.get(self.dispatcher.finished.remote(self.number))
            _start_next(env)  # from here, already connected (a fresh process would spend seconds connecting)


def _ensure_fork_server() -> None:
    from multiprocessing import forkserver

    forkserver.ensure_running()


def _run_worker(context: Any, run_id: str, env: dict[str, str], log_path: str, cwd: str | None) -> int:
    """The worker of `run_id` as a fork of the warm server; its exit code. A worker that ends without recording
    its runs' end (killed by a signal, or crashed) has them marked failed with the reason here (cancelled, when
    they were asked to stop), keeping every row and checkpoint they wrote."""
    from kdcore.worker import forked_main

    store = _store(env)
    try:
        process = context.Process(target=forked_main, args=(run_id, env, log_path, cwd, os.getpid()),
                                  name=f"kdcore-{run_id}")
        try:
            process.start()
        except Exception as exc:
            store.finish(run_id, "failed", error=f"could not start a worker on {HOST} (Ray): {exc}")
            return 1
        process.join()
        code = process.exitcode
        if code != 0:
            how = (f"was killed by {signal.Signals(-code).name}" if code < 0
                   else f"exited with status {code} (see its worker.log)")
            record_lost_worker(store, run_id, process.pid, f"its worker (pid {process.pid} on {HOST}, run by Ray) {how}")
        return code
    finally:
        store.close()


def record_lost_worker(store: Store, run_id: str, pid: int, reason: str, *, host: str | None = HOST) -> list[str]:
    """Mark failed (cancelled, when asked to stop) the runs worker `pid` of `host` (this machine) held and did
    not end: `run_id`, and the runs of its sweep it trained with it. Returns their ids."""
    ended = []
    for record in store.list_runs(status=["starting", "running"]):
        mine = record.pid == pid and record.host in (None, host)
        if not (mine or (record.id == run_id and record.pid is None)):
            continue
        status = "cancelled" if record.cancel_requested else "failed"
        error = f"cancelled by the user ({reason} before reporting)" if record.cancel_requested else reason
        if store.finish(record.id, status, error=error, only_if=("starting", "running")):
            ended.append(record.id)
    return ended


def _store(env: dict[str, str]) -> Store:
    return Store(env["KDCORE_HOME"], db=env.get("KDCORE_DB", ""), artifacts=env.get("KDCORE_ARTIFACTS") or None)


class _run_environment:
    """The submitter's settings (KDCORE_*) in os.environ, for a moment of a slot's or the dispatcher's thread."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def __enter__(self) -> None:
        self.saved = dict(os.environ)
        os.environ.update({key: value for key, value in self.env.items() if key.startswith("KDCORE_")})

    def __exit__(self, *exc: Any) -> None:
        os.environ.clear()
        os.environ.update(self.saved)


def _start_next(env: dict[str, str]) -> None:
    """A slot is free: start the next queued run, as a local worker does at its end."""
    from kdcore.runner import Runner

    with _run_environment(env):
        try:
            runner = Runner(_store(env))
            runner.tick()
            runner.store.close()
        except Exception:  # the next tick of any runner (the app's, a CLI command's) starts it instead
            pass
