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
                                   weight_sparsity)
from kdcore.compress.quantize import calibration_inputs, quantize_int8
from kdcore.compress.recover import recover
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
    from kdcore.data import load_dataset

    export_format(fmt, quantize)
    path = output_path(out) if out is not None else None
    record = finished_run(store, run_id)
    config = RunConfig.from_dict(record.config)
    data = load_dataset(config.dataset, root=config.data_root, val_fraction=config.val_fraction)
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


def compress_run(store: Store, run_id: str, options: CompressOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Measure the run's teacher, student and compressed students; write artefacts and the report."""
    from kdcore.methods import get_method
    from kdcore.trainer import prepare

    started = time.perf_counter()
    record = finished_run(store, run_id, verb="compressed")
    config = RunConfig.from_dict(record.config)
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

    one_teacher = len(get_method(config.method).teacher_seeds(config)) == 1  # an ensemble has no single arch
    teacher = _Variant("teacher", "teacher", "teacher", copy.deepcopy(prep.teacher.model).cpu().eval(),
                       write_pt=one_teacher)
    fp32 = _Variant("student", "student", "student", student)
    variants = [teacher, fp32]
    if options.quantize:
        variants.append(_Variant(f"student {options.quantize}", f"student-{options.quantize}", "student", None, fp32))
    pruning: dict[str, Any] | None = None
    if options.prune is not None:
        pruned_variants, pruning = _prune_and_recover(student, prep, config, options, report_progress)
        variants += pruned_variants

    rows, predictions = [], []
    for variant in variants:
        report_progress(f"exporting and measuring: {variant.label}")
        row, predicted = _measure(store, record, data, variant, test_x, test_y, calibration, options)
        rows.append(row)
        predictions.append(predicted)
    for row, predicted in zip(rows, predictions):  # as deployed (ONNX Runtime), against the fp32 student's
        row["agreement"] = float((predicted == predictions[1]).mean())
    if pruning is not None:
        by_name = {row["name"]: row for row in rows}
        pruning["test_acc_before_recovery"] = by_name[pruning.pop("pruned_name")]["test_acc"]
        recovered = pruning.pop("recovered_name", None)
        if recovered:
            pruning["test_acc_after_recovery"] = by_name[recovered]["test_acc"]

    report = {
        "run_id": run_id, "options": options.to_dict(), "key": options.key, "dataset": config.dataset,
        "teacher_arch": config.teacher.arch, "student_arch": config.student.arch, "test_size": int(len(test_y)),
        "variants": rows, "pruning": pruning,
        "artifacts": [name for row in rows for name in row["artifacts"]],
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "onnxruntime": _onnxruntime_version()},
        "created": time.time(), "wall_s": time.perf_counter() - started,
    }
    store.write_artifact(run_id, report_name(options), json.dumps(report, indent=1).encode())
    report_progress("done")
    return report


def _prune_and_recover(student: nn.Module, prep, config: RunConfig, options: CompressOptions,
                       report_progress: Callable[..., None]) -> tuple[list[_Variant], dict[str, Any]]:
    """The pruned student, the same after KD recovery, and that one in int8 (as asked), with what was done."""
    key, kind = options.prune_key, "structured" if options.structured else "unstructured"
    model = copy.deepcopy(student).to(prep.device)
    report_progress(f"pruning {100 * options.prune:g}% ({kind})")
    if options.structured:
        masks, done = None, channel_prune(model, options.prune, prep.data.info.input_shape)
    else:
        masks, done = magnitude_prune(model, options.prune)
    description = f"{100 * options.prune:g}% {kind}"
    meta = {"structured": options.structured, "fraction": options.prune}
    final = _Variant(f"pruned {description}", f"student-{key}", "student", copy.deepcopy(model).cpu(),
                     pruning=description, pruning_meta=meta)
    variants = [final]
    pruning = {**_pruning_summary(done, kind), "pruned_name": final.name}
    if options.recover_epochs:
        report_progress(f"KD recovery: {options.recover_epochs} epochs from the teacher")
        result = recover(model, prep, config, options.recover_epochs, masks=masks,
                         callback=_EpochProgress(report_progress, options.recover_epochs))
        final = _Variant(f"pruned {description} + KD recovery", f"student-{key}-r{options.recover_epochs}", "student",
                         model.cpu().eval(), pruning=f"{description}, {options.recover_epochs} epochs of KD",
                         pruning_meta={**meta, "recover_epochs": options.recover_epochs})
        variants.append(final)
        pruning.update(recover_epochs=options.recover_epochs, recovery_best_epoch=result.best_epoch,
                       recovery_val_acc=result.best_val_acc, sparsity_after_recovery=weight_sparsity(final.model),
                       recovered_name=final.name)
    if options.quantize:
        variants.append(_Variant(f"{final.label} {options.quantize}", f"{final.name}-{options.quantize}", "student",
                                 None, final, pruning=final.pruning))
    return variants, pruning


def _plan(options: CompressOptions) -> list[str]:
    """The steps progress counts: loading, [pruning, recovery], one per measured variant, done."""
    variants = 2 + bool(options.quantize)
    if options.prune is not None:
        variants += 1 + bool(options.recover_epochs) + bool(options.quantize)
    return ["load"] + ["prune"] * (options.prune is not None) + ["recover"] * bool(options.recover_epochs) \
        + ["measure"] * variants + ["done"]


def _progress_writer(store: Store, run_id: str, options: CompressOptions, progress: Progress | None,
                     total: int) -> Callable[[str], None]:
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
    """Recovery epochs as sub-steps of the recovery step."""

    def __init__(self, report: Callable[..., None], epochs: int) -> None:
        self.report, self.epochs = report, epochs

    def on_epoch_end(self, stage, epoch, values):
        self.report(f"KD recovery: epoch {epoch}/{self.epochs}, val acc {100 * values.get('val_acc', 0):.2f}%",
                    substep=True)


def _pruning_summary(done: Pruned, kind: str) -> dict[str, Any]:
    return {"fraction": done.fraction, "kind": kind, "params_before": done.params_before,
            "params_after": done.params_after, "weight_sparsity": done.sparsity}


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
        quantize_int8(store.artifact_path(record.id, f"{source.name}.onnx"), onnx_path, calibration)
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
