"""The teachers KD Lab ships (kdcore/teachers): what they record is what they give, the untouched default
configs find them, a fresh store uses them without training, and `bench/bundle_teachers.py` remakes them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdcore import checkpoints, teachers, trainer
from kdcore.callbacks import Callback
from kdcore.config import RunConfig
from kdcore.data import load_dataset
from kdcore.evaluation import accuracy, predict
from kdcore.models import build_model
from kdcore.store import Store
from run_helpers import kdcore, last_json

BUNDLED = ("mnist-5k", "digits")  # the offline image sets whose default teacher is the preset's cnn
REPO = Path(__file__).resolve().parent.parent


def bundled(dataset: str) -> dict:
    path = teachers.bundled_path(RunConfig(dataset=dataset).teacher_key())
    assert path is not None, f"no bundled teacher for the default {dataset} run: python bench/bundle_teachers.py"
    return checkpoints.load(path, "bundled teacher")


@pytest.mark.parametrize("dataset", BUNDLED)
def test_a_bundled_teacher_gives_the_accuracy_it_records(dataset):
    stored = bundled(dataset)
    record = stored["bundled"]
    assert record["dataset"] == dataset and record["teacher_key"] == RunConfig(dataset=dataset).teacher_key()
    assert record["command"] == f"python bench/bundle_teachers.py --datasets {dataset}"
    data = load_dataset(dataset)
    model = build_model(stored["arch"], data.info.input_shape, data.info.num_classes)
    model.load_state_dict(stored["state_dict"])
    model.eval()
    assert accuracy(predict(model, data.test_x), data.test_y) == pytest.approx(record["test_acc"], abs=0.5 / len(data.test_y))
    assert accuracy(predict(model, data.val_x), data.val_y) == pytest.approx(record["val_acc"], abs=0.5 / len(data.val_y))


def test_the_bundled_files_are_package_data():
    keys = teachers.bundled_keys()
    assert {RunConfig(dataset=d).teacher_key() for d in BUNDLED} <= set(keys)
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"kdcore.teachers" = ["*.pt"]' in pyproject


def test_a_fresh_store_uses_the_bundled_teacher_and_trains_none(kd_home):
    tiny = ["--set", "dataset=digits", "--set", "epochs=1", "--set", "student.arch=mlp-tiny", "--set", "baseline=false"]
    summary = last_json(kdcore(kd_home, "run", *tiny, "--json"))
    key = RunConfig(dataset="digits").teacher_key()
    assert summary["teacher_source"] == f"bundled {key}" and summary["teacher_cached"] is True
    assert summary["teacher_test_acc"] == pytest.approx(bundled("digits")["bundled"]["test_acc"], abs=1e-6)
    rows = last_json(kdcore(kd_home, "metrics", summary["run_id"], "--json"))["metrics"]
    assert rows and not any(r["stage"] == "teacher" for r in rows)  # no teacher stage trained
    assert {p.name for p in (kd_home / "teachers").glob(f"{key}*.pt")} == \
        {f"{key}.pt", f"{key}.train_logits.pt", f"{key}.val_logits.pt", f"{key}.test_logits.pt"}  # with its logits
    again = last_json(kdcore(kd_home, "run", *tiny, "--json"))
    assert again["teacher_source"] == f"cache {key}"
    assert Store(kd_home).get_run(summary["run_id"]).summary["teacher_source"].startswith("bundled")


def test_training_a_teacher_stays_one_setting_away(tmp_path, monkeypatch):
    trained = []

    def train(config, data, device, cb, cache_stem):
        trained.append(config.teacher.bundled)
        return trainer._Teacher(build_model("cnn", (1, 8, 8), 10), 0.0, 0.0, cached=False, source="trained")

    monkeypatch.setattr(trainer, "_train_teacher", train)
    data = load_dataset("digits")
    for bundled_on, expected in ((True, []), (False, [False])):
        config = RunConfig(dataset="digits", device="cpu").replace(**{"teacher.bundled": bundled_on})
        teacher = trainer._get_teacher(config, data, torch.device("cpu"), Callback(), tmp_path / str(bundled_on))
        assert trained == expected
        assert teacher.source.startswith("bundled") == bundled_on
    no_cache = trainer._get_teacher(RunConfig(dataset="digits", device="cpu"), data, torch.device("cpu"), Callback(), None)
    assert no_cache.source.startswith("bundled") and len(trained) == 1


def test_retraining_the_digits_teacher_with_the_recorded_command_gives_the_same_weights(tmp_path):
    stored = bundled("digits")
    record = stored["bundled"]
    if record["torch"] != torch.__version__:
        pytest.skip(f"the bundled teacher was trained with torch {record['torch']}; this is {torch.__version__}")
    result = subprocess.run([sys.executable, "bench/bundle_teachers.py", "--datasets", "digits", "--out", str(tmp_path),
                             "--json"], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    (remade,) = json.loads(result.stdout.splitlines()[-1])["teachers"]
    assert remade["threads"] == record["threads"]
    assert (remade["val_acc"], remade["test_acc"]) == (record["val_acc"], record["test_acc"])
    again = checkpoints.load(tmp_path / f"{record['teacher_key']}.pt")
    assert all(torch.equal(again["state_dict"][k], v) for k, v in stored["state_dict"].items())
