"""Helpers for the app's tests (and for bench/ui.py): real runs in a store, the app in a subprocess,
Chromium driven by Playwright. Nothing here is a fixture, so any test module or script can use it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parent.parent
ENTRY = REPO / "app" / "streamlit_app.py"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


# --- runs in a store ---------------------------------------------------------------------------------------


def finished_run(store, **overrides: Any) -> str:
    """Train a small run in this process (no worker) and return its id; it ends `done`."""
    from kdcore.config import RunConfig
    from kdcore.worker import execute

    config = RunConfig().replace(**overrides)
    run_id = store.create_run(config.to_dict(), name=config.name, status="running", pid=os.getpid())
    execute(store, run_id, config, raise_errors=True)
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
def running_app(home: Path, log_path: Path, port: int | None = None, timeout_s: float = 60.0) -> Iterator[str]:
    """`streamlit run app/streamlit_app.py` on a free port with KDCORE_HOME=home; yields its base URL.

    On exit the server is stopped, and any run it started is cancelled and waited for, so no
    worker outlives the test.
    """
    port = port or free_port()
    env = {**os.environ, "KDCORE_HOME": str(home), "PYTHONUNBUFFERED": "1"}
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
                raise RuntimeError(f"streamlit did not answer within {timeout_s:.0f} s:\n{log_path.read_text()[-3000:]}")
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
        stop_active_runs(home)


def launch_chromium(playwright, executable: str):
    return playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)


# --- reading the page --------------------------------------------------------------------------------------------

_TRACES_JS = """(prefix) => {
  for (const el of document.querySelectorAll('.js-plotly-plot')) {
    const title = el.layout && el.layout.title && el.layout.title.text;
    if (title && title.startsWith(prefix)) {
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


def summary_line(name: str, value: Any) -> str:
    """One machine-readable line (`KDLAB_BENCH {"name": ..., "value": ...}`) for the benchmark log."""
    return "KDLAB_BENCH " + json.dumps({"name": name, "value": value})
