"""Self-supervised pretraining: the ``METHODS`` registry and the pretraining loop.

``METHODS[name]`` is a :class:`MethodSpec` pairing a method (an :class:`SSLMethod` built on
lightly's heads and losses) with its augmentation recipe and optimiser defaults, in the spirit
of lightly's benchmark ``METHODS`` dict and solo-learn's method registry. Adding a method takes
one file (a module with a ``SPEC``), one line below and one test.

The loop lives in :mod:`medstudy.ssl.loop` (``pretrain``, ``load_encoder`` and the notebook-01
plots); it is imported lazily so that validating a config does not import Lightning.
"""

from __future__ import annotations

from typing import Any

from medstudy.ssl import barlowtwins, byol, dino, mocov2, simclr, spark, swav
from medstudy.ssl.base import MethodSpec, SSLMethod, StepContext

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        simclr.SPEC,
        mocov2.SPEC,
        byol.SPEC,
        barlowtwins.SPEC,
        swav.SPEC,
        dino.SPEC,
        spark.SPEC,
    )
}


def get_method(name: str) -> MethodSpec:
    """The registry row for ``name``; an unknown name raises ``ValueError`` listing the valid."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown SSL method {name!r}; valid: {sorted(METHODS)}") from None


_LOOP_NAMES = ("pretrain", "load_encoder", "PretrainResult", "plot_views", "plot_history")


def __getattr__(name: str) -> Any:
    if name in _LOOP_NAMES:
        from medstudy.ssl import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'medstudy.ssl' has no attribute {name!r}")


__all__ = ["METHODS", "MethodSpec", "SSLMethod", "StepContext", "get_method", *_LOOP_NAMES]
