"""Stage 2: the teacher's soft labels, computed as few times as possible, and the snapshots the app draws.

Snapshots are JSON payloads stored per stage and epoch (`Callback.on_snapshot`). The teacher's
("soft_labels", epoch 0) holds, for SNAPSHOT_SAMPLES fixed validation examples (the first of each
class, then the next ones): `indices` (rows of the validation split), `labels`, `class_names`,
`temperature`, `teacher_T1` and `teacher_T` (the teacher's probabilities at T = 1 and at the run's T,
[N][C]), and what the examples look like:
  images: `images`, [N][C][H][W] in 0..1;
  points: `points`, `point_labels` (validation points to draw), `highlight` (the samples), `grid`, `teacher_regions`;
  text:   `texts`, the N validation sentences as written in the data (a list of strings).
A student's (stage "student", after each epoch) holds `indices` and `student_T` ([N][C] at the run's
T), plus `student_regions` for points: the same examples, in the same order, as the teacher's.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdcore import checkpoints, distributed
from kdcore.config import RunConfig
from kdcore.data import Splits, apply_views, view_count
from kdcore.evaluation import EVAL_BATCH, predict
from kdcore.losses import soft_targets

SNAPSHOT_SAMPLES = 10
GRID_SIZE = 60  # decision-region grid for 2-D data

MAX_VIEW_TABLE = 64_000_000  # floats (256 MB): larger view tables run the teacher per step instead
SOFT_LABELS_VERSION = 1  # bump when the meaning of cached soft labels changes


class SoftLabels:
    """The teacher's outputs the student learns from, computed as few times as possible.

    Without augmentation the training-set logits (and features) are computed once, in eval mode
    under no_grad, and indexed per step. With augmentation the student sees one of finitely many
    views of each image (`kdcore.data.view_count`), so the teacher's logits on every view of the
    training set form a table [views, N, C] that is looked up per step: the teacher never runs in
    the loop. The table is built when it costs no more than running the teacher per step would, or
    found in the teacher cache (one per teacher and data view, shared across runs and sweeps).
    Otherwise (points, feature distillation, huge tables) the teacher runs on each augmented batch.
    """

    def __init__(self, teacher: nn.Module, data: Splits, config: RunConfig, *, need_features: bool,
                 cache_stem: Path | None = None, transfer: Tensor | None = None, transfer_tag: str = "",
                 token_layers: tuple[int, ...] = ()) -> None:
        """cache_stem: `<teacher cache>/<teacher key>`; each computed tensor is kept beside the teacher.

        transfer: extra unlabelled inputs [M, ...] (on the data's device) that follow the training split:
        the student's training inputs are the split then these, and every per-example table covers both.
        Their part is cached on its own, named by `transfer_tag` (`kdcore.data.transfer_tag`).
        """
        self.teacher, self.amp, self.need_features = teacher, config.amp, need_features
        self.train_logits = self.train_features = self.view_table = None
        classes, views = data.info.num_classes, view_count(data.info)
        sources = [("", data.train_x)] + ([(f"{transfer_tag}.", transfer)] if transfer is not None else [])
        n = sum(len(x) for _, x in sources)

        def cached(name: str, shape: tuple[int, ...], compute: Callable[[], Tensor]) -> Tensor:
            return _cached_tensor(cache_stem.with_name(f"{cache_stem.name}.{name}.pt") if cache_stem else None,
                                  shape, compute, data.train_x.device)

        def over_training_inputs(name: str, shape: Callable[[int], tuple[int, ...]], compute: Callable[[Tensor], Tensor],
                                 dim: int = 0) -> Tensor:
            """`compute` on the training split and on the transfer inputs, each cached on its own, joined."""
            # devices=N: each process computes its share of the rows (`kdcore.distributed.sharded`)
            parts = [cached(prefix + name, shape(len(x)), lambda x=x: distributed.sharded(compute, x, dim))
                     for prefix, x in sources]
            return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)

        if not config.augment:
            self.train_logits = over_training_inputs("train_logits", lambda m: (m, classes),
                                                     lambda x: predict(teacher, x, amp=config.amp))
            if need_features:
                self.train_features = over_training_inputs(
                    "train_features", lambda m: (m,), lambda x: predict(teacher, x, features=True, amp=config.amp)[1])
        elif not need_features and 0 < views and views * n * classes <= MAX_VIEW_TABLE:
            stem_exists = distributed.main_says(cache_stem is not None and all(
                cache_stem.with_name(f"{cache_stem.name}.{prefix}views.pt").exists() for prefix, _ in sources))
            if stem_exists or views <= 1.5 * config.epochs:  # no dearer than running the teacher every step
                self.view_table = over_training_inputs("views", lambda m: (views, m, classes),
                                                       lambda x: self._view_table(x, data.info, views, data.black), dim=1)
        self.val_logits = cached("val_logits", (len(data.val_x), classes), lambda: predict(teacher, data.val_x, amp=config.amp))
        # text: the teacher's hidden states per token at `token_layers` (indices into its stages), kept in memory
        inputs = data.train_x if transfer is None else torch.cat([data.train_x, transfer])
        self.token_states = [TokenStates(teacher, inputs, layer) for layer in token_layers]

    def _view_table(self, x: Tensor, info, views: int, fill: tuple[float, ...]) -> Tensor:
        device = x.device
        table = torch.empty(views, len(x), info.num_classes, device=device)
        for view in range(views):
            ids = torch.full((len(x),), view, device=device)
            step = EVAL_BATCH.get(device.type, 256) * 4  # predict() batches each chunk further
            for start in range(0, len(x), step):
                chunk = apply_views(x[start : start + step], info, ids[start : start + step], fill)
                table[view, start : start + len(chunk)] = predict(self.teacher, chunk, amp=self.amp)
        return table

    def predictions(self, x: Tensor, start: int = 0) -> Tensor:
        """The teacher's class for each training input `x` (rows `start`... of the student's training inputs),
        from the precomputed logits when there are some, else by running the teacher once."""
        if self.train_logits is not None:
            return self.train_logits[start : start + len(x)].argmax(dim=1)
        return predict(self.teacher, x, amp=self.amp).argmax(dim=1)

    def batch(self, idx: Tensor, x: Tensor, views: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Teacher logits (and features) for the training batch `x` (dataset indices `idx`, augmentation `views`)."""
        if self.train_logits is not None:
            return self.train_logits[idx], (self.train_features[idx] if self.need_features else None)
        if self.view_table is not None and views is not None:
            return self.view_table[views, idx], None
        with torch.no_grad():
            logits, feats, _ = self.teacher.forward_features(x)
        return logits.float(), (feats.float() if self.need_features else None)


    def stages(self, idx: Tensor) -> list[Tensor] | None:
        """The teacher's token states for the training batch `idx`, one [B, L, H] per token layer (None: none kept)."""
        return [states.batch(idx) for states in self.token_states] if self.token_states else None


class TokenStates:
    """A frozen text teacher's hidden states at one layer for every token of every training sentence, computed once.

    Sentences differ in length, so the states are kept ragged: every real token's [H] vector, sentence after
    sentence, in bfloat16 (rotten-tomatoes: 248k tokens x 384 = 190 MB per layer), and gathered per batch into
    [B, L, H] float32, L the batch's longest sentence: the length a text model trims the same batch to, so
    position j is the same token for both networks. Padding positions are zero.
    """

    STORE_DTYPE = torch.bfloat16
    CHUNK = 256

    def __init__(self, teacher: nn.Module, ids: Tensor, layer: int) -> None:
        self.lengths = (ids >= 0).sum(dim=1)
        self.offsets = torch.cumsum(self.lengths, 0) - self.lengths
        order = torch.argsort(self.lengths, stable=True)  # by length: each chunk is trimmed to little padding
        parts = [None] * len(ids)
        was_training = teacher.training
        teacher.eval()
        with torch.inference_mode():
            for start in range(0, len(ids), self.CHUNK):
                rows = order[start : start + self.CHUNK]
                states = teacher.forward_features(ids[rows])[2][layer]  # [b, L, H]
                for row, sentence in zip(rows.tolist(), states):
                    parts[row] = sentence[: int(self.lengths[row])].to(self.STORE_DTYPE)
        teacher.train(was_training)
        self.table = torch.cat(parts)  # [tokens, H]

    def batch(self, idx: Tensor) -> Tensor:
        lengths = self.lengths[idx]
        positions = torch.arange(int(lengths.max()), device=idx.device)
        real = positions[None, :] < lengths[:, None]  # [B, L]
        rows = torch.where(real, self.offsets[idx][:, None] + positions[None, :], 0)
        return self.table[rows].float() * real[..., None]


def cached_logits(model: nn.Module, x: Tensor, cache_stem: Path | None, name: str) -> Tensor:
    """`model`'s logits on `x` [N, C], or their earlier result kept at `<cache_stem>.<name>.pt` (written when new)."""
    path = cache_stem.with_name(f"{cache_stem.name}.{name}.pt") if cache_stem is not None else None
    return _cached_tensor(path, (len(x),), lambda: predict(model, x), x.device)


def _cached_tensor(path: Path | None, shape: tuple[int, ...], compute: Callable[[], Tensor],
                   device: torch.device) -> Tensor:
    """`compute()`, or its earlier result from `path` when one of the expected leading shape is there.
    devices=N: rank 0 reads the cache and sends what it found; otherwise every rank computes, rank 0 writes."""
    found = _read_cached(path, shape) if distributed.is_main() else None
    if distributed.main_says(found is not None):
        return distributed.tensor_from_main(found, device) if distributed.active() else found.to(device)
    tensor = compute()
    if path is not None and distributed.is_main():
        checkpoints.save_atomic({"version": SOFT_LABELS_VERSION, "tensor": tensor.cpu()}, path)
    return tensor


def _read_cached(path: Path | None, shape: tuple[int, ...]) -> Tensor | None:
    if path is None or not path.exists():
        return None
    try:
        stored = checkpoints.load(path, "cached soft labels")
        tensor = stored["tensor"]
        if stored.get("version") == SOFT_LABELS_VERSION and tuple(tensor.shape[: len(shape)]) == tuple(shape):
            return tensor
    except Exception:  # a damaged or foreign cache entry is recomputed, not fatal
        pass
    return None


def snapshot_indices(labels: Tensor, count: int) -> list[int]:
    """A fixed, readable set of validation samples: the first example of each class, then more."""
    labels = labels.tolist()
    chosen, seen = [], set()
    for i, y in enumerate(labels):
        if y not in seen:
            chosen.append(i)
            seen.add(y)
        if len(chosen) == count:
            return chosen
    return chosen + [i for i in range(len(labels)) if i not in set(chosen)][: count - len(chosen)]


def teacher_snapshot(data: Splits, soft: SoftLabels, temperature: float) -> dict[str, Any]:
    idx = snapshot_indices(data.val_y, SNAPSHOT_SAMPLES)
    logits = soft.val_logits[idx]
    x = data.val_x[idx].float().cpu()  # images or points (unused for text)
    payload = {
        "indices": idx,
        "labels": data.val_y[idx].tolist(),
        "class_names": list(data.class_names),
        "temperature": temperature,
        "teacher_T": soft_targets(logits, temperature).tolist(),
        "teacher_T1": soft_targets(logits, 1.0).tolist(),
    }
    if data.info.kind == "image":
        mean = torch.tensor(data.mean).view(1, -1, 1, 1)
        std = torch.tensor(data.std).view(1, -1, 1, 1)
        payload["images"] = (x * std + mean).clamp(0, 1).tolist()  # [N, C, H, W] in 0..1 for display
    elif data.info.kind == "text":
        payload["texts"] = [data.val_texts[i] for i in idx] if data.val_texts else []
    else:
        payload["points"] = data.val_x[:600].cpu().tolist()
        payload["point_labels"] = data.val_y[:600].cpu().tolist()
        payload["highlight"] = x.tolist()
        payload["grid"] = _grid(data)
        payload["teacher_regions"] = _regions(soft.teacher, data)
    return payload


def student_snapshot(student: nn.Module, data: Splits, soft: SoftLabels, temperature: float) -> dict[str, Any]:
    idx = snapshot_indices(data.val_y, SNAPSHOT_SAMPLES)
    logits = predict(student, data.val_x[idx])
    payload = {"indices": idx, "student_T": soft_targets(logits, temperature).tolist()}
    if data.info.kind == "points":
        payload["student_regions"] = _regions(student, data)
    return payload


def _grid(data: Splits) -> dict[str, list[float]]:
    low = data.val_x.min(dim=0).values.cpu() - 0.5
    high = data.val_x.max(dim=0).values.cpu() + 0.5
    return {"x": torch.linspace(low[0], high[0], GRID_SIZE).tolist(), "y": torch.linspace(low[1], high[1], GRID_SIZE).tolist()}


def _regions(model: nn.Module, data: Splits) -> list[list[int]]:
    """Predicted class over a GRID_SIZE² grid covering the validation points (rows: y, columns: x)."""
    grid = _grid(data)
    xs = torch.tensor(grid["x"], device=data.val_x.device)
    ys = torch.tensor(grid["y"], device=data.val_x.device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
    return predict(model, points).argmax(dim=1).view(GRID_SIZE, GRID_SIZE).tolist()
