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
from kdcore.errors import ConfigError
from kdcore.methods import METHODS, ParamSpec

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
        "method": c["method"],
        **method_values(c["method"], c["method_params"]),
    }


# --- the method's own parameters ----------------------------------------------------------------------------------


def param_key(method: str, param: str) -> str:
    """The form value (and, prefixed, the widget) of one method parameter: `mp_dkd_beta`."""
    return f"mp_{method}_{param}"


def param_default(param: ParamSpec) -> float | int:
    return int(param.default) if param.integer else float(param.default)


def method_values(method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Form values of every method's parameters: `params` for `method`, the paper defaults elsewhere."""
    values = {}
    for name, spec in METHODS.items():
        for key, param in spec.params.items():
            given = (params or {}).get(key) if name == method else None
            value = param_default(param) if given is None else given
            values[param_key(name, key)] = int(value) if param.integer else float(value)
    return values


def method_params(values: dict[str, Any]) -> dict[str, Any]:
    """The chosen method's parameters that differ from the paper defaults (what `RunConfig.method_params` keeps)."""
    spec = METHODS.get(values.get("method", "kd"))
    if spec is None:
        return {}
    chosen = {}
    for key, param in spec.params.items():
        value = values.get(param_key(spec.name, key), param_default(param))
        if value != param_default(param):
            chosen[key] = value
    return chosen


def defaults() -> dict[str, Any]:
    """The untouched form: the engine's teaching preset, `RunConfig()`."""
    return from_config(RunConfig().to_dict())


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
        "method": values.get("method", "kd"),
        "method_params": method_params(values),  # replaces a copied run's: they belong to its method
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
        return None, [str(exc) + _form_hint(values)]
    errors = []
    if devices is not None and config.device != "auto" and config.device not in devices:
        errors.append(f"device={config.device} is not available on this machine (available: {', '.join(devices)})")
    return (None, errors) if errors else (config, [])


def _form_hint(values: dict[str, Any]) -> str:
    """Where in this form to fix a refusal whose message speaks the CLI's language."""
    feature = values.get("w_feature") if values.get("weights_mode") == "advanced" else 0.0
    if values.get("method") == "fitnets" and not (_finite(feature) and feature > 0):
        return " In this form: Loss weights → Advanced, then a Feature weight above 0."
    return ""


def weights_note(method: str) -> str | None:
    """How the method uses the form's loss weights, when not as plain KD does: which ones it leaves
    unused (the trainer drops them), or which one it needs."""
    spec = METHODS.get(method)
    if spec is None:
        return None
    if method == "fitnets":
        return ("FitNets adds the hint term, weighted by the **Feature weight** (Loss weights → Advanced): "
                "set it above 0.")
    if not spec.uses_labels and not spec.uses_logit_kd:
        return f"{spec.title} has its own objective: the CE and KD weights are not used."
    if not spec.uses_labels:
        return f"{spec.title} learns from the KD term only: the CE weight is not used."
    if not spec.uses_logit_kd:
        return (f"{spec.title} replaces the KD term with its own: of the loss weights only the CE weight "
                "(1 − α with the slider) is used.")
    return None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def loss_preview(values: dict[str, Any]) -> str | None:
    """The loss as LaTeX from the form's weights, temperature and method alone, so it shows even while
    another field is invalid; None when those numbers themselves are not valid."""
    config = to_config(values)
    weights, temperature = config["weights"], config["temperature"]
    method = config["method"]
    if method not in METHODS:
        return None
    params = {key: values.get(param_key(method, key), param_default(param))
              for key, param in METHODS[method].params.items()}
    if not all(_finite(v) for v in [temperature, *weights.values(), *params.values()]):
        return None
    if temperature <= 0 or min(weights.values()) < 0 or not any(weights.values()):
        return None
    return loss_latex(weights, temperature, method, params)


def _num(value: float) -> str:
    return f"{value:g}"


def _kl(teacher: str, student: str) -> str:
    return rf"\mathrm{{KL}}\big({teacher}\,\big\|\,{student}\big)"


def loss_latex(weights: dict[str, float], temperature: float, method: str = "kd",
               params: dict[str, float] | None = None) -> str:
    """The optimised loss with the chosen numbers, e.g. for kd
    `0.1·CE(y, softmax(z_s)) + 0.9·4²·KL(softmax(z_t/4) ‖ softmax(z_s/4))`.

    Other methods drop the terms they do not use (`MethodSpec.uses_labels`, `uses_logit_kd`) and add
    their own with its weight(s); dml shows its own objective. The symbols are in `loss_legend`.
    """
    spec = METHODS[method]
    p = {key: param_default(param) for key, param in spec.params.items()} | dict(params or {})
    t = _num(temperature)
    terms = []
    if method == "dml":
        # both networks' objectives, as the trainer sums them; weights.ce and weights.kd are not used
        tp = _num(p["temperature"])
        soft = (lambda z: rf"\sigma({z})") if p["temperature"] == 1 else (lambda z: rf"\sigma({z}/{tp})")
        scale = "" if p["temperature"] == 1 else rf"{tp}^2\,"
        terms.append(rf"\mathrm{{CE}}\big(y,\ \sigma(z_s)\big) + {scale}{_kl(soft('z_p'), soft('z_s'))}")
        terms.append(rf"\mathrm{{CE}}\big(y,\ \sigma(z_p)\big) + {scale}{_kl(soft('z_s'), soft('z_p'))}")
    if weights.get("ce") and spec.uses_labels:
        terms.append(rf"{_num(weights['ce'])}\,\mathrm{{CE}}\big(y,\ \sigma(z_s)\big)")
    if weights.get("kd") and spec.uses_logit_kd:
        teacher, student = rf"\sigma(z_t/{t})", rf"\sigma(z_s/{t})"
        if method == "multi_teacher":
            k = int(p["teachers"])
            teacher = rf"\tfrac{{1}}{{{k}}}\textstyle\sum_{{k=1}}^{{{k}}}\sigma(z_{{t_k}}/{t})"
        elif method == "function_matching" and p["mixup_alpha"] > 0:
            teacher, student = rf"\sigma(z_t(\tilde x)/{t})", rf"\sigma(z_s(\tilde x)/{t})"
        terms.append(rf"{_num(weights['kd'])}\cdot {t}^2\,{_kl(teacher, student)}")
    if weights.get("feature"):
        terms.append(rf"{_num(weights['feature'])}\,\mathrm{{MSE}}\big(r(f_s),\ f_t\big)")
    terms += _method_terms(method, p, t)
    if not terms:
        return r"\mathcal{L} = 0"
    # one term per line: the three-term objective is too wide for a narrow column on one line
    return r"\begin{aligned}\mathcal{L} = {} & " + r" \\ & + ".join(terms) + r"\end{aligned}"


def _stages(count: float, body: str) -> str:
    count = int(count)
    return body if count == 1 else rf"\textstyle\sum_{{j=1}}^{{{count}}} {body}"


def _method_terms(method: str, p: dict[str, float], t: str) -> list[str]:
    """The method's own weighted term(s), as `kdcore.method_losses` adds them to the loss."""
    if method == "at":
        j = "" if int(p["stages"]) == 1 else "^j"
        return [rf"{_num(p['weight'])}\,"
                + _stages(p["stages"], rf"\mathrm{{AT}}_{{p={_num(p['p'])}}}\big(\hat Q{j}_s,\ \hat Q{j}_t\big)")]
    if method == "sp":
        j = "" if int(p["stages"]) == 1 else "^j"
        return [rf"{_num(p['weight'])}\,"
                + _stages(p["stages"], rf"\tfrac{{1}}{{B^2}}\big\|\tilde G{j}_s - \tilde G{j}_t\big\|_F^2")]
    if method == "rkd":
        return [rf"{_num(p['distance_weight'])}\,\mathcal{{L}}_{{\mathrm{{distance}}}}\big(f_s,\ f_t\big)",
                rf"{_num(p['angle_weight'])}\,\mathcal{{L}}_{{\mathrm{{angle}}}}\big(f_s,\ f_t\big)"]
    if method == "pkt":
        return [rf"{_num(p['weight'])}\,{_kl('P_t', 'P_s')}"]
    if method == "dkd":
        warmup = int(p["warmup_epochs"])
        ramp = rf"\min\!\big(\tfrac{{e}}{{{warmup}}},\,1\big)\cdot " if warmup > 0 else ""
        return [rf"{ramp}{t}^2\big({_num(p['alpha'])}\,\mathrm{{TCKD}} + {_num(p['beta'])}\,\mathrm{{NCKD}}\big)"]
    if method == "dist":
        return [rf"{_num(p['beta'])}\cdot {t}^2\big(1 - \bar\rho_{{\mathrm{{inter}}}}\big)",
                rf"{_num(p['gamma'])}\cdot {t}^2\big(1 - \bar\rho_{{\mathrm{{intra}}}}\big)"]
    return []


def loss_legend(values: dict[str, Any]) -> str:
    """What the symbols of `loss_preview(values)` stand for, as Markdown with inline LaTeX."""
    method = values.get("method", "kd")
    spec = METHODS.get(method)
    p = {key: values.get(param_key(method, key), param_default(param))
         for key, param in (spec.params.items() if spec else [])}
    parts = [r"$\sigma$ is the softmax; $z_s$ are the student's logits" if method == "dml" else
             r"$\sigma$ is the softmax; $z_s$ and $z_t$ are the student's and the teacher's logits"]
    feature = values.get("w_feature") if values.get("weights_mode") == "advanced" else 0
    if _finite(feature) and feature > 0:
        parts.append(r"$r$ projects the student's features $f_s$ onto the teacher's $f_t$")
    stages = int(p.get("stages", 1)) if _finite(p.get("stages")) else 1
    matched = "the last stage's" if stages == 1 else f"each of the last {stages} stages'"
    extra = {
        "at": rf"$\hat Q$ is {matched} attention map $\sum_c |A_c|^p$, normalised to unit length",
        "sp": rf"$\tilde G$ is the row-normalised $B\times B$ similarity matrix of {matched} activations "
              "over the batch",
        "rkd": r"$f$ are penultimate features; the terms compare pairwise distances and triplet angles "
               "across the batch",
        "pkt": r"$P$ holds, per sample, cosine-kernel probabilities over the batch's other samples",
        "dkd": r"TCKD and NCKD are the target-class and non-target parts of the KD term at $T$; $e$ is the epoch",
        "dist": r"$\bar\rho$ is the mean Pearson correlation of $\sigma(z/T)$, per sample (inter) and "
                "per class (intra)",
        "multi_teacher": r"$z_{t_k}$ are the logits of teacher $k$, trained from its own seed",
        "dml": r"$z_p$ are the logits of the peer (the teacher's architecture, trained from scratch alongside); "
               r"each network learns from its own line only",
        "function_matching": r"$\tilde x$ is the batch mixed with a shuffled copy of itself (mixup), "
                             "seen by both networks",
    }.get(method)
    if extra and not (method == "function_matching" and not p.get("mixup_alpha")):
        parts.append(extra)
    return "; ".join(parts) + "."
