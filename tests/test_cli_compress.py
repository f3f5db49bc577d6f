"""`python -m kdcore export` and `compress` end to end on a tiny finished run, and every bad input.

The end-to-end tests are real subprocesses on a run made by `python -m kdcore run` (as a user would);
bad input goes through `kdcore.cli.main` in this process (each case is refused before any model is
built): one line on stderr, exit 2, and nothing written.
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
import pytest
import torch

from kdcore.cli import main
from kdcore.compress.export import load_model, onnx_metadata
from kdcore.store import Store
from run_helpers import kdcore, last_json

TINY_RUN = ["--set", "dataset=digits", "--set", "epochs=2", "--set", "teacher.epochs=1", "--set", "baseline=false"]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("cli-compress")


@pytest.fixture(scope="module")
def run_id(home):
    summary = last_json(kdcore(home, "run", *TINY_RUN, "--json"))
    assert summary["status"] == "done"
    return summary["run_id"]


@pytest.fixture
def in_home(home, monkeypatch):
    monkeypatch.setenv("KDCORE_HOME", str(home))
    return home


# --- end to end ---------------------------------------------------------------------------------------------------


def test_export_onnx_matches_pytorch(home, run_id, tmp_path):
    out = tmp_path / "m.onnx"
    result = last_json(kdcore(home, "export", run_id, "--format", "onnx", "--out", str(out), "--json"))
    assert result == {"run_id": run_id, "format": "onnx", "quantize": None, "path": str(out),
                      "bytes": out.stat().st_size}
    student, _ = load_model(Store(home).student_checkpoint(run_id))
    x = torch.randn(32, 1, 8, 8)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], student(x).numpy(), atol=1e-4, rtol=0)
    metadata = onnx_metadata(out)
    assert metadata["kdcore_run"] == run_id and len(metadata["input_mean"]) == 1 and len(metadata["class_names"]) == 10


def test_export_int8_and_pt(home, run_id, tmp_path):
    int8 = last_json(kdcore(home, "export", run_id, "--format", "onnx", "--quantize", "int8", "--out",
                            str(tmp_path / "m8.onnx"), "--json"))
    ort.InferenceSession(int8["path"], providers=["CPUExecutionProvider"])
    pt = last_json(kdcore(home, "export", run_id, "--format", "pt", "--json"))  # default: the run's artefacts
    assert pt["path"].endswith(f"{run_id}/artifacts/student.pt")
    model, checkpoint = load_model(pt["path"])
    assert checkpoint["arch"] == "mlp-small" and checkpoint["config"]["dataset"] == "digits"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m8.onnx"]


def test_compress_prints_every_variant(home, run_id):
    result = kdcore(home, "compress", run_id, "--prune", "0.5", "--structured", "--recover-epochs", "1",
                    "--recover-from", "unpruned", "--quantize", "int8", "--repeats", "5", "--json")
    report = last_json(result)
    assert "compress: [1/" in result.stderr and "done" in result.stderr.strip().splitlines()[-1]
    assert [v["variant"] for v in report["variants"]] == [
        "teacher", "student", "student int8", "pruned 50% structured", "pruned 50% structured + KD recovery",
        "pruned 50% structured + KD recovery int8"]
    assert report["pruning"]["recover_from"] == "unpruned" and report["teacher_pruning"] is None

    for variant in report["variants"]:
        for key in ("test_acc", "params", "bytes", "ort_p50_ms", "ort_p95_ms", "ort_throughput"):
            assert variant[key] is not None, (variant["variant"], key)
    student, pruned = report["variants"][1], report["variants"][3]
    assert pruned["params"] < student["params"] * 0.6 and pruned["bytes"] < student["bytes"]
    assert report["pruning"]["kind"] == "structured" and "test_acc_after_recovery" in report["pruning"]
    model, _ = load_model(Store(home).artifact_path(run_id, "student-p50s-r1u.pt"))  # narrower, rebuilt from the file
    assert model.hidden[0].out_features == 32


def test_compress_without_json_prints_a_table(in_home, run_id, capsys, monkeypatch):
    import kdcore.compress.report as report_module

    variant = {"variant": "student int8", "test_acc": 0.9, "nonzero_params": 4810, "bytes": 11754, "torch_p50_ms": None,
               "torch_p95_ms": None, "ort_p50_ms": 0.015, "ort_p95_ms": 0.02, "ort_throughput": 2.5e6}
    monkeypatch.setattr(report_module, "compress_run", lambda *args: {"variants": [variant]})
    assert main(["compress", run_id, "--quantize", "int8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["variant", "test", "acc"] and "ORT p50" in lines[0]
    assert lines[2].split() == ["student", "int8", "90.00%", "4,810", "11,754", "-", "-", "0.015", "ms", "0.020", "ms",
                                "2,500,000"]


# --- bad input ---------------------------------------------------------------------------------------------------------


def refused(capsys, *argv: str) -> str:
    """Run the CLI in this process; it must exit 2 with one line on stderr and print nothing on stdout."""
    with pytest.raises(SystemExit) as ended:
        code = main(list(argv))
        raise SystemExit(code)
    assert ended.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert captured.out == ""
    return lines[0]


def test_export_of_an_unknown_or_malformed_run_is_refused(in_home, capsys):
    assert "no run run-00000000" in refused(capsys, "export", "run-00000000", "--format", "onnx")
    assert "malformed run id 'nope'" in refused(capsys, "compress", "nope", "--json")


@pytest.mark.parametrize("status", ["queued", "running", "failed", "cancelled"])
def test_a_run_that_is_not_done_is_refused(in_home, capsys, status, tmp_path):
    store = Store(in_home)
    pending = store.create_run({"dataset": "digits"}, status="running" if status != "queued" else "queued")
    if status in ("failed", "cancelled"):
        store.finish(pending, status, error="stopped")
    line = refused(capsys, "export", pending, "--format", "onnx", "--out", str(tmp_path / "m.onnx"))
    assert f"run {pending} is {status}: only a finished run" in line
    assert f"is {status}" in refused(capsys, "compress", pending, "--prune", "0.5", "--json")
    assert list(tmp_path.iterdir()) == [] and store.artifacts(pending) == []


@pytest.mark.parametrize("sparsity", ["0", "1", "1.5", "-0.2", "nan", "inf"])
def test_a_sparsity_outside_0_1_is_refused(in_home, run_id, capsys, sparsity):
    line = refused(capsys, "compress", run_id, "--prune", sparsity, "--json")
    assert "--prune: the sparsity must be a number strictly between 0 and 1" in line


@pytest.mark.parametrize("argv, words", [
    (["--format", "tflite"], "invalid choice: 'tflite'"),
    (["--format", "pt", "--quantize", "int8"], "use --format onnx"),
    (["--format", "onnx", "--quantize", "int4"], "invalid choice: 'int4'"),
])
def test_an_unknown_format_is_refused(in_home, run_id, capsys, argv, words):
    assert words in refused(capsys, "export", run_id, *argv)


def test_compress_option_mistakes_are_refused(in_home, run_id, capsys):
    assert "add --prune" in refused(capsys, "compress", run_id, "--recover-epochs", "2")
    assert "--recover-from: unknown source 'pruned'" in refused(capsys, "compress", run_id, "--prune", "0.5",
                                                                "--recover-epochs", "1", "--recover-from", "pruned")
    assert "add --quantize int8" in refused(capsys, "compress", run_id, "--qat-epochs", "2")
    assert "invalid float value: 'half'" in refused(capsys, "compress", run_id, "--prune", "half")


def test_an_output_folder_that_does_not_exist_or_cannot_be_written_is_refused(in_home, run_id, capsys, tmp_path):
    missing = tmp_path / "no" / "such" / "m.onnx"
    assert f"folder {missing.parent} does not exist" in refused(capsys, "export", run_id, "--format", "onnx",
                                                               "--out", str(missing))
    assert "is a folder" in refused(capsys, "export", run_id, "--format", "onnx", "--out", str(tmp_path))
    assert "cannot write to folder /proc" in refused(capsys, "export", run_id, "--format", "onnx", "--out",
                                                     "/proc/m.onnx")  # a file system nobody writes to, not even root
    if os.geteuid() != 0:  # permission bits bind everyone but root
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert "cannot write to folder" in refused(capsys, "export", run_id, "--format", "pt", "--out",
                                                   str(locked / "m.pt"))
    assert list(tmp_path.iterdir()) == ([tmp_path / "locked"] if os.geteuid() != 0 else [])


def test_nothing_is_half_written_when_an_export_fails(in_home, run_id, capsys, tmp_path, monkeypatch):
    import kdcore.compress.export as export

    def broken(*args, **kwargs):
        path = args[2]
        with open(path, "wb") as partial:
            partial.write(b"half an ONNX file")
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(export.torch.onnx, "export", broken)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        main(["export", run_id, "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    assert list(tmp_path.iterdir()) == []
    assert capsys.readouterr().out == ""  # nothing claimed to be written
