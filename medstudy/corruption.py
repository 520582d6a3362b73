"""Robustness statistics (DESIGN §1, claim C6): chance levels, the chance-normalised drop and
ImageNet-C's mean corruption error. Pure functions on metric values; the distortions
themselves are :mod:`medstudy.distortions`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from medstudy.distortions import _CLEAN_NAMES, CLEAN

__all__ = ["CorruptionErrors", "chance_level", "chance_normalised_drop", "mean_corruption_error"]


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------
def _needs_classes(metric: str, n_classes: int | None) -> float:
    if n_classes is None or isinstance(n_classes, bool) or int(n_classes) < 2:
        raise ValueError(
            f"chance level of {metric!r} needs n_classes >= 2 (use 2 for the per-label "
            f"accuracy of a multi-label task), got {n_classes!r}"
        )
    return 1.0 / int(n_classes)


_CHANCE: dict[str, Callable[[int | None], float]] = {
    "auc": lambda k: 0.5,
    "referable_auc": lambda k: 0.5,
    "referable_auc_ge3": lambda k: 0.5,
    "qwk": lambda k: 0.0,
    "accuracy": lambda k: _needs_classes("accuracy", k),
    "balanced_accuracy": lambda k: _needs_classes("balanced_accuracy", k),
}


def chance_level(metric: str, n_classes: int | None = None) -> float:
    """Expected score of predictions drawn independently of the image (uniform guessing).

    - ``auc``, ``referable_auc``, ``referable_auc_ge3``: 0.5 (binary, macro one-vs-rest,
      per-label mean alike);
    - ``qwk``: 0.0 (kappa is agreement beyond chance);
    - ``balanced_accuracy``: 1/K, whatever the class priors;
    - ``accuracy``: 1/K, the expected accuracy of a uniform random guess whatever the priors.
      A constant majority-class guess scores the largest prior, which is higher on imbalanced
      data: prefer ``balanced_accuracy`` or ``auc`` for chance-normalised drops. For the
      multi-label per-label accuracy pass ``n_classes=2``.

    Metrics without a prior-free chance level (``macro_f1``, ``ece``) raise ``ValueError``,
    as does any unknown name.

    >>> chance_level("auc"), chance_level("qwk"), chance_level("balanced_accuracy", 4)
    (0.5, 0.0, 0.25)
    """
    if metric not in _CHANCE:
        raise ValueError(
            f"no chance level defined for metric {metric!r}; valid: {sorted(_CHANCE)} "
            "(macro_f1 and ece have no prior-free chance level)"
        )
    return float(_CHANCE[metric](n_classes))


def chance_normalised_drop(
    m_clean: npt.ArrayLike,
    m_distorted: npt.ArrayLike,
    chance: npt.ArrayLike,
    *,
    on_undefined: Literal["raise", "nan"] = "raise",
) -> float | np.ndarray:
    """Fraction of the above-chance margin lost under a distortion (claim C6).

    ``(m_clean − m_distorted) / (m_clean − chance)`` for a metric where higher is better.
    Direction: positive means the distortion hurt; 0 = unchanged, 1 = fell to chance, > 1 = fell
    below chance, < 0 = improved. Inputs broadcast (numpy rules); scalars give a float.

    Undefined where the clean metric is at or below chance (or NaN): the model has no margin
    to lose, and the ratio's sign and size mean nothing. By default that raises ``ValueError``;
    with ``on_undefined="nan"`` those entries are NaN, so an average over conditions is NaN
    unless the caller drops them explicitly. A NaN ``m_distorted`` gives NaN.

    >>> round(chance_normalised_drop(0.9, 0.8, 0.5), 10)
    0.25
    >>> chance_normalised_drop([0.9, 0.5], [0.7, 0.5], 0.5, on_undefined="nan")
    array([0.5, nan])
    """
    if on_undefined not in ("raise", "nan"):
        raise ValueError(f"on_undefined must be 'raise' or 'nan', got {on_undefined!r}")
    clean, distorted, ref = np.broadcast_arrays(
        np.asarray(m_clean, dtype=float),
        np.asarray(m_distorted, dtype=float),
        np.asarray(chance, dtype=float),
    )
    margin = clean - ref
    undefined = ~(margin > 0)  # also catches NaN
    if undefined.any() and on_undefined == "raise":
        first = np.flatnonzero(undefined.ravel())[0]
        raise ValueError(
            f"chance-normalised drop is undefined where the clean metric is at or below chance: "
            f"{int(undefined.sum())} of {undefined.size} entries, first m_clean="
            f"{clean.ravel()[first]:.4g} vs chance={ref.ravel()[first]:.4g}. Pass "
            "on_undefined='nan' to get NaN there."
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        drop = np.where(undefined, np.nan, (clean - distorted) / np.where(undefined, 1.0, margin))
    return float(drop) if drop.ndim == 0 else drop


@dataclass(frozen=True)
class CorruptionErrors:
    """ImageNet-C corruption errors of each arm, relative to ``reference``.

    ``ce``: arm × distortion, ``CE = Σ_s E_arm(s) / Σ_s E_ref(s)``; ``mce``: its mean over
    distortions (the reference arm scores exactly 1). ``relative_ce`` / ``relative_mce``:
    the same with each arm's clean error subtracted, ``Σ_s (E_arm(s) − E_arm(clean)) /
    Σ_s (E_ref(s) − E_ref(clean))``; ``None`` when no clean errors were given. Below 1 = more
    robust than the reference. Ratios, not percentages.
    """

    ce: pd.DataFrame
    mce: pd.Series
    relative_ce: pd.DataFrame | None
    relative_mce: pd.Series | None
    reference: str


#: A tidy DataFrame or ``{arm: {distortion: errors by severity, "none": clean error}}``.
ErrorTable = pd.DataFrame | Mapping[str, Mapping[str, Any]]


def _tidy_errors(errors: ErrorTable) -> pd.DataFrame:
    if isinstance(errors, pd.DataFrame):
        need = {"arm", "distortion", "severity", "error"}
        if missing := need - set(errors.columns):
            raise ValueError(
                f"errors DataFrame lacks columns {sorted(missing)}; needs {sorted(need)}"
            )
        tidy = errors[["arm", "distortion", "severity", "error"]].copy()
    elif isinstance(errors, Mapping):
        rows = []
        for arm, by_distortion in errors.items():
            for dist, values in by_distortion.items():
                if isinstance(values, Mapping):
                    rows += [(arm, dist, int(s), float(e)) for s, e in values.items()]
                elif np.ndim(values) == 0:
                    if dist not in _CLEAN_NAMES:
                        raise ValueError(
                            f"{arm}/{dist}: a single number is only allowed for the clean error "
                            f"(key {CLEAN!r}); give distorted errors per severity"
                        )
                    rows.append((arm, dist, 0, float(values)))  # type: ignore[arg-type]
                else:
                    rows += [(arm, dist, s, float(e)) for s, e in enumerate(values, start=1)]  # type: ignore[arg-type]
        tidy = pd.DataFrame(rows, columns=["arm", "distortion", "severity", "error"])
    else:
        raise ValueError(
            f"errors must be a DataFrame or a nested mapping, got {type(errors).__name__}"
        )
    tidy["severity"] = tidy["severity"].astype(int)
    tidy["error"] = tidy["error"].astype(float)
    clean = (tidy["severity"] == 0) | tidy["distortion"].isin(_CLEAN_NAMES)
    tidy.loc[clean, ["distortion", "severity"]] = [CLEAN, 0]
    dup = tidy.duplicated(["arm", "distortion", "severity"], keep=False)
    if dup.any():
        first = tidy[dup].iloc[0]
        raise ValueError(
            f"{int(dup.sum())} duplicate (arm, distortion, severity) rows, e.g. "
            f"{(first.arm, first.distortion, int(first.severity))}: average over seeds first "
            f"(a clean row, severity 0 or distortion {CLEAN!r}, appears once per arm)"
        )
    if not np.isfinite(tidy["error"]).all():
        raise ValueError("errors must be finite")
    return tidy


def _ratio(num: pd.DataFrame, den: pd.Series, what: str, on_undefined: str) -> pd.DataFrame:
    bad = ~(den > 0)
    if bad.any() and on_undefined == "raise":
        raise ValueError(
            f"{what} is undefined for {sorted(den.index[bad])}: the reference arm's summed "
            f"{'error' if what == 'CE' else 'error increase'} there is {den[bad].tolist()} "
            "(<= 0). Pass on_undefined='nan' to get NaN there."
        )
    return num.div(den.where(~bad), axis=1)


def mean_corruption_error(
    errors_by_arm: ErrorTable,
    reference: str = "scratch",
    *,
    on_undefined: Literal["raise", "nan"] = "raise",
) -> CorruptionErrors:
    """ImageNet-C mCE and relative mCE (Hendrycks & Dietterich 2019, ICLR, §3).

    For arm f and distortion c, ``CE_c(f) = Σ_s E_f(s, c) / Σ_s E_ref(s, c)`` and
    ``mCE(f) = mean_c CE_c(f)``. With clean errors, ``relCE_c(f) = Σ_s (E_f(s, c) − E_f(clean))
    / Σ_s (E_ref(s, c) − E_ref(clean))`` and ``relative mCE = mean_c relCE_c``.

    ``errors_by_arm`` holds *errors*, lower is better: ``1 − metric`` for a metric in [0, 1] (e.g.
    ``1 − auc``; Hendrycks & Dietterich use top-1 error). Either a tidy DataFrame with columns
    ``arm, distortion, severity, error`` (one row per cell: average seeds first; clean rows
    have severity 0 or distortion ``"none"``), or ``{arm: {distortion: [E(s=1), E(s=2), …] or
    {severity: E}, "none": E_clean}}``. Every arm must have exactly the reference's
    (distortion, severity) cells. A reference sum ≤ 0 leaves that CE undefined: ``ValueError``,
    or NaN with ``on_undefined="nan"``.

    Hand check: scratch errors noise (0.2, 0.4), blur (0.1, 0.3), clean 0.1; ssl noise
    (0.1, 0.3), blur (0.1, 0.1), clean 0.05. CE_noise = 0.4/0.6 = 2/3, CE_blur = 0.2/0.4 = 1/2,
    mCE = 7/12 ≈ 0.583; relCE_noise = (0.05 + 0.25)/(0.1 + 0.3) = 0.75, relCE_blur =
    (0.05 + 0.05)/(0 + 0.2) = 0.5, relative mCE = 0.625.

    >>> e = {"scratch": {"noise": [0.2, 0.4], "blur": [0.1, 0.3], "none": 0.1},
    ...      "ssl": {"noise": [0.1, 0.3], "blur": [0.1, 0.1], "none": 0.05}}
    >>> r = mean_corruption_error(e)
    >>> round(float(r.mce["ssl"]), 4), round(float(r.relative_mce["ssl"]), 4)
    (0.5833, 0.625)
    """
    if on_undefined not in ("raise", "nan"):
        raise ValueError(f"on_undefined must be 'raise' or 'nan', got {on_undefined!r}")
    tidy = _tidy_errors(errors_by_arm)
    arms = list(dict.fromkeys(tidy["arm"]))
    if reference not in arms:
        raise ValueError(f"reference arm {reference!r} not in the errors; arms: {arms}")
    distorted = tidy[tidy["severity"] > 0]
    cells = {
        a: set(zip(g["distortion"], g["severity"], strict=True))
        for a, g in distorted.groupby("arm")
    }
    ref_cells = cells.get(reference, set())
    if not ref_cells:
        raise ValueError(f"reference arm {reference!r} has no distorted (severity >= 1) errors")
    for arm in arms:
        got = cells.get(arm, set())
        if got != ref_cells:
            raise ValueError(
                f"arm {arm!r} must have the reference's (distortion, severity) cells; missing "
                f"{sorted(ref_cells - got)}, extra {sorted(got - ref_cells)}"
            )
    summed = distorted.pivot_table(index="arm", columns="distortion", values="error", aggfunc="sum")
    summed = summed.loc[arms]
    summed.columns.name = None
    ce = _ratio(summed, summed.loc[reference], "CE", on_undefined)
    mce = ce.mean(axis=1, skipna=False).rename("mCE")

    clean = tidy[tidy["severity"] == 0].set_index("arm")["error"]
    relative_ce = relative_mce = None
    if len(clean):
        if missing := [a for a in arms if a not in clean.index]:
            raise ValueError(f"clean errors given for some arms but not for {missing}")
        n_sev = distorted.groupby(["arm", "distortion"]).size().unstack().loc[arms]
        increase = summed - n_sev.mul(clean.loc[arms], axis=0)
        relative_ce = _ratio(increase, increase.loc[reference], "relative CE", on_undefined)
        relative_mce = relative_ce.mean(axis=1, skipna=False).rename("relative_mCE")
    return CorruptionErrors(ce, mce, relative_ce, relative_mce, reference)
