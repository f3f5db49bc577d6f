"""Compare: runs side by side. Their curves overlaid (any series they recorded: every loss term of their
methods, the validation metrics), a table of final numbers, and only the settings that differ; both
table and every recorded metric export as CSV.

The runs come from `?runs=id1,id2` (the Runs and Sweeps pages link here that way) or the picker,
which keeps the URL in step, so a comparison can be shared. The numbers are the store's own
(`kdcore.compare.comparison_rows`); inference latency is measured on this machine once per
architecture, data shape and batch size, and cached for the server (`session.latency_s`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from app import charts, session, verdicts
from app.read_model.compare import X_AXES, compare_series
from app.read_model.progress import STAGE_TITLES
from app.read_model.seeds import config_groups, format_ci, format_difference
from app.read_model.series import PERCENT_SERIES, is_step_series, series_kind, series_label, series_order
from kdcore.compare import comparison_rows, config_diff, datasets_differ
from kdcore.dataset_names import CATALOGUE
from kdcore.errors import KDError, RunNotFound
from kdcore.store import RunMetricRow, RunRecord, Store

POLL_S = 2.0
CURVE_STAGES = ("student", "finetune", "baseline", "teacher")
METRIC_COLUMNS = list(RunMetricRow._fields)
LATENCY_BATCHES = (1, 64)


def render() -> None:
    st.title("Compare runs")
    store = session.store()
    records = _selection(store)
    if not records:
        _empty_state()
        return
    if datasets_differ(records):
        names = ", ".join(sorted({str(r.config.get("dataset")) for r in records}))
        st.warning(f"These runs use different datasets ({names}): their accuracies and latencies are not comparable "
                   "with one another.", icon=":material/warning:")
    active = any(r.active for r in records)
    st.fragment(_curves, run_every=POLL_S if active else None)([r.id for r in records], active)
    _table(store, records)
    _differences(records)
    _over_seeds(store, records)


# --- which runs -------------------------------------------------------------------------------------------------


def _label(record: RunRecord) -> str:
    return f"{record.name} ({record.id})" if record.name else record.id


def _selection(store: Store) -> list[RunRecord]:
    """The runs picked, in the order picked. A new `?runs=` decides the selection; the picker then
    keeps the URL in step."""
    records = {r.id: r for r in store.list_runs(limit=500)}
    raw = st.query_params.get("runs", "")
    requested = list(dict.fromkeys(r.strip() for r in raw.split(",") if r.strip()))
    missing = []
    for run_id in requested:
        if run_id not in records:
            try:
                records[run_id] = store.get_run(run_id)
            except RunNotFound:
                missing.append(run_id)
    if missing:
        st.warning(f"Not in this store (deleted, or a malformed id): {', '.join(missing)}", icon=":material/warning:")
    if st.session_state.get("_kdlab_cmp_query") != raw:
        st.session_state["_kdlab_cmp_query"] = raw
        st.session_state["cmp_runs"] = [r for r in requested if r in records]
    else:  # a run deleted meanwhile leaves the selection
        st.session_state["cmp_runs"] = [r for r in st.session_state.get("cmp_runs", []) if r in records]
    labels = {run_id: _label(record) + f" · {record.config.get('dataset')} · {record.status}"
              for run_id, record in records.items()}
    left, right = st.columns([3, 1], vertical_alignment="bottom")
    selected = left.multiselect("Runs", list(records), format_func=labels.get, key="cmp_runs",
                                placeholder="Choose runs to compare")
    sweeps = store.list_sweeps()
    if sweeps:
        names = {s["sweep_id"]: f"{s.get('name') or s['sweep_id']} ({s.get('size', '?')} runs)" for s in sweeps}
        right.selectbox("Add a sweep's runs", list(names), index=None, format_func=names.get, key="cmp_sweep",
                        placeholder="Add a sweep's runs", on_change=_add_sweep, label_visibility="collapsed")
    query = ",".join(selected)
    if query != raw:
        if query:
            st.query_params["runs"] = query
        else:
            st.query_params.pop("runs", None)
        st.session_state["_kdlab_cmp_query"] = query
    return [records[r] for r in selected]


def _add_sweep() -> None:
    sweep_id = st.session_state.get("cmp_sweep")
    if sweep_id:
        ids = [r.id for r in reversed(session.store().list_runs(sweep_id=sweep_id))]  # in grid order
        st.session_state["cmp_runs"] = list(dict.fromkeys([*st.session_state.get("cmp_runs", []), *ids]))
    st.session_state["cmp_sweep"] = None


def _empty_state() -> None:
    st.info("Choose runs above to compare them: their curves, final numbers and what differs in their settings. "
            "On the **Runs** page you can also select several runs and press **Compare selected**.",
            icon=":material/info:")
    st.page_link("screens/runs.py", label="Runs", icon=":material/table_rows:")


# --- curves --------------------------------------------------------------------------------------------------


def _curves(run_ids: list[str], was_active: bool) -> None:
    store = session.store()
    if was_active:
        session.keep_queue_moving_or_warn()  # start queued runs, notice dead workers
    records = []
    for run_id in run_ids:
        try:
            records.append(store.get_run(run_id))
        except RunNotFound:
            continue
    if was_active and not any(r.active for r in records):
        st.rerun()  # the last active run finished: redraw once more, then stop polling
    methods = list(dict.fromkeys(r.config.get("method") for r in records))
    names = series_order({name for _, name in store.series_names([r.id for r in records])} or {"train_loss"}, methods)
    titles = {name: series_label(name, methods) for name in names}
    if st.session_state.get("cmp_part") not in names:  # another selection recorded other series
        st.session_state["cmp_part"] = "train_loss" if "train_loss" in names else names[0]
    cols = st.columns([2, 2, 2, 3], vertical_alignment="bottom")
    part = cols[0].selectbox("Series", names, format_func=titles.get, key="cmp_part",
                             help="Any series these runs recorded: the loss and each term of their methods' "
                                  "objectives per step, the validation metrics per epoch.")
    stage = cols[1].selectbox("Stage", CURVE_STAGES, format_func=STAGE_TITLES.get, key="cmp_stage",
                              help="Student: the distilled one; baseline: the same student on hard labels alone.")
    x = cols[2].segmented_control("X axis", list(X_AXES), format_func=lambda a: "wall time" if a == "wall" else a,
                                  default="step", required=True, key="cmp_x")
    smoothing = cols[3].slider("Smoothing", 0.0, 0.99, 0.6, step=0.01, key="cmp_smoothing",
                               help="Exponential moving average of the per-step series; the raw values stay faint.")
    rows = _metric_rows(store, records, part)
    starts = {r.id: r.started for r in records}
    labels = {r.id: _label(r) for r in records}
    picked = compare_series(rows, stage, part, x=x, starts=starts)
    accuracy = compare_series(rows, stage, "val_acc", x=x, starts=starts)
    kind = series_kind(part, methods)
    left, right = st.columns(2)
    left.plotly_chart(charts.compare_figure(picked, labels, f"{titles[part]} · {STAGE_TITLES[stage]}",
                                            x_title=X_AXES[x], y_title="loss" if kind == "loss" else titles[part],
                                            smoothing=smoothing if is_step_series(part) else 0.0,
                                            percent=part in PERCENT_SERIES, markers=kind == "epoch"),
                      key="cmp_loss")
    right.plotly_chart(charts.compare_figure(accuracy, labels, f"Validation accuracy · {STAGE_TITLES[stage]}",
                                             x_title=X_AXES[x], y_title="accuracy", percent=True, markers=True),
                       key="cmp_accuracy")


def _metric_rows(store: Store, records: list[RunRecord], part: str) -> list[RunMetricRow]:
    """The curves' rows; read once per session while every run has finished (they cannot change then)."""
    ids, names = [r.id for r in records], [part, "val_acc"]
    if any(r.active for r in records):
        return store.metrics_for(ids, names)
    key = (part, *((r.id, r.ended) for r in records))
    memo = st.session_state.get("_kdlab_cmp_rows")
    if memo is None or memo[0] != key:
        memo = st.session_state["_kdlab_cmp_rows"] = (key, store.metrics_for(ids, names))
    return memo[1]


# --- final numbers -----------------------------------------------------------------------------------------


def _latency(records: list[RunRecord]) -> dict[tuple[str, str, int], float]:
    """Seconds per forward pass by (arch, dataset, batch), for the datasets whose shape is known."""
    out = {}
    for record in records:
        dataset = record.config.get("dataset")
        info = CATALOGUE.get(dataset)
        if info is None:  # imagefolder: the shape is known only to the worker that read the images
            continue
        for role in ("teacher", "student"):
            arch = (record.config.get(role) or {}).get("arch")
            for batch in LATENCY_BATCHES:
                if arch and (arch, dataset, batch) not in out:
                    try:
                        out[(arch, dataset, batch)] = session.latency_s(arch, info.input_shape, info.num_classes, batch)
                    except (KDError, ValueError, RuntimeError):
                        pass
    return out


TABLE_COLUMNS = {
    "run_id": st.column_config.TextColumn("Run", pinned=True),
    "name": "Name",
    "status": "Status",
    "dataset": "Dataset",
    "teacher": "Teacher",
    "student": "Student",
    "temperature": st.column_config.NumberColumn("T", format="%g"),
    "teacher_test_acc": st.column_config.NumberColumn("Teacher acc", format="percent", help="test accuracy"),
    "student_test_acc": st.column_config.NumberColumn("Student acc", format="percent", help="test accuracy"),
    "baseline_test_acc": st.column_config.NumberColumn(
        "Baseline acc", format="percent", help="test accuracy of the student trained on hard labels alone"),
    "gap_closed": st.column_config.NumberColumn("Gap closed", format="percent",
                                                help="(student − baseline) / (teacher − baseline); empty when the "
                                                     "teacher did not beat the baseline"),
    "best_epoch": st.column_config.NumberColumn("Best epoch", help="the student's epoch with the best validation "
                                                                   "accuracy (its weights are the ones kept)"),
    "teacher_params": st.column_config.NumberColumn("Teacher params", format="localized"),
    "student_params": st.column_config.NumberColumn("Student params", format="localized"),
    "student_size_mb": st.column_config.NumberColumn("Student MB", format="%.4f", help="float32 weights"),
    "compression": st.column_config.NumberColumn("Compression", format="%.1f×", help="teacher params / student params"),
    "student_latency_ms_b1": st.column_config.NumberColumn("Student ms @1", format="%.3f"),
    "student_latency_ms_b64": st.column_config.NumberColumn("Student ms @64", format="%.3f"),
    "teacher_latency_ms_b1": st.column_config.NumberColumn("Teacher ms @1", format="%.3f"),
    "teacher_latency_ms_b64": st.column_config.NumberColumn("Teacher ms @64", format="%.3f"),
    "speedup_b64": st.column_config.NumberColumn("Speed-up @64", format="%.1f×",
                                                 help="teacher latency / student latency at batch 64"),
    "wall_s": st.column_config.NumberColumn("Wall time", format="%.1f s"),
}

ACCURACY_COLUMNS = ["run_id", "name", "status", "dataset", "teacher", "student", "temperature", "teacher_test_acc",
                    "student_test_acc", "baseline_test_acc", "gap_closed", "best_epoch", "wall_s"]
SPEED_COLUMNS = ["run_id", "teacher_params", "student_params", "compression", "student_size_mb",
                 "student_latency_ms_b1", "teacher_latency_ms_b1", "student_latency_ms_b64", "teacher_latency_ms_b64",
                 "speedup_b64"]


def _table(store: Store, records: list[RunRecord]) -> None:
    st.subheader("Final numbers", divider="gray")
    with st.spinner("Measuring inference latency on this machine…"):
        latency = _latency(records)
    frame = pd.DataFrame(comparison_rows(records, latency=latency))
    for key, columns in (("cmp_accuracy_table", ACCURACY_COLUMNS), ("cmp_speed_table", SPEED_COLUMNS)):
        st.dataframe(frame, hide_index=True, key=key, column_order=columns, column_config=TABLE_COLUMNS)
    st.caption("Latency: median milliseconds per forward pass on this machine's CPU, at batch 1 and 64, in eval mode "
               "(measured once per architecture and data shape). Accuracies are on each run's test split.")
    buttons = st.container(horizontal=True)
    buttons.download_button("Table as CSV", frame.to_csv(index=False), file_name="comparison.csv", mime="text/csv",
                            icon=":material/download:", key="cmp_table_csv", on_click="ignore")
    buttons.download_button("Metrics as CSV", _metrics_csv(store.home, [r.id for r in records]),
                            file_name="metrics.csv", mime="text/csv", icon=":material/download:",
                            key="cmp_metrics_csv", on_click="ignore",
                            help="Every metric row of these runs, every loss term included: "
                                 + ", ".join(METRIC_COLUMNS) + ".")


def _metrics_csv(home: Path, run_ids: list[str]):
    """The metrics export, built only when asked for (on Streamlit's download thread: its own connection)."""
    def build() -> str:
        store = Store(home)
        try:
            return pd.DataFrame(store.metrics_for(run_ids), columns=METRIC_COLUMNS).to_csv(index=False)
        finally:
            store.close()
    return build


# --- over seeds ------------------------------------------------------------------------------------------------


def _over_seeds(store: Store, records: list[RunRecord]) -> None:
    """Each config picked (apart from seed) over all its finished seeds in the store: distilled vs baseline
    and, from the second config on, its distilled accuracy vs the first one's, each with a verdict."""
    st.subheader("Over seeds", divider="gray")
    groups = config_groups(records, store.list_runs(status="done"))
    rows = []
    for group in groups:
        seeds, versus = group["seeds"], group["versus_first"]
        rows.append({"config": group["label"], "seeds": seeds["n"],
                     "distilled": format_ci(seeds["distilled_mean"], seeds["distilled_ci95"]),
                     "baseline": format_ci(seeds["baseline_mean"], seeds["baseline_ci95"]),
                     "difference": format_difference(seeds), "verdict": seeds["text"],
                     "versus_first": "" if versus is None else versus.text})
    first = groups[0]["label"] if groups else ""
    columns = ["config", "seeds", "distilled", "baseline", "difference", "verdict"]
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="cmp_seeds",
                 column_order=columns + (["versus_first"] if len(groups) > 1 else []), column_config={
                     "config": st.column_config.TextColumn("Config", pinned=True,
                                                           help="the settings on which the configs picked differ"),
                     "seeds": st.column_config.NumberColumn("Seeds", help="finished runs of this config, one per seed"),
                     "distilled": st.column_config.TextColumn("Distilled (%)", help="mean ± 95% t-interval"),
                     "baseline": st.column_config.TextColumn("Baseline (%)", help="mean ± 95% t-interval"),
                     "difference": st.column_config.TextColumn("Distilled − baseline (points)"),
                     "verdict": st.column_config.TextColumn("Distilled vs baseline", width="large"),
                     "versus_first": st.column_config.TextColumn(f"Distilled vs {first}", width="large",
                                                                 help="paired by seed where the configs share seeds")})
    st.caption("Every finished run of each config in this store counts, one per seed, not only the runs picked. "
               + verdicts.RULE)
    have = min((g["seeds"]["n"] for g in groups), default=0)
    verdicts.repeat_control([g["run"].id for g in groups], have, "cmp_more", "each config picked")


# --- what differs ------------------------------------------------------------------------------------------------


def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _differences(records: list[RunRecord]) -> None:
    st.subheader("Settings that differ", divider="gray")
    if len(records) < 2:
        st.caption("Choose a second run to see how their settings differ.")
        return
    diff = config_diff(records)
    if not diff:
        st.caption("These runs share every setting (their names aside).")
        return
    frame = pd.DataFrame({key: [_cell(value) for value in values] for key, values in diff.items()},
                         index=pd.Index([_label(r) for r in records], name="run"))
    st.dataframe(frame, key="cmp_diff")


if __name__ == "__main__":
    render()
