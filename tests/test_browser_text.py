"""A text run in a real browser: launched from New run on a user's CSV (typed as csv:<path>, its columns named in
the form), it shows its loss live, then the accuracies and each validation sentence with its soft labels.

The teacher is a 1-layer, 32-wide Transformer built from its config (typed as a name of one's own), so nothing is
downloaded and the run takes seconds. Drives Debian's Chromium through Playwright, as tests/test_browser.py does.
"""

from __future__ import annotations

import os
import re
import time

import pytest

from app_helpers import (RUN_URL, chart_points, exceptions_on, launch_chromium, require_chromium, running_app,
                         watch_loss_chart)
from kdcore.store import Store
from test_text import write_reviews

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REQUIRED = os.environ.get("KDLAB_BROWSER_TESTS") == "1"
EPOCHS = 20  # 240 reviews, 4 steps an epoch: a few seconds, long enough for several live updates
RUN_BUDGET_S = 150


@pytest.fixture(scope="module")
def chromium() -> str:
    return require_chromium(REQUIRED)


def scroll_to(page, locator, timeout_s: float = 30) -> None:
    """Scroll `locator` into view, again if the page redraws it mid-scroll (a rerun as the run ends replaces it)."""
    from playwright.sync_api import Error

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            locator.scroll_into_view_if_needed(timeout=5_000)
            return
        except Error:
            if time.monotonic() > deadline:
                raise
            page.wait_for_timeout(250)


def pick(page, label: str, value: str) -> None:
    """Type `value` into the select box `label` and take it (a listed option, or a new one of one's own)."""
    box = page.get_by_role("combobox", name=label)
    box.click()
    box.fill(value)
    box.press("Enter")


def fill(page, label: str, value: str) -> None:
    field = page.get_by_label(label, exact=True)
    field.fill(value)
    field.press("Enter")


def test_a_text_run_from_new_run_shows_its_sentences_soft_labels(chromium: str, tmp_path) -> None:
    from playwright.sync_api import expect, sync_playwright

    home = tmp_path / "home"
    reviews = write_reviews(tmp_path / "reviews.csv")
    # the run waits at its baseline (its student's loss written) until the page has shown that loss live
    pause = {"KDCORE_TEST_PAUSE": "*=baseline"}
    with running_app(home, tmp_path / "streamlit.log", env=pause) as base, sync_playwright() as playwright:
        browser = launch_chromium(playwright, chromium)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.set_default_timeout(60_000)
        expect.set_options(timeout=60_000)

        page.goto(base + "/")
        pick(page, "Dataset", f"csv:{reviews}")
        # a text dataset: the form swapped the image models for text ones
        expect(page.get_by_role("combobox", name="Student architecture")).to_have_value(re.compile("^bilstm"))
        fill(page, "Text column", "review")
        fill(page, "Label column", "sentiment")
        pick(page, "Teacher architecture", "tiny-transformer:1,32")
        pick(page, "Student architecture", "bag-of-embeddings")
        fill(page, "Teacher epochs", "6")
        fill(page, "Epochs", str(EPOCHS))
        # "Train a baseline" is on by default (clicking it would turn it off): the run pauses in that stage
        plan = f"{EPOCHS} student epochs after a 6-epoch teacher (or its cached copy), then the baseline."
        expect(page.get_by_text(plan)).to_be_visible()
        clicked = time.monotonic()
        page.get_by_role("button", name="Start run").click()
        page.wait_for_url(RUN_URL)
        run_id = RUN_URL.match(page.url).group(1)
        store = Store(home)
        assert store.get_run(run_id).config["baseline"] is True, "the run trains no baseline, where it would pause"
        store.close()

        samples = watch_loss_chart(page, home, run_id, clicked, RUN_BUDGET_S, release="baseline")
        assert samples[-1][2] == "done", f"run did not finish in time: {samples[-5:]}"
        assert [s for s in samples if s[1] > 0 and s[2] == "running"], f"no live loss while running: {samples}"
        deadline = time.monotonic() + 30
        while chart_points(page, "Validation accuracy", "student") < EPOCHS and time.monotonic() < deadline:
            page.wait_for_timeout(200)
        assert chart_points(page, "Validation accuracy", "student") == EPOCHS
        expect(page.get_by_text("Student test acc")).to_be_visible()

        # the soft labels: one row per validation sentence, its words in the table's cells
        store = Store(home)
        teacher = next(s for s in store.snapshots_since(run_id)[0] if s["stage"] == "soft_labels")
        store.close()
        expect(page.get_by_text("probability of negative", exact=False)).to_be_visible()
        table = page.get_by_test_id("stDataFrame").last
        scroll_to(page, table)
        # the grid draws on a canvas; its cells are also in an accessible table, which the page keeps out of view
        for text in teacher["texts"][:3]:
            expect(table.locator("td[role=gridcell]", has_text=text)).to_have_count(1)
        expect(table.locator("th[role=columnheader]", has_text="student T=4")).to_have_count(1)
        page.screenshot(path=str(tmp_path / "text_run.png"), full_page=True)
        assert exceptions_on(page) == []
        browser.close()
