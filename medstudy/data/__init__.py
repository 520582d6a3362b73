"""Data: the INFO table, loaders with md5 checks (MedMNIST-format npz, CSV manifests of image
files, the full PCam h5), the memory-mapped image cache, synthetic lesions, label-fraction
sampling and tensor splits. See DESIGN §4 and ``data/README.md``."""

from medstudy.data.info import INFO, SPLITS, TASK_TYPES, DatasetInfo, get_info
from medstudy.data.loaders import (
    DataFileError,
    Provenance,
    Split,
    check_file,
    dataset_info,
    load_split,
)
from medstudy.data.sampling import sample_fraction, sample_fractions, validate_fraction
from medstudy.data.summary import plot_dataset_examples, summarize_dataset
from medstudy.data.tensors import MemmapImages, TensorSplit, to_float, to_model_input

__all__ = [
    "INFO",
    "SPLITS",
    "TASK_TYPES",
    "DataFileError",
    "DatasetInfo",
    "MemmapImages",
    "Provenance",
    "Split",
    "TensorSplit",
    "check_file",
    "dataset_info",
    "get_info",
    "load_split",
    "plot_dataset_examples",
    "summarize_dataset",
    "sample_fraction",
    "sample_fractions",
    "to_float",
    "to_model_input",
    "validate_fraction",
]
