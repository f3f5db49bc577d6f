"""The deployment report of a real finished run (digits, 2 epochs), its artefacts in the store, and the
background job the Deploy page starts; the store's artefact API on its own."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from app_helpers import finished_run
from kdcore.compress import jobs
from kdcore.compress.export import load_model
from kdcore.compress.options import CompressOptions, job_name, log_name, progress_name, report_name
from kdcore.compress.prune import weight_sparsity
from kdcore.compress.report import cached_report, compress_run
from kdcore.errors import StoreError
from kdcore.store import Store

TINY_RUN = {"dataset": "digits", "epochs": 2, "baseline": False, "teacher.epochs": 1, "teacher.arch": "cnn-small",
            "student.arch": "mlp-small"}
QUICK = 5  # timed calls: enough to exercise the measurement, cheap on a shared machine


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    home = tmp_path_factory.mktemp("compress")
    store = Store(home)
    run_id = finished_run(store, **TINY_RUN)
    yield store, run_id
    store.close()


@pytest.fixture(scope="module")
def report(lab):
    store, run_id = lab
    steps = []
    options = CompressOptions(prune=0.6, recover_epochs=1, quantize="int8", qat_epochs=1, repeats=QUICK)
    result = compress_run(store, run_id, options, progress=lambda step, total, message: steps.append((step, total)))
    return result, options, steps


def test_report_lists_every_variant_measured(lab, report):
    store, run_id = lab
    result, options, steps = report
    names = [row["name"] for row in result["variants"]]
    assert names == ["teacher", "student", "student-int8", "student-int8-qat1", "student-p60u", "student-p60u-r1",
                     "student-p60u-r1-int8", "student-p60u-r1-int8-qat1"]
    summary = store.get_run(run_id).summary
    by_name = {row["name"]: row for row in result["variants"]}
    assert by_name["student"]["test_acc"] == pytest.approx(summary["student_test_acc"], abs=1e-6)
    assert by_name["teacher"]["test_acc"] == pytest.approx(summary["teacher_test_acc"], abs=1e-6)
    assert by_name["teacher"]["params"] == summary["teacher_params"]
    for row in result["variants"]:
        assert 0 <= row["test_acc"] <= 1 and row["bytes"] > 0 and row["params"] > 0
        assert 0 < row["ort_p50_ms"] <= row["ort_p95_ms"] and row["ort_throughput"] > 0
        if row["precision"] == "fp32":
            assert row["torch_test_acc"] == pytest.approx(row["ort_test_acc"], abs=2 / result["test_size"])
            assert 0 < row["torch_p50_ms"] <= row["torch_p95_ms"] and row["torch_throughput"] > 0
        else:  # int8 exists only in ONNX Runtime
            assert row["torch_test_acc"] is None and row["test_acc"] == row["ort_test_acc"]
    assert by_name["student-int8"]["bytes"] < by_name["student"]["bytes"] / 1.5
    assert by_name["student"]["agreement"] == 1.0 and all(0 <= row["agreement"] <= 1 for row in result["variants"])
    total = steps[0][1]
    assert steps[-1] == (total, total) and [s for s, _ in steps] == sorted(s for s, _ in steps)
    assert sorted({s for s, _ in steps}) == list(range(1, total + 1))  # every step reported, recovery epochs within one


def test_qat_is_compared_with_ptq_as_both_run_in_onnxruntime(lab, report):
    store, run_id = lab
    result, _, _ = report
    by_name = {row["name"]: row for row in result["variants"]}
    assert [(q["source"], q["ptq_name"], q["qat_name"]) for q in result["quantization"]] == [
        ("student", "student-int8", "student-int8-qat1"),
        ("student-p60u-r1", "student-p60u-r1-int8", "student-p60u-r1-int8-qat1")]
    _, test_y = _test_split(store, run_id)
    for entry in result["quantization"]:
        qat = by_name[entry["qat_name"]]
        assert qat["precision"] == "int8" and qat["torch_test_acc"] is None and entry["qat_epochs"] == 1
        assert entry["qat_test_acc"] == qat["test_acc"] == qat["ort_test_acc"]
        assert entry["ptq_test_acc"] == by_name[entry["ptq_name"]]["test_acc"]
        session = ort.InferenceSession(str(store.artifact_path(run_id, f"{entry['qat_name']}.onnx")),
                                       providers=["CPUExecutionProvider"])
        x, _ = _test_split(store, run_id)
        ops = {node.op_type for node in onnx.load(str(store.artifact_path(run_id, f"{entry['qat_name']}.onnx"))).graph.node}
        assert "QuantizeLinear" in ops and "DequantizeLinear" in ops  # a real int8 graph, measured by running it
        accuracy = float((session.run(None, {"input": x})[0].argmax(1) == test_y).mean())
        assert accuracy == pytest.approx(entry["qat_test_acc"], abs=1e-9)
    pruned_qat = by_name["student-p60u-r1-int8-qat1"]
    assert pruned_qat["weight_sparsity"] == pytest.approx(0.6, abs=1e-4)  # fine-tuning kept the pruned zeros


def _test_split(store, run_id):
    from kdcore.data import load_dataset

    data = load_dataset("digits", val_fraction=store.get_run(run_id).config["val_fraction"])
    return np.ascontiguousarray(data.test_x.numpy()), data.test_y.numpy()


def test_the_teacher_and_the_student_are_pruned_and_recover_from_what_was_asked(lab):
    store, run_id = lab
    options = CompressOptions(prune=0.5, structured=True, prune_model="both", prune_steps=2, recover_epochs=1,
                              recover_from="both", repeats=QUICK)
    result = compress_run(store, run_id, options)
    assert [row["name"] for row in result["variants"]] == [
        "teacher", "teacher-p50sx2", "teacher-p50sx2-r1b", "student", "student-p50sx2", "student-p50sx2-r1b"]
    by_name = {row["name"]: row for row in result["variants"]}
    teacher, student = result["teacher_pruning"], result["pruning"]
    assert (teacher["model"], student["model"], teacher["steps"], student["recover_from"]) == ("teacher", "student", 2,
                                                                                                 "both")
    assert teacher["params_after"] == by_name["teacher-p50sx2-r1b"]["params"] < by_name["teacher"]["params"] * 0.6
    assert by_name["teacher-p50sx2-r1b"]["pruning"] == "50% structured in 2 steps, 1 epochs of KD from the unpruned " \
                                                      "teacher after each step"
    assert by_name["student-p50sx2-r1b"]["pruning"].endswith("from the teacher and the unpruned student after each step")
    assert by_name["teacher"]["agreement"] == 1.0  # each row agrees with the unpruned model of its role
    model, checkpoint = load_model(store.artifact_path(run_id, "teacher-p50sx2-r1b.pt"))
    assert checkpoint["arch"] == "cnn-small" and checkpoint["pruning"]["recover_from"] == "both"
    assert sum(p.numel() for p in model.parameters()) == teacher["params_after"]


def test_recovery_from_both_learns_the_average_of_the_softened_probabilities(lab):
    from kdcore.callbacks import Callback
    from kdcore.compress.recover import learning_from, recovery_config, target_model
    from kdcore.config import RunConfig
    from kdcore.trainer import prepare

    store, run_id = lab
    config = RunConfig.from_dict(store.get_run(run_id).config)
    prep = prepare(config, Callback(), store.teacher_dir())  # the run's teacher, from the cache
    unpruned = load_model(store.artifact_path(run_id, "student.pt"))[0]
    soft = learning_from(prep, target_model(prep, unpruned, "both", "student", config.temperature),
                         recovery_config(config, 1)).soft
    T = config.temperature
    with torch.no_grad():
        p_teacher = torch.softmax(prep.teacher.model(prep.data.train_x).double() / T, dim=1)
        p_student = torch.softmax(unpruned(prep.data.train_x).double() / T, dim=1)
    assert torch.allclose(torch.softmax(soft.train_logits.double() / T, dim=1), (p_teacher + p_student) / 2, atol=1e-5)
    alone = learning_from(prep, target_model(prep, unpruned, "unpruned", "student", T), recovery_config(config, 1)).soft
    assert alone.teacher is not prep.teacher.model and torch.equal(alone.train_logits.argmax(1),
                                                                    p_student.argmax(1).to(alone.train_logits.device))
    assert learning_from(prep, prep.teacher.model, config) is prep


def test_unstructured_pruning_is_exact_and_recovery_keeps_the_zeros(lab, report):
    store, run_id = lab
    result, options, _ = report
    pruning = result["pruning"]
    assert pruning["weight_sparsity"] == pytest.approx(0.6, abs=1e-4)
    assert pruning["sparsity_after_recovery"] == pruning["weight_sparsity"]
    assert pruning["params_after"] < pruning["params_before"]
    assert {"test_acc_before_recovery", "test_acc_after_recovery", "recovery_val_acc"} <= pruning.keys()
    for name in ("student-p60u.pt", "student-p60u-r1.pt"):
        model, checkpoint = load_model(store.artifact_path(run_id, name))
        assert weight_sparsity(model) == pytest.approx(0.6, abs=1e-4)
        assert checkpoint["pruning"]["structured"] is False
        assert checkpoint["deployment"]["dataset"] == "digits"


def test_every_artefact_is_in_the_store_and_the_report_is_cached(lab, report):
    store, run_id = lab
    result, options, _ = report
    stored = {row.name for row in store.artifacts(run_id)}
    assert set(result["artifacts"]) <= stored
    assert {"teacher.onnx", "teacher.pt", "student.onnx", "student.pt", "student-p60u-r1-int8.onnx"} <= stored
    assert report_name(options) in stored and not any(name.endswith(".part") for name in stored)
    assert cached_report(store, run_id, options) == json.loads(json.dumps(result))
    assert cached_report(store, run_id, CompressOptions(prune=0.5)) is None
    recovered = store.artifact_path(run_id, "student-p60u-r1.onnx")  # the ONNX file gives the .pt's logits
    model, _ = load_model(store.artifact_path(run_id, "student-p60u-r1.pt"))
    x = torch.randn(16, 1, 8, 8)
    session = ort.InferenceSession(str(recovered), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], model(x).numpy(), atol=1e-4, rtol=0)


# --- the background job ----------------------------------------------------------------------------------------------


def test_a_job_runs_in_the_background_and_leaves_its_report(lab):
    store, run_id = lab
    options = CompressOptions(quantize="int8", repeats=QUICK)
    assert jobs.state(store, run_id, options).state == "none"
    pid = jobs.start(store, run_id, options)
    assert jobs.start(store, run_id, options) == pid  # already being computed: not started twice
    deadline = time.monotonic() + 240
    seen = set()
    while (state := jobs.state(store, run_id, options)).state == "running" and time.monotonic() < deadline:
        seen.add(state.message)
        time.sleep(0.5)
    assert state.state == "done", (state, store.read_artifact(run_id, log_name(options)))
    assert [row["name"] for row in state.report["variants"]] == ["teacher", "student", "student-int8"]
    assert "starting" in seen or any("measuring" in message for message in seen)


def test_a_dead_job_is_a_failure_with_its_last_line(lab):
    store, run_id = lab
    options = CompressOptions(prune=0.3, repeats=QUICK)
    store.write_artifact(run_id, job_name(options), json.dumps({"pid": 2 ** 22 + 12345, "started": time.time()}).encode())
    store.write_artifact(run_id, log_name(options), b"compress: [1/5] loading\nkdcore: error: the teacher is gone\n")
    state = jobs.state(store, run_id, options)
    assert state.state == "failed" and state.error == "the teacher is gone"


def test_a_live_job_reports_its_progress(lab):
    store, run_id = lab
    options = CompressOptions(prune=0.4, repeats=QUICK)
    started = time.time()
    store.write_artifact(run_id, job_name(options), json.dumps({"pid": os.getpid(), "started": started}).encode())
    store.write_artifact(run_id, progress_name(options), json.dumps(
        {"step": 3, "total": 8, "message": "KD recovery: epoch 1/2", "t": started + 1}).encode())
    state = jobs.state(store, run_id, options)
    assert (state.state, state.step, state.total, state.message) == ("running", 3, 8, "KD recovery: epoch 1/2")
    assert state.fraction == pytest.approx(3 / 8)


# --- the store's artefacts ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x.onnx", "a/b.onnx", ".hidden", "", "x" * 200, "a b.onnx"])
def test_artefact_names_cannot_leave_the_run_folder(kd_home, name):
    store = Store(kd_home)
    with pytest.raises(StoreError, match="plain file name"):
        store.artifact_path("run-00000000", name)


def test_artefacts_are_written_whole_and_listed(kd_home):
    store = Store(kd_home)
    run_id = store.create_run({})
    assert store.artifacts(run_id) == [] and store.read_artifact(run_id, "a.onnx") is None
    store.write_artifact(run_id, "a.onnx", b"12345")
    store.write_artifact(run_id, "a.onnx", b"123")  # replaced whole
    (store.artifact_path(run_id, "b.json").parent / ".b.json.99.part").write_bytes(b"half")  # someone's partial write
    assert [(row.name, row.bytes) for row in store.artifacts(run_id)] == [("a.onnx", 3)]
    assert store.read_artifact(run_id, "a.onnx") == b"123"
    assert not (kd_home / "runs" / "run-00000001").exists()
    assert store.read_artifact("run-00000001", "a.onnx") is None and not (kd_home / "runs" / "run-00000001").exists()
