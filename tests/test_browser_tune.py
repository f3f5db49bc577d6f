"""A tuning study in a real browser: started from the command line against the app's store, the Tune page fills
in while the study runs (its trials, their accuracies, the best so far) and shows the best settings when it ends.

Digits, a 1-epoch teacher, 4 trials of 2 epochs in batches of 2: seconds of training. Every trial waits at its
first student step (KDCORE_TEST_PAUSE, kdcore.worker.pause_point) until the test lets it go, so the page is seen
with the first batch training, then with the first batch told and the second training, however quick the runs
are on an idle machine. Drives Debian's Chromium through Playwright, as tests/test_browser.py does.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from app_helpers import chart_traces, exceptions_on, launch_chromium, require_chromium, running_app
from kdcore.store import Store
from kdcore.tune.report import study_report
from kdcore.tune.study import request_stop

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REQUIRED = os.environ.get("KDLAB_BROWSER_TESTS") == "1"
TRIALS, BATCH = 4, 2
PHASE = "student"


@pytest.fixture(scope="module")
def chromium() -> str:
    return require_chromium(REQUIRED)


def fill(page, label: str, value: str) -> None:
    field = page.get_by_label(label, exact=True)
    field.fill(value)
    field.press("Enter")


def trial_points(page) -> int:
    """Trials drawn on the page's progress chart (every trace but the best-so-far line)."""
    traces = chart_traces(page, "Validation accuracy by trial") or []
    return sum(t["n"] for t in traces if t["name"] != "best so far")


class Gate:
    """Lets the trials it was told about past their pause point; the others wait there."""

    def __init__(self, store: Store, study_id: str) -> None:
        self.store, self.study_id = store, study_id
        self.open: set[str] = set()

    def trials(self) -> list[str]:
        spec = self.store.get_sweep(self.study_id)
        return sorted(spec["trials"], key=lambda r: spec["trials"][r]["number"])

    def let_go(self, run_ids) -> None:
        self.open.update(run_ids)

    def release(self) -> None:
        for run_id in self.open:  # the members of a stacked group reach the pause point one after another
            (self.store.run_dir(run_id) / f"paused-at-{PHASE}").unlink(missing_ok=True)


def wait_for(page, gate: Gate, what, budget_s: float, message) -> None:
    deadline = time.monotonic() + budget_s
    while not what():
        gate.release()
        assert time.monotonic() < deadline, message()
        page.wait_for_timeout(200)


def test_the_tune_page_fills_in_while_a_study_runs(chromium: str, tmp_path) -> None:
    from playwright.sync_api import expect, sync_playwright

    home = tmp_path / "home"
    env = {"KDCORE_HOME": str(home), "KDCORE_TEST_PAUSE": f"*={PHASE}"}
    with running_app(home, tmp_path / "streamlit.log", env=env) as base, \
            sync_playwright() as playwright:
        browser = launch_chromium(playwright, chromium)
        page = browser.new_page(viewport={"width": 1400, "height": 2200})
        page.set_default_timeout(60_000)
        expect.set_options(timeout=60_000)

        # the study starts from the command line against the app's store, as a user's script would start it (the
        # page's own form is tested under AppTest): its driver and the workers it starts inherit the pause
        started = subprocess.run(
            [sys.executable, "-m", "kdcore", "tune", "--space", "temperature=log:1,16", "--space", "weights.kd=0.1,0.9",
             "--trials", str(TRIALS), "--batch", str(BATCH), "--seeds", "0", "--sampler-seed", "0", "--name",
             "browser", "--set", "dataset=digits", "--set", "epochs=2", "--set", "teacher.epochs=1", "--json"],
            capture_output=True, text=True, env={**os.environ, **env}, timeout=60)
        assert started.returncode == 0, started.stderr
        study_id = json.loads(started.stdout)["study_id"]
        page.goto(f"{base}/tune?study={study_id}")
        store = Store(home)
        gate = Gate(store, study_id)
        status = page.get_by_test_id("stProgress")
        try:
            # the first batch appears while it trains: two rows, each trial's settings, no accuracy yet
            wait_for(page, gate, lambda: len(gate.trials()) == BATCH, 60, lambda: "the first batch was not queued")
            expect(status).to_contain_text(f"running · 0 of {TRIALS} trials finished")
            expect(status).to_contain_text(f"{BATCH} running")
            first = gate.trials()
            table = page.get_by_test_id("stDataFrame").last
            for run_id in first:
                expect(table.locator("td[role=gridcell]", has_text=run_id)).to_have_count(1)

            # let the first batch go: its results are drawn while the second batch waits to train
            gate.let_go(first)
            wait_for(page, gate, lambda: trial_points(page) == BATCH, 60,
                     lambda: f"the first batch's results were not drawn: {study_report(store, study_id)['trials']}")
            # the chart draws the runs' curves as they train; the driver tells the study how each ended a poll later

            def first_batch_told() -> list[dict]:
                return [t for t in study_report(store, study_id)["trials"] if t["number"] < BATCH]
            wait_for(page, gate, lambda: all(t["state"] in ("complete", "pruned") for t in first_batch_told()), 60,
                     lambda: f"the study was not told how the first batch ended: {first_batch_told()}")
            report = study_report(store, study_id)
            assert report["status"] == "running", report["status"]  # live: the study has not ended
            told = [t for t in report["trials"] if t["number"] < BATCH]
            assert all(t["state"] in ("complete", "pruned") for t in told), told
            expect(status).to_contain_text(f"running · {BATCH} of {TRIALS} trials finished")
            best = max((t for t in told if t["state"] == "complete"), key=lambda t: t["val_acc"])
            expect(page.get_by_text(re.compile(rf"Trial #\d+: {100 * best['val_acc']:.2f}%"))).to_be_visible()
            page.screenshot(path=str(tmp_path / "tune_live.png"), full_page=True)

            # the rest of the study, then its end: every trial, the best settings
            gate.let_go(gate.trials())
            wait_for(page, gate, lambda: len(gate.trials()) == TRIALS, 60, lambda: "the second batch was not queued")
            gate.let_go(gate.trials())
            wait_for(page, gate, lambda: study_report(store, study_id)["status"] == "done", 60,
                     lambda: f"the study did not end: {study_report(store, study_id)['status']}")
        finally:  # a failed test leaves no driver behind: it is asked to stop, and its paused trials go on to cancel
            if study_report(store, study_id)["status"] != "done":
                request_stop(store, study_id)
            gate.let_go(gate.trials())
            gate.release()
        report = study_report(store, study_id)
        store.close()
        expect(status).to_contain_text(f"done · {TRIALS} of {TRIALS} trials finished")
        assert len(report["trials"]) == TRIALS
        expect(page.get_by_text(re.compile(rf"Trial #{report['best']['number']}: "
                                           rf"{100 * report['best']['val_acc']:.2f}%"))).to_be_visible()
        wait_for(page, gate, lambda: trial_points(page) == TRIALS, 30, lambda: "not every trial was drawn")
        best_line = [t for t in chart_traces(page, "Validation accuracy by trial") if t["name"] == "best so far"]
        assert best_line and best_line[0]["n"] >= 1
        expect(page.get_by_role("button", name="Open the best settings in New run")).to_be_visible()
        # the study picker names the study by what does not change as it runs (a keyed select box keeps its label)
        expect(page.get_by_role("combobox", name="Study")).to_have_value(
            f"browser · {study_id} · temperature, weights.kd")
        page.screenshot(path=str(tmp_path / "tune_done.png"), full_page=True)
        assert exceptions_on(page) == []
        browser.close()
