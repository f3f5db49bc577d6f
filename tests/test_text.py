"""Text distillation: the data (Rotten Tomatoes, a user's CSV), the text models, bucketing, the augmentation
transfer set, and runs end to end on tiny Transformers built from a config (random init, no weights)."""

from __future__ import annotations

import copy
import csv
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from kdcore.config import RunConfig
from kdcore.data import load_dataset
from kdcore.data.text import MAX_TOKENS, read_csv, tokenize
from kdcore.data.text_augment import augmented_copies
from kdcore.errors import ConfigError, DatasetError
from kdcore.models import build_model, count_parameters
from kdcore.store import Store
from kdcore.text_models import init_from_teacher
from kdcore.train import bucketed
from run_helpers import kdcore, last_json

GOOD = ["great", "wonderful", "moving", "brilliant", "funny", "charming"]
BAD = ["dull", "boring", "awful", "tedious", "clumsy", "bland"]
NOUNS = ["film", "story", "cast", "script", "ending", "score"]


def write_reviews(path: Path, rows: int = 240, delimiter: str = ",") -> Path:
    """A small sentiment CSV with string labels: 'positive' reviews use good words, 'negative' ones bad words."""
    rng = random.Random(0)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(["id", "review", "sentiment"])
        for i in range(rows):
            label = rng.choice(["positive", "negative"])
            words = GOOD if label == "positive" else BAD
            writer.writerow([i, f"the {rng.choice(NOUNS)} is {rng.choice(words)}, the {rng.choice(NOUNS)} "
                                f"{rng.choice(words)}", label])
    return path


@pytest.fixture(scope="module")
def reviews(tmp_path_factory) -> Path:
    return write_reviews(tmp_path_factory.mktemp("text") / "reviews.csv")


# --- the data -------------------------------------------------------------------------------------------


def test_rotten_tomatoes_splits_are_fixed_stratified_and_disjoint():
    data = load_dataset("rotten-tomatoes")
    assert (len(data.train_x), len(data.val_x), len(data.test_x)) == (9180, 1020, 2551)  # 12,751 reviews
    assert data.class_names == ["fresh", "rotten"] and data.info.kind == "text"
    assert data.train_x.dtype == torch.int64 and data.train_x.shape[1] == MAX_TOKENS
    share = [split.float().mean().item() for split in (data.train_y, data.val_y, data.test_y)]
    assert max(share) - min(share) < 0.01  # rotten is 42.2% of each split
    # the stored ids are the tokenizer's on the sentences as written, which the snapshot shows
    assert torch.equal(torch.from_numpy(tokenize(data.val_texts[:20])), data.val_x[:20])
    rows = {tuple(row.tolist()) for row in data.test_x}
    assert not any(tuple(row.tolist()) in rows for row in data.train_x[:2000])
    again = load_dataset("rotten-tomatoes")
    assert torch.equal(again.test_x, data.test_x) and torch.equal(again.train_y, data.train_y)


def test_a_csv_with_string_labels_loads_split_three_ways(reviews, tmp_path):
    data = load_dataset(f"csv:{reviews}", text_column="review", label_column="sentiment")
    assert data.class_names == ["negative", "positive"] and data.info.num_classes == 2
    assert len(data.train_x) + len(data.val_x) + len(data.test_x) == 240
    texts, labels, _ = read_csv(f"csv:{reviews}", "review", "sentiment")
    assert data.val_texts[0] in texts
    tsv = write_reviews(tmp_path / "reviews.tsv", delimiter="\t")
    assert read_csv(f"csv:{tsv}", "review", "sentiment")[0] == texts  # the same rows, tab-separated


def test_a_csv_teacher_is_cached_under_the_files_contents(tmp_path):
    path = write_reviews(tmp_path / "reviews.csv", rows=40)
    config = RunConfig.from_dict({"dataset": f"csv:{path}", "text_column": "review", "label_column": "sentiment",
                                  "teacher": {"arch": "tiny-transformer"}, "student": {"arch": "bilstm"}})
    key = config.teacher_key()
    assert RunConfig.from_dict(config.to_dict()).teacher_key() == key
    original = path.read_bytes()
    path.write_bytes(original.replace(b"wonderful", b"marvellous"))  # same columns, other sentences
    assert config.teacher_key() != key
    path.write_bytes(original)
    assert config.teacher_key() == key  # the same bytes again: the same teacher


def test_an_absurdly_long_row_is_cut_to_the_token_limit(tmp_path):
    path = tmp_path / "long.csv"
    rows = [["text", "label"]] + [["fine film", "a"], ["bad film", "b"]] * 10 + [["word " * 200_000, "a"]]
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    data = load_dataset(f"csv:{path}", val_fraction=0.2)
    lengths = torch.cat([(x >= 0).sum(dim=1) for x in (data.train_x, data.val_x, data.test_x)])
    assert lengths.max().item() == MAX_TOKENS


def _write(path: Path, content: bytes) -> str:
    path.write_bytes(content)
    return f"csv:{path}"


BAD_INPUTS = {
    "missing": (None, "no such file"),
    "empty": (b"", "the file is empty"),
    "header only": (b"text,label\n", "a header and no rows"),
    "no such column": (b"review,label\nok,a\nbad,b\n", "no column 'text' (text_column); the header has 'review', 'label'"),
    "one value": (b"text,label\n" + b"x,a\n" * 20, "label column 'label' has one value ('a')"),
    "undecodable": (b"text,label\nok,a\n\xff\xfe bad,b\n", "not UTF-8 text (undecodable byte at offset"),
    "too few of a class": (b"text,label\n" + b"x,a\n" * 20 + b"y,b\n", "too few examples for a stratified"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_a_bad_csv_is_one_line_naming_the_problem(case, tmp_path):
    content, words = BAD_INPUTS[case]
    name = f"csv:{tmp_path / 'missing.csv'}" if content is None else _write(tmp_path / "data.csv", content)
    with pytest.raises(DatasetError) as error:
        load_dataset(name)
    assert words in str(error.value) and "\n" not in str(error.value)


def test_the_cli_refuses_a_bad_csv_before_recording_a_run(tmp_path):
    name = _write(tmp_path / "one.csv", b"text,label\n" + b"x,a\n" * 20)
    result = kdcore(tmp_path / "home", "run", "--set", f"dataset={name}", "--set", "teacher.arch=tiny-transformer:1,32",
                    "--set", "student.arch=bag-of-embeddings")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "has one value" in result.stderr
    assert "Traceback" not in result.stderr
    assert Store(tmp_path / "home").list_runs() == []


def test_configs_that_cannot_run_on_text_are_refused():
    text = {"dataset": "rotten-tomatoes", "teacher": {"arch": "tiny-transformer"}, "student": {"arch": "bilstm"}}
    RunConfig.from_dict(text)
    for change, words in [({"student": {"arch": "mlp"}}, "mlp takes images or points; dataset rotten-tomatoes is text"),
                          ({"method": "at"}, "method at does not apply to text"),
                          ({"method": "function_matching"}, "token ids cannot be mixed"),
                          ({"augment": True}, "transfer=augment:N"),
                          ({"transfer": "augment:0"}, "1..50"),
                          ({"student": {"arch": "bilstm", "from_teacher": True}}, "is not a Transformer"),
                          ({"teacher": {"arch": "minilm-l6"}, "student": {"arch": "tiny-transformer", "from_teacher": True}},
                           "use tiny-transformer:2,384")]:
        with pytest.raises(ConfigError, match=words):
            RunConfig.from_dict({**text, **change})
    with pytest.raises(ConfigError, match="bilstm reads text; dataset digits is images"):
        RunConfig.from_dict({"dataset": "digits", "student": {"arch": "bilstm"}})
    with pytest.raises(ConfigError, match="augment:2 makes copies of text"):
        RunConfig.from_dict({"dataset": "digits", "transfer": "augment:2"})


# --- the models -------------------------------------------------------------------------------------------


TEXT_ARCHS = ["tiny-transformer", "bilstm", "bag-of-embeddings"]


@pytest.mark.parametrize("arch", TEXT_ARCHS)
def test_a_sentence_gets_the_same_logits_alone_and_padded_in_a_batch(arch):
    """Padding is masked everywhere: pooling, attention, the LSTM's backward direction."""
    torch.manual_seed(0)
    model = build_model(arch, (MAX_TOKENS, 30522), 3).eval()
    ids = torch.from_numpy(tokenize(["a gem", "an overlong, meandering and in the end rather tedious film"]))
    with torch.no_grad():
        batch, features, stages = model.forward_features(ids)
        alone = model(ids[:1])
    assert batch.shape == (2, 3) and features.shape == (2, model.feature_dim)
    assert [stage.shape for stage in stages] == ([(2, int((ids >= 0).sum(1).max()), 128)] * 3 if arch == "tiny-transformer"
                                                 else [])  # a Transformer's hidden states: embeddings, 2 layers
    torch.testing.assert_close(batch[:1], alone, rtol=1e-5, atol=1e-5)


def test_the_bilstm_equals_its_lstm_run_on_each_sentence_alone():
    """The padded two-direction run against nn.LSTM itself on each unpadded sentence, in float64: logits and the
    gradients of every parameter."""
    torch.manual_seed(0)
    model = build_model("bilstm", (MAX_TOKENS, 500), 3).double()
    ids = torch.full((3, MAX_TOKENS), -1)
    for row, length in enumerate((7, 2, 5)):
        ids[row, :length] = torch.randint(0, 500, (length,))
    logits = model(ids)
    reference = []
    for row in ids:
        words = model.embedding(row[row >= 0]).unsqueeze(0)
        out, _ = model.lstm(words)  # [1, length, 2 * hidden]: the module's own bidirectional run
        reference.append(model.head(torch.relu(model.fc(out.amax(dim=1)))))
    reference = torch.cat(reference)
    torch.testing.assert_close(logits, reference, rtol=1e-10, atol=1e-12)
    ours = torch.autograd.grad(logits.square().sum(), list(model.parameters()))
    theirs = torch.autograd.grad(reference.square().sum(), list(model.parameters()))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("arch", ["tiny-transformer:1,32", "bilstm", "bag-of-embeddings"])
def test_a_compact_token_table_computes_and_trains_as_the_full_table(arch):
    """Same logits on any ids (kept or not), the same weights after Adam steps, the full table's state_dict."""
    from kdcore.text_models import CompactTokenTable, compact_vocabulary

    torch.manual_seed(0)
    full = build_model(arch, (MAX_TOKENS, 300), 2).double()
    compact = copy.deepcopy(full)
    train = torch.full((8, MAX_TOKENS), -1)
    train[:, :6] = torch.randint(0, 100, (8, 6))  # the data uses ids below 100 only
    assert 0 < compact_vocabulary(compact, train) <= 100
    assert sum(isinstance(m, CompactTokenTable) for m in compact.modules()) == 1
    unseen = torch.randint(0, 300, (4, MAX_TOKENS))
    full.eval(), compact.eval()
    torch.testing.assert_close(compact(unseen), full(unseen), rtol=0, atol=0)
    full.train(), compact.train()
    optimizers = [torch.optim.Adam(model.parameters(), lr=0.01) for model in (full, compact)]
    y = torch.tensor([0, 1] * 4)
    for step in range(3):
        for model, optimizer in zip((full, compact), optimizers):
            torch.manual_seed(step)  # the same dropout masks
            loss = torch.nn.functional.cross_entropy(model(train), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    state, reference = compact.state_dict(), full.state_dict()
    assert state.keys() == reference.keys()
    for name in state:
        torch.testing.assert_close(state[name], reference[name], rtol=1e-12, atol=1e-12)
    plain = build_model(arch, (MAX_TOKENS, 300), 2).double().eval()
    plain.load_state_dict(state)  # a checkpoint of the compact student loads into the ordinary model
    compact.eval()
    torch.testing.assert_close(plain(unseen), compact(unseen), rtol=0, atol=0)


def test_text_model_sizes():
    shape = (MAX_TOKENS, 30522)
    sizes = {arch: count_parameters(build_model(arch, shape, 2)) for arch in TEXT_ARCHS}
    # the 30,522 x 64 token table (1,953,408) is most of every student
    assert sizes == {"tiny-transformer": 2_375_426, "bilstm": 2_185_218, "bag-of-embeddings": 1_953_538}
    assert count_parameters(build_model("tiny-transformer:3,384", shape, 2)) == 17_095_298


def test_a_student_can_start_from_every_other_teacher_layer():
    teacher = build_model("tiny-transformer:4,64", (MAX_TOKENS, 500), 2)
    student = build_model("tiny-transformer:2,64", (MAX_TOKENS, 500), 2)
    init_from_teacher(student, teacher)
    for i, source in enumerate((0, 2)):
        assert torch.equal(student.encoder.layer[i].query.weight, teacher.encoder.layer[source].query.weight)
        assert torch.equal(student.encoder.layer[i].output_norm.bias, teacher.encoder.layer[source].output_norm.bias)
    assert torch.equal(student.encoder.embeddings.word_embeddings.weight, teacher.encoder.embeddings.word_embeddings.weight)
    assert not torch.equal(student.head.weight, teacher.head.weight)  # the head stays the student's


def test_length_bucketing_keeps_every_example_once_and_groups_like_lengths():
    lengths = torch.randint(2, 80, (640,), generator=torch.Generator().manual_seed(0))
    order = torch.randperm(640, generator=torch.Generator().manual_seed(1))
    out = bucketed(order, lengths, 16, torch.Generator().manual_seed(2))
    assert sorted(out.tolist()) == list(range(640))
    spread = (lengths[out].view(-1, 16).amax(1) - lengths[out].view(-1, 16).amin(1)).float().mean()
    random_spread = (lengths[order].view(-1, 16).amax(1) - lengths[order].view(-1, 16).amin(1)).float().mean()
    assert spread < random_spread / 5


def test_augmented_copies_mask_or_cut_the_body_and_keep_the_special_tokens():
    ids = tokenize(["a truly wonderful film about nothing at all, and proud of it"] * 200)
    copies = augmented_copies(ids, 2, mask_id=103, specials=(1, 1))
    assert copies.shape == (400, MAX_TOKENS)
    assert np.array_equal(augmented_copies(ids, 2, 103, (1, 1)), copies)  # seeded: the teacher's logits cache
    lengths = (copies >= 0).sum(axis=1)
    full = lengths == (ids[0] >= 0).sum()
    assert all(row[0] == 101 and row[length - 1] == 102 for row, length in zip(copies, lengths))  # [CLS] … [SEP]
    assert 0.6 < full.mean() < 0.9  # an n-gram is cut out with probability 0.25 (or keeps its whole length)
    masked = (copies[full] == 103).sum() / (full.sum() * (lengths[full][0] - 2))
    assert 0.07 < masked < 0.13  # each body token is masked with probability 0.1


# --- end to end -----------------------------------------------------------------------------------------


TINY_TEXT = ["--set", "teacher.arch=tiny-transformer:1,32", "--set", "teacher.epochs=2", "--set", "teacher.lr=0.01",
             "--set", "epochs=2", "--set", "lr=0.01", "--set", "text_column=review", "--set", "label_column=sentiment"]


@pytest.fixture(scope="module")
def text_run(reviews, tmp_path_factory):
    home = tmp_path_factory.mktemp("text-home")
    summary = last_json(kdcore(home, "run", "--set", f"dataset=csv:{reviews}", *TINY_TEXT, "--set",
                               "student.arch=bag-of-embeddings", "--set", "transfer=augment:2", "--json"))
    return home, summary


def test_a_csv_run_finishes_with_the_usual_summary(text_run):
    _, summary = text_run
    assert summary["status"] == "done"
    for key in ("teacher_test_acc", "student_test_acc", "baseline_test_acc", "teacher_params", "student_params", "wall_s"):
        assert summary[key] is not None
    assert summary["transfer_examples"] == 2 * summary["labeled_examples"]
    assert summary["student_test_acc"] > 0.8  # good words and bad words: a bag of embeddings learns them


def test_a_text_run_stores_sentences_with_their_soft_labels(text_run):
    home, summary = text_run
    snapshots, _ = Store(home).snapshots_since(summary["run_id"])
    teacher = next(s for s in snapshots if s["stage"] == "soft_labels")
    student = [s for s in snapshots if s["stage"] == "student"]
    assert len(teacher["texts"]) == len(teacher["teacher_T"]) == len(teacher["teacher_T1"]) == 10
    assert all(isinstance(text, str) and " is " in text for text in teacher["texts"])
    assert teacher["class_names"] == ["negative", "positive"] and "images" not in teacher
    assert [len(s["student_T"]) for s in student] == [10, 10, 10] and student[-1]["indices"] == teacher["indices"]


# --- a CSV of texts as the transfer set -------------------------------------------------------------------------


def write_unlabelled(path: Path, rows: int = 40) -> Path:
    """Texts to label, in a column `sentence`, beside a `stars` column the transfer set must ignore, and a blank row."""
    rng = random.Random(1)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["stars", "sentence"])
        for _ in range(rows):
            writer.writerow([rng.choice(["1", "5"]), f"a {rng.choice(GOOD + BAD)} {rng.choice(NOUNS)}, truly "
                                                     f"{rng.choice(GOOD + BAD)}"])
        writer.writerow(["3", "   "])
    return path


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory) -> Path:
    return write_unlabelled(tmp_path_factory.mktemp("text") / "unlabelled.csv")


def test_a_csv_transfer_set_is_labelled_by_the_teacher(text_run, reviews, unlabelled):
    """In process, with the teacher `text_run` trained (found in its cache): the student's extra rows are the
    CSV's texts as token ids, and their soft labels are the teacher's logits on exactly those ids."""
    from kdcore.callbacks import Callback
    from kdcore.evaluation import predict
    from kdcore.trainer import prepare

    home, _ = text_run
    overrides = dict(setting.split("=", 1) for setting in TINY_TEXT[1::2])
    config = RunConfig.from_dict({
        "dataset": f"csv:{reviews}", "device": "cpu", "text_column": overrides["text_column"],
        "label_column": overrides["label_column"], "student": {"arch": "bag-of-embeddings"},
        "teacher": {"arch": overrides["teacher.arch"], "epochs": int(overrides["teacher.epochs"]),
                    "lr": float(overrides["teacher.lr"])},
        "transfer": f"csv:{unlabelled}", "transfer_column": "sentence"})
    prep = prepare(config, Callback(), Store(home).teacher_dir())
    assert prep.teacher.cached  # the text run's teacher: nothing trained here
    with open(unlabelled, newline="", encoding="utf-8") as handle:
        texts = [row["sentence"] for row in csv.DictReader(handle) if row["sentence"].strip()]
    n = len(prep.data.train_x)
    extra = prep.student_data.train_x[n:]
    assert len(texts) == 40 and torch.equal(extra, torch.from_numpy(tokenize(texts)))
    assert prep.counts == {"labeled_examples": n, "unlabeled_examples": 40, "transfer_examples": 40}
    assert not prep.student_data.train_labeled[n:].any() and prep.student_data.train_labeled[:n].all()
    teacher_logits = predict(prep.teacher.model, extra)
    torch.testing.assert_close(prep.soft.train_logits[n:], teacher_logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(prep.student_data.train_y[n:], teacher_logits.argmax(1))


def test_a_run_with_a_csv_transfer_set_trains_on_it_and_says_so(text_run, reviews, unlabelled):
    home, first = text_run
    summary = last_json(kdcore(home, "run", "--set", f"dataset=csv:{reviews}", *TINY_TEXT, "--set", "epochs=1",
                               "--set", "student.arch=bag-of-embeddings", "--set", "baseline=false", "--set",
                               f"transfer=csv:{unlabelled}", "--set", "transfer_column=sentence", "--json"))
    labeled = first["labeled_examples"]
    assert (summary["labeled_examples"], summary["unlabeled_examples"], summary["transfer_examples"]) == (labeled, 40, 40)
    assert Store(home).stage_results(summary["run_id"])["soft_labels"]["transfer_examples"] == 40  # the Live page's
    rows, _ = Store(home).metrics_since(summary["run_id"])
    steps = sum(1 for row in rows if row.stage == "student" and row.name == "train_loss")
    assert steps == (labeled + 40) // 64  # one epoch over the labelled reviews and the 40 transfer texts


@pytest.mark.parametrize("transfer,column,words", [
    ("missing.csv", None, "no such file"),
    ("unlabelled.csv", "body", "no column 'body' (transfer_column, else text_column); the header has 'stars', 'sentence'"),
    ("unlabelled.csv", None, "no column 'review'"),  # the dataset's text column, when transfer_column is unset
    ("blank.csv", "sentence", "no texts in column 'sentence'"),
    ("header.csv", "sentence", "no texts in column 'sentence' (a header and no rows)"),
])
def test_a_csv_transfer_set_that_cannot_be_read_is_one_line(transfer, column, words, reviews, unlabelled, tmp_path):
    from kdcore.data import check_transfer_texts

    (tmp_path / "unlabelled.csv").write_bytes(unlabelled.read_bytes())
    (tmp_path / "blank.csv").write_text("stars,sentence\n5,\n1,  \n")
    (tmp_path / "header.csv").write_text("stars,sentence\n")
    config = RunConfig.from_dict({"dataset": f"csv:{reviews}", "text_column": "review", "label_column": "sentiment",
                                  "teacher": {"arch": "tiny-transformer:1,32"}, "student": {"arch": "bag-of-embeddings"},
                                  "transfer": f"csv:{tmp_path / transfer}", "transfer_column": column})
    with pytest.raises(DatasetError) as error:
        check_transfer_texts(config)
    assert words in str(error.value) and "\n" not in str(error.value)


def test_the_cli_refuses_a_missing_transfer_csv_before_recording_a_run(reviews, tmp_path):
    result = kdcore(tmp_path / "home", "submit", "--set", f"dataset=csv:{reviews}", *TINY_TEXT, "--set",
                    "student.arch=bag-of-embeddings", "--set", f"transfer=csv:{tmp_path / 'gone.csv'}")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"kdcore: error: csv:{tmp_path / 'gone.csv'}: no such file {tmp_path / 'gone.csv'}\n"
    assert Store(tmp_path / "home").list_runs() == []


@pytest.mark.parametrize("config,words", [
    ({"transfer": "csv:/data/texts.csv"}, "transfer: csv:/data/texts.csv gives texts; dataset mnist-5k is not text"),
    ({"transfer": "rotten-tomatoes"}, "transfer: rotten-tomatoes gives texts; dataset mnist-5k is not text"),
    ({"dataset": "rotten-tomatoes", "teacher": {"arch": "tiny-transformer"}, "student": {"arch": "bilstm"},
      "transfer": "fashion-mnist"}, "transfer: fashion-mnist gives images; dataset rotten-tomatoes is text: its transfer "
                                    "set is csv:<path> (a column of texts), rotten-tomatoes or augment:N"),
    ({"dataset": "csv:/data/r.csv", "teacher": {"arch": "tiny-transformer"}, "student": {"arch": "bilstm"},
      "transfer": "imagefolder:/data/pets"}, "transfer: imagefolder:/data/pets gives images; dataset csv:/data/r.csv is text"),
    ({"dataset": "csv:/data/r.csv", "teacher": {"arch": "tiny-transformer"}, "student": {"arch": "bilstm"},
      "transfer": "csv:/data/../data/r.csv"}, "transfer: csv:/data/../data/r.csv is the dataset itself"),
    ({"transfer_column": "body"}, "transfer_column names the text column of a transfer set transfer=csv:<path>"),
])
def test_a_transfer_set_of_the_other_kind_is_refused_by_the_config(config, words):
    with pytest.raises(ConfigError) as error:
        RunConfig.from_dict(config)
    assert str(error.value).startswith(words)
