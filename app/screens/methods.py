"""Methods: the distillation methods side by side on this store's finished runs.

The table reads like the published CIFAR-100 tables: for one teacher → student pair on one dataset,
the teacher's and the student-alone test accuracy, then one column per method, each the mean ± std
over that method's runs (its seeds), with the gap it closes and how many runs each cell averages.
The shaping is `app.read_model.method_table`; this page only draws it and offers it as CSV.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import session
from app.read_model.method_table import (format_mean_std, method_table, method_table_columns, method_table_csv_rows,
                                         method_table_label)
from kdcore.methods import METHODS, method_spec

ROWS = {"acc": "test accuracy (%)", "delta": "Δ vs. student alone", "gap_closed": "gap closed", "runs": "runs",
        "verdict": "vs. student alone, over seeds", "published": "published test accuracy (%)"}
SMALL_LEAD = 0.02  # a teacher this close to the student alone makes "gap closed" magnify noise


def render() -> None:
    st.title("Methods")
    rows = method_table(session.store().list_runs(status="done"))
    if not rows:
        _empty_state()
        return
    keys = {_key(row): row for row in rows}
    chosen = st.selectbox("Dataset · teacher → student", list(keys), key="mt_pair",
                          format_func=lambda k: method_table_label(keys[k]),
                          help="Finished runs are grouped by dataset, teacher and student architecture.")
    row = keys[chosen]
    st.table(_styled(row), border="horizontal", width="content")  # ruled like a paper's table
    st.caption(f"Teacher {row['teacher']}, student {row['student']}. Test accuracy in %: mean ± sample standard "
               "deviation over a method's runs (seeds); a cell of one run shows its value alone. The teacher's is over "
               "distinct teachers. Δ in percentage points. Gap closed = (method − student alone) "
               "/ (teacher − student alone), from the means: 100% reaches the teacher, below 0 is worse than no "
               "teacher at all. The verdict: the 95% Student-t interval of method − student alone, paired by seed "
               "(Welch's when they share fewer than 2 seeds); better or worse when it excludes 0, otherwise within "
               "seed noise; one seed gives no verdict.")
    _published_note(row)
    _caveats(row)
    _legend(row)
    if len(rows) > 1:
        with st.expander(f"All {len(rows)} teacher → student pairs"):
            st.table(_overview(rows), border="horizontal", width="content", hide_index=True)
    csv = pd.DataFrame(method_table_csv_rows(rows)).to_csv(index=False)
    st.download_button("Method table as CSV", csv, file_name="method_table.csv", mime="text/csv",
                       icon=":material/download:", key="mt_csv", help="Every pair, one line per column, as fractions.")


def _key(row: dict) -> str:
    return f"{row['dataset']}|{row['teacher']}|{row['student']}"


def _frame(row: dict) -> pd.DataFrame:
    """The chosen pair as the table prints it: a column per reference and method, a row per number."""
    table = {}
    for column in method_table_columns(row):
        name = {"teacher": "Teacher", "student alone": "Student alone"}.get(column["column"], column["column"])
        table[name] = {
            ROWS["acc"]: format_mean_std(column["acc"]),
            **({ROWS["published"]: "" if column["published"] is None else f"{100 * column['published']:.2f}"}
               if row.get("published") else {}),  # beside this store's accuracy, as a paper's row would be
            ROWS["delta"]: "" if column["delta"] is None else _signed(f"{100 * column['delta']:+.2f}"),
            ROWS["gap_closed"]: "" if column["gap_closed"] is None else _signed(f"{100 * column['gap_closed']:.0f}%"),
            ROWS["runs"]: str(column["runs"]),
            ROWS["verdict"]: "" if column["verdict"] is None else column["verdict"].text,
        }
    return pd.DataFrame(table)


def _signed(text: str) -> str:
    return text.replace("-", "−")  # a typographic minus, as the tables print it


def _styled(row: dict):
    """The table with the best method's accuracy in bold, as papers mark it."""
    frame = _frame(row)
    methods = {name: cell["acc"].mean for name, cell in row["methods"].items()}
    if len(methods) < 2:
        return frame
    best = max(methods, key=methods.get)
    return frame.style.apply(lambda col: ["font-weight: bold" if col.name == best and i == ROWS["acc"] else ""
                                          for i in col.index])


def _published_note(row: dict) -> None:
    paper = row.get("published")
    if paper:
        st.caption(f"Published: the papers' test accuracies for this pair with the `{paper['preset']}` recipe "
                   f"(`python -m kdcore run --preset {paper['preset']}`): " + "; ".join(paper["sources"]) + ". "
                   "Runs with a shorter budget are not expected to reach them.")


def _caveats(row: dict) -> None:
    if row["differs"]:
        settings = "; ".join(f"{key} ({', '.join(map(str, values))})" for key, values in row["differs"].items())
        st.warning(f"These runs also differ in {settings}, so a cell may average unlike runs. The published tables "
                   "train every method with the same budget.", icon=":material/warning:")
    teacher, alone = row["teacher_acc"], row["baseline_acc"]
    if teacher and alone and teacher.mean - alone.mean <= 0:
        st.info("The teacher does not beat the student alone here, so there is no gap to close: train the teacher "
                "longer, or pick a stronger one.", icon=":material/info:")
    elif teacher and alone and teacher.mean - alone.mean < SMALL_LEAD:
        st.info(f"The teacher leads the student alone by only {100 * (teacher.mean - alone.mean):.2f} points, so "
                "“gap closed” magnifies small differences; compare the accuracies themselves.",
                icon=":material/info:")
    if alone is None:
        st.info("No run of this pair trained the student alone, so there is no reference and no gap closed: "
                "turn on **Train a baseline** for at least one run.", icon=":material/info:")
    if len(row["methods"]) == 1:
        (only,) = row["methods"]
        title = method_spec(only).title if only in METHODS else only
        st.info(f"Only {title} so far. Run other methods on this pair (New run → Distillation → Method) to "
                "compare.", icon=":material/info:")


def _legend(row: dict) -> None:
    specs = [method_spec(name) for name in row["methods"] if name in METHODS]
    lines = [f"**{spec.name}**: {spec.title}. {spec.paper}." for spec in specs]
    st.caption("  \n".join(lines))


def _overview(rows: list[dict]) -> pd.DataFrame:
    """Every pair in one table, a row each, as the papers print them: accuracy cells only."""
    records = []
    for row in rows:
        record = {"dataset": row["dataset"], "teacher → student": f"{row['teacher']} → {row['student']}"}
        for column in method_table_columns(row):
            name = {"teacher": "Teacher", "student alone": "Student alone"}.get(column["column"], column["column"])
            record[name] = format_mean_std(column["acc"]) if column["acc"] else ""
        records.append(record)
    return pd.DataFrame(records).fillna("")


def _empty_state() -> None:
    st.info("No finished runs in this store yet, so there is nothing to compare. To fill this table:\n\n"
            "- `python bench/methods.py` trains every method on the preset teacher → student pair over 3 seeds and "
            "records the runs in this store (`KDCORE_HOME`), or\n"
            "- start runs with different methods, and a few seeds each, from **New run** (Distillation → Method). "
            "Keep one run's **Train a baseline** on: it is the student-alone reference.\n\n"
            "Runs with the same dataset, teacher and student are compared; each method's cell averages its runs.",
            icon=":material/info:")


if __name__ == "__main__":
    render()
