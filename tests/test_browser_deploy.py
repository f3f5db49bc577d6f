"""The Deploy page in a real browser: a user computes a finished run's deployment report and sees its table
and trade-off chart, the computation running in the background while the page shows its progress.

Same rules as test_browser.py: Debian's Chromium through Playwright; without a browser the test
skips with the reason, except where KDLAB_BROWSER_TESTS=1 (CI): there it fails.
"""

from __future__ import annotations

import os
import time

import pytest

from app_helpers import chart_traces, exceptions_on, finished_run, launch_chromium, require_chromium, running_app

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REQUIRED = os.environ.get("KDLAB_BROWSER_TESTS") == "1"
TRADEOFF = "Accuracy · size · latency trade-off"
REPORT_WAIT_S = 300.0  # a background `kdcore compress` of a digits run: ~30 s idle, far more on a busy 2-core machine


@pytest.fixture(scope="module")
def chromium() -> str:
    return require_chromium(REQUIRED)


def test_a_user_computes_the_report_and_sees_table_and_chart(chromium: str, tmp_path) -> None:
    from playwright.sync_api import expect, sync_playwright

    from kdcore.store import Store

    home = tmp_path / "home"
    store = Store(home)
    run_id = finished_run(store, dataset="digits", epochs=1, baseline=False,
                          **{"teacher.arch": "cnn-small", "teacher.epochs": 1, "student.arch": "mlp-tiny"})
    store.close()
    with running_app(home, tmp_path / "streamlit.log") as base, sync_playwright() as playwright:
        browser = launch_chromium(playwright, chromium)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 2000})
            page.set_default_timeout(60_000)
            page.goto(f"{base}/deploy?run={run_id}")
            expect(page.get_by_role("heading", name="Deploy")).to_be_visible(timeout=60_000)  # first render, under load
            page.get_by_text("Prune", exact=True).click()  # int8 only: three variants, a quicker report
            compute = page.get_by_role("button", name="Compute the report")
            expect(compute).to_be_enabled()
            compute.click()
            expect(page.get_by_text("Computing the report")).to_be_visible()
            deadline = time.monotonic() + REPORT_WAIT_S
            while chart_traces(page, TRADEOFF) is None and time.monotonic() < deadline:
                assert not exceptions_on(page)
                page.wait_for_timeout(500)
            traces = {t["name"] for t in chart_traces(page, TRADEOFF) or []}
            assert {"teacher", "student", "student int8"} <= traces, (traces, (tmp_path / "streamlit.log").read_text()[-2000:])
            table = page.get_by_test_id("stDataFrame")
            expect(table).to_be_visible()
            expect(page.get_by_role("button", name="student-int8.onnx", exact=False)).to_be_visible()
            assert not exceptions_on(page)
            page.screenshot(path=str(tmp_path / "deploy.png"), full_page=True)
        finally:
            browser.close()
