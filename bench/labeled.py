"""The labelled-fraction experiment: how much of the teacher's lead does distillation recover when only a
few training labels are left?

    python bench/labeled.py [--fraction 0.1] [--seeds 0 1 2] [--set key=value ...] [--json]

For each seed, one run of the preset (`mnist-5k`, `cnn` teacher → `mlp-small` student) with
`labeled_fraction` set: the teacher is trained on every label (the bundled one, or trained once into
a temporary cache); the baseline is the student alone on the labelled fraction (a stratified 10%:
360 images), for as many optimizer steps as the distilled student; the distilled student learns
from those labels plus the teacher's soft labels on the whole training split. Prints per-seed test
accuracies and the gap closed = (student − baseline) / (teacher − baseline), from the means too.
"""

from __future__ import annotations

import argparse

from preset import report, run_seeds  # bench/preset.py: the same per-seed runs and table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows, config = run_seeds([*args.overrides, f"labeled_fraction={args.fraction}"], args.seeds, "kd-labeled-",
                             extra=("labeled_examples", "unlabeled_examples", "teacher_source"))
    print(f"{config.dataset}, labeled_fraction {args.fraction:g}: {rows[0]['labeled_examples']} labelled, "
          f"{rows[0]['unlabeled_examples']} unlabelled training images")
    report(rows, config, args.json)


if __name__ == "__main__":
    main()
