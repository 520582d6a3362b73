"""Self-supervised pretraining: the ``METHODS`` registry and the pretraining loop.

``METHODS[name]`` is a :class:`MethodSpec` pairing a method (an :class:`SSLMethod` built on
lightly's heads and losses) with its augmentation recipe and optimiser defaults, in the spirit
of lightly's benchmark ``METHODS`` dict and solo-learn's method registry. Adding a method takes
one file (a module with a ``SPEC``), one line below and one test.

There is no training loop here: the pretraining stage (:mod:`medstudy.pretrain`) trains any
method of this registry, so ``ssl`` stays a registry of parts (DESIGN §2).
"""

from __future__ import annotations

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


__all__ = ["METHODS", "MethodSpec", "SSLMethod", "StepContext", "get_method"]
