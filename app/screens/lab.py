"""Temperature lab: what T does to a trained teacher's soft labels, redrawn as the slider moves.

The teacher's validation logits are computed once per teacher and server (`session.teacher_logits`),
its entropy and dark-knowledge curves once per teacher (`session.temperature_curves`). Moving the
slider reruns only the lab fragment: a few softmaxes over those cached logits, through
`kdcore.temperature` and `kdcore.losses.soft_targets`, and the charts. Nothing trains here: "Train the
default teacher" submits a run to a background worker, and the page follows its progress.
"""

from __future__ import annotations

import math

import numpy as np
import streamlit as st

from app import charts, sentences, session
from app.read_model.lab import SAMPLE_CHOICES, pick_samples
from app.read_model.progress import STAGE_TITLES, format_duration, stage_eta, stage_fraction
from app.read_model.runs import stored_teachers
from app.read_model.sentences import is_text_snapshot, sentence_note, sentence_table
from kdcore.config import RunConfig
from kdcore.errors import KDError, RunNotFound
from kdcore.losses import soft_targets
from kdcore.store import ACTIVE, Store
from kdcore.temperature import class_similarity, dark_knowledge_curve, entropy_curve

CURVE_TEMPERATURES = tuple(float(t) for t in np.geomspace(0.25, 64.0, 49))  # log-spaced: T=1…4 gets its share
T_MIN, T_MAX, T_STEP = 0.5, 20.0, 0.5
T_DEFAULT = RunConfig().temperature  # the teaching preset's T
POLL_S = 1.0
TRAINING = "_kdlab_lab_training"  # the run this session started to get a teacher


def render() -> None:
    st.title("Temperature lab")
    st.caption("How the temperature T reshapes a trained teacher's predictions into the soft labels a student "
               "learns from. Move the slider: nothing trains, the teacher's validation logits are reused.")
    store = session.store()
    teachers = stored_teachers(store.list_runs(status="done"))
    own = _own_training_run(store)
    if not teachers and own is None:
        _empty_state()
    followed = own or (_newest_active_run(store) if not teachers else None)
    if followed is not None:
        st.fragment(_training_panel, run_every=POLL_S)(followed, followed == own)
    if not teachers:
        return
    teacher = _pick_teacher(teachers, own is None)
    loaded = _load(teacher)
    if loaded is not None:
        st.fragment(_lab)(*loaded)
    _formulas()


# --- the teacher ----------------------------------------------------------------------------------------------


def _teacher_label(teacher: dict) -> str:
    t = teacher["teacher"]
    acc = f" · test {100 * teacher['test_acc']:.1f}%" if teacher.get("test_acc") is not None else ""
    return f"{teacher['dataset']} · {t['arch']} · {t['epochs']} epochs{acc} · from {teacher['run_id']}"


def _pick_teacher(teachers: list[dict], offer_default: bool) -> dict:
    """A selectbox of the store's trained teachers, kept in `?teacher=<key>`."""
    keys = [t["key"] for t in teachers]
    requested = st.query_params.get("teacher")
    if requested in keys and st.session_state.get("_kdlab_lab_query") != requested:  # a new link decides
        st.session_state["_kdlab_lab_query"] = st.session_state["lab_teacher"] = requested
    if st.session_state.get("lab_teacher") not in keys:
        st.session_state["lab_teacher"] = keys[0]
    labels = {t["key"]: _teacher_label(t) for t in teachers}
    left, right = st.columns([4, 1], vertical_alignment="bottom")
    key = left.selectbox("Teacher", keys, format_func=labels.get, key="lab_teacher",
                         help="Every distinct teacher trained by a finished run in this store.")
    if st.query_params.get("teacher") != key:
        st.query_params["teacher"] = st.session_state["_kdlab_lab_query"] = key
    if offer_default and RunConfig().teacher_key() not in keys:
        right.button("Train the default teacher", icon=":material/model_training:", key="lab_train_default",
                     on_click=_train_default, width="stretch",
                     help="The teaching preset's teacher (mnist-5k, cnn), trained by a background worker.")
    return next(t for t in teachers if t["key"] == key)


def _load(teacher: dict) -> tuple[str, str, float, str] | None:
    """(config JSON, teacher file, its mtime, teacher key) for the cached look-ups; None, with a message, when the
    teacher's file is gone or its data cannot be loaded."""
    try:
        config_json, path, mtime = session.stored_teacher(teacher)
        session.teacher_logits(config_json, path, mtime)
    except (KDError, OSError) as exc:
        st.warning(f"This teacher cannot be loaded: {exc}", icon=":material/warning:")
        return None
    return config_json, path, mtime, teacher["key"]


# --- training the default teacher ------------------------------------------------------------------------------


def _train_default() -> None:
    config = RunConfig().replace(baseline=False, name="default teacher (temperature lab)")
    try:
        st.session_state[TRAINING] = session.runner().submit(config)
    except KDError as exc:
        st.session_state["_kdlab_lab_error"] = f"Could not start the run: {exc}"


def _own_training_run(store: Store) -> str | None:
    """The run this session started to get a teacher, while it is active."""
    if error := st.session_state.pop("_kdlab_lab_error", None):
        st.error(error)
    run_id = st.session_state.get(TRAINING)
    if not run_id:
        return None
    try:
        record = store.get_run(run_id)
    except RunNotFound:
        record = None
    if record is not None and record.active:
        return run_id
    st.session_state.pop(TRAINING, None)
    if record is not None and record.status != "done":
        st.error(f"The run training the teacher ({run_id}) {record.status}: {record.error or 'no reason given'}")
    return None


def _newest_active_run(store: Store) -> str | None:
    active = store.list_runs(status=list(ACTIVE), limit=1)
    return active[0].id if active else None


def _training_panel(run_id: str, own: bool) -> None:
    try:
        session.keep_queue_moving()
        record = session.store().get_run(run_id)
    except KDError as exc:
        st.warning(f"Cannot follow {run_id}: {exc}")
        return
    if not record.active:
        st.rerun()  # the teacher is in the store now: draw the lab
    progress = record.progress or {}
    stage = STAGE_TITLES.get(progress.get("stage"), "Waiting for a worker" if record.status == "queued" else "Starting")
    fraction = stage_fraction(progress)
    epochs = f" · epoch {min(progress.get('epoch', 0) + 1, progress['epochs'])}/{progress['epochs']}" \
        if progress.get("epochs") else ""
    left = stage_eta(progress)
    with st.container(border=True):
        st.markdown(f"**Training a teacher** in a background worker: run `{run_id}` ({record.status}). "
                    "The lab opens when the run has finished." if own else
                    f"Run `{run_id}` is training ({record.status}); when it finishes, its teacher appears here.")
        st.progress(fraction or 0.0, text=f"{stage}{epochs}" + (f" · stage ends in {format_duration(left)}"
                                                                 if left is not None else ""))
        st.page_link("screens/live.py", label="Watch it on the Live run page", icon=":material/monitoring:",
                     query_params={"run": run_id})


def _empty_state() -> None:
    st.info("No finished run in this store has trained a teacher yet. Train the teaching preset's teacher "
            "(mnist-5k, a small CNN; about a minute on a laptop CPU) and the lab opens when it is ready.",
            icon=":material/info:")
    st.button("Train the default teacher", type="primary", icon=":material/model_training:", key="lab_train_default",
              on_click=_train_default)


# --- the lab ------------------------------------------------------------------------------------------------------


def _lab(config_json: str, path: str, mtime: float, key: str) -> None:
    data = session.teacher_logits(config_json, path, mtime)
    logits, labels = data.logits, data.labels
    num_classes = logits.shape[1]
    temperature, indices = _controls(data)

    at = {"entropy": entropy_curve(logits, [temperature])[0],
          "dark_knowledge": dark_knowledge_curve(logits, [temperature])[0]}
    cols = st.columns(3)
    cols[0].metric(f"Mean entropy at T = {temperature:g}", f"{at['entropy']:.3f} nats",
                   help=f"Of the soft labels over {len(labels):,} validation examples; at most log {num_classes} = "
                        f"{math.log(num_classes):.3f} (uniform).")
    cols[1].metric(f"Dark knowledge at T = {temperature:g}", f"{at['dark_knowledge']:.1%}",
                   help="Mean probability off the teacher's top class: what the student learns beyond the label.")
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    cols[2].metric("Teacher validation accuracy", f"{accuracy:.1%}",
                   help="The same at every T: dividing the logits by T never changes which one is largest.")

    snapshot = _snapshot(data, indices, temperature, key)
    if is_text_snapshot(snapshot):
        st.markdown(f"**Soft labels of {len(indices)} validation sentences**")
        st.caption(sentence_note(snapshot))
        sentences.show(sentence_table(snapshot), key="lab_sentences")
    else:
        st.plotly_chart(charts.soft_label_figure(snapshot, None, None,
                                                 title=f"Soft labels of {len(indices)} validation samples · "
                                                       f"T = 1 (light) and T = {temperature:g} (dark)"),
                        key="lab_soft")
    left, right = st.columns([3, 2])
    with left:
        curves = session.temperature_curves(config_json, path, mtime, CURVE_TEMPERATURES)
        st.plotly_chart(charts.temperature_curves_figure(curves, temperature, at, num_classes), key="lab_curves")
    with right:
        similarity = class_similarity(logits, labels, temperature, num_classes)
        st.plotly_chart(charts.class_similarity_figure(similarity.tolist(), data.class_names, temperature),
                        key="lab_similarity")
    st.caption("Row a of the matrix: of the probability the teacher gives to wrong classes for examples of class a, "
               "the share each other class gets. Those are the similarities a student can learn from soft labels.")


def _controls(data) -> tuple[float, list[int]]:
    """The temperature slider and the choice of samples; returns T and the indices to show."""
    cols = st.columns([3, 3, 1], vertical_alignment="bottom")
    temperature = cols[0].slider("Temperature T", T_MIN, T_MAX, T_DEFAULT, step=T_STEP, key="lab_temperature",
                                 help="T = 1 is the plain softmax; a larger T flattens it.")
    how = cols[1].segmented_control("Samples", list(SAMPLE_CHOICES), format_func=SAMPLE_CHOICES.get,
                                    default="per_class", required=True, key="lab_samples")
    count = cols[2].number_input("How many", 1, 10, 5, key="lab_count")
    if how == "random" and st.button("Draw others", icon=":material/casino:", type="tertiary", key="lab_redraw"):
        st.session_state["_kdlab_lab_seed"] = st.session_state.get("_kdlab_lab_seed", 0) + 1
    plain = soft_targets(data.logits, 1.0)
    confidence, predictions = plain.max(dim=1)
    indices = pick_samples(data.labels.tolist(), predictions.tolist(), confidence.tolist(), how, int(count),
                           seed=st.session_state.get("_kdlab_lab_seed", 0))
    if not indices:
        st.caption("The teacher gets every validation example right: showing one per class instead.")
        indices = pick_samples(data.labels.tolist(), predictions.tolist(), confidence.tolist(), "per_class", int(count))
    return temperature, indices


def _snapshot(data, indices: list[int], temperature: float, key: str) -> dict:
    """The selected samples in the shape `charts.soft_label_figure` draws (a trainer snapshot's)."""
    logits = data.logits[indices]
    return {"id": f"lab-{key}", "temperature": temperature, "class_names": data.class_names,
            "labels": data.labels[indices].tolist(),
            "teacher_T1": soft_targets(logits, 1.0).tolist(), "teacher_T": soft_targets(logits, temperature).tolist(),
            "images": data.images[indices].tolist() if data.images is not None else None,
            "texts": [data.texts[i] for i in indices] if data.texts else None}


# --- the formulas -------------------------------------------------------------------------------------------------


def _formulas() -> None:
    st.subheader("The formulas", divider="gray")
    cols = st.columns(3, gap="large")
    with cols[0]:
        st.markdown(r"**Softmax with temperature.** The teacher's logits $z_t$ are divided by $T$ before the "
                    r"softmax $\sigma$; that gives its soft labels $p$:")
        st.latex(r"p_i = \sigma(z_t/T)_i = \frac{e^{z_{t,i}/T}}{\sum_j e^{z_{t,j}/T}}")
        st.markdown(r"$T = 1$ is the ordinary softmax; $T \to \infty$ tends to uniform, $T \to 0$ to one-hot. "
                    r"The order of the $p_i$ never changes, so neither does the prediction. "
                    r"The entropy $H(p) = -\sum_i p_i \log p_i$ measures the spread; the dark knowledge "
                    r"$1 - \max_i p_i$ is the mass on the wrong classes.")
    with cols[1]:
        st.markdown(r"**The distillation loss.** The student's softened prediction $q = \sigma(z_s/T)$ is pulled "
                    r"towards $p$, beside the usual cross-entropy with the labels $y$:")
        st.latex(r"\begin{aligned}\mathcal{L} = {} & (1-\alpha)\,\mathrm{CE}\big(y, \sigma(z_s)\big) \\ "
                 r"& + \alpha\, T^2\, \mathrm{KL}(p\,\|\,q)\end{aligned}")
        st.latex(r"\mathrm{KL}(p\,\|\,q) = \sum_i p_i \log \frac{p_i}{q_i}")
    with cols[2]:
        st.markdown(r"**Why $T^2$.** The gradient of the KL term with respect to a student logit is")
        st.latex(r"\begin{aligned}\frac{\partial\, \mathrm{KL}}{\partial z_{s,i}} & = \frac{q_i - p_i}{T} \\ "
                 r"& \approx \frac{z_{s,i} - z_{t,i}}{C\,T^2}\end{aligned}")
        st.markdown(r"for large $T$ ($C$ classes, zero-mean logits): it shrinks as $1/T^2$. Multiplying the term by "
                    r"$T^2$ keeps its scale, relative to the cross-entropy, the same whatever $T$ is "
                    r"(Hinton, Vinyals & Dean, 2015).")


if __name__ == "__main__":
    render()
