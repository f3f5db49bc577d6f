"""The one typed configuration of a distillation run.

A `RunConfig` is built at the edge (CLI flags, a config file, the app's form), validated once at
construction, stored as JSON with every run and checkpoint, and rebuilt from that JSON. It imports
no torch, so the UI and the CLI can validate without paying for it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from kdcore.dataset_names import CROP_PADDING
from kdcore.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "mps")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "step")  # see kdcore.train.learning_rate


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _check_nonnegative_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")


def _check_number(name: str, value: Any, *, low: float, low_inclusive: bool, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    too_low = value < low if low_inclusive else value <= low
    if too_low or value > high:
        bound = f"{'>=' if low_inclusive else '>'} {low:g}" + ("" if high == math.inf else f" and <= {high:g}")
        raise ConfigError(f"{name} must be {bound}, got {value!r}")
    return float(value)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")


@dataclass
class TeacherConfig:
    """How the teacher is obtained: trained here (cached by its settings) or loaded from a checkpoint."""

    arch: str = "cnn"
    epochs: int = 8  # the default CNN reaches ~97.5% test accuracy on mnist-5k in 8 epochs (~15 s on 2 cores)
    lr: float = 3e-3
    batch_size: int = 64
    seed: int = 0  # separate from the student's seed so runs of a seed sweep share one teacher
    augment: bool = True  # a teacher trained on shifted digits generalises better; costs nothing later
    checkpoint: str | None = None  # path to a .pt file written by kdcore; skips training
    pretrained: bool = False  # start from ImageNet weights (torchvision resnet18/mobilenet_v3_small, timm:<name>)
    bundled: bool = True  # a teacher shipped with KD Lab for exactly these settings is used instead of training

    def __post_init__(self) -> None:
        from kdcore.model_names import validate_arch

        _check_arch("teacher.arch", self.arch, validate_arch)
        _check_positive_int("teacher.epochs", self.epochs)
        _check_number("teacher.lr", self.lr, low=0, low_inclusive=False, high=10)
        _check_positive_int("teacher.batch_size", self.batch_size)
        _check_nonnegative_int("teacher.seed", self.seed)
        _check_bool("teacher.augment", self.augment)
        if self.checkpoint is not None and (not isinstance(self.checkpoint, str) or not self.checkpoint.strip()):
            raise ConfigError(f"teacher.checkpoint must be a file path or null, got {self.checkpoint!r}")
        _check_bool("teacher.pretrained", self.pretrained)
        _check_bool("teacher.bundled", self.bundled)
        if self.pretrained:
            _check_pretrained(self)


@dataclass
class StudentConfig:
    arch: str = "mlp-small"
    # a Transformer student starts from the teacher's embeddings and every other layer (DistilBERT's initialisation);
    # needs the teacher's width, e.g. tiny-transformer:3,384 under minilm-l6
    from_teacher: bool = False

    def __post_init__(self) -> None:
        from kdcore.model_names import validate_arch

        _check_arch("student.arch", self.arch, validate_arch)
        _check_bool("student.from_teacher", self.from_teacher)


@dataclass
class LossWeights:
    """Weights of the loss parts: total = ce·CE + kd·T²·KL + feature·MSE(hint)."""

    ce: float = 0.5  # on mnist-5k an even mix beat kd=0.9 and kd=0.7 over 3 seeds (BENCHMARKS.md)
    kd: float = 0.5
    feature: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            setattr(self, f.name, _check_number(f"weights.{f.name}", getattr(self, f.name), low=0, low_inclusive=True))
        if self.ce == 0 and self.kd == 0 and self.feature == 0:
            raise ConfigError("weights: ce, kd and feature cannot all be 0 (nothing would be learned)")


MLFLOW_SCHEMES = ("file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")


@dataclass
class TrackingConfig:
    """Experiment trackers that log the run live (`kdcore.tracking`); null: not used.

    Relative paths are made absolute here, at the edge, because the worker runs in another process.
    """

    mlflow: str | None = None  # a tracking URI: sqlite:///mlflow.db, a folder (file store), http://host:5000, ...
    tensorboard: str | None = None  # a log folder; each run writes <folder>/<run id>/

    def __post_init__(self) -> None:
        if self.mlflow is not None:
            self.mlflow = _mlflow_uri(self.mlflow)
        if self.tensorboard is not None:
            if not isinstance(self.tensorboard, str) or not self.tensorboard.strip() or "\x00" in self.tensorboard:
                raise ConfigError(f"tracking.tensorboard must be a folder path or null, got {self.tensorboard!r}")
            self.tensorboard = str(Path(self.tensorboard.strip()).expanduser().resolve())


def _mlflow_uri(uri: Any) -> str:
    """Check an MLflow tracking URI and make a local one absolute: a bare folder becomes a file: URI, and
    sqlite:///relative.db becomes sqlite:////abs/relative.db (both are read from the worker's folder otherwise)."""
    if not isinstance(uri, str) or not uri.strip() or "\x00" in uri:
        raise ConfigError(f"tracking.mlflow must be an MLflow tracking URI or null, got {uri!r}")
    uri = uri.strip()
    scheme, sep, rest = uri.partition(":")
    if not sep or len(scheme) < 2 or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):  # a plain folder path
        return Path(uri).expanduser().resolve().as_uri()
    scheme = scheme.lower().split("+", 1)[0]  # postgresql+psycopg2: the driver's name follows a +
    if scheme not in MLFLOW_SCHEMES:
        raise ConfigError(f"tracking.mlflow: unknown scheme {scheme!r} in {uri!r}; use one of "
                          f"{', '.join(s + ':' for s in MLFLOW_SCHEMES)} or a folder path")
    if scheme == "file":
        path = rest[2:] if rest.startswith("//") else rest
        if rest.startswith("//") and not path.startswith("/"):
            raise ConfigError(f"tracking.mlflow: {uri!r} names a host; a local file store is file:///absolute/folder")
        return Path(path).expanduser().resolve().as_uri()
    if scheme == "sqlite":
        if not rest.startswith("///") or rest == "///":
            raise ConfigError(f"tracking.mlflow: {uri!r} is not a database file; write sqlite:///path/to/mlflow.db")
        return "sqlite:///" + str(Path(rest[3:]).expanduser().resolve())
    return uri


@dataclass
class RunConfig:
    """Everything that defines a run. Defaults are the teaching preset (see BENCHMARKS.md)."""

    dataset: str = "mnist-5k"
    data_root: str | None = None  # where torchvision datasets live; None: $KDCORE_DATA or ./data
    val_fraction: float = 0.1  # of the non-test data; model selection uses it, never the test split
    text_column: str = "text"  # csv:<path> datasets: the column holding the text ...
    label_column: str = "label"  # ... and the one holding its class (any strings)
    augment: bool = False  # random shifts; forces the teacher to run on every augmented batch
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    temperature: float = 4.0
    weights: LossWeights = field(default_factory=LossWeights)
    epochs: int = 30  # the MLP student is cheap (~2 s for 30 epochs); KD needs longer than CE to pay off
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 2e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # SGD only
    nesterov: bool = True  # SGD only; the CIFAR-100 KD literature (CRD, DKD) uses plain momentum
    schedule: str = "cosine"  # cosine decay to 0 (needs no tuning); step: × lr_decay after each of lr_milestones
    lr_milestones: list[int] = field(default_factory=list)  # step schedule: epochs after which the lr decays
    lr_decay: float = 0.1  # step schedule: the factor at each milestone
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA only; ignored on CPU/MPS
    devices: int = 1  # processes that train the run together (DDP; one GPU each, or CPU processes): see README
    compile: bool = False  # torch.compile the models on CUDA (slow first epoch, faster after); ignored elsewhere
    baseline: bool = True  # also train the student on hard labels alone, same seed and budget
    labeled_fraction: float = 1.0  # share of the training split whose labels the student (and baseline) may use
    transfer: str | None = None  # extra unlabelled inputs the teacher labels: a dataset, imagefolder:<path>, augment:N
    transfer_column: str | None = None  # transfer=csv:<path>: the column of its texts (null: text_column)
    finetune_epochs: int = 0  # hard-label epochs after distillation
    name: str = ""
    method: str = "kd"  # a name in kdcore.methods.METHODS; kd is Hinton's, the teaching preset
    method_params: dict[str, float] = field(default_factory=dict)  # overrides of the method's defaults only
    tracking: TrackingConfig = field(default_factory=TrackingConfig)  # MLflow / TensorBoard; changes no number

    def __post_init__(self) -> None:
        from kdcore.dataset_names import validate_dataset_name

        if not isinstance(self.dataset, str):
            raise ConfigError(f"dataset must be a name, got {self.dataset!r}")
        try:
            validate_dataset_name(self.dataset)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        except Exception as exc:  # DatasetError is a KDError, not a ValueError
            raise ConfigError(str(exc)) from None
        if self.data_root is not None and not isinstance(self.data_root, str):
            raise ConfigError(f"data_root must be a folder path or null, got {self.data_root!r}")
        _check_number("val_fraction", self.val_fraction, low=0, low_inclusive=False, high=0.5)
        for key in ("text_column", "label_column"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key).strip():
                raise ConfigError(f"{key} must be a column name, got {getattr(self, key)!r}")
        _check_bool("augment", self.augment)
        _check_number("temperature", self.temperature, low=0, low_inclusive=False, high=1000)
        _check_positive_int("epochs", self.epochs)
        _check_positive_int("batch_size", self.batch_size)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_number("lr", self.lr, low=0, low_inclusive=False, high=10)
        _check_number("weight_decay", self.weight_decay, low=0, low_inclusive=True, high=1)
        _check_number("momentum", self.momentum, low=0, low_inclusive=True, high=0.999)
        _check_bool("nesterov", self.nesterov)
        _check_choice("schedule", self.schedule, SCHEDULES)
        self.lr_milestones = _milestones(self.lr_milestones)
        _check_number("lr_decay", self.lr_decay, low=0, low_inclusive=False, high=1)
        if self.schedule == "step" and not self.lr_milestones:
            raise ConfigError("schedule=step needs lr_milestones, the epochs after which the lr decays "
                              "(e.g. lr_milestones=150,180,210)")
        _check_nonnegative_int("seed", self.seed)
        _check_choice("device", self.device, DEVICES)
        _check_bool("amp", self.amp)
        _check_bool("compile", self.compile)
        _check_devices(self)
        _check_bool("baseline", self.baseline)
        _check_nonnegative_int("finetune_epochs", self.finetune_epochs)
        _check_number("labeled_fraction", self.labeled_fraction, low=0, low_inclusive=False, high=1)
        _check_transfer(self)
        _check_labeled_fraction(self)
        if not isinstance(self.name, str) or len(self.name) > 200:
            raise ConfigError("name must be a string of at most 200 characters")
        _check_archs_fit_dataset(self)
        _check_student_init(self)
        from kdcore.methods import validate_method

        self.method_params = validate_method(self)

    # --- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build from a (possibly partial) nested dict; unknown keys are refused by name."""
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a mapping of keys to values, got {type(data).__name__}")
        return _build(cls, data, prefix="")

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        return cls.from_dict(json.loads(text))

    def replace(self, **dotted: Any) -> RunConfig:
        """A copy with dotted keys changed, validated: `cfg.replace(**{"teacher.epochs": 2})`."""
        data = self.to_dict()
        for key, value in dotted.items():
            set_dotted(data, key, value)
        return RunConfig.from_dict(data)

    def teacher_key(self) -> str:
        """Hash of everything that determines the trained teacher; equal keys share one teacher."""
        from kdcore.dataset_names import csv_digest, imagefolder_digest, is_csv, is_imagefolder

        t = self.teacher
        identity = {
            "dataset": self.dataset,
            "data_root": self.data_root if self.dataset in _ROOTED else None,
            "val_fraction": self.val_fraction,
            "arch": t.arch,
            "augment": t.augment,
            "epochs": t.epochs,
            "lr": t.lr,
            "batch_size": t.batch_size,
            "seed": t.seed,
            "optimizer": self.optimizer,
            "weight_decay": self.weight_decay,
            "version": 1,
            **({"pretrained": True} if t.pretrained else {}),  # absent when false: older keys stay valid
            **self.optimization_settings(),
            **({"crop_padding": CROP_PADDING[self.dataset]} if t.augment and self.dataset in CROP_PADDING else {}),
            **({"columns": [self.text_column, self.label_column], "contents": csv_digest(self.dataset)}
               if is_csv(self.dataset) else {}),
            **({"contents": imagefolder_digest(self.dataset)} if is_imagefolder(self.dataset) else {}),
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


    def optimization_settings(self) -> dict[str, Any]:
        """The optimizer and schedule settings that differ from the defaults: absent when default, so the keys of
        teachers trained before these settings existed (and the bundled teachers) stay valid."""
        defaults = RunConfig.__dataclass_fields__
        out = {}
        for name in ("momentum", "nesterov", "schedule", "lr_milestones", "lr_decay"):
            if name in ("momentum", "nesterov") and self.optimizer != "sgd":
                continue  # Adam ignores them
            if name in ("lr_milestones", "lr_decay") and self.schedule != "step":
                continue
            default = defaults[name].default_factory() if name == "lr_milestones" else defaults[name].default
            if getattr(self, name) != default:
                out[name] = getattr(self, name)
        return out


MAX_DEVICES = 64


def _check_devices(config: RunConfig) -> None:
    """devices=N splits every global batch into N equal shares: both batch sizes must divide by N."""
    _check_positive_int("devices", config.devices)
    if config.devices > MAX_DEVICES:
        raise ConfigError(f"devices must be at most {MAX_DEVICES}, got {config.devices}")
    if config.devices > 1:
        if config.device == "mps":
            raise ConfigError("devices > 1 trains on several CUDA GPUs or CPU processes, not on mps")
        for name, size in (("batch_size", config.batch_size), ("teacher.batch_size", config.teacher.batch_size)):
            if size % config.devices:
                raise ConfigError(f"{name}={size} must be divisible by devices={config.devices} "
                                  f"(each process trains an equal share of every batch)")


_ROOTED = {"mnist", "fashion-mnist", "cifar10", "cifar100"}


def _milestones(value: Any) -> list[int]:
    """lr_milestones as a list of increasing positive epochs, from a list, one int, or "150,180,210" (what
    `--set lr_milestones=150,180,210` gives)."""
    items = [] if value is None else value
    if isinstance(value, str):
        items = [part.strip() for part in value.strip().strip("[]").split(",") if part.strip()]
        try:
            items = [int(part) for part in items]
        except ValueError:
            raise ConfigError(f"lr_milestones must be epochs like 150,180,210, got {value!r}") from None
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"lr_milestones must be a list of epochs like 150,180,210, got {value!r}")
    out = []
    for item in items:
        if isinstance(item, float) and item.is_integer():
            item = int(item)
        if isinstance(item, bool) or not isinstance(item, int) or item <= 0:
            raise ConfigError(f"lr_milestones must be positive whole epochs, got {value!r}")
        if out and item <= out[-1]:
            raise ConfigError(f"lr_milestones must increase, got {value!r}")
        out.append(item)
    return out


def _check_archs_fit_dataset(config: RunConfig) -> None:
    """Refuse a teacher or student that cannot take the dataset's inputs (a conv net on 2-D points).

    Only a catalogue dataset's shape is known before its files are read; an `imagefolder:` set is
    always images resized to 32x32, which every architecture takes, so nothing is lost by skipping it.
    """
    from kdcore.dataset_names import CATALOGUE
    from kdcore.model_names import check_fits

    from kdcore.dataset_names import is_csv

    info = CATALOGUE.get(config.dataset) or (CATALOGUE["rotten-tomatoes"] if is_csv(config.dataset) else None)
    if info is None:
        return
    if info.kind == "text" and config.augment:
        raise ConfigError(f"augment: the shifts and flips of images do not apply to text ({config.dataset}); for "
                          "more text use transfer=augment:N (the teacher labels N masked or cut copies)")
    for name, arch in (("teacher.arch", config.teacher.arch), ("student.arch", config.student.arch)):
        try:
            check_fits(arch, info.input_shape, dataset=config.dataset)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None


def _check_student_init(config: RunConfig) -> None:
    """student.from_teacher needs two Transformers of one width (known here for the built-in ones)."""
    from kdcore.model_names import MINILM_WIDTH, hf_name, transformer_size

    if not config.student.from_teacher:
        return
    student = transformer_size(config.student.arch)
    if student is None:
        raise ConfigError(f"student.from_teacher: {config.student.arch} is not a Transformer; it needs "
                          "tiny-transformer:LAYERS,WIDTH at the teacher's width, e.g. tiny-transformer:3,384")
    teacher = config.teacher.arch
    width = MINILM_WIDTH if teacher == "minilm-l6" else (transformer_size(teacher) or (None, None))[1]
    if width is None and hf_name(teacher) is None:
        raise ConfigError(f"student.from_teacher: teacher.arch {teacher} is not a Transformer")
    if hf_name(teacher) is not None:
        raise ConfigError(f"student.from_teacher: layers are copied from minilm-l6 or tiny-transformer teachers, "
                          f"not from {teacher}")
    if student[1] != width:
        raise ConfigError(f"student.from_teacher: the student is {student[1]} wide, the teacher {width}; use "
                          f"tiny-transformer:{student[0]},{width}")


def _check_pretrained(teacher: TeacherConfig) -> None:
    """Pretrained weights exist for some architectures only, and a checkpoint already is the teacher."""
    from kdcore.model_names import has_pretrained, pretrained_hint

    if not has_pretrained(teacher.arch):
        raise ConfigError(f"teacher.pretrained: {teacher.arch} has no pretrained weights; {pretrained_hint()}")
    if teacher.checkpoint:
        raise ConfigError("teacher.pretrained and teacher.checkpoint exclude each other: a checkpoint is already trained")


def _check_transfer(config: RunConfig) -> None:
    """Refuse a transfer set that cannot be the dataset's extra inputs, as far as names alone tell.

    A catalogue set's shape is known here; an image folder is resized to the dataset's images, so only
    a point dataset refuses it; a dataset that is itself an image folder is checked when it is read. Text
    takes text: `augment:N`, a `csv:<path>` (one column of texts) or the bundled rotten-tomatoes reviews;
    whether a CSV can be read is checked at the edge (`kdcore.data.transfer.check_transfer_texts`).
    """
    from kdcore.dataset_names import CATALOGUE, is_csv, is_imagefolder, is_text, validate_dataset_name

    transfer = config.transfer
    if config.transfer_column is not None:
        if not isinstance(config.transfer_column, str) or not config.transfer_column.strip():
            raise ConfigError(f"transfer_column must be a column name or null, got {config.transfer_column!r}")
        if not (isinstance(transfer, str) and is_csv(transfer)):
            raise ConfigError(f"transfer_column names the text column of a transfer set transfer=csv:<path>; "
                              f"transfer is {transfer!r}")
    if transfer is None:
        return
    if not isinstance(transfer, str) or not transfer.strip():
        raise ConfigError(f"transfer must be a dataset name, imagefolder:<path>, csv:<path> or augment:N, got {transfer!r}")
    from kdcore.data.text_augment import copies_of  # (imports torch with kdcore.data: only for a transfer set)

    try:
        copies = copies_of(transfer)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if copies is not None:  # Tang et al.'s masked and cut copies of the training sentences
        if not is_text(config.dataset):
            raise ConfigError(f"transfer: {transfer} makes copies of text; dataset {config.dataset} is not text")
        return
    try:
        validate_dataset_name(transfer)
    except Exception as exc:  # DatasetError
        raise ConfigError(f"transfer: {exc}") from None
    if transfer == config.dataset or (is_csv(transfer) and is_csv(config.dataset)
                                      and _same_file(transfer[4:], config.dataset[4:])):
        raise ConfigError(f"transfer: {transfer} is the dataset itself (its test examples would leak into training); "
                          "to leave part of it unlabelled use labeled_fraction")
    if is_text(transfer) != is_text(config.dataset):
        if is_text(transfer):
            raise ConfigError(f"transfer: {transfer} gives texts; dataset {config.dataset} is not text")
        raise ConfigError(f"transfer: {transfer} gives {'images' if _gives_images(transfer) else 'points'}; dataset "
                          f"{config.dataset} is text: its transfer set is csv:<path> (a column of texts), "
                          "rotten-tomatoes or augment:N")
    info = CATALOGUE.get(config.dataset)
    if info is None or is_text(transfer):
        return
    if is_imagefolder(transfer):
        if info.kind != "image":
            raise ConfigError(f"transfer: {transfer} gives images; dataset {config.dataset} takes "
                              f"{info.input_shape[0]} features per example")
        return
    shape = CATALOGUE[transfer].input_shape
    if shape != info.input_shape:
        raise ConfigError(f"transfer: {transfer} gives inputs of shape {shape}; dataset {config.dataset}'s are "
                          f"{info.input_shape}")


def _gives_images(name: str) -> bool:
    from kdcore.dataset_names import CATALOGUE, is_imagefolder

    return is_imagefolder(name) or CATALOGUE[name].kind == "image"


def _same_file(first: str, second: str) -> bool:
    """Whether two user-written paths name one file (the file need not exist)."""
    import os

    return os.path.realpath(os.path.expanduser(first.strip())) == os.path.realpath(os.path.expanduser(second.strip()))


def _check_labeled_fraction(config: RunConfig) -> None:
    """Refuse a labelled fraction that surely leaves a class without a label (fewer labels than classes).

    The exact per-class check needs the labels: `kdcore.data.check_labels` at the edge, and at load.
    """
    from kdcore.dataset_names import CATALOGUE

    info = CATALOGUE.get(config.dataset)
    if config.labeled_fraction < 1 and info is not None and info.size:
        labels = config.labeled_fraction * info.size
        if labels < info.num_classes:
            raise ConfigError(f"labeled_fraction {config.labeled_fraction:g} leaves about {labels:.0f} labels for "
                              f"{info.num_classes} classes in {config.dataset}: some class would have none")


def _check_arch(name: str, arch: Any, validate) -> None:
    if not isinstance(arch, str):
        raise ConfigError(f"{name} must be an architecture name, got {arch!r}")
    try:
        validate(arch)
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        valid = ", ".join(prefix + k for k in known)
        raise ConfigError(f"unknown config key {(prefix + unknown[0])!r}; valid keys: {valid}")
    kwargs = {}
    for key, value in data.items():
        sub = _NESTED.get(key) if cls is RunConfig else None
        if sub is not None:
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{key} must be a mapping (e.g. {key}.{fields(sub)[0].name}=...)")
            value = _build(sub, value, prefix=f"{prefix}{key}.")
        kwargs[key] = _coerce(prefix + key, known[key], value)
    return cls(**kwargs)


def _coerce(name: str, f: dataclasses.Field, value: Any) -> Any:
    """Accept 4 for a float field and 4.0 for an int field; everything else is checked by the class."""
    if f.type in ("float",) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if f.type in ("int",) and isinstance(value, float) and value.is_integer():
        return int(value)
    if f.type in ("int", "float") and isinstance(value, str):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    return value


_NESTED = {"teacher": TeacherConfig, "student": StudentConfig, "weights": LossWeights, "tracking": TrackingConfig}


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set `a.b=value` in a nested dict, creating the inner mapping when needed.

    `method.<param>` is shorthand for `method_params.<param>` (`method` itself is the method's name).
    """
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"malformed key {key!r}")
    if parts[0] == "method" and len(parts) == 2:
        parts[0] = "method_params"
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{part} is not a group of settings; cannot set {key}")
        node = child
    node[parts[-1]] = value


def _yaml_loader():
    """A safe YAML loader that also reads 1e-3 as a number (YAML 1.1 would keep it a string)."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)[eE][-+]?\d+$"),
                                 list("-+0123456789."))
    return Loader


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"teacher": {"arch": "cnn"}} → {"teacher.arch": "cnn"}: the dotted keys `--set` uses."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def parse_value(text: str) -> Any:
    """Parse the value side of `--set key=value` as YAML scalars do: 4 → int, 0.5 → float, true, null."""
    import yaml

    try:
        value = yaml.load(text, Loader=_yaml_loader())
    except yaml.YAMLError:
        return text
    if isinstance(value, (dict, list)):
        return text
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key=value` strings to a nested config dict (in place) and return it."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        set_dotted(data, key.strip(), parse_value(raw.strip()))
    return data


def load_config_file(path: str) -> dict[str, Any]:
    """Read a JSON or YAML config file into a dict (not yet validated)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.load(text, Loader=_yaml_loader())
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid {'JSON' if path.endswith('.json') else 'YAML'}: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return data


def build_config(config_file: str | None = None, overrides: list[str] | None = None,
                 preset: str | None = None) -> RunConfig:
    """The CLI's way in: a named preset (optional), then a file (optional), then `--set` overrides, validated once."""
    return RunConfig.from_dict(config_data(config_file, overrides, preset))


def config_data(config_file: str | None = None, overrides: list[str] | None = None,
                preset: str | None = None) -> dict[str, Any]:
    """The nested config dict of a preset, a file and `--set` overrides, in that order (not yet validated)."""
    data: dict[str, Any] = {}
    if preset is not None:
        from kdcore.presets import get_preset

        data = get_preset(preset).config_dict()
    if config_file:
        merge(data, load_config_file(config_file))
    apply_overrides(data, overrides or [])
    return data


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `over` into `base` (in place): a file's `teacher: {epochs: 2}` keeps the preset's teacher.arch."""
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base
