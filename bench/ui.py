"""How fast the app answers: server-side render times, and click-to-first-point in a real browser.

    python bench/ui.py [--runs 50] [--points 3000] [--repeats 5] [--no-browser] [--json]

1. A store with N runs × P metric points each (synthetic rows written straight into a real store:
   per-step losses and per-epoch accuracies, like a real run's). Each page is rendered with
   Streamlit's AppTest (the server side of one page load, in this process), median of the repeats:
   the Runs page, the Compare page with 5 runs selected, and the Compare page with all N.
2. The app started on a fresh store and driven by Chromium: click Start on a tiny digits run and
   time until the loss chart shows its first point (tests/app_helpers.measure_click_to_first_point).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import statistics
import tempfile
import time
import types
from pathlib import Path

from kdcore.config import RunConfig
from kdcore.store import Store

ROOT = Path(__file__).resolve().parent.parent


def fill_store(home: Path, runs: int, points: int) -> list[str]:
    store = Store(home)
    rng = random.Random(0)
    ids = []
    epochs = 30
    steps = points // (4 + 0)  # four loss parts per step
    for i in range(runs):
        config = RunConfig(temperature=rng.choice([1.0, 2.0, 4.0, 8.0]), seed=i % 3)
        run_id = store.create_run(config.to_dict(), name=f"bench run {i}", status="running", pid=os.getpid())
        t0 = time.time()
        rows = []
        for step in range(1, steps + 1):
            epoch = 1 + (step - 1) * epochs // steps
            loss = 2.0 / (1 + step / 50) + rng.random() * 0.05
            rows += [("student", epoch, step, name, value, t0 + step * 0.01) for name, value in
                     (("train_loss", loss), ("train_ce", loss * 0.6), ("train_kd", loss * 0.4), ("train_feature", 0.0))]
        for epoch in range(1, epochs + 1):
            rows += [("student", epoch, epoch * steps // epochs, "val_acc", 0.8 + 0.15 * epoch / epochs, t0 + epoch)]
        store.add_records(run_id, metrics=rows)
        store.finish(run_id, "done", summary={"run_id": run_id, "status": "done", "teacher_test_acc": 0.975,
                                              "student_test_acc": 0.94 + rng.random() / 100, "baseline_test_acc": 0.93,
                                              "teacher_params": 110_000, "student_params": 50_890, "compression": 2.2,
                                              "gap_closed": 0.2, "best_epoch": 28, "wall_s": 20.0})
        ids.append(run_id)
    return ids


def _browser_tests_helpers() -> types.ModuleType:
    """tests/app_helpers.py, which the browser tests use too; tests/ is not an installed package."""
    spec = importlib.util.spec_from_file_location("app_helpers", ROOT / "tests" / "app_helpers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def render_s(page: str, repeats: int, **query: str) -> float:
    from streamlit.testing.v1 import AppTest

    times = []
    for _ in range(repeats):
        at = AppTest.from_file(str(ROOT / "app" / "streamlit_app.py"), default_timeout=120)
        at.query_params.update(query)
        at.run()
        at.switch_page(f"screens/{page}.py")
        at.query_params.update(query)
        started = time.perf_counter()
        at.run()
        times.append(time.perf_counter() - started)
        if at.exception:
            raise RuntimeError(f"{page} raised: {at.exception[0].message}")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--points", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="kd-ui-bench-"))
    home = workdir / "home"
    os.environ["KDCORE_HOME"] = str(home)
    ids = fill_store(home, args.runs, args.points)
    out = {"runs": args.runs, "points_per_run": args.points,
           "runs_page_s": render_s("runs", args.repeats),
           "compare_5_runs_s": render_s("compare", args.repeats, runs=",".join(ids[:5])),
           f"compare_{args.runs}_runs_s": render_s("compare", args.repeats, runs=",".join(ids)),
           "machine": f"{platform.machine()} {os.cpu_count()} cores"}
    print(f"server-side render ({args.runs} runs x {args.points} points): Runs {out['runs_page_s']:.2f} s, "
          f"Compare (5 runs) {out['compare_5_runs_s']:.2f} s, Compare ({args.runs} runs) "
          f"{out[f'compare_{args.runs}_runs_s']:.2f} s")
    if not args.no_browser:
        measure_click_to_first_point = _browser_tests_helpers().measure_click_to_first_point
        (workdir / "browser").mkdir()
        timing = measure_click_to_first_point(workdir / "browser")
        out["click_to_first_point_s"] = timing["click_to_first_point_s"]
        out["click_to_done_s"] = timing["run_s"]
        print(f"browser: click Start → first loss point {timing['click_to_first_point_s']:.1f} s; "
              f"→ run done {timing['run_s']:.1f} s")
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
