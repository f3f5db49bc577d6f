"""Temperature-lab numbers and run comparisons, on a real tiny teacher and real run records."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdcore.compare import comparison_rows, config_diff, flatten, measure_latency
from kdcore.config import RunConfig
from kdcore.store import Store
from kdcore.temperature import class_similarity, dark_knowledge_curve, entropy_curve, teacher_file, teacher_logits
from kdcore.trainer import run_pipeline

TEMPERATURES = [0.5, 1, 2, 4, 8, 16, 32]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    store = Store(home)
    config = RunConfig.from_dict({"dataset": "digits", "epochs": 1, "baseline": False,
                                  "teacher": {"arch": "cnn-small", "epochs": 2}, "student": {"arch": "mlp-tiny"}})
    run_pipeline(config, [], teacher_cache=store.teacher_dir())
    return store, config, teacher_logits(config, teacher_file(store.teacher_dir(), config))


def test_entropy_rises_monotonically_with_temperature_on_real_teacher_logits(trained):
    _, _, tl = trained
    curve = entropy_curve(tl.logits, TEMPERATURES)
    assert all(b > a for a, b in zip(curve, curve[1:]))
    assert curve[-1] < math.log(10) + 1e-6


def test_entropy_matches_a_float64_reference(trained):
    _, _, tl = trained
    z = tl.logits.double().numpy() / 4.0
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    reference = float(np.mean(-(p * np.log(p)).sum(1)))
    assert entropy_curve(tl.logits, [4.0])[0] == pytest.approx(reference, rel=1e-5)


def test_dark_knowledge_grows_with_temperature(trained):
    _, _, tl = trained
    curve = dark_knowledge_curve(tl.logits, TEMPERATURES)
    assert all(b >= a for a, b in zip(curve, curve[1:])) and 0 <= curve[0] < curve[-1] < 0.9 + 1e-6


def test_class_similarity_rows_are_distributions_over_wrong_classes(trained):
    _, _, tl = trained
    s = class_similarity(tl.logits, tl.labels, 4.0, 10)
    assert s.shape == (10, 10)
    assert torch.all(s.diagonal() == 0)
    torch.testing.assert_close(s.sum(1), torch.ones(10))


def test_class_similarity_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.0], [2.0, 0.0, 1.0], [0.0, 3.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    s = class_similarity(logits, labels, 1.0, 3)
    p = torch.softmax(logits, 1)
    row0 = (p[0] + p[1]) / 2
    expected0 = torch.tensor([0.0, row0[1], row0[2]]) / (row0[1] + row0[2])
    torch.testing.assert_close(s[0], expected0)
    assert s[2].sum() == 0  # no example of class 2


def test_latency_is_positive_and_finite():
    for batch in (1, 64):
        seconds = measure_latency("mlp-tiny", (1, 8, 8), 10, batch, repeats=5)
        assert 0 < seconds < 10 and math.isfinite(seconds)


def test_comparison_rows_and_config_diff_come_from_the_store(tmp_path):
    store = Store(tmp_path)
    ids = []
    for temperature in (2.0, 8.0):
        run_id = store.create_run(RunConfig(temperature=temperature).to_dict())
        summary = {"teacher_test_acc": 0.9, "student_test_acc": 0.8 + temperature / 100, "baseline_test_acc": 0.8,
                   "gap_closed": temperature / 10, "student_params": 1000, "teacher_params": 5000}
        store.finish(run_id, "done", summary=summary)
        ids.append(run_id)
    records = [store.get_run(r) for r in ids]
    rows = comparison_rows(records, latency={("mlp-small", "mnist-5k", 64): 0.001, ("cnn", "mnist-5k", 64): 0.004})
    assert [r["student_test_acc"] for r in rows] == pytest.approx([0.82, 0.88])
    assert rows[0]["student_size_mb"] == 0.004 and rows[0]["speedup_b64"] == pytest.approx(4.0)
    assert config_diff(records) == {"temperature": [2.0, 8.0]}
    assert flatten({"a": {"b": 1}, "c": 2}) == {"a.b": 1, "c": 2}
