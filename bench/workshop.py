"""A room's load on one server: fair scheduling under a burst, and the room's pages with a full store.

    python bench/workshop.py [--participants 30] [--runs-each 3] [--max-runs 2] [--repeats 5] [--json]

1. Fairness: P participants each submit R tiny runs (digits, mlp-small teacher 1 epoch → mlp-tiny
   1 epoch, no baseline) at the same moment, one thread per participant with its own store
   connection, as the app's sessions do, with KDCORE_MAX_RUNS=M. Real worker processes train them
   all. Reports whether every participant's first run started before anyone's third (and second
   before anyone's third), whether every run finished with its metrics (nothing lost), and any
   "database is locked" error in a submission, a worker's output or a run's error. While two of
   those runs train, a participant's interactions are timed (AppTest: open New run, change the
   temperature, switch the baseline off, open Runs, the Challenge page, Lessons): the server's answer
   to each click, which is what the issue's "≤ 1 s per interaction" bounds.
2. Render times: a store with 30 participants × 10 finished challenge runs, rendered with
   Streamlit's AppTest (the server side of one page load): the Challenge leaderboard as a
   participant, the Instructor page and the Runs page as the instructor. Median of the repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

from kdcore.config import RunConfig
from kdcore.store import Store

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"
TINY = {"dataset": "digits", "epochs": 1, "baseline": False, "student": {"arch": "mlp-tiny"},
        "teacher": {"arch": "mlp-small", "epochs": 1}}


def fairness(participants: int, runs_each: int, max_runs: int) -> dict:
    from kdcore.runner import Runner

    home = Path(tempfile.mkdtemp(prefix="kd-workshop-fair-"))
    os.environ.update(KDCORE_HOME=str(home), KDCORE_MAX_RUNS=str(max_runs), OMP_NUM_THREADS="1")
    os.environ.pop("KDCORE_MAX_RUNS_PER_OWNER", None)
    Store(home).close()
    barrier = threading.Barrier(participants)
    submitted: dict[str, list[str]] = {}
    errors: list[str] = []

    def participant(index: int) -> None:
        owner = f"participant-{index:02d}"
        store = Store(home)
        runner = Runner(store, owner_cap=runs_each)
        barrier.wait()
        ids = []
        try:
            for seed in range(runs_each):
                config = RunConfig.from_dict({**TINY, "seed": seed})
                ids.append(runner.submit(config, owner=owner))
        except Exception as exc:  # noqa: BLE001 - every failure is a result here
            errors.append(f"{owner}: {type(exc).__name__}: {exc}")
        submitted[owner] = ids
        store.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=participant, args=(i,)) for i in range(participants)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    submit_s = time.perf_counter() - started
    store = Store(home)
    every = [run_id for ids in submitted.values() for run_id in ids]
    interactions = responsiveness(store)
    records = Runner(store).wait(every, poll_s=0.2, timeout_s=3600)
    total_s = time.perf_counter() - started
    by_id = {r.id: r for r in records}
    nth_start = {n: [by_id[ids[n]].started for ids in submitted.values() if len(ids) > n] for n in range(runs_each)}
    lost = [r.id for r in records if r.status != "done" or not store.metrics_since(r.id)[0]]
    locked = [e for e in errors if "locked" in e.lower()]
    for record in records:
        log = "\n".join(store.worker_log_tail(record.id, max_lines=200))
        if "locked" in log.lower() or "locked" in (record.error or "").lower():
            locked.append(record.id)
    order = sorted(records, key=lambda r: r.started)
    rank_of = {r.id: i for i, r in enumerate(order)}
    result = {
        "participants": participants, "runs_each": runs_each, "max_runs": max_runs,
        "runs_submitted": len(every), "runs_in_store": len(store.list_runs()), "runs_done": sum(
            r.status == "done" for r in records), "lost": lost, "submission_errors": errors, "lock_errors": locked,
        "every_first_before_any_third": max(nth_start[0]) < min(nth_start[runs_each - 1]),
        "every_first_before_any_second": max(nth_start[0]) < min(nth_start[1]) if runs_each > 1 else None,
        "last_first_start_rank": max(rank_of[ids[0]] for ids in submitted.values()),
        "first_third_start_rank": min(rank_of[ids[-1]] for ids in submitted.values()),
        "submit_s": submit_s, "all_done_s": total_s,
        "peak_running": _peak_running(records),
        "interactions_while_training": interactions,
    }
    store.close()
    return result


def responsiveness(store: Store, rounds: int = 3) -> dict:
    """Seconds the server takes to answer a participant's clicks while two runs train (AppTest, this process)."""
    from streamlit.testing.v1 import AppTest

    from app.workshop.room import Room
    from kdcore.runner import Runner

    os.environ["KDLAB_WORKSHOP_TOKEN"] = TOKEN
    member = Room(store, TOKEN).join("responsive participant")
    timings: dict[str, list[float]] = {}
    running_at_clicks = []

    def timed(name: str, at) -> None:
        Runner(store).tick()  # keep both slots busy, as the app's polling would
        running_at_clicks.append(store.count_runs(("running",)))
        started = time.perf_counter()
        at.run()
        timings.setdefault(name, []).append(time.perf_counter() - started)
        if at.exception:
            raise RuntimeError(f"{name}: {at.exception[0].value}")

    deadline = time.time() + 120
    while store.count_runs(("running",)) < 2 and time.time() < deadline:  # both slots training, not starting
        Runner(store).tick()
        time.sleep(0.2)
    # A server scans the installed packages for Streamlit components once, when it starts (Runtime); a fresh
    # AppTest scans them on its first run (0.4-0.8 s here, ~680 packages' metadata), which would be charged to
    # "open the app". Every round's AppTest shares one scan, as a server's sessions do.
    from streamlit.components.v2.component_manager import BidiComponentManager

    components = BidiComponentManager()
    components.discover_and_register_components(start_file_watching=False)
    load_before = os.getloadavg()
    for round_ in range(rounds):
        at = AppTest.from_file(str(ROOT / "app" / "streamlit_app.py"), default_timeout=120)
        at._bidi_component_manager = components
        at.query_params["p"] = member.key
        timed("open the app", at)
        at.switch_page("screens/new_run.py")
        timed("open New run", at)
        at.number_input(key="nr_temperature").set_value(2.0 + round_)
        timed("change the temperature", at)
        at.toggle(key="nr_baseline").set_value(False)
        timed("switch the baseline off", at)
        at.switch_page("screens/runs.py")
        timed("open Runs", at)
        at.switch_page("screens/leaderboard.py")
        timed("open Challenge", at)
        at.switch_page("screens/lessons.py")
        timed("open Lessons", at)
    del os.environ["KDLAB_WORKSHOP_TOKEN"]
    every = [t for values in timings.values() for t in values[1:]]  # the first round warms imports and caches
    return {"median_s": statistics.median(every), "max_s": max(every),
            "by_interaction_max_s": {name: max(values[1:]) for name, values in timings.items()},
            "first_round_s": {name: values[0] for name, values in timings.items()},
            "runs_training_at_each_click": running_at_clicks,
            "load_average_1_5_15": {"before": load_before, "after": os.getloadavg()}}


def _peak_running(records) -> int:
    """The most runs that trained at once, from their start and end times (each worker is one slot here)."""
    events = sorted([(r.started, 1) for r in records] + [(r.ended, -1) for r in records], key=lambda e: (e[0], e[1]))
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


def fill_room(home: Path, participants: int, runs_each: int):
    """A room with a challenge and `participants` × `runs_each` finished challenge runs (no training)."""
    from app.workshop.room import Challenge, Room

    store = Store(home)
    room = Room(store, TOKEN)
    instructor = room.sign_in_instructor(TOKEN)
    room.set_challenge(instructor.actor, Challenge(started=time.time() - 60))
    rng = random.Random(0)
    base = RunConfig().replace(dataset="digits", **{"teacher.arch": "cnn-small", "teacher.epochs": 4})
    for i in range(participants):
        member = room.join(f"participant {i:02d}")
        for j in range(runs_each):
            config = base.replace(temperature=rng.choice([1.0, 2.0, 4.0, 8.0]), seed=j, name=f"try {j}")
            run_id = store.create_run(config.to_dict(), name=config.name, owner=member.name)
            student = 0.9 + rng.random() / 20
            store.finish(run_id, "done", summary={
                "run_id": run_id, "status": "done", "teacher_test_acc": 0.98, "teacher_val_acc": 0.98,
                "student_test_acc": student - 0.01, "student_val_acc": student, "baseline_test_acc": 0.9,
                "baseline_val_acc": 0.91, "student_params": rng.choice([4810, 9610, 19210]),
                "teacher_params": 30_000, "gap_closed": 0.3, "wall_s": 8.0})
    store.close()
    return instructor


def render_s(page: str, repeats: int, *, key: str | None = None, session_key: str | None = None) -> float:
    from streamlit.testing.v1 import AppTest

    times = []
    for _ in range(repeats):
        at = AppTest.from_file(str(ROOT / "app" / "streamlit_app.py"), default_timeout=120)
        if key:
            at.query_params["p"] = key
        if session_key:
            at.session_state["_kdlab_workshop_key"] = session_key
        at.run()
        at.switch_page(f"screens/{page}.py")
        started = time.perf_counter()
        at.run()
        times.append(time.perf_counter() - started)
        if at.exception:
            raise RuntimeError(f"{page}: {at.exception[0].value}")
    return statistics.median(times)


def render_times(participants: int, runs_each: int, repeats: int) -> dict:
    from app.workshop.room import Room

    home = Path(tempfile.mkdtemp(prefix="kd-workshop-pages-"))
    os.environ.update(KDCORE_HOME=str(home), KDLAB_WORKSHOP_TOKEN=TOKEN)
    instructor = fill_room(home, participants, runs_each)
    store = Store(home)
    participant = Room(store, TOKEN).participants()[0]
    store.close()
    render_s("leaderboard", 1, key=participant.key)  # warm: imports, caches
    return {"store_runs": participants * runs_each,
            "leaderboard_s": render_s("leaderboard", repeats, key=participant.key),
            "instructor_s": render_s("instructor", repeats, session_key=instructor.key),
            "runs_page_s": render_s("runs", repeats, session_key=instructor.key),
            "room_sweep_s": render_s("room_sweep", repeats, key=participant.key)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=30)
    parser.add_argument("--runs-each", type=int, default=3)
    parser.add_argument("--max-runs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-fairness", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out: dict = {"machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.python_version()}"}
    if not args.skip_fairness:
        fair = fairness(args.participants, args.runs_each, args.max_runs)
        out["fairness"] = fair
        print(f"fairness: {fair['runs_submitted']} runs from {fair['participants']} participants submitted in "
              f"{fair['submit_s']:.2f} s, all done after {fair['all_done_s']:.0f} s (KDCORE_MAX_RUNS="
              f"{fair['max_runs']}, peak {fair['peak_running']} training at once)")
        print(f"  every first run started before anyone's third: {fair['every_first_before_any_third']}; "
              f"before anyone's second: {fair['every_first_before_any_second']} (last first run started "
              f"{fair['last_first_start_rank'] + 1}th, first third run {fair['first_third_start_rank'] + 1}th)")
        print(f"  done {fair['runs_done']}/{fair['runs_submitted']}, lost {len(fair['lost'])}, lock errors "
              f"{len(fair['lock_errors'])}, submission errors {len(fair['submission_errors'])}")
        clicks = fair["interactions_while_training"]
        print(f"  a participant's clicks while runs train: median {clicks['median_s']:.3f} s, max {clicks['max_s']:.3f} s "
              f"(runs training at the clicks: {sorted(set(clicks['runs_training_at_each_click']))}; load average "
              f"{clicks['load_average_1_5_15']['before'][0]:.2f} before, {clicks['load_average_1_5_15']['after'][0]:.2f} "
              "after)")
        for name, slowest in clicks["by_interaction_max_s"].items():
            print(f"    slowest {name}: {slowest:.3f} s")
    pages = render_times(30, 10, args.repeats)
    out["pages"] = pages
    print(f"render with {pages['store_runs']} runs: leaderboard {pages['leaderboard_s']:.3f} s, instructor "
          f"{pages['instructor_s']:.3f} s, runs {pages['runs_page_s']:.3f} s, room sweep {pages['room_sweep_s']:.3f} s "
          f"(median of {args.repeats})")
    if args.json:
        print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
