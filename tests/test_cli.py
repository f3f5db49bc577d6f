"""Tests for the command line: real `python -m kdcore ...` subprocesses against a temporary run store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdcore.dataset_names import DATASET_NAMES
from kdcore.model_names import ARCH_NAMES, needs_text
from kdcore.store import Store

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("run", "submit", "status", "runs", "cancel", "resume", "repeat", "list-models", "list-datasets")
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
    assert set(rows) == set(DATASET_NAMES) | {"csv:<path>", "imagefolder:<path>"}  # a user's own data is listed too
    assert rows["rotten-tomatoes"]["offline"] is True and rows["rotten-tomatoes"]["kind"] == "text"
    assert rows["csv:<path>"]["kind"] == "text" and rows["imagefolder:<path>"]["kind"] == "image"
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
    for name, row in models.items():
        assert (row["params"] is None) if needs_text(name) else (isinstance(row["params"], int) and row["params"] > 0), row
        assert row["description"]


def test_list_models_for_text_counts_the_text_models(kd_home):
    data = last_json(kdcore("list-models", "--json", "--dataset", "rotten-tomatoes", home=kd_home))
    counted = {row["name"]: row["params"] for row in data["models"] if row["params"] is not None}
    assert counted == {"minilm-l6": 22_566_146, "tiny-transformer": 2_375_426, "bilstm": 2_185_218,
                       "bag-of-embeddings": 1_953_538}


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
    """A config whose teacher.checkpoint does not exist: refused before anything is recorded."""
    home, folder = tmp_path_factory.mktemp("ckpt-home"), tmp_path_factory.mktemp("ckpt")
    missing = folder / "no-teacher.pt"
    return home, missing, kdcore("run", *TINY, "--set", f"teacher.checkpoint={missing}", home=home)


def test_missing_teacher_checkpoint_fails_cleanly(missing_checkpoint_run):
    home, missing, result = missing_checkpoint_run
    assert_user_error(result, str(missing), "does not exist")
    assert result.returncode == 2
    assert Store(home).list_runs() == [], "nothing is recorded for a checkpoint that cannot be the teacher"


def test_missing_teacher_checkpoint_is_one_line(missing_checkpoint_run):
    _, _, result = missing_checkpoint_run
    one_line_error(result, "no-teacher.pt")


@pytest.fixture(scope="module")
def offline_dataset_run(tmp_path_factory):
    """cifar10 with an empty data root and no network: must fail fast, not hang on a download."""
    home, empty = tmp_path_factory.mktemp("offline-home"), tmp_path_factory.mktemp("empty-data")
    result = kdcore("run", "--set", "dataset=cifar10", "--set", f"data_root={empty}", "--set", "teacher.arch=cnn-small",
                    "--set", "student.arch=mlp-tiny", home=home, timeout=90)  # a hang fails as TimeoutExpired
    return home, empty, result


def test_offline_torchvision_dataset_fails_with_what_to_put_where(offline_dataset_run):
    home, empty, result = offline_dataset_run
    assert_user_error(result, "cifar10", str(empty), "could not be downloaded", "data_batch_1")
    (record,) = Store(home).list_runs()
    assert record.status == "failed" and "cifar10" in record.error


def test_offline_torchvision_dataset_is_one_line(offline_dataset_run):
    _, _, result = offline_dataset_run
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
    seeds = summary["seeds"]  # the only seed of its config: no verdict yet (tests/test_verdict.py has three)
    assert seeds["n"] == 1 and seeds["seeds"] == [3] and seeds["verdict"] == "no verdict" and seeds["diff_ci95"] is None
    assert seeds["diff_mean"] == pytest.approx(summary["student_test_acc"] - summary["baseline_test_acc"])


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


# ---------------------------------------------------------------- configs that cannot run are refused, nothing queued


MISFIT = ["--set", "dataset=moons", "--set", "teacher.arch=cnn"]


def assert_refused_and_nothing_queued(result: subprocess.CompletedProcess, home: Path, *words: str) -> None:
    one_line_error(result, *words)
    assert result.returncode == 2
    assert last_json(kdcore("runs", "--json", home=home))["runs"] == []


@pytest.mark.parametrize("command", [["submit"], ["run", "--json"], ["sweep", "--grid", "temperature=1,4"]])
def test_a_conv_net_on_points_is_refused_before_queueing(kd_home, command):
    result = kdcore(*command, *MISFIT, home=kd_home)
    assert_refused_and_nothing_queued(result, kd_home, "teacher.arch", "cnn needs image input", "moons", "mlp")


def test_a_sweep_refuses_a_grid_point_that_does_not_fit(kd_home):
    result = kdcore("sweep", "--set", "dataset=moons", "--set", "teacher.arch=mlp", "--grid", "student.arch=mlp-tiny,cnn",
                    home=kd_home)
    assert_refused_and_nothing_queued(result, kd_home, "student.arch=cnn", "needs image input")


@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory):
    """Tiny teacher checkpoints for digits (1x8x8, 10 classes): a good one, one of 3 classes, a bare state dict."""
    from kdcore import checkpoints
    from kdcore.models import build_model

    folder = tmp_path_factory.mktemp("teachers")
    for name, classes in (("good.pt", 10), ("three.pt", 3)):
        model = build_model("cnn-small", (1, 8, 8), classes)
        checkpoints.save_atomic(checkpoints.model_checkpoint(model, arch="cnn-small", input_shape=(1, 8, 8),
                                                             num_classes=classes), folder / name)
    import torch

    torch.save(build_model("mlp-small", (1, 8, 8), 10).state_dict(), folder / "bare.pt")
    (folder / "junk.pt").write_bytes(b"not a checkpoint")
    return folder


@pytest.mark.parametrize("file, arch, words", [
    ("good.pt", "cnn", ["good.pt", "'cnn-small'", "'cnn'"]),
    ("three.pt", "cnn-small", ["three.pt", "3 classes", "10"]),
    ("bare.pt", "mlp-tiny", ["bare.pt", "does not match mlp-tiny"]),
    ("junk.pt", "cnn-small", ["junk.pt", "cannot be read"]),
])
@pytest.mark.parametrize("command", [["submit"], ["sweep", "--grid", "temperature=1,4"]])
def test_a_teacher_checkpoint_that_does_not_fit_is_refused(kd_home, teacher_files, command, file, arch, words):
    result = kdcore(*command, "--set", "dataset=digits", "--set", f"teacher.arch={arch}",
                    "--set", f"teacher.checkpoint={teacher_files / file}", home=kd_home)
    assert_refused_and_nothing_queued(result, kd_home, "teacher.checkpoint", *words)


def test_a_sweep_checks_the_checkpoint_at_every_grid_point(kd_home, teacher_files):
    result = kdcore("sweep", "--set", "dataset=digits", "--set", f"teacher.checkpoint={teacher_files / 'good.pt'}",
                    "--grid", "teacher.arch=cnn-small,cnn", home=kd_home)
    assert_refused_and_nothing_queued(result, kd_home, "good.pt", "'cnn'")


@pytest.mark.parametrize("file, arch", [("good.pt", "cnn-small"), ("bare.pt", "mlp-small")])
def test_a_teacher_checkpoint_that_fits_is_accepted(kd_home, teacher_files, file, arch):
    result = kdcore("run", "--json", "--set", "dataset=digits", "--set", "device=cpu", "--set", f"teacher.arch={arch}",
                    "--set", f"teacher.checkpoint={teacher_files / file}", "--set", "epochs=1",
                    "--set", "baseline=false", home=kd_home)
    assert last_json(result)["status"] == "done"


# ---------------------------------------------------------------- metrics


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("metrics-home")
    result = kdcore("run", "--json", "--set", "dataset=digits", "--set", "epochs=1", "--set", "teacher.epochs=1",
                    "--set", "device=cpu", home=home)
    return home, last_json(result)["run_id"]


def test_metrics_json_has_every_series(tiny_run):
    home, run_id = tiny_run
    data = last_json(kdcore("metrics", run_id, "--json", home=home))
    assert data["run_id"] == run_id and data["status"] == "done"
    points = data["metrics"]
    assert points and all(set(p) == {"stage", "epoch", "step", "name", "value"} for p in points)
    series = {(p["stage"], p["name"]) for p in points}
    for stage in ("teacher", "student", "baseline"):
        assert {(stage, "train_loss"), (stage, "val_acc")} <= series
    assert {(s["stage"], s["name"]) for s in data["series"]} == series
    assert sum(s["points"] for s in data["series"]) == len(points)
    val_acc = [p for p in points if (p["stage"], p["name"]) == ("student", "val_acc")]
    assert [p["epoch"] for p in val_acc] == [1] and 0.0 <= val_acc[0]["value"] <= 1.0


def test_metrics_csv_matches_the_json(tiny_run):
    home, run_id = tiny_run
    result = kdcore("metrics", run_id, "--csv", home=home)
    assert result.returncode == 0, result.stderr
    import csv
    import io

    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["stage", "epoch", "step", "name", "value"]
    points = last_json(kdcore("metrics", run_id, "--json", home=home))["metrics"]
    assert len(rows) - 1 == len(points)
    assert [[p["stage"], str(p["epoch"]), str(p["step"]), p["name"], float(p["value"])] for p in points] == \
        [[stage, epoch, step, name, float(value)] for stage, epoch, step, name, value in rows[1:]]
    assert {row[0] for row in rows[1:]} == {"teacher", "student", "baseline"}


def test_metrics_table_names_every_series(tiny_run):
    home, run_id = tiny_run
    result = kdcore("metrics", run_id, home=home)
    assert result.returncode == 0, result.stderr
    assert run_id in result.stdout and "train_loss" in result.stdout and "val_acc" in result.stdout


@pytest.mark.parametrize("run_id, words", [("run-00000000", ["run-00000000"]), ("../etc", ["malformed run id"])])
def test_metrics_of_an_unknown_run_is_refused(kd_home, run_id, words):
    result = kdcore("metrics", run_id, "--json", home=kd_home)
    one_line_error(result, *words)
    assert result.returncode == 2
