"""Text distillation speed: kdcore's student step against the textbook loop, and the teacher's fine-tuning step.

    python bench/text.py [--student bilstm] [--steps 20] [--batch 64] [--subset N] [--json]

On rotten-tomatoes with the minilm-l6 teacher (all-MiniLM-L6-v2, pretrained; its trained head does not change
what a step costs):
  textbook  every step runs the teacher on the batch (eval, no_grad), then the student's forward, KD loss,
            backward and Adam step: the loop of most KD tutorials;
  kdcore    the teacher's logits on the whole training split are computed once (length-sorted, trimmed batches)
            and indexed per step: the student's forward, KD loss, backward and step only.
Both draw the same length-bucketed batches (`kdcore.train.bucketed`) and trim them to their longest sentence.
Prints the median step times, their ratio, the one-off cost of the teacher's logits (and in how many textbook
steps it is paid back), and the median time of one fine-tuning step of the teacher (forward + backward + step
at batch 64), with what an epoch of fine-tuning costs at that rate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from kdcore.config import RunConfig
from kdcore.data import load_for
from kdcore.evaluation import predict
from kdcore.losses import kd_loss
from kdcore.models import build_model
from kdcore.train import bucketed, make_optimizer


def timed(step, count: int) -> list[float]:
    times = []
    for i in range(count):
        started = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="bilstm")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--teacher-steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--subset", type=int, default=0,
                        help="time on the first N training sentences only (the logits' one-off cost scales with N)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    config = RunConfig.from_dict({"dataset": "rotten-tomatoes", "teacher": {"arch": "minilm-l6"},
                                  "student": {"arch": args.student}})
    data = load_for(config)
    epoch_steps = len(data.train_x) // args.batch  # of the whole training split, whatever --subset times
    if args.subset:
        data.train_x, data.train_y = data.train_x[: args.subset], data.train_y[: args.subset]
    shape, classes = data.info.input_shape, data.info.num_classes
    torch.manual_seed(0)
    teacher = build_model("minilm-l6", shape, classes).eval().requires_grad_(False)
    student = build_model(args.student, shape, classes)
    optimizer = make_optimizer(config, student.parameters(), 2e-3)
    lengths = (data.train_x >= 0).sum(dim=1)
    usable = len(data.train_x) // args.batch * args.batch
    generator = torch.Generator().manual_seed(0)
    order = bucketed(torch.randperm(len(data.train_x), generator=generator)[:usable], lengths, args.batch, generator)
    batches = order.view(-1, args.batch)

    def student_step(x, y, teacher_logits):
        logits = student(x)
        loss = 0.5 * torch.nn.functional.cross_entropy(logits, y) + 0.5 * kd_loss(logits, teacher_logits, 4.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def textbook(i):
        idx = batches[i % len(batches)]
        x = data.train_x[idx]
        with torch.no_grad():
            teacher_logits = teacher(x)
        student_step(x, data.train_y[idx], teacher_logits)

    started = time.perf_counter()
    cached = predict(teacher, data.train_x)  # once per teacher and data: the engine's soft labels
    precompute_s = time.perf_counter() - started

    def engine(i):
        idx = batches[i % len(batches)]
        student_step(data.train_x[idx], data.train_y[idx], cached[idx])

    load_before = os.getloadavg()[0]
    timed(engine, 3)  # warm-up
    engine_s = statistics.median(timed(engine, args.steps))
    textbook_s = statistics.median(timed(textbook, args.steps))
    engine_again_s = statistics.median(timed(engine, args.steps))  # the load may have changed meanwhile

    tuned = build_model("minilm-l6", shape, classes).train()
    groups = tuned.optimizer_groups()
    teacher_optimizer = make_optimizer(config, groups, 3e-3)

    def teacher_step(i):
        idx = batches[i % len(batches)]
        loss = torch.nn.functional.cross_entropy(tuned(data.train_x[idx]), data.train_y[idx])
        teacher_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        teacher_optimizer.step()

    teacher_step(0)
    teacher_s = statistics.median(timed(teacher_step, args.teacher_steps))
    engine_s = min(engine_s, engine_again_s)
    result = {
        "student": args.student, "batch": args.batch, "steps": args.steps, "sentences": len(data.train_x),
        "engine_step_s": engine_s, "textbook_step_s": textbook_s, "speedup": textbook_s / engine_s,
        "teacher_logits_once_s": precompute_s, "paid_back_after_steps": precompute_s / max(textbook_s - engine_s, 1e-9),
        "teacher_finetune_step_s": teacher_s, "teacher_epoch_s": teacher_s * epoch_steps,
        "load_average": [load_before, os.getloadavg()[0]], "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
    }
    print(f"rotten-tomatoes, minilm-l6 → {args.student}, batch {args.batch}, {epoch_steps} steps per epoch")
    print(f"student step: kdcore {1000 * engine_s:.1f} ms, textbook {1000 * textbook_s:.1f} ms: "
          f"{result['speedup']:.1f}x")
    print(f"teacher logits on {len(data.train_x)} training sentences, once: {precompute_s:.1f} s "
          f"(= {result['paid_back_after_steps']:.0f} textbook steps)")
    print(f"teacher fine-tuning: {teacher_s:.2f} s per step, {result['teacher_epoch_s'] / 60:.1f} min per epoch; "
          f"load average {load_before:.1f} → {os.getloadavg()[0]:.1f}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
