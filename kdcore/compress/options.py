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
MAX_RECOVER_EPOCHS = 1000


@dataclass(frozen=True)
class CompressOptions:
    """prune: the fraction removed (None: no pruning). Unstructured: the fraction of Linear/Conv weights set
    to zero, over the whole network (global magnitude). Structured: the fraction of channels (conv) and
    neurons (hidden Linear) removed from every prunable layer; the classifier keeps its classes.
    recover_epochs: distillation epochs from the run's teacher after pruning (0: none).
    quantize: "int8" for post-training static int8 of every fp32 student variant (None: none).
    repeats: timed calls per latency measurement (batch 1); throughput takes a fifth as many batches of 64."""

    prune: float | None = None
    structured: bool = False
    recover_epochs: int = 0
    quantize: str | None = None
    repeats: int = 200

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
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or not 1 <= self.repeats <= 100_000:
            raise ConfigError(f"--repeats must be an integer from 1 to 100000, got {self.repeats!r}")

    @property
    def prune_key(self) -> str:
        """The pruning part of `key`: `p50s` (structured 50%), `p90u` (unstructured 90%), "" without pruning."""
        return "" if self.prune is None else f"p{_percent(self.prune)}{'s' if self.structured else 'u'}"

    @property
    def key(self) -> str:
        """A short name for these options, used in artefact names: `p50s-r2-int8` (structured 50%, 2 epochs)."""
        parts = []
        if self.prune is not None:
            parts.append(self.prune_key)
            if self.recover_epochs:
                parts.append(f"r{self.recover_epochs}")
        if self.quantize:
            parts.append(self.quantize)
        if self.repeats != CompressOptions.repeats:
            parts.append(f"n{self.repeats}")
        return "-".join(parts) or "plain"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def cli_args(self) -> list[str]:
        """The `python -m kdcore compress` flags that ask for these options."""
        args = []
        if self.prune is not None:
            args += ["--prune", repr(float(self.prune))]
            if self.structured:
                args.append("--structured")
            if self.recover_epochs:
                args += ["--recover-epochs", str(self.recover_epochs)]
        if self.quantize:
            args += ["--quantize", self.quantize]
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
