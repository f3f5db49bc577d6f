"""Sweeps: queue a grid of runs that share one teacher, and watch their results fill in.

The form builds the same thing as `python -m kdcore sweep --set … --grid key=v1,v2 …`: a small base
config and a grid, expanded and validated by `kdcore.sweep` before anything is queued (a bad value
refuses the whole sweep and is named). A sweep larger than CONFIRM_ABOVE runs needs a tick beside
its estimated time. `?sweep=sweep-…` shows one sweep: progress, a heatmap of a metric over two swept
settings (mean over seeds, spread on hover), accuracy against temperature with error bars and the
baseline for reference, and its results as a table and CSV. It refreshes while a run of it is active.
"""

from __future__ import annotations

import math
import shlex
from typing import Any

import pandas as pd
import streamlit as st

from app import charts, form, session, verdicts
from app.workshop import access
from app.read_model.progress import format_duration
from app.read_model.seeds import cell_verdicts, format_ci, format_difference, seeds_present
from app.read_model.sweeps import (ACCURACY_METRICS, SWEEP_METRICS, aggregate, axis_values, dotted_value,
                                   sweep_progress, sweep_rows, typical_run_s)
from kdcore.config import RunConfig
from kdcore.dataset_names import DATASET_NAMES
from kdcore.errors import ConfigError, KDError, RunNotFound
from kdcore.model_names import ARCH_NAMES
from kdcore.runner import max_runs
from kdcore.store import Store
from kdcore.sweep import CONFIRM_ABOVE, expand, parse_grid, submit_sweep

POLL_S = 2.0
GRID_KEYS = ["temperature", "weights.kd", "weights.ce", "seed", "epochs", "lr", "batch_size", "student.arch",
             "finetune_epochs", "weight_decay", "teacher.epochs"]
GRID_ROWS = [("temperature", "1, 2, 4, 8"), ("seed", "0, 1"), ("weights.kd", "")]  # the form's starting grid
MAX_RUNS = 10_000  # a grid beyond this is surely a typo; expanding it would stall the page on every keystroke


def render() -> None:
    st.title("Sweeps")
    store = session.store()
    sweeps = [s for s in store.list_sweeps() if s.get("kind") != "tune"]  # studies have their own page (Tune)
    with st.expander("New sweep", expanded=not sweeps, icon=":material/add_circle:"):
        _new_sweep(store)
    if not sweeps:
        st.info("No sweeps yet. Queue one above, or from the command line, e.g. "
                "`python -m kdcore sweep --set dataset=digits --grid temperature=1,4,16 --grid seed=0,1`.",
                icon=":material/info:")
        return
    sweep_id = _pick_sweep(store, sweeps)
    if sweep_id is None:
        return
    active = any(r.active for r in store.list_runs(sweep_id=sweep_id))
    st.fragment(_sweep_panel, run_every=POLL_S if active else None)(sweep_id, active)


# --- a new sweep ------------------------------------------------------------------------------------------------


def _new_sweep(store: Store) -> None:
    base, name = _base_form()
    st.markdown("**Grid.** One setting a row, its values separated by commas; the sweep is every combination. "
                "Runs that differ only in temperature, loss weights or seed share one teacher and train together.")
    specs = []
    for i, (default_key, default_values) in enumerate(GRID_ROWS):
        st.session_state.setdefault(f"sw_key_{i}", default_key)
        st.session_state.setdefault(f"sw_values_{i}", default_values)
        cols = st.columns([1, 2])
        key = cols[0].selectbox(f"Setting {i + 1}", GRID_KEYS, key=f"sw_key_{i}", accept_new_options=True,
                                help="Any dotted config key, as `--set` takes it.")
        values = cols[1].text_input(f"Values {i + 1}", key=f"sw_values_{i}", placeholder="e.g. 0.1, 0.5, 0.9")
        if key and values.strip():
            specs.append(f"{key}={values.strip()}")
    if not specs:
        st.info("Give at least one setting some values to sweep.")
        return
    grid, runs, errors = _validate(base, specs)
    for message in errors:
        st.error(message, icon=":material/error:")
    ready = not errors
    if ready:
        ready = _size_and_time(store, runs)
    if st.button(f"Queue {len(runs)} runs" if runs else "Queue the sweep", type="primary", disabled=not ready,
                 icon=":material/playlist_add:", key="sw_queue"):
        try:
            sweep_id, _ = submit_sweep(session.runner(), base, grid, runs, name=name)
        except KDError as exc:
            st.error(f"Could not queue the sweep: {exc}")
            return
        st.query_params["sweep"] = sweep_id
        st.rerun()
    command = ["python", "-m", "kdcore", "sweep", *form.cli_sets(base)]
    for spec in specs:
        command += ["--grid", spec.replace(" ", "")]
    if name:
        command += ["--name", name]
    st.caption("The same from the command line:")
    st.code(shlex.join(command), language="bash", wrap_lines=True)


def _base_form() -> tuple[dict[str, Any], str]:
    """The settings every run of the sweep shares (the rest are the engine's defaults), and a name."""
    preset = RunConfig()
    cols = st.columns(4)
    dataset = cols[0].selectbox("Dataset", DATASET_NAMES, index=DATASET_NAMES.index(preset.dataset), key="sw_dataset")
    teacher = cols[1].selectbox("Teacher", ARCH_NAMES, index=ARCH_NAMES.index(preset.teacher.arch),
                                key="sw_teacher_arch")
    teacher_epochs = cols[2].number_input("Teacher epochs", 1, 10_000, preset.teacher.epochs, key="sw_teacher_epochs")
    student = cols[3].selectbox("Student", ARCH_NAMES, index=ARCH_NAMES.index(preset.student.arch),
                                key="sw_student_arch")
    cols = st.columns([1, 1, 2], vertical_alignment="bottom")
    epochs = cols[0].number_input("Student epochs", 1, 10_000, preset.epochs, key="sw_epochs")
    baseline = cols[1].toggle("Baselines", value=True, key="sw_baseline",
                              help="Also train each student on hard labels alone: the reference the sweep must beat.")
    name = cols[2].text_input("Sweep name (optional)", key="sw_name", max_chars=100)
    base = {"dataset": dataset, "teacher": {"arch": teacher, "epochs": int(teacher_epochs)},
            "student": {"arch": student}, "epochs": int(epochs), "baseline": baseline}
    return base, name.strip()


def _validate(base: dict[str, Any], specs: list[str]) -> tuple[dict, list, list[str]]:
    """The grid and its validated runs, or the reasons there are none (a bad value is named)."""
    try:
        grid = parse_grid(specs)
        size = math.prod(len(values) for values in grid.values())
        if size > MAX_RUNS:
            return {}, [], [f"The grid has {size:,} combinations; a sweep can have at most {MAX_RUNS:,} runs."]
        runs = expand(base, grid)
    except ConfigError as exc:  # RunConfig's own checks, the architecture-fits-dataset one included
        return {}, [], [str(exc).replace("--grid ", "")]
    return grid, runs, []


def _size_and_time(store: Store, runs: list) -> bool:
    """Say how many runs and how long; a sweep over CONFIRM_ABOVE runs must be confirmed. Returns whether
    the sweep may be queued."""
    per_run, source = typical_run_s(store.list_runs(status="done", limit=200), runs[0][1].to_dict())
    try:
        slots = max_runs(store)
    except KDError:
        slots = 1
    total = per_run * len(runs) / slots
    teachers = len({c.teacher_key() for _, c in runs})
    text = (f"**{len(runs)} runs**, {teachers} teacher{'s' if teachers != 1 else ''} · estimated "
            f"**≈ {format_duration(total)}** ({format_duration(per_run)} a run, {source}; {slots} at a time; "
            "runs that can train together in one worker finish sooner)")
    if len(runs) <= CONFIRM_ABOVE:
        st.markdown(text)
        return True
    st.warning(text + f". That is more than {CONFIRM_ABOVE} runs.", icon=":material/warning:")
    return st.checkbox(f"Yes, queue all {len(runs)} runs (≈ {format_duration(total)})", key="sw_confirm")


# --- one sweep ------------------------------------------------------------------------------------------------


def _sweep_label(sweep: dict[str, Any]) -> str:
    grid = " × ".join(sweep.get("grid") or {})
    return f"{sweep.get('name') or 'unnamed'} · {sweep['sweep_id']} · {sweep.get('size', '?')} runs · {grid}"


def _pick_sweep(store: Store, sweeps: list[dict[str, Any]]) -> str | None:
    ids = [s["sweep_id"] for s in sweeps]
    requested = st.query_params.get("sweep")
    if requested and requested not in ids:
        st.warning(f"There is no sweep **{requested}** in this store. Showing the newest one.",
                   icon=":material/warning:")
        requested = None
    if requested and st.session_state.get("_kdlab_sweep_query") != requested:  # a new link decides
        st.session_state["_kdlab_sweep_query"] = st.session_state["sw_pick"] = requested
    if st.session_state.get("sw_pick") not in ids:
        st.session_state["sw_pick"] = ids[0]
    labels = {s["sweep_id"]: _sweep_label(s) for s in sweeps}
    choice = st.selectbox("Sweep", ids, format_func=labels.get, key="sw_pick")
    if st.query_params.get("sweep") != choice:
        st.query_params["sweep"] = st.session_state["_kdlab_sweep_query"] = choice
    return choice


def _sweep_panel(sweep_id: str, was_active: bool) -> None:
    store = session.store()
    if was_active:
        session.keep_queue_moving_or_warn()  # start queued runs, notice dead workers
    try:
        sweep = store.get_sweep(sweep_id)
    except RunNotFound as exc:
        st.warning(str(exc))
        return
    records = list(reversed(store.list_runs(sweep_id=sweep_id)))  # in grid order
    if was_active and not any(r.active for r in records):
        st.rerun()  # the last run finished: redraw once more, then stop polling
    keys = list(sweep.get("grid") or {})
    rows = sweep_rows(records, keys)
    _progress(sweep, records)
    metric = st.selectbox("Metric", list(SWEEP_METRICS), format_func=SWEEP_METRICS.get, key="sw_metric")
    plotted = [k for k in keys if k != "seed"]
    if not plotted:
        _seed_only(rows, metric)
    else:
        left, right = st.columns(2)
        with left:
            _heatmap(rows, keys, plotted, metric)
        with right:
            _temperature_lines(rows, plotted)
    _results(records, rows, keys)
    _verdicts(sweep_id, records, keys)


def _progress(sweep: dict[str, Any], records: list) -> None:
    counts = sweep_progress(records)
    config = records[0].config if records else sweep.get("base", {})
    swept = sweep.get("grid") or {}

    def shown(key: str) -> str:  # a swept setting differs between runs: the grid below says how
        return "(swept)" if key in swept else str(dotted_value(config, key))

    grid = " × ".join(f"{key} ∈ {{{', '.join(map(str, values))}}}" for key, values in swept.items())
    st.caption(f"`{sweep['sweep_id']}` · **{shown('dataset')}** · teacher {shown('teacher.arch')} "
               f"({shown('teacher.epochs')} epochs) → student **{shown('student.arch')}** · {shown('epochs')} epochs"
               f" · {grid}")
    parts = [f"{counts[s]} {s}" for s in ("done", "running", "starting", "queued", "failed", "cancelled") if counts[s]]
    active = [r for r in records if r.active]
    row = st.container(horizontal=True, vertical_alignment="bottom")
    row.progress(counts["finished"] / max(counts["total"], 1),
                 text=f"{counts['finished']} of {counts['total']} runs finished · " + " · ".join(parts))
    if active and row.button("Cancel the rest", icon=":material/stop:", key="sw_cancel"):
        for record in active:
            try:
                access.cancel(record.id)  # checks who may (in a workshop this page is the instructor's)
            except KDError as exc:
                st.error(str(exc))
        st.toast(f"Cancelling {len(active)} runs")


def _heatmap(rows: list[dict], keys: list[str], plotted: list[str], metric: str) -> None:
    x_key, y_key = plotted[0], plotted[1] if len(plotted) > 1 else None
    if len(plotted) > 2:
        cols = st.columns(2)
        x_key = cols[0].selectbox("Columns", plotted, index=0, key="sw_x")
        y_key = cols[1].selectbox("Rows", [k for k in plotted if k != x_key], key="sw_y")
    cells = aggregate(rows, [x_key, y_key] if y_key else [x_key], metric)
    finished = any(row["status"] == "done" for row in rows)
    empty = (f"no finished run has a {SWEEP_METRICS[metric]}" + (" (empty when the teacher did not beat the baseline)"
                                                                 if metric == "gap_closed" else "")
             if finished else "appears as runs of the sweep finish")
    averaged = [k for k in rows[0] if k in keys and k not in (x_key, y_key)] if rows else []
    st.plotly_chart(charts.sweep_heatmap_figure(cells, x_key, axis_values(rows, x_key), y_key,
                                                axis_values(rows, y_key) if y_key else [], SWEEP_METRICS[metric],
                                                averaged_over=averaged, empty_text=empty),
                    key="sw_heatmap")


def _temperature_lines(rows: list[dict], plotted: list[str]) -> None:
    if "temperature" not in plotted:
        st.caption("Sweep the temperature to see accuracy against it here.")
        return
    other = next((k for k in plotted if k != "temperature"), None)
    metric = "student_test_acc"
    lines = []
    for value in axis_values(rows, other) if other else [None]:
        mine = [row for row in rows if other is None or row.get(other) == value]
        cells = sorted(aggregate(mine, ["temperature"], metric), key=lambda c: c["temperature"])
        if cells:
            label = f"{other} = {charts.value_label(value)}" if other else "student"
            lines.append((label, [c["temperature"] for c in cells], [c["mean"] for c in cells],
                          [c["std"] for c in cells]))
    references = []
    for name, label in (("baseline_test_acc", "baseline"), ("teacher_test_acc", "teacher")):
        cells = aggregate(rows, [], name)
        if cells:
            references.append((label, cells[0]["mean"], cells[0]["std"]))
    st.plotly_chart(charts.sweep_temperature_figure(lines, references, SWEEP_METRICS[metric]), key="sw_temperature")


def _seed_only(rows: list[dict], metric: str) -> None:
    cells = aggregate(rows, [], metric)
    if not cells:
        st.caption("The numbers appear as runs of the sweep finish.")
        return
    cell = cells[0]
    st.metric(f"{SWEEP_METRICS[metric]}, mean over {cell['n']} seeds", f"{cell['mean']:.1%}",
              help=f"standard deviation {cell['std']:.1%}")


def _verdicts(sweep_id: str, records: list, keys: list[str]) -> None:
    """Distilled vs baseline in each cell, over its seeds, with a verdict; and more seeds for every cell."""
    st.subheader("Distilled vs baseline over seeds", divider="gray")
    cells = cell_verdicts(records, keys)
    have = seeds_present([r for r in records if r.status == "done" or r.active])
    if not cells:
        st.caption("The verdicts appear as runs of the sweep finish.")
    elif all(cell["n"] < 2 for cell in cells):
        st.info("One seed per cell, so no verdicts: a difference of a point can be seed noise. Repeat the sweep "
                "with more seeds to see which differences are more than that.", icon=":material/info:")
    if cells:
        swept = [k for k in keys if k != "seed"]
        frame = pd.DataFrame([{**{k: cell[k] for k in swept}, "seeds": cell["n"],
                               "distilled": format_ci(cell["distilled_mean"], cell["distilled_ci95"]),
                               "baseline": format_ci(cell["baseline_mean"], cell["baseline_ci95"]),
                               "difference": format_difference(cell), "verdict": cell["text"]} for cell in cells])
        st.dataframe(frame, hide_index=True, key="sw_verdicts", column_config={
            "seeds": st.column_config.NumberColumn("Seeds", help="finished runs of the cell, one per seed"),
            "distilled": st.column_config.TextColumn("Distilled (%)", help="test accuracy, mean ± 95% t-interval"),
            "baseline": st.column_config.TextColumn("Baseline (%)", help="the student alone, mean ± 95% t-interval"),
            "difference": st.column_config.TextColumn("Distilled − baseline (points)",
                                                      help="mean of the per-seed differences ± its 95% t-interval"),
            "verdict": st.column_config.TextColumn("Verdict", width="large")})
        st.caption(verdicts.RULE)
    verdicts.repeat_control([sweep_id], have, "sw_more", "every cell of this sweep")


def _results(records: list, rows: list[dict], keys: list[str]) -> None:
    st.subheader("Results", divider="gray")
    frame = pd.DataFrame(rows)
    percent = {m: st.column_config.NumberColumn(SWEEP_METRICS[m], format="percent")
               for m in SWEEP_METRICS if m in ACCURACY_METRICS or m in ("gap_closed", "student_minus_baseline")}
    st.dataframe(frame, hide_index=True, key="sw_results",
                 column_config={"run_id": "Run", "status": "Status", **percent})
    buttons = st.container(horizontal=True)
    sweep_id = records[0].sweep_id if records else "sweep"
    buttons.download_button("Results as CSV", frame.to_csv(index=False), file_name=f"{sweep_id}.csv", mime="text/csv",
                            icon=":material/download:", key="sw_csv", on_click="ignore")
    if buttons.button("Compare these runs", icon=":material/compare_arrows:", key="sw_compare",
                      disabled=not records):
        st.switch_page("screens/compare.py", query_params={"runs": ",".join(r.id for r in records)})


if __name__ == "__main__":
    render()
