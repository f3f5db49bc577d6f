"""A deployment report computed in a background process, for the app. Torch-free.

Exporting, pruning, recovering and timing take tens of seconds: the Deploy page must not do them in
Streamlit's script thread. `start` runs `python -m kdcore compress RUN_ID --json ...` in a new process
session (so it outlives a page reload), its output in the run's artefacts; `state` reads back where
it stands from the store: the report when it is written, the progress the report writes while it
works (`report-<key>.progress.json`), or the last line of the process's output when it died.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from kdcore.compress.options import CompressOptions, job_name, log_name, progress_name, report_name
from kdcore.store import Store


@dataclass(frozen=True)
class JobState:
    """Where the report for one run and one set of options stands."""

    state: str  # none | running | done | failed
    report: dict[str, Any] | None = None  # the report (done), or the previous one while a new one is computed
    step: int = 0
    total: int = 0
    message: str = ""
    error: str | None = None  # why it failed: the process's last line of output

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 0.0


def start(store: Store, run_id: str, options: CompressOptions) -> int:
    """Start computing the report in the background (unless it is already being computed); returns the pid."""
    current = _job(store, run_id, options)
    if current and _alive(current.get("pid")):
        return current["pid"]
    store.get_run(run_id)  # RunNotFound before a process is started
    command = [sys.executable, "-m", "kdcore", "compress", run_id, "--json", *options.cli_args()]
    env = {**os.environ, "KDCORE_HOME": str(store.home), "PYTHONUNBUFFERED": "1"}
    with open(store.artifact_path(run_id, log_name(options)), "wb") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, env=env,
                                   start_new_session=True)  # its own session: a page reload or a server restart leaves it be
    threading.Thread(target=process.wait, daemon=True).start()  # reap it when it ends: no zombie that looks alive
    store.write_artifact(run_id, job_name(options), json.dumps({"pid": process.pid, "started": time.time(),
                                                               "command": command}).encode())
    return process.pid


def state(store: Store, run_id: str, options: CompressOptions) -> JobState:
    """The report if there is one and no newer one is being computed; else the computation's progress or failure."""
    report = _json(store.read_artifact(run_id, report_name(options)))
    job = _job(store, run_id, options)
    if job and _alive(job.get("pid")):
        progress = _json(store.read_artifact(run_id, progress_name(options))) or {}
        if progress.get("t", 0) < job.get("started", 0):
            progress = {}  # an earlier computation's progress
        return JobState("running", report, progress.get("step", 0), progress.get("total", 0),
                        progress.get("message", "starting"))
    if report is not None and (not job or report.get("created", 0) >= job.get("started", 0)):
        return JobState("done", report)
    if job:
        return JobState("failed", report, error=_last_line(store.read_artifact(run_id, log_name(options))))
    return JobState("none")


def _job(store: Store, run_id: str, options: CompressOptions) -> dict[str, Any] | None:
    return _json(store.read_artifact(run_id, job_name(options)))


def _json(data: bytes | None) -> dict[str, Any] | None:
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


def _alive(pid: Any) -> bool:
    """Whether a process runs with this pid (a zombie, ended but not yet reaped, does not count)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        return True  # no /proc (macOS): trust kill


def _last_line(data: bytes | None) -> str:
    lines = [line.strip() for line in (data or b"").decode("utf-8", errors="replace").splitlines() if line.strip()]
    if not lines:
        return "the computation ended without a report or an error message"
    return lines[-1].removeprefix("kdcore: error: ")
