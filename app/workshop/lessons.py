"""The guided lessons: one idea a page, one action, its result. Their texts, presets and numbers.

The first two lessons draw one example's teacher logits: a real trained teacher's, from the store
(the Temperature lab's source), once one exists; until then one fixed vector (a handwritten 7 that
looks a little like a 1 and a 9). Either way they are plain floats, so the pages redraw instantly
without torch. The third and fourth lessons train: `LESSON_PRESET` is the run
whose benefit a room can see (`kdcore.presets.LESSON`, found by `bench/lesson_preset.py`, in BENCHMARKS.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kdcore import presets

CLASSES = [str(digit) for digit in range(10)]
# A teacher's logits for one handwritten 7: sure it is a 7, and it finds 1 and 9 the likeliest mistakes.
SEVEN_LOGITS = [0.4, 4.1, 1.2, 1.9, 0.3, 0.6, -1.2, 10.0, 1.1, 3.6]

CONFIDENT = 0.9  # the real example's teacher probability at T = 1: sure, with runner-ups worth reading


@dataclass(frozen=True)
class Example:
    """One example's teacher logits: what the first two lessons draw."""

    logits: list[float]
    class_names: list[str]
    label: int  # its true class (the teacher's answer too)
    what: str  # e.g. "handwritten 7", in "the teacher's soft label for one …"
    source: str  # where the logits come from, said under the chart


SEVEN = Example(SEVEN_LOGITS, CLASSES, 7, "handwritten 7",
                "A fixed example. Once a teacher has been trained in this store (lesson 3 trains one), these "
                "lessons show its soft labels instead.")


def pick_example(logits: list[list[float]], labels: list[int]) -> int:
    """The validation example the lessons show: one the teacher gets right whose probability at T = 1 is
    closest to CONFIDENT (an example at 99.99% shows nothing until T is large); any example if none is right."""
    probs = [max(soft_labels(row, 1.0)) for row in logits]
    right = [i for i, row in enumerate(logits) if row.index(max(row)) == labels[i]] or list(range(len(logits)))
    return min(right, key=lambda i: (abs(probs[i] - CONFIDENT), i))


def lesson_teacher(teachers: list[dict]) -> dict | None:
    """Of the store's trained teachers (`app.read_model.runs.stored_teachers`, newest first), the one the
    lessons use: the newest on the lesson preset's dataset, else the newest."""
    same = [t for t in teachers if t.get("dataset") == LESSON_PRESET["dataset"]]
    return (same or teachers or [None])[0]


ALONE_VS_DISTILLED = "alone-vs-distilled"
# Settings over RunConfig's defaults: the engine's preset `lesson-alone-vs-distilled` (`kdcore.presets`, where its
# numbers are told), so `python -m kdcore run --preset lesson-alone-vs-distilled` trains the same run.
LESSON_PRESET: dict[str, object] = dict(presets.LESSON.settings)
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
           "Move T and watch the teacher's answer for one example soften."),
    Lesson("dark-knowledge", "2 · Dark knowledge",
           "The probabilities of the *wrong* classes say which mistakes are reasonable: a 7 can look like a 1 or "
           "a 9, hardly ever like a 6. Hinton et al. called this dark knowledge; a higher T brings it out.",
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


def runner_ups(logits: list[float], temperature: float, count: int = 3,
               class_names: list[str] = CLASSES) -> list[tuple[str, float]]:
    """The `count` likeliest wrong classes and their probabilities."""
    probs = soft_labels(logits, temperature)
    top = probs.index(max(probs))
    ranked = sorted((p, class_names[i]) for i, p in enumerate(probs) if i != top)[::-1]
    return [(name, p) for p, name in ranked[:count]]
