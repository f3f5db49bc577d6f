"""Helpers for the app's tests (and for bench/ui.py): real runs in a store, the app in a subprocess,
Chromium driven by Playwright. Nothing here is a fixture, so any test module or script can use it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
ENTRY = REPO / "app" / "streamlit_app.py"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def charts(at) -> dict[str, dict]:
    """Plotly specs on an AppTest page by title (Streamlit's theme may wrap titles in <b>)."""
    out = {}
    for element in at.get("plotly_chart"):
        spec = json.loads(element.proto.spec)
        title = spec.get("layout", {}).get("title", {}).get("text", "")
        out[title.replace("<b>", "").replace("</b>", "")] = spec
    return out


# --- runs in a store ---------------------------------------------------------------------------------------


def finished_run(store, **overrides: Any) -> str:
    """Train a small run in this process (no worker) and return its id; it ends `done`."""
    from kdcore.config import RunConfig
    from kdcore.worker import execute

    config = RunConfig().replace(**overrides)
    run_id = store.create_run(config.to_dict(), name=config.name, status="running", pid=os.getpid())
    summary = execute(store, run_id, config)
    if summary.get("status") != "done":
        raise RuntimeError(f"test run {run_id} ended {summary.get('status')}: {summary.get('error')}")
    return run_id


def failed_run(store, error: str, log_lines: list[str], **overrides: Any) -> str:
    """A run recorded as failed with `error` and these log lines, without training anything."""
    from kdcore.config import RunConfig

    config = RunConfig().replace(**overrides)
    run_id = store.create_run(config.to_dict(), status="running", pid=os.getpid())
    store.add_records(run_id, logs=[(time.time(), line) for line in log_lines])
    store.finish(run_id, "failed", error=error)
    return run_id


def wait_until_finished(store, run_ids: list[str], timeout_s: float = 120.0) -> list:
    """Keep the queue moving until every run has finished; cancel (and wait for) any still active after."""
    from kdcore.runner import Runner
    from kdcore.store import ACTIVE

    runner = Runner(store)
    records = runner.wait(run_ids, poll_s=0.2, timeout_s=timeout_s)
    if any(r.status in ACTIVE for r in records):
        for record in records:
            if record.status in ACTIVE:
                runner.cancel(record.id)
        records = runner.wait(run_ids, poll_s=0.2, timeout_s=30)
    return records


def stop_active_runs(home: Path) -> None:
    """Cancel whatever still trains in the store at `home` and wait for its workers to exit."""
    from kdcore.store import ACTIVE, Store

    store = Store(home)
    try:
        active = [r.id for r in store.list_runs(status=list(ACTIVE))]
        if active:
            wait_until_finished(store, active, timeout_s=0)
    finally:
        store.close()


# --- the app in a subprocess, and a browser --------------------------------------------------------------------


def chromium_path() -> str | None:
    """Debian's Chromium (or $KDLAB_CHROMIUM); None when there is none."""
    for candidate in (os.environ.get("KDLAB_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_app(home: Path, log_path: Path, port: int | None = None, timeout_s: float = 60.0,
                keep_runs: bool = False, env: dict[str, str] | None = None) -> Iterator[str]:
    """`streamlit run app/streamlit_app.py` on a free port with KDCORE_HOME=home; yields its base URL.

    On exit the server is stopped, and any run it started is cancelled and waited for, so no
    worker outlives the test; with keep_runs, its runs train on (a server restarted under them).
    env: more environment for the server and the workers it starts.
    """
    port = port or free_port()
    env = {**os.environ, "KDCORE_HOME": str(home), "PYTHONUNBUFFERED": "1", **(env or {})}
    command = [sys.executable, "-m", "streamlit", "run", str(ENTRY), "--server.port", str(port),
               "--server.headless", "true", "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
               "--server.fileWatcherType", "none"]
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"streamlit exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not answer in {timeout_s:.0f} s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        if not keep_runs:
            stop_active_runs(home)


def launch_chromium(playwright, executable: str):
    return playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)


# --- reading the page --------------------------------------------------------------------------------------------

_TRACES_JS = """(prefix) => {
  for (const el of document.querySelectorAll('.js-plotly-plot')) {
    const raw = el.layout && el.layout.title && el.layout.title.text;
    const title = raw ? raw.replace(/<[^>]*>/g, '') : '';  // Streamlit's theme wraps titles in <b>
    if (title.startsWith(prefix)) {
      return (el.data || []).map(t => ({name: t.name || '', type: t.type || '', n: t.x ? t.x.length : 0}));
    }
  }
  return null;
}"""


def chart_traces(page, title_prefix: str) -> list[dict] | None:
    """[{name, type, n}] of the Plotly chart whose title starts with `title_prefix`; None if absent."""
    return page.evaluate(_TRACES_JS, title_prefix)


def chart_points(page, title_prefix: str, trace_name: str) -> int:
    """Points in one named trace of a chart (0 when the chart or trace is not drawn yet)."""
    traces = chart_traces(page, title_prefix) or []
    return sum(t["n"] for t in traces if t["name"] == trace_name)


def exceptions_on(page) -> list[str]:
    """Texts of Streamlit exception boxes on the page."""
    return [el.inner_text()[:500] for el in page.locator('[data-testid="stException"]').all()]


# --- driving the app as a user ------------------------------------------------------------------------------------

RUN_URL = re.compile(r".*/live\?run=(run-[0-9a-f]{8})")


def launch_from_form(page, base: str, *, dataset: str = "digits", teacher_epochs: int = 1, epochs: int = 30,
                     baseline: bool = False) -> tuple[str, float]:
    """Fill the New run form as a user would and press Start.

    Returns the new run's id and the `time.monotonic()` of the click (after the page has switched
    to the run's live view).
    """
    from playwright.sync_api import expect

    page.goto(base + "/")
    start = page.get_by_role("button", name="Start run")
    expect(start).to_be_enabled()
    box = page.get_by_role("combobox", name="Dataset")
    box.click()
    box.fill(dataset)
    page.get_by_role("option", name=re.compile(rf"^{re.escape(dataset)}\b")).first.click()
    for label, value in (("Teacher epochs", teacher_epochs), ("Epochs", epochs)):
        field = page.get_by_label(label, exact=True)
        field.fill(str(value))
        field.press("Enter")
    if not baseline:
        page.get_by_text("Train a baseline").click()
    # the summary beside Start describes the config the form holds: wait until it is ours
    expect(page.get_by_text(f"{epochs} student epochs after a {teacher_epochs}-epoch teacher (or its cached copy)"
                            + (", then the baseline." if baseline else "."))).to_be_visible()
    clicked = time.monotonic()
    start.click()
    page.wait_for_url(RUN_URL)
    return RUN_URL.match(page.url).group(1), clicked


def watch_loss_chart(page, home: Path, run_id: str, clicked: float, budget_s: float,
                     poll_s: float = 0.2, release: str | None = None) -> list[tuple[float, int, str]]:
    """Sample (seconds since the click, points of the loss chart's total, run status) until the run
    has finished or `budget_s` has passed since the click.

    release: a pause phase of the worker (KDCORE_TEST_PAUSE=RUN=PHASE, kdcore.worker.pause_point); the run
    waits there until the chart has shown points while it runs, then goes on. For runs too quick to be seen
    live on an idle machine."""
    from kdcore.store import FINISHED, Store

    store = Store(home)
    samples = []
    try:
        while time.monotonic() < clicked + budget_s:
            points = chart_points(page, "Training loss", "total")
            status = store.get_run(run_id).status
            samples.append((time.monotonic() - clicked, points, status))
            if status in FINISHED:
                break
            marker = store.run_dir(run_id) / f"paused-at-{release}"
            if release and points and status == "running" and marker.exists():
                marker.unlink()  # seen live: let the run go on
            page.wait_for_timeout(int(poll_s * 1000))
    finally:
        store.close()
    return samples


def first_point_s(samples: list[tuple[float, int, str]]) -> float | None:
    """Click-to-first-point: seconds from pressing Start until the loss chart drew a point."""
    return next((t for t, points, _ in samples if points), None)


def measure_click_to_first_point(workdir: Path, *, epochs: int = 30, budget_s: float = 150) -> dict[str, Any]:
    """For bench/ui.py: start the app on a fresh store, launch a tiny digits run from the form in
    Chromium, and time it. Returns click_to_first_point_s, run_s (click to done) and the samples."""
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    if executable is None:
        raise RuntimeError("no Chromium found (/usr/bin/chromium or $KDLAB_CHROMIUM)")
    home = Path(workdir) / "home"
    with running_app(home, Path(workdir) / "streamlit.log") as base, sync_playwright() as playwright:
        browser = launch_chromium(playwright, executable)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.set_default_timeout(60_000)
            run_id, clicked = launch_from_form(page, base, epochs=epochs)
            samples = watch_loss_chart(page, home, run_id, clicked, budget_s)
        finally:
            browser.close()
    done = samples[-1][0] if samples and samples[-1][2] == "done" else None
    return {"click_to_first_point_s": first_point_s(samples), "run_s": done, "run_id": run_id, "samples": samples}


def summary_line(name: str, value: Any) -> str:
    """One machine-readable line (`KDLAB_BENCH {"name": ..., "value": ...}`) for the benchmark log."""
    return "KDLAB_BENCH " + json.dumps({"name": name, "value": value})


# --- AppTest: what a download button would serve -------------------------------------------------------------------


def record_downloads(monkeypatch) -> dict[str, Any]:
    """From now on (for this test), what the app's download buttons would serve, by file name: the
    bytes or text for eager data, the callable for deferred data (call it to build the file).

    AppTest keeps download data in a media file manager it throws away after each run, so the test
    records it on the way in instead.
    """
    from streamlit.runtime.media_file_manager import MediaFileManager

    recorded: dict[str, Any] = {}
    add, add_deferred = MediaFileManager.add, MediaFileManager.add_deferred

    def recording_add(self, data, mimetype, coordinates, file_name=None, *args, **kwargs):
        recorded[file_name] = data
        return add(self, data, mimetype, coordinates, file_name, *args, **kwargs)

    def recording_add_deferred(self, data_callable, mimetype, coordinates, file_name=None, **kwargs):
        recorded[file_name] = data_callable
        return add_deferred(self, data_callable, mimetype, coordinates, file_name, **kwargs)

    monkeypatch.setattr(MediaFileManager, "add", recording_add)
    monkeypatch.setattr(MediaFileManager, "add_deferred", recording_add_deferred)
    return recorded


# --- the browser: sliders ---------------------------------------------------------------------------------------------


def move_slider(page, label: str, presses: int) -> None:
    """Move the Streamlit slider labelled `label` by `presses` steps (negative: to the left), as a
    user does with the keyboard after clicking its thumb."""
    thumb = page.get_by_role("slider", name=label)
    thumb.focus()
    for _ in range(abs(presses)):
        thumb.press("ArrowRight" if presses > 0 else "ArrowLeft")


def require_chromium(required: bool) -> str:
    """Chromium's path for a browser test; skips the test with the reason when there is none, or fails
    it when `required` (KDLAB_BROWSER_TESTS=1, as in CI)."""
    import pytest

    path = chromium_path()
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        path = None
    if path is None:
        reason = "no Chromium at /usr/bin/chromium (or $KDLAB_CHROMIUM), or the playwright package is missing"
        if required:
            pytest.fail(f"KDLAB_BROWSER_TESTS=1 but {reason}")
        pytest.skip(reason)
    return path
