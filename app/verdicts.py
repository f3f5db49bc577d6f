"""The Streamlit pieces that Live run, Compare and Sweeps share for seed-noise verdicts: a verdict line and
the "Repeat with more seeds" control. The numbers come from `kdcore.seeds` and `app.read_model.seeds`."""

from __future__ import annotations

import streamlit as st

from app.workshop import access
from kdcore.errors import KDError
from kdcore.seeds import MAX_SEEDS

ICONS = {"better": ":material/trending_up:", "worse": ":material/trending_down:",
         "within seed noise": ":material/drag_handle:", "no verdict": ":material/help:"}
COLORS = {"better": "green", "worse": "red", "within seed noise": "gray", "no verdict": "gray"}
RULE = ("Verdict: the 95% Student-t interval of the mean difference over seeds, paired by seed (each run's "
        "baseline is the same student trained alone with the same seed). Better or worse when the interval "
        "excludes 0, otherwise within seed noise; one seed gives no verdict.")


def verdict_text(verdict: str, text: str) -> str:
    """A verdict as coloured markdown, e.g. `:green[:material/trending_up: better on 3 of 3 seeds, …]`."""
    return f":{COLORS.get(verdict, 'gray')}[{ICONS.get(verdict, '')} {text}]"


def default_seeds(have: int) -> int:
    """What the seeds box offers: 3 to start with, two more than there are once there are 3."""
    return min(MAX_SEEDS, 3 if have < 3 else have + 2)


def repeat_control(targets: list[str], have: int, key: str, what: str) -> None:
    """A seeds box and a "Repeat with more seeds" button that queues the missing seeds of each target (run
    ids: their configs; a sweep id: every cell of it); `have` is how many seeds there are now. A message
    about what was queued shows after the rerun that follows."""
    message = st.session_state.pop(f"_kdlab_{key}_message", None)
    if message:
        st.success(message, icon=":material/playlist_add_check:")
    if not targets or not access.may_repeat_seeds():
        return
    row = st.container(horizontal=True, vertical_alignment="bottom")
    seeds = row.number_input("Seeds in all", 2, MAX_SEEDS, default_seeds(have), key=f"{key}_seeds", width=140,
                             help=f"How many seeds {what} should have; the seeds missing are queued "
                                  "(0, 1, 2, … that are not finished or on their way).")
    if not row.button("Repeat with more seeds", icon=":material/replay:", key=f"{key}_repeat",
                      help=f"Queue the seeds {what} lacks, so that its difference can be told from seed noise."):
        return
    queued: list[str] = []
    try:
        for target in targets:
            queued += access.repeat_seeds(target, int(seeds))
    except KDError as exc:
        st.error(f"Could not queue more seeds: {exc}", icon=":material/error:")
        return
    st.session_state[f"_kdlab_{key}_message"] = (
        f"Queued {len(queued)} run{'s' if len(queued) != 1 else ''}: {', '.join(queued)}." if queued
        else f"Nothing to queue: {what} already has {int(seeds)} seeds finished or on their way.")
    st.rerun()
