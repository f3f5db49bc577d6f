"""The distillation pipeline, top to bottom.

    teacher  ─► soft labels ─► student (distilled) ─► fine-tune (optional) ─► baseline (optional)

`run_pipeline(config, callbacks, ...)` is the whole path. The data lives as tensors on the training
device; without augmentation the teacher's logits (and features) on the training set are computed
once and indexed per step, so a distillation step costs only the student's forward and backward.
One loop (`kdcore.train.fit`) trains every stage; each stage differs only in its objective, which
the run's method builds (`kdcore.methods`).
The trainer knows nothing of Streamlit or SQLite: it reports through `kdcore.callbacks`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdcore import checkpoints, distributed, teachers
from kdcore.callbacks import Callback, CallbackList
from kdcore.config import RunConfig
from kdcore.data import Splits, labeled_rows, load_for, load_transfer, transfer_column, transfer_tag
from kdcore.errors import CheckpointError
from kdcore.evaluation import accuracy, cpu_threads_for, predict, resolve_device
from kdcore.losses import kd_loss_per_sample
from kdcore.methods import get_method, resolve_params
from kdcore.methods.objective import BuildContext, hard_label_objective, hyper_of
from kdcore.models import build_model, count_parameters, saved_parameter_count
from kdcore.soft_labels import SoftLabels, cached_logits, student_snapshot, teacher_snapshot
from kdcore.train import Progress, Single, Stage, StageResult, TrainState, fit_one


# --- the pipeline ------------------------------------------------------------------------------------


@dataclass
class _Teacher:
    model: nn.Module
    val_acc: float
    test_acc: float
    cached: bool
    source: str
    params: int = 0
    test_logits: Tensor | None = None  # [N_test, C]: for the student's agreement with it


@dataclass
class Prepared:
    """What every student of a run (or of a group of runs) learns from: data, teacher, soft labels."""

    device: torch.device
    data: Splits  # as loaded: the teacher trains on it (every label); validation and test come from it
    teacher: _Teacher
    soft: SoftLabels
    # what the student trains on: the training split, then any transfer inputs; `train_labeled` marks the
    # examples whose label it may use (the others carry the teacher's class). `data` itself when all are.
    student_data: Splits
    labeled_data: Splits  # the labelled part of the training split alone: fine-tuning and the baseline

    @property
    def counts(self) -> dict[str, int]:
        """How many labelled and unlabelled examples the student learns from, and how many came from `transfer`."""
        labeled, total = len(self.labeled_data.train_x), len(self.student_data.train_x)
        return {"labeled_examples": labeled, "unlabeled_examples": total - labeled,
                "transfer_examples": total - len(self.data.train_x)}


def prepare(config: RunConfig, cb: Callback, teacher_cache: str | Path | None) -> Prepared:
    """Stages 1 and 2: load the data, get the teacher, compute its soft labels on the training set."""
    device = distributed.device(resolve_device(config.device))
    cb.on_log(f"device {device}; dataset {config.dataset}; teacher {config.teacher.arch} → student {config.student.arch}")
    data = load_for(config).to(device)
    if device.type == "cuda" and data.info.kind == "image":
        data = data.to_memory_format(torch.channels_last)
    labeled = labeled_rows(data.train_y, config.labeled_fraction, data.class_names, config.dataset)  # refuse early
    transfer = load_transfer(config.transfer, data, config.data_root, transfer_column(config)).to(device) \
        if config.transfer else None
    if transfer is not None and device.type == "cuda" and data.info.kind == "image":
        transfer = transfer.contiguous(memory_format=torch.channels_last)
    cache = Path(teacher_cache) if teacher_cache else None
    method = get_method(config.method)
    seeds = method.teacher_seeds(config)
    teacher = _get_teacher(config, data, device, cb, cache)
    if len(seeds) > 1:  # from here on "the teacher" is the one the student learns from, e.g. an ensemble
        members = [teacher.model] + [_get_teacher(config.replace(**{"teacher.seed": seed}), data, device, cb, cache).model
                                     for seed in seeds[1:]]
        teacher = _evaluated_teacher(method.combine_teachers(members, config), data, cached=teacher.cached,
                                     source=f"ensemble of {len(members)} teachers", cb=cb)
    teacher.params = count_parameters(teacher.model)  # before freezing: it counts trainable parameters
    teacher.model.requires_grad_(False).eval()
    cb.on_stage_start("soft_labels", 0, 0)
    cache_stem = (Path(teacher_cache) / config.teacher_key()
                  if teacher_cache and not config.teacher.checkpoint and len(seeds) == 1 else None)
    need_features = config.weights.feature > 0 or method.spec.needs_teacher_features
    soft = SoftLabels(teacher.model, data, config, need_features=need_features, cache_stem=cache_stem, transfer=transfer,
                      transfer_tag=transfer_tag(config.transfer, transfer) if transfer is not None else "",
                      token_layers=method.spec.teacher_token_states)
    return Prepared(device, data, teacher, soft, *_student_splits(data, labeled, transfer, soft))


def _student_splits(data: Splits, labeled: Tensor, transfer: Tensor | None, soft: SoftLabels) -> tuple[Splits, Splits]:
    """(what the student trains on, the labelled part alone); `data` for both when every label is used."""
    n = len(data.train_x)
    if len(labeled) == n and transfer is None:
        return data, data
    x = data.train_x if transfer is None else torch.cat([data.train_x, transfer])
    mask = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    mask[labeled.to(x.device)] = True
    own = torch.cat([data.train_y, data.train_y.new_zeros(len(x) - n)])
    y = torch.where(mask, own, soft.predictions(x))  # the teacher's class where the label is not used
    labeled = labeled.to(x.device)
    return (dataclasses.replace(data, train_x=x, train_y=y, train_labeled=mask),
            dataclasses.replace(data, train_x=data.train_x[labeled], train_y=data.train_y[labeled]))


def report_soft_labels(config: RunConfig, prep: Prepared, cb: Callback) -> None:
    cb.on_snapshot("soft_labels", 0, teacher_snapshot(prep.data, prep.soft, config.temperature))
    cb.on_stage_end("soft_labels", {"teacher_val_acc": prep.teacher.val_acc, **prep.counts})
    if prep.student_data is not prep.data:
        counts = prep.counts
        cb.on_log(f"student: {counts['labeled_examples']} labelled and {counts['unlabeled_examples']} unlabelled "
                  f"examples ({counts['transfer_examples']} from transfer {config.transfer})")


def run_pipeline(config: RunConfig, callbacks: Callback | list[Callback] | None = None, *,
                 teacher_cache: str | Path | None = None, artifacts: str | Path | None = None,
                 resume: bool = False) -> dict[str, Any]:
    """Run the whole distillation and return its summary (numbers only; the runner adds ids).

    teacher_cache: folder of teachers shared across runs, keyed by `config.teacher_key()`.
    artifacts: this run's folder for its per-epoch progress checkpoint and the final student.
    resume: continue from the progress checkpoint in `artifacts`.

    With `config.devices` > 1 the run trains on that many processes (`kdcore.distributed`): this one is
    rank 0 and alone reports to `callbacks` and writes.
    """
    cb = callbacks if isinstance(callbacks, Callback) else CallbackList(callbacks)
    if distributed.active():  # a peer, or a rank of a torchrun launch: rank 0's run, whatever this rank was given
        job = distributed.from_main({"config": config.to_dict(), "teacher_cache": teacher_cache and str(teacher_cache),
                                     "artifacts": artifacts and str(artifacts), "resume": resume})
        config, teacher_cache, artifacts, resume = (RunConfig.from_dict(job["config"]), job["teacher_cache"],
                                                    job["artifacts"], job["resume"])
    elif config.devices > 1:
        job = {"config": config.to_dict(), "teacher_cache": teacher_cache and str(teacher_cache),
               "artifacts": artifacts and str(artifacts), "resume": resume}
        launching = time.perf_counter()
        with distributed.launched(config.devices, resolve_device(config.device).type, job, cb.on_log):
            summary = run_pipeline(config, cb, teacher_cache=teacher_cache, artifacts=artifacts, resume=resume)
            return {**summary, "wall_s": time.perf_counter() - launching}  # the peers' start included
    started = time.perf_counter()
    artifacts = Path(artifacts) if artifacts else None
    if artifacts is not None and not resume:
        artifacts.mkdir(parents=True, exist_ok=True)  # a new run's folder; one removed later fails the run
    progress = Progress(artifacts)
    saved = progress.load() if resume else {}
    done: dict[str, Any] = dict(saved.get("done", {}))
    prep = prepare(config, cb, teacher_cache)
    report_soft_labels(config, prep, cb)
    device = prep.device
    student = student_model(config, prep)
    with cpu_threads_for(student, config.batch_size, device):
        student_result = done.get("student")
        if student_result is None:
            stage = distill_stage([config], Single(student), prep)
            result = fit_one(stage, _state(stage, Single(student), config, device, saved), prep.student_data, config,
                             device, cb, progress, done)
            student_result = student_summary(result)
            done["student"] = student_result
            cb.on_stage_end("student", {"best_epoch": result.best_epoch, "val_acc": result.best_val_acc})
        student.load_state_dict(student_result["state"])
        student_val_acc = finetune(config, prep, student, student_result, cb, progress, done, saved)
        baseline_result = train_baseline(config, prep, cb, progress, done, saved) if config.baseline else None
    return summarize(config, prep, student, student_result, student_val_acc, baseline_result, artifacts, cb, started)


def student_summary(result: StageResult) -> dict[str, Any]:
    """What a finished student stage keeps for the stages after it (and for `resume`)."""
    return {"state": result.best_state, "best_epoch": result.best_epoch, "val_acc": result.best_val_acc,
            "samples_per_s": result.samples_per_s}


def _state(stage: Stage, members: Single, config: RunConfig, device: torch.device, saved: dict[str, Any]) -> TrainState:
    """A fresh training state, or the one in `saved` when it is this stage's progress checkpoint."""
    state = TrainState.start(stage, members, config, device)
    if saved.get("stage") == stage.name:
        try:
            state.load_checkpoint(saved)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:  # readable, but not this run's progress
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise CheckpointError(f"progress checkpoint does not fit this run's {stage.name} stage ({first}); "
                                  f"submit its config again to train it from the start") from None
    return state


def finetune(config: RunConfig, prep: Prepared, student: nn.Module, student_result: dict[str, Any], cb: Callback,
             progress: Progress, done: dict[str, Any], saved: dict[str, Any]) -> float:
    """Stage 4 (optional): hard-label epochs after distillation; returns the student's validation accuracy."""
    if config.finetune_epochs <= 0:
        return student_result["val_acc"]
    finetune_result = done.get("finetune")
    if finetune_result is None:
        stage = hard_label_stage("finetune", config, student, prep, config.finetune_epochs, config.lr * 0.1)
        result = fit_one(stage, _state(stage, Single(student), config, prep.device, saved), prep.labeled_data, config,
                         prep.device, cb, progress, done)
        # fine-tuning keeps the distilled weights unless validation says it helped
        if result.best_val_acc > student_result["val_acc"]:
            finetune_result = {"state": result.best_state, "val_acc": result.best_val_acc}
        else:
            finetune_result = {"state": student_result["state"], "val_acc": student_result["val_acc"]}
        done["finetune"] = finetune_result
        cb.on_stage_end("finetune", {"val_acc": finetune_result["val_acc"]})
    student.load_state_dict(finetune_result["state"])
    return finetune_result["val_acc"]


def train_baseline(config: RunConfig, prep: Prepared, cb: Callback, progress: Progress, done: dict[str, Any],
                   saved: dict[str, Any]) -> dict[str, float]:
    """Stage 5: the same student, same seed (so the same initial weights), on hard labels alone: the labelled part
    of the training split, for as many optimizer steps as the student (and its fine-tuning) took."""
    if done.get("baseline") is not None:
        return done["baseline"]
    data = prep.data
    baseline = student_model(config, prep)  # the student's initial weights, DistilBERT's init included
    stage = hard_label_stage("baseline", config, baseline, prep, config.epochs + config.finetune_epochs, config.lr)
    result = fit_one(stage, _state(stage, Single(baseline), config, prep.device, saved), prep.labeled_data, config,
                     prep.device, cb, progress, done)
    baseline.load_state_dict(result.best_state)
    baseline_result = {"val_acc": result.best_val_acc, "test_acc": accuracy(predict(baseline, data.test_x), data.test_y)}
    done["baseline"] = baseline_result
    cb.on_stage_end("baseline", baseline_result)
    return baseline_result


def baseline_key(config: RunConfig) -> tuple:
    """Runs with equal keys train identical baselines: temperature and loss weights do not matter to it."""
    return (config.teacher_key(), config.student.arch, config.seed, config.epochs + config.finetune_epochs,
            config.batch_size, config.optimizer, config.lr, config.weight_decay, config.augment, config.amp,
            config.labeled_fraction, config.transfer, json.dumps(config.optimization_settings(), sort_keys=True))


def summarize(config: RunConfig, prep: Prepared, student: nn.Module, student_result: dict[str, Any],
              student_val_acc: float, baseline_result: dict[str, float] | None, artifacts: Path | None,
              cb: Callback, started: float) -> dict[str, Any]:
    """Test the final student, save it, and return the run's summary."""
    data, teacher = prep.data, prep.teacher
    student_test_logits = predict(student, data.test_x, amp=config.amp)
    teacher_test_logits = teacher.test_logits if teacher.test_logits is not None else predict(teacher.model, data.test_x)
    if artifacts is not None and distributed.is_main():
        checkpoints.save_atomic(checkpoints.model_checkpoint(student, arch=config.student.arch,
                                                             input_shape=data.info.input_shape,
                                                             num_classes=data.info.num_classes, config=config.to_dict()),
                                artifacts / "student.pt", create_folder=False)
    student_params = saved_parameter_count(student)
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
        **prep.counts,  # the baseline learns from the labelled examples alone
    }
    cb.on_log(f"done: teacher {teacher.test_acc:.4f}, student {student_test_acc:.4f}"
              + (f", baseline {baseline_test_acc:.4f}" if baseline_test_acc is not None else ""))
    return summary


def student_model(config: RunConfig, prep: Prepared) -> nn.Module:
    """The run's untrained student: seeded, and started from the teacher's layers when `student.from_teacher`."""
    info = prep.data.info
    model = new_model(config.student.arch, info.input_shape, info.num_classes, config.seed, prep.device)
    if config.student.from_teacher:
        from kdcore.text_models import init_from_teacher

        init_from_teacher(model, prep.teacher.model)
    if info.kind == "text":  # the optimizer updates only the token rows the student's training inputs use
        from kdcore.text_models import compact_vocabulary

        compact_vocabulary(model, prep.student_data.train_x)
    return model


def new_model(arch: str, shape, classes: int, seed: int, device: torch.device) -> nn.Module:
    torch.manual_seed(seed)  # same seed → same initial weights: the baseline starts where the student did
    model = build_model(arch, shape, classes).to(device)
    if device.type == "cuda" and len(shape) == 3:
        model = model.to(memory_format=torch.channels_last)  # what cuDNN's fastest conv kernels want
    return model


# --- stage 1: the teacher ----------------------------------------------------------------------------


def _get_teacher(config: RunConfig, data: Splits, device: torch.device, cb: Callback, cache: Path | None) -> _Teacher:
    """Load the configured checkpoint, reuse a cached teacher with the same settings, use the one KD Lab
    ships for them (`kdcore.teachers`, copied into the cache), or train one."""
    t = config.teacher
    shape, classes = data.info.input_shape, data.info.num_classes
    model = build_model(t.arch, shape, classes)
    if t.checkpoint:
        checkpoints.load_into(model, t.checkpoint, arch=t.arch, input_shape=shape, num_classes=classes,
                              what="teacher.checkpoint")
        model.to(device)
        return _evaluated_teacher(model, data, cached=False, source=f"checkpoint {t.checkpoint}", cb=cb)
    key = config.teacher_key()
    bundled = teachers.bundled_path(key) if t.bundled else None
    if cache is None:
        if bundled is not None:
            checkpoints.load_into(model, bundled, arch=t.arch, input_shape=shape, num_classes=classes,
                                  what="bundled teacher")
            return _evaluated_teacher(model.to(device), data, cached=True, source=f"bundled {key}", cb=cb)
        return _train_teacher(config, data, device, cb, None)
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{key}.pt"
    # One teacher per setting, even when a sweep starts several workers at once: the first one
    # trains under the lock, the others wait and then load its file. With devices=N rank 0 alone takes
    # the lock and decides; its peers follow (they train with it, or load what it found).
    with _teacher_lock(cache / f"{key}.lock"):
        source = f"cache {key}"
        if distributed.is_main() and not path.exists() and bundled is not None:
            teachers.install(key, cache)
            source = f"bundled {key}"
        if distributed.main_says(path.exists()):
            problem: Exception | None = None
            try:
                checkpoints.load_into(model, path, arch=t.arch, input_shape=shape, num_classes=classes,
                                      what="cached teacher")
            except Exception as exc:  # a damaged cache entry is retrained, not fatal
                problem = exc
            if distributed.main_says(problem is None):
                if problem is not None:  # rank 0 read the file this rank cannot
                    raise problem
                cb.on_log(f"teacher: reusing {'the bundled' if source.startswith('bundled') else 'cached'} teacher {key}")
                return _evaluated_teacher(model.to(device), data, cached=True, source=source, cb=cb,
                                          cache_stem=cache / key)
            cb.on_log(f"teacher: cached teacher {key} unusable ({problem}); retraining")
        if distributed.is_main():
            for stale in cache.glob(f"{key}.*.pt"):  # logits of an earlier teacher under this key are not this one's
                stale.unlink(missing_ok=True)
        teacher = _train_teacher(config, data, device, cb, cache / key)
        if distributed.is_main():
            checkpoints.save_atomic(checkpoints.model_checkpoint(teacher.model, arch=t.arch, input_shape=shape,
                                                                 num_classes=classes, teacher_key=key,
                                                                 config=config.to_dict()), path)
        teacher.source = f"trained {key}"
        return teacher


@contextlib.contextmanager
def _teacher_lock(path: Path):
    """The teacher cache's lock for one key, taken by rank 0 alone (a peer waiting for it would deadlock)."""
    if not distributed.is_main():
        yield
        return
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _train_teacher(config: RunConfig, data: Splits, device: torch.device, cb: Callback,
                   cache_stem: Path | None) -> _Teacher:
    t = config.teacher
    model = new_model(t.arch, data.info.input_shape, data.info.num_classes, t.seed, device)
    if t.pretrained:
        from kdcore.pretrained import load_pretrained

        cb.on_log(f"teacher: {load_pretrained(model, t.arch)} tensors from {t.arch}'s ImageNet weights; fine-tuning")
    build = BuildContext(config, model, model, data.info, len(data.train_x), device)
    stage = Stage("teacher", t.epochs, t.batch_size, t.lr, [t.seed], hard_label_objective(build), [_HARD],
                  teacher=_no_teacher, validate=lambda k, logits: _val_hard(logits, data),
                  augment=t.augment and data.info.kind != "text")  # text has no per-batch augmentation
    result = fit_one(stage, TrainState.start(stage, Single(model), config, device), data, config, device, cb,
                     Progress(None))
    model.load_state_dict(result.best_state)
    teacher = _evaluated_teacher(model, data, cached=False, source="trained", cb=cb, cache_stem=cache_stem)
    cb.on_stage_end("teacher", {"val_acc": teacher.val_acc, "test_acc": teacher.test_acc})
    return teacher


def _evaluated_teacher(model: nn.Module, data: Splits, *, cached: bool, source: str, cb: Callback,
                       cache_stem: Path | None = None) -> _Teacher:
    """The teacher with its validation and test accuracy; with `cache_stem` (`<cache>/<key>`) its logits on
    both splits are kept beside it, so a cached (or bundled) teacher need not run at all."""
    model.eval()
    val_logits = cached_logits(model, data.val_x, cache_stem, "val_logits")
    test_logits = cached_logits(model, data.test_x, cache_stem, "test_logits")
    val_acc, test_acc = accuracy(val_logits, data.val_y), accuracy(test_logits, data.test_y)
    cb.on_log(f"teacher ({source}): val acc {val_acc:.4f}, test acc {test_acc:.4f}")
    return _Teacher(model, val_acc, test_acc, cached, source, test_logits=test_logits)


# --- stages 3–5: student, fine-tune, baseline -------------------------------------------------------


_HARD = {"temperature": 1.0, "ce": 1.0, "kd": 0.0}  # the numbers of a hard-label stage's objective


def _no_teacher(idx: Tensor, x: Tensor, views: Tensor | None):
    return None, None, None


def _val_hard(logits: Tensor, data: Splits) -> dict[str, float]:
    return {"val_acc": accuracy(logits, data.val_y), "val_loss": F.cross_entropy(logits, data.val_y).item()}


def val_metrics(logits: Tensor, data: Splits, soft: SoftLabels, temperature: float) -> dict[str, float]:
    """Validation metrics of a student's logits [N_val, C] against labels and the teacher."""
    return {
        "val_acc": accuracy(logits, data.val_y),
        "val_loss": F.cross_entropy(logits, data.val_y).item(),
        "val_agreement": (logits.argmax(1) == soft.val_logits.argmax(1)).float().mean().item(),
        "val_kl": kd_loss_per_sample(logits, soft.val_logits, temperature).mean().item(),
    }


def distill_stage(configs: list[RunConfig], members: Any, prep: Prepared) -> Stage:
    """The student stage of one run, or of the K runs of a stacked group (which share all but `hyper`)."""
    config, data, soft = configs[0], prep.student_data, prep.soft
    student = members.module(0)
    build = BuildContext(config, student, soft.teacher, data.info, len(data.train_x), prep.device,
                         resolve_params(config.method, config.method_params))
    objective = get_method(config.method).objective(build)
    return Stage("student", config.epochs, config.batch_size, config.lr, [c.seed for c in configs], objective,
                 [hyper_of(c) for c in configs], teacher=lambda idx, x, views: (*soft.batch(idx, x, views), soft.stages(idx)),
                 validate=lambda k, logits: val_metrics(logits, data, soft, configs[k].temperature),
                 snapshot=lambda k, model: student_snapshot(model, data, soft, configs[k].temperature),
                 augment=config.augment)


def hard_label_stage(name: str, config: RunConfig, model: nn.Module, prep: Prepared, epochs: int, lr: float) -> Stage:
    """Fine-tuning or the baseline: cross-entropy alone on the labelled examples, validated against the labels
    and the teacher. An epoch takes as many steps as the student's, however few the labels: the labelled
    part is then gone through several times per epoch, and the baseline gets the student's budget in steps."""
    data, soft = prep.labeled_data, prep.soft
    build = BuildContext(config, model, soft.teacher, data.info, len(data.train_x), prep.device)
    return Stage(name, epochs, config.batch_size, lr, [config.seed], hard_label_objective(build), [_HARD],
                 teacher=_no_teacher, validate=lambda k, logits: val_metrics(logits, data, soft, config.temperature),
                 augment=config.augment, epoch_steps=student_epoch_steps(config, prep))


def student_epoch_steps(config: RunConfig, prep: Prepared) -> int | None:
    """The student's steps per epoch when its training data differs from the labelled part (None otherwise)."""
    if prep.labeled_data is prep.student_data:
        return None
    n = len(prep.student_data.train_x)
    return n // min(config.batch_size, n)  # as `kdcore.train.fit` batches: the ragged last batch dropped
