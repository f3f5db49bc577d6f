"""Tests for kdcore.distributed: a run on 2 CPU processes (gloo) equals one process on the same global batch;
cancel reaches every rank; a peer that dies fails the run with its reason; nothing is left running."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch

from kdcore.callbacks import Callback
from kdcore.config import RunConfig
from kdcore.errors import ConfigError
from kdcore.store import ACTIVE, Store
from kdcore.trainer import run_pipeline
from tests.run_helpers import kdcore, last_json

# MLPs: no BatchNorm or dropout, so each step's loss is a per-example mean and DDP's averaged gradient is the
# whole batch's gradient. The teacher is trained here too, on both ranks.
SETS = {"dataset": "digits", "teacher.arch": "mlp-small", "teacher.epochs": "1", "teacher.batch_size": "32",
        "student.arch": "mlp-tiny", "epochs": "1", "batch_size": "32", "baseline": "false"}


def cli_sets(**more: str) -> list[str]:
    return [arg for key, value in {**SETS, **more}.items() for arg in ("--set", f"{key}={value}")]


class Recorder(Callback):
    def __init__(self) -> None:
        self.metrics: dict[tuple[str, int, str], float] = {}

    def on_metrics(self, stage, epoch, step, values):
        self.metrics.update({(stage, step, name): value for name, value in values.items()})


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ddp-home")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_processes_equal_one_process(home: Path, tmp_path: Path) -> None:
    """`run --set devices=2 --json` (the teacher and the student each on 2 gloo processes, 16 examples a rank per
    step) against the same run in one process (32 a step): every step's loss, the validation metrics, the
    accuracies and the final student's weights agree to float rounding."""
    summary = last_json(kdcore(home, "run", *cli_sets(devices="2"), "--json"))
    assert summary["status"] == "done"
    store = Store(home)
    distributed = {(r.stage, r.step, r.name): r.value for r in store.metrics_since(summary["run_id"])[0]}
    assert any("rank 0 and peers" in row.message for row in store.logs(summary["run_id"]))

    config = RunConfig.from_dict({"dataset": "digits", "teacher": {"arch": "mlp-small", "epochs": 1, "batch_size": 32},
                                  "student": {"arch": "mlp-tiny"}, "epochs": 1, "batch_size": 32, "baseline": False})
    recorder = Recorder()
    (tmp_path / "one").mkdir()
    single = run_pipeline(config, [recorder], artifacts=tmp_path / "one")

    for key in ("teacher_test_acc", "teacher_val_acc", "student_test_acc", "student_val_acc", "test_agreement"):
        assert summary[key] == pytest.approx(single[key], abs=1e-6), key
    assert {k for k in recorder.metrics if k[2] != "samples_per_s"} <= set(distributed)
    steps = [k for k in recorder.metrics if k[2] not in ("samples_per_s",)]
    assert sum(1 for k in steps if k[0] == "teacher" and k[2] == "train_loss") == 1293 // 32
    for key in steps:
        assert distributed[key] == pytest.approx(recorder.metrics[key], rel=1e-5, abs=1e-6), key
    one = torch.load(tmp_path / "one" / "student.pt", weights_only=True)["state_dict"]
    two = torch.load(store.run_dir(summary["run_id"]) / "student.pt", weights_only=True)["state_dict"]
    for name, tensor in one.items():
        torch.testing.assert_close(two[name], tensor, rtol=1e-5, atol=1e-6)


def test_cancel_and_peer_crash_leave_no_process(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two 2-process runs wait in their student stage: one is cancelled (every rank stops: cancelled), the other
    loses its peer to SIGKILL (failed, saying which rank died and how). No process of either is left."""
    monkeypatch.setenv("KDCORE_TEST_PAUSE", "*=student")
    monkeypatch.setenv("KDCORE_MAX_RUNS", "2")
    store = Store(home)
    run_ids = [last_json(kdcore(home, "submit", *cli_sets(devices="2", epochs="30"), "--json"))["run_id"]
               for _ in range(2)]
    peers = {}
    for run_id in run_ids:
        deadline = time.time() + 120
        while not (store.run_dir(run_id) / "paused-at-student").exists():
            assert time.time() < deadline and store.get_run(run_id).status in ACTIVE, store.get_run(run_id)
            time.sleep(0.05)
        line = next(row.message for row in store.logs(run_id) if "rank 0 and peers" in row.message)
        peers[run_id] = int(line.split("peers ")[1].split()[0])
    cancelled, crashed = run_ids
    workers = [store.get_run(r).pid for r in run_ids]
    assert kdcore(home, "cancel", cancelled).returncode == 0
    os.kill(peers[crashed], signal.SIGKILL)
    (store.run_dir(crashed) / "paused-at-student").unlink()  # rank 0 goes on into its next collective
    deadline = time.time() + 120
    while any(store.get_run(r).status in ACTIVE for r in run_ids):
        assert time.time() < deadline
        time.sleep(0.1)
    assert store.get_run(cancelled).status == "cancelled"
    failed = store.get_run(crashed)
    assert failed.status == "failed"
    assert "a peer process of this run failed: rank 1 exited with code -9" in failed.error
    deadline = time.time() + 30
    while any(alive(pid) for pid in [*peers.values(), *workers]):
        assert time.time() < deadline, "a process of a 2-process run outlived it"
        time.sleep(0.1)


def test_devices_must_divide_both_batch_sizes() -> None:
    with pytest.raises(ConfigError, match="batch_size=30 must be divisible by devices=4"):
        RunConfig.from_dict({"devices": 4, "batch_size": 30})
    with pytest.raises(ConfigError, match="teacher.batch_size=6 must be divisible by devices=4"):
        RunConfig.from_dict({"devices": 4, "batch_size": 8, "teacher": {"batch_size": 6}})
    with pytest.raises(ConfigError, match="devices must be a positive"):
        RunConfig.from_dict({"devices": 0})
