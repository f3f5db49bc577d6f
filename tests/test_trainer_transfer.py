"""Transfer sets in the pipeline: labels the student may not use (`labeled_fraction`) and extra unlabelled
inputs (`transfer`): the masked cross-entropy, the teacher's classes, the baseline's budget, the counts a
run reports, and the refusals. The data side (which rows keep labels, reading a transfer set) is
tests/data/test_transfer.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from kdcore import losses
from kdcore.callbacks import Callback
from kdcore.config import RunConfig
from kdcore.data import labeled_rows, load_dataset
from kdcore.errors import ConfigError
from kdcore.evaluation import predict
from kdcore.methods.objective import BuildContext, Objective, StepContext, hyper_of
from kdcore.models import build_model
from kdcore.store import Store
from kdcore.trainer import prepare
from run_helpers import kdcore, last_json

# --- the cross-entropy over labelled samples ---------------------------------------------------------------


def reference_ce(logits: torch.Tensor, targets: torch.Tensor, labeled: torch.Tensor) -> float:
    """Mean of −log softmax(z)[y] over the labelled rows, by hand in float64; 0 when there are none."""
    total, count = 0.0, 0
    for row, target, keep in zip(logits.tolist(), targets.tolist(), labeled.tolist()):
        if keep:
            top = max(row)
            total += top + math.log(sum(math.exp(v - top) for v in row)) - row[target]
            count += 1
    return total / count if count else 0.0


BATCH_LOGITS = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
TARGETS = torch.tensor([0, 3, 1, 1, 2, 0])
LABELED = torch.tensor([True, False, True, False, False, True])


def test_ce_is_taken_over_the_labelled_samples_only():
    logits = BATCH_LOGITS.clone().requires_grad_()
    ce = losses.labeled_cross_entropy(logits, TARGETS, LABELED)
    assert ce.dtype == torch.float64
    assert ce.item() == pytest.approx(reference_ce(BATCH_LOGITS, TARGETS, LABELED), abs=1e-12)
    ce.backward()
    assert torch.all(logits.grad[~LABELED] == 0)  # an unlabelled sample gets no gradient from CE
    expected = (torch.softmax(BATCH_LOGITS, dim=1) - F.one_hot(TARGETS, 4)) / LABELED.sum()
    assert torch.allclose(logits.grad[LABELED], expected[LABELED], atol=1e-12)
    assert torch.autograd.gradcheck(lambda z: losses.labeled_cross_entropy(z, TARGETS, LABELED),
                                    (BATCH_LOGITS.clone().requires_grad_(),))


def test_a_batch_without_labels_gives_zero_and_no_gradient():
    logits = BATCH_LOGITS.clone().requires_grad_()
    ce = losses.labeled_cross_entropy(logits, TARGETS, torch.zeros(6, dtype=torch.bool))
    ce.backward()
    assert ce.item() == 0.0 and torch.all(logits.grad == 0)


def test_without_a_mask_or_with_every_label_it_is_plain_cross_entropy():
    plain = F.cross_entropy(BATCH_LOGITS, TARGETS)
    assert torch.equal(losses.labeled_cross_entropy(BATCH_LOGITS, TARGETS), plain)
    assert losses.labeled_cross_entropy(BATCH_LOGITS, TARGETS, torch.ones(6, dtype=torch.bool)).item() == \
        pytest.approx(plain.item(), abs=1e-12)


def test_the_objective_masks_its_ce_term_alone_and_batches_under_vmap():
    config = RunConfig.from_dict(dict(dataset="digits", device="cpu", teacher={"arch": "cnn-small"},
                                      student={"arch": "mlp-tiny"}))
    torch.manual_seed(0)
    student, teacher = build_model("mlp-tiny", (1, 8, 8), 10), build_model("cnn-small", (1, 8, 8), 10)
    objective = Objective(BuildContext(config, student, teacher, None, 6, torch.device("cpu")))
    x = torch.randn(6, 1, 8, 8)
    student_logits, teacher_logits = student(x), teacher(x).detach()
    hyper = hyper_of(config)

    def parts(labeled):
        return objective.step(StepContext(x, TARGETS, torch.arange(6), 1, 1, (student_logits, None, None),
                                          (teacher_logits, None, None), hyper, labeled=labeled))

    masked, full = parts(LABELED), parts(None)
    assert masked["ce"].item() == pytest.approx(reference_ce(student_logits.double(), TARGETS, LABELED), abs=1e-5)
    assert masked["kd"].item() == pytest.approx(full["kd"].item(), abs=1e-6)  # KD covers every sample
    assert masked["loss"].item() == pytest.approx(0.5 * masked["ce"].item() + 0.5 * masked["kd"].item(), abs=1e-5)
    # stacked students (torch.vmap): each member's mask is its own
    masks = torch.stack([LABELED, ~LABELED])

    def one(logits, mask, numbers):
        return objective.step(StepContext(None, TARGETS, torch.arange(6), 1, 1, (logits, None, None),
                                          (teacher_logits, None, None), numbers, labeled=mask))

    numbers = {key: torch.tensor([value, value]) for key, value in hyper.items()}
    stacked = torch.vmap(one)(torch.stack([student_logits, student_logits]), masks, numbers)
    for k in range(2):
        assert stacked["ce"][k].item() == pytest.approx(parts(masks[k])["ce"].item(), abs=1e-5)


# --- the pipeline: what the student learns from -------------------------------------------------------------


def test_prepare_appends_the_transfer_set_labelled_by_the_teacher(tmp_path):
    config = RunConfig.from_dict(dict(dataset="moons", device="cpu", teacher={"arch": "mlp-tiny", "epochs": 1},
                       student={"arch": "mlp-tiny"}, transfer="circles", labeled_fraction=0.5))
    cache = tmp_path / "teachers"
    prep = prepare(config, Callback(), cache)
    data, student = prep.data, prep.student_data
    n = len(data.train_x)
    kept = labeled_rows(data.train_y, 0.5, data.class_names)
    assert len(student.train_x) == n + 3000 and torch.equal(student.train_x[:n], data.train_x)
    mask = student.train_labeled
    assert mask[kept].all() and mask.sum() == len(kept) and not mask[n:].any()
    teacher_classes = predict(prep.teacher.model, student.train_x).argmax(1)
    assert torch.equal(student.train_y[~mask], teacher_classes[~mask])
    assert torch.equal(student.train_y[mask], data.train_y[kept])
    assert prep.soft.train_logits.shape == (n + 3000, 2)
    assert torch.equal(prep.labeled_data.train_x, data.train_x[kept])
    assert prep.counts == {"labeled_examples": len(kept), "unlabeled_examples": n - len(kept) + 3000,
                           "transfer_examples": 3000}
    for split in ("val_x", "val_y", "test_x", "test_y"):  # validation and test are never touched
        assert getattr(student, split) is getattr(data, split)
    # the teacher's logits on the transfer set are cached beside it, and read back by the next run
    key = config.teacher_key()
    (cached,) = cache.glob(f"{key}.transfer-*.train_logits.pt")
    stored = torch.load(cached, weights_only=True)
    torch.save({**stored, "tensor": torch.zeros_like(stored["tensor"])}, cached)
    again = prepare(config, Callback(), cache)
    assert torch.all(again.soft.train_logits[n:] == 0) and torch.equal(again.soft.train_logits[:n], prep.soft.train_logits[:n])


def test_every_label_and_no_transfer_set_leaves_the_data_as_loaded(tmp_path):
    config = RunConfig.from_dict(dict(dataset="moons", device="cpu", teacher={"arch": "mlp-tiny", "epochs": 1},
                                      student={"arch": "mlp-tiny"}))
    prep = prepare(config, Callback(), None)
    assert prep.student_data is prep.data and prep.labeled_data is prep.data and prep.data.train_labeled is None
    assert prep.counts == {"labeled_examples": len(prep.data.train_x), "unlabeled_examples": 0, "transfer_examples": 0}


TINY = ["--set", "dataset=digits", "--set", "epochs=2", "--set", "teacher.epochs=1", "--set", "student.arch=mlp-tiny"]


def test_a_run_on_a_tenth_of_the_labels_reports_its_counts_and_gives_the_baseline_the_students_steps(kd_home):
    summary = last_json(kdcore(kd_home, "run", *TINY, "--set", "labeled_fraction=0.1", "--set", "finetune_epochs=1",
                               "--json"))
    digits = load_dataset("digits")
    labeled = len(labeled_rows(digits.train_y, 0.1, digits.class_names))
    assert summary["status"] == "done" and summary["baseline_test_acc"] is not None
    assert (summary["labeled_examples"], summary["unlabeled_examples"], summary["transfer_examples"]) == \
        (labeled, len(digits.train_y) - labeled, 0)
    recorded = Store(kd_home).stage_results(summary["run_id"])["soft_labels"]  # what the Live page shows
    assert (recorded["labeled_examples"], recorded["unlabeled_examples"]) == (labeled, len(digits.train_y) - labeled)
    rows = last_json(kdcore(kd_home, "metrics", summary["run_id"], "--json"))["metrics"]
    steps = {stage: sum(1 for r in rows if r["stage"] == stage and r["name"] == "train_loss")
             for stage in ("student", "finetune", "baseline")}
    per_epoch = len(digits.train_y) // 64
    assert steps == {"student": 2 * per_epoch, "finetune": per_epoch, "baseline": 3 * per_epoch}


# --- refusals -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -0.1, 1.5, "half"])
def test_a_fraction_outside_zero_to_one_is_refused(value):
    with pytest.raises(ConfigError, match=r"^labeled_fraction must be"):
        RunConfig(labeled_fraction=value)


def test_a_fraction_that_leaves_a_class_without_labels_is_refused_at_validation(kd_home):
    result = kdcore(kd_home, "submit", "--set", "labeled_fraction=0.001")
    assert result.returncode == 2 and result.stderr == ("kdcore: error: labeled_fraction 0.001 leaves about 5 labels "
                                                        "for 10 classes in mnist-5k: some class would have none\n")
    assert Store(kd_home).list_runs() == []


def image_folder(root, sizes: dict[str, int]) -> str:
    """An image-folder dataset with these many 32×32 grey images per class."""
    for label, count in sizes.items():
        (root / label).mkdir(parents=True)
        for i in range(count):
            Image.new("L", (32, 32), 7 * i).save(root / label / f"{i}.png")
    return f"imagefolder:{root}"


def test_a_fraction_that_leaves_named_classes_without_labels_is_refused_before_queueing(kd_home, tmp_path):
    dataset = image_folder(tmp_path / "pets", {"cat": 40, "dog": 3, "eel": 3})  # training split: 30, 2 and 3
    result = kdcore(kd_home, "submit", "--set", f"dataset={dataset}", "--set", "labeled_fraction=0.15")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (f"kdcore: error: labeled_fraction 0.15 leaves 2 classes of {dataset} without a labelled "
                             "example: 'dog' (2 training examples), 'eel' (3 training examples); every class needs at "
                             "least one: raise labeled_fraction above 0.25\n")
    assert Store(kd_home).list_runs() == []


def test_a_transfer_set_of_another_shape_is_refused_with_one_line(kd_home):
    for command in ("run", "submit"):
        result = kdcore(kd_home, command, "--set", "transfer=digits", "--json")
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr == ("kdcore: error: transfer: digits gives inputs of shape (1, 8, 8); dataset mnist-5k's "
                                 "are (1, 28, 28)\n")
    assert Store(kd_home).list_runs() == []


@pytest.mark.parametrize("overrides,message", [
    ({"dataset": "moons", "teacher": {"arch": "mlp"}, "transfer": "imagefolder:/tmp/pets"},
     "transfer: imagefolder:/tmp/pets gives images; dataset moons takes 2 features per example"),
    ({"transfer": "mnist-5k"}, "transfer: mnist-5k is the dataset itself"),
    ({"transfer": "svhn"}, "transfer: unknown dataset 'svhn'"),
    ({"method": "dml", "labeled_fraction": 0.5}, "method dml learns from labels alone"),
])
def test_transfer_settings_that_cannot_run_are_refused(overrides, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        RunConfig.from_dict(overrides)
