"""The app's pure parts: the read model (app.read_model), the run charts (app.charts) and app.form (form ⇄ RunConfig)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from app import charts, form
from app.read_model.progress import format_duration, run_eta, run_plan, stage_eta, stage_fraction, stage_states
from app.read_model.runs import labels_label, run_row, stored_teachers, weights_label
from app.read_model.series import Line, series_label, series_order, step_lines
from app.read_model.trace import RunTrace, ema, teacher_val_acc, thin
from kdcore.config import RunConfig
from kdcore.methods import series_terms

# --- read model: plan, progress, ETA ----------------------------------------------------------------------------


def test_run_plan_follows_the_config() -> None:
    config = RunConfig().replace(**{"teacher.epochs": 3, "epochs": 5, "finetune_epochs": 2}).to_dict()
    assert run_plan(config) == [("teacher", 3), ("soft_labels", 0), ("student", 5), ("finetune", 2), ("baseline", 7)]
    config = RunConfig().replace(**{"teacher.checkpoint": "/x.pt", "baseline": False}).to_dict()
    assert [stage for stage, _ in run_plan(config)] == ["soft_labels", "student"]


def test_stage_states_mark_done_active_waiting_and_reused() -> None:
    plan = [("teacher", 2), ("soft_labels", 0), ("student", 4), ("baseline", 4)]
    progress = {"stage": "student", "epochs": 4, "steps_per_epoch": 10, "epoch": 1, "step": 15}
    assert stage_states(plan, progress, "running", {"teacher", "student"}) == [
        ("teacher", "done"), ("soft_labels", "done"), ("student", "active"), ("baseline", "waiting")]
    # a teacher that reported nothing was reused from the cache
    assert stage_states(plan, progress, "running", {"student"})[0] == ("teacher", "skipped")
    assert stage_states(plan, progress, "failed", {"student"})[2] == ("student", "stopped")
    assert [s for _, s in stage_states(plan, progress, "done", {"teacher", "student", "baseline"})] == ["done"] * 4


def test_stage_fraction_and_eta() -> None:
    progress = {"stage": "student", "epochs": 4, "steps_per_epoch": 10, "step": 10, "stage_started": 100.0}
    assert stage_fraction(progress) == 0.25
    assert stage_eta(progress, now=110.0) == pytest.approx(30.0)  # 10 s for a quarter: 30 s left
    plan = [("teacher", 2), ("soft_labels", 0), ("student", 4), ("baseline", 4)]
    # the baseline trains the same architecture: 4 more epochs at 10 s each
    assert run_eta(plan, progress, now=110.0) == pytest.approx(30.0 + 40.0)
    teacher = {"stage": "teacher", "epochs": 2, "steps_per_epoch": 10, "step": 5, "stage_started": 100.0}
    assert run_eta(plan, teacher, now=105.0) is None  # the student's pace is unknown yet
    assert stage_fraction({"stage": "soft_labels", "epochs": 0, "steps_per_epoch": 0}) is None
    assert stage_eta({"stage": "student", "epochs": 4, "steps_per_epoch": 10, "step": 0, "stage_started": 1.0}) is None


def test_format_duration() -> None:
    assert format_duration(None) == "—"
    assert format_duration(42.4) == "42 s"
    assert format_duration(185) == "3 min 05 s"
    assert format_duration(3720) == "1 h 02 min"
    assert format_duration(math.inf) == "—"


# --- read model: traces, smoothing, thinning -------------------------------------------------------------------


def test_run_trace_appends_rows_by_stage_and_name() -> None:
    trace = RunTrace("run-00000001")
    trace.add_metrics([(1, "student", 1, 1, "train_loss", 2.0, 0.0), (2, "student", 1, 2, "train_loss", 1.5, 0.0)])
    trace.add_metrics([(3, "student", 1, 2, "val_acc", 0.5, 0.0), (4, "teacher", 1, 5, "train_loss", None, 0.0)])
    loss = trace.get("student", "train_loss")
    assert (loss.steps, loss.values) == ([1, 2], [2.0, 1.5])
    assert trace.get("student", "val_acc").epochs == [1]
    assert math.isnan(trace.get("teacher", "train_loss").values[0])
    assert trace.stages_with("train_loss") == ["teacher", "student"]
    assert trace.trained_stages() == {"teacher", "student"}
    assert trace.points == 3
    assert len(trace.get("baseline", "val_acc")) == 0


def test_run_trace_keeps_the_teacher_and_student_snapshots() -> None:
    trace = RunTrace("run-00000001")
    trace.add_snapshots([{"id": 1, "stage": "soft_labels", "epoch": 0, "teacher_T": [[1.0]]},
                         {"id": 2, "stage": "student", "epoch": 1, "student_T": [[1.0]]},
                         {"id": 3, "stage": "student", "epoch": 2, "student_T": [[1.0]]}])
    assert trace.teacher_snapshot["id"] == 1
    assert sorted(trace.student_snapshots) == [1, 2]


def test_ema_is_bias_corrected_and_matches_a_reference() -> None:
    values = [1.0, 3.0, 2.0, 5.0]
    weight = 0.6
    expected, last = [], 0.0
    for i, value in enumerate(values, start=1):
        last = weight * last + (1 - weight) * value
        expected.append(last / (1 - weight**i))
    assert ema(values, weight) == pytest.approx(expected)
    assert ema(values, 0.0) == values
    assert ema([2.0, float("nan"), 4.0], 0.5)[1] == 2.0  # a NaN repeats the last smoothed value
    with pytest.raises(ValueError, match=r"smoothing weight must be in \[0, 1\), got 1.0"):
        ema(values, 1.0)


def test_thin_keeps_at_most_about_max_points_and_the_last() -> None:
    xs = list(range(10_001))
    tx, ty = thin(xs, xs, 1000)
    assert len(tx) <= 1001 and tx[0] == 0 and tx[-1] == 10_000 and tx == ty
    assert thin([1, 2], [3, 4], 10) == ([1, 2], [3, 4])


def test_teacher_reference_accuracy_sources() -> None:
    trace = RunTrace("run-00000001")
    assert teacher_val_acc({"teacher_val_acc": 0.9}, trace, {}) == 0.9
    # a cached teacher reports no epochs: what the soft-label stage recorded when it ended (no log text)
    assert teacher_val_acc(None, trace, {"soft_labels": {"teacher_val_acc": 0.9731}}) == pytest.approx(0.9731)
    trace.add_metrics([(1, "teacher", 1, 10, "val_acc", 0.8, 0.0)])
    assert teacher_val_acc(None, trace, {}) == 0.8
    assert teacher_val_acc(None, RunTrace("run-00000002"), {"student": {"val_acc": 0.5}}) is None


# --- read model: every recorded term, labelled by its method ------------------------------------------------------


def _steps(trace: RunTrace, stage: str, **series: list[float]) -> None:
    rows = [(0, stage, 1, step, name, value, 0.0) for name, values in series.items()
            for step, value in enumerate(values, start=1)]
    trace.add_metrics(rows)


def test_step_lines_follow_the_methods_terms_in_order_with_its_labels() -> None:
    recorded = ["train_nckd", "train_loss", "train_acc", "val_acc", "train_tckd", "train_ce", "train_mystery"]
    lines = step_lines("dkd", recorded)
    terms = series_terms("dkd")
    assert [line.name for line in lines] == ["train_loss", "train_ce", "train_tckd", "train_nckd", "train_mystery"]
    assert lines[2] == Line("train_tckd", terms["train_tckd"].label, "loss")
    assert lines[-1] == Line("train_mystery", "train_mystery", "loss")  # a series no module names keeps its name
    assert [line.name for line in step_lines("no-such-method", recorded)][:2] == ["train_loss", "train_ce"]
    assert series_label("train_loss") == "total loss" and series_label("val_loss") == "validation CE"
    assert series_label("train_tckd", [None, "dkd"]) == terms["train_tckd"].label
    assert series_order(["val_acc", "train_nckd", "train_loss", "zz"], ["dkd"]) == \
        ["train_loss", "train_nckd", "val_acc", "zz"]


def test_loss_chart_draws_every_recorded_term_with_its_label() -> None:
    trace = RunTrace("run-00000001")
    _steps(trace, "student", train_loss=[2.0, 1.5, 1.2], train_ce=[1.0, 0.8, 0.7], train_kd=[0.0, 0.0, 0.0],
           train_tckd=[0.3, 0.2, 0.1], train_nckd=[0.9, 0.7, 0.6], train_acc=[0.5])
    terms = series_terms("dkd")
    figure = charts.loss_figure(trace, "student", "dkd", smoothing=0.0)
    names = [t.name for t in figure.data]
    # every term recorded, in the module's order and with its label; a term that stays 0 and accuracy left out
    assert names == ["total", "CE", terms["train_tckd"].label, terms["train_nckd"].label]
    assert list(figure.data[3].y) == [0.9, 0.7, 0.6]
    colors = [t.line.color for t in figure.data]
    assert colors[:2] == [charts.PART_COLORS["train_loss"], charts.PART_COLORS["train_ce"]]
    assert len(set(colors)) == 4 and set(colors[2:]) <= set(charts.TERM_PALETTE)
    smoothed = charts.loss_figure(trace, "student", "dkd", smoothing=0.5)
    assert sum(1 for t in smoothed.data if t.name.endswith("(raw)")) == 4  # raw lines stay faint beside each
    assert not charts.value_lines(trace, "student", "dkd")


def test_a_learned_temperature_gets_its_own_chart_not_the_loss_chart() -> None:
    trace = RunTrace("run-00000001")
    _steps(trace, "student", train_loss=[2.0, 1.5], train_ce=[1.0, 0.8], train_kd=[1.0, 0.7],
           train_temperature=[4.0, 4.2])
    label = series_terms("ctkd")["train_temperature"].label
    loss = charts.loss_figure(trace, "student", "ctkd")
    assert label not in [t.name for t in loss.data] and "total" in [t.name for t in loss.data]
    lines = charts.value_lines(trace, "student", "ctkd")
    assert lines == [Line("train_temperature", label, "value")]
    figure = charts.values_figure(trace, "student", lines)
    assert [t.name for t in figure.data] == [label] and list(figure.data[0].y) == [4.0, 4.2]
    assert figure.layout.title.text.startswith(label[:1].upper() + label[1:])
    plain = RunTrace("run-00000002")
    _steps(plain, "student", train_loss=[1.0])
    assert charts.value_lines(plain, "student", "kd") == []


# --- read model: the runs table and stored teachers -------------------------------------------------------------


def _record(run_id: str, status: str = "done", summary: dict | None = None, **config_changes):
    config = RunConfig().replace(**config_changes).to_dict()
    return SimpleNamespace(id=run_id, name="", status=status, config=config, summary=summary, started=100.0,
                           ended=160.0, created=90.0, error=None)


def test_run_row_and_weights_label() -> None:
    row = run_row(_record("run-00000001", summary={"wall_s": 12.5, "student_test_acc": 0.9}))
    assert row["models"] == "cnn → mlp-small" and row["wall_s"] == 12.5 and row["student_acc"] == 0.9
    running = run_row(_record("run-00000002", status="running", summary=None), now=130.0)
    assert running["wall_s"] == 60.0  # ended is set in the fake record; started 100 → ended 160
    assert weights_label({"ce": 0.1, "kd": 0.9, "feature": 0.0}) == "ce 0.1 · kd 0.9"
    assert weights_label({"ce": 0, "kd": 1, "feature": 0.5}) == "kd 1 · feat 0.5"


def test_stored_teachers_are_distinct_and_carry_what_the_key_needs() -> None:
    first = _record("run-00000002", summary={"teacher_key": "k1", "teacher_test_acc": 0.97}, dataset="digits",
                    optimizer="sgd", **{"teacher.epochs": 2})
    same_teacher = _record("run-00000001", summary={"teacher_key": "k1"})
    failed = _record("run-00000003", status="failed", summary={"teacher_key": "k2"})
    from_checkpoint = _record("run-00000004", summary={"teacher_key": None})
    teachers = stored_teachers([first, same_teacher, failed, from_checkpoint])
    assert [t["key"] for t in teachers] == ["k1"]
    assert teachers[0]["run_id"] == "run-00000002" and teachers[0]["shared"]["optimizer"] == "sgd"
    assert teachers[0]["teacher"]["epochs"] == 2


# --- form -----------------------------------------------------------------------------------------------------------


def test_the_untouched_form_is_the_teaching_preset() -> None:
    values = form.defaults()
    assert RunConfig.from_dict(form.to_config(values)) == RunConfig()
    config, errors = form.validate(values, devices=["cpu"])
    assert errors == [] and config == RunConfig()


def test_form_round_trips_a_stored_config() -> None:
    stored = RunConfig().replace(**{"dataset": "moons", "teacher.arch": "mlp", "student.arch": "mlp:32,16",
                                    "weights.ce": 0.2, "weights.kd": 0.5, "weights.feature": 0.3, "temperature": 2.5,
                                    "finetune_epochs": 3, "baseline": False, "name": "copy me", "devices": 2}).to_dict()
    values = form.from_config(stored)
    assert values["weights_mode"] == "advanced"
    assert RunConfig.from_dict(form.to_config(values, base=stored)).to_dict() == stored


def test_simple_weights_are_exact() -> None:
    values = {**form.defaults(), "weights_mode": "simple", "alpha": 0.9}
    config = RunConfig.from_dict(form.to_config(values))
    assert (config.weights.ce, config.weights.kd, config.weights.feature) == (0.1, 0.9, 0.0)


@pytest.mark.parametrize(("changes", "message"), [
    ({"temperature": 0.0}, "temperature must be > 0"),
    ({"temperature": -2.0}, "temperature must be > 0"),
    ({"epochs": 0}, "epochs must be a positive integer"),
    ({"weights_mode": "advanced", "w_ce": -1.0}, "weights.ce must be >= 0"),
    ({"weights_mode": "advanced", "w_ce": 0.0, "w_kd": 0.0, "w_feature": 0.0}, "cannot all be 0"),
    ({"student_arch": "mlp:0"}, "student.arch"),
    ({"dataset": "moons"}, "teacher.arch: cnn needs image input"),
    ({"dataset": "nope"}, "unknown dataset"),
    ({"device": "cuda"}, "device=cuda is not available"),
    ({"devices": 3}, "must be divisible by devices=3"),
    ({"devices": 0}, "devices must be a positive integer"),
    ({"teacher_source": "upload"}, "Upload a teacher checkpoint"),
    ({"teacher_source": "store"}, "Choose a teacher to reuse"),
])
def test_invalid_forms_are_explained(changes: dict, message: str) -> None:
    config, errors = form.validate({**form.defaults(), **changes}, devices=["cpu"])
    assert config is None
    assert any(message in error for error in errors), errors


def test_a_stored_teacher_is_reused_by_key() -> None:
    source = RunConfig().replace(**{"dataset": "digits", "teacher.epochs": 2, "optimizer": "sgd", "val_fraction": 0.2})
    teacher = stored_teachers([SimpleNamespace(id="run-00000001", status="done", config=source.to_dict(),
                                               summary={"teacher_key": source.teacher_key()})])[0]
    values = {**form.defaults(), "teacher_source": "store", "dataset": "mnist-5k", "teacher_epochs": 9}
    config, errors = form.validate(values, store_teacher=teacher)
    assert errors == []
    assert config.teacher_key() == source.teacher_key()
    assert config.dataset == "digits" and config.teacher.epochs == 2


def test_an_uploaded_checkpoint_becomes_teacher_checkpoint() -> None:
    values = {**form.defaults(), "teacher_source": "upload", "teacher_checkpoint": "/store/uploads/abc-t.pt"}
    config, errors = form.validate(values)
    assert errors == [] and config.teacher.checkpoint == "/store/uploads/abc-t.pt"
    values["teacher_source"] = "train"  # switching back forgets it
    assert form.validate(values)[0].teacher.checkpoint is None


def test_loss_latex_shows_the_chosen_numbers() -> None:
    latex = form.loss_latex({"ce": 0.1, "kd": 0.9, "feature": 0.0}, 4.0)
    assert "0.1" in latex and r"0.9\cdot 4^2" in latex and "MSE" not in latex
    assert "MSE" in form.loss_latex({"ce": 0.0, "kd": 1.0, "feature": 0.5}, 2.0)
    assert "CE" not in form.loss_latex({"ce": 0.0, "kd": 1.0, "feature": 0.0}, 2.0)


def test_the_live_header_says_how_many_labelled_and_unlabelled_examples_the_student_saw():
    assert labels_label({"labeled_fraction": 1.0, "transfer": None}, {}) is None  # every label: nothing to say
    assert labels_label({"labeled_fraction": 0.1}, {}) == ("Student: hard labels for 10% of the training split; the "
                                                           "teacher labels the rest.")
    recorded = {"labeled_examples": 360.0, "unlabeled_examples": 63240.0, "transfer_examples": 60000.0}
    assert labels_label({"labeled_fraction": 0.1, "transfer": "fashion-mnist"}, recorded) == (
        "Student: **360 labelled** examples and **63,240 unlabelled** ones the teacher labels (60,000 of them from "
        "fashion-mnist) · baseline: the 360 labelled alone, for as many steps")


def test_the_form_carries_the_transfer_settings_and_the_bundled_teacher_choice():
    values = {**form.defaults(), "labeled_fraction": 0.25, "transfer": " fashion-mnist ", "teacher_bundled": False}
    config, errors = form.validate(values)
    assert errors == [] and (config.labeled_fraction, config.transfer, config.teacher.bundled) == (0.25, "fashion-mnist",
                                                                                                   False)
    assert form.from_config(config.to_dict())["teacher_bundled"] is False
    assert form.validate({**form.defaults(), "transfer": "digits"})[1] == [
        "transfer: digits gives inputs of shape (1, 8, 8); dataset mnist-5k's are (1, 28, 28)"]

