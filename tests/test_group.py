"""Stacked training of a sweep's runs (kdcore/group.py): which runs group, equal results, per-run cancel."""

from __future__ import annotations

import pytest

from kdcore.callbacks import Callback
from kdcore.config import RunConfig
from kdcore.errors import Cancelled
from kdcore.group import group_key, run_group
from kdcore.trainer import run_pipeline
from run_helpers import StopAfterFirstEpoch

TINY = {"dataset": "digits", "epochs": 3, "teacher": {"arch": "cnn-small", "epochs": 1}, "student": {"arch": "mlp-tiny"}}


def test_students_trained_as_a_group_match_the_same_runs_trained_alone(tmp_path):
    base = RunConfig.from_dict(TINY)
    configs = [base.replace(temperature=t, seed=s, **{"weights.kd": w}) for t, s, w in ((1, 0, 0.5), (4, 0, 0.9), (8, 1, 0.2))]
    assert len({group_key(c) for c in configs}) == 1
    cache = tmp_path / "teachers"
    alone = [run_pipeline(c, [], teacher_cache=cache) for c in configs]
    grouped = run_group(configs, [Callback() for _ in configs], teacher_cache=cache, artifacts=[None] * 3)
    for a, g in zip(alone, grouped):
        for key in ("student_test_acc", "student_val_acc", "baseline_test_acc", "best_epoch", "test_agreement"):
            assert g[key] == pytest.approx(a[key], abs=1e-6), key


def test_cancelling_one_run_of_a_group_leaves_the_others_training(tmp_path):
    base = RunConfig.from_dict(TINY)
    configs = [base.replace(temperature=t) for t in (1, 4)]
    outcomes = run_group(configs, [StopAfterFirstEpoch(), Callback()], teacher_cache=tmp_path, artifacts=[None, None])
    assert isinstance(outcomes[0], Cancelled)
    assert isinstance(outcomes[1], dict) and outcomes[1]["status"] == "done"


def test_runs_that_cannot_share_a_stacked_student_train_alone():
    base = RunConfig.from_dict(TINY)
    assert group_key(base.replace(augment=True)) is None
    assert group_key(base.replace(**{"weights.feature": 1.0})) is None
    assert group_key(base) != group_key(base.replace(epochs=5))
    assert group_key(base) == group_key(base.replace(temperature=9, seed=3, name="x"))
    assert group_key(base.replace(method="dkd")) is None  # its objective is not declared stackable
    ls = base.replace(method="kd_ls")
    assert group_key(ls) is not None and group_key(ls) != group_key(base)  # stacks, with its own kind


def test_a_stackable_method_other_than_kd_groups_and_matches_alone(tmp_path):
    base = RunConfig.from_dict({**TINY, "epochs": 2, "method": "kd_ls", "baseline": False})
    configs = [base.replace(temperature=t) for t in (2, 6)]
    alone = [run_pipeline(c, [], teacher_cache=tmp_path) for c in configs]
    grouped = run_group(configs, [Callback(), Callback()], teacher_cache=tmp_path, artifacts=[None, None])
    for a, g in zip(alone, grouped):
        assert g["student_test_acc"] == pytest.approx(a["student_test_acc"], abs=1e-6)
        assert g["group_size"] == 2
