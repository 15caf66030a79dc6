"""Is the distilled student really better than the same student trained without a teacher?

McNemar's test on the paired evaluation-set predictions: of the samples exactly one of the
two models gets right, `b` are the student's and `c` the baseline's. Under "no difference"
each such sample is a fair coin, so `b ~ Binomial(b + c, 1/2)`.

- `b + c < EXACT_BELOW`: the exact two-sided binomial test,
  p = min(1, 2 * P[X <= min(b, c)]) (scipy's `binomtest` when scipy is installed, the same
  sum computed here otherwise).
- otherwise: the chi-square statistic with continuity correction (Edwards 1948),
  (|b - c| - 1)^2 / (b + c), one degree of freedom; its tail is erfc(sqrt(stat / 2)).

p >= ALPHA is `no_gain`; below it, the sign of kd_gain says `kd_better` or
`baseline_better`. Torch-free: it takes per-sample correctness as booleans.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

try:
    from scipy.stats import binomtest
except ImportError:  # scipy is optional: the exact sum below is the same test
    binomtest = None

ALPHA = 0.05
EXACT_BELOW = 25  # discordant pairs under which the exact test is used
Outcome = Literal["kd_better", "no_gain", "baseline_better"]
Keep = Literal["distilled", "best"]


def exact_binomial_p(b: int, c: int) -> float:
    """Two-sided exact binomial p-value of b successes in b + c fair trials."""
    n = b + c
    if n == 0:
        return 1.0
    if binomtest is not None:
        return float(binomtest(b, n, 0.5, alternative="two-sided").pvalue)
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def chi_square_cc_p(b: int, c: int) -> float:
    """McNemar's chi-square with continuity correction, one degree of freedom."""
    n = b + c
    if n == 0:
        return 1.0
    stat = max(abs(b - c) - 1, 0) ** 2 / n
    return math.erfc(math.sqrt(stat / 2))


def mcnemar(b: int, c: int) -> tuple[float, str]:
    """(p-value, the test's name) for `b` student-only and `c` baseline-only correct samples."""
    if b + c < EXACT_BELOW:
        return exact_binomial_p(b, c), "mcnemar_exact_binomial"
    return chi_square_cc_p(b, c), "mcnemar_chi_square_cc"


def decide(
    student_correct: Sequence[bool],
    baseline_correct: Sequence[bool],
    kd_gain: float,
    keep: Keep = "distilled",
) -> dict[str, Any]:
    """The report's `verdict` from the paired per-sample correctness of student and
    baseline on the evaluation split, and which model the job keeps."""
    if len(student_correct) != len(baseline_correct):
        raise ValueError("student and baseline must be measured on the same samples")
    pairs = list(zip(student_correct, baseline_correct, strict=True))
    b = sum(1 for s, base in pairs if s and not base)
    c = sum(1 for s, base in pairs if base and not s)
    p_value, test = mcnemar(b, c)
    outcome: Outcome = "no_gain"
    if p_value < ALPHA:
        outcome = "kd_better" if kd_gain > 0 else "baseline_better"
    swap = keep == "best" and outcome == "baseline_better"
    verdict: dict[str, Any] = {
        "outcome": outcome,
        "p_value": p_value,
        "test": test,
        "alpha": ALPHA,
        "samples": len(pairs),
        "student_only_correct": b,
        "baseline_only_correct": c,
        "keep": keep,
        "kept": "baseline" if swap else "distilled",
        "lost": -kd_gain if outcome == "baseline_better" and not swap else None,
    }
    return verdict


def no_verdict(reason: str) -> dict[str, Any]:
    """A report's `verdict` when a baseline was asked for but none can be judged."""
    return {"outcome": None, "reason": reason}
