"""The one training loop (kdcore/train.py): single and stacked members, the checkpoint schema, per-member ends."""

from __future__ import annotations

import pytest
import torch

from kdcore.callbacks import Callback
from kdcore.config import RunConfig
from kdcore.errors import Cancelled, DivergedError
from kdcore.train import (Progress, Single, Stacked, StageResult, TrainState, cosine, fit, fit_one, learning_rate,
                          make_optimizer, step_decay)
from kdcore.trainer import distill_stage, new_model, prepare
from run_helpers import StopAfterFirstEpoch

CONFIG = RunConfig.from_dict({"dataset": "digits", "epochs": 2, "teacher": {"arch": "mlp-small", "epochs": 1},
                              "student": {"arch": "mlp-tiny"}, "baseline": False})


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    return prepare(CONFIG, Callback(), tmp_path_factory.mktemp("teachers"))


def student(prep, config=CONFIG):
    info = prep.data.info
    return new_model(config.student.arch, info.input_shape, info.num_classes, config.seed, prep.device)


def train(prep, configs, members, callbacks=None, progress=None, state=None):
    stage = distill_stage(configs, members, prep)
    state = state or TrainState.start(stage, members, configs[0], prep.device)
    callbacks = callbacks or [Callback() for _ in configs]
    progress = progress or [Progress(None) for _ in configs]
    return stage, state, fit(stage, state, prep.data, configs[0], prep.device, callbacks, progress)


def test_cosine_schedule_ends_at_zero():
    assert cosine(0.1, 0, 10) == pytest.approx(0.1) and cosine(0.1, 5, 10) == pytest.approx(0.05)
    assert cosine(0.1, 10, 10) == pytest.approx(0.0, abs=1e-12) and cosine(0.1, 99, 10) == pytest.approx(0.0, abs=1e-12)


def test_the_step_schedule_decays_by_lr_decay_after_each_milestone():
    """CRD's and DKD's schedule: 0.05 for epochs 1-150, then 0.005, 0.0005 and 0.00005 (hand values)."""
    by_epoch = {1: 0.05, 150: 0.05, 151: 0.005, 180: 0.005, 181: 0.0005, 210: 0.0005, 211: 0.00005, 240: 0.00005}
    for epoch, lr in by_epoch.items():
        assert step_decay(0.05, epoch, [150, 180, 210], 0.1) == pytest.approx(lr, rel=1e-12), epoch
    config = RunConfig(optimizer="sgd", lr=0.05, schedule="step", lr_milestones=[150, 180, 210])
    steps_per_epoch, total = 782, 782 * 240  # 50,000 images in batches of 64
    for epoch, lr in by_epoch.items():  # every step of the epoch, first and last, trains with the epoch's lr
        for step in ((epoch - 1) * steps_per_epoch, epoch * steps_per_epoch - 1):
            assert learning_rate(config, 0.05, step, steps_per_epoch, total) == pytest.approx(lr, rel=1e-12)
    assert learning_rate(CONFIG, 0.1, 5, 1, 10) == cosine(0.1, 5, 10)  # the default stays cosine


def test_sgd_takes_the_configured_momentum_and_nesterov():
    weight = torch.nn.Parameter(torch.zeros(3))
    for settings, expected in (({}, (0.9, True, 0.0)), ({"nesterov": False, "weight_decay": 5e-4}, (0.9, False, 5e-4)),
                               ({"momentum": 0.0}, (0.0, False, 0.0))):
        group = make_optimizer(RunConfig(optimizer="sgd", **settings), [weight], 0.05).param_groups[0]
        assert (group["momentum"], group["nesterov"], group["weight_decay"]) == expected


def test_stacked_members_equal_the_same_runs_trained_one_by_one(prep):
    configs = [CONFIG.replace(temperature=2, seed=0), CONFIG.replace(temperature=8, seed=1, **{"weights.kd": 0.9})]
    alone = [train(prep, [c], Single(student(prep, c)))[2][0] for c in configs]
    stacked = train(prep, configs, Stacked([student(prep, c) for c in configs]))[2]
    for a, s in zip(alone, stacked):
        assert isinstance(s, StageResult) and s.best_epoch == a.best_epoch
        assert s.best_val_acc == pytest.approx(a.best_val_acc, abs=1e-6)
        for key in a.best_state:
            torch.testing.assert_close(s.best_state[key], a.best_state[key], atol=1e-5, rtol=1e-5)


def test_a_resumed_single_run_continues_exactly(prep, tmp_path):
    whole = train(prep, [CONFIG], Single(student(prep)))[2][0]
    progress = Progress(tmp_path)
    (stopped,) = train(prep, [CONFIG], Single(student(prep)), callbacks=[StopAfterFirstEpoch()], progress=[progress])[2]
    assert isinstance(stopped, Cancelled)
    saved = progress.load()
    assert saved["stage"] == "student" and saved["epoch"] == 1
    assert {"model", "optimizer", "generator", "best_state", "best_epoch", "best_val_acc", "history"} <= set(saved)
    members = Single(student(prep))
    stage = distill_stage([CONFIG], members, prep)
    state = TrainState.start(stage, members, CONFIG, prep.device)
    state.load_checkpoint(saved)
    resumed = fit_one(stage, state, prep.data, CONFIG, prep.device, Callback(), Progress(None))
    assert resumed.best_val_acc == pytest.approx(whole.best_val_acc, abs=1e-6) and len(resumed.history) == 2
    for key in whole.best_state:
        torch.testing.assert_close(resumed.best_state[key], whole.best_state[key], atol=1e-6, rtol=1e-5)


def test_a_stacked_members_checkpoint_resumes_it_alone(prep, tmp_path):
    configs = [CONFIG.replace(seed=0), CONFIG.replace(seed=1, temperature=8)]
    whole = train(prep, [configs[1]], Single(student(prep, configs[1])))[2][0]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    progress = [Progress(tmp_path / "a"), Progress(tmp_path / "b")]
    train(prep, configs, Stacked([student(prep, c) for c in configs]), progress=progress,
          callbacks=[StopAfterFirstEpoch(), StopAfterFirstEpoch()])
    members = Single(student(prep, configs[1]))
    stage = distill_stage([configs[1]], members, prep)
    state = TrainState.start(stage, members, configs[1], prep.device)
    state.load_checkpoint(progress[1].load())  # the stack's slice has the layout of a single run's
    resumed = fit_one(stage, state, prep.data, configs[1], prep.device, Callback(), Progress(None))
    assert resumed.best_val_acc == pytest.approx(whole.best_val_acc, abs=1e-6)


class Recorder(Callback):
    def __init__(self, stop_at_step: int | None = None) -> None:
        self.steps: list[int] = []
        self.names: set[str] = set()
        self.stop_at_step = stop_at_step

    def on_metrics(self, stage, epoch, step, values):
        if "train_loss" in values:
            self.steps.append(step)
            self.names |= set(values)

    def should_stop(self):
        return self.stop_at_step is not None and bool(self.steps) and self.steps[-1] >= self.stop_at_step


def test_one_member_diverging_or_cancelled_ends_alone(prep):
    configs = [CONFIG.replace(seed=0), CONFIG.replace(seed=1), CONFIG.replace(seed=2)]
    members = Stacked([student(prep, c) for c in configs])
    stage = distill_stage(configs, members, prep)
    stage.hyper[0]["temperature"] = 0.0  # past validation: z/0 makes member 0's loss NaN at step 1
    recorders = [Recorder(), Recorder(stop_at_step=30), Recorder()]
    state = TrainState.start(stage, members, configs[0], prep.device)
    results = fit(stage, state, prep.data, configs[0], prep.device, recorders, [Progress(None)] * 3)
    assert isinstance(results[0], DivergedError) and "diverged at epoch 1 step 1" in str(results[0])
    assert isinstance(results[1], Cancelled) and isinstance(results[2], StageResult)
    assert recorders[0].steps == [] and recorders[1].steps == list(range(1, 51))[: len(recorders[1].steps)]
    assert recorders[2].steps == list(range(1, len(recorders[2].steps) + 1)) and results[2].best_epoch >= 1
    assert recorders[2].names == {"train_loss", "train_ce", "train_kd"}  # what the kd objective returns


def test_a_single_run_raises_what_ended_it(prep):
    members = Single(student(prep))
    stage = distill_stage([CONFIG], members, prep)
    stage.hyper[0]["temperature"] = 0.0
    state = TrainState.start(stage, members, CONFIG, prep.device)
    with pytest.raises(DivergedError, match="^student diverged at epoch 1 step 1"):
        fit_one(stage, state, prep.data, CONFIG, prep.device, Callback(), Progress(None))
