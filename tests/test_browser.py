"""The app in a real browser: launch a tiny run from the form and watch it train live.

Drives Debian's Chromium through Playwright (never Playwright's own browser download). Without a browser the
test skips with the reason, except where KDLAB_BROWSER_TESTS=1 (CI): there it fails.
"""

from __future__ import annotations

import os
import time

import pytest

from app_helpers import (chart_points, chart_traces, exceptions_on, first_point_s, launch_chromium,
                         launch_from_form, require_chromium, running_app, summary_line, watch_loss_chart)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REQUIRED = os.environ.get("KDLAB_BROWSER_TESTS") == "1"
STUDENT_EPOCHS = 300  # digits: ~20 steps an epoch (~10 s in all): long enough for several live updates
RUN_BUDGET_S = 150  # ~20 s on an idle 2-core machine; generous for one shared with other jobs
ACCURACY = "Validation accuracy"


@pytest.fixture(scope="module")
def chromium() -> str:
    return require_chromium(REQUIRED)


def test_launch_watch_and_finish_a_run(chromium: str, tmp_path, capsys) -> None:
    from playwright.sync_api import expect, sync_playwright

    home = tmp_path / "home"
    with running_app(home, tmp_path / "streamlit.log") as base, sync_playwright() as playwright:
        browser = launch_chromium(playwright, chromium)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.set_default_timeout(60_000)
        expect.set_options(timeout=60_000)

        # New run: a tiny digits run (no baseline: half the training, the same live views).
        run_id, clicked = launch_from_form(page, base, dataset="digits", teacher_epochs=1, epochs=STUDENT_EPOCHS)
        assert exceptions_on(page) == []

        # Live: the loss chart gains points while the run trains.
        samples = watch_loss_chart(page, home, run_id, clicked, RUN_BUDGET_S)
        assert samples[-1][2] == "done", f"run did not finish in time: {samples[-5:]}"
        first_point = first_point_s(samples)
        assert first_point is not None, f"the loss chart never drew a point: {samples[-5:]}"
        grew = [(a, b) for a, b in zip(samples, samples[1:]) if b[1] > a[1] > 0 and b[2] == "running"]
        assert grew, f"the loss chart never gained points while the run was running: {samples}"

        # Finished: the page stops polling and shows the student's accuracy against the teacher's.
        deadline = time.monotonic() + 30
        while chart_points(page, ACCURACY, "student") < STUDENT_EPOCHS and time.monotonic() < deadline:
            page.wait_for_timeout(200)
        names = {t["name"]: t["n"] for t in chart_traces(page, ACCURACY) or []}
        assert names.get("student") == STUDENT_EPOCHS, names
        assert any(name.startswith("teacher") for name in names), names
        expect(page.get_by_text("Student test acc")).to_be_visible()
        assert exceptions_on(page) == []

        # Every page renders without an exception, the finished run listed on Runs.
        page.goto(base + "/runs")
        expect(page.locator('[data-testid="stDataFrame"]')).to_be_visible()  # a canvas grid: no cell text in the DOM
        assert exceptions_on(page) == []
        page.goto(base + "/")
        expect(page.get_by_role("button", name="Start run")).to_be_visible()
        assert exceptions_on(page) == []
        page.goto(f"{base}/live?run={run_id}")
        expect(page.get_by_text("Soft labels", exact=True)).to_be_visible()
        assert exceptions_on(page) == []
        browser.close()

    with capsys.disabled():
        growth = sorted({(round(t, 1), n) for t, n, status in samples if status == "running"})
        print(f"\nclick-to-first-point: {first_point:.2f} s; run done {samples[-1][0]:.1f} s after the click; "
              f"points drawn while running (s, n): {growth[:: max(1, len(growth) // 12)]}")
        print(summary_line("ui.click_to_first_point_s", round(first_point, 3)))
