"""Bad input to `export` and `compress`, refused before any work (and before torch is imported).

A run that does not exist or has not finished, and an output file whose folder is missing or cannot be
written to, are one-line errors; nothing is written for them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from kdcore.errors import KDError
from kdcore.store import RunRecord, Store


def finished_run(store: Store, run_id: str, verb: str = "exported") -> RunRecord:
    """The run, if it finished with a saved student; a one-line KDError otherwise."""
    record = store.get_run(run_id)  # RunNotFound for an unknown or malformed id
    if record.status != "done":
        raise KDError(f"run {run_id} is {record.status}: only a finished run (status done) can be {verb}")
    if not store.student_checkpoint(run_id).is_file():
        raise KDError(f"run {run_id} has no saved student ({store.student_checkpoint(run_id)} is missing)")
    return record


def output_path(out: str | Path) -> Path:
    """A file path whose folder exists and can be written to (tried by creating and removing a probe file
    there: permission bits say nothing for root, or on a read-only file system)."""
    path = Path(out).expanduser()
    if path.is_dir():
        raise KDError(f"--out {out} is a folder; give the path of the file to write")
    folder = path.parent
    if not folder.is_dir():
        raise KDError(f"--out {out}: folder {folder} does not exist")
    try:
        fd, probe = tempfile.mkstemp(prefix=".kdcore-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise KDError(f"--out {out}: cannot write to folder {folder} ({exc.strerror or exc})") from None
    return path


def export_format(fmt: str, quantize: str | None) -> None:
    """A format `export` writes, and a quantisation that format can hold."""
    from kdcore.compress.options import EXPORT_FORMATS, QUANTIZATIONS

    if fmt not in EXPORT_FORMATS:
        raise KDError(f"--format: unknown format {fmt!r}; valid: {', '.join(EXPORT_FORMATS)}")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise KDError(f"--quantize: unknown quantisation {quantize!r}; valid: {', '.join(QUANTIZATIONS)}")
    if quantize and fmt != "onnx":
        raise KDError("--quantize int8 writes an ONNX model (it runs in ONNX Runtime): use --format onnx")


def prunable_teacher(config, options) -> bool:
    """Whether the run has one teacher (an architecture with a checkpoint); refuses pruning a teacher that is
    an ensemble of several (a method such as multi_teacher averages them: there is no one network to prune)."""
    from kdcore.methods import get_method

    count = len(get_method(config.method).teacher_seeds(config))
    if count > 1 and options.prune is not None and options.prune_model != "student":
        raise KDError(f"--prune-model {options.prune_model}: the run's teacher is an ensemble of {count} teachers "
                      f"(method {config.method}); prune its student instead")
    return count == 1
