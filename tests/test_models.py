"""Tests for kdcore.models: every registered architecture, built for every dataset shape it should accept."""

import pytest
import torch

from kdcore.errors import ModelError
from kdcore.model_names import ARCH_NAMES, MLP_PRESETS, needs_text
from kdcore.models import (
    MODELS,
    KDModel,
    build_model,
    count_parameters,
    fits,
    list_models,
    parameter_count,
)

IMAGE_SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]
POINT_SHAPE = (2,)
NUM_CLASSES = 5
TEXT_NAMES = [name for name in ARCH_NAMES if needs_text(name)]  # token ids: tests/test_text.py
CONV_NAMES = [name for name in ARCH_NAMES if MODELS[name].needs_image]
MLP_NAMES = [name for name in ARCH_NAMES if not MODELS[name].needs_image and name not in TEXT_NAMES]
CASES = [(name, shape) for name in CONV_NAMES + MLP_NAMES for shape in IMAGE_SHAPES] + [
    (name, POINT_SHAPE) for name in MLP_NAMES
]


def _case_id(case):
    name, shape = case
    return f"{name}-{'x'.join(map(str, shape))}"


def _batch(shape, batch_size=2):
    return torch.randn(batch_size, *shape, generator=torch.Generator().manual_seed(0))


def test_registry_names_match_the_torch_free_list():
    assert tuple(MODELS) == ARCH_NAMES
    assert all(spec.name == name for name, spec in MODELS.items())


@pytest.mark.parametrize("name,shape", CASES, ids=map(_case_id, CASES))
def test_forward_and_features_have_consistent_shapes(name, shape):
    model = build_model(name, shape, NUM_CLASSES).eval()  # eval: dropout would make two passes differ
    assert isinstance(model, KDModel)
    x = _batch(shape)
    with torch.no_grad():
        logits = model(x)
        feature_logits, features, stages = model.forward_features(x)
    assert logits.shape == (2, NUM_CLASSES)
    assert torch.equal(logits, feature_logits)
    assert features.shape == (2, model.feature_dim)
    assert stages
    expected_dims = 4 if MODELS[name].needs_image else 2
    assert all(stage.dim() == expected_dims and stage.shape[0] == 2 for stage in stages)


@pytest.mark.parametrize("name,shape", CASES, ids=map(_case_id, CASES))
def test_parameter_count_matches_the_built_model(name, shape):
    assert parameter_count(name, shape, NUM_CLASSES) == count_parameters(build_model(name, shape, NUM_CLASSES))


@pytest.mark.parametrize("name", CONV_NAMES + MLP_NAMES)
def test_batch_of_one_in_eval_mode(name):
    shape = IMAGE_SHAPES[0] if MODELS[name].needs_image else POINT_SHAPE
    model = build_model(name, shape, NUM_CLASSES).eval()
    with torch.no_grad():
        assert model(_batch(shape, batch_size=1)).shape == (1, NUM_CLASSES)


GRADIENT_CASES = [
    ("mlp:32,16", POINT_SHAPE),
    ("cnn-small", (1, 8, 8)),
    ("resnet8", (3, 32, 32)),
    ("resnet18", (1, 8, 8)),
    ("mobilenet_v3_small", (3, 8, 8)),
]


@pytest.mark.parametrize("name,shape", GRADIENT_CASES, ids=map(_case_id, GRADIENT_CASES))
def test_gradients_reach_every_parameter(name, shape):
    model = build_model(name, shape, NUM_CLASSES).train()
    logits, features, stages = model.forward_features(_batch(shape))
    (logits.square().mean() + features.mean() + sum(stage.mean() for stage in stages)).backward()
    missing = [param_name for param_name, param in model.named_parameters() if param.grad is None]
    assert not missing


@pytest.mark.parametrize("name", CONV_NAMES)
def test_conv_nets_refuse_point_data(name):
    with pytest.raises(ModelError, match=rf"^{name} needs image input; dataset shape \(2,\) — use an MLP: mlp"):
        build_model(name, POINT_SHAPE, NUM_CLASSES)
    assert not fits(name, POINT_SHAPE)


def test_conv_nets_refuse_images_too_small_to_pool():
    with pytest.raises(ModelError, match="cnn needs images at least 8x8"):
        build_model("cnn", (1, 4, 4), NUM_CLASSES)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ModelError, match="unknown architecture 'resnet1000'; valid: mlp, .*resnet20.*mlp:W1,W2"):
        build_model("resnet1000", (1, 28, 28), NUM_CLASSES)


def test_custom_mlp_widths():
    model = build_model("mlp:128,64", (1, 28, 28), NUM_CLASSES)
    assert [(layer.in_features, layer.out_features) for layer in model.hidden] == [(784, 128), (128, 64)]
    assert model.feature_dim == 64
    assert [stage.shape[1] for stage in model.forward_features(_batch((1, 28, 28)))[2]] == [128, 64]


@pytest.mark.parametrize("name", MLP_NAMES)
def test_mlp_presets_use_their_widths(name):
    model = build_model(name, POINT_SHAPE, NUM_CLASSES)
    assert tuple(layer.out_features for layer in model.hidden) == MLP_PRESETS[name]


@pytest.mark.parametrize("arch", ["mlp:", "mlp:abc", "mlp:100000"])  # every malformed form: test_model_names.py
def test_malformed_mlp_widths_are_refused(arch):
    with pytest.raises(ModelError, match="bad MLP widths"):
        build_model(arch, POINT_SHAPE, NUM_CLASSES)


def test_bad_class_count_and_shape_are_refused():
    with pytest.raises(ModelError, match="num_classes"):
        build_model("mlp", POINT_SHAPE, 0)
    with pytest.raises(ModelError, match="input shape"):
        build_model("mlp", (0,), NUM_CLASSES)


def test_list_models_without_shape_has_no_params():
    rows = list_models()
    assert [row["name"] for row in rows] == list(ARCH_NAMES)
    assert all(row["params"] is None and row["description"] for row in rows)


def test_list_models_counts_only_models_that_fit():
    rows = {row["name"]: row for row in list_models(POINT_SHAPE, NUM_CLASSES)}
    assert all(rows[name]["params"] is None for name in CONV_NAMES)
    assert rows["mlp-tiny"]["params"] == (2 * 16 + 16) + (16 * NUM_CLASSES + NUM_CLASSES)
    image_rows = list_models([1, 28, 28], NUM_CLASSES)  # a list shape is accepted too
    assert all(row["params"] == parameter_count(row["name"], (1, 28, 28), NUM_CLASSES) for row in image_rows
               if row["name"] not in TEXT_NAMES)
    assert all(rows[name]["params"] is None and image_rows[0]["params"] for name in TEXT_NAMES)
    text_rows = {row["name"]: row["params"] for row in list_models((128, 30522), 2)}
    assert [name for name, params in text_rows.items() if params] == TEXT_NAMES  # the text models, and only they
