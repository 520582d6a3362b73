"""The INFO table: one row per dataset, driving loaders, md5 checks, heads and metric choice.

It covers every 2-D MedMNIST flag (read from the ``medmnist`` package's own INFO, so a new
MedMNIST release adds rows with no code change), plus three study-specific sets:

- ``pcam28_subset``: a class-balanced 28 px subset of PatchCamelyon (not a MedMNIST flag; the
  offline stand-in for the PCam task, see ``data/README.md``);
- ``pcam``: the full PatchCamelyon h5 files of ``torchvision.datasets.PCAM`` at any size
  (:mod:`medstudy.data.pcam`);
- ``synth_lesions``: procedurally generated fundus-like images with ground-truth lesion masks
  (``medstudy.data.synth``), always available.

A MedMNIST-format ``<name>.npz`` or a manifest ``<name>.csv`` (:mod:`medstudy.data.manifest`)
that is in none of these tables still loads by name: its row is inferred from the file (see
:func:`medstudy.data.loaders.load_split`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

TaskType = Literal["binary-class", "multi-class", "ordinal-regression", "multi-label, binary-class"]
TASK_TYPES: tuple[str, ...] = (
    "binary-class",
    "multi-class",
    "ordinal-regression",
    "multi-label, binary-class",
)
SPLITS: tuple[str, ...] = ("train", "val", "test")
MEDMNIST_SIZES: tuple[int, ...] = (28, 64, 128, 224)


@dataclass(frozen=True)
class DatasetInfo:
    """One row of the INFO table.

    ``md5`` maps image size to the official md5 of ``<name>[_<size>].npz``; ``url`` likewise.
    ``n_samples`` is the official split size, checked on load. ``source`` is ``"medmnist"``,
    ``"study"`` (shipped offline, not downloadable), ``"torchvision"`` (PCam), ``"generated"``,
    or, for rows inferred from a file, ``"local"`` (npz) or ``"manifest"``.
    """

    name: str
    task: str
    n_channels: int
    labels: dict[str, str]
    n_samples: dict[str, int]
    md5: dict[int, str] = field(default_factory=dict)
    url: dict[int, str] = field(default_factory=dict)
    license: str = ""
    source: str = "medmnist"
    description: str = ""

    @property
    def n_classes(self) -> int:
        """Number of classes (multi-class/ordinal/binary) or of labels (multi-label)."""
        return len(self.labels)

    @property
    def is_multilabel(self) -> bool:
        return self.task.startswith("multi-label")

    @property
    def n_outputs(self) -> int:
        """Width of the classification head."""
        return self.n_classes

    def filename(self, size: int = 28) -> str:
        """The MedMNIST file-name convention: ``name.npz`` at 28 px, ``name_<size>.npz`` else."""
        return f"{self.name}.npz" if size == 28 else f"{self.name}_{size}.npz"


def _medmnist_rows() -> dict[str, DatasetInfo]:
    try:
        from medmnist import INFO as MEDMNIST_INFO
    except ImportError as err:  # pragma: no cover - medmnist is a hard dependency
        raise ImportError("medstudy needs the `medmnist` package: pip install medmnist") from err
    rows: dict[str, DatasetInfo] = {}
    for flag, row in MEDMNIST_INFO.items():
        if flag.endswith("3d"):
            continue  # the study is 2-D only
        md5 = {28: row["MD5"]}
        url = {28: row["url"]}
        for size in MEDMNIST_SIZES[1:]:
            if f"MD5_{size}" in row:
                md5[size] = row[f"MD5_{size}"]
                url[size] = row[f"url_{size}"]
        rows[flag] = DatasetInfo(
            name=flag,
            task=row["task"],
            n_channels=int(row["n_channels"]),
            labels=dict(row["label"]),
            n_samples={k: int(v) for k, v in row["n_samples"].items()},
            md5=md5,
            url=url,
            license=row.get("license", ""),
            source="medmnist",
            description=row.get("description", ""),
        )
    return rows


PCAM28_SUBSET = DatasetInfo(
    name="pcam28_subset",
    task="binary-class",
    n_channels=3,
    labels={"0": "no tumour", "1": "tumour in the centre 32x32 region"},
    n_samples={"train": 20000, "val": 3000, "test": 3000},
    # Not an official release: no official md5. The offline file is accepted through its
    # checksums.json declaration (DESIGN §4).
    md5={},
    url={},
    license="CC0 (PatchCamelyon)",
    source="study",
    description=(
        "Class-balanced subset of PatchCamelyon (lymph-node H&E, 96x96) resized to 28x28 RGB. "
        "Online, the full PCam is torchvision.datasets.PCAM."
    ),
)

SYNTH_LESIONS = DatasetInfo(
    name="synth_lesions",
    task="ordinal-regression",
    n_channels=3,
    labels={str(g): f"grade {g}" for g in range(5)},
    n_samples={"train": 4000, "val": 500, "test": 1000},
    license="generated (MIT, this repo)",
    source="generated",
    description=(
        "Seeded procedural fundus-like images with microaneurysms, haemorrhages and exudates; "
        "grade 0-4 from lesion load; per-pixel lesion masks (ground truth for claim C7)."
    ),
)

PCAM = DatasetInfo(
    name="pcam",
    task="binary-class",
    n_channels=3,
    labels={"0": "no tumour", "1": "tumour in the centre 32x32 region"},
    n_samples={"train": 262144, "val": 32768, "test": 32768},
    # The h5 files have no published md5 (torchvision's md5s are of the .h5.gz archives); the
    # loader hashes them into the run ids (medstudy.data.pcam).
    md5={},
    url={},
    license="CC0 (PatchCamelyon)",
    source="torchvision",
    description=(
        "PatchCamelyon (Veeling et al. 2018): 96x96 H&E lymph-node patches, the h5 files of "
        "torchvision.datasets.PCAM, resized into the image cache at the requested size."
    ),
)

INFO: dict[str, DatasetInfo] = {
    **_medmnist_rows(),
    PCAM28_SUBSET.name: PCAM28_SUBSET,
    PCAM.name: PCAM,
    SYNTH_LESIONS.name: SYNTH_LESIONS,
}


def get_info(name: str, columns: Iterable[str] | None = None) -> DatasetInfo:
    """The INFO row for ``name``; unknown names raise ``ValueError`` listing the valid ones.

    Files dropped into the data dir are handled by the loader, which calls
    :func:`~medstudy.data.loaders.infer_info` for names not in this table. Their *results* are
    read without the file: given the ``columns`` of a run's saved predictions, an unknown name
    gets a row inferred from them by the loader's rule (``y_true_<j>`` columns: multi-label;
    else K ``score_<k>`` columns: binary if K = 2, multi-class otherwise).
    """
    if name in INFO:
        return INFO[name]
    if columns is not None:
        return _info_from_prediction_columns(name, list(columns))
    raise ValueError(
        f"unknown dataset {name!r}; valid: {sorted(INFO)} "
        "(or any MedMNIST-format <name>.npz or manifest <name>.csv placed in MEDSTUDY_DATA_DIR)"
    )


def _info_from_prediction_columns(name: str, columns: list[str]) -> DatasetInfo:
    n = sum(c.startswith("score_") for c in columns)
    if any(c.startswith("y_true_") for c in columns):
        task = "multi-label, binary-class"
    else:
        task = "binary-class" if n == 2 else "multi-class"
    return DatasetInfo(
        name=name,
        task=task,
        n_channels=0,  # unknown from predictions
        labels={str(i): str(i) for i in range(n)},
        n_samples={},
        source="local",
        description="inferred from the columns of saved predictions",
    )
