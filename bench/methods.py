"""The method table: every distillation method on the default teacher → student pair, 3 seeds, same budget.

    python bench/methods.py [--seeds 0 1 2] [--epochs 30] [--set key=value ...] [--json]

Each run is recorded in the run store ($KDCORE_HOME, default ./kd-runs), so the app's Methods page
shows the same table. One teacher (the preset's) serves every run; the student alone is trained
once per seed (the runs of the first method listed carry it, `kd` by default). A method's own
needed settings (FitNets' feature weight) come from its spec (`MethodSpec.suggested`). Methods that
cannot run on the pair (attention transfer needs convolutional feature maps) are reported as such.
Prints a table in the style of the published CIFAR-100 tables: test accuracy mean ± std over seeds, and the gap closed,
(student − baseline) / (teacher − baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

from kdcore.config import build_config
from kdcore.errors import ConfigError
from kdcore.methods import METHODS
from kdcore.store import Store
from kdcore.worker import execute



def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    store = Store()
    results: dict[str, list[dict]] = {}
    refused: dict[str, str] = {}
    started = time.perf_counter()
    for method in args.methods:
        for seed in args.seeds:
            settings = [*args.overrides, f"epochs={args.epochs}", f"seed={seed}", f"method={method}",
                        f"baseline={'true' if method == args.methods[0] else 'false'}",
                        f"name=method table: {method} seed {seed}",
                        *(f"{key}={value}" for key, value in METHODS[method].spec.suggested.items())]
            try:
                config = build_config(None, settings)
            except ConfigError as exc:
                refused[method] = str(exc)
                break
            run_id = store.create_run(config.to_dict(), name=config.name, status="running", pid=os.getpid())
            summary = execute(store, run_id, config)
            if summary.get("status") != "done":
                refused[method] = summary.get("error", summary.get("status"))
                break
            results.setdefault(method, []).append(summary)
            print(f"{method:18} seed {seed}: student {100 * summary['student_test_acc']:.2f}%  "
                  f"({summary['wall_s']:.1f} s)", flush=True)

    carriers = results.get(args.methods[0], [])  # the runs that trained the student alone
    teacher = statistics.mean(s["teacher_test_acc"] for s in carriers)
    baseline_mean, baseline_std = mean_std([s["baseline_test_acc"] for s in carriers])
    rows = []
    for method, runs in results.items():
        m, sd = mean_std([s["student_test_acc"] for s in runs])
        rows.append({"method": method, "title": METHODS[method].spec.title, "mean": m, "std": sd, "runs": len(runs),
                     # only meaningful when the teacher beats the student alone
                     "gap_closed": (m - baseline_mean) / (teacher - baseline_mean) if teacher > baseline_mean else None,
                     "wall_s": statistics.mean(s["wall_s"] for s in runs)})
    cfg = build_config(None, [*args.overrides, f"epochs={args.epochs}"])
    print(f"\n{cfg.dataset}: teacher {cfg.teacher.arch} {100 * teacher:.2f}%  →  student {cfg.student.arch} "
          f"alone {100 * baseline_mean:.2f} ± {100 * baseline_std:.2f}%  ({len(args.seeds)} seeds, {args.epochs} epochs)")
    print(f"{'method':18} {'test acc':>16} {'gap closed':>11} {'s/run':>6}")
    for r in rows:
        gap = f"{100 * r['gap_closed']:>9.1f}%" if r["gap_closed"] is not None else f"{'-':>10}"
        print(f"{r['method']:18} {100 * r['mean']:>7.2f} ± {100 * r['std']:<5.2f}  {gap} {r['wall_s']:>6.1f}")
    for method, why in refused.items():
        print(f"{method:18} n/a: {why}")
    if args.json:
        print(json.dumps({"teacher": teacher, "baseline_mean": baseline_mean, "baseline_std": baseline_std,
                          "rows": rows, "refused": refused, "seeds": args.seeds, "epochs": args.epochs,
                          "total_s": time.perf_counter() - started,
                          "machine": f"{platform.machine()} {os.cpu_count()} cores"}))


if __name__ == "__main__":
    main()
