"""The one arm grammar (DESIGN §5): what each init arm is, parsed in one place.

An arm names how an encoder is made:

- ``scratch``: a seeded random initialisation;
- ``natural_sup``: supervised natural-image weights;
- ``natural_ssl``: a published self-supervised ImageNet ResNet-50 (DINO, SwAV or MoCo v2;
  :data:`medstudy.weights.SSL_RELEASES`), downloaded or from a local copy of the release file;
- ``ssl:<method>``: in-domain SSL with ``<method>`` from a seeded random init;
- ``natural_sup+ssl:<method>``: the same SSL started from the natural-image weights;
- ``curriculum``: several ``"<method>:<epochs>"`` stages trained one after another on one backbone
  (de Andrés Tamé et al. 2023).

:func:`arm_plan` turns an arm into an :class:`ArmPlan` (initial weights + SSL stages);
configs validate with :func:`validate_arm`, the pretraining stage trains the plan, the claims
layer groups arms by the method's family. Unknown names raise ``ValueError`` listing the valid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from medstudy.ssl import METHODS, get_method

BASE_ARMS: tuple[str, ...] = ("scratch", "natural_sup", "natural_ssl", "curriculum")
SSL_PREFIX = "ssl:"
NATURAL_SSL_PREFIX = "natural_sup+ssl:"


@dataclass(frozen=True)
class StagePlan:
    """One SSL stage: a method trained for ``epochs`` epochs."""

    method: str
    epochs: int


@dataclass(frozen=True)
class ArmPlan:
    """How an arm is made: the initial weights, then zero or more SSL stages."""

    init: str  # one of medstudy.models.INITS
    stages: tuple[StagePlan, ...]


def valid_arms() -> list[str]:
    """Every arm name the grammar accepts with today's ``ssl.METHODS``."""
    methods = sorted(METHODS)
    return [
        *BASE_ARMS,
        *(SSL_PREFIX + m for m in methods),
        *(NATURAL_SSL_PREFIX + m for m in methods),
    ]


def arm_method(arm: str) -> str | None:
    """The SSL method of ``ssl:<m>`` and ``natural_sup+ssl:<m>`` arms, else None."""
    for prefix in (NATURAL_SSL_PREFIX, SSL_PREFIX):
        if arm.startswith(prefix):
            return arm.removeprefix(prefix)
    return None


def validate_arm(arm: str) -> str:
    """``arm`` if the grammar accepts it, else ``ValueError`` listing the valid arms."""
    method = arm_method(arm)
    if method is not None:
        get_method(method)  # names the valid methods
        return arm
    if arm in BASE_ARMS:
        return arm
    raise ValueError(f"unknown arm {arm!r}; valid: {valid_arms()}")


def parse_curriculum(stages: Sequence[str]) -> tuple[StagePlan, ...]:
    """``["simclr:2", "spark:2"]`` → stage plans; each entry must be ``"<method>:<epochs>"``
    with a known method and epochs >= 1."""
    plans = []
    for entry in stages:
        method, _, epochs = entry.partition(":")
        get_method(method)
        if not epochs.isdigit() or int(epochs) < 1:
            raise ValueError(f"curriculum stage {entry!r} must be '<method>:<epochs>' (>=1)")
        plans.append(StagePlan(method, int(epochs)))
    if not plans:
        raise ValueError("arm 'curriculum' needs at least one '<method>:<epochs>' stage")
    return tuple(plans)


def arm_plan(arm: str, epochs: int, curriculum: Sequence[str]) -> ArmPlan:
    """The plan of ``arm``: ``epochs`` applies to ``ssl:*`` arms, ``curriculum`` to the
    curriculum (whose stages carry their own lengths)."""
    validate_arm(arm)
    if arm == "natural_ssl":  # published weights, nothing to train (the release: a config field)
        return ArmPlan("natural_ssl", ())
    if arm == "curriculum":
        return ArmPlan("scratch", parse_curriculum(curriculum))
    method = arm_method(arm)
    init = (
        "natural_sup" if arm.startswith(NATURAL_SSL_PREFIX) or arm == "natural_sup" else "scratch"
    )
    stages = (StagePlan(method, epochs),) if method is not None else ()
    return ArmPlan(init, stages)
