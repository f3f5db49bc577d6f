"""Instructor: run the room. Open or close it, the per-run budget, the challenge and its reveal, the room
sweep, the room's predictions against their outcomes, and a reset.

Only the instructor's navigation lists this page, and every action here is checked again by the room
(`Room.set_open`, `set_challenge`, … refuse anyone else): the page is not the permission check.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import session
from app.text import plain
from app.workshop import access, lessons, policy
from app.workshop.leaderboard import predictions_vs_outcomes
from app.workshop.room import Challenge
from kdcore.config import RunConfig
from kdcore.errors import KDError
from kdcore.model_names import ARCH_NAMES
from kdcore.store import ACTIVE


def render() -> None:
    st.title("Instructor")
    actor = access.actor()
    if not actor.is_instructor:
        st.error("Only the instructor can open this page.")
        return
    room = access.room()
    _room_state(room, actor)
    _challenge(room, actor)
    _room_sweep(room, actor)
    _predictions(room)
    _reset(room, actor)


def _act(action, message: str) -> None:
    try:
        action()
    except KDError as exc:
        st.error(str(exc))
    else:
        st.toast(message)
        st.rerun()


def _room_state(room, actor) -> None:
    st.subheader("The room", divider="gray")
    store = session.store()
    participants = room.participants()
    is_open = room.is_open()
    cols = st.columns([1, 1, 2], vertical_alignment="bottom")
    cols[0].metric("Participants", len(participants))
    cols[1].metric("Runs training or queued", store.count_runs(ACTIVE))
    label = "Close the room" if is_open else "Open the room"
    if cols[2].button(label, icon=":material/lock:" if is_open else ":material/lock_open:", key="in_open"):
        _act(lambda: room.set_open(actor, not is_open), "Room closed" if is_open else "Room opened")
    st.caption("Open: participants can join and start runs." if is_open else
                "Closed: no one new can join, and participants cannot start runs.")
    with st.form("in_budget"):
        budget = st.number_input("Budget per run (example-epochs: epochs × training examples)", min_value=1, step=10_000,
                                 value=room.budget(), key="in_budget_value",
                                 help="The teacher's epochs, the student's (twice with a baseline) and fine-tuning, "
                                      f"each over the training set. The teaching preset needs "
                                      f"{policy.run_budget(RunConfig().to_dict()):,}.")
        if st.form_submit_button("Set the budget"):
            _act(lambda: room.set_budget(actor, int(budget)), "Budget set")
    recent = store.list_runs(limit=12)
    if recent:
        with st.expander("Latest runs (open one to cancel or delete it)", expanded=True):
            for record in recent:
                st.page_link("screens/live.py", query_params={"run": record.id},
                             label=f"{record.id} · {plain(record.owner) or 'no owner'} · {record.status}"
                                   + (f" · {plain(record.name)}" if record.name else ""))
    if participants:
        with st.expander(f"Who is here ({len(participants)})"):
            st.dataframe(pd.DataFrame([{"name": m.name, "joined": pd.Timestamp(m.joined, unit="s")}
                                       for m in participants]), hide_index=True)


def _challenge(room, actor) -> None:
    st.subheader("Challenge", divider="gray")
    current = room.challenge() or Challenge()
    with st.form("in_challenge"):
        title = st.text_input("Title", value=current.title, max_chars=policy.NAME_MAX_CHARS)
        cols = st.columns(3)
        datasets = policy.allowed_datasets()
        dataset = cols[0].selectbox("Dataset", datasets, index=datasets.index(current.dataset)
                                    if current.dataset in datasets else 0)
        teacher = cols[1].selectbox("Teacher", ARCH_NAMES, index=ARCH_NAMES.index(current.teacher_arch)
                                    if current.teacher_arch in ARCH_NAMES else 0)
        teacher_epochs = cols[2].number_input("Teacher epochs", min_value=1, max_value=200, value=current.teacher_epochs)
        cols = st.columns(2)
        max_params = cols[0].number_input("Student parameters at most", min_value=1, step=1000,
                                          value=current.max_student_params)
        budget = cols[1].number_input("Budget per run (example-epochs)", min_value=1, step=10_000, value=current.budget)
        started = st.form_submit_button("Start the challenge" if room.challenge() is None else "Restart the challenge",
                                        type="primary",
                                        help="Runs submitted from now on compete; the leaderboard starts empty.")
    if started:
        _act(lambda: room.set_challenge(actor, Challenge(title=title, dataset=dataset, teacher_arch=teacher,
                                                         teacher_epochs=int(teacher_epochs),
                                                         max_student_params=int(max_params), budget=int(budget))),
             "Challenge started")
    challenge = room.challenge()
    if challenge is not None:
        revealed = challenge.revealed
        if st.button("Hide test accuracy" if revealed else "Reveal test accuracy", key="in_reveal",
                     icon=":material/visibility_off:" if revealed else ":material/visibility:"):
            _act(lambda: room.reveal_test_accuracy(actor, not revealed), "Test accuracy " +
                 ("hidden" if revealed else "revealed"))
        st.page_link("screens/leaderboard.py", label="Open the leaderboard", icon=":material/leaderboard:")


def _room_sweep(room, actor) -> None:
    st.subheader("Room sweep", divider="gray")
    sweep = room.room_sweep()
    if sweep is not None:
        runs = session.store().list_runs(sweep_id=sweep["sweep_id"])
        st.caption(f"{sweep['sweep_id']}: {len(runs)} runs so far over T = "
                   f"{', '.join(f'{v:g}' for v in sweep['grid']['temperature'])}.")
        st.page_link("screens/room_sweep.py", label="Open the room sweep", icon=":material/ssid_chart:")
    with st.form("in_sweep"):
        text = st.text_input("Temperatures", value=", ".join(f"{t:g}" for t in lessons.ROOM_SWEEP_TEMPERATURES),
                             help="Each participant gets one to run; with more participants than values, the next "
                                  "ones repeat them with another seed.")
        go = st.form_submit_button("Start a room sweep" if sweep is None else "Start a new room sweep")
    if go:
        def start() -> None:
            values = [float(v) for v in text.replace(" ", "").split(",") if v]
            if not values:
                raise KDError("give at least one temperature")
            base = RunConfig().replace(**lessons.LESSON_PRESET, name="room sweep").to_dict()
            room.start_room_sweep(actor, base, {"temperature": values})

        try:
            _act(start, "Room sweep started")
        except ValueError:
            st.error("Temperatures are numbers separated by commas, e.g. 1, 2, 4, 8")


def _predictions(room) -> None:
    st.subheader("Predictions: alone vs distilled", divider="gray")
    predictions = room.predictions(lessons.ALONE_VS_DISTILLED)
    if not predictions:
        st.caption("No predictions yet (lesson 3).")
        return
    store = session.store()
    records = {}
    for p in predictions:
        if p.get("run_id"):
            try:
                records[p["run_id"]] = store.get_run(p["run_id"])
            except KDError:
                pass
    rows = predictions_vs_outcomes(predictions, records)
    st.dataframe(pd.DataFrame(rows), hide_index=True, column_config={
        "name": "Participant", "predicted": st.column_config.NumberColumn("Predicted (points)", format="%+.1f"),
        "outcome": st.column_config.NumberColumn("Measured (points)", format="%+.1f"),
        "error": st.column_config.NumberColumn("Prediction − outcome", format="%+.1f"), "status": "Run"})
    measured = [r for r in rows if r["outcome"] is not None]
    if measured:
        mean_error = sum(abs(r["error"]) for r in measured) / len(measured)
        st.caption(f"{len(measured)} of {len(rows)} runs measured; mean absolute error of the predictions "
                   f"{mean_error:.1f} points.")


def _reset(room, actor) -> None:
    st.subheader("Reset", divider="gray")
    with st.popover("Reset the room", icon=":material/restart_alt:"):
        st.markdown("Cancels every active run and forgets the participants (they join again), their predictions, "
                    "the challenge and the room sweep.")
        delete_runs = st.checkbox("Also delete every run in the store", key="in_reset_delete")
        if st.button("Reset now", type="primary", key="in_reset"):
            _act(lambda: room.reset(actor, session.runner(), delete_runs=delete_runs), "Room reset")


if __name__ == "__main__":
    render()
