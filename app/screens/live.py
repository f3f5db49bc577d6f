"""Live run: one run's stage, curves and soft labels, read from the store as they arrive.

The run is named in the URL (`?run=run-1a2b3c4d`), so the page can be reopened or shared. While
the run is active two fragments poll the store (`st.fragment(run_every=...)`), each reading only
the rows after this session's cursor; once it has finished nothing polls.
"""

from __future__ import annotations

import time

import streamlit as st

from app import charts, sentences, session, verdicts
from app.text import plain
from app.workshop import access
from app.read_model.progress import (STAGE_TITLES, TRAINED_STAGES, format_duration, run_eta, run_plan, stage_eta,
                                     stage_fraction, stage_states)
from app.read_model.runs import labels_label, weights_label
from app.read_model.seeds import format_ci, seeds_present
from app.read_model.sentences import is_text_snapshot, sentence_note, sentence_table
from app.read_model.trace import RunTrace, teacher_val_acc
from kdcore.errors import KDError, RunNotFound
from kdcore.seeds import seed_family, seeds_summary
from kdcore.presets import reference_for
from kdcore.store import ACTIVE, RunRecord, Store

POLL_S = 1.0  # curves and progress
SNAPSHOT_POLL_S = 3.0  # soft labels change once per epoch, and their figure is large
TRACES_KEPT = 8  # runs whose rows a session keeps in memory
STATUS_BADGES = {"queued": ("gray", ":material/schedule:"), "starting": ("blue", ":material/hourglass_top:"),
                 "running": ("blue", ":material/play_circle:"), "done": ("green", ":material/check_circle:"),
                 "failed": ("red", ":material/error:"), "cancelled": ("orange", ":material/cancel:")}


def render() -> None:
    store = session.store()
    run_id = _pick_run(store)
    if run_id is None:
        return
    try:
        record = store.get_run(run_id)
    except RunNotFound:
        st.warning(f"There is no run **{run_id}** in this store (it may have been deleted). Pick another above.")
        return
    _header(record)
    active = record.active
    st.fragment(_live_panel, run_every=POLL_S if active else None)(run_id, active)
    st.fragment(_soft_label_panel, run_every=SNAPSHOT_POLL_S if active else None)(run_id)


# --- which run --------------------------------------------------------------------------------------------


def _pick_run(store: Store) -> str | None:
    records = store.list_runs(limit=200)
    requested = st.query_params.get("run")
    if not records and not requested:
        st.title("Live run")
        st.info("No runs yet. Start one on the **New run** page.")
        st.page_link("screens/new_run.py", label="New run", icon=":material/add_circle:")
        return None
    ids = [r.id for r in records]
    labels = {r.id: _run_label(r) for r in records}
    if requested and requested not in labels:
        ids.insert(0, requested)
        labels[requested] = f"{requested} (not found)"
    default = requested or st.session_state.get("_kdlab_last_run")
    if default not in labels:
        default = next((r.id for r in records if r.status in ACTIVE), ids[0])
    choice = st.selectbox("Run", ids, index=ids.index(default), format_func=labels.get, key="live_run_picker",
                          label_visibility="collapsed")
    if st.query_params.get("run") != choice:
        st.query_params["run"] = choice
    st.session_state["_kdlab_last_run"] = choice
    return choice


def _run_label(record: RunRecord) -> str:
    config = record.config
    name = f" · {record.name}" if record.name else ""
    return (f"{record.id}{name} · {config.get('dataset')} · {config.get('teacher', {}).get('arch')} → "
            f"{config.get('student', {}).get('arch')}")


def _header(record: RunRecord) -> None:
    config = record.config
    teacher = config.get("teacher", {})
    st.title(plain(record.name) or record.id)
    teacher_text = (f"checkpoint `{teacher['checkpoint']}` ({teacher.get('arch')})" if teacher.get("checkpoint")
                    else f"{teacher.get('arch')} ({teacher.get('epochs')} epochs)")
    st.caption(
        f"`{record.id}`" + (f" · by {plain(record.owner)}" if record.owner else "")
        + f" · **{config.get('dataset')}** · teacher {teacher_text}"
        f" → student **{config.get('student', {}).get('arch')}**"
        f" · T = {config.get('temperature'):g} · {weights_label(config.get('weights', {}))}"
        f" · {config.get('epochs')} epochs × batch {config.get('batch_size')} · lr {config.get('lr'):g}"
        f" · seed {config.get('seed')} · device {config.get('device')}"
        + (f" · fine-tune {config.get('finetune_epochs')} epochs" if config.get("finetune_epochs") else "")
        + ("" if config.get("baseline", True) else " · no baseline"))
    labels = labels_label(config, session.store().stage_results(record.id).get("soft_labels") or {})
    if labels:
        st.caption(labels)


# --- reading the store ------------------------------------------------------------------------------------------


def _trace(store: Store, record: RunRecord) -> RunTrace:
    """This session's rows of the run, topped up with what arrived since the last poll."""
    traces: dict[str, RunTrace] = st.session_state.setdefault("_kdlab_traces", {})
    trace = traces.get(record.id)
    if trace is None or trace.started != record.started:  # new, or resumed: its worker rewrote the tail
        trace = RunTrace(record.id, started=record.started)
    traces.pop(record.id, None)
    traces[record.id] = trace  # most recently used last
    while len(traces) > TRACES_KEPT:
        traces.pop(next(iter(traces)))
    rows, trace.metric_cursor = store.metrics_since(record.id, trace.metric_cursor)
    trace.add_metrics(rows)
    snapshots, trace.snapshot_cursor = store.snapshots_since(record.id, trace.snapshot_cursor)
    trace.add_snapshots(snapshots)
    return trace


def _poll(run_id: str, was_active: bool) -> tuple[RunRecord, RunTrace]:
    """The run's record, then its rows (in that order: a finished run's rows are all written already).

    A poll that finds the run gone or finished reruns the whole page, which then stops polling.
    """
    store = session.store()
    if was_active:
        session.keep_queue_moving_or_warn()  # start queued runs, notice dead workers
    try:
        record = store.get_run(run_id)
    except RunNotFound:
        st.rerun()
    trace = _trace(store, record)
    if was_active and not record.active:
        st.rerun()
    return record, trace


# --- the live panel ------------------------------------------------------------------------------------------


def _live_panel(run_id: str, was_active: bool) -> None:
    record, trace = _poll(run_id, was_active)
    _status(record, trace)
    if not record.active and not trace.series:
        st.caption("This run stopped before it reported any training, so there is nothing to chart.")
        return
    _loss_section(record, trace)
    teacher_acc = teacher_val_acc(record.summary, trace, session.store().stage_results(run_id))
    left, right = st.columns(2)
    with left:
        reference = reference_for(record.config)
        st.plotly_chart(charts.accuracy_figure(trace, record.config, teacher_acc, reference[1].lines() if reference else None),
                        key=f"acc_{run_id}")
        if reference:
            st.caption(f"Dotted: the published test accuracies of this teacher → student pair on {record.config.get('dataset')} "
                       f"with the `{reference[0].name}` recipe ({reference[1].citation}); the curves are "
                       "this run's validation accuracy.")
    with right:
        st.plotly_chart(charts.agreement_figure(trace, record.config), key=f"agree_{run_id}")


def _status(record: RunRecord, trace: RunTrace) -> None:
    color, icon = STATUS_BADGES[record.status]
    top = st.columns([3, 1])
    with top[0]:
        st.badge(record.status, color=color, icon=icon)
        plan = run_plan(record.config)
        states = stage_states(plan, record.progress, record.status, trace.trained_stages())
        st.markdown("  →  ".join(_stage_chip(stage, state, record.progress) for stage, state in states))
    with top[1]:
        _actions(record)
    if record.status == "queued":
        ahead = sum(1 for r in session.store().list_runs(status="queued") if r.seq < record.seq)
        st.info(f"Queued: waiting for a free training slot ({ahead} queued run{'s' if ahead != 1 else ''} ahead).")
    elif record.status == "starting":
        st.info("Starting a worker process…")
    elif record.status == "running":
        _progress(record)
    elif record.status == "done":
        _results(record)
    elif record.status == "failed":
        _failure(record)
    elif record.status == "cancelled":
        st.warning("This run was cancelled. **Resume** continues it from its last finished epoch.")


def _stage_chip(stage: str, state: str, progress: dict | None) -> str:
    title = STAGE_TITLES[stage]
    if state == "done":
        return f":green[:material/check_circle: {title}]"
    if state == "active":
        epoch = f" · epoch {min(progress.get('epoch', 0) + 1, progress.get('epochs') or 1)}/{progress.get('epochs')}" \
            if progress and progress.get("epochs") else ""
        return f":blue-background[:material/autorenew: **{title}**{epoch}]"
    if state == "skipped":
        return f":gray[:material/redo: {title} (reused)]"
    if state == "stopped":
        return f":red[:material/stop_circle: {title}]"
    return f":gray[{title}]"


def _progress(record: RunRecord) -> None:
    progress = record.progress or {}
    fraction = stage_fraction(progress)
    stage = STAGE_TITLES.get(progress.get("stage"), "Preparing")
    if fraction is None:
        st.progress(0.0, text=f"{stage}…" if progress else "Loading data and models…")
        return
    now = time.time()
    total = progress["epochs"] * progress["steps_per_epoch"]
    run_left = run_eta(run_plan(record.config), progress, now)
    st.progress(fraction, text=(
        f"{stage} · step {progress.get('step', 0)}/{total} · stage ends in {format_duration(stage_eta(progress, now))}"
        + (f" · run ends in ≈ {format_duration(run_left)}" if run_left is not None else "")))


def _results(record: RunRecord) -> None:
    summary = record.summary or {}
    cols = st.columns(6)
    student, baseline = summary.get("student_test_acc"), summary.get("baseline_test_acc")
    gain = None if student is None or baseline is None else f"{100 * (student - baseline):+.1f} pts vs baseline"
    cols[0].metric("Teacher test acc", _pct(summary.get("teacher_test_acc")),
                   help=f"{summary.get('teacher_params', 0):,} parameters; {summary.get('teacher_source', '')}")
    cols[1].metric("Student test acc", _pct(student),
                   delta=gain,
                   help=f"{summary.get('student_params', 0):,} parameters")
    cols[2].metric("Baseline test acc", _pct(baseline), help="same student trained on hard labels only")
    cols[3].metric("Compression", f"{summary['compression']:.1f}×" if summary.get("compression") else "—")
    cols[4].metric("Agreement (test)", _pct(summary.get("test_agreement")))
    cols[5].metric("Wall time", format_duration(summary.get("wall_s")))
    _over_seeds(record)


def _over_seeds(record: RunRecord) -> None:
    """Distilled vs baseline over every finished seed of this run's config, and more seeds on request."""
    if (record.summary or {}).get("baseline_test_acc") is None:
        return  # no baseline, nothing to judge against
    store = session.store()
    seeds = seeds_summary(record, store.list_runs(status="done"))
    if seeds["n"] > 1:
        st.markdown(f"**Over {seeds['n']} seeds** of this config (seeds {', '.join(map(str, seeds['seeds']))}): "
                    f"distilled {format_ci(seeds['distilled_mean'], seeds['distilled_ci95'])}%, baseline "
                    f"{format_ci(seeds['baseline_mean'], seeds['baseline_ci95'])}% (means ± 95% intervals) · "
                    + verdicts.verdict_text(seeds["verdict"], seeds["text"]), help=verdicts.RULE)
    else:
        st.markdown(verdicts.verdict_text("no verdict", "One seed: no verdict. A difference of a point between "
                                                        "distilled and baseline can be seed noise; repeat this "
                                                        "config with more seeds to tell."), help=verdicts.RULE)
    family = [r for r in store.list_runs() if seed_family(r.config) == seed_family(record.config)]
    verdicts.repeat_control([record.id], seeds_present([r for r in family if r.status == "done" or r.active]),
                            f"live_more_{record.id}", "this config")


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _failure(record: RunRecord) -> None:
    st.error(f"**This run failed.** {record.error or 'No reason was recorded.'}", icon=":material/error:")
    lines = [log.message for log in session.store().logs(record.id, tail=15)]
    if lines:
        st.caption("Last lines of the run's log")
        st.code("\n".join(lines), language=None, wrap_lines=True)
    output = session.store().worker_log_tail(record.id, max_lines=30)
    if output:
        with st.expander("Worker output"):
            st.code("\n".join(output), language=None, wrap_lines=True)


def _actions(record: RunRecord) -> None:
    if not access.can_change(record):  # someone else's run in a workshop: readable, not changeable
        return
    if record.active:
        if st.button("Cancel run", icon=":material/stop:", key=f"cancel_{record.id}", width="stretch"):
            try:
                access.cancel(record.id)
                st.toast(f"Cancelling {record.id}…")
            except KDError as exc:
                st.error(str(exc))
    elif record.status in ("failed", "cancelled"):
        if st.button("Resume", icon=":material/play_arrow:", key=f"resume_{record.id}", width="stretch"):
            try:
                access.resume(record.id)
            except KDError as exc:
                st.error(str(exc))
            else:
                st.rerun()
    if not record.active:
        with st.popover("Delete", icon=":material/delete:", width="stretch"):
            st.markdown(f"Delete **{record.id}**, its metrics and its checkpoints? This cannot be undone.")
            if st.button("Delete permanently", type="primary", key=f"delete_{record.id}"):
                try:
                    access.delete(record.id)
                except KDError as exc:
                    st.error(str(exc))
                else:
                    st.switch_page("screens/runs.py")


def _loss_section(record: RunRecord, trace: RunTrace) -> None:
    planned = [stage for stage, _ in run_plan(record.config) if stage in TRAINED_STAGES]
    left, right = st.columns([3, 2])
    with left:
        choice = st.segmented_control("Stage", ["auto", *planned], default="auto", required=True,
                                      format_func=lambda s: "Follow the run" if s == "auto" else STAGE_TITLES[s],
                                      key=f"loss_stage_{record.id}", label_visibility="collapsed")
    with right:
        smoothing = st.slider("Smoothing", 0.0, 0.99, 0.6, step=0.01, key=f"smoothing_{record.id}",
                              help="Exponential moving average of the per-step losses; the raw values stay faint.")
    stage = choice if choice != "auto" else _followed_stage(record, trace)
    if stage == "teacher" and not trace.get("teacher", "train_loss").values and "student" in trace.trained_stages():
        st.caption("The teacher was reused (from the cache or a checkpoint), so this run did not train it.")
    method = record.config.get("method")
    st.plotly_chart(charts.loss_figure(trace, stage, method, smoothing), key=f"loss_{record.id}")
    values = charts.value_lines(trace, stage, method)
    if values:  # e.g. a temperature the method learns: its own small chart, only when recorded
        st.plotly_chart(charts.values_figure(trace, stage, values, smoothing), key=f"values_{record.id}")


def _followed_stage(record: RunRecord, trace: RunTrace) -> str:
    """The stage in training while the run is active; afterwards the distilled student (or, if the
    run stopped before it, the last stage that trained)."""
    current = (record.progress or {}).get("stage")
    if record.active:
        return current if current in TRAINED_STAGES else "student" if current == "soft_labels" else "teacher"
    trained = [stage for stage in TRAINED_STAGES if stage in trace.trained_stages()]
    return "student" if "student" in trained or not trained else trained[-1]


# --- soft labels ------------------------------------------------------------------------------------------------


def _soft_label_panel(run_id: str) -> None:
    store = session.store()
    try:
        record = store.get_run(run_id)
    except RunNotFound:
        return
    trace = _trace(store, record)
    st.subheader("Soft labels")
    teacher = trace.teacher_snapshot
    if teacher is None:
        st.caption("The teacher's soft labels appear once the teacher is ready." if record.active
                   else "This run recorded no soft labels.")
        return
    temperature = teacher.get("temperature")
    if not is_text_snapshot(teacher):
        st.caption(f"The teacher's distribution at T = 1 (light) and at T = {temperature:g} (dark) for fixed "
                   f"validation samples, beside the student's at T = {temperature:g}. A higher T spreads the teacher's "
                   "mass over the classes it finds similar: that is what the student learns from.")
    epochs = sorted(trace.student_snapshots)
    epoch = _epoch_scrubber(run_id, epochs)
    student = trace.student_snapshots.get(epoch) if epoch is not None else None
    if is_text_snapshot(teacher):
        st.caption(sentence_note(teacher))
        sentences.show(sentence_table(teacher, student), key=f"sentences_{run_id}")
    else:
        st.plotly_chart(_memo(charts.soft_label_figure, teacher, student, epoch), key=f"soft_{run_id}")
    if "teacher_regions" in teacher:
        st.plotly_chart(_memo(charts.regions_figure, teacher, student, epoch), key=f"regions_{run_id}")


def _memo(build, teacher: dict, student: dict | None, epoch: int | None):
    """The figure for these snapshots, built once per session: a poll that brings no new epoch
    should not rebuild dozens of subplots."""
    memo = st.session_state.setdefault("_kdlab_figures", {})
    key = (build.__name__, teacher["id"], student["id"] if student else None, epoch)
    if key not in memo:
        if len(memo) > 16:
            memo.clear()
        memo[key] = build(teacher, student, epoch)
    return memo[key]


def _epoch_scrubber(run_id: str, epochs: list[int]) -> int | None:
    """A slider over the student's epochs that follows the newest one until the user scrubs back."""
    if not epochs:
        st.caption("The student's soft labels appear after its first epoch.")
        return None
    remembered = st.session_state.get(f"_kdlab_scrub_{run_id}")  # None: follow the newest epoch
    value = remembered if remembered in epochs else epochs[-1]
    if len(epochs) == 1:
        st.caption(f"Student after epoch {epochs[0]}.")
        return epochs[0]
    # a new key when an epoch arrives: the slider is rebuilt with the remembered value, never fought over
    picked = st.select_slider("Student epoch", options=epochs, value=value, key=f"scrub_{run_id}_{len(epochs)}")
    st.session_state[f"_kdlab_scrub_{run_id}"] = None if picked == epochs[-1] else picked
    return picked


if __name__ == "__main__":
    render()
