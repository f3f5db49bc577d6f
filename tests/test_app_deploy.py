"""The Deploy page: its read model and chart without Streamlit, and the page under AppTest over a real run
store with a real report (digits, int8), a computation in progress, a failed one, and none yet."""

from __future__ import annotations

import itertools
import json
import os
import random
import time

import pytest

from app import charts
from app.read_model.deploy import TABLE_COLUMNS, headline, pareto_front, tradeoff_points, variant_rows
from app_helpers import ENTRY, charts as page_charts, finished_run, record_downloads
from kdcore.compress.options import CompressOptions, job_name, log_name, progress_name, report_name
from kdcore.store import Store
from streamlit.testing.v1 import AppTest

TIMEOUT = 90


def variant(name: str, label: str, acc: float, size: int, latency: float, *, role: str = "student",
            precision: str = "fp32") -> dict:
    torch_ms = latency * 2 if precision == "fp32" else None
    return {"variant": label, "name": name, "role": role, "precision": precision, "pruning": "", "test_acc": acc,
            "torch_test_acc": acc if precision == "fp32" else None, "ort_test_acc": acc, "params": size // 4,
            "nonzero_params": size // 4, "weight_sparsity": 0.0, "bytes": size, "pt_bytes": size,
            "compressed_bytes": size, "torch_p50_ms": torch_ms, "torch_p95_ms": torch_ms and torch_ms * 1.5,
            "torch_throughput": 1000.0 if torch_ms else None, "ort_p50_ms": latency, "ort_p95_ms": latency * 1.5,
            "ort_throughput": 5000.0, "agreement": 1.0 if name == "student" else 0.995, "artifacts": [f"{name}.onnx"]}


REPORT = {"run_id": "run-00000000", "test_size": 360, "dataset": "digits", "wall_s": 12.0, "machine": {},
          "artifacts": ["teacher.onnx", "student.onnx", "student-int8.onnx", "student-p50s-r2.onnx"],
          "variants": [variant("teacher", "teacher", 0.98, 400_000, 0.10, role="teacher"),
                       variant("student", "student", 0.95, 200_000, 0.02),
                       variant("student-int8", "student int8", 0.948, 52_000, 0.025, precision="int8"),
                       variant("student-p50s-r2", "pruned 50% structured + KD recovery", 0.952, 100_000, 0.015)]}


# --- the read model and the chart -------------------------------------------------------------------------------------


def dominated(point, others) -> bool:
    return any(o[0] <= point[0] and o[1] >= point[1] and o != point for o in others)


def test_pareto_front_against_brute_force():
    rng = random.Random(0)
    for _ in range(200):
        points = [(rng.choice([1, 2, 3, 4, 5]), rng.choice([0.5, 0.6, 0.7, 0.8])) for _ in range(rng.randint(1, 8))]
        front = pareto_front(points)
        expected = {i for i, p in enumerate(points) if not dominated(p, points)}
        # of exact duplicates on the frontier, one stands for all
        assert {points[i] for i in front} == {points[i] for i in expected}
        assert len(front) == len({points[i] for i in front})
        assert [points[i][0] for i in front] == sorted(points[i][0] for i in front)


def test_table_rows_in_the_tables_units():
    rows = variant_rows(REPORT)
    assert [list(row) for row in rows] == [list(TABLE_COLUMNS)] * 4
    assert rows[2]["Agrees with fp32 (%)"] == pytest.approx(99.5)
    teacher, student, int8, pruned = rows
    assert student["Test acc (%)"] == pytest.approx(95.0) and student["Δ vs fp32 (pts)"] == 0
    assert int8["Δ vs fp32 (pts)"] == pytest.approx(-0.2) and int8["× smaller"] == pytest.approx(200_000 / 52_000)
    assert teacher["Δ vs fp32 (pts)"] == 0 and teacher["× smaller"] == 1  # the teacher is compared with itself
    pruned_teacher = variant("teacher-p50s", "teacher pruned 50% structured", 0.97, 100_000, 0.05, role="teacher")
    (row,) = variant_rows({**REPORT, "variants": [REPORT["variants"][0], pruned_teacher]})[1:]
    assert row["Δ vs fp32 (pts)"] == pytest.approx(-1.0) and row["× smaller"] == 4  # against the unpruned teacher
    assert int8["PyTorch p50 (ms)"] is None and int8["ONNX size (KB)"] == pytest.approx(52_000 / 1024)


def test_tradeoff_points_mark_both_frontiers():
    points = {p["label"]: p for p in tradeoff_points(REPORT)}
    on_size = {label for label, p in points.items() if p["pareto_size"]}
    on_latency = {label for label, p in points.items() if p["pareto_latency"]}
    assert on_size == {"teacher", "student int8", "pruned 50% structured + KD recovery"}  # student: pruned is smaller
    assert on_latency == {"teacher", "pruned 50% structured + KD recovery"}
    lines = headline(REPORT)
    assert len(lines) == 2 and lines[0].startswith("**student int8**: 3.8× smaller file, -0.20 points")
    qat = variant("student-int8-qat2", "student int8 QAT", 0.951, 52_000, 0.025, precision="int8")
    with_qat = {**REPORT, "variants": [*REPORT["variants"], qat], "quantization": [
        {"source": "student", "ptq_name": "student-int8", "qat_name": "student-int8-qat2", "qat_epochs": 2,
         "fp32_test_acc": 0.95, "ptq_test_acc": 0.948, "qat_test_acc": 0.951}]}
    assert headline(with_qat)[-1] == ("**QAT against PTQ** for the student: int8 after 2 epochs of quantisation-aware "
                                      "fine-tuning 95.10%, post-training int8 94.80% (+0.30 points; fp32 95.00%), both "
                                      "measured running in ONNX Runtime.")


def test_the_tradeoff_figure_has_two_panels_and_their_frontiers():
    figure = charts.deploy_tradeoff_figure(tradeoff_points(REPORT)).to_plotly_json()
    assert figure["layout"]["title"]["text"] == charts.TRADEOFF_TITLE
    assert figure["layout"]["xaxis"]["type"] == figure["layout"]["xaxis2"]["type"] == "log"
    markers = [t for t in figure["data"] if t["mode"] == "markers+text"]
    assert len(markers) == 8 and {t["xaxis"] for t in markers} == {"x", "x2"}
    frontiers = [t for t in figure["data"] if t["name"] == "Pareto frontier"]
    assert len(frontiers) == 2
    size_front = next(t for t in frontiers if t["xaxis"] == "x")
    assert list(size_front["x"]) == [52_000 / 1024, 100_000 / 1024, 100_000 / 1024, 400_000 / 1024, 400_000 / 1024]
    assert list(size_front["y"]) == pytest.approx([94.8, 94.8, 95.2, 95.2, 98.0])  # a staircase up to the teacher


# --- the page ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A store with a finished digits run and its real int8 report (the options the page asks for below)."""
    from kdcore.compress.report import compress_run

    home = tmp_path_factory.mktemp("deploy")
    store = Store(home)
    run_id = finished_run(store, dataset="digits", epochs=2, baseline=False, **{"teacher.epochs": 1,
                                                                                  "teacher.arch": "cnn-small"})
    compress_run(store, run_id, INT8_ONLY)
    yield store, run_id
    store.close()


INT8_ONLY = CompressOptions(quantize="int8")
INT8_STATE = {"dp_prune": False, "dp_int8": True}


def open_deploy(home, state: dict | None = None, **query: str) -> AppTest:
    os.environ["KDCORE_HOME"] = str(home)  # the autouse fixture's monkeypatch restores it after the test
    at = AppTest.from_file(str(ENTRY), default_timeout=TIMEOUT)
    at.run()
    at.switch_page("screens/deploy.py")
    at.query_params.update(query)
    for key, value in (state or {}).items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_without_finished_runs_the_page_says_where_to_start(kd_home):
    at = open_deploy(kd_home)
    assert at.title[0].value == "Deploy"
    assert "No finished run yet" in at.info[0].value


def test_the_page_shows_the_report_table_chart_and_downloads(lab, monkeypatch):
    store, run_id = lab
    downloads = record_downloads(monkeypatch)
    at = open_deploy(store.home, INT8_STATE, run=run_id)
    assert at.selectbox(key="dp_run").value == run_id
    table = at.dataframe[0].value
    assert list(table.columns) == list(TABLE_COLUMNS)
    assert list(table["Variant"]) == ["teacher", "student", "student int8"]
    assert table["× smaller"].iloc[2] > 1.5
    spec = page_charts(at)[charts.TRADEOFF_TITLE]
    assert {trace["name"] for trace in spec["data"]} >= {"teacher", "student", "student int8"}
    report = json.loads(store.read_artifact(run_id, report_name(INT8_ONLY)))
    labels = [button.proto.label for button in at.get("download_button")]
    names = [label.split(" (")[0] for label in labels]
    assert sorted(names) == sorted([*report["artifacts"], report_name(INT8_ONLY)])
    served = downloads["student-int8.onnx"]
    data = served() if callable(served) else served
    assert data == store.read_artifact(run_id, "student-int8.onnx") and len(data) > 1000
    assert at.button(key="dp_compute").label == "Recompute"
    assert any("smaller file" in m.value for m in at.markdown)


def test_without_a_report_the_page_offers_to_compute_it(lab, monkeypatch):
    from kdcore.compress import jobs

    store, run_id = lab
    started = []
    monkeypatch.setattr(jobs, "start", lambda store, run_id, options: started.append((run_id, options)) or 1)
    at = open_deploy(store.home, {"dp_fraction": 0.3, "dp_kind": "unstructured", "dp_recover": 1}, run=run_id)
    assert "No report for these options yet" in at.info[0].value
    assert not at.dataframe
    at.button(key="dp_compute").click().run()
    assert started == [(run_id, CompressOptions(prune=0.3, structured=False, recover_epochs=1, quantize="int8"))]
    at.radio(key="dp_model").set_value("both")
    at.radio(key="dp_recover_from").set_value("unpruned")
    at.number_input(key="dp_steps").set_value(2)
    at.number_input(key="dp_qat").set_value(3).run()
    at.button(key="dp_compute").click().run()
    assert started[-1] == (run_id, CompressOptions(prune=0.3, structured=False, recover_epochs=1, quantize="int8",
                                                   prune_model="both", recover_from="unpruned", prune_steps=2,
                                                   qat_epochs=3))
    at.toggle(key="dp_int8").set_value(False).run()
    assert at.number_input(key="dp_qat").disabled


def test_a_computation_in_progress_shows_its_step(lab):
    store, run_id = lab
    options = CompressOptions(prune=0.7, structured=True, recover_epochs=2, quantize="int8")
    now = time.time()
    store.write_artifact(run_id, job_name(options), json.dumps({"pid": os.getpid(), "started": now}).encode())
    store.write_artifact(run_id, progress_name(options), json.dumps(
        {"step": 3, "total": 10, "message": "KD recovery: epoch 1/2, val acc 80.00%", "t": now + 1}).encode())
    at = open_deploy(store.home, {"dp_fraction": 0.7}, run=run_id)
    bars = at.get("progress")
    assert len(bars) == 1 and "step 3 of 10: KD recovery: epoch 1/2" in bars[0].proto.text
    assert not at.button  # no second computation while one runs
    store.write_artifact(run_id, job_name(options), json.dumps({"pid": 2 ** 22 + 4321, "started": now}).encode())
    store.write_artifact(run_id, log_name(options), b"kdcore: error: the teacher checkpoint is gone\n")
    at = open_deploy(store.home, {"dp_fraction": 0.7}, run=run_id)
    assert "the teacher checkpoint is gone" in at.error[0].value
    assert at.button(key="dp_compute").label == "Compute the report"


def test_every_option_combination_names_its_own_report():
    keys = set()
    for prune, structured, recover, int8 in itertools.product([None, 0.5], [True, False], [0, 2], [True, False]):
        if prune is None and (recover or not structured):
            continue
        options = CompressOptions(prune=prune, structured=structured, recover_epochs=recover,
                                  quantize="int8" if int8 else None)
        keys.add(report_name(options))
    assert len(keys) == 10
