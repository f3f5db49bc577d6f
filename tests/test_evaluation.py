"""Tests for kdcore.evaluation: devices, and inference in batches equal to one forward pass in eval mode."""

from __future__ import annotations

import pytest
import torch

from kdcore.data import load_dataset
from kdcore.errors import ConfigError
from kdcore.evaluation import EVAL_BATCH, accuracy, autocast, available_devices, predict, resolve_device
from kdcore.models import build_model

HAS_CUDA = torch.cuda.is_available()
HAS_MPS = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """More digits than one CPU inference batch, so predict() has to split them."""
    x = load_dataset("digits").train_x[:600]
    assert len(x) > 2 * EVAL_BATCH.get("cpu", 256)
    return x


def cnn_with_running_stats(x: torch.Tensor) -> torch.nn.Module:
    """cnn-small (it has BatchNorm) in train mode, its running statistics moved away from their start."""
    torch.manual_seed(0)
    model = build_model("cnn-small", (1, 8, 8), 10).train()
    with torch.no_grad():
        model(x[:128] * 3 + 1)
    return model


# ---------------------------------------------------------------- predict


def test_predict_in_batches_equals_one_forward_pass_in_eval_mode(images):
    model = cnn_with_running_stats(images)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    logits = predict(model, images)
    assert model.training, "predict() restores the model's mode"
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "no running statistic was updated"
    with torch.no_grad():
        expected = model.eval()(images)
        train_mode = model.train()(images)
    assert logits.shape == (600, 10) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits, train_mode, atol=1e-3), "batch statistics were not used"


def test_predict_features_match_forward_features(images):
    torch.manual_seed(1)
    model = build_model("mlp-tiny", (1, 8, 8), 10).eval()
    logits, features = predict(model, images, features=True)
    with torch.no_grad():
        expected_logits, expected_features, _ = model.forward_features(images)
    assert features.shape == (600, model.feature_dim)
    torch.testing.assert_close(logits, expected_logits)
    torch.testing.assert_close(features, expected_features)
    assert not model.training


def test_predict_does_not_record_gradients(images):
    model = build_model("mlp-tiny", (1, 8, 8), 10)
    assert not predict(model, images[:5]).requires_grad


# ---------------------------------------------------------------- accuracy


def test_accuracy_by_hand():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 4.0], [1.0, 2.0]])  # predicted 0, 1, 0, 1
    assert accuracy(logits, torch.tensor([0, 1, 1, 1])) == pytest.approx(0.75)
    assert accuracy(logits, torch.tensor([1, 0, 1, 0])) == 0.0
    assert accuracy(logits[:1], torch.tensor([0])) == 1.0


# ---------------------------------------------------------------- devices


def test_cpu_is_always_available():
    assert resolve_device("cpu") == torch.device("cpu")
    assert available_devices()[-1] == "cpu"


def test_auto_picks_the_best_device_present():
    expected = "cuda" if HAS_CUDA else "mps" if HAS_MPS else "cpu"
    assert resolve_device("auto").type == expected
    assert available_devices()[0] == ("mps" if HAS_MPS else "cuda" if HAS_CUDA else "cpu")


@pytest.mark.skipif(HAS_CUDA, reason="checks the error on a machine without a CUDA GPU")
def test_absent_cuda_is_a_clear_error():
    with pytest.raises(ConfigError, match="device=cuda but no CUDA GPU is available here; use device=auto or device=cpu"):
        resolve_device("cuda")


@pytest.mark.skipif(HAS_MPS, reason="checks the error on a machine without Apple MPS")
def test_absent_mps_is_a_clear_error():
    with pytest.raises(ConfigError, match="device=mps but Apple MPS is not available here"):
        resolve_device("mps")


def test_autocast_is_off_on_the_cpu(images):
    model = build_model("mlp-tiny", (1, 8, 8), 10)
    with autocast(torch.device("cpu"), enabled=True), torch.no_grad():
        assert model(images[:4]).dtype == torch.float32
    torch.testing.assert_close(predict(model, images, amp=True), predict(model, images))


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_autocast_on_cuda_is_bfloat16_and_predict_returns_float32(images):
    device = torch.device("cuda")
    model = build_model("cnn-small", (1, 8, 8), 10).to(device).eval()
    x = images.to(device)
    with autocast(device, enabled=True), torch.no_grad():
        assert model(x[:4]).dtype == torch.bfloat16
    logits = predict(model, x, amp=True)
    assert logits.dtype == torch.float32 and logits.device.type == "cuda"
    torch.testing.assert_close(logits, predict(model, x), rtol=0.05, atol=0.05)


def test_tiny_mlps_and_small_text_students_train_on_one_cpu_thread_and_conv_nets_keep_theirs():
    from kdcore.evaluation import cpu_threads_for

    cpu = torch.device("cpu")
    torch.set_num_threads(2)
    try:
        with cpu_threads_for(build_model("mlp-small", (1, 28, 28), 10), 64, cpu):  # 50,816 MACs per example
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2  # restored
        for arch in ("mlp", "cnn"):  # 535k MACs per example × 64 × 3 is past the line; convolutions always are
            with cpu_threads_for(build_model(arch, (1, 28, 28), 10), 64, cpu):
                assert torch.get_num_threads() == 2
        text = (128, 30522)
        for arch in ("bag-of-embeddings", "bilstm", "tiny-transformer"):  # 128, 229,632, 401,664 MACs per token
            with cpu_threads_for(build_model(arch, text, 2), 64, cpu):
                assert torch.get_num_threads() == 1
        with cpu_threads_for(build_model("tiny-transformer:3,384", text, 2), 64, cpu):  # MiniLM's width: 5.3M
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
