"""Named presets: settings over `RunConfig`'s defaults that make one known experiment.

    config = build_config(preset="cifar100-r32x4-r8x4", overrides=["epochs=1"])   # preset, then file, then --set
    python -m kdcore run --preset cifar100-r32x4-r8x4 --set data_root=~/data

A preset is plain data (dotted keys, as `--set` writes them) applied before `--config` and `--set`,
so anything it sets can still be changed. `teaching` is RunConfig() itself; the lesson presets are the
workshop's runs (the app reads them from here); `cifar100-r32x4-r8x4` is the standard CIFAR-100 recipe
of the KD literature, with the published accuracies it should reproduce (`Reference`), which the app
draws on its charts and in its Methods table. No torch here: the CLI and the app list presets cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kdcore.errors import ConfigError


@dataclass(frozen=True)
class Reference:
    """Published test accuracies (fractions) of one teacher → student pair, and where they were published."""

    teacher: float
    student: float  # the student trained alone
    methods: dict[str, float]  # method name (kdcore.methods) → the distilled student's accuracy
    sources: tuple[str, ...]  # in full: authors, title, venue, table
    citation: str  # short, for a caption

    def lines(self) -> list[tuple[str, float]]:
        """(label, accuracy) of every published number, best last: what a chart draws as reference lines."""
        lines = [("teacher", self.teacher), ("student alone", self.student)]
        return sorted(lines + [(name.upper(), acc) for name, acc in self.methods.items()], key=lambda line: line[1])


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    settings: dict[str, Any] = field(default_factory=dict)  # dotted key → value, over RunConfig()'s defaults
    reference: Reference | None = None
    notes: str = ""

    def config_dict(self) -> dict[str, Any]:
        """The preset's settings as a nested config dict (not yet validated)."""
        from kdcore.config import set_dotted

        data: dict[str, Any] = {}
        for key, value in self.settings.items():
            set_dotted(data, key, list(value) if isinstance(value, (list, tuple)) else value)
        return data


# The workshop's lesson 3 (BENCHMARKS.md, "A lesson preset that teaches"): the student keeps the labels of 10% of
# the digits, the teacher labels them all. Distilled beats alone by +7.8 to +8.3 points on each of 3 seeds, 2–3 s a
# run (with its baseline) on 2 busy cores once the teacher exists.
LESSON = Preset("lesson-alone-vs-distilled",
                "Workshop lesson 3: a student that may read the labels of 1 digit in 10, alone vs distilled from a "
                "teacher that labels them all (the room's temperature sweep starts here too)",
                {"dataset": "digits", "labeled_fraction": 0.1, "baseline": True})

# Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020, Table 1 (teacher, student, KD, CRD),
# and Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation", CVPR 2022, Table 1 (DKD): CIFAR-100 top-1
# test accuracy, resnet32x4 → resnet8x4, each the mean over several runs.
CIFAR100_R32X4_R8X4 = Reference(
    teacher=0.7942, student=0.7250, methods={"kd": 0.7333, "crd": 0.7551, "dkd": 0.7632},
    sources=("Tian, Krishnan & Isola, Contrastive Representation Distillation, ICLR 2020, Table 1 "
             "(teacher 79.42, student 72.50, KD 73.33, CRD 75.51)",
             "Zhao, Cui, Song, Qiu & Liang, Decoupled Knowledge Distillation, CVPR 2022, Table 1 (DKD 76.32)"),
    citation="Tian et al., ICLR 2020; Zhao et al., CVPR 2022")

RECIPE = Preset(
    "cifar100-r32x4-r8x4",
    "The CIFAR-100 recipe of the KD literature (CRD, DKD): resnet32x4 → resnet8x4, 240 epochs of SGD (momentum 0.9, "
    "lr 0.05, × 0.1 after epochs 150, 180 and 210, weight decay 5e-4), batch 64, random crop + flip; KD with T = 4, "
    "0.1·CE + 0.9·KD. Hours on a GPU; on a CPU only as a smoke test",
    {
        "dataset": "cifar100",
        "val_fraction": 0.02,  # 1,000 training images for model selection (the papers have none; KD Lab never uses test)
        "augment": True,  # CIFAR's standard: a random crop of the 4-px padded image, mirrored half the time
        "teacher.arch": "resnet32x4", "teacher.epochs": 240, "teacher.lr": 0.05, "teacher.batch_size": 64,
        "teacher.augment": True,
        "student.arch": "resnet8x4", "epochs": 240, "batch_size": 64,
        "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4,
        "schedule": "step", "lr_milestones": (150, 180, 210), "lr_decay": 0.1,
        "method": "kd", "temperature": 4.0, "weights.ce": 0.1, "weights.kd": 0.9,
        "baseline": True,
    },
    reference=CIFAR100_R32X4_R8X4,
    notes="lr 0.05 suits ResNet students; the papers use lr 0.01 for lighter students (MobileNetV2, ShuffleNet): "
          "--set lr=0.01. Shorten it with --set epochs=N --set teacher.epochs=N --set lr_milestones=... (the milestones are "
          "epochs of every stage). The other published methods with their papers' loss weights: CRD "
          "--set method=crd --set weights.ce=1 --set weights.kd=0; DKD --set method=dkd --set weights.ce=1.")

PRESETS: dict[str, Preset] = {preset.name: preset for preset in (
    Preset("teaching", "The teaching preset, RunConfig()'s defaults: cnn → mlp-small on mnist-5k, a minute on a CPU"),
    LESSON,
    RECIPE,
)}


def get_preset(name: str) -> Preset:
    """The preset called `name`; an unknown name is refused with the valid ones."""
    preset = PRESETS.get(name)
    if preset is None:
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return preset


def published(dataset: str, teacher: str, student: str) -> tuple[Preset, Reference] | None:
    """The preset with published numbers for this dataset and teacher → student pair, and those numbers."""
    for preset in PRESETS.values():
        s = preset.settings
        if preset.reference is not None and (dataset, teacher, student) == (
                s.get("dataset"), s.get("teacher.arch"), s.get("student.arch")):
            return preset, preset.reference
    return None


def reference_for(config: dict[str, Any]) -> tuple[Preset, Reference] | None:
    """The preset whose published numbers a run (its stored config) can be compared with: same dataset, teacher
    and student as a preset with a reference. None for any other run."""
    return published(config.get("dataset"), (config.get("teacher") or {}).get("arch"),
                     (config.get("student") or {}).get("arch"))


def describe(preset: Preset) -> dict[str, Any]:
    """A preset as `list-presets --json` prints it: its settings, the whole config they make, its reference."""
    from kdcore.config import RunConfig, flatten

    config = RunConfig.from_dict(preset.config_dict())
    reference = preset.reference
    return {
        "name": preset.name, "description": preset.description,
        "settings": {key: list(value) if isinstance(value, tuple) else value for key, value in preset.settings.items()},
        "config": flatten(config.to_dict()),
        "notes": preset.notes,
        "reference": None if reference is None else {
            "teacher_test_acc": reference.teacher, "student_test_acc": reference.student,
            "methods": dict(reference.methods), "sources": list(reference.sources)},
    }
