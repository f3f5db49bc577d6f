"""The deployment report of a finished run, and the export of its student.

    report = compress_run(store, run_id, CompressOptions(prune=0.5, structured=True, recover_epochs=2,
                                                         quantize="int8"))

measures the teacher, the student, and each compressed variant of the student on this machine's CPU
(`kdcore.compress.measure`): test accuracy, parameters, file size, latency at batch 1 (p50, p95) and
throughput at batch 64, in PyTorch and in ONNX Runtime. Variants, in order:

    teacher · student · student int8 · pruned · pruned + KD recovery · (pruned + recovery) int8

Every variant is written as an artefact of the run (ONNX, and a kdcore checkpoint for the fp32
PyTorch models), and the report itself as `report-<options key>.json`, so the Deploy page shows a
computed report at once. Progress goes to the store too (`report-<key>.progress.json`), for the page
that started the computation in a background process (`kdcore.compress.jobs`).
"""

from __future__ import annotations

import copy
import json
import os
import platform
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdcore import checkpoints
from kdcore.callbacks import Callback
from kdcore.compress import measure
from kdcore.compress.checks import export_format, finished_run, output_path
from kdcore.compress.export import export_checkpoint, export_onnx
from kdcore.compress.options import CompressOptions, progress_name, report_name
from kdcore.compress.prune import (Pruned, channel_prune, magnitude_prune, nonzero_parameters, total_parameters,
                                   weight_sparsity, zero_masks)
from kdcore.compress.quantize import calibration_inputs, quantize_int8
from kdcore.compress.recover import recover, target_model
from kdcore.config import RunConfig
from kdcore.models import build_model
from kdcore.store import RunRecord, Store

Progress = Callable[[int, int, str], None]  # (step, of total steps, what is being done)


# --- the run's student ----------------------------------------------------------------------------------------


def load_student(store: Store, record: RunRecord, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    config = record.config
    arch = config["student"]["arch"]
    model = build_model(arch, input_shape, num_classes)
    checkpoints.load_into(model, store.student_checkpoint(record.id), arch=arch, input_shape=input_shape,
                          num_classes=num_classes, what=f"student of {record.id}")
    return model.eval()


def deployment_metadata(record: RunRecord, data, role: str, **extra: Any) -> dict[str, Any]:
    """What a deployed file needs besides its weights: the input normalisation and the class names."""
    return {"kdcore_run": record.id, "model": role, "dataset": record.config["dataset"],
            "input_shape": list(data.info.input_shape), "input_mean": list(data.mean), "input_std": list(data.std),
            "class_names": list(data.class_names), **extra}


# --- export -----------------------------------------------------------------------------------------------------


def export_run(store: Store, run_id: str, fmt: str, *, quantize: str | None = None,
               out: str | Path | None = None) -> dict[str, Any]:
    """Write a finished run's student as ONNX (fp32 or int8) or as a kdcore checkpoint; returns what was written."""
    from kdcore.data import load_for

    export_format(fmt, quantize)
    path = output_path(out) if out is not None else None
    record = finished_run(store, run_id)
    config = RunConfig.from_dict(record.config)
    data = load_for(config)
    shape, classes = data.info.input_shape, data.info.num_classes
    student = load_student(store, record, shape, classes)
    default_name = {"pt": "student.pt", "onnx": "student-int8.onnx" if quantize else "student.onnx"}[fmt]
    path = path or store.artifact_path(run_id, default_name)
    if fmt == "pt":
        export_checkpoint(student, path, arch=config.student.arch, input_shape=shape, num_classes=classes,
                          config=config.to_dict(), deployment=deployment_metadata(record, data, "student"))
    elif quantize:
        with tempfile.TemporaryDirectory(prefix="kdcore-export-") as scratch:
            fp32 = export_onnx(student, data.test_x[:2], Path(scratch) / "fp32.onnx",
                               deployment_metadata(record, data, "student", precision="int8"))
            quantize_int8(fp32, path, calibration_inputs(data.train_x.numpy()))
    else:
        export_onnx(student, data.test_x[:2], path, deployment_metadata(record, data, "student", precision="fp32"))
    return {"run_id": run_id, "format": fmt, "quantize": quantize, "path": str(path), "bytes": path.stat().st_size}


# --- the report -------------------------------------------------------------------------------------------------


@dataclass
class _Variant:
    """A model to measure: an fp32 PyTorch model (exported to ONNX), or an int8 ONNX file of one."""

    label: str
    name: str  # artefact stem
    role: str  # teacher | student
    model: nn.Module | None  # None for int8: it exists only as ONNX
    source: _Variant | None = None  # what an int8 variant quantises
    pruning: str = ""  # how it was pruned, in words ("" when it was not)
    pruning_meta: dict[str, Any] | None = None  # what its checkpoint records (load_model rebuilds from it)
    write_pt: bool = True
    measured: bool = True  # False for a QAT-trained float model: only its int8 file is a variant


def compress_run(store: Store, run_id: str, options: CompressOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Measure the run's teacher, student and compressed variants; write artefacts and the report."""
    from kdcore.compress.checks import prunable_teacher
    from kdcore.trainer import prepare

    started = time.perf_counter()
    record = finished_run(store, run_id, verb="compressed")
    config = RunConfig.from_dict(record.config)
    one_teacher = prunable_teacher(config, options)  # refused here when the teacher to prune is an ensemble
    steps = _plan(options)
    report_progress = _progress_writer(store, run_id, options, progress, len(steps))
    report_progress("loading the data, the teacher and its soft labels")
    prep = prepare(config, Callback(), store.teacher_dir())  # the run's teacher: cached, or trained again
    data = prep.data
    shape, classes = data.info.input_shape, data.info.num_classes
    student = load_student(store, record, shape, classes)
    test_x = np.ascontiguousarray(data.test_x.cpu().numpy())
    test_y = data.test_y.cpu().numpy()
    calibration = calibration_inputs(data.train_x.cpu().numpy()) if options.quantize else None

    teacher = _Variant("teacher", "teacher", "teacher", copy.deepcopy(prep.teacher.model).cpu().eval(),
                       write_pt=one_teacher)
    fp32 = _Variant("student", "student", "student", student)
    groups: dict[str, list[_Variant]] = {"teacher": [teacher], "student": [fp32]}  # each model, then its variants
    prunings: dict[str, dict[str, Any]] = {}
    quantization: list[dict[str, Any]] = []
    if options.quantize:
        groups["student"] += _int8_variants(fp32, prep, config, options, calibration, quantization, report_progress)
    for role in PRUNED_ROLES[options.prune_model] if options.prune is not None else ():
        pruned_variants, prunings[role] = _prune_and_recover(groups[role][0], prep, config, options, report_progress)
        groups[role] += pruned_variants
        if options.quantize:
            groups[role] += _int8_variants(pruned_variants[-1], prep, config, options, calibration, quantization,
                                           report_progress)
    variants = groups["teacher"] + groups["student"]

    rows, predictions = [], {}
    for variant in variants:
        report_progress(f"exporting and measuring: {variant.label}")
        row, predictions[variant.name] = _measure(store, record, data, variant, test_x, test_y, calibration, options)
        rows.append(row)
    for row in rows:  # as deployed (ONNX Runtime), against the fp32 model of its role, unpruned
        row["agreement"] = float((predictions[row["name"]] == predictions[row["role"]]).mean())
    by_name = {row["name"]: row for row in rows}
    for pruning in prunings.values():
        pruning["test_acc_before_recovery"] = by_name[pruning.pop("pruned_name")]["test_acc"]
        recovered = pruning.pop("recovered_name", None)
        if recovered:
            pruning["test_acc_after_recovery"] = by_name[recovered]["test_acc"]
    for entry in quantization:  # PTQ against QAT, both measured running in ONNX Runtime
        entry.update(fp32_test_acc=by_name[entry["source"]]["test_acc"], ptq_test_acc=by_name[entry["ptq_name"]]["test_acc"],
                     qat_test_acc=by_name[entry["qat_name"]]["test_acc"])

    report = {
        "run_id": run_id, "options": options.to_dict(), "key": options.key, "dataset": config.dataset,
        "teacher_arch": config.teacher.arch, "student_arch": config.student.arch, "test_size": int(len(test_y)),
        "variants": rows, "pruning": prunings.get("student"), "teacher_pruning": prunings.get("teacher"),
        "quantization": quantization,
        "artifacts": [name for row in rows for name in row["artifacts"]],
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "onnxruntime": _onnxruntime_version()},
        "created": time.time(), "wall_s": time.perf_counter() - started,
    }
    store.write_artifact(run_id, report_name(options), json.dumps(report, indent=1).encode())
    report_progress("done")
    return report


PRUNED_ROLES = {"student": ("student",), "teacher": ("teacher",), "both": ("teacher", "student")}


def _prune_and_recover(unpruned: _Variant, prep, config: RunConfig, options: CompressOptions,
                       report_progress: Callable[..., None]) -> tuple[list[_Variant], dict[str, Any]]:
    """The pruned model (the student or the teacher) and the same after KD recovery, with what was done.

    In `prune_steps` steps, each removes an equal share of what is left (so that `prune` is removed in all)
    and is followed by its own recovery; the "pruned" variant is the model after the last pruning step,
    before its recovery."""
    role, key, kind = unpruned.role, options.prune_key, "structured" if options.structured else "unstructured"
    model = copy.deepcopy(unpruned.model).to(prep.device)
    target = target_model(prep, copy.deepcopy(unpruned.model), options.recover_from, role, config.temperature) \
        if options.recover_epochs else None
    steps = options.prune_steps
    description = f"{100 * options.prune:g}% {kind}" + (f" in {steps} steps" if steps > 1 else "")
    meta = {"structured": options.structured, "fraction": options.prune, "steps": steps}
    masks, result, first = None, None, None
    reference = copy.deepcopy(unpruned.model).to(prep.device).eval() if options.structured else None
    for step in range(1, steps + 1):
        step_fraction = 1 - (1 - options.prune) ** (1 / steps) if options.structured else \
            1 - (1 - options.prune) ** (step / steps)  # structured: of what is left; unstructured: of all weights
        report_progress(f"pruning the {role}: {description}" + (f", step {step}/{steps}" if steps > 1 else ""),
                        substep=step > 1)
        if options.structured:
            done = channel_prune(model, step_fraction, prep.data.info.input_shape, refit_on=prep.data.train_x,
                                 reference=reference)  # the classifier refit to the unpruned model's logits
        else:
            masks, done = magnitude_prune(model, step_fraction)
        first = first or done
        if step == steps:
            pruned = _Variant(f"{role} pruned {description}" if role == "teacher" else f"pruned {description}",
                              f"{role}-{key}", role, copy.deepcopy(model).cpu().eval(), pruning=description,
                              pruning_meta=meta)
        if options.recover_epochs:
            report_progress(f"KD recovery of the {role}: {options.recover_epochs} epochs from the "
                            f"{_source_words(options, role)}", substep=step > 1)
            result = recover(model, prep, config, options.recover_epochs, target=target, role=role, masks=masks,
                             callback=_EpochProgress(report_progress, options.recover_epochs))
    variants = [pruned]
    summary = {**_pruning_summary(first, done, kind, options.prune), "model": role, "steps": steps,
               "pruned_name": pruned.name}
    if options.recover_epochs:
        recovery = f"{options.recover_epochs} epochs of KD from the {_source_words(options, role)}" + \
            (" after each step" if steps > 1 else "")
        final = _Variant(f"{pruned.label} + KD recovery", f"{pruned.name}-{options.recovery_key}", role,
                         model.cpu().eval(), pruning=f"{description}, {recovery}",
                         pruning_meta={**meta, "recover_epochs": options.recover_epochs,
                                       "recover_from": options.recover_from})
        variants.append(final)
        summary.update(recover_epochs=options.recover_epochs, recover_from=options.recover_from,
                       recovery_best_epoch=result.best_epoch, recovery_val_acc=result.best_val_acc,
                       sparsity_after_recovery=weight_sparsity(final.model), recovered_name=final.name)
    return variants, summary


def _source_words(options: CompressOptions, role: str) -> str:
    if role == "teacher":
        return "unpruned teacher"
    return {"teacher": "teacher", "unpruned": "unpruned student", "both": "teacher and the unpruned student"}[
        options.recover_from]


def _int8_variants(source: _Variant, prep, config: RunConfig, options: CompressOptions, calibration: np.ndarray,
                   quantization: list[dict[str, Any]], report_progress: Callable[..., None]) -> list[_Variant]:
    """`source` quantised after training (PTQ) and, with `qat_epochs`, after quantisation-aware fine-tuning (QAT);
    the pair is noted in `quantization` so the report can compare them."""
    ptq = _Variant(f"{source.label} {options.quantize}", f"{source.name}-{options.quantize}", source.role, None, source,
                   pruning=source.pruning)
    if not options.qat_epochs:
        return [ptq]
    qat, done = _quantization_aware(source, prep, config, options, calibration, report_progress)
    quantization.append({"source": source.name, "ptq_name": ptq.name, "qat_name": qat.name,
                         "qat_epochs": options.qat_epochs, "qat_best_epoch": done.best_epoch,
                         "qat_val_acc": done.best_val_acc})
    return [ptq, qat]


def _quantization_aware(source: _Variant, prep, config: RunConfig, options: CompressOptions, calibration: np.ndarray,
                        report_progress: Callable[..., None]) -> tuple[_Variant, Any]:
    """`source` fine-tuned with fake int8 quantisation, distilled from the run's teacher, then quantised in ONNX
    Runtime as PTQ is (`kdcore.compress.qat`); pruned weights stay zero."""
    from kdcore.compress.qat import fake_quantized
    from kdcore.compress.quantize import cpu_has_vnni

    report_progress(f"quantisation-aware fine-tuning of the {source.label}: {options.qat_epochs} epochs")
    model = copy.deepcopy(source.model).to(prep.device)
    masks = zero_masks(model) if source.pruning and not options.structured else None
    target = prep.teacher.model if source.role == "student" else \
        copy.deepcopy(source.model).to(prep.device).eval().requires_grad_(False)  # the teacher's own fp32 self
    with fake_quantized(model, torch.from_numpy(calibration).to(prep.device), reduce_range=not cpu_has_vnni()):
        done = recover(model, prep, config, options.qat_epochs, target=target, role=source.role, masks=masks,
                       callback=_EpochProgress(report_progress, options.qat_epochs, "QAT"), name="qat")
    trained = _Variant(f"{source.label} + QAT", f"{source.name}-qat{options.qat_epochs}", source.role,
                       model.cpu().eval(), pruning=source.pruning, write_pt=False, measured=False)
    label = f"{source.label} {options.quantize} QAT"
    return _Variant(label, f"{source.name}-{options.quantize}-qat{options.qat_epochs}", source.role, None, trained,
                    pruning=source.pruning), done


def _plan(options: CompressOptions) -> list[str]:
    """The steps progress counts: loading, [pruning, recovery] per pruned model, [QAT] per quantised model,
    one per measured variant, done. Pruning steps and recovery epochs are sub-steps."""
    pruned = len(PRUNED_ROLES[options.prune_model]) if options.prune is not None else 0
    quantized = (1 + pruned) if options.quantize else 0
    variants = 2 + pruned * (1 + bool(options.recover_epochs)) + quantized * (1 + bool(options.qat_epochs))
    return ["load"] + ["prune", *["recover"] * bool(options.recover_epochs)] * pruned \
        + ["qat"] * (quantized if options.qat_epochs else 0) + ["measure"] * variants + ["done"]


def _progress_writer(store: Store, run_id: str, options: CompressOptions, progress: Progress | None,
                     total: int) -> Callable[..., None]:
    """Report each step to `progress` and to the store (where the Deploy page reads it); sub-steps repeat a step."""
    state = {"step": 0}

    def report(message: str, substep: bool = False) -> None:
        if not substep:
            state["step"] += 1
        step = min(state["step"], total)
        store.write_artifact(run_id, progress_name(options), json.dumps(
            {"step": step, "total": total, "message": message, "t": time.time(), "pid": os.getpid()}).encode())
        if progress is not None:
            progress(step, total, message)

    return report


class _EpochProgress(Callback):
    """Training epochs as sub-steps of the step that trains."""

    def __init__(self, report: Callable[..., None], epochs: int, what: str = "KD recovery") -> None:
        self.report, self.epochs, self.what = report, epochs, what

    def on_epoch_end(self, stage, epoch, values):
        self.report(f"{self.what}: epoch {epoch}/{self.epochs}, val acc {100 * values.get('val_acc', 0):.2f}%",
                    substep=True)


def _pruning_summary(first: Pruned, last: Pruned, kind: str, fraction: float) -> dict[str, Any]:
    return {"fraction": fraction, "kind": kind, "params_before": first.params_before,
            "params_after": last.params_after, "weight_sparsity": last.sparsity,
            "classifier_refit_inputs": last.refit_inputs}


def _measure(store: Store, record: RunRecord, data, variant: _Variant, test_x: np.ndarray, test_y: np.ndarray,
             calibration: np.ndarray | None, options: CompressOptions) -> tuple[dict[str, Any], np.ndarray]:
    """Export one variant (ONNX, and .pt for fp32 models), then measure it in PyTorch and ONNX Runtime.
    Returns its row and its predicted classes on the test set in ONNX Runtime."""
    config = record.config
    onnx_path = store.artifact_path(record.id, f"{variant.name}.onnx")
    precision = "fp32" if variant.model is not None else (options.quantize or "int8")
    metadata = deployment_metadata(record, data, variant.role, precision=precision, variant=variant.label)
    artifacts = [onnx_path.name]
    row: dict[str, Any] = {"variant": variant.label, "name": variant.name, "role": variant.role,
                           "precision": precision, "pruning": variant.pruning}
    if variant.model is not None:
        model = variant.model.cpu().eval()
        export_onnx(model, data.test_x[:2], onnx_path, metadata)
        pt_bytes = None
        if variant.write_pt:
            pt_path = store.artifact_path(record.id, f"{variant.name}.pt")
            extra = {"pruning": variant.pruning_meta} if variant.pruning_meta else {}
            export_checkpoint(model, pt_path, arch=config[variant.role]["arch"], input_shape=data.info.input_shape,
                              num_classes=data.info.num_classes, deployment=metadata, **extra)
            artifacts.append(pt_path.name)
            pt_bytes = pt_path.stat().st_size
        run_torch = measure.torch_runner(model)
        torch_acc = measure.accuracy(measure.logits_of(run_torch, test_x), test_y)
        torch_speed = measure.speed(run_torch, test_x, options.repeats)
        params, nonzero, sparsity = total_parameters(model), nonzero_parameters(model), weight_sparsity(model)
    else:
        source = variant.source
        with tempfile.TemporaryDirectory(prefix="kdcore-qat-") as scratch:
            if source.measured:
                fp32_path = store.artifact_path(record.id, f"{source.name}.onnx")
            else:  # the float weights quantisation-aware training left: exported only to be quantised
                fp32_path = export_onnx(source.model.cpu().eval(), data.test_x[:2], Path(scratch) / "fp32.onnx")
            quantize_int8(fp32_path, onnx_path, calibration)
        pt_bytes, torch_acc, torch_speed = None, None, None
        params, nonzero, sparsity = (total_parameters(source.model), nonzero_parameters(source.model),
                                     weight_sparsity(source.model))
    session = measure.onnx_session(onnx_path)
    run_onnx = measure.onnx_runner(session)
    ort_logits = measure.logits_of(run_onnx, test_x)
    ort_acc = measure.accuracy(ort_logits, test_y)
    ort_speed = measure.speed(run_onnx, test_x, options.repeats)
    onnx_bytes = onnx_path.stat().st_size
    row.update({
        "test_acc": torch_acc if torch_acc is not None else ort_acc,  # as deployed: int8 exists only in ORT
        "torch_test_acc": torch_acc, "ort_test_acc": ort_acc,
        "params": params, "nonzero_params": nonzero, "weight_sparsity": sparsity,
        "bytes": onnx_bytes, "pt_bytes": pt_bytes,
        "compressed_bytes": len(zlib.compress(onnx_path.read_bytes(), 9)),  # what zeros save once zipped
        "torch_p50_ms": torch_speed.p50_ms if torch_speed else None,
        "torch_p95_ms": torch_speed.p95_ms if torch_speed else None,
        "torch_throughput": torch_speed.throughput if torch_speed else None,
        "ort_p50_ms": ort_speed.p50_ms, "ort_p95_ms": ort_speed.p95_ms, "ort_throughput": ort_speed.throughput,
        "artifacts": artifacts,
    })
    return row, ort_logits.argmax(1)


def _onnxruntime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def cached_report(store: Store, run_id: str, options: CompressOptions) -> dict[str, Any] | None:
    """The report computed earlier for these options, or None."""
    data = store.read_artifact(run_id, report_name(options))
    return json.loads(data) if data else None
