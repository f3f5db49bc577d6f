"""The series a run records, by name: which are reported every step, how each is labelled, in what order.

Every scalar term a method's objective returns is recorded per step as `train_<term>`; its legend text
and kind (a loss part, or another value such as a learned temperature) come from the method's module
(`kdcore.methods.series_terms`), so nothing here names a method. Series a method does not describe
(an older run's, say) still show, under their own names.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kdcore.config import RunConfig
from kdcore.methods import Term, series_terms

DEFAULT_METHOD = RunConfig.method  # what a stored config without a method ran
# Reported once per epoch (the trainer's validation and epoch summary), with what a chart calls them.
EPOCH_SERIES = {"val_acc": "validation accuracy", "val_loss": "validation CE", "val_agreement": "top-1 agreement",
                "val_kl": "KL(teacher ‖ model)", "train_acc": "training accuracy",
                "samples_per_s": "samples per second"}
PERCENT_SERIES = ("val_acc", "val_agreement", "train_acc")


@dataclass(frozen=True)
class Line:
    """One recorded series as a chart draws it: its name in the store, its legend text, its kind."""

    name: str
    label: str
    kind: str = "loss"  # "loss": a loss part; "value": another quantity, drawn on its own axis


def method_terms(method: str | None) -> dict[str, Term]:
    """`series_terms` of a stored run's method (the config default when it names none)."""
    try:
        return series_terms(method or DEFAULT_METHOD)
    except (KeyError, ValueError):  # a name no module describes: the common terms only
        return series_terms(DEFAULT_METHOD)


def is_step_series(name: str) -> bool:
    """Reported every training step: the objective's terms (`train_<term>`), not the per-epoch summaries."""
    return name.startswith("train_") and name not in EPOCH_SERIES


def step_lines(method: str | None, recorded: Iterable[str]) -> list[Line]:
    """The per-step series among `recorded`, in the method's drawing order and with its labels; series
    the method does not describe follow, sorted, under their own names (as loss parts)."""
    terms = method_terms(method)
    recorded = set(recorded)
    lines = [Line(name, term.label, term.kind) for name, term in terms.items() if name in recorded]
    lines += [Line(name, name) for name in sorted(recorded - set(terms)) if is_step_series(name)]
    return lines


def series_label(name: str, methods: Iterable[str | None] = ()) -> str:
    """What a chart calls a recorded series, for runs of these methods: `total loss`, `validation CE`,
    a method's own term by its module's label, else the name itself."""
    if name == "train_loss":
        return "total loss"
    if name in EPOCH_SERIES:
        return EPOCH_SERIES[name]
    for method in methods:
        term = method_terms(method).get(name)
        if term is not None:
            return term.label
    return name


def series_kind(name: str, methods: Iterable[str | None] = ()) -> str:
    """"loss", "value" (a per-step quantity that is not a loss) or "epoch" (a per-epoch summary)."""
    if not is_step_series(name):
        return "epoch"
    for method in methods:
        term = method_terms(method).get(name)
        if term is not None:
            return term.kind
    return "loss"


def series_order(names: Iterable[str], methods: Iterable[str | None] = ()) -> list[str]:
    """Recorded series names for a picker: the per-step terms in drawing order (the common ones first,
    then each method's own), then the per-epoch summaries, then anything else, sorted."""
    names = set(names)
    order: list[str] = []
    for method in [*methods, None]:
        order += [name for name in method_terms(method) if name in names and name not in order]
    order += sorted(name for name in names if is_step_series(name) and name not in order)
    order += [name for name in EPOCH_SERIES if name in names and name not in order]
    order += sorted(name for name in names if name not in order)
    return order
