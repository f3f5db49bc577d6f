"""Distillation methods in the app: the method picker of the New run page, the Methods page and the
shaping behind its table (`app.read_model.method_table`), and the form's method values and formula."""

from __future__ import annotations

import io
import math
import statistics
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from app_helpers import ENTRY, charts, finished_run, record_downloads, wait_until_finished
from app import form
from app.read_model.method_table import (MeanStd, format_mean_std, mean_std, method_table, method_table_columns,
                                         method_table_csv_rows)
from kdcore.config import RunConfig
from kdcore.methods import METHODS, series_terms
from kdcore.store import Store
from streamlit.testing.v1 import AppTest

TIMEOUT = 60  # the first render imports torch for the parameter counts
METHODS_PAGE = Path(ENTRY).parent / "screens" / "methods.py"
PAIR = {"dataset": "digits", "epochs": 1, "teacher.arch": "cnn-small", "teacher.epochs": 1, "student.arch": "mlp-tiny"}


def open_new_run() -> AppTest:
    at = AppTest.from_file(str(ENTRY), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def open_methods_page() -> AppTest:
    """The Methods page on its own (it needs nothing from the navigation)."""
    at = AppTest.from_file(str(METHODS_PAGE), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.fixture(scope="module")
def table_store(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """kd and dkd × seeds 0 and 1 on digits, cnn-small → mlp-tiny: one run trained for real (kd, seed 0,
    with the student alone), three recorded with plausible summaries, and a failed run that must not count."""
    home = tmp_path_factory.mktemp("methods")
    store = Store(home)
    real = finished_run(store, **PAIR)
    reference = store.get_run(real).summary
    written = {("kd", 1): 0.41, ("dkd", 0): 0.30, ("dkd", 1): 0.36}
    for (method, seed), student_acc in written.items():
        config = RunConfig().replace(**PAIR, seed=seed, method=method, baseline=False).to_dict()
        run_id = store.create_run(config, status="running")
        store.finish(run_id, "done", summary={**reference, "student_test_acc": student_acc, "baseline_test_acc": None})
    failed = store.create_run(RunConfig().replace(**PAIR, method="dkd", seed=2).to_dict(), status="running")
    store.finish(failed, "failed", error="stopped")
    yield SimpleNamespace(home=home, store=store)
    store.close()


# --- the New run page ------------------------------------------------------------------------------------------


def test_attention_transfer_on_an_mlp_student_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDCORE_HOME", str(tmp_path / "home"))
    at = open_new_run()
    assert at.selectbox(key="nr_method").value == "kd"
    at.selectbox(key="nr_method").set_value("at").run()
    assert any("at needs convolutional feature maps; student.arch mlp-small has none" in e.value for e in at.error)
    assert at.button(key="nr_start").disabled
    assert any("Zagoruyko" in c.value for c in at.caption)  # the paper, under the explanation
    assert at.number_input(key="nr_mp_at_weight").value == 1000.0
    assert r"\mathrm{AT}" in at.latex[0].value and "1000" in at.latex[0].value
    at.selectbox(key="nr_student_arch").set_value("cnn-small").run()
    assert not at.error and not at.button(key="nr_start").disabled


def test_fitnets_without_a_feature_weight_says_where_to_set_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDCORE_HOME", str(tmp_path / "home"))
    at = open_new_run()
    at.selectbox(key="nr_method").set_value("fitnets").run()
    assert any("needs weights.feature > 0" in e.value and "Feature weight" in e.value for e in at.error)
    assert at.button(key="nr_start").disabled
    at.radio(key="nr_weights_mode").set_value("advanced").run()
    at.number_input(key="nr_w_feature").set_value(1.0).run()
    assert not at.error and not at.button(key="nr_start").disabled
    assert "MSE" in at.latex[0].value


def test_dkd_shows_its_paper_defaults_and_a_changed_beta_reaches_the_run(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("KDCORE_HOME", str(home))
    at = open_new_run()
    at.selectbox(key="nr_method").set_value("dkd").run()
    values = {name: at.number_input(key=f"nr_mp_dkd_{name}").value for name in ("alpha", "beta", "warmup_epochs")}
    assert values == {"alpha": 1.0, "beta": 8.0, "warmup_epochs": 20}
    assert isinstance(values["warmup_epochs"], int)  # a count is an integer input
    assert r"8\,\mathrm{NCKD}" in at.latex[0].value and "KL" not in at.latex[0].value  # DKD replaces the KD term
    at.number_input(key="nr_mp_dkd_beta").set_value(4.0).run()
    assert r"4\,\mathrm{NCKD}" in at.latex[0].value

    # another method and back: the parameters start again from the paper's defaults
    at.selectbox(key="nr_method").set_value("at").run()
    at.selectbox(key="nr_method").set_value("dkd").run()
    assert at.number_input(key="nr_mp_dkd_beta").value == 8.0
    at.number_input(key="nr_mp_dkd_beta").set_value(4.0).run()

    at.selectbox(key="nr_dataset").set_value("digits").run()
    at.number_input(key="nr_teacher_epochs").set_value(1).run()
    at.number_input(key="nr_epochs").set_value(1).run()
    at.toggle(key="nr_baseline").set_value(False).run()
    assert not at.error
    at.button(key="nr_start").click().run()
    store = Store(home)
    try:
        (run,) = store.list_runs()
        assert run.config["method"] == "dkd" and run.config["method_params"] == {"beta": 4.0}
        assert at.query_params.get("run") == run.id
        record = wait_until_finished(store, [run.id], timeout_s=120)[0]
        assert record.status == "done", record.error
        at.run()  # the Live run page of the finished run: every term DKD returns, labelled by its module
        loss = {t["name"] for t in charts(at)["Training loss · Student"]["data"]}
        terms = series_terms("dkd")
        assert {"total", terms["train_tckd"].label, terms["train_nckd"].label} <= loss
    finally:
        store.close()


def test_new_run_from_a_method_run_restores_the_method_and_its_params(table_store, monkeypatch) -> None:
    monkeypatch.setenv("KDCORE_HOME", str(table_store.home))
    config = RunConfig().replace(**PAIR, method="dkd", **{"method.beta": 4, "method.warmup_epochs": 0}).to_dict()
    source = table_store.store.create_run(config, status="running")
    table_store.store.finish(source, "cancelled")  # not done: stays out of the method table
    at = AppTest.from_file(str(ENTRY), default_timeout=TIMEOUT)
    at.query_params["from"] = source
    at.run()
    assert at.selectbox(key="nr_method").value == "dkd"
    assert at.number_input(key="nr_mp_dkd_beta").value == 4.0
    assert at.number_input(key="nr_mp_dkd_warmup_epochs").value == 0
    assert at.number_input(key="nr_mp_dkd_alpha").value == 1.0
    assert not at.error and not at.button(key="nr_start").disabled
    assert r"\min" not in at.latex[0].value  # no warm-up ramp


# --- the Methods page ------------------------------------------------------------------------------------------


def test_methods_page_shows_mean_and_std_from_the_store(table_store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDCORE_HOME", str(table_store.home))
    downloads = record_downloads(monkeypatch)
    at = open_methods_page()
    done = table_store.store.list_runs(status="done")
    by_method: dict[str, list[float]] = {}
    for record in done:
        by_method.setdefault(record.config["method"], []).append(record.summary["student_test_acc"])
    assert {m: len(v) for m, v in by_method.items()} == {"kd": 2, "dkd": 2}
    table = at.table[0].value
    assert list(table.columns)[:2] == ["Teacher", "Student alone"]
    assert list(table.columns)[2:] == ["kd", "dkd"]  # the registry's order
    for method, accs in by_method.items():
        expected = f"{100 * statistics.mean(accs):.2f} ± {100 * statistics.stdev(accs):.2f}"
        assert table.loc["test accuracy (%)", method] == expected
        assert table.loc["runs", method] == "2"
    teacher = done[0].summary["teacher_test_acc"]
    baseline = next(r.summary["baseline_test_acc"] for r in done if r.summary["baseline_test_acc"] is not None)
    assert table.loc["test accuracy (%)", "Teacher"] == f"{100 * teacher:.2f}"  # one teacher: no spread
    assert table.loc["runs", "Student alone"] == "1"
    dkd_delta = statistics.mean(by_method["dkd"]) - baseline
    assert table.loc["Δ vs. student alone", "dkd"] == f"{100 * dkd_delta:+.2f}".replace("-", "−")
    # kd has the student alone on seed 0 only: one pair, so no verdict (tests/test_verdict.py has verdicts)
    assert table.loc["vs. student alone, over seeds", "kd"].startswith("one seed: no verdict")
    assert table.loc["vs. student alone, over seeds", "Teacher"] == ""
    label = at.selectbox(key="mt_pair")
    assert label.value == "digits|cnn-small|mlp-tiny"

    data = downloads["method_table.csv"]
    csv = pd.read_csv(io.BytesIO(data if isinstance(data, bytes) else data.encode()))
    dkd = csv.set_index("column").loc["dkd"]
    assert math.isclose(dkd["test_acc_mean"], statistics.mean(by_method["dkd"]), rel_tol=1e-9)
    assert math.isclose(dkd["test_acc_std"], statistics.stdev(by_method["dkd"]), rel_tol=1e-9)
    assert dkd["runs"] == 2


def test_methods_page_without_runs_explains_how_to_fill_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KDCORE_HOME", str(tmp_path / "empty"))
    at = open_methods_page()
    assert any("python bench/methods.py" in i.value and "New run" in i.value for i in at.info)
    assert not at.table


# --- the table's shaping (app.read_model.method_table) -------------------------------------------------------------


def _record(run_id: str, method: str, student: float, *, seed: int = 0, baseline: float | None = None,
            teacher: float = 0.92, teacher_key: str = "t0", status: str = "done", epochs: int = 30,
            pair: tuple[str, str, str] = ("digits", "cnn", "mlp-small")) -> SimpleNamespace:
    dataset, teacher_arch, student_arch = pair
    config = {"dataset": dataset, "teacher": {"arch": teacher_arch, "seed": 0}, "student": {"arch": student_arch},
              "epochs": epochs, "seed": seed, "method": method, "method_params": {}}
    summary = {"student_test_acc": student, "baseline_test_acc": baseline, "teacher_test_acc": teacher,
               "teacher_key": teacher_key}
    return SimpleNamespace(id=run_id, status=status, config=config, summary=summary if status == "done" else None)


def test_method_table_by_hand() -> None:
    records = [
        _record("r1", "kd", 0.80, seed=0, baseline=0.70),
        _record("r2", "kd", 0.84, seed=1, baseline=0.74),
        _record("r3", "dkd", 0.85, seed=0),
        _record("r4", "dkd", 0.87, seed=1),
        _record("r5", "dkd", 0.89, seed=2),
        _record("r6", "dkd", 0.10, seed=3, status="failed"),  # not finished: left out
        _record("r7", "multi_teacher", 0.88, teacher=0.99, teacher_key="t0"),  # reports its ensemble, not the teacher
        _record("r8", "kd", 0.60, pair=("moons", "mlp", "mlp-tiny"), teacher=0.9, teacher_key="t9"),
    ]
    first, second = method_table(records)
    assert (first["dataset"], first["teacher"], first["student"], first["runs"]) == ("digits", "cnn", "mlp-small", 6)
    assert (second["dataset"], second["runs"]) == ("moons", 1)
    assert first["teacher_acc"] == MeanStd(0.92, 0.0, 1)  # one teacher, however many runs used it
    assert first["baseline_acc"].mean == pytest.approx(0.72)
    assert first["baseline_acc"].std == pytest.approx(math.sqrt(0.0008))  # ((−0.02)² + 0.02²) / (2 − 1)
    assert list(first["methods"]) == ["kd", "dkd", "multi_teacher"]
    kd, dkd = first["methods"]["kd"], first["methods"]["dkd"]
    assert kd["acc"].mean == pytest.approx(0.82) and kd["acc"].std == pytest.approx(math.sqrt(0.0008))
    assert dkd["acc"].mean == pytest.approx(0.87) and dkd["acc"].std == pytest.approx(0.02)  # sqrt((4+0+4)e-4 / 2)
    assert dkd["acc"].n == 3 and dkd["run_ids"] == ["r3", "r4", "r5"]
    assert kd["gap_closed"] == pytest.approx(0.5)  # (0.82 − 0.72) / (0.92 − 0.72)
    assert dkd["gap_closed"] == pytest.approx(0.75) and dkd["delta"] == pytest.approx(0.15)
    assert first["differs"] == {}  # seeds and methods are what a table varies
    assert second["baseline_acc"] is None and second["methods"]["kd"]["gap_closed"] is None


def test_method_table_keeps_runs_of_a_method_no_module_describes() -> None:
    # an older store may hold runs of a method that is gone: they get a column, and their teacher counts
    (row,) = method_table([_record("r1", "kd", 0.80, baseline=0.70), _record("r2", "retired", 0.85, teacher_key="t1",
                                                                              teacher=0.96, seed=1)])
    assert list(row["methods"]) == ["kd", "retired"]
    assert row["teacher_acc"].n == 2 and row["teacher_acc"].mean == pytest.approx(0.94)


def test_method_table_names_settings_that_make_cells_unlike() -> None:
    (row,) = method_table([_record("r1", "kd", 0.8, epochs=30), _record("r2", "kd", 0.7, epochs=1, seed=1)])
    assert row["differs"] == {"epochs": [1, 30]}


def test_method_table_columns_and_csv() -> None:
    (row,) = method_table([_record("r1", "kd", 0.80, baseline=0.70), _record("r2", "dist", 0.90, seed=1)])
    columns = method_table_columns(row)
    assert [c["column"] for c in columns] == ["teacher", "student alone", "kd", "dist"]
    assert [c["runs"] for c in columns] == [1, 1, 1, 1]
    lines = method_table_csv_rows([row])
    dist = next(line for line in lines if line["column"] == "dist")
    assert dist["test_acc_mean"] == 0.90 and dist["test_acc_std"] == 0.0
    assert dist["gap_closed"] == pytest.approx((0.90 - 0.70) / (0.92 - 0.70))


def test_mean_std_and_its_format() -> None:
    assert mean_std([]) is None and mean_std([None, float("nan")]) is None
    cell = mean_std([0.9, 0.95, None])
    assert cell.n == 2 and cell.mean == pytest.approx(0.925) and cell.std == pytest.approx(math.sqrt(0.00125))
    assert format_mean_std(cell) == "92.50 ± 3.54"
    assert format_mean_std(MeanStd(0.8125, 0.0, 1)) == "81.25"  # one run: no spread to show
    assert format_mean_std(None) == "—"


# --- the form's method values and formula -------------------------------------------------------------------------


def test_the_untouched_form_is_plain_kd_with_no_method_params() -> None:
    values = form.defaults()
    assert values["method"] == "kd" and values["mp_dkd_beta"] == 8.0 and values["mp_dkd_warmup_epochs"] == 20
    config = RunConfig.from_dict(form.to_config(values))
    assert config == RunConfig() and config.method_params == {}


def test_form_keeps_only_the_chosen_methods_changed_params() -> None:
    values = {**form.defaults(), "method": "dkd", "mp_dkd_beta": 4.0, "mp_at_weight": 10.0}
    config = RunConfig.from_dict(form.to_config(values))
    assert config.method == "dkd" and config.method_params == {"beta": 4.0}


def test_form_round_trips_a_method_run_over_another_methods_base() -> None:
    base = RunConfig().replace(**{"student.arch": "cnn-small", "method": "at", "method.weight": 500}).to_dict()
    stored = RunConfig().replace(**{"method": "dkd", "method.beta": 2, "method.warmup_epochs": 5}).to_dict()
    values = form.from_config(stored)
    assert (values["method"], values["mp_dkd_beta"], values["mp_dkd_warmup_epochs"]) == ("dkd", 2.0, 5)
    assert RunConfig.from_dict(form.to_config(values)).to_dict() == stored
    # a copied at run's params are replaced, not merged, when the form says dkd
    assert RunConfig.from_dict(form.to_config(values, base=base)).method_params == {"beta": 2.0, "warmup_epochs": 5}


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_has_a_formula_and_a_legend(method: str) -> None:
    values = {**form.defaults(), "method": method}
    latex = form.loss_preview(values)
    assert latex is not None and latex.startswith(r"\begin{aligned}")
    assert latex.count(r"\big(") == latex.count(r"\big)")
    assert form.loss_legend(values).endswith(".")


@pytest.mark.parametrize(("method", "present", "absent"), [
    ("at", [r"1000\,", r"\mathrm{AT}_{p=2}", r"\mathrm{CE}"], [r"\mathrm{KL}"]),
    ("sp", [r"3000\,", r"\tilde G"], [r"\mathrm{KL}"]),
    ("rkd", [r"25\,\mathcal{L}_{\mathrm{distance}}", r"50\,\mathcal{L}_{\mathrm{angle}}"], []),
    ("pkt", [r"30000\,\mathrm{KL}\big(P_t"], []),
    ("dkd", [r"\min", r"1\,\mathrm{TCKD}", r"8\,\mathrm{NCKD}"], [r"\mathrm{KL}"]),
    ("dist", [r"\bar\rho_{\mathrm{inter}}", r"\bar\rho_{\mathrm{intra}}"], [r"\mathrm{KL}"]),
    ("multi_teacher", [r"\tfrac{1}{3}", r"z_{t_k}"], []),
    ("dml", [r"\sigma(z_p)", r"\mathrm{CE}\big(y,\ \sigma(z_p)\big)"], ["0.5"]),  # its own objective, no weights
    ("function_matching", [r"\tilde x"], [r"\mathrm{CE}"]),
])
def test_the_formula_names_the_methods_own_terms(method: str, present: list[str], absent: list[str]) -> None:
    latex = form.loss_latex({"ce": 0.5, "kd": 0.5, "feature": 0.0}, 4.0, method)
    for text in present:
        assert text in latex, (text, latex)
    for text in absent:
        assert text not in latex, (text, latex)


def test_invalid_method_combinations_are_explained_by_the_config() -> None:
    config, errors = form.validate({**form.defaults(), "method": "at"}, devices=["cpu"])
    assert config is None and "student.arch mlp-small has none" in errors[0]
    config, errors = form.validate({**form.defaults(), "method": "fitnets"}, devices=["cpu"])
    assert config is None and "In this form: Loss weights → Advanced" in errors[0]
    config, errors = form.validate({**form.defaults(), "method": "dkd", "mp_dkd_beta": 50.0}, devices=["cpu"])
    assert config is None and "method.beta must be between 0 and 20" in errors[0]
