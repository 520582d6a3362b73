"""The bad-input table (DESIGN §9, issue #14): every kind of bad parameter or bad file fails
before any work, with a message naming the parameter or file and the valid choices or range,
and leaves the results dir as it was.

One test per row of :data:`CASES`. Each row gives its entry point (the function a notebook,
the grid or a later stage calls), the exception type and a regex for its message. The test
points ``MEDSTUDY_DATA_DIR``, ``MEDSTUDY_RESULTS_DIR`` and the profiles folder at empty
temporary folders (no real data is needed), makes any training step, and any reading of a
data file other than the one under test, an ``AssertionError`` ("no work before the check"),
and checks that the results dir holds afterwards exactly what it held before: nothing,
except for the row whose bad input is itself a finished run. A row that does not fail
properly today is ``xfail(strict=True)`` with the reason.

The rows cover: unknown names (dataset, parameter, arm, SSL method, backbone, distortion,
protocol, profile, ``--only`` notebook, ``--datasets`` name); values out of range (label
fraction, severity, epochs, ``max_train``, ``knn_every``, repeated replicate seeds, an image
size the data or the backbone cannot give); bad data files (missing, truncated, wrong md5,
labels outside the classes, image and label counts that differ); bad checkpoints (another
backbone, another task's head, a corrupt file); unknown keys in a profile. Three cases have
their own contract and their own test below the table: an unwritable results dir, a disk that
fills up during a write, and a NaN loss during pretraining.
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from test_data import SMALL, _write_npz
from test_ssl import TINY

from medstudy import grid, paths
from medstudy.config import (
    ConfigError,
    LabelEfficiencyConfig,
    PretrainConfig,
    RobustnessConfig,
    TransferConfig,
)
from medstudy.data import loaders
from medstudy.data.info import INFO
from medstudy.data.loaders import DataFileError
from medstudy.distortions import apply_distortion
from medstudy.grid import GridError
from medstudy.models import WeightsError, create_backbone, load_checkpoint, save_checkpoint
from medstudy.pretrain import pretrain
from medstudy.results import CONFIG_FILE, DONE_FILE, atomic_write_text, is_temp_file, write_json
from medstudy.ssl.simclr import SimCLR
from medstudy.transfer import load_unit_classifier

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


# ----------------------------------------------------------------------------- the inputs --
def _data(tmp: Path) -> Path:
    return tmp / "data"


def _pretrain_on(dataset: str) -> Callable[[Path], object]:
    """Notebook 01's call on ``dataset``: the first thing it does is load the train split."""
    return lambda tmp: pretrain(PretrainConfig(**{**TINY, "dataset": dataset}), progress=False)


def _truncated_local_file(tmp: Path) -> None:
    """A student's MedMNIST-format file (no md5 to check) cut in half."""
    path = _write_npz(_data(tmp) / "mynewmnist.npz", SMALL)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _breastmnist(
    edit: Callable[[dict[str, np.ndarray]], None] | None = None, declare: bool = True
) -> Callable[[Path], None]:
    """A rebuilt ``breastmnist.npz`` of the official split sizes (so only ``edit``'s defect is
    wrong), declared in the data dir's checksums.json unless ``declare`` is False."""

    def prepare(tmp: Path) -> None:
        path = _write_npz(_data(tmp) / "breastmnist.npz", INFO["breastmnist"].n_samples)
        if edit is not None:
            with np.load(path) as npz:
                arrays = dict(npz)
            edit(arrays)
            np.savez(path, **arrays)
        if declare:
            decl = {path.name: {"md5": loaders.file_md5(path), "source": "a rebuild"}}
            (_data(tmp) / loaders.CHECKSUMS_FILE).write_text(json.dumps(decl))

    return prepare


def _changed_after_its_declaration(tmp: Path) -> None:
    _breastmnist()(tmp)
    with open(_data(tmp) / "breastmnist.npz", "ab") as fh:
        fh.write(b"\0")  # still a readable zip; another md5


def _label_7(arrays: dict[str, np.ndarray]) -> None:
    arrays["train_labels"][0] = 7  # breastmnist is binary


def _one_label_short(arrays: dict[str, np.ndarray]) -> None:
    arrays["train_labels"] = arrays["train_labels"][:-1]


def _checkpoint(tmp: Path) -> Path:
    return tmp / "encoder.pt"


def _other_backbone_checkpoint(tmp: Path) -> None:
    save_checkpoint(create_backbone("timm:resnet18", seed=0), _checkpoint(tmp))


def _corrupt_checkpoint(tmp: Path) -> None:
    _checkpoint(tmp).write_bytes(b"PK\x03\x04 not a torch file")


def _load_resnet20(tmp: Path) -> object:
    return load_checkpoint(create_backbone("resnet20_cifar", seed=0), _checkpoint(tmp))


UNIT = "0123456789ab"


def _finetuned_unit(n_head_outputs: int | None) -> Callable[[Path], None]:
    """A finished fine-tuning unit of synth_lesions (5 grades) whose finetuned.pt holds a head
    of ``n_head_outputs`` outputs (another task's, as a copied or mixed-up run folder leaves
    it), or none (a pretrained encoder put in its place)."""

    def prepare(tmp: Path) -> None:
        run_dir = paths.run_dir("transfer", UNIT)
        config = {
            "protocol": "finetune",
            "arm": "scratch",
            "backbone": "resnet20_cifar",
            "dataset": "synth_lesions",
        }
        write_json(run_dir / CONFIG_FILE, config)
        meta: dict[str, object] = {}
        if n_head_outputs is not None:
            meta["head_state"] = torch.nn.Linear(64, n_head_outputs).state_dict()
        backbone = create_backbone("resnet20_cifar", seed=0)
        save_checkpoint(backbone, run_dir / "finetuned.pt", **meta)
        atomic_write_text(run_dir / DONE_FILE, "done\n")

    return prepare


#: A valid profile; each grid row writes it with one defect as ``params/bad.yaml``.
BASE_PROFILE: dict[str, Any] = {
    "description": "two notebooks on generated data",
    "backbone": "resnet20_cifar",
    "image_size": 28,
    "datasets": ["synth_lesions"],
    "pretrain": {"epochs": 1, "max_train": 64},
    "notebooks": {
        "01_pretrain": {"arms": ["ssl:simclr"]},
        "02_transfer": {"arms": ["scratch", "ssl:simclr"], "protocols": ["linear"]},
    },
}


def _write_profile(tmp: Path, name: str, spec: dict[str, Any]) -> None:
    (tmp / "params").mkdir(exist_ok=True)
    (tmp / "params" / f"{name}.yaml").write_text(yaml.safe_dump(spec))


def _profile(edit: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def prepare(tmp: Path) -> None:
        spec = json.loads(json.dumps(BASE_PROFILE))  # a deep copy
        edit(spec)
        _write_profile(tmp, "bad", spec)

    return prepare


def _grid_run(profile: str = "bad", **kwargs: Any) -> Callable[[Path], object]:
    """``run_all.sh --profile <profile> --dry-run``: validates every job, then lists them."""
    return lambda tmp: grid.run(profile, dry_run=True, **kwargs)


# ------------------------------------------------------------------------------- the table --
@dataclass(frozen=True)
class Case:
    """One bad input: ``call`` must raise ``error`` with a message matching ``match``."""

    id: str
    call: Callable[[Path], object]  # given the test's scratch folder
    error: type[Exception]
    match: str
    #: Writes the bad file(s) the case needs, before the no-work guards are set.
    prepare: Callable[[Path], object] | None = None
    #: The defect is inside a data file, so the check must read it (all else stays forbidden).
    reads_data: bool = False
    #: The bad input is a finished run in the results dir (which must stay as it was).
    in_results: bool = False
    #: Why the case does not fail properly today (the test is then xfail, strict).
    xfail: str = ""


CASES: list[Case] = [
    # -- unknown names -----------------------------------------------------------------------
    Case(
        "unknown-dataset",
        lambda tmp: PretrainConfig.from_params(dataset="cifar10"),
        ConfigError,
        r"unknown dataset 'cifar10'; valid: \[.*'pneumoniamnist'.*\] or any MedMNIST-format",
    ),
    Case(
        "unknown-parameter",
        lambda tmp: PretrainConfig.from_params(epoch=3),
        ConfigError,
        r"unknown parameter\(s\) \['epoch'\] for PretrainConfig; valid: \[.*'epochs'",
    ),
    Case(
        "unknown-arm",
        lambda tmp: TransferConfig.from_params(arms=["scratch", "imagenet"]),
        ConfigError,
        r"unknown arm 'imagenet'; valid: \['scratch', 'natural_sup', .*'ssl:simclr'",
    ),
    Case(
        "unknown-ssl-method-in-arm",
        lambda tmp: PretrainConfig.from_params(arm="ssl:mae"),
        ConfigError,
        r"unknown SSL method 'mae'; valid: \[.*'simclr', 'spark'",
    ),
    Case(
        "unknown-ssl-method-in-curriculum",
        lambda tmp: PretrainConfig.from_params(arm="curriculum", curriculum=["mae:1"]),
        ConfigError,
        r"parameter 'curriculum': unknown SSL method 'mae'; valid: \[",
    ),
    Case(
        "unknown-backbone",
        lambda tmp: PretrainConfig.from_params(backbone="resnet18"),
        ConfigError,
        r"unknown backbone 'resnet18'; valid: \['resnet20_cifar'\] or 'timm:<model>'",
    ),
    Case(
        "unknown-distortion-config",
        lambda tmp: RobustnessConfig.from_params(distortions=["fog"]),
        ConfigError,
        r"unknown distortion 'fog'; valid: \[.*'gaussian_noise'",
    ),
    Case(
        "unknown-distortion-apply",
        lambda tmp: apply_distortion(torch.zeros(1, 1, 28, 28), "fog", 1, torch.Generator()),
        ValueError,
        r"unknown distortion 'fog'; valid: \['none', .*'gaussian_noise'",
    ),
    Case(
        "unknown-protocol",
        lambda tmp: TransferConfig.from_params(protocols=["linear", "svm"]),
        ConfigError,
        r"unknown protocol 'svm'; valid: \['linear', 'knn', 'finetune'\]",
    ),
    Case(
        "unknown-protocol-robustness",
        lambda tmp: RobustnessConfig.from_params(protocol="knn"),
        ConfigError,
        r"unknown protocol 'knn' for robustness; valid: \['finetune', 'linear'\]",
    ),
    # -- values out of range -----------------------------------------------------------------
    Case(
        "fraction-0",
        lambda tmp: LabelEfficiencyConfig.from_params(fractions=[0, 0.1, 1.0]),
        ConfigError,
        r"fractions must be in \(0, 1\], got 0\.0",
    ),
    Case(
        "fraction-1.5",
        lambda tmp: LabelEfficiencyConfig.from_params(fractions=[0.1, 1.5]),
        ConfigError,
        r"fractions must be in \(0, 1\], got 1\.5",
    ),
    Case(
        "fraction-minus-0.1",
        lambda tmp: LabelEfficiencyConfig.from_params(finetune_fractions=[-0.1]),
        ConfigError,
        r"finetune_fractions must be in \(0, 1\], got -0\.1",
    ),
    Case(
        "severity-0",
        lambda tmp: RobustnessConfig.from_params(severities=[0, 1, 2]),
        ConfigError,
        r"severity 0 outside 1-5; valid: \[1, 2, 3, 4, 5\]",
    ),
    Case(
        "severity-6",
        lambda tmp: RobustnessConfig.from_params(severities=[5, 6]),
        ConfigError,
        r"severity 6 outside 1-5; valid: \[1, 2, 3, 4, 5\]",
    ),
    Case(
        "severity-6-apply",
        lambda tmp: apply_distortion(
            torch.zeros(1, 1, 28, 28), "gaussian_noise", 6, torch.Generator()
        ),
        ValueError,
        r"severity must be an int in 0–5 \(0 = clean, 1 = mildest … 5 = strongest\), got 6",
    ),
    Case(
        "epochs-negative",
        lambda tmp: PretrainConfig.from_params(epochs=-1),
        ConfigError,
        r"parameter 'epochs' must be >= 0: -1",
    ),
    Case(
        "finetune-epochs-negative",
        lambda tmp: TransferConfig.from_params(finetune_epochs=-1),
        ConfigError,
        r"parameter 'finetune_epochs' must be > 0: -1",
    ),
    Case(
        "max-train-negative-pretrain",
        lambda tmp: PretrainConfig.from_params(max_train=-64),
        ConfigError,
        r"parameter 'max_train' must be >= 0: -64",
    ),
    Case(
        "max-train-negative-transfer",
        lambda tmp: TransferConfig.from_params(max_train=-64),
        ConfigError,
        r"parameter 'max_train' must be >= 0: -64",
    ),
    Case(
        "max-val-negative-transfer",
        lambda tmp: TransferConfig.from_params(max_val=-5),
        ConfigError,
        r"parameter 'max_val' must be >= 0: -5",
    ),
    Case(
        "knn-every-0",
        lambda tmp: PretrainConfig.from_params(knn_every=0),
        ConfigError,
        r"parameter 'knn_every' must be > 0: 0",
    ),
    Case(
        "replicates-repeated",
        lambda tmp: PretrainConfig.from_params(replicates=[0, 1, 1]),
        ConfigError,
        r"parameter 'replicates' must be distinct seeds >= 0, got \[0, 1, 1\]",
    ),
    Case(
        "image-size-not-released",
        lambda tmp: PretrainConfig.from_params(dataset="pneumoniamnist", image_size=30),
        ConfigError,
        r"parameter 'image_size'=30 is not released for pneumoniamnist; "
        r"valid: \[28, 64, 128, 224\]",
    ),
    Case(
        "image-size-not-a-multiple-of-the-backbone-stride",
        lambda tmp: PretrainConfig.from_params(
            dataset="synth_lesions", arm="ssl:spark", image_size=30
        ),
        ConfigError,
        r"parameter 'image_size'=30: SparK .* multiple of resnet20_cifar's stride 4 and at "
        r"least 2x it; valid",
    ),
    Case(
        "image-size-one-spark-patch",  # a 1x1 mask grid keeps no visible patch (NaN gradients)
        lambda tmp: PretrainConfig.from_params(
            dataset="synth_lesions", arm="ssl:spark", backbone="timm:resnet18", image_size=32
        ),
        ConfigError,
        r"parameter 'image_size'=32: SparK .* stride 32 and at least 2x it; valid: e.g. \[64, 128, 224\]",
    ),
    Case(
        "image-size-not-a-multiple-of-the-stride-in-a-curriculum",
        lambda tmp: PretrainConfig.from_params(
            dataset="synth_lesions",
            arm="curriculum",
            curriculum=["simclr:1", "spark:1"],
            image_size=30,
        ),
        ConfigError,
        r"parameter 'image_size'=30: SparK \(arm 'curriculum'\)",
    ),
    # -- bad data files ----------------------------------------------------------------------
    Case(
        "data-file-missing",
        _pretrain_on("pcam28_subset"),
        DataFileError,
        r"pcam28_subset\.npz not found in the data dir .*see data/README\.md",
    ),
    Case(
        "data-file-truncated",
        _pretrain_on("mynewmnist"),
        DataFileError,
        r"mynewmnist\.npz: cannot be read as an npz .*corrupt or truncated",
        prepare=_truncated_local_file,
        reads_data=True,
    ),
    Case(
        "data-file-wrong-md5",
        _pretrain_on("breastmnist"),
        DataFileError,
        r"breastmnist\.npz: md5 [0-9a-f]{32} differs from the official md5 "
        + INFO["breastmnist"].md5[28],
        prepare=_breastmnist(declare=False),
    ),
    Case(
        "data-file-md5-not-the-declared-one",
        _pretrain_on("breastmnist"),
        DataFileError,
        r"breastmnist\.npz: md5 [0-9a-f]{32} matches neither the official md5 .* nor the md5 "
        r"declared in .*checksums\.json",
        prepare=_changed_after_its_declaration,
    ),
    Case(
        "labels-out-of-range",
        _pretrain_on("breastmnist"),
        DataFileError,
        r"breastmnist\.npz: train labels span \[0, 7\], but breastmnist has 2 classes; "
        r"valid labels: 0 to 1",
        prepare=_breastmnist(edit=_label_7),
        reads_data=True,
    ),
    Case(
        "image-and-label-counts-differ",
        _pretrain_on("breastmnist"),
        DataFileError,
        r"breastmnist\.npz: 545 train labels for 546 train images",
        prepare=_breastmnist(edit=_one_label_short),
        reads_data=True,
    ),
    # -- bad checkpoints ---------------------------------------------------------------------
    Case(
        "checkpoint-for-another-backbone",
        _load_resnet20,
        WeightsError,
        r"encoder\.pt holds weights for backbone 'timm:resnet18', not 'resnet20_cifar'",
        prepare=_other_backbone_checkpoint,
    ),
    Case(
        "checkpoint-for-another-task",
        lambda tmp: load_unit_classifier("transfer", UNIT),
        WeightsError,
        r"finetuned\.pt: its head has 2 outputs, but synth_lesions \(ordinal-regression\) "
        r"needs 5: a checkpoint for another task",
        prepare=_finetuned_unit(2),
        in_results=True,
    ),
    Case(
        "checkpoint-without-a-head",
        lambda tmp: load_unit_classifier("transfer", UNIT),
        WeightsError,
        r"finetuned\.pt: no task head \('head_state'\): not a fine-tuned model",
        prepare=_finetuned_unit(None),
        in_results=True,
    ),
    Case(
        "checkpoint-corrupt",
        _load_resnet20,
        WeightsError,
        r"encoder\.pt: cannot be read as a torch checkpoint",
        prepare=_corrupt_checkpoint,
    ),
    # -- profiles and the command line -------------------------------------------------------
    Case(
        "profile-unknown-top-level-key",
        _grid_run(),
        GridError,
        r"unknown top-level keys \['image_sise'\]; valid: \[.*'image_size'",
        prepare=_profile(lambda spec: spec.update(image_sise=64)),
    ),
    Case(
        "profile-unknown-key-in-a-notebook-block",
        _grid_run(),
        GridError,
        r"profile job 01_pretrain__synth_lesions__ssl-simclr: unknown parameter\(s\) "
        r"\['epoch'\] for PretrainConfig; valid: \[",
        prepare=_profile(lambda spec: spec["notebooks"]["01_pretrain"].update(epoch=3)),
    ),
    Case(
        "profile-unknown-key-in-the-pretrain-block",
        _grid_run(),
        GridError,
        r"pretrain block: unknown keys \['epoch'\]; valid: \[.*'epochs'",
        prepare=_profile(lambda spec: spec["pretrain"].update(epoch=3)),
    ),
    Case(
        "profile-bad-value",
        _grid_run(),
        GridError,
        r"profile job 02_transfer__synth_lesions: fractions must be in \(0, 1\], got 1\.5",
        prepare=_profile(lambda spec: spec["notebooks"]["02_transfer"].update(fractions=[1.5])),
    ),
    Case(
        "profile-unknown",
        _grid_run("quik"),
        GridError,
        r"unknown profile 'quik'; valid: \['bad'\]",
        prepare=_profile(lambda spec: None),
    ),
    Case(
        "only-unknown-notebook",
        _grid_run(only=["09"]),
        GridError,
        r"--only: unknown notebooks \['09'\]; valid: \['01', '02', '03', '04', '05', '06', '07'\]",
        prepare=_profile(lambda spec: None),
    ),
    Case(
        "datasets-unknown",
        _grid_run(datasets=["cifar10"]),
        ConfigError,
        r"unknown dataset 'cifar10'; valid: \[",
        prepare=_profile(lambda spec: None),
    ),
]


def _snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its content (``{}`` if it does not exist)."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _forbid_work(monkeypatch: pytest.MonkeyPatch, reads_data: bool) -> None:
    """Any training step, and (unless the case's check must) any data read, is a failure."""

    def refuse(what: str) -> Callable[..., None]:
        def fail(*args: object, **kwargs: object) -> None:
            raise AssertionError(f"{what} before the bad input was rejected")

        return fail

    monkeypatch.setattr(L.Trainer, "fit", refuse("training started"))
    if not reads_data:
        monkeypatch.setattr(loaders, "_read_npz", refuse("a data file was read"))
        monkeypatch.setattr(loaders, "_synth_splits", refuse("synth_lesions was generated"))


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty data, results and profile folders for one case."""
    _data(tmp_path).mkdir()
    (tmp_path / "params").mkdir()
    monkeypatch.setenv("MEDSTUDY_DATA_DIR", str(_data(tmp_path)))
    monkeypatch.setenv("MEDSTUDY_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setattr(grid.paths, "params_dir", lambda: tmp_path / "params")
    return tmp_path


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            c,
            id=c.id,
            marks=[pytest.mark.xfail(strict=True, reason=c.xfail, raises=pytest.fail.Exception)],
        )
        if c.xfail
        else pytest.param(c, id=c.id)
        for c in CASES
    ],
)
def test_bad_input_fails_before_any_work_and_writes_nothing(
    case: Case, sandbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = sandbox / "results"
    if case.prepare is not None:
        case.prepare(sandbox)
    before = _snapshot(results)
    assert bool(before) == case.in_results
    _forbid_work(monkeypatch, case.reads_data)
    with pytest.raises(case.error, match=case.match):
        case.call(sandbox)
    assert _snapshot(results) == before


def test_the_table_has_one_row_per_id() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) >= 22


# ---------------------------------------------------------------------- controls of the table --
def test_the_inputs_without_their_defect_are_accepted(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The rows fail because of their one defect: the same inputs without it pass."""
    _write_profile(sandbox, "base", BASE_PROFILE)
    assert grid.run("base", dry_run=True) == 0
    assert "01_pretrain__synth_lesions__ssl-simclr  to run" in capsys.readouterr().out
    _breastmnist()(sandbox)
    assert len(loaders.load_split("breastmnist", "train")) == INFO["breastmnist"].n_samples["train"]
    save_checkpoint(create_backbone("resnet20_cifar", seed=0), _checkpoint(sandbox))
    assert _load_resnet20(sandbox) == {}
    PretrainConfig.from_params(dataset="pneumoniamnist", image_size=64)
    assert not (sandbox / "results").exists()


def test_the_command_line_reports_a_bad_profile_with_exit_code_2(
    sandbox: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _profile(lambda spec: spec["notebooks"]["01_pretrain"].update(epoch=3))(sandbox)
    assert grid.main(["--profile", "bad", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"\[medstudy\] error: profile job 01_pretrain__.*\['epoch'\]", err)
    assert not (sandbox / "results").exists()


# ------------------------------------------------------------------ the three other contracts --
def test_a_results_dir_that_cannot_be_written_fails_before_any_job(
    sandbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run_all.sh checks the results dir before the first job: here a path through a file, which
    no user (root included) can create."""
    blocker = sandbox / "a_file"
    blocker.write_text("not a folder")
    root = blocker / "results"
    monkeypatch.setenv("MEDSTUDY_RESULTS_DIR", str(root))
    _profile(lambda spec: None)(sandbox)
    with pytest.raises(GridError, match=rf"results dir {re.escape(str(root))} is not writable"):
        grid.run("bad")
    assert blocker.read_text() == "not a folder"
    if os.geteuid() != 0:  # a read-only folder stops everyone but root
        ro = sandbox / "ro"
        ro.mkdir(mode=0o500)
        monkeypatch.setenv("MEDSTUDY_RESULTS_DIR", str(ro / "results"))
        with pytest.raises(GridError, match="is not writable"):
            grid.run("bad")
        ro.chmod(0o700)


def test_unwritable_results_dir_fails_naming_it(sandbox: Path) -> None:
    root = sandbox / "results"
    root.mkdir()
    root.chmod(0o500)
    try:
        if os.access(root, os.W_OK):
            pytest.skip(
                f"running as root (euid {os.geteuid()}): chmod 0o500 does not stop root's "
                "writes, so no unwritable folder can be made here"
            )
        with pytest.raises(PermissionError, match=re.escape(str(root / "pretrain"))):
            pretrain(PretrainConfig(**TINY), progress=False)
        assert list(root.iterdir()) == []
    finally:
        root.chmod(0o700)


def test_disk_full_during_a_write_names_the_file_and_keeps_the_previous_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "results" / "pretrain" / "0123456789ab" / CONFIG_FILE
    write_json(path, {"epochs": 1})
    previous = path.read_bytes()
    real_write_text = Path.write_text

    def disk_fills_up(self: Path, data: str, *args: Any, **kwargs: Any) -> int:
        real_write_text(self, data[: len(data) // 2], *args, **kwargs)  # half reached the disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as write(2): no file named

    with monkeypatch.context() as m:
        m.setattr(Path, "write_text", disk_fills_up)
        with pytest.raises(OSError, match=rf"No space left on device: '{re.escape(str(path))}'"):
            write_json(path, {"epochs": 2})
    assert path.read_bytes() == previous
    assert [p.name for p in path.parent.iterdir() if is_temp_file(p)] == []
    assert [p.name for p in path.parent.iterdir()] == [CONFIG_FILE]


@pytest.mark.slow
def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    sandbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = PretrainConfig(**TINY)  # simclr, 2 epochs of 2 steps on 64 generated images
    real_step = SimCLR.training_step

    def nan_from_the_second_epoch(
        self: SimCLR, views: list[torch.Tensor], ctx: Any
    ) -> torch.Tensor:
        loss = real_step(self, views, ctx)
        return loss * float("nan") if ctx.epoch >= 1 else loss

    with monkeypatch.context() as m:
        m.setattr(SimCLR, "training_step", nan_from_the_second_epoch)
        with pytest.raises(
            FloatingPointError, match=r"simclr: non-finite loss nan at step 2 \(epoch 2\)"
        ):
            pretrain(cfg, progress=False)
    (run_dir,) = (sandbox / "results" / "pretrain").iterdir()
    assert not (run_dir / DONE_FILE).exists() and not (run_dir / "encoder.pt").exists()
    history = pd.read_csv(run_dir / "history.csv")
    assert history["epoch"].tolist() == [0, 1] and np.isfinite(history["loss"][1])
    ckpt = torch.load(
        run_dir / "lightning" / "stage0_simclr" / "last.ckpt",
        map_location="cpu",
        weights_only=False,
    )
    assert ckpt["medstudy_history"][-1]["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values() if torch.is_tensor(t))
    # Loadable: the same call without the fault resumes from it and finishes the run.
    resumed = pretrain(cfg, progress=False)
    assert resumed.history["epoch"].tolist() == [0, 1, 2]
    assert resumed.history["loss"][1] == history["loss"][1]
    assert (run_dir / DONE_FILE).exists()
