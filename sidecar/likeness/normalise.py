"""From CCIP differences to a score and a verdict (pure arithmetic; property-tested).

CCIP answers a difference per pair of images, 0 for the same image, at most `threshold` (published
with the model) for the same character. A reference set is several approved crops, which differ among
themselves by their `spread` (the median difference of their pairs): a set of varied poses and
outfits is looser than one of near-identical headshots, and an image should be judged as loosely as
the set judges itself. So:

1. tolerance = max(threshold, spread): a set never makes CCIP stricter than its own threshold, and a
   looser set tolerates as much as its members differ (a larger spread never lowers a score).
2. distance of an image = the mean of its nearest reference's difference and its median difference to
   the whole set: the nearest alone would let one odd reference vouch for anything, the median alone
   would not say `same` to an image identical to a reference (0 to one, the spread to the rest).
3. score = tolerance / (tolerance + distance), in (0, 1]: 1 is a reference itself, 0.5 is the
   tolerance, higher = more alike, and never flat at 0 (two off-model drafts still rank). Verdict:
   `same` at distance <= tolerance (score >= 0.5), `different` past 1.5 x tolerance (score < 0.4),
   `unsure` between.

Min, median and max do not depend on the references' order, so neither does a score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAME, UNSURE, DIFFERENT = "same", "unsure", "different"
DIFFERENT_AT = 1.5  # x tolerance: past it the character is another one
OUTLIER_AT = 1.5  # x the set's spread (at least the threshold): a reference unlike the rest


@dataclass(frozen=True)
class Likeness:
    score: float
    verdict: str
    scorer: str
    weights: str

    def to_json(self) -> dict[str, object]:
        return {"score": self.score, "verdict": self.verdict, "scorer": self.scorer, "weights": self.weights}


def spread(ref_diffs: np.ndarray) -> float:
    """The median difference between two different references (0 for a set of one)."""
    n = ref_diffs.shape[0]
    if n < 2:
        return 0.0
    upper = ref_diffs[np.triu_indices(n, k=1)]
    return float(np.median(upper))


def tolerance(threshold: float, set_spread: float) -> float:
    return max(threshold, set_spread)


def distance(to_refs: np.ndarray) -> float:
    """An image's distance to the set from its differences to each reference."""
    to_refs = np.clip(np.asarray(to_refs, dtype=np.float64), 0.0, None)
    return float((to_refs.min() + np.median(to_refs)) / 2)


def score_of(dist: float, tol: float) -> float:
    return round(tol / (tol + max(dist, 0.0)), 4)


def verdict_of(dist: float, tol: float) -> str:
    if dist <= tol:
        return SAME
    return DIFFERENT if dist > DIFFERENT_AT * tol else UNSURE


def judge_rows(to_refs: np.ndarray, ref_diffs: np.ndarray, threshold: float, scorer: str,
               weights: str) -> list[Likeness]:
    """One Likeness per row of `to_refs` ([images, references] differences)."""
    tol = tolerance(threshold, spread(ref_diffs))
    out = []
    for row in np.atleast_2d(to_refs):
        d = distance(row)
        out.append(Likeness(score_of(d, tol), verdict_of(d, tol), scorer, weights))
    return out


@dataclass(frozen=True)
class SetReport:
    count: int
    spread: float
    tolerance: float
    threshold: float
    outliers: list[int]  # indices of references unlike the rest
    typical: list[float]  # each reference's median difference to the others


def report_set(ref_diffs: np.ndarray, threshold: float) -> SetReport:
    n = ref_diffs.shape[0]
    s = spread(ref_diffs)
    typical = [float(np.median(np.delete(ref_diffs[i], i))) if n > 1 else 0.0 for i in range(n)]
    limit = max(threshold, OUTLIER_AT * s)
    outliers = [i for i, t in enumerate(typical) if n > 2 and t > limit]
    return SetReport(n, round(s, 4), round(tolerance(threshold, s), 4), threshold, outliers,
                     [round(t, 4) for t in typical])
