"""What the run store and the worker cost: logging overhead and submit-to-first-metric latency.

    python bench/overhead.py [--repeats 3] [--json]

1. The same run (default preset, teacher cached, baseline off) in this process with no callbacks
   and with the store callback that workers use; the ratio of their wall times is the logging
   overhead (median of the repeats, interleaved).
2. The same run submitted as a background run: time from `submit()` returning to the first metric
   row in the store (process start, imports, data, teacher from cache, soft labels, first steps),
   and the worker's own wall time against the headless one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

from kdcore.config import RunConfig
from kdcore.runner import Runner
from kdcore.store import Store
from kdcore.trainer import run_pipeline
from kdcore.worker import StoreCallback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="kd-overhead-")
    os.environ["KDCORE_HOME"] = home
    os.environ["KDCORE_MAX_RUNS"] = "1"
    store = Store(home)
    config = RunConfig().replace(baseline=False)
    run_pipeline(config, [], teacher_cache=store.teacher_dir())  # trains and caches the teacher

    bare, logged = [], []
    for _ in range(args.repeats):
        bare.append(run_pipeline(config, [], teacher_cache=store.teacher_dir())["wall_s"])
        run_id = store.create_run(config.to_dict(), status="running", pid=os.getpid())
        logged.append(run_pipeline(config, [StoreCallback(store, run_id)], teacher_cache=store.teacher_dir(),
                                   artifacts=store.run_dir(run_id))["wall_s"])
        store.finish(run_id, "done")
    rows = store.metrics_since(run_id)[0]

    runner = Runner(store)
    first_metric, worker_wall = [], []
    for _ in range(args.repeats):
        run_id = runner.submit(config)
        submitted = time.perf_counter()
        while not store.metrics_since(run_id)[0]:
            time.sleep(0.005)
        first_metric.append(time.perf_counter() - submitted)
        record = runner.wait([run_id], poll_s=0.1)[0]
        worker_wall.append(record.summary["wall_s"])

    out = {
        "logging_overhead": statistics.median(logged) / statistics.median(bare) - 1,
        "headless_s": statistics.median(bare),
        "with_store_callback_s": statistics.median(logged),
        "worker_wall_s": statistics.median(worker_wall),
        "worker_vs_headless": statistics.median(worker_wall) / statistics.median(bare),
        "submit_to_first_metric_s": statistics.median(first_metric),
        "metric_rows_per_run": len(rows),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "setup": "mnist-5k default preset, teacher cached, baseline off, median of "
                 f"{args.repeats}",
    }
    print(f"headless {out['headless_s']:.2f} s, with the store callback {out['with_store_callback_s']:.2f} s "
          f"(overhead {100 * out['logging_overhead']:+.1f}%, {len(rows)} metric rows); in a worker "
          f"{out['worker_wall_s']:.2f} s; submit → first metric {out['submit_to_first_metric_s']:.2f} s")
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
