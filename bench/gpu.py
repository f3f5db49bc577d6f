"""The CUDA path: resnet32x4 → resnet8x4 distillation on CIFAR-shaped synthetic data.

    python bench/gpu.py [--steps 200] [--batch 256] [--json]

Measures student training samples/s on the GPU, as the engine runs it, in four variants:
fp32, bf16 autocast, bf16 + channels_last, bf16 + channels_last + torch.compile; with the data
resident on the GPU and the teacher's soft labels precomputed (no augmentation), plus the same
step with the teacher run on every batch (what augmentation without the view table costs).
On a machine without CUDA it says so, prints `{"skipped": true, ...}` with --json, and exits 0.
"""

from __future__ import annotations

import argparse
import json
import time

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device here: the GPU benchmark needs one (run it through the device tool)")
        if args.json:
            print(json.dumps({"skipped": True, "reason": "no CUDA device"}))
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
