"""What every page shares: this session's store and runner, and the few cached torch look-ups.

Each browser session gets its own `Store` (its own SQLite connection), so what one tab does never
blocks or breaks another's view; the store is cheap to open. Torch is imported only by the two
cached helpers at the bottom, never on the path of a live poll.
"""

from __future__ import annotations

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


@st.cache_resource(show_spinner=False)
def available_devices() -> list[str]:
    """Devices this machine can train on (imports torch once per server process)."""
    from kdcore.trainer import available_devices as probe

    return probe()


@st.cache_data(show_spinner=False, max_entries=512)
def parameter_count(arch: str, input_shape: tuple[int, ...], num_classes: int) -> int:
    """Trainable parameters of `arch` for this data; built on the meta device, so nothing is allocated."""
    from kdcore.models import parameter_count as count

    return count(arch, tuple(input_shape), num_classes)


@st.cache_data(show_spinner=False, max_entries=64)
def checkpoint_header(path: str, mtime: float) -> dict:
    """What an uploaded checkpoint says about itself: arch, input_shape, num_classes (None when it is
    a bare state dict). mtime is part of the cache key, so a replaced file is read again.

    Raises CheckpointError for a file that is not a readable checkpoint.
    """
    from kdcore import checkpoints
    from kdcore.errors import CheckpointError

    data = checkpoints.load(Path(path), "uploaded checkpoint")
    if data.get("format") == checkpoints.FORMAT:
        return {"arch": data.get("arch"), "input_shape": tuple(data.get("input_shape") or ()),
                "num_classes": data.get("num_classes")}
    import torch

    if data and all(isinstance(value, torch.Tensor) for value in data.values()):
        return {"arch": None, "input_shape": None, "num_classes": None}
    raise CheckpointError("uploaded file is neither a kdcore checkpoint nor a PyTorch state dict")
