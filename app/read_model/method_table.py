"""The method table of finished runs, in the style of the published CIFAR-100 tables."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from kdcore.config import RunConfig, flatten
from kdcore.methods import METHODS, method_spec
from kdcore.verdict import Verdict, seed_verdict
from kdcore.presets import published

DEFAULT_METHOD = RunConfig.method  # what a stored config without a method ran

# Settings that may differ between the runs of one method table: what a method needs (its name, its
# parameters, a feature weight for FitNets), the seeds it averages over, and what does not change
# the numbers. Any other difference (epochs, temperature, ...) makes a cell mix unlike runs.
METHOD_TABLE_FREE = ("seed", "teacher.seed", "method", "method_params", "weights", "name", "baseline", "device",
                     "amp", "compile", "data_root", "teacher.checkpoint", "tracking")


@dataclass(frozen=True)
class MeanStd:
    """Mean and sample standard deviation (0 for a single value) of `n` values."""

    mean: float
    std: float
    n: int


def mean_std(values: list[float]) -> MeanStd | None:
    """The MeanStd of the finite values, None when there are none."""
    clean = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not clean:
        return None
    mean = sum(clean) / len(clean)
    std = math.sqrt(sum((v - mean) ** 2 for v in clean) / (len(clean) - 1)) if len(clean) > 1 else 0.0
    return MeanStd(mean, std, len(clean))


def format_mean_std(cell: MeanStd | None, scale: float = 100.0, digits: int = 2) -> str:
    """`97.12 ± 0.31` (percentage points by default), as published tables print accuracy; a single
    value has no spread to show, so it prints alone; an em dash for none."""
    if cell is None:
        return "—"
    mean = f"{scale * cell.mean:.{digits}f}"
    return mean if cell.n < 2 else f"{mean} ± {scale * cell.std:.{digits}f}"


def _free(key: str) -> bool:
    return any(key == free or key.startswith(free + ".") for free in METHOD_TABLE_FREE)


def _differing_settings(configs: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Settings outside METHOD_TABLE_FREE on which these configs disagree: key → the distinct values."""
    flat = [flatten(c) for c in configs]
    keys = sorted(set().union(*flat)) if flat else []
    out = {}
    for key in keys:
        if _free(key):
            continue
        values: list[Any] = []
        for f in flat:
            if f.get(key) not in values:
                values.append(f.get(key))
        if len(values) > 1:
            out[key] = sorted(values, key=repr)
    return out


def _ensemble_teacher(method: str) -> bool:
    """Whether runs of `method` report an ensemble as their teacher (False for a name no module describes)."""
    try:
        return method_spec(method).ensemble_teacher
    except (KeyError, ValueError):
        return False


def method_table(records: list[Any]) -> list[dict[str, Any]]:
    """The method table of finished runs, in the style of the published CIFAR-100 tables: one row per
    (dataset, teacher arch, student arch), most runs first.

    A row: `dataset`, `teacher`, `student`, `runs` (how many), `teacher_acc` and `baseline_acc`
    (MeanStd of the test accuracy of the distinct teachers — runs of a method that learns from an ensemble
    report the ensemble, so they are left out — and of the student alone over the runs that trained one), `methods` (in
    the registry's order: name → `acc`, the MeanStd of the student's test accuracy over its runs,
    i.e. its seeds; `delta`, its mean minus the student alone's; `gap_closed`, (method − student
    alone) / (teacher − student alone) from the means, None unless the teacher leads; `run_ids`;
    `verdict`, the method against the student alone over seeds (`kdcore.verdict.seed_verdict`: paired by
    seed, the student alone of a seed being the mean of the row's baselines with that seed)),
    and `differs`: settings on which the row's runs disagree beyond seeds and method (key → values).
    """
    groups: dict[tuple[str, str, str], list[Any]] = {}
    for record in records:
        summary, config = record.summary or {}, record.config or {}
        if record.status != "done" or not isinstance(summary.get("student_test_acc"), (int, float)):
            continue
        key = (config.get("dataset", "?"), (config.get("teacher") or {}).get("arch", "?"),
               (config.get("student") or {}).get("arch", "?"))
        groups.setdefault(key, []).append(record)
    rows = []
    for (dataset, teacher, student), runs in groups.items():
        teachers: dict[str, float] = {}
        by_method: dict[str, list[Any]] = {}
        for record in runs:
            summary, config = record.summary or {}, record.config or {}
            method = config.get("method") or DEFAULT_METHOD
            by_method.setdefault(method, []).append(record)
            if not _ensemble_teacher(method) and summary.get("teacher_test_acc") is not None:
                identity = summary.get("teacher_key") or (config.get("teacher") or {}).get("checkpoint") or record.id
                teachers.setdefault(identity, summary["teacher_test_acc"])
        teacher_acc = mean_std(list(teachers.values()))
        baseline_acc = mean_std([(r.summary or {}).get("baseline_test_acc") for r in runs])
        baseline_by_seed = _by_seed(runs, "baseline_test_acc")
        order = [m for m in METHODS if m in by_method] + sorted(m for m in by_method if m not in METHODS)
        methods = {}
        for method in order:
            acc = mean_std([r.summary["student_test_acc"] for r in by_method[method]])
            delta = acc.mean - baseline_acc.mean if baseline_acc else None
            gap = (teacher_acc.mean - baseline_acc.mean) if teacher_acc and baseline_acc else 0.0
            methods[method] = {"acc": acc, "delta": delta, "gap_closed": delta / gap if gap > 0 else None,
                               "run_ids": [r.id for r in by_method[method]],
                               "verdict": seed_verdict(_by_seed(by_method[method], "student_test_acc"),
                                                       baseline_by_seed)}
        rows.append({"dataset": dataset, "teacher": teacher, "student": student, "runs": len(runs),
                     "teacher_acc": teacher_acc, "baseline_acc": baseline_acc, "methods": methods,
                     "differs": _differing_settings([r.config or {} for r in runs]),
                     "published": _published(dataset, teacher, student)})
    rows.sort(key=lambda row: -row["runs"])
    return rows


def _by_seed(records: list[Any], key: str) -> dict[Any, float]:
    """A summary number per seed: the mean over the runs of that seed that have it."""
    values: dict[Any, list[float]] = {}
    for record in records:
        value = (record.summary or {}).get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            values.setdefault((record.config or {}).get("seed", 0), []).append(float(value))
    return {seed: sum(v) / len(v) for seed, v in values.items()}


def _published(dataset: str, teacher: str, student: str) -> dict[str, Any] | None:
    """A paper's numbers for this pair (`kdcore.presets`): `preset` (the recipe's name), `citation`, `sources`, and
    `acc`: column (teacher, student alone, a method's name) → published test accuracy."""
    found = published(dataset, teacher, student)
    if found is None:
        return None
    preset, reference = found
    return {"preset": preset.name, "citation": reference.citation, "sources": list(reference.sources),
            "acc": {"teacher": reference.teacher, "student alone": reference.student, **reference.methods}}


def method_table_label(row: dict[str, Any]) -> str:
    """`digits · cnn-small → mlp-tiny · 12 runs, 4 methods`: a row of `method_table` in a picker."""
    methods = len(row["methods"])
    runs = row["runs"]
    return (f"{row['dataset']} · {row['teacher']} → {row['student']} · {runs} run{'s' if runs != 1 else ''}, "
            f"{methods} method{'s' if methods != 1 else ''}")


def method_table_columns(row: dict[str, Any]) -> list[dict[str, Any]]:
    """One row of `method_table` as the table's columns, in order: the teacher, the student alone, then
    each method, then the methods only a paper reports for this pair. Each: `column` (teacher, student alone, or the
    method's name), `acc` (MeanStd or None), `delta`, `gap_closed`, `verdict` (a `Verdict`; None for the
    references), `runs` (how many values the cell averages) and `published` (the paper's test accuracy, None when
    there is none)."""
    columns = [{"column": "teacher", "acc": row["teacher_acc"], "delta": None, "gap_closed": None, "verdict": None},
               {"column": "student alone", "acc": row["baseline_acc"], "delta": None, "gap_closed": None,
                "verdict": None}]
    columns += [{"column": name, "acc": cell["acc"], "delta": cell["delta"], "gap_closed": cell["gap_closed"],
                 "verdict": cell.get("verdict")} for name, cell in row["methods"].items()]
    paper = (row.get("published") or {}).get("acc", {})
    columns += [{"column": name, "acc": None, "delta": None, "gap_closed": None, "verdict": None}
                for name in paper if name not in ("teacher", "student alone") and name not in row["methods"]]
    for column in columns:
        column["runs"] = column["acc"].n if column["acc"] else 0
        column["published"] = paper.get(column["column"])
    return columns


def method_table_csv_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`method_table` rows in long form, one line per (pair, column), with plain numbers (fractions,
    not percentages): what the Methods page offers as CSV."""
    out = []
    for row in rows:
        for column in method_table_columns(row):
            acc = column["acc"]
            out.append({"dataset": row["dataset"], "teacher": row["teacher"], "student": row["student"],
                        "column": column["column"], "test_acc_mean": acc.mean if acc else None,
                        "test_acc_std": acc.std if acc else None, "runs": column["runs"],
                        "minus_student_alone": column["delta"], "gap_closed": column["gap_closed"],
                        "published_test_acc": column["published"], **_verdict_columns(column["verdict"])})
    return out


def _verdict_columns(verdict: Verdict | None) -> dict[str, Any]:
    """The CSV's verdict columns: the 95% interval of method − student alone (paired by seed, else Welch's),
    how many seeds were paired, and the verdict."""
    if verdict is None:
        return {"diff_ci95_low": None, "diff_ci95_high": None, "seeds_paired": None, "verdict": None}
    return {"diff_ci95_low": verdict.diff_low, "diff_ci95_high": verdict.diff_high,
            "seeds_paired": len(verdict.seeds) if verdict.paired else 0, "verdict": verdict.verdict}
