"""Reading and writing model checkpoints safely.

A kdcore checkpoint is a plain dict (tensors, numbers, strings) so it loads with
`torch.load(..., weights_only=True)`; it carries the architecture and config that built it, so it
can rebuild its own model. Writes go to a temporary file first and are renamed into place, so a
crash never leaves half a checkpoint. Its header (architecture, input shape, classes, tensor shapes)
is enough to refuse a `teacher.checkpoint` that does not fit a run before the run is queued.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from kdcore.errors import CheckpointError

if TYPE_CHECKING:
    from kdcore.config import RunConfig

FORMAT = "kdcore-model"


def save_atomic(obj: Any, path: str | Path, *, create_folder: bool = True) -> None:
    """torch.save to `path` via a temporary file in the same folder and an atomic rename, so the file there
    before stays whole when the write fails. A write the disk refuses (full, read-only, folder gone) is a
    one-line CheckpointError naming the file. create_folder=False: a missing folder is that error too (a run's
    folder removed under its worker is not silently made again, empty)."""
    path = Path(path)
    if not create_folder and not path.parent.is_dir():
        raise CheckpointError(f"run folder {path.parent} was removed while the run trained; {path.name} cannot be saved")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise CheckpointError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise CheckpointError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise


def load(path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """torch.load with weights_only=True; any failure becomes a one-line CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, pickle refusing a global, truncated file...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{what} {path} cannot be read (corrupt or not a PyTorch checkpoint): {first[:200]}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{what} {path} holds a {type(obj).__name__}, not a state dict")
    return obj


def model_checkpoint(model: nn.Module, *, arch: str, input_shape, num_classes: int, **extra: Any) -> dict[str, Any]:
    """The dict that `save_atomic` writes for a trained model."""
    return {
        "format": FORMAT,
        "arch": arch,
        "input_shape": list(input_shape),
        "num_classes": int(num_classes),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }


@dataclass(frozen=True)
class CheckpointHeader:
    """What a checkpoint file says about the model in it, read without building that model."""

    arch: str | None  # None for a bare state dict: the user names the architecture
    input_shape: tuple[int, ...] | None  # None when the file does not say
    num_classes: int | None
    shapes: dict[str, tuple[int, ...]]  # every tensor of the state dict, by name


def read_header(path: str | Path, what: str = "checkpoint") -> CheckpointHeader:
    """The header of a kdcore checkpoint or a bare state dict; CheckpointError for anything else."""
    return _header(load(path, what), path, what)


def _header(obj: dict[str, Any], path: str | Path, what: str) -> CheckpointHeader:
    if obj.get("format") == FORMAT:
        state, arch, num_classes, shape = obj.get("state_dict"), obj.get("arch"), obj.get("num_classes"), obj.get("input_shape")
        input_shape = tuple(shape) if shape is not None else None
    else:
        state, arch, input_shape, num_classes = obj, None, None, None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{what} {path} is neither a kdcore checkpoint nor a state dict")
    return CheckpointHeader(arch, input_shape, num_classes, {k: tuple(v.shape) for k, v in state.items()})


def check_header(header: CheckpointHeader, path: str | Path, *, arch: str, input_shape, num_classes: int | None,
                 what: str, expected: dict[str, tuple[int, ...]] | None = None) -> None:
    """Refuse a checkpoint that cannot be loaded as `arch` for this data, naming what differs.

    input_shape and num_classes may be None when the data is not known yet (a user's image folder);
    `expected` (tensor name → shape of the model to load into) adds the check of every tensor.
    """
    if header.arch is not None and header.arch != arch:
        raise CheckpointError(f"{what} {path} was trained as {header.arch!r}, not {arch!r}; "
                              f"set the architecture to {header.arch}")
    if header.input_shape is not None and input_shape is not None and list(header.input_shape) != list(input_shape):
        raise CheckpointError(f"{what} {path} was trained on inputs of shape {tuple(header.input_shape)}; "
                              f"the dataset's are {tuple(input_shape)}")
    if header.num_classes is not None and num_classes is not None and header.num_classes != num_classes:
        raise CheckpointError(f"{what} {path} has {header.num_classes} classes; the dataset has {num_classes}")
    if expected is None:
        return
    missing = sorted(set(expected) - set(header.shapes))
    unexpected = sorted(set(header.shapes) - set(expected))
    if missing or unexpected:
        parts = [f"{label} {names[0]}" + (f" (+{len(names) - 1} more)" if len(names) > 1 else "")
                 for label, names in (("missing", missing), ("unexpected", unexpected)) if names]
        raise CheckpointError(f"{what} {path} does not match {arch}: {', '.join(parts)}")
    for key, shape in header.shapes.items():
        if tuple(shape) != tuple(expected[key]):
            raise CheckpointError(
                f"{what} {path} does not match {arch} with {num_classes} classes: "
                f"{key} is {list(shape)} in the file, {list(expected[key])} in the model"
            )


def check_teacher_checkpoint(config: RunConfig) -> None:
    """Refuse a run whose `teacher.checkpoint` cannot be its teacher, before anything is queued."""
    path = config.teacher.checkpoint
    if path:
        check_teacher_fits(read_header(path, "teacher.checkpoint"), path, arch=config.teacher.arch,
                           dataset=config.dataset)


def check_teacher_fits(header: CheckpointHeader, path: str | Path, *, arch: str, dataset: str,
                       what: str = "teacher.checkpoint") -> None:
    """Refuse a teacher checkpoint that cannot be loaded as `arch` for `dataset`, without loading data.

    For a dataset whose shape is known up front the teacher is built on the meta device (no memory) to
    compare every tensor; a user's image folder is checked for the architecture only, the rest is
    found out when its images are read.
    """
    from kdcore.dataset_names import CATALOGUE
    from kdcore.models import build_model, fits

    info = CATALOGUE.get(dataset)
    expected = None
    if info is not None and fits(arch, info.input_shape):  # a misfit is the config's error, not the file's
        with torch.device("meta"):
            model = build_model(arch, info.input_shape, info.num_classes)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_header(header, path, arch=arch, input_shape=info.input_shape if info else None,
                 num_classes=info.num_classes if info else None, what=what, expected=expected)


def load_into(model: nn.Module, path: str | Path, *, arch: str, input_shape, num_classes: int,
              what: str) -> dict[str, Any]:
    """Load a kdcore checkpoint (or a bare state dict) into `model`, refusing clear mismatches."""
    obj = load(path, what)
    header = _header(obj, path, what)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_header(header, path, arch=arch, input_shape=input_shape, num_classes=num_classes, what=what,
                 expected=expected)
    model.load_state_dict(obj["state_dict"] if obj.get("format") == FORMAT else obj)
    return obj
