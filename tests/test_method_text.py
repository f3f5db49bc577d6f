"""Text methods (kdcore/methods/distilbert.py, minilm.py): their losses against float64, the teacher's token states
kept once, one step on tiny Transformers, and a run of each on a small CSV."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import references as ref
from kdcore import losses
from kdcore.callbacks import Callback
from kdcore.config import RunConfig
from kdcore.data.text import tokenize
from kdcore.methods import get_method, resolve_params
from kdcore.methods.objective import BuildContext, StepContext, hyper_of
from kdcore.models import build_model
from kdcore.soft_labels import TokenStates
from kdcore.trainer import run_pipeline
from test_text import write_reviews


def rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(0, 1, shape)).float()


MASK = torch.tensor([[True] * 5, [True, True, True, False, False]])  # the second sentence is 3 tokens long


def test_hidden_cosine_loss_matches_the_float64_reference():
    student, teacher = rand(2, 5, 6, seed=1), rand(2, 5, 6, seed=2)
    value = losses.hidden_cosine_loss(student, teacher, MASK)
    assert ref.close(value, ref.hidden_cosine(student, teacher, MASK), rtol=1e-5)
    assert float(losses.hidden_cosine_loss(3 * teacher, teacher, MASK)) == pytest.approx(0.0, abs=1e-6)  # direction only
    teacher[1, 3:] = 99.0  # padding does not count
    assert ref.close(losses.hidden_cosine_loss(student, teacher, MASK), value, rtol=1e-6)


def test_relation_kl_loss_matches_the_float64_reference_across_widths():
    student_q, student_k = rand(2, 5, 8, seed=3), rand(2, 5, 8, seed=4)  # 2 relation heads of 4
    teacher_q, teacher_k = rand(2, 5, 12, seed=5), rand(2, 5, 12, seed=6)  # 2 relation heads of 6
    value = losses.relation_kl_loss(student_q, student_k, teacher_q, teacher_k, MASK, heads=2)
    assert ref.close(value, ref.relation_kl(student_q, student_k, teacher_q, teacher_k, MASK, heads=2), rtol=1e-5)
    assert float(losses.relation_kl_loss(teacher_q, teacher_k, teacher_q, teacher_k, MASK, 3)) == pytest.approx(0, abs=1e-6)
    q64, k64 = (rand(2, 5, 2, seed=seed).double().requires_grad_() for seed in (7, 8))
    teacher64 = rand(2, 5, 2, seed=9).double()
    torch.autograd.gradcheck(lambda q, k: losses.relation_kl_loss(q, k, teacher64, teacher64, MASK, 1), (q64, k64))


SHAPE = (128, 30522)
SENTENCES = ["a gem", "an overlong and tedious film", "the cast is charming, the script is not", "dull"]


def test_token_states_are_the_teachers_hidden_states_kept_once():
    torch.manual_seed(0)
    teacher = build_model("tiny-transformer:2,64", SHAPE, 2).eval()
    ids = torch.from_numpy(tokenize(SENTENCES * 3))
    kept = TokenStates(teacher, ids, -1)
    idx = torch.tensor([5, 0, 3])  # the batch's longest sentence sets L, as the student's trim does
    with torch.no_grad():
        expected = teacher.forward_features(ids[idx])[2][-1]
    gathered = kept.batch(idx)
    real = (ids[idx] >= 0)[:, : gathered.shape[1]]
    assert gathered.shape == expected.shape
    torch.testing.assert_close(gathered[real], expected[real], rtol=0.02, atol=0.02)  # stored in bfloat16
    assert (gathered[~real] == 0).all()


class _Info:
    input_shape, num_classes, kind = SHAPE, 2, "text"


@pytest.mark.parametrize("method,student_arch,terms", [("distilbert", "tiny-transformer:1,32", {"cosine"}),
                                                       ("minilm", "tiny-transformer:1,32", {"attention", "value_relation"})])
def test_one_step_trains_the_student_and_never_the_teacher(method, student_arch, terms):
    config = RunConfig.from_dict({"dataset": "rotten-tomatoes", "method": method, "teacher": {"arch": "tiny-transformer:2,64"},
                                  "student": {"arch": student_arch}})
    torch.manual_seed(0)
    student = build_model(student_arch, SHAPE, 2)
    teacher = build_model(config.teacher.arch, SHAPE, 2).requires_grad_(False).eval()
    spec = get_method(method).spec
    ids = torch.from_numpy(tokenize(SENTENCES))
    kept = [TokenStates(teacher, ids, layer) for layer in spec.teacher_token_states]
    build = BuildContext(config, student, teacher, _Info(), len(ids), torch.device("cpu"), resolve_params(method))
    objective = get_method(method).objective(build)
    idx = torch.arange(len(ids))
    with torch.no_grad():
        teacher_logits = teacher(ids)
    parts = objective.step(StepContext(ids, torch.tensor([0, 1, 1, 1]), idx, 1, 1, student.forward_features(ids),
                                       (teacher_logits, None, [states.batch(idx) for states in kept]), hyper_of(config)))
    parts["loss"].backward()
    assert terms <= set(parts) and all(float(parts[name]) > 0 for name in terms)
    assert all(p.grad is not None for p in student.encoder.parameters() if p.requires_grad)
    assert all(p.grad is None for p in teacher.parameters())


def test_text_methods_are_refused_where_they_cannot_run():
    text = {"dataset": "rotten-tomatoes", "teacher": {"arch": "minilm-l6"}, "student": {"arch": "tiny-transformer"}}
    RunConfig.from_dict({**text, "method": "distilbert"})
    for change, words in [({"method": "minilm", "student": {"arch": "bilstm"}}, "student.arch bilstm has none"),
                          ({"method": "distilbert", "teacher": {"arch": "bilstm"}}, "needs a Transformer teacher"),
                          ({"method": "minilm", "teacher": {"arch": "hf:some/model"}}, "minilm-l6, tiny-transformer\\)"),
                          ({"method": "minilm", "method_params": {"relation_heads": 5}}, "does not divide the student's"),
                          ({"method": "minilm", "dataset": "digits", "teacher": {"arch": "cnn"},
                            "student": {"arch": "mlp-tiny"}}, "digits is not text")]:
        with pytest.raises(Exception, match=words):
            RunConfig.from_dict({**text, **change})


class _Terms(Callback):
    def __init__(self) -> None:
        self.names: set[str] = set()

    def on_metrics(self, stage, epoch, step, values):
        if stage == "student":
            self.names |= set(values)


@pytest.mark.parametrize("method,student,extra", [
    ("distilbert", "tiny-transformer:1,64", {"student": {"arch": "tiny-transformer:1,64", "from_teacher": True}}),
    ("minilm", "tiny-transformer:1,32", {}),
])
def test_a_run_of_each_text_method_finishes(method, student, extra, tmp_path):
    reviews = write_reviews(tmp_path / "reviews.csv", rows=120)
    config = RunConfig.from_dict({"dataset": f"csv:{reviews}", "text_column": "review", "label_column": "sentiment",
                                  "method": method, "teacher": {"arch": "tiny-transformer:2,64", "epochs": 1},
                                  "student": {"arch": student}, "epochs": 1, "baseline": False, **extra})
    recorder = _Terms()
    summary = run_pipeline(config, [recorder], teacher_cache=tmp_path / "teachers")
    assert summary["status"] == "done" and 0 <= summary["student_test_acc"] <= 1
    assert {f"train_{term.name}" for term in get_method(method).spec.terms} <= recorder.names
