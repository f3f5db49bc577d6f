"""Train the students of several runs at once, in one process, sharing everything they can.

A sweep's runs usually differ only in temperature, loss weights and seed. Trained one by one, each
run pays for a process start, the data, the teacher's soft labels, its own baseline, and a student
so small that Python overhead dominates each step. Here a group of such runs shares one process,
one teacher and one set of soft labels; runs with equal `baseline_key` share one baseline; and the
students of K runs are trained as one stacked model (`torch.func.stack_module_state` + `vmap`),
so each step is a handful of batched matmuls instead of K separate steps. The loop is the one every
run trains with (`kdcore.train.fit` with `Stacked` members), so a student trained in a group matches
the same run trained alone up to float rounding. Each run still gets its own metrics, snapshots,
per-epoch checkpoint (so it can be resumed alone) and summary.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from kdcore.callbacks import Callback, CallbackList
from kdcore.config import RunConfig
from kdcore.errors import Cancelled, KDError
from kdcore.methods import method_spec
from kdcore.train import Progress, Single, Stacked, StageResult, TrainState, fit
from kdcore.trainer import (Prepared, baseline_key, distill_stage, finetune, new_model, prepare, report_soft_labels,
                            student_model, student_summary, summarize, train_baseline)

MAX_GROUP = 32  # students per stacked model; more gains little and costs memory


def group_key(config: RunConfig) -> str | None:
    """Runs with the same key can be trained as one group; None when a run must train alone.

    Everything but temperature, the CE/KD weights, the seed and the name must agree, and the method
    must say it stacks (its objective is vmap-safe and keeps no state per student); feature
    distillation (a projector per student), augmentation (teacher on every batch) and runs on several
    devices (`kdcore.distributed`) train alone.
    """
    if config.weights.feature > 0 or config.augment or config.devices > 1 or not method_spec(config.method).stackable:
        return None
    shared = config.to_dict()
    for key in ("temperature", "seed", "name"):
        shared.pop(key)
    shared.pop("weights")
    return hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:16]


def run_group(configs: list[RunConfig], callbacks: list[Callback], *, teacher_cache: str | Path | None,
              artifacts: list[Path | None]) -> list[dict[str, Any] | BaseException]:
    """Train runs that share a `group_key`; returns each run's summary, or the exception that ended it."""
    assert configs and len({group_key(c) for c in configs}) == 1 and group_key(configs[0]) is not None
    started = time.perf_counter()
    everyone = _Shared(callbacks)  # the teacher and its soft labels serve every run: they stop only if all do
    prep = prepare(configs[0], everyone, teacher_cache)
    for config, cb in zip(configs, callbacks):
        report_soft_labels(config, prep, cb)
    data = prep.data
    shape, classes = data.info.input_shape, data.info.num_classes
    outcomes: list[dict[str, Any] | BaseException | None] = [None] * len(configs)

    students = [student_model(c, prep) for c in configs]  # the same initial weights as alone
    if Stacked.stackable(students[0]) and len(configs) > 1:
        student_results = _fit_students(configs, Stacked(students), callbacks, prep, artifacts)
    else:
        student_results = [_fit_students([c], Single(s), [cb], prep, [a])[0]
                           for c, s, cb, a in zip(configs, students, callbacks, artifacts)]

    baselines: dict[tuple, dict[str, float]] = {}
    for i, (config, cb, result) in enumerate(zip(configs, callbacks, student_results)):
        if isinstance(result, BaseException):
            outcomes[i] = result
            continue
        try:
            if cb.should_stop():
                raise Cancelled("stopped after the student stage")
            student = new_model(config.student.arch, shape, classes, config.seed, prep.device)
            student.load_state_dict(result["state"])
            progress, done = Progress(artifacts[i]), {"student": result}
            student_val_acc = finetune(config, prep, student, result, cb, progress, done, {})
            baseline = None
            if config.baseline:
                key = baseline_key(config)
                sharing = _Shared([c for c2, c, r in zip(configs, callbacks, student_results)
                                   if c2.baseline and baseline_key(c2) == key and not isinstance(r, BaseException)])
                if key not in baselines:  # trained once, reported to every run that shares it
                    baselines[key] = train_baseline(config, prep, sharing, Progress(None), {}, {})
                baseline = baselines[key]
            if cb.should_stop():  # it asked to stop while a shared baseline finished for the others
                raise Cancelled("stopped during the shared baseline")
            outcomes[i] = summarize(config, prep, student, result, student_val_acc, baseline, artifacts[i], cb, started)
            outcomes[i]["group_size"] = len(configs)  # wall_s is the whole group's: these runs trained together
        except (KDError, Cancelled) as exc:
            outcomes[i] = exc
    return outcomes  # type: ignore[return-value]


def _fit_students(configs: list[RunConfig], members: Single | Stacked, callbacks: list[Callback], prep: Prepared,
                  artifacts: list[Path | None]) -> list[dict[str, Any] | BaseException]:
    """The student stage of the group's runs (stacked, or one model at a time): per-run results or exceptions."""
    stage = distill_stage(configs, members, prep)
    state = TrainState.start(stage, members, configs[0], prep.device)
    try:
        results = fit(stage, state, prep.student_data, configs[0], prep.device, callbacks, [Progress(a) for a in artifacts])
    except (KDError, Cancelled) as exc:
        return [exc] * len(configs)
    out: list[dict[str, Any] | BaseException] = []
    for result, cb in zip(results, callbacks):
        if isinstance(result, StageResult):
            cb.on_stage_end("student", {"best_epoch": result.best_epoch, "val_acc": result.best_val_acc})
            out.append(student_summary(result))
        else:
            out.append(result)
    return out


class _Shared(CallbackList):
    """Callbacks of runs sharing one baseline: it stops only when every one of them wants to stop."""

    def should_stop(self) -> bool:
        return all(cb.should_stop() for cb in self.callbacks)
