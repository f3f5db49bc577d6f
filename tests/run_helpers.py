"""Run `python -m kdcore ...` as a user would, against a given run store, and read its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from kdcore.callbacks import Callback

TINY = ["--set", "dataset=digits", "--set", "epochs=1", "--set", "teacher.epochs=1", "--set", "baseline=false"]


def kdcore(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "KDCORE_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "kdcore", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def last_json(result: subprocess.CompletedProcess) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_and_metrics(home: Path, *sets: str) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """A 1-epoch CLI run with `--set` overrides; its summary and every recorded series of its student stage."""
    overrides = [arg for value in sets for arg in ("--set", value)]
    summary = last_json(kdcore(home, "run", *TINY, *overrides, "--json"))
    assert summary["status"] == "done"
    rows = last_json(kdcore(home, "metrics", summary["run_id"], "--json"))["metrics"]
    series: dict[str, list[float]] = {}
    for row in rows:
        if row["stage"] == "student":
            series.setdefault(row["name"], []).append(row["value"])
    return summary, series


class StopAfterFirstEpoch(Callback):
    """Asks to stop once the first epoch of a stage has ended (its checkpoint is then on disk)."""

    def __init__(self) -> None:
        self.epochs = 0

    def on_epoch_end(self, stage, epoch, values):
        self.epochs = epoch

    def should_stop(self) -> bool:
        return self.epochs >= 1
