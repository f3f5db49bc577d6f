"""Submit → first metric on SQLite and on PostgreSQL: how long a user waits, from Start, for a run's first
point in the store (the first point of its live chart).

    python bench/first_metric.py [--repeats 3] [--ray] [--postgres URL] [--json]

A digits run (1 epoch, its teacher already cached, no baseline) is submitted through the runner and timed
from the submit call to its first metric row in the store, on each backend, in each way a run starts:
- cold: a new worker process, which imports torch and loads its data (what `kdcore submit` pays);
- spare: the spare worker that the app warms while the New run form is open (`Runner.warm_spare`), given
  SPARE_WARM_S to import before Start is pressed;
- ray (with --ray): a slot of a local Ray cluster of 2 CPUs on 127.0.0.1 (`kdcore.ray_slots`), warmed by an
  earlier run (and, apart, the first run, which starts the first slot).
The backends alternate within each repeat, so both see the same load; the table gives medians. PostgreSQL is
a throwaway server started from the installed binaries (as the tests do), unless --postgres names one.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

from kdcore.config import RunConfig
from kdcore.runner import Runner
from kdcore.store import Store

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"dataset": "digits", "epochs": 1, "baseline": False, "teacher": {"epochs": 1}}
SPARE_WARM_S = 15.0  # the New run form open this long before Start: the spare has imported torch by then


def first_metric(runner: Runner) -> float:
    """Seconds from submitting a run to its first metric row; the run is then waited for (it must end done)."""
    started = time.perf_counter()
    run_id = runner.submit(RunConfig.from_dict(CONFIG))
    while not runner.store.metrics_since(run_id)[0]:
        runner.reap()  # a worker that failed to start is noticed
        assert runner.store.get_run(run_id).active, runner.store.get_run(run_id).error
        time.sleep(0.005)
    took = time.perf_counter() - started
    record = runner.wait([run_id], poll_s=0.1)[0]
    assert record.status == "done", record.error
    return took


def runner_for(home: Path, db: str, executor: str) -> Runner:
    os.environ.update({"KDCORE_HOME": str(home), "KDCORE_DB": db, "KDCORE_EXECUTOR": executor})
    return Runner(Store(home, db=db))


def spare(runner: Runner) -> float:
    assert runner.warm_spare(), "no spare worker started"
    time.sleep(SPARE_WARM_S)
    return first_metric(runner)  # the environment unchanged: a spare serves only runners of its own


def _test_server():
    spec = importlib.util.spec_from_file_location("postgres_server", ROOT / "tests" / "postgres_server.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.start_for_bench("bench/first_metric.py")


def _local_ray(root: Path) -> None:
    """A local Ray cluster of 2 CPUs on 127.0.0.1, with its own token; RAY_ADDRESS names it."""
    (root / "auth_token").write_text(secrets.token_hex(32))
    os.environ.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
                       "RAY_AUTH_TOKEN_PATH": str(root / "auth_token"), "RAY_USAGE_STATS_ENABLED": "0"})
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="ERROR", log_to_driver=False, configure_logging=False)
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ray", action="store_true", help="also on a slot of a local Ray cluster")
    parser.add_argument("--postgres", default=None, help="a postgresql:// URL (default: a throwaway server)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ["KDCORE_SPARE_WORKER"] = "1"  # spares only where warmed (`spare`); each is used by the next submit
    root = Path(tempfile.mkdtemp(prefix="kd-bench-first-"))
    server = None if args.postgres else _test_server()
    load_before = os.getloadavg()[0]
    ways = ["cold", "spare"] + (["ray"] if args.ray else [])
    new_slot = None
    times: dict[str, dict[str, list[float]]] = {b: {w: [] for w in ways} for b in ("sqlite", "postgresql")}
    try:
        dbs = {"sqlite": "", "postgresql": args.postgres or server.new_database()}
        for backend, db in dbs.items():  # each store's teacher, trained once (not measured)
            first_metric(runner_for(root / backend, db, "local"))
        if args.ray:
            _local_ray(root)
            new_slot = first_metric(runner_for(root / "sqlite", "", "ray"))  # the first run starts the first slot
            first_metric(runner_for(root / "postgresql", dbs["postgresql"], "ray"))  # this store's first on Ray
        for _ in range(args.repeats):
            for way in ways:
                for backend, db in dbs.items():
                    runner = runner_for(root / backend, db, "ray" if way == "ray" else "local")
                    times[backend][way].append(spare(runner) if way == "spare" else first_metric(runner))
                    print(f"{backend} {way}: {times[backend][way][-1]:.2f} s", file=sys.stderr, flush=True)
    finally:
        if server is not None:
            server.stop()
    medians = {b: {w: round(statistics.median(v), 2) for w, v in ways_.items()} for b, ways_ in times.items()}
    load = [round(load_before, 1), round(os.getloadavg()[0], 1)]
    print(f"submit → first metric, median of {args.repeats} (s)")
    print(f"{'':8}{'SQLite':>10}{'PostgreSQL':>12}")
    for way in ways:
        print(f"{way:8}{medians['sqlite'][way]:>10.2f}{medians['postgresql'][way]:>12.2f}")
    if args.ray:
        print(f"ray, the first run (a new slot: its actor, its fork server's imports): {new_slot:.2f} s")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; load average {load[0]} before, {load[1]} after")
    if args.json:
        print(json.dumps({"medians_s": medians, "all_s": times, "ray_new_slot_s": new_slot,
                          "repeats": args.repeats, "load_average": load,
                          "cpu_count": os.cpu_count()}))


if __name__ == "__main__":
    main()
