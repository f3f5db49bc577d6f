"""Every page of the app under Streamlit's AppTest, over a real run store.

AppTest runs the scripts in this process: fragments run once (run_every never fires) and Plotly
charts are read from their JSON spec. Live updating is tested in a real browser (test_browser.py).
"""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import pytest
from PIL import Image

from app import form
from app_helpers import ENTRY, charts, failed_run, finished_run, wait_until_finished
from kdcore.config import RunConfig, config_data
from kdcore.store import ACTIVE, Store
from streamlit.testing.v1 import AppTest

TIMEOUT = 60  # the first render imports torch for the parameter counts


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A store with a finished image run, a finished 2-D run with fine-tuning, and a failed run."""
    home = tmp_path_factory.mktemp("lab")
    store = Store(home)
    digits = finished_run(store, dataset="digits", epochs=2, name="digits demo",
                          **{"teacher.arch": "cnn-small", "teacher.epochs": 1})
    moons = finished_run(store, dataset="moons", epochs=2, finetune_epochs=1,
                         **{"teacher.arch": "mlp", "teacher.epochs": 1, "student.arch": "mlp-tiny"})
    failed = failed_run(store, "dataset mnist: no files under ./data/mnist (download them first)",
                        ["device cpu; dataset mnist; teacher cnn → student mlp-small",
                         "failed: dataset mnist: no files under ./data/mnist (download them first)"], dataset="mnist")
    yield SimpleNamespace(home=home, store=store, digits=digits, moons=moons, failed=failed)
    store.close()


@pytest.fixture
def in_lab(lab: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    monkeypatch.setenv("KDCORE_HOME", str(lab.home))
    return lab


def open_app(page: str | None = None, state: dict | None = None, **query: str) -> AppTest:
    """The app from its entry point, switched to `screens/<page>.py`, with these query parameters
    and this session state when the page first renders."""
    at = AppTest.from_file(str(ENTRY), default_timeout=TIMEOUT)
    at.query_params.update(query)
    at.run()
    if page is not None:
        at.switch_page(f"screens/{page}.py")
        at.query_params.update(query)
        for key, value in (state or {}).items():
            at.session_state[key] = value
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at




def trace_names(spec: dict) -> list[str]:
    return [trace.get("name") for trace in spec["data"]]


# --- navigation and the New run page ---------------------------------------------------------------------------


def test_entry_point_opens_the_new_run_form(in_lab) -> None:
    at = open_app()
    assert at.title[0].value == "New run"
    start = at.button(key="nr_start")
    assert not start.disabled
    assert r"0.5\cdot 4^2" in at.latex[0].value  # the teaching preset's loss, with its numbers
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Teacher"] != "—" and metrics["Student"] != "—" and metrics["Compression"].endswith("×")
    assert at.number_input(key="nr_epochs").value == RunConfig().epochs


def test_a_bad_temperature_disables_start_with_a_message(in_lab) -> None:
    at = open_app()
    at.number_input(key="nr_temperature").set_value(0.0).run()
    assert any("temperature must be > 0" in e.value for e in at.error)
    assert at.button(key="nr_start").disabled
    at.number_input(key="nr_temperature").set_value(2.0).run()
    assert not at.error
    assert not at.button(key="nr_start").disabled
    assert r"2^2" in at.latex[0].value


def test_an_architecture_that_does_not_fit_the_data_is_refused(in_lab) -> None:
    at = open_app()
    at.selectbox(key="nr_dataset").set_value("moons").run()
    assert any("cnn needs image input" in e.value for e in at.error)
    assert at.button(key="nr_start").disabled
    at.selectbox(key="nr_teacher_arch").set_value("mlp").run()
    assert not at.error and not at.button(key="nr_start").disabled


def test_a_labelled_fraction_that_leaves_a_class_without_labels_is_refused_before_queueing(in_lab, tmp_path) -> None:
    for label, count in {"cat": 40, "dog": 3}.items():  # the training split keeps 30 cats and 2 dogs
        (tmp_path / label).mkdir()
        for i in range(count):
            Image.new("L", (32, 32), 7 * i).save(tmp_path / label / f"{i}.png")
    dataset = f"imagefolder:{tmp_path}"
    at = AppTest.from_file(str(ENTRY), default_timeout=TIMEOUT)  # New run, with the form's values already set
    at.session_state["nr_dataset"], at.session_state["nr_labeled_fraction"] = dataset, 0.3
    at.run()
    assert not at.error and not at.button(key="nr_start").disabled  # 0.3 · 2 dogs rounds to one label
    at.number_input(key="nr_labeled_fraction").set_value(0.1).run()
    assert [e.value for e in at.error] == [
        f"labeled_fraction 0.1 leaves 1 class of {dataset} without a labelled example: 'dog' (2 training examples); "
        "every class needs at least one: raise labeled_fraction above 0.25 (Labelled fraction, under Advanced settings.)"]
    assert at.button(key="nr_start").disabled


def test_processes_on_the_form_must_divide_the_batches(in_lab) -> None:
    at = open_app()
    at.number_input(key="nr_devices").set_value(3).run()
    assert any("must be divisible by devices=3" in e.value for e in at.error)
    assert at.button(key="nr_start").disabled
    at.number_input(key="nr_devices").set_value(2).run()
    assert not at.error and not at.button(key="nr_start").disabled


def test_advanced_weights_and_the_formula(in_lab) -> None:
    at = open_app()
    at.radio(key="nr_weights_mode").set_value("advanced").run()
    at.number_input(key="nr_w_feature").set_value(0.25).run()
    assert "MSE" in at.latex[0].value
    at.number_input(key="nr_w_ce").set_value(-1.0).run()
    assert any("weights.ce must be >= 0" in e.value for e in at.error)
    assert at.button(key="nr_start").disabled


def test_the_tracking_expander_sets_the_trackers_the_engine_validates(in_lab, tmp_path) -> None:
    at = open_app()
    at.text_input(key="nr_mlflow").set_value("s3://bucket").run()
    assert any("tracking.mlflow: unknown scheme 's3'" in e.value for e in at.error)
    assert at.button(key="nr_start").disabled
    at.text_input(key="nr_mlflow").set_value(f"sqlite:///{tmp_path}/mlflow.db")
    at.text_input(key="nr_tensorboard").set_value(str(tmp_path / "tb")).run()
    assert not at.error and not at.button(key="nr_start").disabled
    config, errors = form.validate({name: at.session_state[f"nr_{name}"] for name in form.defaults()})
    assert errors == [] and (config.tracking.mlflow, config.tracking.tensorboard) == (
        f"sqlite:///{tmp_path}/mlflow.db", str(tmp_path / "tb"))
    assert form.from_config(config.to_dict())["tensorboard"] == str(tmp_path / "tb")  # `?from=` keeps them


def test_reusing_a_teacher_from_the_store_copies_its_settings(in_lab) -> None:
    at = open_app()
    at.radio(key="nr_teacher_source").set_value("store").run()
    picker = at.selectbox(key="nr_teacher_key")
    moons_teacher = in_lab.store.get_run(in_lab.moons).summary["teacher_key"]
    assert picker.value == moons_teacher  # the newest trained teacher
    assert at.selectbox(key="nr_dataset").value == "moons"
    assert at.selectbox(key="nr_teacher_arch").value == "mlp"
    assert not at.button(key="nr_start").disabled


def test_new_run_from_a_stored_config_fills_the_form(in_lab) -> None:
    at = open_app(**{"from": in_lab.moons})
    assert at.selectbox(key="nr_dataset").value == "moons"
    assert at.selectbox(key="nr_student_arch").value == "mlp-tiny"
    assert at.number_input(key="nr_finetune_epochs").value == 1
    assert not at.button(key="nr_start").disabled


def test_an_uploaded_checkpoint_is_saved_safely_and_becomes_the_teacher(in_lab) -> None:
    key = in_lab.store.get_run(in_lab.digits).summary["teacher_key"]
    data = (in_lab.store.teacher_dir() / f"{key}.pt").read_bytes()
    at = open_app()
    at.selectbox(key="nr_dataset").set_value("digits").run()
    at.radio(key="nr_teacher_source").set_value("upload").run()
    assert at.button(key="nr_start").disabled  # nothing uploaded yet
    at.file_uploader(key="nr_upload").set_value(("../../my teacher.pt", data, "application/octet-stream")).run()
    saved = sorted((in_lab.home / "uploads").iterdir())
    assert [p.name.split("-", 1)[1] for p in saved] == ["my_teacher.pt"]  # no path, no spaces, inside uploads/
    assert at.selectbox(key="nr_teacher_arch").value == "cnn-small"  # read from the checkpoint
    assert not at.error and not at.button(key="nr_start").disabled

    at.file_uploader(key="nr_upload").set_value(("junk.pt", b"not a checkpoint", "application/octet-stream")).run()
    assert any("cannot be read" in e.value for e in at.error)
    assert at.button(key="nr_start").disabled


@pytest.mark.slow
def test_start_launches_a_real_run(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("KDCORE_HOME", str(home))
    at = open_app()
    at.selectbox(key="nr_dataset").set_value("digits").run()
    at.number_input(key="nr_teacher_epochs").set_value(1).run()
    at.number_input(key="nr_epochs").set_value(1).run()
    at.toggle(key="nr_baseline").set_value(False).run()
    at.button(key="nr_start").click().run()
    store = Store(home)
    try:
        runs = store.list_runs()
        assert len(runs) == 1
        run = runs[0]
        assert run.status in (*ACTIVE, "done")
        assert run.config["dataset"] == "digits" and run.config["epochs"] == 1 and run.config["baseline"] is False
        assert at.query_params.get("run") == run.id  # the app went on to the run's live page
        assert not at.exception
        record = wait_until_finished(store, [run.id], timeout_s=180)[0]
        assert record.status == "done", record.error
    finally:
        store.close()


# --- the Live run page --------------------------------------------------------------------------------------------


def test_live_page_draws_a_finished_image_run(in_lab) -> None:
    at = open_app("live", run=in_lab.digits)
    assert at.title[0].value == "digits demo"
    specs = charts(at)
    loss = specs["Training loss · Student"]
    names = trace_names(loss)
    assert {"total", "CE", "KD (T²·KL)", "validation CE"} <= set(names)
    steps = len(in_lab.store.metrics_for([in_lab.digits], ["train_loss"]))
    total_points = sum(len(t["x"]) for t in loss["data"] if t.get("name") == "total")
    assert 0 < total_points <= steps
    accuracy = specs["Validation accuracy per epoch"]
    assert {"student", "baseline"} <= set(trace_names(accuracy))
    assert any(name.startswith("teacher") for name in trace_names(accuracy))
    student = next(t for t in accuracy["data"] if t["name"] == "student")
    assert student["x"] == [1, 2]
    agreement = specs["Teacher–student agreement"]
    assert trace_names(agreement).count("student") == 2  # agreement and KL
    soft = specs["Soft labels of fixed validation samples"]
    assert sum(t["type"] == "image" for t in soft["data"]) == 10
    assert {"teacher, T=1", "teacher, T=4"} <= set(trace_names(soft))
    assert any((n or "").startswith("student, T=4, epoch 2") for n in trace_names(soft))
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Student test acc"].endswith("%") and metrics["Baseline test acc"].endswith("%")


def test_live_page_scrubs_soft_labels_by_epoch(in_lab) -> None:
    at = open_app("live", run=in_lab.digits)
    scrubber = at.select_slider[0]
    assert scrubber.value == 2 and list(scrubber.options)[-2:] == ["1", "2"]  # (and 0: the untrained student)
    scrubber.set_value(1).run()
    soft = charts(at)["Soft labels of fixed validation samples"]
    assert any((n or "").startswith("student, T=4, epoch 1") for n in trace_names(soft))


def test_live_page_draws_decision_regions_for_2d_data(in_lab) -> None:
    at = open_app("live", run=in_lab.moons)
    specs = charts(at)
    regions = specs["Decision regions"]
    assert sum(t["type"] == "heatmap" for t in regions["data"]) == 2  # teacher and student side by side
    soft = specs["Soft labels of fixed validation samples"]
    assert not any(t["type"] == "image" for t in soft["data"])
    accuracy = specs["Validation accuracy per epoch"]
    finetune = next(t for t in accuracy["data"] if t["name"] == "fine-tune")
    assert finetune["x"] == [3]  # fine-tuning continues after the student's 2 epochs


def test_live_page_explains_a_failed_run(in_lab) -> None:
    at = open_app("live", run=in_lab.failed)
    assert any("This run failed" in e.value and "no files under ./data/mnist" in e.value for e in at.error)
    assert any("failed: dataset mnist" in c.value for c in at.code)
    assert at.button(key=f"resume_{in_lab.failed}")


def test_live_page_charts_every_recorded_term_and_a_learned_temperature(tmp_path, monkeypatch) -> None:
    """Rows written straight into a store (nothing trains): a CTKD run that recorded its learned temperature,
    stopped before its summary, with a cached teacher (no teacher epochs) and some worker output."""
    from kdcore.methods import series_terms

    home = tmp_path / "home"
    monkeypatch.setenv("KDCORE_HOME", str(home))
    store = Store(home)
    run_id = store.create_run(RunConfig().replace(dataset="digits", method="ctkd").to_dict(), status="running",
                              pid=os.getpid())
    rows = [("student", 1, step, name, value, time.time()) for step in range(1, 6) for name, value in
            (("train_loss", 2.0 / step), ("train_ce", 1.0 / step), ("train_kd", 1.0 / step),
             ("train_feature", 0.0), ("train_temperature", 4.0 + step / 10), ("train_mystery", 0.5))]
    rows.append(("student", 1, 5, "val_acc", 0.5, time.time()))
    store.add_records(run_id, metrics=rows, stage_results=[("soft_labels", "teacher_val_acc", 0.9, time.time())],
                      logs=[(time.time(), "soft_labels: finished (teacher_val_acc 0.9000)")])
    store.worker_log_path(run_id).write_text("Traceback (most recent call last):\nRuntimeError: out of memory\n")
    store.finish(run_id, "failed", error="internal error: RuntimeError: out of memory")
    try:
        at = open_app("live", run=run_id)
        specs = charts(at)
        temperature = series_terms("ctkd")["train_temperature"].label
        loss = trace_names(specs["Training loss · Student"])
        assert {"total", "CE", "KD (T²·KL)", "train_mystery"} <= set(loss)  # every term, named or not
        assert temperature not in loss and "feature (MSE)" not in loss  # a value is no loss; a 0 term is left out
        (values_title,) = [title for title in specs if title.lower().startswith(temperature.lower())]
        raw = next(t for t in specs[values_title]["data"] if t["name"] == f"{temperature} (raw)")  # beside the smoothed
        assert trace_names(specs[values_title]) == [f"{temperature} (raw)", temperature]
        assert raw["y"] == pytest.approx([4.1, 4.2, 4.3, 4.4, 4.5])
        # the teacher's reference line: recorded when the soft-label stage ended, not parsed from the log
        assert "teacher (90.0%)" in trace_names(specs["Validation accuracy per epoch"])
        assert any("RuntimeError: out of memory" in c.value for c in at.code)  # the worker's output, from the store
    finally:
        store.close()


def test_live_page_of_an_unknown_run_says_so(in_lab) -> None:
    at = open_app("live", run="run-deadbeef")
    assert any("no run **run-deadbeef**" in w.value for w in at.warning)


def test_live_page_of_a_queued_run_can_cancel_it(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("KDCORE_HOME", str(home))
    monkeypatch.setenv("KDCORE_MAX_RUNS", "1")
    store = Store(home)
    config = RunConfig().replace(dataset="digits").to_dict()
    # The one slot is held by a "running" run whose worker is this (alive) test process, so the
    # page's scheduler leaves the queued run alone.
    busy = store.create_run(config, status="running", pid=os.getpid())
    queued = store.create_run(config)
    try:
        at = open_app("live", run=queued)
        assert any("Queued: waiting for a free training slot" in i.value for i in at.info)
        at.button(key=f"cancel_{queued}").click().run()
        assert store.get_run(queued).status == "cancelled"
        assert store.get_run(busy).status == "running"
    finally:
        store.finish(busy, "cancelled")
        store.close()


def test_live_page_without_runs_points_to_the_form(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDCORE_HOME", str(tmp_path / "empty"))
    at = open_app("live")
    assert any("No runs yet" in i.value for i in at.info)


# --- the Runs page ---------------------------------------------------------------------------------------------------


def test_runs_page_lists_and_filters_runs(in_lab) -> None:
    at = open_app("runs")
    table = at.dataframe[0].value
    assert set(table["run"]) >= {in_lab.digits, in_lab.moons, in_lab.failed}
    row = table.set_index("run").loc[in_lab.digits]
    assert row["models"] == "cnn-small → mlp-small" and row["T"] == 4 and row["weights"] == "ce 0.5 · kd 0.5"
    assert row["student_acc"] > 0 and row["wall"] != "—"
    at.multiselect(key="runs_status").set_value(["failed"]).run()
    assert list(at.dataframe[0].value["run"]) == [in_lab.failed]
    at.multiselect(key="runs_status").set_value([]).run()
    at.text_input(key="runs_search").set_value("mlp-tiny").run()
    assert list(at.dataframe[0].value["run"]) == [in_lab.moons]


def runs_page_with(run_id: str) -> AppTest:
    """The Runs page with `run_id` selected (as a click on its row would leave it)."""
    return open_app("runs", state={"_kdlab_runs_selected": run_id})


def test_runs_page_opens_and_copies_a_run(in_lab) -> None:
    at = runs_page_with(in_lab.moons)
    assert any(in_lab.moons in m.value for m in at.markdown)
    at.button(key="runs_copy").click().run()
    assert at.query_params.get("from") == in_lab.moons
    assert at.selectbox(key="nr_dataset").value == "moons"

    at = runs_page_with(in_lab.digits)
    at.button(key="runs_open").click().run()
    assert at.query_params.get("run") == in_lab.digits
    assert at.title[0].value == "digits demo"


def test_runs_page_deletes_a_run(in_lab) -> None:
    doomed = failed_run(in_lab.store, "stopped", ["bye"])
    at = runs_page_with(doomed)
    assert at.button(key="runs_cancel").disabled  # not active
    at.button(key="runs_delete").click().run()
    assert doomed not in {r.id for r in in_lab.store.list_runs()}
    assert not at.exception


def test_live_and_runs_pages_only_read_the_store(in_lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """What keeps these pages quick to redraw: they draw the store's records, and never load a dataset,
    build a model or train (the New run page, opened first, builds models for its parameter counts)."""
    at = open_app()
    calls = []
    for target in ("kdcore.data.load_dataset", "kdcore.data.splits.load_dataset", "kdcore.models.build_model",
                   "kdcore.trainer.run_pipeline", "kdcore.worker.execute"):
        monkeypatch.setattr(target, lambda *args, _target=target, **kwargs: calls.append(_target))
    at.switch_page("screens/live.py")
    at.query_params["run"] = in_lab.digits
    at.run()
    assert not at.exception and at.title[0].value == "digits demo"
    at.switch_page("screens/runs.py")
    at.run()
    assert not at.exception and in_lab.digits in set(at.dataframe[0].value["run"])
    assert calls == []


def test_cli_sets_rebuild_the_config_that_the_cli_parses():
    config = {"dataset": "digits", "baseline": True, "weights": {"kd": 0.9}, "teacher": {"epochs": 2}}
    args = form.cli_sets(config)
    assert args == ["--set", "dataset=digits", "--set", "baseline=true", "--set", "weights.kd=0.9",
                    "--set", "teacher.epochs=2"]
    rebuilt = RunConfig.from_dict(config_data(None, args[1::2]))  # what `--set` gives the CLI
    assert rebuilt.baseline is True and rebuilt.weights.kd == 0.9 and rebuilt.teacher.epochs == 2
