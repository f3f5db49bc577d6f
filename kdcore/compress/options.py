"""What a deployment report is asked for, validated once at the edge (CLI flags or the Deploy page).

Torch-free: the app builds options and looks up cached reports without importing torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from kdcore.errors import ConfigError

QUANTIZATIONS = ("int8",)
EXPORT_FORMATS = ("onnx", "pt")
PRUNED_MODELS = ("student", "teacher", "both")
RECOVERY_SOURCES = ("teacher", "unpruned", "both")
MAX_RECOVER_EPOCHS = 1000
MAX_PRUNE_STEPS = 20


@dataclass(frozen=True)
class CompressOptions:
    """prune: the fraction removed (None: no pruning). Unstructured: the fraction of Linear/Conv weights set
    to zero, over the whole network (global magnitude). Structured: the fraction of channels (conv) and
    neurons (hidden Linear) removed from every prunable layer; the classifier keeps its classes.
    prune_model: which of the run's models is pruned: the student, the teacher, or each of them.
    prune_steps: pruning in this many steps, each removing an equal share of what is left and followed by
    its own recovery (iterative pruning); the fraction removed in the end is `prune` either way.
    recover_epochs: distillation epochs after pruning (after each step) (0: none).
    recover_from: what the recovery distils from: the run's teacher, the unpruned model, or both as one
    ensemble (for the teacher itself the first two are the same model).
    quantize: "int8" for post-training static int8 of every fp32 variant (None: none).
    qat_epochs: epochs of quantisation-aware fine-tuning, distilled from the run's teacher, before the int8
    quantisation (0: none); each int8 variant then comes twice, PTQ and QAT.
    repeats: timed calls per latency measurement (batch 1); throughput takes a fifth as many batches of 64."""

    prune: float | None = None
    structured: bool = False
    recover_epochs: int = 0
    quantize: str | None = None
    repeats: int = 200
    prune_model: str = "student"
    recover_from: str = "teacher"
    prune_steps: int = 1
    qat_epochs: int = 0

    def __post_init__(self) -> None:
        if self.prune is not None:
            if isinstance(self.prune, bool) or not isinstance(self.prune, (int, float)) or not math.isfinite(self.prune) \
                    or not 0 < self.prune < 1:
                raise ConfigError(f"--prune: the sparsity must be a number strictly between 0 and 1, got {self.prune!r}")
        if self.quantize is not None and self.quantize not in QUANTIZATIONS:
            raise ConfigError(f"--quantize: unknown quantisation {self.quantize!r}; valid: {', '.join(QUANTIZATIONS)}")
        if isinstance(self.recover_epochs, bool) or not isinstance(self.recover_epochs, int) \
                or not 0 <= self.recover_epochs <= MAX_RECOVER_EPOCHS:
            raise ConfigError(f"--recover-epochs must be an integer from 0 to {MAX_RECOVER_EPOCHS}, "
                              f"got {self.recover_epochs!r}")
        if self.recover_epochs and self.prune is None:
            raise ConfigError("--recover-epochs recovers a pruned model: add --prune F")
        if self.prune_model not in PRUNED_MODELS:
            raise ConfigError(f"--prune-model: unknown model {self.prune_model!r}; valid: {', '.join(PRUNED_MODELS)}")
        if self.recover_from not in RECOVERY_SOURCES:
            raise ConfigError(f"--recover-from: unknown source {self.recover_from!r}; valid: "
                              f"{', '.join(RECOVERY_SOURCES)}")
        if isinstance(self.prune_steps, bool) or not isinstance(self.prune_steps, int) \
                or not 1 <= self.prune_steps <= MAX_PRUNE_STEPS:
            raise ConfigError(f"--prune-steps must be an integer from 1 to {MAX_PRUNE_STEPS}, got {self.prune_steps!r}")
        if self.prune is None and (self.prune_model != "student" or self.prune_steps != 1):
            raise ConfigError("--prune-model and --prune-steps say how to prune: add --prune F")
        if self.recover_from != "teacher" and not self.recover_epochs:
            raise ConfigError("--recover-from says what the recovery learns from: add --recover-epochs N")
        if isinstance(self.qat_epochs, bool) or not isinstance(self.qat_epochs, int) \
                or not 0 <= self.qat_epochs <= MAX_RECOVER_EPOCHS:
            raise ConfigError(f"--qat-epochs must be an integer from 0 to {MAX_RECOVER_EPOCHS}, got {self.qat_epochs!r}")
        if self.qat_epochs and not self.quantize:
            raise ConfigError("--qat-epochs fine-tunes for a quantisation: add --quantize int8")
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or not 1 <= self.repeats <= 100_000:
            raise ConfigError(f"--repeats must be an integer from 1 to 100000, got {self.repeats!r}")

    @property
    def prune_key(self) -> str:
        """The pruning part of `key`: `p50s` (structured 50%), `p90u` (unstructured 90%), `p50sx4` (in 4 steps),
        "" without pruning."""
        if self.prune is None:
            return ""
        steps = f"x{self.prune_steps}" if self.prune_steps > 1 else ""
        return f"p{_percent(self.prune)}{'s' if self.structured else 'u'}{steps}"

    @property
    def recovery_key(self) -> str:
        """`r5` (5 epochs from the teacher), `r5u` (from the unpruned model), `r5b` (from both); "" for none."""
        if not self.recover_epochs:
            return ""
        return f"r{self.recover_epochs}" + {"teacher": "", "unpruned": "u", "both": "b"}[self.recover_from]

    @property
    def key(self) -> str:
        """A short name for these options, used in artefact names: `p50s-r2-int8` (structured 50%, 2 epochs),
        `t-p50s-r2-int8-q3` (the teacher pruned, 3 epochs of quantisation-aware fine-tuning)."""
        parts = [{"student": "", "teacher": "t", "both": "ts"}[self.prune_model]] if self.prune is not None else []
        if self.prune is not None:
            parts += [self.prune_key, self.recovery_key]
        if self.quantize:
            parts += [self.quantize, f"q{self.qat_epochs}" if self.qat_epochs else ""]
        if self.repeats != CompressOptions.repeats:
            parts.append(f"n{self.repeats}")
        return "-".join(part for part in parts if part) or "plain"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def cli_args(self) -> list[str]:
        """The `python -m kdcore compress` flags that ask for these options."""
        args = []
        if self.prune is not None:
            args += ["--prune", repr(float(self.prune))]
            if self.structured:
                args.append("--structured")
            if self.prune_model != "student":
                args += ["--prune-model", self.prune_model]
            if self.prune_steps != 1:
                args += ["--prune-steps", str(self.prune_steps)]
            if self.recover_epochs:
                args += ["--recover-epochs", str(self.recover_epochs)]
            if self.recover_from != "teacher":
                args += ["--recover-from", self.recover_from]
        if self.quantize:
            args += ["--quantize", self.quantize]
            if self.qat_epochs:
                args += ["--qat-epochs", str(self.qat_epochs)]
        if self.repeats != CompressOptions.repeats:
            args += ["--repeats", str(self.repeats)]
        return args


def _percent(fraction: float) -> str:
    """50 for 0.5, 12.5 for 0.125: a percentage without trailing zeros (safe in a file name)."""
    return f"{100 * fraction:.4f}".rstrip("0").rstrip(".")


# The run's artefacts that belong to one report, by the options' key.

def report_name(options: CompressOptions) -> str:
    """The deployment report for these options."""
    return f"report-{options.key}.json"


def progress_name(options: CompressOptions) -> str:
    """Where the report's computation says which step it is at."""
    return f"report-{options.key}.progress.json"


def job_name(options: CompressOptions) -> str:
    """The background process computing it (`kdcore.compress.jobs`)."""
    return f"report-{options.key}.job.json"


def log_name(options: CompressOptions) -> str:
    """That process's standard error."""
    return f"report-{options.key}.log"
