"""The guided lessons: one idea a page, one action, its result. Their texts, presets and numbers.

The numbers of the first two lessons come from one fixed vector of teacher logits (a handwritten 7
that looks a little like a 1 and a 9), so they redraw instantly without torch; the Temperature lab
does the same on a real teacher. The third and fourth lessons train: `LESSON_PRESET` is the run
whose benefit a room can see (found by `bench/lesson_preset.py`, recorded in BENCHMARKS.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CLASSES = [str(digit) for digit in range(10)]
# A teacher's logits for one handwritten 7: sure it is a 7, and it finds 1 and 9 the likeliest mistakes.
SEVEN_LOGITS = [0.4, 4.1, 1.2, 1.9, 0.3, 0.6, -1.2, 10.0, 1.1, 3.6]

ALONE_VS_DISTILLED = "alone-vs-distilled"
# Settings over RunConfig's defaults (BENCHMARKS.md, "A lesson preset that teaches"): the student keeps the labels
# of 10% of the digits, the teacher labels them all. Distilled beats alone by +7.8 to +8.3 points on each of 3
# seeds, 2–3 s a run (with its baseline) on 2 busy cores once the teacher exists.
LESSON_PRESET: dict[str, object] = {"dataset": "digits", "labeled_fraction": 0.1, "baseline": True}
# The room sweep over T starts from the lesson preset (one shared teacher; the runs train together).
ROOM_SWEEP_TEMPERATURES = [1, 2, 4, 8, 16]


@dataclass(frozen=True)
class Lesson:
    slug: str
    title: str
    idea: str  # one or two sentences: what this page shows
    action: str  # what the participant does


LESSONS = [
    Lesson("soft-labels", "1 · Soft labels and the temperature",
           "A teacher does not only say *7*: its softmax gives every class a probability. Dividing the logits by a "
           "temperature T before the softmax softens that distribution; T = 1 is the plain softmax.",
           "Move T and watch the teacher's answer for one handwritten 7 soften."),
    Lesson("dark-knowledge", "2 · Dark knowledge",
           "The probabilities of the *wrong* classes say which mistakes are reasonable: this 7 looks more like a 1 "
           "or a 9 than like a 6. Hinton et al. called this dark knowledge; a higher T brings it out.",
           "Pick a temperature and read how much probability the wrong classes share, and in what order."),
    Lesson(ALONE_VS_DISTILLED, "3 · Student alone vs distilled",
           "The same small student trained twice on handwritten digits whose labels it may read for only 1 image "
           "in 10: once on those labels alone, once also matching the teacher's soft labels, which the teacher gives "
           "for every image. Same images, same seed, same budget.",
           "Predict how many points distillation adds, then run it (a few seconds) and compare."),
    Lesson("temperature-curve", "4 · The temperature curve",
           "Which T works best? Each participant trains one temperature of a shared sweep; together the room "
           "draws the curve.",
           "Run your cell of the room sweep and watch the room's curve fill in."),
]


def soft_labels(logits: list[float], temperature: float) -> list[float]:
    """softmax(z / T), computed stably."""
    scaled = [z / temperature for z in logits]
    top = max(scaled)
    exps = [math.exp(z - top) for z in scaled]
    total = sum(exps)
    return [e / total for e in exps]


def dark_knowledge(logits: list[float], temperature: float) -> float:
    """The probability the soft label gives to every class but the top one."""
    return 1.0 - max(soft_labels(logits, temperature))


def entropy_bits(probs: list[float]) -> float:
    return -sum(p * math.log2(p) for p in probs if p > 0)


def runner_ups(logits: list[float], temperature: float, count: int = 3) -> list[tuple[str, float]]:
    """The `count` likeliest wrong classes and their probabilities."""
    probs = soft_labels(logits, temperature)
    top = probs.index(max(probs))
    ranked = sorted((p, CLASSES[i]) for i, p in enumerate(probs) if i != top)[::-1]
    return [(name, p) for p, name in ranked[:count]]
