"""Lessons: a guided path of short pages (`?lesson=soft-labels`), each one idea, one action and its result.

1 and 2 redraw instantly from one example's teacher logits: the store's trained teacher when there is one
(the Temperature lab's, computed once per server), else a fixed example (`app.workshop.lessons`); 3 asks for a prediction
before it runs the lesson preset (the instructor sees predictions against outcomes); 4 is the room's
sweep over T.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
import streamlit as st

from app import session
from app.text import plain
from app.workshop import access, lessons
from app.read_model.runs import stored_teachers
from app.workshop.lessons import LESSONS, SEVEN, Example
from kdcore.config import RunConfig
from kdcore.errors import KDError

BY_SLUG = {lesson.slug: lesson for lesson in LESSONS}


def render() -> None:
    slug = st.query_params.get("lesson")
    slug = slug if slug in BY_SLUG else LESSONS[0].slug
    chosen = st.segmented_control("Lesson", [lesson.slug for lesson in LESSONS], default=slug, key="ls_pick",
                                  format_func=lambda s: BY_SLUG[s].title, label_visibility="collapsed")
    lesson = BY_SLUG[chosen or slug]
    if st.query_params.get("lesson") != lesson.slug:
        st.query_params["lesson"] = lesson.slug
    st.title(lesson.title)
    st.markdown(lesson.idea)
    st.markdown(f":material/touch_app: **Your turn.** {lesson.action}")
    {"soft-labels": _soft_labels, "dark-knowledge": _dark_knowledge, lessons.ALONE_VS_DISTILLED: _alone_vs_distilled,
     "temperature-curve": _temperature_curve}[lesson.slug]()
    index = LESSONS.index(lesson)
    if index + 1 < len(LESSONS):
        if st.button(f"Next: {LESSONS[index + 1].title}", icon=":material/arrow_forward:", key="ls_next"):
            st.query_params["lesson"] = LESSONS[index + 1].slug
            st.session_state.pop("ls_pick", None)
            st.rerun()


def _example() -> Example:
    """The example the first lessons draw: the store's trained teacher's (see `lessons.lesson_teacher`), else SEVEN."""
    teacher = lessons.lesson_teacher(stored_teachers(session.store().list_runs(status="done")))
    if teacher is None:
        return SEVEN
    try:
        return session.lesson_example(*session.stored_teacher(teacher), teacher["dataset"])
    except (KDError, OSError):  # its file is gone: the lessons still teach, from the fixed example
        return SEVEN


def _soft_labels() -> None:
    example = _example()
    temperature = st.slider("Temperature T", 0.5, 20.0, 1.0, step=0.5, key="ls_t1")
    hard = lessons.soft_labels(example.logits, 1.0)
    soft = lessons.soft_labels(example.logits, temperature)
    figure = go.Figure()
    figure.add_bar(x=example.class_names, y=hard, name="T = 1", marker={"opacity": 0.35})
    figure.add_bar(x=example.class_names, y=soft, name=f"T = {temperature:g}")
    figure.update_layout(title=f"The teacher's soft label for one {example.what}", barmode="overlay",
                         xaxis_title="class", yaxis_title="probability", height=380)
    st.plotly_chart(figure, key="ls_soft")
    st.caption(example.source)
    cols = st.columns(2)
    name = example.class_names[example.label]
    cols[0].metric(f"Probability of {name}", f"{soft[example.label]:.1%}",
                   delta=f"{soft[example.label] - hard[example.label]:+.1%} vs T = 1")
    cols[1].metric("Entropy", f"{lessons.entropy_bits(soft):.2f} bits",
                   help=f"0 bits: certain; log2({len(soft)}) = {math.log2(len(soft)):.2f} bits: no idea at all")
    st.latex(r"p_i(T) = \frac{\exp(z_i / T)}{\sum_j \exp(z_j / T)}")


def _dark_knowledge() -> None:
    example = _example()
    name = example.class_names[example.label]
    temperature = st.select_slider("Temperature T", [1, 2, 4, 8, 16], value=4, key="ls_t2")
    grid = [0.5 * step for step in range(1, 41)]
    figure = go.Figure()
    figure.add_scatter(x=grid, y=[lessons.dark_knowledge(example.logits, t) for t in grid], mode="lines",
                       name="wrong classes' share")
    figure.add_scatter(x=[temperature], y=[lessons.dark_knowledge(example.logits, temperature)], mode="markers",
                       marker={"size": 12}, name=f"T = {temperature}")
    figure.update_layout(title=f"Probability the soft label of one {example.what} gives to the wrong classes",
                         xaxis_title="temperature T", yaxis_title=f"1 − p({name})", height=360)
    st.plotly_chart(figure, key="ls_dark")
    st.caption(example.source)
    ranked = lessons.runner_ups(example.logits, temperature, class_names=example.class_names)
    least = lessons.runner_ups(example.logits, temperature, len(example.logits) - 1, example.class_names)[-1][0]
    st.markdown("At T = {}: the likeliest mistakes are {}.".format(
        temperature, ", ".join(f"**{plain(c)}** ({p:.1%})" for c, p in ranked)))
    st.caption(f"The order never changes with T, only how loudly the teacher says it: the student learns that this "
               f"{plain(name)} is closer to a {plain(ranked[0][0])} than to a {plain(least)}, which hard labels never tell it.")


def _alone_vs_distilled() -> None:
    config = RunConfig().replace(**lessons.LESSON_PRESET, name="lesson: alone vs distilled")
    st.caption(f"The run: {config.dataset}, teacher {config.teacher.arch} → student {config.student.arch}, "
               f"T = {config.temperature:g}, {config.epochs} epochs, labels for {config.labeled_fraction:.0%} of the "
               "training images; and the same student alone.")
    member = access.member()
    if member is None or member.role != "participant":
        st.info("Participants predict and run this lesson; the Instructor page shows the room's predictions.")
        return
    room = access.room()
    prediction = room.prediction(member, lessons.ALONE_VS_DISTILLED)
    if prediction is None or not prediction.get("run_id"):
        with st.form("ls_predict"):
            value = st.number_input("Distilled beats alone by … points of test accuracy", -20.0, 20.0,
                                    value=float(prediction["value"]) if prediction else 0.0, step=0.5)
            saved = st.form_submit_button("Save my prediction")
        if saved:
            try:
                room.predict(member, lessons.ALONE_VS_DISTILLED, float(value))
            except KDError as exc:
                st.error(str(exc))
            else:
                st.rerun()
        if prediction is not None:
            st.caption(f"Your prediction: {prediction['value']:+g} points. Now run it.")
            if st.button("Run the lesson", type="primary", icon=":material/play_arrow:", key="ls_run"):
                seed = [m.key for m in room.participants()].index(member.key) % 10
                try:
                    run_id = access.submit(config.replace(seed=seed))
                    room.attach_run(member, lessons.ALONE_VS_DISTILLED, run_id)
                except KDError as exc:
                    st.error(str(exc))
                else:
                    st.rerun()
        return
    try:
        active = session.store().get_run(prediction["run_id"]).active
    except KDError:
        active = False
    st.fragment(_outcome, run_every=2.0 if active else None)(prediction)


def _outcome(prediction: dict) -> None:
    try:
        record = session.store().get_run(prediction["run_id"])
    except KDError:
        st.warning("Your lesson run was deleted.")
        return
    summary = record.summary or {}
    if record.status != "done":
        st.info(f"Your run {record.id} is {record.status}…", icon=":material/hourglass_top:")
        st.page_link("screens/live.py", label="Watch it live", icon=":material/monitoring:",
                     query_params={"run": record.id})
        return
    student, alone = summary.get("student_test_acc"), summary.get("baseline_test_acc")
    cols = st.columns(3)
    cols[0].metric("Distilled", f"{student:.1%}")
    cols[1].metric("Alone", f"{alone:.1%}")
    cols[2].metric("Distillation adds", f"{100 * (student - alone):+.1f} points",
                   delta=f"you predicted {prediction['value']:+g}", delta_color="off")


def _temperature_curve() -> None:
    st.page_link("screens/room_sweep.py", label="Open the room sweep: your cell and the room's curve",
                 icon=":material/ssid_chart:")


if __name__ == "__main__":
    render()
