"""Challenge: what the room competes on, a button that fills the New run form with it, and the live
leaderboard (each participant's best run by validation accuracy; test accuracy once revealed)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import session
from app.text import plain
from app.workshop import access
from app.workshop.leaderboard import leaderboard
from kdcore.store import ACTIVE

POLL_S = 3.0


def render() -> None:
    st.title("Challenge")
    challenge = access.room().challenge()
    if challenge is None:
        st.info("No challenge yet: the instructor sets one.", icon=":material/hourglass_empty:")
        return
    st.subheader(plain(challenge.title))
    st.markdown(f"Distil the **{challenge.teacher_arch}** teacher ({challenge.teacher_epochs} epochs) on "
                f"**{challenge.dataset}** into a student of at most **{challenge.max_student_params:,}** parameters, "
                f"within **{challenge.budget:,}** example-epochs a run. Any method, temperature and weights. "
                "Ranked by validation accuracy" + (", and the test accuracy is out." if challenge.revealed else
                                                   "; the instructor reveals test accuracy at the end."))
    if st.button("Start a challenge run", icon=":material/rocket_launch:", key="lb_start"):
        _fill_new_run(challenge)
    active = session.store().count_runs(ACTIVE) > 0
    st.fragment(_board, run_every=POLL_S if active else None)(challenge)


def _fill_new_run(challenge) -> None:
    """Put the challenge's fixed settings in the New run form (its `nr_` values) and go there."""
    for key, value in (("dataset", challenge.dataset), ("teacher_source", "train"),
                       ("teacher_arch", challenge.teacher_arch), ("teacher_epochs", challenge.teacher_epochs),
                       ("baseline", True), ("data_root", ""), ("challenge_entry", True)):
        st.session_state[f"nr_{key}"] = value
    st.switch_page("screens/new_run.py")


def _board(challenge) -> None:
    records = session.store().list_runs(status=["done", "running", "queued", "starting"])
    rows = leaderboard(records, challenge)
    training = sum(r.status in ACTIVE and r.created >= challenge.started for r in records)
    st.caption(f"{len(rows)} participant(s) on the board · {training} run(s) queued or training.")
    if not rows:
        st.info("No finished challenge run yet.", icon=":material/leaderboard:")
        return
    frame = pd.DataFrame(rows)
    frame["link"] = "live?run=" + frame["run"]
    columns = ["rank", "owner", "val_acc", "gap_closed", "params", "student", "method", "T", "runs", "link"]
    if challenge.revealed:
        columns.insert(3, "test_acc")
    st.dataframe(frame, hide_index=True, column_order=columns, key="lb_table", column_config={
        "rank": st.column_config.NumberColumn("#", width="small"),
        "owner": "Participant",
        "val_acc": st.column_config.NumberColumn("Validation acc", format="percent"),
        "test_acc": st.column_config.NumberColumn("Test acc", format="percent"),
        "gap_closed": st.column_config.NumberColumn("Gap closed (val)", format="percent",
                                                    help="(student − alone) / (teacher − alone), validation accuracy"),
        "params": st.column_config.NumberColumn("Parameters", format="%d"),
        "student": "Student", "method": "Method", "T": st.column_config.NumberColumn("T", format="%g"),
        "runs": st.column_config.NumberColumn("Runs", help="this participant's finished challenge runs"),
        "link": st.column_config.LinkColumn("Best run", display_text=r"live\?run=(.*)"),
    })


if __name__ == "__main__":
    render()
