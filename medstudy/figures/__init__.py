"""Every table and figure that the notebooks and the paper share, from saved results only:
transfer, label efficiency and the claims' forest plot (:mod:`.base`), robustness
(:mod:`.robustness`)."""

from medstudy.figures.base import *  # noqa: F403
from medstudy.figures.base import __all__ as _base_all
from medstudy.figures.robustness import plot_severity_curves, robustness_table

__all__ = [*_base_all, "plot_severity_curves", "robustness_table"]
