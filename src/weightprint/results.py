"""The one shape for statistical results, and ways to combine them.

Every statistical test in weightprint returns a :class:`TestResult`, in the spirit of
scipy.stats result objects: ``statistic`` and ``pvalue`` plus the inputs that produced
them and a plain-words null hypothesis. p-values are carried in log space as well
(``log10_pvalue``) so that overwhelming evidence reads "p < 1e-300" with its magnitude
instead of underflowing to zero.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

Alternative = Literal["two-sided", "less", "greater"]

LN10 = math.log(10.0)


@dataclass(frozen=True)
class TestResult:
    """Result of one statistical test.

    Attributes
    ----------
    name : str
        Short identifier of the test (``"watermark-correlation"``, ``"mlp-gram-mantel"``).
    statistic : float
        The observed test statistic.
    log10_pvalue : float
        log10 of the p-value (``-inf`` never; at least ``-1e308``-safe). Use ``pvalue`` for the
        plain value, which underflows to 0.0 below ~1e-308.
    null_hypothesis : str
        H0 in words.
    alternative : {'two-sided', 'less', 'greater'}
        Which deviations from H0 count as evidence.
    method : str
        How the p-value was obtained (exact permutation, normal approximation, Hoeffding bound...).
    n : int
        Number of observations the statistic was computed from.
    n_resamples : int
        Number of resamples for permutation/Monte-Carlo p-values (0 if analytic).
    seed : int | None
        Seed of the resampling generator, for reproducibility.
    evidence : dict
        Test-specific extras (per-layer values, alignment quality, ...). JSON-serialisable.
    null_distribution : numpy.ndarray | None
        Resampled statistics under H0, if any, "in case a different definition is preferred".
    """

    __test__ = False  # not a pytest test class

    name: str
    statistic: float
    log10_pvalue: float
    null_hypothesis: str
    alternative: Alternative = "greater"
    method: str = ""
    n: int = 0
    n_resamples: int = 0
    seed: int | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    null_distribution: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def pvalue(self) -> float:
        """The p-value as a float (0.0 when it underflows; see ``log10_pvalue``)."""
        return float(10.0 ** self.log10_pvalue) if self.log10_pvalue > -330 else 0.0

    def significant(self, alpha: float) -> bool:
        """True when the p-value is below ``alpha`` (compared in log space)."""
        return self.log10_pvalue < math.log10(alpha)

    def pvalue_text(self) -> str:
        """Human text: ``p = 0.031`` or ``p < 1e-300`` style with its magnitude."""
        return format_pvalue(self.log10_pvalue)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("null_distribution", None)
        d["pvalue"] = self.pvalue
        d["pvalue_text"] = self.pvalue_text()
        return _jsonable(d)


class VerdictResult:
    """The one verdict protocol every command's result follows (lineage, exact, trace, verify,
    compare, contamination, scan...).

    A subclass (usually a dataclass) provides

    - ``verdict``: a short string (``"derived"``, ``"accused"``, ``"same"``, ``"no evidence"``...);
    - ``EVIDENCE_VERDICTS``: the verdicts that mean "evidence found" (exit code 1 in the CLI);
    - ``evidence``: the :class:`TestResult` objects the verdict rests on (may be empty);
    - ``summary()``: one line for people; ``to_dict()``: JSON-ready data for machines.

    ``evidence_found`` and :func:`exit_code` are derived from these, so the CLI maps every
    verdict to its exit code in one place: 0 = no evidence / done, 1 = evidence, 2 = error.
    """

    EVIDENCE_VERDICTS: ClassVar[frozenset[str]] = frozenset()

    @property
    def evidence_found(self) -> bool:
        """True when ``verdict`` is one of ``EVIDENCE_VERDICTS``."""
        return str(getattr(self, "verdict")) in self.EVIDENCE_VERDICTS

    @property
    def evidence(self) -> list[TestResult]:
        return []

    def summary(self) -> str:
        return str(getattr(self, "verdict"))


EXIT_OK, EXIT_EVIDENCE, EXIT_ERROR = 0, 1, 2


def exit_code(result: Any) -> int:
    """The CLI's exit code for a result: 1 when it is a :class:`VerdictResult` with evidence, else 0."""
    return EXIT_EVIDENCE if isinstance(result, VerdictResult) and result.evidence_found else EXIT_OK


def format_pvalue(log10_p: float) -> str:
    """Format a p-value given in log10: ``p = 0.031``, ``p = 2.1e-07``, ``p < 1e-300``."""
    if log10_p >= -3:
        return f"p = {10 ** log10_p:.3g}"
    if log10_p > -300:
        return f"p = {10 ** log10_p:.2g}"
    return f"p < 1e{math.floor(log10_p) + 1}"


def log10_norm_sf(z: float) -> float:
    """log10 of the upper normal tail P(Z >= z), accurate far into the tail."""
    from scipy import special  # here, not at the top: scipy costs the CLI's start-up ~0.5 s

    return float(special.log_ndtr(-z) / LN10)


def log10_hoeffding_bound(statistic: float, sum_sq: float) -> float:
    """log10 of the sub-Gaussian bound P(sum r_i s_i >= t) <= exp(-t^2 / (2 sum r_i^2)).

    Valid for independent symmetric +-1 signs s_i whatever the fixed r_i (Hoeffding):
    a p-value that needs no normal approximation in the far tail.
    """
    if statistic <= 0 or sum_sq <= 0:
        return 0.0
    return float(-(statistic * statistic) / (2.0 * sum_sq) / LN10)


def combine_fisher(log10_pvalues: list[float] | np.ndarray) -> float:
    """Fisher's method on independent p-values, in log10 space.

    -2 sum ln p_i ~ chi^2 with 2k degrees of freedom under H0 (all nulls true, independent).
    """
    lp = np.asarray(log10_pvalues, dtype=float)
    if lp.size == 0:
        return 0.0
    x = -2.0 * np.sum(lp) * LN10
    from scipy import stats

    return float(stats.chi2.logsf(x, 2 * lp.size) / LN10)


def combine_bonferroni(log10_pvalues: list[float] | np.ndarray) -> float:
    """Bonferroni (min p times k, capped at 1), in log10: valid under any dependence."""
    lp = np.asarray(log10_pvalues, dtype=float)
    if lp.size == 0:
        return 0.0
    return float(min(0.0, lp.min() + math.log10(lp.size)))


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return [_jsonable(v) for v in x.tolist()]
    if isinstance(x, (np.floating,)):
        x = float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, float) and (math.isinf(x) or math.isnan(x)):
        return str(x)
    return x


def to_jsonable(x: Any) -> Any:
    """Convert dataclasses/numpy values into plain JSON-serialisable Python values."""
    from dataclasses import is_dataclass

    if hasattr(x, "to_dict"):
        return x.to_dict()
    if is_dataclass(x) and not isinstance(x, type):
        return _jsonable({k: to_jsonable(v) for k, v in x.__dict__.items()})
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    return _jsonable(x)
