"""A tuning study as the Tune page draws it: points per parameter, the best-so-far line, parallel coordinates,
and the space a form describes. Pure data from `kdcore.tune.report.study_report`'s dict; no Streamlit."""

from __future__ import annotations

from typing import Any

STATE_ORDER = ("complete", "pruned", "running", "starting", "queued", "failed", "cancelled")
ACTIVE_STUDY = ("queued", "running", "confirming")


def param_keys(report: dict[str, Any]) -> list[str]:
    """The searched settings, in the order the space lists them."""
    return [text.partition("=")[0] for text in report["space"]]


def is_log(report: dict[str, Any], key: str) -> bool:
    return any(text.startswith(f"{key}=log:") for text in report["space"])


def param_points(report: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """One point per trial that sampled `key` and has a validation accuracy: value, accuracy, state, number.
    A pruned trial's accuracy is its best before it was stopped (drawn apart: it trained fewer epochs)."""
    return [{"x": t["params"][key], "y": t["val_acc"], "state": t["state"], "number": t["number"],
             "run_id": t["run_id"], "epochs": t["epochs"]}
            for t in report["trials"] if key in t["params"] and t["val_acc"] is not None]


def progress_points(report: dict[str, Any]) -> tuple[list[dict[str, Any]], list[tuple[int, float]]]:
    """Each trial's accuracy by trial number, and the best complete trial so far as (number, accuracy) steps."""
    points = [{"number": t["number"], "y": t["val_acc"], "state": t["state"], "run_id": t["run_id"]}
              for t in report["trials"] if t["val_acc"] is not None]
    best = [(t["number"], b) for t, b in zip(report["trials"], report["best_so_far"]) if b is not None]
    return points, best


def parallel_dimensions(report: dict[str, Any]) -> tuple[list[dict[str, Any]], list[float]]:
    """Columns for a parallel-coordinates view of the complete trials: each parameter (a choice as its index,
    with its labels), then the validation accuracy; and the accuracies that colour the lines. A parameter a
    trial did not sample (another method's) is drawn at its column's bottom."""
    trials = [t for t in report["trials"] if t["state"] == "complete" and t["val_acc"] is not None]
    dims = []
    for key in param_keys(report):
        values = [t["params"].get(key) for t in trials]
        present = [v for v in values if v is not None]
        if not present:
            continue
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
            low = min(present)
            dims.append({"label": key, "values": [v if v is not None else low for v in values], "log": is_log(report, key)})
        else:
            labels = sorted({str(v) for v in present})
            dims.append({"label": key, "values": [labels.index(str(v)) if v is not None else -1 for v in values],
                         "ticks": labels})
    accuracy = [t["val_acc"] for t in trials]
    if trials:
        dims.append({"label": "val acc", "values": accuracy})
    return dims, accuracy


def state_counts(report: dict[str, Any]) -> dict[str, int]:
    counts = dict.fromkeys(STATE_ORDER, 0)
    for trial in report["trials"]:
        counts[trial["state"]] = counts.get(trial["state"], 0) + 1
    return {state: n for state, n in counts.items() if n}


def trial_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The trials table: number, state, each parameter, validation accuracy, epochs trained, run."""
    keys = param_keys(report)
    return [{"#": t["number"], "state": t["state"], **{k: t["params"].get(k) for k in keys}, "val_acc": t["val_acc"],
             "epochs": t["epochs"], "run_id": t["run_id"]} for t in report["trials"]]


def verdict_rows(verdict: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The confirmation on the test split: tuned, default, student alone (mean, 95% CI, seeds, gap closed)."""
    if not verdict:
        return []
    labels = {"tuned": "best settings", "default": "base config", "alone": "student alone"}
    return [{"": labels[key], "test acc": verdict[key]["mean"], "± 95% CI": verdict[key]["ci95"],
             "seeds": verdict[key]["n"], "gap closed": verdict[key].get("gap_closed")} for key in labels]


def best_run_for_new_run(report: dict[str, Any]) -> str | None:
    """The run whose settings New run should open: the best settings' first confirmation run (it trains the
    student alone beside it), else the best trial's run."""
    confirm, best = report.get("confirm") or {}, report.get("best") or {}
    if confirm.get("best") and confirm.get("number") == best.get("number"):
        return confirm["best"][0]
    return best.get("run_id")


def space_specs(ranges: dict[str, tuple[float, float, bool]], methods: list[str],
                method_params: dict[str, tuple[float, float]]) -> list[str]:
    """The `--space` lines a form describes: {key: (lo, hi, log)} ranges, the methods (a choice when there are
    several; one method is then a fixed setting, not a searched one), and {"dkd.beta": (lo, hi)}."""
    specs = [f"{key}={'log:' if log else ''}{lo:g},{hi:g}" for key, (lo, hi, log) in ranges.items()]
    if len(methods) > 1:
        specs.append("method=" + ",".join(methods))
    specs += [f"{key}={lo:g},{hi:g}" for key, (lo, hi) in method_params.items()]
    return specs
