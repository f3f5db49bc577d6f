"""Devices and inference: where a run trains, and a model's outputs on a whole tensor of inputs."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from kdcore.errors import ConfigError

EVAL_BATCH = {"cuda": 2048}  # inference batch; on a CPU, conv nets run fastest around 256 (cache-sized)


# --- devices and seeds -----------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then MPS, then CPU; an explicit device that is absent is a clear error."""
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is available here; use device=auto or device=cpu")
    if name == "mps" and not has_mps:
        raise ConfigError("device=mps but Apple MPS is not available here; use device=auto or device=cpu")
    return torch.device(name)


def available_devices() -> list[str]:
    """Devices this machine can train on, for the UI's picker."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.insert(0, "cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.insert(0, "mps")
    return devices


def autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


SMALL_STEP_MACS = 50_000_000  # multiply-adds per training step below which one CPU thread beats several
# per token, for text: the default tiny-transformer (77M) took 4.3 s a step on two threads and 0.3-0.4 s on one at load
# 10-15 on the 2-core machine (BENCHMARKS.md); the BiLSTM 0.9-4.9 s on two, 0.1-0.2 s on one
SMALL_TEXT_STEP_MACS = 200_000_000


@contextlib.contextmanager
def cpu_threads_for(model: nn.Module, batch_size: int, device: torch.device):
    """Train `model` on one intra-op thread when its steps are tiny (an MLP on small inputs, e.g. the preset's
    student; a text student), then restore the thread count. Each step of such a model is many small
    operations: a second thread only adds synchronisation, and when another process holds a core it makes
    every operation wait for the descheduled thread (the preset's student and baseline: 3.9 s on one thread,
    10.4 s on two on this 2-core machine with one other busy process; identical results). Conv nets keep
    their threads.

    A text model counts multiply-adds per token (its layers act on one token at a time; an LSTM's recurrent
    matmuls run once per time step, batch × 4·hidden × hidden each; a lookup in a token table multiplies
    nothing) against SMALL_TEXT_STEP_MACS: the bag of embeddings, the BiLSTM and the default 2-layer,
    128-wide Transformer train on one thread, a Transformer as wide as MiniLM does not."""
    macs = _macs_per_example(model)
    limit = SMALL_TEXT_STEP_MACS if getattr(model, "token_table", None) is not None else SMALL_STEP_MACS
    if device.type != "cpu" or macs is None or 3 * macs * batch_size > limit or torch.get_num_threads() == 1:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _macs_per_example(model: nn.Module) -> int | None:
    """Multiply-adds per example (per token for text) of a model of Linear and recurrent layers; None for one
    with convolutions."""
    if any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules()):
        return None
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    recurrent = sum(weight.numel() for m in model.modules() if isinstance(m, nn.RNNBase)
                    for name, weight in m.named_parameters() if name.startswith("weight_"))
    return linear + recurrent


# --- evaluation --------------------------------------------------------------------------------------


@torch.inference_mode()
def predict(model: nn.Module, x: Tensor, *, features: bool = False, amp: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Logits (and penultimate features) of `model` on all of `x`, in eval mode, in large batches."""
    if x.dim() == 2 and not x.is_floating_point():  # token ids: by length, so each batch is trimmed to little padding
        order = torch.argsort((x >= 0).sum(dim=1), stable=True)
        inverse = torch.argsort(order)
        out = _predict_batches(model, x[order], features, amp)
        return tuple(part[inverse] for part in out) if features else out[inverse]
    return _predict_batches(model, x, features, amp)


def _predict_batches(model: nn.Module, x: Tensor, features: bool, amp: bool) -> Tensor | tuple[Tensor, Tensor]:
    was_training = model.training
    model.eval()
    logits, feats = [], []
    batch = EVAL_BATCH.get(x.device.type, 256)
    with autocast(x.device, amp):
        for start in range(0, len(x), batch):
            chunk = x[start : start + batch]
            if features:
                out, feat, _ = model.forward_features(chunk)
                feats.append(feat.float())
            else:
                out = model(chunk)
            logits.append(out.float())
    model.train(was_training)
    out = torch.cat(logits)
    return (out, torch.cat(feats)) if features else out


def accuracy(logits: Tensor, targets: Tensor) -> float:
    return (logits.argmax(dim=1) == targets).float().mean().item()
