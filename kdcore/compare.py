"""Comparing finished runs: the table of final numbers, the config diff, measured latency.

`comparison_rows` and `config_diff` read only run records (no torch); `measure_latency` builds the
architecture and times it on this machine, so the app caches it per (arch, dataset shape, batch).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from kdcore.config import flatten
from kdcore.store import RunRecord


def config_diff(records: list[RunRecord]) -> dict[str, list[Any]]:
    """Only the settings that differ between the runs (dotted keys → one value per run, in order)."""
    flat = [flatten(r.config) for r in records]
    keys = sorted(set().union(*flat)) if flat else []
    return {k: [f.get(k) for f in flat] for k in keys if len({repr(f.get(k)) for f in flat}) > 1 and k != "name"}


def datasets_differ(records: list[RunRecord]) -> bool:
    return len({r.config.get("dataset") for r in records}) > 1


def comparison_rows(records: list[RunRecord], latency: dict[tuple[str, str, int], float] | None = None) -> list[dict[str, Any]]:
    """One row of final numbers per run, straight from the store's summaries.

    latency maps (arch, dataset, batch) to seconds per batch (see `measure_latency`); when given,
    rows carry the student's and teacher's latency at batch 1 and 64 and the student's speed-up.
    """
    rows = []
    for r in records:
        s, c = r.summary or {}, r.config
        teacher, student = c.get("teacher", {}).get("arch"), c.get("student", {}).get("arch")
        row = {
            "run_id": r.id, "name": r.name, "status": r.status, "dataset": c.get("dataset"),
            "teacher": teacher, "student": student, "temperature": c.get("temperature"),
            "teacher_test_acc": s.get("teacher_test_acc"), "student_test_acc": s.get("student_test_acc"),
            "baseline_test_acc": s.get("baseline_test_acc"), "gap_closed": s.get("gap_closed"),
            "best_epoch": s.get("best_epoch"), "teacher_params": s.get("teacher_params"),
            "student_params": s.get("student_params"), "compression": s.get("compression"),
            "student_size_mb": s["student_params"] * 4 / 1e6 if s.get("student_params") else None,
            "wall_s": s.get("wall_s"),
        }
        if latency is not None:
            for who, arch in (("student", student), ("teacher", teacher)):
                for batch in (1, 64):
                    row[f"{who}_latency_ms_b{batch}"] = _ms(latency.get((arch, c.get("dataset"), batch)))
            t, st = row["teacher_latency_ms_b64"], row["student_latency_ms_b64"]
            row["speedup_b64"] = t / st if t and st else None
        rows.append(row)
    return rows


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


TEXT_LATENCY_TOKENS = 32  # a text model's latency is timed on sentences this long (a review snippet: ~27 tokens)


def measure_latency(arch: str, input_shape: tuple[int, ...], num_classes: int, batch: int, *,
                    repeats: int = 20, device: str = "cpu") -> float:
    """Median seconds of one forward pass at `batch`, in eval mode under inference_mode, after warm-up."""
    import torch

    from kdcore.models import build_model

    model = build_model(arch, tuple(input_shape), num_classes).to(device).eval()
    if len(input_shape) == 2:  # text (tokens, vocabulary): sentences of TEXT_LATENCY_TOKENS random token ids
        x = torch.randint(0, input_shape[1], (batch, min(TEXT_LATENCY_TOKENS, input_shape[0])), device=device)
    else:
        x = torch.randn(batch, *input_shape, device=device)
    times = []
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        for _ in range(repeats):
            started = time.perf_counter()
            model(x)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
    return statistics.median(times)
