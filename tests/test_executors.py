"""The executors (kdcore.executors, kdcore.ray_slots): runs on a real local Ray cluster, driven through the CLI
as a user would, with the run folders on KDCORE_ARTIFACTS, on a SQLite store and on a PostgreSQL one; and the
one-line refusals of a bad executor setup.

One Ray cluster (3 CPUs, 127.0.0.1 only) serves the module; the tests' CLI commands connect to it through
RAY_ADDRESS. Each run is the tiny digits config, held at a chosen moment by the test pause point
(`kdcore.worker.pause_point`) where a test needs to act mid-run. Every run of the module is submitted at once
(the module fixtures), so the module costs about as much as its slowest runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from run_helpers import TINY, last_json

from kdcore.config import build_config
from kdcore.errors import ConfigError
from kdcore.executors import RayExecutor
from kdcore.runner import Runner
from kdcore.store import HOST, Store

WAIT_S = 180.0


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A local Ray cluster on 127.0.0.1 of 3 logical CPUs, one short of the module's workers: the PostgreSQL
    sweep's slot waits for Ray to place it until the plain run's slot is idle, and the sweep then trains there
    instead (`kdcore.ray_slots`, a waiting run goes to an idle slot). And the
    environment of its user: run folders on shared storage (KDCORE_ARTIFACTS), one store for the module."""
    root = tmp_path_factory.mktemp("ray-user")
    (root / "auth_token").write_text(secrets.token_hex(32))  # not ~/.ray's, which other Rays of this user share
    single_machine = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # Ray then binds 127.0.0.1 only
                      "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(root / "auth_token")}
    with environment(single_machine):
        import ray  # here: it reads the token's settings when imported

        ray.init(address="local", num_cpus=3, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="ERROR",
                 log_to_driver=False, configure_logging=False)
        yield {"KDCORE_EXECUTOR": "ray", "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
               "KDCORE_HOME": str(root / "home"), "KDCORE_ARTIFACTS": str(root / "shared")}
        ray.shutdown()


@pytest.fixture(scope="module")
def postgres_sweep(ray_cluster: dict[str, str], postgres_server) -> tuple[dict[str, str], subprocess.Popen]:
    """The issue's sweep on Ray with its store on PostgreSQL, `sweep --wait --json` started in the background
    (its two runs share the cluster with the module's other runs); its environment and its process."""
    env = {**os.environ, **ray_cluster, "KDCORE_DB": postgres_server.new_database(),
           "KDCORE_HOME": ray_cluster["KDCORE_HOME"] + "-pg", "KDCORE_ARTIFACTS": ray_cluster["KDCORE_ARTIFACTS"] + "-pg"}
    command = [sys.executable, "-m", "kdcore", "sweep", "--grid", "temperature=1,4", *TINY, "--wait", "--json"]
    return env, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.fixture(scope="module")
def runs(ray_cluster: dict[str, str], postgres_sweep) -> dict[str, str]:
    """Three runs submitted at once (beside the PostgreSQL sweep): one through the CLI, to train; two held at
    their student stage, submitted from this process (a Runner here, connected to the same cluster: no second
    Ray client to start)."""
    submitted = {"plain": last_json(cli("submit", *TINY, "--json", env=ray_cluster))["run_id"]}
    config = build_config(None, [value for value in TINY if value != "--set"])
    with environment({**ray_cluster, "KDCORE_TEST_PAUSE": "*=student"}):
        runner = Runner()
        submitted["cancel"], submitted["kill"] = runner.submit(config), runner.submit(config)
        runner.store.close()
    return submitted


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def store(ray_cluster: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Store:
    for key, value in ray_cluster.items():
        monkeypatch.setenv(key, value)
    return Store()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdcore", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def finished(store: Store, run_id: str):
    wait_for(lambda: not store.get_run(run_id).active, f"{run_id} to finish")
    return store.get_run(run_id)


def paused_at_student(store: Store, run_id: str) -> None:
    wait_for((store.run_dir(run_id) / "paused-at-student").exists, f"{run_id} to reach its student stage")


def test_a_run_on_ray_trains_through_submit_and_status_with_its_folder_on_shared_storage(ray_cluster, runs, store):
    run_id = runs["plain"]
    record = finished(store, run_id)
    status = last_json(cli("status", run_id, "--json", env=ray_cluster))
    assert (record.status, status["status"]) == ("done", "done"), record.error
    assert status["student_test_acc"] > 0.3 and status["teacher_test_acc"] > 0.3  # 10 classes: chance is 0.1
    assert record.host == HOST  # its worker, on the Ray node, named its machine
    shared = Path(ray_cluster["KDCORE_ARTIFACTS"])
    assert (shared / "runs" / run_id / "student.pt").is_file()
    assert list((shared / "teachers").glob("*.pt")), "the teacher cache lives on the shared storage"
    assert not (store.home / "runs" / run_id).exists()


def test_cancel_reaches_a_run_on_ray(ray_cluster, runs, store):
    run_id = runs["cancel"]
    paused_at_student(store, run_id)
    assert last_json(cli("cancel", run_id, "--json", env=ray_cluster))["run_id"] == run_id
    record = finished(store, run_id)
    assert record.status == "cancelled", record.error
    assert store.metrics_since(run_id)[0]  # it keeps what it wrote


def test_a_sweep_on_ray_with_its_store_on_postgresql_lands_its_rows_there(postgres_sweep, runs):
    env, sweep = postgres_sweep
    out, err = sweep.communicate(timeout=WAIT_S)
    assert sweep.returncode == 0, err[-2000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert sorted(row["temperature"] for row in result["results"]) == [1.0, 4.0]
    listed = last_json(subprocess.run([sys.executable, "-m", "kdcore", "runs", "--json"], capture_output=True,
                                      text=True, timeout=120, env=env))["runs"]
    assert {r["run_id"]: r["status"] for r in listed} == {run_id: "done" for run_id in result["runs"]}

    import psycopg
    import torch

    with psycopg.connect(env["KDCORE_DB"]) as database:  # the rows are in PostgreSQL itself
        counts = dict(database.execute("SELECT run_id, count(*) FROM metrics GROUP BY run_id").fetchall())
    for run_id in result["runs"]:
        metrics = last_json(subprocess.run([sys.executable, "-m", "kdcore", "metrics", run_id, "--json"],
                                           capture_output=True, text=True, timeout=120, env=env))["metrics"]
        assert counts[run_id] == len(metrics) > 0
        student = torch.load(Path(env["KDCORE_ARTIFACTS"]) / "runs" / run_id / "student.pt", weights_only=True)
        assert student  # the artifacts the worker wrote on the node are there for whoever reads the store
    assert len(slots()) == 3  # the sweep trained on a slot that became idle: no new slot is left waiting for CPUs


def test_a_killed_ray_worker_fails_its_run_with_the_reason_and_resume_finishes_it_on_a_slot_already_there(
        ray_cluster, runs, store):
    run_id = runs["kill"]
    paused_at_student(store, run_id)
    pid = last_json(cli("status", run_id, "--json", env=ray_cluster))["pid"]
    kept = len(store.metrics_since(run_id)[0])
    assert kept > 0  # the teacher's rows at least
    os.kill(pid, signal.SIGKILL)
    record = finished(store, run_id)
    assert record.status == "failed"
    assert record.error == f"its worker (pid {pid} on {HOST}, run by Ray) was killed by SIGKILL"
    assert len(store.metrics_since(run_id)[0]) == kept  # nothing written is lost

    slots_before = {slot["number"] for slot in slots()}  # every other run of the module has ended: all idle
    assert last_json(cli("resume", run_id, "--json", env=ray_cluster))["run_id"] == run_id
    record = finished(store, run_id)
    assert record.status == "done", record.error
    assert record.summary["student_test_acc"] > 0.3
    if slots_before:  # none, only if they sat idle for SLOT_IDLE_S and were given back
        assert {slot["number"] for slot in slots()} <= slots_before  # reused: no new actor, no new imports


def slots() -> list[dict]:
    import ray

    from kdcore.ray_slots import DISPATCHER

    return ray.get(ray.get_actor(DISPATCHER, namespace="kdlab").slots.remote())


def test_a_run_asks_ray_for_its_cpus_and_gpus_per_process(monkeypatch):
    ray_executor = RayExecutor()  # 1 CPU per process, a GPU when it trains on one
    assert ray_executor.resources({"device": "auto"}, cluster_gpus=0) == {"num_cpus": 1, "num_gpus": 0}
    assert ray_executor.resources({"device": "auto"}, cluster_gpus=4) == {"num_cpus": 1, "num_gpus": 1}
    assert ray_executor.resources({"device": "cpu", "devices": 2}, cluster_gpus=4) == {"num_cpus": 2, "num_gpus": 0}
    assert ray_executor.resources({"device": "cuda", "devices": 4}, cluster_gpus=0) == {"num_cpus": 4, "num_gpus": 4}
    monkeypatch.setenv("KDCORE_RAY_NUM_CPUS", "4")
    monkeypatch.setenv("KDCORE_RAY_NUM_GPUS", "0.5")
    assert RayExecutor().resources({"device": "cuda"}, cluster_gpus=1) == {"num_cpus": 4, "num_gpus": 0.5}
    monkeypatch.setenv("KDCORE_RAY_NUM_CPUS", "0")
    with pytest.raises(ConfigError, match="KDCORE_RAY_NUM_CPUS must be a positive number, got '0'"):
        RayExecutor()


@pytest.mark.parametrize("env, message", [
    ({"KDCORE_EXECUTOR": "ray", "RAY_ADDRESS": "127.0.0.1:1"}, "cannot reach the Ray cluster at RAY_ADDRESS=127.0.0.1:1"),
    ({"KDCORE_EXECUTOR": "slurm"}, "KDCORE_EXECUTOR must be one of local, ray, not 'slurm'"),
    ({"KDCORE_ARTIFACTS": "s3://bucket/kd"}, "KDCORE_ARTIFACTS must be a folder path, not a URL"),
    ({"KDCORE_ARTIFACTS": "/proc/kd"}, "run store folder /proc/kd (KDCORE_ARTIFACTS) cannot be created"),
])
def test_a_bad_executor_setup_is_refused_in_one_line_before_anything_is_queued(env, message):
    result = cli("submit", *TINY, env=env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert Store().list_runs() == []  # KDCORE_HOME: this test's own (conftest)
