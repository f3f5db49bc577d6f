"""Tests for kdcore.pretrained: ImageNet weights fitted to a teacher, found offline, and refused with one
line when they are not here and cannot be downloaded. Nothing here touches the network: KDCORE_OFFLINE=1
forbids downloads, and torchvision/timm caches point at empty folders."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from kdcore import pretrained
from kdcore.config import RunConfig
from kdcore.errors import ConfigError, ModelError
from kdcore.models import build_model
from run_helpers import kdcore


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No downloads, and empty weight caches for torchvision (TORCH_HOME) and timm (HF_HOME)."""
    monkeypatch.setenv(pretrained.OFFLINE_ENV, "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return tmp_path


def test_imagenet_tensors_are_fitted_to_a_grey_small_image_teacher():
    from torchvision.models import resnet18

    torch.manual_seed(0)
    imagenet = resnet18(weights=None).state_dict()  # stands in for the downloaded weights
    teacher = build_model("resnet18", (1, 28, 28), 10)
    head_before = teacher.net.fc.weight.clone()
    taken = pretrained.fit_state_dict(teacher.net, imagenet)
    state = teacher.net.state_dict()
    assert taken == len(imagenet) - 2  # everything but the 1000-class head (weight, bias)
    stem = imagenet["conv1.weight"].sum(dim=1, keepdim=True)[:, :, 2:5, 2:5]  # grey: RGB summed; 7x7 → centre 3x3
    assert torch.equal(state["conv1.weight"], stem)
    assert torch.equal(state["layer3.1.conv2.weight"], imagenet["layer3.1.conv2.weight"])
    assert torch.equal(state["bn1.running_var"], imagenet["bn1.running_var"])
    assert torch.equal(teacher.net.fc.weight, head_before)  # the classifier stays new


def test_weights_already_on_this_machine_are_used_offline(offline):
    from torchvision.models import MobileNet_V3_Small_Weights, mobilenet_v3_small

    folder = offline / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.manual_seed(1)
    imagenet = mobilenet_v3_small(weights=None).state_dict()
    torch.save(imagenet, folder / MobileNet_V3_Small_Weights.DEFAULT.url.rsplit("/", 1)[1])
    config = RunConfig.from_dict(dict(dataset="cifar10", teacher={"arch": "mobilenet_v3_small", "pretrained": True}))
    pretrained.check_available(config)  # no error: the file is here
    teacher = build_model("mobilenet_v3_small", (3, 32, 32), 10)
    assert pretrained.load_pretrained(teacher, "mobilenet_v3_small") == len(imagenet) - 2
    assert torch.equal(teacher.net.features[0][0].weight, imagenet["features.0.0.weight"])  # RGB: the stem as is


def test_missing_weights_offline_are_one_line_and_exit_2(offline, kd_home):
    result = kdcore(kd_home, "run", "--set", "teacher.arch=resnet18", "--set", "teacher.pretrained=true", "--json")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("kdcore: error: teacher.pretrained: resnet18's ImageNet weights are not on this "
                                    "machine and KDCORE_OFFLINE=1: put resnet18-f37072fd.pth in ")
    assert result.stderr.endswith(", or set teacher.pretrained=false\n")
    with pytest.raises(ModelError, match=r"^teacher\.pretrained: resnet18's ImageNet weights are not on this machine"):
        pretrained.load_pretrained(build_model("resnet18", (1, 28, 28), 10), "resnet18")


def test_pretrained_needs_an_architecture_that_has_weights():
    with pytest.raises(ConfigError, match=r"^teacher\.pretrained: cnn has no pretrained weights; pretrained weights "
                                          r"exist for resnet18, mobilenet_v3_small and timm:<name>$"):
        RunConfig.from_dict(dict(teacher={"arch": "cnn", "pretrained": True}))
    with pytest.raises(ConfigError, match=r"^teacher\.pretrained and teacher\.checkpoint exclude each other"):
        RunConfig.from_dict(dict(teacher={"arch": "resnet18", "pretrained": True, "checkpoint": "t.pt"}))


def test_pretrained_changes_the_teacher_key_and_false_keeps_the_old_one():
    plain = RunConfig.from_dict(dict(teacher={"arch": "resnet18"}))
    explicit = RunConfig.from_dict(dict(teacher={"arch": "resnet18", "pretrained": False}))
    assert plain.teacher_key() == explicit.teacher_key()
    assert RunConfig().teacher_key() == "2a32406594eb615f"  # the preset's key from before the setting existed
    assert RunConfig.from_dict(dict(teacher={"arch": "resnet18", "pretrained": True})).teacher_key() != plain.teacher_key()


needs_timm = pytest.mark.skipif(importlib.util.find_spec("timm") is None,
                                reason="timm:<name> models need the optional timm package (pip install timm)")


@needs_timm
def test_a_timm_model_is_a_kdmodel_for_the_datasets_shape():
    model = build_model("timm:resnet10t", (1, 28, 28), 10)
    logits, features, stages = model.forward_features(torch.zeros(2, 1, 28, 28))
    assert logits.shape == (2, 10) and features.shape == (2, model.feature_dim) and stages[0].dim() == 4


@needs_timm
def test_timm_weights_offline_are_one_line_and_exit_2(offline, kd_home):
    result = kdcore(kd_home, "submit", "--set", "dataset=cifar10", "--set", "teacher.arch=timm:resnet10t",
                    "--set", "teacher.pretrained=true")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == ("kdcore: error: teacher.pretrained: timm:resnet10t's ImageNet weights are not on this machine "
                             "and KDCORE_OFFLINE=1: download them once online (they are kept in the Hugging Face cache), "
                             "or set teacher.pretrained=false\n")
    unknown = kdcore(kd_home, "submit", "--set", "student.arch=timm:no_such_net")
    assert unknown.returncode == 2 and unknown.stderr == ("kdcore: error: student.arch: timm has no model 'no_such_net' "
                                                          "(timm.list_models() lists them)\n")
