"""Tune: search the settings that suit a teacher–student pair, and watch the study fill in.

The form builds what `python -m kdcore tune --set … --space KEY=SPEC … --trials N` builds: a base config and a
search space (temperature and KD weight ranges, on a log scale or not; methods, and their own parameters'
ranges), checked by `kdcore.tune` before anything is recorded. Start records the study and hands it to a
background driver process (the page never trains, nor asks Optuna for anything). `?study=sweep-…` shows one
study: each trial's validation accuracy against each searched setting, the best so far, parallel coordinates,
which settings matter, the confirmation on seeds against the base config and the student alone, and a button
that opens the best settings in New run. It refreshes while the study runs.
"""

from __future__ import annotations

import shlex
from typing import Any

import pandas as pd
import streamlit as st

from app import charts, form, session
from app.read_model.tune import (ACTIVE_STUDY, best_run_for_new_run, is_log, param_keys, param_points,
                                 parallel_dimensions, progress_points, space_specs, state_counts, trial_rows,
                                 verdict_rows)
from kdcore.config import RunConfig
from kdcore.dataset_names import DATASET_NAMES
from kdcore.errors import KDError, RunNotFound
from kdcore.methods import METHODS
from kdcore.model_names import ARCH_NAMES
from kdcore.store import Store
from kdcore.tune.report import list_studies, study_report
from kdcore.tune.study import (create_study, default_pruner, driver_alive, extend, request_stop, rung_epochs,
                               start_driver)

POLL_S = 2.0
PREFIX = "tu_"


def render() -> None:
    st.title("Tune")
    store = session.store()
    studies = list_studies(store)
    with st.expander("New study", expanded=not studies, icon=":material/add_circle:"):
        _new_study(store)
    if not studies:
        st.info("No studies yet. Start one above, or from the command line, e.g. `python -m kdcore tune --space "
                "temperature=log:1,32 --space weights.kd=0.1,0.95 --trials 12 --set dataset=digits`.",
                icon=":material/info:")
        return
    study_id = _pick_study(studies)
    active = next(s for s in studies if s["study_id"] == study_id)["status"] in ACTIVE_STUDY
    st.fragment(_study_panel, run_every=POLL_S if active else None)(study_id, active)


# --- a new study -------------------------------------------------------------------------------------------------


def _new_study(store: Store) -> None:
    base, name = _base_form()
    st.markdown("**Search space.** Trials sample these; everything else is the base config above.")
    ranges: dict[str, tuple[float, float, bool]] = {}
    cols = st.columns(2)
    with cols[0]:
        if st.toggle("Search the temperature", value=True, key=PREFIX + "t_on"):
            lo, hi = st.slider("Temperature T", 0.5, 64.0, (1.0, 32.0), step=0.5, key=PREFIX + "t_range")
            ranges["temperature"] = (lo, hi, st.checkbox("Log scale", value=True, key=PREFIX + "t_log",
                                                         help="Sample T evenly in log T: as many trials in 1–4 as "
                                                              "in 8–32."))
    with cols[1]:
        if st.toggle("Search the KD weight", value=True, key=PREFIX + "kd_on"):
            lo, hi = st.slider("weights.kd", 0.0, 1.0, (0.1, 0.95), step=0.05, key=PREFIX + "kd_range")
            ranges["weights.kd"] = (lo, hi, False)
    methods = st.multiselect("Methods", list(METHODS), default=["kd"], key=PREFIX + "methods",
                             help="Several: the method is searched too. A method's own parameters apply only to "
                                  "its trials.")
    method_params = _method_params(methods)
    cols = st.columns(5)
    trials = int(cols[0].number_input("Trials", 1, 500, 12, key=PREFIX + "trials"))
    seeds = int(cols[1].number_input("Confirmation seeds", 0, 20, 3, key=PREFIX + "seeds",
                                     help="The best settings and the base config re-run on this many seeds, with "
                                          "the student alone, on the test split (0: no confirmation)."))
    batch = int(cols[2].number_input("Trials at once", 1, 32, 4, key=PREFIX + "batch",
                                     help="Asked for together and trained as one stacked group where they can."))
    pruner = cols[3].selectbox("Pruner", ["sha", "hyperband", "none"], key=PREFIX + "pruner",
                               format_func={"sha": "successive halving", "hyperband": "Hyperband",
                                            "none": "none"}.get)
    first_rung = _first_rung(cols[4], pruner, base["epochs"])
    if len(methods) == 1:
        base["method"] = methods[0]
    specs = space_specs(ranges, methods, method_params)
    command = ["python", "-m", "kdcore", "tune", *form.cli_sets(base), *[a for s in specs for a in ("--space", s)],
               "--trials", str(trials), "--seeds", str(seeds), "--batch", str(batch), "--pruner", pruner]
    if first_rung is not None:
        command += ["--first-rung", str(first_rung)]
    if name:
        command += ["--name", name]
    if not methods:
        st.info("Choose at least one method.")
    elif not specs:
        st.info("Search at least one setting: a range, several methods, or a method's parameter.")
    elif st.button(f"Start a study of {trials} trials", type="primary", icon=":material/play_arrow:",
                   key=PREFIX + "start"):
        try:
            study_id = create_study(store, base, specs, trials=trials, seeds=seeds, batch=batch, pruner=pruner,
                                    first_rung=first_rung, name=name)
            start_driver(store, study_id)
        except KDError as exc:
            st.error(str(exc), icon=":material/error:")
        else:
            st.query_params["study"] = study_id
            st.rerun()
    st.caption("The same from the command line:")
    st.code(shlex.join(command), language="bash", wrap_lines=True)


def _first_rung(col, pruner: str, epochs: int) -> int | None:
    """The pruner's first rung epoch when it is not the default (a tenth of the epochs); None otherwise."""
    if pruner == "none" or epochs < 2:
        return None
    default = default_pruner(pruner, epochs)["min_resource"]
    rung = int(col.number_input("First rung (epoch)", 1, epochs - 1, min(default, epochs - 1), key=PREFIX + f"rung_{epochs}",
                                help="The first epoch at which the pruner compares trials (then ×3, ×9, ...). "
                                     "Later: fewer trials stopped on an early lead that does not last, at more "
                                     "steps per pruned trial."))
    return None if rung == default else rung


def _base_form() -> tuple[dict[str, Any], str]:
    preset = RunConfig()
    cols = st.columns(4)
    dataset = cols[0].selectbox("Dataset", DATASET_NAMES, index=DATASET_NAMES.index(preset.dataset),
                                key=PREFIX + "dataset")
    teacher = cols[1].selectbox("Teacher", ARCH_NAMES, index=ARCH_NAMES.index(preset.teacher.arch),
                                key=PREFIX + "teacher_arch")
    teacher_epochs = cols[2].number_input("Teacher epochs", 1, 10_000, preset.teacher.epochs,
                                          key=PREFIX + "teacher_epochs")
    student = cols[3].selectbox("Student", ARCH_NAMES, index=ARCH_NAMES.index(preset.student.arch),
                                key=PREFIX + "student_arch")
    cols = st.columns([1, 3])
    epochs = cols[0].number_input("Student epochs", 1, 10_000, preset.epochs, key=PREFIX + "epochs",
                                  help="Every trial's budget; the pruner stops unpromising ones early.")
    name = cols[1].text_input("Study name (optional)", key=PREFIX + "name", max_chars=100)
    base = {"dataset": dataset, "teacher": {"arch": teacher, "epochs": int(teacher_epochs)},
            "student": {"arch": student}, "epochs": int(epochs)}
    return base, name.strip()


def _method_params(methods: list[str]) -> dict[str, tuple[float, float]]:
    """Ranges for the chosen methods' own parameters (each off unless ticked), keyed `<method>.<param>`."""
    out = {}
    for method in methods:
        params = {k: p for k, p in METHODS[method].spec.params.items() if not p.integer}
        if not params:
            continue
        with st.expander(f"{method}'s own parameters", icon=":material/tune:"):
            for param, spec in params.items():
                key = f"{method}.{param}"
                if st.checkbox(f"Search {param}", key=PREFIX + f"on_{key}", help=spec.help):
                    low = st.number_input(f"{param} from", value=float(spec.low), key=PREFIX + f"lo_{key}")
                    high = st.number_input(f"{param} to", value=float(max(spec.default * 2, spec.low + 1)),
                                           key=PREFIX + f"hi_{key}")
                    out[key] = (low, high)
    return out


# --- one study ---------------------------------------------------------------------------------------------------


def _pick_study(studies: list[dict[str, Any]]) -> str:
    ids = [s["study_id"] for s in studies]
    requested = st.query_params.get("study")
    if requested and requested not in ids:
        st.warning(f"There is no study **{requested}** in this store. Showing the newest one.",
                   icon=":material/warning:")
        requested = None
    if requested and st.session_state.get("_kdlab_study_query") != requested:  # a new link decides
        st.session_state["_kdlab_study_query"] = st.session_state[PREFIX + "pick"] = requested
    if st.session_state.get(PREFIX + "pick") not in ids:
        st.session_state[PREFIX + "pick"] = ids[0]
    # labels that do not change while a study runs: a keyed select box keeps showing the label it was first drawn
    # with while its value stays the same (the panel below shows the study's progress)
    labels = {s["study_id"]: f"{s['name'] or 'unnamed'} · {s['study_id']} · "
                             + ", ".join(text.partition("=")[0] for text in s["space"]) for s in studies}
    choice = st.selectbox("Study", ids, format_func=labels.get, key=PREFIX + "pick")
    if st.query_params.get("study") != choice:
        st.query_params["study"] = st.session_state["_kdlab_study_query"] = choice
    return choice


def _study_panel(study_id: str, was_active: bool) -> None:
    store = session.store()
    if was_active:
        session.keep_queue_moving_or_warn()
    try:
        report = study_report(store, study_id)
    except RunNotFound as exc:
        st.warning(str(exc))
        return
    if was_active and report["status"] not in ACTIVE_STUDY:
        st.rerun()  # the study ended: redraw once more, then stop polling
    _status(store, report)
    points, best = progress_points(report)
    left, right = st.columns(2)
    left.plotly_chart(charts.tune_progress_figure(points, best), key=PREFIX + "progress")
    dims, accuracy = parallel_dimensions(report)
    right.plotly_chart(charts.tune_parallel_figure(dims, accuracy), key=PREFIX + "parallel")
    keys = param_keys(report)
    cols = st.columns(min(len(keys), 3) or 1)
    for i, key in enumerate(keys):
        cols[i % len(cols)].plotly_chart(charts.tune_param_figure(param_points(report, key), key,
                                                                  log=is_log(report, key)), key=PREFIX + f"param_{key}")
    left, right = st.columns([1, 1])
    left.plotly_chart(charts.tune_importance_figure(report["importance"]), key=PREFIX + "importance")
    with right:
        _verdict(report)
    _trials(report)


def _status(store: Store, report: dict[str, Any]) -> None:
    study_id, status = report["study_id"], report["status"]
    counts = state_counts(report)
    finished = sum(n for s, n in counts.items() if s in ("complete", "pruned", "failed", "cancelled"))
    st.caption(f"`{study_id}` · **{report['base'].get('dataset', 'mnist-5k')}** · "
               + " · ".join(f"`{text}`" for text in report["space"])
               + f" · pruner {report['pruner']['kind']}{_rungs(report)} · {report['student_steps']:,} student steps so far")
    parts = " · ".join(f"{n} {s}" for s, n in counts.items())
    row = st.container(horizontal=True, vertical_alignment="bottom")
    row.progress(min(finished / max(report["trials_wanted"], 1), 1.0),
                 text=f"{status} · {finished} of {report['trials_wanted']} trials finished" + (f" · {parts}"
                                                                                              if parts else ""))
    alive = driver_alive(report)
    if status in ACTIVE_STUDY and alive and not report["stop_requested"]:
        if row.button("Stop the study", icon=":material/stop:", key=PREFIX + "stop"):
            request_stop(store, study_id)
            st.toast("Stopping the study: its running trials are cancelled")
    elif (status in ACTIVE_STUDY or status == "failed") and not alive:
        if status != "failed":
            st.warning("The study's driver is not running (the machine restarted, or it was stopped).",
                       icon=":material/warning:")
        if st.button("Resume the study", icon=":material/play_arrow:", key=PREFIX + "resume"):
            start_driver(store, study_id)
            st.rerun()
    if status in ("done", "stopped"):
        more = row.number_input("More trials", 1, 500, 4, key=PREFIX + "more", label_visibility="collapsed")
        if row.button(f"Run {more} more trials", icon=":material/add:", key=PREFIX + "extend"):
            extend(store, study_id, int(more))
            start_driver(store, study_id)
            st.rerun()
    if report["error"]:
        st.error(f"The study's driver failed: {report['error']}", icon=":material/error:")


def _rungs(report: dict[str, Any]) -> str:
    rungs = rung_epochs(report["pruner"], RunConfig.from_dict(dict(report["base"])).epochs)
    return f" at epoch{'s' if len(rungs) > 1 else ''} {', '.join(map(str, rungs))}" if rungs else ""


def _verdict(report: dict[str, Any]) -> None:
    best = report["best"]
    st.markdown("**Best settings** (validation accuracy)")
    if not best:
        st.caption("Appears when a trial completes.")
        return
    st.markdown(f"Trial #{best['number']}: **{best['val_acc']:.2%}** · "
                + ", ".join(f"`{k}={charts.value_label(v) if not isinstance(v, float) else f'{v:.4g}'}`"
                            for k, v in best["params"].items()))
    rows = verdict_rows(report["verdict"])
    if rows:
        st.markdown(f"**On the test split, over seeds:** {report['verdict']['verdict']}")
        st.dataframe(pd.DataFrame(rows), hide_index=True, key=PREFIX + "verdict",
                     column_config={"test acc": st.column_config.NumberColumn(format="percent"),
                                    "± 95% CI": st.column_config.NumberColumn(format="percent"),
                                    "gap closed": st.column_config.NumberColumn(format="percent")})
    elif report["status"] == "confirming":
        st.caption(f"Confirming: the best settings and the base config train on {report['seeds']} seeds…")
    run_id = best_run_for_new_run(report)
    if run_id and st.button("Open the best settings in New run", icon=":material/add_circle:", key=PREFIX + "open"):
        st.switch_page("screens/new_run.py", query_params={"from": run_id})


def _trials(report: dict[str, Any]) -> None:
    st.subheader("Trials", divider="gray")
    rows = trial_rows(report)
    if not rows:
        st.caption("The first batch of trials is training.")
        return
    st.dataframe(pd.DataFrame(rows), hide_index=True, key=PREFIX + "trials",
                 column_config={"val_acc": st.column_config.NumberColumn("val acc", format="percent"),
                                "run_id": "Run"})
    run_ids = [r["run_id"] for r in rows]
    if st.button("Compare the trials", icon=":material/compare_arrows:", key=PREFIX + "compare"):
        st.switch_page("screens/compare.py", query_params={"runs": ",".join(run_ids)})


if __name__ == "__main__":
    render()
