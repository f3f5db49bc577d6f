"""One recorded series of several runs, on the x axis the user picks, for the Compare page."""

from __future__ import annotations

from collections.abc import Iterable

X_AXES = {"step": "step", "epoch": "epoch", "wall": "wall time (s since the run started)"}


def compare_series(rows: Iterable[tuple], stage: str, name: str, *, x: str = "step",
                   starts: dict[str, float | None] | None = None) -> dict[str, tuple[list[float], list[float]]]:
    """One metric of one stage per run, as (xs, ys), from `Store.metrics_for` rows
    (`RunMetricRow`: run_id, stage, epoch, step, name, value, t).

    x: "step" (the stage's step), "epoch" (a series reported every step at fractional epochs, step /
    steps per epoch; one reported once an epoch at its epoch) or "wall" (seconds since the run
    started; `starts` maps run id → start time, the first row's time when missing).
    """
    if x not in X_AXES:
        raise ValueError(f"x must be one of {', '.join(X_AXES)}, got {x!r}")
    picked: dict[str, list[tuple]] = {}
    for row in rows:
        if row[1] == stage and row[4] == name:
            picked.setdefault(row[0], []).append(row)
    out = {}
    for run_id, mine in picked.items():
        ys = [float("nan") if value is None else float(value) for *_, value, _t in mine]
        if x == "step":
            xs = [float(step) for _r, _s, _e, step, *_ in mine]
        elif x == "epoch":
            per_epoch: dict[int, int] = {}
            for _r, _s, epoch, *_ in mine:
                per_epoch[epoch] = per_epoch.get(epoch, 0) + 1
            steps_per_epoch = max(per_epoch.values())  # a finished epoch has them all; 1: a per-epoch series
            xs = ([step / steps_per_epoch for _r, _s, _e, step, *_ in mine] if steps_per_epoch > 1
                  else [float(epoch) for _r, _s, epoch, *_ in mine])
        else:
            start = (starts or {}).get(run_id) or mine[0][6]
            xs = [t - start for *_, t in mine]
        out[run_id] = (xs, ys)
    return out
