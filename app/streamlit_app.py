"""KD Lab, the Streamlit app: `streamlit run app/streamlit_app.py`. This file only declares the pages.

The pages live in `screens/`, not `pages/`: Streamlit treats a `pages/` folder beside the entry point
as a legacy multipage app until `st.navigation` first runs, so a shared `/live?run=…` link opened
right after a restart would run that page without this file.
"""

import streamlit as st

from app.workshop import access

st.set_page_config(page_title="KD Lab", page_icon=":material/science:", layout="wide")


def lab_pages(default: bool, everything: bool = True) -> list:
    """The lab's pages; without `everything` (a workshop participant) no Deploy, Sweeps or Tune: they start
    work that no one owns (compression jobs, a grid of runs, a study)."""
    pages = [
        st.Page("screens/new_run.py", title="New run", icon=":material/add_circle:", default=default),
        st.Page("screens/live.py", title="Live run", icon=":material/monitoring:"),
        st.Page("screens/runs.py", title="Runs", icon=":material/table_rows:"),
        st.Page("screens/methods.py", title="Methods", icon=":material/table_chart:"),
        st.Page("screens/compare.py", title="Compare", icon=":material/compare_arrows:"),
        st.Page("screens/deploy.py", title="Deploy", icon=":material/rocket_launch:"),
        st.Page("screens/sweeps.py", title="Sweeps", icon=":material/grid_on:"),
        st.Page("screens/tune.py", title="Tune", icon=":material/tune:"),
        st.Page("screens/lab.py", title="Temperature lab", icon=":material/thermostat:"),
    ]
    return pages if everything else [p for p in pages if p.title not in ("Deploy", "Sweeps", "Tune")]


if not access.enabled():
    pages = lab_pages(default=True)
else:
    # Workshop mode (KDLAB_WORKSHOP_TOKEN set): a visitor sees only the door, a participant the room's pages,
    # the instructor everything.
    member = access.member()
    pages = {"Workshop": [st.Page("screens/workshop.py", title="Workshop", icon=":material/groups:", default=True)]}
    if member is not None:
        pages["Workshop"] += [
            st.Page("screens/lessons.py", title="Lessons", icon=":material/school:"),
            st.Page("screens/leaderboard.py", title="Challenge", icon=":material/leaderboard:"),
            st.Page("screens/room_sweep.py", title="Room sweep", icon=":material/ssid_chart:"),
        ]
        instructor = member.role == "instructor"
        if instructor:
            pages["Workshop"].append(st.Page("screens/instructor.py", title="Instructor",
                                             icon=":material/admin_panel_settings:"))
        pages["Lab"] = lab_pages(default=False, everything=instructor)
st.navigation(pages).run()
