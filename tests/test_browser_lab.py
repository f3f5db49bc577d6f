"""The Temperature lab in a real browser: moving the temperature slider redraws the charts, with no
training and no page reload.

Same rules as test_browser.py: Debian's Chromium through Playwright; without a browser the test
skips with the reason, except where KDLAB_BROWSER_TESTS=1 (CI): there it fails.
"""

from __future__ import annotations

import os
import time

import pytest

from app_helpers import (chart_traces, exceptions_on, finished_run, launch_chromium, move_slider, require_chromium,
                         running_app)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REQUIRED = os.environ.get("KDLAB_BROWSER_TESTS") == "1"
SOFT_LABELS = "Soft labels of"
CURVES = "The teacher's soft labels"
REDRAW_BUDGET_S = 10.0  # a slider move reruns one fragment over cached logits: well under a second when idle


@pytest.fixture(scope="module")
def chromium() -> str:
    return require_chromium(REQUIRED)


def trace_names(page, title_prefix: str) -> set[str]:
    return {t["name"] for t in chart_traces(page, title_prefix) or []}


def wait_for_trace(page, title_prefix: str, name: str, budget_s: float) -> float | None:
    """Seconds until the chart titled `title_prefix` has a trace called `name`; None if it never does."""
    started = time.monotonic()
    while time.monotonic() - started < budget_s:
        if name in trace_names(page, title_prefix):
            return time.monotonic() - started
        page.wait_for_timeout(50)
    return None


def test_moving_the_temperature_slider_redraws_the_lab(chromium: str, tmp_path, capsys) -> None:
    from playwright.sync_api import expect, sync_playwright

    from kdcore.store import Store

    home = tmp_path / "home"
    store = Store(home)
    finished_run(store, dataset="digits", epochs=1, baseline=False,
                 **{"teacher.arch": "cnn-small", "teacher.epochs": 1, "student.arch": "mlp-tiny"})
    store.close()
    with running_app(home, tmp_path / "streamlit.log") as base, sync_playwright() as playwright:
        browser = launch_chromium(playwright, chromium)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.set_default_timeout(60_000)
            expect.set_options(timeout=60_000)
            page.goto(base + "/lab")
            expect(page.get_by_role("slider", name="Temperature T")).to_be_visible()
            assert wait_for_trace(page, SOFT_LABELS, "teacher, T=4", 60) is not None, exceptions_on(page)
            assert "T = 4" in trace_names(page, CURVES)

            move_slider(page, "Temperature T", 4)  # 4 steps of 0.5
            redraw_s = wait_for_trace(page, SOFT_LABELS, "teacher, T=6", REDRAW_BUDGET_S)
            assert redraw_s is not None, f"the soft labels did not redraw: {trace_names(page, SOFT_LABELS)}"
            assert wait_for_trace(page, CURVES, "T = 6", REDRAW_BUDGET_S) is not None  # the marker moved
            assert "teacher, T=4" not in trace_names(page, SOFT_LABELS)
            assert chart_traces(page, "Which wrong classes the teacher finds plausible · T = 6") is not None
            assert exceptions_on(page) == []
        finally:
            browser.close()
    with capsys.disabled():
        print(f"\ntemperature lab: slider move to redrawn soft labels in {redraw_s:.2f} s")
