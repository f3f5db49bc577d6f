"""Seeds of one config: which runs are repeats of each other, what they say together, and repeating a
run (or every cell of a sweep) with more seeds.

Runs are *seed siblings* when their configs are equal apart from the student's `seed` and the settings
in `SEED_FREE`, which do not change the experiment (its name, where the data lies, the device, trackers).
`seed_family` is that config as a string. The teacher's own `teacher.seed` is part of it: runs of a
seed sweep share one teacher, so their spread is the student's seed noise.

The verdict over siblings is `kdcore.verdict.seed_verdict` (its module states the rule). No torch here.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from kdcore.config import RunConfig, flatten
from kdcore.errors import KDError
from kdcore.store import ACTIVE, RunRecord
from kdcore.verdict import Verdict, mean_interval, seed_verdict

SEED_FREE = ("seed", "name", "device", "devices", "data_root", "amp", "compile", "tracking")
MAX_SEEDS = 20  # a repeat asks for at most this many seeds of one config


@functools.lru_cache(maxsize=1)
def _defaults() -> dict[str, Any]:
    return flatten(RunConfig().to_dict())


def seed_free(key: str) -> bool:
    """Whether a dotted config key may differ between seed siblings (see SEED_FREE)."""
    return any(key == free or key.startswith(free + ".") for free in SEED_FREE)


def seed_family(config: dict[str, Any]) -> str:
    """The config apart from its seed, as a canonical string: equal strings are seed siblings.

    Only settings that differ from the defaults count, so a run stored before a setting existed
    matches a newer one that leaves it at its default."""
    defaults = _defaults()
    missing = object()
    kept = {key: value for key, value in flatten(config or {}).items()
            if not seed_free(key) and value != defaults.get(key, missing)}
    return json.dumps(kept, sort_keys=True, default=str)


def seed_of(record: Any) -> Any:
    return (record.config or {}).get("seed", 0)


def siblings_by_seed(record: Any, records: list[Any]) -> dict[Any, Any]:
    """The finished (`done`) runs among `records` that are seed siblings of `record` (it included, when
    done): seed → run, the newest run of a seed when it ran more than once."""
    family = seed_family(record.config)
    out: dict[Any, Any] = {}
    for other in sorted(records, key=lambda r: -getattr(r, "seq", 0)):
        if other.status == "done" and other.summary and seed_family(other.config) == family:
            out.setdefault(seed_of(other), other)
    return out


def _interval(values: list[float]) -> tuple[float | None, list[float] | None]:
    if not values:
        return None, None
    mean, half = mean_interval(values)
    return mean, None if half is None else [mean - half, mean + half]


def distilled_vs_baseline(runs: dict[Any, Any]) -> Verdict:
    """The distilled student against the student alone, paired by seed, over runs keyed by seed."""
    return seed_verdict({seed: (r.summary or {}).get("student_test_acc") for seed, r in runs.items()},
                        {seed: (r.summary or {}).get("baseline_test_acc") for seed, r in runs.items()})


def seeds_summary(record: Any, records: list[Any]) -> dict[str, Any]:
    """What a finished run's summary JSON carries under `seeds`: its config over every seed in `records`.

    `n` (seeds), `seeds`, `run_ids`, `distilled_mean` / `baseline_mean` with their 95% t-intervals
    (`distilled_ci95`, `baseline_ci95`: [low, high], null for one value), the paired difference distilled
    − baseline (`diff_mean`, `diff_ci95`), `verdict` (better | worse | within seed noise | no verdict) and
    `text`, e.g. "better on 3 of 3 seeds, +0.8 ± 0.3 points". Accuracies are fractions.
    """
    runs = siblings_by_seed(record, records)
    seeds = sorted(runs, key=repr)
    distilled = [runs[s].summary.get("student_test_acc") for s in seeds]
    baseline = [runs[s].summary.get("baseline_test_acc") for s in seeds]
    distilled_mean, distilled_ci = _interval([v for v in distilled if isinstance(v, (int, float))])
    baseline_mean, baseline_ci = _interval([v for v in baseline if isinstance(v, (int, float))])
    verdict = distilled_vs_baseline(runs)
    text = verdict.text
    if baseline_mean is None:
        text = "no baseline: no verdict (train the student alone too, `baseline=true`)"
    return {"n": len(seeds), "seeds": seeds, "run_ids": [runs[s].id for s in seeds],
            "distilled_mean": distilled_mean, "distilled_ci95": distilled_ci,
            "baseline_mean": baseline_mean, "baseline_ci95": baseline_ci,
            "diff_mean": verdict.diff_mean,
            "diff_ci95": None if verdict.diff_low is None else [verdict.diff_low, verdict.diff_high],
            "verdict": verdict.verdict, "text": text}


def cells(records: list[Any]) -> list[tuple[Any, dict[str, Any]]]:
    """The runs of a sweep by cell (runs that differ only in seed), in the order of `records`: each cell's
    first finished run and the `seeds_summary` of the cell's finished runs; cells with none are left out."""
    out, seen = [], set()
    for record in records:
        family = seed_family(record.config)
        if family not in seen and record.status == "done":
            seen.add(family)
            out.append((record, seeds_summary(record, records)))
    return out


# --- repeating with more seeds ------------------------------------------------------------------------------


def missing_seeds(taken: set[Any], total: int) -> list[int]:
    """The smallest seeds (0, 1, 2, ...) not yet taken, enough to bring `taken` up to `total` seeds."""
    out, seed = [], 0
    while len(taken) + len(out) < total:
        if seed not in taken:
            out.append(seed)
        seed += 1
    return out


def _check_total(total: Any) -> int:
    if isinstance(total, bool) or not isinstance(total, int) or not 2 <= total <= MAX_SEEDS:
        raise KDError(f"--seeds must be a whole number from 2 to {MAX_SEEDS}, got {total!r}")
    return total


def _run_name(record: RunRecord, seed: int, sweep: dict[str, Any] | None) -> str:
    if sweep is not None:
        flat = flatten(record.config)
        keys = [k for k in (sweep.get("grid") or {}) if k != "seed"]
        values = [f"{k}={flat.get(k.replace('method.', 'method_params.', 1))}" for k in keys] + [f"seed={seed}"]
        return f"{sweep.get('name') or 'sweep'}: " + ", ".join(values)
    return f"{record.name or record.id} · seed {seed}"


def _queue(runner, plan: list[tuple[RunRecord, int]], sweep: dict[str, Any] | None) -> list[str]:
    """Queue one run per (run to repeat, seed), in the repeated run's sweep if it has one; then start them."""
    from kdcore.sweep import check_owner_room

    owners: dict[str | None, int] = {}
    for record, _ in plan:
        owners[record.owner] = owners.get(record.owner, 0) + 1
    for owner, adding in owners.items():
        if owner is not None:
            check_owner_room(runner, owner, adding)  # refused whole, before anything is queued
    sweep_id = sweep["sweep_id"] if sweep is not None else None

    def add_seeds(spec: dict[str, Any], new_ids: list[str]) -> None:  # the grid names the seeds now in the sweep
        grid = spec.setdefault("grid", {})
        seeds = list(grid.get("seed") or [])
        grid["seed"] = seeds + sorted({s for _, s in plan} - set(seeds))
        spec["size"] = spec.get("size", 0) + len(new_ids)

    by_owner: dict[str | None, list[int]] = {}
    for i, (record, _) in enumerate(plan):
        by_owner.setdefault(record.owner, []).append(i)
    run_ids = [""] * len(plan)
    for owner, indexes in by_owner.items():  # each owner's runs queued together (Runner.submit_many)
        runs = [(RunConfig.from_dict({**plan[i][0].config, "seed": plan[i][1]}), _run_name(*plan[i], sweep))
                for i in indexes]
        queued = runner.submit_many(runs, sweep_id=sweep_id, start=False, owner=owner,
                                    sweep_change=add_seeds if sweep is not None else None)
        for i, run_id in zip(indexes, queued):
            run_ids[i] = run_id
    runner.tick()
    return run_ids


def _taken(records: list[RunRecord]) -> set[Any]:
    """Seeds that are finished or on their way (failed and cancelled runs do not count)."""
    return {seed_of(r) for r in records if r.status == "done" or r.status in ACTIVE}


def repeat_run(runner, run_id: str, total: int) -> list[str]:
    """Queue the seeds that `run_id`'s config lacks in the store, up to `total` seeds; returns the new run ids.

    The new runs join the run's sweep when it has one, so they train together there (not a tuning study's:
    its runs are its trials)."""
    total = _check_total(total)
    store = runner.store
    record = store.get_run(run_id)
    family = seed_family(record.config)
    siblings = [r for r in store.list_runs() if seed_family(r.config) == family]
    sweep = store.get_sweep(record.sweep_id) if record.sweep_id else None
    if sweep is not None and sweep.get("kind"):  # a tuning study (`kdcore.tune`), not a grid
        sweep = None
    return _queue(runner, [(record, seed) for seed in missing_seeds(_taken(siblings), total)], sweep)


def repeat_sweep(runner, sweep_id: str, total: int) -> list[str]:
    """Bring every cell of a sweep (its runs that differ only in seed) up to `total` seeds, in the sweep."""
    total = _check_total(total)
    store = runner.store
    sweep = store.get_sweep(sweep_id)
    if sweep.get("kind"):
        raise KDError(f"{sweep_id} is a tuning study, not a grid: its best settings are confirmed on seeds by "
                      "`tune --seeds`; repeat one of its runs with `repeat RUN_ID` instead")
    cells: dict[str, list[RunRecord]] = {}
    for record in reversed(store.list_runs(sweep_id=sweep_id)):  # grid order
        cells.setdefault(seed_family(record.config), []).append(record)
    plan = []
    for runs in cells.values():
        model = next((r for r in reversed(runs) if r.status == "done"), runs[-1])  # the newest finished, if any
        plan += [(model, seed) for seed in missing_seeds(_taken(runs), total)]
    return _queue(runner, plan, sweep)
