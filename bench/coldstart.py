"""Cold start: a new user presses Start on the untouched New run form of a fresh store.

    python bench/coldstart.py [--repeats 3] [--json]

Each repeat makes a fresh store (a new `KDCORE_HOME`, no cached teacher), opens the New run page as
the app does (which warms a spare worker: `Runner.warm_spare`), waits `--think-s` seconds (the user
reading the form), builds the config of the untouched form (`app.form.defaults()`, validated as the
page does) and submits it through the runner as the app's Start button does. `--think-s 0` is a click
at once; `KDCORE_SPARE_WORKER=0` measures without spare workers (every run starts its own process).
It measures submit → first student metric in the store (what the Live page's loss chart needs to draw
its first point) and submit → run done (student and baseline finished). The targets (issue 12):
first student point ≤ 4 s, done ≤ 12 s on 2 cores. `--set key=value` changes the config (e.g.
`--set teacher.bundled=false` for the cost of training the teacher).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

from app import form
from kdcore.config import RunConfig, apply_overrides
from kdcore.runner import Runner
from kdcore.store import Store

POLL_S = 0.01
TIMEOUT_S = 600


def one_cold_start(config: RunConfig, think_s: float) -> dict:
    home = tempfile.mkdtemp(prefix="kd-coldstart-")
    os.environ["KDCORE_HOME"] = home  # the worker inherits it, as it inherits the app's
    store = Store(home)
    runner = Runner(store)
    runner.warm_spare()  # the New run page opens
    time.sleep(think_s)
    submitted = time.perf_counter()
    run_id = runner.submit(config)
    first_student = None
    cursor = 0
    deadline = submitted + TIMEOUT_S
    while time.perf_counter() < deadline:
        rows, cursor = store.metrics_since(run_id, cursor)
        if first_student is None and any(row[1] == "student" for row in rows):
            first_student = time.perf_counter() - submitted
        record = store.get_run(run_id)
        if not record.active:
            break
        time.sleep(POLL_S)
    done = time.perf_counter() - submitted
    summary = record.summary or {}
    return {"run_id": run_id, "status": record.status, "submit_to_first_student_s": first_student,
            "submit_to_done_s": done, "worker_wall_s": summary.get("wall_s"),
            "teacher_source": summary.get("teacher_source"), "student_test_acc": summary.get("student_test_acc"),
            "baseline_test_acc": summary.get("baseline_test_acc"), "error": record.error}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--think-s", type=float, default=5.0, help="seconds between opening New run and Start")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("KDCORE_MAX_RUNS", "1")
    load_before = os.getloadavg()[0]  # other work on the machine slows every number here
    values = form.defaults()
    config, errors = form.validate(values)  # what the untouched form's Start submits
    assert config is not None, errors
    if args.overrides:
        config = RunConfig.from_dict(apply_overrides(config.to_dict(), args.overrides))
    runs = [one_cold_start(config, args.think_s) for _ in range(args.repeats)]
    print(f"{'run':<13} {'status':<7} {'first student s':>15} {'done s':>7} {'worker s':>9}  teacher")
    for r in runs:
        print(f"{r['run_id']:<13} {r['status']:<7} {r['submit_to_first_student_s'] or float('nan'):>15.2f} "
              f"{r['submit_to_done_s']:>7.2f} {r['worker_wall_s'] or float('nan'):>9.2f}  {r['teacher_source']}")
    median = {key: statistics.median(r[key] for r in runs if r[key] is not None)
              for key in ("submit_to_first_student_s", "submit_to_done_s", "worker_wall_s")}
    print(f"median: first student point {median['submit_to_first_student_s']:.2f} s, "
          f"done {median['submit_to_done_s']:.2f} s (load average {load_before:.1f} before; other work stretches both)")
    if args.json:
        print(json.dumps({"runs": runs, "median": median, "config": config.to_dict(), "cpus": os.cpu_count(),
                          "affinity": len(os.sched_getaffinity(0)), "machine": platform.machine(),
                          "load_before": load_before, "think_s": args.think_s,
                          "spare_workers": os.environ.get("KDCORE_SPARE_WORKER", "1") != "0", "load_after": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
