"""Text distillation quality over seeds: the MiniLM teacher on rotten-tomatoes, each student alone, with KD, with KD
and the augmentation transfer set, and DistilBERT's loss for the tiny Transformer.

    python bench/text_quality.py --home /tmp/text-bench [--rows bilstm,bilstm+augment:1] [--seeds 0 1 2] [--json]

Each row is one `python -m kdcore run` per seed in the run store `--home` (KDCORE_HOME), one after another;
the fine-tuned teacher is trained by the first run and reused by every other (cached by its settings, with
its logits, and the augmented copies' logits, beside it). A row `S` is KD (the engine's default method and
weights) with its baseline (the same student, seed and budget on the labels alone); `S+augment:N` is KD with
N masked or cut copies of every training sentence that only the teacher labels (no baseline: it is row S's);
`S+distilbert` is DistilBERT's loss, `S+logit_mse` logit matching; `S+T:x` is KD at temperature x, `S+ce:x`
KD with weights.ce x and weights.kd 1 − x; `S+E:n` trains n epochs (with its own baseline); variants combine
(`S+E:20+augment:4`).
Finished runs are appended to `<home>/text_quality.jsonl`, and a row and seed found there is not run again,
so the script can be stopped and started (with every row done, it only prints). Prints a markdown table of the
rows: test accuracy per seed, the mean, the share of the teacher-to-alone gap closed, the mean validation
accuracy (by which to choose a setting), and the seed-noise verdict against the student alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

TEACHER = ["--set", "dataset=rotten-tomatoes", "--set", "teacher.arch=minilm-l6"]
EPOCHS = {"bag-of-embeddings": 10, "bilstm": 4, "tiny-transformer": 3}  # validation accuracy levels off by then (BENCHMARKS.md)
ROWS = ["bag-of-embeddings", "bag-of-embeddings+T:1", "bag-of-embeddings+augment:4", "bilstm", "bilstm+T:1",
        "bilstm+augment:4", "tiny-transformer", "tiny-transformer+distilbert"]  # BENCHMARKS.md's main rows


def row_args(row: str, teacher_epochs: int = 1) -> list[str]:
    """The run's settings for a row: its student, then each `+variant` (augment:N, distilbert, logit_mse, T:x,
    ce:x, E:n)."""
    student, *variants = row.split("+")
    epochs = next((int(v[2:]) for v in variants if v.startswith("E:")), EPOCHS[student])
    args = TEACHER + ["--set", f"teacher.epochs={teacher_epochs}", "--set", f"student.arch={student}",
                      "--set", f"epochs={epochs}"]
    for variant in variants:
        if variant.startswith("augment:"):
            args += ["--set", f"transfer={variant}"]
        elif variant in ("distilbert", "logit_mse"):
            args += ["--set", f"method={variant}"]
        elif variant.startswith("T:"):
            args += ["--set", f"temperature={float(variant[2:])}"]
        elif variant.startswith("ce:"):
            args += ["--set", f"weights.ce={float(variant[3:])}", "--set", f"weights.kd={1 - float(variant[3:])}"]
        elif not variant.startswith("E:"):
            raise SystemExit(f"unknown row variant {variant!r} in {row!r} (augment:N, distilbert, logit_mse, T:x, ce:x or E:n)")
    return args + ([] if row == base_row(row) else ["--set", "baseline=false"])


def base_row(row: str) -> str:
    """The row whose baseline is this row's "alone": the same student and epochs (`S` or `S+E:n`)."""
    student, *variants = row.split("+")
    return "+".join([student, *(v for v in variants if v.startswith("E:"))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", required=True)
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--teacher-epochs", type=int, default=1, help="the teacher's fine-tuning epochs (one "
                        "teacher per --home: its rows are recorded there)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    home = Path(args.home)
    home.mkdir(parents=True, exist_ok=True)
    log = home / "text_quality.jsonl"
    done = {(r["row"], r["seed"]): r for r in map(json.loads, log.read_text().splitlines())} if log.exists() else {}
    env = {**os.environ, "KDCORE_HOME": str(home)}
    for row in args.rows.split(","):
        for seed in args.seeds:
            if (row, seed) in done:
                continue
            load = os.getloadavg()[0]
            command = ["run", *row_args(row, args.teacher_epochs), "--set", f"seed={seed}", "--quiet", "--json"]
            out = subprocess.run([sys.executable, "-m", "kdcore", *command], env=env, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{row} seed {seed}: failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                continue
            summary = json.loads(out.stdout.strip().splitlines()[-1])
            record = {"row": row, "seed": seed, "load_before": load, "load_after": os.getloadavg()[0],
                      **{key: summary.get(key) for key in ("run_id", "teacher_test_acc", "student_test_acc",
                                                          "baseline_test_acc", "student_val_acc", "baseline_val_acc",
                                                          "best_epoch", "wall_s", "student_params",
                                                          "transfer_examples")}}
            done[(row, seed)] = record
            with open(log, "a") as handle:
                handle.write(json.dumps(record) + "\n")
            print(f"{row} seed {seed}: student {record['student_test_acc']:.4f}"
                  + (f", alone {record['baseline_test_acc']:.4f}" if record["baseline_test_acc"] is not None else "")
                  + f" ({record['wall_s'] / 60:.1f} min, load {load:.1f})", flush=True)
    print(table(done, args.seeds, args.rows.split(",")))
    if args.json:
        print(json.dumps(list(done.values())))


def table(done: dict, seeds: list[int], rows: list[str]) -> str:
    """Markdown: a line per row of `rows` (after its "alone" line where it has its own baseline): test accuracy
    (%) per seed, the mean, the gap closed, the mean validation accuracy (the number to choose a setting by,
    such as a temperature), and the engine's seed-noise verdict on the row against the student alone (paired
    by seed, `kdcore.verdict`)."""
    from kdcore.verdict import seed_verdict

    lines = [f"| | {' | '.join(f'seed {s}' for s in seeds)} | mean | gap closed | val mean | against alone |",
             "|---" * (len(seeds) + 5) + "|"]
    teacher = [done[k]["teacher_test_acc"] for k in done if done[k]["teacher_test_acc"] is not None]
    if teacher:
        lines.append(f"| teacher minilm-l6 | {' | '.join(f'{100 * teacher[0]:.2f}' for _ in seeds)} | "
                     f"{100 * teacher[0]:.2f} | | | |")
    for row in rows:
        base = base_row(row)
        alone = {s: done[(base, s)]["baseline_test_acc"] for s in seeds if (base, s) in done}
        if row == base and alone:
            alone_vals = [done[(base, s)].get("baseline_val_acc") for s in seeds if (base, s) in done]
            lines.append(_line(row_label(row).replace(" KD", " alone"), list(alone.values()), seeds, None, None,
                               statistics.mean(alone_vals) if None not in alone_vals else None, ""))
        accs = [done[(row, s)]["student_test_acc"] if (row, s) in done else None for s in seeds]
        vals = [done[(row, s)]["student_val_acc"] for s in seeds if (row, s) in done]
        verdict = seed_verdict(dict(zip(seeds, accs)), alone).text if alone else ""
        lines.append(_line(row_label(row), accs, seeds, statistics.mean(alone.values()) if alone else None,
                           teacher[0] if teacher else None, statistics.mean(vals) if vals else None, verdict))
    return "\n".join(lines)


def row_label(row: str) -> str:
    """ "bilstm+augment:4" → "bilstm KD + `transfer=augment:4`"; "bilstm+T:2" → "bilstm KD (T = 2)"."""
    student, *variants = row.split("+")
    method = ("DistilBERT loss" if "distilbert" in variants
              else "logit MSE (`method=logit_mse`)" if "logit_mse" in variants else "KD")
    settings = [f"T = {v[2:]}" for v in variants if v.startswith("T:")]
    settings += [f"ce {v[3:]} / kd {1 - float(v[3:]):g}" for v in variants if v.startswith("ce:")]
    settings += [f"{v[2:]} epochs" for v in variants if v.startswith("E:")]
    label = f"{student} {method}" + (f" ({', '.join(settings)})" if settings else "")
    return label + "".join(f" + `transfer={v}`" for v in variants if v.startswith("augment:"))


def _line(label: str, accs: list, seeds: list[int], alone: float | None, teacher: float | None,
          val: float | None, verdict: str) -> str:
    cells = [f"{100 * a:.2f}" if a is not None else "–" for a in accs]
    values = [a for a in accs if a is not None]
    mean = statistics.mean(values) if values else None
    closed = ""
    if mean is not None and alone is not None and teacher is not None and teacher > alone:
        closed = f"{100 * (mean - alone) / (teacher - alone):.0f}%"
    return (f"| {label} | {' | '.join(cells)} | {f'{100 * mean:.2f}' if mean is not None else '–'} | {closed} | "
            f"{f'{100 * val:.2f}' if val is not None else ''} | {verdict} |")


if __name__ == "__main__":
    main()
