"""The New run form as plain data: form values ⇄ a `RunConfig`, validation, the loss as LaTeX.

No Streamlit here, so every rule of the form is testable on its own. Form values are a flat dict
(one entry per widget); `RunConfig` stays the only place that knows what a valid run is.
"""

from __future__ import annotations

import copy
import hashlib
import math
import re
from typing import Any

from kdcore.config import RunConfig
from kdcore.dataset_names import CATALOGUE
from kdcore.errors import ConfigError, ModelError
from kdcore.model_names import check_fits

TEACHER_SOURCES = {"train": "Train a teacher", "store": "Reuse a teacher trained in this store",
                   "upload": "Upload a checkpoint"}
WEIGHT_MODES = {"simple": "Simple (α)", "advanced": "Advanced"}


def from_config(config: dict[str, Any]) -> dict[str, Any]:
    """Form values that show `config` (a stored or default config dict)."""
    c = RunConfig.from_dict(config).to_dict()
    teacher, weights = c["teacher"], c["weights"]
    simple = weights["feature"] == 0 and math.isclose(weights["ce"] + weights["kd"], 1.0, abs_tol=1e-9)
    return {
        "dataset": c["dataset"],
        "teacher_source": "upload" if teacher["checkpoint"] else "train",
        "teacher_arch": teacher["arch"],
        "teacher_epochs": teacher["epochs"],
        "teacher_lr": teacher["lr"],
        "teacher_batch_size": teacher["batch_size"],
        "teacher_seed": teacher["seed"],
        "teacher_augment": bool(teacher.get("augment", False)),
        "teacher_key": None,
        "teacher_checkpoint": teacher["checkpoint"],
        "student_arch": c["student"]["arch"],
        "temperature": c["temperature"],
        "weights_mode": "simple" if simple else "advanced",
        "alpha": round(weights["kd"], 6) if simple else 0.9,
        "w_ce": weights["ce"],
        "w_kd": weights["kd"],
        "w_feature": weights["feature"],
        "epochs": c["epochs"],
        "batch_size": c["batch_size"],
        "lr": c["lr"],
        "seed": c["seed"],
        "device": c["device"],
        "baseline": c["baseline"],
        "finetune_epochs": c["finetune_epochs"],
        "name": c["name"],
        "optimizer": c["optimizer"],
        "weight_decay": c["weight_decay"],
        "augment": c["augment"],
        "val_fraction": c["val_fraction"],
        "amp": c["amp"],
        "data_root": c["data_root"] or "",
    }


def defaults() -> dict[str, Any]:
    """The untouched form: the engine's teaching preset, `RunConfig()`."""
    return from_config(RunConfig().to_dict())


def to_config(values: dict[str, Any], base: dict[str, Any] | None = None,
              store_teacher: dict[str, Any] | None = None) -> dict[str, Any]:
    """The nested config dict the form describes (not yet validated).

    base: the config the form was filled from (default: `RunConfig()`); settings the form does not
    show are kept from it. store_teacher: an entry of `kdcore.views.stored_teachers`; its teacher
    settings and the data settings its key depends on are copied, so the engine finds that teacher
    in its cache instead of training one.
    """
    config = copy.deepcopy(base) if base is not None else RunConfig().to_dict()
    if values["weights_mode"] == "simple":
        alpha = float(values["alpha"])
        weights = {"ce": round(1.0 - alpha, 6), "kd": round(alpha, 6), "feature": 0.0}
    else:
        weights = {"ce": values["w_ce"], "kd": values["w_kd"], "feature": values["w_feature"]}
    config.setdefault("teacher", {}).update({
        "arch": values["teacher_arch"], "epochs": values["teacher_epochs"], "lr": values["teacher_lr"],
        "batch_size": values["teacher_batch_size"], "seed": values["teacher_seed"],
        "augment": values["teacher_augment"],
        "checkpoint": values.get("teacher_checkpoint") if values["teacher_source"] == "upload" else None,
    })
    config.update({
        "dataset": values["dataset"],
        "data_root": (values.get("data_root") or "").strip() or None,
        "val_fraction": values["val_fraction"],
        "augment": values["augment"],
        "student": {**config.get("student", {}), "arch": values["student_arch"]},
        "temperature": values["temperature"],
        "weights": weights,
        "epochs": values["epochs"],
        "batch_size": values["batch_size"],
        "optimizer": values["optimizer"],
        "lr": values["lr"],
        "weight_decay": values["weight_decay"],
        "seed": values["seed"],
        "device": values["device"],
        "amp": values["amp"],
        "baseline": values["baseline"],
        "finetune_epochs": values["finetune_epochs"],
        "name": (values.get("name") or "").strip(),
    })
    if values["teacher_source"] == "store" and store_teacher is not None:
        config.update(store_teacher["shared"])
        config["teacher"] = dict(store_teacher["teacher"])
    return config


def validate(values: dict[str, Any], *, base: dict[str, Any] | None = None,
             store_teacher: dict[str, Any] | None = None,
             devices: list[str] | None = None) -> tuple[RunConfig | None, list[str]]:
    """The config the form describes, or None and the reasons it is not valid (one line each)."""
    source = values["teacher_source"]
    if source == "store" and store_teacher is None:
        return None, ["Choose a teacher to reuse: this store has no finished run with a trained teacher yet."]
    if source == "upload" and not values.get("teacher_checkpoint"):
        return None, ["Upload a teacher checkpoint (.pt), or choose another teacher source."]
    try:
        config = RunConfig.from_dict(to_config(values, base, store_teacher))
    except ConfigError as exc:
        return None, [str(exc)]
    errors = []
    info = CATALOGUE.get(config.dataset)
    if info is not None:  # imagefolder: the shape is known only once the images are read
        for role, arch in (("teacher", config.teacher.arch), ("student", config.student.arch)):
            try:
                check_fits(arch, info.input_shape)
            except ModelError as exc:
                errors.append(f"{role}.arch: {exc}")
    if devices is not None and config.device != "auto" and config.device not in devices:
        errors.append(f"device={config.device} is not available on this machine (available: {', '.join(devices)})")
    return (None, errors) if errors else (config, [])


def loss_preview(values: dict[str, Any]) -> str | None:
    """The loss as LaTeX from the form's weights and temperature alone, so it shows even while
    another field is invalid; None when those numbers themselves are not valid."""
    config = to_config(values)
    weights, temperature = config["weights"], config["temperature"]
    numbers = [temperature, *weights.values()]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in numbers):
        return None
    if temperature <= 0 or min(weights.values()) < 0 or not any(weights.values()):
        return None
    return loss_latex(weights, temperature)


def _num(value: float) -> str:
    return f"{value:g}"


def loss_latex(weights: dict[str, float], temperature: float) -> str:
    """The optimised loss with the chosen numbers, e.g.
    `0.1·CE(y, softmax(z_s)) + 0.9·4²·KL(softmax(z_t/4) ‖ softmax(z_s/4))`."""
    t = _num(temperature)
    terms = []
    if weights.get("ce"):
        terms.append(rf"{_num(weights['ce'])}\,\mathrm{{CE}}\big(y,\ \sigma(z_s)\big)")
    if weights.get("kd"):
        kl = rf"\mathrm{{KL}}\big(\sigma(z_t/{t})\,\big\|\,\sigma(z_s/{t})\big)"
        terms.append(rf"{_num(weights['kd'])}\cdot {t}^2\,{kl}")
    if weights.get("feature"):
        terms.append(rf"{_num(weights['feature'])}\,\mathrm{{MSE}}\big(r(f_s),\ f_t\big)")
    if not terms:
        return r"\mathcal{L} = 0"
    # one term per line: the three-term objective is too wide for a narrow column on one line
    return r"\begin{aligned}\mathcal{L} = {} & " + r" \\ & + ".join(terms) + r"\end{aligned}"


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def upload_name(filename: str, data: bytes) -> str:
    """A safe file name for an uploaded checkpoint: no folders, no dot-files, content-addressed.

    `../../etc/passwd` → `<sha>-passwd.pt`; the hash prefix keeps two users' `teacher.pt` apart
    and makes saving the same upload twice a no-op.
    """
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    stem = _UNSAFE.sub("_", base).strip("._-")[:80] or "checkpoint"
    if not stem.lower().endswith((".pt", ".pth")):
        stem += ".pt"
    return f"{hashlib.sha256(data).hexdigest()[:12]}-{stem}"
