"""What live experiment tracking costs a run, and how long `sync` takes to export one.

    python bench/tracking.py [--repeats 3] [--json]

1. The default preset (teacher cached, baseline off) trained in this process with the store callback
   the worker uses, and with it plus live MLflow (SQLite) and TensorBoard tracking callbacks
   (`kdcore.tracking`), interleaved; the ratios of the median wall and CPU times are the tracking overhead
   (on a shared machine the CPU time of this process is the steadier of the two).
   Opening the trackers (importing mlflow, creating the MLflow run) happens before training and is
   reported apart, as is closing them (summary, student.pt).
2. `export_run` of the last such run into the MLflow database (replacing its record) and a new TensorBoard
   folder: what `sync` does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from kdcore.config import RunConfig
from kdcore.store import Store
from kdcore.tracking import TRACKERS, callbacks_for, export_run
from kdcore.trainer import run_pipeline
from kdcore.worker import StoreCallback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kd-tracking-"))
    store = Store(root / "home")
    config = RunConfig().replace(baseline=False)
    tracked = config.replace(**{"tracking.mlflow": f"sqlite:///{root}/mlflow.db", "tracking.tensorboard": str(root / "tb")})
    run_pipeline(config, [], teacher_cache=store.teacher_dir())  # trains and caches the teacher
    callbacks_for(tracked, "run-00000000", log=print, checkpoint=root / "none")[0].finish("done", None)  # imports, tables

    plain, logged, opened, closed, plain_cpu, logged_cpu = [], [], [], [], [], []
    for _ in range(args.repeats):
        run_id = store.create_run(config.to_dict(), status="running", pid=os.getpid())
        cpu = time.process_time()
        plain.append(run_pipeline(config, [StoreCallback(store, run_id)], teacher_cache=store.teacher_dir(),
                                  artifacts=store.run_dir(run_id))["wall_s"])
        plain_cpu.append(time.process_time() - cpu)
        store.finish(run_id, "done")
        run_id = store.create_run(tracked.to_dict(), status="running", pid=os.getpid())
        started = time.perf_counter()
        trackers = callbacks_for(tracked, run_id, log=print, checkpoint=store.student_checkpoint(run_id))
        opened.append(time.perf_counter() - started)
        cpu = time.process_time()
        summary = run_pipeline(tracked, [StoreCallback(store, run_id), *trackers], teacher_cache=store.teacher_dir(),
                               artifacts=store.run_dir(run_id))
        logged_cpu.append(time.process_time() - cpu)
        logged.append(summary["wall_s"])
        started = time.perf_counter()
        for tracker in trackers:
            tracker.finish("done", summary)
        closed.append(time.perf_counter() - started)
        assert not any(t.failed for t in trackers)
        store.finish(run_id, "done", summary={"run_id": run_id, **summary})
    points = len(store.metrics_since(run_id)[0])

    exports = []
    for i in range(args.repeats):
        started = time.perf_counter()
        for name, tracker in TRACKERS.items():
            target = f"sqlite:///{root}/mlflow.db" if name == "mlflow" else str(root / f"export-tb-{i}")
            export_run(store, store.get_run(run_id), tracker(target))
        exports.append(time.perf_counter() - started)

    result = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "points_per_run": points,
        "run_s_store_only": round(statistics.median(plain), 3),
        "run_s_with_trackers": round(statistics.median(logged), 3),
        "overhead": round(statistics.median(logged) / statistics.median(plain) - 1, 4),
        "cpu_s_store_only": round(statistics.median(plain_cpu), 3),  # this process's CPU time: what load hides less
        "cpu_s_with_trackers": round(statistics.median(logged_cpu), 3),
        "cpu_overhead": round(statistics.median(logged_cpu) / statistics.median(plain_cpu) - 1, 4),
        "open_trackers_s": round(statistics.median(opened), 3),
        "close_trackers_s": round(statistics.median(closed), 3),
        "sync_s": round(statistics.median(exports), 3),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:24} {value}")


if __name__ == "__main__":
    main()
