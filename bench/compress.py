"""The compression table: the teaching preset's student pruned, recovered by KD, quantised to int8, measured.

    python bench/compress.py [--recover-epochs 20] [--recover-from teacher] [--prune 0.5] [--prune-steps 1]
                             [--qat-epochs 5] [--kinds structured,unstructured] [--repeats 200] [--set key=value ...]
                             [--seeds 0,1,2] [--run RUN_ID[,RUN_ID...]] [--json]

Trains the preset run (mnist-5k, cnn → mlp-small, 30 epochs) in this process, recorded in the run store
($KDCORE_HOME, default ./kd-runs) so the app's Deploy page shows the same reports, then computes two
deployment reports of it (`kdcore.compress.report`): 50% structured pruning + KD recovery + int8 (after
training, and after quantisation-aware fine-tuning), and the same with unstructured (global magnitude)
pruning. Each lists the teacher, the student and
every variant with test accuracy, parameters, ONNX bytes, latency at batch 1 (p50/p95) and throughput
at batch 64 in PyTorch and ONNX Runtime, on this machine's CPU. Checks the issue's targets: int8 within
0.5 points of the fp32 student with a file at least 3× smaller; the 50% structured-pruned student after
KD recovery within 0.5 points of the unpruned one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from kdcore.compress.options import CompressOptions
from kdcore.compress.report import compress_run
from kdcore.config import RunConfig, build_config
from kdcore.store import Store
from kdcore.worker import execute

TARGET_POINTS = 0.5  # accuracy loss allowed, in percentage points
TARGET_SHRINK = 3.0  # int8 file at least this many times smaller than the fp32 student's


def table(report: dict) -> None:
    print(f"{'variant':44} {'acc %':>6} {'agree %':>7} {'params':>8} {'KB':>7} {'torch p50/p95 ms':>17} "
          f"{'ORT p50/p95 ms':>15} {'torch/s @64':>11} {'ORT/s @64':>10}")
    for v in report["variants"]:
        torch_ms = f"{v['torch_p50_ms']:.3f}/{v['torch_p95_ms']:.3f}" if v["torch_p50_ms"] is not None else "-"
        torch_rate = f"{v['torch_throughput']:,.0f}" if v["torch_throughput"] is not None else "-"
        ort_ms = f"{v['ort_p50_ms']:.3f}/{v['ort_p95_ms']:.3f}"
        print(f"{v['variant']:44} {100 * v['test_acc']:6.2f} {100 * v['agreement']:7.1f} {v['nonzero_params']:8,} "
              f"{v['bytes'] / 1024:7.1f} {torch_ms:>17} {ort_ms:>15} {torch_rate:>11} {v['ort_throughput']:>10,.0f}")


def targets(report: dict) -> dict:
    rows = {v["name"]: v for v in report["variants"]}
    student, int8 = rows["student"], rows["student-int8"]
    options = CompressOptions(**report["options"])
    recovered = rows[f"student-{options.prune_key}-{options.recovery_key}"]
    out = {
        "int8_delta_points": 100 * (int8["test_acc"] - student["test_acc"]),
        "int8_shrink": student["bytes"] / int8["bytes"],
        "int8_ort_speedup_b1": student["ort_p50_ms"] / int8["ort_p50_ms"],
        "int8_agreement": int8["agreement"],
        "pruned_delta_points_before_recovery": 100 * (report["pruning"]["test_acc_before_recovery"] - student["test_acc"]),
        "recovered_delta_points": 100 * (recovered["test_acc"] - student["test_acc"]),
        "recovered_params": recovered["nonzero_params"], "student_params": student["nonzero_params"],
    }
    for entry in report.get("quantization") or []:  # QAT against PTQ, in points against the fp32 model
        out.setdefault("qat", []).append({"source": entry["source"],
                                          "ptq_delta_points": 100 * (entry["ptq_test_acc"] - entry["fp32_test_acc"]),
                                          "qat_delta_points": 100 * (entry["qat_test_acc"] - entry["fp32_test_acc"])})
    out["int8_met"] = out["int8_delta_points"] >= -TARGET_POINTS and out["int8_shrink"] >= TARGET_SHRINK
    out["recovered_met"] = out["recovered_delta_points"] >= -TARGET_POINTS
    return out


def preset_run(store: Store, args, seed: int | None, run_id: str | None) -> tuple[str, RunConfig, dict]:
    """A finished preset run: `run_id` measured again, or the preset trained now (with `seed`)."""
    if run_id:  # measure again a preset run this script trained before
        record = store.get_run(run_id)
        return record.id, RunConfig.from_dict(record.config), record.summary
    seeded = [f"seed={seed}"] if seed is not None else []
    config = build_config(None, [*args.overrides, *seeded, "name=compression bench: the preset"])
    run_id = store.create_run(config.to_dict(), name=config.name, status="running", pid=os.getpid())
    summary = execute(store, run_id, config)
    if summary.get("status") != "done":
        raise SystemExit(f"the preset run failed: {summary.get('error')}")
    return run_id, config, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prune", type=float, default=0.5)
    parser.add_argument("--recover-epochs", type=int, default=20)
    parser.add_argument("--recover-from", default="teacher", choices=["teacher", "unpruned", "both"])
    parser.add_argument("--prune-steps", type=int, default=1)
    parser.add_argument("--qat-epochs", type=int, default=5)
    parser.add_argument("--kinds", default="structured,unstructured", help="which pruning reports to compute")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--seeds", default=None, help="e.g. 0,1,2: the preset trained with each seed (`--set seed=S`), "
                                                      "and the targets' mean and spread over them")
    parser.add_argument("--run", default=None, help="finished runs to compress instead of training the preset "
                                                    "(comma-separated, one per seed)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    store = Store()
    seeds = [int(seed) for seed in args.seeds.split(",")] if args.seeds else [None]
    run_ids = args.run.split(",") if args.run else [None] * len(seeds)
    if len(run_ids) != len(seeds):
        raise SystemExit("--run: give one run id per seed of --seeds")
    results = []
    for seed, given in zip(seeds, run_ids):
        run_id, config, summary = preset_run(store, args, seed, given)
        print(f"{run_id}: {config.dataset}, {config.teacher.arch} → {config.student.arch}, seed {config.seed}, teacher "
              f"{100 * summary['teacher_test_acc']:.2f}%, student {100 * summary['student_test_acc']:.2f}% "
              f"({summary['wall_s']:.0f} s)", flush=True)
        reports = {}
        for kind in args.kinds.split(","):
            options = CompressOptions(prune=args.prune, structured=kind == "structured",
                                      recover_epochs=args.recover_epochs, recover_from=args.recover_from,
                                      prune_steps=args.prune_steps, quantize="int8", qat_epochs=args.qat_epochs,
                                      repeats=args.repeats)
            report = compress_run(store, run_id, options)
            reports[kind] = {"report": report, "targets": targets(report)}
            print(f"\n{100 * args.prune:g}% {kind} pruning, {args.recover_epochs} epochs of KD recovery from the "
                  f"{args.recover_from} model, int8 PTQ and after {args.qat_epochs} QAT epochs ({report['wall_s']:.0f} s):")
            table(report)
            t = reports[kind]["targets"]
            print(f"int8: {t['int8_delta_points']:+.2f} points, {t['int8_shrink']:.2f}× smaller, "
                  f"{t['int8_ort_speedup_b1']:.2f}× the fp32 student's ORT speed at batch 1 → target "
                  f"{'met' if t['int8_met'] else 'MISSED'}; pruned {t['pruned_delta_points_before_recovery']:+.2f} "
                  f"points before recovery, {t['recovered_delta_points']:+.2f} after → target "
                  f"{'met' if t['recovered_met'] else 'MISSED'}")
            for q in t.get("qat", []):
                print(f"int8 of {q['source']}: PTQ {q['ptq_delta_points']:+.2f} points, QAT {q['qat_delta_points']:+.2f}")
        results.append({"run_id": run_id, "seed": config.seed,
                        "summary": {k: summary[k] for k in ("teacher_test_acc", "student_test_acc", "teacher_params",
                                                            "student_params")},
                        "reports": reports})
    over_seeds = {kind: seed_spread([r["reports"][kind]["targets"] for r in results]) for kind in args.kinds.split(",")}
    if len(results) > 1:
        for kind, spread in over_seeds.items():
            print(f"\n{kind}, {len(results)} seeds: " + "; ".join(
                f"{name} {s['mean']:+.2f} (min {s['min']:+.2f}, max {s['max']:+.2f})" for name, s in spread.items())
                + f" → recovered target {'met' if spread['recovered_delta_points']['mean'] >= -TARGET_POINTS else 'MISSED'}"
                  " on the mean")
    if args.json:
        print(json.dumps({"runs": results, "over_seeds": over_seeds, "total_s": time.perf_counter() - started,
                          "load_average": os.getloadavg(),
                          "machine": f"{platform.machine()} {os.cpu_count()} cores, {torch.get_num_threads()} threads"}))


def seed_spread(per_seed: list[dict]) -> dict:
    """Mean, min and max over seeds of the targets' accuracy differences (points against the fp32 student)."""
    names = ("pruned_delta_points_before_recovery", "recovered_delta_points", "int8_delta_points")
    return {name: {"mean": sum(t[name] for t in per_seed) / len(per_seed), "min": min(t[name] for t in per_seed),
                   "max": max(t[name] for t in per_seed)} for name in names}


if __name__ == "__main__":
    main()
