"""What every page shares: this session's store and runner, and the few cached torch look-ups.

Each browser session gets its own `Store` (its own SQLite connection), so what one tab does never
blocks or breaks another's view; the store is cheap to open. Torch is imported only by the
cached helpers below (New run, Temperature lab, Compare), never on the path of a live poll.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import streamlit as st

from kdcore.runner import Runner
from kdcore.store import Store, default_home


def store() -> Store:
    """This session's store for the current KDCORE_HOME (reopened if the variable changed)."""
    home = default_home().resolve()
    current = st.session_state.get("_kdlab_store")
    if current is None or current.home != home:
        current = st.session_state["_kdlab_store"] = Store(home)
    return current


def runner() -> Runner:
    return Runner(store())


TICK_EVERY_S = 2.0  # every open live page polls each second; the queue needs moving far less often
_last_tick: dict[Path, float] = {}
_tick_lock = threading.Lock()


def keep_queue_moving() -> None:
    """`Runner.tick()` (start queued runs, notice dead workers), at most every TICK_EVERY_S per store
    for the whole server, however many sessions poll: a tick also probes the GPUs with nvidia-smi."""
    home = store().home
    with _tick_lock:
        now = time.monotonic()
        if now - _last_tick.get(home, -TICK_EVERY_S) < TICK_EVERY_S:
            return
        _last_tick[home] = now
    runner().tick()


_last_spare: dict[Path, float] = {}


def warm_spare() -> None:
    """A worker process with torch imported, waiting for this page's Start (`Runner.warm_spare`): the run
    then trains at once instead of after seconds of imports. Checked at most every TICK_EVERY_S per store;
    a store that refuses only means the run starts its own worker, so the page never fails for it."""
    from kdcore.errors import KDError

    home = store().home
    with _tick_lock:
        now = time.monotonic()
        if now - _last_spare.get(home, -TICK_EVERY_S) < TICK_EVERY_S:
            return
        _last_spare[home] = now
    try:
        runner().warm_spare()
    except KDError:
        pass


def keep_queue_moving_or_warn() -> None:
    """`keep_queue_moving()`, with a warning on the page instead of an error when the store refuses."""
    from kdcore.errors import KDError

    try:
        keep_queue_moving()
    except KDError as exc:
        st.warning(f"Could not update the run queue: {exc}")


@st.cache_resource(show_spinner=False)
def available_devices() -> list[str]:
    """Devices this machine can train on (imports torch once per server process)."""
    from kdcore.evaluation import available_devices as probe

    return probe()


@st.cache_data(show_spinner=False, max_entries=512)
def parameter_count(arch: str, input_shape: tuple[int, ...], num_classes: int) -> int:
    """Trainable parameters of `arch` for this data; built on the meta device, so nothing is allocated."""
    from kdcore.models import parameter_count as count

    return count(arch, tuple(input_shape), num_classes)


@st.cache_data(show_spinner="Reading the dataset's labels…", max_entries=32)
def training_class_sizes(dataset: str, data_root: str | None, val_fraction: float) -> tuple[list[str], list[int]] | None:
    """(class names, training examples per class) of the training split a run would use, or None when the
    dataset cannot be read here (the engine then says why when the run is submitted)."""
    from kdcore.data import load_dataset
    from kdcore.errors import KDError

    try:
        splits = load_dataset(dataset, root=data_root, val_fraction=val_fraction)
    except (KDError, OSError, ValueError):
        return None
    sizes = splits.train_y.bincount(minlength=len(splits.class_names)).tolist()
    return list(map(str, splits.class_names)), sizes


def label_coverage_problem(config) -> str | None:
    """The engine's refusal of a `labeled_fraction` that leaves a class without a label, checked before the
    run is queued (None when every class keeps one, or when the dataset cannot be read here)."""
    from kdcore.dataset_names import unlabelled_classes_message

    if config is None or config.labeled_fraction >= 1:
        return None
    classes = training_class_sizes(config.dataset, config.data_root, config.val_fraction)
    if classes is None:
        return None
    return unlabelled_classes_message(config.dataset, config.labeled_fraction, *classes)


def transfer_problem(config) -> str | None:
    """The engine's refusal of a `csv:` transfer set that cannot be read (`kdcore.data.check_transfer_texts`:
    no such file or column, no texts), checked before the run is queued; None when it reads or is no CSV."""
    from kdcore.dataset_names import is_csv

    if config is None or not config.transfer or not is_csv(config.transfer):
        return None
    from kdcore.data.text import csv_path
    from kdcore.data.transfer import transfer_column

    try:
        stat = os.stat(csv_path(config.transfer))
        version = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        version = None
    return _transfer_problem(config.transfer, transfer_column(config), version)


@st.cache_data(show_spinner="Reading the transfer set…", max_entries=32)
def _transfer_problem(transfer: str, column: str, version: tuple[int, int] | None) -> str | None:
    """`version` (the file's mtime and size) is part of the cache key: an edited file is read again."""
    from kdcore.data.text import read_texts
    from kdcore.errors import KDError

    try:
        read_texts(transfer, column)
    except KDError as exc:
        return str(exc)
    return None


@st.cache_data(show_spinner=False, max_entries=64)
def checkpoint_header(path: str, mtime: float):
    """What an uploaded checkpoint says about itself (a `kdcore.checkpoints.CheckpointHeader`: arch,
    input_shape, num_classes, None when it is a bare state dict). mtime is part of the cache key, so a
    replaced file is read again.

    Raises CheckpointError for a file that is not a readable checkpoint.
    """
    from kdcore.checkpoints import read_header

    return read_header(path, "uploaded checkpoint")


# --- the Temperature lab and Compare pages (torch, imported here once per server process) -------------------------


def stored_teacher(teacher: dict) -> tuple[str, str, float]:
    """(config JSON, teacher file, its mtime) of one of `app.read_model.runs.stored_teachers`: the key of the
    cached look-ups below. Raises KDError or OSError when its file is gone or its config no longer valid."""
    from kdcore.config import RunConfig
    from kdcore.temperature import teacher_file

    # only what the teacher's logits depend on, so runs that share a teacher share the cache entry
    # (and the source run's student: the default one does not read text)
    student = {"student": {"arch": teacher["student_arch"]}} if teacher.get("student_arch") else {}
    config = RunConfig.from_dict({**teacher["shared"], "teacher": teacher["teacher"], **student})
    path = teacher_file(store().teacher_dir(), config)
    return config.to_json(), str(path), path.stat().st_mtime


@st.cache_resource(show_spinner="Computing the teacher's validation logits…", max_entries=4)
def teacher_logits(config_json: str, path: str, mtime: float):
    """`kdcore.temperature.teacher_logits` of a stored teacher, once per server process (shared by all
    sessions: treat it as read-only). mtime is part of the key, so a retrained teacher is read again."""
    from kdcore.config import RunConfig
    from kdcore.temperature import teacher_logits as compute

    return compute(RunConfig.from_json(config_json), path)


@st.cache_data(show_spinner=False, max_entries=16)
def temperature_curves(config_json: str, path: str, mtime: float, temperatures: tuple[float, ...]) -> dict:
    """Mean entropy and dark knowledge of the teacher's validation soft labels at each temperature."""
    from kdcore.temperature import dark_knowledge_curve, entropy_curve

    logits = teacher_logits(config_json, path, mtime).logits
    return {"temperature": list(temperatures), "entropy": entropy_curve(logits, list(temperatures)),
            "dark_knowledge": dark_knowledge_curve(logits, list(temperatures))}


@st.cache_data(show_spinner=False, max_entries=8)
def lesson_example(config_json: str, path: str, mtime: float, dataset: str):
    """The validation example of a stored teacher that the first lessons draw (`app.workshop.lessons.Example`:
    plain floats, so the lesson pages redraw without torch)."""
    from app.workshop.lessons import Example, pick_example

    data = teacher_logits(config_json, path, mtime)
    logits, labels = data.logits.tolist(), data.labels.tolist()
    index = pick_example(logits, labels)
    name = data.class_names[labels[index]]
    return Example(logits[index], list(data.class_names), labels[index], f"{dataset} validation example of class {name}",
                   f"Validation example {index} of the teacher trained in this store on {dataset}, the one the "
                   "Temperature lab shows.")


@st.cache_data(show_spinner=False, max_entries=256)
def latency_s(arch: str, input_shape: tuple[int, ...], num_classes: int, batch: int) -> float:
    """Median seconds of one forward pass on this machine's CPU (`kdcore.compare.measure_latency`)."""
    from kdcore.compare import measure_latency

    return measure_latency(arch, tuple(input_shape), num_classes, batch)
