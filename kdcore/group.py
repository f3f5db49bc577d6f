"""Train the students of several runs at once, in one process, sharing everything they can.

A sweep's runs usually differ only in temperature, loss weights and seed. Trained one by one, each
run pays for a process start, the data, the teacher's soft labels, its own baseline, and a student
so small that Python overhead dominates each step. Here a group of such runs shares one process,
one teacher and one set of soft labels; runs with equal `baseline_key` share one baseline; and the
students of K runs are trained as one stacked model (`torch.func.stack_module_state` + `vmap`),
so each step is a handful of batched matmuls instead of K separate steps.

Stacking is exact: parameters of different students never mix, Adam and SGD act elementwise, and
each student draws its batches from its own seeded generator, so a student trained in a group
matches the same run trained alone up to float rounding. Each run still gets its own metrics,
snapshots, per-epoch checkpoint (so it can be resumed alone) and summary.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, stack_module_state

from kdcore.callbacks import Callback, CallbackList
from kdcore.config import RunConfig
from kdcore.errors import Cancelled, DivergedError, KDError
from kdcore.losses import kd_loss_per_sample
from kdcore.soft_labels import student_snapshot
from kdcore.trainer import (FLUSH_EVERY, Prepared, _cosine, _make_optimizer, _new_model, _Progress,
                            baseline_key, finetune, prepare, report_soft_labels, summarize, train_baseline,
                            val_metrics)

MAX_GROUP = 32  # students per stacked model; more gains little and costs memory


def group_key(config: RunConfig) -> str | None:
    """Runs with the same key can be trained as one group; None when a run must train alone.

    Everything but temperature, the CE/KD weights, the seed and the name must agree; feature
    distillation (a projector per student) and augmentation (teacher on every batch) train alone.
    """
    if config.weights.feature > 0 or config.augment or getattr(config, "method", "kd") != "kd":
        return None
    shared = config.to_dict()
    for key in ("temperature", "seed", "name"):
        shared.pop(key)
    shared.pop("weights")
    return hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:16]


def stackable(model: torch.nn.Module) -> bool:
    """vmap cannot update BatchNorm's running statistics per student; such students train one by one."""
    return not any(True for _ in model.buffers())


def run_group(configs: list[RunConfig], callbacks: list[Callback], *, teacher_cache: str | Path | None,
              artifacts: list[Path | None]) -> list[dict[str, Any] | BaseException]:
    """Train runs that share a `group_key`; returns each run's summary, or the exception that ended it."""
    assert configs and len({group_key(c) for c in configs}) == 1 and group_key(configs[0]) is not None
    started = time.perf_counter()
    everyone = CallbackList(callbacks)
    prep = prepare(configs[0], everyone, teacher_cache)
    for config, cb in zip(configs, callbacks):
        report_soft_labels(config, prep, cb)
    data = prep.data
    shape, classes = data.info.input_shape, data.info.num_classes
    outcomes: list[dict[str, Any] | BaseException | None] = [None] * len(configs)

    probe = _new_model(configs[0].student.arch, shape, classes, 0, prep.device)
    if stackable(probe) and len(configs) > 1:
        student_results = _fit_stacked(configs, callbacks, prep, [_Progress(a) for a in artifacts])
    else:
        student_results = [_fit_one(c, cb, prep, _Progress(a)) for c, cb, a in zip(configs, callbacks, artifacts)]

    baselines: dict[tuple, dict[str, float]] = {}
    for i, (config, cb, result) in enumerate(zip(configs, callbacks, student_results)):
        if isinstance(result, BaseException):
            outcomes[i] = result
            continue
        try:
            if cb.should_stop():
                raise Cancelled("stopped after the student stage")
            student = _new_model(config.student.arch, shape, classes, config.seed, prep.device)
            student.load_state_dict(result["state"])
            progress, done = _Progress(artifacts[i]), {"student": result}
            student_val_acc = finetune(config, prep, student, result, cb, progress, done, {})
            baseline = None
            if config.baseline:
                key = baseline_key(config)
                sharing = _Shared([c for c2, c, r in zip(configs, callbacks, student_results)
                                   if c2.baseline and baseline_key(c2) == key and not isinstance(r, BaseException)])
                if key not in baselines:  # trained once, reported to every run that shares it
                    baselines[key] = train_baseline(config, prep, sharing, _Progress(None), {}, {})
                baseline = baselines[key]
            if cb.should_stop():  # it asked to stop while a shared baseline finished for the others
                raise Cancelled("stopped during the shared baseline")
            outcomes[i] = summarize(config, prep, student, result, student_val_acc, baseline, artifacts[i], cb, started)
            outcomes[i]["group_size"] = len(configs)  # wall_s is the whole group's: these runs trained together
        except (KDError, Cancelled) as exc:
            outcomes[i] = exc
    return outcomes  # type: ignore[return-value]


class _Shared(CallbackList):
    """Callbacks of runs sharing one baseline: it stops only when every one of them wants to stop."""

    def should_stop(self) -> bool:
        return all(cb.should_stop() for cb in self.callbacks)


def _fit_one(config: RunConfig, cb: Callback, prep: Prepared, progress: _Progress) -> dict[str, Any] | BaseException:
    from kdcore.trainer import _distill_stage, _fit

    student = _new_model(config.student.arch, prep.data.info.input_shape, prep.data.info.num_classes, config.seed,
                         prep.device)
    try:
        result = _fit(_distill_stage(config, student, None, prep.soft, prep.data), prep.data, config, prep.device, cb,
                      progress, {}, None)
    except (KDError, Cancelled) as exc:
        return exc
    cb.on_stage_end("student", {"best_epoch": result.best_epoch, "val_acc": result.best_val_acc})
    return {"state": result.best_state, "best_epoch": result.best_epoch, "val_acc": result.best_val_acc,
            "samples_per_s": result.samples_per_s}


def _fit_stacked(configs: list[RunConfig], callbacks: list[Callback], prep: Prepared,
                 progresses: list[_Progress]) -> list[dict[str, Any] | BaseException]:
    """The student stage of K runs as one vmapped model; per-run reports, checkpoints and selection."""
    data, soft, device = prep.data, prep.soft, prep.device
    shape, classes = data.info.input_shape, data.info.num_classes
    base = configs[0]
    k_runs = len(configs)
    students = [_new_model(c.student.arch, shape, classes, c.seed, device) for c in configs]  # same init as alone
    params, buffers = stack_module_state(students)
    skeleton = copy.deepcopy(students[0]).to("meta")

    def call(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(skeleton, (p, b), (x,))

    forward = torch.vmap(call, in_dims=(0, 0, 0))  # each student its own batch
    forward_shared = torch.vmap(call, in_dims=(0, 0, None))  # every student the same inputs
    optimizer = _make_optimizer(base, list(params.values()), base.lr)
    n = len(data.train_x)
    batch_size = min(base.batch_size, n)
    steps_per_epoch = n // batch_size
    total_steps = steps_per_epoch * base.epochs
    generators = [torch.Generator().manual_seed(c.seed) for c in configs]
    temperature = torch.tensor([c.temperature for c in configs], device=device)
    w_ce = torch.tensor([c.weights.ce for c in configs], device=device)
    w_kd = torch.tensor([c.weights.kd for c in configs], device=device)
    alive = torch.ones(k_runs, dtype=torch.bool, device=device)
    ended: list[BaseException | None] = [None] * k_runs
    best = [{"state": None, "best_epoch": 0, "val_acc": -1.0, "history": []} for _ in configs]
    for cb in callbacks:
        cb.on_stage_start("student", base.epochs, steps_per_epoch)
    for k, cb in enumerate(callbacks):
        cb.on_snapshot("student", 0, student_snapshot(_materialize(students[k], params, buffers, k), data, soft,
                                                      configs[k].temperature))
    rates = []
    for epoch in range(1, base.epochs + 1):
        orders = torch.stack([torch.randperm(n, generator=g)[: steps_per_epoch * batch_size] for g in generators])
        orders = orders.to(device)
        pending: list[Tensor] = []
        correct = torch.zeros(k_runs, device=device)
        started = time.perf_counter()
        for i in range(steps_per_epoch):
            step = (epoch - 1) * steps_per_epoch + i + 1
            idx = orders[:, i * batch_size : (i + 1) * batch_size]  # [K, B]
            x, y = data.train_x[idx], data.train_y[idx]  # [K, B, ...], [K, B]
            for group in optimizer.param_groups:
                group["lr"] = _cosine(base.lr, step - 1, total_steps)
            logits = forward(params, buffers, x).float()  # [K, B, C]
            ce = F.cross_entropy(logits.reshape(-1, classes), y.reshape(-1), reduction="none").view(k_runs, -1).mean(1)
            kd = kd_loss_per_sample(logits, soft.train_logits[idx], temperature.view(-1, 1, 1)).mean(1) * temperature**2
            per_run = w_ce * ce + w_kd * kd  # [K]; a run's weights of 0 skip nothing here but add nothing
            loss = torch.where(alive, per_run, torch.zeros_like(per_run)).sum()  # students never share gradients
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            correct += (logits.detach().argmax(-1) == y).sum(1)
            pending.append(torch.stack([per_run, ce * (w_ce > 0), kd * (w_kd > 0), torch.zeros_like(ce)], 1).detach())
            if len(pending) == FLUSH_EVERY or i == steps_per_epoch - 1:
                _flush_stacked(epoch, step - len(pending) + 1, pending, callbacks, alive, ended)
                pending = []
            for k, cb in enumerate(callbacks):
                if bool(alive[k]) and cb.should_stop():
                    ended[k] = Cancelled(f"student stopped at epoch {epoch} step {step}")
                    alive[k] = False
            if not bool(alive.any()):
                return [e for e in ended]  # type: ignore[misc]
        elapsed = time.perf_counter() - started
        rates.append(steps_per_epoch * batch_size / max(elapsed, 1e-9))
        with torch.no_grad():
            val_logits = forward_shared(params, buffers, data.val_x).float()  # [K, N_val, C]
        for k, (config, cb) in enumerate(zip(configs, callbacks)):
            if not bool(alive[k]):
                continue
            values = val_metrics(val_logits[k], data, soft, config.temperature)
            values.update(train_acc=correct[k].item() / (steps_per_epoch * batch_size), samples_per_s=rates[-1] / k_runs,
                          lr=_cosine(base.lr, epoch * steps_per_epoch, total_steps))
            cb.on_metrics("student", epoch, epoch * steps_per_epoch, values)
            model = _materialize(students[k], params, buffers, k)
            cb.on_snapshot("student", epoch, student_snapshot(model, data, soft, config.temperature))
            if values["val_acc"] > best[k]["val_acc"]:
                best[k].update(state=copy.deepcopy(model.state_dict()), best_epoch=epoch, val_acc=values["val_acc"])
            best[k]["history"].append({"epoch": epoch, **values})
            progresses[k].save({
                "stage": "student", "epoch": epoch, "model": model.state_dict(),
                "optimizer": _slice_optimizer_state(optimizer, params, k), "generator": generators[k].get_state(),
                "best_state": best[k]["state"], "best_epoch": best[k]["best_epoch"],
                "best_val_acc": best[k]["val_acc"], "history": best[k]["history"], "done": {},
            })
            cb.on_epoch_end("student", epoch, values)
    samples_per_s = sorted(rates)[len(rates) // 2] / k_runs
    out: list[dict[str, Any] | BaseException] = []
    for k, cb in enumerate(callbacks):
        if ended[k] is not None:
            out.append(ended[k])  # type: ignore[arg-type]
            continue
        cb.on_stage_end("student", {"best_epoch": best[k]["best_epoch"], "val_acc": best[k]["val_acc"]})
        out.append({"state": best[k]["state"], "best_epoch": best[k]["best_epoch"], "val_acc": best[k]["val_acc"],
                    "samples_per_s": samples_per_s})
    return out


def _flush_stacked(epoch: int, first_step: int, pending: list[Tensor], callbacks: list[Callback], alive: Tensor,
                   ended: list[BaseException | None]) -> None:
    rows = torch.stack(pending).tolist()  # [steps, K, 4]
    names = ("train_loss", "train_ce", "train_kd", "train_feature")
    for k, cb in enumerate(callbacks):
        if not bool(alive[k]):
            continue
        for offset, row in enumerate(rows):
            values = row[k]
            if not all(math.isfinite(v) for v in values):
                ended[k] = DivergedError(f"student diverged at epoch {epoch} step {first_step + offset}: loss is "
                                         f"{values[0]} (try a lower lr or temperature)")
                alive[k] = False
                break
            cb.on_metrics("student", epoch, first_step + offset, dict(zip(names, values)))


def _materialize(model: torch.nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor], k: int):
    """Student k of the stack as an ordinary module (shares no memory with the stack)."""
    state = {name: tensor[k].detach().clone() for name, tensor in {**params, **buffers}.items()}
    model.load_state_dict(state)
    return model


def _slice_optimizer_state(optimizer: torch.optim.Optimizer, params: dict[str, Tensor], k: int) -> dict[str, Any]:
    """Student k's optimizer state, in the layout of an optimizer over that student alone."""
    state = optimizer.state_dict()
    stacked = list(params.values())
    sliced = {}
    for index, per_param in state["state"].items():
        shape = stacked[index].shape
        sliced[index] = {name: (value[k].clone() if torch.is_tensor(value) and value.shape == shape else value)
                         for name, value in per_param.items()}
    return {"state": sliced, "param_groups": state["param_groups"]}
