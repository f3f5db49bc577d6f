"""Auto-tuning against a grid: how many student training steps a study needs to match a 5×5 grid's best cell,
and how much tuning RKD, PKT and DKD's own parameters changes what they give on the preset pair.

    python bench/tune.py [--trials 16] [--study-seeds 0 1 2] [--pruner sha] [--first-rung E] [--epochs 30]
                         [--methods rkd pkt dkd] [--method-trials 10] [--seeds 3] [--skip-grid | --reuse-grid]
                         [--set key=value ...] [--json]

Part 1 (the target): the preset pair (mnist-5k, cnn → mlp-small) over T ∈ [1, 32] (log) × weights.kd ∈
[0.1, 0.95]. The grid is 5 log-spaced temperatures × 5 evenly spaced KD weights, every run with the same
budget (--epochs) and no baseline, queued as one sweep (it trains as one stacked group). A study of --trials
trials (TPE, successive-halving pruning, batches of 4) runs once per study seed. For each study we find the
first trial (in trial order) whose validation accuracy is within 0.2 points of the grid's best cell, and count
the student training steps of every trial up to the end of its batch (pruned trials count what they trained).
The target: the median over study seeds of those steps is at most 40% of the grid's 25 × epochs × steps.
--reuse-grid reads the grid this store recorded before (same base config) instead of training it again, to
compare other study settings (--first-rung, --pruner, --trials) with the same grid.

Part 2: for each method in --methods, a study over its own parameters (the ranges below) with the method at its
paper defaults as the base config; the best settings and the defaults then train on --seeds seeds with the
student alone beside them (the study's confirmation), and the gap each closes is reported.

Everything is recorded in the run store ($KDCORE_HOME, default ./kd-runs): the Tune page shows the studies.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time

from kdcore.config import apply_overrides
from kdcore.runner import Runner
from kdcore.store import Store
from kdcore.sweep import expand, parse_grid, submit_sweep
from kdcore.tune.report import study_report
from kdcore.tune.study import create_study, drive

TEMPERATURES = [round(math.exp(math.log(1) + i * (math.log(32) - math.log(1)) / 4), 3) for i in range(5)]
KD_WEIGHTS = [round(0.1 + i * (0.95 - 0.1) / 4, 4) for i in range(5)]
SPACE = ["temperature=log:1,32", "weights.kd=0.1,0.95"]
WITHIN = 0.002  # 0.2 points of validation accuracy
METHOD_SPACES = {  # each method's own weights, a couple of decades around the paper's; DKD's temperature too
    "rkd": ["method.distance_weight=log:0.1,100", "method.angle_weight=log:0.1,100"],
    "pkt": ["method.weight=log:1,100000"],
    "dkd": ["method.alpha=log:0.1,10", "method.beta=log:0.5,20", "temperature=log:1,16"],
}


def load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def steps_per_epoch(store: Store, run_id: str) -> int:
    rows = [r for r in store.metrics_for([run_id], ["val_acc"]) if r.stage == "student"]
    first = min(rows, key=lambda r: r.epoch)
    return first.step // first.epoch


def recorded_grid(store: Store, base: dict) -> dict:
    """The grid a previous run recorded in this store, read as grid_part returns it; refused if its base differs."""
    sweep = next((s for s in store.list_sweeps() if s.get("name") == "bench tune: 5x5 grid"), None)
    if sweep is None:
        raise SystemExit("--reuse-grid: no grid recorded in this store")
    records = store.list_runs(sweep_id=sweep["sweep_id"])
    wanted = apply_overrides({}, [f"{k}={v}" for k, v in flat(base).items()])
    for key, value in flat(wanted).items():
        if flat(records[0].config).get(key) != value:
            raise SystemExit(f"--reuse-grid: the recorded grid has {key}={flat(records[0].config).get(key)!r}, "
                             f"not {value!r}")
    cells = [{"temperature": r.config["temperature"], "weights.kd": r.config["weights"]["kd"],
              "val_acc": (r.summary or {}).get("student_val_acc"), "run_id": r.id} for r in records]
    per_epoch = steps_per_epoch(store, records[0].id)
    return {"sweep_id": sweep["sweep_id"], "cells": cells, "best": max(cells, key=lambda c: c["val_acc"] or -1),
            "steps": len(records) * records[0].config["epochs"] * per_epoch, "steps_per_epoch": per_epoch,
            "wall_s": 0.0, "reused": True}


def flat(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def grid_part(runner: Runner, base: dict, epochs: int) -> dict:
    grid = parse_grid([f"temperature={','.join(map(str, TEMPERATURES))}", f"weights.kd={','.join(map(str, KD_WEIGHTS))}"])
    started = time.perf_counter()
    sweep_id, run_ids = submit_sweep(runner, {**base, "baseline": False}, grid, expand({**base, "baseline": False}, grid),
                                     name="bench tune: 5x5 grid")
    records = runner.wait(run_ids)
    cells = [{"temperature": r.config["temperature"], "weights.kd": r.config["weights"]["kd"],
              "val_acc": (r.summary or {}).get("student_val_acc"), "run_id": r.id} for r in records]
    best = max(cells, key=lambda c: c["val_acc"] or -1)
    per_epoch = steps_per_epoch(runner.store, run_ids[0])
    return {"sweep_id": sweep_id, "cells": cells, "best": best, "steps": len(run_ids) * epochs * per_epoch,
            "steps_per_epoch": per_epoch, "wall_s": time.perf_counter() - started}


def study_part(runner: Runner, base: dict, trials: int, seed: int, target: float, grid_steps: int,
               pruner: str, first_rung: int | None = None) -> dict:
    started = time.perf_counter()
    variant = "" if first_rung is None and pruner == "sha" else f" [{pruner}, first rung {first_rung or 'default'}]"
    study_id = create_study(runner.store, base, SPACE, trials=trials, seeds=0, sampler_seed=seed, pruner=pruner,
                            first_rung=first_rung, name=f"bench tune: T x kd{variant}, study seed {seed}")
    drive(runner, study_id)
    return {**reach(study_report(runner.store, study_id), seed, target, grid_steps),
            "wall_s": time.perf_counter() - started}


def reach(report: dict, seed: int, target: float, grid_steps: int) -> dict:
    """When a study first reached `target` validation accuracy, and the student steps it had paid by then."""
    batch = report["batch"]
    reached = next((t for t in report["trials"] if t["state"] == "complete" and t["val_acc"] >= target), None)
    used = None
    if reached is not None:  # every trial of its batch and the batches before it was paid for
        last = (reached["number"] // batch + 1) * batch
        used = sum(t["steps"] for t in report["trials"] if t["number"] < last)
    return {"study_seed": seed, "best_val_acc": report["best"]["val_acc"],
            "best_params": report["best"]["params"], "reached_at_trial": reached["number"] if reached else None,
            "steps_to_reach": used, "fraction_of_grid": used / grid_steps if used is not None else None,
            "total_steps": report["student_steps"], "total_fraction": report["student_steps"] / grid_steps,
            "pruned": sum(t["state"] == "pruned" for t in report["trials"]), "study_id": report["study_id"]}


def reanalyse(store: Store, within: float) -> None:
    """Read the grid and the studies a previous run recorded in this store; print how each study did against
    the grid's best minus `within` (e.g. one validation example instead of 0.2 points)."""
    from kdcore.tune.report import list_studies

    sweep = next(s for s in store.list_sweeps() if s.get("name") == "bench tune: 5x5 grid")
    records = store.list_runs(sweep_id=sweep["sweep_id"])
    best = max((r.summary or {}).get("student_val_acc", -1) for r in records)
    epochs = records[0].config["epochs"]
    grid_steps = len(records) * epochs * steps_per_epoch(store, records[0].id)
    groups: dict[str, list[dict]] = {}
    for study in list_studies(store):
        if study["name"].startswith("bench tune: T x kd"):
            variant, seed = study["name"].rsplit(", study seed ", 1)
            groups.setdefault(variant, []).append(reach(study_report(store, study["study_id"]), int(seed),
                                                        best - within, grid_steps))
    for variant, rows in sorted(groups.items()):
        print(variant)
        for row in sorted(rows, key=lambda r: r["study_seed"]):
            used = "-" if row["fraction_of_grid"] is None else f"{100 * row['fraction_of_grid']:.0f}%"
            print(f"  study seed {row['study_seed']}: best {100 * row['best_val_acc']:.2f}% (grid {100 * best:.2f}%); "
                  f"within {100 * within:.2f} points at trial #{row['reached_at_trial']}: {used} of the grid's steps; "
                  f"all trials {100 * row['total_fraction']:.0f}% ({row['pruned']} pruned)")
        fractions = [r["fraction_of_grid"] if r["fraction_of_grid"] is not None else math.inf for r in rows]
        print(f"  median: {100 * statistics.median(fractions):.0f}% of the grid's steps")


def method_part(runner: Runner, base: dict, method: str, trials: int, seeds: int) -> dict:
    started = time.perf_counter()
    study_id = create_study(runner.store, {**base, "method": method}, METHOD_SPACES[method], trials=trials,
                            seeds=seeds, sampler_seed=0, name=f"bench tune: {method}")
    drive(runner, study_id)
    report = study_report(runner.store, study_id)
    verdict = report["verdict"] or {}
    return {"method": method, "study_id": study_id, "best_params": (report["best"] or {}).get("params"),
            "best_val_acc": (report["best"] or {}).get("val_acc"), "tuned": verdict.get("tuned"),
            "default": verdict.get("default"), "alone": verdict.get("alone"), "verdict": verdict.get("verdict"),
            "teacher_test_acc": verdict.get("teacher_test_acc"), "wall_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--study-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pruner", choices=["sha", "hyperband", "none"], default="sha")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--methods", nargs="*", default=list(METHOD_SPACES))
    parser.add_argument("--method-trials", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3, help="confirmation seeds of the method studies")
    parser.add_argument("--first-rung", type=int, default=None, help="the pruner's first rung epoch (default: a "
                        "tenth of the epochs)")
    parser.add_argument("--skip-grid", action="store_true", help="only the method studies")
    parser.add_argument("--reuse-grid", action="store_true", help="the grid this store recorded before, not a new one")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--within", type=float, default=WITHIN, help="with --reanalyse: the distance to the grid's "
                        "best that counts as reaching it (default 0.002, 0.2 points)")
    parser.add_argument("--reanalyse", action="store_true", help="only read the grid and studies already in the "
                        "store and print how they did against --within")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.reanalyse:
        reanalyse(Store(), args.within)
        return
    base = apply_overrides({"epochs": args.epochs}, args.overrides)
    runner = Runner(Store())
    out: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
                 "load_before": load(), "epochs": args.epochs, "trials": args.trials, "pruner": args.pruner,
                 "first_rung": args.first_rung, "overrides": args.overrides}
    if not args.skip_grid:
        grid = recorded_grid(runner.store, base) if args.reuse_grid else grid_part(runner, base, args.epochs)
        out["grid"] = grid
        target = grid["best"]["val_acc"] - WITHIN
        print(f"grid 5x5: best cell T={grid['best']['temperature']:g}, kd={grid['best']['weights.kd']:g}: "
              f"val {100 * grid['best']['val_acc']:.2f}%  ({grid['steps']} student steps, {grid['wall_s']:.0f} s)",
              flush=True)
        studies = []
        for seed in args.study_seeds:
            row = study_part(runner, base, args.trials, seed, target, grid["steps"], args.pruner, args.first_rung)
            studies.append(row)
            reached = (f"reached {100 * target:.2f}% at trial #{row['reached_at_trial']} with "
                       f"{100 * row['fraction_of_grid']:.0f}% of the grid's steps" if row["steps_to_reach"] is not None
                       else "did not reach the target")
            print(f"study seed {seed}: best val {100 * row['best_val_acc']:.2f}% {row['best_params']}; {reached}; "
                  f"all {args.trials} trials: {100 * row['total_fraction']:.0f}% ({row['pruned']} pruned, "
                  f"{row['wall_s']:.0f} s)", flush=True)
        fractions = [s["fraction_of_grid"] if s["fraction_of_grid"] is not None else math.inf for s in studies]
        median = statistics.median(fractions)
        out.update(studies=studies, median_fraction=median, target_met=median <= 0.4)
        print(f"median over {len(studies)} study seeds: {100 * median:.0f}% of the grid's steps "
              f"(target ≤ 40%: {'met' if median <= 0.4 else 'missed'})", flush=True)
    out["methods"] = []
    for method in args.methods:
        row = method_part(runner, base, method, args.method_trials, args.seeds)
        out["methods"].append(row)

        def cell(part: dict | None) -> str:
            if not part or part.get("mean") is None:
                return "-"
            ci = f" ± {100 * part['ci95']:.2f}" if part.get("ci95") is not None else ""
            gap = f" (gap {100 * part['gap_closed']:+.0f}%)" if part.get("gap_closed") is not None else ""
            return f"{100 * part['mean']:.2f}{ci}{gap}"
        print(f"{method}: paper defaults {cell(row['default'])}  tuned {cell(row['tuned'])}  alone {cell(row['alone'])}"
              f"  best {row['best_params']}  [{row['verdict']}]  ({row['wall_s']:.0f} s)", flush=True)
    out["load_after"] = load()
    print(f"load average before {out['load_before']}, after {out['load_after']}")
    if args.json:
        print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
