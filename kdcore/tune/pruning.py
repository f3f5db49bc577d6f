"""The worker's side of a study: report a trial's validation accuracy at the rung epochs, stop it when pruned.

A worker training runs of a study (a sweep of kind "tune") gives each trial run a `PruningCallback`. At each
rung epoch of the student stage it reports the best validation accuracy so far to the trial in Optuna's
storage and asks the study's pruner; a pruned trial asks the store to cancel it with the reason "pruned at
epoch E" and stops at its next step (in a stacked group, only that member stops).
"""

from __future__ import annotations

import time
from typing import Any

from kdcore.callbacks import Callback
from kdcore.store import Store

STAGE = "student"


class PruningCallback(Callback):
    def __init__(self, store: Store, run_id: str, spec: dict[str, Any], trial_id: int, rungs: list[int]) -> None:
        self.store, self.run_id, self.spec, self.trial_id, self.rungs = store, run_id, spec, trial_id, set(rungs)
        self.best = float("-inf")
        self.pruned_at: int | None = None
        self._trial = None

    def on_epoch_end(self, stage: str, epoch: int, values: dict[str, float]) -> None:
        if stage != STAGE or self.pruned_at is not None:
            return
        self.best = max(self.best, values.get("val_acc", float("-inf")))
        if epoch not in self.rungs:
            return
        try:
            trial = self._optuna_trial()
            trial.report(self.best, epoch)
            prune = trial.should_prune()
        except Exception as exc:  # the study's storage busy or gone: the trial trains on, unpruned
            self.store.add_records(self.run_id, logs=[(time.time(), f"pruning skipped at epoch {epoch}: {exc}")])
            return
        if prune:
            self.pruned_at = epoch
            self.store.request_cancel(self.run_id, reason=f"pruned at epoch {epoch}")
            self.store.add_records(self.run_id, logs=[(time.time(), f"pruned at epoch {epoch}: its best validation "
                                                       f"accuracy {self.best:.4f} is not among the best at this rung")])

    def should_stop(self) -> bool:
        return self.pruned_at is not None

    def _optuna_trial(self):
        if self._trial is None:
            import optuna

            from kdcore.tune.study import load_optuna

            self._trial = optuna.trial.Trial(load_optuna(self.store, self.spec), self.trial_id)
        return self._trial


def pruning_callbacks(store: Store, records: list) -> dict[str, list[Callback]]:
    """{run id: [its PruningCallback]} for the records that are trials of a study with a pruner."""
    from kdcore.tune.study import KIND, rung_epochs

    out: dict[str, list[Callback]] = {}
    specs: dict[str, dict[str, Any]] = {}
    for record in records:
        if not record.sweep_id or record.resume:  # a resumed trial was told already: it trains to its end
            continue
        if record.sweep_id not in specs:
            specs[record.sweep_id] = store.get_sweep(record.sweep_id)
        spec = specs[record.sweep_id]
        trial = spec.get("trials", {}).get(record.id) if spec.get("kind") == KIND else None
        rungs = rung_epochs(spec["pruner"], int(record.config.get("epochs", 1))) if trial else []
        if rungs:
            out[record.id] = [PruningCallback(store, record.id, spec, trial["trial_id"], rungs)]
    return out
