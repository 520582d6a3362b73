"""The claim record and the vocabularies it is written in: statistics, fraction rules, arm
groups and evaluator kinds (each a registry keyed by name)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from medstudy import stats
from medstudy.arms import SSL_PREFIX
from medstudy.claims.columns import Row
from medstudy.claims.index import ResultsIndex
from medstudy.config import ClaimsConfig
from medstudy.corruption import chance_normalised_drop
from medstudy.ssl import METHODS


class NotRunError(Exception):
    """An input a comparison needs is missing; the message is the row's ``reason``."""


# --------------------------------------------------------------------------------------------
# Statistics of a comparison
# --------------------------------------------------------------------------------------------
def _chance_drop(values: np.ndarray, conditions: np.ndarray, chance: float) -> float:
    # values[0] is the clean metric; the others are the distorted conditions. A clean metric at
    # or below chance leaves the drop undefined: NaN (the row is then inconclusive), never a
    # silent number (medstudy.corruption.chance_normalised_drop).
    drops = chance_normalised_drop(values[0], values[1:], chance, on_undefined="nan")
    return float(np.mean(drops))


@dataclass(frozen=True)
class Statistic:
    """A scalar summary of one arm's per-condition metric values.

    ``reduce(values, conditions, chance)`` gets the metric at each condition (one label
    fraction, or the clean set followed by each distortion), the condition values (fractions,
    or indices) and the metric's chance level (AUC 0.5, kappa 0).
    ``better`` is +1 if higher is better, −1 if lower is better.
    """

    name: str
    better: int
    #: None for a case-level statistic (C7, C9): its evaluator computes it from case values.
    reduce: Callable[[np.ndarray, np.ndarray, float], float] | None
    description: str


STATISTICS: dict[str, Statistic] = {
    "metric": Statistic("metric", +1, lambda v, c, chance: float(v[0]), "the primary metric"),
    "slope": Statistic(
        "slope",
        -1,
        lambda v, c, chance: stats.label_efficiency_slope(c, v),
        "OLS slope of the metric vs log10(label fraction): smaller = degrades less",
    ),
    "aulc": Statistic(
        "aulc",
        +1,
        lambda v, c, chance: stats.area_under_label_curve(c, v),
        "area under the metric vs log10(label fraction) curve, normalised to a mean metric",
    ),
    "chance_drop": Statistic(
        "chance_drop",
        -1,
        _chance_drop,
        "mean chance-normalised drop over the distortion suite, "
        "(clean - distorted) / (clean - chance)",
    ),
    # case-level statistics (reduce None): a mean over images of a per-image score (C7), or a
    # property of the set of feature rows (C9); their evaluators hand the cases to the rule
    "mass_in_mask": Statistic(
        "mass_in_mask",
        +1,
        None,
        "share of the positive attribution mass inside the region, mean over images",
    ),
    "pointing_game": Statistic(
        "pointing_game", +1, None, "share of images whose top attribution pixel is in the region"
    ),
    "effective_rank": Statistic(
        "effective_rank",
        +1,
        None,
        "effective rank (Roy & Vetterli 2007) of the last layer's features on the test sample",
    ),
    "condition_number": Statistic(
        "condition_number",
        +1,
        None,
        "99.9th / 90th percentile of the PCA eigenvalues (100 components) of the standardised "
        "last-layer features (the DR study's code)",
    ),
}

#: Which label fractions a claim reads, from the fractions present (sorted ascending).
FRACTION_RULES: dict[str, Callable[[list[float]], list[float]]] = {
    "full": lambda present: [1.0],
    "smallest": lambda present: present[:1],
    "curve": lambda present: present,
}

#: Named groups of arms usable in a comparison pattern as ``@<family>``: the ``ssl:<method>``
#: arms of every method of that family (``MethodSpec.family``), in registry order. Contrastive =
#: trained against negative pairs (InfoNCE: SimCLR, MoCo v2); BYOL, Barlow Twins, SwAV and DINO
#: are joint-embedding but not contrastive. A new contrastive method joins every comparison
#: that names the group (C4).
ARM_GROUPS: dict[str, tuple[str, ...]] = {
    family: tuple(SSL_PREFIX + name for name, spec in METHODS.items() if spec.family == family)
    for family in dict.fromkeys(spec.family for spec in METHODS.values())
}

#: ``EVALUATORS[claim.kind](claim, index, cfg) -> rows``: how a kind of claim is tested. The
#: evaluators register themselves in :mod:`medstudy.claims.evaluators` (``@evaluator(kind)``).
Evaluator = Callable[["Claim", ResultsIndex, ClaimsConfig], list[Row]]
EVALUATORS: dict[str, Evaluator] = {}


def evaluator(kind: str) -> Callable[[Evaluator], Evaluator]:
    """Register the decorated function as ``EVALUATORS[kind]``."""

    def register(fn: Evaluator) -> Evaluator:
        if kind in EVALUATORS:
            raise ValueError(f"evaluator kind {kind!r} is already registered")
        EVALUATORS[kind] = fn
        return fn

    return register


# --------------------------------------------------------------------------------------------
# The claim record
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Claim:
    """One published claim and how it is tested.

    ``comparisons`` are ``(arm_a, arm_b)`` patterns: an exact arm, an ``fnmatch`` pattern
    (``"ssl:*"``) or ``"@group"`` (``ARM_GROUPS``), expanded over the arms that have results; a
    pattern that matches nothing gives a "not run" row. ``direction = +1`` claims A is better
    than B. ``kind`` is the key of ``EVALUATORS``; ``fraction`` a key of ``FRACTION_RULES``
    (``"full"`` = 1.0, ``"smallest"`` = the stage's smallest label fraction, ``"curve"`` =
    every fraction). ``published`` maps a dataset to the published effect in metric units (C3).
    ``family`` is the multiplicity family (the claim id). ``direction = 0`` claims a
    difference in either direction (C9: pretraining *changes* the statistics): a significant
    effect of either sign supports it and nothing can contradict it.
    """

    id: str
    text: str
    source: str
    kind: str
    stages: tuple[str, ...]
    protocol: str
    comparisons: tuple[tuple[str, str], ...] = ()
    statistics: tuple[str, ...] = ("metric",)
    fraction: str = "full"
    datasets: tuple[str, ...] = ()
    direction: int = +1
    published: tuple[tuple[str, float], ...] = ()
    family: str = ""
    #: The statistic the verdict rests on (the first of ``statistics`` unless named); the
    #: others are reported as secondary (C4: the slope is primary, AULC secondary).
    primary: str = ""
    #: Whether a generated dataset (synth_lesions) is tested too (C7's ground truth); the
    #: other claims are about medical images and leave it out.
    synthetic: bool = False
    #: How a dataset's primary rows combine into its verdict: "all" = supported only if every
    #: primary comparison is supported, contradicted if any is (C5 is conjunctive: curriculum
    #: beats scratch AND natural init); "each" = every comparison is its own claim instance.
    combine: str = "all"

    def __post_init__(self) -> None:
        if not self.family:
            object.__setattr__(self, "family", self.id)
        if not self.primary:
            object.__setattr__(self, "primary", self.statistics[0])
        if self.primary not in self.statistics:
            raise ValueError(f"claim {self.id}: primary {self.primary!r} not in {self.statistics}")
        if self.direction not in (-1, 0, 1):
            raise ValueError(f"claim {self.id}: direction {self.direction} not in -1, 0, +1")
        if self.combine not in ("all", "each"):
            raise ValueError(f"claim {self.id}: unknown combine {self.combine!r}; valid: all, each")
        for value, registry, what in (
            (self.kind, EVALUATORS, "kind"),
            (self.fraction, FRACTION_RULES, "fraction rule"),
            *((s, STATISTICS, "statistic") for s in self.statistics),
        ):
            if value not in registry:
                raise ValueError(
                    f"claim {self.id}: unknown {what} {value!r}; valid: {list(registry)}"
                )

    @property
    def stage(self) -> str:
        return self.stages[0]

    def published_for(self, dataset: str) -> float:
        return dict(self.published).get(dataset, math.nan)
