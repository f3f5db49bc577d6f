"""Seed-noise verdicts as the pages show them: a sweep's cells, the configs picked on Compare.

The statistics and the rule are `kdcore.verdict`; which runs are seeds of one config is `kdcore.seeds`.
"""

from __future__ import annotations

from typing import Any

from kdcore.compare import config_diff
from kdcore.seeds import cells, seed_family, seed_free, seed_of, seeds_summary, siblings_by_seed
from kdcore.verdict import seed_verdict


def format_ci(mean: float | None, ci95: list[float] | None, scale: float = 100.0, digits: int = 2) -> str:
    """`97.12 ± 0.45`: a mean and the half-width of its 95% interval (percent by default); a mean of one
    value prints alone, none an em dash."""
    if mean is None:
        return "—"
    text = f"{scale * mean:.{digits}f}"
    return text if ci95 is None else f"{text} ± {scale * (ci95[1] - ci95[0]) / 2:.{digits}f}"


def format_difference(seeds: dict[str, Any]) -> str:
    """`+0.80 ± 0.30` points from a `seeds_summary`, with a typographic minus; an em dash when unknown."""
    mean, ci = seeds.get("diff_mean"), seeds.get("diff_ci95")
    if mean is None:
        return "—"
    text = f"{100 * mean:+.2f}" + ("" if ci is None else f" ± {100 * (ci[1] - ci[0]) / 2:.2f}")
    return text.replace("-", "−")


def cell_verdicts(records: list[Any], keys: list[str]) -> list[dict[str, Any]]:
    """A sweep's cells (its runs that differ only in seed), in grid order, each with its swept values
    (`keys` other than seed, as the runs' configs hold them) and the `seeds_summary` of its finished runs
    (distilled vs baseline, paired by seed). Cells without a finished run are left out."""
    from app.read_model.sweeps import dotted_value

    swept = [k for k in keys if k != "seed"]
    return [{**{k: dotted_value(record.config, k) for k in swept}, **summary} for record, summary in cells(records)]


def config_groups(selected: list[Any], records: list[Any]) -> list[dict[str, Any]]:
    """The configs among the `selected` runs (apart from seed), in the order picked, over every finished
    seed of each in `records`.

    Each: `run` (the first selected run of the config), `label` (the settings on which the configs differ,
    or the run's name), `seeds` (its `seeds_summary`: distilled vs baseline) and, from the second config
    on, `versus_first`: its distilled accuracy against the first config's, paired by seed (a `Verdict`).
    """
    firsts: dict[str, Any] = {}
    for record in selected:
        firsts.setdefault(seed_family(record.config), record)
    runs = list(firsts.values())
    diff = {k: v for k, v in config_diff(runs).items() if not seed_free(k)} if len(runs) > 1 else {}
    groups = []
    for i, record in enumerate(runs):
        label = ", ".join(f"{k}={_value(values[i])}" for k, values in diff.items()) or record.name or record.id
        siblings = siblings_by_seed(record, records)
        group = {"run": record, "label": label, "seeds": seeds_summary(record, records), "versus_first": None,
                 "accuracy": {seed: (r.summary or {}).get("student_test_acc") for seed, r in siblings.items()}}
        if groups:
            group["versus_first"] = seed_verdict(group["accuracy"], groups[0]["accuracy"])
        groups.append(group)
    return groups


def _value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def seeds_present(records: list[Any]) -> int:
    """The largest number of distinct seeds any config among `records` has (0 for none)."""
    families: dict[str, set[Any]] = {}
    for record in records:
        families.setdefault(seed_family(record.config), set()).add(seed_of(record))
    return max((len(s) for s in families.values()), default=0)
