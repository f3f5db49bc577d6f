"""Tests for the distillation methods: the torch-free registry in kdcore.methods, the method settings in
kdcore.config, and every method's per-step objective (kdcore/methods/<name>.py) on real (tiny) models,
checked against the float64 references of tests/references.py. The losses themselves are test_losses.py's;
the three newest methods have their own modules: test_method_crd.py, test_method_ctkd.py, test_method_kd_ls.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import references as ref
from kdcore import losses
from kdcore.config import RunConfig, build_config
from kdcore.errors import ConfigError
from kdcore.methods import METHODS, get_method, list_methods, resolve_params, series_terms, teacher_seeds
from kdcore.methods.multi_teacher import TeacherEnsemble, ensemble_logits
from kdcore.methods.objective import BuildContext, StepContext, hyper_of
from kdcore.models import build_model


def rand(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    """Seeded normal noise of a given shape, as float32 (the dtype training uses)."""
    return torch.from_numpy(np.random.default_rng(seed).normal(0, scale, shape)).float()


# ---------------------------------------------------------------- the registry


def test_every_method_documents_itself_and_its_parameters():
    assert list(METHODS)[0] == "kd" and len(METHODS) >= 14
    for name, method in METHODS.items():
        spec = method.spec
        assert spec.name == name and spec.title and spec.paper and len(spec.explanation) > 80
        for key, param in spec.params.items():
            assert param.low <= param.default <= param.high, (name, key)
            assert param.help
        assert resolve_params(name) == {k: p.default for k, p in spec.params.items()}
        assert len({term.name for term in spec.terms}) == len(spec.terms)
        assert all(term.kind in ("loss", "value") for term in spec.terms)


def test_each_method_lives_in_its_own_module():
    for name, method in METHODS.items():
        assert type(method).__module__ == f"kdcore.methods.{name}", name


def test_list_methods_is_json_and_covers_every_method():
    rows = json.loads(json.dumps(list_methods()))
    assert [row["name"] for row in rows] == list(METHODS)
    assert {"crd", "ctkd", "kd_ls"} <= {row["name"] for row in rows}
    at = next(row for row in rows if row["name"] == "at")
    assert at["params"]["weight"] == {"default": 1000.0, "low": 0.0, "high": 1e5, "help": at["params"]["weight"]["help"],
                                      "integer": False}
    assert at["needs_feature_maps"] is True and at["uses_logit_kd"] is False
    dkd = next(row for row in rows if row["name"] == "dkd")
    assert [term["name"] for term in dkd["terms"]] == ["tckd", "nckd"]
    expected = {"name", "title", "paper", "explanation", "params", "needs_feature_maps", "uses_logit_kd", "terms"}
    assert all(expected <= set(row) for row in rows)


def test_series_terms_name_what_a_run_records():
    assert list(series_terms("kd")) == ["train_loss", "train_ce", "train_kd", "train_feature"]
    assert list(series_terms("dkd"))[-2:] == ["train_tckd", "train_nckd"]
    assert series_terms("ctkd")["train_temperature"].kind == "value"
    assert list(series_terms("from-an-older-version")) == ["train_loss", "train_ce", "train_kd", "train_feature"]


# ---------------------------------------------------------------- config


def refused(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        build_config(None, overrides)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_default_method_is_kd_and_round_trips():
    assert RunConfig().method == "kd" and RunConfig().method_params == {}
    config = build_config(None, ["method=at", "method.weight=500", "method.stages=2", "student.arch=cnn-small",
                                 "teacher.arch=cnn"])
    assert config.method == "at" and config.method_params == {"weight": 500.0, "stages": 2}
    assert isinstance(config.method_params["stages"], int)
    again = RunConfig.from_json(config.to_json())
    assert again == config and again.to_json() == config.to_json()
    assert build_config(None, ["method_params.weight=500", "method=at", "student.arch=cnn-small"]).method_params == {
        "weight": 500.0}


def test_method_does_not_change_the_teacher_key():
    base = RunConfig()
    assert build_config(None, ["method=dkd", "method.beta=2"]).teacher_key() == base.teacher_key()


def test_unknown_method_lists_the_valid_ones():
    message = refused(["method=nope"])
    assert "nope" in message and all(name in message for name in METHODS)


def test_unknown_parameter_lists_the_methods_parameters():
    message = refused(["method=dkd", "method.gamma=1"])
    assert "'gamma'" in message and "alpha, beta, warmup_epochs, standardize" in message
    assert "no parameters" in refused(["method=fitnets", "weights.feature=1", "method.weight=1"])


@pytest.mark.parametrize("override,field", [
    ("method.beta=-1", "method.beta"), ("method.beta=21", "method.beta"), ("method.alpha=true", "method.alpha"),
    ("method.alpha=abc", "method.alpha"), ("method.warmup_epochs=2.5", "method.warmup_epochs"),
    ("method.alpha=.nan", "method.alpha"), ("method.standardize=2", "method.standardize"),
])
def test_out_of_range_parameters_are_refused_by_name(override, field):
    assert field in refused(["method=dkd", override])


def test_methods_that_need_feature_maps_refuse_mlps():
    message = refused(["method=at"])  # the default student is mlp-small
    assert message == "at needs convolutional feature maps; student.arch mlp-small has none — pick cnn/resnet*"
    assert "teacher.arch mlp" in refused(["method=at", "student.arch=cnn-small", "teacher.arch=mlp"])
    for name in ("sp", "rkd", "pkt", "dkd", "dist", "dml", "multi_teacher", "function_matching", "crd", "ctkd", "kd_ls"):
        assert build_config(None, [f"method={name}"]).method == name  # MLP pairs are fine


def test_cross_field_checks():
    assert "weights.feature" in refused(["method=fitnets"])
    assert build_config(None, ["method=fitnets", "weights.feature=1"]).method == "fitnets"
    assert "teacher.checkpoint" in refused(["method=multi_teacher", "teacher.checkpoint=/tmp/t.pt"])
    assert "weights.kd" in refused(["method=function_matching", "weights.kd=0", "weights.ce=1"])


def test_teacher_seeds():
    config = build_config(None, ["method=multi_teacher", "method.teachers=4", "teacher.seed=10"])
    assert teacher_seeds(config) == [10, 11, 12, 13]
    assert teacher_seeds(build_config(None, ["teacher.seed=7"])) == [7]


# ---------------------------------------------------------------- the per-step objective on real models


SHAPE, CLASSES = (1, 8, 8), 10


class _Info:
    input_shape, num_classes, kind = SHAPE, CLASSES, "image"


def build(method: str, student_arch: str, teacher_arch: str, extra: list[str] = (), train_size: int = 64):
    """A method's objective for a tiny student/teacher pair, as the trainer builds it."""
    config = build_config(None, [f"method={method}", f"student.arch={student_arch}", f"teacher.arch={teacher_arch}",
                                 "dataset=digits", *extra])
    torch.manual_seed(0)
    student = build_model(student_arch, SHAPE, CLASSES)
    teacher = build_model(teacher_arch, SHAPE, CLASSES).requires_grad_(False).eval()
    context = BuildContext(config, student, teacher, _Info(), train_size, torch.device("cpu"),
                           resolve_params(method, config.method_params))
    return config, student, teacher, get_method(method).objective(context)


def step(config, objective, student, x, y, epoch=1, indices=None):
    """One training step's parts, as the trainer computes them (teacher run on the batch)."""
    x = objective.prepare_batch(x)
    indices = torch.arange(len(x)) if indices is None else indices
    ctx = StepContext(x, y, indices, epoch, (epoch - 1) * 4 + 1, student.forward_features(x),
                      objective.teacher_outputs(x), hyper_of(config), steps_per_epoch=4)
    return objective.step(ctx)


PAIRS = [("cnn-small", "cnn"), ("mlp-tiny", "mlp-small")]  # MLPs only where the method allows them


IMAGE_METHODS = [name for name, method in METHODS.items() if not method.spec.text_only]  # text: test_method_text.py


@pytest.mark.parametrize("method,pair", [(m, pair) for m in IMAGE_METHODS for pair in PAIRS
                                         if not (METHODS[m].spec.needs_feature_maps and pair[0].startswith("mlp"))])
def test_objective_trains_the_student_and_never_the_teacher(method, pair):
    extra = ["weights.feature=1"] if method == "fitnets" else []
    config, student, teacher, objective = build(method, *pair, extra)
    x, y = rand(6, *SHAPE, seed=50), torch.arange(6) % CLASSES
    parts = step(config, objective, student, x, y, epoch=3)
    parts["loss"].backward()
    assert parts["loss"].shape == () and torch.isfinite(parts["loss"]) and float(parts["loss"].detach()) > 0
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert all(p.grad is None for p in teacher.parameters())
    if objective.modules is not None:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in objective.modules.parameters())
    recorded = {f"train_{name}" for name in parts}
    assert recorded <= set(series_terms(method)), recorded - set(series_terms(method))
    assert {f"train_{term.name}" for term in METHODS[method].spec.terms} <= recorded  # every own term is returned
    assert all(value.shape == () and not value.requires_grad for name, value in parts.items() if name != "loss")


def test_objective_flags():
    specs = {name: method.spec for name, method in METHODS.items()}
    assert {n for n, s in specs.items() if s.needs_teacher_forward} == {"at", "sp", "function_matching"}
    assert {n for n, s in specs.items() if s.needs_teacher_features} == {"rkd", "pkt", "fitnets", "crd"}
    assert {n for n, s in specs.items() if not s.uses_logit_kd} == {"at", "sp", "rkd", "pkt", "dkd", "dist", "dml",
                                                                             "logit_mse"}
    assert {n for n, s in specs.items() if not s.uses_labels} == {"dml", "function_matching"}
    assert {n for n, s in specs.items() if s.stackable} == {"kd", "kd_ls"}
    built = {name: build(name, "cnn-small", "cnn", ["weights.feature=1"] if name == "fitnets" else [])[3]
             for name in IMAGE_METHODS}
    assert {n for n, o in built.items() if o.modules is not None} == {"dml", "crd", "ctkd", "fitnets"}
    assert {n for n, s in specs.items() if s.text_only} == {"distilbert", "minilm"}
    assert {n for n, s in specs.items() if s.not_for_text} == {"at", "sp", "function_matching"}


def test_loss_is_the_weighted_sum_of_its_parts():
    config, student, _, objective = build("kd", "mlp-tiny", "mlp-small", ["weights.ce=0.3", "weights.kd=0.7"])
    x, y = rand(5, *SHAPE, seed=56), torch.arange(5)
    parts = step(config, objective, student, x, y)
    assert ref.close(parts["loss"], 0.3 * parts["ce"] + 0.7 * parts["kd"])
    assert ref.close(parts["kd"], ref.kd_loss(student(x), objective.teacher(x), 4.0), rtol=1e-4)


def test_objective_uses_the_configured_parameters():
    config, student, _, at = build("at", "cnn-small", "cnn", ["method.weight=10", "method.stages=2", "method.p=1"])
    x, y = rand(4, *SHAPE, seed=51), torch.arange(4)
    parts = step(config, at, student, x, y)
    s_maps, t_maps = student.forward_features(x)[2][-2:], at.teacher.forward_features(x)[2][-2:]
    expected = ref.attention_transfer(s_maps, t_maps, p=1.0)
    assert ref.close(parts["at"], expected, rtol=1e-4)
    assert ref.close(parts["loss"], config.weights.ce * parts["ce"] + 10 * expected, rtol=1e-4)


def test_dkd_warm_up_ramps_linearly():
    config, student, _, dkd = build("dkd", "mlp-tiny", "mlp-small", ["method.warmup_epochs=4"])
    x, y = rand(4, *SHAPE, seed=52), torch.arange(4)

    def dkd_term(epoch):
        parts = step(config, dkd, student, x, y, epoch=epoch)
        assert ref.close(parts["tckd"] * 1 + parts["nckd"] * 8, (parts["loss"] - 0.5 * parts["ce"]) * 4 / min(epoch, 4),
                         rtol=1e-4)
        return float((parts["loss"] - 0.5 * parts["ce"]).detach())

    values = [dkd_term(e) for e in (1, 2, 4, 9)]
    assert values[1] == pytest.approx(2 * values[0], rel=1e-5)
    assert values[2] == pytest.approx(4 * values[0], rel=1e-5) and values[3] == pytest.approx(values[2], rel=1e-6)


def test_dkd_terms_are_the_papers_parts():
    config, student, teacher, dkd = build("dkd", "mlp-tiny", "mlp-small", ["method.warmup_epochs=0"])
    x, y = rand(6, *SHAPE, seed=57), torch.arange(6)
    parts = step(config, dkd, student, x, y)
    _, tckd, nckd = ref.dkd(student(x), teacher(x), y, temperature=4.0)
    assert ref.close(parts["tckd"], 16 * tckd.mean(), rtol=1e-4) and ref.close(parts["nckd"], 16 * nckd.mean(), rtol=1e-4)


def test_function_matching_mixes_batches_reproducibly():
    x = rand(8, *SHAPE, seed=53)
    first = build("function_matching", "mlp-tiny", "mlp-small")[3].prepare_batch(x)
    again = build("function_matching", "mlp-tiny", "mlp-small")[3].prepare_batch(x)
    torch.testing.assert_close(first, again)
    assert not torch.equal(first, x)
    assert float(first.min()) >= float(x.min()) - 1e-6 and float(first.max()) <= float(x.max()) + 1e-6  # convex mixes
    plain = build("function_matching", "mlp-tiny", "mlp-small", ["method.mixup_alpha=0"])[3]
    assert plain.prepare_batch(x) is x


def test_objective_refuses_mlps_for_feature_map_methods():
    config = RunConfig.from_dict({"dataset": "digits", "student": {"arch": "cnn-small"}, "teacher": {"arch": "cnn"},
                                  "method": "at"})
    student, teacher = build_model("cnn-small", SHAPE, CLASSES), build_model("mlp", SHAPE, CLASSES)
    object.__setattr__(config.teacher, "arch", "mlp")  # a config that slipped past validation
    context = BuildContext(config, student, teacher, _Info(), 64, torch.device("cpu"), resolve_params("at"))
    with pytest.raises(ConfigError, match="at needs convolutional feature maps; teacher mlp has none"):
        get_method("at").objective(context)


def test_teacher_ensemble_acts_as_one_teacher():
    torch.manual_seed(1)
    members = [build_model("mlp-tiny", SHAPE, CLASSES).eval() for _ in range(3)]
    ensemble = TeacherEnsemble.of(members, temperature=4.0)
    x = rand(5, *SHAPE, seed=54)
    logits, features, stages = ensemble.forward_features(x)
    torch.testing.assert_close(torch.softmax(logits / 4.0, dim=1),
                               losses.multi_teacher_soft_targets([m(x) for m in members], 4.0))
    assert features.shape == (5, members[0].feature_dim) and ensemble.feature_dim == members[0].feature_dim
    torch.testing.assert_close(ensemble(x), logits)


def test_ensemble_logits_reproduce_the_averaged_distribution():
    teachers = [rand(5, 4, seed=32 + k, scale=3) for k in range(3)]
    logits = ensemble_logits(teachers, 4.0)
    torch.testing.assert_close(torch.softmax(logits / 4.0, dim=1), losses.multi_teacher_soft_targets(teachers, 4.0))
    huge = [torch.tensor([[1e4, -1e4, 0.0]]), torch.tensor([[-1e4, 1e4, 0.0]])]
    assert torch.isfinite(ensemble_logits(huge, 1.0)).all()


def test_formula_and_legend_come_from_the_method():
    for name, method in METHODS.items():
        params = resolve_params(name)
        terms = method.formula({"ce": 0.5, "kd": 0.5, "feature": 0.0}, 4.0, params)
        assert terms and all(isinstance(term, str) and term for term in terms), name
        assert all(isinstance(line, str) for line in method.legend(params))
