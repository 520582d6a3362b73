"""medstudy.transfer: label subsets of the whole split, and the selection val split that shrinks
with the label fraction (realistic low-label protocol)."""

from __future__ import annotations

import numpy as np
import pytest

from medstudy.config import ConfigError, TransferConfig
from medstudy.transfer.data import load_transfer_data
from medstudy.transfer.units import MIN_VAL_PER_CLASS, train_fraction, unit_subsets


def _cfg(**kw: object) -> TransferConfig:
    return TransferConfig(dataset="synth_lesions", fractions=(0.01, 0.1, 1.0), **kw)


def test_pool_mode_keeps_the_old_subsets_and_the_whole_val():
    cfg = _cfg(max_train=400)
    data = load_transfer_data(cfg)
    assert len(data.splits["train"]) == 400  # the capped pool
    subs = unit_subsets(cfg, data, seed=1)
    assert all("val" not in s for s in subs.values())
    assert len(subs[1.0]["train"]) == 400


def test_split_mode_fractions_are_of_the_whole_split_and_capped_and_nested():
    cfg = _cfg(max_train=400, fractions_of="split")
    data = load_transfer_data(cfg)
    n = len(data.splits["train"])
    assert n > 400  # not capped up front
    subs = unit_subsets(cfg, data, seed=1)
    labels = data.splits["train"].labels
    # 1 % of the whole split (stratified, >= 1 per class), not 1 % of the 400-image pool
    n_classes = len(np.unique(labels))
    assert len(subs[0.01]["train"]) >= max(n_classes, round(0.01 * n) - n_classes)
    assert len(subs[1.0]["train"]) == pytest.approx(400, abs=n_classes)  # the cap
    a, b, c = (set(subs[f]["train"].tolist()) for f in (0.01, 0.1, 1.0))
    assert a <= b <= c  # nested
    assert train_fraction(cfg, 0.01, n) == 0.01 and train_fraction(cfg, 1.0, n) == 400 / n


def test_val_shrinks_with_the_fraction_but_keeps_five_per_class():
    cfg = _cfg(val_labels="fraction")
    data = load_transfer_data(cfg)
    val = data.splits["val"].labels
    subs = unit_subsets(cfg, data, seed=0)
    assert "val" not in subs[1.0]  # 100 %: the whole val split
    small = val[subs[0.01]["val"]]
    for c in np.unique(val):
        assert (small == c).sum() == min(MIN_VAL_PER_CLASS, (val == c).sum()) or (
            (small == c).sum() >= round(0.01 * (val == c).sum())
        )
        assert (small == c).sum() >= min(MIN_VAL_PER_CLASS, (val == c).sum())
    assert set(subs[0.01]["val"].tolist()) <= set(subs[0.1]["val"].tolist())  # nested
    again = unit_subsets(cfg, data, seed=0)
    assert np.array_equal(again[0.01]["val"], subs[0.01]["val"])  # seeded


@pytest.mark.parametrize(("name", "value"), [("fractions_of", "all"), ("val_labels", "half")])
def test_bad_protocol_settings_fail_naming_the_valid_ones(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown {name} '{value}'; valid"):
        _cfg(**{name: value})


def test_max_val_caps_the_selection_split_stratified_and_fraction_subsets_come_from_it():
    whole = load_transfer_data(_cfg())
    cfg = _cfg(max_val=100, val_labels="fraction")
    data = load_transfer_data(cfg)
    assert not whole.val_capped and data.val_capped
    val, full = data.splits["val"], whole.splits["val"]
    assert len(val) == pytest.approx(100, abs=len(np.unique(full.labels)))
    assert set(val.ids.tolist()) <= set(full.ids.tolist())
    # stratified: every class keeps its share of the whole val split (± 1 image)
    for c in np.unique(full.labels):
        share = (full.labels == c).mean() * len(val)
        assert abs((val.labels == c).sum() - share) <= 1
    # the same cap for every unit and every load (CAP_SEED), and test is never capped
    again = load_transfer_data(cfg)
    assert np.array_equal(again.splits["val"].ids, val.ids)
    assert np.array_equal(data.splits["test"].ids, whole.splits["test"].ids)
    subs = unit_subsets(cfg, data, seed=0)
    assert "val" not in subs[1.0] and len(subs[0.01]["val"]) < len(val)
    # a cap above the split's size is no cap
    assert not load_transfer_data(_cfg(max_val=10**6)).val_capped
