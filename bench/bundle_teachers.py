"""Train the teachers KD Lab ships (`kdcore/teachers/`), so that a first run distils at once.

    python bench/bundle_teachers.py [--datasets mnist-5k digits] [--out kdcore/teachers] [--json]

For each dataset, the default run's teacher (`RunConfig(dataset=...)`: the preset's `cnn`, 8 epochs)
is trained on the CPU exactly as a run would train it, with `teacher.bundled=false`, and written to
`<out>/<teacher_key>.pt` with its logits on the training, validation and test splits beside it. The file
records the command, the torch version, the thread count and the teacher's validation and test
accuracy, which `tests/test_bundled_teachers.py` checks against the file's weights (and, for
`digits`, retrains and compares the weights).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from kdcore import checkpoints
from kdcore.callbacks import Callback
from kdcore.config import RunConfig
from kdcore.trainer import prepare

DATASETS = ("mnist-5k", "digits")  # the offline image sets whose default teacher is the preset's cnn
THREADS = 2  # recorded: a different thread count may round the convolutions' gradients differently
COMMAND = "python bench/bundle_teachers.py"


def bundle(dataset: str, out: Path) -> dict:
    """Train `dataset`'s default teacher into `out`; returns what was recorded."""
    config = RunConfig(dataset=dataset, device="cpu").replace(**{"teacher.bundled": False})
    key = config.teacher_key()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kd-bundle-") as cache:
        prep = prepare(config, Callback(), cache)  # trains the teacher, then computes its logits into the cache
        record = {"dataset": dataset, "teacher_key": key, "arch": config.teacher.arch,
                  "val_acc": prep.teacher.val_acc, "test_acc": prep.teacher.test_acc,
                  "command": f"{COMMAND} --datasets {dataset}", "torch": str(torch.__version__),
                  "threads": torch.get_num_threads(),
                  "machine": platform.machine(), "train_s": round(time.perf_counter() - started, 1)}
        teacher = checkpoints.load(Path(cache) / f"{key}.pt", "trained teacher")
        checkpoints.save_atomic({**teacher, "bundled": record}, out / f"{key}.pt")
        (out / f"{key}.pt").chmod(0o644)  # package data: readable by whoever installs it
        for tensor in sorted(Path(cache).glob(f"{key}.*.pt")):  # its train, validation and test logits
            shutil.copyfile(tensor, out / tensor.name)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "kdcore" / "teachers"))
    parser.add_argument("--threads", type=int, default=THREADS, help=argparse.SUPPRESS)  # to test the recorded count
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = [bundle(dataset, out) for dataset in args.datasets]
    print(f"{'dataset':<10} {'teacher key':<17} {'val acc':>8} {'test acc':>8} {'train s':>8}")
    for r in records:
        print(f"{r['dataset']:<10} {r['teacher_key']:<17} {100 * r['val_acc']:>7.2f}% {100 * r['test_acc']:>7.2f}% "
              f"{r['train_s']:>8.1f}")
    if args.json:
        print(json.dumps({"teachers": records, "out": str(out), "python": sys.version.split()[0]}))


if __name__ == "__main__":
    main()
