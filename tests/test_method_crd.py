"""Contrastive representation distillation (kdcore/methods/crd.py): NCE against float64, the memory bank, a run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import references as ref
from kdcore import losses
from kdcore.methods import resolve_params
from run_helpers import run_and_metrics
from test_methods import build, step


def unit(*shape: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.from_numpy(np.random.default_rng(seed).normal(0, 1, shape)).float(), dim=-1)


@pytest.mark.parametrize("mask_some", [False, True])
def test_nce_loss_matches_the_float64_reference(mask_some):
    anchors, positives, negatives = unit(4, 8, seed=1), unit(4, 8, seed=2), unit(6, 8, seed=3)
    valid = torch.ones(4, 6, dtype=torch.bool)
    if mask_some:
        valid[0, :2] = False
        valid[3, 5] = False
    value = losses.crd_nce_loss(anchors, positives, negatives, valid, 0.07, 100, 37.0)
    assert ref.close(value, ref.crd_nce(anchors, positives, negatives, valid, 0.07, 100, 37.0), rtol=1e-4)


def test_nce_loss_rewards_finding_the_positive():
    anchors, negatives = unit(4, 8, seed=4), unit(6, 8, seed=5)
    valid = torch.ones(4, 6, dtype=torch.bool)
    matched = losses.crd_nce_loss(anchors, anchors, negatives, valid, 0.07, 100, 50.0)
    unmatched = losses.crd_nce_loss(anchors, -anchors, negatives, valid, 0.07, 100, 50.0)
    assert float(matched) < float(unmatched)


def test_negatives_are_capped_by_the_training_set_and_defaults_are_the_papers():
    params = resolve_params("crd")
    assert params == {"weight": 0.8, "negatives": 16384, "nce_temperature": 0.07, "momentum": 0.5, "embed_dim": 128}


def test_step_trains_heads_and_student_and_updates_the_memory_bank():
    config, student, teacher, objective = build("crd", "mlp-tiny", "mlp-small", train_size=32)
    bank = objective.modules
    before = bank.memory_student.clone()
    x, y = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(6)), torch.arange(6)
    indices = torch.tensor([0, 3, 5, 7, 11, 13])
    parts = step(config, objective, student, x, y, indices=indices)
    parts["loss"].backward()
    assert parts["crd"] > 0 and torch.isfinite(parts["loss"])
    assert bank.embed_student.weight.grad.abs().sum() > 0 and bank.embed_teacher.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in student.parameters())
    changed = (bank.memory_student != before).any(dim=1)
    assert changed[indices].all() and not changed[[i for i in range(32) if i not in indices.tolist()]].any()
    assert torch.allclose(bank.memory_student[indices].norm(dim=1), torch.ones(6), atol=1e-5)  # kept on the sphere
    assert (bank.labels[indices] == y).all() and bank.normalizers.min() > 0  # Z fixed from the first batch
    normalizers = bank.normalizers.clone()
    step(config, objective, student, x, y, indices=indices)
    assert torch.equal(bank.normalizers, normalizers)


def test_a_one_epoch_cli_run_records_the_contrastive_term(tmp_path):
    summary, series = run_and_metrics(tmp_path, "method=crd", "method.negatives=256")
    assert len(series["train_crd"]) == len(series["train_loss"]) > 0
    assert all(np.isfinite(series["train_crd"])) and summary["student_test_acc"] > 0.1
