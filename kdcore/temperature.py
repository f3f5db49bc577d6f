"""What temperature does to a teacher's soft labels: the numbers behind the app's Temperature lab.

Everything here works on a trained teacher's validation logits, computed once; each function is a
cheap tensor computation, so a temperature slider can redraw instantly without any training.
The softened distribution is always `kdcore.losses.soft_targets`, the same function the trainer uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from kdcore import checkpoints
from kdcore.config import RunConfig
from kdcore.data import load_for
from kdcore.evaluation import predict
from kdcore.errors import CheckpointError
from kdcore.losses import soft_targets
from kdcore.models import build_model


@dataclass
class TeacherLogits:
    """A teacher's logits on its dataset's validation split, with what is needed to show them."""

    logits: Tensor  # [N, C]
    labels: Tensor  # [N]
    class_names: list[str]
    images: Tensor | None  # [N, C, H, W] in 0..1 for image datasets
    points: Tensor | None  # [N, 2] for 2-D sets
    texts: list[str] | None = None  # the validation sentences, for text datasets


def teacher_logits(config: RunConfig, teacher_file: str | Path) -> TeacherLogits:
    """Load a trained teacher (a kdcore checkpoint) and compute its validation logits once."""
    data = load_for(config)
    model = build_model(config.teacher.arch, data.info.input_shape, data.info.num_classes)
    checkpoints.load_into(model, teacher_file, arch=config.teacher.arch, input_shape=data.info.input_shape,
                          num_classes=data.info.num_classes, what="teacher")
    model.eval()
    logits = predict(model, data.val_x)
    images = points = None
    if data.info.kind == "image":
        mean = torch.tensor(data.mean).view(1, -1, 1, 1)
        std = torch.tensor(data.std).view(1, -1, 1, 1)
        images = (data.val_x * std + mean).clamp(0, 1)
    elif data.info.kind == "points":
        points = data.val_x
    return TeacherLogits(logits, data.val_y, list(data.class_names), images, points, data.val_texts)


def entropy(probs: Tensor) -> Tensor:
    """Shannon entropy in nats, H(q) = −Σ_i q_i log q_i, per row: [N, C] → [N]."""
    return -(probs * probs.clamp_min(1e-30).log()).sum(dim=-1)


def entropy_curve(logits: Tensor, temperatures: list[float]) -> list[float]:
    """Mean entropy of the soft labels at each temperature. It rises with T towards log C."""
    return [entropy(soft_targets(logits, t)).mean().item() for t in temperatures]


def dark_knowledge_curve(logits: Tensor, temperatures: list[float]) -> list[float]:
    """Mean probability mass off the teacher's top class, 1 − max_i q_i, at each temperature:
    the share of the soft label that carries "dark knowledge" about the other classes."""
    return [(1 - soft_targets(logits, t).max(dim=-1).values).mean().item() for t in temperatures]


def class_similarity(logits: Tensor, labels: Tensor, temperature: float, num_classes: int) -> Tensor:
    """Which wrong classes the teacher finds plausible: S[a, b] is the mean probability the teacher
    gives class b to validation examples of true class a, at temperature T, with the diagonal
    removed and each row renormalised over the wrong classes. [C, C], rows sum to 1 (or 0)."""
    probs = soft_targets(logits, temperature)
    sums = torch.zeros(num_classes, num_classes).index_add_(0, labels, probs)
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).unsqueeze(1)
    mean = sums / counts
    mean.fill_diagonal_(0)
    return mean / mean.sum(dim=1, keepdim=True).clamp_min(1e-30)


def teacher_file(teacher_dir: Path, config: RunConfig) -> Path:
    """Where a config's trained teacher lives: its checkpoint, or the store's teacher cache
    (`Store.teacher_dir()`)."""
    if config.teacher.checkpoint:
        return Path(config.teacher.checkpoint)
    path = Path(teacher_dir) / f"{config.teacher_key()}.pt"
    if not path.exists():
        raise CheckpointError(f"the teacher of this run is not in the cache ({path}); run it again to retrain it")
    return path
