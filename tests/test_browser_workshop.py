"""Workshop mode in a real browser: the instructor and two participants at once, three browser contexts.

Participant A's run is visible to B, but B cannot cancel or delete it (no Cancel on its live page, disabled
buttons on Runs, and the run untouched by a forced click); the instructor cancels and deletes it. The room
sweep fills in from both participants' cells, and the leaderboard shows both. Drives Debian's Chromium
(KDLAB_BROWSER_TESTS=1 makes a missing browser a failure, as in CI).
"""

from __future__ import annotations

import os
import re
import time

import pytest

from app_helpers import (RUN_URL, chart_traces, exceptions_on, launch_chromium, require_chromium, running_app,
                         wait_until_finished)
from kdcore.store import Store

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REQUIRED = os.environ.get("KDLAB_BROWSER_TESTS") == "1"
TOKEN = "browser-test-token"
RUNS_BUDGET_S = 400  # four short digits runs and one cancelled preset run on a busy 2-core machine


@pytest.fixture(scope="module")
def chromium() -> str:
    return require_chromium(REQUIRED)


def nav(page, title: str) -> None:
    """Follow the sidebar's link to a page (keeps the browser session: the instructor stays signed in).

    Forced: a page whose fragment polls every few seconds never looks "stable" to Playwright."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    link = page.get_by_test_id("stSidebarNav").get_by_role("link", name=title, exact=True)
    target = re.compile(rf"/{NAV_SLUGS.get(title, title.lower().replace(' ', '_'))}(\?|$)")
    for _ in range(3):  # a click that lands while the page reruns (after a button, a fragment tick) can be lost
        link.wait_for()
        link.click(force=True)
        try:
            page.wait_for_url(target, timeout=20_000)
            return
        except PlaywrightTimeout:
            continue
    page.wait_for_url(target)


NAV_SLUGS = {"Workshop": "", "Challenge": "leaderboard", "Instructor": "instructor"}


def join(browser, base: str, name: str):
    from playwright.sync_api import expect

    page = browser.new_context(viewport={"width": 1400, "height": 1600}).new_page()
    page.set_default_timeout(60_000)
    page.goto(base + "/")
    page.get_by_role("textbox", name="Your display name").fill(name)
    page.get_by_role("button", name="Join").click()
    expect(page.get_by_role("heading", name=f"Welcome, {name}")).to_be_visible()
    key = re.search(r"[?&]p=([A-Za-z0-9_-]{24})", page.url).group(1)
    return page, key


def start_and_get_run(page) -> str:
    page.get_by_role("button", name="Start run").click()
    page.wait_for_url(RUN_URL)
    return RUN_URL.match(page.url).group(1)


def test_three_people_in_one_room(chromium, tmp_path, monkeypatch):
    from playwright.sync_api import expect, sync_playwright

    monkeypatch.setenv("KDLAB_WORKSHOP_TOKEN", TOKEN)
    monkeypatch.setenv("KDCORE_MAX_RUNS", "2")
    monkeypatch.delenv("KDCORE_MAX_RUNS_PER_OWNER", raising=False)
    expect.set_options(timeout=60_000)
    home = tmp_path / "home"
    with running_app(home, tmp_path / "streamlit.log") as base, sync_playwright() as playwright:
        browser = launch_chromium(playwright, chromium)
        store = Store(home)
        try:
            # The instructor signs in, starts the challenge and a room sweep over T.
            teacher = browser.new_context(viewport={"width": 1400, "height": 1800}).new_page()
            teacher.set_default_timeout(60_000)
            teacher.goto(base + "/")
            teacher.get_by_text("I am the instructor").click()
            teacher.get_by_role("textbox", name="Instructor token").fill(TOKEN)
            teacher.get_by_role("button", name="Sign in").click()
            expect(teacher.get_by_role("heading", name="Welcome, instructor")).to_be_visible()
            assert "p=" not in teacher.url  # the instructor's key is never in the address
            nav(teacher, "Instructor")
            teacher.get_by_role("button", name="Start the challenge").click()
            expect(teacher.get_by_role("button", name="Reveal test accuracy")).to_be_visible()
            teacher.get_by_role("button", name="Start a room sweep").click()
            expect(teacher.get_by_role("link", name="Open the room sweep")).to_be_visible()

            # Two participants join; each runs their cell of the room sweep.
            alice, alice_key = join(browser, base, "alice")
            bob, bob_key = join(browser, base, "bob")
            assert alice_key != bob_key
            for page in (alice, bob):
                nav(page, "Room sweep")
                page.get_by_role("button", name="Run my cell").click()
                expect(page.get_by_text(re.compile(r"Your run run-[0-9a-f]{8} is"))).to_be_visible()

            # Alice starts the teaching preset from the form (long enough to still be active below).
            nav(alice, "New run")
            long_run = start_and_get_run(alice)
            assert store.get_run(long_run).owner == "alice"

            # Bob can read it but not change it: no Cancel on its live page, disabled buttons on Runs.
            bob.goto(f"{base}/live?run={long_run}&p={bob_key}")
            expect(bob.get_by_text("by alice")).to_be_visible()
            expect(bob.get_by_role("button", name="Cancel run")).to_have_count(0)
            bob.goto(f"{base}/runs?run={long_run}&p={bob_key}")
            expect(bob.get_by_text("Someone else's run")).to_be_visible()
            expect(bob.get_by_role("button", name="Cancel", exact=True)).to_be_disabled()
            expect(bob.get_by_role("button", name="Delete")).to_be_disabled()
            bob.get_by_role("button", name="Cancel", exact=True).click(force=True)  # a click on the disabled button
            bob.wait_for_timeout(1500)
            assert store.get_run(long_run).status in ("queued", "starting", "running")
            assert not store.get_run(long_run).cancel_requested
            assert exceptions_on(bob) == []

            # The instructor can: cancel it from its live page, then delete it.
            nav(teacher, "Instructor")
            teacher.get_by_role("link", name=re.compile(long_run)).click()
            teacher.get_by_role("button", name="Cancel run").click()
            deadline = time.monotonic() + 90
            while store.get_run(long_run).status not in ("cancelled", "failed", "done"):
                assert time.monotonic() < deadline, store.get_run(long_run)
                time.sleep(0.3)
            nav(teacher, "Instructor")  # open it again, finished: now it can be deleted
            teacher.get_by_role("link", name=re.compile(long_run)).click()
            teacher.get_by_role("button", name="Delete").click()
            teacher.get_by_role("button", name="Delete permanently").click()
            deadline = time.monotonic() + 30
            while any(r.id == long_run for r in store.list_runs()):
                assert time.monotonic() < deadline, "the instructor's delete did not happen"
                time.sleep(0.3)

            # Both participants enter the challenge from the Challenge page.
            challenge_runs = []
            for page in (alice, bob):
                nav(page, "Challenge")
                page.get_by_role("button", name="Start a challenge run").click()
                expect(page.get_by_role("heading", name="New run")).to_be_visible()
                challenge_runs.append(start_and_get_run(page))
            assert [store.get_run(r).owner for r in challenge_runs] == ["alice", "bob"]

            every = [r.id for r in store.list_runs()]
            records = wait_until_finished(store, every, timeout_s=RUNS_BUDGET_S)
            assert [r.status for r in records] == ["done"] * len(records), [(r.id, r.error) for r in records]

            # The room's curve has both cells; the leaderboard both participants.
            nav(teacher, "Room sweep")
            deadline = time.monotonic() + 30
            while sum(t["n"] for t in chart_traces(teacher, "Room sweep") or [] if t["name"] == "each run") < 2:
                assert time.monotonic() < deadline, chart_traces(teacher, "Room sweep")
                teacher.wait_for_timeout(300)
            nav(teacher, "Challenge")
            expect(teacher.get_by_text("2 participant(s) on the board")).to_be_visible()
            for page in (teacher, alice, bob):
                assert exceptions_on(page) == []
        finally:
            store.close()
            browser.close()
