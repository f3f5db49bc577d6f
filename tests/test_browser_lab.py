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
# How long to wait for a redraw: a slider move reruns one fragment over cached logits (well under a second
# when idle), so running out of this means the chart never redrew, not that it was slow on a busy machine.
REDRAW_WAIT_S = 60.0


@pytest.fixture(scope="module")
def chromium() -> str:
    return require_chromium(REQUIRED)


def trace_names(page, title_prefix: str) -> set[str]:
    return {t["name"] for t in chart_traces(page, title_prefix) or []}


def wait_for_trace(page, title_prefix: str, name: str, wait_s: float = REDRAW_WAIT_S) -> bool:
    """Whether the chart titled `title_prefix` gets a trace called `name` within `wait_s` seconds."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if name in trace_names(page, title_prefix):
            return True
        page.wait_for_timeout(50)
    return name in trace_names(page, title_prefix)


def test_moving_the_temperature_slider_redraws_the_lab(chromium: str, tmp_path) -> None:
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
            assert wait_for_trace(page, SOFT_LABELS, "teacher, T=4"), exceptions_on(page)
            assert "T = 4" in trace_names(page, CURVES)
            page.evaluate("window.kdlabBeforeSlider = true")  # gone if the page reloads

            move_slider(page, "Temperature T", 4)  # 4 steps of 0.5
            assert wait_for_trace(page, SOFT_LABELS, "teacher, T=6"), \
                f"the soft labels never redrew: {trace_names(page, SOFT_LABELS)}; {exceptions_on(page)}"
            assert wait_for_trace(page, CURVES, "T = 6"), "the marker on the curves never moved"
            assert "teacher, T=4" not in trace_names(page, SOFT_LABELS)
            assert chart_traces(page, "Which wrong classes the teacher finds plausible · T = 6") is not None
            assert page.evaluate("window.kdlabBeforeSlider === true"), "the slider reloaded the page"
            assert exceptions_on(page) == []
        finally:
            browser.close()
    store = Store(home)
    assert len(store.list_runs()) == 1, "moving the slider started a run"
    store.close()
