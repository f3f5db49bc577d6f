"""The Temperature lab's choice of validation samples to show."""

from __future__ import annotations

import itertools
import random

SAMPLE_CHOICES = {"per_class": "one per class", "uncertain": "least confident", "wrong": "misclassified",
                  "random": "random"}


def pick_samples(labels: list[int], predictions: list[int], confidences: list[float], how: str, count: int,
                 seed: int = 0) -> list[int]:
    """Indices of up to `count` validation samples to show in the lab.

    per_class: the first sample of each class in class order, then the second of each, and so on;
    uncertain: the lowest teacher
    confidence (max probability at T = 1) first; wrong: misclassified, most confident first (the
    teacher's most telling mistakes); random: a seeded draw.
    """
    if how not in SAMPLE_CHOICES:
        raise ValueError(f"how must be one of {', '.join(SAMPLE_CHOICES)}, got {how!r}")
    n = len(labels)
    if how == "per_class":
        by_class: dict[int, list[int]] = {}
        for i, label in enumerate(labels):
            by_class.setdefault(int(label), []).append(i)
        rounds = itertools.zip_longest(*(by_class[c] for c in sorted(by_class)))
        return [i for round_ in rounds for i in round_ if i is not None][:count]
    if how == "uncertain":
        return sorted(range(n), key=lambda i: (confidences[i], i))[:count]
    if how == "wrong":
        wrong = [i for i in range(n) if predictions[i] != labels[i]]
        return sorted(wrong, key=lambda i: (-confidences[i], i))[:count]
    return sorted(random.Random(seed).sample(range(n), min(count, n)))

