"""Workshop: the door of the room (join with a display name, or sign in as the instructor) and, once in,
the participant's home: who they are, where to go next, and their own runs.

Names are drawn as text (`app.text.plain`), never as Markdown. The participant's key lives in the URL,
so this page can be bookmarked; it is 24 random characters and means nothing to anyone else.
"""

from __future__ import annotations

import streamlit as st

from app import session
from app.text import plain
from app.workshop import access
from app.workshop.permissions import PermissionDenied, workshop_runner
from app.workshop.room import JoinRefused
from kdcore.owners import OWNER_MAX_CHARS
from kdcore.store import ACTIVE


def render() -> None:
    member = access.member()
    if member is None:
        _door()
    else:
        _home(member)


def _door() -> None:
    st.title("Join the workshop")
    room = access.room()
    if not room.is_open():
        st.warning("The room is closed right now. Ask the instructor to open it.", icon=":material/lock:")
    with st.form("ws_join"):
        name = st.text_input("Your display name", max_chars=OWNER_MAX_CHARS, key="ws_name",
                             help="Shown beside your runs and on the leaderboard. No account, no password.")
        joined = st.form_submit_button("Join", type="primary", icon=":material/login:", disabled=not room.is_open())
    if joined:
        try:
            access.remember(room.join(name))
        except JoinRefused as exc:
            st.error(str(exc))
        else:
            st.rerun()
    st.caption("Your place in the room is kept in this page's address: keep the tab, or bookmark it to come back.")
    with st.expander("I am the instructor", icon=":material/admin_panel_settings:"):
        with st.form("ws_instructor"):
            token = st.text_input("Instructor token", type="password", key="ws_token")
            signed = st.form_submit_button("Sign in")
        if signed:
            try:
                access.remember(room.sign_in_instructor(token))
            except PermissionDenied as exc:
                st.error(str(exc))
            else:
                st.rerun()


def _home(member) -> None:
    st.title(f"Welcome, {plain(member.name)}")
    room = access.room()
    if member.role == "instructor":
        st.info("You are signed in as the instructor. Open the **Instructor** page to run the room.",
                icon=":material/admin_panel_settings:")
        st.page_link("screens/instructor.py", label="Instructor", icon=":material/admin_panel_settings:")
    else:
        st.caption("Your runs carry your name; you can cancel, resume and delete your own runs, and read everyone's. "
                   "The page's address carries your key (`?p=…`): to show someone a run, give them its id, not "
                   "your address.")
        if not room.is_open():
            st.warning("The room is closed: new runs wait until the instructor opens it.", icon=":material/lock:")
    cols = st.columns(3)
    with cols[0]:
        st.page_link("screens/lessons.py", label="Lessons", icon=":material/school:")
    with cols[1]:
        st.page_link("screens/leaderboard.py", label="Challenge and leaderboard", icon=":material/leaderboard:")
    with cols[2]:
        st.page_link("screens/room_sweep.py", label="Room sweep", icon=":material/ssid_chart:")
    _my_runs(member)
    if st.button("Leave (forget me on this browser)", type="tertiary", icon=":material/logout:"):
        access.forget()
        st.rerun()


def _my_runs(member) -> None:
    store = session.store()
    records = store.list_runs(owner=member.name, limit=50)
    st.subheader("Your runs", divider="gray")
    if not records:
        st.caption("None yet. Start with the lessons, or a run on the **New run** page.")
        return
    active = sum(r.status in ACTIVE for r in records)
    cap = workshop_runner(session.runner()).owner_cap()
    st.caption(f"{active} queued or running" + (f" of your {cap} at a time" if cap else "") + ".")
    st.dataframe([{"run": f"live?run={r.id}", "name": r.name, "status": r.status,
                   "student acc": (r.summary or {}).get("student_val_acc")} for r in records],
                 hide_index=True, column_config={
                     "run": st.column_config.LinkColumn("Run", display_text=r"live\?run=(.*)"),
                     "student acc": st.column_config.NumberColumn("Student val acc", format="percent")})


if __name__ == "__main__":
    render()
