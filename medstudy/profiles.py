"""Profiles: ``params/<name>.yaml`` resolved through ``base:`` and overrides (DESIGN §5).

- ``base: <profile>`` makes a profile a variant of another: the base is read first and the
  variant's keys are deep-merged over it (mappings merge key by key; a list or a value replaces
  the base's). ``full128.yaml`` is ``base: full`` with ``image_size: 128``. Chains are allowed,
  cycles are an error.
- An *override* (``--override FILE``, repeatable, or ``MEDSTUDY_OVERRIDE=FILE[:FILE...]``) is a
  YAML file deep-merged over the resolved profile, to run a profile's exact design at another
  scale, e.g. ``params/overrides/cpu_tiny.yaml`` (the ``full`` profile on CPU with tiny data
  and steps). Every key of an override must already exist in the profile (a typo fails before
  any work, naming the key and the valid ones), and an override may not touch a key that
  defines the study's design (:data:`DESIGN_KEYS`: backbone, image size, arms, methods,
  protocols, seeds, fractions, ...): a different design is a different profile (``base:``).
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from medstudy import paths

OVERRIDE_ENV = "MEDSTUDY_OVERRIDE"

#: Keys (at any depth) an override may not change: what the study compares and at which image
#: size and backbone. An override changes only how much data and how many steps each unit uses,
#: the device and where local files are; so a run with an override tests the profile's design.
DESIGN_KEYS: frozenset[str] = frozenset(
    {
        "profile", "base", "backbone", "image_size", "datasets", "arms", "finetune_arms",
        "fusion_arms", "fusion_modes", "protocols", "seeds", "fractions", "finetune_fractions",
        "fractions_of", "val_labels", "methods", "severities", "paired", "natural_ssl_weights",
    }
)  # fmt: skip


class ProfileError(ValueError):
    """A profile file, its ``base:`` chain or an override is invalid."""


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``: mappings recursively, anything else replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    with open(path) as fh:
        data = yaml.safe_load(fh)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ProfileError(
            f"{path}: must be a mapping of keys to values, got {type(data).__name__}"
        )
    return data


def profile_path(profile: str, params_dir: Path | None = None) -> Path:
    """``params/<profile>.yaml``; an unknown name lists the valid ones."""
    root = params_dir or paths.params_dir()
    path = root / f"{profile}.yaml"
    if not re.fullmatch(r"[A-Za-z0-9_-]+", profile) or not path.exists():
        valid = sorted(p.stem for p in root.glob("*.yaml"))
        raise ProfileError(f"unknown profile {profile!r}; valid: {valid}")
    return path


def read_profile(
    profile: str, params_dir: Path | None = None, _chain: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The profile's keys with its ``base:`` chain merged in (the ``base`` key removed)."""
    if profile in _chain:
        raise ProfileError(f"profile 'base:' cycle: {' -> '.join((*_chain, profile))}")
    spec = _read_yaml(profile_path(profile, params_dir))
    base = spec.pop("base", None)
    if base is None:
        return spec
    if not isinstance(base, str):
        raise ProfileError(f"{profile}: 'base' must be a profile name, got {base!r}")
    return deep_merge(read_profile(base, params_dir, (*_chain, profile)), spec)


def _check_keys(over: Mapping[str, Any], spec: Mapping[str, Any], where: str, src: Path) -> None:
    for key, value in over.items():
        here = f"{where}.{key}" if where else str(key)
        if key not in spec:
            raise ProfileError(
                f"override {src}: key {here!r} is not in the profile; valid keys"
                f"{' under ' + repr(where) if where else ''}: {sorted(spec)}"
            )
        if key in DESIGN_KEYS:
            raise ProfileError(
                f"override {src}: {here!r} defines the study's design and may not be "
                "overridden (an override changes sizes, steps, the device and file locations "
                "only); make a profile with 'base:' instead"
            )
        if isinstance(value, Mapping):
            if not isinstance(spec[key], Mapping):
                raise ProfileError(
                    f"override {src}: {here!r} is a mapping, but the profile's is {spec[key]!r}"
                )
            _check_keys(value, spec[key], here, src)


def apply_override(spec: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """``spec`` with the override file at ``path`` deep-merged over it, after checking that
    every key exists in ``spec`` and none is a :data:`DESIGN_KEYS` key."""
    if not path.is_file():
        raise ProfileError(f"override file not found: {path}")
    over = _read_yaml(path)
    _check_keys(over, spec, "", path)
    return deep_merge(spec, over)


def override_paths(cli: Sequence[str] = ()) -> list[Path]:
    """The override files: the CLI's ``--override`` values, else ``MEDSTUDY_OVERRIDE``
    (``os.pathsep``-separated), resolved against this working directory."""
    values = list(cli) or [v for v in os.environ.get(OVERRIDE_ENV, "").split(os.pathsep) if v]
    return [Path(v).expanduser().resolve() for v in values]


def resolve(
    profile: str, overrides: Sequence[Path] = (), params_dir: Path | None = None
) -> dict[str, Any]:
    """The profile's full spec: its ``base:`` chain, then each override in order."""
    spec = read_profile(profile, params_dir)
    for path in overrides:
        spec = apply_override(spec, path)
    return spec


def results_label(profile: str, overrides: Sequence[Path] = ()) -> str:
    """The default results folder name: the profile's, plus each override's stem (a tiny CPU
    run of ``full`` never writes into the real ``full`` results)."""
    return "+".join([profile, *(p.stem for p in overrides)])
