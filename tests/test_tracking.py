"""Experiment trackers (kdcore.tracking): what a run logs live, and what `sync` exports, read back with
MLflow's own client and TensorBoard's event reader and compared with what the store recorded.

One tiny real run (digits, 1 epoch, trackers on) is shared by the tests; the unreachable-tracker run
reuses its cached teacher.
"""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path
from unittest import mock

import pytest

from kdcore.cli import build_parser, main
from kdcore.config import RunConfig, flatten
from kdcore.errors import ConfigError
from kdcore.store import Store
from kdcore.worker import execute

TINY = {"dataset": "digits", "epochs": 1, "batch_size": 64, "student": {"arch": "mlp-tiny"},
        "teacher": {"arch": "mlp-small", "epochs": 1}, "baseline": True}


def train(store: Store, config: RunConfig) -> tuple[str, dict]:
    run_id = store.create_run(config.to_dict(), status="running", pid=os.getpid())
    return run_id, execute(store, run_id, config)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A finished run that logged live to MLflow and TensorBoard; its store, id, summary and root folder."""
    root = tmp_path_factory.mktemp("tracked")
    store = Store(root / "home")
    # MLflow's file store: its SQLite store works the same way (README) but creates its tables in ~2.5 s of CPU
    config = RunConfig.from_dict({**TINY, "name": "tracked run", "tracking": {
        "mlflow": str(root / "mlruns"), "tensorboard": str(root / "tb")}})
    run_id, summary = train(store, config)
    assert summary["status"] == "done", store.logs(run_id)
    yield store, run_id, summary, root
    store.close()


def series(store: Store, run_id: str) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """What the store recorded: (stage, name) → [(step, value)]."""
    out: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for row in store.metrics_since(run_id)[0]:
        out.setdefault((row.stage, row.name), []).append((row.step, row.value))
    return out


def mlflow_run(uri: str, run_id: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("KD Lab")
    runs = client.search_runs([experiment.experiment_id], f"tags.`kdlab.run_id` = '{run_id}'")
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return client, runs[0]


def assert_mlflow_holds_the_run(uri: str, store: Store, run_id: str, summary: dict) -> None:
    with mock.patch.dict(os.environ, {"MLFLOW_ALLOW_FILE_STORE": "true"}):  # MLflow 3 reads a folder only when asked
        _assert_mlflow_holds_the_run(uri, store, run_id, summary)


def _assert_mlflow_holds_the_run(uri: str, store: Store, run_id: str, summary: dict) -> None:
    client, run = mlflow_run(uri, run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked run"
    assert run.data.params == {key: value if isinstance(value, str) else json.dumps(value)
                               for key, value in flatten(store.get_run(run_id).config).items()}
    recorded = series(store, run_id)
    assert ("student", "val_acc") in recorded and ("teacher", "train_loss") in recorded and ("baseline", "val_acc") in recorded
    for (stage, name), points in recorded.items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, f"{stage}/{name}"))
        assert history == sorted(points), f"{stage}/{name}"
    for key in ("teacher_test_acc", "student_test_acc", "baseline_test_acc", "wall_s", "student_params"):
        assert run.data.metrics[key] == pytest.approx(summary[key])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"student.pt", "summary.json"}
    local = Path(client.download_artifacts(run.info.run_id, "student.pt"))
    assert local.read_bytes() == store.student_checkpoint(run_id).read_bytes()


def assert_tensorboard_holds_the_run(folder: Path, store: Store, run_id: str, summary: dict) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    readers = {}
    for (stage, name), points in series(store, run_id).items():
        if stage not in readers:
            readers[stage] = EventAccumulator(str(folder / run_id / stage), size_guidance={"scalars": 0})
            readers[stage].Reload()
        events = [(e.step, e.value) for e in readers[stage].Scalars(name)]
        assert [step for step, _ in events] == [step for step, _ in points], f"{stage}/{name}"
        assert all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6) for (_, a), (_, b) in zip(events, points))
    top = EventAccumulator(str(folder / run_id))
    top.Reload()
    assert top.Scalars("summary/student_test_acc")[0].value == pytest.approx(summary["student_test_acc"])
    assert "config/text_summary" in top.Tags()["tensors"]


def test_a_run_logs_its_config_series_summary_and_student_to_mlflow(tracked):
    store, run_id, summary, root = tracked
    assert_mlflow_holds_the_run((root / "mlruns").as_uri(), store, run_id, summary)
    assert any(m.message.startswith("tracking: mlflow → MLflow run") for m in store.logs(run_id))


def test_a_run_logs_every_series_at_its_step_to_tensorboard(tracked):
    store, run_id, summary, root = tracked
    assert_tensorboard_holds_the_run(root / "tb", store, run_id, summary)


def test_sync_exports_a_finished_run_and_a_second_sync_replaces_the_first(tracked, capsys, monkeypatch):
    store, run_id, summary, root = tracked
    monkeypatch.setenv("KDCORE_HOME", str(store.home))
    monkeypatch.chdir(root)
    args = ["sync", run_id, "--mlflow", "file-store", "--tensorboard", "synced"]  # relative: made absolute
    assert main(args) == 0
    assert main([*args, "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith(f"{run_id} → MLflow run ") and out[0].endswith(f"; {root / 'synced' / run_id}")
    exported = json.loads(out[-1])["runs"][0]
    assert exported["run_id"] == run_id and exported["status"] == "done"
    assert exported["mlflow"]["tracking_uri"] == (root / "file-store").as_uri() and exported["mlflow"]["run_id"]
    assert exported["tensorboard"] == {"folder": str(root / "synced" / run_id)}
    assert_mlflow_holds_the_run((root / "file-store").as_uri(), store, run_id, summary)  # one MLflow run, not two
    assert_tensorboard_holds_the_run(root / "synced", store, run_id, summary)  # the second export purged the first


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_tracker_fails_only_the_export_with_a_warning_in_the_log(tracked, tmp_path):
    store = tracked[0]
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    url = f"http://127.0.0.1:{closed_port()}"
    config = RunConfig.from_dict({**TINY, "baseline": False,
                                  "tracking": {"mlflow": url, "tensorboard": str(not_a_folder / "tb")}})
    run_id, summary = train(store, config)  # the teacher is the shared run's, cached
    assert summary["status"] == "done" and store.get_run(run_id).status == "done"
    warnings = [m.message for m in store.logs(run_id) if m.message.startswith("warning: tracking:")]
    assert len(warnings) == 2, warnings
    assert f"mlflow at {url} failed (open)" in warnings[0] and f"sync {run_id} --mlflow {url}" in warnings[0]
    assert "tensorboard at" in warnings[1] and "NotADirectoryError" in warnings[1]


def test_sync_to_an_unreachable_tracker_exits_non_zero_with_one_line(tracked, capsys, monkeypatch):
    store, run_id = tracked[0], tracked[1]
    monkeypatch.setenv("KDCORE_HOME", str(store.home))
    url = f"http://127.0.0.1:{closed_port()}"
    assert main(["sync", run_id, "--mlflow", url]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"kdcore: error: sync: mlflow at {url} failed for run {run_id}: ")


@pytest.mark.parametrize("args, message", [
    (["run-00000000", "--tensorboard", "x"], "no run run-00000000"),
    (["{run}"], "name where to export: --mlflow URI and/or --tensorboard DIR"),
    (["{run}", "--mlflow", "s3://bucket"], "--mlflow: unknown scheme 's3'"),
])
def test_sync_refuses_bad_input_with_one_line(tracked, capsys, monkeypatch, args, message):
    monkeypatch.setenv("KDCORE_HOME", str(tracked[0].home))
    assert main(["sync", *[a.replace("{run}", tracked[1]) for a in args]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_sync_refuses_a_run_that_has_not_ended(kd_home, capsys):
    run_id = Store(kd_home).create_run(RunConfig.from_dict(TINY).to_dict())
    assert main(["sync", run_id, "--tensorboard", str(kd_home / "tb")]) == 2
    assert f"run {run_id} is queued; sync exports runs that have ended" in capsys.readouterr().err


def test_sync_help_names_both_trackers():
    sync = build_parser()._subparsers._group_actions[0].choices["sync"]
    text = sync.format_help()
    assert "--mlflow URI" in text and "--tensorboard DIR" in text and "RUN_ID" in text


@pytest.mark.parametrize("key, value, message", [
    ("mlflow", "s3://bucket/x", "unknown scheme 's3'"),
    ("mlflow", "sqlite://", "not a database file"),
    ("mlflow", "file://host/share", "names a host"),
    ("mlflow", 5, "must be an MLflow tracking URI or null"),
    ("tensorboard", "", "must be a folder path or null"),
])
def test_tracking_keys_are_validated(key, value, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict({"tracking": {key: value}})


def test_tracking_keys_are_made_absolute_and_round_trip(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = RunConfig.from_dict({"tracking": {"mlflow": "sqlite:///m.db", "tensorboard": "tb"}})
    assert config.tracking.mlflow == f"sqlite:///{tmp_path}/m.db" and config.tracking.tensorboard == str(tmp_path / "tb")
    assert RunConfig.from_json(config.to_json()) == config
    assert RunConfig.from_dict({"tracking": {"mlflow": "runs"}}).tracking.mlflow == (tmp_path / "runs").as_uri()
    assert RunConfig.from_dict({"tracking": {"mlflow": "http://127.0.0.1:5000"}}).tracking.mlflow == "http://127.0.0.1:5000"
    assert RunConfig().tracking.mlflow is None and RunConfig.from_dict({}).teacher_key() == RunConfig.from_dict(
        {"tracking": {"tensorboard": "tb"}}).teacher_key()  # a tracker changes no number, nor the cached teacher
