"""Experiment trackers: a run's config, metrics, summary and student in MLflow or TensorBoard.

Two ways in, one writer per tracker:
- live: `tracking.mlflow=URI` / `tracking.tensorboard=DIR` in a run's config. The worker adds a
  `TrackingCallback` per tracker beside its store callback (`callbacks_for`), so the trainer never
  knows trackers exist;
- afterwards: `python -m kdcore sync RUN_ID... --mlflow URI --tensorboard DIR` replays what the store
  holds (`export_run`).

What is written, under the same names both ways:
- MLflow: one run per KD Lab run (tag `kdlab.run_id`) in the experiment `$MLFLOW_EXPERIMENT_NAME`
  (default "KD Lab"); params = the flattened config (`teacher.arch`, ...); metrics = every recorded
  series as `<stage>/<name>` at its step (`student/val_acc`, `teacher/train_loss`), the summary's numbers
  under their own names (`student_test_acc`, ...); artefacts = `summary.json` and `student.pt`.
- TensorBoard: `DIR/<run id>/<stage>/` holds that stage's series under their names (so the `val_acc`
  chart overlays teacher, student and baseline); `DIR/<run id>/` holds the config as text, the summary's
  numbers as `summary/<name>` and both as hparams (the HParams tab compares runs).

A tracker that fails (a server that cannot be reached, a folder that cannot be written) never fails the
run: its callback writes one warning line to the run's log and stops calling it. The libraries are
imported only when a tracker is used.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from kdcore.callbacks import Callback
from kdcore.config import RunConfig, flatten

EXPERIMENT = "KD Lab"  # MLflow experiment unless $MLFLOW_EXPERIMENT_NAME names another
RUN_TAG = "kdlab.run_id"
FLUSH_SECONDS = 5  # live points reach the tracker within about this long (and all of a stage at its end)
FLUSH_POINTS = 1000  # MLflow's limit of metrics per log_batch request
TENSORBOARD_QUEUE = 100_000  # events a TensorBoard writer may hold before add_scalar waits for its thread
MLFLOW_STATUS = {"done": "FINISHED", "failed": "FAILED", "cancelled": "KILLED"}
# An unreachable server must not hold a run for minutes (MLflow's defaults: 7 retries, 120 s timeouts);
# the user's own settings of these variables win.
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                        "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


class Point(NamedTuple):
    """One recorded value of a series, as the store keeps it."""

    stage: str
    step: int
    name: str
    value: float
    t: float  # seconds since the epoch


class Tracker:
    """One KD Lab run's record in an external tracker: opened, fed points, closed with the outcome."""

    option = ""  # the CLI option and config key: tracking.<option>

    def __init__(self, target: str) -> None:
        self.target = target

    def open(self, run_id: str, name: str, params: dict[str, Any], *, replace: bool) -> None:
        """Start (or, after a resume, continue) the record; replace: drop an earlier record of the run first."""
        raise NotImplementedError

    def start_stage(self, stage: str, first_step: int) -> None:
        """A stage (re)starts: points of it at steps >= first_step written before are void."""

    def log_points(self, points: list[Point]) -> None:
        raise NotImplementedError

    def close(self, status: str, summary: dict[str, Any] | None, files: list[Path]) -> None:
        """The run ended with `status`; `summary` (numbers and more) and `files` (the student) go with it."""
        raise NotImplementedError

    def where(self) -> str:
        """Where the record is, for people."""
        return self.target

    def record(self) -> dict[str, Any]:
        """Where the record is, for programs (`sync --json`)."""
        return {"target": self.target}


class MLflowTracker(Tracker):
    option = "mlflow"

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.client: Any = None
        self.mlflow_run_id: str | None = None
        self.experiment_id: str | None = None

    def open(self, run_id, name, params, *, replace):
        with _mlflow_env():
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri=self.target)
            self.experiment_id = self._experiment()
            earlier = self.client.search_runs([self.experiment_id], f"tags.`{RUN_TAG}` = '{run_id}'", max_results=10)
            if earlier and not replace:  # a resumed run goes on in its MLflow run
                self.mlflow_run_id = earlier[0].info.run_id
                self.client.update_run(self.mlflow_run_id, status="RUNNING")
                return
            for old in earlier:
                self.client.delete_run(old.info.run_id)
            run = self.client.create_run(self.experiment_id, run_name=name or run_id, tags={RUN_TAG: run_id})
            self.mlflow_run_id = run.info.run_id
            items = [Param(key, _param_text(value)) for key, value in params.items()]
            for i in range(0, len(items), 100):  # MLflow takes at most 100 params per request
                self.client.log_batch(self.mlflow_run_id, params=items[i:i + 100])

    def _experiment(self) -> str:
        """The experiment's id, created when missing; a local database keeps its artefacts beside it."""
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":  # someone deleted it in the UI; its name is still taken
                self.client.restore_experiment(experiment.experiment_id)
            return experiment.experiment_id
        location = None
        if self.target.startswith("sqlite:///"):  # else MLflow picks ./mlruns of whichever folder the worker runs in
            location = (Path(self.target[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
        return self.client.create_experiment(name, artifact_location=location)

    def log_points(self, points):
        from mlflow.entities import Metric

        metrics = [Metric(f"{p.stage}/{p.name}", p.value, int(p.t * 1000), p.step) for p in points]
        with _mlflow_env():
            for i in range(0, len(metrics), FLUSH_POINTS):
                self.client.log_batch(self.mlflow_run_id, metrics=metrics[i:i + FLUSH_POINTS])

    def close(self, status, summary, files):
        from mlflow.entities import Metric

        with _mlflow_env():
            if summary:
                now = int(time.time() * 1000)
                numbers = [Metric(key, float(value), now, 0) for key, value in _numbers(summary).items()]
                if numbers:
                    self.client.log_batch(self.mlflow_run_id, metrics=numbers)
                self.client.log_dict(self.mlflow_run_id, summary, "summary.json")
            for path in files:
                self.client.log_artifact(self.mlflow_run_id, str(path))
            self.client.set_terminated(self.mlflow_run_id, status=MLFLOW_STATUS.get(status, "FAILED"))

    def where(self):
        return f"MLflow run {self.mlflow_run_id} in {self.target}" if self.mlflow_run_id else self.target

    def record(self):
        return {"tracking_uri": self.target, "experiment_id": self.experiment_id, "run_id": self.mlflow_run_id}


class TensorBoardTracker(Tracker):
    option = "tensorboard"

    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.folder: Path | None = None
        self.writers: dict[str, Any] = {}
        self.purge: dict[str, int] = {}  # stage → the step from which its earlier points are void
        self.replace = False
        self.params: dict[str, Any] = {}

    def open(self, run_id, name, params, *, replace):
        self.folder = Path(self.target) / run_id
        self.folder.mkdir(parents=True, exist_ok=True)  # an unwritable folder fails here, before training
        if not os.access(self.folder, os.W_OK):
            raise PermissionError(f"folder {self.folder} is not writable")
        self.replace, self.params = replace, params

    def start_stage(self, stage, first_step):
        writer = self.writers.pop(stage, None)
        if writer is not None:
            writer.close()
        self.purge[stage] = first_step

    def _writer(self, stage: str):
        """The stage's writer, made at its first point (a stage without series leaves no folder); the points of
        an earlier try at steps from `purge[stage]` on are void (TensorBoard drops them when it reads)."""
        writer = self.writers.get(stage)
        if writer is None:
            from torch.utils.tensorboard import SummaryWriter

            purge_step = self.purge.pop(stage, 0 if self.replace else None)
            # The writer's thread writes the events; a deep queue never makes training wait for it, and it
            # reaches the file every FLUSH_SECONDS (an explicit flush would wait for the thread: seconds on a busy machine).
            writer = self.writers[stage] = SummaryWriter(str(self.folder / stage), purge_step=purge_step,
                                                         max_queue=TENSORBOARD_QUEUE, flush_secs=FLUSH_SECONDS)
        return writer

    def log_points(self, points):
        for p in points:
            self._writer(p.stage).add_scalar(p.name, p.value, p.step, walltime=p.t)

    def close(self, status, summary, files):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        for writer in self.writers.values():
            writer.close()
        writer = SummaryWriter(str(self.folder), purge_step=0)  # the run's page: config, status, summary
        table = "\n".join(f"| {key} | {_param_text(value)} |" for key, value in self.params.items())
        writer.add_text("config", "| setting | value |\n|---|---|\n" + table, 0)
        writer.add_text("status", status, 0)
        numbers = {f"summary/{key}": value for key, value in _numbers(summary or {}).items()}
        hparam_values = {key: value if isinstance(value, (int, float, str, bool)) else _param_text(value)
                         for key, value in self.params.items()}
        for item in hparams(hparam_values, numbers):
            writer.file_writer.add_summary(item)
        for key, value in numbers.items():
            writer.add_scalar(key, value, 0)
        writer.close()

    def where(self):
        return str(self.folder or self.target)

    def record(self):
        return {"folder": self.where()}


# The trackers by name: the config key (tracking.<name>) and the `sync` option (--<name>).
TRACKERS: dict[str, type[Tracker]] = {"mlflow": MLflowTracker, "tensorboard": TensorBoardTracker}


class TrackingCallback(Callback):
    """Feeds one tracker live from the trainer's hooks; a failure disables it with one warning in the log."""

    def __init__(self, tracker: Tracker, run_id: str, config: RunConfig, *, log: Callable[[str], None],
                 checkpoint: Path, resume: bool = False) -> None:
        self.tracker, self.run_id, self.log, self.checkpoint = tracker, run_id, log, checkpoint
        self.failed = False
        self.points: list[Point] = []
        self.last_flush = time.monotonic()
        self.resumed: tuple[str, int] | None = None
        self._guard("open", lambda: tracker.open(run_id, config.name, flatten(config.to_dict()), replace=False))
        if not self.failed:
            log(f"tracking: {tracker.option} → {tracker.where()}" + (" (continued)" if resume else ""))

    def on_resume(self, stage, epoch):
        self.resumed = (stage, epoch)

    def on_stage_start(self, stage, epochs, steps_per_epoch):
        self.flush()
        resumed_epoch = self.resumed[1] if self.resumed and self.resumed[0] == stage else 0
        first_step = resumed_epoch * steps_per_epoch + 1 if resumed_epoch else 0
        self._guard("write", lambda: self.tracker.start_stage(stage, first_step))

    def on_metrics(self, stage, epoch, step, values):
        if self.failed:
            return
        now = time.time()
        self.points.extend(Point(stage, step, name, float(value), now) for name, value in values.items()
                           if value is not None and math.isfinite(value))
        if len(self.points) >= FLUSH_POINTS or time.monotonic() - self.last_flush >= FLUSH_SECONDS:
            self.flush()

    def on_stage_end(self, stage, values):
        self.flush()

    def flush(self) -> None:
        points, self.points = self.points, []
        self.last_flush = time.monotonic()
        if points:
            self._guard("write", lambda: self.tracker.log_points(points))

    def finish(self, status: str, summary: dict[str, Any] | None) -> None:
        """The run ended: the last points, the summary and (when done) the student checkpoint."""
        self.flush()
        files = [self.checkpoint] if status == "done" and self.checkpoint.is_file() else []
        self._guard("finish", lambda: self.tracker.close(status, summary, files))

    def _guard(self, what: str, action: Callable[[], None]) -> None:
        if self.failed:
            return
        try:
            action()
        except Exception as exc:  # any failure of a tracker is the tracker's, never the run's
            self.failed = True
            self.log(f"warning: tracking: {self.tracker.option} at {self.tracker.target} failed ({what}): "
                     f"{reason(exc)}; the run goes on without it. Export it once the tracker works: "
                     f"python -m kdcore sync {self.run_id} --{self.tracker.option} {self.tracker.target}")


def callbacks_for(config: RunConfig, run_id: str, *, log: Callable[[str], None], checkpoint: Path,
                  resume: bool = False) -> list[TrackingCallback]:
    """The live tracking callbacks a run's config asks for (none by default)."""
    targets = {name: getattr(config.tracking, name) for name in TRACKERS}
    return [TrackingCallback(TRACKERS[name](target), run_id, config, log=log, checkpoint=checkpoint, resume=resume)
            for name, target in targets.items() if target]


def export_run(store: Any, record: Any, tracker: Tracker) -> None:
    """Write a run that already ended (its record and what the store recorded of it) to `tracker`, replacing
    an earlier export of it there (`tracker.where()` says where it went). Failures raise (`sync` reports them)."""
    rows, _ = store.metrics_since(record.id)
    points = [Point(r.stage, r.step, r.name, r.value, r.t) for r in rows if r.value is not None and math.isfinite(r.value)]
    checkpoint = store.student_checkpoint(record.id)
    tracker.open(record.id, record.name or record.config.get("name") or "", flatten(record.config), replace=True)
    for stage in dict.fromkeys(p.stage for p in points):
        tracker.start_stage(stage, 0)
    tracker.log_points(points)
    files = [checkpoint] if record.status == "done" and checkpoint.is_file() else []
    tracker.close(record.status, record.summary, files)


# --- helpers -----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _mlflow_env() -> Iterator[None]:
    """MLFLOW_HTTP_DEFAULTS, and the file store opted into (MLflow 3 refuses a folder unless asked), for the
    duration of MLflow calls only: the process's environment stays as it was (spare workers compare it)."""
    defaults = {**MLFLOW_HTTP_DEFAULTS, "MLFLOW_ALLOW_FILE_STORE": "true"}
    added = [key for key in defaults if key not in os.environ]
    os.environ.update({key: defaults[key] for key in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def _param_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _numbers(summary: dict[str, Any]) -> dict[str, float]:
    """The summary's top-level finite numbers (not flags): what a tracker can chart."""
    return {key: float(value) for key, value in summary.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}


def reason(exc: BaseException) -> str:
    """One line: the exception's first line, without MLflow's long advice."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300]
