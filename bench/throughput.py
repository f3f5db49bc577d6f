"""Distillation throughput: the textbook KD loop against the kdcore engine, measured in one run.

    python bench/throughput.py [--epochs 3] [--repeats 3] [--json]

Same data (mnist-5k train split), same teacher (the default CNN, trained once here), same student
(the default MLP), batch 64, Adam. Samples per second over whole student epochs (data, teacher
soft labels, forward, backward, optimizer step), median of the repeats:

(a) textbook: a DataLoader over the training set, `teacher(x)` under no_grad on every step, KL + CE;
(b) kdcore: `run_pipeline` timed from the start of its soft-label stage to the end of its student
    stage (teacher outputs, per-epoch validation and snapshots included).

Then both again with augmentation (random shifts). The textbook loop runs the teacher on every
augmented batch; kdcore looks the teacher's logits up in a table over the finitely many views,
built in its first run (reported separately as "first run") and cached with the teacher.
Finally the student's compute floor: its forward+backward FLOPs per sample times the engine's
samples/s, as a fraction of a large float32 matmul's FLOP rate on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from kdcore.callbacks import Callback
from kdcore.config import RunConfig
from kdcore.data import load_dataset
from kdcore.models import build_model
from kdcore.trainer import run_pipeline


class ShiftedDigits(Dataset):
    """The textbook dataset: one item at a time, optional random shift per item."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, augment: bool) -> None:
        self.x, self.y, self.augment = x, y, augment

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        x = self.x[i]
        if self.augment:
            dx, dy = torch.randint(-2, 3, (2,)).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(1, 2))
        return x, self.y[i]


def textbook(teacher, config: RunConfig, data, epochs: int, augment: bool) -> float:
    """The loop most KD tutorials show; returns samples/s."""
    torch.manual_seed(config.seed)
    student = build_model(config.student.arch, data.info.input_shape, data.info.num_classes)
    optimizer = torch.optim.Adam(student.parameters(), lr=config.lr)
    loader = DataLoader(ShiftedDigits(data.train_x, data.train_y, augment), batch_size=config.batch_size,
                        shuffle=True, drop_last=True)
    T, w = config.temperature, config.weights
    teacher.eval()
    seen, started = 0, time.perf_counter()
    for _ in range(epochs):
        for x, y in loader:
            with torch.no_grad():
                teacher_logits = teacher(x)
            logits = student(x)
            kd = F.kl_div(F.log_softmax(logits / T, 1), F.softmax(teacher_logits / T, 1), reduction="batchmean") * T * T
            loss = w.ce * F.cross_entropy(logits, y) + w.kd * kd
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(x)
    return seen / (time.perf_counter() - started)


class StageClock(Callback):
    def __init__(self) -> None:
        self.start = self.end = 0.0
        self.steps = 0

    def on_stage_start(self, stage, epochs, steps_per_epoch):
        if stage == "soft_labels":  # the teacher's soft labels (and view table) count as kdcore's time
            self.start = time.perf_counter()
        if stage == "student":
            self.steps = epochs * steps_per_epoch

    def on_stage_end(self, stage, values):
        if stage == "student":
            self.end = time.perf_counter()


def engine(config: RunConfig, cache: str) -> float:
    clock = StageClock()
    run_pipeline(config, [clock], teacher_cache=cache)
    return clock.steps * config.batch_size / (clock.end - clock.start)


def student_flops_per_sample(config: RunConfig, data) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(config.student.arch, data.info.input_shape, data.info.num_classes)
    x = data.train_x[: config.batch_size]
    counter = FlopCounterMode(display=False)
    with counter:
        F.cross_entropy(model(x), data.train_y[: config.batch_size]).backward()
    return counter.get_total_flops() / config.batch_size


def matmul_flops_per_s(n: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30, help="the preset's budget")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import tempfile

    cache = tempfile.mkdtemp(prefix="kd-bench-")
    base = RunConfig().replace(**{"epochs": args.epochs, "baseline": False, "batch_size": 64, "device": "cpu"})
    data = load_dataset(base.dataset, val_fraction=base.val_fraction)
    engine(base, cache)  # trains and caches the teacher once; later runs reuse it
    teacher = build_model(base.teacher.arch, data.info.input_shape, data.info.num_classes)
    from kdcore import checkpoints

    checkpoints.load_into(teacher, os.path.join(cache, f"{base.teacher_key()}.pt"), arch=base.teacher.arch,
                          input_shape=data.info.input_shape,
                          num_classes=data.info.num_classes, what="teacher")

    results = {}
    for augment in (False, True):
        config = base.replace(augment=augment)
        book = [textbook(teacher, config, data, args.epochs, augment) for _ in range(args.repeats)]
        ours = [engine(config, cache) for _ in range(args.repeats)]
        key = "augmented" if augment else "plain"
        # the first augmented kdcore run also builds the teacher's view table (then cached): "cold"
        results[key] = {"textbook_samples_per_s": statistics.median(book), "kdcore_samples_per_s": statistics.median(ours),
                        "kdcore_first_run_samples_per_s": ours[0]}
        results[key]["speedup"] = results[key]["kdcore_samples_per_s"] / results[key]["textbook_samples_per_s"]

    flops = student_flops_per_sample(base, data)
    peak = matmul_flops_per_s()
    floor = results["plain"]["kdcore_samples_per_s"] * flops / peak
    out = {
        "speedup": results["plain"]["speedup"],
        "speedup_augmented": results["augmented"]["speedup"],
        **{f"{k}_{m}": v for k, r in results.items() for m, v in r.items() if m != "speedup"},
        "student_flops_per_sample": flops,
        "matmul_gflops": peak / 1e9,
        "compute_floor_fraction": floor,
        "machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "setup": f"{base.dataset} {base.teacher.arch}->{base.student.arch} batch {base.batch_size}, "
                 f"{args.epochs} epochs x {args.repeats} repeats (median)",
    }
    print(f"{'':12}{'textbook':>14}{'kdcore':>14}{'speedup':>10}")
    for key, r in results.items():
        print(f"{key:12}{r['textbook_samples_per_s']:>12,.0f}/s{r['kdcore_samples_per_s']:>12,.0f}/s{r['speedup']:>9.1f}x"
              f"   (kdcore's first run: {r['kdcore_first_run_samples_per_s']:,.0f}/s)")
    print(f"student: {flops / 1e3:.0f} kFLOP/sample (fwd+bwd); matmul rate {peak / 1e9:.1f} GFLOP/s; "
          f"engine uses {100 * floor:.1f}% of it")
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
