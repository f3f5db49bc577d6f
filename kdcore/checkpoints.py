"""Reading and writing model checkpoints safely.

A kdcore checkpoint is a plain dict (tensors, numbers, strings) so it loads with
`torch.load(..., weights_only=True)`; it carries the architecture and config that built it, so it
can rebuild its own model. Writes go to a temporary file first and are renamed into place, so a
crash never leaves half a checkpoint.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdcore.errors import CheckpointError

FORMAT = "kdcore-model"


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save to `path` via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
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


def load_into(model: nn.Module, path: str | Path, *, arch: str, input_shape, num_classes: int,
              what: str) -> dict[str, Any]:
    """Load a kdcore checkpoint (or a bare state dict) into `model`, refusing clear mismatches."""
    obj = load(path, what)
    if obj.get("format") == FORMAT:
        if obj.get("arch") != arch:
            raise CheckpointError(f"{what} {path} was trained as {obj.get('arch')!r}, not {arch!r}; set the matching arch")
        if obj.get("input_shape") is not None and list(obj["input_shape"]) != list(input_shape):
            raise CheckpointError(f"{what} {path} was trained on inputs of shape {tuple(obj['input_shape'])}; "
                                  f"the dataset's are {tuple(input_shape)}")
        if obj.get("num_classes") != num_classes:
            raise CheckpointError(f"{what} {path} has {obj.get('num_classes')} classes; the dataset has {num_classes}")
        state = obj["state_dict"]
    elif all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj
    else:
        raise CheckpointError(f"{what} {path} is neither a kdcore checkpoint nor a state dict")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = ([f"missing {missing[0]}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else "")] if missing else []) + (
            [f"unexpected {unexpected[0]}" + (f" (+{len(unexpected) - 1} more)" if len(unexpected) > 1 else "")] if unexpected else []
        )
        raise CheckpointError(f"{what} {path} does not match {arch}: {', '.join(parts)}")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"{what} {path} does not match {arch} with {num_classes} classes: "
                f"{key} is {list(tensor.shape)} in the file, {list(expected[key].shape)} in the model"
            )
    model.load_state_dict(state)
    return obj
