"""Soft labels of text as a table: one row per fixed validation sentence, one probability per distribution.

A text run's teacher snapshot carries the sentences (`texts`) beside the teacher's distributions at T = 1
and at the run's T; a student snapshot carries the student's at T (see `kdcore.soft_labels`). A grid of
bar charts wastes the page on two classes, so each distribution becomes one number a progress bar can
draw: with two classes the probability of the first class (P(fresh) on rotten-tomatoes), with more the
probability of the sentence's own label, next to the class the teacher would pick. The Live run page and
the Temperature lab draw this table (`st.dataframe` with progress columns).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SentenceTable:
    rows: list[dict[str, Any]]  # one per sentence: "sentence", "label", then one probability per column in `bars`
    bars: dict[str, str]  # column key → its title, e.g. "teacher_T" → "teacher T=4"
    measured: str  # what each bar is: "P(fresh)" or "P(its label)"
    guess: bool  # rows carry "teacher_guess" (more than two classes): the teacher's top class at T = 1


def is_text_snapshot(teacher: dict[str, Any]) -> bool:
    return bool(teacher.get("texts"))


def sentence_table(teacher: dict[str, Any], student: dict[str, Any] | None = None) -> SentenceTable:
    """The rows of a text teacher snapshot (and a student's of the same sentences, when given)."""
    names = teacher.get("class_names") or [str(k) for k in range(len(teacher["teacher_T"][0]))]
    temperature = teacher.get("temperature")
    t = f"{temperature:g}" if temperature is not None else "T"
    bars = {"teacher_T1": "teacher T=1", "teacher_T": f"teacher T={t}"}
    series = {"teacher_T1": teacher["teacher_T1"], "teacher_T": teacher["teacher_T"]}
    if student is not None:
        bars["student_T"] = f"student T={t}"  # the epoch is the slider's above the table
        series["student_T"] = student["student_T"]
    two = len(names) == 2
    labels = teacher.get("labels") or [None] * len(teacher["texts"])
    rows = []
    for i, (text, label) in enumerate(zip(teacher["texts"], labels)):
        shown = 0 if two else label
        row: dict[str, Any] = {"sentence": text, "label": names[label] if label is not None else "?"}
        for key, values in series.items():
            row[key] = float(values[i][shown]) if shown is not None else None
        if not two:
            plain = teacher["teacher_T1"][i]
            top = max(range(len(plain)), key=plain.__getitem__)
            row["teacher_guess"] = f"{names[top]} ({plain[top]:.0%})"
        rows.append(row)
    return SentenceTable(rows, bars, f"P({names[0]})" if two else "P(its label)", not two)


def sentence_note(teacher: dict[str, Any]) -> str:
    """How to read the table, in the words of this run's classes and temperature."""
    names = teacher.get("class_names") or []
    temperature = teacher.get("temperature")
    t = f"{temperature:g}" if temperature is not None else "T"
    what = (f"the probability of **{names[0]}** (the rest is {names[1]})" if len(names) == 2
            else "the probability of each sentence's own label")
    return (f"Fixed validation sentences; each bar is {what}: the teacher's at T = 1, at T = {t}, and the student's "
            f"at T = {t}. A higher T pulls the teacher's bars towards the middle: the doubt it keeps is what the "
            "student learns beyond the label.")
