"""A transfer set of text made from the training sentences, as Tang et al. 2019 do, for the teacher to label.

    extra = augmented_copies(splits.train_x.numpy(), copies=4, mask_id=103, specials=(1, 1))   # int64 [4·N, L]

Tang, Lu, Liu, Mou, Vechtomova & Lin 2019, "Distilling Task-Specific Knowledge from BERT into Simple
Neural Networks", §3.3: a small student needs more text than the task's labelled set, and the teacher
can label any text. Each training sentence gives `copies` new ones; in each, every token is replaced
by the mask token with probability P_MASK, and then, with probability P_NGRAM, only an n-gram of the
sentence is kept (n uniform in 1..MAX_NGRAM). (The paper's third rule, POS-guided word swaps, needs a
part-of-speech tagger and is left out.) The copies carry no labels: `transfer=augment:N` puts them
beside the training split, and the student learns the teacher's soft labels on them.

Works on token ids, so masking and cutting apply to WordPiece pieces rather than whole words. The
sentence's special tokens ([CLS] … [SEP]) stay in place. The random draws are seeded (AUGMENT_SEED),
so the same data gives the same copies, and the teacher's logits on them are cached once.
"""

from __future__ import annotations

import numpy as np

AUGMENT_SEED = 0
P_MASK = 0.1  # Tang et al.'s p_mask
P_NGRAM = 0.25  # Tang et al.'s p_ng
MAX_NGRAM = 5  # n of an n-gram is drawn from 1..5, as in the paper
MAX_COPIES = 50
AUGMENT_PREFIX = "augment:"


def copies_of(spec: str) -> int | None:
    """N of "augment:N"; None for any other transfer spec. ValueError when N is not 1..MAX_COPIES."""
    if not spec.startswith(AUGMENT_PREFIX):
        return None
    count = spec[len(AUGMENT_PREFIX):]
    if not (count.isascii() and count.isdigit() and 1 <= int(count) <= MAX_COPIES):
        raise ValueError(f"transfer: {spec!r} needs a number of copies per training sentence, 1..{MAX_COPIES}, "
                         "e.g. augment:4")
    return int(count)


def augmented_copies(ids: np.ndarray, copies: int, mask_id: int, specials: tuple[int, int],
                     seed: int = AUGMENT_SEED) -> np.ndarray:
    """`copies` augmented versions of every row of `ids` (int64 [N, L], -1 padding), as int64 [copies·N, L].

    Copy c of sentence i is row c·N + i. `specials` = (how many special tokens open a sentence, how many
    close it); they are never masked or cut away.
    """
    rng = np.random.default_rng(seed)
    n, width = ids.shape
    lengths = (ids >= 0).sum(axis=1)
    head, tail = specials
    out = np.full((copies * n, width), -1, dtype=np.int64)
    for c in range(copies):
        for i in range(n):
            sentence = ids[i, : lengths[i]]
            body = sentence[head : len(sentence) - tail].copy()
            body[rng.random(len(body)) < P_MASK] = mask_id
            if len(body) > 1 and rng.random() < P_NGRAM:
                size = int(rng.integers(1, min(MAX_NGRAM, len(body)) + 1))
                start = int(rng.integers(0, len(body) - size + 1))
                body = body[start : start + size]
            row = np.concatenate([sentence[:head], body, sentence[len(sentence) - tail :]])
            out[c * n + i, : len(row)] = row
    return out
