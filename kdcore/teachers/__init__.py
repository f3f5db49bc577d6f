"""Teachers shipped with KD Lab, so that a first run distils at once instead of training its teacher.

Each file `<teacher_key>.pt` is a kdcore checkpoint of the teacher that `RunConfig.teacher_key()`
names, trained by `python bench/bundle_teachers.py` (which records in the file the command, the
torch version and the teacher's accuracies), beside the teacher's logits on the training, validation
and test splits (`<key>.train_logits.pt`, `<key>.val_logits.pt`, `<key>.test_logits.pt`) that a run
would otherwise compute: with them a run never runs the teacher. When a run's teacher cache has no
teacher for its key and one is bundled here (and `teacher.bundled` is true, the default), the trainer
copies these files into the cache and uses them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

FOLDER = Path(__file__).resolve().parent


def bundled_path(key: str) -> Path | None:
    """The bundled teacher for `key`, or None when KD Lab ships none for it."""
    path = FOLDER / f"{key}.pt"
    return path if path.is_file() else None


def bundled_keys() -> list[str]:
    return sorted(p.stem for p in FOLDER.glob("*.pt") if "." not in p.stem)


def install(key: str, cache: Path) -> Path:
    """Copy the bundled teacher `key` and its precomputed logits into the teacher cache; returns the teacher's path.

    Each file is copied to a temporary name and renamed into place, so a reader never sees half a file.
    """
    for source in sorted(FOLDER.glob(f"{key}.*pt")):  # the teacher and its `<key>.<name>.pt` tensors
        fd, tmp = tempfile.mkstemp(prefix=source.name + ".", suffix=".tmp", dir=cache)
        os.close(fd)
        try:
            shutil.copyfile(source, tmp)
            os.replace(tmp, cache / source.name)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return cache / f"{key}.pt"
