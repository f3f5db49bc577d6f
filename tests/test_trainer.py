"""Tests for kdcore.trainer: the whole pipeline on tiny settings (digits, 8x8), in a few seconds."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

import kdcore.methods.objective as objective_module
from kdcore import checkpoints, trainer
from kdcore.soft_labels import SoftLabels
from kdcore.callbacks import Callback
from kdcore.config import RunConfig
from kdcore.data import load_dataset
from kdcore.errors import Cancelled, CheckpointError, DivergedError
from kdcore.models import build_model
from kdcore.trainer import run_pipeline

BATCH = 64
BASE = {
    "dataset": "digits", "device": "cpu", "epochs": 2, "batch_size": BATCH, "lr": 0.01,
    "teacher": {"arch": "cnn-small", "epochs": 3, "batch_size": BATCH, "lr": 0.01},
    "student": {"arch": "mlp-tiny"},
}
MLP_TINY_PARAMS = (8 * 8 * 16 + 16) + (16 * 10 + 10)  # one hidden layer of 16 on 64 inputs, 10 classes


def make_config(**dotted) -> RunConfig:
    return RunConfig.from_dict(BASE).replace(**dotted)


def steps_per_epoch(dataset: str = "digits", batch_size: int = BATCH) -> int:
    return len(load_dataset(dataset).train_y) // batch_size


class Recorder(Callback):
    """Records every hook call; `stop_after` = (stage, epoch) asks to stop once that epoch ended."""

    def __init__(self, stop_after: tuple[str, int] | None = None) -> None:
        self.events: list[tuple] = []
        self.stop_after = stop_after
        self.stop = False

    def on_stage_start(self, stage, epochs, steps_per_epoch):
        self.events.append(("start", stage, epochs, steps_per_epoch))

    def on_metrics(self, stage, epoch, step, values):
        self.events.append(("metrics", stage, epoch, step, dict(values)))

    def on_epoch_end(self, stage, epoch, values):
        self.events.append(("epoch_end", stage, epoch, dict(values)))
        if self.stop_after == (stage, epoch):
            self.stop = True

    def on_snapshot(self, stage, epoch, payload):
        self.events.append(("snapshot", stage, epoch, payload))

    def on_stage_end(self, stage, values):
        self.events.append(("end", stage, dict(values)))

    def on_resume(self, stage, epoch):
        self.events.append(("resume", stage, epoch))

    def should_stop(self):
        return self.stop

    # --- views ---

    def stages(self, kind: str = "start") -> list[str]:
        return [e[1] for e in self.events if e[0] == kind]

    def start(self, stage: str) -> tuple:
        return next(e for e in self.events if e[0] == "start" and e[1] == stage)

    def train_losses(self, stage: str) -> list[tuple[int, int, float]]:
        """(epoch, step, train_loss) of every optimizer step of `stage`, in order."""
        return [(e[2], e[3], e[4]["train_loss"]) for e in self.events
                if e[0] == "metrics" and e[1] == stage and "train_loss" in e[4]]

    def val_metrics(self, stage: str) -> list[tuple[int, int, dict]]:
        return [(e[2], e[3], e[4]) for e in self.events if e[0] == "metrics" and e[1] == stage and "val_acc" in e[4]]

    def snapshots(self, stage: str) -> list[tuple[int, dict]]:
        return [(e[2], e[3]) for e in self.events if e[0] == "snapshot" and e[1] == stage]


@pytest.fixture(scope="module")
def teacher_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("teachers")


@pytest.fixture(scope="module")
def recorded(teacher_cache):
    """One full run (teacher, soft labels, student, finetune, baseline), recorded; its teacher is cached."""
    config = make_config(finetune_epochs=1)
    recorder = Recorder()
    summary = run_pipeline(config, [recorder], teacher_cache=teacher_cache)
    return config, summary, recorder


# ---------------------------------------------------------------- summary


def test_summary_fields(recorded):
    config, summary, _ = recorded
    for key in ("status", "teacher_test_acc", "student_test_acc", "baseline_test_acc", "teacher_params",
                "student_params", "wall_s", "gap_closed", "teacher_cached", "teacher_key"):
        assert key in summary
    assert "run_id" not in summary, "the worker adds the run id"
    assert summary["status"] == "done"
    for key in ("teacher_test_acc", "student_test_acc", "baseline_test_acc", "teacher_val_acc", "student_val_acc"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["teacher_test_acc"] > 0.3, "10 classes: chance is 0.1"
    assert summary["student_params"] == MLP_TINY_PARAMS
    teacher = build_model("cnn-small", (1, 8, 8), 10)
    assert summary["teacher_params"] == sum(p.numel() for p in teacher.parameters())
    assert summary["wall_s"] > 0
    assert summary["teacher_cached"] is False and summary["teacher_key"] == config.teacher_key()
    t, s, b = summary["teacher_test_acc"], summary["student_test_acc"], summary["baseline_test_acc"]
    if t > b:
        assert summary["gap_closed"] == pytest.approx((s - b) / (t - b))
    else:
        assert summary["gap_closed"] is None


def test_stages_in_order(recorded):
    _, _, rec = recorded
    assert rec.stages("start") == ["teacher", "soft_labels", "student", "finetune", "baseline"]
    assert rec.stages("end") == ["teacher", "soft_labels", "student", "finetune", "baseline"]
    kinds = [(e[0], e[1]) for e in rec.events if e[0] in ("start", "end")]
    assert kinds == [(k, s) for s in rec.stages("start") for k in ("start", "end")], "stages do not overlap"


def test_one_train_metric_per_step(recorded):
    config, _, rec = recorded
    spe = steps_per_epoch()
    budgets = {"teacher": config.teacher.epochs, "student": config.epochs, "finetune": config.finetune_epochs,
               "baseline": config.epochs + config.finetune_epochs}
    for stage, epochs in budgets.items():
        assert rec.start(stage)[2:] == (epochs, spe)
        losses = rec.train_losses(stage)
        assert [step for _, step, _ in losses] == list(range(1, epochs * spe + 1))
        assert [epoch for epoch, _, _ in losses] == [(step - 1) // spe + 1 for step in range(1, epochs * spe + 1)]
        assert all(math.isfinite(loss) for _, _, loss in losses)


def test_validation_metrics_per_epoch(recorded):
    config, _, rec = recorded
    spe = steps_per_epoch()
    for stage, epochs in (("teacher", config.teacher.epochs), ("student", config.epochs)):
        val = rec.val_metrics(stage)
        assert [(epoch, step) for epoch, step, _ in val] == [(e, e * spe) for e in range(1, epochs + 1)]
        for _, _, values in val:
            assert 0.0 <= values["val_acc"] <= 1.0 and math.isfinite(values["val_loss"])
        ended = [e[2] for e in rec.events if e[0] == "epoch_end" and e[1] == stage]
        assert ended == list(range(1, epochs + 1))
    student_val = rec.val_metrics("student")
    assert all(v["val_kl"] >= 0 and 0 <= v["val_agreement"] <= 1 for _, _, v in student_val)


def test_snapshots(recorded):
    config, _, rec = recorded
    (epoch, teacher), = rec.snapshots("soft_labels")
    assert epoch == 0 and teacher["temperature"] == config.temperature
    rows = torch.tensor(teacher["teacher_T"])
    assert rows.shape == (len(teacher["indices"]), 10)
    assert torch.allclose(rows.sum(dim=1), torch.ones(len(rows)), atol=1e-5)
    assert torch.allclose(torch.tensor(teacher["teacher_T1"]).sum(dim=1), torch.ones(len(rows)), atol=1e-5)
    assert sorted(teacher["labels"]) == list(range(10)), "the first example of each class"
    assert torch.tensor(teacher["images"]).shape == (len(rows), 1, 8, 8)
    student = rec.snapshots("student")
    assert [e for e, _ in student] == list(range(0, config.epochs + 1)), "epoch 0 is the untrained student"
    for _, payload in student:
        probs = torch.tensor(payload["student_T"])
        assert torch.allclose(probs.sum(dim=1), torch.ones(len(probs)), atol=1e-5)
    assert student[0][1]["student_T"] != student[-1][1]["student_T"]


# ---------------------------------------------------------------- reproducibility and init


def test_same_seed_reproduces_and_other_seed_differs():
    runs = []
    for seed in (3, 3, 4):
        rec = Recorder()
        summary = run_pipeline(make_config(seed=seed, baseline=False), [rec])
        runs.append((summary, rec))
    (a, rec_a), (b, rec_b), (c, rec_c) = runs
    assert a["student_test_acc"] == b["student_test_acc"]
    assert rec_a.train_losses("student") == rec_b.train_losses("student")
    assert rec_a.train_losses("teacher") == rec_b.train_losses("teacher")
    assert rec_a.train_losses("teacher") == rec_c.train_losses("teacher"), "the teacher has its own seed"
    assert rec_a.train_losses("student") != rec_c.train_losses("student")


def test_baseline_starts_from_the_students_init(monkeypatch):
    built: list[tuple[str, dict]] = []
    original = trainer.new_model

    def recording_new_model(arch, shape, classes, seed, device):
        model = original(arch, shape, classes, seed, device)
        built.append((arch, {k: v.clone() for k, v in model.state_dict().items()}))
        return model

    monkeypatch.setattr(trainer, "new_model", recording_new_model)
    run_pipeline(make_config(seed=5))
    students = [state for arch, state in built if arch == "mlp-tiny"]
    assert len(students) == 2, "student and baseline"
    assert students[0].keys() == students[1].keys()
    assert all(torch.equal(students[0][k], students[1][k]) for k in students[0])
    other_seed = original("mlp-tiny", (1, 8, 8), 10, 6, torch.device("cpu")).state_dict()
    assert not torch.equal(other_seed["head.weight"], students[0]["head.weight"])


# ---------------------------------------------------------------- teacher cache and checkpoints


def test_cached_teacher_is_reused(recorded, teacher_cache):
    config, first, _ = recorded
    assert (teacher_cache / f"{config.teacher_key()}.pt").is_file()

    def soft_label_files() -> dict[str, tuple[int, int]]:
        """The soft labels kept beside the teacher (`<key>.<name>.pt`), each with its inode and mtime."""
        return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in teacher_cache.glob(f"{config.teacher_key()}.*.pt")}

    kept = soft_label_files()
    assert {f"{config.teacher_key()}.train_logits.pt", f"{config.teacher_key()}.val_logits.pt"} <= set(kept)
    rec = Recorder()
    again = run_pipeline(make_config(seed=1, temperature=2.0, baseline=False), [rec], teacher_cache=teacher_cache)
    assert again["teacher_cached"] is True
    assert "teacher" not in rec.stages("start") and rec.train_losses("teacher") == []
    assert again["teacher_test_acc"] == first["teacher_test_acc"]
    assert again["teacher_key"] == first["teacher_key"]
    assert soft_label_files() == kept, "the soft labels kept beside the teacher were computed again"


def test_other_teacher_settings_retrain(recorded, teacher_cache):
    config, _, _ = recorded
    rec = Recorder()
    other = make_config(**{"teacher.epochs": config.teacher.epochs + 1, "baseline": False, "epochs": 1})
    summary = run_pipeline(other, [rec], teacher_cache=teacher_cache)
    assert summary["teacher_cached"] is False and "teacher" in rec.stages("start")
    assert summary["teacher_key"] != config.teacher_key()
    assert (teacher_cache / f"{other.teacher_key()}.pt").is_file()


def test_teacher_checkpoint_loads_the_cached_file(recorded, teacher_cache):
    config, first, _ = recorded
    path = teacher_cache / f"{config.teacher_key()}.pt"
    rec = Recorder()
    summary = run_pipeline(make_config(**{"teacher.checkpoint": str(path), "baseline": False, "epochs": 1}), [rec])
    assert "teacher" not in rec.stages("start")
    assert summary["teacher_test_acc"] == first["teacher_test_acc"]
    assert summary["teacher_source"].startswith("checkpoint") and summary["teacher_key"] is None


# What a checkpoint must match comes from three places: the config's arch, the dataset's class count and its
# input shape. Every way a file can be refused is test_checkpoints.py's; these check the pipeline passes each.


def test_teacher_checkpoint_of_another_arch_is_refused(recorded, teacher_cache):
    config, _, _ = recorded
    path = teacher_cache / f"{config.teacher_key()}.pt"
    with pytest.raises(CheckpointError) as info:
        run_pipeline(make_config(**{"teacher.checkpoint": str(path), "teacher.arch": "cnn"}))
    assert "'cnn-small'" in str(info.value) and "'cnn'" in str(info.value)


def test_teacher_checkpoint_with_other_class_count_is_refused(tmp_path):
    path = tmp_path / "three.pt"
    model = build_model("cnn-small", (1, 8, 8), 3)
    checkpoints.save_atomic(checkpoints.model_checkpoint(model, arch="cnn-small", input_shape=(1, 8, 8), num_classes=3),
                            path)
    with pytest.raises(CheckpointError, match="3 classes; the dataset has 10"):
        run_pipeline(make_config(**{"teacher.checkpoint": str(path)}))


def test_teacher_checkpoint_for_another_input_shape_is_refused(recorded, teacher_cache, monkeypatch):
    config, _, _ = recorded
    path = teacher_cache / f"{config.teacher_key()}.pt"

    def accepted(*args, **kwargs):
        raise AssertionError("the 8x8 teacher was accepted for 28x28 images")

    monkeypatch.setattr(trainer, "SoftLabels", accepted)  # fail fast instead of training on
    with pytest.raises(CheckpointError, match=re.escape("inputs of shape (1, 8, 8); the dataset's are (1, 28, 28)")):
        run_pipeline(make_config(dataset="mnist-5k", **{"teacher.checkpoint": str(path)}))


def test_corrupt_cache_entry_is_retrained(tmp_path):
    config = make_config(baseline=False, epochs=1)
    (tmp_path / f"{config.teacher_key()}.pt").write_bytes(b"not a checkpoint")
    rec = Recorder()
    summary = run_pipeline(config, [rec], teacher_cache=tmp_path)
    assert summary["teacher_cached"] is False and "teacher" in rec.stages("start")
    checkpoints.load(tmp_path / f"{config.teacher_key()}.pt")  # replaced by a readable file


# ---------------------------------------------------------------- divergence and stopping


DIVERGED = re.compile(r"^(\w+) diverged at epoch (\d+) step (\d+)")


def test_divergence_is_reported_with_epoch_and_step():
    # plain SGD at the largest allowed lr blows up a wide MLP within the first epoch
    config = make_config(optimizer="sgd", lr=10, baseline=False, **{"student.arch": "mlp", "weights.ce": 1.0,
                                                                     "weights.kd": 0.0})
    rec = Recorder()
    with pytest.raises(DivergedError) as info:
        run_pipeline(config, [rec])
    stage, epoch, step = DIVERGED.match(str(info.value)).groups()
    epoch, step = int(epoch), int(step)
    assert stage == "student"
    assert epoch == (step - 1) // steps_per_epoch() + 1
    assert [s for _, s, _ in rec.train_losses("student")] == list(range(1, step)), "finite steps before it reported"


def test_divergence_step_counts_across_epochs(monkeypatch):
    spe = steps_per_epoch()
    calls = {"n": 0}
    original = objective_module.default_kd

    def nan_at_step(ctx):
        calls["n"] += 1
        kd = original(ctx)
        return kd * float("nan") if calls["n"] == spe + 5 else kd  # epoch 2, step spe + 5

    monkeypatch.setattr(objective_module, "default_kd", nan_at_step)
    with pytest.raises(DivergedError, match=rf"^student diverged at epoch 2 step {spe + 5}: loss is nan"):
        run_pipeline(make_config(baseline=False))


def test_should_stop_cancels():
    rec = Recorder(stop_after=("student", 1))
    spe = steps_per_epoch()
    with pytest.raises(Cancelled, match=rf"^student stopped at epoch 2 step {spe + 1}$"):
        run_pipeline(make_config(epochs=3, baseline=False), [rec])
    # the interrupted epoch's losses are still buffered when it stops; resume repeats that epoch anyway
    assert rec.train_losses("student")[-1][1] == spe
    assert "end" not in [e[0] for e in rec.events if e[1] == "student"]


def test_resume_continues_to_the_same_result(tmp_path, teacher_cache):
    config = make_config(epochs=3, baseline=False, seed=2)
    spe = steps_per_epoch()

    whole = Recorder()
    expected = run_pipeline(config, [whole], teacher_cache=teacher_cache, artifacts=tmp_path / "whole")

    stopped = Recorder(stop_after=("student", 1))
    with pytest.raises(Cancelled):
        run_pipeline(config, [stopped], teacher_cache=teacher_cache, artifacts=tmp_path / "resumed")
    assert (tmp_path / "resumed" / "progress.pt").is_file()

    resumed = Recorder()
    summary = run_pipeline(config, [resumed], teacher_cache=teacher_cache, artifacts=tmp_path / "resumed", resume=True)
    assert ("resume", "student", 1) in resumed.events
    assert [s for _, s, _ in resumed.train_losses("student")] == list(range(spe + 1, 3 * spe + 1))
    assert resumed.train_losses("student") == whole.train_losses("student")[spe:]
    assert [e for e, _ in resumed.snapshots("student")] == [2, 3], "no second epoch-0 snapshot"
    assert summary["student_test_acc"] == pytest.approx(expected["student_test_acc"], abs=1e-6)
    assert summary["best_epoch"] == expected["best_epoch"]
    a = checkpoints.load(tmp_path / "whole" / "student.pt")["state_dict"]
    b = checkpoints.load(tmp_path / "resumed" / "student.pt")["state_dict"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


# ---------------------------------------------------------------- other paths


def test_points_dataset_draws_decision_regions():
    config = make_config(dataset="moons", epochs=2, baseline=False, **{"teacher.arch": "mlp-small", "teacher.epochs": 2})
    rec = Recorder()
    summary = run_pipeline(config, [rec])
    assert 0.0 <= summary["student_test_acc"] <= 1.0 and summary["teacher_test_acc"] > 0.6
    (_, teacher), = rec.snapshots("soft_labels")
    grid = len(teacher["grid"]["x"])
    regions = torch.tensor(teacher["teacher_regions"])
    assert regions.shape == (len(teacher["grid"]["y"]), grid) and set(regions.unique().tolist()) <= {0, 1}
    assert len(teacher["points"]) == len(teacher["point_labels"]) and "images" not in teacher
    student = rec.snapshots("student")
    assert [e for e, _ in student] == [0, 1, 2]
    for _, payload in student:
        assert torch.tensor(payload["student_regions"]).shape == regions.shape


def test_feature_distillation_trains_the_projector(monkeypatch):
    captured = {}
    original = trainer.distill_stage

    def capturing(configs, members, prep):
        stage = original(configs, members, prep)
        projector = captured["projector"] = stage.objective.projector
        captured["before"] = {k: v.clone() for k, v in projector.state_dict().items()}
        return stage

    monkeypatch.setattr(trainer, "distill_stage", capturing)
    rec = Recorder()
    summary = run_pipeline(make_config(baseline=False, **{"weights.feature": 1.0}), [rec])
    projector = captured["projector"]
    assert projector is not None and projector.in_features == 16  # mlp-tiny's features → the teacher's
    assert not torch.equal(projector.weight, captured["before"]["weight"])
    features = [v["train_feature"] for e in rec.events if e[0] == "metrics" and e[1] == "student"
                for v in [e[4]] if "train_feature" in v]
    assert features and all(math.isfinite(f) and f > 0 for f in features)
    assert math.isfinite(summary["student_test_acc"])


def test_no_projector_without_feature_weight(monkeypatch):
    captured = {}
    original = trainer.distill_stage

    def capturing(configs, members, prep):
        stage = original(configs, members, prep)
        captured["projector"] = stage.objective.projector
        return stage

    monkeypatch.setattr(trainer, "distill_stage", capturing)
    run_pipeline(make_config(baseline=False, epochs=1))
    assert captured["projector"] is None


def test_augment_runs_the_teacher_per_batch(monkeypatch):
    calls = []
    original = SoftLabels.batch

    def recording_batch(self, idx, x, views=None):
        calls.append(self.train_logits is None and self.view_table is None)
        return original(self, idx, x, views)

    monkeypatch.setattr(SoftLabels, "batch", recording_batch)
    rec = Recorder()
    summary = run_pipeline(make_config(augment=True, baseline=False), [rec])
    assert len(calls) == 2 * steps_per_epoch() and all(calls), "no precomputed logits; the teacher ran each step"
    assert all(math.isfinite(loss) for _, _, loss in rec.train_losses("student"))
    assert 0.0 <= summary["student_test_acc"] <= 1.0


def test_resume_with_augment_continues_to_the_same_result(tmp_path, teacher_cache):
    config = make_config(epochs=3, baseline=False, seed=2, augment=True)
    whole = Recorder()
    run_pipeline(config, [whole], teacher_cache=teacher_cache, artifacts=tmp_path / "whole")
    with pytest.raises(Cancelled):
        run_pipeline(config, [Recorder(stop_after=("student", 1))], teacher_cache=teacher_cache,
                     artifacts=tmp_path / "resumed")
    resumed = Recorder()
    run_pipeline(config, [resumed], teacher_cache=teacher_cache, artifacts=tmp_path / "resumed", resume=True)
    assert resumed.train_losses("student") == whole.train_losses("student")[steps_per_epoch():]
