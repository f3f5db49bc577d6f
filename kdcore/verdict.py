"""Seed-noise verdicts: is a difference between two things more than the spread between seeds?

Two runs of the same config with different seeds differ by about half a point of accuracy on small
sets, so a single pair of numbers says little. `seed_verdict` compares two sides, each a value per
seed (say the distilled student's test accuracy and the student alone's), with this rule:

* **Paired** when the sides share at least 2 seeds: the differences d_s = a_s − b_s on the shared
  seeds, their mean d̄ and its 95% Student-t interval d̄ ± t(0.975, n − 1) · s_d / √n (s_d the sample
  standard deviation, n the shared seeds). Pairing by seed removes what a seed does to both sides
  (the split of the data, the initialisation), so it is the sharper test when it is possible.
* **Unpaired** (Welch) when they share fewer than 2 seeds but each side has at least 2 values:
  ā − b̄ ± t(0.975, ν) · √(s_a²/n_a + s_b²/n_b), with the Welch–Satterthwaite ν.
* The verdict: **better** when the interval lies wholly above 0, **worse** when wholly below,
  otherwise **within seed noise**. With fewer values than that there is no verdict ("one seed: no
  verdict"). Differences that are equal on every seed have an interval of zero width.

Pure Python on purpose (no numpy, scipy or torch): the app's pages and `status` import it. The t
quantile comes from the regularised incomplete beta function; tests check it against scipy.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CONFIDENCE = 0.95
BETTER, WORSE, NOISE, NONE = "better", "worse", "within seed noise", "no verdict"


# --- Student's t ----------------------------------------------------------------------------------------------


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes §6.4)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularised incomplete beta function, for a, b > 0 and 0 ≤ x ≤ 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


@functools.lru_cache(maxsize=256)
def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with df (> 0, not necessarily whole) degrees of freedom, 0.5 ≤ p < 1.

    P(|T| > t) = I_{df/(df+t²)}(df/2, 1/2); bisection on x = df/(df+t²) (I_x grows with x) to 1e-15."""
    if not 0.5 <= p < 1.0 or not df > 0:
        raise ValueError(f"t_quantile needs 0.5 <= p < 1 and df > 0, got p={p}, df={df}")
    if p == 0.5:
        return 0.0
    tail = 2.0 * (1.0 - p)  # two-sided
    low, high = 0.0, 1.0
    for _ in range(200):
        mid = (low + high) / 2
        if regularized_beta(df / 2, 0.5, mid) < tail:
            low = mid
        else:
            high = mid
        if high - low < 1e-16:
            break
    x = (low + high) / 2
    return math.sqrt(df * (1.0 - x) / x)


def mean_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float | None]:
    """(mean, half-width of its Student-t interval); the half-width is None for fewer than 2 values."""
    if not values:
        raise ValueError("mean_interval needs at least one value")
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t_quantile(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)


# --- the verdict ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """How side a compares with side b over seeds (see the module's rule).

    `diff_mean` and `diff_low`/`diff_high` (the 95% interval of the mean difference a − b) are in the
    values' own units (fractions for accuracies); `text` prints them scaled (percentage points).
    `seeds` are the shared seeds of a paired verdict; `wins`/`losses` count them where a > b / a < b.
    """

    verdict: str
    paired: bool
    n_a: int
    n_b: int
    seeds: tuple[Any, ...]
    a_mean: float | None
    b_mean: float | None
    diff_mean: float | None
    diff_low: float | None
    diff_high: float | None
    wins: int
    losses: int
    text: str

    @property
    def n(self) -> int:
        """The seeds the verdict rests on: shared seeds when paired, else the smaller side."""
        return len(self.seeds) if self.paired else min(self.n_a, self.n_b)

    @property
    def half_width(self) -> float | None:
        return None if self.diff_low is None else (self.diff_high - self.diff_low) / 2

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "text": self.text, "paired": self.paired, "n": self.n,
                "n_a": self.n_a, "n_b": self.n_b, "seeds": list(self.seeds), "a_mean": self.a_mean,
                "b_mean": self.b_mean, "diff_mean": self.diff_mean,
                "diff_ci95": None if self.diff_low is None else [self.diff_low, self.diff_high],
                "wins": self.wins, "losses": self.losses}


def _clean(values: Mapping[Any, float | None]) -> dict[Any, float]:
    return {seed: float(v) for seed, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _points(value: float, scale: float, precise: bool) -> str:
    text = f"{scale * value:+.{2 if precise else 1}f}"
    return text.replace("-", "−")


def _amount(mean: float, half: float | None, scale: float, unit: str) -> str:
    precise = min(abs(scale * mean), abs(scale * half) if half is not None else math.inf) < 0.1  # two decimals
    spread = "" if half is None else f" ± {scale * half:.{2 if precise else 1}f}"
    return f"{_points(mean, scale, precise)}{spread} {unit}".rstrip()


def seed_verdict(a: Mapping[Any, float | None], b: Mapping[Any, float | None], *, scale: float = 100.0,
                 unit: str = "points", confidence: float = CONFIDENCE) -> Verdict:
    """Compare side `a` with side `b`, each a value per seed (None or NaN values are left out).

    scale and unit only shape `text` (100 and "points": accuracies as percentage points). Examples of
    `text`: "better on 3 of 3 seeds, +0.8 ± 0.3 points"; "within seed noise (+0.2 ± 0.9 points, better
    on 2 of 3 seeds)"; "better, +1.5 ± 0.9 points (unpaired: 3 vs 4 seeds)"; "one seed: no verdict
    (+0.4 points)".
    """
    a, b = _clean(a), _clean(b)
    a_mean = math.fsum(a.values()) / len(a) if a else None
    b_mean = math.fsum(b.values()) / len(b) if b else None
    shared = tuple(sorted((s for s in a if s in b), key=repr))
    if len(shared) >= 2:
        diffs = [a[s] - b[s] for s in shared]
        mean, half = mean_interval(diffs, confidence)
        wins, losses = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
        verdict = BETTER if mean - half > 0 else WORSE if mean + half < 0 else NOISE
        amount = _amount(mean, half, scale, unit)
        n = len(shared)
        if verdict == BETTER:
            text = f"better on {wins} of {n} seeds, {amount}"
        elif verdict == WORSE:
            text = f"worse on {losses} of {n} seeds, {amount}"
        else:
            text = f"within seed noise ({amount}, better on {wins} of {n} seeds)"
        return Verdict(verdict, True, len(a), len(b), shared, a_mean, b_mean, mean, mean - half, mean + half,
                       wins, losses, text)
    if len(a) >= 2 and len(b) >= 2:
        var_a = math.fsum((v - a_mean) ** 2 for v in a.values()) / (len(a) - 1) / len(a)
        var_b = math.fsum((v - b_mean) ** 2 for v in b.values()) / (len(b) - 1) / len(b)
        mean, se = a_mean - b_mean, math.sqrt(var_a + var_b)
        if se > 0:
            df = (var_a + var_b) ** 2 / (var_a ** 2 / (len(a) - 1) + var_b ** 2 / (len(b) - 1))
            half = t_quantile(0.5 + confidence / 2, df) * se
        else:
            half = 0.0
        verdict = BETTER if mean - half > 0 else WORSE if mean + half < 0 else NOISE
        amount = _amount(mean, half, scale, unit)
        sizes = f"unpaired: {len(a)} vs {len(b)} seeds"
        text = f"within seed noise ({amount}; {sizes})" if verdict == NOISE else f"{verdict}, {amount} ({sizes})"
        return Verdict(verdict, False, len(a), len(b), (), a_mean, b_mean, mean, mean - half, mean + half, 0, 0, text)
    if shared:  # one shared seed
        diff = a[shared[0]] - b[shared[0]]
        text = f"one seed: no verdict ({_amount(diff, None, scale, unit)})"
        return Verdict(NONE, True, len(a), len(b), shared, a_mean, b_mean, diff, None, None,
                       int(diff > 0), int(diff < 0), text)
    if a and b:
        diff = a_mean - b_mean
        text = f"one seed: no verdict ({_amount(diff, None, scale, unit)})"
        return Verdict(NONE, False, len(a), len(b), (), a_mean, b_mean, diff, None, None, 0, 0, text)
    return Verdict(NONE, False, len(a), len(b), (), a_mean, b_mean, None, None, None, 0, 0,
                   "no verdict: nothing to compare with")
