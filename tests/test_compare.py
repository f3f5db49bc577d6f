"""Tests for kdcore.compare: the comparison table and config diff from real run records, and latency."""

from __future__ import annotations

import math

import pytest

from kdcore.compare import comparison_rows, config_diff, datasets_differ, measure_latency
from kdcore.config import RunConfig
from kdcore.errors import ModelError
from kdcore.store import Store


@pytest.fixture
def records(tmp_path):
    """Two finished runs that differ in temperature only, and one queued run on another dataset."""
    store = Store(tmp_path)
    ids = []
    for temperature in (2.0, 8.0):
        run_id = store.create_run(RunConfig(temperature=temperature).to_dict(), name=f"T={temperature}")
        summary = {"teacher_test_acc": 0.9, "student_test_acc": 0.8 + temperature / 100, "baseline_test_acc": 0.8,
                   "gap_closed": temperature / 10, "student_params": 1000, "teacher_params": 5000, "best_epoch": 3}
        store.finish(run_id, "done", summary=summary)
        ids.append(run_id)
    ids.append(store.create_run(RunConfig(dataset="digits").to_dict()))
    yield [store.get_run(r) for r in ids]
    store.close()


def test_comparison_rows_carry_each_runs_final_numbers(records):
    rows = comparison_rows(records)
    assert [r["run_id"] for r in rows] == [r.id for r in records]
    assert [r["student_test_acc"] for r in rows[:2]] == pytest.approx([0.82, 0.88])
    assert [r["temperature"] for r in rows] == [2.0, 8.0, 4.0]
    first = rows[0]
    assert (first["name"], first["status"], first["dataset"], first["teacher"], first["student"]) == (
        "T=2.0", "done", "mnist-5k", "cnn", "mlp-small")
    assert first["best_epoch"] == 3 and first["student_size_mb"] == 1000 * 4 / 1e6  # float32 parameters
    assert "speedup_b64" not in first  # no latency asked for
    queued = rows[2]
    assert queued["status"] == "queued" and queued["student_test_acc"] is None and queued["student_size_mb"] is None


def test_latency_columns_and_speedup(records):
    latency = {("mlp-small", "mnist-5k", 1): 0.0002, ("mlp-small", "mnist-5k", 64): 0.001,
               ("cnn", "mnist-5k", 1): 0.0005, ("cnn", "mnist-5k", 64): 0.004}
    rows = comparison_rows(records, latency=latency)
    assert rows[0]["student_latency_ms_b1"] == pytest.approx(0.2) and rows[0]["teacher_latency_ms_b64"] == pytest.approx(4)
    assert rows[0]["speedup_b64"] == pytest.approx(4.0)
    assert rows[2]["student_latency_ms_b64"] is None and rows[2]["speedup_b64"] is None  # digits was not measured


def test_config_diff_keeps_only_what_differs(records):
    assert config_diff(records[:2]) == {"temperature": [2.0, 8.0]}
    diff = config_diff(records)
    assert diff["temperature"] == [2.0, 8.0, 4.0] and diff["dataset"] == ["mnist-5k", "mnist-5k", "digits"]
    assert "name" not in diff and "epochs" not in diff
    assert config_diff(records[:1]) == {} and config_diff([]) == {}


def test_datasets_differ(records):
    assert not datasets_differ(records[:2]) and datasets_differ(records)


def test_measure_latency_times_the_named_architecture():
    for batch in (1, 64):
        seconds = measure_latency("mlp-tiny", (1, 8, 8), 10, batch, repeats=3)
        assert seconds > 0 and math.isfinite(seconds)
    with pytest.raises(ModelError, match="cnn-small needs image input"):
        measure_latency("cnn-small", (2,), 10, 1, repeats=1)
