"""Text distillation speed: kdcore's student step against the textbook loop, the teacher's labelling and fine-tuning.

    python bench/text.py [--student bilstm] [--steps 20] [--rounds 3] [--batch 64] [--subset N] [--hf] [--json]

On rotten-tomatoes with the minilm-l6 teacher (all-MiniLM-L6-v2, pretrained; its trained head does not change
what a step costs):
  textbook  every step runs the teacher on the batch (eval, no_grad), then the student's forward, KD loss,
            backward and Adam step: the loop of most KD tutorials, with the plain student (full token table);
            timed at the process's threads and at one thread, and the faster of the two is the one compared;
  kdcore    the student as the engine trains it: its token table compacted to the ids of the training split
            (`kdcore.text_models.compact_vocabulary`: same weights, same updates), on the threads
            `kdcore.evaluation.cpu_threads_for` gives it, the teacher's logits computed once (length-sorted,
            trimmed batches) and indexed per step.
Both start from the same initial student, draw the same length-bucketed batches (`kdcore.train.bucketed`) and
trim them to their longest sentence. The machine is shared: `--rounds` alternates the two loops so a change of
load hits both. Prints median step times and their ratio, the teacher's labelling rate (sentences per second,
one and two threads; with `--hf`, transformers' BertModel on the same batches beside it), and one fine-tuning
step of the teacher (forward + backward + step at batch 64) with what an epoch of fine-tuning costs.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from kdcore.config import RunConfig
from kdcore.data import load_for
from kdcore.evaluation import cpu_threads_for, predict
from kdcore.losses import kd_loss
from kdcore.models import build_model
from kdcore.text_models import compact_vocabulary, trim
from kdcore.train import bucketed, make_optimizer


def timed(step, count: int) -> list[float]:
    times = []
    for i in range(count):
        started = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - started)
    return times


def with_threads(threads: int, work):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return work()
    finally:
        torch.set_num_threads(previous)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="bilstm")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per loop and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--teacher-steps", type=int, default=3, help="timed fine-tuning steps (0: skip)")
    parser.add_argument("--label", type=int, default=512, help="sentences the teacher labels for its rate")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--subset", type=int, default=0,
                        help="time on the first N training sentences only (the logits' one-off cost scales with N)")
    parser.add_argument("--hf", action="store_true", help="also time transformers' BertModel on the same batches")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    config = RunConfig.from_dict({"dataset": "rotten-tomatoes", "teacher": {"arch": "minilm-l6"},
                                  "student": {"arch": args.student}})
    data = load_for(config)
    epoch_steps = len(data.train_x) // args.batch  # of the whole training split, whatever --subset times
    if args.subset:
        data.train_x, data.train_y = data.train_x[: args.subset], data.train_y[: args.subset]
    shape, classes, cpu = data.info.input_shape, data.info.num_classes, torch.device("cpu")
    torch.manual_seed(0)
    teacher = build_model("minilm-l6", shape, classes).eval().requires_grad_(False)
    plain = build_model(args.student, shape, classes)
    compact = copy.deepcopy(plain)
    kept = compact_vocabulary(compact, data.train_x)
    optimizers = {id(model): make_optimizer(config, model.parameters(), 2e-3) for model in (plain, compact)}
    lengths = (data.train_x >= 0).sum(dim=1)
    usable = len(data.train_x) // args.batch * args.batch
    generator = torch.Generator().manual_seed(0)
    order = bucketed(torch.randperm(len(data.train_x), generator=generator)[:usable], lengths, args.batch, generator)
    batches = order.view(-1, args.batch)

    def student_step(student, x, y, teacher_logits):
        logits = student(x)
        loss = 0.5 * F.cross_entropy(logits, y) + 0.5 * kd_loss(logits, teacher_logits, 4.0)
        optimizer = optimizers[id(student)]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def textbook(i):
        idx = batches[i % len(batches)]
        x = data.train_x[idx]
        with torch.no_grad():
            teacher_logits = teacher(x)
        student_step(plain, x, data.train_y[idx], teacher_logits)

    started = time.perf_counter()
    cached = predict(teacher, data.train_x)  # once per teacher and data: the engine's soft labels
    precompute_s = time.perf_counter() - started

    def engine(i):
        idx = batches[i % len(batches)]
        student_step(compact, data.train_x[idx], data.train_y[idx], cached[idx])

    def engine_steps(count: int) -> list[float]:
        with cpu_threads_for(compact, args.batch, cpu):
            return timed(engine, count)

    threads = torch.get_num_threads()
    engine_threads = with_threads(threads, lambda: _threads_inside(compact, args.batch, cpu))
    load_before = os.getloadavg()[0]
    engine_steps(3)  # warm-up
    engine_s, textbook_s = [], {threads: [], 1: []}
    for _ in range(args.rounds):
        engine_s += engine_steps(args.steps)
        for count in sorted(set(textbook_s), reverse=True):
            textbook_s[count] += with_threads(count, lambda: timed(textbook, max(args.steps // 4, 2)))
    engine_median = statistics.median(engine_s)
    textbook_median = {count: statistics.median(times) for count, times in textbook_s.items()}
    best_threads = min(textbook_median, key=textbook_median.get)
    load_after_steps = os.getloadavg()[0]

    label_x = data.train_x[: args.label]
    tokens = int((label_x >= 0).sum())
    rates = {}
    for count in sorted({threads, 1}, reverse=True):
        seconds = with_threads(count, lambda: _seconds(lambda: predict(teacher, label_x)))
        rates[f"kdcore_{count}_threads"] = len(label_x) / seconds
    if args.hf:
        rates.update(_hf_rates(teacher, label_x, threads))

    teacher_s = None
    if args.teacher_steps > 0:
        tuned = build_model("minilm-l6", shape, classes).train()
        teacher_optimizer = make_optimizer(config, tuned.optimizer_groups(), 3e-3)

        def teacher_step(i):
            idx = batches[i % len(batches)]
            loss = F.cross_entropy(tuned(data.train_x[idx]), data.train_y[idx])
            teacher_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            teacher_optimizer.step()

        teacher_step(0)
        teacher_s = statistics.median(timed(teacher_step, args.teacher_steps))
    result = {
        "student": args.student, "batch": args.batch, "steps": len(engine_s), "sentences": len(data.train_x),
        "kept_token_rows": kept, "engine_threads": engine_threads, "engine_step_s": engine_median,
        "textbook_step_s": textbook_median[best_threads], "textbook_threads": best_threads,
        "textbook_step_s_by_threads": textbook_median, "speedup": textbook_median[best_threads] / engine_median,
        "teacher_logits_once_s": precompute_s,
        "paid_back_after_steps": precompute_s / max(textbook_median[best_threads] - engine_median, 1e-9),
        "teacher_sentences_per_s": rates, "label_tokens_per_sentence": tokens / len(label_x),
        "teacher_finetune_step_s": teacher_s, "teacher_epoch_s": teacher_s * epoch_steps if teacher_s else None,
        "load_average": [load_before, load_after_steps, os.getloadavg()[0]], "threads": threads,
        "machine": f"{platform.machine()} {os.cpu_count()} cores", "torch": torch.__version__,
    }
    print(f"rotten-tomatoes, minilm-l6 → {args.student}, batch {args.batch}, {epoch_steps} steps per epoch; "
          f"{kept} token rows trained")
    print(f"student step: kdcore {1000 * engine_median:.1f} ms on {engine_threads} thread(s), textbook "
          + ", ".join(f"{1000 * s:.1f} ms on {n} thread(s)" for n, s in textbook_median.items())
          + f": {result['speedup']:.1f}x")
    print(f"teacher logits on {len(data.train_x)} training sentences, once: {precompute_s:.1f} s "
          f"(= {result['paid_back_after_steps']:.0f} textbook steps)")
    print("teacher labelling, sentences/s (" + f"{tokens / len(label_x):.1f} tokens each): "
          + ", ".join(f"{name} {rate:.0f}" for name, rate in rates.items()))
    if teacher_s:
        print(f"teacher fine-tuning: {teacher_s:.2f} s per step, {result['teacher_epoch_s'] / 60:.1f} min per epoch")
    print(f"load average {load_before:.1f} → {os.getloadavg()[0]:.1f}")
    if args.json:
        print(json.dumps(result))


def _threads_inside(model, batch: int, device: torch.device) -> int:
    with cpu_threads_for(model, batch, device):
        return torch.get_num_threads()


def _seconds(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def _hf_rates(teacher, x, threads: int) -> dict[str, float]:
    """transformers' BertModel with the teacher's encoder weights on the same length-sorted batches as `predict`."""
    from transformers import BertModel

    from kdcore.data.text import minilm_folder

    model = BertModel.from_pretrained(str(minilm_folder())).eval()
    order = torch.argsort((x >= 0).sum(dim=1), stable=True)
    batches = [trim(chunk) for chunk in x[order].split(256)]

    def run():
        with torch.inference_mode():
            for ids, mask in batches:
                model(input_ids=ids, attention_mask=mask.long())

    return {f"transformers_{count}_threads": len(x) / with_threads(count, lambda: _seconds(run))
            for count in sorted({threads, 1}, reverse=True)}


if __name__ == "__main__":
    main()
