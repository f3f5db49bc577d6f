"""Tests for kdcore.config: validation at the edge, serialisation, config files, --set, teacher keys."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from kdcore.config import RunConfig, apply_overrides, build_config, parse_value, set_dotted
from kdcore.dataset_names import DATASET_NAMES
from kdcore.errors import ConfigError
from kdcore.model_names import ARCH_NAMES


def refused(data: dict) -> str:
    """The message of the ConfigError that `RunConfig.from_dict(data)` raises."""
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict(data)
    message = str(info.value)
    assert "\n" not in message, "errors are one line"
    return message


# ---------------------------------------------------------------- defaults and round trip


def test_defaults_are_valid():
    config = RunConfig()
    assert config.temperature > 0 and config.epochs >= 1 and config.batch_size >= 1
    assert RunConfig.from_dict({}) == config


def test_json_round_trip_keeps_every_field():
    config = RunConfig.from_dict({
        "dataset": "digits", "temperature": 2.5, "epochs": 3, "batch_size": 32, "lr": 0.01, "seed": 7,
        "device": "cpu", "baseline": False, "finetune_epochs": 1, "name": "round trip", "optimizer": "sgd",
        "teacher": {"arch": "cnn-small", "epochs": 5, "checkpoint": "/tmp/teacher.pt"},
        "student": {"arch": "mlp:32,16"},
        "weights": {"ce": 0.3, "kd": 0.7, "feature": 0.5},
    })
    text = config.to_json()
    assert json.loads(text) == config.to_dict()
    again = RunConfig.from_json(text)
    assert again == config
    assert again.to_json() == text
    assert again.student.arch == "mlp:32,16" and again.teacher.checkpoint == "/tmp/teacher.pt"


def test_int_accepted_for_float_and_integral_float_for_int():
    config = RunConfig.from_dict({"temperature": 4, "epochs": 3.0, "weights": {"ce": 1, "kd": 0}})
    assert config.temperature == 4.0 and isinstance(config.temperature, float)
    assert config.epochs == 3 and isinstance(config.epochs, int)
    assert config.weights.ce == 1.0 and config.weights.kd == 0.0


# ---------------------------------------------------------------- refused values name their field


@pytest.mark.parametrize("value", [0, -1, 0.0, math.nan, math.inf, -math.inf, "abc", True, None])
def test_bad_temperature_is_refused(value):
    assert "temperature" in refused({"temperature": value})


@pytest.mark.parametrize("value", [0, -1, "abc", True])
def test_bad_temperature_is_refused_by_the_constructor_too(value):
    with pytest.raises(ConfigError, match="temperature"):
        RunConfig(temperature=value)


@pytest.mark.parametrize("part", ["ce", "kd", "feature"])
@pytest.mark.parametrize("value", [-0.1, math.nan, math.inf, "x", False])
def test_bad_weight_is_refused_by_name(part, value):
    assert f"weights.{part}" in refused({"weights": {part: value}})


def test_all_zero_weights_are_refused():
    message = refused({"weights": {"ce": 0, "kd": 0, "feature": 0}})
    assert "weights" in message and "0" in message


def test_one_nonzero_weight_is_enough():
    assert RunConfig.from_dict({"weights": {"ce": 0, "kd": 0, "feature": 1}}).weights.feature == 1.0


@pytest.mark.parametrize("value", [0, -2, 1.5, "3", True, None])
def test_bad_epochs_are_refused(value):
    assert "epochs" in refused({"epochs": value})


@pytest.mark.parametrize("key", ["batch_size", "teacher.batch_size", "teacher.epochs"])
def test_zero_sizes_are_refused(key):
    data: dict = {}
    set_dotted(data, key, 0)
    assert key in refused(data)


@pytest.mark.parametrize("key, value", [
    ("lr", 0), ("lr", -1e-3), ("lr", 100), ("seed", -1), ("seed", 1.5), ("val_fraction", 0),
    ("val_fraction", 0.9), ("weight_decay", -1), ("optimizer", "lbfgs"), ("baseline", "yes"),
    ("amp", 1), ("finetune_epochs", -1), ("teacher.lr", 0), ("teacher.seed", -3), ("teacher.checkpoint", " "),
])
def test_other_bad_values_name_their_field(key, value):
    data: dict = {}
    set_dotted(data, key, value)
    assert key in refused(data)


def test_unknown_top_level_key_lists_valid_keys():
    message = refused({"temprature": 4})
    assert "temprature" in message
    for f in dataclasses.fields(RunConfig):
        assert f.name in message


def test_unknown_nested_key_lists_valid_nested_keys():
    message = refused({"teacher": {"foo": 1}})
    assert "foo" in message
    for key in ("teacher.arch", "teacher.epochs", "teacher.checkpoint"):
        assert key in message


def test_unknown_nested_key_is_named_in_full():
    assert "'teacher.foo'" in refused({"teacher": {"foo": 1}})


def test_group_set_to_a_scalar_is_refused():
    assert "teacher" in refused({"teacher": "cnn"})


@pytest.mark.parametrize("key", ["teacher.arch", "student.arch"])
def test_unknown_arch_lists_valid_names(key):
    data: dict = {}
    set_dotted(data, key, "transformer-xl")
    message = refused(data)
    assert key in message and "transformer-xl" in message
    for name in ARCH_NAMES:
        assert name in message


def test_unknown_dataset_lists_names():
    message = refused({"dataset": "imagenet"})
    assert "imagenet" in message
    for name in DATASET_NAMES:
        assert name in message


def test_device_tpu_is_refused():
    message = refused({"device": "tpu"})
    assert "device" in message and "cpu" in message


# ---------------------------------------------------------------- --set and config files


@pytest.mark.parametrize("text, expected", [
    ("4", 4), ("0.5", 0.5), ("true", True), ("false", False), ("null", None), ("cnn-small", "cnn-small"),
    ("mlp:32,16", "mlp:32,16"), ("[1, 2", "[1, 2"),
])
def test_parse_value_types(text, expected):
    value = parse_value(text)
    assert value == expected and type(value) is type(expected)


def test_parse_value_reads_exponent_notation_as_float():
    assert parse_value("1e-3") == 0.001
    assert build_config(None, ["lr=1e-3"]).lr == 0.001


@pytest.mark.parametrize("item", ["foo", "=3", " =3", ""])
def test_malformed_set_is_refused(item):
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, [item])


@pytest.mark.parametrize("item", ["a..b=1", ".a=1", "teacher.=1"])
def test_malformed_dotted_key_is_refused(item):
    with pytest.raises(ConfigError, match="malformed key"):
        apply_overrides({}, [item])


def test_set_into_a_scalar_is_refused():
    with pytest.raises(ConfigError, match="temperature"):
        build_config(None, ["temperature=4", "temperature.x=1"])


def test_set_string_for_number_is_refused():
    with pytest.raises(ConfigError, match="epochs"):
        build_config(None, ["epochs=three"])


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("dataset: digits\ntemperature: 2\nepochs: 5\n"
                    "teacher:\n  arch: cnn-small\n  epochs: 3\nstudent:\n  arch: mlp-tiny\n"
                    "weights:\n  ce: 0.5\n  kd: 0.5\n")
    config = build_config(str(path), ["epochs=2", "teacher.epochs=1", "weights.kd=0.25", "baseline=false"])
    assert config.dataset == "digits" and config.temperature == 2.0
    assert config.epochs == 2 and config.teacher.epochs == 1, "--set wins over the file"
    assert config.teacher.arch == "cnn-small" and config.student.arch == "mlp-tiny"
    assert config.weights.ce == 0.5 and config.weights.kd == 0.25 and config.baseline is False


def test_json_file_then_overrides(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"dataset": "moons", "lr": 1e-3, "teacher": {"arch": "mlp"}, "seed": 1}))
    config = build_config(str(path), ["seed=9", "teacher.checkpoint=null", "name=sweep one"])
    assert config.dataset == "moons" and config.lr == 0.001 and config.teacher.arch == "mlp"
    assert config.seed == 9 and config.teacher.checkpoint is None and config.name == "sweep one"


def test_empty_yaml_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert build_config(str(path)) == RunConfig()


def test_yaml_file_reads_exponent_notation_as_float(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("lr: 1e-3\n")
    assert build_config(str(path)).lr == 0.001


@pytest.mark.parametrize("name, text, expected", [
    ("bad.yaml", "teacher: [1, 2\n", "not valid YAML"),
    ("bad.json", "{\"epochs\": 2,", "not valid JSON"),
    ("list.yaml", "- 1\n- 2\n", "mapping"),
    ("unknown.yaml", "epoch: 3\n", "epoch"),
])
def test_bad_config_files_are_refused(tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        build_config(str(path))
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_missing_config_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        build_config(str(tmp_path / "nope.yaml"))


def test_replace_validates():
    config = RunConfig().replace(**{"teacher.epochs": 2, "temperature": 8})
    assert config.teacher.epochs == 2 and config.temperature == 8.0
    with pytest.raises(ConfigError, match="temperature"):
        RunConfig().replace(temperature=-1)


# ---------------------------------------------------------------- teacher key


BASE = {"dataset": "digits", "teacher": {"arch": "cnn-small", "epochs": 2}, "student": {"arch": "mlp-tiny"}}


def key_with(**dotted) -> str:
    return RunConfig.from_dict(json.loads(json.dumps(BASE))).replace(**dotted).teacher_key()


@pytest.mark.parametrize("key, value", [
    ("student.arch", "mlp-small"), ("temperature", 9), ("seed", 5), ("epochs", 30), ("batch_size", 16),
    ("lr", 0.05), ("weights.kd", 0.1), ("weights.feature", 1.0), ("baseline", False), ("finetune_epochs", 2),
    ("name", "another"),
])
def test_teacher_key_ignores_student_settings(key, value):
    assert key_with(**{key: value}) == key_with()


@pytest.mark.parametrize("key, value", [
    ("teacher.arch", "cnn"), ("teacher.epochs", 3), ("teacher.lr", 0.01), ("teacher.batch_size", 32),
    ("teacher.seed", 1), ("dataset", "mnist-5k"), ("val_fraction", 0.2),
])
def test_teacher_key_follows_teacher_settings_and_data(key, value):
    assert key_with(**{key: value}) != key_with()


def test_teacher_key_follows_the_optimizer_and_schedule_only_where_they_act():
    sgd = key_with(optimizer="sgd")
    assert len({sgd, key_with(optimizer="sgd", nesterov=False), key_with(optimizer="sgd", momentum=0.5),
                key_with(optimizer="sgd", schedule="step", lr_milestones=[2])}) == 4
    assert key_with(nesterov=False) == key_with(), "Adam has no momentum setting"
    assert key_with(lr_milestones=[2], lr_decay=0.5) == key_with(), "milestones act on the step schedule only"
    assert key_with(schedule="step", lr_milestones=[2]) != key_with(schedule="step", lr_milestones=[3])


@pytest.mark.parametrize("given, expected", [("150,180,210", [150, 180, 210]), ("[5, 7]", [5, 7]), (4, [4]),
                                             ([1, 2.0], [1, 2]), ("", [])])
def test_lr_milestones_read_as_increasing_epochs(given, expected):
    assert RunConfig.from_dict({"lr_milestones": given}).lr_milestones == expected
    if isinstance(given, str):  # what --set gives
        assert build_config(None, [f"lr_milestones={given}"]).lr_milestones == expected


@pytest.mark.parametrize("settings, named", [
    ({"lr_milestones": "3,2"}, "must increase"), ({"lr_milestones": "0,5"}, "positive"), ({"lr_milestones": "a"}, "epochs"),
    ({"schedule": "step"}, "needs lr_milestones"), ({"schedule": "linear"}, "schedule"), ({"lr_decay": 0}, "lr_decay"),
    ({"momentum": 1.5}, "momentum"), ({"nesterov": "yes"}, "nesterov"),
])
def test_bad_schedule_settings_are_refused_by_name(settings, named):
    with pytest.raises(ConfigError, match=named):
        RunConfig.from_dict(settings)


def test_teacher_key_is_stable_across_round_trip():
    config = RunConfig.from_dict(BASE)
    assert RunConfig.from_json(config.to_json()).teacher_key() == config.teacher_key()


# ---------------------------------------------------------------- architecture fits the dataset


@pytest.mark.parametrize("role", ["teacher", "student"])
@pytest.mark.parametrize("dataset", ["moons", "blobs"])
def test_a_conv_net_on_points_is_refused_at_validation(role, dataset):
    data = {"dataset": dataset, "teacher": {"arch": "mlp"}, "student": {"arch": "mlp-tiny"}, role: {"arch": "cnn"}}
    message = refused(data)
    assert message.startswith(f"{role}.arch: cnn needs image input"), message
    assert f"dataset {dataset} gives 2 features" in message and "mlp:W1,W2" in message


def test_the_default_cnn_teacher_does_not_fit_points():
    assert refused({"dataset": "moons"}).startswith("teacher.arch: cnn needs image input")
    with pytest.raises(ConfigError, match="student.arch: resnet20"):
        RunConfig().replace(dataset="moons", **{"teacher.arch": "mlp", "student.arch": "resnet20"})


@pytest.mark.parametrize("data", [
    {"dataset": "moons", "teacher": {"arch": "mlp"}, "student": {"arch": "mlp:8"}},
    {"dataset": "spirals", "teacher": {"arch": "mlp-small"}, "student": {"arch": "mlp-tiny"}},
    {"dataset": "digits", "teacher": {"arch": "cnn"}, "student": {"arch": "cnn-small"}},
    {"dataset": "mnist-5k", "teacher": {"arch": "cnn"}, "student": {"arch": "mlp-small"}},
    {"dataset": "cifar10", "teacher": {"arch": "resnet32x4"}, "student": {"arch": "resnet8x4"}},
    {"dataset": "imagefolder:/my/pets", "teacher": {"arch": "resnet20"}, "student": {"arch": "mlp-tiny"}},
])
def test_architectures_that_fit_the_dataset_pass(data):
    config = RunConfig.from_dict(data)
    assert (config.teacher.arch, config.student.arch) == (data["teacher"]["arch"], data["student"]["arch"])


def test_a_misfit_is_refused_by_replace_and_the_constructor_too():
    with pytest.raises(ConfigError, match="teacher.arch: cnn needs image input"):
        RunConfig().replace(dataset="circles")
    with pytest.raises(ConfigError, match="teacher.arch: cnn needs image input"):
        RunConfig(dataset="circles")
