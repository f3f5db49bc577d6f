"""The distillation pipeline, top to bottom.

    teacher  ─► soft labels ─► student (distilled) ─► fine-tune (optional) ─► baseline (optional)

`run_pipeline(config, callbacks, ...)` is the whole path. The data lives as tensors on the training
device; without augmentation the teacher's logits (and features) on the training set are computed
once and indexed per step, so a distillation step costs only the student's forward and backward.
One loop (`_fit`) trains every stage; each stage differs only in its `step_loss`.
The trainer knows nothing of Streamlit or SQLite: it reports through `kdcore.callbacks`.
"""

from __future__ import annotations

import copy
import fcntl
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdcore import checkpoints
from kdcore.callbacks import Callback, CallbackList
from kdcore.config import RunConfig
from kdcore.data import Splits, apply_views, augment, load_dataset, random_views, view_count
from kdcore.errors import Cancelled, DivergedError
from kdcore.evaluation import accuracy, autocast, predict, resolve_device
from kdcore.losses import distillation_loss, kd_loss_per_sample
from kdcore.method_losses import TeacherEnsemble, method_objective
from kdcore.methods import METHODS, multi_teacher_seeds
from kdcore.models import build_model, count_parameters
from kdcore.soft_labels import SoftLabels, student_snapshot, teacher_snapshot

FLUSH_EVERY = 25  # steps per host sync: loss values are read back in batches, not every step


# --- the training loop shared by every stage ---------------------------------------------------------


@dataclass
class Stage:
    """One trained stage: its model (+ extra trainable modules), budget and per-step objective."""

    name: str
    model: nn.Module
    epochs: int
    batch_size: int
    lr: float
    seed: int
    # (dataset indices, inputs, labels, augmentation view ids or None) -> (loss parts, logits)
    step_loss: Callable[[Tensor, Tensor, Tensor, Tensor | None], tuple[dict[str, Tensor], Tensor]]
    validate: Callable[[nn.Module], dict[str, float]]
    extra: nn.Module | None = None  # e.g. the FitNets projector, trained along with the model
    snapshot: Callable[[nn.Module], dict[str, Any]] | None = None  # soft labels drawn after each epoch
    augment: bool = False
    epoch: int = 0  # the epoch in training (1-based), set by _fit; DKD's warm-up reads it


@dataclass
class StageResult:
    best_state: dict[str, Tensor]
    best_epoch: int
    best_val_acc: float
    samples_per_s: float
    history: list[dict[str, float]] = field(default_factory=list)


def _make_optimizer(config: RunConfig, params, lr: float) -> torch.optim.Optimizer:
    """The configured optimizer, fused (one kernel for all parameters: ~15% faster small-model steps)."""
    params = list(params)
    if config.optimizer == "sgd":
        cls, kwargs = torch.optim.SGD, {"momentum": 0.9, "nesterov": True}
    else:
        cls, kwargs = (torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam), {}
    try:
        return cls(params, lr=lr, weight_decay=config.weight_decay, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # a device without fused kernels (e.g. MPS on older torch)
        return cls(params, lr=lr, weight_decay=config.weight_decay, **kwargs)


def _cosine(lr: float, step: int, total: int) -> float:
    """Cosine decay from lr to 0 over the stage; robust and needs no tuning per dataset."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


class _Progress:
    """The per-epoch checkpoint of the stage in training, so `resume` continues where it stopped."""

    def __init__(self, folder: Path | None) -> None:
        self.path = folder / "progress.pt" if folder else None

    def load(self) -> dict[str, Any]:
        if self.path is None or not self.path.exists():
            return {}
        return checkpoints.load(self.path, "progress checkpoint")

    def save(self, state: dict[str, Any]) -> None:
        if self.path is not None:
            checkpoints.save_atomic(state, self.path)


def _fit(stage: Stage, data: Splits, config: RunConfig, device: torch.device, callbacks: Callback,
         progress: _Progress, done: dict[str, Any], resume_state: dict[str, Any] | None) -> StageResult:
    """Train one stage with model selection on validation; checkpoint after every epoch."""
    model, n = stage.model, len(data.train_x)
    if config.compile and device.type == "cuda":
        model.compile()  # in place: the state_dict keeps its keys, so checkpoints stay portable
    params = list(model.parameters()) + (list(stage.extra.parameters()) if stage.extra is not None else [])
    optimizer = _make_optimizer(config, params, stage.lr)
    batch_size = min(stage.batch_size, n)
    steps_per_epoch = n // batch_size  # drop the ragged last batch: a batch of 1 breaks BatchNorm
    total_steps = steps_per_epoch * stage.epochs
    generator = torch.Generator().manual_seed(stage.seed)
    aug_generator = torch.Generator(device=device).manual_seed(stage.seed + 1) if stage.augment else None
    use_views = view_count(data.info) > 0  # discrete augmentations: the teacher's outputs can be looked up
    result = StageResult(best_state=copy.deepcopy(model.state_dict()), best_epoch=0, best_val_acc=-1.0, samples_per_s=0.0)
    start_epoch = 0
    if resume_state:
        model.load_state_dict(resume_state["model"])
        if stage.extra is not None and "extra" in resume_state:
            stage.extra.load_state_dict(resume_state["extra"])
        optimizer.load_state_dict(resume_state["optimizer"])
        generator.set_state(resume_state["generator"])
        if aug_generator is not None and "aug_generator" in resume_state:
            aug_generator.set_state(resume_state["aug_generator"])
        result = StageResult(resume_state["best_state"], resume_state["best_epoch"], resume_state["best_val_acc"], 0.0,
                             list(resume_state.get("history", [])))
        start_epoch = resume_state["epoch"]
        callbacks.on_resume(stage.name, start_epoch)
        callbacks.on_log(f"{stage.name}: resumed after epoch {start_epoch}")
    callbacks.on_stage_start(stage.name, stage.epochs, steps_per_epoch)
    if stage.snapshot is not None and start_epoch == 0:  # the untrained model: where epoch 1 starts from
        callbacks.on_snapshot(stage.name, 0, stage.snapshot(model))
    names = ("loss", "ce", "kd", "feature")
    rates = []
    for epoch in range(start_epoch + 1, stage.epochs + 1):
        stage.epoch = epoch
        model.train()
        if stage.extra is not None:
            stage.extra.train()
        order = torch.randperm(n, generator=generator)[: steps_per_epoch * batch_size].to(device)
        pending: list[Tensor] = []
        correct = torch.zeros((), device=device)
        started = time.perf_counter()
        for i in range(steps_per_epoch):
            step = (epoch - 1) * steps_per_epoch + i + 1
            idx = order[i * batch_size : (i + 1) * batch_size]
            x, y = data.train_x[idx], data.train_y[idx]
            views = None
            if aug_generator is not None:
                if use_views:
                    views = random_views(len(idx), data.info, aug_generator, device)
                    x = apply_views(x, data.info, views)
                else:
                    x = augment(x, data.info, aug_generator)
            for group in optimizer.param_groups:
                group["lr"] = _cosine(stage.lr, step - 1, total_steps)
            with autocast(device, config.amp):
                parts, logits = stage.step_loss(idx, x, y, views)
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            optimizer.step()
            correct += (logits.detach().argmax(dim=1) == y).sum()
            pending.append(torch.stack([parts[k].detach().float() for k in names]))
            if len(pending) == FLUSH_EVERY or i == steps_per_epoch - 1:
                _flush(stage.name, epoch, step - len(pending) + 1, names, pending, callbacks)
                pending = []
            if callbacks.should_stop():
                raise Cancelled(f"{stage.name} stopped at epoch {epoch} step {step}")
        elapsed = time.perf_counter() - started
        rates.append(steps_per_epoch * batch_size / max(elapsed, 1e-9))
        values = {"train_acc": correct.item() / (steps_per_epoch * batch_size), "samples_per_s": rates[-1],
                  "lr": _cosine(stage.lr, epoch * steps_per_epoch, total_steps), **stage.validate(model)}
        callbacks.on_metrics(stage.name, epoch, epoch * steps_per_epoch, values)
        if stage.snapshot is not None:
            callbacks.on_snapshot(stage.name, epoch, stage.snapshot(model))
        if values["val_acc"] > result.best_val_acc:  # strict: ties keep the earlier, cheaper epoch
            result.best_state = copy.deepcopy(model.state_dict())
            result.best_epoch, result.best_val_acc = epoch, values["val_acc"]
        result.history.append({"epoch": epoch, **values})
        progress.save({
            "stage": stage.name, "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(), "best_state": result.best_state, "best_epoch": result.best_epoch,
            "best_val_acc": result.best_val_acc, "history": result.history, "done": done,
            **({"extra": stage.extra.state_dict()} if stage.extra is not None else {}),
            **({"aug_generator": aug_generator.get_state()} if aug_generator is not None else {}),
        })
        callbacks.on_epoch_end(stage.name, epoch, values)
    result.samples_per_s = sorted(rates)[len(rates) // 2] if rates else 0.0
    return result


def _flush(stage: str, epoch: int, first_step: int, names, pending: list[Tensor], callbacks: Callback) -> None:
    """Read a batch of step losses back to the host, stop on divergence, report each step."""
    rows = torch.stack(pending).tolist()
    for offset, row in enumerate(rows):
        step = first_step + offset
        if not all(math.isfinite(v) for v in row):
            raise DivergedError(
                f"{stage} diverged at epoch {epoch} step {step}: loss is {row[0]} "
                "(try a lower lr or temperature)"
            )
        callbacks.on_metrics(stage, epoch, step, {f"train_{k}": v for k, v in zip(names, row)})


# --- the pipeline ------------------------------------------------------------------------------------


@dataclass
class _Teacher:
    model: nn.Module
    val_acc: float
    test_acc: float
    cached: bool
    source: str
    params: int = 0


@dataclass
class Prepared:
    """What every student of a run (or of a group of runs) learns from: data, teacher, soft labels."""

    device: torch.device
    data: Splits
    teacher: _Teacher
    soft: "SoftLabels"


def prepare(config: RunConfig, cb: Callback, teacher_cache: str | Path | None) -> Prepared:
    """Stages 1 and 2: load the data, get the teacher, compute its soft labels on the training set."""
    device = resolve_device(config.device)
    cb.on_log(f"device {device}; dataset {config.dataset}; teacher {config.teacher.arch} → student {config.student.arch}")
    data = load_dataset(config.dataset, root=config.data_root, val_fraction=config.val_fraction).to(device)
    if device.type == "cuda" and data.info.kind == "image":
        data = data.to_memory_format(torch.channels_last)
    teacher = _get_teacher(config, data, device, cb, Path(teacher_cache) if teacher_cache else None)
    if config.method == "multi_teacher":  # from here on "the teacher" is the ensemble the student learns from
        cache = Path(teacher_cache) if teacher_cache else None
        members = [teacher.model] + [_get_teacher(config.replace(**{"teacher.seed": seed}), data, device, cb, cache).model
                                     for seed in multi_teacher_seeds(config)[1:]]
        teacher = _evaluated_teacher(TeacherEnsemble(members, config.temperature), data, cached=teacher.cached,
                                     source=f"ensemble of {len(members)} teachers", cb=cb)
    teacher.params = count_parameters(teacher.model)  # before freezing: it counts trainable parameters
    teacher.model.requires_grad_(False).eval()
    cb.on_stage_start("soft_labels", 0, 0)
    cache_stem = (Path(teacher_cache) / config.teacher_key()
                  if teacher_cache and not config.teacher.checkpoint and config.method != "multi_teacher" else None)
    need_features = config.weights.feature > 0 or METHODS[config.method].needs_teacher_features
    soft = SoftLabels(teacher.model, data, config, need_features=need_features, cache_stem=cache_stem)
    return Prepared(device, data, teacher, soft)


def report_soft_labels(config: RunConfig, prep: Prepared, cb: Callback) -> None:
    cb.on_snapshot("soft_labels", 0, teacher_snapshot(prep.data, prep.soft, config.temperature))
    cb.on_stage_end("soft_labels", {"teacher_val_acc": prep.teacher.val_acc})


def run_pipeline(config: RunConfig, callbacks: Callback | list[Callback] | None = None, *,
                 teacher_cache: str | Path | None = None, artifacts: str | Path | None = None,
                 resume: bool = False) -> dict[str, Any]:
    """Run the whole distillation and return its summary (numbers only; the runner adds ids).

    teacher_cache: folder of teachers shared across runs, keyed by `config.teacher_key()`.
    artifacts: this run's folder for its per-epoch progress checkpoint and the final student.
    resume: continue from the progress checkpoint in `artifacts`.
    """
    started = time.perf_counter()
    cb = callbacks if isinstance(callbacks, Callback) else CallbackList(callbacks)
    artifacts = Path(artifacts) if artifacts else None
    progress = _Progress(artifacts)
    saved = progress.load() if resume else {}
    done: dict[str, Any] = dict(saved.get("done", {}))
    prep = prepare(config, cb, teacher_cache)
    report_soft_labels(config, prep, cb)
    data, device, soft = prep.data, prep.device, prep.soft
    shape, classes = data.info.input_shape, data.info.num_classes

    student = _new_model(config.student.arch, shape, classes, config.seed, device)
    projector = nn.Linear(student.feature_dim, prep.teacher.model.feature_dim).to(device) if config.weights.feature > 0 else None
    student_result = done.get("student")
    if student_result is None:
        state = saved if saved.get("stage") == "student" else None
        result = _fit(_distill_stage(config, student, projector, soft, data), data, config, device, cb, progress, done, state)
        student_result = {"state": result.best_state, "best_epoch": result.best_epoch, "val_acc": result.best_val_acc,
                          "samples_per_s": result.samples_per_s}
        done["student"] = student_result
        cb.on_stage_end("student", {"best_epoch": result.best_epoch, "val_acc": result.best_val_acc})
    student.load_state_dict(student_result["state"])
    student_val_acc = finetune(config, prep, student, student_result, cb, progress, done, saved)
    baseline_result = train_baseline(config, prep, cb, progress, done, saved) if config.baseline else None
    return summarize(config, prep, student, student_result, student_val_acc, baseline_result, artifacts, cb, started)


def finetune(config: RunConfig, prep: Prepared, student: nn.Module, student_result: dict[str, Any], cb: Callback,
             progress: "_Progress", done: dict[str, Any], saved: dict[str, Any]) -> float:
    """Stage 4 (optional): hard-label epochs after distillation; returns the student's validation accuracy."""
    if config.finetune_epochs <= 0:
        return student_result["val_acc"]
    finetune_result = done.get("finetune")
    if finetune_result is None:
        state = saved if saved.get("stage") == "finetune" else None
        stage = _hard_label_stage("finetune", config, student, prep.data, config.finetune_epochs, config.lr * 0.1,
                                  prep.soft)
        result = _fit(stage, prep.data, config, prep.device, cb, progress, done, state)
        # fine-tuning keeps the distilled weights unless validation says it helped
        if result.best_val_acc > student_result["val_acc"]:
            finetune_result = {"state": result.best_state, "val_acc": result.best_val_acc}
        else:
            finetune_result = {"state": student_result["state"], "val_acc": student_result["val_acc"]}
        done["finetune"] = finetune_result
        cb.on_stage_end("finetune", {"val_acc": finetune_result["val_acc"]})
    student.load_state_dict(finetune_result["state"])
    return finetune_result["val_acc"]


def train_baseline(config: RunConfig, prep: Prepared, cb: Callback, progress: "_Progress", done: dict[str, Any],
                   saved: dict[str, Any]) -> dict[str, float]:
    """Stage 5: the same student, same seed (so the same initial weights) and budget, on hard labels alone."""
    if done.get("baseline") is not None:
        return done["baseline"]
    data = prep.data
    baseline = _new_model(config.student.arch, data.info.input_shape, data.info.num_classes, config.seed, prep.device)
    state = saved if saved.get("stage") == "baseline" else None
    epochs = config.epochs + config.finetune_epochs
    result = _fit(_hard_label_stage("baseline", config, baseline, data, epochs, config.lr, prep.soft),
                  data, config, prep.device, cb, progress, done, state)
    baseline.load_state_dict(result.best_state)
    baseline_result = {"val_acc": result.best_val_acc, "test_acc": accuracy(predict(baseline, data.test_x), data.test_y)}
    done["baseline"] = baseline_result
    cb.on_stage_end("baseline", baseline_result)
    return baseline_result


def baseline_key(config: RunConfig) -> tuple:
    """Runs with equal keys train identical baselines: temperature and loss weights do not matter to it."""
    return (config.teacher_key(), config.student.arch, config.seed, config.epochs + config.finetune_epochs,
            config.batch_size, config.optimizer, config.lr, config.weight_decay, config.augment, config.amp)


def summarize(config: RunConfig, prep: Prepared, student: nn.Module, student_result: dict[str, Any],
              student_val_acc: float, baseline_result: dict[str, float] | None, artifacts: Path | None,
              cb: Callback, started: float) -> dict[str, Any]:
    """Test the final student, save it, and return the run's summary."""
    data, teacher = prep.data, prep.teacher
    student_test_logits = predict(student, data.test_x, amp=config.amp)
    teacher_test_logits = predict(teacher.model, data.test_x, amp=config.amp)
    if artifacts is not None:
        checkpoints.save_atomic(checkpoints.model_checkpoint(student, arch=config.student.arch,
                                                             input_shape=data.info.input_shape,
                                                             num_classes=data.info.num_classes, config=config.to_dict()),
                                artifacts / "student.pt")
    student_params = count_parameters(student)
    baseline_test_acc = baseline_result["test_acc"] if baseline_result else None
    student_test_acc = accuracy(student_test_logits, data.test_y)
    gap = teacher.test_acc - baseline_test_acc if baseline_test_acc is not None else 0.0
    summary = {
        "status": "done",
        "teacher_test_acc": teacher.test_acc,
        "student_test_acc": student_test_acc,
        "baseline_test_acc": baseline_test_acc,
        "teacher_val_acc": teacher.val_acc,
        "student_val_acc": student_val_acc,
        "baseline_val_acc": baseline_result["val_acc"] if baseline_result else None,
        "test_agreement": (student_test_logits.argmax(1) == teacher_test_logits.argmax(1)).float().mean().item(),
        "best_epoch": student_result["best_epoch"],
        "teacher_params": teacher.params,
        "student_params": student_params,
        "compression": teacher.params / max(student_params, 1),
        "samples_per_s": student_result["samples_per_s"],
        "teacher_cached": teacher.cached,
        "teacher_source": teacher.source,
        "teacher_key": None if config.teacher.checkpoint else config.teacher_key(),
        "device": str(prep.device),
        "wall_s": time.perf_counter() - started,
        # (student − baseline) / (teacher − baseline): the share of the teacher's lead the student took
        "gap_closed": (student_test_acc - baseline_test_acc) / gap if gap > 0 else None,
    }
    cb.on_log(f"done: teacher {teacher.test_acc:.4f}, student {student_test_acc:.4f}"
              + (f", baseline {baseline_test_acc:.4f}" if baseline_test_acc is not None else ""))
    return summary


def _new_model(arch: str, shape, classes: int, seed: int, device: torch.device) -> nn.Module:
    torch.manual_seed(seed)  # same seed → same initial weights: the baseline starts where the student did
    model = build_model(arch, shape, classes).to(device)
    if device.type == "cuda" and len(shape) == 3:
        model = model.to(memory_format=torch.channels_last)  # what cuDNN's fastest conv kernels want
    return model


# --- stage 1: the teacher ----------------------------------------------------------------------------


def _get_teacher(config: RunConfig, data: Splits, device: torch.device, cb: Callback, cache: Path | None) -> _Teacher:
    """Load the configured checkpoint, reuse a cached teacher with the same settings, or train one."""
    t = config.teacher
    shape, classes = data.info.input_shape, data.info.num_classes
    model = build_model(t.arch, shape, classes)
    if t.checkpoint:
        checkpoints.load_into(model, t.checkpoint, arch=t.arch, input_shape=shape, num_classes=classes,
                              what="teacher.checkpoint")
        model.to(device)
        return _evaluated_teacher(model, data, cached=False, source=f"checkpoint {t.checkpoint}", cb=cb)
    if cache is None:
        return _train_teacher(config, data, device, cb)
    cache.mkdir(parents=True, exist_ok=True)
    key = config.teacher_key()
    path = cache / f"{key}.pt"
    # One teacher per setting, even when a sweep starts several workers at once: the first one
    # trains under the lock, the others wait and then load its file.
    with open(cache / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            try:
                checkpoints.load_into(model, path, arch=t.arch, input_shape=shape, num_classes=classes,
                                      what="cached teacher")
                cb.on_log(f"teacher: reusing cached teacher {key}")
                return _evaluated_teacher(model.to(device), data, cached=True, source=f"cache {key}", cb=cb)
            except Exception as exc:  # a damaged cache entry is retrained, not fatal
                cb.on_log(f"teacher: cached teacher {key} unusable ({exc}); retraining")
        teacher = _train_teacher(config, data, device, cb)
        checkpoints.save_atomic(checkpoints.model_checkpoint(teacher.model, arch=t.arch, input_shape=shape,
                                                             num_classes=classes, teacher_key=key,
                                                             config=config.to_dict()), path)
        teacher.source = f"trained {key}"
        return teacher


def _train_teacher(config: RunConfig, data: Splits, device: torch.device, cb: Callback) -> _Teacher:
    t = config.teacher
    model = _new_model(t.arch, data.info.input_shape, data.info.num_classes, t.seed, device)
    stage = Stage("teacher", model, t.epochs, t.batch_size, t.lr, t.seed,
                  step_loss=lambda idx, x, y, views: _ce_step(model, x, y), validate=lambda m: _val_hard(m, data, config.amp),
                  augment=t.augment)
    result = _fit(stage, data, config, device, cb, _Progress(None), {}, None)
    model.load_state_dict(result.best_state)
    teacher = _evaluated_teacher(model, data, cached=False, source="trained", cb=cb)
    cb.on_stage_end("teacher", {"val_acc": teacher.val_acc, "test_acc": teacher.test_acc})
    return teacher


def _evaluated_teacher(model: nn.Module, data: Splits, *, cached: bool, source: str, cb: Callback) -> _Teacher:
    model.eval()
    val_acc = accuracy(predict(model, data.val_x), data.val_y)
    test_acc = accuracy(predict(model, data.test_x), data.test_y)
    cb.on_log(f"teacher ({source}): val acc {val_acc:.4f}, test acc {test_acc:.4f}")
    return _Teacher(model, val_acc, test_acc, cached, source)


# --- stages 3–5: student, fine-tune, baseline -------------------------------------------------------


def _ce_step(model: nn.Module, x: Tensor, y: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    logits = model(x)
    ce = F.cross_entropy(logits.float(), y)
    zero = ce.new_zeros(())
    return {"loss": ce, "ce": ce.detach(), "kd": zero, "feature": zero}, logits


def _val_hard(model: nn.Module, data: Splits, amp: bool) -> dict[str, float]:
    logits = predict(model, data.val_x, amp=amp)
    return {"val_acc": accuracy(logits, data.val_y), "val_loss": F.cross_entropy(logits, data.val_y).item()}


def _val_against_teacher(model: nn.Module, data: Splits, soft: SoftLabels, temperature: float, amp: bool) -> dict[str, float]:
    """Validation accuracy and loss, plus how closely the student follows the teacher."""
    return val_metrics(predict(model, data.val_x, amp=amp), data, soft, temperature)


def val_metrics(logits: Tensor, data: Splits, soft: SoftLabels, temperature: float) -> dict[str, float]:
    """Validation metrics of a student's logits [N_val, C] against labels and the teacher."""
    return {
        "val_acc": accuracy(logits, data.val_y),
        "val_loss": F.cross_entropy(logits, data.val_y).item(),
        "val_agreement": (logits.argmax(1) == soft.val_logits.argmax(1)).float().mean().item(),
        "val_kl": kd_loss_per_sample(logits, soft.val_logits, temperature).mean().item(),
    }


def _distill_stage(config: RunConfig, student: nn.Module, projector: nn.Module | None, soft: SoftLabels, data: Splits) -> Stage:
    w = config.weights
    objective = method_objective(config, student, soft.teacher, data.info)
    ce_weight = w.ce if objective.uses_labels else 0.0
    kd_weight = w.kd if objective.uses_logit_kd else 0.0

    def step_loss(idx: Tensor, x: Tensor, y: Tensor, views: Tensor | None) -> tuple[dict[str, Tensor], Tensor]:
        x = objective.prepare_batch(x)  # mixup for function_matching; x itself otherwise
        teacher_out = objective.teacher_outputs(x) if objective.needs_teacher_forward else (*soft.batch(idx, x, views), None)
        student_out = student.forward_features(x)  # costs what student(x) costs
        logits, features, _ = student_out
        projected = projector(features) if projector is not None else None
        parts = distillation_loss(logits, y, teacher_logits=teacher_out[0], temperature=config.temperature,
                                  ce_weight=ce_weight, kd_weight=kd_weight, feature_weight=w.feature,
                                  projected_student_features=projected, teacher_features=teacher_out[1])
        terms = objective.step_terms(x, student_out, teacher_out, y, stage.epoch)
        parts.update(terms, loss=parts["loss"] + terms["method"])
        return parts, logits

    extra = projector if objective.adapters is None else nn.ModuleList([m for m in (objective.adapters, projector) if m is not None])
    stage = Stage("student", student, config.epochs, config.batch_size, config.lr, config.seed, step_loss,
                  validate=lambda m: _val_against_teacher(m, data, soft, config.temperature, config.amp),
                  extra=extra, snapshot=lambda m: student_snapshot(m, data, soft, config.temperature),
                  augment=config.augment)
    return stage


def _hard_label_stage(name: str, config: RunConfig, model: nn.Module, data: Splits, epochs: int, lr: float,
                      soft: SoftLabels) -> Stage:
    return Stage(name, model, epochs, config.batch_size, lr, config.seed,
                 step_loss=lambda idx, x, y, views: _ce_step(model, x, y),
                 validate=lambda m: _val_against_teacher(m, data, soft, config.temperature, config.amp),
                 augment=config.augment)
