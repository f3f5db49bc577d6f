"""How the trainer reports: a handful of optional hooks, no Streamlit and no SQLite.

The trainer calls these with plain Python values. A store-backed callback (see `kdcore.runner`)
batches them into the run store; the CLI's callback draws a progress bar.
"""

from __future__ import annotations

from typing import Any

STAGES = ("teacher", "soft_labels", "student", "finetune", "baseline")


class Callback:
    """Override what you need; every hook is optional."""

    def on_stage_start(self, stage: str, epochs: int, steps_per_epoch: int) -> None:
        """A stage begins: `epochs` × `steps_per_epoch` optimizer steps follow (0 for soft_labels)."""

    def on_metrics(self, stage: str, epoch: int, step: int, values: dict[str, float]) -> None:
        """Named values at a global step of a stage (train loss parts per step; val metrics per epoch)."""

    def on_epoch_end(self, stage: str, epoch: int, values: dict[str, float]) -> None:
        """An epoch finished; `values` holds its validation metrics. A checkpoint was saved before."""

    def on_snapshot(self, stage: str, epoch: int, payload: dict[str, Any]) -> None:
        """Soft labels of the fixed validation samples (and decision regions for 2-D sets)."""

    def on_stage_end(self, stage: str, values: dict[str, float]) -> None:
        """A stage finished; `values` holds its final numbers. Flush what is buffered."""

    def on_resume(self, stage: str, epoch: int) -> None:
        """Training continues after `epoch` of `stage` from a checkpoint: drop anything reported later."""

    def on_log(self, message: str) -> None:
        """A line for the run's log."""

    def should_stop(self) -> bool:
        """Polled once per step; True stops the run (it is then cancelled)."""
        return False


class CallbackList(Callback):
    """Fans every hook out to several callbacks."""

    def __init__(self, callbacks: list[Callback] | None = None) -> None:
        self.callbacks = list(callbacks or [])

    def on_stage_start(self, stage, epochs, steps_per_epoch):
        for cb in self.callbacks:
            cb.on_stage_start(stage, epochs, steps_per_epoch)

    def on_metrics(self, stage, epoch, step, values):
        for cb in self.callbacks:
            cb.on_metrics(stage, epoch, step, values)

    def on_epoch_end(self, stage, epoch, values):
        for cb in self.callbacks:
            cb.on_epoch_end(stage, epoch, values)

    def on_snapshot(self, stage, epoch, payload):
        for cb in self.callbacks:
            cb.on_snapshot(stage, epoch, payload)

    def on_stage_end(self, stage, values):
        for cb in self.callbacks:
            cb.on_stage_end(stage, values)

    def on_resume(self, stage, epoch):
        for cb in self.callbacks:
            cb.on_resume(stage, epoch)

    def on_log(self, message):
        for cb in self.callbacks:
            cb.on_log(message)

    def should_stop(self):
        return any(cb.should_stop() for cb in self.callbacks)
