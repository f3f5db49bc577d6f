"""Presets in the app: the published recipe's numbers as reference lines on the Live run accuracy chart and as a row
of the Methods table, for runs of its teacher → student pair only (the pages read recorded runs; nothing trains);
Load preset on the New run form; a recipe teacher reused from the store."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

from app import charts as figures
from app import form
from app.read_model.method_table import method_table, method_table_columns, method_table_csv_rows
from app.read_model.runs import stored_teachers
from app.read_model.trace import RunTrace
from app_helpers import ENTRY, charts
from kdcore.config import build_config
from kdcore.presets import RECIPE
from kdcore.store import Store
from streamlit.testing.v1 import AppTest

SCREENS = Path(__file__).resolve().parents[1] / "app" / "screens"
PUBLISHED = {"teacher": 0.7942, "student alone": 0.7250, "KD": 0.7333, "CRD": 0.7551, "DKD": 0.7632}


def recipe_run(store: Store, method: str = "kd", seed: int = 0, student_acc: float = 0.70) -> str:
    """A finished run of the recipe's pair, shortened to 2 epochs, recorded as a worker would record it."""
    config = build_config(preset=RECIPE.name, overrides=["epochs=2", f"method={method}", f"seed={seed}"]).to_dict()
    run_id = store.create_run(config, status="running")
    now = time.time()
    store.add_records(run_id, metrics=[("student", epoch, 10 * epoch, "val_acc", acc, now)
                                       for epoch, acc in ((1, 0.55), (2, student_acc))])
    store.finish(run_id, "done", summary={"student_test_acc": student_acc, "baseline_test_acc": 0.66,
                                          "teacher_test_acc": 0.78, "teacher_key": "t0", "wall_s": 1.0})
    return run_id


def test_the_accuracy_chart_draws_the_published_numbers_as_a_band_and_lines():
    trace = RunTrace("run-00000001")
    trace.add_metrics([(1, "student", 1, 10, "val_acc", 0.31, 0.0), (2, "student", 2, 20, "val_acc", 0.42, 0.0)])
    config = {"epochs": 2}
    fig = figures.accuracy_figure(trace, config, 0.5, RECIPE.reference.lines())
    lines = {round(shape.y0, 4) for shape in fig.layout.shapes if shape.type == "line"}
    assert lines == set(PUBLISHED.values())
    (band,) = [shape for shape in fig.layout.shapes if shape.type == "rect"]
    assert (band.y0, band.y1) == (0.7250, 0.7942)  # published student alone → published teacher
    texts = {a.text for a in fig.layout.annotations}
    assert {f"published {label} {100 * acc:.2f}%" for label, acc in PUBLISHED.items()} == texts
    assert fig.layout.yaxis.range[1] >= 0.7942 > 0.42, "the axis reaches the published teacher"
    plain = figures.accuracy_figure(trace, config, 0.5)
    assert not plain.layout.shapes and plain.layout.yaxis.range[1] < 0.7


def test_the_method_table_carries_the_papers_row_for_the_recipes_pair(kd_home):
    store = Store()
    for method, seed, acc in (("kd", 0, 0.70), ("kd", 1, 0.72), ("dkd", 0, 0.74)):
        recipe_run(store, method, seed, acc)
    (row,) = method_table(store.list_runs(status="done"))
    assert row["published"]["preset"] == RECIPE.name
    columns = {c["column"]: c for c in method_table_columns(row)}
    assert list(columns) == ["teacher", "student alone", "kd", "dkd", "crd"]  # crd: published, not run here
    assert {name: c["published"] for name, c in columns.items()} == {
        "teacher": 0.7942, "student alone": 0.7250, "kd": 0.7333, "dkd": 0.7632, "crd": 0.7551}
    assert columns["crd"]["acc"] is None and columns["crd"]["runs"] == 0
    csv = {line["column"]: line["published_test_acc"] for line in method_table_csv_rows([row])}
    assert csv["dkd"] == 0.7632
    store.close()


def test_pages_show_the_published_numbers_for_the_recipes_pair_only(kd_home):
    store = Store()
    run_id = recipe_run(store)
    other = store.create_run(build_config(None, ["epochs=2"]).to_dict(), status="running")
    store.add_records(other, metrics=[("student", 1, 10, "val_acc", 0.8, time.time())])
    store.finish(other, "done", summary={"student_test_acc": 0.9, "baseline_test_acc": 0.85, "teacher_test_acc": 0.97})
    store.close()

    at = AppTest.from_file(str(SCREENS / "live.py"), default_timeout=30)
    at.query_params["run"] = run_id
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    spec = charts(at)["Validation accuracy per epoch"]
    assert {round(shape["y0"], 4) for shape in spec["layout"]["shapes"] if shape["type"] == "line"} == set(
        PUBLISHED.values())
    assert any("published test accuracies" in c.value and "ICLR 2020" in c.value for c in at.caption)
    at.selectbox(key="live_run_picker").set_value(other).run()
    assert not charts(at)["Validation accuracy per epoch"]["layout"].get("shapes")
    assert not any("published" in c.value for c in at.caption)

    at = AppTest.from_file(str(SCREENS / "methods.py"), default_timeout=30)
    at.run()
    at.selectbox(key="mt_pair").set_value("cifar100|resnet32x4|resnet8x4").run()
    table = at.table[0].value
    assert list(table.loc["published test accuracy (%)"]) == ["79.42", "72.50", "73.33", "75.51", "76.32"]
    assert list(table.columns) == ["Teacher", "Student alone", "kd", "crd", "dkd"]  # crd, dkd: published only
    assert any("Tian, Krishnan & Isola" in c.value and "CVPR 2022" in c.value for c in at.caption)
    at.selectbox(key="mt_pair").set_value("mnist-5k|cnn|mlp-small").run()
    assert "published test accuracy (%)" not in at.table[0].value.index


def test_load_preset_fills_the_new_run_form_and_the_run_keeps_what_the_form_does_not_show(kd_home, monkeypatch):
    store = Store()
    monkeypatch.setenv("KDCORE_MAX_RUNS", "1")
    store.create_run(build_config().to_dict(), status="running", pid=os.getpid())  # the slot is taken: Start queues
    at = AppTest.from_file(str(ENTRY), default_timeout=60)
    at.run()
    at.selectbox(key="nr_preset_choice").set_value(RECIPE.name).run()
    at.button(key="nr_load_preset").click().run()
    assert not at.exception, [e.value for e in at.exception]
    shown = {key: at.session_state[f"nr_{key}"] for key in (
        "dataset", "teacher_arch", "student_arch", "epochs", "teacher_epochs", "lr", "optimizer", "weight_decay",
        "schedule", "lr_milestones", "momentum", "nesterov", "batch_size", "augment")}
    assert shown == {"dataset": "cifar100", "teacher_arch": "resnet32x4", "student_arch": "resnet8x4", "epochs": 240,
                     "teacher_epochs": 240, "lr": 0.05, "optimizer": "sgd", "weight_decay": 0.0005, "schedule": "step",
                     "lr_milestones": "150,180,210", "momentum": 0.9, "nesterov": False, "batch_size": 64,
                     "augment": True}
    at.text_input(key="nr_lr_milestones").set_value("100,150").run()
    at.button(key="nr_start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    (queued,) = store.list_runs(status="queued")
    expected = build_config(preset=RECIPE.name, overrides=["lr_milestones=100,150", f"name={RECIPE.name}"]).to_dict()
    assert queued.config == expected
    store.close()


def test_reusing_a_recipe_teacher_from_the_store_keeps_its_key():
    """The store's teacher brings the optimizer and schedule its key depends on, so the engine finds it cached."""
    stored = build_config(preset=RECIPE.name, overrides=["epochs=2", "teacher.epochs=2", "lr_milestones=1"])
    record = SimpleNamespace(id="run-00000001", status="done", config=stored.to_dict(),
                             summary={"teacher_key": stored.teacher_key()})
    (teacher,) = stored_teachers([record])
    config, errors = form.validate({**form.defaults(), "teacher_source": "store"}, store_teacher=teacher,
                                   devices=["cpu"])
    assert errors == [] and config.teacher_key() == stored.teacher_key()
    assert (config.schedule, config.lr_milestones, config.nesterov) == ("step", [1], False)
