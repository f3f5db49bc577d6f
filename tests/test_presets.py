"""Named presets (kdcore/presets.py): `list-presets`, `--preset` on run, submit and sweep, the order preset → file →
--set, the lesson preset the app reuses, and the CIFAR-100 recipe smoke-tested offline on generated CIFAR-100 files."""

from __future__ import annotations

import json
import os

import pytest

from data.data_helpers import write_cifar100
from kdcore.cli import main
from kdcore.config import RunConfig, build_config, flatten
from kdcore.presets import PRESETS, reference_for
from kdcore.store import Store
from kdcore.sweep import build_sweep

RECIPE = "cifar100-r32x4-r8x4"


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_list_presets_json_holds_each_preset_with_its_settings(capsys):
    assert main(["list-presets", "--json"]) == 0
    presets = {p["name"]: p for p in last_json(capsys)["presets"]}
    assert list(presets) == ["teaching", "lesson-alone-vs-distilled", RECIPE]
    assert presets["teaching"]["config"] == flatten(RunConfig().to_dict())
    assert presets["lesson-alone-vs-distilled"]["settings"] == {"dataset": "digits", "labeled_fraction": 0.1,
                                                               "baseline": True}
    recipe = presets[RECIPE]["config"]  # the literature's recipe (CRD's and DKD's train_student defaults)
    expected = {"dataset": "cifar100", "teacher.arch": "resnet32x4", "student.arch": "resnet8x4", "epochs": 240,
                "teacher.epochs": 240, "batch_size": 64, "teacher.batch_size": 64, "optimizer": "sgd", "momentum": 0.9,
                "nesterov": False, "lr": 0.05, "teacher.lr": 0.05, "weight_decay": 0.0005, "schedule": "step",
                "lr_milestones": [150, 180, 210], "lr_decay": 0.1, "augment": True, "teacher.augment": True,
                "temperature": 4.0, "weights.ce": 0.1, "weights.kd": 0.9, "method": "kd"}
    assert {key: recipe[key] for key in expected} == expected
    reference = presets[RECIPE]["reference"]
    assert (reference["teacher_test_acc"], reference["student_test_acc"]) == (0.7942, 0.7250)
    assert reference["methods"] == {"kd": 0.7333, "crd": 0.7551, "dkd": 0.7632}
    assert any("ICLR 2020" in s for s in reference["sources"]) and any("CVPR 2022" in s for s in reference["sources"])
    assert main(["list-presets"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in PRESETS) and "lr_milestones=150,180,210" in text and "DKD 76.32%" in text


@pytest.mark.parametrize("command", [["run"], ["submit"], ["sweep", "--grid", "seed=0,1"],
                                     ["tune", "--space", "temperature=1,4", "--trials", "1"]])
def test_an_unknown_preset_exits_2_naming_the_valid_ones(command, capsys):
    assert main([*command, "--preset", "cifar-100"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'cifar-100'" in err and all(name in err for name in PRESETS)
    assert Store().list_runs() == []


def test_a_preset_is_applied_before_the_config_file_and_set(tmp_path):
    file = tmp_path / "shorter.yaml"
    file.write_text("teacher:\n  epochs: 3\nlr: 0.01\nlr_milestones: [2]\n")
    config = build_config(str(file), ["epochs=5"], preset=RECIPE)
    assert (config.teacher.arch, config.teacher.epochs, config.teacher.lr) == ("resnet32x4", 3, 0.05)
    assert (config.lr, config.lr_milestones, config.epochs, config.schedule) == (0.01, [2], 5, "step")
    assert build_config(str(file), ["lr=0.2", "lr_milestones=1,2"], preset=RECIPE).lr_milestones == [1, 2]
    assert build_config(None, [], preset="teaching") == RunConfig()


def test_sweep_and_submit_start_from_the_preset(capsys, monkeypatch):
    _, _, runs = build_sweep(None, ["epochs=2"], ["temperature=1,4"], preset="lesson-alone-vs-distilled")
    assert [(c.dataset, c.labeled_fraction, c.epochs, c.temperature) for _, c in runs] == [
        ("digits", 0.1, 2, 1.0), ("digits", 0.1, 2, 4.0)]
    store = Store()
    monkeypatch.setenv("KDCORE_MAX_RUNS", "1")
    store.create_run(RunConfig().to_dict(), status="running", pid=os.getpid())  # the only slot is taken: it queues
    assert main(["submit", "--preset", "lesson-alone-vs-distilled", "--set", "seed=3", "--json"]) == 0
    record = store.get_run(last_json(capsys)["run_id"])
    assert record.status == "queued"
    assert (record.config["dataset"], record.config["labeled_fraction"], record.config["seed"]) == ("digits", 0.1, 3)


def test_the_app_reuses_the_engines_lesson_preset():
    from app.workshop import lessons

    assert lessons.LESSON_PRESET == PRESETS["lesson-alone-vs-distilled"].settings
    assert RunConfig().replace(**lessons.LESSON_PRESET) == build_config(preset="lesson-alone-vs-distilled")


def test_runs_of_the_recipes_pair_get_its_published_numbers():
    preset, reference = reference_for(build_config(preset=RECIPE, overrides=["epochs=1"]).to_dict())
    assert preset.name == RECIPE and reference.methods["dkd"] == 0.7632
    assert [label for label, _ in reference.lines()] == ["student alone", "KD", "CRD", "DKD", "teacher"]
    assert reference_for(RunConfig().to_dict()) is None


def test_the_recipe_trains_one_tiny_epoch_offline_on_cifar100_files(tmp_path, capsys):
    """The recipe end to end on generated CIFAR-100 pickles: the preset's data, SGD, step schedule and crop + flip,
    shrunk by --set to tiny networks and 2 short epochs whose lr decays after the first."""
    write_cifar100(tmp_path, n_train=300, n_test=100)
    shrink = {"data_root": str(tmp_path), "val_fraction": 0.34, "epochs": 2, "teacher.epochs": 1, "lr_milestones": 1,
              "teacher.arch": "cnn-small", "student.arch": "cnn-small", "baseline": False}
    assert main(["run", "--preset", RECIPE, *[f"--set={k}={v}" for k, v in shrink.items()], "--json", "--quiet"]) == 0
    summary = last_json(capsys)
    assert summary["status"] == "done" and 0 <= summary["student_test_acc"] <= 1
    record = Store().get_run(summary["run_id"])
    assert (record.config["optimizer"], record.config["schedule"], record.config["augment"]) == ("sgd", "step", True)
    assert main(["metrics", summary["run_id"], "--json"]) == 0
    lrs = {(m["stage"], m["epoch"]): m["value"] for m in last_json(capsys)["metrics"] if m["name"] == "lr"}
    assert lrs == {("teacher", 1): 0.05, ("student", 1): 0.05, ("student", 2): pytest.approx(0.005)}
