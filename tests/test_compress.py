"""kdcore.compress on models and files, without a run store: export, pruning, int8, measurement, options.

ONNX outputs are checked against PyTorch's on the whole digits test set with onnxruntime; pruning
against an independent count of zeros; the int8 model by running it.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from kdcore.compress import measure
from kdcore.compress.export import export_checkpoint, export_onnx, load_model, onnx_metadata, written_atomically
from kdcore.compress.options import CompressOptions, report_name
from kdcore.compress.qat import ActivationFakeQuant, WeightFakeQuant, fake_quantized
from kdcore.compress.prune import (apply_masks, channel_prune, hold_at_zero, magnitude_prune, prunable_weights,
                                   refit_classifier, weight_sparsity)
from kdcore.compress.quantize import calibration_inputs, classifier_nodes, quantize_int8
from kdcore.data import load_dataset
from kdcore.errors import ConfigError
from kdcore.models import build_model


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def trained(arch: str, digits, steps: int = 150, seed: int = 0) -> torch.nn.Module:
    """`arch` after a few hundred Adam steps on digits (enough for ~90% test accuracy with an MLP)."""
    torch.manual_seed(seed)
    model = build_model(arch, digits.info.input_shape, digits.info.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(digits.train_x), (64,), generator=generator)
        loss = F.cross_entropy(model(digits.train_x[idx]), digits.train_y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def onnx_logits(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


# --- export ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["mlp-small", "cnn-small"])
def test_onnx_logits_equal_pytorch_on_the_test_set(arch, digits, tmp_path):
    model = trained(arch, digits, steps=30)
    path = export_onnx(model, digits.test_x[:2], tmp_path / "model.onnx", {"class_names": digits.class_names})
    with torch.inference_mode():
        expected = model(digits.test_x).numpy()
    got = onnx_logits(path, digits.test_x)
    assert got.shape == expected.shape == (len(digits.test_x), 10)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(onnx_logits(path, digits.test_x[:1]), expected[:1], atol=1e-4, rtol=0)  # batch 1 too
    assert onnx_metadata(path)["class_names"] == digits.class_names
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # one self-contained file, no partial left


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    target = tmp_path / "model.onnx"
    with pytest.raises(RuntimeError), written_atomically(target) as partial:
        partial.write_bytes(b"half a model")
        raise RuntimeError("the exporter failed")
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_rebuilds_its_model(digits, tmp_path):
    model = trained("mlp-tiny", digits, steps=10)
    path = export_checkpoint(model, tmp_path / "student.pt", arch="mlp-tiny", input_shape=digits.info.input_shape,
                             num_classes=10, deployment={"input_mean": list(digits.mean)})
    rebuilt, checkpoint = load_model(path)
    assert checkpoint["arch"] == "mlp-tiny" and checkpoint["deployment"]["input_mean"] == list(digits.mean)
    with torch.inference_mode():
        torch.testing.assert_close(rebuilt(digits.test_x), model(digits.test_x), rtol=0, atol=0)


# --- unstructured pruning --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.9, 0.333])
@pytest.mark.parametrize("arch", ["mlp-small", "cnn-small"])
def test_magnitude_pruning_hits_the_sparsity_exactly(arch, sparsity, digits):
    model = build_model(arch, digits.info.input_shape, 10)
    before = {name: w.detach().clone() for name, w in prunable_weights(model)}
    masks, done = magnitude_prune(model, sparsity)
    total = sum(w.numel() for w in before.values())
    zeros = sum(int((w == 0).sum()) for _, w in prunable_weights(model))
    assert zeros == round(sparsity * total)  # exactly: no more, no fewer
    assert done.sparsity == pytest.approx(round(sparsity * total) / total)
    # global: the threshold is one magnitude for the whole network
    all_before = torch.cat([w.abs().flatten() for w in before.values()])
    threshold = all_before.sort().values[round(sparsity * total) - 1]
    for name, weight in prunable_weights(model):
        kept = masks[name]
        assert torch.equal(weight.detach()[kept], before[name][kept])  # survivors untouched
        assert (before[name][~kept].abs() <= threshold).all() and (before[name][kept].abs() >= threshold).all()


def test_recovery_training_keeps_pruned_weights_at_zero(digits):
    model = build_model("mlp-small", digits.info.input_shape, 10)
    masks, _ = magnitude_prune(model, 0.7)
    pruned_zero = {name: ~mask for name, mask in masks.items()}
    release = hold_at_zero(model, masks)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)  # momentum and decay: both must hold
    for step in range(20):
        idx = torch.arange(step * 32, step * 32 + 32)
        loss = F.cross_entropy(model(digits.train_x[idx]), digits.train_y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    release()
    params = dict(model.named_parameters())
    for name, zero in pruned_zero.items():
        assert (params[name].detach()[zero] == 0).all(), name
    assert weight_sparsity(model) == pytest.approx(0.7, abs=1e-4)
    apply_masks(model, masks)  # a no-op now
    assert weight_sparsity(model) == pytest.approx(0.7, abs=1e-4)


# --- structured pruning ----------------------------------------------------------------------------------------------


def test_channel_pruning_narrows_an_mlp_and_rebuilds_from_its_checkpoint(digits, tmp_path):
    model = trained("mlp-small", digits, steps=20)
    done = channel_prune(model, 0.5, digits.info.input_shape)
    assert model.hidden[0].out_features == 32 and model.head.in_features == 32 and model.head.out_features == 10
    assert done.params_after == 64 * 32 + 32 + 32 * 10 + 10 < done.params_before
    path = export_checkpoint(model, tmp_path / "pruned.pt", arch="mlp-small", input_shape=digits.info.input_shape,
                             num_classes=10, pruning={"structured": True, "fraction": 0.5})
    rebuilt, _ = load_model(path)
    with torch.inference_mode():
        torch.testing.assert_close(rebuilt(digits.test_x), model(digits.test_x), rtol=0, atol=0)


def test_the_classifier_of_a_pruned_mlp_is_refit_to_the_unpruned_logits_by_least_squares(digits):
    """Against numpy's float64 least squares on features computed by hand: the refit head is that solution, its
    logits are closer to the unpruned model's than those of the head as pruning left it, and the layers before it
    are what pruning left."""
    unpruned = trained("mlp-small", digits, steps=40)
    model, again = copy.deepcopy(unpruned), copy.deepcopy(unpruned)
    done = channel_prune(model, 0.5, digits.info.input_shape)
    sliced = [as_numpy(model.head.weight), as_numpy(model.head.bias)]
    hidden = model.hidden[0].weight.detach().clone()
    assert done.refit_inputs == 0 and refit_classifier(model, unpruned, digits.train_x) == len(digits.train_x)

    def layer(x, linear, relu=True):
        out = x @ as_numpy(linear.weight).T + as_numpy(linear.bias)
        return np.maximum(out, 0) if relu else out

    x = digits.train_x.flatten(1).double().numpy()
    features = layer(x, model.hidden[0])
    target = layer(layer(x, unpruned.hidden[0]), unpruned.head, relu=False)
    live = features.max(axis=0) > 0  # a neuron dead on every input keeps the weights pruning left it
    design = np.hstack([features[:, live], np.ones((len(features), 1))])
    solution = np.linalg.lstsq(design, target, rcond=None)[0]
    np.testing.assert_allclose(as_numpy(model.head.weight)[:, live], solution[:-1].T, atol=1e-4, rtol=0)
    np.testing.assert_allclose(as_numpy(model.head.weight)[:, ~live], sliced[0][:, ~live], atol=0, rtol=0)
    np.testing.assert_allclose(as_numpy(model.head.bias), solution[-1], atol=1e-4, rtol=0)
    assert torch.equal(model.hidden[0].weight, hidden)
    refit_error = ((design @ solution - target) ** 2).mean()
    sliced_error = ((features @ sliced[0].T + sliced[1] - target) ** 2).mean()
    assert live.sum() > len(live) / 2
    assert refit_error < sliced_error / 2
    # channel_prune does the same when given the inputs (its reference: the model before pruning)
    assert channel_prune(again, 0.5, digits.info.input_shape, refit_on=digits.train_x).refit_inputs == len(digits.train_x)
    torch.testing.assert_close(again.head.weight, model.head.weight)


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().double().numpy()


def test_channel_pruning_a_cnn_keeps_its_classes_and_exports(digits, tmp_path):
    model = trained("cnn-small", digits, steps=20)
    done = channel_prune(model, 0.5, digits.info.input_shape)
    assert [block[0][0].out_channels if isinstance(block[0], torch.nn.Sequential) else block[0].out_channels
            for block in model.blocks] == [4, 8, 8]
    assert done.params_after < done.params_before / 2
    path = export_onnx(model, digits.test_x[:2], tmp_path / "pruned.onnx")
    with torch.inference_mode():
        np.testing.assert_allclose(onnx_logits(path, digits.test_x), model(digits.test_x).numpy(), atol=1e-4, rtol=0)
    rebuilt, _ = load_model(export_checkpoint(model, tmp_path / "pruned.pt", arch="cnn-small",
                                              input_shape=digits.info.input_shape, num_classes=10,
                                              pruning={"structured": True}))
    with torch.inference_mode():
        torch.testing.assert_close(rebuilt(digits.test_x), model(digits.test_x))


# --- int8 --------------------------------------------------------------------------------------------------------------


def test_int8_model_runs_in_onnxruntime_smaller_and_close_in_accuracy(digits, tmp_path):
    model = trained("mlp-small", digits)
    fp32 = export_onnx(model, digits.test_x[:2], tmp_path / "fp32.onnx")
    int8 = quantize_int8(fp32, tmp_path / "int8.onnx", calibration_inputs(digits.train_x.numpy()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp32.onnx", "int8.onnx"]  # no scratch files left
    assert int8.stat().st_size < fp32.stat().st_size / 1.5  # int8 weights; the small classifier stays fp32
    session = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    graph = onnx.load(str(int8)).graph
    assert any(node.op_type == "DequantizeLinear" for node in graph.node)
    head = next(node for node in graph.node if node.output[0] == graph.output[0].name)  # the classifier stays fp32
    weights = {init.name: init for init in graph.initializer}
    assert head.op_type == "Gemm" and weights[head.input[1]].data_type == onnx.TensorProto.FLOAT
    assert classifier_nodes(fp32) == [head.name]
    fp32_acc = measure.accuracy(onnx_logits(fp32, digits.test_x), digits.test_y.numpy())
    int8_acc = measure.accuracy(session.run(None, {"input": digits.test_x.numpy()})[0], digits.test_y.numpy())
    assert fp32_acc > 0.85
    assert abs(int8_acc - fp32_acc) <= 0.03  # measured, by running it


def test_calibration_inputs_are_a_fixed_subset_of_the_training_inputs(digits):
    train = digits.train_x.numpy()
    first, second = calibration_inputs(train, 100), calibration_inputs(train, 100)
    assert first.shape == (100, *train.shape[1:]) and first.dtype == np.float32
    np.testing.assert_array_equal(first, second)
    rows = {row.tobytes() for row in train}
    assert all(row.tobytes() in rows for row in first)


# --- measurement -------------------------------------------------------------------------------------------------------


def test_speed_and_accuracy_measure_what_they_say(digits):
    calls = []

    def run(x):
        calls.append(len(x))
        return np.eye(10, dtype=np.float32)[digits.test_y.numpy()[: len(x)]]

    result = measure.speed(run, digits.test_x.numpy(), repeats=20)
    assert calls.count(1) == 20 + measure.WARMUP_CALLS and calls.count(64) == 4 + measure.WARMUP_CALLS
    assert 0 < result.p50_ms <= result.p95_ms and result.throughput > 0
    logits = measure.logits_of(run, digits.test_x.numpy()[:10])
    assert measure.accuracy(logits, digits.test_y.numpy()[:10]) == 1.0
    assert measure.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95) == pytest.approx(4.8)


# --- options -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prune", [0, 1, 1.5, -0.1, math.nan, math.inf, True, "0.5"])
def test_a_sparsity_outside_0_1_is_refused(prune):
    with pytest.raises(ConfigError, match="strictly between 0 and 1"):
        CompressOptions(prune=prune)


@pytest.mark.parametrize("kwargs, message", [
    ({"quantize": "int4"}, "unknown quantisation 'int4'; valid: int8"),
    ({"recover_epochs": 2}, "add --prune"),
    ({"prune": 0.5, "recover_epochs": -1}, "from 0 to"),
    ({"repeats": 0}, "--repeats"),
    ({"prune": 0.5, "prune_model": "teachers"}, "--prune-model: unknown model 'teachers'; valid: student, teacher, both"),
    ({"prune_model": "teacher"}, "add --prune"),
    ({"prune": 0.5, "prune_steps": 0}, "--prune-steps must be an integer from 1 to 20"),
    ({"prune": 0.5, "recover_from": "unpruned"}, "add --recover-epochs"),
    ({"prune": 0.5, "recover_epochs": 1, "recover_from": "student"}, "--recover-from: unknown source 'student'"),
    ({"qat_epochs": 2}, "--qat-epochs fine-tunes for a quantisation: add --quantize int8"),
    ({"quantize": "int8", "qat_epochs": -1}, "--qat-epochs must be an integer"),
])
def test_other_bad_options_are_refused_by_name(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        CompressOptions(**kwargs)


def test_options_name_their_artefacts_and_flags():
    options = CompressOptions(prune=0.5, structured=True, recover_epochs=2, quantize="int8")
    assert options.key == "p50s-r2-int8" and report_name(options) == "report-p50s-r2-int8.json"
    assert options.cli_args() == ["--prune", "0.5", "--structured", "--recover-epochs", "2", "--quantize", "int8"]
    assert CompressOptions().key == "plain"
    assert CompressOptions(prune=0.125, repeats=5).key == "p12.5u-n5"

    every = CompressOptions(prune=0.5, structured=True, prune_model="both", prune_steps=3, recover_epochs=2,
                            recover_from="unpruned", quantize="int8", qat_epochs=4, repeats=7)
    assert every.key == "ts-p50sx3-r2u-int8-q4-n7"
    assert CompressOptions(prune=0.5, prune_model="teacher", recover_epochs=1, recover_from="both").key == "t-p50u-r1b"
    from kdcore.cli import build_parser

    args = build_parser().parse_args(["compress", "run-x", *every.cli_args()])  # the flags ask for these options
    assert CompressOptions(prune=args.prune, structured=args.structured, recover_epochs=args.recover_epochs,
                           quantize=args.quantize, repeats=args.repeats, prune_model=args.prune_model,
                           recover_from=args.recover_from, prune_steps=args.prune_steps,
                           qat_epochs=args.qat_epochs) == every


# --- quantisation-aware fine-tuning ----------------------------------------------------------------------------------


def test_weight_fake_quantisation_rounds_each_output_channel_to_its_int8_grid():
    weight = torch.randn(5, 7, generator=torch.Generator().manual_seed(0)).requires_grad_()
    for reduce_range, levels in ((False, 127), (True, 64)):
        rounded = WeightFakeQuant(reduce_range)(weight)
        w = weight.detach().double()
        scale = w.abs().amax(dim=1, keepdim=True) / levels  # symmetric: max|w| maps to the last level
        expected = torch.clamp(torch.round(w / scale), -levels, levels) * scale
        assert torch.allclose(rounded.double(), expected, atol=1e-6)
        assert len(torch.unique(torch.round(rounded.detach().double() / scale)[0])) <= 2 * levels + 1
    (grad,) = torch.autograd.grad(WeightFakeQuant(False)(weight).sum(), weight)
    assert torch.equal(grad, torch.ones_like(weight))  # straight through: inside the grid the identity


def test_activation_fake_quantisation_uses_onnxruntimes_uint8_parameters():
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    observer = ActivationFakeQuant()
    observer.observe(torch.tensor([0.3, 2.5, 1.0]), None)  # min–max calibration widens to hold 0
    observer.observe(torch.tensor([-0.7, 1.0]), None)
    assert (observer.low, observer.high) == pytest.approx((-0.7, 2.5))
    scale, zero_point = observer.params()
    ort_zero, ort_scale = compute_scale_zp(np.float32(-0.7), np.float32(2.5), np.uint8(0), np.uint8(255))
    assert scale == pytest.approx(float(ort_scale), rel=1e-6) and zero_point == int(ort_zero)
    observer.observe(torch.tensor([-1.7, 3.5]), 0.01)  # training: a moving average of batch ranges
    assert (observer.low, observer.high) == pytest.approx((-0.71, 2.51))


def test_fake_quantised_training_leaves_a_plain_model_with_its_trained_weights(digits):
    model = trained("mlp-small", digits, steps=30)
    plain = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    x = digits.test_x[:64]
    with fake_quantized(model, digits.train_x[:128], reduce_range=True) as observers:
        assert parametrize.is_parametrized(model.hidden[0], "weight") and not parametrize.is_parametrized(model.head)
        with torch.no_grad():
            rounded = model(x)
            model.hidden[0].parametrizations.weight.original.add_(0.01)  # what a training step would do
        assert not torch.allclose(rounded, model(x))
        assert all(o.low is not None for o in observers) and observers[0].low < 0  # normalised pixels
    assert set(model.state_dict()) == set(plain) and not parametrize.is_parametrized(model.hidden[0])
    assert torch.allclose(model.hidden[0].weight, plain["hidden.0.weight"] + 0.01)  # float, not rounded
    assert torch.equal(model.head.weight, plain["head.weight"])


def test_a_teacher_that_is_an_ensemble_cannot_be_pruned():
    from kdcore.compress.checks import prunable_teacher
    from kdcore.config import RunConfig
    from kdcore.errors import KDError

    ensemble = RunConfig(method="multi_teacher")
    with pytest.raises(KDError, match=r"^--prune-model teacher: the run's teacher is an ensemble of 3 teachers "
                                      r"\(method multi_teacher\); prune its student instead$"):
        prunable_teacher(ensemble, CompressOptions(prune=0.5, prune_model="teacher"))
    assert prunable_teacher(ensemble, CompressOptions(prune=0.5)) is False  # its student can be pruned
    assert prunable_teacher(RunConfig(), CompressOptions(prune=0.5, prune_model="both")) is True
