"""Writing a model for deployment: ONNX (for ONNX Runtime and other runtimes) or a kdcore checkpoint.

ONNX goes through `torch.onnx.export`'s torch.export-based exporter (the TorchScript one cannot export
the CNN's adaptive pooling), as one self-contained file with a dynamic batch axis: input `input`
[batch, *input_shape], output `logits` [batch, classes]. A checkpoint is `kdcore.checkpoints`' dict;
for a structurally pruned model it also carries the pruning, and `load_model` rebuilds the narrower
layers from the tensor shapes. Every file is written to a temporary name beside its destination and
renamed into place, so a failure never leaves half a model under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdcore import checkpoints
from kdcore.errors import CheckpointError
from kdcore.models import build_model

INPUT_NAME, OUTPUT_NAME = "input", "logits"


@contextlib.contextmanager
def written_atomically(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed to `path` when the block succeeds, removed if not."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path,
                metadata: dict[str, Any] | None = None) -> Path:
    """Write `model` (in eval mode, on the CPU) as a self-contained ONNX file with a dynamic batch axis.

    `example` is a batch of real inputs (their shape and dtype become the file's input); `metadata`
    (e.g. the input normalisation and class names a deployment needs) is stored in the file's
    metadata_props, each value as JSON.
    """
    model = model.cpu().eval()
    example = example[:2].cpu().contiguous()  # batch 2: torch.export would specialise a batch of 1 into a constant
    with written_atomically(path) as partial:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on its own internals are no news to a user
            torch.onnx.export(model, (example,), str(partial), dynamo=True, external_data=False, verbose=False,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes=({0: torch.export.Dim("batch")},))
        if metadata:
            annotate_onnx(partial, metadata)
    return Path(path)


def annotate_onnx(path: str | Path, metadata: dict[str, Any]) -> None:
    """Add `metadata` to an ONNX file's metadata_props (values as JSON), in place."""
    import onnx

    model = onnx.load(str(path))
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save(model, str(path))


def onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata_props of an ONNX file, decoded from JSON."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {entry.key: json.loads(entry.value) for entry in model.metadata_props}


def export_checkpoint(model: nn.Module, path: str | Path, *, arch: str, input_shape: tuple[int, ...],
                      num_classes: int, **extra: Any) -> Path:
    """Write a kdcore checkpoint (state dict, architecture, input shape, classes, and `extra`)."""
    checkpoints.save_atomic(checkpoints.model_checkpoint(model, arch=arch, input_shape=input_shape,
                                                         num_classes=num_classes, **extra), path)
    return Path(path)


def load_model(path: str | Path, what: str = "model checkpoint") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a kdcore checkpoint describes, in eval mode, and return it with the checkpoint.

    A structurally pruned model is its architecture with narrower layers: each Linear, Conv2d and
    BatchNorm takes the shapes of its tensors in the file (a depthwise conv stays depthwise).
    """
    obj = checkpoints.load(path, what)
    if obj.get("format") != checkpoints.FORMAT or not obj.get("arch"):
        raise CheckpointError(f"{what} {path} is not a kdcore checkpoint (it names no architecture)")
    model = build_model(obj["arch"], tuple(obj["input_shape"]), int(obj["num_classes"]))
    state = obj["state_dict"]
    if obj.get("pruning", {}).get("structured"):
        resize_to(model, state)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{what} {path} does not match {obj['arch']}: {first[:200]}") from None
    return model.eval(), obj


def resize_to(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give every Linear, Conv2d and BatchNorm of `model` the shapes its tensors have in `state`, in place."""
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        weight = state.get(prefix + "weight")
        if weight is None:
            continue
        if isinstance(module, nn.Linear):
            module.out_features, module.in_features = weight.shape
        elif isinstance(module, nn.Conv2d):
            depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
            if module.groups > 1 and not depthwise:
                raise CheckpointError(f"{name}: grouped convolutions cannot be rebuilt from a pruned checkpoint")
            module.groups = weight.shape[0] if depthwise else 1
            module.out_channels, module.in_channels = weight.shape[0], weight.shape[1] * module.groups
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.num_features = weight.shape[0]
        else:
            continue
        for tensor_name, tensor in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            saved = state.get(prefix + tensor_name)
            if saved is not None and saved.shape != tensor.shape:
                replacement = torch.empty_like(saved)
                if isinstance(tensor, nn.Parameter):
                    setattr(module, tensor_name, nn.Parameter(replacement, requires_grad=tensor.requires_grad))
                else:
                    setattr(module, tensor_name, replacement)
