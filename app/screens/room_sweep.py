"""Room sweep: the instructor's sweep over T, one cell per participant, and the room's curve filling in live.

A participant's cell is handed out on first visit (`Room.cell`); "Run my cell" queues it as their run in
the room's sweep, so the worker trains the cells that are waiting together and they share one teacher.
"""

from __future__ import annotations

import html

import plotly.graph_objects as go
import streamlit as st

from app import session
from app.workshop import access
from app.workshop.leaderboard import sweep_curve
from kdcore.errors import KDError
from kdcore.store import ACTIVE

POLL_S = 2.0
KEY = "temperature"


def render() -> None:
    st.title("Room sweep")
    room = access.room()
    sweep = room.room_sweep()
    if sweep is None:
        st.info("No room sweep yet: the instructor starts one.", icon=":material/hourglass_empty:")
        return
    member = access.member()
    if member is not None and member.role == "participant":
        _my_cell(room, member, sweep)
    active = any(r.status in ACTIVE for r in session.store().list_runs(sweep_id=sweep["sweep_id"]))
    st.fragment(_curve, run_every=POLL_S if active else None)(sweep["sweep_id"])


def _my_cell(room, member, sweep) -> None:
    cell = room.cell(member)
    mine = [r for r in session.store().list_runs(sweep_id=sweep["sweep_id"], owner=member.name)]
    values = ", ".join(f"{k} = {v:g}" for k, v in cell["values"].items())
    st.markdown(f"**Your cell:** {values}" + (f" (seed {cell['seed']})" if cell["seed"] else ""))
    if mine:
        run = mine[0]
        st.caption(f"Your run {run.id} is {run.status}.")
        st.page_link("screens/live.py", label="Watch it live", icon=":material/monitoring:",
                     query_params={"run": run.id})
        return
    if st.button("Run my cell", type="primary", icon=":material/play_arrow:", key="rs_run"):
        try:
            config = room.cell_config(cell)
            run_id = access.submit(config, name=f"room sweep: {values}", sweep_id=sweep["sweep_id"])
        except KDError as exc:
            st.error(str(exc))
        else:
            st.toast(f"Queued {run_id}")
            st.rerun()


def _curve(sweep_id: str) -> None:
    records = session.store().list_runs(sweep_id=sweep_id)
    curve = sweep_curve(records, KEY)
    st.caption(f"{len(curve['points'])} run(s) finished · {curve['active']} queued or training.")
    figure = go.Figure()
    points = curve["points"]
    if points:
        figure.add_scatter(x=[p["x"] for p in points], y=[100 * p["student"] for p in points], mode="markers",
                           name="each run", marker={"size": 9, "opacity": 0.6},
                           text=[html.escape(p["owner"]) for p in points], hovertemplate="%{text}: %{y:.1f}%<extra></extra>")
    means = curve["means"]
    if means:
        figure.add_scatter(x=[m["x"] for m in means], y=[100 * m["student"] for m in means], mode="lines+markers",
                           name="distilled (mean)", line={"width": 3})
        alone = [m for m in means if m["baseline"] is not None]
        if alone:
            figure.add_scatter(x=[m["x"] for m in alone], y=[100 * m["baseline"] for m in alone], mode="lines",
                               name="student alone (mean)", line={"dash": "dash"})
    figure.update_layout(title="Room sweep: test accuracy against temperature", xaxis_title="temperature T",
                         yaxis_title="test accuracy (%)", xaxis_type="log", height=420)
    st.plotly_chart(figure, key="rs_curve")


if __name__ == "__main__":
    render()
