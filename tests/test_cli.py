"""Tests for the command line: real `python -m kdcore ...` subprocesses against a temporary run store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdcore.dataset_names import DATASET_NAMES
from kdcore.model_names import ARCH_NAMES
from kdcore.store import Store

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("run", "submit", "status", "runs", "cancel", "resume", "list-models", "list-datasets")
TINY = ["--set", "dataset=digits", "--set", "device=cpu", "--set", "teacher.arch=cnn-small",
        "--set", "student.arch=mlp-tiny", "--set", "teacher.epochs=2", "--set", "epochs=2"]
SUMMARY_KEYS = ("run_id", "status", "teacher_test_acc", "student_test_acc", "baseline_test_acc", "teacher_params",
                "student_params", "wall_s")


def kdcore(*args: str, home: Path, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """Run `python -m kdcore ARGS` with its own run store; no network, one thread (tiny models)."""
    environment = {**os.environ, "KDCORE_HOME": str(home), "OMP_NUM_THREADS": "1",
                   # a download attempt hits a closed local port and fails at once instead of hanging
                   "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
                   "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
                   "NO_PROXY": "", "no_proxy": "", **env}
    return subprocess.run([sys.executable, "-m", "kdcore", *args], cwd=REPO, env=environment, capture_output=True,
                          text=True, timeout=timeout)


def last_json(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def assert_user_error(result: subprocess.CompletedProcess, *words: str) -> str:
    """Non-zero exit, no traceback, and the error is the last stderr line; returns that line."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert lines, "an error must say what is wrong"
    for word in words:
        assert word in lines[-1], (word, result.stderr)
    return lines[-1]


# ---------------------------------------------------------------- help and listings


def test_help_lists_every_command(kd_home):
    result = kdcore("--help", home=kd_home)
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout


def test_no_command_prints_help_and_fails(kd_home):
    result = kdcore(home=kd_home)
    assert result.returncode != 0 and "list-datasets" in result.stdout


def test_list_datasets_json(kd_home, tmp_path):
    data = last_json(kdcore("list-datasets", "--json", "--data-root", str(tmp_path), home=kd_home))
    rows = {row["name"]: row for row in data["datasets"]}
    assert set(rows) == set(DATASET_NAMES)
    for row in rows.values():
        assert set(row) >= {"name", "description", "input_shape", "num_classes", "kind", "offline", "size"}
    assert rows["digits"] | {"description": ""} == {"name": "digits", "description": "", "input_shape": [1, 8, 8],
                                                    "num_classes": 10, "kind": "image", "offline": True, "size": 1797}
    assert rows["moons"]["input_shape"] == [2] and rows["moons"]["kind"] == "points"
    assert rows["cifar10"]["offline"] is False, "no files under the empty data root"


def test_list_models_json_for_digits(kd_home):
    data = last_json(kdcore("list-models", "--json", "--dataset", "digits", home=kd_home))
    assert data["dataset"] == "digits" and data["input_shape"] == [1, 8, 8] and data["num_classes"] == 10
    models = {row["name"]: row for row in data["models"]}
    assert set(models) == set(ARCH_NAMES)
    # one hidden layer: (inputs·width + width) + (width·classes + classes)
    assert models["mlp-tiny"]["params"] == 64 * 16 + 16 + 16 * 10 + 10
    assert models["mlp-small"]["params"] == 64 * 64 + 64 + 64 * 10 + 10
    assert models["mlp"]["params"] == 64 * 512 + 512 + 512 * 256 + 256 + 256 * 10 + 10
    for row in models.values():
        assert isinstance(row["params"], int) and row["params"] > 0, row
        assert row["description"]


def test_list_models_for_points_has_no_conv_params(kd_home):
    data = last_json(kdcore("list-models", "--json", "--dataset", "moons", home=kd_home))
    models = {row["name"]: row for row in data["models"]}
    assert models["mlp-tiny"]["params"] == 2 * 16 + 16 + 16 * 2 + 2
    assert models["cnn"]["params"] is None and models["resnet20"]["params"] is None


# ---------------------------------------------------------------- bad inputs


def one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert_user_error(result, *words)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("args, words", [
    (["--set", "temperature=0"], ["temperature"]),
    (["--set", "temprature=4"], ["temprature", "valid keys"]),
    (["--set", "teacher.foo=1"], ["foo", "teacher.arch"]),
    (["--set", "student.arch=transformer"], ["student.arch", "transformer", "mlp-tiny"]),
    (["--set", "dataset=imagenet"], ["imagenet", "digits"]),
    (["--set", "foo"], ["key=value"]),
    (["--set", "=3"], ["key=value"]),
    (["--set", "epochs=three"], ["epochs"]),
    (["--config", "/nonexistent/kd.yaml"], ["/nonexistent/kd.yaml"]),
])
def test_bad_run_inputs(kd_home, args, words):
    one_line_error(kdcore("run", "--json", *args, home=kd_home), *words)
    assert Store(kd_home).list_runs() == [], "nothing is recorded for a refused config"


def test_invalid_yaml_file(kd_home, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("teacher: [cnn\nepochs: 3\n")
    one_line_error(kdcore("run", "--config", str(path), home=kd_home), "broken.yaml", "YAML")


def test_submit_refuses_bad_config_too(kd_home):
    one_line_error(kdcore("submit", "--set", "temperature=-1", home=kd_home), "temperature")


@pytest.mark.parametrize("run_id, words", [("../etc", ["malformed run id"]), ("run-00000000", ["run-00000000"])])
@pytest.mark.parametrize("command", ["status", "cancel", "resume"])
def test_bad_run_ids(kd_home, command, run_id, words):
    one_line_error(kdcore(command, run_id, "--json", home=kd_home), *words)


@pytest.fixture(scope="module")
def missing_checkpoint_run(tmp_path_factory):
    """A valid config whose teacher.checkpoint does not exist: found out only when the run starts."""
    home, folder = tmp_path_factory.mktemp("ckpt-home"), tmp_path_factory.mktemp("ckpt")
    missing = folder / "no-teacher.pt"
    return home, missing, kdcore("run", *TINY, "--set", f"teacher.checkpoint={missing}", home=home)


def test_missing_teacher_checkpoint_fails_cleanly(missing_checkpoint_run):
    home, missing, result = missing_checkpoint_run
    assert_user_error(result, str(missing), "does not exist")
    (record,) = Store(home).list_runs()
    assert record.status == "failed" and str(missing) in record.error


def test_missing_teacher_checkpoint_is_one_line(missing_checkpoint_run):
    _, _, result = missing_checkpoint_run
    one_line_error(result, "no-teacher.pt")


@pytest.fixture(scope="module")
def offline_dataset_run(tmp_path_factory):
    """cifar10 with an empty data root and no network: must fail fast, not hang on a download."""
    home, empty = tmp_path_factory.mktemp("offline-home"), tmp_path_factory.mktemp("empty-data")
    started = time.monotonic()
    result = kdcore("run", "--set", "dataset=cifar10", "--set", f"data_root={empty}", "--set", "teacher.arch=cnn-small",
                    "--set", "student.arch=mlp-tiny", home=home, timeout=90)
    return home, empty, result, time.monotonic() - started


def test_offline_torchvision_dataset_fails_fast(offline_dataset_run):
    home, empty, result, seconds = offline_dataset_run
    assert seconds < 60
    assert_user_error(result, "cifar10", str(empty), "data_batch_1")
    (record,) = Store(home).list_runs()
    assert record.status == "failed" and "cifar10" in record.error


def test_offline_torchvision_dataset_is_one_line(offline_dataset_run):
    _, _, result, _ = offline_dataset_run
    one_line_error(result, "cifar10")


# ---------------------------------------------------------------- a real run, end to end


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One 2-epoch run on digits from a YAML config plus --set, recorded in its own store."""
    home = tmp_path_factory.mktemp("cli-home")
    config = tmp_path_factory.mktemp("cli-config") / "tiny.yaml"
    config.write_text("dataset: digits\ndevice: cpu\nepochs: 5\nbatch_size: 64\nlr: 0.01\nname: cli e2e\n"
                      "teacher:\n  arch: cnn-small\n  epochs: 2\n  lr: 0.01\nstudent:\n  arch: mlp-tiny\n"
                      "weights:\n  ce: 0.2\n  kd: 0.8\n")
    result = kdcore("run", "--json", "--config", str(config), "--set", "epochs=2", "--set", "seed=3", home=home)
    return home, result


def test_run_json_summary(finished_run):
    _, result = finished_run
    summary = last_json(result)
    for key in SUMMARY_KEYS:
        assert key in summary
    assert summary["status"] == "done" and summary["run_id"].startswith("run-")
    for key in ("teacher_test_acc", "student_test_acc", "baseline_test_acc"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["student_params"] == 64 * 16 + 16 + 16 * 10 + 10
    assert summary["teacher_params"] > summary["student_params"] and summary["wall_s"] > 0
    assert "Traceback" not in result.stderr


def test_run_is_recorded_as_done(finished_run):
    home, result = finished_run
    run_id = last_json(result)["run_id"]
    runs = last_json(kdcore("runs", "--json", home=home))["runs"]
    assert [(r["run_id"], r["status"]) for r in runs] == [(run_id, "done")]
    status = last_json(kdcore("status", run_id, "--json", home=home))
    assert status["run_id"] == run_id and status["status"] == "done" and "pid" not in status
    for key in SUMMARY_KEYS:
        assert key in status
    assert status["student_test_acc"] == last_json(result)["student_test_acc"]


def test_config_file_and_overrides_were_applied(finished_run):
    home, result = finished_run
    status = last_json(kdcore("status", last_json(result)["run_id"], "--json", home=home))
    config = status["config"]
    assert config["name"] == "cli e2e" and config["student"]["arch"] == "mlp-tiny", "from the YAML file"
    assert config["weights"]["kd"] == 0.8 and config["teacher"]["epochs"] == 2
    assert config["epochs"] == 2 and config["seed"] == 3, "--set wins over the file"


def test_run_store_has_metrics_and_a_student_model(finished_run):
    home, result = finished_run
    run_id = last_json(result)["run_id"]
    store = Store(home)
    rows, _ = store.metrics_since(run_id)
    steps = {(stage, step) for _, stage, _, step, name, _, _ in rows if name == "train_loss"}
    assert {stage for stage, _ in steps} == {"teacher", "student", "baseline"}
    assert (store.run_dir(run_id) / "student.pt").is_file()


def test_run_store_keeps_the_untrained_student_snapshot(finished_run):
    home, result = finished_run
    snapshots, _ = Store(home).snapshots_since(last_json(result)["run_id"])
    assert [s["epoch"] for s in snapshots if s["stage"] == "student"] == [0, 1, 2]
