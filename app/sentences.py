"""The soft labels of text, drawn: the table of `app.read_model.sentences`, one row per sentence and a probability
bar per distribution. Live run and the Temperature lab draw it instead of the image sets' grid of bar charts."""

from __future__ import annotations

import streamlit as st

from app.read_model.sentences import SentenceTable


def show(table: SentenceTable, key: str) -> None:
    columns = {"sentence": st.column_config.TextColumn("sentence", width="large"),
               "label": st.column_config.TextColumn("label", width="small")}
    for name, title in table.bars.items():
        columns[name] = st.column_config.ProgressColumn(title, min_value=0.0, max_value=1.0, format="percent",
                                                        width="small", help=f"{table.measured}, the bar's length")
    if table.guess:
        columns["teacher_guess"] = st.column_config.TextColumn("teacher's pick (T=1)", width="small")
    st.dataframe(table.rows, column_config=columns, column_order=list(columns), hide_index=True, key=key,
                 width="stretch", height=36 * len(table.rows) + 40)
