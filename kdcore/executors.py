"""Executors: where the worker of a claimed run starts. The runner decides *which* runs start (the store's
claim, the slot limit); an executor decides *where* their worker, `python -m kdcore worker RUN_ID`, runs:

- `local` (the default): a process on this machine, in a new session so that it outlives whoever started it;
- `ray` (`KDCORE_EXECUTOR=ray`): the same process on a node of a Ray cluster, placed by Ray where the
  resources the run asks for (`num_cpus`, `num_gpus`) are free. The cluster is `RAY_ADDRESS`, or, unset, a
  local Ray head that the first runner starts on 127.0.0.1 and every later one on this machine reuses.

The worker is the same program either way and the store is still the only channel: it takes its run, reports,
reads the cancel flag (within a second, so a cancel reaches a run on any node) and records how its run ended.
So the app and the CLI behave alike whichever executor runs the work. Ray is imported only when selected.

On Ray, the runner hands each claimed run to the cluster's dispatcher actor and returns (the run goes on
after the submitting command has exited); the dispatcher starts its worker on a *slot*, a long-lived actor
holding the run's resources whose worker is a fork of a process with torch already imported
(`kdcore.ray_slots`: how a killed worker, a lost slot or node, cancel and resume are handled there).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from kdcore.errors import ConfigError, ExecutorError
from kdcore.store import RunRecord, Store

RAY_PLACED = "ray"  # the host of a run handed to Ray, until its worker starts on a node and names its own
RAY_NAMESPACE = "kdlab"
RAY_CONNECT_TIMEOUT_S = 3.0  # an unreachable RAY_ADDRESS is refused after this long, before anything is queued
RAY_HANDOVER_S = 120.0  # the dispatcher answers in milliseconds; its first start (a new Ray worker) takes seconds
RAY_HEAD_START_S = 90.0  # a local head that has not opened its port by then failed to start (see its log)


def worker_command(run_id: str) -> list[str]:
    return [sys.executable, "-m", "kdcore", "worker", run_id]


class LocalExecutor:
    """Runs start as worker processes of this machine."""

    name = "local"
    uses_spares = True  # `Runner.warm_spare`: a process of this machine with torch imported, waiting for a run

    def check(self, store: Store) -> None:
        """Nothing to reach."""

    def default_max_runs(self, store: Store) -> int | None:
        return None  # the runner's default: 1 per GPU of this machine (1 without one)

    def start(self, store: Store, record: RunRecord, env: dict[str, str]) -> None:
        """Start the worker in a new session, writing its run's worker.log; a run whose worker cannot start
        is marked failed with the reason."""
        try:
            log = open(store.worker_log_path(record.id), "ab")
        except OSError as exc:  # its folder was removed (or made unwritable) while it waited in the queue
            store.finish(record.id, "failed", error=f"could not start a worker: its run folder cannot be "
                                                    f"written ({exc.strerror or exc}: {exc.filename})")
            return
        try:
            proc = subprocess.Popen(worker_command(record.id), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=os.getcwd())
        except OSError as exc:
            store.finish(record.id, "failed", error=f"could not start a worker: {exc}")
            return
        finally:
            log.close()
        store.set_pid(record.id, proc.pid)
        # Reap the child when it exits so it never lingers as a zombie of a long-lived app process.
        threading.Thread(target=proc.wait, daemon=True, name=f"reap-{record.id}").start()


class RayExecutor:
    """Runs start on a Ray cluster, on slots (`kdcore.ray_slots`) holding the run's (or stacked group's)
    resources per process it trains on (`devices`): KDCORE_RAY_NUM_CPUS CPUs (default 1) and
    KDCORE_RAY_NUM_GPUS GPUs (default: 1 for a run on `cuda`, and for one on `auto` when the cluster has
    GPUs; 0 otherwise)."""

    name = "ray"
    uses_spares = False  # a spare is a process of this machine; Ray places runs on any node

    def __init__(self) -> None:
        self.num_cpus = _resource("KDCORE_RAY_NUM_CPUS", 1.0)
        self.num_gpus = os.environ.get("KDCORE_RAY_NUM_GPUS", "").strip()
        if self.num_gpus:
            _resource("KDCORE_RAY_NUM_GPUS", 0.0)

    def check(self, store: Store) -> None:
        """Connect to the cluster (once per process); one line (ExecutorError) when it cannot be reached."""
        _connect(store)

    def default_max_runs(self, store: Store) -> int:
        """As many runs as the cluster has CPUs for (KDCORE_MAX_RUNS, when set, still caps them): a run
        claimed beyond that would wait in Ray's queue instead of ours, where a sweep's queued runs can still
        join a stacked group."""
        resources = _connect(store).cluster_resources()
        return max(1, int(resources.get("CPU", 1) // self.num_cpus))

    def resources(self, config: dict[str, Any], cluster_gpus: float) -> dict[str, float]:
        """What a run asks Ray for, on one node: its CPUs and GPUs for each of its `devices` processes (a
        `devices=N` run starts its N-1 peers beside itself, `kdcore.distributed`)."""
        processes = int(config.get("devices") or 1)
        if self.num_gpus:
            gpus = float(self.num_gpus)
        else:
            device = config.get("device", "auto")
            wants_gpu = device == "cuda" or (device == "auto" and cluster_gpus > 0)
            gpus = 1.0 if wants_gpu else 0.0
        return {"num_cpus": self.num_cpus * processes, "num_gpus": gpus * processes}

    def start(self, store: Store, record: RunRecord, env: dict[str, str]) -> None:
        """Hand the run to the cluster's dispatcher (`kdcore.ray_slots`); the run stays `starting` (held by
        Ray) until a slot with its resources is free on some node and its worker takes the run."""
        from kdcore.ray_slots import dispatcher

        ray = _connect(store)
        resources = self.resources(record.config, ray.cluster_resources().get("GPU", 0.0))
        payload = {key: value for key, value in env.items() if key.startswith("KDCORE_")}
        payload["OMP_NUM_THREADS"] = str(max(1, int(resources["num_cpus"])))  # the worker's share of its node
        payload["PYTHONUNBUFFERED"] = "1"
        store.mark_placed(record.id, RAY_PLACED)
        try:
            ray.get(dispatcher(ray, RAY_NAMESPACE).start.remote(record.id, payload, str(store.worker_log_path(record.id)),
                                                                os.getcwd(), resources), timeout=RAY_HANDOVER_S)
        except Exception as exc:  # Ray refused it, or its dispatcher did not answer (a late start finds it failed)
            store.finish(record.id, "failed", error=f"could not start a worker on Ray: {_first_line(exc)}",
                         only_if=("starting",))


EXECUTORS: dict[str, type] = {"local": LocalExecutor, "ray": RayExecutor}


def executor_from_env() -> LocalExecutor | RayExecutor:
    """The executor KDCORE_EXECUTOR names (unset: local); an unknown name is refused with the valid ones."""
    name = os.environ.get("KDCORE_EXECUTOR", "").strip() or "local"
    if name not in EXECUTORS:
        raise ConfigError(f"KDCORE_EXECUTOR must be one of {', '.join(EXECUTORS)}, not {name!r}")
    return EXECUTORS[name]()


def _resource(variable: str, default: float) -> float:
    raw = os.environ.get(variable, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = -1.0
    if value < 0 or (variable.endswith("CPUS") and value == 0):
        raise ConfigError(f"{variable} must be a {'positive' if variable.endswith('CPUS') else 'non-negative'} "
                          f"number, got {raw!r}")
    return value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


# --- the cluster ---------------------------------------------------------------------------------------


def _connect(store: Store) -> Any:
    """The `ray` module, connected (once per process) to RAY_ADDRESS or to this machine's local head."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return ray
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if not address:
        address = _local_head(store)
        os.environ.update(_local_head_env(store))  # before ray is imported: it reads them then
    import ray
    if address != "auto" and not address.startswith("ray://"):
        host, _, port = address.rpartition(":")
        if not _reachable(host, port):
            raise ExecutorError(f"cannot reach the Ray cluster at RAY_ADDRESS={address} (nothing answers there "
                                f"within {RAY_CONNECT_TIMEOUT_S:.0f} s); start its head, or unset RAY_ADDRESS for a "
                                f"local one")
    try:
        with _quiet_stderr():
            ray.init(address=address, namespace=RAY_NAMESPACE, logging_level="ERROR", log_to_driver=False)
    except Exception as exc:
        raise ExecutorError(f"cannot connect to the Ray cluster at {address}: {_first_line(exc)}") from None
    return ray


@contextlib.contextmanager
def _quiet_stderr():
    """ray.init prints its connection banner from C++ as well: a CLI command's output stays the command's."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _local_head_env(store: Store) -> dict[str, str]:
    """The environment of the local head and of its clients: a single-machine Ray, whose servers bind 127.0.0.1
    only (Ray otherwise swaps 127.0.0.1 for the machine's address), with the head's own token."""
    return {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str((store.home / "ray" / "auth_token").resolve())}


def _reachable(host: str, port: str) -> bool:
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=RAY_CONNECT_TIMEOUT_S):
            return True
    except (OSError, ValueError):
        return False


def _local_head(store: Store) -> str:
    """The address of this machine's local Ray head for this store, started when none answers: `ray start
    --head --block` on 127.0.0.1 (nothing listens beyond this machine) in a new session, so it outlives
    the command that started it; its address is kept in KDCORE_HOME/ray/address for later commands, its log
    in KDCORE_HOME/ray/head.log."""
    folder = store.home / "ray"
    folder.mkdir(exist_ok=True)
    address_file = folder / "address"
    with open(folder / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two commands at once start one head
        if address_file.exists():
            address = address_file.read_text().strip()
            if _reachable(*address.rsplit(":", 1)):
                return address
        token = folder / "auth_token"  # its own token: ~/.ray/auth_token is shared by every Ray of this user
        token.touch(mode=0o600)
        token.write_text(secrets.token_hex(32))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
                   "--node-ip-address=127.0.0.1", f"--port={port}", "--include-dashboard=false",
                   "--disable-usage-stats"]
        with open(folder / "head.log", "ab") as log:
            head = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, env={**os.environ, **_local_head_env(store)})
        (folder / "head.pid").write_text(str(head.pid))
        deadline = time.monotonic() + RAY_HEAD_START_S
        while not _reachable("127.0.0.1", str(port)):
            if head.poll() is not None or time.monotonic() > deadline:
                raise ExecutorError(f"could not start a local Ray head (see {folder / 'head.log'})")
            time.sleep(0.2)
        address = f"127.0.0.1:{port}"
        address_file.write_text(address)
        return address
