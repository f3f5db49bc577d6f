"""The CUDA path: resnet32x4 → resnet8x4 distillation, its throughput and the published CIFAR-100 recipe.

    python bench/gpu.py [--steps 200] [--batch 256] [--json]
    python bench/gpu.py --recipe [--epochs 240] [--data-root DIR | --synthetic] [--set key=value ...] [--json]

Default: measures student training samples/s on the GPU, as the engine runs it, in four variants:
fp32, bf16 autocast, bf16 + channels_last, bf16 + channels_last + torch.compile; with the data
resident on the GPU and the teacher's soft labels precomputed (no augmentation), plus the same
step with the teacher run on every batch (what augmentation without the view table costs).

--recipe: runs the preset `cifar100-r32x4-r8x4` through the engine (teacher, student, baseline, recorded in a
throwaway run store), on CIFAR-100 under --data-root, and prints its accuracies beside the published ones.
--epochs N shortens it: teacher and student train N epochs, the lr milestones scaled to N (150/180/210 of
240). --synthetic times it on random CIFAR-100-format files instead (no accuracy to read; the wall time
and its extrapolation to 240 epochs are the result), --synthetic-size shrinks them for a smoke run.
On a machine without CUDA it says so, prints `{"skipped": true, ...}` with --json, and exits 0
(--device cpu runs the recipe anyway, e.g. a shrunk smoke run).
"""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from kdcore.losses import distillation_loss
from kdcore.models import build_model, count_parameters

SHAPE, CLASSES, N = (3, 32, 32), 100, 50_000


def measure(student, teacher, x, y, soft, *, batch: int, steps: int, amp: bool, teacher_each_step: bool) -> float:
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator(device="cuda").manual_seed(0)

    def step() -> None:
        idx = torch.randint(0, N, (batch,), device="cuda", generator=generator)
        xb, yb = x[idx], y[idx]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            if teacher_each_step:
                with torch.no_grad():
                    teacher_logits = teacher(xb).float()
            else:
                teacher_logits = soft[idx]
            parts = distillation_loss(student(xb), yb, teacher_logits=teacher_logits, temperature=4.0,
                                      ce_weight=0.1, kd_weight=0.9)
        optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        optimizer.step()

    for _ in range(20):  # warm-up (and compilation)
        step()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - started)


def scaled_milestones(epochs: int, full: list[int], full_epochs: int) -> list[int]:
    """The recipe's milestones at the same fractions of a shorter run: 150/180/210 of 240 → 62/75/88 of 100."""
    return sorted({max(1, round(m * epochs / full_epochs)) for m in full})


def write_synthetic_cifar100(root: Path, n_train: int, n_test: int) -> None:
    """Random images in CIFAR-100's python format (cifar-100-python/train, test, meta), 100 classes evenly."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, count in (("train", n_train), ("test", n_test)):
        labels = (np.arange(count) % CLASSES).tolist()
        data = rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)
        (folder / name).write_bytes(pickle.dumps({"data": data, "fine_labels": labels,
                                                  "coarse_labels": [y // 5 for y in labels]}, protocol=2))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"class{i:02d}" for i in range(CLASSES)],
                                                "coarse_label_names": [f"super{i}" for i in range(20)]}, protocol=2))


def run_recipe(args: argparse.Namespace) -> dict:
    """The preset through the engine, in a throwaway store; its summary beside the published numbers."""
    from kdcore.config import build_config
    from kdcore.presets import RECIPE
    from kdcore.store import Store
    from kdcore.worker import execute

    full = build_config(preset=RECIPE.name)
    overrides = [f"device={args.device}"]
    if args.epochs != full.epochs:
        milestones = scaled_milestones(args.epochs, full.lr_milestones, full.epochs)
        overrides += [f"epochs={args.epochs}", f"teacher.epochs={args.epochs}",
                      "lr_milestones=" + ",".join(map(str, milestones))]
    work = Path(tempfile.mkdtemp(prefix="kd-recipe-"))
    data_root = args.data_root
    if args.synthetic:
        data_root = str(work / "data")
        write_synthetic_cifar100(Path(data_root), args.synthetic_size, max(CLASSES, args.synthetic_size // 5))
    overrides += [f"data_root={data_root}"] if data_root else []
    config = build_config(preset=RECIPE.name, overrides=overrides + list(args.overrides))
    store = Store(work / "runs")
    run_id = store.create_run(config.to_dict(), name=f"bench: {RECIPE.name}", status="running")
    print(f"{RECIPE.name}: {config.teacher.arch} → {config.student.arch}, {config.epochs} epochs "
          f"(milestones {config.lr_milestones}) on {'synthetic ' if args.synthetic else ''}{config.dataset}, "
          f"device {config.device}", flush=True)
    summary = execute(store, run_id, config)
    if summary.get("status") != "done":
        raise SystemExit(f"the recipe run failed: {summary.get('error')}")
    reference = RECIPE.reference
    method = config.method
    result = {
        "device": torch.cuda.get_device_name(0) if config.device == "cuda" else config.device,
        "torch": torch.__version__, "preset": RECIPE.name, "synthetic": bool(args.synthetic),
        "epochs": config.epochs, "teacher_epochs": config.teacher.epochs, "lr_milestones": config.lr_milestones,
        "method": method, "overrides": list(args.overrides),
        "teacher_test_acc": summary["teacher_test_acc"], "student_test_acc": summary["student_test_acc"],
        "baseline_test_acc": summary.get("baseline_test_acc"), "wall_s": summary["wall_s"],
        "samples_per_s": summary.get("samples_per_s"),
        "full_recipe_hours_estimate": summary["wall_s"] * full.epochs / config.epochs / 3600,
        "published": {"teacher": reference.teacher, "student": reference.student, method: reference.methods.get(method)},
    }
    rows = [("teacher", summary["teacher_test_acc"], reference.teacher),
            (f"student ({method})", summary["student_test_acc"], reference.methods.get(method)),
            ("student alone", summary.get("baseline_test_acc"), reference.student)]
    for name, measured, paper in rows:
        print(f"{name:18} {_pct(measured):>8}   published {_pct(paper)}")
    print(f"wall {summary['wall_s']:.0f} s; the full {full.epochs}-epoch recipe ≈ "
          f"{result['full_recipe_hours_estimate']:.1f} h at this pace")
    store.close()
    shutil.rmtree(work, ignore_errors=True)
    return result


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--recipe", action="store_true", help="run the cifar100-r32x4-r8x4 preset through the engine")
    parser.add_argument("--epochs", type=int, default=240, help="--recipe: epochs of teacher and student (240: full)")
    parser.add_argument("--data-root", default=None, help="--recipe: the folder holding cifar-100-python/")
    parser.add_argument("--synthetic", action="store_true", help="--recipe: random CIFAR-100-format images (timing)")
    parser.add_argument("--synthetic-size", type=int, default=50_000, help="--recipe --synthetic: training images")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="--recipe: where to train")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="--recipe: more settings over the preset, e.g. --set method=dkd")
    args = parser.parse_args()
    if args.recipe and args.device == "cpu":
        result = run_recipe(args)
        if args.json:
            print(json.dumps(result))
        return
    if not torch.cuda.is_available():
        print("no CUDA device here: the GPU benchmark needs one (run it through the device tool)")
        if args.json:
            print(json.dumps({"skipped": True, "reason": "no CUDA device"}))
        return

    if args.recipe:
        result = run_recipe(args)
        if args.json:
            print(json.dumps(result))
        return
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    x = torch.randn(N, *SHAPE, device="cuda")
    y = torch.randint(0, CLASSES, (N,), device="cuda")
    results = {}
    for name, amp, channels_last, compiled in (("fp32", False, False, False), ("bf16", True, False, False),
                                              ("bf16+channels_last", True, True, False),
                                              ("bf16+channels_last+compile", True, True, True)):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        teacher = build_model("resnet32x4", SHAPE, CLASSES).cuda().eval().to(memory_format=fmt)
        student = build_model("resnet8x4", SHAPE, CLASSES).cuda().to(memory_format=fmt)
        if compiled:
            student.compile()
            teacher.compile()
        data = x.contiguous(memory_format=fmt)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            soft = torch.cat([teacher(data[i : i + 2048]).float() for i in range(0, N, 2048)])
        results[name] = {
            "precomputed_soft_labels": measure(student, teacher, data, y, soft, batch=args.batch, steps=args.steps,
                                               amp=amp, teacher_each_step=False),
            "teacher_every_step": measure(student, teacher, data, y, soft, batch=args.batch, steps=args.steps,
                                          amp=amp, teacher_each_step=True),
        }
        print(f"{name:28} {results[name]['precomputed_soft_labels']:>10,.0f} samples/s "
              f"(teacher every step: {results[name]['teacher_every_step']:>9,.0f})", flush=True)
    out = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "teacher_params": count_parameters(build_model("resnet32x4", SHAPE, CLASSES)),
        "student_params": count_parameters(build_model("resnet8x4", SHAPE, CLASSES)),
        "batch": args.batch,
        "results": results,
        "bf16_channels_last_speedup_vs_fp32": results["bf16+channels_last"]["precomputed_soft_labels"]
        / results["fp32"]["precomputed_soft_labels"],
    }
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
