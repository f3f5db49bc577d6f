"""The Deploy page's table and trade-off points, shaped from a deployment report (`kdcore.compress.report`).

A report is plain JSON: one row per variant (teacher, student, student int8, pruned, pruned + KD
recovery, int8 after quantisation-aware fine-tuning, the pruned teacher, ...) with accuracy, parameters,
bytes, latency and throughput in PyTorch and ONNX Runtime. Each variant is compared with the fp32 model
it was made from: the student's variants with the student, the teacher's with the teacher.
"""

from __future__ import annotations

from typing import Any

TABLE_COLUMNS = ("Variant", "Precision", "Test acc (%)", "Δ vs fp32 (pts)", "Agrees with fp32 (%)", "Parameters",
                 "ONNX size (KB)",
                 "× smaller", "PyTorch p50 (ms)", "PyTorch p95 (ms)", "ORT p50 (ms)", "ORT p95 (ms)",
                 "PyTorch samples/s @64", "ORT samples/s @64")


def _fp32(report: dict[str, Any], role: str) -> dict[str, Any] | None:
    """The unpruned fp32 model of a role (the run's teacher or student), which its variants are compared with."""
    return next((v for v in report["variants"] if v["name"] == role), None)


def variant_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per variant, in the table's units: accuracy in %, its difference to the fp32 model it was made
    from (the student or the teacher) in percentage points, the share of test inputs on which it predicts what
    that model predicts, the ONNX file in KB and how many times smaller than that model's, times in ms."""
    rows = []
    for v in report["variants"]:
        base = _fp32(report, v["role"])
        ratio = base["bytes"] / v["bytes"] if base and v["bytes"] else None
        delta = 100 * (v["test_acc"] - base["test_acc"]) if base else None
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
    """A sentence per compressed variant: what it saves and what it costs against the fp32 model it was made
    from; then, with quantisation-aware fine-tuning, what QAT changed against post-training int8."""
    lines = []
    for v in report["variants"]:
        base = _fp32(report, v["role"])
        if base is None or v["name"] == v["role"]:
            continue
        delta = 100 * (v["test_acc"] - base["test_acc"])
        speed = base["ort_p50_ms"] / v["ort_p50_ms"] if v["ort_p50_ms"] else None
        lines.append(f"**{v['variant']}**: {base['bytes'] / v['bytes']:.1f}× smaller file, "
                     f"{delta:+.2f} points of accuracy"
                     + (f", {speed:.2f}× the {v['role']}'s ONNX Runtime speed at batch 1" if speed else "") + ".")
    names = {v["name"]: v for v in report["variants"]}
    for entry in report.get("quantization") or []:
        source = names.get(entry["source"])
        gain = 100 * (entry["qat_test_acc"] - entry["ptq_test_acc"])
        lines.append(f"**QAT against PTQ** for the {source['variant'] if source else entry['source']}: int8 after "
                     f"{entry['qat_epochs']} epochs of quantisation-aware fine-tuning {100 * entry['qat_test_acc']:.2f}%, "
                     f"post-training int8 {100 * entry['ptq_test_acc']:.2f}% ({gain:+.2f} points; fp32 "
                     f"{100 * entry['fp32_test_acc']:.2f}%), both measured running in ONNX Runtime.")
    return lines


def download_names(report: dict[str, Any], report_file: str) -> list[str]:
    """Every artefact of the report, then the report itself."""
    return [*report.get("artifacts", []), report_file]
