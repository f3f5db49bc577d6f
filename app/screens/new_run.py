"""New run: a form over `RunConfig`, its loss and model sizes shown before launch.

Every widget holds one form value (`nr_<field>`, see `app.form`); the values persist for the
session so a trip to another page keeps them. Validation is the engine's own (`RunConfig`), and
Start stays disabled while anything is invalid. `?from=run-…` fills the form from a stored run,
its method and the method's parameters included. Picking another method puts its parameters back
at the paper's defaults.
"""

from __future__ import annotations

import math
from pathlib import Path

import streamlit as st

from app import form, session
from app.read_model.runs import stored_teachers
from app.workshop import access, policy
from kdcore.config import MAX_DEVICES, OPTIMIZERS, SCHEDULES
from kdcore.dataset_names import CSV_PREFIX, DATASET_NAMES, IMAGEFOLDER_PREFIX, is_csv, is_text
from kdcore.errors import KDError
from kdcore.methods import METHODS, ParamSpec, teacher_seeds
from kdcore.model_names import ARCHS, HF_PREFIX, MLP_PREFIX, TRANSFORMER_PREFIX
from kdcore.presets import PRESETS
from kdcore.teachers import bundled_path

PREFIX = "nr_"
KEEP = {"persist_state": "session"}  # form values survive a visit to another page
CHALLENGE_ENTRY = PREFIX + "challenge_entry"  # workshop only, not a RunConfig field: set by the Challenge page too
PRESET_CHOICE = PREFIX + "preset_choice"  # not a RunConfig field: the preset "Load preset" fills the form from


def render() -> None:
    store = session.store()
    session.warm_spare()  # a worker readies itself (imports torch) while the form is read
    _init_form(store)
    st.title("New run")
    teachers = stored_teachers(store.list_runs(status="done"))
    _sync_store_teacher(teachers)
    left, right = st.columns([3, 2], gap="large")
    with left:
        header_errors = _form(store, teachers)
    values = {key[len(PREFIX):]: st.session_state.get(key) for key in _keys()}
    store_teacher = _chosen_teacher(teachers) if values["teacher_source"] == "store" else None
    devices = session.available_devices()
    base = st.session_state.get("_kdlab_form_base")
    config, errors = form.validate(values, base=base, store_teacher=store_teacher, devices=devices)
    errors = header_errors + errors + _workshop_problems(config) + _label_problems(config) + _transfer_problems(config)
    with right:
        _summary(values, store_teacher, config, errors)
        _budget_note(config)


# --- state ------------------------------------------------------------------------------------------------------


def _keys() -> list[str]:
    return [PREFIX + name for name in form.defaults()]


def _set_values(values: dict) -> None:
    for name, value in values.items():
        st.session_state[PREFIX + name] = value


def _init_form(store) -> None:
    """Defaults for unset fields; a `?from=run-…` in the URL fills the form once per session and run."""
    source = st.query_params.get("from")
    if source and st.session_state.get("_kdlab_form_from") != source:
        st.session_state["_kdlab_form_from"] = source
        try:
            config = store.get_run(source).config
            _set_values(form.from_config(config))
            st.session_state["_kdlab_form_base"] = config  # keeps the settings the form does not show
            st.toast(f"Form filled from {source}")
        except KDError as exc:
            st.warning(f"Cannot copy the settings of {source}: {exc}")
    for name, value in form.defaults().items():
        st.session_state.setdefault(PREFIX + name, value)


def _reset() -> None:
    _set_values(form.defaults())
    st.session_state.pop("_kdlab_form_base", None)


def _load_preset() -> None:
    """Fill the form from the chosen named preset; its settings the form does not show stay in the base."""
    name = st.session_state[PRESET_CHOICE]
    config = form.preset_config(name)
    _set_values(form.from_config(config))
    st.session_state["_kdlab_form_base"] = config
    st.session_state[PREFIX + "name"] = "" if name == "teaching" else name
    st.toast(f"Form filled from the preset {name}")


def _chosen_teacher(teachers: list[dict]) -> dict | None:
    key = st.session_state.get(PREFIX + "teacher_key")
    return next((t for t in teachers if t["key"] == key), None)


def _sync_store_teacher(teachers: list[dict]) -> None:
    """With "reuse a teacher" chosen, pick one (the newest) if none is, before any widget is drawn."""
    if st.session_state[PREFIX + "teacher_source"] != "store" or not teachers:
        return
    if _chosen_teacher(teachers) is None:
        st.session_state[PREFIX + "teacher_key"] = teachers[0]["key"]
        _apply_store_teacher(teachers)


def _apply_store_teacher(teachers: list[dict]) -> None:
    """Show the chosen stored teacher's settings in the form (they are what the run will use)."""
    chosen = _chosen_teacher(teachers)
    if chosen is None:
        return
    shared, teacher = chosen["shared"], chosen["teacher"]
    _set_values({"dataset": shared.get("dataset"), "text_column": shared.get("text_column", "text"),
                 "label_column": shared.get("label_column", "label"), "teacher_arch": teacher["arch"],
                 "teacher_epochs": teacher["epochs"],
                 "teacher_lr": teacher["lr"], "teacher_batch_size": teacher["batch_size"],
                 "teacher_seed": teacher["seed"],
                 "teacher_augment": bool(teacher.get("augment", False))})
    for name in ("val_fraction", "optimizer", "weight_decay", *form.SCHEDULE_FIELDS):
        if name in shared:
            value = shared[name]
            st.session_state[PREFIX + name] = ",".join(map(str, value)) if name == "lr_milestones" else value
    st.session_state[PREFIX + "data_root"] = shared.get("data_root") or ""


# --- the form ---------------------------------------------------------------------------------------------------


def _carry_weights() -> None:
    """Switching between α and independent weights keeps the same mix of CE and KD."""
    state = st.session_state
    if state[PREFIX + "weights_mode"] == "advanced":
        alpha = state[PREFIX + "alpha"]
        _set_values({"w_ce": round(1.0 - alpha, 6), "w_kd": round(alpha, 6), "w_feature": 0.0})
    else:
        ce, kd = state[PREFIX + "w_ce"], state[PREFIX + "w_kd"]
        if ce >= 0 and kd >= 0 and ce + kd > 0:
            state[PREFIX + "alpha"] = round(kd / (ce + kd) * 20) / 20  # the slider's 0.05 steps


def _with_current(options: list[str], key: str) -> list[str]:
    current = st.session_state.get(key)
    return options if current in options or current is None else [*options, current]


def _form(store, teachers: list[dict]) -> list[str]:
    """Draw the widgets; returns problems found while reading an uploaded checkpoint."""
    errors: list[str] = []
    source = st.session_state[PREFIX + "teacher_source"]
    from_store = source == "store"

    workshop = access.enabled()  # a shared server: only listed datasets and names, no folders, no paths
    if not workshop:
        _preset_picker()
    st.subheader("Data", divider="gray")
    if workshop:
        allowed = policy.allowed_datasets()
        if st.session_state[PREFIX + "dataset"] not in allowed:
            st.session_state[PREFIX + "dataset"] = allowed[0]
        # never a path copied from a run (`?from=`)
        for name in ("data_root", "transfer", "transfer_column", "mlflow", "tensorboard"):
            st.session_state[PREFIX + name] = ""
        st.selectbox("Dataset", allowed, key=PREFIX + "dataset", disabled=from_store, **KEEP,
                     help="The datasets this workshop offers.")
    else:
        st.selectbox("Dataset", _with_current(list(DATASET_NAMES), PREFIX + "dataset"), key=PREFIX + "dataset",
                     accept_new_options=True, disabled=from_store, on_change=_adapt_to_dataset, **KEEP,
                     help=f"A bundled set, {IMAGEFOLDER_PREFIX}/path/to/images (one subfolder per class), or "
                          f"{CSV_PREFIX}/path/to/file.csv (your own text: a CSV or TSV with a text and a label column).")
    dataset = st.session_state[PREFIX + "dataset"]
    info = form.dataset_info(dataset)
    if is_csv(dataset):
        st.caption("Your own text: each row a sentence and its class (any strings), split into training, validation "
                   "and test like the built-in sets, cut to the tokenizer's 128 tokens.")
    elif info is not None:
        shape = ("up to {} tokens of a {:,}-word vocabulary".format(*info.input_shape) if info.kind == "text"
                 else "×".join(map(str, info.input_shape)))
        st.caption(f"{info.description}. Input {shape}, {info.num_classes} classes."
                   + ("" if info.offline else " Needs its files under the data folder (or a download on first use)."))
    else:
        st.caption("Your own images: their shape is known once the worker reads them.")
    if not workshop and (is_csv(dataset) or dataset == "rotten-tomatoes"):
        _text_data(store, dataset, disabled=from_store)

    st.subheader("Teacher", divider="gray")
    st.radio("Teacher", list(form.TEACHER_SOURCES), format_func=form.TEACHER_SOURCES.get, horizontal=True,
             key=PREFIX + "teacher_source", label_visibility="collapsed", on_change=_apply_store_teacher,
             args=(teachers,), **KEEP)
    arch_locked = from_store
    if from_store:
        if teachers:
            keys = [t["key"] for t in teachers]
            labels = {t["key"]: _teacher_label(t) for t in teachers}
            st.selectbox("Trained teacher", keys, format_func=labels.get, key=PREFIX + "teacher_key",
                         on_change=_apply_store_teacher, args=(teachers,), **KEEP,
                         help="The run copies this teacher's settings, so the engine reuses it instead of training.")
        else:
            st.info("No finished run in this store has trained a teacher yet.")
    elif source == "upload":
        arch_locked, upload_errors = _upload(store)
        errors += upload_errors
    cols = st.columns(2)
    cols[0].selectbox("Teacher architecture", _with_current(form.archs_for(dataset), PREFIX + "teacher_arch"),
                      key=PREFIX + "teacher_arch",
                      accept_new_options=not workshop, disabled=arch_locked, format_func=_arch_label, **KEEP,
                      help=_arch_help(dataset, teacher=True))
    if source != "upload":
        cols[1].number_input("Teacher epochs", step=1, key=PREFIX + "teacher_epochs", disabled=from_store, **KEEP)
    if source == "train":
        st.toggle("Use a ready-trained teacher when KD Lab ships one for these settings", key=PREFIX + "teacher_bundled",
                  **KEEP, help="KD Lab ships the default teachers of mnist-5k and digits; off: train the teacher here.")

    st.subheader("Student", divider="gray")
    st.selectbox("Student architecture", _with_current(form.archs_for(dataset), PREFIX + "student_arch"),
                 key=PREFIX + "student_arch",
                 accept_new_options=not workshop, format_func=_arch_label, **KEEP,
                 help=_arch_help(dataset, teacher=False))

    st.subheader("Distillation", divider="gray")
    _method_picker(dataset)
    cols = st.columns(2)
    cols[0].number_input("Temperature T", step=0.5, format="%g", key=PREFIX + "temperature", **KEEP,
                         help="Softens both softmaxes; T = 1 is the plain softmax.")
    cols[1].radio("Loss weights", list(form.WEIGHT_MODES), format_func=form.WEIGHT_MODES.get, horizontal=True,
                  key=PREFIX + "weights_mode", on_change=_carry_weights, **KEEP)
    if st.session_state[PREFIX + "weights_mode"] == "simple":
        st.slider("α: share of the distillation term", 0.0, 1.0, step=0.05, key=PREFIX + "alpha", **KEEP,
                  help="loss = (1 − α)·CE + α·T²·KL. α = 0 trains on hard labels only.")
    else:
        cols = st.columns(3)
        cols[0].number_input("CE weight", step=0.1, format="%g", key=PREFIX + "w_ce", **KEEP)
        cols[1].number_input("KD weight", step=0.1, format="%g", key=PREFIX + "w_kd", **KEEP)
        cols[2].number_input("Feature weight", step=0.1, format="%g", key=PREFIX + "w_feature", **KEEP,
                             help="FitNets hint: MSE between a projection of the student's features and the teacher's.")
    note = form.weights_note(st.session_state[PREFIX + "method"])
    if note:
        st.caption(note)

    st.subheader("Training", divider="gray")
    cols = st.columns(3)
    cols[0].number_input("Epochs", step=1, key=PREFIX + "epochs", **KEEP)
    cols[1].number_input("Batch size", step=16, key=PREFIX + "batch_size", **KEEP)
    cols[2].number_input("Learning rate", step=0.0005, format="%g", key=PREFIX + "lr", **KEEP)
    cols = st.columns(3)
    cols[0].number_input("Seed", step=1, key=PREFIX + "seed", **KEEP)
    devices = session.available_devices()
    cols[1].selectbox("Device", _with_current(["auto", *devices], PREFIX + "device"), key=PREFIX + "device", **KEEP,
                      format_func=lambda d: f"auto ({devices[0]})" if d == "auto" else d,
                      help=f"Available here: {', '.join(devices)}.")
    cols[2].number_input("Fine-tune epochs", step=1, key=PREFIX + "finetune_epochs", **KEEP,
                         help="Hard-label epochs after distillation, at a tenth of the learning rate (0: none).")
    cols = st.columns([1, 2])
    cols[0].toggle("Train a baseline", key=PREFIX + "baseline", **KEEP,
                   help="The same student on hard labels alone, same seed and budget: what distillation must beat.")
    cols[1].text_input("Run name (optional)", key=PREFIX + "name", max_chars=policy.NAME_MAX_CHARS if workshop else 200,
                       **KEEP)
    if workshop and access.room().challenge() is not None:
        st.toggle("Enter the challenge", key=CHALLENGE_ENTRY, **KEEP,
                  help="The run competes on the leaderboard: it must keep to the challenge's dataset, teacher, "
                       "parameter limit and budget (see the Challenge page), or it is refused.")

    with st.expander("Advanced settings"):
        cols = st.columns(3)
        cols[0].selectbox("Optimizer", list(OPTIMIZERS), key=PREFIX + "optimizer", disabled=from_store, **KEEP)
        cols[1].number_input("Weight decay", step=0.0001, format="%g", key=PREFIX + "weight_decay", disabled=from_store,
                             **KEEP)
        cols[2].number_input("Validation fraction", step=0.05, format="%g", key=PREFIX + "val_fraction",
                             disabled=from_store, **KEEP)
        if not workshop:  # the room's runs keep the teaching schedule
            _schedule_inputs(from_store)
        cols = st.columns(3)
        cols[0].number_input("Teacher learning rate", step=0.0005, format="%g", key=PREFIX + "teacher_lr",
                             disabled=from_store, **KEEP)
        cols[1].number_input("Teacher batch size", step=16, key=PREFIX + "teacher_batch_size", disabled=from_store,
                             **KEEP)
        cols[2].number_input("Teacher seed", step=1, key=PREFIX + "teacher_seed", disabled=from_store, **KEEP)
        cols = st.columns(3)
        text = is_text(dataset)  # shifts and flips are for images; text gets more sentences from transfer=augment:N
        cols[0].toggle("Augment the teacher's data", key=PREFIX + "teacher_augment", disabled=from_store or text, **KEEP,
                       help="Random shifts (CIFAR: random crop + flip) while the teacher trains.")
        cols[1].toggle("Augment the student's data", key=PREFIX + "augment", disabled=text, **KEEP,
                       help="Random shifts (CIFAR: the standard random crop + flip) for student and baseline; the teacher "
                            "then runs on every batch.")
        cols[2].toggle("bf16 autocast on CUDA", key=PREFIX + "amp", **KEEP)
        if not workshop:
            cols[0].text_input("Data folder", key=PREFIX + "data_root", disabled=from_store, **KEEP,
                               placeholder="$KDCORE_DATA or ./data")
        cols = st.columns(3)
        cols[0].number_input("Labelled fraction", step=0.05, format="%g", key=PREFIX + "labeled_fraction", **KEEP,
                             help="The share of the training split whose labels the student and the baseline may use "
                                  "(stratified); the teacher labels the rest.")
        if not workshop:
            cols[1].text_input("Transfer set", key=PREFIX + "transfer", **KEEP, placeholder="none",
                               help="Extra unlabelled inputs the teacher labels. Text: augment:N, N copies of each "
                                    "training sentence with tokens masked or an n-gram cut out (Tang et al. 2019); "
                                    f"{CSV_PREFIX}/path/to/texts.csv, a column of texts (labels, if any, are ignored); "
                                    "or rotten-tomatoes. "
                                    f"Images: a dataset of the same shape, or {IMAGEFOLDER_PREFIX}/path/to/images.")
            if text:
                csv_transfer = is_csv((st.session_state.get(PREFIX + "transfer") or "").strip())
                cols[2].text_input("Transfer text column", key=PREFIX + "transfer_column", **KEEP,
                                   disabled=not csv_transfer, placeholder="the text column",
                                   help=f"The column of the {CSV_PREFIX} transfer set that holds its texts; empty: the "
                                        "dataset's text column.")
            cols = st.columns(3)  # a room's runs train in one process each: its server's cores are shared
            cols[0].number_input("Processes (devices)", min_value=1, max_value=MAX_DEVICES, step=1,
                                 key=PREFIX + "devices", **KEEP,
                                 help="Data-parallel processes that train this run together (PyTorch DDP): one GPU "
                                      "each on CUDA, else CPU processes. Both batch sizes must divide by it; the "
                                      "results equal one process's with the same batch. 1: one process.")
    if not workshop:
        with st.expander("Tracking"):
            st.text_input("MLflow tracking URI", key=PREFIX + "mlflow", **KEEP, placeholder="none",
                          help="Log the run live to MLflow: sqlite:///path/mlflow.db, a folder, or http://host:5000 "
                               "(params, every series, the summary, the student).")
            st.text_input("TensorBoard folder", key=PREFIX + "tensorboard", **KEEP, placeholder="none",
                          help="Log the run's series live as TensorBoard events under <folder>/<run id>/.")
            st.caption("A tracker that cannot be reached never stops the run: its log says so, and "
                       "`python -m kdcore sync RUN_ID` exports the run later.")
    st.button("Reset to the teaching preset", on_click=_reset, type="tertiary", icon=":material/restart_alt:")
    return errors


def _schedule_inputs(from_store: bool) -> None:
    """The learning-rate schedule and SGD's momentum (what the CIFAR recipe changes); a reused teacher's are fixed."""
    cols = st.columns(3)
    cols[0].selectbox("Learning-rate schedule", list(SCHEDULES), key=PREFIX + "schedule", disabled=from_store, **KEEP,
                      help="cosine: decays to 0 over each stage. step: × decay after each milestone epoch.")
    step_schedule = st.session_state[PREFIX + "schedule"] == "step"
    cols[1].text_input("LR milestones (epochs)", key=PREFIX + "lr_milestones", disabled=from_store or not step_schedule,
                       **KEEP, placeholder="e.g. 150,180,210", help="Epochs after which the step schedule decays the lr.")
    cols[2].number_input("LR decay", step=0.05, format="%g", key=PREFIX + "lr_decay", disabled=from_store or not step_schedule,
                         **KEEP, help="The factor at each milestone (0.1 in the CIFAR KD papers).")
    sgd = st.session_state[PREFIX + "optimizer"] == "sgd"
    cols = st.columns(3)
    cols[0].number_input("SGD momentum", step=0.05, format="%g", key=PREFIX + "momentum", disabled=from_store or not sgd,
                         **KEEP)
    cols[1].toggle("Nesterov momentum", key=PREFIX + "nesterov", disabled=from_store or not sgd, **KEEP,
                   help="The CIFAR KD papers use plain momentum.")


def _preset_picker() -> None:
    """Start from a named preset (`python -m kdcore list-presets`): it fills every field, and keeps what the form
    does not show."""
    cols = st.columns([3, 1], vertical_alignment="bottom")
    cols[0].selectbox("Preset", list(PRESETS), key=PRESET_CHOICE, format_func=_preset_label,
                      help="Named settings the engine knows (python -m kdcore list-presets): the teaching preset, the "
                           "workshop lesson, and the CIFAR-100 recipe of the KD papers.")
    cols[1].button("Load preset", on_click=_load_preset, icon=":material/upload:", key=PREFIX + "load_preset")
    preset = PRESETS[st.session_state[PRESET_CHOICE]]
    st.caption(preset.description + "." + (f" {preset.notes}" if preset.notes else ""))


def _preset_label(name: str) -> str:
    return {"teaching": "teaching (the defaults)"}.get(name, name)


def _method_label(method: str) -> str:
    entry = METHODS.get(method)
    return f"{entry.spec.title} ({method})" if entry else method


def _reset_method_params() -> None:
    """A newly picked method starts from its paper's defaults."""
    method = st.session_state[PREFIX + "method"]
    _set_values({form.param_key(method, name): form.param_default(param)
                 for name, param in METHODS[method].spec.params.items()})


def _method_picker(dataset: str) -> None:
    """The method, what it does and where it comes from, and inputs for its own parameters."""
    st.selectbox("Method", _with_current(form.methods_for(dataset), PREFIX + "method"), format_func=_method_label,
                 key=PREFIX + "method",
                 on_change=_reset_method_params, **KEEP,
                 help="How the student learns from the teacher. Its parameters start at the paper's defaults.")
    entry = METHODS.get(st.session_state[PREFIX + "method"])
    if entry is None:
        return
    spec = entry.spec
    st.markdown(spec.explanation)
    st.caption(f":material/menu_book: {spec.paper}")
    params = list(spec.params.items())
    for row in range(0, len(params), 3):
        cols = st.columns(3)
        for col, (name, param) in zip(cols, params[row:row + 3]):
            _param_input(col, spec.name, name, param)


def _param_input(col, method: str, name: str, param: ParamSpec) -> None:
    default = form.param_default(param)
    limits = (int(param.low), int(param.high)) if param.integer else (float(param.low), float(param.high))
    step = 1 if param.integer else _float_step(default)
    # named with the method, so DKD's own α is not mistaken for the loss-mix α slider below
    col.number_input(f"{method} · {name.replace('_', ' ')}", *limits, step=step, format=None if param.integer else "%g",
                     key=PREFIX + form.param_key(method, name), **KEEP,
                     help=f"{param.help}. Paper default {default:g}; from {param.low:g} to {param.high:g}.")


def _float_step(default: float) -> float:
    """A tenth of the default's order of magnitude: 1000 → 100, 8 → 0.1, 25 → 1."""
    return 10.0 ** (math.floor(math.log10(default)) - 1) if default > 0 else 0.1


def _adapt_to_dataset() -> None:
    """A newly chosen dataset keeps what fits it and gets its kind's defaults for the rest (`form.adapt_to_dataset`)."""
    values = {key[len(PREFIX):]: st.session_state.get(key) for key in _keys()}
    _set_values(form.adapt_to_dataset(values))


def _arch_help(dataset: str, *, teacher: bool) -> str:
    if is_text(dataset):
        own = (f"{HF_PREFIX}<model id or folder> for any Hugging Face encoder (downloaded only when online), or "
               if teacher else "")
        return (f"The models that read this text. Or {own}{TRANSFORMER_PREFIX}LAYERS,WIDTH for a Transformer of "
                "your own size.")
    return f"The models that fit this data, or {MLP_PREFIX}W1,W2,… for an MLP of your own widths."


def _text_data(store, dataset: str, *, disabled: bool) -> None:
    """A CSV's columns and an upload for it; for the bundled reviews, where they come from."""
    if not is_csv(dataset):
        st.caption("Short English review snippets; the teacher's WordPiece tokenizer (MiniLM's) turns each into up to "
                   "128 token ids.")
        return
    uploaded = st.file_uploader("Or upload a CSV / TSV", type=["csv", "tsv"], key=PREFIX + "csv_upload",
                                disabled=disabled,
                                help="Kept in the run store (named by its content) and used as csv:<its path>.")
    if uploaded is not None:
        path = f"{CSV_PREFIX}{store.save_upload(uploaded.name, uploaded.getvalue(), suffixes=('.csv', '.tsv'))}"
        if st.session_state[PREFIX + "dataset"] != path:
            st.session_state[PREFIX + "dataset"] = path
            st.rerun()
    cols = st.columns(2)
    cols[0].text_input("Text column", key=PREFIX + "text_column", disabled=disabled, **KEEP,
                       help="The header of the column that holds the sentences.")
    cols[1].text_input("Label column", key=PREFIX + "label_column", disabled=disabled, **KEEP,
                       help="The header of the column that holds each sentence's class; any strings.")


def _arch_label(arch: str) -> str:
    info = ARCHS.get(arch)
    return f"{arch} — {info.description}" if info else arch


def _teacher_label(teacher: dict) -> str:
    t = teacher["teacher"]
    acc = f" · test {100 * teacher['test_acc']:.1f}%" if teacher.get("test_acc") is not None else ""
    return f"{t['arch']} · {t['epochs']} epochs · {teacher['dataset']}{acc} · from {teacher['run_id']}"


def _upload(store) -> tuple[bool, list[str]]:
    """Save an uploaded checkpoint in the store (`Store.save_upload`) and read what it says about itself.

    Returns whether the architecture is fixed by the file, and any problem with it.
    """
    limit_mb = policy.upload_limit_bytes() // (1024 * 1024) if access.enabled() else None
    uploaded = st.file_uploader("Teacher checkpoint", type=["pt", "pth"], key=PREFIX + "upload",
                                max_upload_size=max(limit_mb, 1) if limit_mb is not None else None,
                                help="A .pt written by kdcore (it names its architecture), or a bare state dict.")
    if uploaded is not None:
        if access.enabled():
            try:  # the browser enforces the limit too; this is the check
                policy.check_upload(uploaded.size)
            except KDError as exc:
                return False, [str(exc)]
        st.session_state[PREFIX + "teacher_checkpoint"] = str(store.save_upload(uploaded.name, uploaded.getvalue()))
    checkpoint = st.session_state.get(PREFIX + "teacher_checkpoint")
    if not checkpoint:
        return False, []
    path = Path(checkpoint)
    if not path.is_file():
        return False, [f"The checkpoint {path} no longer exists; upload it again."]
    try:
        header = session.checkpoint_header(str(path), path.stat().st_mtime)
    except KDError as exc:
        return False, [str(exc)]
    st.caption(f"Using `{path.name}`" + (f": a kdcore **{header.arch}** with {header.num_classes} classes."
                                        if header.arch else ": a bare state dict; choose its architecture."))
    if header.arch and st.session_state.get(PREFIX + "teacher_arch") != header.arch:
        st.session_state[PREFIX + "teacher_arch"] = header.arch
    from kdcore.checkpoints import check_teacher_fits  # torch, already imported to read the header

    try:  # the engine's check, the one `submit` makes: classes, input shape, every tensor's shape
        check_teacher_fits(header, path.name, arch=st.session_state[PREFIX + "teacher_arch"],
                           dataset=st.session_state[PREFIX + "dataset"], what="the checkpoint")
    except KDError as exc:
        return bool(header.arch), [str(exc)]
    return bool(header.arch), []


# --- what will run ------------------------------------------------------------------------------------------------


def _summary(values: dict, store_teacher: dict | None, config, errors: list[str]) -> None:
    st.subheader("What will be optimised", divider="gray")
    latex = form.loss_preview(values)
    if latex is not None:
        st.latex(latex)
        st.caption(form.loss_legend(values))
    _sizes(values, store_teacher)
    for message in errors:
        st.error(message, icon=":material/error:")
    if st.button("Start run", type="primary", icon=":material/rocket_launch:", disabled=config is None or bool(errors),
                 width="stretch", key="nr_start"):
        _start(config)
    if config is not None and not errors:
        if store_teacher is not None:
            teacher = f" with the teacher trained in {store_teacher['run_id']}"
        elif config.teacher.checkpoint:
            teacher = " with the uploaded teacher"
        elif config.teacher.bundled and bundled_path(config.teacher_key()) and len(teacher_seeds(config)) == 1:
            teacher = " with the ready-trained teacher KD Lab ships for these settings"
        elif len(teacher_seeds(config)) > 1:
            count = len(teacher_seeds(config))
            teacher = f" after {count} {config.teacher.epochs}-epoch teachers (or their cached copies)"
        else:
            teacher = f" after a {config.teacher.epochs}-epoch teacher (or its cached copy)"
        st.caption(f"Trains in a background worker: {config.epochs} student epochs{teacher}"
                   + (", then the baseline." if config.baseline else "."))


def _sizes(values: dict, store_teacher: dict | None) -> None:
    info = form.dataset_info(values["dataset"])
    teacher_arch = store_teacher["teacher"]["arch"] if store_teacher else values["teacher_arch"]
    counts = []
    for arch in (teacher_arch, values["student_arch"]):
        try:
            counts.append(session.parameter_count(arch, info.input_shape, info.num_classes) if info else None)
        except (KDError, ValueError, TypeError):
            counts.append(None)
    st.markdown("**Trainable parameters**")
    cols = st.columns(3)
    cols[0].metric("Teacher", f"{counts[0]:,}" if counts[0] else "—")
    cols[1].metric("Student", f"{counts[1]:,}" if counts[1] else "—")
    ratio = counts[0] / counts[1] if counts[0] and counts[1] else None
    cols[2].metric("Compression", f"{ratio:,.1f}×" if ratio else "—", help="teacher parameters / student parameters")


def _workshop_problems(config) -> list[str]:
    """In workshop mode, what the room's policy refuses (the same checks `access.submit` makes): for a challenge
    entry, the challenge's limits instead of the room's budget."""
    if config is None or not access.enabled():
        return []
    room = access.room()
    actor = access.actor()
    challenge = room.challenge() if st.session_state.get(CHALLENGE_ENTRY) else None
    try:
        policy.check_run(config.to_dict(), is_upload=session.store().is_upload,
                         budget=None if actor.is_instructor or challenge is not None else room.budget())
        if challenge is not None:
            policy.check_challenge_entry(config.to_dict(), challenge, session.parameter_count)
    except KDError as exc:
        return [str(exc)]
    return []


def _label_problems(config) -> list[str]:
    """A labelled fraction that leaves a class without a labelled example, refused here as `submit` refuses it."""
    problem = session.label_coverage_problem(config)
    return [problem + " (Labelled fraction, under Advanced settings.)"] if problem else []


def _transfer_problems(config) -> list[str]:
    """A csv: transfer set that cannot be read (no such file or column, no texts), refused here as `submit` refuses it."""
    problem = session.transfer_problem(config)
    return [problem + " (Transfer set, under Advanced settings.)"] if problem else []


def _budget_note(config) -> None:
    cost = policy.run_budget(config.to_dict()) if config is not None and access.enabled() else None
    if cost is None:
        return
    if _is_challenge_entry():
        st.caption(f"This run trains {cost:,} example-epochs (epochs × training examples); the challenge allows "
                   f"{access.room().challenge().budget:,} a run.")
    elif not access.actor().is_instructor:
        st.caption(f"This run trains {cost:,} example-epochs (epochs × training examples); the room allows "
                   f"{access.room().budget():,} a run.")


def _is_challenge_entry() -> bool:
    return bool(st.session_state.get(CHALLENGE_ENTRY)) and access.enabled() and access.room().challenge() is not None


def _start(config) -> None:
    try:
        run_id = access.submit(config, challenge_entry=_is_challenge_entry())
    except KDError as exc:
        st.error(f"Could not start the run: {exc}")
        return
    st.switch_page("screens/live.py", query_params={"run": run_id})


if __name__ == "__main__":
    render()
