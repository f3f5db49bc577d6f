"""Deploy: how small and fast can a finished run's student get, and what does it cost in accuracy?

Pick a finished run and the compression (pruning the student and/or the teacher, KD recovery from the
teacher and/or the unpruned model, int8 after training or after quantisation-aware fine-tuning); the
deployment report (`kdcore.compress.report`) measures the teacher, the student and each compressed
variant on this machine. It takes tens of seconds, so it runs as a background `python -m kdcore compress` process
(`kdcore.compress.jobs`) while a fragment polls its progress; the report is kept in the run's
artefacts, so a revisit with the same options shows it at once. The table and the trade-off chart
are shaped by `app.read_model.deploy` and `app.charts`; every artefact can be downloaded.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import charts, session
from app.read_model.deploy import TABLE_COLUMNS, download_names, headline, tradeoff_points, variant_rows
from kdcore.compress import jobs
from kdcore.compress.options import CompressOptions, report_name
from kdcore.errors import KDError
from kdcore.store import RunRecord, Store

POLL_S = 1.0
MIME = {".onnx": "application/octet-stream", ".pt": "application/octet-stream", ".json": "application/json"}


def render() -> None:
    st.title("Deploy")
    store = session.store()
    record = _pick_run(store)
    if record is None:
        return
    options = _options()
    job = jobs.state(store, record.id, options)
    if job.state == "running":
        st.fragment(_progress, run_every=POLL_S)(record.id, options)
    elif job.state == "failed":
        st.error(f"The report could not be computed: {job.error}", icon=":material/error:")
    if job.state != "running":
        label = "Recompute" if job.report else "Compute the report"
        if st.button(label, key="dp_compute", type="secondary" if job.report else "primary",
                     icon=":material/rocket_launch:",
                     help="Runs `python -m kdcore compress` in the background: export, prune, recover, quantise, "
                          "and time every variant on this machine."):
            try:
                jobs.start(store, record.id, options)
            except KDError as exc:
                st.error(str(exc))
            else:
                st.rerun()
    if job.report:
        _report(store, record, options, job.report)
    elif job.state == "none":
        st.info("No report for these options yet. **Compute the report** measures the teacher, the student and its "
                "compressed variants (about half a minute for the preset on two CPU cores).", icon=":material/info:")


# --- choosing --------------------------------------------------------------------------------------------------


def _pick_run(store: Store) -> RunRecord | None:
    records = store.list_runs(status="done", limit=200)
    if not records:
        st.info("No finished run yet. Start one on the **New run** page; its student can be deployed here.")
        st.page_link("screens/new_run.py", label="New run", icon=":material/add_circle:")
        return None
    by_id = {r.id: r for r in records}
    requested = st.query_params.get("run")
    default = requested if requested in by_id else records[0].id
    choice = st.selectbox("Finished run", list(by_id), index=list(by_id).index(default), key="dp_run",
                          format_func=lambda run_id: _run_label(by_id[run_id]))
    if st.query_params.get("run") != choice:
        st.query_params["run"] = choice
    return by_id[choice]


def _run_label(record: RunRecord) -> str:
    config, summary = record.config, record.summary or {}
    acc = summary.get("student_test_acc")
    return (f"{record.id}{' · ' + record.name if record.name else ''} · {config.get('dataset')} · "
            f"{config.get('teacher', {}).get('arch')} → {config.get('student', {}).get('arch')}"
            + (f" · student {100 * acc:.2f}%" if acc is not None else ""))


RECOVERY_SOURCES = {"teacher": "the run's teacher", "unpruned": "the unpruned model", "both": "both"}


def _options() -> CompressOptions:
    left, middle, right = st.columns([1.2, 1, 1])
    with left:
        prune = st.toggle("Prune", value=True, key="dp_prune")
        model = st.radio("Model to prune", ["student", "teacher", "both"], key="dp_model", disabled=not prune,
                         horizontal=True, help="The run's student, its teacher (a smaller teacher to deploy or to "
                                               "distil from), or each of them.")
        fraction = st.slider("Fraction pruned", 0.1, 0.9, 0.5, 0.05, key="dp_fraction", disabled=not prune,
                             help="Structured: the share of channels/neurons removed from every layer. Unstructured: "
                                  "the share of all weights set to zero (smallest magnitudes first).")
        steps = st.number_input("Pruning steps", 1, 20, 1, key="dp_steps", disabled=not prune,
                                help="Iterative pruning: the fraction is removed in this many equal steps, each "
                                     "followed by its own recovery.")
    with middle:
        structured = st.radio("Pruning", ["structured", "unstructured"], key="dp_kind", disabled=not prune,
                              horizontal=True, help="Structured pruning makes layers narrower (smaller and faster "
                              "everywhere), then refits the classifier to the unpruned model's logits by least "
                              "squares; unstructured zeroes single weights (the dense file only shrinks zipped).")
        recover = st.number_input("KD recovery epochs", 0, 100, 2, key="dp_recover", disabled=not prune,
                                  help="Epochs of distillation after pruning (after each step). On the teaching "
                                       "preset, 20 epochs from the teacher bring the 50% structured-pruned student "
                                       "within 0.5 points of the unpruned one (BENCHMARKS.md).")
        source = st.radio("Recover from", list(RECOVERY_SOURCES), key="dp_recover_from",
                          format_func=RECOVERY_SOURCES.get, disabled=not prune or not recover, horizontal=True,
                          help="What the pruned model learns from: the run's teacher, the model before pruning, or "
                               "both as one ensemble (their softened probabilities averaged). For the teacher the "
                               "unpruned teacher is used in every case.")
    with right:
        quantize = st.toggle("Quantise to int8", value=True, key="dp_int8",
                             help="Post-training static int8 in ONNX Runtime, calibrated on 512 training inputs.")
        qat = st.number_input("QAT epochs", 0, 100, 0, key="dp_qat", disabled=not quantize,
                              help="Quantisation-aware fine-tuning, distilled from the run's teacher, before int8: "
                                   "each int8 variant then also comes as QAT, measured in ONNX Runtime beside the "
                                   "post-training one. 0: post-training int8 only.")
    return CompressOptions(prune=fraction if prune else None, structured=structured == "structured",
                           recover_epochs=int(recover) if prune else 0, quantize="int8" if quantize else None,
                           prune_model=model if prune else "student", prune_steps=int(steps) if prune else 1,
                           recover_from=source if prune and recover else "teacher",
                           qat_epochs=int(qat) if quantize else 0)


# --- computing -------------------------------------------------------------------------------------------------


def _progress(run_id: str, options: CompressOptions) -> None:
    job = jobs.state(session.store(), run_id, options)
    if job.state != "running":
        st.rerun()  # the whole page: the report (or the error) replaces the progress bar
    step = f"step {job.step} of {job.total}: " if job.total else ""
    st.progress(min(job.fraction, 1.0), text=f"Computing the report — {step}{job.message}")
    if job.report:
        st.caption("Below: the previous report for these options, until the new one is ready.")


# --- the report --------------------------------------------------------------------------------------------------


def _report(store: Store, record: RunRecord, options: CompressOptions, report: dict) -> None:
    machine = report.get("machine", {})
    st.caption(f"Measured on this machine's CPU ({machine.get('processor')}, {machine.get('threads')} threads; "
               f"torch {machine.get('torch')}, ONNX Runtime {machine.get('onnxruntime')}) on the "
               f"{report['test_size']:,} test examples of {report['dataset']}; report took "
               f"{report['wall_s']:.0f} s.")
    for line in headline(report):
        st.markdown(f"- {line}")
    frame = pd.DataFrame(variant_rows(report), columns=list(TABLE_COLUMNS))
    st.dataframe(frame, hide_index=True, width="stretch", column_config={
        "Test acc (%)": st.column_config.NumberColumn(format="%.2f"),
        "Δ vs fp32 (pts)": st.column_config.NumberColumn(
            format="%+.2f", help="Against the fp32 model it was made from: the student, or for the teacher's "
                                 "variants the teacher"),
        "Agrees with fp32 (%)": st.column_config.NumberColumn(
            format="%.1f", help="Test inputs on which it predicts the class its fp32 model (student or teacher) "
                                "predicts"),
        "Parameters": st.column_config.NumberColumn(format="localized",
                                                    help="Non-zero parameters (pruned weights do not count)"),
        "ONNX size (KB)": st.column_config.NumberColumn(format="%.1f"),
        "× smaller": st.column_config.NumberColumn(format="%.2f×", help="Its fp32 model's ONNX file over this one"),
        **{name: st.column_config.NumberColumn(format="%.3f") for name in TABLE_COLUMNS if name.endswith("(ms)")},
        **{name: st.column_config.NumberColumn(format="%.0f") for name in TABLE_COLUMNS if "samples/s" in name},
    })
    st.caption("Latency: per sample at batch 1, median (p50) and 95th percentile of timed calls after a warm-up. "
               "Throughput: samples per second at batch 64. int8 models run only in ONNX Runtime. Accuracy of an int8 "
               "model is measured by running it, not estimated.")
    st.plotly_chart(charts.deploy_tradeoff_figure(tradeoff_points(report)), key="dp_chart")
    st.caption("Filled, larger points are on a Pareto frontier (no other variant is both smaller — or faster — and at "
               "least as accurate). Colours: teacher dark grey, fp32 students indigo, int8 teal.")
    _downloads(store, record.id, options, report)


def _downloads(store: Store, run_id: str, options: CompressOptions, report: dict) -> None:
    st.subheader("Download")
    sizes = {row.name: row.bytes for row in store.artifacts(run_id)}
    names = [name for name in download_names(report, report_name(options)) if name in sizes]
    columns = st.columns(3)
    for i, name in enumerate(names):
        suffix = name[name.rfind("."):]
        columns[i % 3].download_button(
            f"{name} ({sizes[name] / 1024:.1f} KB)", data=_reader(store, run_id, name), file_name=name,
            mime=MIME.get(suffix, "application/octet-stream"), key=f"dp_dl_{name}", icon=":material/download:",
            on_click="ignore")


def _reader(store: Store, run_id: str, name: str):
    """The file's bytes, read only when the button is pressed (the models need not sit in the page)."""
    return lambda: store.read_artifact(run_id, name) or b""


if __name__ == "__main__":
    render()
