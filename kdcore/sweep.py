"""Sweeps: a grid of settings over one base config, queued as runs that share a teacher.

`--grid temperature=1,2,4 --grid weights.kd=0.1,0.5` expands to the Cartesian product. Every
combination is validated before anything is queued, so a bad value refuses the whole sweep and
names the value. Runs of a sweep share the teacher through the teacher cache (same teacher
settings → one training), and the worker trains compatible runs of a sweep together
(see `kdcore.worker`).
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

from kdcore.config import RunConfig, config_data, parse_value, set_dotted
from kdcore.errors import ConfigError

CONFIRM_ABOVE = 100  # runs; a larger sweep must be confirmed (CLI: --yes; app: a checkbox)


def parse_grid(specs: list[str]) -> dict[str, list[Any]]:
    """["temperature=1,2,4", "seed=0,1"] → {"temperature": [1, 2, 4], "seed": [0, 1]}."""
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        key, sep, raw = spec.partition("=")
        key = key.strip()
        if not sep or not key or not raw.strip():
            raise ConfigError(f"--grid expects key=v1,v2,..., got {spec!r}")
        if key in grid:
            raise ConfigError(f"--grid {key} is given twice")
        values = [parse_value(v.strip()) for v in raw.split(",") if v.strip()]
        if len(values) != len(set(map(repr, values))):
            raise ConfigError(f"--grid {key} repeats a value")
        grid[key] = values
    if not grid:
        raise ConfigError("a sweep needs at least one --grid key=v1,v2,...")
    return grid


def expand(base: dict[str, Any], grid: dict[str, list[Any]]) -> list[tuple[dict[str, Any], RunConfig]]:
    """Every combination as (the swept values, its validated RunConfig), in grid order."""
    RunConfig.from_dict(copy.deepcopy(base))  # a bad base is reported as such, not as a grid value
    keys = list(grid)
    out = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        data = copy.deepcopy(base)
        for key, value in zip(keys, combo):
            set_dotted(data, key, value)
        try:
            config = RunConfig.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"grid value {_culprit(base, dict(zip(keys, combo)))} is invalid: {exc}") from None
        out.append((dict(zip(keys, combo)), config))
    return out


def _culprit(base: dict[str, Any], values: dict[str, Any]) -> str:
    """Name the swept value that makes a combination invalid: the first one invalid on its own."""
    for key, value in values.items():
        data = copy.deepcopy(base)
        try:
            set_dotted(data, key, value)
            RunConfig.from_dict(data)
        except ConfigError:
            return f"{key}={value}"
    return ", ".join(f"{k}={v}" for k, v in values.items())  # only the combination is invalid


def build_sweep(config_file: str | None, overrides: list[str], grid_specs: list[str],
                preset: str | None = None) -> tuple[dict, dict, list]:
    """The CLI's way in: base dict (a preset, a file, `--set`), grid, and the expanded (values, config) list."""
    base = config_data(config_file, overrides, preset)
    grid = parse_grid(grid_specs)
    return base, grid, expand(base, grid)


def submit_sweep(runner, base: dict[str, Any], grid: dict[str, list[Any]],
                 runs: list[tuple[dict[str, Any], RunConfig]], *, name: str = "",
                 owner: str | None = None) -> tuple[str, list[str]]:
    """Record the sweep and queue its runs (in grid order); returns (sweep_id, run_ids).

    With an `owner`, a sweep that would take them over the per-owner cap is refused whole, before
    anything is recorded."""
    store = runner.store
    if owner is not None:
        check_owner_room(runner, owner, len(runs))
    sweep_id = store.create_sweep({"name": name, "base": base, "grid": grid, "size": len(runs)})
    label = name or "sweep"
    named = [(config, f"{label}: " + ", ".join(f"{k}={v}" for k, v in values.items())) for values, config in runs]
    return sweep_id, runner.submit_many(named, sweep_id=sweep_id, owner=owner)


def check_owner_room(runner, owner: str, adding: int) -> None:
    """Refuse (OwnerLimitError) `adding` more runs for `owner` when they would pass the per-owner cap."""
    from kdcore.owners import OwnerLimitError, limit_message, validate_owner
    from kdcore.store import ACTIVE

    validate_owner(owner)
    cap = runner.owner_cap()
    if cap is None:
        return
    active = runner.store.count_runs(ACTIVE, owner=owner)
    if active + adding > cap:
        raise OwnerLimitError(limit_message(owner, active, cap, adding))
