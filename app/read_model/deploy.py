"""The Deploy page's table and trade-off points, shaped from a deployment report (`kdcore.compress.report`).

A report is plain JSON: one row per variant (teacher, student, student int8, pruned, pruned + KD
recovery, ...) with accuracy, parameters, bytes, latency and throughput in PyTorch and ONNX Runtime.
"""

from __future__ import annotations

from typing import Any

TABLE_COLUMNS = ("Variant", "Precision", "Test acc (%)", "Δ vs student (pts)", "Agrees with student (%)", "Parameters",
                 "ONNX size (KB)",
                 "× smaller", "PyTorch p50 (ms)", "PyTorch p95 (ms)", "ORT p50 (ms)", "ORT p95 (ms)",
                 "PyTorch samples/s @64", "ORT samples/s @64")


def _student(report: dict[str, Any]) -> dict[str, Any] | None:
    return next((v for v in report["variants"] if v["name"] == "student"), None)


def variant_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per variant, in the table's units: accuracy in %, its difference to the fp32 student in
    percentage points, the share of test inputs on which it predicts what the fp32 student predicts, the
    ONNX file in KB and how many times smaller than the student's, times in ms."""
    student = _student(report)
    rows = []
    for v in report["variants"]:
        ratio = student["bytes"] / v["bytes"] if student and v["bytes"] else None
        delta = 100 * (v["test_acc"] - student["test_acc"]) if student and v["role"] == "student" else None
        rows.append(dict(zip(TABLE_COLUMNS, (
            v["variant"], v["precision"], 100 * v["test_acc"], delta,
            100 * v["agreement"] if v.get("agreement") is not None else None, v["nonzero_params"], v["bytes"] / 1024,
            ratio, v["torch_p50_ms"], v["torch_p95_ms"], v["ort_p50_ms"], v["ort_p95_ms"], v["torch_throughput"],
            v["ort_throughput"]))))
    return rows


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates, for a cost x to minimise and a value y to maximise.

    A point is dominated when another costs no more and is worth no less, and differs in one of the two.
    Returned in order of increasing cost, so they draw as the frontier's staircase.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def tradeoff_points(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each variant as a point of the trade-off chart: its accuracy (%), ONNX size (KB) and ONNX Runtime
    latency at batch 1 (p50, ms), and whether it is on the accuracy–size and accuracy–latency frontiers."""
    points = [{"label": v["variant"], "role": v["role"], "precision": v["precision"], "acc": 100 * v["test_acc"],
               "size_kb": v["bytes"] / 1024, "latency_ms": v["ort_p50_ms"]} for v in report["variants"]]
    on_size = set(pareto_front([(p["size_kb"], p["acc"]) for p in points]))
    on_latency = set(pareto_front([(p["latency_ms"], p["acc"]) for p in points]))
    for i, point in enumerate(points):
        point["pareto_size"], point["pareto_latency"] = i in on_size, i in on_latency
    return points


def headline(report: dict[str, Any]) -> list[str]:
    """A sentence per compressed variant: what it saves and what it costs, against the fp32 student."""
    student = _student(report)
    if student is None:
        return []
    lines = []
    for v in report["variants"]:
        if v["role"] != "student" or v["name"] == "student":
            continue
        delta = 100 * (v["test_acc"] - student["test_acc"])
        speed = student["ort_p50_ms"] / v["ort_p50_ms"] if v["ort_p50_ms"] else None
        lines.append(f"**{v['variant']}**: {student['bytes'] / v['bytes']:.1f}× smaller file, "
                     f"{delta:+.2f} points of accuracy"
                     + (f", {speed:.2f}× the student's ONNX Runtime speed at batch 1" if speed else "") + ".")
    return lines


def download_names(report: dict[str, Any], report_file: str) -> list[str]:
    """Every artefact of the report, then the report itself."""
    return [*report.get("artifacts", []), report_file]
