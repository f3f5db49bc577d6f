"""Spare workers: a process that has imported the training stack waits for a run (kdcore.runner.Runner.warm_spare,
kdcore.worker.spare_main); the store hands each spare one run, and only runs of its own environment."""

from __future__ import annotations

import os
import signal
import time

import pytest

from kdcore.config import RunConfig
from kdcore.runner import Runner, environment_fingerprint, pid_alive
from kdcore.store import Store

TINY = {"dataset": "digits", "epochs": 1, "student": {"arch": "mlp-tiny"}, "baseline": False}  # the bundled teacher


def test_the_store_hands_a_spare_one_run_of_its_own_environment(tmp_path):
    store = Store(tmp_path)
    store.offer_spare(101, "env-a")
    store.offer_spare(102, "env-b")
    store.offer_spare(103, "env-a")
    alive = {101, 102}.__contains__  # 103 died while waiting
    assert store.spare_waiting("env-a", alive) and not store.spare_waiting("env-c", alive)
    assert store.claim_spare("run-00000001", "env-a", alive) == 101
    assert store.claim_spare("run-00000002", "env-a", alive) is None  # 101 is taken, 103 is dead
    assert store.spare_run(101) == "run-00000001" and store.spare_run(102) is None
    assert store.settings_with_prefix("spare.").keys() == {"spare.101", "spare.102"}  # the dead one forgotten
    assert store.withdraw_spare(101) == "run-00000001" and store.withdraw_spare(102) is None
    assert store.settings_with_prefix("spare.") == {}


@pytest.fixture
def spares(kd_home, monkeypatch):
    """Spare workers on for this test; any left waiting at its end are stopped (by their pid)."""
    monkeypatch.setenv("KDCORE_SPARE_WORKER", "1")
    store = Store(kd_home)
    yield store
    for key in Store(kd_home).settings_with_prefix("spare."):
        pid = int(key.rsplit(".", 1)[1])
        if pid_alive(pid):
            os.kill(pid, signal.SIGTERM)


def wait_for(condition, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_run_submitted_while_a_spare_waits_is_trained_by_it(spares):
    runner = Runner(spares)
    assert runner.warm_spare()
    assert spares.spare_waiting(environment_fingerprint(spares), pid_alive)  # offered as it starts
    assert not runner.warm_spare()  # one is waiting already
    (spare,) = [int(key.rsplit(".", 1)[1]) for key in spares.settings_with_prefix("spare.")]
    run_id = runner.submit(RunConfig.from_dict(TINY))  # at once: it trains when the spare's imports are done
    assert spares.get_run(run_id).pid == spare
    record = runner.wait([run_id], poll_s=0.1, timeout_s=300)[0]
    assert record.status == "done", record.error
    assert record.summary["teacher_source"].startswith("bundled")
    wait_for(lambda: not pid_alive(spare))  # one run per worker, as always
    assert spares.settings_with_prefix("spare.") == {}


def test_a_spare_serves_only_its_environment_and_leaves_when_unused(spares, monkeypatch):
    monkeypatch.setenv("KDCORE_SPARE_IDLE_S", "8")
    runner = Runner(spares)
    runner.warm_spare()
    fingerprint = environment_fingerprint(spares)
    wait_for(lambda: spares.spare_waiting(fingerprint, pid_alive))
    (spare,) = [int(key.rsplit(".", 1)[1]) for key in spares.settings_with_prefix("spare.")]
    monkeypatch.setenv("KDCORE_DATA", "/elsewhere")  # another environment: the spare would read other data
    run_id = runner.submit(RunConfig.from_dict(TINY))
    assert spares.get_run(run_id).pid not in (None, spare)  # a worker of its own
    record = runner.wait([run_id], poll_s=0.1, timeout_s=300)[0]
    assert record.status == "done"
    assert spares.spare_waiting(fingerprint, pid_alive)
    wait_for(lambda: not pid_alive(spare), timeout_s=90)  # idle for KDCORE_SPARE_IDLE_S: it goes
    assert spares.settings_with_prefix("spare.") == {}


def test_spares_are_off_with_kdcore_spare_worker_0(kd_home):
    assert os.environ["KDCORE_SPARE_WORKER"] == "0"  # tests/conftest.py: pages warm none in tests
    assert Runner(Store(kd_home)).warm_spare() is False
