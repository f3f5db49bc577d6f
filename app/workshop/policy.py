"""What a run submitted from a workshop room may ask of the shared server, checked where it is submitted.

In workshop mode no browser input may reach a server path: the dataset is a bundled one (or one the
instructor allowed when starting the app, `KDLAB_WORKSHOP_DATASETS`), there is no data folder, a
teacher checkpoint can only be a file the app itself saved from an upload, and architectures are
registered names (no `hf:`/`timm:` folders). A per-run budget (epochs × training examples, set by
the instructor) keeps one run from holding the machine for an hour. The New run page hides what is
not allowed; `check_run` is what actually refuses it, on the submission path. No Streamlit here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from kdcore.dataset_names import CATALOGUE
from kdcore.errors import KDError
from kdcore.model_names import ARCHS, mlp_widths

ALLOWED_DATASETS_ENV = "KDLAB_WORKSHOP_DATASETS"  # comma-separated extra datasets, e.g. imagefolder:/srv/pets
UPLOAD_LIMIT_ENV = "KDLAB_WORKSHOP_UPLOAD_MB"
DEFAULT_UPLOAD_MB = 20  # a kdcore CNN teacher is well under 1 MB; a ResNet-56 about 3.5 MB
NAME_MAX_CHARS = 60  # run names in a room: a leaderboard cell, not an essay
DEFAULT_BUDGET = 250_000  # example-epochs; the teaching preset (mnist-5k, 8 teacher + 2×30 student epochs) fits
TEST_FRACTION = 0.2  # kdcore.data.splits holds this out as test on sets without an official split
OFFICIAL_TRAIN = {"mnist": 60_000, "fashion-mnist": 60_000, "cifar10": 50_000, "cifar100": 50_000}


class WorkshopPolicyError(KDError):
    """A run a workshop room does not allow; the message says what to change."""


def allowed_datasets(environ: dict[str, str] | None = None) -> list[str]:
    """The bundled and generated datasets (no download into the server's folders), then the instructor's."""
    environ = os.environ if environ is None else environ
    bundled = [name for name, info in CATALOGUE.items() if info.offline]
    extra = [name.strip() for name in environ.get(ALLOWED_DATASETS_ENV, "").split(",") if name.strip()]
    return bundled + [name for name in extra if name not in bundled]


def upload_limit_bytes(environ: dict[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    raw = environ.get(UPLOAD_LIMIT_ENV, "").strip()
    try:
        megabytes = float(raw) if raw else DEFAULT_UPLOAD_MB
    except ValueError:
        megabytes = DEFAULT_UPLOAD_MB
    return int(max(megabytes, 0.001) * 1024 * 1024)


def check_upload(size: int, environ: dict[str, str] | None = None) -> None:
    limit = upload_limit_bytes(environ)
    if size > limit:
        raise WorkshopPolicyError(f"the file is {size / 1024 / 1024:.1f} MB; uploads in this workshop are limited "
                                  f"to {limit / 1024 / 1024:g} MB")


def check_text(what: str, text: str, max_chars: int = NAME_MAX_CHARS) -> str:
    """A name typed in the browser: at most `max_chars` printable characters."""
    if not isinstance(text, str) or len(text) > max_chars:
        raise WorkshopPolicyError(f"{what} must be at most {max_chars} characters")
    if not text.isprintable():
        raise WorkshopPolicyError(f"{what} must be printable characters only (no newlines or control characters)")
    return text


def training_examples(dataset: str, val_fraction: float) -> int | None:
    """How many examples one epoch trains on (None when only the files would tell: an allowed folder)."""
    info = CATALOGUE.get(dataset)
    if info is None or info.size is None:
        return None
    train_and_val = OFFICIAL_TRAIN.get(dataset, round(info.size * (1 - TEST_FRACTION)))
    return round(train_and_val * (1 - val_fraction))


def run_budget(config: dict[str, Any]) -> int | None:
    """Epochs × training examples of a run: the teacher's epochs, the student's (twice with a baseline)
    and the fine-tuning epochs, each over the training set. None when the dataset's size is unknown."""
    examples = training_examples(config.get("dataset", ""), float(config.get("val_fraction", 0.1)))
    if examples is None:
        return None
    teacher = config.get("teacher") or {}
    epochs = (0 if teacher.get("checkpoint") else int(teacher.get("epochs", 0))) \
        + int(config.get("epochs", 0)) * (2 if config.get("baseline", True) else 1) \
        + int(config.get("finetune_epochs", 0))
    return epochs * examples


def _is_registered(arch: str) -> bool:
    try:
        return arch in ARCHS or mlp_widths(arch) is not None
    except (KDError, ValueError):
        return False


def check_run(config: dict[str, Any], *, is_upload: Callable[[str], bool], budget: int | None,
              environ: dict[str, str] | None = None) -> None:
    """Refuse (WorkshopPolicyError) a run config that reaches a server path or passes the budget."""
    dataset = config.get("dataset", "")
    allowed = allowed_datasets(environ)
    if dataset not in allowed:
        raise WorkshopPolicyError(f"dataset {dataset!r} is not available in this workshop; choose one of "
                                  f"{', '.join(allowed)}")
    if config.get("data_root"):
        raise WorkshopPolicyError("a data folder cannot be set in this workshop")
    transfer = config.get("transfer")
    if transfer and transfer not in allowed:
        raise WorkshopPolicyError(f"transfer set {transfer!r} is not available in this workshop; choose one of "
                                  f"{', '.join(allowed)}")
    for role in ("teacher", "student"):
        arch = (config.get(role) or {}).get("arch", "")
        if not _is_registered(arch):
            raise WorkshopPolicyError(f"{role}.arch {arch!r} is not available in this workshop; choose a listed "
                                      "architecture or mlp:W1,W2,...")
    if any((config.get("tracking") or {}).values()):
        raise WorkshopPolicyError("experiment trackers (tracking.mlflow, tracking.tensorboard) cannot be set in this "
                                  "workshop")
    checkpoint = (config.get("teacher") or {}).get("checkpoint")
    if checkpoint and not is_upload(checkpoint):
        raise WorkshopPolicyError("a teacher checkpoint in this workshop must be uploaded through the form")
    cost = run_budget(config)
    if budget is not None and cost is not None and cost > budget:
        raise WorkshopPolicyError(f"this run would train {cost:,} example-epochs (epochs × training examples); the "
                                  f"instructor's limit per run is {budget:,}. Use fewer epochs or no baseline")


ParameterCount = Callable[[str, tuple, int], int]  # (arch, input_shape, num_classes) -> trainable parameters


def student_params(config: dict[str, Any], parameter_count: ParameterCount) -> int | None:
    """The student's trainable parameters on the run's dataset; None when the dataset or architecture says nothing."""
    info = CATALOGUE.get(config.get("dataset", ""))
    arch = (config.get("student") or {}).get("arch", "")
    if info is None or info.input_shape is None:
        return None
    try:
        return parameter_count(arch, tuple(info.input_shape), info.num_classes)
    except (KDError, ValueError, TypeError):
        return None


def challenge_problems(config: dict[str, Any], challenge: Any, params: int | None) -> list[str]:
    """The limits of `challenge` (an `app.workshop.room.Challenge`) that a run config breaks, each said
    plainly; [] when it fits. `params` is the student's trainable parameter count (None: unknown)."""
    problems = []
    if config.get("dataset") != challenge.dataset:
        problems.append(f"the dataset must be {challenge.dataset}, not {config.get('dataset')}")
    teacher = config.get("teacher") or {}
    if teacher.get("checkpoint") or teacher.get("arch") != challenge.teacher_arch \
            or teacher.get("epochs") != challenge.teacher_epochs:
        problems.append(f"the teacher must be the challenge's {challenge.teacher_arch} trained for "
                        f"{challenge.teacher_epochs} epochs")
    if params is None:
        problems.append("the student's parameter count is unknown")
    elif params > challenge.max_student_params:
        problems.append(f"the student has {params:,} parameters, over the limit of {challenge.max_student_params:,}")
    cost = run_budget(config)
    if cost is not None and cost > challenge.budget:
        problems.append(f"the run would train {cost:,} example-epochs, over the challenge's budget of "
                        f"{challenge.budget:,}")
    return problems


def check_challenge_entry(config: dict[str, Any], challenge: Any, parameter_count: ParameterCount) -> None:
    """Refuse (WorkshopPolicyError, one message naming every broken limit) a challenge entry outside its limits."""
    problems = challenge_problems(config, challenge, student_params(config, parameter_count))
    if problems:
        raise WorkshopPolicyError("not a valid challenge entry: " + "; ".join(problems))
