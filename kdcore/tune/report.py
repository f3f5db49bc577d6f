"""What a study has found so far, read from the store alone (no Optuna, no torch): the CLI's output and the
Tune page's data. A trial's state comes from its run: done → complete, cancelled "pruned at epoch E" →
pruned, otherwise as the run stands (queued, running, failed, cancelled)."""

from __future__ import annotations

from typing import Any

from kdcore.errors import RunNotFound
from kdcore.store import Store

STAGE = "student"


def trial_state(status: str, error: str | None) -> str:
    if status == "done":
        return "complete"
    if status == "cancelled" and (error or "").startswith("pruned"):
        return "pruned"
    return status


def study_report(store: Store, study_id: str) -> dict[str, Any]:
    """The study's spec, its trials (in order) with their validation curves and the steps they trained, the
    best so far, the parameters' importance and the confirmation's verdict."""
    from kdcore.tune.study import get_study

    spec = get_study(store, study_id)
    trial_ids = sorted(spec["trials"], key=lambda r: spec["trials"][r]["number"])
    curves: dict[str, dict[int, float]] = {r: {} for r in trial_ids}
    steps: dict[str, int] = dict.fromkeys(trial_ids, 0)
    for row in store.metrics_for(trial_ids, names=["val_acc"]):
        if row.stage == STAGE and row.value is not None:
            curves[row.run_id][row.epoch] = row.value
            steps[row.run_id] = max(steps[row.run_id], row.step)
    trials = []
    for run_id in trial_ids:
        info = spec["trials"][run_id]
        try:
            record = store.get_run(run_id)
        except RunNotFound:  # a trial's run deleted by hand: the study keeps its row
            continue
        state = trial_state(record.status, record.error)
        curve = curves[run_id]
        value = (record.summary or {}).get("student_val_acc") if state == "complete" else (max(curve.values())
                                                                                           if curve else None)
        trials.append({"number": info["number"], "run_id": run_id, "state": state, "params": info["params"],
                       "val_acc": value, "epochs": max(curve) if curve else 0, "steps": steps[run_id],
                       "curve": [curve[e] for e in sorted(curve)], "error": record.error if state != "complete" else None})
    best_so_far, best = [], None
    for trial in trials:
        if trial["state"] == "complete" and trial["val_acc"] is not None:
            best = trial["val_acc"] if best is None else max(best, trial["val_acc"])
        best_so_far.append(best)
    return {"study_id": study_id, "name": spec["name"], "status": spec["status"], "space": spec["space"],
            "base": spec["base"], "trials_wanted": spec["trials_wanted"], "seeds": spec["seeds"], "batch": spec["batch"],
            "pruner": spec["pruner"], "best": spec.get("best"), "importance": spec.get("importance") or {},
            "confirm": spec.get("confirm"), "verdict": spec.get("verdict"), "error": spec.get("error"),
            "driver_pid": spec.get("driver_pid"), "stop_requested": spec.get("stop_requested", False),
            "trials": trials, "best_so_far": best_so_far, "student_steps": sum(t["steps"] for t in trials),
            "invalid": spec.get("invalid", [])}


def list_studies(store: Store) -> list[dict[str, Any]]:
    """Every study, newest first: id, name, status, trials wanted and recorded."""
    from kdcore.tune.study import KIND

    return [{"study_id": s["sweep_id"], "name": s.get("name", ""), "status": s.get("status"), "created": s["created"],
             "trials_wanted": s.get("trials_wanted"), "trials": len(s.get("trials", {})), "space": s.get("space", [])}
            for s in store.list_sweeps() if s.get("kind") == KIND]



