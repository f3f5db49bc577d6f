"""KD Lab, the Streamlit app: `streamlit run app/streamlit_app.py`. This file only declares the pages.

The pages live in `screens/`, not `pages/`: Streamlit treats a `pages/` folder beside the entry point
as a legacy multipage app until `st.navigation` first runs, so a shared `/live?run=…` link opened
right after a restart would run that page without this file.
"""

import streamlit as st

st.set_page_config(page_title="KD Lab", page_icon=":material/science:", layout="wide")
st.navigation([
    st.Page("screens/new_run.py", title="New run", icon=":material/add_circle:", default=True),
    st.Page("screens/live.py", title="Live run", icon=":material/monitoring:"),
    st.Page("screens/runs.py", title="Runs", icon=":material/table_rows:"),
    st.Page("screens/methods.py", title="Methods", icon=":material/table_chart:"),
    st.Page("screens/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("screens/deploy.py", title="Deploy", icon=":material/rocket_launch:"),
    st.Page("screens/sweeps.py", title="Sweeps", icon=":material/grid_on:"),
    st.Page("screens/lab.py", title="Temperature lab", icon=":material/thermostat:"),
]).run()
