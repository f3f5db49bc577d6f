"""The Tune page under AppTest, over a real finished study (the `tuned_study` fixture), its form starting a real
background driver, and the pure read model and charts behind it."""

from __future__ import annotations

import os
import time

import pytest
from streamlit.testing.v1 import AppTest

from app import charts as figures
from app.read_model.tune import parallel_dimensions, space_specs
from app_helpers import ENTRY, charts
from kdcore.config import RunConfig
from kdcore.runner import pid_alive
from kdcore.store import Store
from kdcore.tune.study import get_study, request_stop

TIMEOUT = 60


def open_page(**query: str) -> AppTest:
    at = AppTest.from_file(str(ENTRY), default_timeout=TIMEOUT)
    at.run()
    at.switch_page("screens/tune.py")
    at.query_params.update(query)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_the_page_shows_a_study_its_best_settings_and_the_verdict(tuned_study, monkeypatch) -> None:
    home, _, report = tuned_study
    monkeypatch.setenv("KDCORE_HOME", str(home))
    at = open_page(study=report["study_id"])
    drawn = charts(at)
    trials = report["trials"]
    progress = drawn["Validation accuracy by trial"]
    points = {n: y for trace in progress["data"] if trace["name"] != "best so far"
              for n, y in zip(trace["x"], trace["y"])}
    assert points == {t["number"]: pytest.approx(t["val_acc"]) for t in trials}
    best_line = next(t for t in progress["data"] if t["name"] == "best so far")
    assert best_line["y"][-1] == pytest.approx(report["best"]["val_acc"])
    temperature = drawn["val acc vs temperature"]
    assert sorted(x for trace in temperature["data"] for x in trace["x"]) == pytest.approx(
        sorted(t["params"]["temperature"] for t in trials))
    assert temperature["layout"]["xaxis"]["type"] == "log"  # searched on a log scale, drawn on one
    assert "val acc vs weights.kd" in drawn and "Complete trials, every setting at once" in drawn
    verdict, table = (frame.value for frame in at.dataframe)
    assert list(verdict["test acc"]) == pytest.approx([report["verdict"][k]["mean"] for k in ("tuned", "default",
                                                                                              "alone")])
    assert list(table["run_id"]) == [t["run_id"] for t in trials]
    assert any(f"{len(trials)} of {len(trials)} trials finished" in str(p.proto.text) for p in at.get("progress"))
    at.button(key="tu_open").click().run()  # the best settings' first confirmation run, in New run
    assert at.query_params.get("from") == report["confirm"]["best"][0]


def test_the_form_starts_a_study_that_a_background_driver_runs(tmp_path, monkeypatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("KDCORE_HOME", str(home))
    monkeypatch.setenv("KDCORE_MAX_RUNS", "1")
    store = Store(home)
    busy = store.create_run(RunConfig().replace(dataset="digits").to_dict(), status="running", pid=os.getpid())
    at = open_page()  # the slot is held by this test: trials stay queued, no worker trains
    assert any("No studies yet" in i.value for i in at.info)
    at.selectbox(key="tu_dataset").set_value("digits")
    at.checkbox(key="tu_t_log").uncheck()
    at.toggle(key="tu_kd_on").set_value(False)
    at.number_input(key="tu_trials").set_value(2)
    at.multiselect(key="tu_methods").set_value(["kd", "dkd"]).run()
    at.checkbox(key="tu_on_dkd.beta").check().run()
    at.number_input(key="tu_lo_dkd.beta").set_value(30.0)  # beyond dkd's beta range (≤ 20)
    at.number_input(key="tu_hi_dkd.beta").set_value(40.0)
    at.number_input(key="tu_rung_30").set_value(10).run()  # the pruner's first rung: epoch 10 of 30, not the default 3
    command = at.code[0].value
    assert "--space temperature=1,32 --space method=kd,dkd --space dkd.beta=30,40 --trials 2" in command
    assert command.endswith("--pruner sha --first-rung 10")
    at.button(key="tu_start").click().run()
    assert any("dkd.beta=30" in e.value for e in at.error), [e.value for e in at.error]
    assert store.list_sweeps() == []  # refused: nothing recorded
    at.number_input(key="tu_lo_dkd.beta").set_value(2.0)
    at.number_input(key="tu_hi_dkd.beta").set_value(10.0).run()
    at.button(key="tu_start").click().run()
    assert not at.exception and not at.error
    (sweep,) = store.list_sweeps()
    study_id = sweep["sweep_id"]
    assert at.query_params.get("study") == study_id
    assert sweep["space"] == ["temperature=1,32", "method=choice:kd,dkd", "dkd.beta=2,10"]
    assert sweep["base"]["dataset"] == "digits" and sweep["trials_wanted"] == 2
    assert sweep["pruner"]["min_resource"] == 10
    deadline = time.time() + TIMEOUT
    while len(store.list_runs(sweep_id=study_id)) < 2 and time.time() < deadline:
        time.sleep(0.2)  # the driver (a process of its own) asks Optuna and queues the first batch
    trials = store.list_runs(sweep_id=study_id)
    assert len(trials) == 2 and {r.status for r in trials} == {"queued"}
    spec = get_study(store, study_id)
    assert spec["status"] == "running" and pid_alive(spec["driver_pid"])
    for record in trials:
        params = spec["trials"][record.id]["params"]
        assert record.config["method"] == params["method"] and record.config["baseline"] is False
        assert (record.config["method_params"].get("beta") == params.get("dkd.beta")) or params["method"] == "kd"
    request_stop(store, study_id)  # the driver cancels its trials and ends
    while pid_alive(spec["driver_pid"]) and time.time() < deadline:
        time.sleep(0.2)
    assert get_study(store, study_id)["status"] == "stopped"
    assert {r.status for r in store.list_runs(sweep_id=study_id)} == {"cancelled"}
    store.finish(busy, "cancelled")


# --- the read model and charts --------------------------------------------------------------------------------


def test_the_form_spaces_and_parallel_coordinates_of_mixed_settings() -> None:
    assert space_specs({"temperature": (1, 32, True), "weights.kd": (0.1, 0.95, False)}, ["kd"], {}) == [
        "temperature=log:1,32", "weights.kd=0.1,0.95"]
    assert space_specs({}, ["kd", "dkd"], {"dkd.beta": (1.0, 8.0)}) == ["method=kd,dkd", "dkd.beta=1,8"]
    report = {"space": ["temperature=log:1,16", "method=choice:kd,dkd", "dkd.beta=1,8"], "trials": [
        {"state": "complete", "val_acc": 0.9, "params": {"temperature": 2.0, "method": "kd"}},
        {"state": "complete", "val_acc": 0.8, "params": {"temperature": 8.0, "method": "dkd", "dkd.beta": 4.0}},
        {"state": "pruned", "val_acc": 0.5, "params": {"temperature": 1.0, "method": "kd"}}]}
    dims, accuracy = parallel_dimensions(report)
    assert accuracy == [0.9, 0.8]  # complete trials only
    assert dims[0] == {"label": "temperature", "values": [2.0, 8.0], "log": True}
    assert dims[1] == {"label": "method", "values": [1, 0], "ticks": ["dkd", "kd"]}
    assert dims[2]["values"] == [4.0, 4.0]  # kd's trial has no beta: drawn at the axis' bottom
    fig = figures.tune_parallel_figure(dims, accuracy)
    columns = fig.data[0].dimensions
    assert [c.label for c in columns] == ["temperature (log)", "method", "dkd.beta", "val acc"]
    assert list(columns[0].values) == pytest.approx([0.30103, 0.90309], abs=1e-5)  # log10 of 2 and 8
