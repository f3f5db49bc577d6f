"""The Temperature lab, Compare and Sweeps pages under AppTest, over a store filled by real tiny runs:
a sweep (temperature × seed on digits) trained by a real worker, and a 2-D run trained in this process.

As in test_app.py, fragments run once (run_every never fires) and Plotly charts are read from their
JSON spec; the slider redrawing in a real browser is tests/test_browser_lab.py.
"""

from __future__ import annotations

import io
import json
import math
import os
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from app_helpers import (ENTRY, charts, finished_run, record_downloads, stop_active_runs,
                         wait_until_finished)
from app.read_model.compare import compare_series
from app.read_model.lab import pick_samples
from app.read_model.sweeps import (aggregate, axis_values, dotted_value, sweep_progress, sweep_rows,
                                   typical_run_s)
from kdcore.config import RunConfig
from kdcore.runner import Runner
from kdcore.store import Store
from kdcore.sweep import CONFIRM_ABOVE, expand, parse_grid, submit_sweep
from streamlit.testing.v1 import AppTest

TIMEOUT = 90  # the first lab render computes the teacher's logits; Compare measures latencies
BASE = {"dataset": "digits", "teacher": {"arch": "cnn-small", "epochs": 2}, "student": {"arch": "mlp-tiny"},
        "epochs": 2}
GRID = ["temperature=1,4", "seed=0,1"]


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A finished sweep of 4 runs (one teacher, trained by a worker) and a finished 2-D run without baseline."""
    home = tmp_path_factory.mktemp("sweep-store")
    store = Store(home)
    grid = parse_grid(GRID)
    sweep_id, run_ids = submit_sweep(Runner(store), BASE, grid, expand(BASE, grid), name="lab sweep")
    try:
        # trained here while the sweep's worker trains
        moons = finished_run(store, dataset="moons", epochs=1, baseline=False, name="moons",
                             **{"teacher.arch": "mlp", "teacher.epochs": 1, "student.arch": "mlp-tiny"})
        records = wait_until_finished(store, run_ids, timeout_s=300)
        assert [r.status for r in records] == ["done"] * 4, [(r.status, r.error) for r in records]
        yield SimpleNamespace(home=home, store=store, sweep_id=sweep_id, run_ids=run_ids, moons=moons)
    finally:
        stop_active_runs(home)
        store.close()


@pytest.fixture
def in_store(sweep_store: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    monkeypatch.setenv("KDCORE_HOME", str(sweep_store.home))
    return sweep_store


@pytest.fixture
def slot_taken(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """An empty store whose one training slot is held by a run of this (alive) test process, so what a
    page queues stays queued: no worker starts. Yields the store; cancels what was queued after."""
    home = tmp_path / "home"
    monkeypatch.setenv("KDCORE_HOME", str(home))
    monkeypatch.setenv("KDCORE_MAX_RUNS", "1")
    store = Store(home)
    busy = store.create_run(RunConfig().replace(dataset="digits").to_dict(), status="running", pid=os.getpid())
    try:
        yield store
    finally:
        for record in store.list_runs(status="queued"):
            store.finish(record.id, "cancelled", only_if=("queued",))
        store.finish(busy, "cancelled")
        store.close()


def open_page(page: str, **query: str) -> AppTest:
    at = AppTest.from_file(str(ENTRY), default_timeout=TIMEOUT)
    at.run()
    at.switch_page(f"screens/{page}.py")
    at.query_params.update(query)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at




def chart(at: AppTest, prefix: str) -> dict:
    found = [spec for title, spec in charts(at).items() if title.startswith(prefix)]
    assert found, f"no chart titled {prefix!r}: {list(charts(at))}"
    return found[0]


def traces(spec: dict, name: str | None = None, kind: str | None = None) -> list[dict]:
    return [t for t in spec["data"] if (name is None or t.get("name") == name) and (kind is None or t["type"] == kind)]


def text(data) -> str:
    return data.decode() if isinstance(data, bytes) else data


def softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Independent reference: float64 numpy, not kdcore.losses.soft_targets."""
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    return p / p.sum(axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def digits_teacher(sweep_store: SimpleNamespace) -> SimpleNamespace:
    """The sweep's teacher: its key and validation logits (computed here, independently of the app's cache)."""
    from kdcore.temperature import teacher_file, teacher_logits

    config = RunConfig.from_dict(sweep_store.store.get_run(sweep_store.run_ids[0]).config)
    data = teacher_logits(config, teacher_file(sweep_store.store.teacher_dir(), config))
    return SimpleNamespace(key=config.teacher_key(), logits=data.logits.numpy(), labels=data.labels.numpy())


# --- Temperature lab ---------------------------------------------------------------------------------------------


def soft_bars(spec: dict, temperature: float) -> list[list[float]]:
    return [t["y"] for t in traces(spec, f"teacher, T={temperature:g}")]


def test_lab_charts_follow_the_temperature(in_store, digits_teacher) -> None:
    at = open_page("lab", teacher=digits_teacher.key)
    assert at.selectbox(key="lab_teacher").value == digits_teacher.key
    assert at.slider(key="lab_temperature").value == 4.0
    before = charts(at)
    soft = chart(at, "Soft labels of 5 validation samples")
    assert len(traces(soft, kind="image")) == 5  # digits: each sample's image above its bars

    # the bars are the teacher's softened distribution of the first sample of each class
    first = pick_samples(digits_teacher.labels.tolist(), [0] * len(digits_teacher.labels),
                         [0.0] * len(digits_teacher.labels), "per_class", 5)
    for temperature in (4.0, 1.0):
        expected = softmax(digits_teacher.logits[first], temperature)
        np.testing.assert_allclose(soft_bars(soft, temperature), expected, rtol=1e-4, atol=1e-6)
    entropy = -(softmax(digits_teacher.logits, 4.0) * np.log(softmax(digits_teacher.logits, 4.0))).sum(1).mean()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Mean entropy at T = 4"] == f"{entropy:.3f} nats"

    at.slider(key="lab_temperature").set_value(10.0).run()
    assert not at.exception
    after = charts(at)
    soft = chart(at, "Soft labels of 5 validation samples")
    np.testing.assert_allclose(soft_bars(soft, 10.0), softmax(digits_teacher.logits[first], 10.0), rtol=1e-4, atol=1e-6)
    assert not soft_bars(soft, 4.0)
    # the curves are the same (cached per teacher); only the marker at T moved
    curves = [spec for title, spec in before.items() if title.startswith("The teacher's soft labels")][0]
    moved = [spec for title, spec in after.items() if title.startswith("The teacher's soft labels")][0]
    assert traces(curves, "entropy")[0]["y"] == traces(moved, "entropy")[0]["y"]
    assert [t["x"] for t in traces(curves, "T = 4")] == [[4.0], [4.0]]
    assert [t["x"] for t in traces(moved, "T = 10")] == [[10.0], [10.0]]
    entropy_curve = traces(moved, "entropy")[0]["y"]
    assert all(b > a for a, b in zip(entropy_curve, entropy_curve[1:]))
    similarity_before = before["Which wrong classes the teacher finds plausible · T = 4"]["data"][0]["z"]
    similarity_after = after["Which wrong classes the teacher finds plausible · T = 10"]["data"][0]["z"]
    assert similarity_before != similarity_after
    assert all(row[i] is None and abs(sum(row[:i] + row[i + 1:]) - 1) < 1e-5  # the diagonal is left blank
               for i, row in enumerate(similarity_after))
    assert any("T^2" in latex.value for latex in at.latex)  # the formulas are on the page


def test_lab_chooses_samples_and_shows_a_2d_teacher(in_store, digits_teacher) -> None:
    at = open_page("lab", teacher=digits_teacher.key)
    at.number_input(key="lab_count").set_value(3).run()
    at.segmented_control(key="lab_samples").set_value("uncertain").run()
    assert not at.exception
    assert len(traces(chart(at, "Soft labels of 3 validation samples"), kind="image")) == 3

    moons_key = RunConfig.from_dict(in_store.store.get_run(in_store.moons).config).teacher_key()
    at.selectbox(key="lab_teacher").set_value(moons_key).run()
    assert not at.exception
    assert at.query_params.get("teacher") == moons_key
    soft = chart(at, "Soft labels of")
    assert not traces(soft, kind="image") and traces(soft, "teacher, T=1")  # points: bars only
    assert len(chart(at, "Which wrong classes")["data"][0]["z"]) == 2


def test_lab_without_a_teacher_trains_the_default_one_in_a_worker(slot_taken) -> None:
    at = open_page("lab")
    assert any("No finished run in this store has trained a teacher" in i.value for i in at.info)
    at.button(key="lab_train_default").click().run()
    assert not at.exception
    queued = slot_taken.list_runs(status="queued")
    assert len(queued) == 1
    config = RunConfig.from_dict(queued[0].config)
    assert config.baseline is False and config.teacher_key() == RunConfig().teacher_key()
    assert any(queued[0].id in m.value and "Training a teacher" in m.value for m in at.markdown)


# --- Compare ------------------------------------------------------------------------------------------------------


def test_compare_table_shows_the_store_numbers_and_flags_other_datasets(in_store) -> None:
    ids = [*in_store.run_ids, in_store.moons]
    at = open_page("compare", runs=",".join(ids))
    assert at.multiselect(key="cmp_runs").value == ids
    assert any("different datasets (digits, moons)" in w.value for w in at.warning)

    accuracy, speed = at.dataframe[0].value, at.dataframe[1].value  # one frame, shown as two tables
    pd.testing.assert_frame_equal(accuracy, speed)
    table = accuracy.set_index("run_id")
    for run_id in ids:
        summary = in_store.store.get_run(run_id).summary
        row = table.loc[run_id]
        for column in ("teacher_test_acc", "student_test_acc", "best_epoch", "teacher_params", "student_params",
                       "compression", "wall_s"):
            assert row[column] == summary[column], column
        expected = [summary["baseline_test_acc"], summary["gap_closed"]]
        assert [None if pd.isna(v) else v for v in (row["baseline_test_acc"], row["gap_closed"])] == expected
        assert row["student_size_mb"] == summary["student_params"] * 4 / 1e6
        latencies = [row[f"{who}_latency_ms_b{batch}"] for who in ("student", "teacher") for batch in (1, 64)]
        assert all(math.isfinite(ms) and ms > 0 for ms in latencies), latencies
        assert row["speedup_b64"] == pytest.approx(row["teacher_latency_ms_b64"] / row["student_latency_ms_b64"])

    diff = at.dataframe[2].value
    assert {"temperature", "seed", "dataset", "teacher.arch", "baseline"} <= set(diff.columns)
    assert "optimizer" not in diff.columns and "name" not in diff.columns  # equal settings (and names) are left out
    assert list(diff["temperature"]) == ["1", "1", "4", "4", "4"]
    assert all(run_id in label for run_id, label in zip(ids, diff.index))


def test_compare_curves_overlay_the_runs_on_each_x_axis(in_store) -> None:
    at = open_page("compare", runs=",".join(in_store.run_ids))
    assert not at.warning  # one dataset
    # any series the runs recorded can be picked, labelled as the charts label them
    assert {"total loss", "CE", "KD (T²·KL)", "validation CE", "validation accuracy", "training accuracy"} <= \
        set(at.selectbox(key="cmp_part").options)
    loss = chart(at, "total loss · Student")
    lines = [t for t in loss["data"] if not t["name"].endswith("(raw)")]
    steps = [row for row in in_store.store.metrics_for([in_store.run_ids[0]], ["train_loss"]) if row[1] == "student"]
    assert len(lines) == 4 and len(lines[0]["x"]) == len(steps) == 40
    accuracy = chart(at, "Validation accuracy · Student")
    assert [t["x"] for t in accuracy["data"]][0] == [20, 40]  # 20 steps an epoch
    values = [row[5] for row in in_store.store.metrics_for([in_store.run_ids[0]], ["val_acc"]) if row[1] == "student"]
    assert accuracy["data"][0]["y"] == pytest.approx(values)

    at.segmented_control(key="cmp_x").set_value("epoch").run()
    assert chart(at, "Validation accuracy · Student")["data"][0]["x"] == [1, 2]
    assert max(chart(at, "total loss · Student")["data"][-1]["x"]) == pytest.approx(2.0)
    at.segmented_control(key="cmp_x").set_value("wall").run()
    wall = chart(at, "Validation accuracy · Student")["data"][0]["x"]
    assert 0 < wall[0] < wall[1]
    at.selectbox(key="cmp_stage").set_value("baseline").run()
    at.selectbox(key="cmp_part").set_value("val_loss").run()
    assert not at.exception
    assert len(chart(at, "validation CE · Baseline")["data"]) == 4  # per epoch: no smoothing, no raw lines


def test_compare_exports_table_and_metrics_as_csv(in_store, monkeypatch: pytest.MonkeyPatch) -> None:
    downloads = record_downloads(monkeypatch)
    at = open_page("compare", runs=",".join(in_store.run_ids[:2]))
    table = pd.read_csv(io.StringIO(text(downloads["comparison.csv"])))
    assert list(table["run_id"]) == in_store.run_ids[:2]
    assert list(table["student_test_acc"]) == pytest.approx(list(at.dataframe[0].value["student_test_acc"]))
    metrics = pd.read_csv(io.StringIO(text(downloads["metrics.csv"]())))  # deferred: built when clicked
    assert list(metrics.columns) == ["run_id", "stage", "epoch", "step", "name", "value", "t"]
    assert len(metrics) == len(in_store.store.metrics_for(in_store.run_ids[:2]))


def test_compare_with_nothing_or_unknown_runs_selected(in_store) -> None:
    at = open_page("compare")
    assert any("Choose runs above to compare" in i.value for i in at.info)
    assert not at.get("plotly_chart")
    at = open_page("compare", runs="run-deadbeef,nonsense")
    assert any("run-deadbeef, nonsense" in w.value for w in at.warning)
    assert any("Choose runs above" in i.value for i in at.info)


def test_runs_page_opens_the_selected_runs_in_compare(in_store) -> None:
    at = open_page("runs")
    at.multiselect(key="runs_compare").set_value(in_store.run_ids[:2]).run()
    at.button(key="runs_compare_go").click().run()
    assert not at.exception
    assert at.query_params.get("runs") == ",".join(in_store.run_ids[:2])
    assert at.title[0].value == "Compare runs"
    assert list(at.dataframe[0].value["run_id"]) == in_store.run_ids[:2]


# --- Sweeps -------------------------------------------------------------------------------------------------------


def test_sweep_page_shows_progress_heatmap_and_accuracy_against_temperature(in_store, monkeypatch) -> None:
    downloads = record_downloads(monkeypatch)
    at = open_page("sweeps", sweep=in_store.sweep_id)
    assert at.selectbox(key="sw_pick").value == in_store.sweep_id
    summaries = {r: in_store.store.get_run(r).summary for r in in_store.run_ids}
    configs = {r: in_store.store.get_run(r).config for r in in_store.run_ids}

    def mean_std(values: list[float]) -> tuple[float, float]:
        return float(np.mean(values)), float(np.std(values, ddof=1))

    by_temperature = {t: [summaries[r]["student_test_acc"] for r in in_store.run_ids if configs[r]["temperature"] == t]
                      for t in (1.0, 4.0)}
    heatmap = chart(at, "student test accuracy over temperature · mean over seed")
    assert heatmap["data"][0]["x"] == ["1", "4"]
    assert heatmap["data"][0]["z"][0] == pytest.approx([mean_std(by_temperature[t])[0] for t in (1.0, 4.0)])
    assert "±" in heatmap["data"][0]["customdata"][0][0] and "2 runs" in heatmap["data"][0]["customdata"][0][0]

    lines = chart(at, "student test accuracy vs temperature")
    student = traces(lines, "student")[0]
    assert student["x"] == [1.0, 4.0]
    assert student["error_y"]["array"] == pytest.approx([mean_std(by_temperature[t])[1] for t in (1.0, 4.0)])
    baseline = [t for t in lines["data"] if t["name"].startswith("baseline")]
    assert baseline[0]["y"][0] == pytest.approx(np.mean([s["baseline_test_acc"] for s in summaries.values()]))

    at.selectbox(key="sw_metric").set_value("student_minus_baseline").run()
    gains = {t: [summaries[r]["student_test_acc"] - summaries[r]["baseline_test_acc"] for r in in_store.run_ids
                 if configs[r]["temperature"] == t] for t in (1.0, 4.0)}
    z = chart(at, "student − baseline")["data"][0]["z"][0]
    assert z == pytest.approx([np.mean(gains[t]) for t in (1.0, 4.0)])

    results = at.dataframe[0].value
    assert set(results["run_id"]) == set(in_store.run_ids) and set(results["status"]) == {"done"}
    assert any("4 of 4 runs finished" in str(p.proto.text) for p in at.get("progress"))
    exported = pd.read_csv(io.StringIO(text(downloads[f"{in_store.sweep_id}.csv"])))
    assert list(exported["run_id"]) == list(results["run_id"])
    assert list(exported["student_test_acc"]) == pytest.approx(list(results["student_test_acc"]))

    at.button(key="sw_compare").click().run()
    assert at.query_params.get("runs") == ",".join(list(results["run_id"]))


def test_a_grid_with_an_invalid_value_is_refused_before_anything_is_queued(slot_taken) -> None:
    at = open_page("sweeps")
    assert any("No sweeps yet" in i.value for i in at.info)
    at.selectbox(key="sw_dataset").set_value("digits").run()
    at.text_input(key="sw_values_0").set_value("1, 0, 4").run()
    assert any("temperature=0" in e.value for e in at.error), [e.value for e in at.error]
    assert at.button(key="sw_queue").disabled
    at.text_input(key="sw_values_0").set_value("1, 4").run()
    at.selectbox(key="sw_key_2").set_value("student.arch").run()
    at.text_input(key="sw_values_2").set_value("mlp-tiny, mlp:0").run()
    assert any("mlp:0" in e.value for e in at.error), [e.value for e in at.error]
    assert at.button(key="sw_queue").disabled
    assert slot_taken.list_sweeps() == [] and len(slot_taken.list_runs()) == 1  # only the slot holder


def test_a_sweep_of_500_runs_asks_for_confirmation_with_the_estimated_time(slot_taken) -> None:
    at = open_page("sweeps")
    at.text_input(key="sw_values_0").set_value(", ".join(str(t) for t in range(1, 51))).run()
    at.text_input(key="sw_values_1").set_value(", ".join(str(s) for s in range(10))).run()
    assert any("500 runs" in w.value and "estimated" in w.value and f"more than {CONFIRM_ABOVE}" in w.value
               for w in at.warning)
    assert at.button(key="sw_queue").disabled
    at.checkbox(key="sw_confirm").check().run()
    assert not at.button(key="sw_queue").disabled
    assert slot_taken.list_sweeps() == []


def test_the_form_queues_one_sweep_that_shares_a_teacher(slot_taken) -> None:
    at = open_page("sweeps")
    at.selectbox(key="sw_dataset").set_value("digits").run()
    at.text_input(key="sw_values_0").set_value("2, 8").run()
    at.text_input(key="sw_values_1").set_value("0").run()
    assert any("**2 runs**, 1 teacher" in m.value for m in at.markdown)
    assert "--grid temperature=2,8" in at.code[0].value
    at.button(key="sw_queue").click().run()
    assert not at.exception
    sweeps = slot_taken.list_sweeps()
    assert len(sweeps) == 1 and sweeps[0]["grid"] == {"temperature": [2, 8], "seed": [0]}
    queued = slot_taken.list_runs(sweep_id=sweeps[0]["sweep_id"])
    assert {r.status for r in queued} == {"queued"} and len(queued) == 2
    assert len({RunConfig.from_dict(r.config).teacher_key() for r in queued}) == 1
    assert at.query_params.get("sweep") == sweeps[0]["sweep_id"]
    assert any("0 of 2 runs finished" in str(p.proto.text) for p in at.get("progress"))


# --- the pure helpers behind the pages (app.read_model) ----------------------------------------------------------------


def test_compare_series_on_each_axis() -> None:
    rows = [("run-a", "student", 1, s, "train_loss", 1.0 / s, 100.0 + s) for s in range(1, 5)]
    rows += [("run-a", "student", 2, s, "train_loss", 1.0 / s, 100.0 + s) for s in range(5, 9)]
    rows += [("run-a", "student", 1, 4, "val_acc", 0.5, 104.5), ("run-a", "student", 2, 8, "val_acc", 0.7, 108.5),
             ("run-a", "baseline", 1, 4, "val_acc", 0.4, 110.0)]
    assert compare_series(rows, "student", "val_acc")["run-a"] == ([4.0, 8.0], [0.5, 0.7])
    assert compare_series(rows, "student", "val_acc", x="epoch")["run-a"][0] == [1.0, 2.0]
    assert compare_series(rows, "student", "train_loss", x="epoch")["run-a"][0] == [s / 4 for s in range(1, 9)]
    # any series reported every step (a method's own term here) sits at fractional epochs, whatever its name
    tckd = [(*row[:4], "train_tckd", *row[5:]) for row in rows if row[4] == "train_loss"]
    assert compare_series(tckd, "student", "train_tckd", x="epoch")["run-a"][0] == [s / 4 for s in range(1, 9)]
    assert compare_series(rows, "student", "val_acc", x="wall", starts={"run-a": 100.0})["run-a"][0] == [4.5, 8.5]
    assert list(compare_series(rows, "baseline", "val_acc")) == ["run-a"]
    with pytest.raises(ValueError, match="x must be one of .*, got 'time'"):
        compare_series(rows, "student", "val_acc", x="time")


def test_sweep_rows_aggregate_over_seeds() -> None:
    def record(run_id, temperature, seed, student, baseline, status="done"):
        config = {"temperature": temperature, "seed": seed, "weights": {"kd": 0.5}}
        summary = {"student_test_acc": student, "baseline_test_acc": baseline} if status == "done" else None
        return SimpleNamespace(id=run_id, status=status, config=config, summary=summary)

    records = [record("r1", 4.0, 0, 0.8, 0.7), record("r2", 4.0, 1, 0.9, 0.7), record("r3", 1.0, 0, 0.6, 0.7),
               record("r4", 1.0, 1, None, None, status="running")]
    rows = sweep_rows(records, ["temperature", "seed", "weights.kd"])
    assert rows[0]["weights.kd"] == 0.5 and rows[0]["student_minus_baseline"] == pytest.approx(0.1)
    assert rows[3]["student_test_acc"] is None
    cells = aggregate(rows, ["temperature"], "student_test_acc")
    assert cells == [{"temperature": 4.0, "mean": pytest.approx(0.85), "std": pytest.approx(math.sqrt(0.005)), "n": 2},
                     {"temperature": 1.0, "mean": 0.6, "std": 0.0, "n": 1}]
    assert axis_values(rows, "temperature") == [1.0, 4.0]
    assert sweep_progress(records)["finished"] == 3 and sweep_progress(records)["running"] == 1
    assert dotted_value({"method_params": {"beta": 2}}, "method.beta") == 2
    assert dotted_value({"teacher": {"arch": "cnn"}}, "teacher.lr") is None


def test_typical_run_time_comes_from_finished_runs() -> None:
    def record(wall, epochs, sweep_id=None, started=0.0, ended=10.0, dataset="digits"):
        return SimpleNamespace(status="done", started=started, ended=ended, sweep_id=sweep_id,
                               config={"dataset": dataset, "epochs": epochs, "baseline": True},
                               summary={"wall_s": wall})

    config = {"dataset": "digits", "epochs": 10, "baseline": True}
    seconds, source = typical_run_s([record(20.0, 10), record(40.0, 20), record(99.0, 10, dataset="moons")], config)
    assert seconds == pytest.approx(20.0) and "2 recent digits" in source
    # runs of a sweep train together: each counts the sweep's span shared out over its runs
    sweep = [record(30.0, 10, "sweep-1", started=0.0, ended=30.0) for _ in range(3)]
    assert typical_run_s(sweep, config)[0] == pytest.approx(10.0)
    assert "rough guess" in typical_run_s([], config)[1]


def test_pick_samples() -> None:
    labels, predictions = [0, 1, 0, 2, 1], [0, 0, 0, 1, 1]
    confidences = [0.9, 0.8, 0.5, 0.95, 0.6]
    assert pick_samples(labels, predictions, confidences, "per_class", 5) == [0, 1, 3, 2, 4]  # round robin
    assert pick_samples(labels, predictions, confidences, "per_class", 2) == [0, 1]
    assert pick_samples(labels, predictions, confidences, "uncertain", 2) == [2, 4]
    assert pick_samples(labels, predictions, confidences, "wrong", 5) == [3, 1]
    draw = pick_samples(labels, predictions, confidences, "random", 3, seed=1)
    assert draw == pick_samples(labels, predictions, confidences, "random", 3, seed=1) and len(set(draw)) == 3


# --- seed-noise verdicts over a real sweep of 3 seeds (kept last: it adds runs to the module's store) -----------------


@pytest.fixture(scope="module")
def seed_sweep(sweep_store: SimpleNamespace) -> SimpleNamespace:
    """temperature 1 and 4 × seeds 0, 1, 2 on digits, 1 epoch: one stacked group trained in this process (as
    its worker would), with the first sweep's teacher (cached: only the six students and baselines train)."""
    from kdcore.worker import execute_group

    store, base = sweep_store.store, {**BASE, "epochs": 1}
    grid = parse_grid(["temperature=1,4", "seed=0,1,2"])
    runs = expand(base, grid)
    sweep_id = store.create_sweep({"name": "seeds", "base": base, "grid": grid, "size": len(runs)})
    run_ids = [store.create_run(config.to_dict(), name=f"seeds: {values}", status="running", pid=os.getpid(),
                                sweep_id=sweep_id) for values, config in runs]
    summaries = execute_group(store, run_ids, [config for _, config in runs])
    assert [s["status"] for s in summaries] == ["done"] * 6, summaries
    return SimpleNamespace(sweep_id=sweep_id, run_ids=run_ids, records=[store.get_run(r) for r in run_ids])


def paired_reference(distilled: list[float], reference: list[float]) -> tuple[float, float]:
    """(mean, half-width) of distilled − reference: scipy's t quantile over numpy's float64 statistics."""
    d = np.asarray(distilled, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    return d.mean(), stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))


def expected_verdict(mean: float, half: float) -> str:
    return "better" if mean - half > 0 else "worse" if mean + half < 0 else "within seed noise"


def open_screen(page: str, **query: str) -> AppTest:
    """One page alone, without the navigation's first page (New run, which imports torch): cheaper."""
    at = AppTest.from_file(str(ENTRY.parent / "screens" / f"{page}.py"), default_timeout=TIMEOUT)
    at.query_params.update(query)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def frame_with(at: AppTest, column: str) -> pd.DataFrame:
    found = [d.value for d in at.dataframe if column in d.value.columns]
    assert found, f"no table with a {column!r} column"
    return found[0]


def test_a_sweep_over_3_seeds_shows_a_verdict_per_cell(in_store, seed_sweep, capsys) -> None:
    at = open_screen("sweeps", sweep=seed_sweep.sweep_id)
    verdicts = frame_with(at, "verdict")
    assert list(verdicts["temperature"]) == [1.0, 4.0] and list(verdicts["seeds"]) == [3, 3]
    for row, temperature in zip(verdicts.to_dict("records"), (1.0, 4.0)):
        runs = [r for r in seed_sweep.records if r.config["temperature"] == temperature]
        mean, half = paired_reference([r.summary["student_test_acc"] for r in runs],
                                      [r.summary["baseline_test_acc"] for r in runs])
        assert row["verdict"].startswith(expected_verdict(mean, half)), (row["verdict"], mean, half)
        assert row["difference"] == f"{100 * mean:+.2f} ± {100 * half:.2f}".replace("-", "−")
        distilled = np.array([r.summary["student_test_acc"] for r in runs])
        spread = stats.t.ppf(0.975, 2) * distilled.std(ddof=1) / math.sqrt(3)
        assert row["distilled"] == f"{100 * distilled.mean():.2f} ± {100 * spread:.2f}"
    # the summary JSON of one of its runs carries the same paired difference
    from kdcore.cli import main

    first = seed_sweep.run_ids[0]
    assert main(["status", first, "--json"]) == 0
    seeds = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["seeds"]
    runs = [r for r in seed_sweep.records if r.config["temperature"] == 1.0]
    mean, half = paired_reference([r.summary["student_test_acc"] for r in runs],
                                  [r.summary["baseline_test_acc"] for r in runs])
    assert seeds["n"] == 3 and seeds["seeds"] == [0, 1, 2] and set(seeds["run_ids"]) == {r.id for r in runs}
    assert seeds["diff_ci95"] == pytest.approx([mean - half, mean + half], abs=1e-12)
    assert seeds["verdict"] == expected_verdict(mean, half)


def test_live_run_and_compare_judge_over_the_seeds_in_the_store(in_store, seed_sweep) -> None:
    at = open_screen("live", run=seed_sweep.run_ids[1])
    over = [m.value for m in at.markdown if "Over 3 seeds" in m.value]
    assert over and "seeds 0, 1, 2" in over[0], [m.value for m in at.markdown]
    assert at.number_input(key=f"live_more_{seed_sweep.run_ids[1]}_seeds").value == 5  # 3 there: offer 2 more

    cold, warm = seed_sweep.run_ids[0], seed_sweep.run_ids[3]  # T = 1 and T = 4, seed 0 each
    at = open_screen("compare", runs=f"{cold},{warm}")
    table = frame_with(at, "versus_first")
    assert list(table["config"]) == ["temperature=1", "temperature=4"] and list(table["seeds"]) == [3, 3]
    by_seed = {t: {r.config["seed"]: r.summary["student_test_acc"] for r in seed_sweep.records
                   if r.config["temperature"] == t} for t in (1.0, 4.0)}
    mean, half = paired_reference([by_seed[4.0][s] for s in range(3)], [by_seed[1.0][s] for s in range(3)])
    assert table["versus_first"][1].startswith(expected_verdict(mean, half)), (table["versus_first"][1], mean, half)
    at.number_input(key="cmp_more_seeds").set_value(3).run()
    at.button(key="cmp_more_repeat").click().run()  # both configs have 3 seeds: nothing is queued
    assert any("Nothing to queue: each config picked already has 3 seeds" in s.value for s in at.success)
    assert not in_store.store.list_runs(status=["queued", "starting", "running"])


def _fake_done(store: Store, seed: int, sweep_id: str | None = None, temperature: float = 4.0) -> str:
    config = RunConfig.from_dict({**BASE, "epochs": 1, "seed": seed, "temperature": temperature}).to_dict()
    run_id = store.create_run(config, status="running", sweep_id=sweep_id, name=f"T{temperature:g} seed {seed}")
    store.finish(run_id, "done", summary={"student_test_acc": 0.9, "baseline_test_acc": 0.88, "teacher_test_acc": 0.95,
                                          "teacher_params": 100, "student_params": 10, "compression": 10.0,
                                          "wall_s": 1.0})
    return run_id


def test_repeat_with_more_seeds_queues_the_missing_ones_from_each_page(slot_taken) -> None:
    alone = _fake_done(slot_taken, 0)
    at = open_screen("live", run=alone)
    assert any("One seed: no verdict" in m.value for m in at.markdown)
    at.button(key=f"live_more_{alone}_repeat").click().run()
    queued = slot_taken.list_runs(status="queued")
    assert sorted(r.config["seed"] for r in queued) == [1, 2]
    assert any("Queued 2 runs" in s.value for s in at.success)

    sweep_id = slot_taken.create_sweep({"name": "grid", "base": {}, "grid": {"temperature": [1, 4]}, "size": 2})
    for temperature in (1.0, 4.0):
        _fake_done(slot_taken, 0, sweep_id=sweep_id, temperature=temperature)
    at = open_screen("sweeps", sweep=sweep_id)
    assert any("One seed per cell" in i.value for i in at.info)
    at.number_input(key="sw_more_seeds").set_value(2).run()
    at.button(key="sw_more_repeat").click().run()
    added = [r for r in slot_taken.list_runs(sweep_id=sweep_id) if r.status == "queued"]
    assert sorted((r.config["temperature"], r.config["seed"]) for r in added) == [(1.0, 1), (4.0, 1)]

