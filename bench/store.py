"""The run store on SQLite and on PostgreSQL: concurrent writers, live reads, claims, and where each saturates.

    python bench/store.py [--postgres URL] [--json]

Without --postgres a throwaway server is started from the installed binaries, as the tests do
(tests/postgres_server.py: 127.0.0.1 only, durability off, so commits cost what the store's SQL
costs, not what the disk costs; SQLite runs with its own settings, WAL and synchronous=NORMAL).
1. Writers: W = 1 and 8 processes, each writing its own run's metrics as fast as it can in batches of
   50 rows (one `add_records` transaction each); rows/s, every row read back and counted.
2. Live reads: `metrics_since(cursor)` as a live page polls it, on a run of 10,000 rows, 50 new rows
   per poll; polls/s. And `metrics_for` of the 8 runs of (1) at once (the Compare page).
3. Claims: 200 queued runs claimed one by one (`claim_next`, the queue lock held each time); claims/s.
4. Saturation: N = 1 … 64 processes that write as workers do, one flush a second of 200 rows (a fast
   run's step metrics) plus a heartbeat; offered vs written rows/s and the p95 flush latency. The store
   saturates where written falls behind offered or the latency nears the flush period.
5. Submit → first metric: a digits run submitted through the runner to a new worker process (no spare
   worker), to its first metric row in the store.
Timings are medians of one run on a shared machine: compare backends within one run, not across runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from kdcore.store import Store

BATCH = 50
ROWS_PER_WRITER = 10_000
SATURATION_N = (1, 2, 4, 8, 16, 32, 64)
FLUSH_ROWS, FLUSH_PERIOD_S, SATURATION_S = 200, 1.0, 6.0


def _write(home: str, db: str, run_id: str, start, done) -> None:
    store = Store(home, db=db)
    start.wait()
    began = time.perf_counter()
    for batch in range(ROWS_PER_WRITER // BATCH):
        store.add_records(run_id, metrics=[("student", 1, batch * BATCH + i, "loss", 0.5, 0.0) for i in range(BATCH)])
    done.put(time.perf_counter() - began)


def _paced(home: str, db: str, run_id: str, start, done) -> None:
    """A worker's write pattern: a flush of FLUSH_ROWS rows every FLUSH_PERIOD_S, for SATURATION_S."""
    store = Store(home, db=db)
    start.wait()
    began = time.perf_counter()
    latencies, step = [], 0
    while (now := time.perf_counter()) - began < SATURATION_S:
        store.add_records(run_id, metrics=[("student", 1, step + i, "loss", 0.5, 0.0) for i in range(FLUSH_ROWS)],
                          progress={"step": step})
        latencies.append(time.perf_counter() - now)
        step += FLUSH_ROWS
        time.sleep(max(0.0, FLUSH_PERIOD_S - (time.perf_counter() - now)))
    done.put((step, time.perf_counter() - began, latencies))


def _processes(target, home: str, db: str, run_ids: list[str]) -> list:
    ctx = multiprocessing.get_context("spawn")
    start, done = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=target, args=(home, db, run_id, start, done)) for run_id in run_ids]
    for proc in procs:
        proc.start()
    time.sleep(1.0 + 0.05 * len(procs))  # every process has opened its store
    start.set()
    results = [done.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join()
    return results


def writers(home: str, db: str, count: int) -> dict:
    store = Store(home, db=db)
    run_ids = [store.create_run({}) for _ in range(count)]
    walls = _processes(_write, home, db, run_ids)
    written = sum(len(store.metrics_since(run_id)[0]) for run_id in run_ids)
    assert written == count * ROWS_PER_WRITER, (written, count)  # nothing lost, nothing twice
    return {"rows_per_s": written / max(walls), "run_ids": run_ids}


def reads(home: str, db: str, run_ids: list[str]) -> dict:
    store = Store(home, db=db)
    run_id = run_ids[0]
    rows, _ = store.metrics_since(run_id)
    cursor = rows[-BATCH - 1].id  # a page that last read 50 rows ago
    began = time.perf_counter()
    for _ in range(200):
        assert len(store.metrics_since(run_id, cursor)[0]) == BATCH
    polls_per_s = 200 / (time.perf_counter() - began)
    began = time.perf_counter()
    every = store.metrics_for(run_ids)
    return {"polls_per_s": polls_per_s, "compare_rows": len(every), "compare_s": time.perf_counter() - began}


def _settle(store: Store) -> None:
    """Finish the runs earlier parts queued or claimed (no worker trains them), so that the queue and the slots
    hold only what comes next."""
    for record in store.list_runs(status=["queued", "starting", "running"]):
        store.finish(record.id, "done")


def claims(home: str, db: str) -> dict:
    store = Store(home, db=db)
    _settle(store)
    run_ids = [store.create_run({}) for _ in range(200)]
    began = time.perf_counter()
    claimed = [store.claim_next(limit=1000).id for _ in run_ids]
    elapsed = time.perf_counter() - began
    assert sorted(claimed) == sorted(run_ids)
    return {"claims_per_s": len(claimed) / elapsed}


def saturation(home: str, db: str) -> list[dict]:
    store = Store(home, db=db)
    out = []
    for n in SATURATION_N:
        run_ids = [store.create_run({}) for _ in range(n)]
        results = _processes(_paced, home, db, run_ids)
        latencies = sorted(lat for _, _, lats in results for lat in lats)
        written = sum(rows / wall for rows, wall, _ in results)
        out.append({"n": n, "offered_rows_per_s": n * FLUSH_ROWS / FLUSH_PERIOD_S, "written_rows_per_s": written,
                    "flush_p50_ms": 1000 * statistics.median(latencies),
                    "flush_p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))]})
    return out


def first_metric(home: str, db: str) -> dict:
    from kdcore.config import RunConfig
    from kdcore.runner import Runner

    os.environ["KDCORE_SPARE_WORKER"] = "0"  # a cold worker process on both backends
    store = Store(home, db=db)
    _settle(store)
    runner = Runner(store)
    config = RunConfig.from_dict({"dataset": "digits", "epochs": 1, "baseline": False, "teacher": {"epochs": 1}})
    run_id = runner.submit(config)
    submitted = time.perf_counter()
    while not store.metrics_since(run_id)[0]:
        runner.reap()  # a worker that failed to start is noticed
        assert store.get_run(run_id).active, store.get_run(run_id).error
        time.sleep(0.005)
    took = time.perf_counter() - submitted
    record = runner.wait([run_id], poll_s=0.1)[0]
    assert record.status == "done", record.error
    return {"submit_to_first_metric_s": took}


def backend(name: str, db: str) -> dict:
    home = tempfile.mkdtemp(prefix=f"kd-bench-store-{name}-")
    one = writers(home, db, 1)
    eight = writers(home, db, 8)
    return {"write_1": one["rows_per_s"], "write_8": eight["rows_per_s"], **reads(home, db, eight["run_ids"]),
            **claims(home, db), **first_metric(home, db), "saturation": saturation(home, db)}


def _test_server():
    path = Path(__file__).resolve().parents[1] / "tests" / "postgres_server.py"
    spec = importlib.util.spec_from_file_location("postgres_server", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.start_for_bench("bench/store.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default=None, help="a postgresql:// URL (default: a throwaway server)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    server = None if args.postgres else _test_server()
    try:
        url = args.postgres or server.new_database()
        results = {"sqlite": backend("sqlite", ""), "postgresql": backend("postgresql", url)}
    finally:
        if server is not None:
            server.stop()
    sq, pg = results["sqlite"], results["postgresql"]
    print(f"{'':28}{'SQLite':>12}{'PostgreSQL':>12}{'PG/SQLite':>10}")
    for key, label in (("write_1", "rows/s, 1 writer"), ("write_8", "rows/s, 8 writers"),
                       ("polls_per_s", "live polls/s (50 rows)"), ("compare_s", "Compare read of 8 runs, s"),
                       ("claims_per_s", "claims/s"), ("submit_to_first_metric_s", "submit → first metric, s")):
        print(f"{label:28}{sq[key]:>12,.1f}{pg[key]:>12,.1f}{pg[key] / sq[key]:>10.2f}")
    print(f"\nsaturation: N writers × {FLUSH_ROWS} rows every {FLUSH_PERIOD_S:g} s for {SATURATION_S:g} s")
    print(f"{'N':>4}{'offered':>10}{'SQLite':>10}{'p95 ms':>8}{'PostgreSQL':>12}{'p95 ms':>8}")
    for s_row, p_row in zip(sq["saturation"], pg["saturation"]):
        print(f"{s_row['n']:>4}{s_row['offered_rows_per_s']:>10,.0f}{s_row['written_rows_per_s']:>10,.0f}"
              f"{s_row['flush_p95_ms']:>8.0f}{p_row['written_rows_per_s']:>12,.0f}{p_row['flush_p95_ms']:>8.0f}")
    load = os.getloadavg()
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    if args.json:
        print(json.dumps({**results, "cpu_count": os.cpu_count(), "load_average": load}))


if __name__ == "__main__":
    main()
