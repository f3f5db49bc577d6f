"""The New run form as plain data: form values ⇄ a `RunConfig`, validation, the loss as LaTeX.

No Streamlit here, so every rule of the form is testable on its own. Form values are a flat dict
(one entry per widget); `RunConfig` stays the only place that knows what a valid run is. Each
method's own parameters have one value per method (`param_key`), so switching methods never
hands one method's number to another's widget.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from kdcore.config import RunConfig
from kdcore.dataset_names import CATALOGUE, DatasetInfo, is_csv, is_imagefolder, is_text
from kdcore.errors import ConfigError, KDError
from kdcore.methods import METHODS, ParamSpec, default_value, get_method
from kdcore.model_names import ARCH_NAMES, check_fits, needs_text

TEACHER_SOURCES = {"train": "Train a teacher", "store": "Reuse a teacher trained in this store",
                   "upload": "Upload a checkpoint"}
WEIGHT_MODES = {"simple": "Simple (α)", "advanced": "Advanced"}
SCHEDULE_FIELDS = ("momentum", "nesterov", "schedule", "lr_milestones", "lr_decay")  # lr_milestones: "150,180,210"


def from_config(config: dict[str, Any]) -> dict[str, Any]:
    """Form values that show `config` (a stored or default config dict)."""
    c = RunConfig.from_dict(config).to_dict()
    teacher, weights = c["teacher"], c["weights"]
    simple = weights["feature"] == 0 and math.isclose(weights["ce"] + weights["kd"], 1.0, abs_tol=1e-9)
    return {
        "dataset": c["dataset"],
        "text_column": c["text_column"],
        "label_column": c["label_column"],
        "teacher_source": "upload" if teacher["checkpoint"] else "train",
        "teacher_arch": teacher["arch"],
        "teacher_epochs": teacher["epochs"],
        "teacher_lr": teacher["lr"],
        "teacher_batch_size": teacher["batch_size"],
        "teacher_seed": teacher["seed"],
        "teacher_augment": bool(teacher.get("augment", False)),
        "teacher_bundled": bool(teacher.get("bundled", True)),
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
        "devices": c["devices"],
        "baseline": c["baseline"],
        "finetune_epochs": c["finetune_epochs"],
        "labeled_fraction": c["labeled_fraction"],
        "transfer": c["transfer"] or "",
        "transfer_column": c.get("transfer_column") or "",
        "name": c["name"],
        "optimizer": c["optimizer"],
        "weight_decay": c["weight_decay"],
        "momentum": c["momentum"],
        "nesterov": c["nesterov"],
        "schedule": c["schedule"],
        "lr_milestones": ",".join(map(str, c["lr_milestones"])),
        "lr_decay": c["lr_decay"],
        "augment": c["augment"],
        "val_fraction": c["val_fraction"],
        "amp": c["amp"],
        "data_root": c["data_root"] or "",
        "method": c["method"],
        **method_values(c["method"], c["method_params"]),
        "mlflow": c["tracking"]["mlflow"] or "",
        "tensorboard": c["tracking"]["tensorboard"] or "",
    }


# --- the method's own parameters ----------------------------------------------------------------------------------


def param_key(method: str, param: str) -> str:
    """The form value (and, prefixed, the widget) of one method parameter: `mp_dkd_beta`."""
    return f"mp_{method}_{param}"


def param_default(param: ParamSpec) -> float | int:
    return default_value(param)


def method_values(method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Form values of every method's parameters: `params` for `method`, the paper defaults elsewhere."""
    values = {}
    for name, entry in METHODS.items():
        for key, param in entry.spec.params.items():
            given = (params or {}).get(key) if name == method else None
            value = param_default(param) if given is None else given
            values[param_key(name, key)] = int(value) if param.integer else float(value)
    return values


def method_params(values: dict[str, Any]) -> dict[str, Any]:
    """The chosen method's parameters that differ from the paper defaults (what `RunConfig.method_params` keeps)."""
    entry = METHODS.get(values.get("method", "kd"))
    if entry is None:
        return {}
    spec, chosen = entry.spec, {}
    for key, param in spec.params.items():
        value = values.get(param_key(spec.name, key), param_default(param))
        if value != param_default(param):
            chosen[key] = value
    return chosen


# --- what fits the chosen data (the engine's checks decide) -------------------------------------------------------

TEXT_DEFAULTS = {"teacher_arch": "minilm-l6", "student_arch": "bilstm"}  # the issue's teacher, Tang et al.'s student


def dataset_info(dataset: str) -> DatasetInfo | None:
    """What the form knows of `dataset` before any file is read: the catalogue's entry; for `csv:<path>` the shape
    of text (the classes are known once the worker reads the file; 2 until then); None for `imagefolder:`."""
    if is_csv(dataset):
        text = CATALOGUE["rotten-tomatoes"]
        return DatasetInfo(dataset, "your own text", text.input_shape, 2, "text", True, None)
    return CATALOGUE.get(dataset)


def fits(arch: str, dataset: str) -> bool:
    """Whether the engine would take `arch` on `dataset` (`kdcore.model_names.check_fits`, as `RunConfig` asks)."""
    info = dataset_info(dataset)
    try:
        if info is None:  # imagefolder:<path>: images of a size known once read; any model that does not read text
            return not needs_text(arch) if is_imagefolder(dataset) else True
        check_fits(arch, info.input_shape, dataset=dataset)
    except KDError:
        return False
    return True


def archs_for(dataset: str) -> list[str]:
    """The registered architectures that can run on `dataset`: what the New run form offers."""
    return [arch for arch in ARCH_NAMES if fits(arch, dataset)]


def methods_for(dataset: str) -> list[str]:
    """The methods whose spec admits `dataset`'s kind (text or not), in registry order; the rest of a method's
    checks (its architectures, its weights) are the engine's, and a refusal names them."""
    text = is_text(dataset)
    return [name for name, method in METHODS.items()
            if not (text and method.spec.not_for_text) and not (method.spec.text_only and not text)]


def adapt_to_dataset(values: dict[str, Any]) -> dict[str, Any]:
    """The form values to change so that a newly chosen dataset can run: architectures that cannot read it are
    swapped for the defaults of its kind, a method that does not apply goes back to kd, and image augmentation
    is switched off for text. Values that fit are kept."""
    dataset = values["dataset"]
    text = is_text(dataset)
    fallback = TEXT_DEFAULTS if text else {"teacher_arch": RunConfig().teacher.arch, "student_arch": RunConfig().student.arch}
    changes: dict[str, Any] = {}
    for key in ("teacher_arch", "student_arch"):
        if not fits(values[key], dataset) and fits(fallback[key], dataset):
            changes[key] = fallback[key]
    if values.get("method", "kd") not in methods_for(dataset):
        changes["method"] = "kd"
    transfer = (values.get("transfer") or "").strip()
    text_transfer = transfer.startswith("augment:") or is_text(transfer)
    if text:
        changes.update({key: False for key in ("augment", "teacher_augment") if values.get(key)})
    if transfer and text_transfer != text:
        changes["transfer"] = ""  # images cannot be a transfer set for text, nor texts for images
    if values.get("transfer_column") and not (text and is_csv(changes.get("transfer", transfer))):
        changes["transfer_column"] = ""
    return changes


def defaults() -> dict[str, Any]:
    """The untouched form: the engine's teaching preset, `RunConfig()`."""
    return from_config(RunConfig().to_dict())


def cli_sets(config: dict[str, Any], prefix: str = "") -> list[str]:
    """The `--set key=value` arguments that rebuild `config` (nested keys dotted, booleans as the CLI spells
    them), for the commands the Sweeps and Tune pages show."""
    out = []
    for key, value in config.items():
        if isinstance(value, dict):
            out += cli_sets(value, f"{prefix}{key}.")
        else:
            out += ["--set", f"{prefix}{key}={str(value).lower() if isinstance(value, bool) else value}"]
    return out


def preset_config(name: str) -> dict[str, Any]:
    """The whole config of a named preset (`kdcore.presets`): what "Load preset" fills the form from, and keeps as
    the base of the settings the form does not show."""
    from kdcore.config import build_config

    return build_config(preset=name).to_dict()


def to_config(values: dict[str, Any], base: dict[str, Any] | None = None,
              store_teacher: dict[str, Any] | None = None) -> dict[str, Any]:
    """The nested config dict the form describes (not yet validated).

    base: the config the form was filled from (default: `RunConfig()`); settings the form does not
    show are kept from it. store_teacher: an entry of `app.read_model.runs.stored_teachers`; its teacher
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
        "bundled": values.get("teacher_bundled", True),
        "checkpoint": values.get("teacher_checkpoint") if values["teacher_source"] == "upload" else None,
    })
    config.update({
        "dataset": values["dataset"],
        "text_column": values.get("text_column") or config.get("text_column", "text"),
        "label_column": values.get("label_column") or config.get("label_column", "label"),
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
        "devices": values.get("devices", config.get("devices", 1)),
        "amp": values["amp"],
        "baseline": values["baseline"],
        "finetune_epochs": values["finetune_epochs"],
        "labeled_fraction": values.get("labeled_fraction", 1.0),
        "transfer": (values.get("transfer") or "").strip() or None,
        "transfer_column": (values.get("transfer_column") or "").strip() or None,
        "name": (values.get("name") or "").strip(),
        "method": values.get("method", "kd"),
        "method_params": method_params(values),  # replaces a copied run's: they belong to its method
        "tracking": {"mlflow": (values.get("mlflow") or "").strip() or None,
                     "tensorboard": (values.get("tensorboard") or "").strip() or None},
    })
    for key in SCHEDULE_FIELDS:  # absent from values built before these fields existed: the base's stay
        if key in values:
            config[key] = values[key]
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
        return None, [str(exc) + _form_hint(values)]
    errors = []
    if devices is not None and config.device != "auto" and config.device not in devices:
        errors.append(f"device={config.device} is not available on this machine (available: {', '.join(devices)})")
    return (None, errors) if errors else (config, [])


def _form_hint(values: dict[str, Any]) -> str:
    """Where in this form to fix a refusal whose message speaks the CLI's language (the method says)."""
    method = METHODS.get(values.get("method", "kd"))
    if method is None:
        return ""
    feature = values.get("w_feature") if values.get("weights_mode") == "advanced" else 0.0
    return method.form_hint({"feature": feature if _finite(feature) else 0.0})


def weights_note(method: str) -> str | None:
    """How the method uses the form's loss weights, when not as plain KD does: which ones it leaves
    unused (the trainer drops them), or which one it needs."""
    return METHODS[method].weights_note() if method in METHODS else None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _params(values: dict[str, Any], method: str) -> dict[str, Any]:
    """The method's parameters as the form holds them (paper defaults where it holds none)."""
    return {key: values.get(param_key(method, key), param_default(param))
            for key, param in METHODS[method].spec.params.items()}


def loss_preview(values: dict[str, Any]) -> str | None:
    """The loss as LaTeX from the form's weights, temperature and method alone, so it shows even while
    another field is invalid; None when those numbers themselves are not valid."""
    config = to_config(values)
    weights, temperature = config["weights"], config["temperature"]
    method = config["method"]
    if method not in METHODS:
        return None
    params = _params(values, method)
    if not all(_finite(v) for v in [temperature, *weights.values(), *params.values()]):
        return None
    if temperature <= 0 or min(weights.values()) < 0 or not any(weights.values()):
        return None
    return loss_latex(weights, temperature, method, params)


def loss_latex(weights: dict[str, float], temperature: float, method: str = "kd",
               params: dict[str, float] | None = None) -> str:
    """The optimised loss with the chosen numbers, one term per line, as the method writes it
    (`Method.formula`), e.g. for kd `0.1·CE(y, softmax(z_s)) + 0.9·4²·KL(softmax(z_t/4) ‖ softmax(z_s/4))`.
    The symbols are in `loss_legend`."""
    entry = get_method(method)
    p = {key: param_default(param) for key, param in entry.spec.params.items()} | dict(params or {})
    terms = entry.formula(weights, temperature, p)
    if not terms:
        return r"\mathcal{L} = 0"
    # one term per line: the three-term objective is too wide for a narrow column on one line
    return r"\begin{aligned}\mathcal{L} = {} & " + r" \\ & + ".join(terms) + r"\end{aligned}"


def loss_legend(values: dict[str, Any]) -> str:
    """What the symbols of `loss_preview(values)` stand for, as Markdown with inline LaTeX."""
    method = values.get("method", "kd")
    entry = METHODS.get(method)
    params = _params(values, method) if entry else {}
    teacher_seen = entry is None or entry.spec.uses_labels or entry.spec.uses_logit_kd
    parts = [r"$\sigma$ is the softmax; $z_s$ and $z_t$ are the student's and the teacher's logits" if teacher_seen
             else r"$\sigma$ is the softmax; $z_s$ are the student's logits"]
    feature = values.get("w_feature") if values.get("weights_mode") == "advanced" else 0
    if _finite(feature) and feature > 0:
        parts.append(r"$r$ projects the student's features $f_s$ onto the teacher's $f_t$")
    if entry is not None:
        parts += entry.legend(params)
    return "; ".join(parts) + "."

