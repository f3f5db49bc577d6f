"""KD Lab, the Streamlit app: `streamlit run app/streamlit_app.py`. This file only declares the pages."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `app` and `kdcore` import from the repo root

import streamlit as st  # noqa: E402

st.set_page_config(page_title="KD Lab", page_icon=":material/science:", layout="wide")
st.navigation([
    st.Page("pages/new_run.py", title="New run", icon=":material/add_circle:", default=True),
    st.Page("pages/live.py", title="Live run", icon=":material/monitoring:"),
    st.Page("pages/runs.py", title="Runs", icon=":material/table_rows:"),
]).run()
