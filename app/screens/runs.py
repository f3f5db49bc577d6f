"""Runs: every run in the store, filterable, with open / cancel / resume / delete / copy (`?run=run-…` selects one).

The table refreshes itself while any run is active. Actions act on the run id that was selected,
never on a row position, so a run added or deleted by someone else cannot redirect a click.
"""

from __future__ import annotations

import hashlib
import time

import pandas as pd
import streamlit as st

from app import session
from app.read_model.progress import format_duration
from app.read_model.runs import run_row
from app.text import plain
from app.workshop import access
from kdcore.errors import KDError, RunNotFound
from kdcore.store import ACTIVE, STATUSES

REFRESH_S = 2.0
STATUS_LABELS = {"queued": "○ queued", "starting": "◔ starting", "running": "▶ running", "done": "✓ done",
                 "failed": "✗ failed", "cancelled": "■ cancelled"}  # plain glyphs: emoji fonts are not everywhere


def render() -> None:
    requested = st.query_params.get("run")  # `runs?run=run-…` opens with that run selected, once
    if requested:
        st.session_state["_kdlab_runs_selected"] = requested
        del st.query_params["run"]
    title, refresh = st.columns([5, 1], vertical_alignment="bottom")
    title.title("Runs")
    # a click reruns the whole page, so polling starts again if someone else started a run meanwhile
    refresh.button("Refresh", icon=":material/refresh:", type="tertiary", width="stretch")
    active = session.store().count_runs(ACTIVE) > 0
    st.fragment(_panel, run_every=REFRESH_S if active else None)(active)


def _panel(was_active: bool) -> None:
    store = session.store()
    if was_active:
        session.keep_queue_moving_or_warn()  # start queued runs, notice dead workers
    records = store.list_runs()
    if was_active and not any(r.active for r in records):
        st.rerun()  # the last active run finished: redraw once more, then stop polling
    if not records:
        st.info("No runs yet. Start one on the **New run** page.")
        st.page_link("screens/new_run.py", label="New run", icon=":material/add_circle:")
        return
    frame = _frame(records)
    shown = _filter(frame)
    selected = _table(shown)
    _compare(shown)
    record = next((r for r in records if r.id == selected), None)
    if record is None:
        st.caption("Select a row to open, cancel, resume, delete or copy that run.")
        return
    _actions(record)


def _frame(records) -> pd.DataFrame:
    now = time.time()
    frame = pd.DataFrame([run_row(r, now) for r in records])
    frame["link"] = "live?run=" + frame["run"]
    for column in ("teacher_acc", "student_acc", "baseline_acc"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce") * 100
    frame["wall"] = frame["wall_s"].map(format_duration)
    frame["state"] = frame["status"].map(STATUS_LABELS)
    frame["created"] = pd.to_datetime(frame["created"], unit="s", utc=True).dt.tz_convert(None)
    return frame


def _filter(frame: pd.DataFrame) -> pd.DataFrame:
    cols = st.columns([2, 2, 2])
    text = cols[0].text_input("Search", placeholder="id, name or architecture", key="runs_search",
                              persist_state="session")
    statuses = cols[1].multiselect("Status", list(STATUSES), key="runs_status", persist_state="session")
    datasets = cols[2].multiselect("Dataset", sorted(frame["dataset"].unique()), key="runs_dataset")
    keep = pd.Series(True, index=frame.index)
    if text.strip():
        needle = text.strip().lower()
        haystack = (frame["run"] + " " + frame["name"] + " " + frame["models"]).str.lower()
        keep &= haystack.str.contains(needle, regex=False)
    if statuses:
        keep &= frame["status"].isin(statuses)
    if datasets:
        keep &= frame["dataset"].isin(datasets)
    return frame[keep].reset_index(drop=True)


def _table(frame: pd.DataFrame) -> str | None:
    """Draw the table; returns the selected run's id.

    The table's key changes whenever its rows do, so a selected row index always refers to the
    rows the user saw; the selection is carried over by run id.
    """
    ids = list(frame["run"])
    key = "runs_table_" + hashlib.sha1(" ".join(ids).encode()).hexdigest()[:12]
    selected = st.session_state.get("_kdlab_runs_selected")
    default = {"selection": {"rows": [ids.index(selected)] if selected in ids else [], "columns": []}}
    event = st.dataframe(
        frame, key=key, on_select="rerun", selection_mode="single-row", selection_default=default, hide_index=True,
        column_order=["link", "name", *(["owner"] if frame["owner"].astype(bool).any() else []), "state", "dataset",
                      "models", "T", "weights", "teacher_acc", "student_acc",
                      "baseline_acc", "wall", "created"],
        column_config={
            "link": st.column_config.LinkColumn("Run", display_text=r"live\?run=(.*)", help="Open the live page"),
            "name": "Name",
            "owner": "Owner",
            "state": st.column_config.TextColumn("Status", width="small"),
            "dataset": "Dataset",
            "models": "Teacher → student",
            "T": st.column_config.NumberColumn("T", format="%g", width="small"),
            "weights": "Loss weights",
            "teacher_acc": st.column_config.NumberColumn("Teacher acc", format="%.1f%%", help="test accuracy"),
            "student_acc": st.column_config.NumberColumn("Student acc", format="%.1f%%", help="test accuracy"),
            "baseline_acc": st.column_config.NumberColumn("Baseline acc", format="%.1f%%", help="test accuracy"),
            "wall": "Wall time",
            "created": st.column_config.DatetimeColumn("Created (UTC)", format="YYYY-MM-DD HH:mm"),
        },
    )
    rows = event.selection.rows
    selected = ids[rows[0]] if rows and rows[0] < len(ids) else None
    st.session_state["_kdlab_runs_selected"] = selected
    return selected


def _compare(frame: pd.DataFrame) -> None:
    """Several runs, picked by id, opened side by side on the Compare page (`compare?runs=id1,id2`)."""
    ids = list(frame["run"])
    labels = {run: f"{name} ({run})" if name else run for run, name in zip(frame["run"], frame["name"])}
    chosen = [r for r in st.session_state.get("runs_compare", []) if r in labels]  # the filter may hide some
    st.session_state["runs_compare"] = chosen
    cols = st.columns([4, 1], vertical_alignment="bottom")
    chosen = cols[0].multiselect("Compare runs", ids, format_func=labels.get, key="runs_compare",
                                 placeholder="Choose runs to compare side by side")
    if cols[1].button("Compare selected", icon=":material/compare_arrows:", key="runs_compare_go", width="stretch",
                      disabled=not chosen):
        st.switch_page("screens/compare.py", query_params={"runs": ",".join(chosen)})


def _actions(record) -> None:
    st.markdown(f"**{record.id}**" + (f" · {plain(record.name)}" if record.name else "")
                + (f" · by {plain(record.owner)}" if record.owner else "") + f" · {record.status}")
    if record.error and record.status == "failed":
        st.caption(f"Failed: {record.error}")
    mine = access.can_change(record)  # in a workshop, someone else's run is read-only (access checks it again)
    if not mine:
        st.caption("Someone else's run: you can open and compare it, not change it.")
    cols = st.columns([1, 1, 1, 1, 1.7])
    if cols[0].button("Open", icon=":material/monitoring:", width="stretch", key="runs_open"):
        st.switch_page("screens/live.py", query_params={"run": record.id})
    if cols[1].button("Cancel", icon=":material/stop:", width="stretch", key="runs_cancel",
                      disabled=not record.active or not mine):
        _do(lambda: access.cancel(record.id), f"Cancelling {record.id}")
    if cols[2].button("Resume", icon=":material/play_arrow:", width="stretch", key="runs_resume",
                      disabled=record.status not in ("failed", "cancelled") or not mine):
        _do(lambda: access.resume(record.id), f"Resumed {record.id}", rerun=True)
    with cols[3].popover("Delete", icon=":material/delete:", width="stretch",
                         disabled=record.status in ("starting", "running") or not mine):
        st.markdown(f"Delete **{record.id}**, its metrics and its checkpoints? This cannot be undone.")
        if st.button("Delete permanently", type="primary", key="runs_delete"):
            _do(lambda: access.delete(record.id), f"Deleted {record.id}", rerun=True)
    if cols[4].button("New run from this config", icon=":material/content_copy:", width="stretch", key="runs_copy"):
        st.session_state.pop("_kdlab_form_from", None)  # fill the form again, even from the same run
        st.switch_page("screens/new_run.py", query_params={"from": record.id})


def _do(action, message: str, *, rerun: bool = False) -> None:
    try:
        action()
    except (KDError, RunNotFound) as exc:
        st.error(str(exc))
        return
    st.toast(message)
    if rerun:
        st.rerun()


if __name__ == "__main__":
    render()
