"""Text distillation in the app: New run offers what fits text, Live run and the Temperature lab show sentences
with their soft labels, and Compare, Sweeps, Methods and Runs take text runs as they are.

The store holds a real 2-run sweep (T = 1 and 4) on a generated CSV of reviews, a 1-layer 32-wide Transformer
teacher built from its config (no weights) and a bag-of-embeddings student, trained by a real worker in seconds.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest

from app import form
from app.read_model.sentences import sentence_note, sentence_table
from app_helpers import ENTRY, stop_active_runs, wait_until_finished
from kdcore.config import RunConfig
from kdcore.runner import Runner
from kdcore.store import Store, upload_name
from kdcore.sweep import expand, parse_grid, submit_sweep
from streamlit.testing.v1 import AppTest
from test_text import write_reviews

TIMEOUT = 90


# --- the form: what fits text (pure) ----------------------------------------------------------------------------


def test_a_text_dataset_offers_only_text_models_and_methods_that_apply() -> None:
    text_models = ["minilm-l6", "tiny-transformer", "bilstm", "bag-of-embeddings"]
    assert form.archs_for("rotten-tomatoes") == text_models
    assert form.archs_for("csv:/data/reviews.csv") == text_models
    assert not set(text_models) & set(form.archs_for("digits")) and "cnn" in form.archs_for("digits")
    assert "bilstm" not in form.archs_for("imagefolder:/pets") and "resnet18" in form.archs_for("imagefolder:/pets")
    methods = form.methods_for("rotten-tomatoes")
    assert {"kd", "dkd", "dist", "distilbert", "minilm"} <= set(methods)
    assert not {"at", "sp", "function_matching"} & set(methods)  # feature maps, stage outputs, mixup
    assert not {"distilbert", "minilm"} & set(form.methods_for("digits"))


def test_choosing_text_swaps_what_cannot_read_it_and_keeps_what_can() -> None:
    values = form.defaults() | {"dataset": "rotten-tomatoes", "method": "at", "augment": True,
                                "transfer": "fashion-mnist"}
    changes = form.adapt_to_dataset(values)
    assert changes == {"teacher_arch": "minilm-l6", "student_arch": "bilstm", "method": "kd", "augment": False,
                       "teacher_augment": False, "transfer": ""}
    text = values | changes | {"student_arch": "tiny-transformer", "method": "distilbert", "transfer": "augment:2"}
    assert form.adapt_to_dataset(text | {"dataset": "csv:/x.csv"}) == {}  # text to text keeps everything
    back = form.adapt_to_dataset(text | {"dataset": "digits"})
    assert back == {"teacher_arch": RunConfig().teacher.arch, "student_arch": RunConfig().student.arch,
                    "method": "kd", "transfer": ""}
    csv_transfer = text | {"transfer": "csv:/data/more.csv", "transfer_column": "body"}
    assert form.adapt_to_dataset(csv_transfer | {"dataset": "rotten-tomatoes"}) == {}
    assert form.adapt_to_dataset(csv_transfer | {"dataset": "digits"}) == {**back, "transfer_column": ""}


def test_the_form_carries_a_csvs_columns_and_the_engine_judges_the_rest() -> None:
    values = form.defaults() | {"dataset": "csv:/data/reviews.csv", "text_column": "review",
                                "label_column": "sentiment", "teacher_arch": "tiny-transformer:1,32",
                                "student_arch": "bilstm", "transfer": "augment:3", "teacher_augment": False}
    config, errors = form.validate(values)
    assert errors == [] and (config.text_column, config.label_column, config.transfer) == ("review", "sentiment",
                                                                                          "augment:3")
    assert form.from_config(config.to_dict())["text_column"] == "review"
    config, errors = form.validate(values | {"transfer": " csv:/data/more.csv ", "transfer_column": " body "})
    assert errors == [] and (config.transfer, config.transfer_column) == ("csv:/data/more.csv", "body")
    assert form.from_config(config.to_dict())["transfer_column"] == "body"
    _, errors = form.validate(values | {"method": "distilbert"})  # a BiLSTM has no hidden states per token
    assert len(errors) == 1 and "use tiny-transformer" in errors[0]
    assert form.dataset_info("csv:/x.csv").kind == "text" and form.dataset_info("imagefolder:/x") is None


def test_an_uploaded_csv_keeps_its_suffix() -> None:
    assert upload_name("../my reviews.tsv", b"a,b", (".csv", ".tsv")).endswith("-my_reviews.tsv")
    assert upload_name("reviews", b"a,b", (".csv", ".tsv")).endswith("-reviews.csv")
    assert upload_name("teacher", b"w").endswith("-teacher.pt")


# --- the sentence table (pure) ----------------------------------------------------------------------------------

TEACHER = {"id": 1, "temperature": 4.0, "class_names": ["fresh", "rotten"], "labels": [0, 1],
           "texts": ["a gem", "a mess"], "teacher_T1": [[0.9, 0.1], [0.2, 0.8]], "teacher_T": [[0.6, 0.4], [0.45, 0.55]]}


def test_two_classes_give_one_probability_bar_per_sentence_and_distribution() -> None:
    table = sentence_table(TEACHER, {"student_T": [[0.7, 0.3], [0.5, 0.5]]})
    assert table.measured == "P(fresh)" and not table.guess
    assert table.bars == {"teacher_T1": "teacher T=1", "teacher_T": "teacher T=4", "student_T": "student T=4"}
    assert table.rows == [
        {"sentence": "a gem", "label": "fresh", "teacher_T1": 0.9, "teacher_T": 0.6, "student_T": 0.7},
        {"sentence": "a mess", "label": "rotten", "teacher_T1": 0.2, "teacher_T": 0.45, "student_T": 0.5}]
    assert "probability of **fresh** (the rest is rotten)" in sentence_note(TEACHER)
    assert "student_T" not in sentence_table(TEACHER).rows[0]  # before the student's first epoch


def test_more_classes_give_the_probability_of_each_sentences_label_and_the_teachers_pick() -> None:
    teacher = TEACHER | {"class_names": ["neg", "neutral", "pos"], "labels": [2, 1],
                         "teacher_T1": [[0.1, 0.2, 0.7], [0.5, 0.3, 0.2]], "teacher_T": [[0.3, 0.3, 0.4], [0.4, 0.3, 0.3]]}
    table = sentence_table(teacher)
    assert table.measured == "P(its label)" and table.guess
    assert [(r["teacher_T1"], r["teacher_T"], r["teacher_guess"]) for r in table.rows] == [
        (0.7, 0.4, "pos (70%)"), (0.3, 0.3, "neg (50%)")]


# --- the app over a store holding text runs -----------------------------------------------------------------------

BASE = {"teacher": {"arch": "tiny-transformer:1,32", "epochs": 1, "lr": 0.01}, "student": {"arch": "bag-of-embeddings"},
        "epochs": 1, "lr": 0.01, "text_column": "review", "label_column": "sentiment"}


@pytest.fixture(scope="module")
def text_store(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A finished sweep over T = 1, 4 of text runs on a generated CSV (one teacher, trained by a worker)."""
    home = tmp_path_factory.mktemp("text-store")
    reviews = write_reviews(tmp_path_factory.mktemp("text-data") / "reviews.csv")
    store = Store(home)
    base = BASE | {"dataset": f"csv:{reviews}"}
    grid = parse_grid(["temperature=1,4"])
    sweep_id, run_ids = submit_sweep(Runner(store), base, grid, expand(base, grid), name="text sweep")
    try:
        records = wait_until_finished(store, run_ids, timeout_s=240)
        assert [r.status for r in records] == ["done"] * 2, [(r.status, r.error) for r in records]
        yield SimpleNamespace(home=home, store=store, sweep_id=sweep_id, run_ids=run_ids, reviews=reviews)
    finally:
        stop_active_runs(home)
        store.close()


@pytest.fixture
def in_store(text_store: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    monkeypatch.setenv("KDCORE_HOME", str(text_store.home))
    return text_store


def open_page(page: str, **query: str) -> AppTest:
    at = AppTest.from_file(str(ENTRY), default_timeout=TIMEOUT)
    at.run()
    at.switch_page(f"screens/{page}.py")
    at.query_params.update(query)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_live_run_shows_each_sentence_with_its_soft_labels(in_store) -> None:
    run_id = in_store.run_ids[1]  # T = 4
    at = open_page("live", run=run_id)
    snapshots, _ = in_store.store.snapshots_since(run_id)
    teacher = next(s for s in snapshots if s["stage"] == "soft_labels")
    student = [s for s in snapshots if s["stage"] == "student"][-1]
    table = at.dataframe[-1].value
    assert list(table["sentence"]) == teacher["texts"] and len(table) == 10
    assert list(table["label"]) == [teacher["class_names"][k] for k in teacher["labels"]]
    first = teacher["class_names"][0]  # two classes: every bar is P(negative)
    np.testing.assert_allclose(table["teacher_T1"], [p[0] for p in teacher["teacher_T1"]])
    np.testing.assert_allclose(table["teacher_T"], [p[0] for p in teacher["teacher_T"]])
    np.testing.assert_allclose(table["student_T"], [p[0] for p in student["student_T"]])
    assert any(f"probability of **{first}**" in c.value for c in at.caption)
    assert not [c for c in at.get("plotly_chart") if "Soft labels" in c.proto.spec]  # no grid of 2-bar charts


def test_the_temperature_lab_reads_a_text_teacher(in_store) -> None:
    key = RunConfig.from_dict(in_store.store.get_run(in_store.run_ids[0]).config).teacher_key()
    at = open_page("lab", teacher=key)
    assert at.selectbox(key="lab_teacher").value == key
    table = at.dataframe[-1].value
    assert len(table) == 5 and all(isinstance(text, str) and " is " in text for text in table["sentence"])
    at.slider(key="lab_temperature").set_value(1.0).run()
    assert not at.exception
    table = at.dataframe[-1].value
    np.testing.assert_allclose(table["teacher_T1"], table["teacher_T"])  # at T = 1 the two bars agree
    assert len(at.get("plotly_chart")) == 2  # the temperature curves and the class-similarity matrix


@pytest.mark.parametrize("page", ["runs", "compare", "sweeps", "methods"])
def test_the_other_pages_take_text_runs_unchanged(in_store, page: str) -> None:
    query = {"compare": {"runs": ",".join(in_store.run_ids)}, "sweeps": {"sweep": in_store.sweep_id}}.get(page, {})
    at = open_page(page, **query)
    shown = " ".join(str(frame.value.to_dict()) for frame in [*at.dataframe, *at.table])
    if page == "methods":
        assert at.selectbox(key="mt_pair").value == f"csv:{in_store.reviews}|tiny-transformer:1,32|bag-of-embeddings"
        assert at.table[0].value.loc["runs", "kd"] == "2"
    else:
        assert all(run_id in shown for run_id in in_store.run_ids), page


def test_new_run_on_text_offers_what_fits_and_queues_a_csv_run(in_store, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("KDCORE_MAX_RUNS", "1")
    busy = in_store.store.create_run(RunConfig().replace(dataset="digits").to_dict(), status="running", pid=os.getpid())
    try:
        at = open_page("new_run")
        at.selectbox(key="nr_dataset").set_value("rotten-tomatoes").run()
        assert (at.selectbox(key="nr_teacher_arch").value, at.selectbox(key="nr_student_arch").value) == (
            "minilm-l6", "bilstm")
        offered = at.selectbox(key="nr_student_arch").options  # as drawn: "bilstm — one bidirectional LSTM…"
        assert [option.split(" — ")[0] for option in offered] == form.archs_for("rotten-tomatoes")
        assert "Tang et al. 2019" in offered[2]
        assert "distilbert" in str(at.selectbox(key="nr_method").options)
        assert "Attention transfer" not in str(at.selectbox(key="nr_method").options)
        assert at.toggle(key="nr_augment").disabled

        # typed names are new options of their select boxes, which AppTest cannot pick: copy a text run's settings
        at = AppTest.from_file(str(ENTRY), default_timeout=TIMEOUT)
        at.query_params["from"] = in_store.run_ids[0]
        at.run()
        assert at.selectbox(key="nr_dataset").value == f"csv:{in_store.reviews}"
        assert at.selectbox(key="nr_teacher_arch").value == "tiny-transformer:1,32"
        assert any("Your own text" in c.value for c in at.caption)
        at.text_input(key="nr_text_column").set_value("body").run()
        assert at.text_input(key="nr_text_column").value == "body"
        at.selectbox(key="nr_student_arch").set_value("bilstm").run()
        at.text_input(key="nr_text_column").set_value("review").run()
        at.text_input(key="nr_label_column").set_value("sentiment").run()
        # a CSV of texts as the transfer set: the engine's refusals shown before Start, as `submit` gives them
        extra = tmp_path / "unlabelled.csv"
        extra.write_text("stars,sentence\n5,a great film\n1,a dull score\n")
        assert at.text_input(key="nr_transfer_column").disabled
        at.text_input(key="nr_transfer").set_value(f"csv:{tmp_path / 'gone.csv'}").run()
        assert [e.value for e in at.error] == [f"csv:{tmp_path / 'gone.csv'}: no such file {tmp_path / 'gone.csv'} "
                                               "(Transfer set, under Advanced settings.)"]
        assert at.button(key="nr_start").disabled
        at.text_input(key="nr_transfer").set_value(f"csv:{extra}").run()
        assert "no column 'review' (transfer_column, else text_column)" in at.error[0].value
        at.text_input(key="nr_transfer_column").set_value("sentence").run()
        assert not at.error, [e.value for e in at.error]
        at.button(key="nr_start").click().run()
        assert not at.exception
        queued = in_store.store.list_runs(status="queued")
        assert len(queued) == 1
        config = RunConfig.from_dict(queued[0].config)
        assert (config.dataset, config.text_column, config.label_column, config.student.arch, config.transfer,
                config.transfer_column) == (f"csv:{in_store.reviews}", "review", "sentiment", "bilstm", f"csv:{extra}",
                                            "sentence")
    finally:
        for record in in_store.store.list_runs(status="queued"):
            in_store.store.finish(record.id, "cancelled", only_if=("queued",))
        in_store.store.finish(busy, "cancelled")
